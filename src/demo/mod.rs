//! `backstop demo`: everything a newcomer needs in one process, on loopback.
//!
//! Starts a simulated backend on every endpoint of `config/demo.yaml`, the proxy in front of
//! them, and a load generator; prints where to look. Nothing leaves the machine.

pub mod backend;
pub mod load;
pub mod ports;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::App;

/// Demo knobs from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Load generator rate.
    pub rps: u32,
    /// How long the load generator runs.
    pub load_for: Duration,
    /// `--port-base`: `None` keeps the config's addresses, `Some(0)` lets the OS pick every
    /// port, `Some(n)` moves them to the fixed layout from `n` ([`ports::Layout::from_base`]).
    pub port_base: Option<u16>,
}

/// A running demo.
#[derive(Debug)]
pub struct Demo {
    app: App,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    tally: Arc<load::Tally>,
    rps: u32,
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A backend address could not be bound.
    #[error("cannot start the simulated backend {upstream} on {address}: {source} (is another demo running? move it with --port-base)")]
    Backend {
        /// Upstream name.
        upstream: String,
        /// Endpoint address.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The config could not be read or its ports moved.
    #[error(transparent)]
    Ports(#[from] ports::PortsError),
    /// The config (after moving its ports) is not valid.
    #[error("the demo config is not valid: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// The proxy could not start.
    #[error(transparent)]
    Start(#[from] crate::app::StartError),
}

impl Demo {
    /// Starts backends, proxy and load generator from the config `text` (usually
    /// [`ports::CONFIG`]), with its ports moved as `options.port_base` says.
    pub async fn launch(text: &str, options: Options) -> Result<Demo, DemoError> {
        let tree = ports::parse(text)?;
        let endpoints = ports::endpoints(&tree);
        let mut listeners = Vec::with_capacity(endpoints.len());
        let text = match options.port_base {
            None => {
                for (upstream, address) in &endpoints {
                    listeners.push(bind(upstream, address).await?);
                }
                text.to_owned()
            }
            Some(0) => {
                let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
                let mut backends = Vec::with_capacity(endpoints.len());
                for (upstream, _) in &endpoints {
                    let listener = bind(upstream, &any.to_string()).await?;
                    backends.push(listener.local_addr().map_err(|source| DemoError::Backend {
                        upstream: upstream.clone(),
                        address: any.to_string(),
                        source,
                    })?);
                    listeners.push(listener);
                }
                let layout = ports::Layout {
                    proxy: any,
                    admin: any,
                    backends,
                };
                ports::rewrite(text, &layout)?
            }
            Some(base) => {
                let layout = ports::Layout::from_base(base, endpoints.len())?;
                for ((upstream, _), address) in endpoints.iter().zip(&layout.backends) {
                    listeners.push(bind(upstream, &address.to_string()).await?);
                }
                ports::rewrite(text, &layout)?
            }
        };
        let config = crate::config::load_str(&text)?;
        Self::start(config, listeners, &endpoints, options).await
    }

    async fn start(
        config: Config,
        listeners: Vec<tokio::net::TcpListener>,
        endpoints: &[(String, String)],
        options: Options,
    ) -> Result<Demo, DemoError> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        for (listener, (upstream, _)) in listeners.into_iter().zip(endpoints) {
            tasks.push(tokio::spawn(backend::serve(
                listener,
                upstream.clone(),
                backend::scenario_for(upstream),
                stopped.clone(),
            )));
        }
        let app = App::start(config, Metrics::new()).await?;
        let tally = Arc::new(load::Tally::default());
        tasks.push(tokio::spawn(load::run(
            app.proxy_addr(),
            options.rps,
            options.load_for,
            tally.clone(),
            stopped.clone(),
        )));
        tasks.push(tokio::spawn(report(tally.clone(), stopped)));
        Ok(Demo {
            app,
            stop,
            tasks,
            tally,
            rps: options.rps,
        })
    }

    /// Where the proxy listens.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.app.proxy_addr()
    }

    /// Where the admin listener (status page, metrics) listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.app.admin_addr()
    }

    /// What the load generator has seen so far.
    pub fn tally(&self) -> &load::Tally {
        &self.tally
    }

    /// Tells the user where to look, scenario by scenario.
    pub fn print_welcome(&self) {
        print!("{}", self.welcome());
    }

