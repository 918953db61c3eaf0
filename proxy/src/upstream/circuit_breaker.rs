//! Circuit breakers (`Cluster.circuit_breakers`): Envoy's per-priority resource manager.
//!
//! Each priority (DEFAULT, HIGH; a route's `priority` picks one) has four limits shared by every
//! worker: open connections, requests waiting for a connection (pending), requests in flight and
//! retries in flight (or a retry budget). The counts are cluster-wide atomics, as in Envoy's
//! `ResourceManagerImpl`: a request reads and bumps them, no lock is taken, and like Envoy's they
//! may briefly overshoot under contention. Each limit has its `circuit_breakers.<priority>.*_open`
//! gauge (1 while the limit is reached) and, with `track_remaining`, its `remaining_*` gauge.
//!
//! The pools (`super::pool`) apply them where Envoy's connection pools do: a request that finds
//! no ready connection becomes pending (refused with `upstream_rq_pending_overflow` when
//! `max_pending_requests` is reached), a connection is opened only under `max_connections`
//! (else `upstream_cx_overflow`, unless the worker's pool to that host has none at all), and a
//! request is attached to a connection only under `max_requests`. The router checks
//! `max_retries` (or the budget) before each retry (`upstream_rq_retry_overflow`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers as CircuitBreakersProto;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::core::v3::RoutingPriority;

use super::cluster::Cluster;
use super::host::Host;
use crate::config::ConfigError;
use crate::stats::{Gauge, GaugeGuard, Store};

/// A route's routing priority: which set of limits (and which connection pools) it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Priority {
    #[default]
    Default,
    High,
}

impl Priority {
    /// From the proto enum value; unknown values are refused by the caller.
    pub fn from_proto(v: i32) -> Option<Priority> {
        match RoutingPriority::try_from(v) {
            Ok(RoutingPriority::Default) => Some(Priority::Default),
            Ok(RoutingPriority::High) => Some(Priority::High),
            Err(_) => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Priority::Default => "default",
            Priority::High => "high",
        }
    }
}

/// One limited resource: the live count, its limit and its gauges.
#[derive(Debug)]
pub struct Resource {
    max: u64,
    current: AtomicU64,
    open: Gauge,
    remaining: Option<Gauge>,
}

impl Resource {
    fn new(max: u64, open: Gauge, remaining: Option<Gauge>) -> Self {
        open.set(i64::from(max == 0));
        if let Some(r) = &remaining {
            r.set(max as i64);
        }
        Resource { max, current: AtomicU64::new(0), open, remaining }
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn count(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn can_create(&self) -> bool {
        self.count() < self.max
    }

    #[inline]
    pub fn inc(&self) {
        let n = self.current.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        self.publish(n);
    }

    #[inline]
    pub fn dec(&self) {
        let n = self.current.fetch_sub(1, Ordering::Relaxed).wrapping_sub(1);
        self.publish(n);
    }

    /// Envoy sets the open gauge and recomputes the remaining one on every change; the open
    /// gauge is only written when it flips, so the common case is a read.
    #[inline]
    fn publish(&self, n: u64) {
        let open = n >= self.max;
        if (self.open.value() != 0) != open {
            self.open.set(i64::from(open));
        }
        if let Some(r) = &self.remaining {
            r.set(self.max.saturating_sub(n) as i64);
        }
    }
}

/// `retry_budget`: retries in flight may reach `budget_percent` of the requests in flight and
/// pending, and at least `min_retry_concurrency`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    pub budget_percent: f64,
    pub min_retry_concurrency: u32,
}

/// The limits of one priority.
#[derive(Debug)]
pub struct Limits {
    pub connections: Resource,
    pub pending: Resource,
    pub requests: Resource,
    pub retries: Resource,
    pub retry_budget: Option<RetryBudget>,
    /// `per_host_thresholds.max_connections`.
    pub max_connections_per_host: Option<u64>,
    /// `cx_pool_open` and `remaining_cx_pools`: remora has no `max_connection_pools` (refused
    /// when set), so they only report Envoy's unlimited default.
    _pools: (Gauge, Option<Gauge>),
}

impl Limits {
    /// Whether a new connection to `host` may be opened (Envoy's `canCreateConnection`).
    #[inline]
    pub fn can_create_connection(&self, host: &Host) -> bool {
        if let Some(max) = self.max_connections_per_host
            && u64::from(host.cx_active.load(Ordering::Relaxed)) >= max
        {
            return false;
        }
        self.connections.can_create()
    }

