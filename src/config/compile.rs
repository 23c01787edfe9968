//! Raw YAML structs -> a valid [`Config`], collecting every problem on the way.
//!
//! Defaults are applied here and nowhere else, so the commented example config and this file
//! are the only two places that say what a missing key means.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

use super::compile_policy;
use super::error::ConfigIssue;
use super::model::{Config, Endpoint, HostMatch, Route, Tls, Upgrade, Upstream};
use super::raw::{RawConfig, RawEndpoint, RawMatch, RawRoute, RawTls, RawUpstream};
use super::validate::{self, duration_or, Issues};

/// Default proxy listener: loopback, as a sidecar.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin listener: loopback only.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_MAX_IDLE: u32 = 256;
const MAX_WEIGHT: u32 = 1000;
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];

/// Checks `raw` and builds the config; `sha256` names the source bytes.
pub(crate) fn compile(raw: &RawConfig, sha256: String) -> Result<Config, Vec<ConfigIssue>> {
    let mut issues = Issues::default();
    let listen = listener(&mut issues, "listen", raw.listen.as_ref(), DEFAULT_LISTEN);
    let admin_raw = raw.admin.as_ref().and_then(|a| a.listen.as_ref());
    let admin_listen = listener(&mut issues, "admin.listen", admin_raw, DEFAULT_ADMIN_LISTEN);
    if listen == admin_listen && listen.port() != 0 {
        if let Some(value) = admin_raw {
            issues.at(
                "admin.listen",
                value,
                format!("{admin_listen} is also the proxy's listen address"),
            );
        }
    }
    let max_drain = Duration::from_secs(3600);
    let drain_timeout = duration_or(
        &mut issues,
        "drain_timeout",
        raw.drain_timeout.as_ref(),
        DEFAULT_DRAIN,
        max_drain,
    );

    let server = super::compile_server::server(&mut issues, raw.server.as_ref());
    let access_log = super::compile_server::access_log(&mut issues, raw.access_log.as_ref());

    let upstreams: Vec<Upstream> = raw
        .upstreams
        .iter()
        .map(|(name, up)| upstream(&mut issues, name, up, raw.redis.is_some()))
        .collect();
    let routes = routes(
        &mut issues,
        &raw.routes,
        &raw.upstreams,
        raw.redis.is_some(),
    );
    let redis = raw
        .redis
        .as_ref()
        .and_then(|r| compile_policy::redis(&mut issues, r));
    let latency_buckets =
        super::compile_metrics::latency_buckets(&mut issues, raw.metrics.as_ref());
    let slos = compile_policy::slos(&mut issues, &raw.slos, &raw.routes, &latency_buckets);
    let slos_rules = super::compile_rules::slos_rules(&mut issues, raw.slos_rules.as_ref());
    let mut warnings = Vec::new();
    let admin_token = admin_token(&mut issues, &mut warnings, raw.admin.as_ref(), admin_listen);
    let admin_protect_reads = protect_reads(&mut issues, raw.admin.as_ref());

    if issues.0.is_empty() {
        return Ok(Config {
            listen,
            admin_listen,
            drain_timeout,
            server,
            access_log,
            upstreams,
            routes,
            sha256,
            redis,
            slos,
            slos_rules,
            latency_buckets,
            admin_token,
            admin_protect_reads,
            warnings,
        });
    }
    // File order reads best; problems without a position (missing sections) come last.
    let mut found = issues.0;
    found.sort_by_key(|i| (i.position.is_none(), i.position));
    Err(found)
}

