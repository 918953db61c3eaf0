//! Per-worker upstream connection pools.
//!
//! Each worker owns its pools (no locks, no cross-thread traffic). A pool is keyed by cluster,
//! host and protocol. HTTP/1.1 connections are leased one request at a time and come back when
//! the response body has been read to the end; an HTTP/2 connection is shared by all requests
//! of the worker to that host. Idle connections past the cluster's idle timeout, closed ones and
//! ones that served `max_requests_per_connection` are not reused.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioTimer;
use tokio::sync::Notify;

use super::cluster::Cluster;
use super::connect::connect_with_alpn;
use super::host::Host;
use crate::http::body::RequestBody;
use crate::http::exec::LocalExec;
use crate::stats::GaugeGuard;
use crate::stream_info::ResetReason;

/// An ALPN list upstream TLS offers instead of the cluster's (Istio's `istio.alpn`), and a key
/// that tells pools apart.
#[derive(Debug, Clone)]
pub struct Alpn {
    pub key: u64,
    pub protocols: Arc<[Vec<u8>]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub cluster: u64,
    pub host: u64,
    pub h2: bool,
    /// The ALPN override's key (Istio's `istio.alpn`), 0 for the cluster's own list.
    pub alpn: u64,
}

struct IdleH1 {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
    served: u32,
}

#[derive(Default)]
struct Entry {
    idle: Vec<IdleH1>,
    h2: Option<(http2::SendRequest<RequestBody>, u32)>,
    h2_connecting: Option<Rc<Notify>>,
}

/// A connection leased for one request.
pub enum Lease {
    H1 { sender: http1::SendRequest<RequestBody>, served: u32, key: PoolKey, max: Option<u32> },
    H2 { sender: http2::SendRequest<RequestBody> },
}

/// The pools of one worker.
#[derive(Default)]
pub struct Pools {
    entries: RefCell<crate::FastMap<PoolKey, Entry>>,
}

impl Pools {
    pub fn new() -> Rc<Self> {
        Rc::new(Pools::default())
    }

    /// Gets a ready connection to `host`, reusing an idle one when possible.
    /// `alpn` replaces the TLS context's ALPN list for new connections (and keys the pool).
    pub async fn acquire(
        self: &Rc<Self>,
        cluster: &Cluster,
        host: &Arc<Host>,
        h2: bool,
        alpn: Option<&Alpn>,
    ) -> Result<Lease, ResetReason> {
        let key = PoolKey { cluster: cluster.id, host: host.id, h2, alpn: alpn.map_or(0, |a| a.key) };
        if h2 {
            return self.acquire_h2(cluster, host, key, alpn).await;
        }
        loop {
            let idle = {
                let mut entries = self.entries.borrow_mut();
                entries.get_mut(&key).and_then(|e| e.idle.pop())
            };
            let Some(mut c) = idle else { break };
            if c.sender.is_closed() || cluster.idle_timeout.is_some_and(|t| c.since.elapsed() > t) {
                continue;
            }
            if c.sender.ready().await.is_err() {
                continue;
            }
            return Ok(Lease::H1 { sender: c.sender, served: c.served, key, max: cluster.max_requests_per_connection });
        }
        let io = connect_with_alpn(cluster, host, alpn.map(|a| &a.protocols[..])).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake::<_, RequestBody>(io)
            .await
            .map_err(|_| ResetReason::ConnectionTermination)?;
        cluster.stats.upstream_cx_http1_total.inc();
        let active = GaugeGuard::new(&cluster.stats.upstream_cx_active);
        let destroy = cluster.stats.upstream_cx_destroy.clone();
        tokio::task::spawn_local(async move {
            let _ = conn.with_upgrades().await;
            drop(active);
            destroy.inc();
        });
        Ok(Lease::H1 { sender, served: 0, key, max: cluster.max_requests_per_connection })
    }

