//! One health check against one host: HTTP (HTTP/1.1 or HTTP/2), TCP (send and receive
//! payloads, or connect only) and gRPC (`grpc.health.v1.Health/Check` over HTTP/2), each over a
//! connection opened like a normal upstream one (the cluster's transport socket), reused between
//! checks unless `reuse_connection` is false. Whatever the host answers (garbage, a reset, a
//! close, nothing) is a failed check, never an error; the caller bounds each check by `timeout`.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Failure, GrpcCheck, HealthCheckConfig, HttpCheck, Kind, Outcome, TcpCheck};
use crate::formatter::FormatContext;
use crate::upstream::cluster::Cluster;
use crate::upstream::connect::{UpstreamIo, connect_health_check};
use crate::upstream::host::{Host, flag};

/// The most of a response body a check reads; a longer one closes the connection.
const MAX_BODY: usize = 1 << 20;

const USER_AGENT: &str = "Envoy/HC";

/// A session's connection, kept between checks.
#[derive(Default)]
pub enum Conn {
    #[default]
    None,
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
    Tcp(Box<TokioIo<UpstreamIo>>),
}

impl Conn {
    pub fn close(&mut self) {
        *self = Conn::None;
    }
}

const NETWORK: Outcome = Outcome::Failure { kind: Failure::Network, retriable: false };
const ACTIVE: Outcome = Outcome::Failure { kind: Failure::Active, retriable: false };

/// Runs one check of `host`.
pub async fn check(c: &Cluster, cfg: &HealthCheckConfig, host: &Host, conn: &mut Conn) -> Outcome {
    let o = match &cfg.kind {
        Kind::Http(h) => http(c, h, host, conn).await,
        Kind::Tcp(t) => tcp(c, t, host, conn).await,
        Kind::Grpc(g) => grpc(c, g, host, conn).await,
    };
    if !cfg.reuse_connection {
        conn.close();
    }
    o
}

/// The Host / :authority of a check: the endpoint's health check hostname, else the checker's
/// `host`, else the cluster's name (Envoy's `HealthCheckerFactory::getHostname`).
fn hostname<'a>(c: &'a Cluster, host: &'a Host, configured: &'a str) -> &'a str {
    if !host.hc.hostname.is_empty() {
        &host.hc.hostname
    } else if !configured.is_empty() {
        configured
    } else {
        &c.name
    }
}

/// An HTTP connection for the check: the kept one if it is still open, else a new one.
async fn http_conn(c: &Cluster, host: &Host, http2: bool, conn: &mut Conn) -> Result<(), Outcome> {
    let open = match conn {
        Conn::H1(s) => !s.is_closed() && !http2,
        Conn::H2(s) => !s.is_closed() && http2,
        _ => false,
    };
    if open {
        return Ok(());
    }
    conn.close();
    let io = connect_health_check(c, host, host.hc.port).await.map_err(|_| NETWORK)?;
    if http2 {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake::<_, Full<Bytes>>(io)
            .await
            .map_err(|_| NETWORK)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        *conn = Conn::H2(sender);
    } else {
        let (sender, connection) = http1::handshake::<_, Full<Bytes>>(io).await.map_err(|_| NETWORK)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        *conn = Conn::H1(sender);
    }
    Ok(())
}

