//! Active health checking (`Cluster.health_checks`), as Envoy's `HealthCheckerImplBase` does it.
//!
//! One checker per cluster, on the main runtime (`checker::spawn`, started by the config manager
//! with the cluster's other tasks and ended when the cluster object is dropped): one session per
//! host probes it every interval (HTTP, TCP or gRPC, `probe`), and the threshold state machine
//! here ([`Session::on_result`]) turns results into the host's health flags. Flags are atomics
//! on the host; a change republishes the cluster's host set, which the load balancers read
//! without locks. Nothing here runs on a worker or on the request path.

pub mod checker;
mod probe;

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{HealthCheck, health_check};

use super::host::{Host, flag};
use crate::config::ConfigError;
use crate::matcher::StringMatcher;
use crate::router::header_mutation::HeaderMutations;
use crate::stats::{Counter, Gauge, Store};

/// What a check probes and how it judges the answer.
#[derive(Debug)]
pub enum Kind {
    Http(HttpCheck),
    Tcp(TcpCheck),
    Grpc(GrpcCheck),
}

#[derive(Debug)]
pub struct HttpCheck {
    /// `host` (empty: the endpoint's health check hostname, else the cluster name).
    pub host: String,
    pub path: String,
    pub method: http::Method,
    pub headers: HeaderMutations,
    /// `receive`: segments the first `response_buffer_size` bytes of the body must contain in
    /// order.
    pub receive: Vec<Vec<u8>>,
    pub response_buffer_size: usize,
    /// Half-open `[start, end)` status ranges.
    pub expected: Vec<(u16, u16)>,
    pub retriable: Vec<(u16, u16)>,
    pub http2: bool,
    pub service_name_matcher: Option<StringMatcher>,
}

#[derive(Debug)]
pub struct TcpCheck {
    pub send: Vec<u8>,
    pub receive: Vec<Vec<u8>>,
}

#[derive(Debug)]
pub struct GrpcCheck {
    pub service_name: String,
    pub authority: String,
}

/// A translated `HealthCheck` (Envoy's defaults for what is unset).
#[derive(Debug)]
pub struct HealthCheckConfig {
    pub timeout: Duration,
    pub interval: Duration,
    pub initial_jitter: Duration,
    pub interval_jitter: Duration,
    pub interval_jitter_percent: u32,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub no_traffic_interval: Duration,
    pub no_traffic_healthy_interval: Duration,
    pub unhealthy_interval: Duration,
    pub unhealthy_edge_interval: Duration,
    pub healthy_edge_interval: Duration,
    pub reuse_connection: bool,
    pub kind: Kind,
}

/// `cluster.<name>.health_check.*`.
#[derive(Debug)]
pub struct HealthCheckStats {
    pub attempt: Counter,
    pub success: Counter,
    pub failure: Counter,
    pub network_failure: Counter,
    pub passive_failure: Counter,
    pub verify_cluster: Counter,
    pub healthy: Gauge,
    pub degraded: Gauge,
}

impl HealthCheckStats {
    pub fn new(store: &Arc<Store>, stat_name: &str) -> Self {
        let c = |n: &str| store.counter(&format!("cluster.{stat_name}.health_check.{n}"));
        let g = |n: &str| {
            let g = store.gauge(&format!("cluster.{stat_name}.health_check.{n}"));
            g.set(0);
            g
        };
        HealthCheckStats {
            attempt: c("attempt"),
            success: c("success"),
            failure: c("failure"),
            network_failure: c("network_failure"),
            passive_failure: c("passive_failure"),
            verify_cluster: c("verify_cluster"),
            healthy: g("healthy"),
            degraded: g("degraded"),
        }
    }
}

