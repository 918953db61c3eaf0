//! A cluster's membership and its publication: the endpoints of a ClusterLoadAssignment (or
//! DNS) become the host set the load balancers read; health changes (outlier ejections) are
//! republished under Envoy's `update_merge_window`; picking a host counts the panic mode.
//! Endpoints keep their EDS `health_status` as host health flags (unhealthy, draining and
//! timeout hosts take no traffic outside panic, degraded ones only what healthy ones cannot).

use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::address;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};

use super::{Cluster, socket_address_of};
use crate::config::ConfigError;
use crate::upstream::host::{Endpoint, EndpointHealthCheck, Host, HostSet, Locality, flag};
use crate::upstream::lb::{EndpointPolicy, build_host_set};

/// When health changes were last delivered to the load balancers, and whether a merged
/// delivery is scheduled (Envoy's `update_merge_window`).
#[derive(Debug, Default)]
pub(super) struct HealthUpdates {
    last: Option<std::time::Instant>,
    pending: bool,
    /// The last EDS `policy` (overprovisioning factor, weighted priority health).
    policy: EndpointPolicy,
}

impl Cluster {
    /// Replaces membership with the endpoints of a ClusterLoadAssignment (STATIC and EDS).
    pub fn set_load_assignment(&self, cla: &ClusterLoadAssignment) -> Result<(), ConfigError> {
        let mut policy = EndpointPolicy::default();
        if let Some(p) = &cla.policy {
            if let Some(f) = p.overprovisioning_factor {
                if f.value == 0 {
                    return Err(ConfigError::new("policy.overprovisioning_factor", "value must be greater than 0"));
                }
                policy.overprovisioning_factor = f.value;
            }
            policy.weighted_priority_health = p.weighted_priority_health;
        }
        let mut hosts = Vec::new();
        for (i, lle) in cla.endpoints.iter().enumerate() {
            let locality = lle.locality.as_ref().map(|l| {
                Arc::new(Locality { region: l.region.clone(), zone: l.zone.clone(), sub_zone: l.sub_zone.clone() })
            });
            let locality_weight = lle.load_balancing_weight.map_or(0, |w| w.value);
            let first = hosts.len();
            for (j, le) in lle.lb_endpoints.iter().enumerate() {
                let f = format!("endpoints[{i}].lb_endpoints[{j}]");
                let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &le.host_identifier else {
                    return Err(ConfigError::new(f, "named endpoints are not supported"));
                };
                let weight = le.load_balancing_weight.map(|w| w.value).unwrap_or(1);
                let eds_flags = flag::from_eds(le.health_status);
                let hc = endpoint_health_check(ep.health_check_config.as_ref(), &f)?;
                let field = format!("{f}.endpoint.address");
                if let Some(address::Address::Pipe(p)) = ep.address.as_ref().and_then(|a| a.address.as_ref()) {
                    if p.path.is_empty() {
                        return Err(ConfigError::new(field, "pipe path must not be empty"));
                    }
                    hosts.push(Endpoint {
                        address: SocketAddr::from(([0, 0, 0, 0], 0)),
                        pipe: Some(p.path.clone().into()),
                        hostname: ep.hostname.clone(),
                        weight,
                        priority: lle.priority,
                        metadata: le.metadata.clone(),
                        locality: None,
                        locality_weight: 0,
                        eds_flags,
                        hc,
                    });
                    continue;
                }
                let addr = socket_address_of(ep.address.as_ref(), &field)?;
                let mut e = Endpoint::ip(addr, ep.hostname.clone(), weight, lle.priority, le.metadata.clone());
                e.eds_flags = eds_flags;
                e.hc = hc;
                hosts.push(e);
            }
            for h in &mut hosts[first..] {
                h.locality = locality.clone();
                h.locality_weight = locality_weight;
            }
        }
        self.hosts_write.lock().unwrap_or_else(|p| p.into_inner()).policy = policy;
        self.set_hosts(hosts);
        Ok(())
    }

    /// Publishes a new host set, keeping the identity (and outlier and health check state) of
    /// hosts that did not change. With active health checks, a host that left but still passes
    /// its checks stays, flagged pending removal, until it fails one (Envoy's default without
    /// `ignore_health_on_host_removal`).
    pub fn set_hosts(&self, hosts: Vec<Endpoint>) {
        let mut w = self.hosts_write.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.hosts.load();
        let outlier = self.outlier.is_some();
        let active_hc = self.health.is_some();
        let mut all: Vec<Arc<Host>> =
            hosts.into_iter().map(|ep| HostSet::reuse(&previous, ep, outlier, active_hc)).collect();
        if self.health.as_ref().is_some_and(|h| !h.ignore_health_on_host_removal) {
            for h in previous.all.iter() {
                let gone = !all.iter().any(|n| n.address == h.address && n.pipe == h.pipe);
                if gone && !h.has(flag::FAILED_ACTIVE_HC) && !h.hc.disabled {
                    h.set_flag(flag::PENDING_DYNAMIC_REMOVAL, true);
                    all.push(h.clone());
                }
            }
        }
        let changed = previous.all.len() != all.len() || previous.all.iter().zip(&all).any(|(a, b)| a.id != b.id);
        // Like Envoy, an empty cluster never touches its membership gauges.
        if changed {
            self.stats.membership_total.set(all.len() as i64);
            self.stats.membership_change.inc();
            if let Some(d) = &self.outlier {
                d.stats.ejections_active.set(all.iter().filter(|h| h.ejected()).count() as i64);
            }
            // A membership change is delivered at once and restarts the merge window (it
            // carries any merged health change with it); the initial hosts do not count, as
            // Envoy only watches updates once the cluster is initialised.
            if !previous.all.is_empty() {
                w.last = Some(std::time::Instant::now());
            }
        }
        if changed || !all.is_empty() {
            self.set_health_gauges(&all);
        }
        self.hosts.store(Arc::new(build_host_set(all, &self.lb_config, w.policy)));
        drop(w);
        if let Some(h) = &self.health {
            h.membership_changed.notify_one();
        }
    }

