//! CDS: clusters added, changed (new objects, new pools) or removed; EDS clusters warm until
//! their endpoints arrive; DNS clusters get their resolver tasks and clusters with outlier
//! detection their detector task (each ends when its cluster object is dropped).

use std::collections::HashSet;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as ClusterProto;

use super::*;

impl ConfigManager {
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
                && existing.cluster.proto == p
            {
                continue; // unchanged: keep the object, its pools and stats
            }
            if let Err(e) = self.admit(&p) {
                errors.push(ResourceError::new(&name, e));
                continue;
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
            self.spawn_cluster_tasks(&cluster);
            if st.clusters.contains_key(&name) {
                self.cluster_modified.inc();
            } else {
                self.cluster_added.inc();
            }
            if warming {
                // EDS: the eds_config's initial_fetch_timeout (15 s unset; 0 waits for ever).
                let timeout = match (cluster.discovery == DiscoveryType::Eds)
                    .then(|| cluster.proto.eds_cluster_config.as_ref().and_then(|e| e.eds_config.as_ref()))
                    .flatten()
                    .and_then(|c| c.initial_fetch_timeout.as_ref())
                {
                    Some(d) => Some(crate::config::duration(d)).filter(|d| !d.is_zero()),
                    None => Some(self.initial_fetch_timeout),
                };
                if let Some(t) = timeout {
                    self.spawn_warming_timeout(&name, cluster.id, t);
                }
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

    pub(super) fn spawn_warming_timeout(self: &Arc<Self>, name: &str, id: u64, t: std::time::Duration) {
        let me = Arc::downgrade(self);
        let name = name.to_string();
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

    /// Starts a new cluster object's tasks: DNS resolution, outlier detection, active health
    /// checks.
    pub(super) fn spawn_cluster_tasks(&self, c: &Arc<Cluster>) {
        self.spawn_dns(c);
        crate::upstream::outlier::detector::spawn(c);
        crate::upstream::health::checker::spawn(c);
    }

    pub(super) fn spawn_dns(&self, c: &Arc<Cluster>) {
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

    pub(super) fn cluster_ready(&self, st: &State, c: &Cluster) -> bool {
        let endpoints = match (&c.discovery, &c.eds_service_name) {
            (DiscoveryType::Eds, Some(s)) => st.endpoints.contains_key(s),
            _ => true,
        };
        endpoints && c.secret_names().iter().all(|n| self.cx.secrets.contains(n))
    }
}