/// A cluster's active health checker: its config, stats and the signal its task waits on.
#[derive(Debug)]
pub struct HealthChecker {
    pub config: HealthCheckConfig,
    pub stats: HealthCheckStats,
    /// `Cluster.ignore_health_on_host_removal`.
    pub ignore_health_on_host_removal: bool,
    /// Notified on every host set change so the task starts and stops sessions.
    pub membership_changed: Arc<tokio::sync::Notify>,
    /// The checker task, aborted (with its sessions) when the cluster object is dropped.
    pub task: std::sync::OnceLock<tokio::task::AbortHandle>,
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        if let Some(t) = self.task.get() {
            t.abort();
        }
    }
}

fn duration_field(
    d: Option<&envoy_types::pb::google::protobuf::Duration>,
    field: String,
    required: bool,
    positive: bool,
) -> Result<Option<Duration>, ConfigError> {
    let Some(d) = d else {
        return if required { Err(ConfigError::new(field, "value is required")) } else { Ok(None) };
    };
    if d.seconds < 0 || d.nanos < 0 {
        return Err(ConfigError::new(field, "Invalid duration: Expected positive duration"));
    }
    let v = crate::config::duration(d);
    if positive && v.is_zero() {
        return Err(ConfigError::new(field, "value must be greater than 0s"));
    }
    Ok(Some(v))
}

/// A `Payload`: `text` is hex, as in Envoy.
fn payload(p: &health_check::Payload, field: &str) -> Result<Vec<u8>, ConfigError> {
    use health_check::payload::Payload as P;
    match &p.payload {
        Some(P::Binary(b)) => Ok(b.clone()),
        Some(P::Text(t)) => {
            let t = t.as_bytes();
            if t.len() % 2 != 0 || t.is_empty() {
                return Err(ConfigError::new(field, "invalid hex string"));
            }
            t.chunks(2)
                .map(|c| {
                    std::str::from_utf8(c)
                        .ok()
                        .and_then(|s| u8::from_str_radix(s, 16).ok())
                        .ok_or_else(|| ConfigError::new(field, "invalid hex string"))
                })
                .collect()
        }
        None => Err(ConfigError::new(field, "payload is required")),
    }
}