    /// `membership_healthy`, `membership_degraded`, `membership_excluded`.
    fn set_health_gauges(&self, all: &[Arc<Host>]) {
        let count = |f: fn(&Host) -> bool| all.iter().filter(|h| f(h)).count() as i64;
        self.stats.membership_healthy.set(count(Host::available));
        self.stats.membership_degraded.set(count(Host::degraded));
        self.stats.membership_excluded.set(count(Host::excluded));
    }

    /// Drops a host pending removal that just failed its active health check (Envoy's
    /// `reloadHealthyHostsHelper`); the change is delivered at once.
    pub fn remove_failed_pending(&self, host: &Arc<Host>) {
        let mut w = self.hosts_write.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.hosts.load();
        if !previous.all.iter().any(|h| Arc::ptr_eq(h, host)) {
            return;
        }
        let all: Vec<Arc<Host>> = previous.all.iter().filter(|h| !Arc::ptr_eq(h, host)).cloned().collect();
        self.stats.membership_total.set(all.len() as i64);
        self.stats.membership_change.inc();
        self.set_health_gauges(&all);
        w.last = Some(std::time::Instant::now());
        self.hosts.store(Arc::new(build_host_set(all, &self.lb_config, w.policy)));
        drop(w);
        if let Some(h) = &self.health {
            h.membership_changed.notify_one();
        }
    }

    /// Republishes the current hosts after a health change (an outlier ejection or
    /// unejection): the load balancers' available hosts, panic flags and priority loads. As
    /// Envoy's cluster manager does, a health change within `update_merge_window` (default 1 s)
    /// of the previous delivered update waits for the window's end and goes out merged with any
    /// other in between.
    pub fn refresh_health(self: &Arc<Self>) {
        let mut w = self.hosts_write.lock().unwrap_or_else(|p| p.into_inner());
        // The cluster's own view changes at once (Envoy's priority set on the main thread).
        self.set_health_gauges(&self.hosts.load().all);
        let now = std::time::Instant::now();
        let window = self.lb_config_merge_window;
        let in_window = !window.is_zero() && w.last.is_some_and(|t| now.saturating_duration_since(t) <= window);
        if !in_window {
            w.last = Some(now);
            let all = self.hosts.load().all.clone();
            self.hosts.store(Arc::new(build_host_set(all, &self.lb_config, w.policy)));
            return;
        }
        if w.pending {
            return;
        }
        w.pending = true;
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(window).await;
            let Some(c) = weak.upgrade() else { return };
            let mut w = c.hosts_write.lock().unwrap_or_else(|p| p.into_inner());
            w.pending = false;
            w.last = Some(std::time::Instant::now());
            let all = c.hosts.load().all.clone();
            c.hosts.store(Arc::new(build_host_set(all, &c.lb_config, w.policy)));
        });
    }

    /// Picks a host for a request (`hash` for hash policies, `avoid` for the previous-hosts
    /// retry predicate), counting `lb_healthy_panic` when the chosen level is in panic.
    #[inline]
    pub fn choose_host(&self, hash: Option<u64>, avoid: &[u64]) -> Option<Arc<Host>> {
        let set = self.hosts.load();
        let pick = crate::upstream::lb::choose(self.lb, &set, hash, avoid);
        if pick.panic {
            self.stats.lb_healthy_panic.inc();
        }
        pick.host
    }

    /// `choose_host` for a retry that leaves out the priority levels already tried
    /// (`previous_priorities`).
    pub fn choose_host_excluding(&self, hash: Option<u64>, avoid: &[u64], excluded: &[u32]) -> Option<Arc<Host>> {
        let set = self.hosts.load();
        let pick = crate::upstream::lb::choose_excluding(self.lb, &set, hash, avoid, excluded);
        if pick.panic {
            self.stats.lb_healthy_panic.inc();
        }
        pick.host
    }
}

/// An endpoint's `health_check_config` (`address` is refused: remora checks the endpoint's own
/// address, on `port_value` when set).
pub(super) fn endpoint_health_check(
    c: Option<&envoy_types::pb::envoy::config::endpoint::v3::endpoint::HealthCheckConfig>,
    field: &str,
) -> Result<EndpointHealthCheck, ConfigError> {
    let Some(c) = c else { return Ok(EndpointHealthCheck::default()) };
    let f = |n: &str| format!("{field}.endpoint.health_check_config.{n}");
    if c.address.is_some() {
        return Err(ConfigError::new(f("address"), "not supported by remora"));
    }
    let port = u16::try_from(c.port_value)
        .map_err(|_| ConfigError::new(f("port_value"), "value must be less than or equal to 65535"))?;
    Ok(EndpointHealthCheck { hostname: c.hostname.clone(), port, disabled: c.disable_active_health_check })
}
