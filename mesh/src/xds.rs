//! The xDS istiod would send each proxy, in istiod's names and shapes (pilot/pkg/networking/core:
//! cluster_builder.go, listener.go, httproute.go, route/route.go, gateway.go), for interception
//! mode NONE ("plain ports"): listeners bind to the pod's own addresses instead of 15001/15006;
//! inbound listeners are the ones istiod builds in that mode from a Sidecar's ingress listeners
//! (listener_inbound.go), one per served target port, bound to the pod IP.
//! Istio's telemetry (peer metadata, istio.stats, istio.alpn, tracing, access logs) is added by
//! `telemetry` over what the other generators build.

mod authn;
pub mod authz;
pub mod gateway;
mod policy;
mod routes;
pub mod service_entry;
pub mod telemetry;

use serde_json::{Value, json};

use crate::model::{Mesh, Pod, Service, TRUST_DOMAIN};

pub use routes::{gateway_labels, gateway_route_configs, sidecar_route_configs};

/// The proxy a resource set is for.
#[derive(Debug, Clone)]
pub enum Proxy<'a> {
    Sidecar(&'a Pod),
    /// The ingress gateway: the Gateway servers' ports are published on `bind` (server port ->
    /// local port).
    Gateway {
        bind: &'a [(u16, u16)],
    },
}

pub const GATEWAY_NAMESPACE: &str = "istio-system";
pub const GATEWAY_SA: &str = "istio-ingressgateway-service-account";

pub fn gateway_node_id() -> String {
    format!("router~127.0.0.1~istio-ingressgateway-0.{GATEWAY_NAMESPACE}~{GATEWAY_NAMESPACE}.svc.cluster.local")
}

fn sds(name: &str) -> Value {
    json!({"name": name, "sds_config": {
        "api_config_source": {"api_type": "GRPC", "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}],
            "set_node_on_first_message_only": true, "transport_api_version": "V3"},
        "initial_fetch_timeout": "0s", "resource_api_version": "V3"}})
}

fn ads() -> Value {
    json!({"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"})
}

fn dur(secs: f64) -> String {
    let s = format!("{secs:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}s")
}

/// `outbound|PORT|SUBSET|HOST`.
pub fn outbound_name(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// Every cluster of the proxy: `outbound|...` per service port and subset (EDS, mTLS by
/// tlsMode-istio endpoint metadata), the sidecar's `inbound|PORT||` clusters, BlackHoleCluster and
/// PassthroughCluster.
pub fn clusters(mesh: &Mesh, proxy: &Proxy) -> Vec<Value> {
    let mut out = Vec::new();
    for svc in &mesh.services {
        let host = svc.fqdn();
        let dr = mesh.destination_rule(&host);
        let subsets: Vec<&str> =
            std::iter::once("").chain(dr.iter().flat_map(|d| d.spec.subsets.iter().map(|s| s.name.as_str()))).collect();
        for port in &svc.ports {
            for subset in &subsets {
                out.push(outbound_cluster(mesh, svc, port.port, subset));
            }
        }
    }
    if let Proxy::Sidecar(pod) = proxy {
        for (port, target) in inbound_ports(mesh, pod) {
            let name = format!("inbound|{port}||");
            let mut c = json!({
                "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                "name": name, "type": "STATIC",
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address":
                    {"socket_address": {"address": pod.app_ip.to_string(), "port_value": target}}}}]}]},
            });
            // The served service's connection pool applies server side too (istiod's inbound
            // clusters); h2c to the app for `http2` ports.
            let h2 = mesh.services.iter().flat_map(|s| s.ports.iter()).any(|p| p.target == target && p.is_h2());
            policy::apply_connection_pool(&mut c, &policy::inbound(mesh, pod, target), h2);
            out.push(c);
        }
    }
    out.extend(service_entry::clusters(mesh));
    out.push(json!({"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s"}));
    out.push(json!({"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": "PassthroughCluster", "type": "ORIGINAL_DST", "connect_timeout": "10s", "lb_policy": "CLUSTER_PROVIDED",
        "circuit_breakers": {"thresholds": [{"max_connections": 4294967295u32, "max_pending_requests": 4294967295u32,
            "max_requests": 4294967295u32, "max_retries": 4294967295u32, "track_remaining": true}]}}));
    telemetry::clusters(mesh, proxy, &mut out);
    out
}