fn status_ranges(
    r: &[envoy_types::pb::envoy::r#type::v3::Int64Range],
    field: &str,
    kind: &str,
) -> Result<Vec<(u16, u16)>, ConfigError> {
    r.iter()
        .enumerate()
        .map(|(i, r)| {
            let f = format!("{field}[{i}]");
            if r.start >= r.end {
                return Err(ConfigError::new(
                    f,
                    format!(
                        "Invalid http {kind} status range: expecting start < end, but found start={} and end={}",
                        r.start, r.end
                    ),
                ));
            }
            if r.start < 100 {
                return Err(ConfigError::new(
                    f,
                    format!("Invalid http {kind} status range: expecting start >= 100, but found start={}", r.start),
                ));
            }
            if r.end > 600 {
                return Err(ConfigError::new(
                    f,
                    format!("Invalid http {kind} status range: expecting end <= 600, but found end={}", r.end),
                ));
            }
            Ok((r.start as u16, r.end as u16))
        })
        .collect()
}

impl HealthCheckConfig {
    /// Translates `health_checks[0]`; field paths are relative to the cluster.
    pub fn from_proto(p: &HealthCheck) -> Result<Self, ConfigError> {
        let f = |n: &str| format!("health_checks[0].{n}");
        let timeout = duration_field(p.timeout.as_ref(), f("timeout"), true, true)?.unwrap_or_default();
        let interval = duration_field(p.interval.as_ref(), f("interval"), true, true)?.unwrap_or_default();
        let opt = |d: Option<&envoy_types::pb::google::protobuf::Duration>, n: &str, positive: bool| {
            duration_field(d, f(n), false, positive)
        };
        let initial_jitter = opt(p.initial_jitter.as_ref(), "initial_jitter", false)?.unwrap_or_default();
        let interval_jitter = opt(p.interval_jitter.as_ref(), "interval_jitter", false)?.unwrap_or_default();
        let no_traffic_interval =
            opt(p.no_traffic_interval.as_ref(), "no_traffic_interval", true)?.unwrap_or(Duration::from_secs(60));
        let no_traffic_healthy_interval =
            opt(p.no_traffic_healthy_interval.as_ref(), "no_traffic_healthy_interval", true)?
                .unwrap_or(no_traffic_interval);
        let unhealthy_interval = opt(p.unhealthy_interval.as_ref(), "unhealthy_interval", true)?.unwrap_or(interval);
        let unhealthy_edge_interval =
            opt(p.unhealthy_edge_interval.as_ref(), "unhealthy_edge_interval", true)?.unwrap_or(unhealthy_interval);
        let healthy_edge_interval =
            opt(p.healthy_edge_interval.as_ref(), "healthy_edge_interval", true)?.unwrap_or(interval);
        let threshold = |v: Option<&envoy_types::pb::google::protobuf::UInt32Value>, n: &str| {
            v.map(|v| v.value).ok_or_else(|| ConfigError::new(f(n), "value is required"))
        };
        let unhealthy_threshold = threshold(p.unhealthy_threshold.as_ref(), "unhealthy_threshold")?;
        let healthy_threshold = threshold(p.healthy_threshold.as_ref(), "healthy_threshold")?;
        use health_check::HealthChecker as H;
        let kind = match &p.health_checker {
            None => return Err(ConfigError::new(f("health_checker"), "value is required")),
            Some(H::HttpHealthCheck(h)) => Kind::Http(http_check(h, &f("http_health_check"))?),
            Some(H::TcpHealthCheck(t)) => {
                let f = f("tcp_health_check");
                if t.proxy_protocol_config.is_some() {
                    return Err(ConfigError::new(format!("{f}.proxy_protocol_config"), "not supported by remora"));
                }
                Kind::Tcp(TcpCheck {
                    send: match &t.send {
                        Some(s) => payload(s, &format!("{f}.send"))?,
                        None => Vec::new(),
                    },
                    receive: t
                        .receive
                        .iter()
                        .enumerate()
                        .map(|(i, r)| payload(r, &format!("{f}.receive[{i}]")))
                        .collect::<Result<_, _>>()?,
                })
            }
            Some(H::GrpcHealthCheck(g)) => {
                if !g.initial_metadata.is_empty() {
                    return Err(ConfigError::new(f("grpc_health_check.initial_metadata"), "not supported by remora"));
                }
                Kind::Grpc(GrpcCheck { service_name: g.service_name.clone(), authority: g.authority.clone() })
            }
            Some(H::CustomHealthCheck(c)) => {
                return Err(ConfigError::new(
                    f("custom_health_check"),
                    format!("custom health checker {} is not supported by remora", c.name),
                ));
            }
        };
        Ok(HealthCheckConfig {
            timeout,
            interval,
            initial_jitter,
            interval_jitter,
            interval_jitter_percent: p.interval_jitter_percent,
            unhealthy_threshold,
            healthy_threshold,
            no_traffic_interval,
            no_traffic_healthy_interval,
            unhealthy_interval,
            unhealthy_edge_interval,
            healthy_edge_interval,
            reuse_connection: p.reuse_connection.as_ref().is_none_or(|b| b.value),
            kind,
        })
    }
}

fn http_check(h: &health_check::HttpHealthCheck, f: &str) -> Result<HttpCheck, ConfigError> {
    use envoy_types::pb::envoy::config::core::v3::RequestMethod as M;
    use envoy_types::pb::envoy::r#type::v3::CodecClientType as C;
    if h.path.is_empty() {
        return Err(ConfigError::new(format!("{f}.path"), "value length must be at least 1 characters"));
    }
    if h.send.is_some() {
        return Err(ConfigError::new(format!("{f}.send"), "not supported by remora"));
    }
    let method = match M::try_from(h.method) {
        Ok(M::MethodUnspecified | M::Get) => http::Method::GET,
        Ok(M::Head) => http::Method::HEAD,
        Ok(M::Post) => http::Method::POST,
        Ok(M::Put) => http::Method::PUT,
        Ok(M::Delete) => http::Method::DELETE,
        Ok(M::Options) => http::Method::OPTIONS,
        Ok(M::Trace) => http::Method::TRACE,
        Ok(M::Patch) => http::Method::PATCH,
        Ok(M::Connect) | Err(_) => {
            return Err(ConfigError::new(format!("{f}.method"), "value must not be in list [CONNECT]"));
        }
    };
    let http2 = match C::try_from(h.codec_client_type) {
        Ok(C::Http1) => false,
        Ok(C::Http2) => true,
        _ => return Err(ConfigError::new(format!("{f}.codec_client_type"), "not supported by remora")),
    };
    let receive: Vec<Vec<u8>> = h
        .receive
        .iter()
        .enumerate()
        .map(|(i, r)| payload(r, &format!("{f}.receive[{i}]")))
        .collect::<Result<_, _>>()?;
    let response_buffer_size = h.response_buffer_size.map_or(1024, |v| v.value) as usize;
    let total: usize = receive.iter().map(Vec::len).sum();
    if response_buffer_size != 0 && total > response_buffer_size {
        return Err(ConfigError::new(
            format!("{f}.receive"),
            format!(
                "The expected response length '{total}' is over than http health response buffer size '{response_buffer_size}'"
            ),
        ));
    }
    let headers = HeaderMutations::from_proto(
        &h.request_headers_to_add,
        &h.request_headers_to_remove,
        &format!("{f}.request_headers_to_add"),
        &format!("{f}.request_headers_to_remove"),
    )?;
    if headers.uses_request_headers() {
        return Err(ConfigError::new(format!("{f}.request_headers_to_add"), "%REQ()% has no request to read"));
    }
    let mut expected = status_ranges(&h.expected_statuses, &format!("{f}.expected_statuses"), "expected")?;
    if expected.is_empty() {
        expected.push((200, 201));
    }
    Ok(HttpCheck {
        host: h.host.clone(),
        path: h.path.clone(),
        method,
        headers,
        receive,
        response_buffer_size,
        expected,
        retriable: status_ranges(&h.retriable_statuses, &format!("{f}.retriable_statuses"), "retriable")?,
        http2,
        service_name_matcher: h
            .service_name_matcher
            .as_ref()
            .map(|m| StringMatcher::from_proto(m, &format!("{f}.service_name_matcher")))
            .transpose()?,
    })
}

impl HealthChecker {
    /// The cluster's checker, or None without `health_checks`. Envoy takes one health check
    /// per cluster.
    pub fn from_cluster(
        p: &envoy_types::pb::envoy::config::cluster::v3::Cluster,
        store: &Arc<Store>,
        stat_name: &str,
    ) -> Result<Option<Self>, ConfigError> {
        match p.health_checks.len() {
            // Without health checks `ignore_health_on_host_removal` has nothing to ignore.
            0 => Ok(None),
            1 => Ok(Some(HealthChecker {
                config: HealthCheckConfig::from_proto(&p.health_checks[0])?,
                stats: HealthCheckStats::new(store, stat_name),
                ignore_health_on_host_removal: p.ignore_health_on_host_removal,
                membership_changed: Arc::default(),
                task: std::sync::OnceLock::new(),
            })),
            _ => Err(ConfigError::new("health_checks", "Multiple health checks not supported")),
        }
    }
}

// === the threshold state machine ===

/// How a check failed (Envoy's `HealthCheckFailureType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The host answered, and the answer says unhealthy.
    Active,
    /// Connect failure, reset, unexpected close.
    Network,
    NetworkTimeout,
}

