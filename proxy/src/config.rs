//! The translation toolkit (layer 0): what every `from_proto` shares. The error that names a
//! field, the build context, and helpers for Envoy's common protos (durations, data sources,
//! config sources, fractional percents).
//!
//! Invariants: protos stop at `from_proto`; everything a request needs (matchers, regexes, stat
//! handles) is compiled there, once. Assembling and publishing the compiled objects is the config
//! manager's job (`crate::manager`), not this module's.

pub mod field_guard;
pub mod pgv;
mod wire;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::config::cluster::v3::Filter as ClusterFilter;
use envoy_types::pb::envoy::config::core::v3::{ConfigSource, DataSource, config_source, data_source};
use envoy_types::pb::envoy::config::route::v3::CorsPolicy as LegacyCorsPolicy;
use envoy_types::pb::google::protobuf::Any;

use crate::stats::Store;

/// A config error naming the field it is about: `static_resources.clusters[2].lb_policy: ...`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    /// A field the guard refused: its path and "not supported by remora".
    pub fn unsupported(f: &field_guard::Finding) -> Self {
        if f.invalid {
            return ConfigError::new(f.path.clone(), format!("{} ({})", f.reason, f.field));
        }
        let mut what = format!("not supported by remora ({}", f.field);
        if !f.reason.is_empty() {
            what.push_str(": ");
            what.push_str(&f.reason);
        }
        what.push(')');
        ConfigError::new(f.path.clone(), what)
    }

    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError { field: field.into(), reason: reason.into() }
    }

    /// Prefixes the field path with the enclosing object's path.
    pub fn within(mut self, outer: &str) -> Self {
        if self.field.is_empty() {
            self.field = outer.to_string();
        } else if !outer.is_empty() {
            self.field = format!("{outer}.{}", self.field);
        }
        self
    }
}

/// What translation needs from the server: the stat store and process-wide settings.
#[derive(Clone, Default)]
pub struct BuildCtx {
    pub stats: Arc<Store>,
    /// Names of the clusters known when routes are built (Envoy's `validate_clusters`).
    pub cluster_names: Arc<std::collections::HashSet<String>>,
    pub node: Arc<NodeInfo>,
    /// Named TLS secrets (static and SDS).
    pub secrets: Arc<crate::tls::SecretStore>,
    /// While building a listener: its stat name (`0.0.0.0_8080`), for per-listener HTTP stats.
    pub listener_stat_name: Option<String>,
    /// While an HCM's HTTP filters are built: its `stat_prefix` (filters name their stats
    /// `http.<stat_prefix>.<filter>.*`).
    pub http_stat_prefix: Option<Arc<str>>,
    /// While building a listener: its `traffic_direction` is INBOUND (Istio's stats filter
    /// reports as `destination` there, else as `source`).
    pub inbound: bool,
    /// While building a listener: its `traffic_direction` is OUTBOUND (Envoy's tracing operation
    /// EGRESS; anything else traces as INGRESS).
    pub outbound: bool,
    /// `--file-flush-interval-msec`: how often access log files are flushed (None: Envoy's 10 s).
    pub file_flush_interval: Option<std::time::Duration>,
    /// The field-coverage guard (None: unchecked, as in unit tests).
    pub guard: Option<Arc<field_guard::FieldGuard>>,
    /// The extension hooks the core calls while translating (`crate::filters::EXTENSIONS` in a
    /// running proxy; none by default).
    pub extensions: Extensions,
    /// The bootstrap's tracer (`tracing.http`), for HCMs whose `tracing` names no provider
    /// (`crate::trace` downcasts it).
    pub tracer: Option<ExtensionConfig>,
}

/// A compiled extension config the core holds without knowing its type (a per-route filter
/// config, an upstream network filter); the extension that made it downcasts it.
pub type ExtensionConfig = Arc<dyn std::any::Any + Send + Sync>;

/// Compiled `typed_per_filter_config`, keyed by filter name.
pub type PerFilterConfigs = std::collections::HashMap<String, ExtensionConfig>;

/// Compiles a `typed_per_filter_config` map: `(map, cx, field)`.
pub type PerFilterConfigHook =
    fn(&std::collections::HashMap<String, Any>, &BuildCtx, &str) -> Result<PerFilterConfigs, ConfigError>;

/// How the core (route tables, clusters) reaches the extensions above it without importing them,
/// as Envoy's per-filter-config and upstream-filter factories: the extensions' registry fills
/// these in (`crate::filters::EXTENSIONS`) and the assembly layer puts them in the `BuildCtx`.
#[derive(Clone, Copy)]
pub struct Extensions {
    /// Compiles a `typed_per_filter_config` map (of a route, virtual host or route configuration)
    /// for the HTTP filters: `(map, cx, field)`.
    pub per_filter_config: PerFilterConfigHook,
    /// Compiles the deprecated `cors` field of a virtual host or route for the CORS filter.
    pub legacy_cors: fn(&LegacyCorsPolicy, &str) -> Result<ExtensionConfig, ConfigError>,
    /// Compiles a cluster's upstream network `filters`.
    pub upstream_filters: fn(&[ClusterFilter], &BuildCtx) -> Result<Vec<ExtensionConfig>, ConfigError>,
}

