//! Envoy's network and HTTP filters, one module per extension (its config translation beside its
//! behaviour).

pub mod common;
pub mod http;
pub mod listener;
pub mod network;

/// Filters Istio installs only for telemetry, by name or by config type. Skipping one changes
/// nothing a client or a peer sees; every registry (HTTP and network) consults this one list.
/// Where remora implements one of them (`istio.stats`, the peer metadata and TCP metadata
/// exchange filters), its own registry entry is found first and this list is not reached.
const TELEMETRY_ONLY: &[(&str, &str)] = &[
    // (filter name, config type): the type matching is enough; the name matches only with that
    // type or a Wasm module (an empty type: Wasm only).
    ("istio.stats", "stats.PluginConfig"),
    ("istio.metadata_exchange", "io.istio.http.peer_metadata.Config"),
    ("envoy.filters.network.metadata_exchange", "envoy.tcp.metadataexchange.config.MetadataExchange"),
    ("envoy.filters.http.grpc_stats", "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"),
    ("envoy.wasm.stats", ""),
    ("envoy.wasm.metadata_exchange", ""),
    // Istio's network `istio_authn` only mirrors the peer principal into filter state; remora's
    // RBAC reads the TLS facts directly.
    ("istio_authn", "io.istio.network.authn.Config"),
    ("", "istio.mixer.v1.config.client.HttpClientConfig"),
];

/// Istio's telemetry filters as Wasm modules (Istio < 1.18 ran them so).
const WASM_TYPES: &[&str] =
    &["envoy.extensions.filters.http.wasm.v3.Wasm", "envoy.extensions.filters.network.wasm.v3.Wasm"];

/// Whether a filter is on the telemetry-only list: by its config type, or by its name when its
/// config is a Wasm module (a name alone never lets another filter's config be skipped).
pub fn telemetry_only(name: &str, type_name: &str) -> bool {
    TELEMETRY_ONLY.iter().any(|(n, t)| {
        (!t.is_empty() && *t == type_name) || (!n.is_empty() && *n == name && WASM_TYPES.contains(&type_name))
    })
}

/// The hooks the core calls to reach the extensions (per-route filter configs, the deprecated
/// CORS fields, upstream network filters); the assembly layer puts them in every `BuildCtx`.
pub const EXTENSIONS: crate::config::Extensions = crate::config::Extensions {
    per_filter_config: http::compile_per_filter,
    legacy_cors: http::cors::CorsPolicy::legacy_extension,
    upstream_filters: network::upstream_filters,
};

#[cfg(test)]
mod tests {
    /// Every typed config an extension registry accepts is walked by the field-coverage guard,
    /// except the ones that are only checked, whose fields their own code reads whole.
    #[test]
    fn every_registered_extension_config_is_covered_by_the_field_guard() {
        let guard = crate::config::field_guard::FieldGuard::load().unwrap();
        let mut types: Vec<&str> = super::http::FILTERS.iter().map(|(t, _)| *t).collect();
        types.extend(super::http::PER_ROUTE.iter().map(|(t, _)| *t));
        types.extend(super::network::REGISTRY.iter().map(|(t, _)| *t));
        let missing: Vec<&str> = types
            .into_iter()
            .filter(|t| !guard.covers(t))
            .filter(|t| *t != "io.istio.network.authn.Config" && *t != "io.istio.http.peer_metadata.Config")
            .collect();
        assert!(missing.is_empty(), "not in fields.txt: {missing:?}");
    }

    #[test]
    fn a_telemetry_name_skips_only_wasm_or_its_own_type() {
        use super::telemetry_only;
        assert!(telemetry_only("istio.stats", "envoy.extensions.filters.http.wasm.v3.Wasm"));
        assert!(telemetry_only("anything", "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"));
        assert!(telemetry_only("istio_authn", "io.istio.network.authn.Config"));
        // A name Istio uses does not let another filter's config through.
        assert!(!telemetry_only("istio.stats", "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"));
        assert!(!telemetry_only("envoy.wasm.stats", "envoy.extensions.filters.http.lua.v3.Lua"));
    }
}
