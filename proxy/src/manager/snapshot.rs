//! Publishing: the cluster set and the listener set traffic reads, built from the manager's
//! state and swapped whole (clusters first), the gauges, the workers told which clusters
//! still live, and the xDS interest updated.

use std::collections::HashSet;
use std::sync::Arc;

use super::*;

impl ConfigManager {
    // === publishing ===

    /// Builds and publishes the cluster and listener sets traffic reads (clusters first, as
    /// Envoy), and updates interest and gauges.
    pub fn publish(&self) {
        let st = self.state();
        let mut clusters = ClusterSet::default();
        for (n, c) in &st.static_clusters {
            clusters.clusters.insert(n.as_str().into(), c.clone());
        }
        let mut warming_clusters = 0;
        for (n, d) in &st.clusters {
            if d.warming {
                warming_clusters += 1;
                continue;
            }
            clusters.clusters.insert(n.as_str().into(), d.cluster.clone());
        }
        let mut listeners = st.static_listeners.clone();
        let mut warming_listeners = 0;
        for n in &st.listener_order {
            if let Some(d) = st.listeners.get(n) {
                if d.warming {
                    warming_listeners += 1;
                } else {
                    listeners.push(d.listener.clone());
                }
            }
        }
        let interest = super::interest::of(&st);
        self.active_clusters.set(clusters.clusters.len() as i64);
        self.warming_clusters.set(warming_clusters);
        self.total_listeners_active.set(listeners.len() as i64);
        self.total_listeners_warming.set(warming_listeners);
        let live: HashSet<u64> =
            clusters.clusters.values().map(|c| c.id).chain(st.clusters.values().map(|d| d.cluster.id)).collect();
        drop(st);
        self.shared.clusters.store(Arc::new(clusters));
        self.listeners.store(Arc::new(listeners));
        let live = Arc::new(move |id: u64| live.contains(&id));
        for w in &self.workers {
            let _ = w.send(Command::RetainClusters(live.clone()));
        }
        self.interest.send_if_modified(|cur| {
            if *cur != interest {
                *cur = interest;
                true
            } else {
                false
            }
        });
    }
}
