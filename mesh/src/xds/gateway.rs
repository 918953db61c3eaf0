//! The ingress gateway as istiod builds it (gateway.go, listener.go `BuildListenerTLSContext`,
//! security/model `ConstructSdsSecretConfigForCredential`, model/gateway.go route names):
//!
//! - an HTTP port: listener `0.0.0.0_PORT`, one plaintext chain, RDS `http.PORT`; a server with
//!   `tls.httpsRedirect` marks its hosts' virtual hosts `require_tls: ALL` (Envoy's 301);
//! - an HTTPS port: the same listener name with the TLS inspector and one chain per server,
//!   matched by SNI (`server_names`: the server's hosts, none for `*`), terminating TLS with the
//!   SDS secret `kubernetes://CREDENTIAL` from ADS, ALPN h2 and http/1.1, no client certificate,
//!   the server's min/max TLS versions, RDS `https.PORT.PORTNAME.GATEWAY.NAMESPACE`;
//! - the secrets themselves, served on the gateway's ADS stream as istiod's SecretGen does.

use base64::Engine as _;
use serde_json::{Value, json};

use super::{outbound_hcm, routes};
use crate::manifest::{GatewayServer, GatewaySpec, Resource, find_secret};
use crate::model::Mesh;
use crate::model::edge::server_host;

/// The SDS resource name of a `credentialName` (credentials.ToResourceName).
pub fn credential_resource(name: &str) -> String {
    if name.starts_with("kubernetes://") { name.to_string() } else { format!("kubernetes://{name}") }
}

fn https_servers(mesh: &Mesh) -> impl Iterator<Item = (&Resource<GatewaySpec>, &GatewayServer)> {
    mesh.gateways
        .iter()
        .flat_map(|g| g.spec.servers.iter().map(move |s| (g, s)))
        .filter(|(_, s)| s.port.protocol == "HTTPS")
}

fn https_route_name(g: &Resource<GatewaySpec>, s: &GatewayServer) -> String {
    format!("https.{}.{}.{}.{}", s.port.number, s.port.name.as_deref().unwrap_or_default(), g.meta.name, g.namespace)
}

fn credential(s: &GatewayServer) -> &str {
    s.tls.as_ref().and_then(|t| t.credential_name.as_deref()).unwrap_or_default()
}

/// The gateway's listeners: `0.0.0.0_PORT` per Gateway server port, bound on `bind`'s local port.
pub fn listeners(mesh: &Mesh, bind: &[(u16, u16)]) -> Vec<Value> {
    let mut out = Vec::new();
    for (port, local) in bind {
        let name = format!("0.0.0.0_{port}");
        let address = json!({"socket_address": {"address": mesh.gateway_ip.to_string(), "port_value": local}});
        let servers: Vec<_> = https_servers(mesh).filter(|(_, s)| s.port.number == *port).collect();
        if servers.is_empty() {
            out.push(json!({
                "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
                "name": name, "address": address,
                "filter_chains": [{"filters": [outbound_hcm(&format!("outbound_0.0.0.0_{port}"), &format!("http.{port}"))]}],
                "traffic_direction": "OUTBOUND",
            }));
            continue;
        }
        let chains: Vec<Value> = servers
            .iter()
            .map(|(g, s)| {
                let stat_prefix = s.name.clone().unwrap_or_else(|| format!("outbound_0.0.0.0_{port}"));
                let mut chain = json!({
                    "filters": [outbound_hcm(&stat_prefix, &https_route_name(g, s))],
                    "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "common_tls_context": {
                            "alpn_protocols": ["h2", "http/1.1"],
                            "tls_certificate_sds_secret_configs": [{"name": credential_resource(credential(s)),
                                // SDSAdsConfig: no initial_fetch_timeout, so a missing secret
                                // does not hold the listener forever.
                                "sds_config": {"ads": {}, "resource_api_version": "V3"}}],
                        },
                        "require_client_certificate": false,
                    }},
                });
                // applyServerTLSSettings: the versions the server names.
                let tls = s.tls.clone().unwrap_or_default();
                let versions = [
                    ("tls_minimum_protocol_version", &tls.min_protocol_version),
                    ("tls_maximum_protocol_version", &tls.max_protocol_version),
                ];
                for (key, v) in versions {
                    if let Some(v) = v.as_deref().and_then(crate::manifest::ServerTls::envoy_version) {
                        chain["transport_socket"]["typed_config"]["common_tls_context"]["tls_params"][key] = json!(v);
                    }
                }
                let hosts: Vec<&str> = s.hosts.iter().map(|h| server_host(h)).collect();
                if !hosts.contains(&"*") {
                    chain["filter_chain_match"] = json!({"server_names": hosts});
                }
                chain
            })
            .collect();
        out.push(json!({
            "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
            "name": name, "address": address,
            "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config":
                {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
            "filter_chains": chains,
            "traffic_direction": "OUTBOUND",
        }));
    }
    out
}