/// Reads `admin.token_file`; a non-loopback admin listener without a token is refused, since
/// its mutating endpoints (reload, forcing breakers) would be open to the network.
fn admin_token(
    issues: &mut Issues,
    warnings: &mut Vec<String>,
    raw: Option<&super::raw::RawAdmin>,
    listen: SocketAddr,
) -> Option<String> {
    let file = raw.and_then(|a| a.token_file.as_ref());
    let token = file.and_then(|f| match std::fs::read_to_string(f.value.trim()) {
        Ok(text) if !text.trim().is_empty() => {
            if let Some(warning) = readable_by_others(f.value.trim()) {
                warnings.push(warning);
            }
            Some(text.trim().to_owned())
        }
        Ok(_) => {
            issues.at("admin.token_file", f, format!("{:?} is empty", f.value));
            None
        }
        Err(e) => {
            issues.at(
                "admin.token_file",
                f,
                format!("cannot read {:?}: {e}", f.value),
            );
            None
        }
    });
    if file.is_none() && !listen.ip().is_loopback() {
        let message = format!("admin.listen {listen} is not on loopback: set admin.token_file so that reload and breaker changes need a token");
        match raw.and_then(|a| a.listen.as_ref()) {
            Some(l) => issues.at("admin.listen", l, message),
            None => issues.add("admin.listen", None, message),
        }
    }
    token
}

/// A warning when the token file can be read by its group or by others (mode & 0o077).
fn readable_by_others(path: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!("admin.token_file: {path:?} is readable by group or others (mode {mode:o}); chmod 600 it")
    })
}

/// `admin.protect_reads` needs a token to protect with.
fn protect_reads(issues: &mut Issues, raw: Option<&super::raw::RawAdmin>) -> bool {
    let Some(admin) = raw else { return false };
    let Some(flag) = &admin.protect_reads else {
        return false;
    };
    if flag.value && admin.token_file.is_none() {
        issues.at(
            "admin.protect_reads",
            flag,
            "needs admin.token_file: the views would need a token that does not exist".into(),
        );
    }
    flag.value
}

fn listener(
    issues: &mut Issues,
    path: &str,
    value: Option<&validate::Text>,
    default: &str,
) -> SocketAddr {
    let fallback = default.parse().expect("default listen addresses are valid");
    value
        .and_then(|v| validate::socket_addr(issues, path, v))
        .unwrap_or(fallback)
}