/// One check's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success {
        degraded: bool,
    },
    /// `retriable`: an HTTP status in `retriable_statuses` (counts towards the threshold).
    Failure {
        kind: Failure,
        retriable: bool,
    },
}

/// Envoy's `HealthTransition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Unchanged,
    Changed,
    ChangePending,
}

/// A host's session state (Envoy's `ActiveHealthCheckSession` counters).
#[derive(Debug, Clone)]
pub struct Session {
    pub first_check: bool,
    num_healthy: u32,
    num_unhealthy: u32,
}

impl Default for Session {
    fn default() -> Self {
        Session { first_check: true, num_healthy: 0, num_unhealthy: 0 }
    }
}

impl Session {
    /// Applies a result to the host's flags; returns the transition (a `Changed` host set must
    /// be republished).
    pub fn on_result(
        &mut self,
        host: &Host,
        c: &HealthCheckConfig,
        stats: &HealthCheckStats,
        o: Outcome,
    ) -> Transition {
        let mut t = Transition::Unchanged;
        match o {
            Outcome::Success { degraded } => {
                self.num_unhealthy = 0;
                if host.has(flag::FAILED_ACTIVE_HC) {
                    // The first result moves a host to healthy at once (faster start-up).
                    self.num_healthy += 1;
                    if self.first_check || self.num_healthy == c.healthy_threshold {
                        host.set_flag(flag::ACTIVE_HC_TIMEOUT, false);
                        host.set_flag(flag::EXCLUDED_VIA_IMMEDIATE_HC_FAIL, false);
                        host.set_flag(flag::FAILED_ACTIVE_HC, false);
                        t = Transition::Changed;
                    } else {
                        t = Transition::ChangePending;
                    }
                }
                if host.set_flag(flag::DEGRADED_ACTIVE_HC, degraded) && t == Transition::Unchanged {
                    t = Transition::Changed;
                }
                stats.success.inc();
            }
            Outcome::Failure { kind, retriable } => {
                self.num_healthy = 0;
                let network = kind != Failure::Active;
                if !host.has(flag::FAILED_ACTIVE_HC) {
                    self.num_unhealthy += 1;
                    if (!network && !retriable) || self.num_unhealthy == c.unhealthy_threshold {
                        host.set_flag(flag::FAILED_ACTIVE_HC, true);
                        t = Transition::Changed;
                    } else {
                        t = Transition::ChangePending;
                    }
                }
                host.set_flag(
                    flag::ACTIVE_HC_TIMEOUT,
                    kind == Failure::NetworkTimeout && host.has(flag::FAILED_ACTIVE_HC),
                );
                stats.failure.inc();
                if network {
                    stats.network_failure.inc();
                }
            }
        }
        self.first_check = false;
        t
    }
}

