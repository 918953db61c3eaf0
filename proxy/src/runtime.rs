//! Live state (layer 1): what traffic reads while config changes underneath it, and how a worker
//! sees a consistent view.
//!
//! Compiled config objects (listeners, filter chains, route tables, clusters, TLS contexts) are
//! immutable once built. What changes while they serve is held in a few cells, each written by one
//! writer (the config manager, `crate::manager`, on the main runtime) and read by workers without
//! a lock a request waits on:
//!
//! | live state | cell | writer | what a reader holds |
//! |---|---|---|---|
//! | the cluster set | [`Shared::clusters`] (`ArcSwap<ClusterSet>`) | CDS | a request loads it once and keeps that `Arc` for its life |
//! | the listener set | `listener::ActiveListeners` (`ArcSwap`) | LDS | read once per accepted connection (the original_dst hand-off) |
//! | a cluster's hosts | `Cluster::hosts` (`ArcSwap<HostSet>`) | EDS, DNS, the outlier detector (health changes) | each pick loads one whole `HostSet` (hosts with their LB state) |
//! | an HCM's route table | the RDS slot (`ArcSwapOption<RouteTable>`) shared by the HCMs naming it | RDS | a request loads the table once, before routing |
//! | TLS secrets | `tls::SecretStore` (certs: one `ArcSwapOption` slot per name) | SDS, the CA client | a handshake loads each slot it reads once; nothing is rebuilt (session resumption resets) |
//!
//! Each cell is swapped whole, so nothing half-applied is visible: a listener's RDS slot and a
//! cluster's hosts are filled before the listener or cluster is published (warming), and a
//! removed cluster stays alive for requests that already hold it. Across cells the order is
//! Envoy's: clusters before listeners, so a new listener never names a cluster that is not yet
//! published. Per-worker state (connection pools, the per-worker caches in `Pools`) is never
//! shared between threads.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::stats::Store;
use crate::upstream::cluster_manager::ClusterSet;
use crate::upstream::pool::Pools;

/// Server-wide state shared with every worker.
pub struct Shared {
    /// The published clusters.
    pub clusters: ArcSwap<ClusterSet>,
    pub stats: Arc<Store>,
    pub hostname: String,
    /// This host's address (Envoy's local_info address): replaces a loopback peer in XFF.
    pub local_address: std::net::IpAddr,
    /// Set when connections should close gracefully (drain).
    pub drain: watch::Sender<bool>,
    /// Open downstream connections, for shutdown.
    pub connections: AtomicUsize,
    /// Those counted against the global limit (not on `ignore_global_conn_limit` listeners).
    pub limited_connections: AtomicUsize,
    /// The overload manager's global downstream connection limit (`usize::MAX`: none).
    pub max_connections: usize,
    /// `--drain-time-s`: how long a drained listener's HTTP/1 connections stay usable.
    pub drain_time: std::time::Duration,
}

/// What a worker's connection tasks can reach: its own pools and the shared state.
pub struct WorkerCtx {
    pub index: usize,
    pub pools: Rc<Pools>,
    pub shared: Arc<Shared>,
    pub drain: watch::Receiver<bool>,
}