/// `has_redis`: whether the file has a `redis:` section (`quota.scope: global` and
/// `circuit_breaker.shared: redis` need it).
fn upstream(issues: &mut Issues, name: &str, raw: &RawUpstream, has_redis: bool) -> Upstream {
    let path = format!("upstreams.{name}");
    validate::name(
        issues,
        &path,
        &serde_saphyr::Spanned {
            value: name.to_owned(),
            referenced: raw.endpoints.referenced,
            defined: raw.endpoints.defined,
        },
    );
    if raw.endpoints.value.is_empty() {
        issues.at(
            &format!("{path}.endpoints"),
            &raw.endpoints,
            "no endpoints: an upstream needs at least one address".into(),
        );
    }
    let mut seen = HashSet::new();
    let endpoints = raw
        .endpoints
        .value
        .iter()
        .enumerate()
        .filter_map(|(i, ep)| endpoint(issues, &format!("{path}.endpoints[{i}]"), ep, &mut seen))
        .collect();
    let max = Duration::from_secs(300);
    let connect_timeout = duration_or(
        issues,
        &format!("{path}.connect_timeout"),
        raw.connect_timeout.as_ref(),
        DEFAULT_CONNECT_TIMEOUT,
        max,
    );
    let idle_timeout = duration_or(
        issues,
        &format!("{path}.idle_timeout"),
        raw.idle_timeout.as_ref(),
        DEFAULT_IDLE_TIMEOUT,
        Duration::from_secs(3600),
    );
    let read_timeout = duration_or(
        issues,
        &format!("{path}.read_timeout"),
        raw.read_timeout.as_ref(),
        DEFAULT_READ_TIMEOUT,
        Duration::from_secs(3600),
    );
    let host_header = raw.host_header.as_ref().and_then(|h| {
        let parsed = HeaderValue::from_str(h.value.trim())
            .ok()
            .filter(|_| !h.value.trim().is_empty());
        if parsed.is_none() {
            issues.at(
                &format!("{path}.host_header"),
                h,
                format!("invalid host header {:?}", h.value),
            );
        }
        parsed
    });
    Upstream {
        name: name.to_owned(),
        endpoints,
        connect_timeout,
        tls: raw
            .tls
            .as_ref()
            .and_then(|t| tls(issues, &format!("{path}.tls"), t)),
        host_header,
        protocol: compile_policy::protocol(
            issues,
            &format!("{path}.protocol"),
            raw.protocol.as_ref(),
        ),
        idle_timeout,
        read_timeout,
        max_idle_connections: raw
            .max_idle_connections
            .as_ref()
            .map_or(DEFAULT_MAX_IDLE, |m| m.value) as usize,
        max_concurrent_requests: raw.max_concurrent_requests.as_ref().and_then(|m| {
            if m.value == 0 {
                issues.at(
                    &format!("{path}.max_concurrent_requests"),
                    m,
                    "must be at least 1".into(),
                );
                None
            } else {
                Some(m.value)
            }
        }),
        adaptive_concurrency: raw.adaptive_concurrency.as_ref().map(|a| {
            super::compile_adaptive::adaptive(issues, &format!("{path}.adaptive_concurrency"), a)
        }),
        circuit_breaker: raw.circuit_breaker.as_ref().and_then(|b| {
            compile_policy::breaker(issues, &format!("{path}.circuit_breaker"), b, has_redis)
        }),
        outlier_detection: raw
            .outlier_detection
            .as_ref()
            .map(|o| compile_policy::outlier(issues, &format!("{path}.outlier_detection"), o)),
        load_balancing: compile_policy::load_balancing(
            issues,
            &format!("{path}.load_balancing"),
            raw.load_balancing.as_ref(),
        ),
        health_check: raw
            .health_check
            .as_ref()
            .map(|h| compile_policy::health_check(issues, &format!("{path}.health_check"), h)),
        honours_idempotency_key: raw.honours_idempotency_key.unwrap_or(false),
        idempotency_key: raw.idempotency_key.as_ref().map(|k| {
            super::compile_idempotency::generated_key(issues, &format!("{path}.idempotency_key"), k)
        }),
        quota: raw
            .quota
            .as_ref()
            .map(|q| super::compile_quota::quota(issues, &format!("{path}.quota"), q, has_redis)),
        outcome: raw
            .outcome
            .as_ref()
            .map(|o| super::compile_outcome::outcome(issues, &format!("{path}.outcome"), o)),
    }
}

fn endpoint(
    issues: &mut Issues,
    path: &str,
    raw: &RawEndpoint,
    seen: &mut HashSet<String>,
) -> Option<Endpoint> {
    let weight = raw.weight.as_ref().map_or(1, |w| w.value);
    if let Some(w) = &raw.weight {
        if w.value == 0 || w.value > MAX_WEIGHT {
            issues.at(
                &format!("{path}.weight"),
                w,
                format!("weight {} is out of range 1-{MAX_WEIGHT}", w.value),
            );
        }
    }
    let address_path = format!("{path}.address");
    match validate::host_port(&raw.address.value) {
        Ok(_) => {
            let address = raw.address.value.trim().to_owned();
            if !seen.insert(address.clone()) {
                issues.at(
                    &address_path,
                    &raw.address,
                    format!("duplicate endpoint {address}"),
                );
            }
            Some(Endpoint {
                address,
                priority: raw.priority.as_ref().map_or(0, |p| p.value),
                weight,
            })
        }
        Err(message) => {
            issues.at(&address_path, &raw.address, message);
            None
        }
    }
}

