//! The config manager: applies cluster, endpoint, listener and route updates (static at start,
//! then from xDS) with Envoy's rules, and publishes each result as a new snapshot.
//!
//! Invariants:
//! - every update is translated and validated off to the side; traffic only ever sees a whole
//!   new cluster set, then a whole new listener set (one atomic pointer swap each, see
//!   `crate::runtime`);
//! - a cluster whose proto did not change keeps its object (and so its pools and stats);
//! - an EDS cluster warms until its ClusterLoadAssignment arrives (or `initial_fetch_timeout`);
//!   a listener warms until the route configurations its HCMs name via RDS arrive;
//! - an updated or removed listener stops accepting and drains its connections gracefully,
//!   while its replacement (bound on the same address with SO_REUSEPORT) takes new ones;
//! - per-resource failures are returned (they become a NACK); good resources still apply.
//!
//! One file per resource type applies its updates (`clusters`, `endpoints`, `listeners`,
//! `routes`, `secrets`); `snapshot` publishes what traffic reads, `interest` derives the names
//! the xDS client must subscribe to, `dump` copies the state for `/config_dump`.

mod clusters;
mod dump;
mod endpoints;
mod interest;
mod listeners;
mod routes;
mod secrets;
mod snapshot;

pub use dump::DumpView;
pub use interest::Interest;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use tokio::sync::mpsc;

use crate::config::BuildCtx;
use crate::filters::network::Terminal;
use crate::filters::network::http_connection_manager::RouteSource;
use crate::listener::{ActiveListeners, Listener};
use crate::router::RouteTable;
use crate::runtime::Shared;
use crate::stats::{Counter, Gauge};
use crate::upstream::cluster::{Cluster, DiscoveryType};
use crate::upstream::cluster_manager::ClusterSet;

/// What the config manager asks of each worker.
pub enum WorkerCommand {
    /// Accept on `socket` for `listener` until its `stop` turns true.
    Listen { listener: Arc<Listener>, socket: std::net::TcpListener },
    /// Drop pools of clusters that are gone.
    RetainClusters(Arc<dyn Fn(u64) -> bool + Send + Sync>),
}

use WorkerCommand as Command;

/// One failed resource of an update.
#[derive(Debug, Clone)]
pub struct ResourceError {
    pub name: String,
    pub error: String,
}

impl ResourceError {
    fn new(name: &str, e: impl std::fmt::Display) -> Self {
        ResourceError { name: name.to_string(), error: e.to_string() }
    }
}

/// Envoy's `<type>.update_*` counters for one xDS type.
pub struct UpdateStats {
    pub update_attempt: Counter,
    pub update_success: Counter,
    pub update_rejected: Counter,
    pub update_failure: Counter,
    pub update_empty: Counter,
    pub version: Gauge,
}

impl UpdateStats {
    fn new(cx: &BuildCtx, prefix: &str) -> Self {
        let c = |n: &str| cx.stats.counter(&format!("{prefix}.{n}"));
        UpdateStats {
            update_attempt: c("update_attempt"),
            update_success: c("update_success"),
            update_rejected: c("update_rejected"),
            update_failure: c("update_failure"),
            update_empty: c("update_empty"),
            version: cx.stats.gauge(&format!("{prefix}.version")),
        }
    }

    /// Counts one update's outcome.
    pub fn record(&self, ok: bool) {
        self.update_attempt.inc();
        if ok {
            self.update_success.inc();
        } else {
            self.update_rejected.inc();
        }
    }
}

/// One RDS subscription's stats, `http.<stat_prefix>.rds.<route_config_name>.*` (the prefix of
/// the first HTTP connection manager that names it, `:` in the name as `_`), as Envoy keeps them.
struct RdsStats {
    config_reload: Counter,
    update_attempt: Counter,
    update_success: Counter,
    update_rejected: Counter,
}

impl RdsStats {
    fn new(cx: &BuildCtx, stat_prefix: &str, name: &str) -> Self {
        let c = |n: &str| cx.stats.counter(&format!("http.{stat_prefix}.rds.{}.{n}", name.replace(':', "_")));
        RdsStats {
            config_reload: c("config_reload"),
            update_attempt: c("update_attempt"),
            update_success: c("update_success"),
            update_rejected: c("update_rejected"),
        }
    }
}

struct ListenSockets {
    addresses: Vec<std::net::SocketAddr>,
    /// Per address, one socket per worker.
    sockets: Vec<Vec<std::net::TcpListener>>,
}

#[derive(Clone)]
struct DynCluster {
    version: String,
    cluster: Arc<Cluster>,
    /// Waiting for its endpoints (not yet visible to traffic).
    warming: bool,
}

#[derive(Clone)]
struct DynListener {
    version: String,
    listener: Arc<Listener>,
    warming: bool,
    /// The version it replaces, kept serving until this one is ready.
    previous: Option<Arc<Listener>>,
}

#[derive(Clone)]
struct RouteEntry {
    version: String,
    table: Arc<RouteTable>,
    proto: RouteConfiguration,
    updated: std::time::SystemTime,
}