impl Extensions {
    /// No extensions: any config that needs one is refused.
    pub const NONE: Extensions = Extensions {
        per_filter_config: |map, _, field| match map.keys().next() {
            None => Ok(PerFilterConfigs::new()),
            Some(name) => Err(ConfigError::new(format!("{field}[{name}]"), "no HTTP filter extensions are registered")),
        },
        legacy_cors: |_, field| Err(ConfigError::new(field, "no HTTP filter extensions are registered")),
        upstream_filters: |filters, _| match filters.first() {
            None => Ok(Vec::new()),
            Some(_) => Err(ConfigError::new("filters[0]", "no upstream network filters are registered")),
        },
    };
}

impl Default for Extensions {
    fn default() -> Self {
        Extensions::NONE
    }
}

/// The node identity from the bootstrap and the command line.
#[derive(Debug, Default, Clone)]
pub struct NodeInfo {
    pub id: String,
    pub cluster: String,
    pub zone: String,
    pub metadata: Option<envoy_types::pb::google::protobuf::Struct>,
    pub hostname: String,
}

/// Converts a protobuf Duration to std, treating negatives as zero.
pub fn duration(d: &envoy_types::pb::google::protobuf::Duration) -> std::time::Duration {
    if d.seconds < 0 || (d.seconds == 0 && d.nanos <= 0) {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(d.seconds as u64, d.nanos.max(0) as u32)
}

/// `Some(duration)` for a set, non-zero Duration; `None` when unset or zero ("disabled").
pub fn optional_timeout(
    d: Option<&envoy_types::pb::google::protobuf::Duration>,
    default: Option<std::time::Duration>,
) -> Option<std::time::Duration> {
    match d {
        None => default,
        Some(d) => {
            let d = duration(d);
            if d.is_zero() { None } else { Some(d) }
        }
    }
}

/// Reads a `DataSource` (file, inline bytes/string, environment variable) at config time.
pub fn read_data_source(ds: &DataSource, field: &str) -> Result<Bytes, ConfigError> {
    use data_source::Specifier as S;
    match &ds.specifier {
        Some(S::Filename(f)) => {
            std::fs::read(f).map(Bytes::from).map_err(|e| ConfigError::new(field, format!("Invalid path: {f}: {e}")))
        }
        Some(S::InlineBytes(b)) => Ok(Bytes::from(b.clone())),
        Some(S::InlineString(s)) => Ok(Bytes::from(s.clone())),
        Some(S::EnvironmentVariable(v)) => std::env::var(v)
            .map(Bytes::from)
            .map_err(|_| ConfigError::new(field, format!("environment variable {v} is not set"))),
        None => Ok(Bytes::new()),
    }
}

/// The file of a `path_config_source` (or the deprecated `path`), if that is the source.
pub fn file_source(c: &ConfigSource) -> Option<PathBuf> {
    match &c.config_source_specifier {
        Some(config_source::ConfigSourceSpecifier::PathConfigSource(p)) => Some(PathBuf::from(&p.path)),
        Some(config_source::ConfigSourceSpecifier::Path(p)) => Some(PathBuf::from(p)),
        _ => None,
    }
}

/// The type URLs of the xDS resources remora consumes.
pub mod type_url {
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
}

/// A `FractionalPercent` as a share of one million (Envoy's `featureEnabled` without runtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Percent {
    per_million: u64,
}

impl Percent {
    pub const ALWAYS: Percent = Percent { per_million: 1_000_000 };
    pub const NEVER: Percent = Percent { per_million: 0 };

    pub fn from_proto(p: &envoy_types::pb::envoy::r#type::v3::FractionalPercent) -> Self {
        use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType as D;
        let scale = match D::try_from(p.denominator) {
            Ok(D::TenThousand) => 100,
            Ok(D::Million) => 1,
            Ok(D::Hundred) | Err(_) => 10_000,
        };
        Percent { per_million: (u64::from(p.numerator) * scale).min(1_000_000) }
    }

    /// `RuntimeFractionalPercent`: its default value (remora has no runtime overrides); unset is
    /// `default`.
    pub fn from_runtime(
        p: Option<&envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent>,
        default: Percent,
    ) -> Self {
        match p {
            Some(r) => r.default_value.as_ref().map(Percent::from_proto).unwrap_or(Percent::NEVER),
            None => default,
        }
    }

    /// `Percent` of a plain `envoy.type.v3.Percent` (0..=100, a double).
    pub fn from_percent(v: f64) -> Self {
        Percent { per_million: (v.clamp(0.0, 100.0) * 10_000.0).round() as u64 }
    }

    /// Draws a random number and says whether this request falls in the share.
    pub fn sample(self) -> bool {
        match self.per_million {
            0 => false,
            1_000_000.. => true,
            n => fastrand::u64(0..1_000_000) < n,
        }
    }

    /// The share for an explicit random value in 0..1_000_000.
    pub fn contains(self, random: u64) -> bool {
        random < self.per_million
    }

    pub fn per_million(self) -> u64 {
        self.per_million
    }

    /// The same share with at most `numerator` of `denominator` (header-provided percentages).
    pub fn capped(self, per_million: u64) -> Self {
        Percent { per_million: self.per_million.min(per_million) }
    }
}
