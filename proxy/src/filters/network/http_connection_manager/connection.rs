//! The connection loop: hyper's codec (HTTP/1.1 and h2c, AUTO-detected) serving one accepted
//! connection, Envoy's drain behaviour, and the per-request envelope (stats, gRPC local replies,
//! the `server` header, access logs when the response ends).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::config::{Codec, HttpConnectionManager, ServerHeader, Underscores};
use super::h1_guard::H1Guard;
use crate::http::body::{Activity, ResponseBody};
use crate::http::exec::LocalExec;
use crate::http::local_reply::LocalReply;
use crate::http::protocol_name;
use crate::http::stream_timer::{Expiry, H1Progress, StreamTimers, TimerStats};
use crate::runtime::WorkerCtx;
use crate::stats::GaugeGuard;
use crate::stream_info::ConnInfo;

/// The connection-level facts every request of a connection shares.
pub struct ConnCtx {
    pub hcm: Arc<HttpConnectionManager>,
    pub worker: Rc<WorkerCtx>,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub scheme: &'static str,
    pub conn: ConnInfo,
    pub drain: watch::Receiver<bool>,
    /// Whether `downstream_cx_http1_total|http2_total` counted this connection yet: AUTO
    /// learns the codec from the first request, as Envoy's codec detection does.
    pub codec_counted: std::cell::Cell<bool>,
    /// The connection speaks HTTP/2 (learnt from its first request).
    pub h2: std::cell::Cell<bool>,
    /// Requests served (`max_requests_per_connection`).
    pub served: std::cell::Cell<u32>,
    /// Set when the connection must stop taking requests (an HTTP/2 GOAWAY); the loop is woken.
    pub stop: std::cell::Cell<bool>,
    pub wake: tokio::sync::Notify,
    /// Streams in flight (the idle timeout).
    pub activity: Rc<Activity>,
    /// The streams' timers (`stream_idle_timeout`, `request_timeout`, stream durations).
    pub timers: Rc<StreamTimers>,
}

