//! `envoy.filters.network.http_connection_manager`: turns a connection into HTTP requests
//! (HTTP/1.1 and h2c, AUTO-detected), applies Envoy's request-header rules (x-request-id,
//! x-forwarded-for/-proto), finds the route, runs the HTTP filters and hands routed requests to
//! the router. Config translation is at the top, the per-connection behaviour below.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager as HcmProto, http_connection_manager,
};
use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::config::{BuildCtx, ConfigError, duration};
use crate::filters::http::{ConnInfo, FilterAction, FilterChain, RequestCtx, RouteRef};
use crate::formatter::FormatContext;
use crate::http::body::ResponseBody;
use crate::http::exec::LocalExec;
use crate::http::headers as hn;
use crate::http::local_reply::LocalReply;
use crate::matcher::RequestHeaders;
use crate::router::RouteTable;
use crate::router::route::{Action, MatchInput};
use crate::runtime::WorkerCtx;
use crate::stats::{CodeStats, Counter, Gauge, GaugeGuard, Histogram};

pub const NAME: &str = "envoy.filters.network.http_connection_manager";
pub const TYPE: &str = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Auto,
    Http1,
    Http2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerHeader {
    Overwrite,
    AppendIfAbsent,
    PassThrough,
}

/// Where the route table comes from.
pub enum RouteSource {
    Static(Arc<RouteTable>),
    /// RDS: filled in (and swapped) by the xDS layer; empty until the first update.
    Rds {
        name: String,
        table: Arc<ArcSwapOption<RouteTable>>,
        /// File-based RDS (`config_source.path_config_source`): the file it comes from.
        file: Option<std::path::PathBuf>,
    },
}

pub struct HcmStats {
    pub downstream_rq_total: Counter,
    pub downstream_rq_active: Gauge,
    pub downstream_rq_http1_total: Counter,
    pub downstream_rq_http2_total: Counter,
    pub downstream_rq: CodeStats,
    pub downstream_rq_completed: Counter,
    pub downstream_rq_time: Histogram,
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_http1_total: Counter,
    pub downstream_cx_http2_total: Counter,
    pub downstream_cx_destroy: Counter,
    pub no_route: Counter,
    pub no_cluster: Counter,
    pub rq_direct_response: Counter,
    pub rq_total: Counter,
    /// `listener.<address>.http.<prefix>.downstream_rq_<N>xx` and `_completed`.
    pub listener_rq: Option<(CodeStats, Counter)>,
}

impl HcmStats {
    fn new(cx: &BuildCtx, prefix: &str) -> Self {
        let p = format!("http.{prefix}.");
        let c = |n: &str| cx.stats.counter(&format!("{p}{n}"));
        let g = |n: &str| cx.stats.gauge(&format!("{p}{n}"));
        HcmStats {
            downstream_rq_total: c("downstream_rq_total"),
            downstream_rq_active: g("downstream_rq_active"),
            downstream_rq_http1_total: c("downstream_rq_http1_total"),
            downstream_rq_http2_total: c("downstream_rq_http2_total"),
            downstream_rq: CodeStats::new(&cx.stats, &format!("{p}downstream_rq")),
            downstream_rq_completed: c("downstream_rq_completed"),
            downstream_rq_time: cx.stats.histogram(&format!("{p}downstream_rq_time")),
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: g("downstream_cx_active"),
            downstream_cx_http1_total: c("downstream_cx_http1_total"),
            downstream_cx_http2_total: c("downstream_cx_http2_total"),
            downstream_cx_destroy: c("downstream_cx_destroy"),
            no_route: c("no_route"),
            no_cluster: c("no_cluster"),
            rq_direct_response: c("rq_direct_response"),
            rq_total: c("rq_total"),
            listener_rq: cx.listener_stat_name.as_ref().map(|l| {
                let lp = format!("listener.{l}.http.{prefix}.");
                (
                    CodeStats::new(&cx.stats, &format!("{lp}downstream_rq")),
                    cx.stats.counter(&format!("{lp}downstream_rq_completed")),
                )
            }),
        }
    }
}

