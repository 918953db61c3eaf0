//! Istio's stats filter (`istio.stats`, `stats.PluginConfig`), its request count:
//! `istio_requests_total` in the `istiocustom` stat namespace, with Istio's standard labels,
//! rendered by `/stats/prometheus` as `istio_requests_total{reporter="destination",...}`.
//!
//! The reporter is `destination` on an INBOUND listener (the peer is the downstream: its
//! `x-envoy-peer-metadata` headers as the peer metadata filter kept them, else what Istio's TCP
//! metadata exchange brought, and its certificate's URI SAN as `source_principal`) and `source`
//! elsewhere (the peer is the upstream, from the response's peer metadata headers). The node's
//! own metadata (WORKLOAD_NAME, NAMESPACE, LABELS, CLUSTER_ID) fills the other side.
//!
//! Not yet: the duration and size histograms, the TCP metrics, `response_flags` (always "-"),
//! `metrics` customisations in the config (dimensions, drops; logged and ignored), and the
//! destination service from cluster metadata (it is the request's host unless
//! `disable_host_header_fallback`, then "unknown").

use std::sync::Arc;

use base64::Engine;
use envoy_types::pb::google::protobuf::{Any, Struct, value};
use prost::Message;

use super::peer_metadata::{DownstreamPeer, METADATA, UpstreamPeer};
use super::{FilterAction, HttpFilter, Parts, RequestCtx};
use crate::config::{BuildCtx, ConfigError};
use crate::stats::Store;

pub const TYPE: &str = "stats.PluginConfig";
const NAMESPACE: &str = "istiocustom";

/// The fields of Istio's PluginConfig this filter reads (unknown fields are skipped).
#[derive(Clone, PartialEq, prost::Message)]
struct PluginConfig {
    #[prost(message, repeated, tag = "6")]
    metrics: Vec<prost_types_any::Empty>,
    #[prost(bool, tag = "9")]
    disable_host_header_fallback: bool,
    #[prost(int32, tag = "10")]
    reporter: i32,
}

mod prost_types_any {
    /// Stands for a message whose content is not read.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Empty {}
}

/// One side of a request: a workload's labels.
#[derive(Debug, Clone)]
struct Workload {
    workload: String,
    namespace: String,
    app: String,
    version: String,
    canonical_service: String,
    canonical_revision: String,
    cluster: String,
}

const UNKNOWN: &str = "unknown";

fn string_field(s: &Struct, key: &str) -> Option<String> {
    match s.fields.get(key)?.kind.as_ref()? {
        value::Kind::StringValue(v) if !v.is_empty() => Some(v.clone()),
        _ => None,
    }
}

impl Workload {
    /// From Istio's node metadata (WORKLOAD_NAME, NAMESPACE, CLUSTER_ID, LABELS).
    fn from_metadata(m: Option<&Struct>) -> Workload {
        let empty = Struct::default();
        let m = m.unwrap_or(&empty);
        let labels = match m.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
            Some(value::Kind::StructValue(l)) => l.clone(),
            _ => Struct::default(),
        };
        let label = |k: &str| string_field(&labels, k);
        let workload = string_field(m, "WORKLOAD_NAME").unwrap_or_else(|| UNKNOWN.into());
        let app = label("app").or_else(|| label("app.kubernetes.io/name")).unwrap_or_else(|| UNKNOWN.into());
        let version = label("version").or_else(|| label("app.kubernetes.io/version")).unwrap_or_else(|| UNKNOWN.into());
        Workload {
            canonical_service: label("service.istio.io/canonical-name")
                .or_else(|| (app != UNKNOWN).then(|| app.clone()))
                .unwrap_or_else(|| workload.clone()),
            canonical_revision: label("service.istio.io/canonical-revision")
                .or_else(|| (version != UNKNOWN).then(|| version.clone()))
                .unwrap_or_else(|| "latest".into()),
            namespace: string_field(m, "NAMESPACE").unwrap_or_else(|| UNKNOWN.into()),
            cluster: string_field(m, "CLUSTER_ID").unwrap_or_else(|| UNKNOWN.into()),
            workload,
            app,
            version,
        }
    }
}

pub struct IstioStats {
    name: String,
    store: Arc<Store>,
    /// True: `reporter=destination` (inbound).
    destination: bool,
    host_fallback: bool,
    me: Workload,
}

