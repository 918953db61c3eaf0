//! Per-worker upstream connection pools.
//!
//! Each worker owns its pools (no locks, no cross-thread traffic). A pool is keyed by cluster,
//! host, protocol, ALPN override and routing priority. HTTP/1.1 connections are leased one
//! request at a time and come back when the response body has been read to the end; an HTTP/2
//! connection is shared by all requests of the worker to that host. Idle connections past the
//! cluster's idle timeout, closed ones and ones that served `max_requests_per_connection` are
//! not reused.
//!
//! The cluster's circuit breakers (`super::circuit_breaker`) apply as in Envoy's
//! `ConnPoolImplBase`: a request that finds no ready connection waits in the pool's pending
//! queue (refused when `max_pending_requests` is reached); a connection is opened when the
//! pending requests outnumber the connections being opened, if `max_connections` allows it or
//! the pool has no connection at all; a connection that comes free goes to the oldest pending
//! request; a failed connection attempt fails every pending request of the pool; attaching a
//! request to a connection checks `max_requests`. Pending requests wait until a connection is
//! ready or the route's timeouts end the attempt.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioTimer;
use tokio::sync::oneshot;

use super::circuit_breaker::{ConnectionGuard, Held, Priority, RequestGuard};
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
    pub priority: Priority,
}

struct IdleH1 {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
    served: u32,
}

/// A connection handed to a pending request.
enum Ready {
    H1 { sender: http1::SendRequest<RequestBody>, served: u32 },
    H2 { sender: http2::SendRequest<RequestBody> },
}

type Waiter = oneshot::Sender<Result<Ready, ResetReason>>;

#[derive(Default)]
struct Entry {
    idle: Vec<IdleH1>,
    /// Requests waiting for a connection, oldest first.
    waiters: VecDeque<Waiter>,
    /// Connections being opened.
    connecting: u32,
    /// Connections of this pool that are open or being opened.
    open: Rc<Cell<u32>>,
    h2: Option<(http2::SendRequest<RequestBody>, u32)>,
}

impl Entry {
    fn prune_waiters(&mut self) {
        self.waiters.retain(|w| !w.is_closed());
    }
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

/// What a pool needs to open a connection on its own (the connect runs as a task, so that a
/// request that gives up does not abort it, as in Envoy).
#[derive(Clone)]
struct Target {
    cluster: Arc<Cluster>,
    host: Arc<Host>,
    alpn: Option<Alpn>,
    key: PoolKey,
}

impl Pools {
    pub fn new() -> Rc<Self> {
        Rc::new(Pools::default())
    }

