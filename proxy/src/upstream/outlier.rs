//! Outlier detection (`Cluster.outlier_detection`, what istiod emits for a DestinationRule's
//! `outlierDetection`), as Envoy's `Outlier::DetectorImpl` does it.
//!
//! Two halves, as in Envoy:
//! - the request path reports each attempt's result to its host's [`HostMonitor`] (atomics:
//!   consecutive 5xx / gateway / local-origin failure counts, two success-rate buckets); a
//!   consecutive count reaching its threshold posts an event to the cluster's detector. Nothing
//!   on this path takes a lock or allocates;
//! - one detector task per cluster on the main runtime (`detector::run`, started by the config
//!   manager and ended when the cluster object is dropped) ejects on those events at once and,
//!   every `interval`, unejects hosts whose ejection time is over and runs the success-rate and
//!   failure-percentage analysis on the interval's buckets. Ejecting flips the host's flag and
//!   republishes the cluster's host set, which the load balancers read without locks (ejected
//!   hosts are skipped, unless the priority level is in panic).

pub mod detector;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection;
use tokio::sync::mpsc;

use super::host::Host;
use crate::config::ConfigError;
use crate::stats::{Counter, Gauge, Store};

/// Envoy's `OutlierEjectionType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectionType {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
    SuccessRate,
    SuccessRateLocalOrigin,
    FailurePercentage,
    FailurePercentageLocalOrigin,
}

/// What an attempt reports besides an HTTP status (Envoy's `Outlier::Result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A connection was obtained (a protocol result follows).
    LocalOriginConnectSuccess,
    /// A connection was obtained and nothing else will be reported (TCP proxy).
    LocalOriginConnectSuccessFinal,
    LocalOriginTimeout,
    LocalOriginConnectFailed,
    ExtOriginRequestFailed,
    ExtOriginRequestSuccess,
}

/// The translated `outlier_detection` (Envoy's defaults for what is unset).
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_time_jitter: Duration,
    pub consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub consecutive_local_origin_failure: u32,
    pub max_ejection_percent: u32,
    pub success_rate_minimum_hosts: u32,
    pub success_rate_request_volume: u32,
    pub success_rate_stdev_factor: u32,
    pub failure_percentage_threshold: u32,
    pub failure_percentage_minimum_hosts: u32,
    pub failure_percentage_request_volume: u32,
    pub enforcing_consecutive_5xx: u32,
    pub enforcing_consecutive_gateway_failure: u32,
    pub enforcing_consecutive_local_origin_failure: u32,
    pub enforcing_success_rate: u32,
    pub enforcing_local_origin_success_rate: u32,
    pub enforcing_failure_percentage: u32,
    pub enforcing_failure_percentage_local_origin: u32,
    pub split_external_local_origin_errors: bool,
    pub always_eject_one_host: bool,
    /// A passing active health check unejects the host (default true).
    pub successful_active_health_check_uneject_host: bool,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_time_jitter: Duration::ZERO,
            consecutive_5xx: 5,
            consecutive_gateway_failure: 5,
            consecutive_local_origin_failure: 5,
            max_ejection_percent: 10,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1900,
            failure_percentage_threshold: 85,
            failure_percentage_minimum_hosts: 5,
            failure_percentage_request_volume: 50,
            enforcing_consecutive_5xx: 100,
            enforcing_consecutive_gateway_failure: 0,
            enforcing_consecutive_local_origin_failure: 100,
            enforcing_success_rate: 100,
            enforcing_local_origin_success_rate: 100,
            enforcing_failure_percentage: 0,
            enforcing_failure_percentage_local_origin: 0,
            split_external_local_origin_errors: false,
            always_eject_one_host: false,
            successful_active_health_check_uneject_host: true,
        }
    }
}

