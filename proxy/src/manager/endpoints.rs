//! EDS: endpoint updates swap a cluster's host set whole and end its warming.

use std::sync::Arc;

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

use super::*;

impl ConfigManager {
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
            if let Err(e) = self.admit(&cla) {
                errors.push(ResourceError::new(&svc, e));
                continue;
            }
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
}
