//! Istio's telemetry in the generated config, as istiod 1.24 adds it (pilot/pkg/networking/core
//! listener_builder.go `buildHTTPConnectionManager`, networkfilter.go, tracing.go, accesslog.go,
//! cluster_builder.go; pilot/pkg/model telemetry.go): a pass over the listeners and clusters the
//! rest of `xds` builds, so the other generators stay as they are.
//!
//! - HTTP connection managers: the peer metadata filter (`istio.metadata_exchange`,
//!   `io.istio.http.peer_metadata.Config`: downstream discovery and propagation on sidecar
//!   inbound, upstream on outbound and the gateway) first; `istio.alpn` (not on sidecar inbound)
//!   before the fault/CORS/router filters; `istio.stats` (`stats.PluginConfig`,
//!   `disable_host_header_fallback` on sidecar inbound and the gateway) just before the router,
//!   when a prometheus metrics provider is in scope; tracing with the Zipkin provider, Istio's
//!   custom tags and sampling; the UUID request-id extension; file access logs.
//! - TCP chains: `istio.stats` before `tcp_proxy`.
//! - Sidecar inbound chains: the TCP metadata exchange network filter first.
//! - Outbound clusters and PassthroughCluster: the TCP metadata exchange as an upstream network
//!   filter; `inbound|PORT||` clusters: the `istio.services` metadata of the pod's services.
//!
//! Left out: `envoy.filters.http.grpc_stats` (remora skips it as telemetry-only: no gRPC stats),
//! listener-level access logs for connections that match no chain.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::Proxy;
use crate::meshconfig::{self, ProxyTelemetry};
use crate::model::{Mesh, Pod};

const HCM: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    SidecarInbound,
    SidecarOutbound,
    Gateway,
}

fn tcp_metadata_exchange() -> Value {
    json!({"name": "istio.metadata_exchange", "typed_config": {"@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
        "type_url": "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
        "value": {"protocol": "istio-peer-exchange", "enable_discovery": true}}})
}

/// xdsfilters.SidecarInboundMetadataFilter / SidecarOutboundMetadataFilter.
fn peer_metadata(class: Class) -> Value {
    let dir = if class == Class::SidecarInbound { "downstream" } else { "upstream" };
    json!({"name": "istio.metadata_exchange", "typed_config": {"@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
    "type_url": "type.googleapis.com/io.istio.http.peer_metadata.Config",
    "value": {
        format!("{dir}_discovery"): [{"istio_headers": {}}, {"workload_discovery": {}}],
        format!("{dir}_propagation"): [{"istio_headers": {}}],
    }}})
}

fn alpn() -> Value {
    json!({"name": "istio.alpn", "typed_config": {"@type": "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
        "alpn_override": [
            {"alpn_override": ["istio-http/1.0", "istio", "http/1.0"]},
            {"upstream_protocol": "HTTP11", "alpn_override": ["istio-http/1.1", "istio", "http/1.1"]},
            {"upstream_protocol": "HTTP2", "alpn_override": ["istio-h2", "istio", "h2"]}]}})
}

/// `generateStatsConfig` for the prometheus provider: None when the class's mode has every
/// metric disabled.
fn stats(class: Class, plan: &Plan) -> Option<Value> {
    if !plan.telemetry.metrics {
        return None;
    }
    let mut cfg = plan.telemetry.stats.config(class != Class::SidecarInbound)?;
    cfg["@type"] = json!("type.googleapis.com/stats.PluginConfig");
    if class != Class::SidecarOutbound {
        cfg["disable_host_header_fallback"] = json!(true);
    }
    Some(json!({"name": "istio.stats", "typed_config": cfg}))
}

/// The node labels istiod reads for tracing tags: canonical service and revision.
pub fn canonical(labels: &BTreeMap<String, String>, workload: &str) -> (String, String) {
    let get = |ks: &[&str]| ks.iter().find_map(|k| labels.get(*k).filter(|v| !v.is_empty()).cloned());
    let name = get(&["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"]).unwrap_or(workload.into());
    let rev = get(&["service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"])
        .unwrap_or_else(|| "latest".into());
    (name, rev)
}

/// The pod labels as the injector leaves them: the canonical service labels added.
pub fn injected_labels(labels: &BTreeMap<String, String>, workload: &str) -> BTreeMap<String, String> {
    let (name, rev) = canonical(labels, workload);
    let mut l = labels.clone();
    l.entry("service.istio.io/canonical-name".into()).or_insert(name);
    l.entry("service.istio.io/canonical-revision".into()).or_insert(rev);
    l.entry("security.istio.io/tlsMode".into()).or_insert_with(|| "istio".into());
    l
}

