//! The ADS client: one gRPC stream to the `ads_config` of the bootstrap, Delta (istiod's default)
//! or State-of-the-World, with Envoy's ACK/NACK, subscription and reconnect semantics.
//!
//! The proxy supplies an [`XdsHandler`] that applies each batch and says whether it was accepted;
//! the client turns that into an ACK or a NACK with the handler's `error_detail`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::Any;

pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// `api_type` of the ADS config source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiType {
    /// `DELTA_GRPC`: incremental xDS.
    Delta,
    /// `GRPC`: State of the World.
    Sotw,
}

/// Where the management server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A unix socket (`pipe` address of the static cluster), as pilot-agent serves istiod's xDS.
    Unix(PathBuf),
    /// `host:port` of a `socket_address` (or a `google_grpc.target_uri`).
    Tcp(String),
}

/// Everything the client needs to connect; built from the bootstrap by the proxy.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub target: Target,
    pub api_type: ApiType,
    pub node: Node,
    /// TLS to the management server (the static cluster's transport socket); `None` is plaintext.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// `:authority` of the gRPC requests (the cluster name, as Envoy sends it).
    pub authority: String,
    /// Reconnect backoff: Envoy's defaults are 500 ms base, 30 s max, jittered.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

/// One resource of an update.
#[derive(Debug, Clone)]
pub struct Resource {
    pub name: String,
    /// Per-resource version (Delta); the response's `version_info` for SotW.
    pub version: String,
    pub resource: Any,
}

/// A batch of resources of one type received on the stream.
#[derive(Debug, Clone)]
pub struct Update {
    pub type_url: String,
    /// `version_info` (SotW) or the `system_version_info` (Delta).
    pub version: String,
    pub resources: Vec<Resource>,
    /// Delta `removed_resources`; empty for SotW.
    pub removed: Vec<String>,
    /// SotW: the batch is the whole state of the type (everything not listed is removed, for
    /// wildcard types).
    pub full_state: bool,
}

/// What the proxy implements to receive configuration.
pub trait XdsHandler: Send + Sync + 'static {
    /// Applies one update atomically. `Err(error_detail)` makes the client NACK it; the proxy
    /// keeps its last good config.
    fn on_update(&self, update: Update) -> Result<(), String>;
    /// The stream connected (`true`) or was lost (`false`): `control_plane.connected_state`.
    fn on_connection_state(&self, _connected: bool) {}
}

/// Names subscribed for a non-wildcard type (EDS, RDS, SDS).
pub type Names = BTreeSet<String>;

// Placeholder until the ADS client lands (branch xds): no ADS is started.
pub struct AdsClient;
#[derive(Clone)]
pub struct AdsHandle;
impl AdsClient {
    pub fn start(_c: ClientConfig, _h: std::sync::Arc<dyn XdsHandler>) -> AdsHandle {
        AdsHandle
    }
    pub fn start_sds(_c: ClientConfig, _h: std::sync::Arc<dyn XdsHandler>) -> AdsHandle {
        AdsHandle
    }
}
impl AdsHandle {
    pub fn set_interest(&self, _t: &str, _n: Names) {}
}
impl ClientConfig {
    pub fn from_bootstrap(
        _b: &envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap,
    ) -> Result<Option<ClientConfig>, String> {
        Ok(None)
    }
    pub fn from_api_config_source(
        _s: &envoy_types::pb::envoy::config::core::v3::ApiConfigSource,
        _b: &envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap,
    ) -> Result<ClientConfig, String> {
        Err(String::new())
    }
}
