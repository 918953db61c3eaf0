//! Envoy's Zipkin tracer (`envoy.tracers.zipkin`, `ZipkinConfig`): the provider's settings, the
//! Zipkin v2 JSON form of a finished span, and the reporter that batches spans and POSTs them to
//! `collector_endpoint` on a host of `collector_cluster`, on the main runtime.
//!
//! Workers hand finished, sampled spans to the reporter over a bounded channel and never wait:
//! when it is full the span is dropped and counted (`tracing.zipkin.spans_dropped`). The reporter
//! flushes when `MIN_FLUSH_SPANS` spans are buffered or every `FLUSH_INTERVAL`, as Envoy does.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use envoy_types::pb::envoy::config::trace::v3::{ZipkinConfig, zipkin_config};
use serde_json::{Map, Value, json};

use crate::config::ConfigError;
use crate::stats::{Counter, Store};

/// Envoy's `tracing.zipkin.min_flush_spans` default.
pub const MIN_FLUSH_SPANS: usize = 5;
/// Envoy's `tracing.zipkin.flush_interval_ms` default.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Spans waiting for the reporter; beyond this they are dropped.
const QUEUE: usize = 4096;
/// Reports being sent at once.
const MAX_REPORTS_IN_FLIGHT: usize = 16;
/// Spans buffered per collector while it is unreachable; beyond this they are dropped.
const MAX_BUFFERED: usize = 1024;

/// A compiled `ZipkinConfig`.
#[derive(Debug)]
pub struct Zipkin {
    pub collector_cluster: String,
    pub collector_endpoint: String,
    /// `collector_hostname` (Envoy's default: the cluster name).
    pub collector_host: String,
    pub trace_id_128bit: bool,
    pub shared_span_context: bool,
}

impl Zipkin {
    pub fn from_proto(p: &ZipkinConfig) -> Result<Self, ConfigError> {
        use zipkin_config::CollectorEndpointVersion as V;
        if p.collector_cluster.is_empty() {
            return Err(ConfigError::new("collector_cluster", "value length must be at least 1 characters"));
        }
        if p.collector_endpoint.is_empty() {
            return Err(ConfigError::new("collector_endpoint", "value length must be at least 1 characters"));
        }
        match V::try_from(p.collector_endpoint_version) {
            Ok(V::HttpJson) => {}
            _ => {
                return Err(ConfigError::new(
                    "collector_endpoint_version",
                    "only HTTP_JSON is supported by remora (HTTP_PROTO and GRPC are not)",
                ));
            }
        }
        if p.trace_context_option != 0 {
            return Err(ConfigError::new("trace_context_option", "only USE_B3 is supported by remora"));
        }
        Ok(Zipkin {
            collector_cluster: p.collector_cluster.clone(),
            collector_endpoint: p.collector_endpoint.clone(),
            collector_host: if p.collector_hostname.is_empty() {
                p.collector_cluster.clone()
            } else {
                p.collector_hostname.clone()
            },
            trace_id_128bit: p.trace_id_128bit,
            shared_span_context: p.shared_span_context.map(|b| b.value).unwrap_or(true),
        })
    }
}

