//! A copy of the manager's state for `/config_dump`.

use envoy_types::pb::envoy::config::cluster::v3::Cluster as ClusterProto;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as ListenerProto;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use super::*;

impl ConfigManager {
    /// Versions and resources for `/config_dump`.
    pub fn dump(&self) -> DumpView {
        let st = self.state();
        let mut v = DumpView {
            cds_version: st.cds_version.clone(),
            lds_version: st.lds_version.clone(),
            static_clusters: st.static_clusters.values().map(|c| c.proto.clone()).collect(),
            clusters: st.clusters.values().map(|d| (d.version.clone(), d.cluster.proto.clone(), d.warming)).collect(),
            static_listeners: st.static_listeners.iter().map(|l| l.proto.clone()).collect(),
            listeners: st
                .listener_order
                .iter()
                .filter_map(|n| st.listeners.get(n))
                .map(|d| (d.version.clone(), d.listener.proto.clone(), d.warming))
                .collect(),
            routes: st.routes.values().map(|r| (r.version.clone(), r.proto.clone(), r.updated)).collect(),
            endpoints: st.endpoints.values().map(|(v, c)| (v.clone(), c.clone())).collect(),
        };
        v.static_clusters.sort_by(|a, b| a.name.cmp(&b.name));
        v.clusters.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        v.routes.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        v.endpoints.sort_by(|a, b| a.1.cluster_name.cmp(&b.1.cluster_name));
        v
    }
}

/// A copy of the dynamic state for the admin API.
pub struct DumpView {
    pub cds_version: String,
    pub lds_version: String,
    pub static_clusters: Vec<ClusterProto>,
    /// (version, cluster, warming)
    pub clusters: Vec<(String, ClusterProto, bool)>,
    pub static_listeners: Vec<ListenerProto>,
    /// (version, listener, warming)
    pub listeners: Vec<(String, ListenerProto, bool)>,
    pub routes: Vec<(String, RouteConfiguration, std::time::SystemTime)>,
    pub endpoints: Vec<(String, ClusterLoadAssignment)>,
}
