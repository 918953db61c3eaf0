//! Distributed tracing as Envoy's HTTP connection manager does it with the Zipkin tracer: the
//! HCM's `tracing` block (sampling by x-request-id, custom tags, path tag length), the trace
//! decision (`ConnectionManagerUtility::mutateTracingRequestHeader`), B3 propagation and one span
//! per request (`HttpTracerUtility::finalizeDownstreamSpan`'s tags), reported by `zipkin`.
//!
//! Cost: with no `tracing` block nothing here runs; an unsampled request costs the decision and
//! the four B3 headers Envoy also sends; tags are gathered only for sampled requests.

pub mod b3;
pub mod zipkin;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use envoy_types::pb::envoy::config::trace::v3::ZipkinConfig;
use envoy_types::pb::envoy::config::trace::v3::tracing::Http as TracingHttp;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing as HcmTracing;
use envoy_types::pb::envoy::r#type::tracing::v3::{CustomTag as CustomTagProto, custom_tag};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::access_log::{RequestEnd, RequestEndFacts};
use crate::config::{BuildCtx, ConfigError, Percent};

pub use zipkin::Zipkin;

const ZIPKIN: &str = "envoy.tracers.zipkin";
const ZIPKIN_TYPE: &str = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig";

/// A tracer provider (`Tracing.Http`): only Envoy's Zipkin tracer.
pub fn provider_from_proto(p: &TracingHttp) -> Result<Arc<Zipkin>, ConfigError> {
    use envoy_types::pb::envoy::config::trace::v3::tracing::http::ConfigType;
    let Some(ConfigType::TypedConfig(any)) = &p.config_type else {
        return Err(ConfigError::new("typed_config", "a tracer needs its typed_config"));
    };
    if any.type_url != ZIPKIN_TYPE {
        return Err(ConfigError::new(
            "typed_config",
            format!("tracer {} ({}) is not supported by remora (only {ZIPKIN})", p.name, any.type_url),
        ));
    }
    let z: ZipkinConfig = xds_client::any::unpack(any).map_err(|e| ConfigError::new("typed_config", e.to_string()))?;
    Ok(Arc::new(Zipkin::from_proto(&z).map_err(|e| e.within("typed_config"))?))
}

/// The HCM's `request_id_extension`: Envoy's UUID extension, whose defaults (trace reason packed
/// in x-request-id, sampling by request id) are what remora does; turning either off is refused.
pub fn check_request_id_extension(
    p: &envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::RequestIdExtension,
) -> Result<(), ConfigError> {
    use envoy_types::pb::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig;
    const UUID: &str = "type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig";
    let Some(any) = &p.typed_config else { return Ok(()) };
    if any.type_url != UUID {
        return Err(ConfigError::new(
            "typed_config",
            format!("request id extension {} is not supported", any.type_url),
        ));
    }
    let c: UuidRequestIdConfig =
        xds_client::any::unpack(any).map_err(|e| ConfigError::new("typed_config", e.to_string()))?;
    if c.pack_trace_reason.is_some_and(|b| !b.value) {
        return Err(ConfigError::new("typed_config.pack_trace_reason", "only true (the default) is supported"));
    }
    if c.use_request_id_for_trace_sampling.is_some_and(|b| !b.value) {
        return Err(ConfigError::new(
            "typed_config.use_request_id_for_trace_sampling",
            "only true (the default) is supported",
        ));
    }
    Ok(())
}

enum TagValue {
    Literal(String),
    Header { name: HeaderName, default: String },
}

struct CustomTag {
    tag: Arc<str>,
    value: TagValue,
}

/// A compiled HCM `tracing` block with its tracer.
pub struct Tracing {
    /// Envoy's operation name: EGRESS (client spans) on an OUTBOUND listener, else INGRESS.
    pub ingress: bool,
    client: Percent,
    random: Percent,
    overall: Percent,
    max_path_tag_length: usize,
    custom_tags: Vec<CustomTag>,
    zipkin: Arc<Zipkin>,
    node_id: Arc<str>,
    zone: Arc<str>,
    service_name: Arc<str>,
}

