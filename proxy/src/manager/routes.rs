//! RDS: route tables compiled and put into the slots of the HCMs that name them.

use std::collections::HashSet;
use std::sync::Arc;

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use super::listeners::rds_slots;
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
        {
            let mut st = self.state();
            let names: HashSet<String> = st.clusters.keys().chain(st.static_clusters.keys()).cloned().collect();
            let cx = BuildCtx { cluster_names: Arc::new(names), ..self.cx.clone() };
            for rc in resources {
                let name = rc.name.clone();
                // RDS route configs do not validate clusters by default (Envoy).
                if let Err(e) = self.admit(&rc) {
                    errors.push(ResourceError::new(&name, e));
                    continue;
                }
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
}