    /// Gets a ready connection to `host` for a request of priority `prio`, reusing an idle one
    /// when possible, else waiting as a pending request. The request guard counts the request
    /// against `max_requests` for as long as it is kept. `alpn` replaces the TLS context's ALPN
    /// list for new connections (and keys the pool).
    pub async fn acquire(
        self: &Rc<Self>,
        cluster: &Arc<Cluster>,
        host: &Arc<Host>,
        h2: bool,
        alpn: Option<&Alpn>,
        prio: Priority,
    ) -> Result<(Lease, RequestGuard), ResetReason> {
        let key = PoolKey { cluster: cluster.id, host: host.id, h2, alpn: alpn.map_or(0, |a| a.key), priority: prio };
        let max = cluster.max_requests_per_connection;
        if h2 {
            if let Some(sender) = self.ready_h2(cluster, key) {
                let rq = RequestGuard::attach(cluster, prio).ok_or(ResetReason::Overflow)?;
                return Ok((Lease::H2 { sender }, rq));
            }
        } else {
            loop {
                let idle = self.entries.borrow_mut().get_mut(&key).and_then(|e| e.idle.pop());
                let Some(mut c) = idle else { break };
                if c.sender.is_closed() || cluster.idle_timeout.is_some_and(|t| c.since.elapsed() > t) {
                    continue;
                }
                if c.sender.ready().await.is_err() {
                    continue;
                }
                let Some(rq) = RequestGuard::attach(cluster, prio) else {
                    self.release(key, c.sender, c.served, max);
                    return Err(ResetReason::Overflow);
                };
                return Ok((Lease::H1 { sender: c.sender, served: c.served, key, max }, rq));
            }
        }
        // No ready connection: a pending request.
        let limits = cluster.circuit_breakers.get(prio);
        if !limits.pending.can_create() {
            cluster.stats.upstream_rq_pending_overflow.inc();
            return Err(ResetReason::Overflow);
        }
        let pending = Held::pending(cluster, prio);
        let (tx, rx) = oneshot::channel();
        let connect = {
            let mut entries = self.entries.borrow_mut();
            let e = entries.entry(key).or_default();
            e.prune_waiters();
            e.waiters.push_back(tx);
            // Envoy connects while the pending requests outnumber the connections being opened
            // (an HTTP/2 connection serves them all).
            let wanted = if h2 { e.connecting == 0 } else { e.waiters.len() as u32 > e.connecting };
            wanted && {
                let can = limits.can_create_connection(host);
                if !can {
                    cluster.stats.upstream_cx_overflow.inc();
                }
                // A pool with no connection at all may always open one, so that its pending
                // requests are not stranded by other pools' connections.
                let ok = can || e.open.get() == 0;
                if ok {
                    e.connecting += 1;
                    e.open.set(e.open.get() + 1);
                }
                ok
            }
        };
        if connect {
            let t = Target { cluster: cluster.clone(), host: host.clone(), alpn: alpn.cloned(), key };
            let me = self.clone();
            tokio::task::spawn_local(async move { me.open_connection(t).await });
        }
        let ready = rx.await.map_err(|_| ResetReason::LocalReset)??;
        drop(pending);
        match ready {
            Ready::H1 { mut sender, served } => {
                if sender.ready().await.is_err() {
                    return Err(ResetReason::ConnectionTermination);
                }
                let Some(rq) = RequestGuard::attach(cluster, prio) else {
                    self.release(key, sender, served, max);
                    return Err(ResetReason::Overflow);
                };
                Ok((Lease::H1 { sender, served, key, max }, rq))
            }
            Ready::H2 { sender } => {
                let rq = RequestGuard::attach(cluster, prio).ok_or(ResetReason::Overflow)?;
                Ok((Lease::H2 { sender }, rq))
            }
        }
    }

    /// The pool's live HTTP/2 connection, if it can take one more request.
    fn ready_h2(&self, cluster: &Cluster, key: PoolKey) -> Option<http2::SendRequest<RequestBody>> {
        let mut entries = self.entries.borrow_mut();
        let e = entries.get_mut(&key)?;
        let (s, served) = e.h2.as_mut()?;
        let exhausted = cluster.max_requests_per_connection.is_some_and(|m| *served >= m);
        if !s.is_closed() && !exhausted {
            *served += 1;
            return Some(s.clone());
        }
        if exhausted {
            cluster.stats.upstream_cx_max_requests.inc();
        }
        e.h2 = None;
        None
    }

    /// Opens one connection for the pool of `t.key` and hands it to its pending requests; a
    /// failure fails them all (Envoy's `purgePendingStreams`).
    async fn open_connection(self: Rc<Self>, t: Target) {
        let open = self.entries.borrow_mut().entry(t.key).or_default().open.clone();
        let guard = PoolConnection { _cx: ConnectionGuard::new(&t.cluster, &t.host, t.key.priority), open };
        let result = if t.key.h2 { self.connect_h2(&t, guard).await } else { self.connect_h1(&t, guard).await };
        let mut entries = self.entries.borrow_mut();
        let e = entries.entry(t.key).or_default();
        e.connecting = e.connecting.saturating_sub(1);
        match result {
            Ok(Ready::H2 { sender }) => {
                let mut served = 0;
                for w in e.waiters.drain(..) {
                    if w.send(Ok(Ready::H2 { sender: sender.clone() })).is_ok() {
                        served += 1;
                    }
                }
                e.h2 = Some((sender, served));
            }
            Ok(Ready::H1 { sender, served }) => {
                drop(entries);
                self.release(t.key, sender, served, t.cluster.max_requests_per_connection);
            }
            Err(reason) => {
                for w in e.waiters.drain(..) {
                    if w.send(Err(reason)).is_ok() {
                        t.cluster.stats.upstream_rq_pending_failure_eject.inc();
                    }
                }
            }
        }
    }