impl Tracing {
    /// The HCM's `tracing` (its provider, else the bootstrap's); None when there is no tracer.
    pub fn from_proto(p: &HcmTracing, cx: &BuildCtx) -> Result<Option<Arc<Self>>, ConfigError> {
        if p.verbose {
            return Err(ConfigError::new("verbose", "verbose span annotations are not supported by remora"));
        }
        if p.spawn_upstream_span.is_some_and(|b| b.value) {
            return Err(ConfigError::new("spawn_upstream_span", "upstream spans are not supported by remora"));
        }
        let zipkin = match &p.provider {
            Some(h) => provider_from_proto(h).map_err(|e| e.within("provider"))?,
            None => match cx.tracer.clone().and_then(|z| z.downcast::<Zipkin>().ok()) {
                Some(z) => z,
                None => return Ok(None),
            },
        };
        // Envoy checks the collector's cluster when an HCM instantiates the tracer.
        if !cx.cluster_names.contains(&zipkin.collector_cluster) {
            return Err(ConfigError::new("", format!("{ZIPKIN}: unknown cluster '{}'", zipkin.collector_cluster)));
        }
        let pct = |v: &Option<envoy_types::pb::envoy::r#type::v3::Percent>| match v {
            Some(p) => Percent::from_percent(p.value),
            None => Percent::ALWAYS,
        };
        let custom_tags = p
            .custom_tags
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                CustomTag::from_proto(t).map_err(|e| e.within(&format!("custom_tags[{i}]"))).transpose()
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(Arc::new(Tracing {
            ingress: !cx.outbound,
            client: pct(&p.client_sampling),
            random: pct(&p.random_sampling),
            overall: pct(&p.overall_sampling),
            max_path_tag_length: p.max_path_tag_length.map(|v| v.value as usize).unwrap_or(256),
            custom_tags,
            zipkin,
            node_id: cx.node.id.as_str().into(),
            zone: cx.node.zone.as_str().into(),
            service_name: cx.node.cluster.as_str().into(),
        })))
    }

    /// Envoy's trace decision (`mutateTracingRequestHeader` with the UUID request-id extension):
    /// the reason packed in x-request-id, set from x-client-trace-id, x-envoy-force-trace or
    /// random sampling by the request id, then cut by overall sampling. Says whether traced.
    fn decide(&self, h: &mut HeaderMap) -> bool {
        let Some(rid) = h.get(&crate::http::headers::X_REQUEST_ID) else { return false };
        let rid = rid.as_bytes();
        // The request id as an integer: its first 8 hex digits.
        let Some(n) =
            rid.get(..8).and_then(|p| std::str::from_utf8(p).ok()).and_then(|p| u64::from_str_radix(p, 16).ok())
        else {
            return false;
        };
        let draw = (n % 10_000) * 100;
        let initial = reason_of(rid);
        let mut reason = initial;
        if reason == Reason::NotTraceable {
            if h.contains_key("x-client-trace-id") && self.client.sample() {
                reason = Reason::Client;
            } else if h.contains_key("x-envoy-force-trace") {
                reason = Reason::Forced;
            } else if self.random.contains(draw) {
                reason = Reason::Sampled;
            }
        }
        if reason != Reason::Forced && !self.overall.contains(draw) {
            reason = Reason::NotTraceable;
        }
        if reason != initial && rid.len() == 36 {
            let mut v = rid.to_vec();
            v[14] = match reason {
                Reason::Sampled => b'9',
                Reason::Forced => b'a',
                Reason::Client => b'b',
                Reason::NotTraceable => b'4',
            };
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                h.insert(crate::http::headers::X_REQUEST_ID, v);
            }
        }
        reason != Reason::NotTraceable
    }

    /// Starts the request's span: the decision, then the incoming B3 context joined or a new
    /// trace. None when the incoming context is malformed (Envoy then neither traces nor
    /// propagates).
    pub fn start(self: &Arc<Self>, h: &mut HeaderMap, operation: Option<&str>, authority: &str) -> Option<Span> {
        let traced = self.decide(h);
        let sampled = b3::sampled(h, traced);
        let ctx = b3::extract(h).ok()?;
        // A request that came with the single `b3` header goes on with that form.
        let single = h.contains_key(b3::B3);
        let (trace_id_high, trace_id, id, parent_id, shared) = match ctx {
            None => {
                let id = fastrand::u64(..);
                let high = self.zipkin.trace_id_128bit.then(|| fastrand::u64(..));
                (high, id, id, None, false)
            }
            Some(c) if !self.ingress || !self.zipkin.shared_span_context => {
                (c.trace_id_high, c.trace_id, fastrand::u64(..), Some(c.span_id), false)
            }
            Some(c) => (c.trace_id_high, c.trace_id, c.span_id, (c.parent_id != 0).then_some(c.parent_id), true),
        };
        // Envoy marks every server span `shared` when the tracer shares span contexts.
        let shared = shared || (self.ingress && self.zipkin.shared_span_context);
        let mut span = Span {
            cfg: self.clone(),
            trace_id_high,
            trace_id,
            id,
            parent_id,
            sampled,
            shared,
            single,
            name: String::new(),
            start: Instant::now(),
            start_time: SystemTime::now(),
            tags: Vec::new(),
            custom: Vec::new(),
        };
        if sampled {
            span.name = match operation {
                Some(op) => op.to_string(),
                None => default_name(authority),
            };
        }
        Some(span)
    }
}

