//! Upstream TLS with rustls: a real TLS backend with a self-signed certificate for a name the
//! endpoint's IP does not carry, reached through `tls: { sni, ca_file }`.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{get, proxy};
use tokio::net::TcpListener;

/// Serves HTTPS on loopback with a certificate for `name`; answers with the SNI it saw.
async fn tls_backend(name: &str) -> (std::net::SocketAddr, String) {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    let cert_pem = certified.cert.pem();
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("").to_owned();
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let body = format!("tls ok, sni={sni}");
                    async move {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            body,
                        ))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, cert_pem)
}

fn config(addr: std::net::SocketAddr, tls: &str) -> String {
    format!("upstreams:\n  pg:\n    endpoints: [{{ address: \"{addr}\" }}]\n    tls: {tls}\nroutes:\n  - {{ name: pay, upstream: pg }}\n")
}

/// With the CA file and the SNI name, the request goes over TLS and the name is sent.
#[tokio::test]
async fn tls_upstream_with_ca_file_and_sni() {
    let (addr, pem) = tls_backend("api.pg.test").await;
    let ca = std::env::temp_dir().join(format!("backstop-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, pem).unwrap();
    let app = proxy(&config(
        addr,
        &format!("{{ sni: api.pg.test, ca_file: \"{}\" }}", ca.display()),
    ))
    .await;
    let r = get(format!("http://{}/v1/payments", app.proxy_addr())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_ref(), b"tls ok, sni=api.pg.test");
}

/// Verification is on by default: the same backend is refused against the public roots, and
/// accepted with `verify: false` (test environments only).
#[tokio::test]
async fn tls_verification_refuses_unknown_certificates() {
    let (addr, _pem) = tls_backend("api.pg.test").await;
    let app = proxy(&config(addr, "{ sni: api.pg.test }")).await;
    let r = get(format!("http://{}/", app.proxy_addr())).await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-backstop-reason")),
        (502, "upstream_connect_failed")
    );
    let app = proxy(&config(addr, "{ sni: api.pg.test, verify: false }")).await;
    assert_eq!(
        get(format!("http://{}/", app.proxy_addr())).await.status,
        200
    );
}
