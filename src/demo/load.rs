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
    /// 4xx responses (429 included).
    pub client_errors: AtomicU64,
    /// 429 responses: a rate limit said no.
    pub rate_limited: AtomicU64,
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

/// The calls in the order they are sent, each repeated by its weight.
fn schedule() -> Vec<&'static Call> {
    CALLS
        .iter()
        .flat_map(|c| std::iter::repeat_n(c, c.weight as usize))
        .collect()
}

/// Who sends, in order: merchant-0 is a big merchant with 7 of every 13 requests, the six
/// others one each. Spread evenly over 7 merchants (as before), agency-b's share of the load
/// (5/16) gave each under 1 request/s at the default 20/s, well below the demo config's
/// 2/s per-merchant limit, so the demo never showed a 429. Now merchant-0 sends about 3.4/s to
/// agency-b and is limited; the others stay under 0.5/s. 13 is prime to the schedule's
/// length, so every merchant meets every call.
const MERCHANTS: [u64; 13] = [0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0];

/// The merchant (`x-merchant-id: merchant-<i>`) of the `n`th request.
fn merchant(n: u64) -> u64 {
    MERCHANTS[(n % MERCHANTS.len() as u64) as usize]
}

/// The share of all requests that go to a path starting with `prefix` for the busiest
/// merchant, merchant-0 (times the rate: merchant-0's requests per second there).
pub fn busiest_share(prefix: &str) -> f64 {
    let calls = schedule();
    // Both sequences repeat within this many requests.
    let period = calls.len() as u64 * MERCHANTS.len() as u64;
    let hits = (0..period)
        .filter(|&n| {
            merchant(n) == 0
                && calls[(n % calls.len() as u64) as usize]
                    .path
                    .starts_with(prefix)
        })
        .count();
    hits as f64 / period as f64
}

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
    let schedule = schedule();
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
        let merchant = merchant(n);
        n += 1;
        let mut req = Request::builder()
            .method(call.method.clone())
            .uri(format!("http://{proxy}{}", call.path))
            .header("content-type", "application/json")
            .header("x-merchant-id", format!("merchant-{merchant}"));
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
                    if status == http::StatusCode::TOO_MANY_REQUESTS {
                        tally.rate_limited.fetch_add(1, Ordering::Relaxed);
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// At the default 20 requests/s, merchant-0 sends agency-b more than the demo config's
    /// 2/s and every other merchant less.
    #[test]
    fn the_busiest_merchant_exceeds_agency_b_limit_at_the_default_rate() {
        let busiest = 20.0 * busiest_share("/v1/agency-b");
        assert!(busiest > 3.0, "{busiest}");
        let calls = schedule();
        let period = calls.len() as u64 * MERCHANTS.len() as u64;
        for m in 1..7 {
            let share = (0..period)
                .filter(|&n| {
                    merchant(n) == m
                        && calls[(n % calls.len() as u64) as usize]
                            .path
                            .starts_with("/v1/agency-b")
                })
                .count() as f64
                / period as f64;
            assert!(20.0 * share < 1.0, "merchant-{m}: {}", 20.0 * share);
        }
    }
}
