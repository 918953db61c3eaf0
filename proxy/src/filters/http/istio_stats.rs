//! Istio's HTTP stats filter (`istio.stats`, `stats.PluginConfig`): `istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes` and `istio_response_bytes` in the
//! `istiocustom` stat namespace, with Istio's standard labels (filters::common::istio_stats),
//! rendered by `/stats/prometheus` as `istio_requests_total{reporter="destination",...}`.
//!
//! Recorded when the response has been sent (its body ended or the client went away, flag
//! `DC`), as istio-proxy does from its access-log hook. The peer: at the destination the
//! downstream's `x-envoy-peer-metadata` headers (kept by the peer metadata filter), else what the
//! TCP metadata exchange brought, and its certificate's URI SAN; at the source the upstream's
//! response headers. Sizes are Istio's `request.total_size` / `response.total_size`: header
//! names and values plus the body (the request body by its `content-length`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use base64::Engine;
use bytes::Bytes;
use envoy_types::pb::google::protobuf::{Any, Struct};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use prost::Message;

use super::peer_metadata::{DownstreamPeer, METADATA, METADATA_ID, UpstreamPeer};
use super::{FilterAction, HttpFilter, Parts, RequestCtx};
use crate::access_log::{ResponseFlags, ResponseInfo};
use crate::config::{BuildCtx, ConfigError};
use crate::filters::common::istio_stats::{
    self as common, Key, Metric, Metrics, Protocol, Settings, Workload, dimensions,
};
use crate::http::body::{BoxError, ResponseBody};
use crate::stats::{Counter, Histogram};

pub use common::TYPE;

/// The handles of one label set (None: the metric is dropped by the config).
pub struct Handles {
    requests: Option<Counter>,
    duration: Option<Histogram>,
    request_bytes: Option<Histogram>,
    response_bytes: Option<Histogram>,
}

pub struct IstioStats {
    name: String,
    /// Shared with the response bodies, which record their request when they end.
    inner: Arc<Metrics<Handles>>,
}

pub fn factory(name: &str, any: &Any, cx: &BuildCtx) -> Result<Arc<IstioStats>, ConfigError> {
    Ok(Arc::new(IstioStats {
        name: name.to_string(),
        inner: Arc::new(Metrics::new(cx.stats.clone(), Settings::from_any(any, cx)?)),
    }))
}

/// What the filter remembers from the request.
#[derive(Clone)]
struct Seen {
    start: Instant,
    grpc: bool,
    authority: Option<String>,
    request_bytes: u64,
    /// The request attributes the `dimensions` read, interned.
    dims: [u32; dimensions::MAX],
}

/// The peer and principals (interned), read on the response headers (before the peer metadata
/// filter strips the upstream's headers).
#[derive(Clone, Copy)]
struct Peer {
    peer: u32,
    peer_san: u32,
    local_san: u32,
}

/// Header bytes as Envoy's `HeaderMap::byteSize` counts them: names and values.
fn header_bytes(h: &HeaderMap) -> u64 {
    h.iter().map(|(k, v)| (k.as_str().len() + v.len()) as u64).sum()
}

fn decode_header_metadata(h: &HeaderMap) -> Option<Struct> {
    let v = h.get(&METADATA)?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(v.as_bytes()).ok()?;
    Struct::decode(bytes.as_slice()).ok()
}

fn grpc_status_of(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()
}

/// Envoy's `Grpc::Utility::httpToGrpcStatus`, for a gRPC response without `grpc-status`.
fn http_to_grpc(status: u16) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

impl HttpFilter for IstioStats {
    fn name(&self) -> &str {
        &self.name
    }

    /// Istio's stats filter is an access-log handler in Envoy: it counts every stream, local
    /// replies of earlier filters included.
    fn observes_every_stream(&self) -> bool {
        true
    }

