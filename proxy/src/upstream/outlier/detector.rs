//! The per-cluster detector task (one per cluster, on the main runtime): ejections on
//! consecutive-failure events, and every `interval` the unejections, the success-rate and
//! failure-percentage analysis and the ejection back-off decay, as Envoy's `DetectorImpl`.
//!
//! The decisions are made by [`State`] from the hosts, the config and an explicit `now`, so they
//! are unit-tested without a runtime; [`run`] only feeds it events and ticks.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{Detector, EjectionType, Event, HostMonitor, OutlierConfig};
use crate::upstream::cluster::Cluster;
use crate::upstream::host::Host;

/// What the detector alone knows about a host (Envoy's `DetectorHostMonitorImpl` fields
/// written on the main thread).
#[derive(Debug, Default, Clone)]
struct HostState {
    num_ejections: u32,
    last_ejection: Option<Instant>,
    last_unejection: Option<Instant>,
    /// Multiplies `base_ejection_time`: up by one per ejection (bounded), down by one per
    /// interval the host spends healthy after an unejection.
    backoff: u32,
    jitter: Duration,
}

/// The detector's state across events and ticks.
#[derive(Debug, Default)]
pub struct State {
    hosts: HashMap<u64, HostState>,
}

/// Envoy's success-rate outlier threshold: mean - factor * population stdev.
pub fn success_rate_threshold(rates: &[f64], stdev_factor: f64) -> (f64, f64) {
    if rates.is_empty() {
        return (-1.0, -1.0);
    }
    let n = rates.len() as f64;
    let mean = rates.iter().sum::<f64>() / n;
    let variance = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n;
    (mean, mean - stdev_factor * variance.sqrt())
}

/// Whether one more host may be ejected: `max_ejection_percent` of all hosts (Envoy counts the
/// whole cluster, every priority), or the first one with `always_eject_one_host`.
pub fn may_eject(active: usize, total: usize, max_percent: u32, always_one: bool) -> bool {
    if total == 0 {
        return false;
    }
    let pct = 100.0 * (active + 1) as f64 / total as f64;
    let ok = pct <= f64::from(max_percent.min(100));
    ok || (always_one && active == 0)
}

/// How long an ejection lasts: base x back-off, capped by the max, plus the host's jitter.
pub fn ejection_duration(c: &OutlierConfig, backoff: u32, jitter: Duration) -> Duration {
    c.base_ejection_time.saturating_mul(backoff).min(c.max_ejection_time) + jitter
}

fn monitor(h: &Host) -> Option<&HostMonitor> {
    h.outlier.as_deref()
}

impl State {
    fn state(&mut self, h: &Host) -> &mut HostState {
        self.hosts.entry(h.id).or_default()
    }

    /// Forgets hosts that left the cluster.
    fn prune(&mut self, hosts: &[Arc<Host>]) {
        if self.hosts.len() > hosts.len() {
            self.hosts.retain(|id, _| hosts.iter().any(|h| h.id == *id));
        }
    }

    /// Tries to eject `host` for `t`; returns whether it was ejected.
    fn eject(&mut self, d: &Detector, hosts: &[Arc<Host>], host: &Arc<Host>, t: EjectionType, now: Instant) -> bool {
        let Some(m) = monitor(host) else { return false };
        let c = &d.config;
        let active = hosts.iter().filter(|h| h.ejected()).count();
        if !may_eject(active, hosts.len(), c.max_ejection_percent, c.always_eject_one_host) {
            d.stats.ejections_overflow.inc();
            return false;
        }
        if matches!(t, EjectionType::Consecutive5xx | EjectionType::SuccessRate) {
            d.stats.ejections_total.inc(); // deprecated, as Envoy keeps it
        }
        let enforce = c.enforcing(t);
        if enforce == 0 || (enforce < 100 && fastrand::u32(..100) >= enforce) {
            return false;
        }
        d.stats.ejections_enforced_total.inc();
        d.stats.enforced(t).inc();
        m.ejected.store(true, std::sync::atomic::Ordering::Relaxed);
        d.stats.ejections_active.set((active + 1) as i64);
        let jitter_ms = c.max_ejection_time_jitter.as_millis() as u64;
        let s = self.state(host);
        s.num_ejections += 1;
        s.last_ejection = Some(now);
        s.jitter = Duration::from_millis(fastrand::u64(..=jitter_ms));
        if c.base_ejection_time.saturating_mul(s.backoff) < c.max_ejection_time + c.base_ejection_time {
            s.backoff += 1;
        }
        tracing::debug!(target: "remora::outlier", host = %host.address, ?t, "ejected");
        true
    }

