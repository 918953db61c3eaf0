//! Sidecar config in the shape istiod generates (compare the 1.20.8 sidecar dump in
//! shared/testdata/istio): virtualOutbound 15001 with `use_original_dst`, per-service outbound
//! listeners with `bind_to_port: false` (`0.0.0.0_<port>` for HTTP over RDS, `<vip>_<port>`
//! for TCP), `outbound|<port>||<host>` EDS clusters whose `tlsMode: istio` endpoints get mTLS
//! from SDS, virtualInbound 15006 with original_dst, tls_inspector and http_inspector and a
//! chain per (port, transport, ALPN), `inbound|<port>||` ORIGINAL_DST clusters bound to
//! 127.0.0.6, PassthroughCluster and BlackHoleCluster. Dual stack as istiod shapes it: the
//! wildcard listeners also bind `[::]` (`additional_addresses`), inbound clusters also bind
//! `::6` (`additional_source_addresses`).

use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Protocol {
    Http,
    Tcp,
}

/// PeerAuthentication mode of the inbound side.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mtls {
    Strict,
    Permissive,
}

/// `meshConfig.outboundTrafficPolicy.mode`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outbound {
    AllowAny,
    RegistryOnly,
}

/// A Kubernetes service: its VIP and port, and the pods behind it (IP, service account).
#[derive(Clone, Debug)]
pub struct Service {
    pub name: &'static str,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub target_port: u16,
    pub protocol: Protocol,
    pub endpoints: Vec<(Ipv4Addr, &'static str)>,
}

impl Service {
    pub fn host(&self) -> String {
        format!("{}.default.svc.cluster.local", self.name)
    }

    pub fn cluster(&self) -> String {
        format!("outbound|{}||{}", self.port, self.host())
    }
}

/// What one sidecar is sent: the mesh's services (outbound side), the ports its own pod serves
/// (inbound side), the inbound mTLS mode and the outbound policy.
pub struct Sidecar<'a> {
    pub services: &'a [Service],
    pub inbound: &'a [(u16, Protocol)],
    pub mtls: Mtls,
    pub outbound: Outbound,
}

const T_LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const T_CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

fn ads() -> Value {
    json!({"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"})
}

fn sds(name: &str) -> Value {
    json!({"name": name, "sds_config": {"api_config_source": {"api_type": "GRPC", "transport_api_version": "V3",
        "set_node_on_first_message_only": true, "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}]},
        "initial_fetch_timeout": "0s", "resource_api_version": "V3"}})
}

fn mx_network() -> Value {
    json!({"name": "istio.metadata_exchange", "typed_config": {"@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
        "type_url": "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
        "value": {"protocol": "istio-peer-exchange", "enable_discovery": true}}})
}

fn tcp_proxy(stat_prefix: &str, cluster: &str) -> Value {
    json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": stat_prefix, "cluster": cluster}})
}

fn istio_stats() -> Value {
    json!({"name": "istio.stats", "typed_config": {"@type": "type.googleapis.com/stats.PluginConfig",
        "disable_host_header_fallback": true}})
}

fn router() -> Value {
    json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
}

fn downstream_protocol() -> Value {
    json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}}}})
}

/// Every resource istiod would send this sidecar (listeners, clusters, routes, endpoints).
pub fn resources(s: &Sidecar) -> Vec<Value> {
    let mut out = vec![virtual_outbound(s.outbound), virtual_inbound(s), passthrough(), blackhole()];
    let mut http_ports: Vec<u16> = Vec::new();
    for svc in s.services {
        out.push(outbound_cluster(svc));
        out.push(endpoints(svc));
        match svc.protocol {
            Protocol::Http => {
                if !http_ports.contains(&svc.port) {
                    http_ports.push(svc.port);
                }
            }
            Protocol::Tcp => out.push(outbound_tcp_listener(svc)),
        }
    }
    for port in http_ports {
        out.push(outbound_http_listener(port));
        out.push(route(port, s.services, s.outbound));
    }
    for (port, protocol) in s.inbound {
        out.push(inbound_cluster(*port, *protocol));
    }
    out
}