/// The node metadata pilot-agent writes into the bootstrap (its `ISTIO_META_*` and pod facts),
/// the part the telemetry filters and istiod read: the peer metadata exchange sends
/// NAME/NAMESPACE/LABELS/WORKLOAD_NAME/OWNER/CLUSTER_ID/MESH_ID/APP_CONTAINERS/INSTANCE_IPS/
/// SERVICE_ACCOUNT, and `istio.stats` labels metrics with them. `None`: the ingress gateway.
pub fn node_metadata(pod: Option<&Pod>) -> Value {
    let gw_labels: BTreeMap<String, String> =
        [("app", "istio-ingressgateway"), ("istio", "ingressgateway")].map(|(k, v)| (k.into(), v.into())).into();
    let (name, ns, workload, labels, sa, ip, containers) = match pod {
        Some(p) => (
            p.name.clone(),
            p.namespace.clone(),
            p.deployment.clone(),
            injected_labels(&p.labels, &p.deployment),
            p.service_account.clone(),
            p.ip.to_string(),
            p.containers.join(","),
        ),
        None => (
            "istio-ingressgateway-0".into(),
            super::GATEWAY_NAMESPACE.into(),
            "istio-ingressgateway".into(),
            injected_labels(&gw_labels, "istio-ingressgateway"),
            super::GATEWAY_SA.into(),
            "127.0.0.1".into(),
            String::new(),
        ),
    };
    let mut m = json!({
        "NAME": name, "NAMESPACE": ns, "LABELS": labels, "WORKLOAD_NAME": workload,
        "OWNER": format!("kubernetes://apis/apps/v1/namespaces/{ns}/deployments/{workload}"),
        "SERVICE_ACCOUNT": sa, "CLUSTER_ID": "Kubernetes", "MESH_ID": crate::model::TRUST_DOMAIN,
        "INSTANCE_IPS": ip, "INTERCEPTION_MODE": "NONE", "ISTIO_VERSION": "1.24.0",
    });
    if !containers.is_empty() {
        m["APP_CONTAINERS"] = json!(containers);
    }
    m
}

/// `buildServiceTags`, the dry-run policy tags and the Telemetry's own tags
/// (`buildCustomTagsFromProvider`), sorted by tag as istiod sorts them.
fn custom_tags(
    labels: &BTreeMap<String, String>,
    workload: &str,
    ns: &str,
    own: &BTreeMap<String, meshconfig::CustomTag>,
) -> Vec<Value> {
    let (service, rev) = canonical(labels, workload);
    let dry_run = |tag: &str, key: &str| {
        json!({"tag": tag, "metadata": {"kind": {"request": {}}, "metadata_key": {"key": "envoy.filters.http.rbac",
            "path": [{"key": key}]}}})
    };
    let literal = |tag: &str, v: &str| json!({"tag": tag, "literal": {"value": v}});
    let mut tags = vec![
        literal("istio.canonical_revision", &rev),
        literal("istio.canonical_service", &service),
        literal("istio.mesh_id", crate::model::TRUST_DOMAIN),
        literal("istio.namespace", ns),
        literal("istio.cluster_id", "Kubernetes"),
        dry_run("istio.authorization.dry_run.allow_policy.name", "istio_dry_run_allow_shadow_effective_policy_id"),
        dry_run("istio.authorization.dry_run.allow_policy.result", "istio_dry_run_allow_shadow_engine_result"),
        dry_run("istio.authorization.dry_run.deny_policy.name", "istio_dry_run_deny_shadow_effective_policy_id"),
        dry_run("istio.authorization.dry_run.deny_policy.result", "istio_dry_run_deny_shadow_engine_result"),
    ];
    for (tag, v) in own {
        let source = |s: &meshconfig::ValueSource| {
            let mut v = json!({"name": s.name});
            if let Some(d) = &s.default_value {
                v["default_value"] = json!(d);
            }
            v
        };
        if let Some(l) = &v.literal {
            tags.push(literal(tag, &l.value));
        } else if let Some(e) = &v.environment {
            tags.push(json!({"tag": tag, "environment": source(e)}));
        } else if let Some(h) = &v.header {
            tags.push(json!({"tag": tag, "request_header": source(h)}));
        }
    }
    tags.sort_by(|a, b| a["tag"].as_str().cmp(&b["tag"].as_str()));
    tags
}

