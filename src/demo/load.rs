//! The demo's load generator: realistic partner and payment calls at a fixed rate.
//!
//! Bounded in rate, in concurrency and in time, and it only ever calls the proxy on loopback.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

const MAX_IN_FLIGHT: usize = 256;

/// Counts of what the generator saw, by status class.
#[derive(Debug, Default)]
pub struct Tally {
    /// Requests sent.
    pub sent: AtomicU64,
    /// 2xx responses.
    pub ok: AtomicU64,
    /// 4xx responses.
    pub client_errors: AtomicU64,
    /// 5xx responses.
    pub server_errors: AtomicU64,
    /// No response (connection failed).
    pub failed: AtomicU64,
}

struct Call {
    method: Method,
    path: &'static str,
    idempotency_key: bool,
    weight: u32,
}

const CALLS: [Call; 6] = [
    Call {
        method: Method::POST,
        path: "/v1/agency-a/orders",
        idempotency_key: false,
        weight: 4,
    },
    Call {
        method: Method::GET,
        path: "/v1/agency-a/orders/ord_123",
        idempotency_key: false,
        weight: 3,
    },
    Call {
        method: Method::GET,
        path: "/v1/agency-b/quotes?from=berlin&to=hamburg",
        idempotency_key: false,
        weight: 3,
    },
    Call {
        method: Method::POST,
        path: "/v1/agency-b/orders",
        idempotency_key: false,
        weight: 2,
    },
    Call {
        method: Method::POST,
        path: "/v1/payments",
        idempotency_key: true,
        weight: 2,
    },
    Call {
        method: Method::GET,
        path: "/v1/payments/pay_42",
        idempotency_key: false,
        weight: 2,
    },
];

/// Sends `rps` requests per second to `proxy` for `length`, or until `stop` turns true.
pub async fn run(
    proxy: SocketAddr,
    rps: u32,
    length: Duration,
    tally: Arc<Tally>,
    mut stop: watch::Receiver<bool>,
) {
    if !proxy.ip().is_loopback() || rps == 0 {
        return;
    }
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let schedule: Vec<&Call> = CALLS
        .iter()
        .flat_map(|c| std::iter::repeat_n(c, c.weight as usize))
        .collect();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rps.min(10_000));
    let deadline = Instant::now() + length;
    let mut n: u64 = 0;
    while Instant::now() < deadline {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::shutdown::signalled(&mut stop) => return,
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let call = schedule[(n as usize) % schedule.len()];
        n += 1;
        let mut req = Request::builder()
            .method(call.method.clone())
            .uri(format!("http://{proxy}{}", call.path))
            .header("content-type", "application/json")
            .header("x-merchant-id", format!("merchant-{}", n % 7));
        if call.idempotency_key {
            req = req.header("idempotency-key", format!("demo-{n}"));
        }
        let body = if call.method == Method::POST {
            r#"{"amount":1299,"currency":"EUR"}"#
        } else {
            ""
        };
        let Ok(req) = req.body(Full::new(Bytes::from_static(body.as_bytes()))) else {
            continue;
        };
        let (client, tally) = (client.clone(), tally.clone());
        tally.sent.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let counter = match client.request(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    let _ = resp.into_body().collect().await;
                    match status.as_u16() {
                        200..=399 => &tally.ok,
                        400..=499 => &tally.client_errors,
                        _ => &tally.server_errors,
                    }
                }
                Err(_) => &tally.failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}