    async fn connect_h1(self: &Rc<Self>, t: &Target, guard: PoolConnection) -> Result<Ready, ResetReason> {
        let io = connect_with_alpn(&t.cluster, &t.host, t.alpn.as_ref().map(|a| &a.protocols[..])).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake::<_, RequestBody>(io)
            .await
            .map_err(|_| ResetReason::ConnectionTermination)?;
        t.cluster.stats.upstream_cx_http1_total.inc();
        self.drive(t, guard, async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(Ready::H1 { sender, served: 0 })
    }

    async fn connect_h2(self: &Rc<Self>, t: &Target, guard: PoolConnection) -> Result<Ready, ResetReason> {
        let io = connect_with_alpn(&t.cluster, &t.host, t.alpn.as_ref().map(|a| &a.protocols[..])).await?;
        let (sender, conn) = http2::Builder::new(LocalExec)
            .timer(TokioTimer::new())
            .initial_stream_window_size(t.cluster.h2_windows.0)
            .initial_connection_window_size(t.cluster.h2_windows.1)
            .keep_alive_interval(None)
            .handshake::<_, RequestBody>(io)
            .await
            .map_err(|_| ResetReason::ConnectionTermination)?;
        t.cluster.stats.upstream_cx_http2_total.inc();
        self.drive(t, guard, async move {
            let _ = conn.await;
        });
        Ok(Ready::H2 { sender })
    }

    /// Runs a connection until it closes, holding its circuit-breaker count; when it closes and
    /// its pool still has pending requests, another connection is opened for them (Envoy:
    /// "we just lost a connection, make a new one").
    fn drive(
        self: &Rc<Self>,
        t: &Target,
        guard: PoolConnection,
        conn: impl std::future::Future<Output = ()> + 'static,
    ) {
        let active = GaugeGuard::new(&t.cluster.stats.upstream_cx_active);
        let destroy = t.cluster.stats.upstream_cx_destroy.clone();
        let t = t.clone();
        let pools = Rc::downgrade(self);
        tokio::task::spawn_local(async move {
            conn.await;
            drop(active);
            drop(guard);
            destroy.inc();
            if let Some(p) = pools.upgrade() {
                p.on_closed(t);
            }
        });
    }

    fn on_closed(self: Rc<Self>, t: Target) {
        let connect = {
            let mut entries = self.entries.borrow_mut();
            let Some(e) = entries.get_mut(&t.key) else { return };
            e.prune_waiters();
            let wanted = !e.waiters.is_empty() && e.connecting == 0;
            wanted && {
                let can = t.cluster.circuit_breakers.get(t.key.priority).can_create_connection(&t.host);
                let ok = can || e.open.get() == 0;
                if ok {
                    e.connecting += 1;
                    e.open.set(e.open.get() + 1);
                }
                ok
            }
        };
        if connect {
            tokio::task::spawn_local(async move { self.open_connection(t).await });
        }
    }

    /// Returns an HTTP/1.1 connection after its response ended: to the oldest pending request
    /// of its pool, else to the idle list.
    pub fn release(&self, key: PoolKey, sender: http1::SendRequest<RequestBody>, served: u32, max: Option<u32>) {
        if sender.is_closed() || max.is_some_and(|m| served >= m) {
            return;
        }
        let mut entries = self.entries.borrow_mut();
        let e = entries.entry(key).or_default();
        let mut ready = Ready::H1 { sender, served };
        while let Some(w) = e.waiters.pop_front() {
            match w.send(Ok(ready)) {
                Ok(()) => return,
                Err(Ok(back)) => ready = back,
                Err(Err(_)) => return,
            }
        }
        if let Ready::H1 { sender, served } = ready {
            e.idle.push(IdleH1 { sender, since: Instant::now(), served });
        }
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
            e.prune_waiters();
            !(e.idle.is_empty() && e.h2.is_none() && e.waiters.is_empty() && e.connecting == 0 && e.open.get() == 0)
        });
    }
}

/// An open connection of a pool: its circuit-breaker count and the pool's open count.
struct PoolConnection {
    _cx: ConnectionGuard,
    open: Rc<Cell<u32>>,
}

impl Drop for PoolConnection {
    fn drop(&mut self) {
        self.open.set(self.open.get().saturating_sub(1));
    }
}
