//! The mesh's edges, checked: Gateway servers (HTTP, or HTTPS terminated with a
//! `kubernetes.io/tls` Secret), ServiceEntry hosts (the registry beyond the Services) and the
//! Sidecar's outbound traffic policy.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::manifest::{GatewaySpec, ManifestError, Manifests, Resource, TlsSecret, find_secret};

use super::{DOMAIN, Service, fail};
// The demo's one ingress gateway runs there: istiod looks up a `credentialName` in the gateway
// workload's namespace.
use crate::xds::GATEWAY_NAMESPACE;

/// How a ServiceEntry host's endpoints are found (istiod's `convertResolution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// `STATIC`: the endpoints' IP addresses, over EDS.
    Static,
    /// `DNS`: the endpoints' names (or the host itself), a STRICT_DNS cluster.
    Dns,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalPort {
    pub name: String,
    pub number: u16,
    /// `targetPort`: the endpoints' port when an endpoint does not name one.
    pub target: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalEndpoint {
    pub address: String,
    /// Port name -> the endpoint's port.
    pub ports: BTreeMap<String, u16>,
    pub weight: u32,
}

impl ExternalEndpoint {
    /// Where this endpoint serves `port`: its own port for that name, the targetPort, or the
    /// port number (istiod's order).
    pub fn port(&self, port: &ExternalPort) -> u16 {
        self.ports.get(&port.name).copied().or(port.target).unwrap_or(port.number)
    }
}

/// One host of a ServiceEntry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalService {
    pub host: String,
    /// The ServiceEntry's name and namespace.
    pub name: String,
    pub namespace: String,
    pub ports: Vec<ExternalPort>,
    /// `location: MESH_EXTERNAL` (the default).
    pub mesh_external: bool,
    pub resolution: Resolution,
    /// For DNS without endpoints: the host itself, as istiod resolves it.
    pub endpoints: Vec<ExternalEndpoint>,
}

/// What the edge resources add to the mesh.
#[derive(Debug, Clone, Default)]
pub struct Edge {
    pub secrets: Vec<TlsSecret>,
    pub service_entries: Vec<ExternalService>,
}

impl Edge {
    pub fn build(m: &Manifests, services: &[Service]) -> Result<Edge, ManifestError> {
        for (i, s) in m.secrets.iter().enumerate() {
            if m.secrets[..i].iter().any(|o| o.name == s.name && o.namespace == s.namespace) {
                return Err(fail(&s.file, format!("Secret {}", s.name), "defined twice".into()));
            }
        }
        for sc in &m.sidecars {
            let mode = sc.spec.outbound_traffic_policy.as_ref().map(|p| p.mode.as_str());
            match mode {
                None | Some("REGISTRY_ONLY") => {}
                Some("ALLOW_ANY") => {
                    return Err(fail(
                        &sc.file,
                        format!("Sidecar {}: spec.outboundTrafficPolicy.mode", sc.meta.name),
                        "ALLOW_ANY sends unknown hosts to PassthroughCluster, the original destination of an \
                         intercepted connection; plain-ports mode intercepts nothing, so the demo serves \
                         REGISTRY_ONLY only (add a ServiceEntry for an outside host)"
                            .into(),
                    ));
                }
                Some(other) => {
                    return Err(fail(
                        &sc.file,
                        format!("Sidecar {}: spec.outboundTrafficPolicy.mode", sc.meta.name),
                        format!("{other} is not a mode (REGISTRY_ONLY or ALLOW_ANY)"),
                    ));
                }
            }
        }
        let mut out = Vec::<ExternalService>::new();
        for se in &m.service_entries {
            for e in service_entry(se, services)? {
                if out.iter().any(|o| o.host == e.host) {
                    return Err(fail(
                        &se.file,
                        format!("ServiceEntry {}: spec.hosts", se.meta.name),
                        format!("host '{}' is in two ServiceEntries", e.host),
                    ));
                }
                out.push(e);
            }
        }
        Ok(Edge { secrets: m.secrets.clone(), service_entries: out })
    }
}