    /// Whether one more retry may start (Envoy's `retries().canCreate()`, budget included).
    pub fn can_retry(&self) -> bool {
        match self.retry_budget {
            None => self.retries.can_create(),
            Some(b) => self.retries.count() < self.retry_budget_max(b),
        }
    }

    /// The retry limit in effect (`max_retries`, or the budget's current allowance).
    pub fn max_retries(&self) -> u64 {
        match self.retry_budget {
            None => self.retries.max(),
            Some(b) => self.retry_budget_max(b),
        }
    }

    fn retry_budget_max(&self, b: RetryBudget) -> u64 {
        let active = self.requests.count() + self.pending.count();
        ((b.budget_percent / 100.0 * active as f64) as u64).max(u64::from(b.min_retry_concurrency))
    }
}

/// The circuit breakers of a cluster: one set of limits per priority.
#[derive(Debug)]
pub struct CircuitBreakers {
    pub default: Limits,
    pub high: Limits,
}

impl CircuitBreakers {
    #[inline]
    pub fn get(&self, p: Priority) -> &Limits {
        match p {
            Priority::Default => &self.default,
            Priority::High => &self.high,
        }
    }

    /// Translates `circuit_breakers` (Envoy's defaults for a priority with no thresholds: 1024
    /// connections, pending and requests, 3 retries) and creates the gauges under
    /// `cluster.<stat_name>.circuit_breakers.<priority>.`.
    pub fn from_proto(
        p: Option<&CircuitBreakersProto>,
        store: &Arc<Store>,
        stat_name: &str,
    ) -> Result<Self, ConfigError> {
        let empty = CircuitBreakersProto::default();
        let p = p.unwrap_or(&empty);
        for (i, t) in p.thresholds.iter().enumerate() {
            check_thresholds(t, &format!("circuit_breakers.thresholds[{i}]"))?;
        }
        for (i, t) in p.per_host_thresholds.iter().enumerate() {
            let f = format!("circuit_breakers.per_host_thresholds[{i}]");
            check_thresholds(t, &f)?;
            // Envoy: "Unsupported field in per_host_thresholds".
            for (set, name) in [
                (t.max_pending_requests.is_some(), "max_pending_requests"),
                (t.max_requests.is_some(), "max_requests"),
                (t.max_retries.is_some(), "max_retries"),
                (t.max_connection_pools.is_some(), "max_connection_pools"),
                (t.retry_budget.is_some(), "retry_budget"),
            ] {
                if set {
                    return Err(ConfigError::new(format!("{f}.{name}"), "Unsupported field in per_host_thresholds"));
                }
            }
        }
        let limits = |prio: Priority| -> Limits {
            let want = match prio {
                Priority::Default => RoutingPriority::Default as i32,
                Priority::High => RoutingPriority::High as i32,
            };
            let t = p.thresholds.iter().find(|t| t.priority == want);
            let per_host = p.per_host_thresholds.iter().find(|t| t.priority == want);
            let get = |f: fn(&Thresholds) -> Option<u32>, default: u64| t.and_then(f).map_or(default, u64::from);
            let track = t.is_some_and(|t| t.track_remaining);
            let prefix = format!("cluster.{stat_name}.circuit_breakers.{}.", prio.name());
            let gauge = |n: &str| store.gauge(&format!("{prefix}{n}"));
            let remaining = |n: &str| track.then(|| gauge(n));
            let budget = t.and_then(|t| t.retry_budget.as_ref()).map(|b| RetryBudget {
                budget_percent: b.budget_percent.as_ref().map_or(20.0, |p| p.value),
                min_retry_concurrency: b.min_retry_concurrency.map_or(3, |v| v.value),
            });
            let retries = Resource::new(
                get(|t| t.max_retries.map(|v| v.value), 3),
                gauge("rq_retry_open"),
                // With a budget the allowance moves with the traffic, so Envoy keeps the
                // remaining gauge at 0.
                if budget.is_some() { None } else { remaining("remaining_retries") },
            );
            if budget.is_some()
                && let Some(g) = remaining("remaining_retries")
            {
                g.set(0);
            }
            let pools_open = gauge("cx_pool_open");
            pools_open.set(0);
            let pools_remaining = remaining("remaining_cx_pools");
            if let Some(g) = &pools_remaining {
                g.set(-1); // u64::MAX, as Envoy's unlimited default renders
            }
            Limits {
                connections: Resource::new(
                    get(|t| t.max_connections.map(|v| v.value), 1024),
                    gauge("cx_open"),
                    remaining("remaining_cx"),
                ),
                pending: Resource::new(
                    get(|t| t.max_pending_requests.map(|v| v.value), 1024),
                    gauge("rq_pending_open"),
                    remaining("remaining_pending"),
                ),
                requests: Resource::new(
                    get(|t| t.max_requests.map(|v| v.value), 1024),
                    gauge("rq_open"),
                    remaining("remaining_rq"),
                ),
                retries,
                retry_budget: budget,
                max_connections_per_host: per_host.and_then(|t| t.max_connections).map(|v| u64::from(v.value)),
                _pools: (pools_open, pools_remaining),
            }
        };
        Ok(CircuitBreakers { default: limits(Priority::Default), high: limits(Priority::High) })
    }
}

fn check_thresholds(t: &Thresholds, f: &str) -> Result<(), ConfigError> {
    if Priority::from_proto(t.priority).is_none() {
        return Err(ConfigError::new(format!("{f}.priority"), "value must be one of the defined enum values"));
    }
    if t.max_connection_pools.is_some() {
        return Err(ConfigError::new(format!("{f}.max_connection_pools"), "not supported by remora"));
    }
    if t.retry_budget.as_ref().and_then(|b| b.budget_interval.as_ref()).is_some_and(|d| d.seconds != 0 || d.nanos != 0)
    {
        return Err(ConfigError::new(format!("{f}.retry_budget.budget_interval"), "not supported by remora"));
    }
    if let Some(p) = t.retry_budget.as_ref().and_then(|b| b.budget_percent.as_ref())
        && !(0.0..=100.0).contains(&p.value)
    {
        return Err(ConfigError::new(
            format!("{f}.retry_budget.budget_percent.value"),
            "value must be inside range [0, 100]",
        ));
    }
    Ok(())
}

/// Which resource a [`Held`] counts against.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Pending,
    Retry,
}

