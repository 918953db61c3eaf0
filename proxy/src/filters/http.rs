//! HTTP filters: the phase trait every filter implements and the registry that turns an HCM's
//! `http_filters` list into a chain. Envoy's names and type URLs key the registry.

pub mod router;

use std::sync::Arc;

use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter as HttpFilterProto, http_filter,
};
use http::request::Parts;

use crate::config::{BuildCtx, ConfigError};
use crate::http::local_reply::LocalReply;

/// What a filter decided about a request.
pub enum FilterAction {
    Continue,
    Respond(LocalReply),
}

/// Per-request facts filters read.
pub struct FilterCtx<'a> {
    pub remote: std::net::SocketAddr,
    pub local: std::net::SocketAddr,
    pub route_name: Option<&'a str>,
}

/// An HTTP filter instance (immutable config, shared by all requests).
pub trait HttpFilter: Send + Sync {
    fn name(&self) -> &str;

    /// Runs on request headers, in chain order, after route selection.
    fn on_request(&self, _cx: &FilterCtx<'_>, _req: &mut Parts) -> FilterAction {
        FilterAction::Continue
    }

    /// Runs on response headers, in reverse chain order.
    fn on_response(
        &self,
        _cx: &FilterCtx<'_>,
        _status: http::StatusCode,
        _headers: &mut http::HeaderMap,
    ) {
    }
}

/// The compiled chain of an HTTP connection manager.
#[derive(Clone, Default)]
pub struct FilterChain {
    pub filters: Vec<Arc<dyn HttpFilter>>,
    pub router: router::RouterConfig,
}

/// Filters Istio installs for telemetry only; skipping them changes nothing a client sees.
const TELEMETRY_ONLY: &[&str] = &[
    "istio.stats",
    "istio.metadata_exchange",
    "envoy.filters.http.grpc_stats",
    "istio.alpn",
    "envoy.wasm.stats",
    "envoy.wasm.metadata_exchange",
    "istio_authn",
];

const TELEMETRY_TYPES: &[&str] = &[
    "stats.PluginConfig",
    "io.istio.http.peer_metadata.Config",
    "istio.mixer.v1.config.client.HttpClientConfig",
    "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
];

impl FilterChain {
    pub fn from_proto(
        filters: &[HttpFilterProto],
        _cx: &BuildCtx,
        field: &str,
    ) -> Result<Self, ConfigError> {
        let mut chain = FilterChain::default();
        let mut saw_router = false;
        for (i, f) in filters.iter().enumerate() {
            let fld = format!("{field}[{i}]");
            if saw_router {
                return Err(ConfigError::new(
                    fld,
                    format!(
                        "Error: terminal filter named {} must be the last filter",
                        "envoy.filters.http.router"
                    ),
                ));
            }
            let type_name = match &f.config_type {
                Some(http_filter::ConfigType::TypedConfig(any)) => {
                    xds_client::any::effective_type_name(any)
                }
                Some(http_filter::ConfigType::ConfigDiscovery(_)) => {
                    if f.is_optional {
                        continue;
                    }
                    return Err(ConfigError::new(
                        fld,
                        format!("filter {}: config_discovery is not supported", f.name),
                    ));
                }
                None => String::new(),
            };
            match type_name.as_str() {
                "envoy.extensions.filters.http.router.v3.Router" => {
                    if let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type {
                        chain.router = router::RouterConfig::from_any(any, &fld)?;
                    }
                    saw_router = true;
                }
                t if TELEMETRY_TYPES.contains(&t) || TELEMETRY_ONLY.contains(&f.name.as_str()) => {
                    tracing::debug!("skipping telemetry-only HTTP filter {} ({t})", f.name);
                }
                "" => {
                    return Err(ConfigError::new(
                        fld,
                        format!(
                            "Didn't find a registered implementation for '{}' with type URL: ''",
                            f.name
                        ),
                    ));
                }
                t => {
                    if f.is_optional {
                        tracing::info!(
                            "skipping optional HTTP filter {} ({t}): not supported",
                            f.name
                        );
                        continue;
                    }
                    return Err(ConfigError::new(
                        fld,
                        format!(
                            "Didn't find a registered implementation for '{}' with type URL: '{t}'",
                            f.name
                        ),
                    ));
                }
            }
        }
        if !saw_router {
            return Err(ConfigError::new(
                field,
                "the HTTP filter chain must end with envoy.filters.http.router",
            ));
        }
        Ok(chain)
    }
}