/// A compiled HTTP connection manager.
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    pub codec: Codec,
    pub routes: RouteSource,
    pub filters: FilterChain,
    pub server_name: HeaderValue,
    pub server_header: ServerHeader,
    pub use_remote_address: bool,
    pub xff_num_trusted_hops: u32,
    pub skip_xff_append: bool,
    pub via: Option<HeaderValue>,
    pub generate_request_id: bool,
    pub preserve_external_request_id: bool,
    pub always_set_request_id_in_response: bool,
    pub accept_http_10: bool,
    pub stream_idle_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub max_concurrent_streams: Option<u32>,
    pub strip_any_host_port: bool,
    pub normalize_path: bool,
    pub merge_slashes: bool,
    pub escaped_slashes: crate::http::path::EscapedSlashes,
    /// `internal_address_config` CIDRs (Envoy 1.40's default: none are internal).
    pub internal_addresses: Vec<crate::matcher::Cidr>,
    /// Enabled `upgrade_configs` types, lowercased (`websocket`, ...).
    pub upgrades: Vec<String>,
    /// `forward_client_cert_details` / `set_current_client_cert_details`.
    pub xfcc: crate::http::xfcc::Xfcc,
    pub stats: HcmStats,
    /// `access_log`: written when each request ends (see `access_log::request`).
    pub access_logs: Arc<[crate::access_log::AccessLog]>,
}

