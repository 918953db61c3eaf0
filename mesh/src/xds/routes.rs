//! Route configurations as istiod writes them (httproute.go, route/route.go): sidecars get one
//! per service port named `PORT` with a virtual host `HOST:PORT` per service; the gateway gets
//! `http.PORT` with a virtual host per VirtualService host.

use serde_json::{Value, json};

mod translate;
pub(super) use translate::vs_routes;

use super::{dur, outbound_name};
use crate::manifest::Labels;
use crate::model::{Mesh, Service, fqdn};

/// The ingress gateway pod's labels, as the istio/gateway chart sets them: a VirtualService
/// match's `sourceLabels` are checked against them for the gateway's routes.
pub fn gateway_labels() -> Labels {
    [("app", "istio-ingressgateway"), ("istio", "ingressgateway")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const DEFAULT_RETRY_ON: &str = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

/// The route's retry policy (route/retry/retry.go): the default one as the 1.18/1.20 dumps show
/// it (2 retries, retriable status 503), or a VirtualService's `retries` as `ConvertPolicy` does:
/// integers in `retryOn` become retriable status codes.
pub(super) fn retry_policy(attempts: u32, retry_on: Option<&str>, per_try: Option<f64>) -> Value {
    let mut p = json!({
        "retry_on": DEFAULT_RETRY_ON,
        "num_retries": attempts,
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config":
            {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
        "host_selection_retry_max_attempts": "5",
    });
    match retry_on {
        None => p["retriable_status_codes"] = json!([503]),
        Some(on) => {
            let (codes, policies): (Vec<&str>, Vec<&str>) =
                on.split(',').map(str::trim).filter(|x| !x.is_empty()).partition(|x| x.parse::<u32>().is_ok());
            let mut on = policies.join(",");
            if !codes.is_empty() {
                p["retriable_status_codes"] = codes.iter().filter_map(|c| c.parse::<u32>().ok()).collect();
                if !on.contains("retriable-status-codes") {
                    on.push_str(",retriable-status-codes");
                }
            }
            p["retry_on"] = json!(on);
        }
    }
    if let Some(t) = per_try {
        p["per_try_timeout"] = json!(dur(t));
    }
    p
}

/// The route istiod adds when no VirtualService routes the host: `default`, to the service's
/// cluster, default retries, no timeout.
fn default_route(svc: &Service, port: u16) -> Value {
    json!({
        "name": "default",
        "match": {"prefix": "/"},
        "route": {"cluster": outbound_name(port, "", &svc.fqdn()), "timeout": "0s",
            "retry_policy": retry_policy(2, None, None), "max_grpc_timeout": "0s"},
        "decorator": {"operation": format!("{}:{port}/*", svc.fqdn())},
    })
}

/// The routes of the VirtualService bound to the sidecars ("mesh") that routes `host`, for a
/// proxy with `labels`; none when no VirtualService routes it or none of its rules applies to
/// this proxy (istiod then gives the host its default route).
fn mesh_routes(mesh: &Mesh, host: &str, port: u16, labels: &Labels) -> Option<Vec<Value>> {
    let vs = mesh.virtual_services.iter().find(|vs| {
        (vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh"))
            && vs.spec.hosts.iter().any(|h| fqdn(h, &vs.namespace) == host)
    })?;
    let routes = translate::vs_routes(mesh, vs, port, labels);
    (!routes.is_empty()).then_some(routes)
}

/// Sidecar route configs: `PORT` per service port, a virtual host per service (domains: the
/// FQDN, the short name in the proxy's own namespace, `name.ns.svc`, `name.ns`), then `block_all`.
/// `proxy_labels` (the pod's) select the rules whose `sourceLabels` apply.
pub fn sidecar_route_configs(mesh: &Mesh, proxy_ns: &str, proxy_labels: &Labels) -> Vec<Value> {
    let mut out = Vec::new();
    for port in mesh.service_ports() {
        let mut vhosts = Vec::new();
        for svc in mesh.services.iter().filter(|s| s.ports.iter().any(|p| p.port == port)) {
            let host = svc.fqdn();
            // generateVirtualHostDomains/generateAltVirtualHostsForKubernetesService (httproute.go):
            // no `:port` variants since the route table ignores the port in host matching.
            let domains = if svc.namespace == proxy_ns {
                vec![
                    host.clone(),
                    svc.name.clone(),
                    format!("{}.{}.svc", svc.name, svc.namespace),
                    format!("{}.{}", svc.name, svc.namespace),
                ]
            } else {
                vec![
                    host.clone(),
                    format!("{}.{}", svc.name, svc.namespace),
                    format!("{}.{}.svc", svc.name, svc.namespace),
                ]
            };
            let routes = mesh_routes(mesh, &host, port, proxy_labels).unwrap_or_else(|| vec![default_route(svc, port)]);
            vhosts.push(json!({"name": format!("{host}:{port}"), "domains": domains, "routes": routes, "include_request_attempt_count": true}));
        }
        vhosts.extend(super::service_entry::virtual_hosts(mesh, port));
        // buildCatchAllVirtualHost: REGISTRY_ONLY's `block_all` (502). ALLOW_ANY's `allow_any` to
        // PassthroughCluster needs the original destination, which plain-ports mode does not have.
        vhosts.push(json!({"name": "block_all", "domains": ["*"], "include_request_attempt_count": true,
            "routes": [{"name": "block_all", "match": {"prefix": "/"}, "direct_response": {"status": 502}}]}));
        out.push(json!({
            "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            "name": port.to_string(), "virtual_hosts": vhosts, "validate_clusters": false,
            "max_direct_response_body_size_bytes": 1048576, "ignore_port_in_host_matching": true,
        }));
    }
    out
}

/// Gateway route configs: `http.PORT` per HTTP Gateway server port (HTTPS: gateway.rs), a virtual host `HOST:PORT` per
/// host of each VirtualService bound to a Gateway with that port.
pub fn gateway_route_configs(mesh: &Mesh) -> Vec<Value> {
    let servers = mesh.gateways.iter().flat_map(|g| g.spec.servers.iter());
    let mut ports: Vec<u16> = servers.filter(|s| s.port.protocol == "HTTP").map(|s| s.port.number).collect();
    ports.sort();
    ports.dedup();
    let mut out = Vec::new();
    for port in ports {
        let mut vhosts: Vec<Value> = Vec::new();
        for vs in &mesh.virtual_services {
            let bound = vs
                .spec
                .gateways
                .iter()
                .filter_map(|g| mesh.gateway(g, &vs.namespace))
                .any(|g| g.spec.servers.iter().any(|s| s.port.number == port));
            if !bound {
                continue;
            }
            let routes = translate::vs_routes(mesh, vs, port, &gateway_labels());
            for h in &vs.spec.hosts {
                // gateway.go: the host alone; the table ignores the port in host matching.
                let domains = json!([h]);
                vhosts.push(json!({"name": format!("{h}:{port}"), "domains": domains, "routes": routes, "include_request_attempt_count": true}));
            }
        }
        out.push(json!({
            "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            "name": format!("http.{port}"), "virtual_hosts": vhosts, "validate_clusters": false,
            "max_direct_response_body_size_bytes": 1048576, "ignore_port_in_host_matching": true,
        }));
    }
    out
}