/// Envoy's span name without a decorator: the request's host.
fn default_name(authority: &str) -> String {
    authority.to_string()
}

impl CustomTag {
    fn from_proto(p: &CustomTagProto) -> Result<Option<Self>, ConfigError> {
        use custom_tag::Type;
        let value = match &p.r#type {
            Some(Type::Literal(l)) => TagValue::Literal(l.value.clone()),
            // Read once, as Envoy does when the config is built.
            Some(Type::Environment(e)) => match std::env::var(&e.name) {
                Ok(v) => TagValue::Literal(v),
                Err(_) if !e.default_value.is_empty() => TagValue::Literal(e.default_value.clone()),
                Err(_) => return Ok(None),
            },
            Some(Type::RequestHeader(h)) => TagValue::Header {
                name: HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
                    .map_err(|_| ConfigError::new("request_header.name", "invalid header name"))?,
                default: h.default_value.clone(),
            },
            // Remora does not read dynamic, route or host metadata for tags: the default value,
            // as Envoy when the key is absent (accepted loudly by the field guard).
            Some(Type::Metadata(m)) if !m.default_value.is_empty() => TagValue::Literal(m.default_value.clone()),
            Some(Type::Metadata(_)) => return Ok(None),
            _ => return Err(ConfigError::new("type", "this custom tag kind is not supported by remora")),
        };
        Ok(Some(CustomTag { tag: p.tag.as_str().into(), value }))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reason {
    NotTraceable,
    Sampled,
    Client,
    Forced,
}

/// The trace reason packed in a UUID x-request-id (its 15th character).
fn reason_of(rid: &[u8]) -> Reason {
    if rid.len() != 36 {
        return Reason::NotTraceable;
    }
    match rid[14] {
        b'9' => Reason::Sampled,
        b'a' => Reason::Forced,
        b'b' => Reason::Client,
        _ => Reason::NotTraceable,
    }
}

/// A request's span.
#[derive(Clone)]
pub struct Span {
    cfg: Arc<Tracing>,
    trace_id_high: Option<u64>,
    trace_id: u64,
    id: u64,
    parent_id: Option<u64>,
    pub sampled: bool,
    shared: bool,
    single: bool,
    pub name: String,
    start: Instant,
    start_time: SystemTime,
    tags: Vec<(&'static str, String)>,
    custom: Vec<(Arc<str>, String)>,
}

fn hv(s: String) -> Option<HeaderValue> {
    HeaderValue::try_from(s).ok()
}

impl Span {
    /// Writes the B3 context upstream (Envoy's `ZipkinSpan::injectContext`).
    pub fn inject(&self, h: &mut HeaderMap) {
        let tid = match self.trace_id_high {
            Some(hi) => format!("{hi:016x}{:016x}", self.trace_id),
            None => b3::hex16(self.trace_id),
        };
        let flag = if self.sampled { "1" } else { "0" };
        if self.single {
            let mut v = format!("{tid}-{:016x}-{flag}", self.id);
            if let Some(p) = self.parent_id {
                v.push_str(&format!("-{p:016x}"));
            }
            if let Some(v) = hv(v) {
                h.insert(b3::B3, v);
            }
            return;
        }
        if let Some(v) = hv(tid) {
            h.insert(b3::X_B3_TRACE_ID, v);
        }
        if let Some(v) = hv(b3::hex16(self.id)) {
            h.insert(b3::X_B3_SPAN_ID, v);
        }
        if let Some(p) = self.parent_id
            && let Some(v) = hv(b3::hex16(p))
        {
            h.insert(b3::X_B3_PARENT_SPAN_ID, v);
        }
        h.insert(b3::X_B3_SAMPLED, HeaderValue::from_static(flag));
    }