/// Holds one unit of a cluster resource until dropped.
#[derive(Debug)]
pub struct Held {
    cluster: Arc<Cluster>,
    prio: Priority,
    kind: Kind,
}

impl Held {
    /// A request waiting for a connection: `upstream_rq_pending_total`, the pending gauge and
    /// the `max_pending_requests` count (the caller checked the limit).
    pub fn pending(cluster: &Arc<Cluster>, prio: Priority) -> Self {
        cluster.circuit_breakers.get(prio).pending.inc();
        cluster.stats.upstream_rq_pending_total.inc();
        cluster.stats.upstream_rq_pending_active.inc();
        Held { cluster: cluster.clone(), prio, kind: Kind::Pending }
    }

    /// A retry in flight, from when it is scheduled until the retried attempt is answered (or
    /// the request ends), as Envoy's retry state holds it.
    pub fn retry(cluster: &Arc<Cluster>, prio: Priority) -> Self {
        cluster.circuit_breakers.get(prio).retries.inc();
        Held { cluster: cluster.clone(), prio, kind: Kind::Retry }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let l = self.cluster.circuit_breakers.get(self.prio);
        match self.kind {
            Kind::Pending => {
                l.pending.dec();
                self.cluster.stats.upstream_rq_pending_active.dec();
            }
            Kind::Retry => l.retries.dec(),
        }
    }
}

/// A request attached to a connection: counts against `max_requests`, `upstream_rq_total` and
/// `upstream_rq_active`, until the response ends (it travels with the response body).
#[derive(Debug)]
pub struct RequestGuard {
    cluster: Arc<Cluster>,
    prio: Priority,
    _active: GaugeGuard,
}

impl RequestGuard {
    /// Envoy's `attachStreamToClient`: refused (overflow, `upstream_rq_active_overflow` as
    /// Envoy 1.40 counts it) when `max_requests` is reached.
    pub fn attach(cluster: &Arc<Cluster>, prio: Priority) -> Option<Self> {
        let l = cluster.circuit_breakers.get(prio);
        if !l.requests.can_create() {
            cluster.stats.upstream_rq_active_overflow.inc();
            return None;
        }
        l.requests.inc();
        cluster.stats.upstream_rq_total.inc();
        Some(RequestGuard {
            cluster: cluster.clone(),
            prio,
            _active: GaugeGuard::new(&cluster.stats.upstream_rq_active),
        })
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.cluster.circuit_breakers.get(self.prio).requests.dec();
    }
}

/// An open upstream connection: counts against `max_connections` (and the host's
/// `per_host_thresholds`) until the connection closes.
#[derive(Debug)]
pub struct ConnectionGuard {
    cluster: Arc<Cluster>,
    host: Arc<Host>,
    prio: Priority,
}

impl ConnectionGuard {
    pub fn new(cluster: &Arc<Cluster>, host: &Arc<Host>, prio: Priority) -> Self {
        cluster.circuit_breakers.get(prio).connections.inc();
        host.cx_active.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard { cluster: cluster.clone(), host: host.clone(), prio }
    }
}