    async fn acquire_h2(
        self: &Rc<Self>,
        cluster: &Cluster,
        host: &Arc<Host>,
        key: PoolKey,
        alpn: Option<&Alpn>,
    ) -> Result<Lease, ResetReason> {
        loop {
            let wait = {
                let mut entries = self.entries.borrow_mut();
                let e = entries.entry(key).or_default();
                if let Some((s, served)) = &mut e.h2 {
                    let exhausted = cluster.max_requests_per_connection.is_some_and(|m| *served >= m);
                    if !s.is_closed() && !exhausted {
                        *served += 1;
                        return Ok(Lease::H2 { sender: s.clone() });
                    }
                    if exhausted {
                        cluster.stats.upstream_cx_max_requests.inc();
                    }
                    e.h2 = None;
                }
                match &e.h2_connecting {
                    Some(n) => Some(n.clone()),
                    None => {
                        e.h2_connecting = Some(Rc::new(Notify::new()));
                        None
                    }
                }
            };
            if let Some(n) = wait {
                n.notified().await;
                continue;
            }
            let result = self.connect_h2(cluster, host, alpn).await;
            let mut entries = self.entries.borrow_mut();
            let e = entries.entry(key).or_default();
            if let Some(n) = e.h2_connecting.take() {
                n.notify_waiters();
            }
            let sender = result?;
            e.h2 = Some((sender.clone(), 1));
            return Ok(Lease::H2 { sender });
        }
    }

    async fn connect_h2(
        &self,
        cluster: &Cluster,
        host: &Arc<Host>,
        alpn: Option<&Alpn>,
    ) -> Result<http2::SendRequest<RequestBody>, ResetReason> {
        let io = connect_with_alpn(cluster, host, alpn.map(|a| &a.protocols[..])).await?;
        let (sender, conn) = http2::Builder::new(LocalExec)
            .timer(TokioTimer::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(16 << 20)
            .keep_alive_interval(None)
            .handshake::<_, RequestBody>(io)
            .await
            .map_err(|_| ResetReason::ConnectionTermination)?;
        cluster.stats.upstream_cx_http2_total.inc();
        let active = GaugeGuard::new(&cluster.stats.upstream_cx_active);
        let destroy = cluster.stats.upstream_cx_destroy.clone();
        tokio::task::spawn_local(async move {
            let _ = conn.await;
            drop(active);
            destroy.inc();
        });
        Ok(sender)
    }

    /// Returns an HTTP/1.1 connection after its response ended.
    pub fn release(&self, key: PoolKey, sender: http1::SendRequest<RequestBody>, served: u32, max: Option<u32>) {
        if sender.is_closed() || max.is_some_and(|m| served >= m) {
            return;
        }
        let mut entries = self.entries.borrow_mut();
        entries.entry(key).or_default().idle.push(IdleH1 { sender, since: Instant::now(), served });
    }

    /// Drops every pool of a cluster that no longer exists or changed (its connections close
    /// once in-flight requests finish).
    pub fn retain_clusters(&self, live: &dyn Fn(u64) -> bool) {
        self.entries.borrow_mut().retain(|k, _| live(k.cluster));
    }

    /// Periodic sweep: drops pools of hosts that left their cluster (EDS/DNS churn) and idle
    /// HTTP/1.1 connections past the cluster's idle timeout.
    pub fn sweep(&self, set: &super::cluster_manager::ClusterSet) {
        let clusters: HashMap<u64, &Arc<Cluster>> = set.clusters.values().map(|c| (c.id, c)).collect();
        let mut entries = self.entries.borrow_mut();
        entries.retain(|k, e| {
            let Some(c) = clusters.get(&k.cluster) else { return false };
            let hosts = c.hosts.load();
            let live =
                hosts.all.iter().any(|h| h.id == k.host) || c.discovery == super::cluster::DiscoveryType::OriginalDst;
            if !live {
                return false;
            }
            if let Some(t) = c.idle_timeout {
                e.idle.retain(|i| i.since.elapsed() <= t && !i.sender.is_closed());
            }
            !(e.idle.is_empty() && e.h2.is_none() && e.h2_connecting.is_none())
        });
    }
}