pub fn virtual_outbound(policy: Outbound) -> Value {
    let catchall = if policy == Outbound::AllowAny { "PassthroughCluster" } else { "BlackHoleCluster" };
    json!({"@type": T_LISTENER, "name": "virtualOutbound",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15001}},
        "additional_addresses": [{"address": {"socket_address": {"address": "::", "port_value": 15001}}}],
        "use_original_dst": true, "traffic_direction": "OUTBOUND",
        "filter_chains": [
            {"name": "virtualOutbound-blackhole", "filter_chain_match": {"destination_port": 15001},
             "filters": [tcp_proxy("BlackHoleCluster", "BlackHoleCluster")]},
            {"name": "virtualOutbound-catchall-tcp", "filters": [tcp_proxy(catchall, catchall)]}]})
}

fn outbound_http_listener(port: u16) -> Value {
    json!({"@type": T_LISTENER, "name": format!("0.0.0.0_{port}"),
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "additional_addresses": [{"address": {"socket_address": {"address": "::", "port_value": port}}}],
        "bind_to_port": false, "traffic_direction": "OUTBOUND",
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": format!("outbound_0.0.0.0_{port}"),
            "rds": {"route_config_name": port.to_string(), "config_source": ads()},
            "use_remote_address": false,
            "http_filters": [
                {"name": "istio.metadata_exchange", "typed_config": {"@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                  "type_url": "type.googleapis.com/io.istio.http.peer_metadata.Config",
                  "value": {"upstream_discovery": [{"istio_headers": {}}, {"workload_discovery": {}}],
                            "upstream_propagation": [{"istio_headers": {}}]}}},
                {"name": "istio.alpn", "typed_config": {"@type": "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
                  "alpn_override": [
                    {"alpn_override": ["istio-http/1.0", "istio", "http/1.0"]},
                    {"upstream_protocol": "HTTP11", "alpn_override": ["istio-http/1.1", "istio", "http/1.1"]},
                    {"upstream_protocol": "HTTP2", "alpn_override": ["istio-h2", "istio", "h2"]}]}},
                istio_stats(),
                router()]}}]}]})
}

fn outbound_tcp_listener(svc: &Service) -> Value {
    json!({"@type": T_LISTENER, "name": format!("{}_{}", svc.vip, svc.port),
        "address": {"socket_address": {"address": svc.vip.to_string(), "port_value": svc.port}},
        "bind_to_port": false, "traffic_direction": "OUTBOUND",
        "filter_chains": [{"filters": [tcp_proxy(&svc.cluster(), &svc.cluster())]}]})
}

fn route(port: u16, services: &[Service], policy: Outbound) -> Value {
    let mut vhosts: Vec<Value> = services
        .iter()
        .filter(|s| s.port == port && s.protocol == Protocol::Http)
        .map(|s| {
            let names = [s.host(), s.name.to_string(), format!("{}.default.svc", s.name), format!("{}.default", s.name), s.vip.to_string()];
            let domains: Vec<String> = names.iter().flat_map(|n| [n.clone(), format!("{n}:{port}")]).collect();
            json!({"name": format!("{}:{port}", s.host()), "domains": domains,
                "routes": [{"name": "default", "match": {"prefix": "/"}, "route": {"cluster": s.cluster(), "timeout": "0s",
                    "retry_policy": {"retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                        "num_retries": 2, "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
                        "host_selection_retry_max_attempts": "5"}}}]})
        })
        .collect();
    vhosts.push(match policy {
        Outbound::AllowAny => json!({"name": "allow_any", "domains": ["*"],
            "routes": [{"name": "allow_any", "match": {"prefix": "/"}, "route": {"cluster": "PassthroughCluster", "timeout": "0s"}}]}),
        Outbound::RegistryOnly => json!({"name": "block_all", "domains": ["*"],
            "routes": [{"name": "block_all", "match": {"prefix": "/"}, "direct_response": {"status": 502}}]}),
    });
    json!({"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "name": port.to_string(),
        "virtual_hosts": vhosts, "validate_clusters": false})
}

