//! `envoy.filters.http.compressor`: compresses response bodies with the configured library
//! (`envoy.compression.{gzip,brotli,zstd}.compressor`), streaming, one flush per upstream chunk.
//!
//! Envoy's decision rules: the response must be big enough (`min_content_length`, default 30,
//! by `content-length` when present), of an allowed content type (Envoy's default list unless
//! configured), not already encoded, not `cache-control: no-transform`, not carrying an etag when
//! `disable_on_etag_header`, and have a body (not HEAD, not 204/304). Accept-Encoding is negotiated
//! once per request across every compressor filter of the chain (highest q-value wins; `*` picks
//! the first registered filter; `choose_first` breaks ties). Compressible responses get
//! `vary: accept-encoding` even when not compressed.

mod encoder;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use envoy_types::pb::envoy::extensions::filters::http::compressor::v3::{
    Compressor, CompressorPerRoute, compressor::CommonDirectionConfig, compressor_per_route,
};
use envoy_types::pb::google::protobuf::Any;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, header};
use http_body::{Body, Frame, SizeHint};

use super::{HttpFilter, RequestCtx};
use crate::config::{BuildCtx, ConfigError};
use crate::http::body::{BoxError, ResponseBody};
use crate::matcher::StringMatcher;
use crate::stats::Counter;
pub use encoder::Library;
use encoder::StreamEncoder;

pub const TYPE: &str = "envoy.extensions.filters.http.compressor.v3.Compressor";
pub const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.compressor.v3.CompressorPerRoute";

/// Envoy's default compressible content types.
const DEFAULT_CONTENT_TYPES: &[&str] = &[
    "text/html",
    "text/plain",
    "text/css",
    "application/javascript",
    "application/x-javascript",
    "text/javascript",
    "text/x-javascript",
    "text/ecmascript",
    "text/js",
    "text/jscript",
    "text/x-js",
    "application/ecmascript",
    "application/x-json",
    "application/xml",
    "application/json",
    "image/svg+xml",
    "text/xml",
    "application/xhtml+xml",
    "application/grpc-web",
    "application/grpc-web+proto",
];

const DEFAULT_MIN_CONTENT_LENGTH: u64 = 30;

pub struct CompressorStats {
    compressed: Counter,
    not_compressed: Counter,
    total_uncompressed_bytes: Counter,
    total_compressed_bytes: Counter,
    content_length_too_small: Counter,
    no_accept_header: Counter,
    header_identity: Counter,
    header_compressor_used: Counter,
    header_compressor_overshadowed: Counter,
    header_wildcard: Counter,
    header_not_valid: Counter,
    not_compressed_etag: Counter,
}

/// One compressor filter's settings (response direction; request compression is not supported).
pub struct CompressorConfig {
    library: Library,
    encoding: &'static str,
    enabled: bool,
    min_content_length: u64,
    /// Lowercased; empty means any.
    content_types: Vec<String>,
    content_type_matchers: Vec<StringMatcher>,
    disable_on_etag: bool,
    weaken_etag: bool,
    remove_accept_encoding: bool,
    uncompressible_codes: Vec<u16>,
    choose_first: bool,
    stats: Arc<CompressorStats>,
}

pub struct CompressorFilter {
    name: String,
    config: Arc<CompressorConfig>,
}

/// `CompressorPerRoute`.
#[derive(Debug)]
pub struct PerRoute {
    enabled: bool,
    remove_accept_encoding: Option<bool>,
}

pub fn factory(name: &str, any: &Any, cx: &BuildCtx) -> Result<Arc<dyn HttpFilter>, ConfigError> {
    let p: Compressor = xds_client::any::unpack(any).map_err(|e| ConfigError::new("typed_config", e.to_string()))?;
    let config = CompressorConfig::from_proto(&p, cx).map_err(|e| e.within("typed_config"))?;
    Ok(Arc::new(CompressorFilter { name: name.to_string(), config: Arc::new(config) }))
}