/// A set Duration field: refused when negative (Envoy: "Invalid duration: Expected positive
/// duration") or, with `positive`, when zero (the proto's `gt: 0s`).
fn duration_field(
    d: Option<&envoy_types::pb::google::protobuf::Duration>,
    field: &str,
    positive: bool,
) -> Result<Option<Duration>, ConfigError> {
    let Some(d) = d else { return Ok(None) };
    if d.seconds < 0 || d.nanos < 0 {
        return Err(ConfigError::new(field, "Invalid duration: Expected positive duration"));
    }
    let v = crate::config::duration(d);
    if positive && v.is_zero() {
        return Err(ConfigError::new(field, "value must be greater than 0s"));
    }
    Ok(Some(v))
}

impl OutlierConfig {
    /// Translates and validates `outlier_detection` with Envoy's verdicts; field paths are
    /// relative to the cluster.
    pub fn from_proto(p: &OutlierDetection) -> Result<Self, ConfigError> {
        let f = |n: &str| format!("outlier_detection.{n}");
        let d = OutlierConfig::default();
        let pct = |v: Option<u32>, name: &str, default: u32| -> Result<u32, ConfigError> {
            match v {
                Some(v) if v > 100 => Err(ConfigError::new(f(name), "value must be less than or equal to 100")),
                Some(v) => Ok(v),
                None => Ok(default),
            }
        };
        let n =
            |v: Option<&envoy_types::pb::google::protobuf::UInt32Value>, default: u32| v.map_or(default, |v| v.value);
        let w = |v: Option<&envoy_types::pb::google::protobuf::UInt32Value>| v.map(|v| v.value);
        if !p.monitors.is_empty() {
            return Err(ConfigError::new(f("monitors"), "not supported by remora"));
        }
        if p.detect_degraded_hosts.as_ref().is_some_and(|b| b.value) {
            return Err(ConfigError::new(f("detect_degraded_hosts"), "not supported by remora"));
        }
        let interval = duration_field(p.interval.as_ref(), &f("interval"), true)?.unwrap_or(d.interval);
        let base = duration_field(p.base_ejection_time.as_ref(), &f("base_ejection_time"), true)?
            .unwrap_or(d.base_ejection_time);
        // Unset: Envoy's default (300 s) or the base ejection time, whichever is larger.
        let max = duration_field(p.max_ejection_time.as_ref(), &f("max_ejection_time"), true)?
            .unwrap_or(d.max_ejection_time.max(base));
        let jitter = duration_field(p.max_ejection_time_jitter.as_ref(), &f("max_ejection_time_jitter"), false)?
            .unwrap_or(Duration::ZERO);
        let c = OutlierConfig {
            interval,
            base_ejection_time: base,
            max_ejection_time: max,
            max_ejection_time_jitter: jitter,
            consecutive_5xx: n(p.consecutive_5xx.as_ref(), d.consecutive_5xx),
            consecutive_gateway_failure: n(p.consecutive_gateway_failure.as_ref(), d.consecutive_gateway_failure),
            consecutive_local_origin_failure: n(
                p.consecutive_local_origin_failure.as_ref(),
                d.consecutive_local_origin_failure,
            ),
            max_ejection_percent: pct(w(p.max_ejection_percent.as_ref()), "max_ejection_percent", 10)?,
            success_rate_minimum_hosts: n(p.success_rate_minimum_hosts.as_ref(), d.success_rate_minimum_hosts),
            success_rate_request_volume: n(p.success_rate_request_volume.as_ref(), d.success_rate_request_volume),
            success_rate_stdev_factor: n(p.success_rate_stdev_factor.as_ref(), d.success_rate_stdev_factor),
            failure_percentage_threshold: pct(
                w(p.failure_percentage_threshold.as_ref()),
                "failure_percentage_threshold",
                d.failure_percentage_threshold,
            )?,
            failure_percentage_minimum_hosts: n(
                p.failure_percentage_minimum_hosts.as_ref(),
                d.failure_percentage_minimum_hosts,
            ),
            failure_percentage_request_volume: n(
                p.failure_percentage_request_volume.as_ref(),
                d.failure_percentage_request_volume,
            ),
            enforcing_consecutive_5xx: pct(w(p.enforcing_consecutive_5xx.as_ref()), "enforcing_consecutive_5xx", 100)?,
            enforcing_consecutive_gateway_failure: pct(
                w(p.enforcing_consecutive_gateway_failure.as_ref()),
                "enforcing_consecutive_gateway_failure",
                0,
            )?,
            enforcing_consecutive_local_origin_failure: pct(
                w(p.enforcing_consecutive_local_origin_failure.as_ref()),
                "enforcing_consecutive_local_origin_failure",
                100,
            )?,
            enforcing_success_rate: pct(w(p.enforcing_success_rate.as_ref()), "enforcing_success_rate", 100)?,
            enforcing_local_origin_success_rate: pct(
                w(p.enforcing_local_origin_success_rate.as_ref()),
                "enforcing_local_origin_success_rate",
                100,
            )?,
            enforcing_failure_percentage: pct(
                w(p.enforcing_failure_percentage.as_ref()),
                "enforcing_failure_percentage",
                0,
            )?,
            enforcing_failure_percentage_local_origin: pct(
                w(p.enforcing_failure_percentage_local_origin.as_ref()),
                "enforcing_failure_percentage_local_origin",
                0,
            )?,
            split_external_local_origin_errors: p.split_external_local_origin_errors,
            always_eject_one_host: p.always_eject_one_host.as_ref().is_some_and(|b| b.value),
            successful_active_health_check_uneject_host: p
                .successful_active_health_check_uneject_host
                .as_ref()
                .is_none_or(|b| b.value),
        };
        if c.max_ejection_time < c.base_ejection_time {
            return Err(ConfigError::new(
                f("max_ejection_time"),
                "outlier detector's max_ejection_time cannot be smaller than base_ejection_time",
            ));
        }
        Ok(c)
    }

