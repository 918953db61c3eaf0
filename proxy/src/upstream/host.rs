//! Upstream hosts and the immutable host set a cluster publishes on every membership change.
//!
//! A host keeps its identity (`id`) across updates while its address stays in the cluster, so
//! the per-worker connection pools (keyed by host id) survive DNS refreshes and EDS pushes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

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
    /// Envoy's health flags ([`flag`]), written on the main runtime (EDS, the health checker),
    /// read by the load balancers' rebuilds and the admin API.
    flags: AtomicU32,
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
    /// The endpoint's `health_check_config`.
    pub hc: EndpointHealthCheck,
}

/// An endpoint's `health_check_config`: where and how active health checks reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointHealthCheck {
    /// `hostname`: the Host/authority of health check requests (else the checker's).
    pub hostname: String,
    /// `port_value`: the port health checks connect to (0: the endpoint's).
    pub port: u16,
    /// `disable_active_health_check`: the host is never actively checked.
    pub disabled: bool,
}

/// Envoy's host health flags (`Host::HealthFlag`), same bits and `/clusters` names. Failing an
/// outlier check is kept by the outlier monitor ([`Host::ejected`]); its bit only names it.
pub mod flag {
    pub const FAILED_ACTIVE_HC: u32 = 0x1;
    pub const FAILED_OUTLIER_CHECK: u32 = 0x2;
    pub const FAILED_EDS_HEALTH: u32 = 0x4;
    pub const DEGRADED_ACTIVE_HC: u32 = 0x8;
    pub const DEGRADED_EDS_HEALTH: u32 = 0x10;
    pub const PENDING_DYNAMIC_REMOVAL: u32 = 0x20;
    pub const PENDING_ACTIVE_HC: u32 = 0x40;
    pub const EXCLUDED_VIA_IMMEDIATE_HC_FAIL: u32 = 0x80;
    pub const ACTIVE_HC_TIMEOUT: u32 = 0x100;
    pub const EDS_STATUS_DRAINING: u32 = 0x200;
    /// Not Envoy's: the host had its first active health check (cluster initialisation waits
    /// for it). Never printed.
    pub const HC_CHECKED: u32 = 0x8000_0000;
    /// Any of these makes a host unhealthy (Envoy's coarse health).
    pub const UNHEALTHY: u32 = FAILED_ACTIVE_HC | FAILED_EDS_HEALTH | EDS_STATUS_DRAINING;
    pub const DEGRADED: u32 = DEGRADED_ACTIVE_HC | DEGRADED_EDS_HEALTH;
    pub const EXCLUDED: u32 = PENDING_ACTIVE_HC | EXCLUDED_VIA_IMMEDIATE_HC_FAIL | EDS_STATUS_DRAINING;
    /// What active health checking owns (kept when a host object is replaced).
    pub const ACTIVE_HC: u32 =
        FAILED_ACTIVE_HC | DEGRADED_ACTIVE_HC | ACTIVE_HC_TIMEOUT | EXCLUDED_VIA_IMMEDIATE_HC_FAIL | HC_CHECKED;
    pub const NAMES: [(u32, &str); 10] = [
        (FAILED_ACTIVE_HC, "failed_active_hc"),
        (FAILED_OUTLIER_CHECK, "failed_outlier_check"),
        (FAILED_EDS_HEALTH, "failed_eds_health"),
        (DEGRADED_ACTIVE_HC, "degraded_active_hc"),
        (DEGRADED_EDS_HEALTH, "degraded_eds_health"),
        (PENDING_DYNAMIC_REMOVAL, "pending_dynamic_removal"),
        (PENDING_ACTIVE_HC, "pending_active_hc"),
        (EXCLUDED_VIA_IMMEDIATE_HC_FAIL, "excluded_via_immediate_hc_fail"),
        (ACTIVE_HC_TIMEOUT, "active_hc_timeout"),
        (EDS_STATUS_DRAINING, "eds_status_draining"),
    ];