/// The wait before a host's next check (Envoy's `interval()`): the no-traffic intervals until
/// the cluster has carried traffic, else by the host's state and whether a change is pending;
/// plus jitter.
pub fn next_interval(c: &HealthCheckConfig, had_traffic: bool, healthy: bool, t: Transition) -> Duration {
    let base = if had_traffic {
        match (healthy, t == Transition::ChangePending) {
            (false, true) => c.unhealthy_edge_interval,
            (false, false) => c.unhealthy_interval,
            (true, true) => c.healthy_edge_interval,
            (true, false) => c.interval,
        }
    } else if healthy && t != Transition::ChangePending {
        c.no_traffic_healthy_interval
    } else {
        c.no_traffic_interval
    };
    with_jitter(c, base.as_millis() as u64, c.interval_jitter)
}

/// Envoy's `intervalWithJitter`: up to `interval_jitter_percent` of the base and up to
/// `jitter` more, at least 1 ms.
pub fn with_jitter(c: &HealthCheckConfig, base_ms: u64, jitter: Duration) -> Duration {
    let mut ms = base_ms;
    let pct = u64::from(c.interval_jitter_percent) * base_ms / 100;
    if pct > 0 {
        ms += fastrand::u64(..pct);
    }
    let j = jitter.as_millis() as u64;
    if j > 0 {
        ms += fastrand::u64(..j);
    }
    Duration::from_millis(ms.max(1))
}

#[cfg(test)]
mod tests;