    /// The `enforcing_*` percentage for an ejection type.
    pub fn enforcing(&self, t: EjectionType) -> u32 {
        match t {
            EjectionType::Consecutive5xx => self.enforcing_consecutive_5xx,
            EjectionType::ConsecutiveGatewayFailure => self.enforcing_consecutive_gateway_failure,
            EjectionType::ConsecutiveLocalOriginFailure => self.enforcing_consecutive_local_origin_failure,
            EjectionType::SuccessRate => self.enforcing_success_rate,
            EjectionType::SuccessRateLocalOrigin => self.enforcing_local_origin_success_rate,
            EjectionType::FailurePercentage => self.enforcing_failure_percentage,
            EjectionType::FailurePercentageLocalOrigin => self.enforcing_failure_percentage_local_origin,
        }
    }
}

/// `cluster.<name>.outlier_detection.*`.
#[derive(Debug)]
pub struct OutlierStats {
    pub ejections_active: Gauge,
    pub ejections_total: Counter,
    pub ejections_overflow: Counter,
    pub ejections_enforced_total: Counter,
    pub ejections_consecutive_5xx: Counter,
    pub ejections_success_rate: Counter,
    /// `ejections_detected_*` and `ejections_enforced_*`, by [`EjectionType`] (see `index`).
    pub detected: [Counter; 7],
    pub enforced: [Counter; 7],
    /// Envoy 1.40's degraded-host detection counter (`detect_degraded_hosts` is refused, so it
    /// stays 0).
    _detected_degradation: Counter,
}

const TYPE_NAMES: [&str; 7] = [
    "consecutive_5xx",
    "consecutive_gateway_failure",
    "consecutive_local_origin_failure",
    "success_rate",
    "local_origin_success_rate",
    "failure_percentage",
    "local_origin_failure_percentage",
];

fn index(t: EjectionType) -> usize {
    match t {
        EjectionType::Consecutive5xx => 0,
        EjectionType::ConsecutiveGatewayFailure => 1,
        EjectionType::ConsecutiveLocalOriginFailure => 2,
        EjectionType::SuccessRate => 3,
        EjectionType::SuccessRateLocalOrigin => 4,
        EjectionType::FailurePercentage => 5,
        EjectionType::FailurePercentageLocalOrigin => 6,
    }
}

