//! Listener filters: they run on an accepted connection before a filter chain is chosen, and
//! recover or sniff what chain matching reads. The registry below maps Envoy's names and type
//! URLs to the three remora has; any other listener filter is a config error.

pub mod http_inspector;
pub mod original_dst;
pub mod tls_inspector;

use envoy_types::pb::envoy::config::listener::v3::ListenerFilter;
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType;

use crate::config::ConfigError;

/// Which listener filters a listener runs (each at most once, in Envoy's fixed order:
/// original_dst, then tls_inspector, then http_inspector).
#[derive(Debug, Default, Clone, Copy)]
pub struct ListenerFilters {
    /// Restore the destination before an iptables REDIRECT (`SO_ORIGINAL_DST`).
    pub original_dst: bool,
    /// Read SNI and ALPN from a TLS ClientHello.
    pub tls_inspector: bool,
    /// Tell HTTP/1.x from HTTP/2 on plaintext connections (sets the ALPN chains match on).
    pub http_inspector: bool,
}

/// One registered listener filter: its type URL, the legacy names that may stand without a
/// typed config, and the flag it sets.
struct Registered {
    type_name: &'static str,
    names: &'static [&'static str],
    enable: fn(&mut ListenerFilters),
}

const REGISTRY: &[Registered] = &[
    Registered {
        type_name: "envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
        names: &["envoy.filters.listener.original_dst", "envoy.listener.original_dst"],
        enable: |f| f.original_dst = true,
    },
    Registered {
        type_name: "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
        names: &["envoy.filters.listener.tls_inspector", "envoy.listener.tls_inspector"],
        enable: |f| f.tls_inspector = true,
    },
    Registered {
        type_name: "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
        names: &["envoy.filters.listener.http_inspector", "envoy.listener.http_inspector"],
        enable: |f| f.http_inspector = true,
    },
];

impl ListenerFilters {
    /// A listener's `listener_filters`.
    pub fn from_proto(filters: &[ListenerFilter]) -> Result<Self, ConfigError> {
        let mut lf = ListenerFilters::default();
        for (i, f) in filters.iter().enumerate() {
            let t = match &f.config_type {
                Some(ConfigType::TypedConfig(a)) => xds_client::any::effective_type_name(a),
                _ => String::new(),
            };
            let found = REGISTRY
                .iter()
                .find(|r| if t.is_empty() { r.names.contains(&f.name.as_str()) } else { r.type_name == t });
            match found {
                Some(r) => (r.enable)(&mut lf),
                None => {
                    return Err(ConfigError::new(
                        format!("listener_filters[{i}]"),
                        format!("listener filter {} ({t}) is not supported", f.name),
                    ));
                }
            }
        }
        Ok(lf)
    }
}