/// The (service port, target port) pairs a pod serves, once per target port as istiod builds one
/// inbound chain per port.
pub fn inbound_ports(mesh: &Mesh, pod: &Pod) -> Vec<(u16, u16)> {
    let mut out: Vec<(u16, u16)> = Vec::new();
    for svc in &mesh.services {
        if mesh.pods_of(svc, &Default::default()).any(|p| p.name == pod.name) {
            for p in &svc.ports {
                if !out.iter().any(|(_, t)| *t == p.target) {
                    out.push((p.target, p.target));
                }
            }
        }
    }
    out
}

fn outbound_cluster(mesh: &Mesh, svc: &Service, port: u16, subset: &str) -> Value {
    let host = svc.fqdn();
    let name = outbound_name(port, subset, &host);
    let dr = mesh.destination_rule(&host);
    // The subset's and port's policy merged over the rule's (istiod's MergeSubsetTrafficPolicy).
    let tp = policy::effective(dr.map(|d| &d.spec), subset, port);
    let lb = policy::lb_policy(&tp);
    let mut c = json!({
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": name, "type": "EDS",
        "eds_cluster_config": {"eds_config": ads(), "service_name": name},
        "lb_policy": lb,
        "metadata": {"filter_metadata": {"istio": {
            "services": [{"host": host, "namespace": svc.namespace, "name": svc.name}],
        }}},
        "transport_socket_matches": [
            {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": upstream_tls(mesh, svc, port, subset)}},
            {"name": "tlsMode-disabled", "match": {}, "transport_socket": {"name": "envoy.transport_sockets.raw_buffer",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}},
        ],
    });
    if let Some(dr) = dr {
        c["metadata"]["filter_metadata"]["istio"]["config"] = json!(format!(
            "/apis/networking.istio.io/v1alpha3/namespaces/{}/destination-rule/{}",
            dr.namespace, dr.meta.name
        ));
    }
    if let Some(od) = &tp.outlier_detection {
        apply_outlier_detection(&mut c, od);
    }
    // Connect timeout, circuit breakers, HTTP protocol options (h2 for `http2` ports).
    let h2 = svc.ports.iter().any(|p| p.port == port && p.is_h2());
    policy::apply_connection_pool(&mut c, &tp, h2);
    c
}

/// istiod's `applyOutlierDetection` (pilot/pkg/networking/core/cluster_traffic_policy.go):
/// success-rate ejection off, consecutive 5xx and gateway errors enforced at 100 % when set,
/// interval, base ejection time and max ejection percent as given, and the healthy panic
/// threshold set to `minHealthPercent` (0, panic mode off, unless the rule says otherwise).
fn apply_outlier_detection(c: &mut Value, od: &crate::manifest::OutlierDetection) {
    let mut o = json!({"enforcing_success_rate": 0});
    if let Some(v) = od.consecutive5xx_errors {
        o["consecutive_5xx"] = json!(v);
        o["enforcing_consecutive_5xx"] = json!(if v > 0 { 100 } else { 0 });
    }
    if let Some(v) = od.consecutive_gateway_errors {
        o["consecutive_gateway_failure"] = json!(v);
        o["enforcing_consecutive_gateway_failure"] = json!(if v > 0 { 100 } else { 0 });
    }
    if let Some(d) = od.interval.as_deref().and_then(crate::manifest::parse_duration) {
        o["interval"] = json!(dur(d));
    }
    if let Some(d) = od.base_ejection_time.as_deref().and_then(crate::manifest::parse_duration) {
        o["base_ejection_time"] = json!(dur(d));
    }
    if let Some(p) = od.max_ejection_percent.filter(|p| *p > 0) {
        o["max_ejection_percent"] = json!(p);
    }
    c["outlier_detection"] = o;
    let min_health = od.min_health_percent.unwrap_or(0);
    if min_health >= 0 {
        c["common_lb_config"] = json!({"healthy_panic_threshold": {"value": f64::from(min_health)}});
    }
}

/// istiod's ISTIO_MUTUAL client context (cluster_builder.go `buildIstioMutualTLS`): SDS
/// `default`, the SANs of the service's workloads, SDS `ROOTCA`, ALPN `istio-peer-exchange`/
/// `istio`, SNI `outbound_.PORT_.SUBSET_.HOST`.
fn upstream_tls(mesh: &Mesh, svc: &Service, port: u16, subset: &str) -> Value {
    let mut sans: Vec<String> = mesh.pods_of(svc, &Default::default()).map(|p| p.spiffe()).collect();
    sans.sort();
    sans.dedup();
    let sans: Vec<Value> = sans.into_iter().map(|s| json!({"exact": s})).collect();
    json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
            "alpn_protocols": ["istio-peer-exchange", "istio"],
            "tls_certificate_sds_secret_configs": [sds("default")],
            "combined_validation_context": {
                "default_validation_context": {"match_subject_alt_names": sans},
                "validation_context_sds_secret_config": sds("ROOTCA"),
            },
        },
        "sni": format!("outbound_.{port}_.{subset}_.{}", svc.fqdn()),
    })
}

