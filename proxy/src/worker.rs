//! Worker threads: each runs a single-threaded tokio runtime, accepts on its own SO_REUSEPORT
//! socket of every listener, and owns its upstream connection pools. Config is read through the
//! published cells `crate::runtime` lists; nothing on a worker takes a lock that another worker
//! contends for. The config manager drives workers with `WorkerCommand`s.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, watch};

use crate::listener::{ActiveListeners, Listener};
use crate::manager::WorkerCommand as Command;
use crate::runtime::{Shared, WorkerCtx};
use crate::upstream::pool::Pools;

pub struct WorkerHandle {
    pub tx: mpsc::UnboundedSender<Command>,
    pub thread: std::thread::JoinHandle<()>,
}

/// Starts `n` workers.
pub fn start(n: usize, shared: Arc<Shared>, listeners: Arc<ActiveListeners>) -> std::io::Result<Vec<WorkerHandle>> {
    let mut v = Vec::with_capacity(n);
    for index in 0..n {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = shared.clone();
        let listeners = listeners.clone();
        let thread = std::thread::Builder::new()
            .name(format!("wrk:worker_{index}"))
            .spawn(move || run(index, shared, listeners, rx))?;
        v.push(WorkerHandle { tx, thread });
    }
    Ok(v)
}

fn run(index: usize, shared: Arc<Shared>, listeners: Arc<ActiveListeners>, mut rx: mpsc::UnboundedReceiver<Command>) {
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
                let clusters = sweeper.shared.clusters.load_full();
                sweeper.pools.sweep(&clusters);
            }
        });
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::Listen { listener, socket } => {
                    let stop = listener.stop.subscribe();
                    tokio::task::spawn_local(accept_loop(listener, socket, stop, ctx.clone(), listeners.clone()));
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
    listeners: Arc<ActiveListeners>,
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
                    // The overload manager's global limit: Envoy closes the connection at once.
                    // A listener with `ignore_global_conn_limit` is neither limited nor counted.
                    let limited = !listener.ignore_global_conn_limit;
                    if limited && ctx.shared.limited_connections.load(Ordering::Relaxed) >= ctx.shared.max_connections {
                        listener.stats.downstream_global_cx_overflow.inc();
                        drop(stream);
                        continue;
                    }
                    let l = listener.clone();
                    let c = ctx.clone();
                    let all = listeners.clone();
                    c.shared.connections.fetch_add(1, Ordering::Relaxed);
                    if limited {
                        c.shared.limited_connections.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::task::spawn_local(async move {
                        let shared = c.shared.clone();
                        l.serve_connection(stream, remote, c, &all).await;
                        shared.connections.fetch_sub(1, Ordering::Relaxed);
                        if limited {
                            shared.limited_connections.fetch_sub(1, Ordering::Relaxed);
                        }
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