impl OutlierStats {
    pub fn new(store: &Arc<Store>, stat_name: &str) -> Self {
        let p = format!("cluster.{stat_name}.outlier_detection.");
        let c = |n: &str| store.counter(&format!("{p}{n}"));
        let active = store.gauge(&format!("{p}ejections_active"));
        active.set(0);
        OutlierStats {
            ejections_active: active,
            ejections_total: c("ejections_total"),
            ejections_overflow: c("ejections_overflow"),
            ejections_enforced_total: c("ejections_enforced_total"),
            ejections_consecutive_5xx: c("ejections_consecutive_5xx"),
            ejections_success_rate: c("ejections_success_rate"),
            detected: TYPE_NAMES.map(|t| c(&format!("ejections_detected_{t}"))),
            enforced: TYPE_NAMES.map(|t| c(&format!("ejections_enforced_{t}"))),
            _detected_degradation: c("ejections_detected_degradation"),
        }
    }

    pub fn detected(&self, t: EjectionType) -> &Counter {
        &self.detected[index(t)]
    }

    pub fn enforced(&self, t: EjectionType) -> &Counter {
        &self.enforced[index(t)]
    }
}

/// One success-rate accumulator: requests go to the current bucket; every interval the
/// detector swaps buckets and reads the one just closed (Envoy's `SuccessRateAccumulator`).
#[derive(Debug, Default)]
struct SuccessRateMonitor {
    /// (successes, total) per bucket.
    buckets: [(AtomicU64, AtomicU64); 2],
    current: AtomicUsize,
    /// The host's last computed rate for `/clusters` (f64 bits, -1 when none).
    rate: AtomicU64,
}

impl SuccessRateMonitor {
    fn new() -> Self {
        let m = SuccessRateMonitor::default();
        m.rate.store((-1.0f64).to_bits(), Ordering::Relaxed);
        m
    }