impl HttpConnectionManager {
    pub fn from_proto(p: &HcmProto, cx: &BuildCtx) -> Result<Self, ConfigError> {
        use http_connection_manager::{CodecType, RouteSpecifier, ServerHeaderTransformation as SHT};
        if p.stat_prefix.is_empty() {
            return Err(ConfigError::new("stat_prefix", "value length must be at least 1 characters"));
        }
        let codec = match CodecType::try_from(p.codec_type) {
            Ok(CodecType::Auto) => Codec::Auto,
            Ok(CodecType::Http1) => Codec::Http1,
            Ok(CodecType::Http2) => Codec::Http2,
            Ok(CodecType::Http3) | Err(_) => {
                return Err(ConfigError::new("codec_type", "HTTP/3 is not supported"));
            }
        };
        let routes = match &p.route_specifier {
            Some(RouteSpecifier::RouteConfig(rc)) => RouteSource::Static(Arc::new(
                RouteTable::from_proto(rc, cx, true).map_err(|e| e.within("route_config"))?,
            )),
            Some(RouteSpecifier::Rds(rds)) => RouteSource::Rds {
                name: rds.route_config_name.clone(),
                table: Arc::new(ArcSwapOption::empty()),
                file: rds.config_source.as_ref().and_then(crate::config::file_source),
            },
            Some(RouteSpecifier::ScopedRoutes(_)) => {
                return Err(ConfigError::new("scoped_routes", "scoped routes are not supported"));
            }
            None => {
                return Err(ConfigError::new("route_specifier", "one of route_config or rds is required"));
            }
        };
        let fcx = BuildCtx { http_stat_prefix: Some(p.stat_prefix.as_str().into()), ..cx.clone() };
        let filters = FilterChain::from_proto(&p.http_filters, &fcx, "http_filters")?;
        let server_header = match SHT::try_from(p.server_header_transformation) {
            Ok(SHT::Overwrite) | Err(_) => ServerHeader::Overwrite,
            Ok(SHT::AppendIfAbsent) => ServerHeader::AppendIfAbsent,
            Ok(SHT::PassThrough) => ServerHeader::PassThrough,
        };
        let server_name = if p.server_name.is_empty() { "envoy" } else { p.server_name.as_str() };
        let common = p.common_http_protocol_options.as_ref();
        let hcm = HttpConnectionManager {
            stat_prefix: p.stat_prefix.clone(),
            codec,
            routes,
            filters,
            server_name: HeaderValue::from_str(server_name)
                .map_err(|_| ConfigError::new("server_name", "invalid header value"))?,
            server_header,
            use_remote_address: p.use_remote_address.map(|b| b.value).unwrap_or(false),
            xff_num_trusted_hops: p.xff_num_trusted_hops,
            skip_xff_append: p.skip_xff_append,
            via: if p.via.is_empty() {
                None
            } else {
                Some(HeaderValue::from_str(&p.via).map_err(|_| ConfigError::new("via", "invalid header value"))?)
            },
            generate_request_id: p.generate_request_id.map(|b| b.value).unwrap_or(true),
            preserve_external_request_id: p.preserve_external_request_id,
            always_set_request_id_in_response: p.always_set_request_id_in_response,
            accept_http_10: p.http_protocol_options.as_ref().is_some_and(|o| o.accept_http_10),
            stream_idle_timeout: match &p.stream_idle_timeout {
                None => Some(Duration::from_secs(300)),
                Some(d) => Some(duration(d)).filter(|d| !d.is_zero()),
            },
            idle_timeout: common.and_then(|c| c.idle_timeout.as_ref()).map(duration).filter(|d| !d.is_zero()),
            max_concurrent_streams: p
                .http2_protocol_options
                .as_ref()
                .and_then(|o| o.max_concurrent_streams)
                .map(|v| v.value),
            xfcc: crate::http::xfcc::Xfcc::from_proto(p),
            normalize_path: p.normalize_path.map(|b| b.value).unwrap_or(false),
            merge_slashes: p.merge_slashes,
            escaped_slashes: {
                use crate::http::path::EscapedSlashes as E;
                use http_connection_manager::PathWithEscapedSlashesAction as A;
                match A::try_from(p.path_with_escaped_slashes_action) {
                    Ok(A::RejectRequest) => E::Reject,
                    Ok(A::UnescapeAndRedirect) => E::UnescapeAndRedirect,
                    Ok(A::UnescapeAndForward) => E::UnescapeAndForward,
                    _ => E::Keep,
                }
            },
            strip_any_host_port: matches!(
                p.strip_port_mode,
                Some(http_connection_manager::StripPortMode::StripAnyHostPort(true))
            ),
            internal_addresses: match &p.internal_address_config {
                Some(c) => c
                    .cidr_ranges
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        crate::matcher::Cidr::from_proto(r, &format!("internal_address_config.cidr_ranges[{i}]"))
                    })
                    .collect::<Result<_, _>>()?,
                None => Vec::new(),
            },
            upgrades: p
                .upgrade_configs
                .iter()
                .filter(|u| u.enabled.map(|b| b.value).unwrap_or(true))
                .map(|u| u.upgrade_type.to_ascii_lowercase())
                .collect(),
            stats: HcmStats::new(cx, &p.stat_prefix),
            access_logs: crate::access_log::AccessLog::list_from_proto(&p.access_log, "access_log")?.into(),
        };
        Ok(hcm)
    }

    /// The current route table (None while an RDS table has not arrived).
    pub fn route_table(&self) -> Option<Arc<RouteTable>> {
        match &self.routes {
            RouteSource::Static(t) => Some(t.clone()),
            RouteSource::Rds { table, .. } => table.load_full(),
        }
    }
}

// === serving a connection ===

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
    let mut resp = process(req, &cx).await;
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

