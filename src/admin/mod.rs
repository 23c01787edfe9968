//! The admin listener: metrics and health, apart from proxy traffic.
//!
//! Loopback by default: it carries mutating endpoints (forcing breakers, reload), and a
//! scrape or a probe must not compete with payment traffic for the proxy's connections.
//!
//! Mutating endpoints (`POST /admin/reload`, `POST /admin/circuits/...`) need the bearer token
//! of `admin.token_file`, or without one a client on loopback. Since a browser on the same
//! machine is also "on loopback", they also refuse what only a browser tricked by another site
//! would send:
//! - an `Origin` other than the admin listener's own (`http://localhost:PORT`,
//!   `http://127.0.0.1:PORT`, `http://[::1]:PORT`, or its address): a cross-site request;
//! - a `Host` that is a name other than `localhost` (IP literals are fine): DNS rebinding,
//!   where `attacker.example` resolves to 127.0.0.1 and the browser calls it same-origin;
//! - a "simple" request: they need `Content-Type: application/json` or an `X-Backstop-Admin`
//!   header, which a cross-site page cannot send without a CORS preflight this listener never
//!   grants.
//!
//! With `admin.protect_reads: true` the read views (status page, `/admin/*`) need the token
//! too; `/healthz`, `/readyz` and `/metrics` stay open for probes and scrapes.

pub mod circuits;
pub mod sampler;
pub mod status;
pub mod views;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::runtime::SnapshotHandle;

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The registry to render.
    pub metrics: Metrics,
    /// True once config is loaded and listeners are up; false again when draining.
    pub ready: Arc<AtomicBool>,
    /// The running config and its live state.
    pub snapshots: SnapshotHandle,
    /// Live rates for the status page.
    pub sampler: std::sync::Arc<status::Sampler>,
    /// Reloads the config file; `None` when started without one (tests).
    pub reloader: Option<std::sync::Arc<crate::runtime::reload::Reloader>>,
}

/// Serves the admin endpoints on `listener` until `shutdown` turns true.
///
/// HTTP/1.1 only (Prometheus, probes, browsers and curl all speak it), with the proxy's
/// `server.header_read_timeout` for every request head, so a silent or slow client cannot keep
/// an admin connection; accept errors (EMFILE) back off instead of spinning.
pub async fn serve(listener: TcpListener, state: AdminState, mut shutdown: watch::Receiver<bool>) {
    let port = listener.local_addr().map_or(0, |a| a.port());
    let mut backoff = ACCEPT_BACKOFF;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => {
                        backoff = ACCEPT_BACKOFF;
                        conn
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, pause = ?backoff, "admin accept failed; pausing");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                        continue;
                    }
                };
                let header_timeout = state.snapshots.load().config.server.header_read_timeout;
                let state = state.clone();
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, &req, peer.ip().is_loopback(), port).await) }
                });
                let mut builder = http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .keep_alive(true);
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = crate::shutdown::signalled(&mut shutdown) => break,
        }
    }
}

/// First pause after a failed accept; doubles up to [`MAX_ACCEPT_BACKOFF`].
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(10);
const MAX_ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

async fn handle(
    state: &AdminState,
    req: &Request<Incoming>,
    from_loopback: bool,
    port: u16,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let mutating = path.starts_with("/admin/circuits/") || path == "/admin/reload";
    if mutating && req.method() != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use POST\n".into(),
        );
    }
    if mutating {
        if let Err((status, error)) = same_site(req, port) {
            return json(status, &serde_json::json!({ "error": error }));
        }
    }
    let open_read = matches!(path, "/healthz" | "/readyz" | "/metrics");
    let config = &state.snapshots.load().config;
    if !mutating && !open_read && config.admin_protect_reads && !has_token(state, req) {
        let mut response = json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({ "error": "admin.protect_reads is on: send Authorization: Bearer <token of admin.token_file>" }),
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    if mutating && !authorized(state, req, from_loopback) {
        let error = "mutating admin endpoints need the bearer token of admin.token_file (or, without one, a client on loopback)";
        return json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({ "error": error }),
        );
    }
    if path == "/admin/reload" {
        return reload(state).await;
    }
    if let Some(rest) = path.strip_prefix("/admin/circuits/") {
        let Some((upstream, action)) = rest.split_once('/') else {
            return json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "use /admin/circuits/{upstream}/open|close|reset"}),
            );
        };
        let route = query_param(req.uri().query(), "route");
        let (status, body) =
            circuits::force(&state.snapshots.load(), upstream, action, route.as_deref());
        return json(status, &body);
    }
    match (req.method(), path) {
        (&Method::GET, "/admin/circuits") => {
            json(StatusCode::OK, &circuits::list(&state.snapshots.load()))
        }
        (&Method::GET, "/") => {
            let page = status::render(&state.snapshots.load(), &state.sampler);
            text(StatusCode::OK, "text/html; charset=utf-8", page)
        }
        (&Method::GET, "/admin/config") => typed(&views::config(&state.snapshots.load())),
        (&Method::GET, "/admin/routes") => typed(&views::routes(&state.snapshots.load())),
        (&Method::GET, "/admin/upstreams") => typed(&views::upstreams(&state.snapshots.load())),
        (&Method::GET, "/admin/slos") => typed(&views::slos(&state.snapshots.load())),
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render(),
        ),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz") => {
            if state.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready\n".into(),
                )
            }
        }
        (_, "/metrics" | "/healthz" | "/readyz") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// With a token configured, the request must carry it; without one, it must come from loopback.
