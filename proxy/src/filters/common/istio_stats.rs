//! Istio's standard metrics (`stats.PluginConfig`), shared by the HTTP and the network
//! `istio.stats` filters: the config, the labels in istio-proxy's order and the handle cache.
//!
//! Labels follow istio-proxy's stats filter: the reporter is `destination` on an INBOUND
//! listener (the peer is the downstream) and `source` elsewhere (the peer is the upstream); the
//! node's own metadata fills the other side. `destination_service` and `_name` come from the
//! upstream cluster's `istio.services[0]` metadata, else the request's `:authority` unless
//! `disable_host_header_fallback`.
//!
//! Hot path: a request builds a small fixed-size `Key` (the values that vary: peer, principals,
//! service as interned ids, code, gRPC status, flags) and finds its handles in a copy-on-write map
//! read without a lock; interning a string or a peer already seen is a lock-free lookup without
//! allocation. Only a label set never seen before formats the labels and takes the store's lock.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::{Any, Struct, value};
use prost::Message;

use crate::access_log::ResponseFlags;
use crate::config::{BuildCtx, ConfigError};
use crate::stats::{Counter, Histogram, Store};

pub mod dimensions;

pub const TYPE: &str = "stats.PluginConfig";
pub const NAMESPACE: &str = "istiocustom";
const UNKNOWN: &str = "unknown";

/// Istio's `stats.PluginConfig` (istio/proxy `istio_stats/config.proto`).
#[derive(Clone, PartialEq, prost::Message)]
struct PluginConfig {
    #[prost(bool, tag = "6")]
    disable_host_header_fallback: bool,
    #[prost(message, optional, tag = "7")]
    tcp_reporting_duration: Option<envoy_types::pb::google::protobuf::Duration>,
    #[prost(message, repeated, tag = "8")]
    metrics: Vec<MetricConfig>,
    #[prost(message, repeated, tag = "9")]
    definitions: Vec<MetricDefinition>,
    #[prost(int32, tag = "10")]
    reporter: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MetricConfig {
    #[prost(map = "string, string", tag = "1")]
    dimensions: std::collections::HashMap<String, String>,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(string, repeated, tag = "3")]
    tags_to_remove: Vec<String>,
    #[prost(string, tag = "4")]
    r#match: String,
    #[prost(bool, tag = "5")]
    drop: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MetricDefinition {
    #[prost(string, tag = "1")]
    name: String,
}

/// The metrics of the standard set, by their config name (`metrics[].name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    RequestsTotal,
    RequestDuration,
    RequestBytes,
    ResponseBytes,
    TcpOpened,
    TcpClosed,
    TcpSent,
    TcpReceived,
}

impl Metric {
    const ALL: [Metric; 8] = [
        Metric::RequestsTotal,
        Metric::RequestDuration,
        Metric::RequestBytes,
        Metric::ResponseBytes,
        Metric::TcpOpened,
        Metric::TcpClosed,
        Metric::TcpSent,
        Metric::TcpReceived,
    ];

    fn config_name(self) -> &'static str {
        match self {
            Metric::RequestsTotal => "requests_total",
            Metric::RequestDuration => "request_duration_milliseconds",
            Metric::RequestBytes => "request_bytes",
            Metric::ResponseBytes => "response_bytes",
            Metric::TcpOpened => "tcp_connections_opened_total",
            Metric::TcpClosed => "tcp_connections_closed_total",
            Metric::TcpSent => "tcp_sent_bytes_total",
            Metric::TcpReceived => "tcp_received_bytes_total",
        }
    }

    /// The stat family (`istio_requests_total`).
    pub fn family(self) -> &'static str {
        match self {
            Metric::RequestsTotal => "istio_requests_total",
            Metric::RequestDuration => "istio_request_duration_milliseconds",
            Metric::RequestBytes => "istio_request_bytes",
            Metric::ResponseBytes => "istio_response_bytes",
            Metric::TcpOpened => "istio_tcp_connections_opened_total",
            Metric::TcpClosed => "istio_tcp_connections_closed_total",
            Metric::TcpSent => "istio_tcp_sent_bytes_total",
            Metric::TcpReceived => "istio_tcp_received_bytes_total",
        }
    }
}

