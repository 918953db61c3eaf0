//! The cluster manager's published state: every cluster traffic can reach, by name, swapped whole
//! by the config manager (`crate::manager`) and read by workers with one atomic load.

use std::sync::Arc;

use super::cluster::Cluster;
use crate::FastMap;

/// The clusters of one config generation. Immutable once published: an update builds a new set
/// (unchanged clusters keep their objects, and so their pools and stats) and swaps it in.
#[derive(Default)]
pub struct ClusterSet {
    pub clusters: FastMap<Arc<str>, Arc<Cluster>>,
}

impl ClusterSet {
    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }
}