    fn uneject(&mut self, host: &Arc<Host>, now: Instant) {
        let Some(m) = monitor(host) else { return };
        m.ejected.store(false, std::sync::atomic::Ordering::Relaxed);
        // Reset so that a few new errors do not re-eject at once.
        m.reset_consecutive();
        self.state(host).last_unejection = Some(now);
        tracing::debug!(target: "remora::outlier", host = %host.address, "unejected");
    }

    /// A consecutive-failure event from the request path. Returns whether the host set must be
    /// republished.
    pub fn on_consecutive(
        &mut self,
        d: &Detector,
        hosts: &[Arc<Host>],
        host: &Arc<Host>,
        t: EjectionType,
        now: Instant,
    ) -> bool {
        // Events cross threads: the host may have left the cluster, or be ejected already.
        if !hosts.iter().any(|h| Arc::ptr_eq(h, host)) || host.ejected() {
            return false;
        }
        d.stats.detected(t).inc();
        let ejected = self.eject(d, hosts, host, t, now);
        if let Some(m) = monitor(host) {
            let a = match t {
                EjectionType::Consecutive5xx => {
                    d.stats.ejections_consecutive_5xx.inc(); // deprecated
                    &m.consecutive_5xx
                }
                EjectionType::ConsecutiveGatewayFailure => &m.consecutive_gateway_failure,
                EjectionType::ConsecutiveLocalOriginFailure => &m.consecutive_local_origin_failure,
                _ => return ejected,
            };
            a.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        ejected
    }

    /// A passing active health check: unejects the host (still in the cluster and ejected).
    pub fn on_health_check_passed(
        &mut self,
        d: &Detector,
        hosts: &[Arc<Host>],
        host: &Arc<Host>,
        now: Instant,
    ) -> bool {
        if !hosts.iter().any(|h| Arc::ptr_eq(h, host)) || !host.ejected() {
            return false;
        }
        self.uneject(host, now);
        d.stats.ejections_active.set(hosts.iter().filter(|h| h.ejected()).count() as i64);
        true
    }

    /// The interval timer. Returns whether the host set must be republished.
    pub fn on_interval(&mut self, d: &Detector, hosts: &[Arc<Host>], now: Instant) -> bool {
        self.prune(hosts);
        let c = &d.config;
        let mut changed = false;
        for h in hosts {
            let Some(m) = monitor(h) else { continue };
            if m.ejected() {
                let s = self.state(h);
                let due = s
                    .last_ejection
                    .is_none_or(|t| ejection_duration(c, s.backoff, s.jitter) <= now.saturating_duration_since(t));
                if due {
                    self.uneject(h, now);
                    changed = true;
                }
            }
            m.external.swap();
            m.local.swap();
            m.external.set_rate(-1.0);
            m.local.set_rate(-1.0);
        }
        for local in [false, true] {
            changed |= self.success_rate_pass(d, hosts, local, now);
        }
        for h in hosts {
            if h.ejected() {
                continue;
            }
            if let Some(s) = self.hosts.get_mut(&h.id)
                && s.last_unejection.is_some_and(|t| now.saturating_duration_since(t) >= c.interval)
            {
                s.backoff = s.backoff.saturating_sub(1);
            }
        }
        d.stats.ejections_active.set(hosts.iter().filter(|h| h.ejected()).count() as i64);
        changed
    }

    /// Envoy's `processSuccessRateEjections` for one monitor (external or local origin).
    fn success_rate_pass(&mut self, d: &Detector, hosts: &[Arc<Host>], local: bool, now: Instant) -> bool {
        let c = &d.config;
        d.set_success_rate_numbers(local, -1.0, -1.0);
        let n = hosts.len();
        if n < c.success_rate_minimum_hosts as usize && n < c.failure_percentage_minimum_hosts as usize {
            return false;
        }
        let (sr_volume, fp_volume) =
            (u64::from(c.success_rate_request_volume), u64::from(c.failure_percentage_request_volume));
        let mut sr_hosts: Vec<(&Arc<Host>, f64)> = Vec::new();
        let mut fp_hosts: Vec<(&Arc<Host>, f64)> = Vec::new();
        for h in hosts {
            let Some(m) = monitor(h).filter(|m| !m.ejected()) else { continue };
            let sr = if local { &m.local } else { &m.external };
            let Some((rate, volume)) = sr.rate_and_volume() else { continue };
            if volume >= sr_volume.min(fp_volume) {
                sr.set_rate(rate);
            }
            if volume >= sr_volume {
                sr_hosts.push((h, rate));
            }
            if volume >= fp_volume {
                fp_hosts.push((h, rate));
            }
        }
        let mut changed = false;
        if !sr_hosts.is_empty() && sr_hosts.len() >= c.success_rate_minimum_hosts as usize {
            let rates: Vec<f64> = sr_hosts.iter().map(|(_, r)| *r).collect();
            let (mean, threshold) = success_rate_threshold(&rates, f64::from(c.success_rate_stdev_factor) / 1000.0);
            d.set_success_rate_numbers(local, mean, threshold);
            let t = if local { EjectionType::SuccessRateLocalOrigin } else { EjectionType::SuccessRate };
            for (h, rate) in &sr_hosts {
                if *rate < threshold && !h.ejected() {
                    d.stats.ejections_success_rate.inc(); // deprecated
                    d.stats.detected(t).inc();
                    changed |= self.eject(d, hosts, h, t, now);
                }
            }
        }
        if !fp_hosts.is_empty() && fp_hosts.len() >= c.failure_percentage_minimum_hosts as usize {
            let t = if local { EjectionType::FailurePercentageLocalOrigin } else { EjectionType::FailurePercentage };
            for (h, rate) in &fp_hosts {
                if 100.0 - rate >= f64::from(c.failure_percentage_threshold) && !h.ejected() {
                    d.stats.detected(t).inc();
                    changed |= self.eject(d, hosts, h, t, now);
                }
            }
        }
        changed
    }
}

/// Starts the detector task of a cluster with outlier detection, on the current (main)
/// runtime. It holds the cluster weakly and ends when the cluster object is dropped.
pub fn spawn(c: &Arc<Cluster>) {
    let Some(d) = c.outlier.as_ref() else { return };
    let Some(rx) = d.take_receiver() else { return };
    tokio::spawn(run(Arc::downgrade(c), rx, d.config.interval));
}

/// The detector task of one cluster: runs until the cluster object is dropped (its event sender
/// goes with it), holding it only weakly in between.
pub async fn run(cluster: Weak<Cluster>, mut events: mpsc::UnboundedReceiver<Event>, interval: Duration) {
    let mut state = State::default();
    let mut next = tokio::time::Instant::now() + interval;
    loop {
        tokio::select! {
            ev = events.recv() => {
                let Some((host, t)) = ev else { return };
                let Some(c) = cluster.upgrade() else { return };
                let Some(d) = c.outlier.as_ref() else { return };
                let hosts = c.hosts.load();
                let changed = match t {
                    Some(t) => state.on_consecutive(d, &hosts.all, &host, t, Instant::now()),
                    None => state.on_health_check_passed(d, &hosts.all, &host, Instant::now()),
                };
                if changed {
                    c.refresh_health();
                }
            }
            _ = tokio::time::sleep_until(next) => {
                let Some(c) = cluster.upgrade() else { return };
                let Some(d) = c.outlier.as_ref() else { return };
                let hosts = c.hosts.load();
                if state.on_interval(d, &hosts.all, Instant::now()) {
                    c.refresh_health();
                }
                next = tokio::time::Instant::now() + interval;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Store;
    use crate::upstream::outlier::{Outcome, OutlierStats};

    fn hosts(n: usize) -> Vec<Arc<Host>> {
        (0..n)
            .map(|i| {
                let mut h = Host::new(format!("10.0.0.{}:80", i + 1).parse().unwrap(), "", 1, 0, None);
                h.outlier = Some(Box::default());
                Arc::new(h)
            })
            .collect()
    }

    fn detector(c: OutlierConfig) -> (Detector, Arc<Store>) {
        let s = Arc::new(Store::default());
        (Detector::new(c, OutlierStats::new(&s, "c")), s)
    }

    #[test]
    fn success_rate_threshold_matches_envoy_example() {
        // Envoy's comment: {50, 100, 100, 100, 100} -> mean 90, stdev 20, threshold 52 (1.9).
        let (mean, t) = success_rate_threshold(&[50.0, 100.0, 100.0, 100.0, 100.0], 1.9);
        assert_eq!(mean, 90.0);
        assert!((t - 52.0).abs() < 1e-9);
    }

    #[test]
    fn ejection_percent_and_always_one() {
        assert!(!may_eject(0, 3, 10, false), "one of three is 33% > 10%");
        assert!(may_eject(0, 3, 10, true));
        assert!(!may_eject(1, 3, 10, true), "always_eject_one_host only lifts the first");
        assert!(may_eject(1, 4, 50, false));
        assert!(!may_eject(2, 4, 50, false));
        assert!(may_eject(9, 10, 200, false), "percentages above 100 count as 100");
    }

    #[test]
    fn ejection_time_grows_with_the_ejection_count_and_is_capped() {
        let c = OutlierConfig {
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(100),
            ..Default::default()
        };
        let (d, s) = detector(c.clone());
        let hs = hosts(2);
        let h = &hs[0];
        let mut st = State::default();
        let t0 = Instant::now();
        let cfg = OutlierConfig { max_ejection_percent: 100, ..c };
        let d = Detector { config: cfg, ..d };
        let mut now = t0;
        let mut durations = Vec::new();
        for _ in 0..5 {
            assert!(st.on_consecutive(&d, &hs, h, EjectionType::Consecutive5xx, now));
            assert!(h.ejected());
            // Tick every 10 s until unejected.
            let start = now;
            while h.ejected() {
                now += Duration::from_secs(10);
                st.on_interval(&d, &hs, now);
            }
            durations.push((now - start).as_secs());
        }
        // 30, 60, 90, then capped at 100 (ticks are 10 s apart).
        assert_eq!(durations, [30, 60, 90, 100, 100]);
        assert_eq!(s.value_of("cluster.c.outlier_detection.ejections_enforced_consecutive_5xx"), Some(5));
        assert_eq!(s.value_of("cluster.c.outlier_detection.ejections_active"), Some(0));
        // Healthy intervals after an unejection bring the back-off down again.
        let backoff = st.hosts[&h.id].backoff;
        for _ in 0..10 {
            now += Duration::from_secs(10);
            st.on_interval(&d, &hs, now);
        }
        assert!(st.hosts[&h.id].backoff < backoff);
        assert_eq!(st.hosts[&h.id].backoff, 0);
    }

    #[test]
    fn overflow_and_enforcement() {
        let (d, s) = detector(OutlierConfig { enforcing_consecutive_gateway_failure: 0, ..Default::default() });
        let hs = hosts(3);
        let mut st = State::default();
        let now = Instant::now();
        // Default max_ejection_percent 10: one of three hosts is too many.
        assert!(!st.on_consecutive(&d, &hs, &hs[0], EjectionType::Consecutive5xx, now));
        let v = |n: &str| s.value_of(&format!("cluster.c.outlier_detection.{n}")).unwrap();
        assert_eq!(v("ejections_overflow"), 1);
        assert_eq!(v("ejections_detected_consecutive_5xx"), 1);
        assert_eq!(v("ejections_consecutive_5xx"), 1);
        assert_eq!(v("ejections_total"), 0);
        let d = Detector { config: OutlierConfig { max_ejection_percent: 100, ..d.config.clone() }, ..d };
        // Gateway failures are detected but not enforced by default.
        assert!(!st.on_consecutive(&d, &hs, &hs[0], EjectionType::ConsecutiveGatewayFailure, now));
        assert_eq!(v("ejections_detected_consecutive_gateway_failure"), 1);
        assert_eq!(v("ejections_enforced_total"), 0);
        // A host that left the cluster is ignored.
        let gone = hosts(1);
        assert!(!st.on_consecutive(&d, &hs, &gone[0], EjectionType::Consecutive5xx, now));
    }

    #[test]
    fn success_rate_and_failure_percentage_eject_the_outlier() {
        let cfg = OutlierConfig {
            max_ejection_percent: 100,
            success_rate_request_volume: 10,
            failure_percentage_request_volume: 10,
            enforcing_failure_percentage: 100,
            failure_percentage_threshold: 30,
            ..Default::default()
        };
        let (d, s) = detector(cfg);
        let hs = hosts(6);
        let now = Instant::now();
        let mut st = State::default();
        for (i, h) in hs.iter().enumerate() {
            for k in 0..20 {
                // Host 0 fails 30 % of its requests, host 1 60 %, the others none.
                let fail = (i == 0 && k % 10 < 3) || (i == 1 && k % 10 < 6);
                d.put_http_code(h, if fail { 500 } else { 200 });
            }
        }
        assert!(st.on_interval(&d, &hs, now));
        let v = |n: &str| s.value_of(&format!("cluster.c.outlier_detection.{n}")).unwrap();
        assert!(hs[0].ejected() && hs[1].ejected());
        assert!(!hs[2].ejected());
        // Host 1 (40 %) is under the success-rate threshold; host 0 (70 %) is not, but its 30 %
        // failures reach the failure-percentage threshold.
        assert_eq!(v("ejections_detected_success_rate"), 1);
        assert_eq!(v("ejections_enforced_success_rate"), 1);
        assert_eq!(v("ejections_enforced_failure_percentage"), 1);
        assert_eq!(v("ejections_active"), 2);
        let (avg, threshold) = d.success_rate_numbers(false);
        assert!((avg - 85.0).abs() < 1e-9 && threshold < 70.0, "{avg} {threshold}");
        assert_eq!(hs[2].outlier.as_deref().unwrap().success_rate(false), 100.0);
        // Next interval: no traffic, so nothing to analyse; the local-origin numbers stay unset.
        st.on_interval(&d, &hs, now + Duration::from_secs(10));
        assert_eq!(d.success_rate_numbers(false), (-1.0, -1.0));
        assert_eq!(d.success_rate_numbers(true), (-1.0, -1.0));
        // Split mode: connect failures count in the local-origin monitor only.
        let cfg = OutlierConfig {
            split_external_local_origin_errors: true,
            max_ejection_percent: 100,
            failure_percentage_request_volume: 10,
            enforcing_failure_percentage_local_origin: 100,
            success_rate_minimum_hosts: 100,
            ..Default::default()
        };
        let (d, s) = detector(cfg);
        let hs = hosts(5);
        for (i, h) in hs.iter().enumerate() {
            for _ in 0..10 {
                let o = if i == 4 { Outcome::LocalOriginConnectFailed } else { Outcome::LocalOriginConnectSuccess };
                d.put_result(h, o, None);
            }
        }
        let mut st = State::default();
        st.on_interval(&d, &hs, now);
        assert!(hs[4].ejected());
        assert_eq!(
            s.value_of("cluster.c.outlier_detection.ejections_enforced_local_origin_failure_percentage"),
            Some(1)
        );
    }
}
