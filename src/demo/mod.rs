//! `backstop demo`: everything a newcomer needs in one process, on loopback.
//!
//! Starts a simulated backend on every endpoint of `config/demo.yaml`, the proxy in front of
//! them, and a load generator; prints where to look. Nothing leaves the machine.

pub mod backend;
pub mod load;

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
}

/// A running demo.
#[derive(Debug)]
pub struct Demo {
    app: App,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    tally: Arc<load::Tally>,
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A backend address could not be bound.
    #[error("cannot start the simulated backend {upstream} on {address}: {source} (is another demo running?)")]
    Backend {
        /// Upstream name.
        upstream: String,
        /// Endpoint address.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The proxy could not start.
    #[error(transparent)]
    Start(#[from] crate::app::StartError),
}

impl Demo {
    /// Starts backends, proxy and load generator.
    pub async fn start(config: Config, options: Options) -> Result<Demo, DemoError> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        for upstream in &config.upstreams {
            for endpoint in &upstream.endpoints {
                let err = |source| DemoError::Backend {
                    upstream: upstream.name.clone(),
                    address: endpoint.address.clone(),
                    source,
                };
                let addr = endpoint
                    .address
                    .parse()
                    .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
                let listener = backend::bind(addr).await.map_err(err)?;
                let scenario = backend::scenario_for(&upstream.name);
                tasks.push(tokio::spawn(backend::serve(
                    listener,
                    upstream.name.clone(),
                    scenario,
                    stopped.clone(),
                )));
            }
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
        })
    }

    /// Tells the user where to look.
    pub fn print_welcome(&self) {
        let proxy = self.app.proxy_addr();
        let admin = self.app.admin_addr();
        println!(
            r#"
backstop demo is running (Ctrl-C to stop)
  proxy:        http://{proxy}
  status page:  http://{admin}/          (open it in a browser; refreshes itself)
  admin API:    http://{admin}/metrics, /admin/circuits, /admin/upstreams, /admin/slos

Simulated backends change behaviour on a schedule: agency-a goes slow, then into a 5xx storm,
then recovers (80s cycle): watch its breaker open and probe. payments has a 10s maintenance
blip every minute (its breaker is in shadow mode; retries fail over to payments-b), and
agency-b is rate limited per merchant. A load generator is sending traffic. Try:

  curl -i http://{proxy}/v1/agency-a/orders/ord_1
  curl -i -X POST http://{proxy}/v1/payments -H 'Idempotency-Key: demo-1' -d '{{"amount":1299}}'
  curl -i http://{proxy}/nowhere                  # 404 with x-backstop-reason: no_route
  curl -s http://{admin}/metrics | grep backstop_requests_total
  curl -s http://{admin}/admin/circuits
  cargo run --release -- rules -c config/demo.yaml   # Prometheus rules for the demo's SLOs
"#
        );
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
            "demo stopped: sent {}, 2xx/3xx {}, 4xx {}, 5xx {}, no response {}",
            t.sent.load(Ordering::Relaxed),
            t.ok.load(Ordering::Relaxed),
            t.client_errors.load(Ordering::Relaxed),
            t.server_errors.load(Ordering::Relaxed),
            t.failed.load(Ordering::Relaxed)
        );
    }
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
            server_errors = tally.server_errors.load(Ordering::Relaxed),
            no_response = tally.failed.load(Ordering::Relaxed),
            "demo traffic so far"
        );
    }
}