/// The HCM's `tracing` for a Zipkin provider (`configureFromProviderConfig`, `zipkinConfig` and
/// `configureSampling` of istiod 1.24).
fn tracing(mesh: &Mesh, plan: &meshconfig::TracingPlan, tags: Vec<Value>) -> Option<Value> {
    let (zipkin, sampling) = (&plan.zipkin, plan.sampling);
    let (host, cluster) = meshconfig::lookup(mesh, &zipkin.service, zipkin.port).ok()?;
    let mut t = json!({
        "client_sampling": {"value": 100.0},
        "random_sampling": {"value": sampling},
        "overall_sampling": {"value": 100.0},
        "custom_tags": tags,
        "provider": {"name": "envoy.tracers.zipkin", "typed_config": {
            "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
            "collector_cluster": cluster,
            "collector_endpoint": zipkin.path.clone().unwrap_or_else(|| "/api/v2/spans".into()),
            "collector_endpoint_version": "HTTP_JSON",
            "collector_hostname": host,
            "trace_id_128bit": !zipkin.enable_64bit_trace_id.unwrap_or(false),
            "shared_span_context": false,
        }},
    });
    if let Some(n) = zipkin.max_tag_length.filter(|n| *n > 0) {
        t["max_path_tag_length"] = json!(n);
    }
    Some(t)
}

fn access_log(path: &str, format: &str) -> Value {
    json!({"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": path,
        "log_format": {"text_format_source": {"inline_string": format}}}})
}

/// What every HCM of one proxy gets, computed once per proxy.
struct Plan {
    telemetry: ProxyTelemetry,
    tracing: Option<Value>,
}

fn plan(mesh: &Mesh, proxy: &Proxy) -> Plan {
    let meta = node_metadata(match proxy {
        Proxy::Sidecar(p) => Some(p),
        Proxy::Gateway { .. } => None,
    });
    let ns = meta["NAMESPACE"].as_str().unwrap_or_default().to_string();
    let workload = meta["WORKLOAD_NAME"].as_str().unwrap_or_default().to_string();
    let labels: BTreeMap<String, String> = serde_json::from_value(meta["LABELS"].clone()).unwrap_or_default();
    let telemetry = meshconfig::for_proxy(mesh, &ns);
    let tracing =
        telemetry.tracing.as_ref().and_then(|t| tracing(mesh, t, custom_tags(&labels, &workload, &ns, &t.custom_tags)));
    Plan { telemetry, tracing }
}

fn position(filters: &[Value], names: &[&str]) -> usize {
    filters.iter().position(|f| f["name"].as_str().is_some_and(|n| names.contains(&n))).unwrap_or(filters.len())
}

fn decorate_hcm(hcm: &mut Value, class: Class, plan: &Plan) {
    let Some(cfg) = hcm.get_mut("typed_config") else { return };
    if let Some(Value::Array(filters)) = cfg.get_mut("http_filters") {
        filters.insert(0, peer_metadata(class));
        if class != Class::SidecarInbound {
            let at = position(
                filters,
                &["envoy.filters.http.fault", "envoy.filters.http.cors", "envoy.filters.http.router"],
            );
            filters.insert(at, alpn());
        }
        if let Some(f) = stats(class, plan) {
            let at = position(filters, &["envoy.filters.http.router"]);
            filters.insert(at, f);
        }
    }
    if let Some(t) = &plan.tracing {
        cfg["tracing"] = t.clone();
    }
    cfg["request_id_extension"] = json!({"typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
        "use_request_id_for_trace_sampling": true}});
    if !plan.telemetry.access_logs.is_empty() {
        cfg["access_log"] = plan.telemetry.access_logs.iter().map(|(p, f)| access_log(p, f)).collect();
    }
}

/// Adds Istio's telemetry to the listeners of `proxy`.
pub fn listeners(mesh: &Mesh, proxy: &Proxy, listeners: &mut [Value]) {
    let plan = plan(mesh, proxy);
    for l in listeners.iter_mut() {
        let class = match (proxy, l["traffic_direction"].as_str()) {
            (Proxy::Gateway { .. }, _) => Class::Gateway,
            (_, Some("INBOUND")) => Class::SidecarInbound,
            _ => Class::SidecarOutbound,
        };
        let Some(Value::Array(chains)) = l.get_mut("filter_chains") else { continue };
        for chain in chains.iter_mut() {
            let Some(Value::Array(filters)) = chain.get_mut("filters") else { continue };
            for f in filters.iter_mut().filter(|f| f["name"] == HCM) {
                decorate_hcm(f, class, &plan);
            }
            let at = filters.iter().position(|f| f["name"] == TCP_PROXY);
            if let (Some(at), Some(f)) = (at, stats(class, &plan)) {
                filters.insert(at, f);
            }
            if class == Class::SidecarInbound {
                filters.insert(0, tcp_metadata_exchange());
            }
        }
    }
}