    /// The request-side tags, from the headers the request goes upstream with (sampled spans).
    pub fn request_tags(
        &mut self,
        h: &HeaderMap,
        method: &str,
        path: &str,
        authority: &str,
        protocol: &str,
        peer: std::net::IpAddr,
    ) {
        let s = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
        let mut tags = vec![("node_id", self.cfg.node_id.to_string()), ("zone", self.cfg.zone.to_string())];
        if let Some(r) = s("x-request-id") {
            tags.push(("guid:x-request-id", r.to_string()));
        }
        let mut cut = path.len().min(self.cfg.max_path_tag_length);
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        let proto = s("x-forwarded-proto").unwrap_or("");
        tags.push(("http.url", format!("{proto}://{authority}{}", &path[..cut])));
        tags.push(("http.method", method.to_string()));
        tags.push(("downstream_cluster", s("x-envoy-downstream-service-cluster").unwrap_or("-").to_string()));
        tags.push(("user_agent", s("user-agent").unwrap_or("-").to_string()));
        tags.push(("http.protocol", protocol.to_string()));
        tags.push(("peer.address", peer.to_string()));
        if let Some(c) = s("x-client-trace-id") {
            tags.push(("guid:x-client-trace-id", c.to_string()));
        }
        let size = s("content-length").and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0);
        tags.push(("request_size", size.to_string()));
        tags.push(("component", "proxy".to_string()));
        self.tags = tags;
        for t in &self.cfg.custom_tags {
            let v = match &t.value {
                TagValue::Literal(v) => Some(v.clone()),
                TagValue::Header { name, default } => match h.get(name).and_then(|v| v.to_str().ok()) {
                    Some(v) => Some(v.to_string()),
                    None => (!default.is_empty()).then(|| default.clone()),
                },
            };
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                self.custom.push((t.tag.clone(), v));
            }
        }
    }
}

