//! Memory of the local idempotency store, measured at the numbers production reaches: a
//! stored response must cost what it holds (a small body and a few headers), not the
//! connection buffer it was read from. This test binary counts every allocation (its own
//! global allocator), so it holds one test.

#[path = "support/counting.rs"]
mod counting;
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::{post_keyed, proxy};
use tokio::net::TcpListener;

/// 3000 payments with fresh keys, each answered `201 {"id":"p_…"}` as JSON: the bytes the
/// process holds afterwards, per stored key, stay under 1 KiB (the README's bound). Each
/// stored header value used to keep hyper's whole read buffer alive (about 8 KiB per key:
/// 1.9 GiB of RSS after 250,000 payments in the bench).
#[tokio::test]
async fn a_stored_response_costs_what_it_holds() {
    let (addr, hits) = gateway().await;
    let yaml = format!(
        "upstreams:\n  pg:\n    endpoints: [{{ address: \"{addr}\" }}]\nroutes:\n  - name: pay\n    upstream: pg\n    idempotency: {{ store: local, ttl: 1h, max_keys: 100000 }}\n"
    );
    let app = proxy(&yaml).await;
    let url = format!("http://{}/payments", app.proxy_addr());
    // Warm up pools, metrics and the map's first growth steps.
    for i in 0..500 {
        assert_eq!(
            post_keyed(&url, Some(&format!("warm-{i}"))).await.status,
            201
        );
    }
    let keys = 3000;
    let before = counting::live();
    for i in 0..keys {
        assert_eq!(
            post_keyed(&url, Some(&format!("pay-{i}"))).await.status,
            201
        );
    }
    let after = counting::live();
    let per_key = (after - before) as f64 / f64::from(keys);
    println!("{per_key:.0} bytes held per stored key");
    assert_eq!(hits.load(Ordering::SeqCst), 500 + keys as usize);
    assert!(per_key < 1024.0, "{per_key:.0} bytes per stored key");
}

/// A gateway that answers every request `201 {"id":"p_123"}` as JSON and keeps nothing but a
/// count (support's Backend records every request's headers, which would be measured too).
async fn gateway() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counted = counted.clone();
            let svc = service_fn(move |_req: Request<Incoming>| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    let mut response = Response::new(Full::new(Bytes::from_static(
                        br#"{"id":"p_123","status":"ok"}"#,
                    )));
                    *response.status_mut() = StatusCode::CREATED;
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
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