/// The request-side work: Envoy's header rules, routing, filters, then the action.
async fn process(req: Request<Incoming>, cx: &ConnCtx) -> Response<ResponseBody> {
    let hcm = &cx.hcm;
    if req.version() == Version::HTTP_10 && !hcm.accept_http_10 {
        let mut r =
            LocalReply::new(StatusCode::UPGRADE_REQUIRED, "Upgrade Required", "", "low_version").into_response();
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    let (mut parts, body) = req.into_parts();

    // Path normalisation happens before anything looks at the path (routes, RBAC).
    if hcm.normalize_path || hcm.merge_slashes || hcm.escaped_slashes != crate::http::path::EscapedSlashes::Keep {
        use crate::http::path::{Normalized, normalize};
        let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        match normalize(pq, hcm.normalize_path, hcm.merge_slashes, hcm.escaped_slashes) {
            Normalized::Unchanged => {}
            Normalized::Rewritten(p) => {
                let mut up = parts.uri.clone().into_parts();
                up.path_and_query = p.parse().ok();
                if let Ok(u) = http::Uri::from_parts(up) {
                    parts.uri = u;
                }
            }
            Normalized::Redirect(p) => {
                let mut r = LocalReply::new(StatusCode::TEMPORARY_REDIRECT, "", "", "path_normalization_redirect");
                if let Ok(v) = HeaderValue::from_str(&p) {
                    r.headers.insert(header::LOCATION, v);
                }
                return r.into_response();
            }
            Normalized::Reject => {
                // Envoy treats it as a protocol error: 400 and the connection closes.
                let mut r = LocalReply::new(StatusCode::BAD_REQUEST, "", "", "path_normalization_failed");
                r.headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
                return r.into_response();
            }
        }
    }

    // :authority (h2) or Host (h1).
    // Owned by a clone of the header or URI part (a reference count, no copy): `parts` is
    // changed below while this is in use.
    let (from_uri, from_host);
    let authority: &str = match parts.uri.authority() {
        Some(a) => {
            from_uri = a.clone();
            from_uri.as_str()
        }
        None => {
            from_host = parts.headers.get(header::HOST).cloned();
            from_host.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("")
        }
    };
    if authority.is_empty() {
        return LocalReply::new(StatusCode::BAD_REQUEST, "missing host header", "DPE", "missing_host_header")
            .into_response();
    }

    // Envoy's request header rules (ConnectionManagerUtility::mutateRequestHeaders): the
    // trusted downstream address, x-forwarded-for, internal or external, x-forwarded-proto.
    parts.headers.remove(&hn::X_ENVOY_INTERNAL);
    let (final_remote, allow_trusted_checks) = if hcm.use_remote_address {
        let allow = !parts.headers.contains_key(&hn::X_FORWARDED_FOR);
        let from_xff = match hcm.xff_num_trusted_hops {
            0 => None,
            n => xff_address(&parts.headers, n - 1).map(|(ip, _)| ip),
        };
        if !hcm.skip_xff_append {
            // A loopback peer is replaced by this host's address, as Envoy does.
            let ip = if cx.remote.ip().is_loopback() { cx.worker.shared.local_address } else { cx.remote.ip() };
            let ip = ip.to_string();
            let v = match parts.headers.get(&hn::X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
                Some(prev) if !prev.is_empty() => format!("{prev},{ip}"),
                _ => ip,
            };
            if let Ok(v) = HeaderValue::from_str(&v) {
                parts.headers.insert(hn::X_FORWARDED_FOR, v);
            }
        }
        let scheme = if cx.scheme == "https" { "https" } else { "http" };
        parts.headers.insert(hn::X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
        (Some(from_xff.map(|ip| SocketAddr::new(ip, 0)).unwrap_or(cx.remote)), allow)
    } else {
        match xff_address(&parts.headers, hcm.xff_num_trusted_hops) {
            Some((ip, single)) => (Some(SocketAddr::new(ip, 0)), single),
            None => (None, false),
        }
    };
    if !parts.headers.contains_key(&hn::X_FORWARDED_PROTO) {
        let scheme = if cx.scheme == "https" { "https" } else { "http" };
        parts.headers.insert(hn::X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    }
    let internal =
        allow_trusted_checks && final_remote.is_some_and(|a| hcm.internal_addresses.iter().any(|c| c.contains(a.ip())));
    let downstream_remote = final_remote.unwrap_or(cx.remote);
    let edge = hcm.use_remote_address && !internal;
    if internal {
        parts.headers.insert(hn::X_ENVOY_INTERNAL, HeaderValue::from_static("true"));
    } else {
        if hcm.use_remote_address
            && let Ok(v) = HeaderValue::from_str(&downstream_remote.ip().to_string())
        {
            parts.headers.insert(hn::X_ENVOY_EXTERNAL_ADDRESS, v);
        }
        // External requests may not steer the proxy.
        if hn::has_envoy_headers(&parts.headers) {
            for h in ENVOY_CONTROL_HEADERS {
                parts.headers.remove(*h);
            }
        }
    }
    // x-request-id
    if hcm.generate_request_id
        && (!parts.headers.contains_key(&hn::X_REQUEST_ID) || (edge && !hcm.preserve_external_request_id))
    {
        let id = uuid::Uuid::new_v4();
        let mut buf = uuid::Uuid::encode_buffer();
        if let Ok(v) = HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf)) {
            parts.headers.insert(hn::X_REQUEST_ID, v);
        }
    }
    hcm.xfcc.apply(&mut parts.headers, &cx.conn);
    if let Some(via) = &hcm.via {
        parts.headers.append(header::VIA, via.clone());
    }
    // Cloning a header value shares its bytes, which costs an allocation: only when needed.
    let request_id =
        if hcm.always_set_request_id_in_response { parts.headers.get(&hn::X_REQUEST_ID).cloned() } else { None };

    let mut resp = route_and_forward(cx, &mut parts, body, authority, downstream_remote).await;
    if let Some(id) = request_id {
        resp.headers_mut().insert(hn::X_REQUEST_ID, id);
    }
    resp
}

/// The last XFF address (after trusting `trusted_hops` more), as Envoy's remote address.
/// Envoy's `getLastAddressFromXFF`: the address `skip` entries from the end, and whether XFF
/// had a single entry (only then may it decide internal vs external).
fn xff_address(h: &http::HeaderMap, skip: u32) -> Option<(std::net::IpAddr, bool)> {
    let v = h.get(&hn::X_FORWARDED_FOR)?.to_str().ok()?;
    let parts: Vec<&str> = v.split(',').map(str::trim).collect();
    let idx = parts.len().checked_sub(1 + skip as usize)?;
    let ip = parts.get(idx)?.parse().ok()?;
    Some((ip, parts.len() == 1))
}

/// Envoy's x-envoy-* request controls, removed from external requests.
const ENVOY_CONTROL_HEADERS: &[&str] = &[
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
    "x-envoy-original-url",
];

async fn route_and_forward(
    cx: &ConnCtx,
    parts: &mut http::request::Parts,
    body: Incoming,
    authority: &str,
    downstream_remote: SocketAddr,
) -> Response<ResponseBody> {
    let hcm = &cx.hcm;
    let table = hcm.route_table();
    let path_and_query = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    let scheme_of_uri = parts.uri.scheme().cloned();
    let scheme = scheme_of_uri.as_ref().map(|s| s.as_str()).unwrap_or(cx.scheme);
    let matched = table.as_deref().and_then(|t| {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query.as_str(), None),
        };
        let host_for_match = if hcm.strip_any_host_port { strip_port(authority) } else { authority };
        let vhost = t.virtual_host(host_for_match)?;
        let input = MatchInput {
            headers: RequestHeaders {
                method: parts.method.as_str(),
                path: &path_and_query,
                authority,
                scheme,
                headers: &parts.headers,
            },
            path,
            query,
            random: fastrand::u64(0..1_000_000),
            is_connect: parts.method == http::Method::CONNECT,
        };
        let (route, len) = vhost.route(&input)?;
        Some((RouteRef { table: t, vhost, route }, len))
    });

    // HTTP filters run before the router, whether or not a route matched (as in Envoy).
    let mut rcx = RequestCtx {
        remote: downstream_remote,
        direct_remote: cx.remote,
        local: cx.local,
        conn: &cx.conn,
        route: matched.map(|m| m.0),
        stat_prefix: &hcm.stat_prefix,
        state: http::Extensions::new(),
    };
    let filters = &hcm.filters.filters;
    let mut answered_by = filters.len();
    let mut early: Option<Response<ResponseBody>> = None;
    for (i, f) in filters.iter().enumerate() {
        match f.on_request(&mut rcx, parts) {
            FilterAction::Continue => {}
            FilterAction::Delay(d) => tokio::time::sleep(d).await,
            FilterAction::DelayThen(d, reply) => {
                tokio::time::sleep(d).await;
                answered_by = i;
                early = Some(reply.into_response());
                break;
            }
            FilterAction::Respond(reply) => {
                answered_by = i;
                early = Some(reply.into_response());
                break;
            }
        }
    }
    let logged = (!hcm.access_logs.is_empty())
        .then(|| crate::access_log::request::LoggedRequest::capture(parts, authority, scheme));
    let resp = match early {
        Some(r) => r,
        None => {
            hcm.stats.rq_total.inc();
            match matched {
                None => {
                    hcm.stats.no_route.inc();
                    LocalReply::no_route().into_response()
                }
                Some((rr, matched_len)) => {
                    act(cx, parts, body, rr, matched_len, authority, downstream_remote, &path_and_query).await
                }
            }
        }
    };
    // Response path: the filters before the one that answered, in reverse order.
    let (mut rparts, mut rbody) = resp.into_parts();
    for f in filters[..answered_by].iter().rev() {
        f.on_response(&mut rcx, &mut rparts);
    }
    for f in filters[..answered_by].iter().rev() {
        rbody = f.wrap_body(&mut rcx, &rparts, rbody);
    }
    if let Some(req) = logged {
        note_for_log(&mut rparts.extensions, &rcx, req);
    }
    Response::from_parts(rparts, rbody)
}