    /// The EDS flags of an `LbEndpoint.health_status`.
    pub fn from_eds(status: i32) -> u32 {
        match status {
            2 | 4 => FAILED_EDS_HEALTH, // UNHEALTHY, TIMEOUT
            3 => EDS_STATUS_DRAINING,
            5 => DEGRADED_EDS_HEALTH,
            _ => 0, // UNKNOWN, HEALTHY
        }
    }
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
            flags: AtomicU32::new(0),
            active_requests: AtomicU32::new(0),
            cx_active: AtomicU32::new(0),
            outlier: None,
            locality: None,
            locality_weight: 0,
            hc: EndpointHealthCheck::default(),
        }
    }

    /// Ejected by outlier detection.
    #[inline]
    pub fn ejected(&self) -> bool {
        self.outlier.as_deref().is_some_and(HostMonitor::ejected)
    }

    /// Usable for traffic outside panic: healthy, not degraded and not ejected (in Envoy's
    /// healthy host list).
    #[inline]
    pub fn available(&self) -> bool {
        self.flags() & (flag::UNHEALTHY | flag::DEGRADED) == 0 && !self.ejected()
    }

    /// In Envoy's degraded host list: degraded (by EDS or an active health check) and otherwise
    /// healthy; used only for the load the healthy hosts of the levels cannot take.
    #[inline]
    pub fn degraded(&self) -> bool {
        let f = self.flags();
        f & flag::UNHEALTHY == 0 && f & flag::DEGRADED != 0 && !self.ejected()
    }

    /// Excluded from the load balancers' host counts (Envoy's excluded hosts: draining by EDS,
    /// or told to leave by `x-envoy-immediate-health-check-fail`).
    #[inline]
    pub fn excluded(&self) -> bool {
        self.flags() & flag::EXCLUDED != 0
    }

    /// Envoy's `health_flags` text for `/clusters`: every flag set, in Envoy's order, or
    /// `healthy` when none is.
    pub fn health_flags(&self) -> String {
        let f = self.flags();
        let mut s = String::new();
        for (bit, name) in flag::NAMES {
            let set = if bit == flag::FAILED_OUTLIER_CHECK { self.ejected() } else { f & bit != 0 };
            if set {
                s.push('/');
                s.push_str(name);
            }
        }
        if s.is_empty() {
            s.push_str("healthy");
        }
        s
    }

    /// Not failed by EDS or active health checking (outlier ejection aside).
    pub fn healthy(&self) -> bool {
        self.flags() & flag::UNHEALTHY == 0
    }

    #[inline]
    pub fn flags(&self) -> u32 {
        self.flags.load(Ordering::Relaxed)
    }

    pub fn has(&self, bit: u32) -> bool {
        self.flags() & bit != 0
    }

    /// Sets or clears `bit`; returns whether it changed.
    pub fn set_flag(&self, bit: u32, on: bool) -> bool {
        let old = if on {
            self.flags.fetch_or(bit, Ordering::Relaxed)
        } else {
            self.flags.fetch_and(!bit, Ordering::Relaxed)
        };
        (old & bit != 0) != on
    }

    /// Replaces the EDS health flags from an endpoint's `health_status`; returns whether they
    /// changed.
    pub fn set_eds_health(&self, bits: u32) -> bool {
        let mut changed = false;
        for b in [flag::FAILED_EDS_HEALTH, flag::DEGRADED_EDS_HEALTH, flag::EDS_STATUS_DRAINING] {
            changed |= self.set_flag(b, bits & b != 0);
        }
        changed
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
    /// The EDS health flags of its `health_status` ([`flag::from_eds`]).
    pub eds_flags: u32,
    pub hc: EndpointHealthCheck,
}

impl Endpoint {
    pub fn ip(address: SocketAddr, hostname: String, weight: u32, priority: u32, metadata: Option<Metadata>) -> Self {
        Endpoint {
            address,
            pipe: None,
            hostname,
            weight,
            priority,
            metadata,
            locality: None,
            locality_weight: 0,
            eds_flags: 0,
            hc: EndpointHealthCheck::default(),
        }
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
    /// The degraded hosts, for the level's degraded load (never in panic).
    pub degraded: Vec<Arc<Host>>,
    pub degraded_lb: LbState,
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
    /// (sums to 100 with `degraded_load` when there are levels).
    pub load: Vec<u32>,
    /// The percentage each level's degraded hosts take.
    pub degraded_load: Vec<u32>,
    /// With no hosts at all, Envoy's empty level 0 is in panic (unless the threshold is 0).
    pub empty_panic: bool,
    /// Each level's health counts, the panic threshold and the overprovisioning factor the
    /// loads came from: a retry priority recomputes the loads without some levels.
    pub levels: Vec<super::lb::priority::Level>,
    pub panic_threshold: u32,
    pub overprovisioning: u32,
}

impl HostSet {
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Reuses hosts of `previous` with the same address (keeping their identity, pools and
    /// outlier state; their EDS health flags follow `ep`). New hosts get an outlier monitor
    /// when `outlier` is set and, when `active_hc` is set and the endpoint is checked, start as
    /// failing active health checks unless a host of the same address was known, whose
    /// active health check state they take over (as Envoy keeps a host whose address stays).
    pub fn reuse(previous: &HostSet, ep: Endpoint, outlier: bool, active_hc: bool) -> Arc<Host> {
        if let Some(h) = previous.all.iter().find(|h| {
            h.address == ep.address
                && h.pipe == ep.pipe
                && h.weight == ep.weight.max(1)
                && h.priority == ep.priority
                && *h.hostname == *ep.hostname
                && h.metadata == ep.metadata
                && h.locality == ep.locality
                && h.locality_weight == ep.locality_weight
                && h.hc == ep.hc
        }) {
            h.set_eds_health(ep.eds_flags);
            h.set_flag(flag::PENDING_DYNAMIC_REMOVAL, false);
            return h.clone();
        }
        let mut h = Host::new(ep.address, &ep.hostname, ep.weight, ep.priority, ep.metadata);
        h.pipe = ep.pipe;
        h.locality = ep.locality;
        h.locality_weight = ep.locality_weight;
        let known = previous.all.iter().find(|p| p.address == ep.address && p.pipe == h.pipe);
        let mut flags = ep.eds_flags;
        if active_hc && !ep.hc.disabled {
            flags |= match known {
                Some(k) if !k.hc.disabled => k.flags() & flag::ACTIVE_HC,
                _ => flag::FAILED_ACTIVE_HC,
            };
        }
        h.hc = ep.hc;
        h.flags = AtomicU32::new(flags);
        if outlier {
            h.outlier = Some(Box::default());
        }
        Arc::new(h)
    }
}