#[derive(Default)]
struct State {
    static_clusters: HashMap<String, Arc<Cluster>>,
    clusters: HashMap<String, DynCluster>,
    /// Last ClusterLoadAssignment per EDS service name.
    endpoints: HashMap<String, (String, ClusterLoadAssignment)>,
    static_listeners: Vec<Arc<Listener>>,
    listeners: HashMap<String, DynListener>,
    routes: HashMap<String, RouteEntry>,
    /// Envoy's per-subscription RDS stats, by route configuration name.
    rds_stats: HashMap<String, RdsStats>,
    /// The listen sockets of each dynamic listener (one per worker per address), kept so that a
    /// new version of a listener at the same addresses takes them over, as Envoy does: its
    /// workers accept on the same sockets, so no connection waiting in an accept queue is reset
    /// when the old version stops.
    sockets: HashMap<String, ListenSockets>,
    /// Order dynamic listeners were added, for a stable snapshot order.
    listener_order: Vec<String>,
    cds_version: String,
    lds_version: String,
}

pub struct ConfigManager {
    shared: Arc<Shared>,
    /// The published listeners (the cluster set is in `shared`).
    listeners: Arc<ActiveListeners>,
    cx: BuildCtx,
    workers: Vec<mpsc::UnboundedSender<Command>>,
    state: Mutex<State>,
    pub cds: UpdateStats,
    pub lds: UpdateStats,
    pub eds: UpdateStats,
    pub sds: UpdateStats,
    active_clusters: Gauge,
    warming_clusters: Gauge,
    total_listeners_active: Gauge,
    total_listeners_warming: Gauge,
    listener_added: Counter,
    listener_modified: Counter,
    listener_removed: Counter,
    listener_create_success: Counter,
    cluster_added: Counter,
    cluster_modified: Counter,
    cluster_removed: Counter,
    /// Told about interest changes (the ADS client subscribes accordingly).
    interest: tokio::sync::watch::Sender<Interest>,
    initial_fetch_timeout: Duration,
}

impl ConfigManager {
    pub fn new(
        shared: Arc<Shared>,
        listeners: Arc<ActiveListeners>,
        cx: BuildCtx,
        workers: Vec<mpsc::UnboundedSender<Command>>,
    ) -> Arc<Self> {
        let s = &cx.stats;
        Arc::new(ConfigManager {
            cds: UpdateStats::new(&cx, "cluster_manager.cds"),
            lds: UpdateStats::new(&cx, "listener_manager.lds"),
            eds: UpdateStats::new(&cx, "cluster_manager.eds"),
            sds: UpdateStats::new(&cx, "sds"),
            active_clusters: s.gauge("cluster_manager.active_clusters"),
            warming_clusters: s.gauge("cluster_manager.warming_clusters"),
            total_listeners_active: s.gauge("listener_manager.total_listeners_active"),
            total_listeners_warming: s.gauge("listener_manager.total_listeners_warming"),
            listener_added: s.counter("listener_manager.listener_added"),
            listener_modified: s.counter("listener_manager.listener_modified"),
            listener_removed: s.counter("listener_manager.listener_removed"),
            listener_create_success: s.counter("listener_manager.listener_create_success"),
            cluster_added: s.counter("cluster_manager.cluster_added"),
            cluster_modified: s.counter("cluster_manager.cluster_modified"),
            cluster_removed: s.counter("cluster_manager.cluster_removed"),
            interest: tokio::sync::watch::channel(Interest::default()).0,
            initial_fetch_timeout: Duration::from_secs(15),
            shared,
            listeners,
            cx,
            workers,
            state: Mutex::new(State::default()),
        })
    }

    /// The field-coverage guard's verdict on one resource: `Err` names the refused field.
    fn admit<M: prost::Message + prost::Name>(&self, resource: &M) -> Result<(), String> {
        match &self.cx.guard {
            Some(g) => {
                g.admit(resource, &self.cx.stats).map_err(|f| crate::config::ConfigError::unsupported(&f).to_string())
            }
            None => Ok(()),
        }
    }

    /// The published listeners.
    pub fn active_listeners(&self) -> Arc<Vec<Arc<Listener>>> {
        self.listeners.load_full()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn build_ctx(&self) -> &BuildCtx {
        &self.cx
    }

    /// Watch this to learn which EDS and RDS names are needed.
    pub fn interest(&self) -> tokio::sync::watch::Receiver<Interest> {
        self.interest.subscribe()
    }

    /// Installs the bootstrap's static clusters and listeners (before any xDS).
    pub fn install_static(
        self: &Arc<Self>,
        clusters: Vec<Arc<Cluster>>,
        listeners: Vec<Arc<Listener>>,
    ) -> Result<(), String> {
        {
            let mut st = self.state();
            for c in clusters {
                self.spawn_cluster_tasks(&c);
                self.cluster_added.inc();
                st.static_clusters.insert(c.name.to_string(), c);
            }
        }
        for l in &listeners {
            self.start_listener(l)?;
            self.listener_added.inc();
            self.listener_create_success.inc();
            self.attach_routes(l);
        }
        self.state().static_listeners = listeners;
        self.publish();
        Ok(())
    }

    /// Every listener currently bound (static and dynamic, active and warming).
    pub fn all_listeners(&self) -> Vec<Arc<Listener>> {
        let st = self.state();
        st.static_listeners.iter().cloned().chain(st.listeners.values().map(|d| d.listener.clone())).collect()
    }
}
