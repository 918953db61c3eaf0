//! The HTTP filter manager: selects the route, runs the HTTP filters in chain order on the
//! request (any may answer early) and in reverse on the response, then hands the request to the
//! router filter. Filters run before the router whether or not a route matched, as in Envoy.

use std::net::SocketAddr;

use http::Response;
use hyper::body::Incoming;

use super::connection::ConnCtx;
use crate::filters::http::router::{Downstream, Routed};
use crate::filters::http::{ClearRouteCache, FilterAction, RequestCtx, RouteRef};
use crate::http::body::ResponseBody;
use crate::matcher::RequestHeaders;
use crate::router::route::{Action, MatchInput};

pub(super) async fn run(
    cx: &ConnCtx,
    parts: &mut http::request::Parts,
    body: Incoming,
    authority: &str,
    downstream_remote: SocketAddr,
    timer: &crate::http::stream_timer::StreamTimer,
) -> Response<ResponseBody> {
    let hcm = &cx.hcm;
    let table = hcm.route_table();
    let path_and_query = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    let scheme_of_uri = parts.uri.scheme().cloned();
    let scheme = scheme_of_uri.as_ref().map(|s| s.as_str()).unwrap_or(cx.scheme);
    let select = |parts: &http::request::Parts| {
        let t = table.as_deref()?;
        let path_and_query = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let host_for_match = if hcm.strip_any_host_port { strip_port(authority) } else { authority };
        let vhost = t.virtual_host(host_for_match)?;
        let input = MatchInput {
            headers: RequestHeaders {
                method: parts.method.as_str(),
                path: path_and_query,
                authority,
                scheme,
                headers: &parts.headers,
            },
            path,
            query,
            random: fastrand::u64(0..1_000_000),
            // Classic CONNECT (authority-form, no path); an extended CONNECT has a path.
            is_connect: parts.method == http::Method::CONNECT && parts.uri.path_and_query().is_none(),
        };
        let (route, len) = vhost.route(&input)?;
        Some((RouteRef { table: t, vhost, route }, len))
    };
    // The route's idle timeout replaces the connection manager's (Envoy's refreshIdleTimeout,
    // on each route selection).
    let route_idle = |m: &Option<(RouteRef<'_>, usize)>| {
        if let Some(Action::Route(a)) = m.as_ref().map(|m| &m.0.route.action)
            && let Some(d) = a.idle_timeout
        {
            timer.set_idle(d);
        }
    };
    let mut matched = select(parts);
    route_idle(&matched);

    // The span starts once the route is known (its decorator names the operation).
    let decorator = hcm.tracing.as_ref().and(matched.as_ref()).and_then(|m| m.0.route.decorator.as_ref());
    let mut span = hcm.tracing.as_ref().and_then(|t| t.start(&mut parts.headers, decorator.map(|d| &*d.0), authority));
    let mut decorated = decorator.filter(|d| d.1).map(|d| d.0.clone());
    if let (Some(t), Some(sp)) = (&hcm.tracing, span.as_mut()) {
        if t.ingress {
            // An operation named by the calling proxy overrides the decorator's.
            if let Some(op) = parts.headers.remove(X_ENVOY_DECORATOR_OPERATION)
                && !op.is_empty()
            {
                if sp.sampled {
                    sp.name = String::from_utf8_lossy(op.as_bytes()).into_owned();
                }
                decorated = None;
            }
        } else if let Some(op) = &decorated
            && let Ok(v) = http::HeaderValue::from_str(op)
        {
            parts.headers.insert(X_ENVOY_DECORATOR_OPERATION, v);
        }
    }
    let traced = span.as_ref().is_some_and(|s| s.sampled);

    // HTTP filters run before the router, whether or not a route matched (as in Envoy).
    let mut rcx = RequestCtx {
        remote: downstream_remote,
        direct_remote: cx.remote,
        local: cx.local,
        conn: &cx.conn,
        route: matched.map(|m| m.0),
        stat_prefix: &hcm.stat_prefix,
        state: http::Extensions::new(),
    };
    let filters = &hcm.filters.filters;
    // `disabled` filters and per-route FilterConfig { disabled } (None: every filter runs).
    let mut active = hcm.filters.active(rcx.route);
    let runs = |active: Option<u128>, i: usize| active.is_none_or(|bits| i >= 128 || bits & (1 << i) != 0);
    let mut answered_by = filters.len();
    let mut early: Option<Response<ResponseBody>> = None;
    for (i, f) in filters.iter().enumerate() {
        if !runs(active, i) {
            continue;
        }
        match f.on_request(&mut rcx, parts) {
            FilterAction::Continue => {
                // A filter changed what the route depends on (jwt_authn's clear_route_cache).
                if rcx.state.remove::<ClearRouteCache>().is_some() {
                    matched = select(parts);
                    route_idle(&matched);
                    rcx.route = matched.map(|m| m.0);
                    active = hcm.filters.active(rcx.route);
                }
            }
            FilterAction::Delay(d) => tokio::time::sleep(d).await,
            FilterAction::DelayThen(d, reply) => {
                tokio::time::sleep(d).await;
                answered_by = i;
                early = Some(reply.into_response());
                break;
            }
            FilterAction::Respond(reply) => {
                answered_by = i;
                early = Some(reply.into_response());
                break;
            }
        }
    }
    // Observers after the filter that answered still see the request (Istio counts local
    // replies: fault aborts, RBAC denials, CORS preflights).
    for (i, f) in filters.iter().enumerate().skip(answered_by + 1) {
        if runs(active, i) && f.observes_every_stream() {
            let _ = f.on_request(&mut rcx, parts);
        }
    }
    if !hcm.access_logs.is_empty() {
        // Kept with the stream's timers, so that a timer's local reply can still log it.
        timer.park(Box::new(crate::access_log::request::LoggedRequest::capture(parts, authority, scheme)));
    }
    if let Some(sp) = span.as_mut() {
        if sp.sampled {
            sp.request_tags(
                &parts.headers,
                parts.method.as_str(),
                &path_and_query,
                authority,
                crate::http::protocol_name(parts.version),
                cx.remote.ip(),
            );
        }
        if early.is_none() {
            sp.inject(&mut parts.headers);
        }
    }
    let resp = match early {
        Some(r) => r,
        None => {
            let downstream = Downstream {
                worker: &cx.worker,
                remote: cx.remote,
                local: cx.local,
                conn: &cx.conn,
                scheme: cx.scheme,
                router: &hcm.filters.router,
                alpn_override: hcm.filters.alpn_override.as_deref(),
                upgrades: &hcm.upgrades,
                log_requests: !hcm.access_logs.is_empty() || hcm.filters.needs_response_info || traced,
                activity: &cx.activity,
                stream: timer,
            };
            let routed = Routed { matched, authority, downstream_remote, path_and_query: &path_and_query };
            crate::filters::http::router::route(&downstream, parts, body, routed).await
        }
    };
    // Response path: the filters before the one that answered, in reverse order, and the
    // observers of every stream.
    let (mut rparts, mut rbody) = resp.into_parts();
    let sees = |i: usize, f: &std::sync::Arc<dyn crate::filters::http::HttpFilter>| {
        runs(active, i) && (i < answered_by || f.observes_every_stream())
    };
    for (i, f) in filters.iter().enumerate().rev() {
        if sees(i, f) {
            f.on_response(&mut rcx, &mut rparts);
        }
    }
    for (i, f) in filters.iter().enumerate().rev() {
        if sees(i, f) {
            rbody = f.wrap_body(&mut rcx, &rparts, rbody);
        }
    }
    if let Some(t) = &hcm.tracing {
        if t.ingress {
            if let Some(op) = decorated
                && let Ok(v) = http::HeaderValue::from_str(&op)
            {
                rparts.headers.insert(X_ENVOY_DECORATOR_OPERATION, v);
            }
        } else if let Some(op) = rparts.headers.remove(X_ENVOY_DECORATOR_OPERATION)
            && let Some(sp) = span.as_mut()
            && sp.sampled
            && !op.is_empty()
        {
            sp.name = String::from_utf8_lossy(op.as_bytes()).into_owned();
        }
    }
    let on_end = span.filter(|s| s.sampled);
    let logged = timer.take_parked().and_then(|b| b.downcast::<crate::access_log::request::LoggedRequest>().ok());
    if let Some(req) = logged.map(|b| *b) {
        note_for_log(&mut rparts.extensions, &rcx, req);
    } else if on_end.is_some() {
        note_for_log(&mut rparts.extensions, &rcx, Default::default());
    }
    if let Some(sp) = on_end {
        rparts.extensions.insert(crate::access_log::OnRequestEnd(std::sync::Arc::new(sp)));
    }
    Response::from_parts(rparts, rbody)
}