/// The TCP proxy's check (Envoy's `tcp_proxy` before it asks its pool): over
/// `max_connections` (DEFAULT priority) the connection is refused (`upstream_cx_overflow`);
/// else it passes through the pool's pending state (`upstream_rq_pending_total`) and counts
/// against the limit until it closes.
pub fn tcp_connection(cluster: &Arc<Cluster>, host: &Arc<Host>) -> Option<ConnectionGuard> {
    let limits = cluster.circuit_breakers.get(Priority::Default);
    if !limits.connections.can_create() {
        cluster.stats.upstream_cx_overflow.inc();
        return None;
    }
    if !limits.pending.can_create() {
        cluster.stats.upstream_rq_pending_overflow.inc();
        return None;
    }
    drop(Held::pending(cluster, Priority::Default));
    Some(ConnectionGuard::new(cluster, host, Priority::Default))
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.cluster.circuit_breakers.get(self.prio).connections.dec();
        self.host.cx_active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget as RB;
    use envoy_types::pb::envoy::r#type::v3::Percent;
    use envoy_types::pb::google::protobuf::UInt32Value;

    fn store() -> Arc<Store> {
        Arc::new(Store::default())
    }

    #[test]
    fn defaults_gauges_and_limits() {
        let s = store();
        let p = CircuitBreakersProto {
            thresholds: vec![Thresholds {
                max_connections: Some(UInt32Value { value: 2 }),
                track_remaining: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let cb = CircuitBreakers::from_proto(Some(&p), &s, "c").unwrap();
        assert_eq!(cb.default.connections.max(), 2);
        assert_eq!(cb.default.pending.max(), 1024);
        assert_eq!(cb.high.connections.max(), 1024);
        assert_eq!(cb.high.retries.max(), 3);
        let v = |n: &str| s.value_of(&format!("cluster.c.circuit_breakers.{n}"));
        assert_eq!(v("default.remaining_cx"), Some(2));
        assert_eq!(v("high.remaining_cx"), None, "track_remaining is per priority");
        assert_eq!(v("high.cx_open"), Some(0));
        cb.default.connections.inc();
        cb.default.connections.inc();
        assert!(!cb.default.connections.can_create());
        assert_eq!(v("default.cx_open"), Some(1));
        assert_eq!(v("default.remaining_cx"), Some(0));
        cb.default.connections.dec();
        assert_eq!(v("default.cx_open"), Some(0));
        assert_eq!(v("default.remaining_cx"), Some(1));
    }

    #[test]
    fn retry_budget_scales_with_active_requests() {
        let s = store();
        let p = CircuitBreakersProto {
            thresholds: vec![Thresholds {
                retry_budget: Some(RB { budget_percent: Some(Percent { value: 50.0 }), ..Default::default() }),
                track_remaining: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let cb = CircuitBreakers::from_proto(Some(&p), &s, "c").unwrap();
        let l = &cb.default;
        assert_eq!(l.max_retries(), 3, "min_retry_concurrency defaults to 3");
        for _ in 0..10 {
            l.requests.inc();
        }
        assert_eq!(l.max_retries(), 5);
        for _ in 0..5 {
            assert!(l.can_retry());
            l.retries.inc();
        }
        assert!(!l.can_retry());
        assert_eq!(s.value_of("cluster.c.circuit_breakers.default.remaining_retries"), Some(0));
    }

    #[test]
    fn bad_thresholds_are_refused() {
        let s = store();
        let bad = |t: Thresholds| {
            CircuitBreakers::from_proto(
                Some(&CircuitBreakersProto { thresholds: vec![t], ..Default::default() }),
                &s,
                "c",
            )
            .unwrap_err()
        };
        assert_eq!(
            bad(Thresholds { priority: 7, ..Default::default() }).field,
            "circuit_breakers.thresholds[0].priority"
        );
        let e = bad(Thresholds {
            retry_budget: Some(RB { budget_percent: Some(Percent { value: 101.0 }), ..Default::default() }),
            ..Default::default()
        });
        assert_eq!(e.field, "circuit_breakers.thresholds[0].retry_budget.budget_percent.value");
        let per_host = CircuitBreakersProto {
            per_host_thresholds: vec![Thresholds {
                max_requests: Some(UInt32Value { value: 1 }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = CircuitBreakers::from_proto(Some(&per_host), &s, "c").unwrap_err();
        assert_eq!(e.reason, "Unsupported field in per_host_thresholds");
    }
}
