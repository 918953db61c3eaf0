//! `envoy.filters.http.router`: the terminal HTTP filter. It answers what the route says: no
//! route (404), a direct response or a redirect (`direct`), or forwarding to the route's cluster
//! (`forward`: host selection, per-worker pooled connections, timeouts, retries with back-off,
//! and the response headers Envoy adds, `x-envoy-upstream-service-time`). Its stats are Envoy's
//! router stats under `http.<stat_prefix>.`.

mod direct;
pub mod forward;
mod mirror;
mod timeout;
mod upstream_headers;

use std::net::SocketAddr;

use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::google::protobuf::Any;
use http::Response;
use http::request::Parts;
use hyper::body::Incoming;

use super::RouteRef;
use super::istio_alpn::AlpnOverride;
use crate::config::{BuildCtx, ConfigError};
use crate::formatter::FormatContext;
use crate::http::body::ResponseBody;
use crate::http::local_reply::LocalReply;
use crate::router::header_mutation::apply_response_mutations;
use crate::router::route::Action;
use crate::runtime::WorkerCtx;
use crate::stats::Counter;
use crate::stream_info::ConnInfo;

/// The router filter's config: its proto settings and its stats.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub suppress_envoy_headers: bool,
    pub respect_expected_rq_timeout: bool,
    pub stats: RouterStats,
}

/// Envoy's router stats (`http.<stat_prefix>.<name>`).
#[derive(Debug, Clone)]
pub struct RouterStats {
    pub rq_total: Counter,
    pub no_route: Counter,
    pub no_cluster: Counter,
    pub rq_direct_response: Counter,
}

impl RouterConfig {
    /// The defaults, with stats under the HCM's stat prefix (`cx.http_stat_prefix`).
    pub fn new(cx: &BuildCtx) -> Self {
        let prefix = cx.http_stat_prefix.as_deref().unwrap_or("");
        let c = |n: &str| cx.stats.counter(&format!("http.{prefix}.{n}"));
        RouterConfig {
            suppress_envoy_headers: false,
            respect_expected_rq_timeout: false,
            stats: RouterStats {
                rq_total: c("rq_total"),
                no_route: c("no_route"),
                no_cluster: c("no_cluster"),
                rq_direct_response: c("rq_direct_response"),
            },
        }
    }

    /// Applies the filter's `typed_config`.
    pub fn apply_any(&mut self, any: &Any, field: &str) -> Result<(), ConfigError> {
        let r: Router = xds_client::any::unpack(any).map_err(|e| ConfigError::new(field, e.to_string()))?;
        self.suppress_envoy_headers = r.suppress_envoy_headers;
        self.respect_expected_rq_timeout = r.respect_expected_rq_timeout;
        Ok(())
    }
}

/// What the router reads of the connection manager running it (Envoy's decoder filter
/// callbacks): the connection, the worker, and the HCM settings forwarding depends on.
pub struct Downstream<'a> {
    pub worker: &'a WorkerCtx,
    /// The TCP peer.
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub conn: &'a ConnInfo,
    /// `http` or `https`, by the downstream transport.
    pub scheme: &'static str,
    pub router: &'a RouterConfig,
    /// Istio's `istio.alpn` in the same chain.
    pub alpn_override: Option<&'a AlpnOverride>,
    /// The HCM's enabled `upgrade_configs` types, lowercased.
    pub upgrades: &'a [String],
    /// The HCM writes access logs (the router then notes what they need).
    pub log_requests: bool,
    /// The connection's streams in flight: an upstream response body counts until it ends.
    pub activity: &'a std::rc::Rc<crate::http::body::Activity>,
    /// The stream's timers: the route's stream duration and the per-try idle timeout set them,
    /// the response body reports its progress to them.
    pub stream: &'a crate::http::stream_timer::StreamTimer,
}

/// The request as routing left it.
pub struct Routed<'a> {
    /// The route and the length of the path prefix it matched.
    pub matched: Option<(RouteRef<'a>, usize)>,
    pub authority: &'a str,
    /// The downstream address after x-forwarded-for processing.
    pub downstream_remote: SocketAddr,
    pub path_and_query: &'a str,
}

/// Carries out the route's action: 404 without a route, a local answer for direct responses
/// and redirects, else forwarding.
pub async fn route(ds: &Downstream<'_>, parts: &mut Parts, body: Incoming, r: Routed<'_>) -> Response<ResponseBody> {
    let stats = &ds.router.stats;
    stats.rq_total.inc();
    let Some((RouteRef { table, vhost, route }, matched_len)) = r.matched else {
        stats.no_route.inc();
        return LocalReply::no_route().into_response();
    };
    if vhost.require_tls.redirects(&parts.headers) {
        // Envoy's SSL redirect route: 301 to the same URL over https, nothing else applied.
        stats.rq_direct_response.inc();
        return direct::https_redirect(r.authority, r.path_and_query);
    }
    let format_cx = FormatContext {
        downstream_remote: Some(r.downstream_remote),
        downstream_direct_remote: Some(ds.remote),
        downstream_local: Some(ds.local),
        protocol: Some(crate::http::protocol_name(parts.version)),
        route_name: Some(&route.name),
        hostname: Some(&ds.worker.shared.hostname),
        peer_uri_san: ds.conn.peer_uri_sans.first().map(String::as_str),
        local_uri_san: ds.conn.local_uri_sans.first().map(String::as_str),
        server_name: ds.conn.sni.as_deref(),
        ..Default::default()
    };
    let mut resp = match &route.action {
        Action::Direct(d) => {
            stats.rq_direct_response.inc();
            direct::direct_response(d, parts, ds, r.authority, r.path_and_query)
        }
        Action::Redirect(rd) => {
            stats.rq_direct_response.inc();
            direct::redirect(rd, parts, ds, r.authority, r.path_and_query, matched_len)
        }
        Action::NonForwarding => LocalReply::no_route().into_response(),
        Action::Route(action) => {
            let req = forward::Forward {
                cx: ds,
                table,
                vhost,
                route,
                action,
                matched_len,
                authority: r.authority,
                downstream_remote: r.downstream_remote,
                format_cx: &format_cx,
            };
            return req.run(parts, body).await;
        }
    };
    let format_cx = FormatContext { request_headers: Some(&parts.headers), ..format_cx };
    apply_response_mutations(table, vhost, route, None, resp.headers_mut(), &format_cx);
    resp
}
