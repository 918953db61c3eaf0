//! The checker task of a cluster with `health_checks` (one per cluster, on the main runtime):
//! one session task per checked host, started and stopped as the host set changes, each probing
//! its host every interval and applying the result to the host's flags.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{Failure, Outcome, Session, Transition, next_interval, probe, with_jitter};
use crate::upstream::cluster::Cluster;
use crate::upstream::host::{Host, flag};

/// A host's identity across host objects: a host whose weight or metadata changed is a new
/// object with the same address, and its session (and state) carries on.
type Key = (SocketAddr, Option<PathBuf>);

fn key(h: &Host) -> Key {
    (h.address, h.pipe.clone())
}

/// Starts the checker of a cluster with active health checks, on the current (main) runtime.
pub fn spawn(c: &Arc<Cluster>) {
    let Some(h) = c.health.as_ref() else { return };
    let task = tokio::spawn(run(Arc::downgrade(c)));
    if h.task.set(task.abort_handle()).is_err() {
        task.abort();
    }
}

/// The sessions of one checker; aborted together when the checker ends.
#[derive(Default)]
struct Sessions(HashMap<Key, tokio::task::AbortHandle>);

impl Drop for Sessions {
    fn drop(&mut self) {
        for a in self.0.values() {
            a.abort();
        }
    }
}

/// `health_check.healthy` and `health_check.degraded`: the checked hosts passing, and degraded.
fn set_gauges(c: &Cluster) {
    let Some(h) = c.health.as_ref() else { return };
    let hosts = c.hosts.load();
    let checked = || hosts.all.iter().filter(|x| !x.hc.disabled);
    h.stats.healthy.set(checked().filter(|x| !x.has(flag::FAILED_ACTIVE_HC)).count() as i64);
    h.stats.degraded.set(checked().filter(|x| x.has(flag::DEGRADED_ACTIVE_HC)).count() as i64);
}

async fn run(cluster: Weak<Cluster>) {
    let mut sessions = Sessions::default();
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let Some(h) = c.health.as_ref() else { return };
        let changed = h.membership_changed.clone();
        {
            let hosts = c.hosts.load();
            let checked: Vec<Key> = hosts.all.iter().filter(|x| !x.hc.disabled).map(|x| key(x)).collect();
            // A session ends by itself when its host is gone; one that did so just before its
            // address came back is started again.
            sessions.0.retain(|k, a| {
                let keep = checked.contains(k) && !a.is_finished();
                if !keep {
                    a.abort();
                }
                keep
            });
            for k in checked {
                if let std::collections::hash_map::Entry::Vacant(e) = sessions.0.entry(k) {
                    let t = tokio::spawn(session(cluster.clone(), e.key().clone()));
                    e.insert(t.abort_handle());
                }
            }
        }
        set_gauges(&c);
        drop(c);
        // Membership changes notify; the timeout only notices a dropped cluster whose task was
        // not aborted (it always is, by the checker's Drop).
        let _ = tokio::time::timeout(Duration::from_secs(30), changed.notified()).await;
    }
}

/// Whether the cluster ever carried traffic (Envoy's no-traffic intervals apply until then).
fn had_traffic(c: &Cluster) -> bool {
    c.stats.upstream_cx_total.value() > 0
        || c.stats.upstream_cx_tx_bytes_total.value() > 0
        || c.stats.upstream_cx_rx_bytes_total.value() > 0
}

async fn session(cluster: Weak<Cluster>, k: Key) {
    let mut state = Session::default();
    let mut conn = probe::Conn::default();
    let first_wait = {
        let Some(c) = cluster.upgrade() else { return };
        let Some(h) = c.health.as_ref() else { return };
        (!h.config.initial_jitter.is_zero()).then(|| with_jitter(&h.config, 0, h.config.initial_jitter))
    };
    if let Some(d) = first_wait {
        tokio::time::sleep(d).await;
    }
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let Some(h) = c.health.as_ref() else { return };
        let Some(host) = c.hosts.load().all.iter().find(|x| key(x) == k).cloned() else { return };
        h.stats.attempt.inc();
        let outcome = match tokio::time::timeout(h.config.timeout, probe::check(&c, &h.config, &host, &mut conn)).await
        {
            Ok(o) => o,
            Err(_) => {
                conn.close();
                Outcome::Failure { kind: Failure::NetworkTimeout, retriable: false }
            }
        };
        if !matches!(outcome, Outcome::Success { .. }) {
            tracing::debug!(target: "remora::health", cluster = %c.name, host = %host.address, ?outcome, "health check failed");
        }
        let t = state.on_result(&host, &h.config, &h.stats, outcome);
        host.set_flag(flag::HC_CHECKED, true);
        if matches!(outcome, Outcome::Success { .. })
            && !host.has(flag::FAILED_ACTIVE_HC)
            && let Some(d) = c.outlier.as_ref()
        {
            d.health_check_passed(&host);
        }
        if t == Transition::Changed {
            if host.has(flag::FAILED_ACTIVE_HC) && host.has(flag::PENDING_DYNAMIC_REMOVAL) {
                c.remove_failed_pending(&host);
            } else {
                c.refresh_health();
            }
            set_gauges(&c);
        }
        let healthy = matches!(outcome, Outcome::Success { .. });
        let wait = next_interval(&h.config, had_traffic(&c), healthy, t);
        drop(host);
        drop(c);
        tokio::time::sleep(wait).await;
    }
}
