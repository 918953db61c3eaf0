//! The router's timeouts for one request, as Envoy's `FilterUtility::finalTimeout` and the HCM's
//! stream duration decide them: the route `timeout`, the gRPC `grpc-timeout` rules, and a route's
//! `max_stream_duration` ("new timeouts").

use std::time::{Duration, Instant};

use http::HeaderMap;

use super::upstream_headers::parse_grpc_timeout;
use crate::http::headers as hn;
use crate::router::action::RouteAction;

/// What bounds a request before the x-envoy-* request controls apply.
pub(super) struct Timeouts {
    /// The global timeout (None: none).
    pub timeout: Option<Duration>,
    /// Envoy's "new timeouts" (the route has `max_stream_duration`): the stream's deadline; the
    /// route timeout then does not apply.
    pub stream_deadline: Option<Instant>,
    /// The `grpc-timeout` sent upstream under new timeouts, rewritten to the limit in force.
    pub grpc_timeout_upstream: Option<Duration>,
}

impl Timeouts {
    pub fn of(action: &RouteAction, headers: &HeaderMap, is_grpc: bool) -> Timeouts {
        let grpc_timeout = || headers.get(&hn::GRPC_TIMEOUT).and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
        let mut out = Timeouts { timeout: action.timeout, stream_deadline: None, grpc_timeout_upstream: None };
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
                if let Some(limit) = sd.limit(header) {
                    // The duration counts from the router: time spent in earlier HTTP filters (a
                    // fault delay) is not included, where Envoy counts from the request's arrival.
                    // The clock is read only for such routes.
                    out.stream_deadline = Some(Instant::now() + limit);
                    if header.is_some() && sd.grpc_header_max.is_some() && is_grpc {
                        out.grpc_timeout_upstream = Some(limit);
                    }
                }
            }
        }
        out
    }
}
