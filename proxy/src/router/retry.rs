//! Route retry policies (`retry_on`, `num_retries`, `per_try_timeout`, back-off, retriable
//! status codes and headers, the `previous_hosts` predicate) and the per-request decision.

use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::RetryPolicy as RetryPolicyProto;
use http::HeaderMap;

use crate::config::{ConfigError, duration};
use crate::matcher::{HeaderMatcher, RequestHeaders};
use crate::stream_info::ResetReason;

/// `retry_on` conditions as bits.
pub mod on {
    pub const FIVE_XX: u32 = 1 << 0;
    pub const GATEWAY_ERROR: u32 = 1 << 1;
    pub const RESET: u32 = 1 << 2;
    pub const CONNECT_FAILURE: u32 = 1 << 3;
    pub const RETRIABLE_4XX: u32 = 1 << 4;
    pub const REFUSED_STREAM: u32 = 1 << 5;
    pub const RETRIABLE_STATUS_CODES: u32 = 1 << 6;
    pub const RETRIABLE_HEADERS: u32 = 1 << 7;
    pub const ENVOY_RATELIMITED: u32 = 1 << 8;
    pub const RESET_BEFORE_REQUEST: u32 = 1 << 9;
    pub const GRPC_CANCELLED: u32 = 1 << 10;
    pub const GRPC_DEADLINE_EXCEEDED: u32 = 1 << 11;
    pub const GRPC_RESOURCE_EXHAUSTED: u32 = 1 << 12;
    pub const GRPC_UNAVAILABLE: u32 = 1 << 13;
    pub const GRPC_INTERNAL: u32 = 1 << 14;
    pub const HTTP3_POST_CONNECT_FAILURE: u32 = 1 << 15;
}

/// Parses a comma-separated `retry_on` (config or `x-envoy-retry-on`). Unknown tokens are
/// ignored, as Envoy does.
pub fn parse_retry_on(s: &str) -> u32 {
    let mut bits = 0;
    for t in s.split(',').map(str::trim) {
        bits |= match t {
            "5xx" => on::FIVE_XX,
            "gateway-error" => on::GATEWAY_ERROR,
            "reset" => on::RESET,
            "reset-before-request" => on::RESET_BEFORE_REQUEST,
            "connect-failure" => on::CONNECT_FAILURE,
            "retriable-4xx" => on::RETRIABLE_4XX,
            "refused-stream" => on::REFUSED_STREAM,
            "retriable-status-codes" => on::RETRIABLE_STATUS_CODES,
            "retriable-headers" => on::RETRIABLE_HEADERS,
            "envoy-ratelimited" => on::ENVOY_RATELIMITED,
            "http3-post-connect-failure" => on::HTTP3_POST_CONNECT_FAILURE,
            "cancelled" => on::GRPC_CANCELLED,
            "deadline-exceeded" => on::GRPC_DEADLINE_EXCEEDED,
            "resource-exhausted" => on::GRPC_RESOURCE_EXHAUSTED,
            "unavailable" => on::GRPC_UNAVAILABLE,
            "internal" => on::GRPC_INTERNAL,
            _ => 0,
        };
    }
    bits
}

/// A compiled retry policy.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub retry_on: u32,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub per_try_idle_timeout: Option<Duration>,
    pub retriable_status_codes: Vec<u16>,
    pub retriable_headers: Vec<HeaderMatcher>,
    pub retriable_request_headers: Vec<HeaderMatcher>,
    pub base_interval: Duration,
    pub max_interval: Duration,
    /// The `envoy.retry_host_predicates.previous_hosts` predicate is configured.
    pub avoid_previous_hosts: bool,
    /// `envoy.retry_priorities.previous_priorities`: its `update_frequency`.
    pub previous_priorities: Option<u32>,
    pub host_selection_max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retry_on: 0,
            num_retries: 1,
            per_try_timeout: None,
            per_try_idle_timeout: None,
            retriable_status_codes: Vec::new(),
            retriable_headers: Vec::new(),
            retriable_request_headers: Vec::new(),
            base_interval: Duration::from_millis(25),
            max_interval: Duration::from_millis(250),
            avoid_previous_hosts: false,
            previous_priorities: None,
            host_selection_max_attempts: 1,
        }
    }
}

