//! ServiceEntry hosts as istiod builds them (cluster_builder.go, cluster.go `convertResolution`,
//! httproute.go): a cluster `outbound|PORT||HOST` per host and port (STATIC: EDS with the
//! endpoints' addresses; DNS: STRICT_DNS resolving the endpoints' names, or the host), a virtual
//! host `HOST:PORT` in the port's route table, so REGISTRY_ONLY lets the host through.

use serde_json::{Value, json};

use super::{ads, outbound_name, sds};
use crate::model::Mesh;
use crate::model::edge::{ExternalPort, ExternalService, Resolution};

const MAX: u32 = 4294967295;

fn lb_endpoints(e: &ExternalService, port: &ExternalPort) -> Vec<Value> {
    e.endpoints
        .iter()
        .map(|ep| {
            json!({
                "endpoint": {"address": {"socket_address": {"address": ep.address, "port_value": ep.port(port)}}},
                "load_balancing_weight": ep.weight,
            })
        })
        .collect()
}

fn locality(e: &ExternalService, port: &ExternalPort) -> Value {
    let eps = lb_endpoints(e, port);
    let weight: u32 = e.endpoints.iter().map(|ep| ep.weight).sum();
    json!([{"locality": {}, "lb_endpoints": eps, "load_balancing_weight": weight.max(1)}])
}

/// One cluster per ServiceEntry host and port.
pub fn clusters(mesh: &Mesh) -> Vec<Value> {
    let mut out = Vec::new();
    for e in &mesh.edge.service_entries {
        for port in &e.ports {
            let name = outbound_name(port.number, "", &e.host);
            let mut istio = json!({"services": [{"host": e.host, "namespace": e.namespace, "name": e.host}]});
            if e.mesh_external {
                istio["external"] = json!(true);
            }
            let mut c = json!({
                "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                "name": name,
                "connect_timeout": "10s",
                "lb_policy": "LEAST_REQUEST",
                "circuit_breakers": {"thresholds": [{"max_connections": MAX, "max_pending_requests": MAX,
                    "max_requests": MAX, "max_retries": MAX, "track_remaining": true}]},
                "metadata": {"filter_metadata": {"istio": istio}},
            });
            match e.resolution {
                Resolution::Static => {
                    c["type"] = json!("EDS");
                    c["eds_cluster_config"] = json!({"eds_config": ads(), "service_name": name});
                }
                Resolution::Dns => {
                    // buildCluster for STRICT_DNS: IPv4 proxies look up A records, the mesh's
                    // default refresh rate (60 s), the records' TTL respected.
                    c["type"] = json!("STRICT_DNS");
                    c["dns_lookup_family"] = json!("V4_ONLY");
                    c["dns_refresh_rate"] = json!("60s");
                    c["respect_dns_ttl"] = json!(true);
                    c["load_assignment"] = json!({"cluster_name": name, "endpoints": locality(e, port)});
                }
            }
            if !e.mesh_external {
                // Auto mTLS inside the mesh: endpoints labelled tlsMode istio get ISTIO_MUTUAL;
                // ServiceEntry endpoints carry no label, so the plaintext match applies.
                c["transport_socket_matches"] = json!([
                    {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": {
                        "name": "envoy.transport_sockets.tls", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                            "common_tls_context": {
                                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
                                "alpn_protocols": ["istio-peer-exchange", "istio"],
                                "tls_certificate_sds_secret_configs": [sds("default")],
                                "combined_validation_context": {"default_validation_context": {},
                                    "validation_context_sds_secret_config": sds("ROOTCA")},
                            },
                            "sni": format!("outbound_.{}_._.{}", port.number, e.host)}}},
                    {"name": "tlsMode-disabled", "match": {}, "transport_socket": {"name": "envoy.transport_sockets.raw_buffer",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}},
                ]);
            }
            out.push(c);
        }
    }
    out
}

/// The ClusterLoadAssignments of the STATIC hosts' EDS clusters.
pub fn endpoints(mesh: &Mesh) -> Vec<Value> {
    let mut out = Vec::new();
    for e in mesh.edge.service_entries.iter().filter(|e| e.resolution == Resolution::Static) {
        for port in &e.ports {
            out.push(json!({
                "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                "cluster_name": outbound_name(port.number, "", &e.host),
                "endpoints": locality(e, port),
            }));
        }
    }
    out
}

/// The virtual hosts of route table `PORT` for the ServiceEntry hosts with that port: domain the
/// host, istiod's default route to its cluster.
pub fn virtual_hosts(mesh: &Mesh, port: u16) -> Vec<Value> {
    let mut out = Vec::new();
    for e in &mesh.edge.service_entries {
        if !e.ports.iter().any(|p| p.number == port) {
            continue;
        }
        let route = json!({
            "name": "default",
            "match": {"prefix": "/"},
            "route": {"cluster": outbound_name(port, "", &e.host), "timeout": "0s",
                "retry_policy": super::routes::retry_policy(2, None, None), "max_grpc_timeout": "0s"},
            "decorator": {"operation": format!("{}:{port}/*", e.host)},
        });
        out.push(json!({"name": format!("{}:{port}", e.host), "domains": [e.host], "routes": [route],
            "include_request_attempt_count": true}));
    }
    out
}