fn tls(issues: &mut Issues, path: &str, raw: &serde_saphyr::Spanned<RawTls>) -> Option<Tls> {
    match &raw.value {
        RawTls::Enabled(false) => None,
        RawTls::Enabled(true) => Some(Tls {
            sni: None,
            ca_file: None,
            verify: true,
        }),
        RawTls::Options(opts) => {
            if let Some(sni) = &opts.sni {
                if validate::host_port(&format!("{sni}:1")).is_err() || sni.starts_with('[') {
                    issues.at(
                        &format!("{path}.sni"),
                        raw,
                        format!("invalid server name {sni:?}"),
                    );
                }
            }
            if let Some(ca) = &opts.ca_file {
                if !Path::new(ca).is_file() {
                    issues.at(
                        &format!("{path}.ca_file"),
                        raw,
                        format!("file {ca:?} does not exist"),
                    );
                }
            }
            Some(Tls {
                sni: opts.sni.clone(),
                ca_file: opts.ca_file.as_ref().map(Into::into),
                verify: opts.verify.unwrap_or(true),
            })
        }
    }
}

fn routes(
    issues: &mut Issues,
    raw: &[RawRoute],
    upstreams: &BTreeMap<String, RawUpstream>,
    has_redis: bool,
) -> Vec<Route> {
    if raw.is_empty() {
        issues.add(
            "routes",
            None,
            "no routes: every request would get 404 no_route".into(),
        );
    }
    let mut names = HashSet::new();
    raw.iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let path = format!("routes[{i}]");
            validate::name(issues, &format!("{path}.name"), &r.name);
            if !names.insert(r.name.value.as_str()) {
                issues.at(
                    &format!("{path}.name"),
                    &r.name,
                    format!("duplicate route name {:?}", r.name.value),
                );
            }
            route(issues, &path, r, upstreams, has_redis)
        })
        .collect()
}

fn route(
    issues: &mut Issues,
    path: &str,
    raw: &RawRoute,
    upstreams: &BTreeMap<String, RawUpstream>,
    has_redis: bool,
) -> Option<Route> {
    let upstream = upstreams.keys().position(|n| *n == raw.upstream.value);
    if upstream.is_none() {
        let message = format!("unknown upstream {:?}", raw.upstream.value);
        let upstream_path = format!("{path}.upstream");
        issues.unknown(
            &upstream_path,
            &raw.upstream,
            &raw.upstream.value,
            message,
            &upstreams.keys().map(String::as_str).collect::<Vec<_>>(),
        );
    }
    let timeout = duration_or(
        issues,
        &format!("{path}.timeout"),
        raw.timeout.as_ref(),
        DEFAULT_ROUTE_TIMEOUT,
        Duration::from_secs(3600),
    );
    let empty = RawMatch::default();
    let m = raw.matcher.as_ref().unwrap_or(&empty);
    let mpath = format!("{path}.match");
    let host = m
        .host
        .as_ref()
        .and_then(|h| host_match(issues, &format!("{mpath}.host"), h));
    let path_prefix = match &m.path_prefix {
        Some(p) if !p.value.starts_with('/') => {
            issues.at(
                &format!("{mpath}.path_prefix"),
                p,
                format!("path prefix {:?} must start with '/'", p.value),
            );
            "/".to_owned()
        }
        Some(p) => p.value.clone(),
        None => "/".to_owned(),
    };
    let methods = m.methods.as_ref().map(|list| {
        list.iter()
            .enumerate()
            .filter_map(|(i, method)| {
                let mp = format!("{mpath}.methods[{i}]");
                let upper = method.value.to_ascii_uppercase();
                if KNOWN_METHODS.contains(&upper.as_str()) {
                    Method::from_bytes(upper.as_bytes()).ok()
                } else {
                    let message = format!("unknown method {:?}", method.value);
                    issues.unknown(&mp, method, &upper, message, &KNOWN_METHODS);
                    None
                }
            })
            .collect()
    });
    let headers = m
        .headers
        .iter()
        .filter_map(|(name, spanned)| {
            let hp = format!("{mpath}.headers.{name}");
            let (value, secret) = (spanned.value.value(), spanned.value.secret());
            let parsed_name = HeaderName::from_bytes(name.as_bytes());
            let parsed_value = HeaderValue::from_str(value);
            match (parsed_name, parsed_value) {
                (Ok(n), Ok(mut v)) => {
                    // Sensitive marks the value secret for the admin views (and for HPACK).
                    v.set_sensitive(secret);
                    Some((n, v))
                }
                (Err(_), _) => {
                    issues.at(&hp, spanned, format!("invalid header name {name:?}"));
                    None
                }
                (_, Err(_)) => {
                    let shown = if secret {
                        "(secret, not shown)".to_owned()
                    } else {
                        format!("{value:?}")
                    };
                    issues.at(&hp, spanned, format!("invalid header value {shown}"));
                    None
                }
            }
        })
        .collect();
    let mut route = Route {
        name: raw.name.value.clone(),
        host,
        path_prefix,
        methods,
        headers,
        allow_encoded_slashes: m.allow_encoded_slashes.unwrap_or(false),
        upstream: upstream?,
        timeout,
        circuit_breaker: raw.circuit_breaker.as_ref().and_then(|b| {
            compile_policy::breaker(issues, &format!("{path}.circuit_breaker"), b, has_redis)
        }),
        retry: raw
            .retry
            .as_ref()
            .and_then(|r| compile_policy::retry(issues, &format!("{path}.retry"), r)),
        failover: failover(issues, path, raw, upstreams),
        rate_limit: raw.rate_limit.as_ref().and_then(|r| {
            compile_policy::rate_limit(issues, &format!("{path}.rate_limit"), r, has_redis)
        }),
        upgrade: raw.upgrade.as_ref().and_then(|u| {
            let upgrade = upgrade(issues, &format!("{path}.upgrade"), u)?;
            upgrade_over_http1(issues, &format!("{path}.upgrade"), u, raw, upstreams);
            Some(upgrade)
        }),
        idempotency: raw.idempotency.as_ref().and_then(|i| {
            super::compile_idempotency::idempotency(
                issues,
                &format!("{path}.idempotency"),
                i,
                has_redis,
            )
        }),
        hedge: None,
    };
    if let Some(h) = &raw.hedge {
        let keyed = upstreams
            .get(&raw.upstream.value)
            .is_some_and(|u| u.idempotency_key.is_some());
        route.hedge =
            super::compile_hedge::hedge(issues, &format!("{path}.hedge"), h, &route, keyed);
    }
    Some(route)
}