/// What the access log needs from routing and the filters, in the response's extensions.
fn note_for_log(ext: &mut http::Extensions, rcx: &RequestCtx<'_>, req: crate::access_log::request::LoggedRequest) {
    use crate::access_log::ResponseInfo;
    use crate::router::action::ClusterSpecifier;
    let mut info = ext.remove::<ResponseInfo>().unwrap_or_default();
    if let Some(f) = rcx.state.get::<crate::filters::http::FilterFlags>() {
        info.flags |= f.0;
    }
    if let Some(r) = rcx.route {
        match &r.route.action {
            Action::Route(a) => {
                if info.upstream_cluster.is_none()
                    && let ClusterSpecifier::Name(n) = &a.cluster
                {
                    info.upstream_cluster = Some(n.clone());
                }
            }
            Action::Direct(_) | Action::Redirect(_) if info.details.is_none() => {
                info.details = Some("direct_response".into());
            }
            _ => {}
        }
        ext.insert(crate::access_log::request::LoggedRoute { route_name: Some(r.route.name.clone()) });
    }
    ext.insert(info);
    ext.insert(req);
}

/// Carries out the matched route's action.
#[allow(clippy::too_many_arguments)]
async fn act(
    cx: &ConnCtx,
    parts: &mut http::request::Parts,
    body: Incoming,
    rr: RouteRef<'_>,
    matched_len: usize,
    authority: &str,
    downstream_remote: SocketAddr,
    path_and_query: &str,
) -> Response<ResponseBody> {
    let hcm = &cx.hcm;
    let RouteRef { table, vhost, route } = rr;
    let format_cx = FormatContext {
        downstream_remote: Some(downstream_remote),
        downstream_direct_remote: Some(cx.remote),
        downstream_local: Some(cx.local),
        protocol: Some(protocol_name(parts.version)),
        route_name: Some(&route.name),
        hostname: Some(&cx.worker.shared.hostname),
        peer_uri_san: cx.conn.peer_uri_sans.first().map(String::as_str),
        local_uri_san: cx.conn.local_uri_sans.first().map(String::as_str),
        server_name: cx.conn.sni.as_deref(),
        ..Default::default()
    };
    let mut resp = match &route.action {
        Action::Direct(d) => {
            hcm.stats.rq_direct_response.inc();
            let mut r = Response::new(ResponseBody::full(d.body.clone()));
            *r.status_mut() = d.status;
            r.extensions_mut().insert(crate::http::local_reply::LocalReplied {
                flag: "",
                details: "direct_response",
                body: d.body.clone(),
            });
            if !d.body.is_empty() {
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            }
            r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(d.body.len()));
            // Envoy points a 201 or 3xx direct response at the request's own URL.
            if d.status == StatusCode::CREATED || d.status.is_redirection() {
                let loc = format!("{}://{authority}{path_and_query}", scheme_for_redirect(parts, cx));
                if let Ok(v) = HeaderValue::from_str(&loc) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
            }
            r
        }
        Action::Redirect(rd) => {
            hcm.stats.rq_direct_response.inc();
            let loc = rd.location(&scheme_for_redirect(parts, cx), authority, path_and_query, matched_len);
            let mut r = Response::new(ResponseBody::empty());
            *r.status_mut() = rd.status;
            r.extensions_mut().insert(crate::http::local_reply::LocalReplied {
                flag: "",
                details: "direct_response",
                body: bytes::Bytes::new(),
            });
            if let Ok(v) = HeaderValue::from_str(&loc) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            r
        }
        Action::NonForwarding => LocalReply::no_route().into_response(),
        Action::Route(action) => {
            let req = crate::filters::http::router::forward::Forward {
                cx,
                table,
                vhost,
                route,
                action,
                matched_len,
                authority,
                downstream_remote,
                format_cx: &format_cx,
            };
            return req.run(parts, body).await;
        }
    };
    let format_cx = FormatContext { request_headers: Some(&parts.headers), ..format_cx };
    apply_response_mutations(table, vhost, route, None, resp.headers_mut(), &format_cx);
    resp
}

