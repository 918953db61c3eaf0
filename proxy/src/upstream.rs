//! The upstream side: clusters and their hosts, the published cluster set, load balancers and
//! per-worker connection pools.

pub mod cluster;
pub mod cluster_manager;
pub mod connect;
pub mod host;
pub mod lb;
pub mod pool;
