//! The allocation budget of the request path: a counting global allocator (this test binary
//! only) measures what one keep-alive GET through backstop allocates, beyond the same GET sent
//! straight to the backend, for pass-through and for every local policy at once. It fails when
//! someone adds allocations to the hot path; raise a budget only with a reason in the commit.
//!
//! Measured 2026-11-30 over 1,000 requests on one connection: 14.7 (pass-through) and 19.7
//! (all local policies) allocations per request beyond the direct path (19.7 and 24.7 before
//! the pipeline served each request with one boxed future and no response extension). The budgets leave less
//! than one allocation of slack, so one more allocation per request fails the test:
//! pass-through <= PASS_THROUGH_BUDGET, all local policies <= ALL_POLICIES_BUDGET.

mod support;

use std::alloc::System;
use std::net::SocketAddr;

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const REQUESTS: usize = 1000;
/// Allocations per proxied GET, pass-through.
const PASS_THROUGH_BUDGET: f64 = 15.5;
/// Allocations per proxied GET with breaker, outlier detection, bulkhead, health checks,
/// retries, failover, a local keyed rate limit and an SLO.
const ALL_POLICIES_BUDGET: f64 = 20.5;

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// A keep-alive backend that answers every request head with a fixed response.
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                let mut len = 0;
                loop {
                    let Ok(n) = s.read(&mut buf[len..]).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    len += n;
                    while let Some(end) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
                        if s.write_all(RESPONSE).await.is_err() {
                            return;
                        }
                        buf.copy_within(end + 4..len, 0);
                        len -= end + 4;
                    }
                }
            });
        }
    });
    addr
}

/// Sends `n` keep-alive GETs on one connection to `addr`, reading each response.
async fn keep_alive_gets(addr: SocketAddr, n: usize) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let request = b"GET /pay HTTP/1.1\r\nhost: a\r\nx-merchant: m1\r\n\r\n";
    let mut buf = vec![0u8; 4096];
    for _ in 0..n {
        s.write_all(request).await.unwrap();
        let mut got = Vec::new();
        loop {
            let k = s.read(&mut buf).await.unwrap();
            assert!(k > 0, "connection closed");
            got.extend_from_slice(&buf[..k]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                assert!(head.starts_with("http/1.1 200"), "{head}");
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if got.len() >= end + 4 + len {
                    break;
                }
            }
        }
    }
}

/// Allocations per request of `n` GETs to `addr`, after a warm-up.
async fn allocations_per_request(addr: SocketAddr) -> f64 {
    keep_alive_gets(addr, 50).await;
    let region = Region::new(GLOBAL);
    keep_alive_gets(addr, REQUESTS).await;
    region.change().allocations as f64 / REQUESTS as f64
}

async fn measure(route_extra: &str, upstream_extra: &str, extra_top: &str) -> (f64, f64) {
    let addr = backend().await;
    let direct = allocations_per_request(addr).await;
    let yaml = format!(
        "{extra_top}upstreams:\n  svc:\n    endpoints:\n      - address: {addr}\n{upstream_extra}  spare:\n    endpoints:\n      - address: {addr}\nroutes:\n  - name: pay\n    upstream: svc\n{route_extra}"
    );
    let app = proxy(&yaml).await;
    let proxied = allocations_per_request(app.proxy_addr()).await;
    (proxied - direct, direct)
}

/// One test, so that nothing else runs in this process while it counts.
#[tokio::test(flavor = "current_thread")]
async fn the_request_path_stays_within_its_allocation_budget() {
    let (pass_through, direct) = measure("", "", "").await;
    println!("pass-through: {pass_through:.1} allocations per request (direct: {direct:.1})");
    let upstream = "    max_concurrent_requests: 1000\n    circuit_breaker: { consecutive_failures: 5, failure_rate: { threshold: 50%, min_requests: 20 } }\n    outlier_detection: { consecutive_failures: 5 }\n    health_check: { path: /health, interval: 10s }\n";
    let route = "    failover: [spare]\n    retry: { attempts: 2, on: [connect-failure, 503] }\n    rate_limit: { rate: 100000/s, key: header:x-merchant }\nslos:\n  - name: pay\n    routes: [pay]\n    objective: 99.9%\n    sli: availability\n";
    let (all, direct) = measure(route, upstream, "").await;
    println!("all local policies: {all:.1} allocations per request (direct: {direct:.1})");
    assert!(
        pass_through <= PASS_THROUGH_BUDGET,
        "pass-through allocates {pass_through:.1} per request, budget {PASS_THROUGH_BUDGET}"
    );
    assert!(
        all <= ALL_POLICIES_BUDGET,
        "all local policies allocate {all:.1} per request, budget {ALL_POLICIES_BUDGET}"
    );
}