/// Response header mutations: most specific first unless the table asks otherwise.
pub fn apply_response_mutations(
    table: &RouteTable,
    vhost: &crate::router::VirtualHost,
    route: &crate::router::route::Route,
    weighted: Option<&crate::router::header_mutation::HeaderMutations>,
    headers: &mut http::HeaderMap,
    fcx: &FormatContext<'_>,
) {
    let mut levels =
        [weighted, Some(&route.response_headers), Some(&vhost.response_headers), Some(&table.response_headers)];
    if table.most_specific_header_mutations_wins {
        levels.reverse();
    }
    let cx = FormatContext { response_headers: None, ..*fcx };
    for m in levels.into_iter().flatten() {
        if !m.is_empty() {
            m.apply(headers, &cx);
        }
    }
}

/// Request header mutations in the same order.
pub fn apply_request_mutations(
    table: &RouteTable,
    vhost: &crate::router::VirtualHost,
    route: &crate::router::route::Route,
    weighted: Option<&crate::router::header_mutation::HeaderMutations>,
    headers: &mut http::HeaderMap,
    fcx: &FormatContext<'_>,
) {
    let mut levels =
        [weighted, Some(&route.request_headers), Some(&vhost.request_headers), Some(&table.request_headers)];
    if table.most_specific_header_mutations_wins {
        levels.reverse();
    }
    // Substitutions read the request headers as they were before any mutation.
    let original = levels.iter().flatten().any(|m| !m.is_empty()).then(|| headers.clone());
    let cx = FormatContext { request_headers: original.as_ref(), ..*fcx };
    for m in levels.into_iter().flatten() {
        if !m.is_empty() {
            m.apply(headers, &cx);
        }
    }
}

fn scheme_for_redirect(parts: &http::request::Parts, cx: &ConnCtx) -> String {
    parts
        .headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| cx.scheme.to_string())
}

pub fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

fn strip_port(host: &str) -> &str {
    if host.ends_with(']') {
        return host;
    }
    match host.rfind(':') {
        Some(i) if !host[..i].contains(':') => &host[..i],
        _ => host,
    }
}