/// `upgrade:` on a route: `websocket` is the only value.
fn upgrade(issues: &mut Issues, path: &str, raw: &validate::Text) -> Option<Upgrade> {
    match raw.value.trim() {
        "websocket" => Some(Upgrade::Websocket),
        other => {
            let message = format!("unknown upgrade {other:?}: expected websocket");
            issues.unknown(path, raw, other, message, &["websocket"]);
            None
        }
    }
}

/// An upgrade is an HTTP/1.1 mechanism: refuses it on a route whose upstream (or a failover
/// upstream) is `protocol: http2`.
fn upgrade_over_http1(
    issues: &mut Issues,
    path: &str,
    at: &validate::Text,
    raw: &RawRoute,
    upstreams: &BTreeMap<String, RawUpstream>,
) {
    let failover = raw.failover.iter().flatten().map(|f| &f.value);
    for name in std::iter::once(&raw.upstream.value).chain(failover) {
        let http2 = upstreams
            .get(name)
            .and_then(|u| u.protocol.as_ref())
            .is_some_and(|p| p.value.trim() == "http2");
        if http2 {
            issues.at(
                path,
                at,
                format!(
                    "upgrade needs an HTTP/1.1 upstream, but upstream {name:?} has protocol: http2"
                ),
            );
        }
    }
}

fn failover(
    issues: &mut Issues,
    path: &str,
    raw: &RawRoute,
    upstreams: &BTreeMap<String, RawUpstream>,
) -> Vec<usize> {
    let Some(list) = &raw.failover else {
        return Vec::new();
    };
    let mut seen = HashSet::new();
    list.iter()
        .enumerate()
        .filter_map(|(i, name)| {
            let fp = format!("{path}.failover[{i}]");
            if name.value == raw.upstream.value || !seen.insert(name.value.as_str()) {
                issues.at(
                    &fp,
                    name,
                    format!(
                        "upstream {:?} is already in this route's upstream or failover list",
                        name.value
                    ),
                );
                return None;
            }
            let index = upstreams.keys().position(|n| *n == name.value);
            if index.is_none() {
                let message = format!("unknown upstream {:?}", name.value);
                issues.unknown(
                    &fp,
                    name,
                    &name.value,
                    message,
                    &upstreams.keys().map(String::as_str).collect::<Vec<_>>(),
                );
            }
            index
        })
        .collect()
}