pub fn factory(name: &str, any: &Any, cx: &BuildCtx) -> Result<Arc<dyn HttpFilter>, ConfigError> {
    let config = if xds_client::any::type_name(&any.type_url) == TYPE {
        PluginConfig::decode(any.value.as_slice())
            .map_err(|e| ConfigError::new("typed_config", format!("invalid {TYPE}: {e}")))?
    } else {
        // The TypedStruct form carries JSON; only the defaults are honoured then.
        PluginConfig::default()
    };
    if !config.metrics.is_empty() {
        tracing::warn!(target: "remora::config", "{name}: stats.PluginConfig.metrics customisations are not applied");
    }
    Ok(Arc::new(IstioStats {
        name: name.to_string(),
        store: cx.stats.clone(),
        destination: cx.inbound && config.reporter == 0,
        host_fallback: !config.disable_host_header_fallback,
        me: Workload::from_metadata(cx.node.metadata.as_ref()),
    }))
}

/// What the filter remembers between the request and the response.
#[derive(Clone)]
struct Seen {
    grpc: bool,
    host: String,
}

fn decode_header_metadata(h: &http::HeaderMap) -> Option<Struct> {
    let v = h.get(&METADATA)?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(v.as_bytes()).ok()?;
    Struct::decode(bytes.as_slice()).ok()
}

impl HttpFilter for IstioStats {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(&self, cx: &mut RequestCtx<'_>, req: &mut Parts) -> FilterAction {
        let grpc =
            req.headers.get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let host = req
            .uri
            .authority()
            .map(|a| a.host().to_string())
            .or_else(|| {
                req.headers
                    .get(http::header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(|h| h.split(':').next().unwrap_or(h).to_string())
            })
            .unwrap_or_default();
        cx.state.insert(Seen { grpc, host });
        FilterAction::Continue
    }

    fn on_response(&self, cx: &mut RequestCtx<'_>, resp: &mut http::response::Parts) {
        let (grpc, host) = match cx.state.get::<Seen>() {
            Some(s) => (s.grpc, s.host.clone()),
            None => (false, String::new()),
        };
        let me = &self.me;
        let (source, destination, source_principal, destination_principal, security) = if self.destination {
            // The downstream peer: its headers, else the TCP metadata exchange.
            let from_headers = cx.state.get::<DownstreamPeer>().and_then(|p| p.metadata.clone());
            let from_mx = cx.conn.peer_metadata.as_ref().map(|p| p.metadata.clone());
            let peer = Workload::from_metadata(from_headers.as_ref().or(from_mx.as_ref()));
            let principal = cx.conn.peer_uri_sans.first().cloned().unwrap_or_else(|| UNKNOWN.into());
            let mine = cx.conn.local_uri_sans.first().cloned().unwrap_or_else(|| UNKNOWN.into());
            let security = if cx.conn.peer_certificate_presented() { "mutual_tls" } else { "none" };
            (peer, me.clone(), principal, mine, security)
        } else {
            // The upstream peer answered with its headers (read before the peer metadata
            // filter, which runs after this one on responses, strips them).
            let from_state = cx.state.get::<UpstreamPeer>().and_then(|p| p.metadata.clone());
            let peer = Workload::from_metadata(from_state.or_else(|| decode_header_metadata(&resp.headers)).as_ref());
            (me.clone(), peer, UNKNOWN.to_string(), UNKNOWN.to_string(), UNKNOWN)
        };
        let service = if self.host_fallback && !host.is_empty() { host } else { UNKNOWN.to_string() };
        let service_name = service.split('.').next().unwrap_or(UNKNOWN).to_string();
        let service_namespace =
            service.split('.').nth(1).map(str::to_string).unwrap_or_else(|| destination.namespace.clone());
        let grpc_status = if grpc {
            resp.headers.get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
        } else {
            String::new()
        };
        let tags: Vec<(&'static str, String)> = vec![
            ("reporter", if self.destination { "destination" } else { "source" }.into()),
            ("source_workload", source.workload),
            ("source_canonical_service", source.canonical_service),
            ("source_canonical_revision", source.canonical_revision),
            ("source_workload_namespace", source.namespace),
            ("source_principal", source_principal),
            ("source_app", source.app),
            ("source_version", source.version),
            ("source_cluster", source.cluster),
            ("destination_workload", destination.workload),
            ("destination_workload_namespace", destination.namespace),
            ("destination_principal", destination_principal),
            ("destination_app", destination.app),
            ("destination_version", destination.version),
            ("destination_service", service),
            ("destination_canonical_service", destination.canonical_service),
            ("destination_canonical_revision", destination.canonical_revision),
            ("destination_service_name", service_name),
            ("destination_service_namespace", service_namespace),
            ("destination_cluster", destination.cluster),
            ("request_protocol", if grpc { "grpc" } else { "http" }.into()),
            ("response_code", resp.status.as_u16().to_string()),
            ("grpc_response_status", grpc_status),
            ("response_flags", "-".into()),
            ("connection_security_policy", security.into()),
        ];
        self.store.counter_tagged(NAMESPACE, "istio_requests_total", tags).inc();
    }
}
