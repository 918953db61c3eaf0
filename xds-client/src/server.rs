//! The control-plane test harness: an ADS (SotW and Delta) and SDS server that serves declared
//! resources, pushes every change to connected streams at once, and records what the client
//! ACKed, NACKed and subscribed to. Tests, the docker demo and the benchmark drive the proxy (or
//! Envoy itself) with it exactly as istiod and pilot-agent would.
//!
//! ```ignore
//! let cp = ControlPlane::new();
//! cp.set(ads::CLUSTER, "c1", any::pack(&cluster));
//! let addr = cp.serve_tcp("127.0.0.1:0".parse()?).await?;
//! cp.wait_for(|cp| cp.acks().iter().any(|a| a.type_url == ads::CLUSTER), timeout).await;
//! ```

mod delta;
mod dump;
mod grpc;
mod sotw;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use envoy_types::pb::google::protobuf::Any;
use tokio::sync::watch;

pub use dump::{DumpCounts, resource_from_json};

use crate::ads::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};

/// Errors of the harness: loading a dump or resource, or binding a listener.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{path}: {reason}")]
    Dump { path: String, reason: String },
    #[error("binding {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
}

/// One resource as served: its `Any` and its version (per-resource version in Delta).
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    pub version: String,
    pub resource: Any,
}

/// An ACK or a NACK the client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRecord {
    pub type_url: String,
    /// SotW: the request's `version_info` (for a NACK, the last version the client accepted).
    /// Delta: the `system_version_info` of the response the nonce belongs to.
    pub version_info: String,
    pub nonce: String,
    /// `error_detail.message` of a NACK; `None` for an ACK.
    pub error_detail: Option<String>,
    pub node_id: String,
    pub stream_id: u64,
    /// Whether it arrived on a Delta stream.
    pub delta: bool,
}

/// What a stream subscribed to for one type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    pub wildcard: bool,
    pub names: BTreeSet<String>,
}

impl Subscription {
    fn matches(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// A connected stream, as seen by tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub stream_id: u64,
    pub node_id: String,
    pub delta: bool,
    pub subscriptions: BTreeMap<String, Subscription>,
}

#[derive(Default)]
struct State {
    resources: HashMap<String, BTreeMap<String, Served>>,
    /// Global counter: bumped on every change and every response, so versions and nonces are new.
    counter: u64,
    /// The counter value of each type's last change: streams compare it with what they sent.
    type_changed: HashMap<String, u64>,
    acks: Vec<AckRecord>,
    nacks: Vec<AckRecord>,
    streams: BTreeMap<u64, StreamInfo>,
    /// Latest subscription per type, from whichever stream sent it last.
    latest: HashMap<String, Subscription>,
    next_stream: u64,
}

impl State {
    fn bump(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    fn touch(&mut self, type_url: &str) -> u64 {
        let v = self.bump();
        self.type_changed.insert(type_url.to_string(), v);
        v
    }
}

pub(crate) struct Inner {
    state: Mutex<State>,
    /// Bumped on every resource change: streams wake up and push.
    changes: watch::Sender<u64>,
    /// Bumped on every recorded event (ACK, NACK, subscription, stream): `wait_for` re-checks.
    events: watch::Sender<u64>,
    /// Bumped by `stop()`: listeners and streams of earlier generations end.
    generation: watch::Sender<u64>,
    unix_paths: Mutex<Vec<PathBuf>>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify_event(&self) {
        self.events.send_modify(|v| *v += 1);
    }

    fn notify_change(&self, counter: u64) {
        self.changes.send_replace(counter);
    }
}

/// The harness. Cheap to clone; all clones share resources, records and listeners.
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

impl Default for ControlPlane {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.lock();
        f.debug_struct("ControlPlane")
            .field("types", &st.resources.keys().collect::<Vec<_>>())
            .field("counter", &st.counter)
            .field("streams", &st.streams.len())
            .finish()
    }
}

/// The EDS names the clusters in a push depend on. A changed cluster is re-created by the
/// client and waits for its endpoints; like istiod, the harness resends them after the cluster.
pub(crate) fn eds_names<'a>(clusters: impl Iterator<Item = &'a Any>) -> BTreeSet<String> {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    clusters
        .filter_map(|a| crate::any::unpack::<Cluster>(a).ok())
        .filter_map(|c| {
            let eds = c.eds_cluster_config?;
            Some(if eds.service_name.is_empty() { c.name } else { eds.service_name })
        })
        .collect()
}

