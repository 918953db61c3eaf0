//! Access logging of HTTP requests: what the connection manager captures about a request, and
//! the response body wrapper that counts bytes and writes the log lines when the response ends
//! (or is cut off, flag `DC`).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};

use super::{AccessLog, Entry, OnRequestEnd, RequestEndFacts, ResponseFlags, ResponseInfo};
use crate::formatter::{FormatContext, LogFacts};
use crate::http::body::{BoxError, ResponseBody};

/// The request as logged: captured once Envoy's header rules ran, before the router takes the
/// headers.
#[derive(Clone, Debug, Default)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub authority: String,
    pub scheme: String,
    pub headers: HeaderMap,
    pub bytes_received: u64,
}

impl LoggedRequest {
    pub fn capture(parts: &http::request::Parts, authority: &str, scheme: &str) -> Self {
        LoggedRequest {
            method: parts.method.as_str().to_string(),
            path: parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string(),
            authority: authority.to_string(),
            scheme: scheme.to_string(),
            headers: parts.headers.clone(),
            // The request body is not metered; its declared length stands in for it.
            bytes_received: parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
        }
    }

    /// Without headers: for requests answered before the connection manager's header rules.
    pub fn minimal<B>(req: &http::Request<B>) -> Self {
        LoggedRequest {
            method: req.method().as_str().to_string(),
            path: req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string(),
            authority: req
                .uri()
                .authority()
                .map(|a| a.as_str())
                .or_else(|| req.headers().get(http::header::HOST).and_then(|v| v.to_str().ok()))
                .unwrap_or("")
                .to_string(),
            scheme: req.uri().scheme_str().unwrap_or("http").to_string(),
            headers: HeaderMap::new(),
            bytes_received: 0,
        }
    }
}

/// Connection facts for the log line.
#[derive(Clone, Debug, Default)]
pub struct LoggedConn {
    pub downstream_remote: Option<SocketAddr>,
    pub downstream_direct_remote: Option<SocketAddr>,
    pub downstream_local: Option<SocketAddr>,
    pub server_name: Option<String>,
    pub peer_uri_san: Option<String>,
    pub local_uri_san: Option<String>,
    pub tls_version: Option<&'static str>,
    pub hostname: Option<Arc<str>>,
}

struct Record {
    logs: Arc<[AccessLog]>,
    req: LoggedRequest,
    conn: LoggedConn,
    protocol: &'static str,
    status: u16,
    headers: HeaderMap,
    trailers: Option<HeaderMap>,
    info: ResponseInfo,
    route_name: Option<Arc<str>>,
    start: Instant,
    start_time: SystemTime,
    request_end: Instant,
    on_end: Option<OnRequestEnd>,
}

/// The route facts the connection manager adds to the response for its log.
#[derive(Clone, Debug, Default)]
pub struct LoggedRoute {
    pub route_name: Option<Arc<str>>,
}

/// Wraps a finished response so its access log lines are written when the body ends.
#[allow(clippy::too_many_arguments)]
pub fn wrap(
    mut resp: Response<ResponseBody>,
    logs: Arc<[AccessLog]>,
    fallback: Option<LoggedRequest>,
    conn: LoggedConn,
    protocol: &'static str,
    start: Instant,
    start_time: SystemTime,
) -> Response<ResponseBody> {
    let ext = resp.extensions_mut();
    let req = ext.remove::<LoggedRequest>().or(fallback).unwrap_or_default();
    let info = ext.remove::<ResponseInfo>().unwrap_or_default();
    let route = ext.remove::<LoggedRoute>().unwrap_or_default();
    let on_end = ext.remove::<OnRequestEnd>();
    let (parts, body) = resp.into_parts();
    let rec = Record {
        logs,
        req,
        conn,
        protocol,
        status: parts.status.as_u16(),
        headers: parts.headers.clone(),
        trailers: None,
        info,
        route_name: route.route_name,
        start,
        start_time,
        request_end: Instant::now(),
        on_end,
    };
    let body = ResponseBody::Boxed(Box::pin(LoggedBody { inner: body, rec: Some(Box::new(rec)), bytes_sent: 0 }));
    Response::from_parts(parts, body)
}

