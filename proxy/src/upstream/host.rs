//! Upstream hosts and the immutable host set a cluster publishes on every membership change.
//!
//! A host keeps its identity (`id`) across updates while its address stays in the cluster, so
//! the per-worker connection pools (keyed by host id) survive DNS refreshes and EDS pushes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use envoy_types::pb::envoy::config::core::v3::Metadata;

use super::lb::LbState;
use super::outlier::HostMonitor;

static NEXT_HOST_ID: AtomicU64 = AtomicU64::new(1);

/// One upstream endpoint.
#[derive(Debug)]
pub struct Host {
    pub id: u64,
    pub address: SocketAddr,
    /// A unix socket path (`pipe` endpoints); `address` is then unspecified.
    pub pipe: Option<std::path::PathBuf>,
    /// The endpoint's hostname (DNS name or EDS `hostname`), for `auto_host_rewrite`.
    pub hostname: Arc<str>,
    pub weight: u32,
    pub priority: u32,
    pub metadata: Option<Metadata>,
    healthy: AtomicBool,
    /// Requests in flight (least-request LB).
    pub active_requests: AtomicU32,
    /// Connections open to this host from every worker (`per_host_thresholds`).
    pub cx_active: AtomicU32,
    /// Outlier detection state, when the cluster has outlier detection.
    pub outlier: Option<Box<HostMonitor>>,
    /// The endpoint's locality and that locality's `load_balancing_weight` (0 when unset), for
    /// locality-weighted load balancing and `/clusters`.
    pub locality: Option<Arc<Locality>>,
    pub locality_weight: u32,
}

/// An endpoint's locality.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

impl Host {
    pub fn new(address: SocketAddr, hostname: &str, weight: u32, priority: u32, metadata: Option<Metadata>) -> Self {
        Host {
            id: NEXT_HOST_ID.fetch_add(1, Ordering::Relaxed),
            address,
            pipe: None,
            hostname: hostname.into(),
            weight: weight.max(1),
            priority,
            metadata,
            healthy: AtomicBool::new(true),
            active_requests: AtomicU32::new(0),
            cx_active: AtomicU32::new(0),
            outlier: None,
            locality: None,
            locality_weight: 0,
        }
    }

    /// Ejected by outlier detection.
    #[inline]
    pub fn ejected(&self) -> bool {
        self.outlier.as_deref().is_some_and(HostMonitor::ejected)
    }

    /// Usable for traffic outside panic: healthy and not ejected (Envoy's coarse health).
    #[inline]
    pub fn available(&self) -> bool {
        self.healthy() && !self.ejected()
    }

    /// Envoy's `health_flags` text for `/clusters`: `healthy`, or the failure flags in Envoy's
    /// order.
    pub fn health_flags(&self) -> String {
        if self.available() {
            return "healthy".into();
        }
        let mut s = String::new();
        if self.ejected() {
            s.push_str("/failed_outlier_check");
        }
        if !self.healthy() {
            s.push_str("/failed_eds_health");
        }
        s
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, h: bool) {
        self.healthy.store(h, Ordering::Relaxed);
    }

    /// The string Envoy hashes for ring hash / maglev and prints in `/clusters`.
    /// The key ring hash and maglev hash a host by: the endpoint's `envoy.lb` `hash_key`
    /// metadata if set, else its address (as Envoy does).
    pub fn address_string(&self) -> String {
        if let Some(k) = self
            .metadata
            .as_ref()
            .and_then(|m| m.filter_metadata.get("envoy.lb"))
            .and_then(|s| s.fields.get("hash_key"))
            .and_then(|v| match &v.kind {
                Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) if !s.is_empty() => Some(s),
                _ => None,
            })
        {
            return k.clone();
        }
        match &self.pipe {
            Some(p) => p.display().to_string(),
            None => self.address.to_string(),
        }
    }
}

/// Counts a request as active on a host for as long as it lives.
#[derive(Debug)]
pub struct ActiveRequest(Arc<Host>);

impl ActiveRequest {
    pub fn new(h: &Arc<Host>) -> Self {
        h.active_requests.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(h.clone())
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An endpoint as config describes it, before it becomes a host.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub pipe: Option<std::path::PathBuf>,
    pub hostname: String,
    pub weight: u32,
    pub priority: u32,
    pub metadata: Option<Metadata>,
    pub locality: Option<Arc<Locality>>,
    pub locality_weight: u32,
}

impl Endpoint {
    pub fn ip(address: SocketAddr, hostname: String, weight: u32, priority: u32, metadata: Option<Metadata>) -> Self {
        Endpoint { address, pipe: None, hostname, weight, priority, metadata, locality: None, locality_weight: 0 }
    }
}

/// The hosts of one priority level with the LB's precomputed state. Rebuilt (never mutated)
/// when membership or host health changes, so picking reads it without locks.
#[derive(Debug)]
pub struct PriorityHosts {
    pub priority: u32,
    /// Every host at this level.
    pub hosts: Vec<Arc<Host>>,
    /// How many of them are available (healthy and not ejected).
    pub available: usize,
    /// Envoy's panic mode: too few hosts are available, so the LB uses them all.
    pub panic: bool,
    /// What the LB picks from: the available hosts, or every host in panic.
    pub pick: Vec<Arc<Host>>,
    /// The LB's state over `pick`.
    pub lb: LbState,
    /// Locality-weighted picking (`locality_weighted_lb_config`, non-hash policies).
    pub localities: Option<super::lb::Localities>,
}

/// An immutable membership and health snapshot.
#[derive(Debug, Default)]
pub struct HostSet {
    pub all: Vec<Arc<Host>>,
    /// Priority levels with hosts, in ascending order (0 first).
    pub priorities: Vec<PriorityHosts>,
    /// Envoy's priority load: the percentage of traffic each level of `priorities` takes
    /// (sums to 100 when there are levels).
    pub load: Vec<u32>,
    /// With no hosts at all, Envoy's empty level 0 is in panic (unless the threshold is 0).
    pub empty_panic: bool,
}

impl HostSet {
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Reuses hosts of `previous` with the same address (keeping their identity, pools and
    /// outlier state). New hosts get an outlier monitor when `outlier` is set.
    pub fn reuse(previous: &HostSet, ep: Endpoint, outlier: bool) -> Arc<Host> {
        if let Some(h) = previous.all.iter().find(|h| {
            h.address == ep.address
                && h.pipe == ep.pipe
                && h.weight == ep.weight.max(1)
                && h.priority == ep.priority
                && *h.hostname == *ep.hostname
                && h.metadata == ep.metadata
                && h.locality == ep.locality
                && h.locality_weight == ep.locality_weight
        }) {
            return h.clone();
        }
        let mut h = Host::new(ep.address, &ep.hostname, ep.weight, ep.priority, ep.metadata);
        h.pipe = ep.pipe;
        h.locality = ep.locality;
        h.locality_weight = ep.locality_weight;
        if outlier {
            h.outlier = Some(Box::default());
        }
        Arc::new(h)
    }
}