    fn on_request(&self, cx: &mut RequestCtx<'_>, req: &mut Parts) -> FilterAction {
        let grpc =
            req.headers.get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let authority = req
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| req.headers.get(http::header::HOST).and_then(|v| v.to_str().ok()).map(str::to_string));
        // `:method`, `:path`, `:authority` and `:scheme` count as headers, as in Envoy.
        let pseudo = 7 + req.method.as_str().len() + 5 + req.uri.path_and_query().map_or(1, |p| p.as_str().len());
        let pseudo =
            pseudo + authority.as_ref().map_or(0, |a| 10 + a.len()) + 7 + req.uri.scheme_str().unwrap_or("http").len();
        let host_counted = req.headers.get(http::header::HOST).map_or(0, |v| 4 + v.len());
        let body = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let request_bytes = header_bytes(&req.headers).saturating_sub(host_counted as u64) + pseudo as u64 + body;
        let dims = self.inner.dims(|a| a.read(req));
        cx.state.insert(Seen { start: Instant::now(), grpc, authority, request_bytes, dims });
        FilterAction::Continue
    }

    fn on_response(&self, cx: &mut RequestCtx<'_>, resp: &mut http::response::Parts) {
        let m = &self.inner;
        let peer = if m.settings.destination {
            // The downstream peer: its headers, else the TCP metadata exchange.
            let from_headers = cx.state.get::<DownstreamPeer>().filter(|p| p.id.is_some() || p.metadata.is_some());
            let peer = match (from_headers, cx.conn.peer_metadata.as_ref()) {
                (Some(p), _) => m.peer(p.id.as_deref(), || Workload::from_metadata(p.metadata.as_ref())),
                (None, Some(mx)) => m.peer(Some(&mx.id), || Workload::from_metadata(Some(&mx.metadata))),
                (None, None) => m.peer(None, Workload::default),
            };
            Peer {
                peer,
                peer_san: m.string(cx.conn.peer_uri_sans.first().map_or("", String::as_str)),
                local_san: m.string(cx.conn.local_uri_sans.first().map_or("", String::as_str)),
            }
        } else {
            // The upstream answered with its headers (kept by the peer metadata filter, or still
            // on the response: that filter runs after this one on responses).
            let peer = match cx.state.get::<UpstreamPeer>() {
                Some(p) => m.peer(p.id.as_deref(), || Workload::from_metadata(p.metadata.as_ref())),
                None => {
                    let id = resp.headers.get(&METADATA_ID).and_then(|v| v.to_str().ok());
                    m.peer(id, || Workload::from_metadata(decode_header_metadata(&resp.headers).as_ref()))
                }
            };
            let none = m.string("");
            Peer { peer, peer_san: none, local_san: none }
        };
        cx.state.insert(peer);
    }

    fn wrap_body(&self, cx: &mut RequestCtx<'_>, resp: &http::response::Parts, body: ResponseBody) -> ResponseBody {
        let Some(seen) = cx.state.remove::<Seen>() else { return body };
        let m = &self.inner;
        let peer = match cx.state.remove::<Peer>() {
            Some(p) => p,
            None => {
                let none = m.string("");
                Peer { peer: m.peer(None, Workload::default), peer_san: none, local_san: none }
            }
        };
        let info = resp.extensions.get::<ResponseInfo>();
        let mut flags = info.map(|i| i.flags).unwrap_or_default();
        if let Some(f) = cx.state.get::<super::FilterFlags>() {
            flags |= f.0;
        }
        let cluster = info.and_then(|i| i.upstream_cluster.as_deref()).or_else(|| route_cluster(cx));
        let route_name = cx.route.map(|r| &*r.route.name);
        let (service_host, service_name) = common::service(
            route_name,
            cluster,
            info.and_then(|i| i.upstream_cluster_metadata.as_deref()),
            seen.authority.as_deref(),
            m.settings.host_fallback,
        );
        let status = resp.status.as_u16();
        let key = Key {
            peer: peer.peer,
            peer_san: peer.peer_san,
            local_san: peer.local_san,
            service_host: m.string(service_host),
            service_name: m.string(service_name),
            protocol: if seen.grpc { Protocol::Grpc } else { Protocol::Http },
            response_code: status,
            grpc_status: None,
            flags,
            dims: seen.dims,
        };
        // `:status` counts as a header.
        let header_bytes = header_bytes(&resp.headers) + 7 + 3;
        let grpc_in_headers = if seen.grpc { grpc_status_of(&resp.headers) } else { None };
        ResponseBody::Boxed(Box::pin(StatsBody {
            inner: body,
            pending: Some(Pending {
                stats: self.inner.clone(),
                key,
                start: seen.start,
                request_bytes: seen.request_bytes,
                response_bytes: header_bytes,
                grpc: seen.grpc,
                grpc_status: grpc_in_headers,
            }),
        }))
    }
}

