//! The upstream side: clusters and their hosts, the published cluster set, load balancers,
//! per-worker connection pools, circuit breakers, outlier detection and active health checks.

pub mod circuit_breaker;
pub mod cluster;
pub mod cluster_manager;
pub mod connect;
pub mod health;
pub mod host;
pub mod lb;
pub mod outlier;
pub mod pool;
