//! Simulated partner and payment backends for the demo.
//!
//! Each backend cycles through phases (healthy, slow, erroring) on a fixed schedule, so a
//! newcomer watching the metrics sees latency and errors move, and the policies that later
//! issues add (breakers, retries, failover) visibly act.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rand::Rng;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

/// One stretch of a backend's behaviour.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    /// Shown in responses and in the demo's output.
    pub name: &'static str,
    /// How long the phase lasts.
    pub length: Duration,
    /// Share of requests answered with 503.
    pub error_rate: f64,
    /// Typical latency; each response waits between half and one and a half times this.
    pub latency: Duration,
}

/// A repeating list of phases.
#[derive(Debug, Clone)]
pub struct Scenario(pub Vec<Phase>);

impl Scenario {
    /// The phase in force `elapsed` after the start.
    pub fn phase_at(&self, elapsed: Duration) -> Phase {
        let cycle: Duration = self.0.iter().map(|p| p.length).sum();
        let mut t = Duration::from_nanos((elapsed.as_nanos() % cycle.as_nanos().max(1)) as u64);
        for phase in &self.0 {
            if t < phase.length {
                return *phase;
            }
            t -= phase.length;
        }
        self.0[0]
    }
}

/// Serves `scenario` on `addr` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    name: String,
    scenario: Scenario,
    mut stop: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (name, addr, scenario) = (name.clone(), addr.clone(), scenario.clone());
                let service = service_fn(move |req| {
                    let phase = scenario.phase_at(started.elapsed());
                    respond(req, phase, name.clone(), addr.clone())
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                tokio::spawn(async move { let _ = conn.await; });
            }
            _ = crate::shutdown::signalled(&mut stop) => break,
        }
    }
}

async fn respond(
    req: Request<Incoming>,
    phase: Phase,
    name: String,
    addr: String,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let _ = req.into_body().collect().await;
    if path == "/health" {
        return Ok(json(StatusCode::OK, serde_json::json!({"status": "ok"})));
    }
    let (jitter, fail) = {
        let mut rng = rand::rng();
        (
            rng.random_range(0.5..1.5),
            rng.random_bool(phase.error_rate.clamp(0.0, 1.0)),
        )
    };
    tokio::time::sleep(phase.latency.mul_f64(jitter)).await;
    let status = if fail {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = serde_json::json!({
        "backend": name, "endpoint": addr, "phase": phase.name,
        "method": method.as_str(), "path": path,
    });
    Ok(json(status, body))
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// The demo's scenario for an upstream, by name; unknown names are always healthy.
pub fn scenario_for(upstream: &str) -> Scenario {
    let ms = Duration::from_millis;
    let s = Duration::from_secs;
    let phase = |name, length, error_rate, latency| Phase {
        name,
        length,
        error_rate,
        latency,
    };
    match upstream {
        // A delivery agency that browns out: slow, then a 5xx storm, then recovers.
        "agency-a" => Scenario(vec![
            phase("healthy", s(40), 0.01, ms(40)),
            phase("slow", s(20), 0.02, ms(900)),
            phase("5xx-storm", s(20), 0.6, ms(60)),
        ]),
        // A second payment provider: slower, but steady.
        "payments-b" => Scenario(vec![phase("healthy", s(60), 0.001, ms(180))]),
        // A steady second agency.
        "agency-b" => Scenario(vec![phase("healthy", s(60), 0.005, ms(25))]),
        // A payment gateway with short maintenance blips.
        "payments" => Scenario(vec![
            phase("healthy", s(50), 0.002, ms(120)),
            phase("maintenance", s(10), 0.9, ms(20)),
        ]),
        _ => Scenario(vec![phase("healthy", s(60), 0.0, ms(10))]),
    }
}

/// Binds a backend listener; the demo's backends live on loopback only.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::other(format!(
            "demo backends run on loopback only, not {addr}"
        )));
    }
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_repeat() {
        let s = scenario_for("agency-a");
        assert_eq!(s.phase_at(Duration::from_secs(1)).name, "healthy");
        assert_eq!(s.phase_at(Duration::from_secs(45)).name, "slow");
        assert_eq!(s.phase_at(Duration::from_secs(70)).name, "5xx-storm");
        assert_eq!(s.phase_at(Duration::from_secs(81)).name, "healthy");
    }
}