/// Serves HTTP on an accepted connection until it closes or the server drains.
#[allow(clippy::too_many_arguments)]
pub async fn serve<IO>(
    hcm: Arc<HttpConnectionManager>,
    io: IO,
    worker: Rc<WorkerCtx>,
    remote: SocketAddr,
    local: SocketAddr,
    mut drain: watch::Receiver<bool>,
    conn: ConnInfo,
    scheme: &'static str,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stats = &hcm.stats;
    stats.downstream_cx_total.inc();
    let _active = GaugeGuard::new(&stats.downstream_cx_active);
    let h1_progress = (hcm.codec != Codec::Http2).then(|| Arc::new(H1Progress::default()));
    let cx = Rc::new(ConnCtx {
        hcm: hcm.clone(),
        worker,
        remote,
        local,
        scheme,
        conn,
        drain: drain.clone(),
        codec_counted: std::cell::Cell::new(false),
        h2: std::cell::Cell::new(hcm.codec == Codec::Http2),
        served: std::cell::Cell::new(0),
        stop: std::cell::Cell::new(false),
        wake: tokio::sync::Notify::new(),
        activity: Rc::new(Activity::new()),
        timers: Rc::new(StreamTimers::new(
            h1_progress.clone(),
            TimerStats {
                idle: Some(stats.downstream_rq_idle_timeout.clone()),
                request: Some(stats.downstream_rq_timeout.clone()),
                duration: Some(stats.downstream_rq_max_duration_reached.clone()),
            },
        )),
    });
    let cx_loop = cx.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let cx = cx.clone();
        async move { handle(req, cx).await }
    });
    let io = TokioIo::new(H1Guard::new(io, hcm.clone(), hcm.codec != Codec::Http2, h1_progress));
    let lim = &hcm.limits.scan;
    let mut builder = hyper_util::server::conn::auto::Builder::new(LocalExec);
    // The guard enforces Envoy's header limits on HTTP/1 before hyper parses: hyper's own
    // limits are set above them so that they never answer first.
    let mut h1 = builder.http1();
    h1.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(None)
        .max_buf_size((lim.max_bytes as usize + 8192).max(H1_READ_BUF));
    if lim.max_count > H1_MAX_HEADERS {
        // Only above hyper's default: a larger table is allocated on every parse.
        h1.max_headers(lim.max_count as usize);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(hcm.h2_windows.0)
        .initial_connection_window_size(hcm.h2_windows.1)
        // HPACK counts 32 bytes more per field than Envoy's limit: with twice the limit, any
        // request within Envoy's limits and well beyond passes h2's check (h2 answers 431 past
        // it), and `h2_over_limits` applies Envoy's exactly (a stream reset).
        .max_header_list_size(
            lim.max_bytes.saturating_mul(2).saturating_add(lim.max_count.saturating_add(8).saturating_mul(32)),
        )
        .max_concurrent_streams(hcm.max_concurrent_streams.unwrap_or(2147483647));
    let builder = match hcm.codec {
        Codec::Auto => builder,
        Codec::Http1 => builder.http1_only(),
        Codec::Http2 => builder.http2_only(),
    };
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    // Draining, as Envoy's listener drain: HTTP/2 gets GOAWAY at once (streams in flight
    // finish); an HTTP/1 connection stays usable, each response carrying `connection: close`,
    // until the drain time ends. Server shutdown (SIGTERM, quitquitquit) closes idle
    // connections at once and lets busy ones finish.
    let mut shutdown = cx_loop.worker.drain.clone();
    let mut watch_shutdown = true;
    let mut watch_drain = true;
    let far = tokio::time::Instant::now() + Duration::from_secs(365 * 86400);
    let mut close_at = far;
    // `max_connection_duration`: then the connection drains (GOAWAY, or `connection: close`
    // on the response in flight; an idle HTTP/1 connection closes at once).
    let mut max_age_at = hcm.limits.max_connection_duration.map_or(far, |d| tokio::time::Instant::now() + d);
    let (mut drain_started, mut closing) = (false, false);
    // The streams' timers: one tokio timer for the connection, at the earliest deadline.
    let stream_sleep = tokio::time::sleep_until(far);
    tokio::pin!(stream_sleep);
    loop {
        let next = cx_loop.timers.next_deadline();
        cx_loop.timers.set_armed(next);
        let stream_at = next.unwrap_or(far);
        if stream_sleep.deadline() != stream_at {
            stream_sleep.as_mut().reset(stream_at);
        }
        if !closing && *shutdown.borrow() {
            closing = true;
            conn.as_mut().graceful_shutdown();
        }
        if !drain_started && *drain.borrow() {
            drain_started = true;
            if cx_loop.h2.get() {
                closing = true;
                conn.as_mut().graceful_shutdown();
            } else {
                close_at = tokio::time::Instant::now() + cx_loop.worker.shared.drain_time;
            }
        }
        // `common_http_protocol_options.idle_timeout`: no stream in flight for that long.
        let idle_at = match (hcm.idle_timeout, cx_loop.activity.idle_since()) {
            (Some(t), Some(since)) => tokio::time::Instant::from_std(since + t),
            _ => far,
        };
        tokio::select! {
            () = cx_loop.activity.idle.notified() => {}
            () = cx_loop.timers.changed.notified() => {}
            () = &mut stream_sleep, if stream_at != far => {
                cx_loop.timers.fire(tokio::time::Instant::now());
            }
            _ = tokio::time::sleep_until(idle_at), if idle_at != far && !closing => {
                if cx_loop.activity.idle_since().is_some() {
                    stats.downstream_cx_idle_timeout.inc();
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = cx_loop.wake.notified(), if !closing => {
                if cx_loop.stop.get() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = tokio::time::sleep_until(max_age_at), if max_age_at != far => {
                max_age_at = far;
                stats.downstream_cx_max_duration_reached.inc();
                if !closing {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(target: "remora::http", "connection from {remote} ended: {e}");
                }
                break;
            }
            changed = drain.changed(), if watch_drain => {
                if changed.is_err() {
                    // The listener is gone: finish the connection.
                    watch_drain = false;
                    if !closing {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            changed = shutdown.changed(), if watch_shutdown => {
                if changed.is_err() {
                    watch_shutdown = false;
                }
            }
            _ = tokio::time::sleep_until(close_at), if close_at != far => {
                close_at = far;
                if !closing {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
    stats.downstream_cx_destroy.inc();
}

/// hyper's default HTTP/1 header count limit (its parse table lives on the stack up to it).
const H1_MAX_HEADERS: u32 = 100;

/// hyper's default HTTP/1 read buffer limit (about 400 KB), kept when the header limit is lower.
const H1_READ_BUF: usize = 8192 + 4096 * 100;

/// An HTTP/2 stream refused by Envoy's codec checks: hyper resets it (INTERNAL_ERROR, as Envoy).
#[derive(Debug)]
pub struct StreamRefused(&'static str);

impl std::fmt::Display for StreamRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for StreamRefused {}

/// Envoy's HTTP/2 codec limits: the header list (pseudo-headers included) counted as names
/// plus values, and the number of fields.
fn h2_over_limits(req: &Request<Incoming>, max_bytes: u32, max_count: u32) -> bool {
    let h = req.headers();
    let uri = req.uri();
    let mut count = h.len() + 2; // :method and :authority, then :scheme and :path when present
    let mut bytes = ":method".len() + req.method().as_str().len();
    bytes += ":authority".len() + uri.authority().map_or(0, |a| a.as_str().len());
    if let Some(s) = uri.scheme_str() {
        count += 1;
        bytes += ":scheme".len() + s.len();
    }
    if let Some(pq) = uri.path_and_query() {
        count += 1;
        bytes += ":path".len() + pq.as_str().len();
    }
    if count > max_count as usize {
        return true;
    }
    for (k, v) in h {
        bytes += k.as_str().len() + v.len();
    }
    bytes > max_bytes as usize
}

/// `headers_with_underscores_action`: whether a header name has an underscore, and with
/// DROP_HEADER, removes those headers (counted).
fn underscores(req: &mut Request<Incoming>, action: Underscores, dropped: &crate::stats::Counter) -> bool {
    let h = req.headers_mut();
    if !h.keys().any(|k| k.as_str().contains('_')) {
        return false;
    }
    if action == Underscores::DropHeader {
        let names: Vec<_> = h.keys().filter(|k| k.as_str().contains('_')).cloned().collect();
        for n in names {
            h.remove(&n);
            dropped.inc();
        }
        return false;
    }
    true
}

/// Handles one request end to end and produces a response, or refuses an HTTP/2 stream.
async fn handle(mut req: Request<Incoming>, cx: Rc<ConnCtx>) -> Result<Response<ResponseBody>, StreamRefused> {
    let start = Instant::now();
    let _stream = cx.activity.start();
    let hcm = &cx.hcm;
    let stats = &hcm.stats;
    stats.downstream_rq_total.inc();
    let first = !cx.codec_counted.replace(true);
    match req.version() {
        Version::HTTP_2 => {
            stats.downstream_rq_http2_total.inc();
            if first {
                stats.downstream_cx_http2_total.inc();
                cx.h2.set(true);
            }
        }
        _ => {
            stats.downstream_rq_http1_total.inc();
            if first {
                stats.downstream_cx_http1_total.inc();
            }
        }
    }
    let is_h1 = req.version() != Version::HTTP_2;
    let req_version = req.version();
    let lim = &hcm.limits;
    let mut last_on_connection = false;
    if let Some(max) = lim.max_requests_per_connection {
        let n = cx.served.get().saturating_add(1);
        cx.served.set(n);
        if n >= max {
            stats.downstream_cx_max_requests_reached.inc();
            last_on_connection = true;
            if !is_h1 && !cx.stop.replace(true) {
                cx.wake.notify_one();
            }
        }
    }
    if !is_h1 && h2_over_limits(&req, lim.scan.max_bytes, lim.scan.max_count) {
        stats.codec.http2_header_overflow.inc();
        return Err(StreamRefused("header list over the limits"));
    }
    if lim.underscores != Underscores::Allow {
        let (dropped, rejected) = if is_h1 {
            (&stats.codec.http1_dropped_underscores, &stats.codec.http1_rejected_underscores)
        } else {
            (&stats.codec.http2_dropped_underscores, &stats.codec.http2_rejected_underscores)
        };
        if underscores(&mut req, lim.underscores, dropped) {
            rejected.inc();
            if !is_h1 {
                // A reset stream is not a completed request (Envoy's stats).
                return Err(StreamRefused("header name with an underscore"));
            }
            stats.downstream_rq_completed.inc();
            // Envoy's HTTP/1 codec error: 400 and the connection closes.
            stats.downstream_cx_protocol_error.inc();
            stats.downstream_rq.record(400, false);
            if let Some((codes, completed)) = &stats.listener_rq {
                codes.record(400, false);
                completed.inc();
            }
            let mut r = LocalReply::new(StatusCode::BAD_REQUEST, "Bad Request", "DPE", "http1.unexpected_underscore")
                .into_response();
            r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            finalize_response(&cx, &mut r, true);
            return Ok(r);
        }
    }
    let active = GaugeGuard::new(&stats.downstream_rq_active);
    let is_grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let logged = (!hcm.access_logs.is_empty()).then(|| {
        (std::time::SystemTime::now(), crate::access_log::request::LoggedRequest::minimal(&req), req.version())
    });
    use http_body::Body as _;
    let had_body = !req.body().is_end_stream();
    // A refused HTTP/1 CONNECT leaves the connection in an unknown state: Envoy closes it.
    let is_connect = req.method() == http::Method::CONNECT;
    // Envoy's stream timers start with the stream (here: once its headers are parsed). On HTTP/2
    // a request body's end is not observed: such a request counts as received whole.
    let timer = cx.timers.open(hcm.stream_limits, !had_body || !is_h1);
    let mut resp = {
        let work = super::header_rules::process(req, &cx, &timer);
        tokio::pin!(work);
        let raced = std::future::poll_fn(|c| {
            if let std::task::Poll::Ready(e) = timer.poll_expired(c) {
                return std::task::Poll::Ready(Err(e));
            }
            work.as_mut().poll(c).map(Ok)
        })
        .await;
        match raced {
            Ok(r) => r,
            Err(e) => {
                let mut r = stream_timeout_reply(e, timer.request_complete());
                if let Some(Ok(req)) =
                    timer.take_parked().map(|b| b.downcast::<crate::access_log::request::LoggedRequest>())
                {
                    r.extensions_mut().insert(*req);
                }
                r
            }
        }
    };
    if is_grpc {
        crate::http::local_reply::to_grpc(&mut resp);
    }
    if let Some(m) = resp.extensions().get::<crate::http::local_reply::LocalReplied>() {
        if m.details == crate::http::local_reply::DOWNSTREAM_BODY_ERROR {
            stats.downstream_cx_protocol_error.inc();
        }
        if !is_h1 && resp.body().is_end_stream() {
            // Envoy's HTTP/2 local replies without a body carry no content-length.
            resp.headers_mut().remove(header::CONTENT_LENGTH);
        }
        if is_h1 && (had_body || is_connect) {
            // Answered without reading the request body: the connection cannot be reused.
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    finalize_response(&cx, &mut resp, is_h1);
    // A sampled span ends with the response, as the access log does.
    let logged = logged.or_else(|| {
        resp.extensions()
            .get::<crate::access_log::OnRequestEnd>()
            .map(|_| (std::time::SystemTime::now(), Default::default(), req_version))
    });
    if is_h1 && last_on_connection {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some((start_time, fallback, version)) = logged {
        resp = log_on_end(&cx, resp, fallback, version, start, start_time);
    }
    let status = resp.status().as_u16();
    stats.downstream_rq.record(status, false);
    stats.downstream_rq_completed.inc();
    if let Some((codes, completed)) = &stats.listener_rq {
        codes.record(status, false);
        completed.inc();
    }
    stats.downstream_rq_time.record(start.elapsed().as_secs_f64() * 1000.0);
    drop(active);
    Ok(resp)
}

/// A stream timer passed before the response: the connection manager's local reply (Envoy's
/// `onIdleTimeout`, `onRequestTimeout`, `onStreamMaxDurationReached`), 408 while the request is
/// still arriving, else 504 (counted when the timer fired).
fn stream_timeout_reply(e: Expiry, request_complete: bool) -> Response<ResponseBody> {
    let status = if request_complete { StatusCode::GATEWAY_TIMEOUT } else { StatusCode::REQUEST_TIMEOUT };
    let body = match e {
        Expiry::Idle | Expiry::UpstreamIdle => "stream timeout",
        Expiry::Request => "request timeout",
        Expiry::Duration => "downstream duration timeout",
    };
    LocalReply::new(status, body, e.flag(), e.details()).into_response()
}

/// Arranges for the access logs to be written when the response body ends.
fn log_on_end(
    cx: &ConnCtx,
    resp: Response<ResponseBody>,
    fallback: crate::access_log::request::LoggedRequest,
    version: Version,
    start: Instant,
    start_time: std::time::SystemTime,
) -> Response<ResponseBody> {
    let conn = crate::access_log::request::LoggedConn {
        downstream_remote: Some(cx.remote),
        downstream_direct_remote: Some(cx.remote),
        downstream_local: Some(cx.local),
        server_name: cx.conn.sni.clone(),
        peer_uri_san: cx.conn.peer_uri_sans.first().cloned(),
        local_uri_san: cx.conn.local_uri_sans.first().cloned(),
        tls_version: cx.conn.tls_version,
        hostname: Some(cx.worker.shared.hostname.as_str().into()),
    };
    let logs = cx.hcm.access_logs.clone();
    crate::access_log::request::wrap(resp, logs, Some(fallback), conn, protocol_name(version), start, start_time)
}

fn finalize_response(cx: &ConnCtx, resp: &mut Response<ResponseBody>, is_h1: bool) {
    let h = resp.headers_mut();
    match cx.hcm.server_header {
        ServerHeader::Overwrite => {
            h.insert(header::SERVER, cx.hcm.server_name.clone());
        }
        ServerHeader::AppendIfAbsent => {
            if !h.contains_key(header::SERVER) {
                h.insert(header::SERVER, cx.hcm.server_name.clone());
            }
        }
        ServerHeader::PassThrough => {}
    }
    if is_h1 && *cx.drain.borrow() {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}
