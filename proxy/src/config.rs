//! Translation of Envoy's protos into the immutable runtime objects the data plane reads, and
//! the snapshot that publishes them atomically.
//!
//! Invariants: protos stop at `from_proto`; everything a request needs (matchers, regexes, stat
//! handles) is compiled here, once; a snapshot is built whole and validated before it is
//! published, so traffic never sees half-applied config.

pub mod manager;

use std::sync::Arc;

use crate::listener::Listener;
use crate::stats::Store;
use crate::upstream::cluster::Cluster;

/// A config error naming the field it is about: `static_resources.clusters[2].lb_policy: ...`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
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

/// Everything traffic reads, published atomically as one `Arc<Snapshot>`.
#[derive(Default)]
pub struct Snapshot {
    pub listeners: Vec<Arc<Listener>>,
    pub clusters: crate::FastMap<Arc<str>, Arc<Cluster>>,
}

impl Snapshot {
    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }
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
