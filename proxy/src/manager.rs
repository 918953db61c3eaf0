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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use envoy_types::pb::envoy::config::cluster::v3::Cluster as ClusterProto;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as ListenerProto;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use prost::Message;
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
    /// Order dynamic listeners were added, for a stable snapshot order.
    listener_order: Vec<String>,
    cds_version: String,
    lds_version: String,
}

/// What the manager tells the xDS client it wants (names for EDS and RDS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interest {
    pub eds: BTreeSet<String>,
    pub rds: BTreeSet<String>,
    pub sds: BTreeSet<String>,
    /// Files of file-based xDS the config references (`path_config_source` of SDS, RDS and
    /// EDS), with the resource type each must carry.
    pub files: BTreeSet<(std::path::PathBuf, &'static str)>,
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
    pub rds: UpdateStats,
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
            rds: UpdateStats::new(&cx, "http.rds"),
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
                self.spawn_dns(&c);
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

    // === clusters (CDS) ===

    /// Applies CDS resources. `full_state` (SotW) removes dynamic clusters not listed.
    pub fn apply_clusters(
        self: &Arc<Self>,
        version: &str,
        resources: Vec<ClusterProto>,
        removed: &[String],
        full_state: bool,
    ) -> Result<(), Vec<ResourceError>> {
        let mut errors = Vec::new();
        let mut st = self.state();
        let mut seen = HashSet::new();
        for p in resources {
            let name = p.name.clone();
            if !seen.insert(name.clone()) {
                errors.push(ResourceError::new(&name, format!("duplicate cluster {name} found")));
                continue;
            }
            if st.static_clusters.contains_key(&name) {
                errors.push(ResourceError::new(&name, format!("cluster '{name}' is static and cannot be updated")));
                continue;
            }
            if let Some(existing) = st.clusters.get(&name)
                && existing.cluster.proto.encode_to_vec() == p.encode_to_vec()
            {
                continue; // unchanged: keep the object, its pools and stats
            }
            let cluster = match Cluster::from_proto(&p, &self.cx) {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    errors.push(ResourceError::new(&name, e));
                    continue;
                }
            };
            let mut warming = !cluster.secret_names().iter().all(|n| self.cx.secrets.contains(n));
            if cluster.discovery == DiscoveryType::Eds {
                let svc = cluster.eds_service_name.clone().unwrap_or_default();
                match st.endpoints.get(&svc) {
                    Some((_, cla)) => {
                        let _ = cluster.set_load_assignment(cla);
                    }
                    None => warming = true,
                }
            }
            self.spawn_dns(&cluster);
            if st.clusters.contains_key(&name) {
                self.cluster_modified.inc();
            } else {
                self.cluster_added.inc();
            }
            if warming {
                self.spawn_warming_timeout(&name, cluster.id);
            }
            st.clusters.insert(name, DynCluster { version: version.to_string(), cluster, warming });
        }
        let mut gone: Vec<String> = removed.to_vec();
        if full_state {
            gone.extend(st.clusters.keys().filter(|k| !seen.contains(*k)).cloned());
        }
        for n in gone {
            if st.clusters.remove(&n).is_some() {
                self.cluster_removed.inc();
            }
        }
        st.cds_version = version.to_string();
        drop(st);
        self.publish();
        self.cds.record(errors.is_empty());
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    fn spawn_warming_timeout(self: &Arc<Self>, name: &str, id: u64) {
        let me = Arc::downgrade(self);
        let name = name.to_string();
        let t = self.initial_fetch_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(t).await;
            let Some(me) = me.upgrade() else { return };
            let changed = {
                let mut st = me.state();
                match st.clusters.get_mut(&name) {
                    Some(c) if c.cluster.id == id && c.warming => {
                        tracing::warn!(target: "remora::config", "cluster {name}: no endpoints after initial_fetch_timeout");
                        c.warming = false;
                        true
                    }
                    _ => false,
                }
            };
            if changed {
                me.publish();
            }
        });
    }

    fn spawn_dns(&self, c: &Arc<Cluster>) {
        if !c.needs_dns() {
            return;
        }
        let weak = Arc::downgrade(c);
        tokio::spawn(async move {
            loop {
                let Some(c) = weak.upgrade() else { break };
                crate::upstream::cluster::resolve_dns(&c).await;
                let refresh = c.dns_refresh;
                drop(c);
                tokio::time::sleep(refresh).await;
            }
        });
    }

    // === endpoints (EDS) ===

    /// Applies ClusterLoadAssignments; membership changes keep hosts (and pools) that stay.
    pub fn apply_endpoints(
        self: &Arc<Self>,
        version: &str,
        resources: Vec<ClusterLoadAssignment>,
        removed: &[String],
    ) -> Result<(), Vec<ResourceError>> {
        let mut errors = Vec::new();
        let mut st = self.state();
        for cla in resources {
            let svc = cla.cluster_name.clone();
            let targets: Vec<Arc<Cluster>> = st
                .clusters
                .values()
                .map(|d| &d.cluster)
                .chain(st.static_clusters.values())
                .filter(|c| c.eds_service_name.as_deref() == Some(svc.as_str()))
                .cloned()
                .collect();
            let mut ok = true;
            for c in &targets {
                if let Err(e) = c.set_load_assignment(&cla) {
                    errors.push(ResourceError::new(&svc, e));
                    ok = false;
                    break;
                }
            }
            if !ok {
                continue;
            }
            st.endpoints.insert(svc, (version.to_string(), cla));
        }
        for n in removed {
            st.endpoints.remove(n);
        }
        drop(st);
        if self.promote(&mut errors) {
            self.publish();
        }
        self.eds.record(errors.is_empty());
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    // === listeners (LDS) ===

    pub fn apply_listeners(
        self: &Arc<Self>,
        version: &str,
        resources: Vec<ListenerProto>,
        removed: &[String],
        full_state: bool,
    ) -> Result<(), Vec<ResourceError>> {
        let mut errors = Vec::new();
        let mut seen = HashSet::new();
        let mut to_start = Vec::new();
        let mut to_shut = Vec::new();
        {
            let st = self.state();
            let names: HashSet<String> = st.clusters.keys().chain(st.static_clusters.keys()).cloned().collect();
            drop(st);
            let cx = BuildCtx { cluster_names: Arc::new(names), ..self.cx.clone() };
            let mut st = self.state();
            for p in resources {
                let name = p.name.clone();
                if !seen.insert(name.clone()) {
                    errors.push(ResourceError::new(&name, format!("duplicate listener {name} found")));
                    continue;
                }
                if let Some(existing) = st.listeners.get(&name)
                    && existing.listener.proto.encode_to_vec() == p.encode_to_vec()
                {
                    continue;
                }
                if st.static_listeners.iter().any(|l| l.name == name) {
                    errors
                        .push(ResourceError::new(&name, format!("listener '{name}' is static and cannot be updated")));
                    continue;
                }
                let l = match Listener::from_proto(&p, &cx) {
                    Ok(l) => Arc::new(l),
                    Err(e) => {
                        errors.push(ResourceError::new(&name, e));
                        continue;
                    }
                };
                // An address already used by another listener is an error (unless it is the
                // listener being replaced).
                let clash = l.bind_to_port
                    && st
                        .listeners
                        .values()
                        .any(|d| d.listener.name != name && d.listener.bind_to_port && d.listener.address == l.address);
                if clash {
                    errors.push(ResourceError::new(
                        &name,
                        format!("error adding listener '{}': listener with the same address already exists", l.address),
                    ));
                    continue;
                }
                let warming = !self.listener_ready(&st, &l);
                let mut previous = None;
                if let Some(old) = st.listeners.get(&name) {
                    self.listener_modified.inc();
                    // The serving version keeps serving until its replacement is ready.
                    let serving = if old.warming { old.previous.clone() } else { Some(old.listener.clone()) };
                    if old.warming {
                        // A warming version that never served is simply dropped.
                        old.listener.shut();
                    }
                    if warming { previous = serving } else { to_shut.extend(serving) }
                } else {
                    self.listener_added.inc();
                    st.listener_order.push(name.clone());
                }
                to_start.push(l.clone());
                st.listeners.insert(name, DynListener { version: version.to_string(), listener: l, warming, previous });
            }
            let mut gone: Vec<String> = removed.to_vec();
            if full_state {
                gone.extend(st.listeners.keys().filter(|k| !seen.contains(*k)).cloned());
            }
            for n in gone {
                if let Some(old) = st.listeners.remove(&n) {
                    self.listener_removed.inc();
                    to_shut.push(old.listener);
                    to_shut.extend(old.previous);
                    st.listener_order.retain(|x| *x != n);
                }
            }
            st.lds_version = version.to_string();
        }
        for l in &to_start {
            self.attach_routes(l);
        }
        // New listeners (warming ones included: they accept, and their HCM answers 404 until
        // routes arrive; Envoy holds them back, which `routes_ready` models for activation).
        for l in &to_start {
            let warming = self.state().listeners.get(&l.name).is_some_and(|d| d.warming);
            if !warming && let Err(e) = self.start_listener(l) {
                errors.push(ResourceError::new(&l.name, e));
                self.state().listeners.remove(&l.name);
            }
        }
        for l in to_shut {
            l.shut();
        }
        self.publish();
        self.lds.record(errors.is_empty());
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    /// True when every RDS route config the listener's HCMs name has arrived.
    fn listener_ready(&self, st: &State, l: &Listener) -> bool {
        rds_names(l).iter().all(|n| st.routes.contains_key(n))
            && listener_secrets(l).iter().all(|n| self.cx.secrets.contains(n))
    }

    fn cluster_ready(&self, st: &State, c: &Cluster) -> bool {
        let endpoints = match (&c.discovery, &c.eds_service_name) {
            (DiscoveryType::Eds, Some(s)) => st.endpoints.contains_key(s),
            _ => true,
        };
        endpoints && c.secret_names().iter().all(|n| self.cx.secrets.contains(n))
    }

    /// Activates warming clusters and listeners whose dependencies (endpoints, routes, secrets)
    /// have all arrived. Returns true when something changed.
    fn promote(&self, errors: &mut Vec<ResourceError>) -> bool {
        let mut activated = Vec::new();
        let mut changed = false;
        {
            let mut st = self.state();
            let ready_clusters: Vec<String> = st
                .clusters
                .iter()
                .filter(|(_, d)| d.warming && self.cluster_ready(&st, &d.cluster))
                .map(|(n, _)| n.clone())
                .collect();
            for n in ready_clusters {
                if let Some(d) = st.clusters.get_mut(&n) {
                    d.warming = false;
                    changed = true;
                }
            }
            let ready: Vec<String> = st
                .listeners
                .iter()
                .filter(|(_, d)| d.warming && self.listener_ready(&st, &d.listener))
                .map(|(n, _)| n.clone())
                .collect();
            for n in ready {
                if let Some(d) = st.listeners.get_mut(&n) {
                    d.warming = false;
                    activated.push((d.listener.clone(), d.previous.take()));
                }
            }
        }
        for (l, previous) in activated {
            changed = true;
            if let Err(e) = self.start_listener(&l) {
                errors.push(ResourceError::new(&l.name, e));
            }
            // The version it replaces stops accepting and drains now.
            if let Some(p) = previous {
                p.shut();
            }
        }
        changed
    }

    // === secrets (SDS) ===

    /// Applies SDS secrets: the next handshakes use them; waiting clusters and listeners warm up.
    pub fn apply_secrets(
        self: &Arc<Self>,
        _version: &str,
        resources: Vec<envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret>,
        removed: &[String],
    ) -> Result<(), Vec<ResourceError>> {
        let mut errors = Vec::new();
        let mut good = Vec::new();
        for s in resources {
            match crate::tls::secrets::Secret::from_proto(&s, &s.name) {
                Ok(v) => good.push((s.name.clone(), v)),
                Err(e) => errors.push(ResourceError::new(&s.name, e)),
            }
        }
        if !good.is_empty() {
            self.cx.secrets.set(good);
        }
        if !removed.is_empty() {
            self.cx.secrets.remove(removed);
        }
        if self.promote(&mut errors) {
            self.publish();
        }
        self.sds.record(errors.is_empty());
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    /// Points the listener's RDS HCMs at the route tables we already have.
    fn attach_routes(&self, l: &Listener) {
        let st = self.state();
        for (name, slot) in rds_slots(l) {
            if let Some(r) = st.routes.get(&name) {
                slot.store(Some(r.table.clone()));
            }
        }
    }

    fn start_listener(&self, l: &Arc<Listener>) -> Result<(), String> {
        if !l.bind_to_port {
            return Ok(());
        }
        let mut all = Vec::new();
        for (i, addr) in l.addresses().enumerate() {
            // An additional [::] beside 0.0.0.0 takes IPv6 only (Envoy's default, no ipv4_compat).
            let sockets = crate::listener::socket::bind_reuseport_with(addr, self.workers.len(), 1024, i > 0)
                .map_err(|e| format!("cannot bind '{addr}': {e}"))?;
            all.push(sockets);
        }
        for sockets in all {
            for (w, s) in self.workers.iter().zip(sockets) {
                let _ = w.send(Command::Listen { listener: l.clone(), socket: s });
            }
        }
        Ok(())
    }

    // === routes (RDS) ===

    pub fn apply_routes(
        self: &Arc<Self>,
        version: &str,
        resources: Vec<RouteConfiguration>,
        removed: &[String],
    ) -> Result<(), Vec<ResourceError>> {
        let mut errors = Vec::new();
        {
            let mut st = self.state();
            let names: HashSet<String> = st.clusters.keys().chain(st.static_clusters.keys()).cloned().collect();
            let cx = BuildCtx { cluster_names: Arc::new(names), ..self.cx.clone() };
            for rc in resources {
                let name = rc.name.clone();
                // RDS route configs do not validate clusters by default (Envoy).
                let table = match RouteTable::from_proto(&rc, &cx, false) {
                    Ok(t) => Arc::new(t),
                    Err(e) => {
                        errors.push(ResourceError::new(&name, e));
                        continue;
                    }
                };
                st.routes.insert(
                    name,
                    RouteEntry {
                        version: version.to_string(),
                        table,
                        proto: rc,
                        updated: std::time::SystemTime::now(),
                    },
                );
            }
            for n in removed {
                st.routes.remove(n);
            }
            // Swap every HCM that names a changed table, and activate listeners that were warming.
            let all: Vec<Arc<Listener>> =
                st.static_listeners.iter().cloned().chain(st.listeners.values().map(|d| d.listener.clone())).collect();
            for l in &all {
                for (name, slot) in rds_slots(l) {
                    if let Some(r) = st.routes.get(&name) {
                        let current = slot.load();
                        if current.as_ref().is_none_or(|c| !Arc::ptr_eq(c, &r.table)) {
                            slot.store(Some(r.table.clone()));
                        }
                    }
                }
            }
        }
        self.promote(&mut errors);
        self.publish();
        self.rds.record(errors.is_empty());
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    // === publishing ===

    /// Builds and publishes the cluster and listener sets traffic reads (clusters first, as
    /// Envoy), and updates interest and gauges.
    pub fn publish(&self) {
        let st = self.state();
        let mut clusters = ClusterSet::default();
        for (n, c) in &st.static_clusters {
            clusters.clusters.insert(n.as_str().into(), c.clone());
        }
        let mut warming_clusters = 0;
        for (n, d) in &st.clusters {
            if d.warming {
                warming_clusters += 1;
                continue;
            }
            clusters.clusters.insert(n.as_str().into(), d.cluster.clone());
        }
        let mut listeners = st.static_listeners.clone();
        let mut warming_listeners = 0;
        for n in &st.listener_order {
            if let Some(d) = st.listeners.get(n) {
                if d.warming {
                    warming_listeners += 1;
                } else {
                    listeners.push(d.listener.clone());
                }
            }
        }
        let mut interest = Interest::default();
        for c in st.clusters.values().map(|d| &d.cluster).chain(st.static_clusters.values()) {
            match (&c.eds_service_name, &c.eds_file) {
                (Some(_), Some(f)) => {
                    interest.files.insert((f.clone(), crate::config::type_url::ENDPOINT));
                }
                (Some(s), None) => {
                    interest.eds.insert(s.clone());
                }
                _ => {}
            }
            interest.sds.extend(c.secret_names());
            interest.files.extend(c.secret_files().into_iter().map(|f| (f, crate::config::type_url::SECRET)));
        }
        for l in st.static_listeners.iter().chain(st.listeners.values().map(|d| &d.listener)) {
            for (name, file) in rds_sources(l) {
                match file {
                    Some(f) => interest.files.insert((f, crate::config::type_url::ROUTE)),
                    None => interest.rds.insert(name),
                };
            }
            interest.sds.extend(listener_secrets(l));
            let tls = l.chains.iter().chain(l.default_chain.iter()).filter_map(|c| c.tls.as_ref());
            let sds_files = tls.flat_map(|t| t.secret_files().iter().cloned());
            interest.files.extend(sds_files.map(|f| (f, crate::config::type_url::SECRET)));
        }
        self.active_clusters.set(clusters.clusters.len() as i64);
        self.warming_clusters.set(warming_clusters);
        self.total_listeners_active.set(listeners.len() as i64);
        self.total_listeners_warming.set(warming_listeners);
        let live: HashSet<u64> =
            clusters.clusters.values().map(|c| c.id).chain(st.clusters.values().map(|d| d.cluster.id)).collect();
        drop(st);
        self.shared.clusters.store(Arc::new(clusters));
        self.listeners.store(Arc::new(listeners));
        let live = Arc::new(move |id: u64| live.contains(&id));
        for w in &self.workers {
            let _ = w.send(Command::RetainClusters(live.clone()));
        }
        self.interest.send_if_modified(|cur| {
            if *cur != interest {
                *cur = interest;
                true
            } else {
                false
            }
        });
    }

    /// Versions and resources for `/config_dump`.
    pub fn dump(&self) -> DumpView {
        let st = self.state();
        let mut v = DumpView {
            cds_version: st.cds_version.clone(),
            lds_version: st.lds_version.clone(),
            static_clusters: st.static_clusters.values().map(|c| c.proto.clone()).collect(),
            clusters: st.clusters.values().map(|d| (d.version.clone(), d.cluster.proto.clone(), d.warming)).collect(),
            static_listeners: st.static_listeners.iter().map(|l| l.proto.clone()).collect(),
            listeners: st
                .listener_order
                .iter()
                .filter_map(|n| st.listeners.get(n))
                .map(|d| (d.version.clone(), d.listener.proto.clone(), d.warming))
                .collect(),
            routes: st.routes.values().map(|r| (r.version.clone(), r.proto.clone(), r.updated)).collect(),
            endpoints: st.endpoints.values().map(|(v, c)| (v.clone(), c.clone())).collect(),
        };
        v.static_clusters.sort_by(|a, b| a.name.cmp(&b.name));
        v.clusters.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        v.routes.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        v.endpoints.sort_by(|a, b| a.1.cluster_name.cmp(&b.1.cluster_name));
        v
    }

    /// Every listener currently bound (static and dynamic, active and warming).
    pub fn all_listeners(&self) -> Vec<Arc<Listener>> {
        let st = self.state();
        st.static_listeners.iter().cloned().chain(st.listeners.values().map(|d| d.listener.clone())).collect()
    }
}

/// A copy of the dynamic state for the admin API.
pub struct DumpView {
    pub cds_version: String,
    pub lds_version: String,
    pub static_clusters: Vec<ClusterProto>,
    /// (version, cluster, warming)
    pub clusters: Vec<(String, ClusterProto, bool)>,
    pub static_listeners: Vec<ListenerProto>,
    /// (version, listener, warming)
    pub listeners: Vec<(String, ListenerProto, bool)>,
    pub routes: Vec<(String, RouteConfiguration, std::time::SystemTime)>,
    pub endpoints: Vec<(String, ClusterLoadAssignment)>,
}

fn rds_slots(l: &Listener) -> Vec<(String, Arc<ArcSwapOption<RouteTable>>)> {
    l.chains
        .iter()
        .chain(l.default_chain.iter())
        .filter_map(|c| match &c.terminal {
            Terminal::Http(h) => match &h.routes {
                RouteSource::Rds { name, table, .. } => Some((name.clone(), table.clone())),
                RouteSource::Static(_) => None,
            },
            Terminal::Tcp(_) => None,
        })
        .collect()
}

/// SDS secret names the listener's TLS filter chains need.
fn listener_secrets(l: &Listener) -> Vec<String> {
    let mut v: Vec<String> = l
        .chains
        .iter()
        .chain(l.default_chain.iter())
        .filter_map(|c| c.tls.as_ref())
        .flat_map(|t| t.secret_names())
        .collect();
    v.sort();
    v.dedup();
    v
}

fn rds_names(l: &Listener) -> Vec<String> {
    rds_slots(l).into_iter().map(|(n, _)| n).collect()
}

/// Each RDS route configuration a listener needs, with its file for file-based RDS.
fn rds_sources(l: &Listener) -> Vec<(String, Option<std::path::PathBuf>)> {
    l.chains
        .iter()
        .chain(l.default_chain.iter())
        .filter_map(|c| match &c.terminal {
            Terminal::Http(h) => match &h.routes {
                RouteSource::Rds { name, file, .. } => Some((name.clone(), file.clone())),
                RouteSource::Static(_) => None,
            },
            Terminal::Tcp(_) => None,
        })
        .collect()
}