    /// The welcome text: addresses, then for each scenario what to look at.
    pub fn welcome(&self) -> String {
        let proxy = self.app.proxy_addr();
        let admin = self.app.admin_addr();
        let busiest = f64::from(self.rps) * load::busiest_share("/v1/agency-b");
        format!(
            r#"
backstop demo is running (Ctrl-C to stop). A load generator sends {rps} requests/s.
  proxy:        http://{proxy}
  status page:  http://{admin}/          open it in a browser: breakers, limits, SLOs; refreshes itself
  metrics:      http://{admin}/metrics

What happens, and where to see it:

1. agency-a browns out every 80 s: 40 s healthy, 20 s slow (~900 ms), 20 s of 5xx storm.
   Its circuit breaker opens, rejects for 5 s, probes, and closes once agency-a recovers.
     status page: the agency-a breaker turns open / half_open
     curl -s http://{admin}/admin/circuits
     curl -s http://{admin}/metrics | grep -E 'backstop_circuit_(state|rejected_total)\{{.*upstream="agency-a"'
     curl -i http://{proxy}/v1/agency-a/orders/ord_1   # while open: 503, x-backstop-reason: circuit_open

2. payments has a 10 s maintenance blip every minute (90% 503s). Payment POSTs carry an
   Idempotency-Key, so they are retried and fail over to payments-b; the payments breaker is in
   shadow mode: it counts what it would have rejected and rejects nothing.
     curl -s http://{admin}/metrics | grep -E 'backstop_retries_total|backstop_failover_total'
     curl -s http://{admin}/metrics | grep 'backstop_circuit_rejected_total.*mode="shadow"'
     curl -i -X POST http://{proxy}/v1/payments -H 'Idempotency-Key: demo-1' -d '{{"amount":1299}}'

3. agency-b is rate limited per merchant (x-merchant-id). The busiest merchant, merchant-0,
   sends about {busiest:.1} requests/s there; the demo config allows 2/s, so some of its calls get
   429 with Retry-After and RateLimit headers. The other merchants stay under the limit.
     status page: the agency-b-orders rate limit
     curl -s http://{admin}/metrics | grep 'backstop_rate_limited_total'
     curl -s http://{admin}/metrics | grep -E 'backstop_requests_total\{{.*route="agency-b-orders".*status="429"'
     for i in 1 2 3 4; do curl -s -o /dev/null -w '%{{http_code}} ' -H 'x-merchant-id: you' http://{proxy}/v1/agency-b/quotes; done; echo

4. Three SLOs (payments availability and latency, agency availability) spend their error budget
   during the storms and blips.
     curl -s http://{admin}/admin/slos
     curl -s http://{admin}/metrics | grep -E 'backstop_slo_(error_budget_remaining|burn_rate)'
     backstop demo --print-config > demo.yaml && backstop rules -c demo.yaml   # Prometheus rules

And: curl -i http://{proxy}/nowhere is a 404 with x-backstop-reason: no_route.
"#,
            rps = self.rps,
        )
    }

    /// Stops the load, drains the proxy, stops the backends.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.app.shutdown().await;
        for task in self.tasks {
            let _ = task.await;
        }
        let t = &self.tally;
        println!(
            "demo stopped: sent {}, 2xx/3xx {}, 4xx {} (429 {}), 5xx {}, no response {}",
            t.sent.load(Ordering::Relaxed),
            t.ok.load(Ordering::Relaxed),
            t.client_errors.load(Ordering::Relaxed),
            t.rate_limited.load(Ordering::Relaxed),
            t.server_errors.load(Ordering::Relaxed),
            t.failed.load(Ordering::Relaxed)
        );
    }
}

/// Binds one simulated backend's listener (loopback only).
async fn bind(upstream: &str, address: &str) -> Result<tokio::net::TcpListener, DemoError> {
    let err = |source| DemoError::Backend {
        upstream: upstream.to_owned(),
        address: address.to_owned(),
        source,
    };
    let addr = address
        .parse()
        .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    backend::bind(addr).await.map_err(err)
}

/// Prints a one-line summary every 10 seconds.
async fn report(tally: Arc<load::Tally>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::shutdown::signalled(&mut stop) => return,
        }
        tracing::info!(
            sent = tally.sent.load(Ordering::Relaxed),
            ok = tally.ok.load(Ordering::Relaxed),
            client_errors = tally.client_errors.load(Ordering::Relaxed),
            rate_limited = tally.rate_limited.load(Ordering::Relaxed),
            server_errors = tally.server_errors.load(Ordering::Relaxed),
            no_response = tally.failed.load(Ordering::Relaxed),
            "demo traffic so far"
        );
    }
}