/// Sends `req` on the session's connection; a send error (reset, close) drops it.
async fn send(conn: &mut Conn, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, Outcome> {
    let r = match conn {
        Conn::H1(s) => match s.ready().await {
            Ok(()) => s.send_request(req).await,
            Err(e) => Err(e),
        },
        Conn::H2(s) => match s.ready().await {
            Ok(()) => s.send_request(req).await,
            Err(e) => Err(e),
        },
        _ => return Err(NETWORK),
    };
    r.map_err(|_| {
        conn.close();
        NETWORK
    })
}

/// Reads a response body (at most `keep` bytes kept) and its trailers; None on a reset or a
/// body over [`MAX_BODY`].
async fn read_body(body: &mut Incoming, keep: usize) -> Option<(BytesMut, Option<http::HeaderMap>)> {
    let mut data = BytesMut::new();
    let mut seen = 0usize;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.ok()?;
        match frame.into_data() {
            Ok(mut d) => {
                seen += d.remaining();
                if seen > MAX_BODY {
                    return None;
                }
                let take = keep.saturating_sub(data.len()).min(d.remaining());
                data.extend_from_slice(&d.copy_to_bytes(take));
            }
            Err(f) => {
                if let Ok(t) = f.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    Some((data, trailers))
}

/// Whether `segments` occur in `data` in order (Envoy's `PayloadMatcher::match`).
pub fn payload_matches(segments: &[Vec<u8>], data: &[u8]) -> bool {
    let mut start = 0;
    for s in segments {
        if s.is_empty() {
            continue;
        }
        match data.get(start..).and_then(|d| d.windows(s.len()).position(|w| w == &s[..])) {
            Some(i) => start += i + s.len(),
            None => return false,
        }
    }
    true
}

fn in_ranges(status: u16, ranges: &[(u16, u16)]) -> bool {
    ranges.iter().any(|&(a, b)| status >= a && status < b)
}

/// The request's URI: origin-form for HTTP/1.1 (the Host header carries the name), absolute for
/// HTTP/2 so the :authority and :scheme pseudo-headers are sent.
fn uri(http2: bool, tls: bool, authority: &str, path: &str) -> Option<http::Uri> {
    if !http2 {
        return path.parse().ok();
    }
    http::Uri::builder()
        .scheme(if tls { "https" } else { "http" })
        .authority(authority)
        .path_and_query(path)
        .build()
        .ok()
}

async fn http(c: &Cluster, h: &HttpCheck, host: &Host, conn: &mut Conn) -> Outcome {
    if let Err(o) = http_conn(c, host, h.http2, conn).await {
        return o;
    }
    let name = hostname(c, host, &h.host);
    let tls = c.tls_for(host).is_some();
    let Some(uri) = uri(h.http2, tls, name, &h.path) else { return NETWORK };
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.method_mut() = h.method.clone();
    *req.uri_mut() = uri;
    if !h.http2 {
        *req.version_mut() = http::Version::HTTP_11;
        if let Ok(v) = HeaderValue::from_str(name) {
            req.headers_mut().insert(header::HOST, v);
        }
    } else {
        *req.version_mut() = http::Version::HTTP_2;
    }
    req.headers_mut().insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    let cx = FormatContext {
        upstream_remote: Some(host.address),
        upstream_cluster: Some(&c.name),
        hostname: Some(&host.hostname),
        ..Default::default()
    };
    h.headers.apply(req.headers_mut(), &cx);
    let resp = match send(conn, req).await {
        Ok(r) => r,
        Err(o) => return o,
    };
    let (parts, mut body) = resp.into_parts();
    let keep = if h.receive.is_empty() {
        0
    } else if h.response_buffer_size == 0 {
        MAX_BODY
    } else {
        h.response_buffer_size
    };
    let Some((data, _)) = read_body(&mut body, keep).await else {
        conn.close();
        return NETWORK;
    };
    let closes = parts.headers.get(header::CONNECTION).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    if closes {
        conn.close();
    }
    let status = parts.status.as_u16();
    let immediate_fail = parts.headers.contains_key("x-envoy-immediate-health-check-fail");
    if !h.receive.is_empty() && !payload_matches(&h.receive, &data) {
        if immediate_fail {
            host.set_flag(flag::EXCLUDED_VIA_IMMEDIATE_HC_FAIL, true);
        }
        return ACTIVE;
    }
    if !in_ranges(status, &h.expected) {
        if immediate_fail {
            host.set_flag(flag::EXCLUDED_VIA_IMMEDIATE_HC_FAIL, true);
        }
        return Outcome::Failure { kind: Failure::Active, retriable: in_ranges(status, &h.retriable) };
    }
    let degraded = parts.headers.contains_key("x-envoy-degraded");
    if let Some(m) = &h.service_name_matcher
        && let Some(hc) = c.health.as_ref()
    {
        hc.stats.verify_cluster.inc();
        let served =
            parts.headers.get("x-envoy-upstream-healthchecked-cluster").and_then(|v| v.to_str().ok()).unwrap_or("");
        if !m.matches(served) {
            return ACTIVE;
        }
    }
    Outcome::Success { degraded }
}

async fn tcp(c: &Cluster, t: &TcpCheck, host: &Host, conn: &mut Conn) -> Outcome {
    if !matches!(conn, Conn::Tcp(_)) {
        match connect_health_check(c, host, host.hc.port).await {
            Ok(io) => *conn = Conn::Tcp(Box::new(io)),
            Err(_) => return NETWORK,
        }
    }
    let Conn::Tcp(io) = conn else { return NETWORK };
    let io = io.inner_mut();
    if !t.send.is_empty() && io.write_all(&t.send).await.is_err() {
        conn.close();
        return NETWORK;
    }
    if t.receive.is_empty() {
        // Connect only: success, and the connection is closed (as Envoy does).
        conn.close();
        return Outcome::Success { degraded: false };
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                conn.close();
                return NETWORK;
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if payload_matches(&t.receive, &buf) {
                    return Outcome::Success { degraded: false };
                }
                if buf.len() > MAX_BODY {
                    // Never matches: wait for the timeout, as Envoy keeps buffering.
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

const SERVING: i32 = 1;

/// The grpc-status of a response: its trailers, else its headers (trailers-only).
fn grpc_status(headers: &http::HeaderMap, trailers: Option<&http::HeaderMap>) -> Option<u32> {
    trailers
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok())
}

async fn grpc(c: &Cluster, g: &GrpcCheck, host: &Host, conn: &mut Conn) -> Outcome {
    use prost::Message;
    if let Err(o) = http_conn(c, host, true, conn).await {
        return o;
    }
    let authority = if g.authority.is_empty() { hostname(c, host, "") } else { &g.authority };
    let tls = c.tls_for(host).is_some();
    let Some(uri) = uri(true, tls, authority, "/grpc.health.v1.Health/Check") else { return NETWORK };
    let msg = HealthCheckRequest { service: g.service_name.clone() }.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + msg.len());
    frame.push(0);
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    let mut req = Request::new(Full::new(Bytes::from(frame)));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_2;
    let hs = req.headers_mut();
    hs.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    hs.insert(header::TE, HeaderValue::from_static("trailers"));
    hs.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    let resp = match send(conn, req).await {
        Ok(r) => r,
        Err(o) => return o,
    };
    let (parts, mut body) = resp.into_parts();
    let Some((data, trailers)) = read_body(&mut body, MAX_BODY).await else {
        conn.close();
        return NETWORK;
    };
    if parts.status != http::StatusCode::OK {
        return ACTIVE;
    }
    let grpc_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v == "application/grpc" || v.starts_with("application/grpc+") || v.starts_with("application/grpc;")
    });
    if !grpc_type || grpc_status(&parts.headers, trailers.as_ref()) != Some(0) {
        return ACTIVE;
    }
    // One uncompressed message: the 5-byte prefix, then the response.
    let (Some(&0), Some(len)) = (data.first(), data.get(1..5)) else { return ACTIVE };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let Some(msg) = data.get(5..5 + len) else { return ACTIVE };
    match HealthCheckResponse::decode(msg) {
        Ok(r) if r.status == SERVING => Outcome::Success { degraded: false },
        _ => ACTIVE,
    }
}
