//! HTTP filters: the phase trait every filter implements and the registry that turns an HCM's
//! `http_filters` list into a chain. Envoy's names and type URLs key the registry.

pub mod compressor;
pub mod cors;
pub mod fault;
pub mod istio_alpn;
pub mod istio_authn;
pub mod istio_stats;
pub mod jwt_authn;
pub mod local_ratelimit;
pub mod peer_metadata;
pub mod rbac;
pub mod router;

use std::sync::Arc;

use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter as HttpFilterProto, http_filter,
};
use envoy_types::pb::google::protobuf::Any;
use http::request::Parts;

use crate::config::{BuildCtx, ConfigError};
use crate::http::local_reply::LocalReply;
pub use crate::stream_info::ConnInfo;

/// What a filter decided about a request.
pub enum FilterAction {
    Continue,
    /// Answer now; the filters before this one still see the response.
    Respond(LocalReply),
    /// Wait, then continue with the next filter (fault delays).
    Delay(std::time::Duration),
    /// Wait, then answer (a fault delay followed by an abort).
    DelayThen(std::time::Duration, Box<LocalReply>),
}

/// The route a request matched, for per-route filter config lookups.
#[derive(Clone, Copy)]
pub struct RouteRef<'a> {
    pub table: &'a crate::router::RouteTable,
    pub vhost: &'a crate::router::VirtualHost,
    pub route: &'a crate::router::route::Route,
}

/// Per-request facts and scratch space for filters.
pub struct RequestCtx<'a> {
    /// The downstream address after x-forwarded-for processing.
    pub remote: std::net::SocketAddr,
    /// The peer address of the TCP connection.
    pub direct_remote: std::net::SocketAddr,
    pub local: std::net::SocketAddr,
    pub conn: &'a ConnInfo,
    pub route: Option<RouteRef<'a>>,
    /// The HCM's stat prefix (`http.<prefix>.` stats).
    pub stat_prefix: &'a str,
    /// Per-request state a filter keeps between its request and response hooks.
    pub state: http::Extensions,
}

impl RequestCtx<'_> {
    /// The most specific `typed_per_filter_config` for `filter_name` (route, then virtual host,
    /// then route configuration), if it has type `T`.
    pub fn per_route<T: 'static>(&self, filter_name: &str) -> Option<&T> {
        per_route_of(self.route, filter_name)
    }

    /// True when the most specific per-filter config disables the filter.
    pub fn disabled(&self, filter_name: &str) -> bool {
        self.per_route::<Disabled>(filter_name).is_some()
    }
}

