//! Envoy's network and HTTP filters, one module per extension (its config translation beside its
//! behaviour).

pub mod common;
pub mod http;
pub mod network;

/// The hooks the core calls to reach the extensions (per-route filter configs, the deprecated
/// CORS fields, upstream network filters); the assembly layer puts them in every `BuildCtx`.
pub const EXTENSIONS: crate::config::Extensions = crate::config::Extensions {
    per_filter_config: http::compile_per_filter,
    legacy_cors: http::cors::CorsPolicy::legacy_extension,
    upstream_filters: network::upstream_filters,
};
