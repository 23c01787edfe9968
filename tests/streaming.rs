//! Bodies stream through the proxy in both directions; nothing is buffered whole.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::proxy;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};

type Chunks = StreamBody<tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

fn channel_body() -> (mpsc::Sender<Result<Frame<Bytes>, Infallible>>, Chunks) {
    let (tx, rx) = mpsc::channel(4);
    (
        tx,
        StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
}

/// A backend that answers GET with a first chunk, waits for `release`, then sends the rest;
/// and answers POST by signalling `first_seen` once the first request chunk arrived, then
/// counting every byte of the request body.
async fn gated_backend(release: Arc<Notify>, first_seen: Arc<Notify>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (release, first_seen) = (release.clone(), first_seen.clone());
            let svc = service_fn(move |req: Request<Incoming>| {
                let (release, first_seen) = (release.clone(), first_seen.clone());
                async move {
                    let (tx, body) = channel_body();
                    if req.method() == http::Method::GET {
                        tokio::spawn(async move {
                            tx.send(Ok(Frame::data(Bytes::from_static(b"first;"))))
                                .await
                                .ok();
                            release.notified().await;
                            tx.send(Ok(Frame::data(Bytes::from_static(b"rest"))))
                                .await
                                .ok();
                        });
                    } else {
                        let mut incoming = req.into_body();
                        let mut total = 0usize;
                        let mut signalled = false;
                        while let Some(frame) = incoming.frame().await {
                            if let Some(data) = frame.unwrap().data_ref() {
                                total += data.len();
                                if !signalled {
                                    first_seen.notify_one();
                                    signalled = true;
                                }
                            }
                        }
                        tx.send(Ok(Frame::data(Bytes::from(total.to_string()))))
                            .await
                            .ok();
                    }
                    Ok::<_, Infallible>(Response::new(body))
                }
            });
            tokio::spawn(
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .into_owned(),
            );
        }
    });
    addr
}

fn config(addr: std::net::SocketAddr) -> String {
    format!("upstreams:\n  s:\n    endpoints: [{{ address: \"{addr}\" }}]\nroutes:\n  - {{ name: r, upstream: s, timeout: 10s }}\n")
}

/// The client gets the upstream's first chunk while the upstream is still holding the rest.
#[tokio::test]
async fn response_body_streams_before_the_upstream_finishes() {
    let (release, first_seen) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let app = proxy(&config(gated_backend(release.clone(), first_seen).await)).await;
    let client = support::client();
    let resp = client
        .request(
            Request::get(format!("http://{}/stream", app.proxy_addr()))
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first chunk arrived before the upstream finished: the proxy does not buffer")
        .unwrap()
        .unwrap();
    assert_eq!(first.data_ref().unwrap().as_ref(), b"first;");
    release.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest.as_ref(), b"rest");
}

/// The upstream receives the client's first chunk while the client is still holding the rest,
/// and a large body arrives whole.
#[tokio::test]
async fn request_body_streams_and_large_bodies_arrive_whole() {
    let (release, first_seen) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let app = proxy(&config(gated_backend(release, first_seen.clone()).await)).await;
    let (tx, body) = channel_body();
    let client: hyper_util::client::legacy::Client<_, Chunks> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(format!("http://{}/upload", app.proxy_addr()))
        .body(body)
        .unwrap();
    let response = tokio::spawn(client.request(request));
    let chunk = Bytes::from(vec![b'x'; 1 << 20]);
    tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), first_seen.notified())
        .await
        .expect("upstream saw the first chunk before the client sent the rest");
    for _ in 1..32 {
        tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
    }
    drop(tx);
    let resp = response.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body.as_ref(),
        (32usize << 20).to_string().as_bytes(),
        "32 MiB arrived whole"
    );
}