impl RetryPolicy {
    pub fn from_proto(p: &RetryPolicyProto, field: &str) -> Result<Self, ConfigError> {
        let mut r = RetryPolicy {
            retry_on: parse_retry_on(&p.retry_on),
            num_retries: p.num_retries.map(|n| n.value).unwrap_or(1),
            per_try_timeout: p.per_try_timeout.as_ref().map(duration).filter(|d| !d.is_zero()),
            per_try_idle_timeout: p.per_try_idle_timeout.as_ref().map(duration).filter(|d| !d.is_zero()),
            retriable_status_codes: p.retriable_status_codes.iter().map(|c| *c as u16).collect(),
            ..Default::default()
        };
        for (i, h) in p.retriable_headers.iter().enumerate() {
            r.retriable_headers.push(HeaderMatcher::from_proto(h, &format!("{field}.retriable_headers[{i}]"))?);
        }
        for (i, h) in p.retriable_request_headers.iter().enumerate() {
            r.retriable_request_headers
                .push(HeaderMatcher::from_proto(h, &format!("{field}.retriable_request_headers[{i}]"))?);
        }
        if let Some(b) = &p.retry_back_off {
            let base = b.base_interval.as_ref().map(duration).unwrap_or(Duration::from_millis(25));
            if base.is_zero() {
                return Err(ConfigError::new(
                    format!("{field}.retry_back_off.base_interval"),
                    "must be greater than zero",
                ));
            }
            r.base_interval = base;
            r.max_interval = b.max_interval.as_ref().map(duration).unwrap_or(base * 10);
            if r.max_interval < base {
                return Err(ConfigError::new(
                    format!("{field}.retry_back_off.max_interval"),
                    "must be greater than or equal to base_interval",
                ));
            }
        }
        for (i, pred) in p.retry_host_predicate.iter().enumerate() {
            match pred.name.as_str() {
                "envoy.retry_host_predicates.previous_hosts" => r.avoid_previous_hosts = true,
                // omit_canary_hosts and omit_host_metadata change which hosts a retry may pick:
                // not implemented, so refused rather than ignored.
                other => {
                    return Err(ConfigError::new(
                        format!("{field}.retry_host_predicate[{i}]"),
                        format!("unsupported retry host predicate {other}"),
                    ));
                }
            }
        }
        if let Some(rp) = &p.retry_priority {
            use envoy_types::pb::envoy::config::route::v3::retry_policy::retry_priority::ConfigType;
            use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
            let f = format!("{field}.retry_priority");
            let any = match &rp.config_type {
                Some(ConfigType::TypedConfig(any)) => any,
                None => return Err(ConfigError::new(f, format!("retry priority {} needs a typed_config", rp.name))),
            };
            let c: PreviousPrioritiesConfig = xds_client::any::unpack(any)
                .map_err(|e| ConfigError::new(&f, format!("unsupported retry priority {}: {e}", rp.name)))?;
            if c.update_frequency <= 0 {
                return Err(ConfigError::new(
                    format!("{f}.typed_config.update_frequency"),
                    "value must be greater than 0",
                ));
            }
            r.previous_priorities = Some(c.update_frequency as u32);
        }
        r.host_selection_max_attempts = (p.host_selection_retry_max_attempts.max(1)) as u32;
        Ok(r)
    }

    /// Whether the request itself allows retries (`retriable_request_headers`).
    pub fn request_is_retriable(&self, req: &RequestHeaders<'_>) -> bool {
        self.retriable_request_headers.is_empty() || self.retriable_request_headers.iter().any(|m| m.matches(req))
    }