/// What `metrics` overrides do to one metric.
#[derive(Debug, Clone, Default)]
struct Override {
    drop: bool,
    removed: HashSet<String>,
    /// `dimensions`, by tag (a standard tag's value replaced, or a tag added).
    dims: Vec<(&'static str, dimensions::Value)>,
}

/// The compiled `stats.PluginConfig`, shared by every request of a filter.
#[derive(Debug)]
pub struct Settings {
    /// True: `reporter=destination` (an inbound listener).
    pub destination: bool,
    pub host_fallback: bool,
    /// `tcp_reporting_duration` (15 s by default): how often open TCP connections report bytes.
    pub tcp_reporting: Duration,
    overrides: [Override; 8],
    /// The request attributes the dimensions read (at most `dimensions::MAX`).
    pub attrs: Vec<dimensions::Attr>,
    pub me: Workload,
}

impl Settings {
    /// Decodes and checks the config; what remora cannot honour is refused with its path.
    pub fn from_any(any: &Any, cx: &BuildCtx) -> Result<Settings, ConfigError> {
        let config = if xds_client::any::type_name(&any.type_url) == TYPE {
            PluginConfig::decode(any.value.as_slice())
                .map_err(|e| ConfigError::new("typed_config", format!("invalid {TYPE}: {e}")))?
        } else {
            // The TypedStruct form carries JSON; only an empty value (the defaults) is accepted.
            let ts = xds_client::any::TypedStruct::decode(any.value.as_slice())
                .map_err(|e| ConfigError::new("typed_config", format!("invalid TypedStruct: {e}")))?;
            if ts.value.as_ref().is_some_and(|v| !v.fields.is_empty()) {
                return Err(ConfigError::new(
                    "typed_config.value",
                    format!("{TYPE} as a TypedStruct with fields is not supported; send it typed"),
                ));
            }
            PluginConfig::default()
        };
        if !config.definitions.is_empty() {
            return Err(ConfigError::new("typed_config.definitions", "custom metric definitions are not supported"));
        }
        if config.reporter != 0 {
            return Err(ConfigError::new(
                "typed_config.reporter",
                "reporter SERVER_GATEWAY (waypoint) is not supported",
            ));
        }
        let mut overrides: [Override; 8] = Default::default();
        let mut attrs: Vec<dimensions::Attr> = Vec::new();
        for (i, m) in config.metrics.iter().enumerate() {
            let f = format!("typed_config.metrics[{i}]");
            let mut dims = Vec::new();
            let mut tags: Vec<&String> = m.dimensions.keys().collect();
            tags.sort();
            for tag in tags {
                let expr = &m.dimensions[tag];
                let field = format!("{f}.dimensions[{tag}]");
                let value = match dimensions::parse(expr) {
                    None => {
                        return Err(ConfigError::new(field, format!("attribute expression '{expr}' is not supported")));
                    }
                    Some(dimensions::Expr::Literal(l)) => dimensions::Value::Literal(l),
                    Some(dimensions::Expr::ResponseCode) => dimensions::Value::ResponseCode,
                    Some(dimensions::Expr::Request(a)) => match attrs.iter().position(|x| *x == a) {
                        Some(i) => dimensions::Value::Request(i),
                        None if attrs.len() < dimensions::MAX => {
                            attrs.push(a);
                            dimensions::Value::Request(attrs.len() - 1)
                        }
                        None => {
                            return Err(ConfigError::new(
                                field,
                                format!("more than {} distinct request attributes in dimensions", dimensions::MAX),
                            ));
                        }
                    },
                };
                if tag.is_empty() {
                    return Err(ConfigError::new(field, "a dimension needs a tag name"));
                }
                dims.push((dimensions::tag_name(tag), value));
            }
            let targets: Vec<usize> = if m.name.is_empty() {
                (0..Metric::ALL.len()).collect()
            } else {
                match Metric::ALL.iter().position(|x| x.config_name() == m.name) {
                    Some(i) => vec![i],
                    None => {
                        return Err(ConfigError::new(format!("{f}.name"), format!("unknown metric {}", m.name)));
                    }
                }
            };
            for t in targets {
                let o = &mut overrides[t];
                o.drop |= m.drop;
                o.removed.extend(m.tags_to_remove.iter().cloned());
                for (tag, v) in &dims {
                    o.dims.retain(|(t, _)| t != tag);
                    o.dims.push((tag, v.clone()));
                }
            }
        }
        let tcp_reporting = match &config.tcp_reporting_duration {
            Some(d) if d.seconds > 0 || d.nanos > 0 => {
                Duration::new(d.seconds.max(0) as u64, d.nanos.clamp(0, 999_999_999) as u32)
            }
            _ => Duration::from_secs(15),
        };
        Ok(Settings {
            destination: cx.inbound,
            host_fallback: !config.disable_host_header_fallback,
            tcp_reporting,
            overrides,
            attrs,
            me: Workload::from_metadata(cx.node.metadata.as_ref()),
        })
    }

