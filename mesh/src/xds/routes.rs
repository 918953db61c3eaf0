//! Route configurations as istiod writes them (httproute.go, route/route.go): sidecars get one
//! per service port named `PORT` with a virtual host `HOST:PORT` per service; the gateway gets
//! `http.PORT` with a virtual host per VirtualService host.

use serde_json::{Value, json};

use super::{dur, outbound_name};
use crate::manifest::{HttpRoute, StringMatch, parse_duration};
use crate::model::{Mesh, Service, fqdn};

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

fn string_match(m: &StringMatch) -> Value {
    if let Some(e) = &m.exact {
        json!({"exact": e})
    } else if let Some(p) = &m.prefix {
        json!({"prefix": p})
    } else {
        json!({"safe_regex": {"regex": m.regex.clone().unwrap_or_default()}})
    }
}

/// One VirtualService http route as Envoy routes (one per match, as istiod splits them).
pub(super) fn vs_routes(mesh: &Mesh, ns: &str, r: &HttpRoute, port_hint: Option<u16>) -> Vec<Value> {
    // Mesh::build refuses a route without destinations.
    let Some(first) = r.route.first().map(|d| &d.destination) else { return Vec::new() };
    let dest = |d: &crate::manifest::Destination| {
        let host = fqdn(&d.host, ns);
        let port = d
            .port
            .as_ref()
            .map(|p| p.number)
            .or_else(|| mesh.service(&host).and_then(|s| (s.ports.len() == 1).then(|| s.ports[0].port)))
            .or(port_hint)
            .unwrap_or(80);
        outbound_name(port, d.subset.as_deref().unwrap_or(""), &host)
    };
    let timeout = r.timeout.as_deref().and_then(parse_duration).map(dur).unwrap_or_else(|| "0s".into());
    let mut action = json!({"timeout": timeout, "max_grpc_timeout": timeout});
    if r.route.len() == 1 {
        action["cluster"] = json!(dest(first));
    } else {
        let clusters: Vec<Value> = r
            .route
            .iter()
            .filter(|d| d.weight.unwrap_or(0) > 0)
            .map(|d| json!({"name": dest(&d.destination), "weight": d.weight.unwrap_or(0)}))
            .collect();
        action["weighted_clusters"] = json!({"clusters": clusters});
    }
    match &r.retries {
        Some(rt) if rt.attempts == 0 => {}
        Some(rt) => {
            action["retry_policy"] = retry_policy(
                rt.attempts,
                rt.retry_on.as_deref(),
                rt.per_try_timeout.as_deref().and_then(parse_duration),
            )
        }
        None => action["retry_policy"] = retry_policy(2, None, None),
    }
    let operation = format!("{}:{}/*", fqdn(&first.host, ns), first.port.as_ref().map(|p| p.number).unwrap_or(80));
    let mut route = json!({"route": action, "decorator": {"operation": operation}});
    if let Some(n) = &r.name {
        route["name"] = json!(n);
    }
    if let Some(f) = &r.fault {
        let pct = |p: &Option<crate::manifest::Percent>| {
            let v = p.as_ref().map(|p| p.value).unwrap_or(100.0);
            json!({"numerator": (v * 10000.0).round() as u64, "denominator": "MILLION"})
        };
        let mut fault = json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"});
        if let Some(d) = &f.delay {
            fault["delay"] = json!({"fixed_delay": dur(parse_duration(&d.fixed_delay).unwrap_or(0.0)), "percentage": pct(&d.percentage)});
        }
        if let Some(a) = &f.abort {
            fault["abort"] = json!({"http_status": a.http_status, "percentage": pct(&a.percentage)});
        }
        route["typed_per_filter_config"] = json!({"envoy.filters.http.fault": fault});
    }
    let matches: Vec<Value> = if r.matches.is_empty() {
        vec![json!({"prefix": "/"})]
    } else {
        r.matches
            .iter()
            .map(|m| {
                let mut out = match &m.uri {
                    Some(StringMatch { exact: Some(e), .. }) => json!({"path": e, "case_sensitive": true}),
                    Some(StringMatch { prefix: Some(p), .. }) => json!({"prefix": p, "case_sensitive": true}),
                    Some(StringMatch { regex: Some(re), .. }) => json!({"safe_regex": {"regex": re}}),
                    _ => json!({"prefix": "/"}),
                };
                if !m.headers.is_empty() {
                    out["headers"] =
                        m.headers.iter().map(|(h, sm)| json!({"name": h, "string_match": string_match(sm)})).collect();
                }
                out
            })
            .collect()
    };
    matches
        .into_iter()
        .map(|m| {
            let mut r = route.clone();
            r["match"] = m;
            r
        })
        .collect()
}

/// The VirtualServices bound to the sidecars ("mesh") that route `host`.
fn mesh_routes(mesh: &Mesh, host: &str, port: u16) -> Option<Vec<Value>> {
    let vs = mesh.virtual_services.iter().find(|vs| {
        (vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh"))
            && vs.spec.hosts.iter().any(|h| fqdn(h, &vs.namespace) == host)
    })?;
    Some(vs.spec.http.iter().flat_map(|r| vs_routes(mesh, &vs.namespace, r, Some(port))).collect())
}

/// Sidecar route configs: `PORT` per service port, a virtual host per service (domains: the
/// FQDN, the short name in the proxy's own namespace, `name.ns.svc`, `name.ns`), then `block_all`.
pub fn sidecar_route_configs(mesh: &Mesh, proxy_ns: &str) -> Vec<Value> {
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
            let routes = mesh_routes(mesh, &host, port).unwrap_or_else(|| vec![default_route(svc, port)]);
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
            let routes: Vec<Value> =
                vs.spec.http.iter().flat_map(|r| vs_routes(mesh, &vs.namespace, r, None)).collect();
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