    /// Should a response with this status and headers be retried?
    pub fn retry_on_response(&self, status: u16, headers: &HeaderMap) -> bool {
        if headers.contains_key("x-envoy-overloaded") {
            return false;
        }
        let b = self.retry_on;
        if b & on::FIVE_XX != 0 && status >= 500 {
            return true;
        }
        if b & on::GATEWAY_ERROR != 0 && matches!(status, 502..=504) {
            return true;
        }
        if b & on::RETRIABLE_4XX != 0 && status == 409 {
            return true;
        }
        if b & on::RETRIABLE_STATUS_CODES != 0 && self.retriable_status_codes.contains(&status) {
            return true;
        }
        if b & on::ENVOY_RATELIMITED != 0 && headers.contains_key("x-envoy-ratelimited") {
            return true;
        }
        if b & on::RETRIABLE_HEADERS != 0 && !self.retriable_headers.is_empty() {
            let view = RequestHeaders { method: "", path: "", authority: "", scheme: "", headers };
            if self.retriable_headers.iter().any(|m| m.matches(&view)) {
                return true;
            }
        }
        let grpc = b
            & (on::GRPC_CANCELLED
                | on::GRPC_DEADLINE_EXCEEDED
                | on::GRPC_RESOURCE_EXHAUSTED
                | on::GRPC_UNAVAILABLE
                | on::GRPC_INTERNAL);
        if grpc != 0
            && let Some(code) =
                headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|s| s.parse::<u32>().ok())
        {
            let hit = match code {
                1 => b & on::GRPC_CANCELLED,
                4 => b & on::GRPC_DEADLINE_EXCEEDED,
                8 => b & on::GRPC_RESOURCE_EXHAUSTED,
                13 => b & on::GRPC_INTERNAL,
                14 => b & on::GRPC_UNAVAILABLE,
                _ => 0,
            };
            if hit != 0 {
                return true;
            }
        }
        false
    }

    /// Should a failure before response headers be retried?
    pub fn retry_on_reset(&self, reason: ResetReason) -> bool {
        // A circuit breaker's overflow is never retried (Envoy's "never retry" condition).
        if reason == ResetReason::Overflow {
            return false;
        }
        let b = self.retry_on;
        if b & (on::FIVE_XX | on::GATEWAY_ERROR | on::RESET) != 0 {
            return true;
        }
        match reason {
            ResetReason::ConnectFailure | ResetReason::ConnectTimeout => b & on::CONNECT_FAILURE != 0,
            ResetReason::RemoteRefusedStream => b & (on::REFUSED_STREAM | on::RESET_BEFORE_REQUEST) != 0,
            _ => false,
        }
    }

    /// Should a per-try timeout be retried? (Envoy: under 5xx, gateway-error and reset.)
    pub fn retry_on_per_try_timeout(&self) -> bool {
        self.retry_on & (on::FIVE_XX | on::GATEWAY_ERROR | on::RESET) != 0
    }

    /// Fully jittered exponential back-off for retry number `n` (1-based).
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 1u64 << n.min(16);
        let ceiling = (self.base_interval.as_millis() as u64).saturating_mul(factor - 1).max(1);
        let ceiling = ceiling.min(self.max_interval.as_millis() as u64).max(1);
        Duration::from_millis(fastrand::u64(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        let p = RetryPolicy { retry_on: parse_retry_on("gateway-error,retriable-4xx"), ..Default::default() };
        let h = HeaderMap::new();
        assert!(p.retry_on_response(503, &h));
        assert!(!p.retry_on_response(500, &h));
        assert!(p.retry_on_response(409, &h));
        assert!(p.retry_on_reset(ResetReason::ConnectFailure));
        let c = RetryPolicy { retry_on: parse_retry_on("connect-failure"), ..Default::default() };
        assert!(c.retry_on_reset(ResetReason::ConnectFailure));
        assert!(!c.retry_on_reset(ResetReason::RemoteReset));
        assert!(!c.retry_on_response(503, &h));
        let s = RetryPolicy {
            retry_on: parse_retry_on("retriable-status-codes"),
            retriable_status_codes: vec![418],
            ..Default::default()
        };
        assert!(s.retry_on_response(418, &h));
        assert!(s.backoff(3) <= Duration::from_millis(250));
    }
}