fn service_entry(
    se: &Resource<crate::manifest::ServiceEntrySpec>,
    services: &[Service],
) -> Result<Vec<ExternalService>, ManifestError> {
    let at = format!("ServiceEntry {}", se.meta.name);
    let field = |f: &str| format!("{at}: spec.{f}");
    let err = |f: &str, reason: String| fail(&se.file, field(f), reason);
    if !se.spec.addresses.is_empty() {
        return Err(err(
            "addresses",
            "VIPs are not modelled in plain-ports mode (the app names the host; see README \"Plain-ports mode\")"
                .into(),
        ));
    }
    if se.spec.hosts.is_empty() {
        return Err(err("hosts", "at least one host is needed".into()));
    }
    let mesh_external = match se.spec.location.as_deref() {
        None | Some("MESH_EXTERNAL") => true,
        Some("MESH_INTERNAL") => false,
        Some(other) => {
            return Err(err("location", format!("{other} is not a location (MESH_EXTERNAL or MESH_INTERNAL)")));
        }
    };
    let resolution = match se.spec.resolution.as_deref() {
        Some("STATIC") => Resolution::Static,
        Some("DNS") => Resolution::Dns,
        None | Some("NONE") => {
            return Err(err(
                "resolution",
                "NONE (the default) forwards to the original destination (an ORIGINAL_DST cluster), which \
                 plain-ports mode does not have: use STATIC or DNS"
                    .into(),
            ));
        }
        Some(other) => {
            return Err(err("resolution", format!("{other} is not supported (STATIC or DNS)")));
        }
    };
    let mut ports = Vec::new();
    for (i, p) in se.spec.ports.iter().enumerate() {
        let http_name = p.name == "http" || p.name.starts_with("http-");
        match p.protocol.as_deref() {
            Some("HTTP") => {}
            None if http_name => {}
            other => {
                return Err(err(
                    &format!("ports[{i}].protocol"),
                    format!(
                        "'{}': the demo control plane serves HTTP ports only",
                        other.unwrap_or("(none, and the name is not http or http-*)")
                    ),
                ));
            }
        }
        if ports.iter().any(|q: &ExternalPort| q.number == p.number || q.name == p.name) {
            return Err(err(&format!("ports[{i}]"), format!("port {} ({}) is declared twice", p.number, p.name)));
        }
        ports.push(ExternalPort { name: p.name.clone(), number: p.number, target: p.target_port });
    }
    if ports.is_empty() {
        return Err(err("ports", "at least one port is needed".into()));
    }
    let mut endpoints = Vec::new();
    for (i, e) in se.spec.endpoints.iter().enumerate() {
        if resolution == Resolution::Static && e.address.parse::<IpAddr>().is_err() {
            return Err(err(
                &format!("endpoints[{i}].address"),
                format!("'{}' is not an IP address (resolution STATIC; use DNS for names)", e.address),
            ));
        }
        if let Some(name) = e.ports.keys().find(|n| !ports.iter().any(|p| &p.name == *n)) {
            return Err(err(&format!("endpoints[{i}].ports.{name}"), "names no port of the ServiceEntry".into()));
        }
        endpoints.push(ExternalEndpoint {
            address: e.address.clone(),
            ports: e.ports.clone(),
            weight: e.weight.unwrap_or(1),
        });
    }
    if resolution == Resolution::Static && endpoints.is_empty() {
        return Err(err("endpoints", "resolution STATIC needs endpoints".into()));
    }
    let mut out = Vec::new();
    for (i, h) in se.spec.hosts.iter().enumerate() {
        if h.contains('*') {
            return Err(err(
                &format!("hosts[{i}]"),
                "wildcard hosts need resolution NONE, which plain-ports mode does not serve".into(),
            ));
        }
        if services.iter().any(|s| s.fqdn() == *h) || h.ends_with(DOMAIN) {
            return Err(err(
                &format!("hosts[{i}]"),
                format!("'{h}' is a cluster-local name: the demo's ServiceEntries name hosts outside the cluster"),
            ));
        }
        let endpoints = if endpoints.is_empty() {
            vec![ExternalEndpoint { address: h.clone(), ports: BTreeMap::new(), weight: 1 }]
        } else {
            endpoints.clone()
        };
        out.push(ExternalService {
            host: h.clone(),
            name: se.meta.name.clone(),
            namespace: se.namespace.clone(),
            ports: ports.clone(),
            mesh_external,
            resolution,
            endpoints,
        });
    }
    Ok(out)
}

/// A Gateway server's host without its `namespace/` part.
pub fn server_host(h: &str) -> &str {
    h.split_once('/').map(|(_, h)| h).unwrap_or(h)
}