fn host_match(issues: &mut Issues, path: &str, raw: &validate::Text) -> Option<HostMatch> {
    let host = raw.value.trim().to_ascii_lowercase();
    let (matcher, bare) = match host.strip_prefix("*.") {
        Some(rest) => (HostMatch::Suffix(format!(".{rest}")), rest.to_owned()),
        None => (HostMatch::Exact(host.clone()), host.clone()),
    };
    if bare.contains(':') || validate::host_port(&format!("{bare}:1")).is_err() {
        issues.at(
            path,
            raw,
            format!(
                "invalid host {:?}: give a name without port, or *.suffix",
                raw.value
            ),
        );
        return None;
    }
    Some(matcher)
}

#[cfg(test)]
mod tests {
    fn issues_of(yaml: &str) -> Vec<String> {
        match crate::config::load_str(yaml) {
            Ok(_) => vec![],
            Err(e) => e.issues(),
        }
    }

    #[test]
    fn collects_every_problem_with_positions() {
        let yaml = "listen: nope\nupstreams:\n  payments:\n    endpoints:\n      - address: 127.0.0.1\nroutes:\n  - name: a\n    upstream: paymnts\n    timeout: soon\n";
        let issues = issues_of(yaml);
        assert_eq!(
            issues,
            vec![
                "listen: invalid listen address \"nope\": expected ip:port, e.g. 127.0.0.1:8080 (line 1, column 9)",
                "upstreams.payments.endpoints[0].address: invalid address \"127.0.0.1\": expected host:port, e.g. 10.0.0.5:8443 (line 5, column 18)",
                "routes[0].upstream: unknown upstream \"paymnts\" (line 8, column 15); did you mean \"payments\"?",
                "routes[0].timeout: invalid duration \"soon\": use a number and a unit, e.g. 250ms, 3s, 2m, 1h (line 9, column 14)",
            ]
        );
    }

    #[test]
    fn header_matches_take_scalars_and_secret_values() {
        let yaml = "upstreams:\n  svc:\n    endpoints: [{ address: \"127.0.0.1:1\" }]\nroutes:\n  - name: a\n    upstream: svc\n    match:\n      headers:\n        x-version: 2\n        x-flag: true\n        x-key: { value: \"k\\u0001ey\", secret: true }\n        x-token: { value: abc, secret: true }\n";
        let issues = issues_of(yaml);
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert!(
            issues[0].starts_with(
                "routes[0].match.headers.x-key: invalid header value (secret, not shown)"
            ),
            "{issues:?}"
        );
        let fixed = yaml.replace("k\\u0001ey", "key");
        let config = crate::config::load_str(&fixed).unwrap();
        let headers = &config.routes[0].headers;
        let find = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(find("x-version"), "2");
        assert_eq!(find("x-flag"), "true");
        assert!(!find("x-version").is_sensitive());
        assert!(find("x-token").is_sensitive());
        assert_eq!(find("x-token"), "abc");
    }

    #[test]
    fn protect_reads_needs_a_token_file() {
        let yaml = "admin: { protect_reads: true }\nupstreams:\n  svc:\n    endpoints: [{ address: \"127.0.0.1:1\" }]\nroutes:\n  - { name: a, upstream: svc }\n";
        let issues = issues_of(yaml);
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert!(
            issues[0].starts_with("admin.protect_reads: needs admin.token_file"),
            "{issues:?}"
        );
        let off = crate::config::load_str(&yaml.replace("true", "false")).unwrap();
        assert!(!off.admin_protect_reads);
    }
}
