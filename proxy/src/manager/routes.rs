//! RDS: route tables compiled and put into the slots of the HCMs that name them.

use std::collections::HashSet;
use std::sync::Arc;

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use super::listeners::{rds_slots, rds_stat_prefix};
use super::*;

impl ConfigManager {
    // === routes (RDS) ===

    pub fn apply_routes(
        self: &Arc<Self>,
        version: &str,
        resources: Vec<RouteConfiguration>,
        removed: &[String],
    ) -> Result<(), Vec<ResourceError>> {
        let mut errors = Vec::new();
        // (name, accepted, changed) for the subscriptions' stats.
        let mut outcomes: Vec<(String, bool, bool)> = Vec::new();
        {
            let mut st = self.state();
            let names: HashSet<String> = st.clusters.keys().chain(st.static_clusters.keys()).cloned().collect();
            let cx = BuildCtx { cluster_names: Arc::new(names), ..self.cx.clone() };
            for rc in resources {
                let name = rc.name.clone();
                // RDS route configs do not validate clusters by default (Envoy).
                if let Err(e) = self.admit(&rc) {
                    errors.push(ResourceError::new(&name, e));
                    outcomes.push((name, false, false));
                    continue;
                }
                let table = match RouteTable::from_proto(&rc, &cx, false) {
                    Ok(t) => Arc::new(t),
                    Err(e) => {
                        errors.push(ResourceError::new(&name, e));
                        outcomes.push((name, false, false));
                        continue;
                    }
                };
                let changed = st.routes.get(&name).is_none_or(|old| old.proto != rc);
                outcomes.push((name.clone(), true, changed));
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
            for (name, ok, changed) in &outcomes {
                if !st.rds_stats.contains_key(name) {
                    let Some(prefix) = all.iter().find_map(|l| rds_stat_prefix(l, name)) else { continue };
                    st.rds_stats.insert(name.clone(), RdsStats::new(&self.cx, &prefix, name));
                }
                if let Some(s) = st.rds_stats.get(name) {
                    s.update_attempt.inc();
                    match (ok, changed) {
                        (false, _) => s.update_rejected.inc(),
                        (true, reload) => {
                            s.update_success.inc();
                            if *reload {
                                s.config_reload.inc();
                            }
                        }
                    }
                }
            }
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
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}