/// The order istiod pushes types in; others follow in name order.
pub(crate) fn push_rank(type_url: &str) -> usize {
    [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET].iter().position(|t| *t == type_url).unwrap_or(5)
}

impl ControlPlane {
    pub fn new() -> Self {
        ControlPlane {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                changes: watch::channel(0).0,
                events: watch::channel(0).0,
                generation: watch::channel(0).0,
                unix_paths: Mutex::new(Vec::new()),
            }),
        }
    }

    /// A control plane serving the dynamic resources of an Envoy `/config_dump` (JSON or YAML).
    pub fn from_config_dump(text: &str) -> Result<Self, ServerError> {
        let cp = Self::new();
        cp.load_config_dump(text)?;
        Ok(cp)
    }

    /// Adds the dynamic resources of a `/config_dump` (each with its dump version); returns how
    /// many of each kind it loaded.
    pub fn load_config_dump(&self, text: &str) -> Result<DumpCounts, ServerError> {
        let (resources, counts) = dump::parse(text)?;
        let mut st = self.inner.lock();
        for (type_url, name, served) in resources {
            st.resources.entry(type_url.clone()).or_default().insert(name, served);
            st.touch(&type_url);
        }
        let c = st.counter;
        drop(st);
        self.inner.notify_change(c);
        Ok(counts)
    }

    /// Adds or replaces one resource (new version) and pushes it.
    pub fn set(&self, type_url: &str, name: &str, resource: Any) {
        let mut st = self.inner.lock();
        let v = st.touch(type_url);
        st.resources
            .entry(type_url.to_string())
            .or_default()
            .insert(name.to_string(), Served { version: v.to_string(), resource });
        drop(st);
        self.inner.notify_change(v);
    }

    /// Adds or replaces one resource with an explicit version.
    pub fn set_with_version(&self, type_url: &str, name: &str, version: &str, resource: Any) {
        let mut st = self.inner.lock();
        let v = st.touch(type_url);
        st.resources
            .entry(type_url.to_string())
            .or_default()
            .insert(name.to_string(), Served { version: version.to_string(), resource });
        drop(st);
        self.inner.notify_change(v);
    }

    /// Replaces every resource of the type (SotW style) and pushes. Resources whose bytes did not
    /// change keep their version, so Delta streams do not resend them.
    pub fn set_all(&self, type_url: &str, resources: Vec<(String, Any)>) {
        let mut st = self.inner.lock();
        let v = st.touch(type_url);
        let old = st.resources.remove(type_url).unwrap_or_default();
        let new = resources
            .into_iter()
            .map(|(name, resource)| {
                let version = match old.get(&name) {
                    Some(o) if o.resource == resource => o.version.clone(),
                    _ => v.to_string(),
                };
                (name, Served { version, resource })
            })
            .collect();
        st.resources.insert(type_url.to_string(), new);
        drop(st);
        self.inner.notify_change(v);
    }

    /// Removes one resource and pushes the removal; returns whether it existed.
    pub fn remove(&self, type_url: &str, name: &str) -> bool {
        let mut st = self.inner.lock();
        let existed = st.resources.get_mut(type_url).and_then(|m| m.remove(name)).is_some();
        if existed {
            let v = st.touch(type_url);
            drop(st);
            self.inner.notify_change(v);
        }
        existed
    }

    /// The resource currently served under `name`.
    pub fn get(&self, type_url: &str, name: &str) -> Option<Served> {
        self.inner.lock().resources.get(type_url).and_then(|m| m.get(name)).cloned()
    }

    /// Names served for a type, sorted.
    pub fn names(&self, type_url: &str) -> Vec<String> {
        self.inner.lock().resources.get(type_url).map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    /// Number of resources served for a type.
    pub fn count(&self, type_url: &str) -> usize {
        self.inner.lock().resources.get(type_url).map_or(0, BTreeMap::len)
    }

    /// The current value of the global version counter.
    pub fn version(&self) -> u64 {
        self.inner.lock().counter
    }

    /// Every ACK received, in order.
    pub fn acks(&self) -> Vec<AckRecord> {
        self.inner.lock().acks.clone()
    }

    /// Every NACK received, in order.
    pub fn nacks(&self) -> Vec<AckRecord> {
        self.inner.lock().nacks.clone()
    }

    /// The latest subscription for a type, from whichever stream sent it last.
    pub fn subscribed(&self, type_url: &str) -> Option<Subscription> {
        self.inner.lock().latest.get(type_url).cloned()
    }

    /// The currently connected streams and their subscriptions.
    pub fn streams(&self) -> Vec<StreamInfo> {
        self.inner.lock().streams.values().cloned().collect()
    }

    /// Waits until `pred` holds (re-checked on every ACK, NACK, subscription and stream event);
    /// returns false on timeout.
    pub async fn wait_for<F>(&self, pred: F, timeout: Duration) -> bool
    where
        F: Fn(&ControlPlane) -> bool,
    {
        let mut rx = self.inner.events.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if pred(self) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return pred(self),
            }
        }
    }

    /// Serves ADS and SDS on a TCP address (port 0 picks one); returns the bound address.
    pub async fn serve_tcp(&self, addr: SocketAddr) -> Result<SocketAddr, ServerError> {
        grpc::serve_tcp(self.inner.clone(), addr).await
    }

    /// Serves ADS and SDS on a unix socket (a stale socket file is replaced).
    pub async fn serve_unix(&self, path: impl AsRef<Path>) -> Result<(), ServerError> {
        let path = path.as_ref().to_path_buf();
        grpc::serve_unix(self.inner.clone(), &path).await?;
        self.inner.unix_paths.lock().unwrap_or_else(|p| p.into_inner()).push(path);
        Ok(())
    }

    /// Stops every listener and ends every stream (clients see the stream close and reconnect).
    /// Resources and records stay; serving again on the same address works.
    pub fn stop(&self) {
        self.inner.generation.send_modify(|g| *g += 1);
        let paths = std::mem::take(&mut *self.inner.unix_paths.lock().unwrap_or_else(|p| p.into_inner()));
        for p in paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// What a stream handler needs from the shared state.
impl Inner {
    fn register_stream(&self, node_id: &str, delta: bool) -> u64 {
        let mut st = self.lock();
        st.next_stream += 1;
        let id = st.next_stream;
        st.streams.insert(
            id,
            StreamInfo { stream_id: id, node_id: node_id.to_string(), delta, subscriptions: BTreeMap::new() },
        );
        drop(st);
        self.notify_event();
        id
    }

    fn unregister_stream(&self, id: u64) {
        self.lock().streams.remove(&id);
        self.notify_event();
    }

    fn record_subscription(&self, id: u64, type_url: &str, sub: &Subscription) {
        let mut st = self.lock();
        if let Some(s) = st.streams.get_mut(&id) {
            s.subscriptions.insert(type_url.to_string(), sub.clone());
        }
        st.latest.insert(type_url.to_string(), sub.clone());
        drop(st);
        self.notify_event();
    }

    fn record_ack(&self, rec: AckRecord) {
        if let Some(e) = &rec.error_detail {
            tracing::warn!(type_url = %rec.type_url, nonce = %rec.nonce, node = %rec.node_id, "NACK: {e}");
            self.lock().nacks.push(rec);
        } else {
            tracing::debug!(type_url = %rec.type_url, version = %rec.version_info, node = %rec.node_id, "ACK");
            self.lock().acks.push(rec);
        }
        self.notify_event();
    }
}