/// One ClusterLoadAssignment per EDS cluster: the pods behind the service (and subset labels), at
/// their pod IP and target port, tagged `tlsMode: istio` and with istio workload metadata.
pub fn endpoints(mesh: &Mesh) -> Vec<Value> {
    let mut out = Vec::new();
    for svc in &mesh.services {
        let host = svc.fqdn();
        let dr = mesh.destination_rule(&host);
        let mut subsets = vec![(String::new(), Default::default())];
        if let Some(dr) = dr {
            subsets.extend(dr.spec.subsets.iter().map(|s| (s.name.clone(), s.labels.clone())));
        }
        for port in &svc.ports {
            for (subset, labels) in &subsets {
                let eps: Vec<Value> = mesh
                    .pods_of(svc, labels)
                    .map(|p| {
                        json!({
                            "endpoint": {"address": {"socket_address": {"address": p.ip.to_string(), "port_value": port.target}}},
                            "metadata": {"filter_metadata": {
                                "envoy.transport_socket_match": {"tlsMode": "istio"},
                                "istio": {"workload": format!("{};{};{};{};Kubernetes", p.deployment, p.namespace, p.app(), p.version())},
                            }},
                            "load_balancing_weight": 1,
                        })
                    })
                    .chain(crate::endpoints::lb_endpoints(mesh, svc, port))
                    .collect();
                let name = outbound_name(port.port, subset, &host);
                out.push(json!({
                    "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                    "cluster_name": name,
                    "endpoints": [{"locality": {}, "lb_endpoints": eps, "load_balancing_weight": eps.len().max(1)}],
                }));
            }
        }
    }
    out.extend(service_entry::endpoints(mesh));
    out
}

fn router_filters() -> Value {
    json!([
        {"name": "envoy.filters.http.fault", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
    ])
}

fn outbound_hcm(stat_prefix: &str, route: &str) -> Value {
    json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "rds": {"config_source": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}, "route_config_name": route},
        "http_filters": router_filters(),
        "use_remote_address": false,
        "normalize_path": true,
        "stream_idle_timeout": "0s",
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
    }})
}