/// Gateway servers: HTTP (optionally `tls.httpsRedirect`) or HTTPS terminated with `SIMPLE` TLS
/// and a `credentialName` naming a Secret in the gateway's namespace; one protocol per port (the
/// demo's one ingress gateway serves every Gateway); no SNI host twice on a port.
pub fn check_gateways(gateways: &[Resource<GatewaySpec>], secrets: &[TlsSecret]) -> Result<(), ManifestError> {
    // port -> (protocol, the SNI hosts of its HTTPS servers so far)
    let mut by_port: BTreeMap<u16, (String, Vec<String>)> = BTreeMap::new();
    for gw in gateways {
        for (i, s) in gw.spec.servers.iter().enumerate() {
            let at = |f: &str| format!("Gateway {}: spec.servers[{i}].{f}", gw.meta.name);
            let err = |f: &str, reason: String| fail(&gw.file, at(f), reason);
            let tls = s.tls.clone().unwrap_or_default();
            match s.port.protocol.as_str() {
                "HTTP" => {
                    let versions = tls.min_protocol_version.is_some() || tls.max_protocol_version.is_some();
                    if tls.mode.is_some() || tls.credential_name.is_some() || versions {
                        return Err(err(
                            "tls",
                            "an HTTP server takes only tls.httpsRedirect; terminate TLS on a protocol HTTPS server"
                                .into(),
                        ));
                    }
                }
                "HTTPS" => {
                    if s.port.name.as_deref().is_none_or(str::is_empty) {
                        return Err(err(
                            "port.name",
                            "required for an HTTPS server (its route is https.PORT.NAME.GATEWAY.NAMESPACE)".into(),
                        ));
                    }
                    check_https_tls(s.tls.as_ref(), &err, secrets)?;
                }
                other => {
                    return Err(err("port.protocol", format!("{other} is not supported (HTTP or HTTPS)")));
                }
            }
            let entry = by_port.entry(s.port.number).or_insert_with(|| (s.port.protocol.clone(), Vec::new()));
            if entry.0 != s.port.protocol {
                return Err(err(
                    "port.protocol",
                    format!(
                        "port {} is served as {} by another server: one port is HTTP or HTTPS, not both",
                        s.port.number, entry.0
                    ),
                ));
            }
            if s.port.protocol == "HTTPS" {
                for h in &s.hosts {
                    let h = server_host(h).to_string();
                    if entry.1.contains(&h) {
                        return Err(err(
                            "hosts",
                            format!("'{h}' is served by another HTTPS server on port {}", s.port.number),
                        ));
                    }
                    entry.1.push(h);
                }
            }
        }
    }
    Ok(())
}

fn check_https_tls(
    tls: Option<&crate::manifest::ServerTls>,
    err: &dyn Fn(&str, String) -> ManifestError,
    secrets: &[TlsSecret],
) -> Result<(), ManifestError> {
    let Some(tls) = tls else {
        return Err(err("tls", "an HTTPS server needs tls (mode SIMPLE and a credentialName)".into()));
    };
    match tls.mode.as_deref() {
        Some("SIMPLE") => {}
        Some(m @ ("MUTUAL" | "OPTIONAL_MUTUAL")) => {
            return Err(err(
                "tls.mode",
                format!(
                    "{m} (client certificates checked against the credential's ca.crt) is not served by the demo: use SIMPLE"
                ),
            ));
        }
        Some("ISTIO_MUTUAL") => {
            return Err(err(
                "tls.mode",
                "ISTIO_MUTUAL (mesh mTLS at the gateway) is not served by the demo: use SIMPLE".into(),
            ));
        }
        m @ (None | Some("PASSTHROUGH") | Some("AUTO_PASSTHROUGH")) => {
            return Err(err(
                "tls.mode",
                format!(
                    "{} passes TLS through to a TLS/TCP route by SNI, which the demo does not build: use SIMPLE",
                    m.unwrap_or("PASSTHROUGH (the default)")
                ),
            ));
        }
        Some(other) => return Err(err("tls.mode", format!("{other} is not a TLS mode"))),
    }
    for (f, v) in [("minProtocolVersion", &tls.min_protocol_version), ("maxProtocolVersion", &tls.max_protocol_version)]
    {
        if let Some(v) = v
            && v != "TLS_AUTO"
            && crate::manifest::ServerTls::envoy_version(v).is_none()
        {
            return Err(err(
                &format!("tls.{f}"),
                format!("'{v}' is not a TLS version (TLS_AUTO, TLSV1_0 ... TLSV1_3)"),
            ));
        }
    }
    let Some(name) = tls.credential_name.as_deref() else {
        return Err(err(
            "tls.credentialName",
            "required (the demo serves certificates from kubernetes.io/tls Secrets only)".into(),
        ));
    };
    if find_secret(secrets, name, GATEWAY_NAMESPACE).is_none() {
        let elsewhere = secrets
            .iter()
            .find(|s| s.name == name)
            .map(|s| format!(" (there is one in namespace {}, but istiod reads the gateway's namespace)", s.namespace));
        return Err(err(
            "tls.credentialName",
            format!(
                "no Secret '{name}' of type kubernetes.io/tls in namespace {GATEWAY_NAMESPACE}, the ingress gateway's{}",
                elsewhere.unwrap_or_default()
            ),
        ));
    }
    Ok(())
}