/// What the access log needs from routing and the filters, in the response's extensions.
fn note_for_log(ext: &mut http::Extensions, rcx: &RequestCtx<'_>, req: crate::access_log::request::LoggedRequest) {
    use crate::access_log::ResponseInfo;
    use crate::router::action::ClusterSpecifier;
    let mut info = ext.remove::<ResponseInfo>().unwrap_or_default();
    if let Some(f) = rcx.state.get::<crate::filters::http::FilterFlags>() {
        info.flags |= f.0;
    }
    if let Some(r) = rcx.route {
        match &r.route.action {
            Action::Route(a) => {
                if info.upstream_cluster.is_none()
                    && let ClusterSpecifier::Name(n) = &a.cluster
                {
                    info.upstream_cluster = Some(n.clone());
                }
            }
            Action::Direct(_) | Action::Redirect(_) if info.details.is_none() => {
                info.details = Some("direct_response".into());
            }
            _ => {}
        }
        ext.insert(crate::access_log::request::LoggedRoute { route_name: Some(r.route.name.clone()) });
    }
    ext.insert(info);
    ext.insert(req);
}

const X_ENVOY_DECORATOR_OPERATION: &str = "x-envoy-decorator-operation";

fn strip_port(host: &str) -> &str {
    if host.ends_with(']') {
        return host;
    }
    match host.rfind(':') {
        Some(i) if !host[..i].contains(':') => &host[..i],
        _ => host,
    }
}
