//! `envoy.filters.http.router`: forwards a routed request to its cluster: host selection,
//! per-worker pooled connections, timeouts, retries with back-off, and the response headers
//! Envoy adds (`x-envoy-upstream-service-time`).

pub mod forward;

use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::google::protobuf::Any;

use crate::config::ConfigError;

/// The router filter's own settings.
#[derive(Debug, Clone, Default)]
pub struct RouterConfig {
    pub suppress_envoy_headers: bool,
    pub respect_expected_rq_timeout: bool,
}

impl RouterConfig {
    pub fn from_any(any: &Any, field: &str) -> Result<Self, ConfigError> {
        let r: Router = xds_client::any::unpack(any).map_err(|e| ConfigError::new(field, e.to_string()))?;
        Ok(RouterConfig {
            suppress_envoy_headers: r.suppress_envoy_headers,
            respect_expected_rq_timeout: r.respect_expected_rq_timeout,
        })
    }
}