/// Adds the metadata exchange to the outbound clusters and PassthroughCluster, and the services'
/// `istio.services` metadata to the inbound clusters.
pub fn clusters(mesh: &Mesh, proxy: &Proxy, clusters: &mut [Value]) {
    for c in clusters.iter_mut() {
        let name = c["name"].as_str().unwrap_or_default().to_string();
        if name.starts_with("outbound|") || name == "PassthroughCluster" {
            c["filters"] = json!([tcp_metadata_exchange()]);
        }
        if let (Proxy::Sidecar(pod), Some(port)) =
            (proxy, name.strip_prefix("inbound|").and_then(|r| r.split('|').next()))
        {
            let port: u16 = port.parse().unwrap_or(0);
            let services: Vec<Value> = mesh
                .services
                .iter()
                .filter(|s| s.ports.iter().any(|p| p.target == port))
                .filter(|s| mesh.pods_of(s, &Default::default()).any(|p| p.name == pod.name))
                .map(|s| json!({"host": s.fqdn(), "name": s.name, "namespace": s.namespace}))
                .collect();
            if !services.is_empty() {
                c["metadata"] = json!({"filter_metadata": {"istio": {"services": services}}});
            }
        }
    }
}

/// pilot-agent's `stats_config` tags (its bootstrap template in Istio 1.2x): Istio's own
/// `cluster_name` (whole `outbound|PORT|SUBSET|HOST` names, dots included) and the other tag
/// extractors, instead of Envoy's defaults. Its `stats_matcher` (which keeps only a few stat
/// families unless `proxyStatsMatcher` adds more) is not set: the demo exports every stat.
pub fn stats_config() -> Value {
    let tag = |name: &str, regex: &str| json!({"tag_name": name, "regex": regex});
    json!({"use_all_default_tags": false, "stats_tags": [
        tag("cluster_name", r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)"),
        tag("tcp_prefix", r"^tcp\.((.*?)\.)\w+?$"),
        tag("response_code", r"_rq(_(\d{3}))$"),
        tag("response_code_class", r"_rq(_(\dxx))$"),
        tag("http_conn_manager_listener_prefix", r"^listener(?=\.).*?\.http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"),
        tag("http_conn_manager_prefix", r"^http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"),
        tag("listener_address", r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"),
        tag("mongo_prefix", r"^mongo\.(.+?)\.(collection|cmd|cx_|op_|delays_|decoding_)(.*?)$"),
        tag("cache", r"(cache\.(.+?)\.)"),
        tag("component", r"(component\.(.+?)\.)"),
        tag("tag", r"(tag\.(.+?);\.)"),
        tag("wasm_filter", r"(wasm_filter\.(.+?)\.)"),
        tag("authz_enforce_result", r"rbac(\.(allowed|denied))"),
        tag("authz_dry_run_action", r"(\.istio_dry_run_(allow|deny)_)"),
        tag("authz_dry_run_result", r"(\.shadow_(allowed|denied))"),
    ]})
}

/// The config for upstream Envoy, which lacks Istio's own extensions (`istio.alpn`,
/// `istio.metadata_exchange`, `istio.stats`): they are dropped from listener, HTTP and cluster
/// filter lists, and the `istio-peer-exchange` ALPN with them; everything else is kept. (Istio's
/// proxy is Envoy built with them; `remora demo --envoy` and the Envoy ACK tests run stock Envoy.)
pub fn for_upstream_envoy(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("alpn_protocols", Value::Array(a)) => Value::Array(
                            a.iter().filter(|p| p.as_str() != Some("istio-peer-exchange")).cloned().collect(),
                        ),
                        ("filters" | "http_filters", Value::Array(a)) => Value::Array(
                            a.iter()
                                .filter(|f| !f["name"].as_str().is_some_and(|n| n.starts_with("istio.")))
                                .map(for_upstream_envoy)
                                .collect(),
                        ),
                        _ => for_upstream_envoy(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(for_upstream_envoy).collect()),
        other => other.clone(),
    }
}
