//! JSON views of the running config and its live state for the admin API.
//!
//! Secrets are never shown: the admin token is omitted, a Redis URL's password is replaced
//! by `***`, and so is a header-match value marked `secret: true`.

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::config::redact_url;
use crate::runtime::Snapshot;

/// `GET /admin/config`: the running config, secrets redacted.
pub fn config(snapshot: &Snapshot) -> Value {
    let c = &snapshot.config;
    json!({
        "generation": snapshot.generation,
        "sha256": c.sha256,
        "listen": c.listen.to_string(),
        "admin": { "listen": c.admin_listen.to_string(), "token": if c.admin_token.is_some() { "***" } else { "" } },
        "drain_timeout_seconds": c.drain_timeout.as_secs_f64(),
        "redis": c.redis.as_ref().map(|r| json!({
            "url": redact_url(&r.url),
            "timeout_ms": r.timeout.as_millis() as u64,
            "on_error": format!("{:?}", r.on_error).to_lowercase(),
            "cluster": r.cluster,
        })),
        "upstreams": c.upstreams.iter().map(|u| json!({
            "name": u.name,
            "endpoints": u.endpoints.iter().map(|e| json!({"address": e.address, "priority": e.priority, "weight": e.weight})).collect::<Vec<_>>(),
            "connect_timeout_ms": u.connect_timeout.as_millis() as u64,
            "tls": u.tls.as_ref().map(|t| json!({"sni": t.sni, "ca_file": t.ca_file, "verify": t.verify})),
            "load_balancing": format!("{:?}", u.load_balancing),
            "max_concurrent_requests": u.max_concurrent_requests,
            "circuit_breaker": u.circuit_breaker.as_ref().map(|b| format!("{b:?}")),
            "outlier_detection": u.outlier_detection.as_ref().map(|o| format!("{o:?}")),
            "health_check": u.health_check.as_ref().map(|h| format!("{h:?}")),
        })).collect::<Vec<_>>(),
        "routes": routes(snapshot)["routes"].clone(),
        "slos": c.slos.iter().map(|s| json!({"name": s.name, "objective": s.objective, "window_seconds": s.window.as_secs(), "sli": format!("{:?}", s.sli)})).collect::<Vec<_>>(),
    })
}

/// `GET /admin/routes`.
pub fn routes(snapshot: &Snapshot) -> Value {
    let c = &snapshot.config;
    let routes: Vec<Value> = c
        .routes
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "upstream": c.upstreams[r.upstream].name,
                "failover": r.failover.iter().map(|&f| c.upstreams[f].name.clone()).collect::<Vec<_>>(),
                "match": {
                    "host": r.host.as_ref().map(|h| format!("{h:?}")),
                    "path_prefix": r.path_prefix,
                    "methods": r.methods.as_ref().map(|m| m.iter().map(ToString::to_string).collect::<Vec<_>>()),
                    "headers": r.headers.iter().map(|(k, v)| {
                        let shown = if v.is_sensitive() { "***" } else { v.to_str().unwrap_or("") };
                        (k.to_string(), shown.to_owned())
                    }).collect::<std::collections::BTreeMap<_, _>>(),
                },
                "timeout_ms": r.timeout.as_millis() as u64,
                "retry": r.retry.as_ref().map(|p| format!("{p:?}")),
                "rate_limit": r.rate_limit.as_ref().map(|l| format!("{l:?}")),
                "circuit_breaker": r.circuit_breaker.as_ref().map(|b| format!("{b:?}")),
                "upgrade": r.upgrade.map(|_| "websocket"),
            })
        })
        .collect();
    json!({ "routes": routes })
}

/// `GET /admin/upstreams`: endpoints with health, ejection, in-flight and latency.
pub fn upstreams(snapshot: &Snapshot) -> Value {
    let now = Instant::now();
    let list: Vec<Value> = snapshot
        .upstreams
        .iter()
        .map(|u| {
            let endpoints: Vec<Value> = u
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let ejected_for = u
                        .ejection
                        .as_ref()
                        .and_then(|x| x.ejected_until(i, now))
                        .map(|until| until.saturating_duration_since(now).as_secs_f64());
                    json!({
                        "address": e.address,
                        "healthy": e.is_healthy(),
                        "ejected_for_seconds": ejected_for,
                        "in_flight": e.load.in_flight(),
                        "ewma_latency_ms": e.load.ewma().as_secs_f64() * 1000.0,
                    })
                })
                .collect();
            json!({
                "name": u.name,
                "in_flight": u.bulkhead.in_flight(),
                "breaker": u.breaker.as_ref().map(|b| b.state().as_str()),
                "endpoints": endpoints,
            })
        })
        .collect();
    json!({ "upstreams": list })
}
