//! Stages 3 to 8 for a WebSocket upgrade on a route that allows it: one attempt, no retry, on
//! a new upstream connection. A 101 answer carries the [`upgrade::Tunnel`] that will hold the
//! bulkhead slot; any other answer goes back as it is.

use std::sync::Arc;

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::attempt::{self, upstream_request};
use super::exchange::Exchange;
use super::outcome::{Attempt, End};
use super::{answer, record, target};
use crate::dataplane::body::ProxyBody;
use crate::dataplane::client_body::ClientBody;
use crate::dataplane::pool::Via;
use crate::dataplane::request_body::RequestBody;
use crate::dataplane::rescue::ProxyError;
use crate::dataplane::{settle, upgrade};

/// Sends the upgrade request and, on a 101, hands back the response with its tunnel.
pub async fn deliver(ex: &mut Exchange, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let snapshot = Arc::clone(&ex.snapshot);
    let route_index = ex.outcome.route.unwrap_or_default();
    let route = &snapshot.routes[route_index].config;
    let on_client = hyper::upgrade::on(&mut req);
    let protocol = req.headers().get(header::UPGRADE).cloned();
    let (mut parts, body) = req.into_parts();
    attempt::prepare_headers(&mut parts);
    if let Some(protocol) = protocol {
        upgrade::keep_upgrade_headers(&mut parts.headers, protocol);
    }
    let (body, watch) = ClientBody::new(body, snapshot.config.server.client_body_timeout);
    let chosen = target::choose(&snapshot, route_index, &[], None, Instant::now());
    let target = match match chosen {
        Ok(target) => target.claimed().await,
        Err(error) => Err(error),
    } {
        Ok(target) => target,
        Err(error) => {
            let response = answer::refuse(ex, Some(route.upstream), error);
            let rest = settle::Remainder::Client(body);
            return settle::keep_alive_safe(response, rest, &watch, true).await;
        }
    };
    let (upstream_index, endpoint_index) = (target.upstream, target.endpoint);
    ex.outcome.upstream = Some(upstream_index);
    ex.outcome.endpoint = Some(endpoint_index);
    ex.outcome.attempts = 1;
    let upstream = &snapshot.upstreams[upstream_index];
    let body = RequestBody::Direct { body };
    let Some(request) = upstream_request(parts, body, upstream, endpoint_index) else {
        return answer::refuse(ex, Some(upstream_index), ProxyError::BadRequest);
    };
    let timeout = ex.deadline().saturating_duration_since(Instant::now());
    let sent = attempt::send(upstream, endpoint_index, request, timeout, Via::Upgrade).await;
    let fault = attempt::client_fault(&watch, sent.call);
    ex.outcome.attempted(Attempt {
        upstream: upstream_index,
        endpoint: endpoint_index,
        end: End::of(sent.call.result, fault.is_some()),
        elapsed: sent.call.elapsed,
        why: None,
        failover: target.passed_over,
    });
    if let Some(fault) = fault {
        drop(target);
        return closing(answer::refuse(ex, Some(upstream_index), fault));
    }
    let slot = record::record(&snapshot, target, sent.call);
    let response = match sent.response {
        Ok(response) if response.status() == StatusCode::SWITCHING_PROTOCOLS => response,
        Ok(response) => {
            drop(slot);
            return settle::keep_alive_safe(response, settle::Remainder::Gone, &watch, true).await;
        }
        Err(error) => {
            drop(slot);
            let response = answer::refuse(ex, Some(upstream_index), error);
            return settle::keep_alive_safe(response, settle::Remainder::Gone, &watch, true).await;
        }
    };
    if !response.headers().contains_key(header::UPGRADE) {
        // A 101 must name the protocol it switched to (RFC 9110 section 15.2.2).
        tracing::debug!(upstream = %upstream.name, "101 without an Upgrade header");
        return closing(answer::refuse(
            ex,
            Some(upstream_index),
            ProxyError::UpstreamError,
        ));
    }
    let mut response = response;
    let on_upstream = hyper::upgrade::on(&mut response);
    let (parts, upstream_body) = response.into_parts();
    let mut response = Response::from_parts(parts, ProxyBody::local(bytes::Bytes::new()));
    let idle_timeout = upstream.config.read_timeout;
    let tunnel = upgrade::Tunnel::new(on_client, on_upstream, idle_timeout, (slot, upstream_body));
    response.extensions_mut().insert(tunnel);
    response
}

fn closing(mut response: Response<ProxyBody>) -> Response<ProxyBody> {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