/// The most specific `typed_per_filter_config` of a route (borrowing the route, not the request).
pub fn per_route_of<'a, T: 'static>(route: Option<RouteRef<'a>>, filter_name: &str) -> Option<&'a T> {
    let r = route?;
    [&r.route.per_filter, &r.vhost.per_filter, &r.table.per_filter]
        .into_iter()
        .find_map(|m| m.get(filter_name))
        .and_then(|c| c.downcast_ref::<T>())
}

/// Set in `RequestCtx::state` by a filter that changed what route selection reads (Envoy's
/// `clearRouteCache`): the filter manager selects the route again before the next filter.
#[derive(Debug, Clone, Copy)]
pub struct ClearRouteCache;

/// Marker stored for `envoy.config.route.v3.FilterConfig { disabled: true }`.
#[derive(Debug)]
pub struct Disabled;

/// Whether the filter named `name` runs for this route: the most specific per-route entry
/// decides (a `Disabled` marker turns it off, any other entry on), else the chain's default.
fn runs_on(route: Option<RouteRef<'_>>, name: &str, default_disabled: bool) -> bool {
    let Some(r) = route else { return !default_disabled };
    match [&r.route.per_filter, &r.vhost.per_filter, &r.table.per_filter].into_iter().find_map(|m| m.get(name)) {
        Some(c) => !c.is::<Disabled>(),
        None => !default_disabled,
    }
}

pub use crate::config::PerFilterConfigs;

/// An HTTP filter instance (immutable config, shared by all requests).
pub trait HttpFilter: Send + Sync {
    /// The name it was configured under (the key for `typed_per_filter_config`).
    fn name(&self) -> &str;

    /// Runs on request headers, in chain order, after route selection (the route may be None:
    /// filters run before the router answers 404, as in Envoy).
    fn on_request(&self, _cx: &mut RequestCtx<'_>, _req: &mut Parts) -> FilterAction {
        FilterAction::Continue
    }

    /// Runs on response headers, in reverse chain order, for upstream responses and for local
    /// replies sent by later filters or the router.
    fn on_response(&self, _cx: &mut RequestCtx<'_>, _resp: &mut http::response::Parts) {}

    /// True for a filter that observes every stream, as an Envoy access-log handler does
    /// (Istio's stats): when an earlier filter answers, its `on_request` still runs (its action
    /// is ignored) and it sees the local reply.
    fn observes_every_stream(&self) -> bool {
        false
    }

    /// May wrap the response body (compression), after `on_response`.
    fn wrap_body(
        &self,
        _cx: &mut RequestCtx<'_>,
        _resp: &http::response::Parts,
        body: crate::http::body::ResponseBody,
    ) -> crate::http::body::ResponseBody {
        body
    }
}

/// Installs a filter into the chain from its `typed_config`: `(name, typed_config, cx, chain)`.
/// Most push an `HttpFilter`; the router and Istio's ALPN filter configure the terminal step,
/// and `istio_authn` adds a filter only when it has origins.
pub(crate) type FilterFactory = fn(&str, &Any, &BuildCtx, &mut FilterChain) -> Result<(), ConfigError>;
/// Builds a per-route config from a `typed_per_filter_config` entry.
pub type PerRouteFactory = fn(any: &Any, cx: &BuildCtx) -> Result<Arc<dyn std::any::Any + Send + Sync>, ConfigError>;

/// The router filter's config type: the terminal filter of every chain.
const ROUTER_TYPE: &str = "envoy.extensions.filters.http.router.v3.Router";

/// The HTTP filters remora implements, by the type of their `typed_config`.
pub(crate) const FILTERS: &[(&str, FilterFactory)] = &[
    (ROUTER_TYPE, |_, any, _, chain| chain.router.apply_any(any, "")),
    (cors::TYPE, |name, any, cx, chain| chain.push(cors::factory(name, any, cx)?)),
    (fault::TYPE, |name, any, cx, chain| chain.push(fault::factory(name, any, cx)?)),
    (local_ratelimit::TYPE, |name, any, cx, chain| chain.push(local_ratelimit::factory(name, any, cx)?)),
    (compressor::TYPE, |name, any, cx, chain| chain.push(compressor::factory(name, any, cx)?)),
    (rbac::TYPE, |name, any, cx, chain| chain.push(rbac::factory(name, any, cx)?)),
    (jwt_authn::TYPE, |name, any, cx, chain| chain.push(jwt_authn::factory(name, any, cx)?)),
    (istio_stats::TYPE, |name, any, cx, chain| {
        chain.needs_response_info = true;
        chain.push(istio_stats::factory(name, any, cx)?)
    }),
    (peer_metadata::TYPE, |name, any, cx, chain| chain.push(peer_metadata::factory(name, any, cx)?)),
    (istio_alpn::TYPE, |_, any, _, chain| {
        chain.alpn_override = Some(Arc::new(istio_alpn::AlpnOverride::from_any(any, "")?));
        Ok(())
    }),
    (istio_authn::TYPE, |name, any, _, chain| match istio_authn::from_any(name, any, "")? {
        Some(f) => chain.push(f),
        None => Ok(()),
    }),
];

/// Per-route config types, by type name.
pub(crate) const PER_ROUTE: &[(&str, PerRouteFactory)] = &[
    (cors::PER_ROUTE_TYPE, cors::per_route_factory),
    (fault::TYPE, fault::per_route_factory),
    (local_ratelimit::TYPE, local_ratelimit::per_route_factory),
    (compressor::PER_ROUTE_TYPE, compressor::per_route_factory),
    (rbac::PER_ROUTE_TYPE, rbac::per_route_factory),
    (jwt_authn::PER_ROUTE_TYPE, jwt_authn::per_route_factory),
];

/// Turns a filter's local reply into Envoy's gRPC form when the request is gRPC
/// (`content-type: application/grpc*`): status 200, `grpc-status` (the given one, else mapped from
/// the HTTP status) and `grpc-message` carrying the body, no body.
pub fn grpc_local_reply(req: &http::HeaderMap, reply: &mut LocalReply, grpc_status: Option<u32>) {
    let is_grpc = req.get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !is_grpc {
        return;
    }
    let code = grpc_status.unwrap_or(match reply.status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    });
    reply.status = http::StatusCode::OK;
    reply.headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    reply.headers.insert("grpc-status", http::HeaderValue::from(code));
    if let Ok(m) = http::HeaderValue::from_bytes(&reply.body) {
        reply.headers.insert("grpc-message", m);
    }
    reply.body = bytes::Bytes::new();
}

/// Flags filters set on a request for the access log (Envoy's response flags, e.g. `DI`).
#[derive(Debug, Clone, Copy, Default)]
pub struct FilterFlags(pub crate::access_log::ResponseFlags);

impl RequestCtx<'_> {
    /// Records an Envoy response flag for the access log.
    pub fn set_response_flag(&mut self, flag: crate::access_log::ResponseFlags) {
        match self.state.get_mut::<FilterFlags>() {
            Some(f) => f.0 |= flag,
            None => {
                self.state.insert(FilterFlags(flag));
            }
        }
    }
}

