//! A cluster's membership and its publication: the endpoints of a ClusterLoadAssignment (or
//! DNS) become the host set the load balancers read; health changes (outlier ejections) are
//! republished under Envoy's `update_merge_window`; picking a host counts the panic mode.

use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::address;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};

use super::{Cluster, socket_address_of};
use crate::config::ConfigError;
use crate::upstream::host::{Endpoint, Host, HostSet, Locality};
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
                // EDS health: UNHEALTHY(2), DRAINING(3), TIMEOUT(4) are not used for traffic.
                if matches!(le.health_status, 2..=4) {
                    continue;
                }
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
                    });
                    continue;
                }
                let addr = socket_address_of(ep.address.as_ref(), &field)?;
                hosts.push(Endpoint::ip(addr, ep.hostname.clone(), weight, lle.priority, le.metadata.clone()));
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

    /// Publishes a new host set, keeping the identity (and outlier state) of hosts that did
    /// not change.
    pub fn set_hosts(&self, hosts: Vec<Endpoint>) {
        let mut w = self.hosts_write.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.hosts.load();
        let outlier = self.outlier.is_some();
        let all: Vec<Arc<Host>> = hosts.into_iter().map(|ep| HostSet::reuse(&previous, ep, outlier)).collect();
        let changed = previous.all.len() != all.len() || previous.all.iter().zip(&all).any(|(a, b)| a.id != b.id);
        // Like Envoy, an empty cluster never touches its membership gauges.
        if changed {
            self.stats.membership_total.set(all.len() as i64);
            self.stats.membership_healthy.set(all.iter().filter(|h| h.available()).count() as i64);
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
        self.hosts.store(Arc::new(build_host_set(all, &self.lb_config, w.policy)));
    }

    /// Republishes the current hosts after a health change (an outlier ejection or
    /// unejection): the load balancers' available hosts, panic flags and priority loads. As
    /// Envoy's cluster manager does, a health change within `update_merge_window` (default 1 s)
    /// of the previous delivered update waits for the window's end and goes out merged with any
    /// other in between.
    pub fn refresh_health(self: &Arc<Self>) {
        let mut w = self.hosts_write.lock().unwrap_or_else(|p| p.into_inner());
        // The cluster's own view changes at once (Envoy's priority set on the main thread).
        let available = self.hosts.load().all.iter().filter(|h| h.available()).count();
        self.stats.membership_healthy.set(available as i64);
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
}
