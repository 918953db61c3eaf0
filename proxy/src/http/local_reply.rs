//! Envoy's local replies: the status, `content-type: text/plain` body and headers Envoy sends
//! when it answers a request itself (no route, no healthy upstream, timeouts, resets).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::body::ResponseBody;

/// Why the proxy answered itself; carries Envoy's body text and response flag.
#[derive(Debug, Clone)]
pub struct LocalReply {
    pub status: StatusCode,
    pub body: Bytes,
    /// Envoy's response flag (`NR`, `UH`, `UF`, `UT`, ...), for access logs.
    pub flag: &'static str,
    /// Envoy's `response_code_details` (`route_not_found`, `no_healthy_upstream`, ...).
    pub details: &'static str,
    /// Extra headers for the reply (rate-limit headers, CORS preflight answers, ...).
    pub headers: http::HeaderMap,
}

impl LocalReply {
    pub fn new(status: StatusCode, body: impl Into<Bytes>, flag: &'static str, details: &'static str) -> Self {
        LocalReply { status, body: body.into(), flag, details, headers: http::HeaderMap::new() }
    }

    pub fn no_route() -> Self {
        LocalReply::new(StatusCode::NOT_FOUND, Bytes::new(), "NR", "route_not_found")
    }

    pub fn no_healthy_upstream() -> Self {
        LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream", "UH", "no_healthy_upstream")
    }

    pub fn cluster_not_found() -> Self {
        LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, Bytes::new(), "NC", "cluster_not_found")
    }

    pub fn upstream_timeout() -> Self {
        LocalReply::new(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout", "UT", "upstream_response_timeout")
    }

    pub fn upstream_reset(reason: &str, flag: &'static str) -> Self {
        LocalReply::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("upstream connect error or disconnect/reset before headers. reset reason: {reason}"),
            flag,
            "upstream_reset_before_response_started",
        )
    }

    pub fn overflow() -> Self {
        LocalReply::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            "UO",
            "upstream_reset_before_response_started{overflow}",
        )
    }

    /// Renders the reply. Like Envoy, a non-empty body gets `content-type: text/plain`.
    pub fn into_response(self) -> Response<ResponseBody> {
        let len = self.body.len();
        let marker = LocalReplied { flag: self.flag, details: self.details, body: self.body.clone() };
        let mut r = Response::new(ResponseBody::full(self.body));
        r.extensions_mut().insert(marker);
        *r.status_mut() = self.status;
        let h = r.headers_mut();
        *h = self.headers;
        if len > 0 && !h.contains_key(header::CONTENT_TYPE) {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        crate::access_log::ResponseInfo::mark_local_reply(r.extensions_mut(), self.flag, self.details);
        r
    }
}

/// `details` of the 400 answered when the client's request body breaks while it is forwarded:
/// the connection manager counts it as a downstream protocol error.
pub const DOWNSTREAM_BODY_ERROR: &str = "downstream_body_error";

/// Marks a response the proxy generated itself (read by the gRPC conversion and access logs).
#[derive(Debug, Clone)]
pub struct LocalReplied {
    pub flag: &'static str,
    pub details: &'static str,
    pub body: Bytes,
}

/// Envoy's HTTP status to gRPC status mapping for local replies (`Grpc::Utility::httpToGrpcStatus`).
pub fn grpc_status_for(http: u16) -> u32 {
    match http {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// Turns a local reply to a gRPC request into a trailers-only gRPC response, as Envoy does:
/// HTTP 200, `content-type: application/grpc`, `grpc-status` and `grpc-message` headers.
pub fn to_grpc(resp: &mut Response<ResponseBody>) {
    let Some(m) = resp.extensions().get::<LocalReplied>().cloned() else { return };
    let status = resp.status().as_u16();
    if status == 200 {
        return;
    }
    *resp.status_mut() = http::StatusCode::OK;
    *resp.body_mut() = ResponseBody::empty();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(grpc_status_for(status)));
    if !m.body.is_empty() {
        let msg = percent_encoding::percent_encode(&m.body, GRPC_MESSAGE).to_string();
        if let Ok(v) = HeaderValue::from_str(&msg) {
            h.insert("grpc-message", v);
        }
    }
    h.remove(header::CONTENT_LENGTH);
}

/// gRPC's percent-encoding set for `grpc-message`: everything outside printable ASCII, and `%`.
const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');
