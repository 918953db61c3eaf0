//! The upstream side: clusters and their hosts, load balancers, per-worker connection pools.

pub mod cluster;
pub mod connect;
pub mod host;
pub mod lb;
pub mod pool;