fn outbound_cluster(svc: &Service) -> Value {
    let sans: Vec<Value> = {
        let mut sas: Vec<&str> = svc.endpoints.iter().map(|e| e.1).collect();
        sas.dedup();
        sas.iter().map(|sa| json!({"exact": format!("spiffe://cluster.local/ns/default/sa/{sa}")})).collect()
    };
    let mut c = json!({"@type": T_CLUSTER, "name": svc.cluster(), "type": "EDS", "connect_timeout": "10s",
        "lb_policy": "LEAST_REQUEST",
        "eds_cluster_config": {"service_name": svc.cluster(), "eds_config": ads()},
        "filters": [mx_network()],
        "transport_socket_matches": [
            {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": {"name": "envoy.transport_sockets.tls",
              "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": format!("outbound_.{}_._.{}", svc.port, svc.host()),
                "common_tls_context": {"tls_params": {}, "alpn_protocols": ["istio-peer-exchange", "istio"],
                  "tls_certificate_sds_secret_configs": [sds("default")],
                  "combined_validation_context": {"default_validation_context": {"match_subject_alt_names": sans},
                    "validation_context_sds_secret_config": sds("ROOTCA")}}}}},
            {"name": "tlsMode-disabled", "match": {}, "transport_socket": {"name": "envoy.transport_sockets.raw_buffer",
              "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}]});
    if svc.protocol == Protocol::Http {
        c["typed_extension_protocol_options"] = downstream_protocol();
    }
    c
}

fn endpoints(svc: &Service) -> Value {
    let eps: Vec<Value> = svc
        .endpoints
        .iter()
        .map(|(ip, sa)| {
            json!({"endpoint": {"address": {"socket_address": {"address": ip.to_string(), "port_value": svc.target_port}}},
                "metadata": {"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"},
                    "istio": {"workload": format!("{sa};default;{sa};v1;Kubernetes")}}},
                "load_balancing_weight": 1})
        })
        .collect();
    json!({"@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "cluster_name": svc.cluster(), "endpoints": [{"locality": {}, "lb_endpoints": eps}]})
}

fn passthrough() -> Value {
    json!({"@type": T_CLUSTER, "name": "PassthroughCluster", "type": "ORIGINAL_DST", "connect_timeout": "10s",
        "lb_policy": "CLUSTER_PROVIDED", "typed_extension_protocol_options": downstream_protocol(),
        "filters": [mx_network()]})
}

fn blackhole() -> Value {
    json!({"@type": T_CLUSTER, "name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s"})
}

fn inbound_cluster(port: u16, protocol: Protocol) -> Value {
    let mut c = json!({"@type": T_CLUSTER, "name": format!("inbound|{port}||"), "type": "ORIGINAL_DST",
        "connect_timeout": "10s", "lb_policy": "CLUSTER_PROVIDED",
        "upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0},
            "additional_source_addresses": [{"address": "::6", "port_value": 0}]}});
    if protocol == Protocol::Http {
        c["typed_extension_protocol_options"] = downstream_protocol();
    }
    c
}

fn downstream_tls(alpn: &[&str]) -> Value {
    json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": true,
        "common_tls_context": {"tls_params": {}, "alpn_protocols": alpn,
            "tls_certificate_sds_secret_configs": [sds("default")],
            "combined_validation_context": {
                "default_validation_context": {"match_subject_alt_names": [{"prefix": "spiffe://cluster.local/"}]},
                "validation_context_sds_secret_config": sds("ROOTCA")}}}})
}

fn inbound_hcm(port: u16) -> Value {
    json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": format!("inbound_0.0.0.0_{port}"),
        "route_config": {"name": format!("inbound|{port}||"), "validate_clusters": false, "virtual_hosts": [
            {"name": format!("inbound|http|{port}"), "domains": ["*"], "routes": [{"name": "default", "match": {"prefix": "/"},
              "route": {"cluster": format!("inbound|{port}||"), "timeout": "0s"}}]}]},
        "http_filters": [
            {"name": "istio.metadata_exchange", "typed_config": {"@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
              "type_url": "type.googleapis.com/io.istio.http.peer_metadata.Config",
              "value": {"downstream_discovery": [{"istio_headers": {}}, {"workload_discovery": {}}],
                        "downstream_propagation": [{"istio_headers": {}}]}}},
            istio_stats(),
            router()],
        "server_name": "istio-envoy", "use_remote_address": false,
        "forward_client_cert_details": "APPEND_FORWARD",
        "set_current_client_cert_details": {"subject": true, "dns": true, "uri": true},
        "normalize_path": true, "path_with_escaped_slashes_action": "KEEP_UNCHANGED"}})
}