pub fn per_route_factory(any: &Any, _cx: &BuildCtx) -> Result<Arc<dyn std::any::Any + Send + Sync>, ConfigError> {
    let p: CompressorPerRoute = xds_client::any::unpack(any).map_err(|e| ConfigError::new("", e.to_string()))?;
    let pr = match p.r#override {
        Some(compressor_per_route::Override::Disabled(d)) => {
            if !d {
                return Err(ConfigError::new("disabled", "value must equal true"));
            }
            PerRoute { enabled: false, remove_accept_encoding: None }
        }
        Some(compressor_per_route::Override::Overrides(o)) => {
            if o.compressor_library.is_some() {
                return Err(ConfigError::new(
                    "overrides.compressor_library",
                    "per-route compressor libraries are not supported",
                ));
            }
            match o.response_direction_config {
                Some(r) => {
                    PerRoute { enabled: true, remove_accept_encoding: r.remove_accept_encoding_header.map(|b| b.value) }
                }
                None => return Ok(Arc::new(None::<PerRoute>)),
            }
        }
        None => return Err(ConfigError::new("override", "value is required")),
    };
    Ok(Arc::new(Some(pr)))
}

impl CompressorConfig {
    pub fn from_proto(p: &Compressor, cx: &BuildCtx) -> Result<Self, ConfigError> {
        let Some(lib) = &p.compressor_library else {
            return Err(ConfigError::new("compressor_library", "value is required"));
        };
        let library = Library::from_extension(lib).map_err(|e| e.within("compressor_library"))?;
        if let Some(req) = &p.request_direction_config {
            let enabled = req
                .common_config
                .as_ref()
                .and_then(|c| c.enabled.as_ref())
                .map(|f| f.default_value.map(|b| b.value).unwrap_or(true))
                .unwrap_or(true);
            if enabled {
                return Err(ConfigError::new(
                    "request_direction_config",
                    "request body compression is not supported (set common_config.enabled to false)",
                ));
            }
        }
        // The response settings: `response_direction_config`, else the deprecated top-level fields.
        let (common, disable_on_etag, remove_ae, weaken, codes, response_prefix) = match &p.response_direction_config {
            Some(r) => {
                if r.status_header_enabled {
                    return Err(ConfigError::new(
                        "response_direction_config.status_header_enabled",
                        "the compression status header is not supported",
                    ));
                }
                (
                    r.common_config.clone().unwrap_or_default(),
                    r.disable_on_etag_header,
                    r.remove_accept_encoding_header,
                    r.weaken_etag_on_compress,
                    r.uncompressible_response_codes.clone(),
                    "response.",
                )
            }
            None => (
                CommonDirectionConfig {
                    enabled: p.runtime_enabled.clone(),
                    min_content_length: p.content_length,
                    content_type: p.content_type.clone(),
                    content_type_matcher: Vec::new(),
                },
                p.disable_on_etag_header,
                p.remove_accept_encoding_header,
                false,
                Vec::new(),
                "",
            ),
        };
        let mut uncompressible_codes = Vec::with_capacity(codes.len());
        for c in codes {
            if !(200..600).contains(&c) {
                return Err(ConfigError::new(
                    "response_direction_config.uncompressible_response_codes",
                    format!("value must be inside range [200, 600): {c}"),
                ));
            }
            uncompressible_codes.push(c as u16);
        }
        let content_type_matchers = common
            .content_type_matcher
            .iter()
            .enumerate()
            .map(|(i, m)| StringMatcher::from_proto(m, &format!("content_type_matcher[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let content_types: Vec<String> = if common.content_type.is_empty() && content_type_matchers.is_empty() {
            DEFAULT_CONTENT_TYPES.iter().map(|s| s.to_string()).collect()
        } else {
            common.content_type.iter().map(|s| s.trim().to_ascii_lowercase()).collect()
        };
        let prefix = format!(
            "http.{}.compressor.{}.{}.",
            cx.http_stat_prefix.as_deref().unwrap_or(""),
            lib.name,
            library.stats_prefix()
        );
        let c = |n: &str| cx.stats.counter(&format!("{prefix}{n}"));
        let d = |n: &str| cx.stats.counter(&format!("{prefix}{response_prefix}{n}"));
        let stats = CompressorStats {
            compressed: d("compressed"),
            not_compressed: d("not_compressed"),
            total_uncompressed_bytes: d("total_uncompressed_bytes"),
            total_compressed_bytes: d("total_compressed_bytes"),
            content_length_too_small: d("content_length_too_small"),
            no_accept_header: c("no_accept_header"),
            header_identity: c("header_identity"),
            header_compressor_used: c("header_compressor_used"),
            header_compressor_overshadowed: c("header_compressor_overshadowed"),
            header_wildcard: c("header_wildcard"),
            header_not_valid: c("header_not_valid"),
            not_compressed_etag: c("not_compressed_etag"),
        };
        Ok(CompressorConfig {
            encoding: library.content_encoding(),
            library,
            enabled: common.enabled.as_ref().map(|f| f.default_value.map(|b| b.value).unwrap_or(true)).unwrap_or(true),
            min_content_length: common
                .min_content_length
                .map(|v| u64::from(v.value))
                .filter(|v| *v > 0)
                .unwrap_or(DEFAULT_MIN_CONTENT_LENGTH),
            content_types,
            content_type_matchers,
            disable_on_etag,
            weaken_etag: weaken,
            remove_accept_encoding: remove_ae,
            uncompressible_codes,
            choose_first: p.choose_first,
            stats: Arc::new(stats),
        })
    }

    /// The media type (no parameters), lowercased.
    fn media_type(h: &HeaderMap) -> Option<String> {
        let v = h.get(header::CONTENT_TYPE)?.to_str().ok()?;
        Some(v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
    }

    fn content_type_allowed(&self, media: Option<&str>) -> bool {
        match media {
            None => true,
            Some(m) => {
                self.content_types.iter().any(|t| t == m) || self.content_type_matchers.iter().any(|x| x.matches(m))
            }
        }
    }

    fn min_length_ok(&self, h: &HeaderMap) -> bool {
        match h.get(header::CONTENT_LENGTH) {
            None => true,
            Some(v) => {
                let ok = v
                    .to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .is_some_and(|n| n >= self.min_content_length);
                if !ok {
                    self.stats.content_length_too_small.inc();
                }
                ok
            }
        }
    }
}

// === per-request shared state ===

/// What the compressor filters of one request share: who registered (in chain order) and the
/// negotiated encoding once a filter decided.
#[derive(Clone, Default)]
struct Registry {
    /// (encoding, choose_first, config) in registration order.
    filters: Vec<Arc<CompressorConfig>>,
    /// `Accept-Encoding` as the request had it.
    accept_encoding: Option<Arc<str>>,
    is_head: bool,
    decision: Option<Decision>,
}

#[derive(Clone, Debug, PartialEq)]
enum HeaderStat {
    ValidCompressor,
    Identity,
    Wildcard,
    NotValid,
}

#[derive(Clone, Debug)]
struct Decision {
    encoding: String,
    stat: HeaderStat,
}

/// The encoding this filter will use for the response (set in `on_response`, used by `wrap_body`).
#[derive(Clone)]
struct Chosen(Library, Arc<CompressorStats>, usize);

/// Envoy's choice among the registered compressors for an `Accept-Encoding` value.
fn choose_encoding(accept: &str, filters: &[Arc<CompressorConfig>], media: Option<&str>) -> Decision {
    use std::collections::BTreeMap;
    // encoding -> (registration order, choose_first)
    let mut allowed: BTreeMap<String, (usize, bool)> = BTreeMap::new();
    let mut count = 0;
    for f in filters {
        if media.is_some_and(|m| !m.is_empty()) && !f.content_type_allowed(media) {
            continue;
        }
        if !allowed.contains_key(f.encoding) {
            allowed.insert(f.encoding.to_string(), (count, f.choose_first));
            count += 1;
        }
    }
    let mut pairs: Vec<(String, f32)> = Vec::new();
    for token in accept.split(',').filter(|t| !t.trim().is_empty()) {
        let (name, params) = match token.split_once(';') {
            Some((n, p)) => (n.trim(), Some(p)),
            None => (token.trim(), None),
        };
        let mut q = 1.0f32;
        if let Some(params) = params
            && let Some((k, v)) = params.split_once('=')
            && k.trim().eq_ignore_ascii_case("q")
        {
            match v.trim().parse::<f32>() {
                Ok(v) => q = v,
                Err(_) => continue,
            }
        }
        pairs.push((name.to_string(), q));
        if q == 0.0 {
            allowed.remove(name);
        }
    }
    let not_valid = || Decision { encoding: "identity".into(), stat: HeaderStat::NotValid };
    if pairs.is_empty() || allowed.is_empty() {
        return not_valid();
    }
    let mut choice: (String, f32) = ("identity".into(), 0.0);
    for (name, q) in &pairs {
        if allowed.contains_key(name.as_str()) || name == "identity" || name == "*" {
            let better = *q > choice.1 || (*q == choice.1 && allowed.entry(name.clone()).or_insert((0, false)).1);
            if better {
                choice = (name.clone(), *q);
            }
        }
    }
    if choice.1 == 0.0 {
        return not_valid();
    }
    if choice.0 == "identity" {
        return Decision { encoding: "identity".into(), stat: HeaderStat::Identity };
    }
    if choice.0 == "*" {
        let first = allowed.iter().min_by_key(|(_, (order, _))| *order).map(|(e, _)| e.clone()).unwrap_or_default();
        return Decision { encoding: first, stat: HeaderStat::Wildcard };
    }
    Decision { encoding: choice.0, stat: HeaderStat::ValidCompressor }
}

fn has_token(v: &str, token: &str) -> bool {
    v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl CompressorFilter {
    fn per_route<'a>(&self, cx: &'a RequestCtx<'_>) -> Option<&'a PerRoute> {
        cx.per_route::<Option<PerRoute>>(&self.name).and_then(|p| p.as_ref())
    }

    fn enabled(&self, cx: &RequestCtx<'_>) -> bool {
        match self.per_route(cx) {
            Some(p) => p.enabled,
            None => self.config.enabled,
        }
    }

    fn remove_accept_encoding(&self, cx: &RequestCtx<'_>) -> bool {
        self.per_route(cx).and_then(|p| p.remove_accept_encoding).unwrap_or(self.config.remove_accept_encoding)
    }

    /// Envoy's `shouldCompress`: counts the Accept-Encoding stats and says whether this filter won.
    fn should_compress(&self, d: &Decision) -> bool {
        let mine = d.encoding.eq_ignore_ascii_case(self.config.encoding);
        let s = &self.config.stats;
        match d.stat {
            HeaderStat::ValidCompressor if mine => s.header_compressor_used.inc(),
            HeaderStat::ValidCompressor => s.header_compressor_overshadowed.inc(),
            HeaderStat::Identity => s.header_identity.inc(),
            HeaderStat::Wildcard => s.header_wildcard.inc(),
            HeaderStat::NotValid => s.header_not_valid.inc(),
        }
        mine
    }
}

impl HttpFilter for CompressorFilter {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(&self, cx: &mut RequestCtx<'_>, req: &mut Parts) -> super::FilterAction {
        let enabled = self.enabled(cx);
        let remove = enabled && self.remove_accept_encoding(cx);
        let reg = match cx.state.get_mut::<Registry>() {
            Some(r) => r,
            None => {
                cx.state.insert(Registry::default());
                match cx.state.get_mut::<Registry>() {
                    Some(r) => r,
                    None => return super::FilterAction::Continue,
                }
            }
        };
        reg.filters.push(self.config.clone());
        if reg.accept_encoding.is_none()
            && let Some(v) = req.headers.get(header::ACCEPT_ENCODING)
        {
            reg.accept_encoding = Some(String::from_utf8_lossy(v.as_bytes()).into());
        }
        reg.is_head = req.method == Method::HEAD;
        if remove {
            req.headers.remove(header::ACCEPT_ENCODING);
        }
        super::FilterAction::Continue
    }

    fn on_response(&self, cx: &mut RequestCtx<'_>, resp: &mut http::response::Parts) {
        let c = &self.config;
        let enabled = self.enabled(cx);
        let Some(reg) = cx.state.get::<Registry>().cloned() else { return };
        let h = &resp.headers;
        let enabled_and_big_enough = enabled && c.min_length_ok(h);
        let media = CompressorConfig::media_type(h);
        let compressible = enabled_and_big_enough
            && c.content_type_allowed(media.as_deref())
            && !h
                .get(header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| has_token(v, "no-transform"))
            && {
                let etag_ok = !(c.disable_on_etag && h.contains_key(header::ETAG));
                if !etag_ok {
                    c.stats.not_compressed_etag.inc();
                }
                etag_ok
            }
            && !h.contains_key(header::CONTENT_ENCODING)
            && !c.uncompressible_codes.contains(&resp.status.as_u16());
        // A response whose headers end the stream (HEAD, 204, 304, 1xx) is never compressed.
        let end_stream = reg.is_head
            || resp.status == http::StatusCode::NO_CONTENT
            || resp.status == http::StatusCode::NOT_MODIFIED
            || resp.status.is_informational();
        let accept_ok = !end_stream && enabled_and_big_enough && {
            match &reg.accept_encoding {
                None => {
                    c.stats.no_accept_header.inc();
                    false
                }
                Some(ae) => {
                    let decision = match &reg.decision {
                        Some(d) => d.clone(),
                        None => {
                            let d = choose_encoding(ae, &reg.filters, media.as_deref());
                            if let Some(r) = cx.state.get_mut::<Registry>() {
                                r.decision = Some(d.clone());
                            }
                            d
                        }
                    };
                    self.should_compress(&decision)
                }
            }
        };
        let te_ok = !resp.headers.get(header::TRANSFER_ENCODING).and_then(|v| v.to_str().ok()).is_some_and(|v| {
            v.split(',').any(|t| {
                let t = t.trim();
                ["gzip", "br", "deflate", "compress", "zstd", c.encoding].iter().any(|e| t.eq_ignore_ascii_case(e))
            })
        });
        if !end_stream && accept_ok && compressible && te_ok {
            let h = &mut resp.headers;
            if let Some(etag) = h.get(header::ETAG).cloned() {
                let v = etag.as_bytes();
                let weak = v.len() > 2 && (v[0] == b'w' || v[0] == b'W') && v[1] == b'/';
                if v.len() > 2 && !weak {
                    if c.weaken_etag {
                        let mut w = b"W/".to_vec();
                        w.extend_from_slice(v);
                        if let Ok(w) = HeaderValue::from_bytes(&w) {
                            h.insert(header::ETAG, w);
                        }
                    } else {
                        h.remove(header::ETAG);
                    }
                }
            }
            h.remove(header::CONTENT_LENGTH);
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(c.encoding));
            c.stats.compressed.inc();
            let idx = reg.filters.iter().position(|f| Arc::ptr_eq(f, c)).unwrap_or(0);
            cx.state.insert(Chosen(c.library, c.stats.clone(), idx));
        } else {
            c.stats.not_compressed.inc();
        }
        if compressible {
            insert_vary(&mut resp.headers);
        }
    }

    fn wrap_body(&self, cx: &mut RequestCtx<'_>, _resp: &http::response::Parts, body: ResponseBody) -> ResponseBody {
        let Some(Chosen(lib, stats, idx)) = cx.state.get::<Chosen>().cloned() else { return body };
        let mine =
            cx.state.get::<Registry>().and_then(|r| r.filters.get(idx)).is_some_and(|f| Arc::ptr_eq(f, &self.config));
        if !mine {
            return body;
        }
        cx.state.remove::<Chosen>();
        match lib.encoder() {
            Ok(enc) => ResponseBody::Boxed(Box::pin(Compressed { inner: body, enc: Some(enc), stats, trailers: None })),
            Err(e) => {
                tracing::warn!("compressor: cannot start {}: {e}", lib.content_encoding());
                body
            }
        }
    }
}

fn insert_vary(h: &mut HeaderMap) {
    match h.get(header::VARY) {
        Some(v) => {
            let s = String::from_utf8_lossy(v.as_bytes()).into_owned();
            if !s.split(',').any(|t| t.trim().eq_ignore_ascii_case("accept-encoding"))
                && let Ok(v) = HeaderValue::from_str(&format!("{s}, Accept-Encoding"))
            {
                h.insert(header::VARY, v);
            }
        }
        None => {
            h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }
    }
}

// === impl Compressed ===

/// A response body compressed as it streams: each chunk is compressed and flushed, the stream is
/// finished at the end (before trailers).
struct Compressed {
    inner: ResponseBody,
    enc: Option<StreamEncoder>,
    stats: Arc<CompressorStats>,
    trailers: Option<HeaderMap>,
}

impl Body for Compressed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(enc) = this.enc.as_mut() else {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            let mut done = false;
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.stats.total_uncompressed_bytes.add(data.len() as u64);
                        let out = enc.compress(&data)?;
                        this.stats.total_compressed_bytes.add(out.len() as u64);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            this.trailers = Some(t);
                        }
                    }
                },
                Poll::Ready(None) => done = true,
            }
            if done || this.trailers.is_some() || this.inner.is_end_stream() {
                let Some(enc) = this.enc.take() else { continue };
                let out = enc.finish()?;
                this.stats.total_compressed_bytes.add(out.len() as u64);
                if !out.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.enc.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests;