    #[inline]
    fn record(&self, success: bool) {
        let b = &self.buckets[self.current.load(Ordering::Relaxed) & 1];
        b.1.fetch_add(1, Ordering::Relaxed);
        if success {
            b.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Closes the current bucket (detector only): the other, cleared, takes the writes.
    fn swap(&self) {
        let cur = self.current.load(Ordering::Relaxed) & 1;
        let next = &self.buckets[cur ^ 1];
        next.0.store(0, Ordering::Relaxed);
        next.1.store(0, Ordering::Relaxed);
        self.current.store(cur ^ 1, Ordering::Relaxed);
    }

    /// The closed bucket's success rate (percent) and volume; None when it saw nothing.
    fn rate_and_volume(&self) -> Option<(f64, u64)> {
        let b = &self.buckets[(self.current.load(Ordering::Relaxed) & 1) ^ 1];
        let total = b.1.load(Ordering::Relaxed);
        if total == 0 {
            return None;
        }
        let success = b.0.load(Ordering::Relaxed).min(total);
        Some((success as f64 * 100.0 / total as f64, total))
    }

    fn set_rate(&self, r: f64) {
        self.rate.store(r.to_bits(), Ordering::Relaxed);
    }

    fn rate(&self) -> f64 {
        f64::from_bits(self.rate.load(Ordering::Relaxed))
    }
}

/// A host's outlier state. The request path writes the counters; only the detector flips
/// `ejected`.
#[derive(Debug)]
pub struct HostMonitor {
    ejected: AtomicBool,
    consecutive_5xx: AtomicU32,
    consecutive_gateway_failure: AtomicU32,
    consecutive_local_origin_failure: AtomicU32,
    external: SuccessRateMonitor,
    local: SuccessRateMonitor,
}

impl Default for HostMonitor {
    fn default() -> Self {
        HostMonitor {
            ejected: AtomicBool::new(false),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway_failure: AtomicU32::new(0),
            consecutive_local_origin_failure: AtomicU32::new(0),
            external: SuccessRateMonitor::new(),
            local: SuccessRateMonitor::new(),
        }
    }
}

impl HostMonitor {
    #[inline]
    pub fn ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// The host's success rate of the last interval (-1 when not computed), external or
    /// local-origin, for `/clusters`.
    pub fn success_rate(&self, local_origin: bool) -> f64 {
        if local_origin { self.local.rate() } else { self.external.rate() }
    }

    fn reset_consecutive(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway_failure.store(0, Ordering::Relaxed);
        self.consecutive_local_origin_failure.store(0, Ordering::Relaxed);
    }
}

/// Zeroes a counter without writing its cache line when it is already zero.
#[inline]
fn clear(a: &AtomicU32) {
    if a.load(Ordering::Relaxed) != 0 {
        a.store(0, Ordering::Relaxed);
    }
}

/// Envoy's `Grpc::Utility::grpcToHttpStatus`: the HTTP status a gRPC status counts as.
pub fn grpc_to_http(status: u32) -> u16 {
    match status {
        0 => 200,
        1 => 499,
        2 => 500,
        3 => 400,
        4 => 504,
        5 => 404,
        6 => 409,
        7 => 403,
        8 => 429,
        9 => 400,
        10 => 409,
        11 => 400,
        12 => 501,
        13 => 500,
        14 => 503,
        15 => 500,
        16 => 401,
        _ => 500,
    }
}

/// A consecutive-failure event for the detector task.
/// A host reaching a consecutive-failure threshold, or (None) passing an active health check.
pub(super) type Event = (Arc<Host>, Option<EjectionType>);

/// A cluster's outlier detector: its config and stats, and the channel to its task.
#[derive(Debug)]
pub struct Detector {
    pub config: OutlierConfig,
    pub stats: OutlierStats,
    events: mpsc::UnboundedSender<Event>,
    /// Taken by the detector task when it starts.
    receiver: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    /// Cluster-wide success-rate average and ejection threshold of the last interval, external
    /// then local origin (f64 bits, -1 when not computed), for `/clusters`.
    sr_nums: [(AtomicU64, AtomicU64); 2],
}

impl Detector {
    pub fn new(config: OutlierConfig, stats: OutlierStats) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let minus_one = || AtomicU64::new((-1.0f64).to_bits());
        Detector {
            config,
            stats,
            events: tx,
            receiver: std::sync::Mutex::new(Some(rx)),
            sr_nums: [(minus_one(), minus_one()), (minus_one(), minus_one())],
        }
    }

    /// The event receiver, once (for the task).
    pub(super) fn take_receiver(&self) -> Option<mpsc::UnboundedReceiver<Event>> {
        self.receiver.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// (average, ejection threshold) of the last success-rate analysis, external or local.
    pub fn success_rate_numbers(&self, local_origin: bool) -> (f64, f64) {
        let (a, t) = &self.sr_nums[usize::from(local_origin)];
        (f64::from_bits(a.load(Ordering::Relaxed)), f64::from_bits(t.load(Ordering::Relaxed)))
    }

    fn set_success_rate_numbers(&self, local_origin: bool, avg: f64, threshold: f64) {
        let (a, t) = &self.sr_nums[usize::from(local_origin)];
        a.store(avg.to_bits(), Ordering::Relaxed);
        t.store(threshold.to_bits(), Ordering::Relaxed);
    }

    fn notify(&self, host: &Arc<Host>, t: EjectionType) {
        // Fails only when the task is gone (the cluster is being dropped).
        let _ = self.events.send((host.clone(), Some(t)));
    }

    /// A passing active health check of an ejected host: unejected by the detector task when
    /// `successful_active_health_check_uneject_host` (Envoy's health check callback).
    pub fn health_check_passed(&self, host: &Arc<Host>) {
        if self.config.successful_active_health_check_uneject_host && host.ejected() {
            let _ = self.events.send((host.clone(), None));
        }
    }

    /// An attempt's HTTP status (or a gRPC status mapped to one), Envoy's
    /// `putHttpResponseCode`.
    #[inline]
    pub fn put_http_code(&self, host: &Arc<Host>, code: u16) {
        if let Some(m) = host.outlier.as_deref() {
            self.http_code(host, m, code);
        }
    }

    fn http_code(&self, host: &Arc<Host>, m: &HostMonitor, code: u16) {
        if (500..600).contains(&code) {
            m.external.record(false);
            if matches!(code, 502..=504) {
                let n = m.consecutive_gateway_failure.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
                if n == self.config.consecutive_gateway_failure {
                    self.notify(host, EjectionType::ConsecutiveGatewayFailure);
                }
            } else {
                clear(&m.consecutive_gateway_failure);
            }
            let n = m.consecutive_5xx.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            if n == self.config.consecutive_5xx {
                self.notify(host, EjectionType::Consecutive5xx);
            }
        } else {
            m.external.record(true);
            clear(&m.consecutive_5xx);
            clear(&m.consecutive_gateway_failure);
        }
    }

    /// A non-HTTP result (Envoy's `putResult`): with `split_external_local_origin_errors`,
    /// connection-level results go to the local-origin counters; without, they count as the
    /// HTTP status `code` (or Envoy's mapping: timeout 504, connect failure 503).
    pub fn put_result(&self, host: &Arc<Host>, outcome: Outcome, code: Option<u16>) {
        let Some(m) = host.outlier.as_deref() else { return };
        if !self.config.split_external_local_origin_errors {
            let code = code.or(match outcome {
                Outcome::ExtOriginRequestSuccess | Outcome::LocalOriginConnectSuccessFinal => Some(200),
                Outcome::LocalOriginTimeout => Some(504),
                Outcome::LocalOriginConnectFailed => Some(503),
                Outcome::ExtOriginRequestFailed => Some(500),
                Outcome::LocalOriginConnectSuccess => None,
            });
            if let Some(c) = code {
                self.http_code(host, m, c);
            }
            return;
        }
        match outcome {
            Outcome::LocalOriginConnectSuccess | Outcome::LocalOriginConnectSuccessFinal => {
                m.local.record(true);
                clear(&m.consecutive_local_origin_failure);
            }
            Outcome::LocalOriginTimeout | Outcome::LocalOriginConnectFailed => {
                m.local.record(false);
                let n = m.consecutive_local_origin_failure.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
                if n == self.config.consecutive_local_origin_failure {
                    self.notify(host, EjectionType::ConsecutiveLocalOriginFailure);
                }
            }
            Outcome::ExtOriginRequestFailed => self.http_code(host, m, 503),
            Outcome::ExtOriginRequestSuccess => {
                self.http_code(host, m, 200);
                m.local.record(true);
                clear(&m.consecutive_local_origin_failure);
            }
        }
    }
}

/// Test helpers for other modules' tests.
#[cfg(test)]
pub mod testing {
    /// Marks a host monitor ejected, as the detector does.
    pub fn eject(m: &super::HostMonitor) {
        m.ejected.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};

    #[test]
    fn config_defaults_and_verdicts() {
        let c = OutlierConfig::from_proto(&OutlierDetection::default()).unwrap();
        assert_eq!(c, OutlierConfig::default());
        // max_ejection_time defaults to max(300 s, base).
        let p =
            OutlierDetection { base_ejection_time: Some(PbDuration { seconds: 400, nanos: 0 }), ..Default::default() };
        assert_eq!(OutlierConfig::from_proto(&p).unwrap().max_ejection_time, Duration::from_secs(400));
        let bad = |p: OutlierDetection| OutlierConfig::from_proto(&p).unwrap_err();
        let e = bad(OutlierDetection { interval: Some(PbDuration::default()), ..Default::default() });
        assert_eq!(
            (e.field.as_str(), e.reason.as_str()),
            ("outlier_detection.interval", "value must be greater than 0s")
        );
        let e = bad(OutlierDetection { interval: Some(PbDuration { seconds: -1, nanos: 0 }), ..Default::default() });
        assert_eq!(e.reason, "Invalid duration: Expected positive duration");
        let e = bad(OutlierDetection { max_ejection_percent: Some(UInt32Value { value: 101 }), ..Default::default() });
        assert_eq!(e.field, "outlier_detection.max_ejection_percent");
        let e = bad(OutlierDetection {
            enforcing_failure_percentage_local_origin: Some(UInt32Value { value: 200 }),
            ..Default::default()
        });
        assert_eq!(e.field, "outlier_detection.enforcing_failure_percentage_local_origin");
        let e = bad(OutlierDetection {
            base_ejection_time: Some(PbDuration { seconds: 10, nanos: 0 }),
            max_ejection_time: Some(PbDuration { seconds: 5, nanos: 0 }),
            ..Default::default()
        });
        assert_eq!(e.field, "outlier_detection.max_ejection_time");
    }

    fn host_with_monitor() -> Arc<Host> {
        let mut h = Host::new("10.0.0.1:80".parse().unwrap(), "", 1, 0, None);
        h.outlier = Some(Box::default());
        Arc::new(h)
    }

    #[test]
    fn consecutive_counts_notify_once_at_the_threshold() {
        let cfg = OutlierConfig { consecutive_5xx: 3, consecutive_gateway_failure: 2, ..Default::default() };
        let d = Detector::new(cfg, OutlierStats::new(&Arc::new(Store::default()), "c"));
        let mut rx = d.take_receiver().unwrap();
        let h = host_with_monitor();
        d.put_http_code(&h, 500);
        d.put_http_code(&h, 200); // resets
        for _ in 0..4 {
            d.put_http_code(&h, 503);
        }
        let got: Vec<EjectionType> = std::iter::from_fn(|| rx.try_recv().ok().and_then(|e| e.1)).collect();
        assert_eq!(got, [EjectionType::ConsecutiveGatewayFailure, EjectionType::Consecutive5xx]);
        // Without split, a connect failure counts as a 503 and a timeout as a 504.
        let m = h.outlier.as_deref().unwrap();
        m.reset_consecutive();
        d.put_result(&h, Outcome::LocalOriginConnectFailed, None);
        d.put_result(&h, Outcome::LocalOriginTimeout, Some(504));
        assert_eq!(m.consecutive_5xx.load(Ordering::Relaxed), 2);
        d.put_result(&h, Outcome::LocalOriginConnectSuccess, None);
        assert_eq!(m.consecutive_5xx.load(Ordering::Relaxed), 2, "connect success alone is no HTTP result");
    }

    #[test]
    fn split_mode_counts_local_origin_apart() {
        let cfg = OutlierConfig {
            split_external_local_origin_errors: true,
            consecutive_local_origin_failure: 2,
            ..Default::default()
        };
        let d = Detector::new(cfg, OutlierStats::new(&Arc::new(Store::default()), "c"));
        let mut rx = d.take_receiver().unwrap();
        let h = host_with_monitor();
        d.put_result(&h, Outcome::LocalOriginConnectFailed, None);
        d.put_result(&h, Outcome::LocalOriginTimeout, Some(504));
        assert_eq!(rx.try_recv().ok().and_then(|e| e.1), Some(EjectionType::ConsecutiveLocalOriginFailure));
        let m = h.outlier.as_deref().unwrap();
        assert_eq!(m.consecutive_5xx.load(Ordering::Relaxed), 0);
        m.local.swap();
        assert_eq!(m.local.rate_and_volume(), Some((0.0, 2)));
    }

    #[test]
    fn success_rate_buckets_swap() {
        let m = SuccessRateMonitor::new();
        for i in 0..10 {
            m.record(i % 5 != 0);
        }
        assert_eq!(m.rate_and_volume(), None, "the open bucket is not read");
        m.swap();
        assert_eq!(m.rate_and_volume(), Some((80.0, 10)));
        m.record(true);
        m.swap();
        assert_eq!(m.rate_and_volume(), Some((100.0, 1)));
        m.swap();
        assert_eq!(m.rate_and_volume(), None);
    }
}