    /// One metric's labels after the overrides (`dims`: the request attributes' values), unless
    /// the config drops the metric.
    fn labelled(
        &self,
        m: Metric,
        labels: &[(&'static str, String)],
        dims: &[String],
    ) -> Option<Vec<(&'static str, String)>> {
        let o = &self.overrides[m as usize];
        if o.drop {
            return None;
        }
        let mut out = labels.to_vec();
        for (tag, v) in &o.dims {
            let value = match v {
                dimensions::Value::Literal(l) => l.clone(),
                dimensions::Value::Request(i) => dims.get(*i).cloned().unwrap_or_default(),
                dimensions::Value::ResponseCode => {
                    labels.iter().find(|(k, _)| *k == "response_code").map(|(_, v)| v.clone()).unwrap_or_default()
                }
            };
            let value = if value.is_empty() { UNKNOWN.to_string() } else { value };
            match out.iter_mut().find(|(k, _)| k == tag) {
                Some(slot) => slot.1 = value,
                None => out.push((tag, value)),
            }
        }
        out.retain(|(k, _)| !o.removed.contains(*k));
        Some(out)
    }

    pub fn counter(
        &self,
        store: &Store,
        m: Metric,
        labels: &[(&'static str, String)],
        dims: &[String],
    ) -> Option<Counter> {
        Some(store.counter_tagged(NAMESPACE, m.family(), self.labelled(m, labels, dims)?))
    }

    pub fn histogram(
        &self,
        store: &Store,
        m: Metric,
        labels: &[(&'static str, String)],
        dims: &[String],
    ) -> Option<Histogram> {
        Some(store.histogram_tagged(NAMESPACE, m.family(), self.labelled(m, labels, dims)?))
    }
}

/// One side of a request: a workload's labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Workload {
    pub workload: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub cluster: String,
}

fn string_field(s: &Struct, key: &str) -> Option<String> {
    match s.fields.get(key)?.kind.as_ref()? {
        value::Kind::StringValue(v) if !v.is_empty() => Some(v.clone()),
        _ => None,
    }
}

impl Workload {
    /// From Istio's node metadata (WORKLOAD_NAME, NAMESPACE, CLUSTER_ID, LABELS); what is
    /// missing is empty (the label then shows `unknown`, or `latest` for a revision).
    pub fn from_metadata(m: Option<&Struct>) -> Workload {
        let Some(m) = m else { return Workload::default() };
        let labels = match m.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
            Some(value::Kind::StructValue(l)) => Some(l),
            _ => None,
        };
        let label = |k: &str| labels.and_then(|l| string_field(l, k));
        let app = label("app").or_else(|| label("app.kubernetes.io/name")).unwrap_or_default();
        let version = label("version").or_else(|| label("app.kubernetes.io/version")).unwrap_or_default();
        let workload = string_field(m, "WORKLOAD_NAME").unwrap_or_default();
        Workload {
            canonical_service: label("service.istio.io/canonical-name")
                .or_else(|| (!app.is_empty()).then(|| app.clone()))
                .unwrap_or_else(|| workload.clone()),
            canonical_revision: label("service.istio.io/canonical-revision")
                .or_else(|| (!version.is_empty()).then(|| version.clone()))
                .unwrap_or_default(),
            namespace: string_field(m, "NAMESPACE").unwrap_or_default(),
            cluster: string_field(m, "CLUSTER_ID").unwrap_or_default(),
            workload,
            app,
            version,
        }
    }
}

/// `destination_service` and `destination_service_name` before their fallbacks: the upstream
/// cluster's `istio.services[0]` (`host`, `name`), Istio's passthrough and black-hole names,
/// else the request's authority (when the host header fallback is on).
pub fn service<'a>(
    route_name: Option<&str>,
    cluster: Option<&'a str>,
    metadata: Option<&'a Metadata>,
    authority: Option<&'a str>,
    host_fallback: bool,
) -> (&'a str, &'a str) {
    let mut host = if host_fallback { authority.unwrap_or_default() } else { "" };
    let mut name = host;
    match route_name {
        Some("block_all") => return (host, "BlackHoleCluster"),
        Some("allow_any") => return (host, "PassthroughCluster"),
        _ => {}
    }
    let Some(cluster) = cluster else { return (host, name) };
    if matches!(
        cluster,
        "BlackHoleCluster"
            | "PassthroughCluster"
            | "InboundPassthroughCluster"
            | "InboundPassthroughClusterIpv4"
            | "InboundPassthroughClusterIpv6"
    ) {
        return (host, cluster);
    }
    let str_of = |v: Option<&'a envoy_types::pb::google::protobuf::Value>| match v?.kind.as_ref()? {
        value::Kind::StringValue(h) => Some(h.as_str()),
        _ => None,
    };
    let first = metadata
        .and_then(|m| m.filter_metadata.get("istio"))
        .and_then(|s| s.fields.get("services"))
        .and_then(|v| match v.kind.as_ref()? {
            value::Kind::ListValue(l) => l.values.first(),
            _ => None,
        })
        .and_then(|v| match v.kind.as_ref()? {
            value::Kind::StructValue(s) => Some(s),
            _ => None,
        });
    if let Some(s) = first {
        if let Some(h) = str_of(s.fields.get("host")) {
            host = h;
        }
        name = str_of(s.fields.get("name"))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| host.split('.').next().unwrap_or_default());
    }
    (host, name)
}

/// `request_protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Grpc,
    Tcp,
}

/// The label values that vary per request or connection, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Facts {
    /// The peer (downstream for `destination`, upstream for `source`).
    pub peer: Workload,
    /// The peer's and our own SPIFFE principal (empty: unknown).
    pub peer_san: String,
    pub local_san: String,
    pub service_host: String,
    pub service_name: String,
    pub protocol: Protocol,
    /// 0 for TCP.
    pub response_code: u16,
    /// gRPC only.
    pub grpc_status: Option<u32>,
    pub flags: ResponseFlags,
}