/// Whether a Gateway server host admits a VirtualService host (exact, `*`, or `*.suffix`).
fn admits(server: &str, vs_host: &str) -> bool {
    let server = server_host(server);
    server == "*"
        || server == vs_host
        || server.strip_prefix('*').is_some_and(|suffix| vs_host.ends_with(suffix) && vs_host.len() > suffix.len())
}

/// The gateway's route tables: `http.PORT` (routes.rs) with `require_tls: ALL` on the hosts of
/// servers with `tls.httpsRedirect` (a virtual host of its own for a host no VirtualService
/// routes, as gateway.go adds), and `https.PORT.NAME.GATEWAY.NS` per HTTPS server with the
/// routes of the VirtualServices bound to its Gateway, for the hosts the server admits.
pub fn route_configs(mesh: &Mesh) -> Vec<Value> {
    let mut out = routes::gateway_route_configs(mesh);
    for rc in &mut out {
        let Some(port) = rc["name"].as_str().and_then(|n| n.strip_prefix("http.")).and_then(|p| p.parse::<u16>().ok())
        else {
            continue;
        };
        let redirecting = mesh
            .gateways
            .iter()
            .flat_map(|g| g.spec.servers.iter())
            .filter(|s| s.port.number == port && s.tls.as_ref().is_some_and(|t| t.https_redirect));
        for s in redirecting {
            for h in s.hosts.iter().map(|h| server_host(h).to_lowercase()) {
                let Some(vhosts) = rc["virtual_hosts"].as_array_mut() else { continue };
                match vhosts.iter_mut().find(|v| v["domains"].as_array().is_some_and(|d| d.iter().any(|x| *x == h))) {
                    Some(v) => v["require_tls"] = json!("ALL"),
                    None => vhosts.push(json!({"name": format!("{h}:{port}"), "domains": [h],
                        "include_request_attempt_count": true, "require_tls": "ALL"})),
                }
            }
        }
    }
    for (g, s) in https_servers(mesh) {
        let port = s.port.number;
        let mut vhosts: Vec<Value> = Vec::new();
        for vs in &mesh.virtual_services {
            let bound =
                vs.spec.gateways.iter().filter_map(|n| mesh.gateway(n, &vs.namespace)).any(|b| std::ptr::eq(b, g));
            if !bound {
                continue;
            }
            let hosts: Vec<&String> = vs.spec.hosts.iter().filter(|h| s.hosts.iter().any(|sh| admits(sh, h))).collect();
            if hosts.is_empty() {
                continue;
            }
            let rs = routes::vs_routes(mesh, vs, port, &routes::gateway_labels());
            for h in hosts {
                let mut v = json!({"name": format!("{h}:{port}"), "domains": [h], "routes": rs,
                    "include_request_attempt_count": true});
                if s.tls.as_ref().is_some_and(|t| t.https_redirect) {
                    v["require_tls"] = json!("ALL");
                }
                vhosts.push(v);
            }
        }
        out.push(json!({
            "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            "name": https_route_name(g, s), "virtual_hosts": vhosts, "validate_clusters": false,
            "max_direct_response_body_size_bytes": 1048576, "ignore_port_in_host_matching": true,
        }));
    }
    out
}

/// The Secrets the gateway's HTTPS servers name, as istiod's SecretGen serves them:
/// `kubernetes://NAME` with the certificate chain and key inline.
pub fn secrets(mesh: &Mesh) -> Vec<Value> {
    let mut names: Vec<&str> = https_servers(mesh).map(|(_, s)| credential(s)).collect();
    names.sort();
    names.dedup();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    names
        .into_iter()
        .filter_map(|n| find_secret(&mesh.edge.secrets, n, super::GATEWAY_NAMESPACE))
        .map(|s| {
            json!({
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                "name": credential_resource(&s.name),
                "tls_certificate": {"certificate_chain": {"inline_bytes": b64(&s.cert_pem)},
                    "private_key": {"inline_bytes": b64(&s.key_pem)}},
            })
        })
        .collect()
}