/// The route's single cluster, for local replies that never reached an upstream.
fn route_cluster<'a>(cx: &RequestCtx<'a>) -> Option<&'a str> {
    match &cx.route?.route.action {
        crate::router::route::Action::Route(a) => match &a.cluster {
            crate::router::action::ClusterSpecifier::Name(n) => Some(n),
            _ => None,
        },
        _ => None,
    }
}

/// Records one finished request: a lock-free lookup of its label set's handles.
fn record(m: &Metrics<Handles>, key: Key, duration_ms: f64, request_bytes: u64, response_bytes: u64) {
    let h = m.handles(key, |l| Handles {
        requests: l.counter(Metric::RequestsTotal),
        duration: l.histogram(Metric::RequestDuration),
        request_bytes: l.histogram(Metric::RequestBytes),
        response_bytes: l.histogram(Metric::ResponseBytes),
    });
    if let Some(c) = &h.requests {
        c.inc();
    }
    if let Some(d) = &h.duration {
        d.record(duration_ms);
    }
    if let Some(b) = &h.request_bytes {
        b.record(request_bytes as f64);
    }
    if let Some(b) = &h.response_bytes {
        b.record(response_bytes as f64);
    }
}

/// A request waiting for its response body to end.
struct Pending {
    stats: Arc<Metrics<Handles>>,
    key: Key,
    start: Instant,
    request_bytes: u64,
    /// Header bytes so far; body and trailer bytes are added as they pass.
    response_bytes: u64,
    grpc: bool,
    grpc_status: Option<u32>,
}

/// The response body, counted; records the request when it ends or is dropped.
struct StatsBody {
    inner: ResponseBody,
    pending: Option<Pending>,
}

impl StatsBody {
    fn finish(&mut self, cut_off: bool) {
        let Some(mut p) = self.pending.take() else { return };
        if cut_off {
            p.key.flags |= ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION;
        }
        if p.grpc {
            p.key.grpc_status = Some(p.grpc_status.unwrap_or_else(|| http_to_grpc(p.key.response_code)));
        }
        let ms = p.start.elapsed().as_secs_f64() * 1000.0;
        record(&p.stats, p.key, ms, p.request_bytes, p.response_bytes);
    }
}

impl Body for StatsBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(p) = this.pending.as_mut() {
                    if let Some(d) = f.data_ref() {
                        p.response_bytes += d.len() as u64;
                    } else if let Some(t) = f.trailers_ref() {
                        p.response_bytes += header_bytes(t);
                        if p.grpc && p.grpc_status.is_none() {
                            p.grpc_status = grpc_status_of(t);
                        }
                    }
                }
                if this.inner.is_end_stream() {
                    this.finish(false);
                }
            }
            Poll::Ready(None) => this.finish(false),
            Poll::Ready(Some(Err(_))) => {
                if let Some(p) = this.pending.as_mut() {
                    p.key.flags |= ResponseFlags::from_short("UR").unwrap_or_default();
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

impl Drop for StatsBody {
    fn drop(&mut self) {
        // Dropped before its end: the client went away (HEAD and empty bodies end here normally).
        let cut_off = !self.inner.is_end_stream();
        self.finish(cut_off);
    }
}