fn or<'a>(v: &'a str, default: &'a str) -> &'a str {
    if v.is_empty() { default } else { v }
}

/// The namespace in a SPIFFE principal (`spiffe://td/ns/<ns>/sa/<sa>`).
fn san_namespace(san: &str) -> Option<&str> {
    let rest = &san[san.find("/ns/")? + 4..];
    Some(rest.split('/').next().unwrap_or(rest))
}

/// Istio's standard labels, in istio-proxy's order.
pub fn labels(s: &Settings, k: &Facts) -> Vec<(&'static str, String)> {
    let me = &s.me;
    let peer = &k.peer;
    let peer_ns = k.peer_san.as_str();
    let peer_namespace = san_namespace(peer_ns).filter(|n| !n.is_empty()).unwrap_or(&peer.namespace);
    let l = |v: &str| v.to_string();
    let mut out: Vec<(&'static str, String)> = Vec::with_capacity(25);
    if s.destination {
        out.push(("reporter", l("destination")));
        out.push(("source_workload", l(or(&peer.workload, UNKNOWN))));
        out.push(("source_canonical_service", l(or(&peer.canonical_service, UNKNOWN))));
        out.push(("source_canonical_revision", l(or(&peer.canonical_revision, "latest"))));
        out.push(("source_workload_namespace", l(or(peer_namespace, UNKNOWN))));
        out.push(("source_principal", l(or(&k.peer_san, UNKNOWN))));
        out.push(("source_app", l(or(&peer.app, UNKNOWN))));
        out.push(("source_version", l(or(&peer.version, UNKNOWN))));
        out.push(("source_cluster", l(or(&peer.cluster, UNKNOWN))));
        out.push(("destination_workload", l(or(&me.workload, UNKNOWN))));
        out.push(("destination_workload_namespace", l(or(&me.namespace, UNKNOWN))));
        out.push(("destination_principal", l(or(&k.local_san, UNKNOWN))));
        out.push(("destination_app", l(or(&me.app, UNKNOWN))));
        out.push(("destination_version", l(or(&me.version, UNKNOWN))));
        out.push(("destination_service", l(or(&k.service_host, or(&me.canonical_service, UNKNOWN)))));
        out.push(("destination_canonical_service", l(or(&me.canonical_service, UNKNOWN))));
        out.push(("destination_canonical_revision", l(or(&me.canonical_revision, "latest"))));
        out.push(("destination_service_name", l(or(&k.service_name, or(&me.canonical_service, UNKNOWN)))));
        out.push(("destination_service_namespace", l(or(&me.namespace, UNKNOWN))));
        out.push(("destination_cluster", l(or(&me.cluster, UNKNOWN))));
    } else {
        out.push(("reporter", l("source")));
        out.push(("source_workload", l(or(&me.workload, UNKNOWN))));
        out.push(("source_canonical_service", l(or(&me.canonical_service, UNKNOWN))));
        out.push(("source_canonical_revision", l(or(&me.canonical_revision, "latest"))));
        out.push(("source_workload_namespace", l(or(&me.namespace, UNKNOWN))));
        out.push(("source_principal", l(or(&k.local_san, UNKNOWN))));
        out.push(("source_app", l(or(&me.app, UNKNOWN))));
        out.push(("source_version", l(or(&me.version, UNKNOWN))));
        out.push(("source_cluster", l(or(&me.cluster, UNKNOWN))));
        out.push(("destination_workload", l(or(&peer.workload, UNKNOWN))));
        out.push(("destination_workload_namespace", l(or(peer_namespace, UNKNOWN))));
        out.push(("destination_principal", l(or(&k.peer_san, UNKNOWN))));
        out.push(("destination_app", l(or(&peer.app, UNKNOWN))));
        out.push(("destination_version", l(or(&peer.version, UNKNOWN))));
        out.push(("destination_service", l(or(&k.service_host, UNKNOWN))));
        out.push(("destination_canonical_service", l(or(&peer.canonical_service, UNKNOWN))));
        out.push(("destination_canonical_revision", l(or(&peer.canonical_revision, "latest"))));
        out.push(("destination_service_name", l(or(&k.service_name, UNKNOWN))));
        out.push(("destination_service_namespace", l(or(peer_namespace, UNKNOWN))));
        out.push(("destination_cluster", l(or(&peer.cluster, UNKNOWN))));
    }
    out.push((
        "request_protocol",
        l(match k.protocol {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
        }),
    ));
    if k.protocol != Protocol::Tcp {
        out.push(("response_code", k.response_code.to_string()));
        out.push(("grpc_response_status", k.grpc_status.map(|g| g.to_string()).unwrap_or_default()));
    }
    out.push(("response_flags", k.flags.short_string()));
    // At the destination: mutual TLS when both sides have a principal; the source cannot tell.
    let security = if !s.destination {
        UNKNOWN
    } else if !k.peer_san.is_empty() && !k.local_san.is_empty() {
        "mutual_tls"
    } else {
        "none"
    };
    out.push(("connection_security_policy", l(security)));
    out
}

/// The cache key: fixed-size, every string an interned id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub peer: u32,
    pub peer_san: u32,
    pub local_san: u32,
    pub service_host: u32,
    pub service_name: u32,
    pub protocol: Protocol,
    pub response_code: u16,
    pub grpc_status: Option<u32>,
    pub flags: ResponseFlags,
    /// The request attributes the dimensions read, interned (`Settings::attrs` order).
    pub dims: [u32; dimensions::MAX],
}

