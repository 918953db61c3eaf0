//! Worker threads: each runs a single-threaded tokio runtime, accepts on its own SO_REUSEPORT
//! socket of every listener, and owns its upstream connection pools. Config is read through the
//! shared snapshot pointer; nothing on a worker takes a lock that another worker contends for.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};

use crate::config::Snapshot;
use crate::listener::Listener;
use crate::stats::Store;
use crate::upstream::pool::Pools;

/// Server-wide state shared with every worker.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub stats: Arc<Store>,
    pub hostname: String,
    /// This host's address (Envoy's local_info address): replaces a loopback peer in XFF.
    pub local_address: std::net::IpAddr,
    /// Set when connections should close gracefully (drain).
    pub drain: watch::Sender<bool>,
    /// Open downstream connections, for shutdown.
    pub connections: AtomicUsize,
    /// `--drain-time-s`: how long a drained listener's HTTP/1 connections stay usable.
    pub drain_time: std::time::Duration,
}

/// What a worker's tasks can reach.
pub struct WorkerCtx {
    pub index: usize,
    pub pools: Rc<Pools>,
    pub shared: Arc<Shared>,
    pub drain: watch::Receiver<bool>,
}

pub enum Command {
    /// Accept on `socket` for `listener` until `stop` turns true.
    Listen { listener: Arc<Listener>, socket: std::net::TcpListener },
    /// Drop pools of clusters that are gone.
    RetainClusters(Arc<dyn Fn(u64) -> bool + Send + Sync>),
}

pub struct WorkerHandle {
    pub tx: mpsc::UnboundedSender<Command>,
    pub thread: std::thread::JoinHandle<()>,
}

/// Starts `n` workers.
pub fn start(n: usize, shared: Arc<Shared>) -> std::io::Result<Vec<WorkerHandle>> {
    let mut v = Vec::with_capacity(n);
    for index in 0..n {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = shared.clone();
        let thread =
            std::thread::Builder::new().name(format!("wrk:worker_{index}")).spawn(move || run(index, shared, rx))?;
        v.push(WorkerHandle { tx, thread });
    }
    Ok(v)
}

fn run(index: usize, shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Command>) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("worker {index}: cannot start runtime: {e}");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    let drain = shared.drain.subscribe();
    let ctx = Rc::new(WorkerCtx { index, pools: Pools::new(), shared, drain });
    local.block_on(&rt, async move {
        let sweeper = ctx.clone();
        tokio::task::spawn_local(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                let snap = sweeper.shared.snapshot.load_full();
                sweeper.pools.sweep(&snap);
            }
        });
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::Listen { listener, socket } => {
                    let stop = listener.stop.subscribe();
                    tokio::task::spawn_local(accept_loop(listener, socket, stop, ctx.clone()));
                }
                Command::RetainClusters(live) => ctx.pools.retain_clusters(&*live),
            }
        }
    });
    // Let in-flight connections finish after the command channel closed (shutdown).
    rt.block_on(local);
}

async fn accept_loop(
    listener: Arc<Listener>,
    socket: std::net::TcpListener,
    mut stop: watch::Receiver<bool>,
    ctx: Rc<WorkerCtx>,
) {
    let socket = match tokio::net::TcpListener::from_std(socket) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("listener {}: {e}", listener.name);
            return;
        }
    };
    loop {
        tokio::select! {
            r = socket.accept() => match r {
                Ok((stream, remote)) => {
                    let l = listener.clone();
                    let c = ctx.clone();
                    c.shared.connections.fetch_add(1, Ordering::Relaxed);
                    tokio::task::spawn_local(async move {
                        let shared = c.shared.clone();
                        l.serve_connection(stream, remote, c).await;
                        shared.connections.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                Err(e) => {
                    tracing::debug!("accept on {}: {e}", listener.name);
                    // EMFILE and friends: back off briefly instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
}

/// Binds one SO_REUSEPORT socket per worker for `addr`. A port of 0 is resolved by the first
/// bind and reused by the others, as Envoy does.
pub fn bind_reuseport(addr: SocketAddr, n: usize, backlog: i32) -> std::io::Result<Vec<std::net::TcpListener>> {
    bind_reuseport_with(addr, n, backlog, false)
}

/// Like [`bind_reuseport`]; `v6_only` keeps an IPv6 wildcard socket from taking IPv4 too.
pub fn bind_reuseport_with(
    addr: SocketAddr,
    n: usize,
    backlog: i32,
    v6_only: bool,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut out = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n.max(1) {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        if addr.is_ipv6() {
            let _ = s.set_only_v6(v6_only);
        }
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(backlog)?;
        if addr.port() == 0
            && let Some(a) = s.local_addr()?.as_socket()
        {
            addr = a;
        }
        out.push(s.into());
    }
    Ok(out)
}
