//! The connection loop: hyper's codec (HTTP/1.1 and h2c, AUTO-detected) serving one accepted
//! connection, Envoy's drain behaviour, and the per-request envelope (stats, gRPC local replies,
//! the `server` header, access logs when the response ends).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, Version, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::config::{Codec, HttpConnectionManager, ServerHeader};
use crate::http::body::ResponseBody;
use crate::http::exec::LocalExec;
use crate::http::protocol_name;
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
    });
    let cx_loop = cx.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let cx = cx.clone();
        async move { Ok::<_, Infallible>(handle(req, cx).await) }
    });
    let io = TokioIo::new(io);
    let mut builder = hyper_util::server::conn::auto::Builder::new(LocalExec);
    builder.http1().timer(TokioTimer::new()).keep_alive(true).header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
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
    let (mut drain_started, mut closing) = (false, false);
    loop {
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
        tokio::select! {
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

/// Handles one request end to end and always produces a response.
async fn handle(req: Request<Incoming>, cx: Rc<ConnCtx>) -> Response<ResponseBody> {
    let start = Instant::now();
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
    let active = GaugeGuard::new(&stats.downstream_rq_active);
    let is_h1 = req.version() != Version::HTTP_2;
    let req_version = req.version();
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
    let mut resp = super::header_rules::process(req, &cx).await;
    if is_grpc {
        crate::http::local_reply::to_grpc(&mut resp);
    }
    if resp.extensions().get::<crate::http::local_reply::LocalReplied>().is_some() {
        if !is_h1 && resp.body().is_end_stream() {
            // Envoy's HTTP/2 local replies without a body carry no content-length.
            resp.headers_mut().remove(header::CONTENT_LENGTH);
        }
        if is_h1 && had_body {
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
    resp
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