/// Compiles a `typed_per_filter_config` map.
pub fn compile_per_filter(
    map: &std::collections::HashMap<String, Any>,
    cx: &BuildCtx,
    field: &str,
) -> Result<PerFilterConfigs, ConfigError> {
    let mut out = PerFilterConfigs::new();
    for (name, any) in map {
        let f = format!("{field}[{name}]");
        let mut t = xds_client::any::effective_type_name(any);
        let mut inner = any.clone();
        if t == "envoy.config.route.v3.FilterConfig" {
            let fc: envoy_types::pb::envoy::config::route::v3::FilterConfig =
                xds_client::any::unpack(any).map_err(|e| ConfigError::new(&f, e.to_string()))?;
            if fc.disabled {
                out.insert(name.clone(), Arc::new(Disabled));
                continue;
            }
            match fc.config {
                Some(c) => {
                    t = xds_client::any::effective_type_name(&c);
                    inner = c;
                }
                None if fc.is_optional => continue,
                None => {
                    return Err(ConfigError::new(
                        f,
                        format!("Empty route/virtual host per filter configuration for {name} filter"),
                    ));
                }
            }
            if fc.is_optional && !PER_ROUTE.iter().any(|(n, _)| *n == t) {
                continue;
            }
        }
        match PER_ROUTE.iter().find(|(n, _)| *n == t) {
            Some((_, factory)) => {
                out.insert(name.clone(), factory(&inner, cx).map_err(|e| e.within(&f))?);
            }
            None if super::telemetry_only(name, &t) => {}
            None => {
                return Err(ConfigError::new(
                    f,
                    format!("Didn't find a registered implementation for '{name}' with type URL: '{t}'"),
                ));
            }
        }
    }
    Ok(out)
}