fn authorized(state: &AdminState, req: &Request<Incoming>, from_loopback: bool) -> bool {
    match &state.snapshots.load().config.admin_token {
        Some(_) => has_token(state, req),
        None => from_loopback,
    }
}

/// Whether the request carries the configured bearer token (false without one configured).
fn has_token(state: &AdminState, req: &Request<Incoming>) -> bool {
    let snapshot = state.snapshots.load();
    let Some(token) = &snapshot.config.admin_token else {
        return false;
    };
    req.headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes()))
}

/// Refuses what a browser would send on behalf of another site (see the module docs):
/// a foreign `Host` (DNS rebinding), a foreign `Origin`, or a simple request.
fn same_site(req: &Request<Incoming>, port: u16) -> Result<(), (StatusCode, &'static str)> {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{0}"))
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    if let Some(host) = host {
        if !local_host(split_port(host).0) {
            return Err((
                StatusCode::FORBIDDEN,
                "the Host header must be localhost or an IP address of the admin listener (DNS rebinding protection)",
            ));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        // Same origin: the page's origin is this very authority (scheme http: the admin
        // listener has no TLS), and it is local by the Host check above.
        let own = match (
            origin.to_str().ok().and_then(|o| o.strip_prefix("http://")),
            host,
        ) {
            (Some(authority), Some(host)) => authority.eq_ignore_ascii_case(host),
            (Some(authority), None) => {
                let (name, origin_port) = split_port(authority);
                local_host(name) && origin_port == Some(port)
            }
            _ => false,
        };
        if !own {
            return Err((
                StatusCode::FORBIDDEN,
                "cross-origin request refused: the Origin header must be the admin listener's own",
            ));
        }
    }
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if !json_body && !headers.contains_key(ADMIN_HEADER) {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send Content-Type: application/json or the header X-Backstop-Admin: 1 (mutating admin endpoints refuse requests a cross-site form could send)",
        ));
    }
    Ok(())
}

/// The header that makes a mutating request non-simple without a body.
pub const ADMIN_HEADER: &str = "x-backstop-admin";

/// `localhost`, `127.0.0.1:9901`, `[::1]:9901` -> (host, port).
fn split_port(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, tail)) => (ip, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, p)) if !host.contains(':') => (host, p.parse().ok()),
        _ => (authority, None),
    }
}

/// A host a rebinding attack cannot produce: `localhost` or an IP literal. (A browser sends
/// the name it resolved, so an attacker's name never passes.)
fn local_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /admin/reload`: reload now; 200 with the generation, or 422 with every problem.
async fn reload(state: &AdminState) -> Response<Full<Bytes>> {
    let Some(reloader) = state.reloader.clone() else {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"error": "started without a config file"}),
        );
    };
    match reloader.reload("POST /admin/reload").await {
        Ok(generation) => json(
            StatusCode::OK,
            &serde_json::json!({ "generation": generation }),
        ),
        Err(e) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &serde_json::json!({ "errors": e.issues() }),
        ),
    }
}

/// 200 with a typed view as JSON.
fn typed<T: serde::Serialize>(view: &T) -> Response<Full<Bytes>> {
    match serde_json::to_string(view) {
        Ok(body) => text(StatusCode::OK, "application/json", body),
        Err(e) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({ "error": format!("cannot render the view: {e}") }),
        ),
    }
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    text(status, "application/json", body.to_string())
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