/// The listeners of a proxy. Sidecar, interception mode NONE: one outbound listener per service
/// port on the pod's outbound address (`ADDR_PORT`, RDS route `PORT`), one inbound listener per
/// served port on the pod IP (`ADDR_PORT`, inline route `inbound|PORT||`, mTLS per
/// PeerAuthentication). Gateway: `0.0.0.0_PORT` per Gateway server port (gateway.rs).
pub fn listeners(mesh: &Mesh, proxy: &Proxy) -> Vec<Value> {
    let mut out = Vec::new();
    match proxy {
        Proxy::Gateway { bind } => out.extend(gateway::listeners(mesh, bind)),
        Proxy::Sidecar(pod) => {
            for port in mesh.service_ports() {
                let addr = pod.outbound_ip.to_string();
                out.push(json!({
                    "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
                    "name": format!("{addr}_{port}"),
                    "address": {"socket_address": {"address": addr, "port_value": port}},
                    "filter_chains": [{"filters": [outbound_hcm(&format!("outbound_{addr}_{port}"), &port.to_string())]}],
                    "traffic_direction": "OUTBOUND",
                }));
            }
            let strict = mesh.is_strict(&pod.namespace);
            for (port, _) in inbound_ports(mesh, pod) {
                out.push(inbound_listener(mesh, pod, port, strict));
            }
        }
    }
    authz::add_filters(mesh, proxy, &mut out);
    telemetry::listeners(mesh, proxy, &mut out);
    out
}

fn inbound_listener(mesh: &Mesh, pod: &Pod, port: u16, strict: bool) -> Value {
    let operation = mesh
        .services
        .iter()
        .find(|s| {
            s.ports.iter().any(|p| p.target == port) && mesh.pods_of(s, &Default::default()).any(|p| p.name == pod.name)
        })
        .map(|s| format!("{}:{port}/*", s.fqdn()))
        .unwrap_or_default();
    let hcm = |_tls: bool| {
        json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": format!("inbound_0.0.0.0_{port}"),
            "route_config": {"name": format!("inbound|{port}||"), "validate_clusters": false, "virtual_hosts": [{
                "name": format!("inbound|http|{port}"), "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "name": "default", "decorator": {"operation": operation},
                    "route": {"cluster": format!("inbound|{port}||"), "timeout": "0s",
                        "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"}}}]}]},
            "http_filters": router_filters(),
            "server_name": "istio-envoy",
            "use_remote_address": false,
            "forward_client_cert_details": "APPEND_FORWARD",
            "set_current_client_cert_details": {"subject": true, "dns": true, "uri": true},
            "normalize_path": true,
            "stream_idle_timeout": "0s",
            "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        }})
    };
    let tls_chain = json!({
        "name": format!("0.0.0.0_{port}"),
        "filter_chain_match": {"transport_protocol": "tls"},
        "filters": [hcm(true)],
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "tls_params": {},
                // listener_inbound.go: HTTP chains offer h2 and http/1.1 only (istio-peer-exchange is
                // for TCP chains), so a client without istio.alpn (a mirror) speaks plain HTTP.
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificate_sds_secret_configs": [sds("default")],
                "combined_validation_context": {
                    "default_validation_context": {"match_subject_alt_names": [{"prefix": format!("spiffe://{TRUST_DOMAIN}/")}]},
                    "validation_context_sds_secret_config": sds("ROOTCA"),
                },
            },
            "require_client_certificate": true,
        }},
    });
    let mut chains = vec![tls_chain];
    if !strict {
        chains.push(json!({
            "name": format!("0.0.0.0_{port}"),
            "filter_chain_match": {"transport_protocol": "raw_buffer"},
            "filters": [hcm(false)],
        }));
    }
    let addr = pod.ip.to_string();
    json!({
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": format!("{addr}_{port}"),
        "address": {"socket_address": {"address": addr, "port_value": port}},
        "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config":
            {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
        "filter_chains": chains,
        "traffic_direction": "INBOUND",
    })
}