/// Values interned by a string key: a lookup of a key already seen is lock-free and does not
/// allocate; a new key is added under a mutex no reader waits on (copy-on-write).
pub struct Interner<V> {
    ids: ArcSwap<crate::FastMap<Box<str>, u32>>,
    values: ArcSwap<Vec<Arc<V>>>,
    insert: Mutex<()>,
}

impl<V> Default for Interner<V> {
    fn default() -> Self {
        Interner {
            ids: ArcSwap::from_pointee(crate::FastMap::default()),
            values: ArcSwap::from_pointee(Vec::new()),
            insert: Mutex::new(()),
        }
    }
}

impl<V> Interner<V> {
    pub fn id(&self, key: &str, make: impl FnOnce() -> V) -> u32 {
        if let Some(id) = self.ids.load().get(key) {
            return *id;
        }
        let _g = self.insert.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = self.ids.load().get(key) {
            return *id;
        }
        let mut values = Vec::clone(&self.values.load());
        let id = values.len() as u32;
        values.push(Arc::new(make()));
        self.values.store(Arc::new(values));
        let mut ids = crate::FastMap::clone(&self.ids.load());
        ids.insert(key.into(), id);
        self.ids.store(Arc::new(ids));
        id
    }

    pub fn value(&self, id: u32) -> Option<Arc<V>> {
        self.values.load().get(id as usize).cloned()
    }
}

/// Handles per label set, read without a lock; a miss (a label set never seen) builds the
/// handles and publishes a new map under a mutex no reader waits on.
pub struct Cache<V> {
    map: ArcSwap<crate::FastMap<Key, Arc<V>>>,
    insert: Mutex<()>,
}