impl RequestEnd for Span {
    fn finish(&self, f: &RequestEndFacts<'_>) {
        if !self.sampled {
            return;
        }
        let mut tags: Vec<(&'static str, String)> = self.tags.iter().filter(|(_, v)| !v.is_empty()).cloned().collect();
        if f.upstream_host
            && let Some(c) = f.upstream_cluster
        {
            tags.push(("upstream_cluster", c.to_string()));
            tags.push(("upstream_cluster.name", c.to_string()));
        }
        tags.push(("http.status_code", f.status.to_string()));
        tags.push(("response_size", f.bytes_sent.to_string()));
        tags.push(("response_flags", f.flags.clone()));
        if f.status == 0 || f.status >= 500 {
            tags.push(("error", "true".to_string()));
        }
        let ts = self.start_time.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        zipkin::report(zipkin::FinishedSpan {
            zipkin: self.cfg.zipkin.clone(),
            trace_id_high: self.trace_id_high,
            trace_id: self.trace_id,
            id: self.id,
            parent_id: self.parent_id,
            name: self.name.clone(),
            server: self.cfg.ingress,
            shared: self.shared,
            timestamp_us: ts,
            duration_us: self.start.elapsed().as_micros() as u64,
            service_name: self.cfg.service_name.clone(),
            tags,
            custom_tags: self.custom.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(random: f64) -> Arc<Tracing> {
        Arc::new(Tracing {
            ingress: true,
            client: Percent::ALWAYS,
            random: Percent::from_percent(random),
            overall: Percent::ALWAYS,
            max_path_tag_length: 256,
            custom_tags: Vec::new(),
            zipkin: Arc::new(Zipkin {
                collector_cluster: "zipkin".into(),
                collector_endpoint: "/api/v2/spans".into(),
                collector_host: "zipkin".into(),
                trace_id_128bit: true,
                shared_span_context: false,
            }),
            node_id: "n".into(),
            zone: "".into(),
            service_name: "s".into(),
        })
    }

    fn rid(h: &mut HeaderMap, v: &'static str) {
        h.insert("x-request-id", HeaderValue::from_static(v));
    }

    #[test]
    fn decision_marks_the_request_id() {
        let mut h = HeaderMap::new();
        rid(&mut h, "0d4d8f9c-6f5e-4b7b-8a3e-1f2b3c4d5e6f");
        assert!(cfg(100.0).decide(&mut h));
        assert_eq!(h["x-request-id"], "0d4d8f9c-6f5e-9b7b-8a3e-1f2b3c4d5e6f");
        let mut h = HeaderMap::new();
        rid(&mut h, "0d4d8f9c-6f5e-4b7b-8a3e-1f2b3c4d5e6f");
        assert!(!cfg(0.0).decide(&mut h));
        assert_eq!(h["x-request-id"], "0d4d8f9c-6f5e-4b7b-8a3e-1f2b3c4d5e6f");
        h.insert("x-envoy-force-trace", HeaderValue::from_static("1"));
        assert!(cfg(0.0).decide(&mut h));
        assert_eq!(h["x-request-id"], "0d4d8f9c-6f5e-ab7b-8a3e-1f2b3c4d5e6f");
        // Not a UUID: nothing is traced by request id.
        let mut h = HeaderMap::new();
        rid(&mut h, "not-hex");
        assert!(!cfg(100.0).decide(&mut h));
    }

    #[test]
    fn joins_an_incoming_context() {
        let mut h = HeaderMap::new();
        rid(&mut h, "0d4d8f9c-6f5e-4b7b-8a3e-1f2b3c4d5e6f");
        h.insert(b3::X_B3_TRACE_ID, HeaderValue::from_static("0000000000000001"));
        h.insert(b3::X_B3_SPAN_ID, HeaderValue::from_static("0000000000000002"));
        h.insert(b3::X_B3_SAMPLED, HeaderValue::from_static("1"));
        let s = cfg(0.0).start(&mut h, None, "a").unwrap();
        assert!(s.sampled);
        let mut up = HeaderMap::new();
        s.inject(&mut up);
        assert_eq!(up[b3::X_B3_TRACE_ID], "0000000000000001");
        assert_eq!(up[b3::X_B3_PARENT_SPAN_ID], "0000000000000002");
        assert_ne!(up[b3::X_B3_SPAN_ID], "0000000000000002");
        let mut h = HeaderMap::new();
        h.insert(b3::B3, HeaderValue::from_static("garbage"));
        assert!(cfg(100.0).start(&mut h, None, "a").is_none());
    }
}