fn virtual_inbound(s: &Sidecar) -> Value {
    let mut chains =
        vec![json!({"name": "virtualInbound-blackhole", "filter_chain_match": {"destination_port": 15006},
        "filters": [tcp_proxy("BlackHoleCluster", "BlackHoleCluster")]})];
    for (port, protocol) in s.inbound {
        let (port, name, cluster) = (*port, format!("0.0.0.0_{port}"), format!("inbound|{port}||"));
        match protocol {
            Protocol::Http => {
                chains.push(json!({"name": name, "filter_chain_match": {"destination_port": port, "transport_protocol": "tls",
                        "application_protocols": ["istio-http/1.0", "istio-http/1.1", "istio-h2"]},
                    "filters": [mx_network(), inbound_hcm(port)], "transport_socket": downstream_tls(&["h2", "http/1.1"])}));
                if s.mtls == Mtls::Permissive {
                    chains.push(json!({"name": name, "filter_chain_match": {"destination_port": port,
                            "transport_protocol": "raw_buffer", "application_protocols": ["http/1.1", "h2c"]},
                        "filters": [mx_network(), inbound_hcm(port)]}));
                }
            }
            Protocol::Tcp => {
                chains.push(
                    json!({"name": name, "filter_chain_match": {"destination_port": port, "transport_protocol": "tls"},
                    "filters": [mx_network(), tcp_proxy(&cluster, &cluster)],
                    "transport_socket": downstream_tls(&["istio-peer-exchange", "h2", "http/1.1"])}),
                );
                if s.mtls == Mtls::Permissive {
                    chains.push(json!({"name": name, "filter_chain_match": {"destination_port": port, "transport_protocol": "raw_buffer"},
                        "filters": [tcp_proxy(&cluster, &cluster)]}));
                }
            }
        }
    }
    let disabled = json!({"destination_port_range": {"start": 15006, "end": 15007}});
    json!({"@type": T_LISTENER, "name": "virtualInbound",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
        "additional_addresses": [{"address": {"socket_address": {"address": "::", "port_value": 15006}}}],
        "traffic_direction": "INBOUND", "listener_filters_timeout": "0s", "continue_on_listener_filters_timeout": true,
        "listener_filters": [
            {"name": "envoy.filters.listener.original_dst", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}},
            {"name": "envoy.filters.listener.tls_inspector", "filter_disabled": disabled, "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}},
            {"name": "envoy.filters.listener.http_inspector", "filter_disabled": disabled, "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"}}],
        "filter_chains": chains})
}

/// pilot-agent's bootstrap, reduced to what the sidecar needs: the node (id, cluster, Istio's
/// metadata), admin on 127.0.0.1:15000, Delta ADS over `xds-grpc` and secrets over `sds-grpc`,
/// both unix sockets in `dir`.
pub fn bootstrap(app: &str, ip: Ipv4Addr, sa: &str, dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"node:
  id: sidecar~{ip}~{app}-1.default~default.svc.cluster.local
  cluster: {app}.default
  metadata:
    NAMESPACE: default
    WORKLOAD_NAME: {app}
    SERVICE_ACCOUNT: {sa}
    CLUSTER_ID: Kubernetes
    MESH_ID: cluster.local
    INSTANCE_IPS: "{ip}"
    LABELS: {{app: {app}, version: v1}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 15000}}}}
dynamic_resources:
  ads_config:
    api_type: DELTA_GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{{envoy_grpc: {{cluster_name: xds-grpc}}}}]
  cds_config: {{ads: {{}}, initial_fetch_timeout: 0s, resource_api_version: V3}}
  lds_config: {{ads: {{}}, initial_fetch_timeout: 0s, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds-grpc
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{pipe: {{path: {d}/XDS}}}}}}}}]}}]
  - name: sds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: sds-grpc
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{pipe: {{path: {d}/SDS}}}}}}}}]}}]
"#
    )
}
