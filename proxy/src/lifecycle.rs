//! The server's lifecycle (layer 4): Envoy's `server.state`, and the controls the admin API and
//! signals use (drain listeners, shut down). The server starts everything and owns a `Control`;
//! the admin API only sees this module, never the server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::manager::ConfigManager;
use crate::runtime::Shared;
use crate::stats::Gauge;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Envoy's `server.state` values.
pub mod state {
    pub const LIVE: i64 = 0;
    pub const DRAINING: i64 = 1;
    pub const PRE_INITIALIZING: i64 = 2;
    pub const INITIALIZING: i64 = 3;
}

/// Handles the admin API and signals use to control the server.
pub struct Control {
    pub shared: Arc<Shared>,
    pub manager: Arc<ConfigManager>,
    pub state: Gauge,
    pub shutdown: watch::Sender<bool>,
    pub drain_time: Duration,
    pub started: Instant,
}

impl Control {
    /// Starts a graceful shutdown: stop accepting, drain connections, exit once they are done
    /// or `--drain-time-s` passed.
    pub fn begin_shutdown(&self) {
        self.state.set(state::DRAINING);
        let _ = self.shutdown.send(true);
    }

    /// `/drain_listeners`: connections of the (inbound) listeners finish gracefully; the listeners
    /// stop accepting at once, or after the drain time when `graceful`.
    pub fn drain_listeners(self: &Arc<Self>, inbound_only: bool, graceful: bool) {
        let listeners: Vec<_> =
            self.manager.all_listeners().into_iter().filter(|l| !inbound_only || l.inbound).collect();
        self.shared.stats.gauge("listener_manager.total_listeners_draining").set(listeners.len() as i64);
        for l in &listeners {
            l.drain.send_replace(true);
        }
        let names: Vec<String> = listeners.iter().map(|l| l.name.clone()).collect();
        if graceful {
            let t = self.drain_time;
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(t).await;
                for l in listeners {
                    l.stop.send_replace(true);
                }
                this.manager.release_listen_sockets(&names);
            });
        } else {
            for l in listeners {
                l.stop.send_replace(true);
            }
            self.manager.release_listen_sockets(&names);
        }
    }
}