struct LoggedBody {
    inner: ResponseBody,
    rec: Option<Box<Record>>,
    bytes_sent: u64,
}

impl LoggedBody {
    fn finish(&mut self, cut_off: bool) {
        let Some(rec) = self.rec.take() else { return };
        let now = Instant::now();
        let mut flags = rec.info.flags;
        if cut_off {
            flags |= ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION;
        }
        let details: Option<Cow<'_, str>> = rec.info.details.clone();
        let facts = LogFacts {
            start_time: Some(rec.start_time),
            duration: Some(now.duration_since(rec.start)),
            request_duration: Some(rec.request_end.saturating_duration_since(rec.start)),
            response_duration: rec.info.first_upstream_byte.map(|t| t.saturating_duration_since(rec.start)),
            response_flags: flags,
            response_code_details: details.as_deref(),
            bytes_received: rec.req.bytes_received,
            bytes_sent: self.bytes_sent,
            response_trailers: rec.trailers.as_ref(),
            connection_id: None,
            tls_version: rec.conn.tls_version,
        };
        let c = &rec.conn;
        let cx = FormatContext {
            downstream_remote: c.downstream_remote,
            downstream_direct_remote: c.downstream_direct_remote,
            downstream_local: c.downstream_local,
            upstream_remote: rec.info.upstream_host,
            upstream_cluster: rec.info.upstream_cluster.as_deref(),
            protocol: Some(rec.protocol),
            route_name: rec.route_name.as_deref(),
            response_code: Some(rec.status),
            request_headers: Some(&rec.req.headers),
            response_headers: Some(&rec.headers),
            peer_uri_san: c.peer_uri_san.as_deref(),
            local_uri_san: c.local_uri_san.as_deref(),
            server_name: c.server_name.as_deref(),
            hostname: c.hostname.as_deref(),
            method: (!rec.req.method.is_empty()).then_some(rec.req.method.as_str()),
            path: (!rec.req.method.is_empty()).then_some(rec.req.path.as_str()),
            authority: (!rec.req.authority.is_empty()).then_some(rec.req.authority.as_str()),
            scheme: (!rec.req.scheme.is_empty()).then_some(rec.req.scheme.as_str()),
            log: Some(&facts),
        };
        let entry = Entry { cx, facts: &facts, health_check: false };
        for l in rec.logs.iter() {
            l.log(&entry);
        }
        if let Some(end) = &rec.on_end {
            end.0.finish(&RequestEndFacts {
                status: rec.status,
                bytes_sent: self.bytes_sent,
                flags: flags.short_string(),
                upstream_cluster: rec.info.upstream_cluster.as_deref(),
                upstream_host: rec.info.upstream_host.is_some(),
            });
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes_sent += d.len() as u64;
                } else if let (Some(t), Some(rec)) = (f.trailers_ref(), this.rec.as_mut()) {
                    rec.trailers = Some(t.clone());
                }
                if this.inner.is_end_stream() {
                    this.finish(false);
                }
            }
            Poll::Ready(None) => this.finish(false),
            Poll::Ready(Some(Err(e))) => {
                if let Some(rec) = this.rec.as_mut() {
                    // A stream timer that passed mid-response names itself (SI, DT, UT).
                    match e.downcast_ref::<crate::http::stream_timer::TimedOut>() {
                        Some(t) => {
                            rec.info.flags |= ResponseFlags::from_short(t.0.flag()).unwrap_or_default();
                            rec.info.details = Some(t.0.details().into());
                        }
                        None => rec.info.flags |= ResponseFlags::from_short("UR").unwrap_or_default(),
                    }
                }
                this.finish(false);
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // A body nobody read to the end: HEAD and empty bodies end here normally, anything else
        // was cut off by the client.
        let cut_off = !self.inner.is_end_stream();
        self.finish(cut_off);
    }
}
