//! The ADS client: one gRPC stream to the `ads_config` of the bootstrap, Delta (istiod's default)
//! or State-of-the-World, with Envoy's ACK/NACK, subscription and reconnect semantics.
//!
//! The proxy supplies an [`XdsHandler`] that applies each batch and says whether it was accepted;
//! the client turns that into an ACK or a NACK with the handler's `error_detail`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::mpsc::{self, UnboundedSender};

mod client;
mod config;
mod state;
mod transport;

pub use config::{DEFAULT_INITIAL_BACKOFF, DEFAULT_MAX_BACKOFF};

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
    /// SNI and the name verified against the server certificate (the cluster's `sni`); defaults
    /// to the host of a TCP target, else the authority.
    pub tls_server_name: Option<String>,
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

/// Starts xDS streams.
pub struct AdsClient;

impl AdsClient {
    /// Spawns the ADS stream on the current tokio runtime. CDS and LDS are wildcard subscriptions
    /// (CDS first, LDS once the first CDS response is handled, as Envoy does); other types are
    /// requested by name with [`AdsHandle::set_interest`].
    pub fn start(config: ClientConfig, handler: Arc<dyn XdsHandler>) -> AdsHandle {
        let state = state::ads_state(config.api_type, config.node.clone());
        spawn(config, handler, client::Service::Ads, state)
    }

    /// SDS on a stream of its own (`StreamSecrets` for SotW, `DeltaSecrets` for Delta), as Envoy
    /// does for an `api_config_source` such as Istio's `sds-grpc`; secrets by name only.
    pub fn start_sds(config: ClientConfig, handler: Arc<dyn XdsHandler>) -> AdsHandle {
        let state = state::State::new(config.api_type, config.node.clone());
        spawn(config, handler, client::Service::Sds, state)
    }
}

fn spawn(
    config: ClientConfig,
    handler: Arc<dyn XdsHandler>,
    service: client::Service,
    state: state::State,
) -> AdsHandle {
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let shared = Arc::new(client::Shared::default());
    let task = client::Task { config, service, handler, shared: shared.clone(), commands, state };
    let join = tokio::spawn(task.run());
    AdsHandle { inner: Arc::new(HandleInner { commands: commands_tx, shared, abort: join.abort_handle() }) }
}

/// Controls a running client. Dropping every handle leaves the stream running: call
/// [`AdsHandle::shutdown`] to stop it.
#[derive(Clone)]
pub struct AdsHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    commands: UnboundedSender<client::Command>,
    shared: Arc<client::Shared>,
    abort: tokio::task::AbortHandle,
}

impl AdsHandle {
    /// Names subscribed for a non-wildcard type (EDS, RDS, SDS). The subscribe/unsubscribe goes
    /// out at once (Delta: `resource_names_subscribe`/`unsubscribe`; SotW: a new request with the
    /// full list), or with the next stream when disconnected. The same set again is a no-op.
    /// Safe to call from inside [`XdsHandler::on_update`]: the change follows that update's ACK.
    pub fn set_interest(&self, type_url: &str, names: Names) {
        let _ = self.inner.commands.send(client::Command::Interest(type_url.to_string(), names));
    }

    /// Stops the stream at its next await point; an update already being handled finishes.
    pub fn shutdown(&self) {
        self.inner.shared.stopped.store(true, Ordering::Release);
        self.inner.abort.abort();
    }

    /// A stream is established (the last `on_connection_state` was `true`).
    pub fn is_connected(&self) -> bool {
        self.inner.shared.connected.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for AdsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdsHandle").field("connected", &self.is_connected()).finish_non_exhaustive()
    }
}
