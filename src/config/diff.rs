//! `backstop validate --diff OLD NEW`: what a reload from OLD to NEW would change, upstream by
//! upstream and route by route, in the words an SRE reviews a change in.

use super::model::{Config, Route, Upstream};

/// One line per change; empty when the configs behave the same.
pub fn diff(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if old.listen != new.listen {
        out.push(format!(
            "listen: {} -> {} (needs a restart)",
            old.listen, new.listen
        ));
    }
    if old.admin_listen != new.admin_listen {
        out.push(format!(
            "admin.listen: {} -> {} (needs a restart)",
            old.admin_listen, new.admin_listen
        ));
    }
    if old.drain_timeout != new.drain_timeout {
        out.push(format!(
            "drain_timeout: {:?} -> {:?}",
            old.drain_timeout, new.drain_timeout
        ));
    }
    if old.redis != new.redis {
        out.push("redis: changed (global rate limits reconnect)".into());
    }
    for u in &new.upstreams {
        match old.upstreams.iter().find(|o| o.name == u.name) {
            None => out.push(format!(
                "upstream {}: added ({} endpoints)",
                u.name,
                u.endpoints.len()
            )),
            Some(o) if o != u => out.push(format!(
                "upstream {}: changed {}",
                u.name,
                upstream_fields(o, u).join(", ")
            )),
            Some(_) => {}
        }
    }
    for o in &old.upstreams {
        if !new.upstreams.iter().any(|u| u.name == o.name) {
            out.push(format!("upstream {}: removed", o.name));
        }
    }
    for (i, r) in new.routes.iter().enumerate() {
        match old.routes.iter().position(|o| o.name == r.name) {
            None => out.push(format!("route {}: added at position {}", r.name, i + 1)),
            Some(j) => {
                let o = &old.routes[j];
                let mut fields = route_fields(old, o, new, r);
                if i != j {
                    fields.push(format!(
                        "position {} -> {} (first match wins)",
                        j + 1,
                        i + 1
                    ));
                }
                if !fields.is_empty() {
                    out.push(format!("route {}: changed {}", r.name, fields.join(", ")));
                }
            }
        }
    }
    for o in &old.routes {
        if !new.routes.iter().any(|r| r.name == o.name) {
            out.push(format!("route {}: removed", o.name));
        }
    }
    for s in &new.slos {
        match old.slos.iter().find(|o| o.name == s.name) {
            None => out.push(format!("slo {}: added", s.name)),
            Some(o) if o != s => out.push(format!(
                "slo {}: changed (its live budget starts over)",
                s.name
            )),
            Some(_) => {}
        }
    }
    for o in &old.slos {
        if !new.slos.iter().any(|s| s.name == o.name) {
            out.push(format!("slo {}: removed", o.name));
        }
    }
    out
}

fn upstream_fields(o: &Upstream, u: &Upstream) -> Vec<String> {
    let mut f = Vec::new();
    let mut check = |name: &str, changed: bool| {
        if changed {
            f.push(name.to_owned());
        }
    };
    check("endpoints", o.endpoints != u.endpoints);
    check("connect_timeout", o.connect_timeout != u.connect_timeout);
    check("tls", o.tls != u.tls);
    check("host_header", o.host_header != u.host_header);
    check("protocol", o.protocol != u.protocol);
    check(
        "idle_timeout/max_idle_connections",
        o.idle_timeout != u.idle_timeout || o.max_idle_connections != u.max_idle_connections,
    );
    check(
        "max_concurrent_requests",
        o.max_concurrent_requests != u.max_concurrent_requests,
    );
    check(
        "circuit_breaker (its state starts over)",
        o.circuit_breaker != u.circuit_breaker,
    );
    check(
        "outlier_detection",
        o.outlier_detection != u.outlier_detection,
    );
    check("load_balancing", o.load_balancing != u.load_balancing);
    check("health_check", o.health_check != u.health_check);
    f
}

fn route_fields(old: &Config, o: &Route, new: &Config, r: &Route) -> Vec<String> {
    let mut f = Vec::new();
    let upstream = |c: &Config, i: usize| c.upstreams[i].name.clone();
    if upstream(old, o.upstream) != upstream(new, r.upstream) {
        f.push(format!(
            "upstream {} -> {}",
            upstream(old, o.upstream),
            upstream(new, r.upstream)
        ));
    }
    let failover = |c: &Config, route: &Route| {
        route
            .failover
            .iter()
            .map(|&i| upstream(c, i))
            .collect::<Vec<_>>()
    };
    if failover(old, o) != failover(new, r) {
        f.push(format!(
            "failover {:?} -> {:?}",
            failover(old, o),
            failover(new, r)
        ));
    }
    if o.host != r.host
        || o.path_prefix != r.path_prefix
        || o.methods != r.methods
        || o.headers != r.headers
    {
        f.push("match".into());
    }
    if o.timeout != r.timeout {
        f.push(format!("timeout {:?} -> {:?}", o.timeout, r.timeout));
    }
    if o.retry != r.retry {
        f.push("retry".into());
    }
    if o.rate_limit != r.rate_limit {
        f.push("rate_limit (its buckets start over)".into());
    }
    if o.circuit_breaker != r.circuit_breaker {
        f.push("circuit_breaker (its state starts over)".into());
    }
    if o.upgrade != r.upgrade {
        f.push(format!("upgrade {:?} -> {:?}", o.upgrade, r.upgrade));
    }
    f
}
