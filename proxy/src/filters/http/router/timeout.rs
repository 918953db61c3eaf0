//! The router's timeouts for one request, as Envoy's `FilterUtility::finalTimeout` and the HCM's
//! stream duration decide them: the route `timeout`, the gRPC `grpc-timeout` rules, and a route's
//! `max_stream_duration` ("new timeouts").

use std::time::Duration;

use http::HeaderMap;

use super::upstream_headers::parse_grpc_timeout;
use crate::http::headers as hn;
use crate::router::action::RouteAction;

/// What bounds a request before the x-envoy-* request controls apply.
pub(super) struct Timeouts {
    /// The global timeout (None: none).
    pub timeout: Option<Duration>,
    /// Envoy's "new timeouts" (the route has `max_stream_duration`): the stream's time limit
    /// in place of the connection manager's (`Some(None)`: none); the route timeout then does
    /// not apply. `None`: the connection manager's limit stands.
    pub stream_limit: Option<Option<Duration>>,
    /// The `grpc-timeout` sent upstream under new timeouts, rewritten to the limit in force.
    pub grpc_timeout_upstream: Option<Duration>,
}

impl Timeouts {
    pub fn of(action: &RouteAction, headers: &HeaderMap, is_grpc: bool) -> Timeouts {
        let grpc_timeout = || headers.get(&hn::GRPC_TIMEOUT).and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
        let mut out = Timeouts { timeout: action.timeout, stream_limit: None, grpc_timeout_upstream: None };
        match &action.stream_duration {
            None => {
                // max_grpc_timeout (deprecated; istiod's): a gRPC request's `grpc-timeout`,
                // shortened by the offset, capped by the max (0: no cap), replaces the route
                // timeout; without the header the max is the timeout (0: none).
                if let Some(max) = action.max_grpc_timeout
                    && is_grpc
                {
                    let mut t = grpc_timeout().unwrap_or(Duration::ZERO);
                    if let Some(off) = action.grpc_timeout_offset
                        && off < t
                    {
                        t -= off;
                    }
                    if !max.is_zero() && (t.is_zero() || t > max) {
                        t = max;
                    }
                    out.timeout = (!t.is_zero()).then_some(t);
                }
            }
            Some(sd) => {
                out.timeout = None;
                let header = grpc_timeout();
                // Envoy's refreshDurationTimeout: without a usable grpc-timeout and without the
                // route's own max, the connection manager's max_stream_duration stands.
                let by_header = header.is_some() && sd.grpc_header_max.is_some();
                if by_header || sd.max.is_some() {
                    let limit = sd.limit(header);
                    out.stream_limit = Some(limit);
                    if let Some(limit) = limit
                        && by_header
                        && is_grpc
                    {
                        out.grpc_timeout_upstream = Some(limit);
                    }
                }
            }
        }
        out
    }
}