/// The compiled chain of an HTTP connection manager.
#[derive(Clone)]
pub struct FilterChain {
    pub filters: Vec<Arc<dyn HttpFilter>>,
    /// Per filter (same index): `HttpFilter.disabled`, off unless a route's per-filter config
    /// turns it on.
    pub default_disabled: Vec<bool>,
    pub router: router::RouterConfig,
    /// Istio's `istio.alpn`: the ALPN upstream TLS connections offer, by upstream protocol.
    pub alpn_override: Option<Arc<istio_alpn::AlpnOverride>>,
    /// A filter reads what the router reports about the response (`ResponseInfo`: flags,
    /// upstream cluster), as the access logs do.
    pub needs_response_info: bool,
}

impl FilterChain {
    fn push(&mut self, filter: Arc<dyn HttpFilter>) -> Result<(), ConfigError> {
        self.filters.push(filter);
        Ok(())
    }

    /// Which filters run for a request on `route` (bit i: filter i), when any is disabled by
    /// default or by the route; None when all run, the common case, decided without lookups.
    pub fn active(&self, route: Option<RouteRef<'_>>) -> Option<u128> {
        let any_per_filter = route.is_some_and(|r| {
            !(r.route.per_filter.is_empty() && r.vhost.per_filter.is_empty() && r.table.per_filter.is_empty())
        });
        if !any_per_filter && !self.default_disabled.iter().any(|d| *d) {
            return None;
        }
        let mut bits = 0u128;
        for (i, f) in self.filters.iter().enumerate().take(128) {
            if runs_on(route, f.name(), self.default_disabled.get(i).copied().unwrap_or(false)) {
                bits |= 1 << i;
            }
        }
        Some(bits)
    }

    pub fn from_proto(filters: &[HttpFilterProto], cx: &BuildCtx, field: &str) -> Result<Self, ConfigError> {
        let mut chain = FilterChain {
            filters: Vec::new(),
            default_disabled: Vec::new(),
            router: router::RouterConfig::new(cx),
            alpn_override: None,
            needs_response_info: false,
        };
        let mut saw_router = false;
        for (i, f) in filters.iter().enumerate() {
            let fld = format!("{field}[{i}]");
            if saw_router {
                return Err(ConfigError::new(
                    fld,
                    format!("Error: terminal filter named {} must be the last filter", "envoy.filters.http.router"),
                ));
            }
            let any = match &f.config_type {
                Some(http_filter::ConfigType::TypedConfig(any)) => any,
                Some(http_filter::ConfigType::ConfigDiscovery(_)) => {
                    if f.is_optional {
                        continue;
                    }
                    return Err(ConfigError::new(fld, format!("filter {}: config_discovery is not supported", f.name)));
                }
                None => {
                    return Err(ConfigError::new(
                        fld,
                        format!("Didn't find a registered implementation for '{}' with type URL: ''", f.name),
                    ));
                }
            };
            let t = xds_client::any::effective_type_name(any);
            match FILTERS.iter().find(|(n, _)| *n == t) {
                Some((_, factory)) => {
                    if f.disabled && t == ROUTER_TYPE {
                        return Err(ConfigError::new(
                            format!("{fld}.disabled"),
                            "the router filter cannot be disabled",
                        ));
                    }
                    factory(&f.name, any, cx, &mut chain).map_err(|e| e.within(&fld))?;
                    chain.default_disabled.resize(chain.filters.len(), f.disabled);
                    saw_router = t == ROUTER_TYPE;
                }
                None if super::telemetry_only(&f.name, &t) => {
                    tracing::debug!("skipping telemetry-only HTTP filter {} ({t})", f.name);
                }
                None if f.is_optional => {
                    tracing::info!("skipping optional HTTP filter {} ({t}): not supported", f.name);
                }
                None => {
                    return Err(ConfigError::new(
                        fld,
                        format!("Didn't find a registered implementation for '{}' with type URL: '{t}'", f.name),
                    ));
                }
            }
        }
        if !saw_router {
            return Err(ConfigError::new(field, "the HTTP filter chain must end with envoy.filters.http.router"));
        }
        Ok(chain)
    }
}
