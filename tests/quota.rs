//! Pacing to the partner's quota (issue #14 item 4, learned part): after the partner says its
//! quota is spent, backstop stops sending (counted at the partner) and answers 429 with the
//! partner's time, or waits for the quota within `max_wait`.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::{get, metrics, proxy, sample};
use tokio::net::TcpListener;

/// A partner whose first answer carries `first` (status and headers) and later ones 200.
async fn partner(
    first: (u16, &'static [(&'static str, &'static str)]),
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            let svc = service_fn(move |_req: Request<Incoming>| {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                async move {
                    let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                    if n == 0 {
                        *response.status_mut() = http::StatusCode::from_u16(first.0).unwrap();
                        for (k, v) in first.1 {
                            response.headers_mut().insert(*k, v.parse().unwrap());
                        }
                    }
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, hits)
}

fn config(addr: std::net::SocketAddr, quota: &str) -> String {
    format!(
        "upstreams:\n  partner:\n    endpoints: [{{ address: \"{addr}\" }}]\n    quota: {quota}\nroutes:\n  - {{ name: r, upstream: partner }}\n"
    )
}

#[tokio::test]
async fn a_spent_quota_is_answered_locally_with_the_partners_time() {
    let (addr, hits) = partner((429, &[("retry-after", "30")])).await;
    let app = proxy(&config(addr, "{ mode: reject }")).await;
    let url = format!("http://{}/x", app.proxy_addr());
    let first = get(url.clone()).await;
    assert_eq!(first.status, 429, "the partner's own 429 goes back");
    assert_eq!(first.header("x-backstop-reason"), "");
    let second = get(url.clone()).await;
    assert_eq!(second.status, 429);
    assert_eq!(
        second.header("x-backstop-reason"),
        "upstream_quota_exhausted"
    );
    let retry_after: u64 = second.header("retry-after").parse().unwrap();
    assert!(
        (29..=30).contains(&retry_after),
        "the partner's time: {retry_after}"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the partner saw only the first"
    );
    let text = metrics(&app).await;
    assert_eq!(
        sample(
            &text,
            "backstop_upstream_quota_total{result=\"shed\",upstream=\"partner\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn queue_mode_waits_for_the_quota_when_it_is_back_soon() {
    let (addr, hits) = partner((
        200,
        &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1")],
    ))
    .await;
    let app = proxy(&config(addr, "{ mode: queue, max_wait: 2s }")).await;
    let url = format!("http://{}/x", app.proxy_addr());
    assert_eq!(get(url.clone()).await.status, 200);
    let started = Instant::now();
    assert_eq!(get(url.clone()).await.status, 200, "waited, then sent");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "it waited for the quota: {waited:?}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    let text = metrics(&app).await;
    assert_eq!(
        sample(
            &text,
            "backstop_upstream_quota_total{result=\"queued\",upstream=\"partner\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "backstop_upstream_quota_remaining{upstream=\"partner\"}"
        ),
        Some(0.0)
    );
}