impl<V> Default for Cache<V> {
    fn default() -> Self {
        Cache { map: ArcSwap::from_pointee(crate::FastMap::default()), insert: Mutex::new(()) }
    }
}

impl<V> Cache<V> {
    pub fn get(&self, key: Key, make: impl FnOnce(&Key) -> V) -> Arc<V> {
        if let Some(v) = self.map.load().get(&key) {
            return v.clone();
        }
        let _g = self.insert.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = self.map.load().get(&key) {
            return v.clone();
        }
        let v = Arc::new(make(&key));
        let mut m = crate::FastMap::clone(&self.map.load());
        m.insert(key, v.clone());
        self.map.store(Arc::new(m));
        v
    }

    #[cfg(test)]
    pub fn entries(&self) -> usize {
        self.map.load().len()
    }
}

/// A filter's metrics: its config, the interned values and the handle cache.
pub struct Metrics<H> {
    pub store: Arc<Store>,
    pub settings: Settings,
    strings: Interner<String>,
    peers: Interner<Workload>,
    cache: Cache<H>,
}

impl<H> Metrics<H> {
    pub fn new(store: Arc<Store>, settings: Settings) -> Self {
        Metrics { store, settings, strings: Interner::default(), peers: Interner::default(), cache: Cache::default() }
    }

    /// The id of a string label value.
    pub fn string(&self, s: &str) -> u32 {
        self.strings.id(s, || s.to_string())
    }

    /// The id of a peer: by its Istio id (`x-envoy-peer-metadata-id`, the exchange's id) when it
    /// has one, so its metadata is read once; else by its labels.
    pub fn peer(&self, id: Option<&str>, workload: impl FnOnce() -> Workload) -> u32 {
        match id.filter(|i| !i.is_empty()) {
            Some(id) => self.peers.id(id, workload),
            None => {
                let w = workload();
                if w == Workload::default() {
                    // No peer metadata (a caller outside the mesh): one fixed entry, no key built.
                    return self.peers.id("", || w);
                }
                let key = format!(
                    "\0{}\0{}\0{}\0{}\0{}\0{}\0{}",
                    w.workload, w.namespace, w.app, w.version, w.canonical_service, w.canonical_revision, w.cluster
                );
                self.peers.id(&key, || w)
            }
        }
    }

    /// The handles of a label set; the first time, `make` builds them from the labels.
    pub fn handles(&self, key: Key, make: impl FnOnce(&Labelled<'_>) -> H) -> Arc<H> {
        self.cache.get(key, |k| {
            let s = |id: u32| self.strings.value(id).map(|v| String::clone(&v)).unwrap_or_default();
            let facts = Facts {
                peer: self.peers.value(k.peer).map(|w| Workload::clone(&w)).unwrap_or_default(),
                peer_san: s(k.peer_san),
                local_san: s(k.local_san),
                service_host: s(k.service_host),
                service_name: s(k.service_name),
                protocol: k.protocol,
                response_code: k.response_code,
                grpc_status: k.grpc_status,
                flags: k.flags,
            };
            let dims: Vec<String> = k.dims.iter().take(self.settings.attrs.len()).map(|id| s(*id)).collect();
            make(&Labelled {
                settings: &self.settings,
                store: &self.store,
                labels: labels(&self.settings, &facts),
                dims,
            })
        })
    }

    /// The interned values of the request attributes the dimensions read.
    pub fn dims<'r>(&self, read: impl Fn(&dimensions::Attr) -> &'r str) -> [u32; dimensions::MAX] {
        let mut out = [0u32; dimensions::MAX];
        let none = self.string("");
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = self.settings.attrs.get(i).map_or(none, |a| self.string(read(a)));
        }
        out
    }
}

/// A new label set's standard labels, from which each metric's handle is made.
pub struct Labelled<'a> {
    settings: &'a Settings,
    store: &'a Store,
    pub labels: Vec<(&'static str, String)>,
    dims: Vec<String>,
}

impl Labelled<'_> {
    pub fn counter(&self, m: Metric) -> Option<Counter> {
        self.settings.counter(self.store, m, &self.labels, &self.dims)
    }

    pub fn histogram(&self, m: Metric) -> Option<Histogram> {
        self.settings.histogram(self.store, m, &self.labels, &self.dims)
    }
}

#[cfg(test)]
mod tests;