/// A finished, sampled span on its way to the reporter.
#[derive(Debug)]
pub struct FinishedSpan {
    pub zipkin: Arc<Zipkin>,
    pub trace_id_high: Option<u64>,
    pub trace_id: u64,
    pub id: u64,
    pub parent_id: Option<u64>,
    pub name: String,
    pub server: bool,
    /// A server span sharing its context with the client's span (no timestamp of its own).
    pub shared: bool,
    pub timestamp_us: u64,
    pub duration_us: u64,
    pub service_name: Arc<str>,
    pub tags: Vec<(&'static str, String)>,
    pub custom_tags: Vec<(Arc<str>, String)>,
}

impl FinishedSpan {
    /// The Zipkin v2 JSON span (Envoy's `JsonV2Serializer`).
    pub fn to_json(&self, local_address: std::net::IpAddr) -> Value {
        let mut m = Map::new();
        let trace_id = match self.trace_id_high {
            Some(h) => format!("{h:016x}{:016x}", self.trace_id),
            None => format!("{:016x}", self.trace_id),
        };
        m.insert("traceId".into(), trace_id.into());
        if let Some(p) = self.parent_id {
            m.insert("parentId".into(), format!("{p:016x}").into());
        }
        m.insert("id".into(), format!("{:016x}", self.id).into());
        if !self.name.is_empty() {
            m.insert("name".into(), self.name.clone().into());
        }
        m.insert("kind".into(), if self.server { "SERVER" } else { "CLIENT" }.into());
        if self.shared {
            m.insert("shared".into(), true.into());
        }
        m.insert("timestamp".into(), self.timestamp_us.into());
        // The closing annotation (server send / client receive), as Envoy's JSON v2 carries it.
        m.insert(
            "annotations".into(),
            json!([{"timestamp": self.timestamp_us + self.duration_us, "value": if self.server { "ss" } else { "cr" }}]),
        );
        m.insert("duration".into(), self.duration_us.into());
        let mut ep = Map::new();
        ep.insert("serviceName".into(), self.service_name.to_string().into());
        match local_address {
            std::net::IpAddr::V4(a) => ep.insert("ipv4".into(), a.to_string().into()),
            std::net::IpAddr::V6(a) => ep.insert("ipv6".into(), a.to_string().into()),
        };
        ep.insert("port".into(), 0.into());
        m.insert("localEndpoint".into(), Value::Object(ep));
        let mut tags = Map::new();
        for (k, v) in &self.tags {
            tags.insert((*k).to_string(), v.clone().into());
        }
        for (k, v) in &self.custom_tags {
            tags.insert(k.to_string(), v.clone().into());
        }
        if !tags.is_empty() {
            m.insert("tags".into(), Value::Object(tags));
        }
        Value::Object(m)
    }
}

/// The reporter's stats (`tracing.zipkin.*`).
#[derive(Clone)]
struct Stats {
    spans_sent: Counter,
    spans_dropped: Counter,
    reports_sent: Counter,
    reports_dropped: Counter,
    reports_skipped_no_cluster: Counter,
    timer_flushed: Counter,
}

struct Sink {
    tx: tokio::sync::mpsc::Sender<FinishedSpan>,
    spans_dropped: Counter,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Hands a finished span to the reporter without waiting; drops it (counted) when the queue is
/// full or no reporter runs.
pub fn report(span: FinishedSpan) {
    if let Some(s) = SINK.get()
        && s.tx.try_send(span).is_err()
    {
        s.spans_dropped.inc();
    }
}

/// Finds the address of a host of a cluster (the server's view of the published clusters).
pub type Resolver = Arc<dyn Fn(&str) -> Option<SocketAddr> + Send + Sync>;

/// Starts the reporter on the current (main) runtime. Called once by the server.
pub fn start(stats: &Store, local_address: std::net::IpAddr, resolve: Resolver) {
    let c = |n: &str| stats.counter(&format!("tracing.zipkin.{n}"));
    let st = Stats {
        spans_sent: c("spans_sent"),
        spans_dropped: c("spans_dropped"),
        reports_sent: c("reports_sent"),
        reports_dropped: c("reports_dropped"),
        reports_skipped_no_cluster: c("reports_skipped_no_cluster"),
        timer_flushed: c("timer_flushed"),
    };
    // Envoy's `reports_failed` (a stream that fails after the request went out) stays 0:
    // remora counts every failed report as dropped, as Envoy does for an unreachable collector.
    let _ = c("reports_failed");
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    if SINK.set(Sink { tx, spans_dropped: st.spans_dropped.clone() }).is_err() {
        return;
    }
    tokio::spawn(run(rx, st, local_address, resolve));
}

async fn run(mut rx: tokio::sync::mpsc::Receiver<FinishedSpan>, st: Stats, local: std::net::IpAddr, resolve: Resolver) {
    // Buffered spans per collector (cluster, endpoint, host).
    let mut buffers: Vec<(Arc<Zipkin>, Vec<FinishedSpan>)> = Vec::new();
    // Reports in flight are bounded: a collector that hangs cannot pile up connections; a batch
    // that finds no slot is dropped and counted.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_REPORTS_IN_FLIGHT));
    let send = |z: &Arc<Zipkin>, spans: Vec<FinishedSpan>| match slots.clone().try_acquire_owned() {
        Ok(permit) => {
            let (z, st, resolve) = (z.clone(), st.clone(), resolve.clone());
            tokio::spawn(async move {
                flush(z, spans, st, local, resolve).await;
                drop(permit);
            });
        }
        Err(_) => {
            st.reports_dropped.inc();
            st.spans_dropped.add(spans.len() as u64);
        }
    };
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            span = rx.recv() => {
                let Some(span) = span else { return };
                let z = span.zipkin.clone();
                let i = match buffers.iter().position(|(k, _)| {
                    k.collector_cluster == z.collector_cluster
                        && k.collector_endpoint == z.collector_endpoint
                        && k.collector_host == z.collector_host
                }) {
                    Some(i) => i,
                    None => {
                        buffers.push((z, Vec::new()));
                        buffers.len() - 1
                    }
                };
                let (z, buf) = &mut buffers[i];
                if buf.len() >= MAX_BUFFERED {
                    st.spans_dropped.inc();
                    continue;
                }
                buf.push(span);
                if buf.len() >= MIN_FLUSH_SPANS {
                    let spans = std::mem::take(buf);
                    send(z, spans);
                }
            }
            _ = tick.tick() => {
                for (z, buf) in buffers.iter_mut().filter(|(_, b)| !b.is_empty()) {
                    st.timer_flushed.inc();
                    let spans = std::mem::take(buf);
                    send(z, spans);
                }
            }
        }
    }
}

/// POSTs one batch; a failure drops it (Envoy does not retry reports).
async fn flush(z: Arc<Zipkin>, spans: Vec<FinishedSpan>, st: Stats, local: std::net::IpAddr, resolve: Resolver) {
    let Some(addr) = resolve(&z.collector_cluster) else {
        st.reports_skipped_no_cluster.inc();
        return;
    };
    let n = spans.len() as u64;
    // Counted when the report goes out, whatever the collector answers (as Envoy).
    st.spans_sent.add(n);
    let body = Value::Array(spans.iter().map(|s| s.to_json(local)).collect()).to_string();
    // As Envoy's reporter: a 2xx is sent; any other answer, and a collector that cannot be
    // reached or does not answer in 5 s (Envoy's async client then answers 503/504 itself),
    // drops the report. Reports are not retried.
    match tokio::time::timeout(Duration::from_secs(5), post(addr, &z, body)).await {
        Ok(Ok(status)) if (200..300).contains(&status) => {
            st.reports_sent.inc();
        }
        Ok(Ok(_)) | Err(_) => {
            st.reports_dropped.inc();
            st.spans_dropped.add(n);
        }
        Ok(Err(e)) => {
            tracing::debug!(target: "remora::tracing", "zipkin report to {addr} failed: {e}");
            st.reports_dropped.inc();
            st.spans_dropped.add(n);
        }
    }
}

async fn post(addr: SocketAddr, z: &Zipkin, body: String) -> Result<u16, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::post(z.collector_endpoint.as_str())
        .header(http::header::HOST, z.collector_host.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
    let resp = send.send_request(req).await?;
    Ok(resp.status().as_u16())
}
