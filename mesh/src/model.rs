//! The mesh the manifests describe, checked and resolved: services with their FQDNs and ports,
//! one pod per Deployment replica with its loopback addresses (plain-ports mode), the routing and
//! policy resources with their references checked (hosts, subsets, gateways).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

pub mod edge;
mod routing;

use crate::manifest::{
    DestinationRuleSpec, GatewaySpec, IntOrString, Labels, ManifestError, Manifests, Resource, VirtualServiceSpec,
    parse_duration,
};

pub const DOMAIN: &str = "svc.cluster.local";
pub const TRUST_DOMAIN: &str = "cluster.local";
/// The namespace whose PeerAuthentication applies mesh-wide, as Istio's root namespace.
pub const ROOT_NAMESPACE: &str = "istio-system";

#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub name: String,
    pub port: u16,
    /// The container port traffic for this service port goes to.
    pub target: u16,
}

impl Port {
    /// Istio's protocol selection by port name: `http2`/`http2-*` speak HTTP/2 (h2c) upstream.
    pub fn is_h2(&self) -> bool {
        self.name == "http2" || self.name.starts_with("http2-")
    }
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub ports: Vec<Port>,
    pub selector: Labels,
}

impl Service {
    pub fn fqdn(&self) -> String {
        format!("{}.{}.{DOMAIN}", self.name, self.namespace)
    }
}

/// One replica of a Deployment. In plain-ports mode each pod gets three loopback addresses:
/// `ip` (its "pod IP": the sidecar's inbound listeners, the EDS endpoints), `app_ip` (where the
/// app listens, the target of the `inbound|PORT||` clusters) and `outbound_ip` (the sidecar's
/// outbound listeners, the app's way out).
#[derive(Debug, Clone, PartialEq)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub deployment: String,
    pub labels: Labels,
    pub service_account: String,
    pub ports: Vec<u16>,
    /// The Deployment's container names (pilot-agent's `APP_CONTAINERS`).
    pub containers: Vec<String>,
    pub ip: Ipv4Addr,
    pub app_ip: Ipv4Addr,
    pub outbound_ip: Ipv4Addr,
}

impl Pod {
    pub fn node_id(&self) -> String {
        format!("sidecar~{}~{}.{}~{}.{DOMAIN}", self.ip, self.name, self.namespace, self.namespace)
    }
    pub fn spiffe(&self) -> String {
        format!("spiffe://{TRUST_DOMAIN}/ns/{}/sa/{}", self.namespace, self.service_account)
    }
    pub fn app(&self) -> &str {
        self.labels.get("app").map(String::as_str).unwrap_or(&self.deployment)
    }
    pub fn version(&self) -> &str {
        self.labels.get("version").map(String::as_str).unwrap_or("unknown")
    }
}

#[derive(Debug, Clone)]
pub struct Mesh {
    pub services: Vec<Service>,
    pub pods: Vec<Pod>,
    pub virtual_services: Vec<Resource<VirtualServiceSpec>>,
    pub destination_rules: Vec<Resource<DestinationRuleSpec>>,
    pub gateways: Vec<Resource<GatewaySpec>>,
    /// STRICT (true) or PERMISSIVE per namespace; `ROOT_NAMESPACE` is the mesh-wide default.
    pub strict: BTreeMap<String, bool>,
    /// AuthorizationPolicies and RequestAuthentications, checked (manifest/security.rs).
    pub security: crate::xds::authz::Security,
    /// Where the ingress gateway's listeners bind: 127.0.0.1 for `remora demo`, 0.0.0.0 in the
    /// compose mesh (its container publishes them).
    pub gateway_ip: Ipv4Addr,
    /// Gateway credentials and ServiceEntry hosts (`edge`).
    pub edge: edge::Edge,
    /// Istio's mesh config (the `istio` ConfigMap, else the default) and the file it came from.
    pub mesh_config: crate::meshconfig::MeshConfig,
    pub mesh_config_file: Option<String>,
    pub telemetries: Vec<Resource<crate::meshconfig::TelemetrySpec>>,
    /// `Endpoints` of the Services without a selector.
    pub endpoints: Vec<crate::endpoints::Endpoints>,
}

fn fail(file: &str, field: String, reason: String) -> ManifestError {
    ManifestError { file: file.to_string(), field, reason }
}

/// Resolves `host` (short, `name.ns`, or FQDN) as Istio does relative to `ns`.
pub fn fqdn(host: &str, ns: &str) -> String {
    if host.ends_with(DOMAIN) || host.contains('*') {
        host.to_string()
    } else if host.contains('.') {
        format!("{host}.{DOMAIN}")
    } else {
        format!("{host}.{ns}.{DOMAIN}")
    }
}

impl Mesh {
    pub fn build(m: Manifests) -> Result<Mesh, ManifestError> {
        let mut pods = Vec::new();
        let mut seen = BTreeSet::new();
        for d in &m.deployments {
            let at = format!("Deployment {}", d.meta.name);
            if !seen.insert((d.namespace.clone(), d.meta.name.clone())) {
                return Err(fail(&d.file, at, "defined twice".into()));
            }
            let replicas = d.spec.replicas.unwrap_or(1);
            if replicas > 20 {
                return Err(fail(&d.file, format!("{at}: spec.replicas"), "the demo runs at most 20 replicas".into()));
            }
            let ports: Vec<u16> =
                d.spec.template.spec.containers.iter().flat_map(|c| c.ports.iter().map(|p| p.container_port)).collect();
            if let Some(p) = ports.iter().enumerate().find_map(|(i, p)| ports[..i].contains(p).then_some(*p)) {
                return Err(fail(
                    &d.file,
                    format!("{at}: spec.template.spec.containers"),
                    format!("container port {p} is declared twice in one pod"),
                ));
            }
            for r in 0..replicas {
                let n = pods.len() + 1;
                if n > 250 {
                    return Err(fail(&d.file, at.clone(), "the demo runs at most 250 pods".into()));
                }
                let n = n as u8;
                pods.push(Pod {
                    name: format!("{}-{r}", d.meta.name),
                    namespace: d.namespace.clone(),
                    deployment: d.meta.name.clone(),
                    labels: d.spec.template.metadata.labels.clone(),
                    service_account: d
                        .spec
                        .template
                        .spec
                        .service_account_name
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                    ports: ports.clone(),
                    containers: d.spec.template.spec.containers.iter().map(|c| c.name.clone()).collect(),
                    ip: Ipv4Addr::new(127, 1, 0, n),
                    app_ip: Ipv4Addr::new(127, 2, 0, n),
                    outbound_ip: Ipv4Addr::new(127, 3, 0, n),
                });
            }
        }
        let mut services = Vec::new();
        for s in &m.services {
            let at = format!("Service {}", s.meta.name);
            if let Some(t) = &s.spec.kind
                && t != "ClusterIP"
            {
                return Err(fail(&s.file, format!("{at}: spec.type"), format!("only ClusterIP is supported, not {t}")));
            }
            let mut ports = Vec::new();
            for (i, p) in s.spec.ports.iter().enumerate() {
                let target = match &p.target_port {
                    None => p.port,
                    Some(IntOrString::Int(t)) => *t,
                    Some(IntOrString::Str(name)) => {
                        let found = m
                            .deployments
                            .iter()
                            .filter(|d| d.namespace == s.namespace)
                            .flat_map(|d| d.spec.template.spec.containers.iter().flat_map(|c| c.ports.iter()))
                            .find(|cp| cp.name.as_deref() == Some(name.as_str()));
                        match found {
                            Some(cp) => cp.container_port,
                            None => {
                                return Err(fail(
                                    &s.file,
                                    format!("{at}: spec.ports[{i}].targetPort"),
                                    format!("no container port is named '{name}'"),
                                ));
                            }
                        }
                    }
                };
                if p.protocol.as_deref().is_some_and(|pr| pr != "TCP") {
                    return Err(fail(
                        &s.file,
                        format!("{at}: spec.ports[{i}].protocol"),
                        "only TCP is supported".into(),
                    ));
                }
                let name = p.name.clone().unwrap_or_else(|| "http".into());
                if !(name == "http" || name.starts_with("http-") || name == "http2" || name.starts_with("http2-"))
                    && p.app_protocol.as_deref().is_none_or(|a| a != "http")
                {
                    return Err(fail(
                        &s.file,
                        format!("{at}: spec.ports[{i}].name"),
                        format!(
                            "port '{name}': the demo control plane serves HTTP ports only (name it http or http-*)"
                        ),
                    ));
                }
                ports.push(Port { name, port: p.port, target });
            }
            services.push(Service {
                name: s.meta.name.clone(),
                namespace: s.namespace.clone(),
                ports,
                selector: s.spec.selector.clone(),
            });
        }
        let mut strict = BTreeMap::new();
        for p in &m.peer_authentications {
            let mode = p.spec.mtls.as_ref().map(|m| m.mode.as_str()).unwrap_or("PERMISSIVE");
            let on = match mode {
                "STRICT" => true,
                "PERMISSIVE" | "UNSET" => false,
                other => {
                    return Err(fail(
                        &p.file,
                        format!("PeerAuthentication {}: spec.mtls.mode", p.meta.name),
                        format!("{other} is not supported (STRICT or PERMISSIVE)"),
                    ));
                }
            };
            strict.insert(p.namespace.clone(), on);
        }
        let edge = edge::Edge::build(&m, &services)?;
        let mesh = Mesh {
            edge,
            services,
            pods,
            virtual_services: m.virtual_services,
            destination_rules: m.destination_rules,
            gateways: m.gateways,
            strict,
            security: crate::xds::authz::Security::build(m.authorization_policies, m.request_authentications)?,
            gateway_ip: Ipv4Addr::LOCALHOST,
            mesh_config_file: m.mesh_config.as_ref().map(|(f, _)| f.clone()),
            mesh_config: m.mesh_config.map(|(_, c)| c).unwrap_or_default(),
            telemetries: m.telemetries,
            endpoints: m.endpoints,
        };
        mesh.check()?;
        for e in &mesh.endpoints {
            let selectorless =
                mesh.services.iter().any(|s| s.name == e.name && s.namespace == e.namespace && s.selector.is_empty());
            if !selectorless {
                return Err(fail(
                    &e.file,
                    format!("Endpoints {}", e.name),
                    format!("no Service '{}' without a selector in {}", e.name, e.namespace),
                ));
            }
        }
        crate::meshconfig::check(&mesh)?;
        Ok(mesh)
    }

    /// Moves every pod to the loopback block `127.{1,2,3}.BLOCK.N`, so two meshes on one machine
    /// (or a test beside a running demo) do not share addresses.
    pub fn renumber(&mut self, block: u8) {
        for p in &mut self.pods {
            let n = p.ip.octets()[3];
            p.ip = Ipv4Addr::new(127, 1, block, n);
            p.app_ip = Ipv4Addr::new(127, 2, block, n);
            p.outbound_ip = Ipv4Addr::new(127, 3, block, n);
        }
    }

    pub fn service(&self, fqdn: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.fqdn() == fqdn)
    }

    /// The `Endpoints` addresses of a Service without a selector.
    pub fn external_endpoints(&self, svc: &Service) -> Option<&crate::endpoints::Endpoints> {
        if !svc.selector.is_empty() {
            return None;
        }
        self.endpoints.iter().find(|e| e.name == svc.name && e.namespace == svc.namespace)
    }

    pub fn destination_rule(&self, host: &str) -> Option<&Resource<DestinationRuleSpec>> {
        self.destination_rules.iter().find(|d| fqdn(&d.spec.host, &d.namespace) == host)
    }

    /// Whether inbound traffic to `ns` must be mTLS.
    pub fn is_strict(&self, ns: &str) -> bool {
        self.strict.get(ns).or_else(|| self.strict.get(ROOT_NAMESPACE)).copied().unwrap_or(false)
    }

    pub fn pods_of<'a>(&'a self, svc: &'a Service, subset: &'a Labels) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods.iter().filter(move |p| {
            p.namespace == svc.namespace
                && !svc.selector.is_empty()
                && svc.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                && subset.iter().all(|(k, v)| p.labels.get(k) == Some(v))
        })
    }

    /// References: every destination host is a service, every subset exists in a DestinationRule
    /// for that host, every gateway named exists; durations parse; weights add up.
    fn check(&self) -> Result<(), ManifestError> {
        for dr in &self.destination_rules {
            let at = format!("DestinationRule {}", dr.meta.name);
            let host = fqdn(&dr.spec.host, &dr.namespace);
            if self.service(&host).is_none() {
                return Err(fail(&dr.file, format!("{at}: spec.host"), format!("no Service '{host}'")));
            }
            // The rule's, its ports' and its subsets' policies (model/routing.rs).
            self.check_traffic_policies(dr)?;
        }
        edge::check_gateways(&self.gateways, &self.edge.secrets)?;
        for vs in &self.virtual_services {
            let at = format!("VirtualService {}", vs.meta.name);
            for g in &vs.spec.gateways {
                if g != "mesh" && self.gateway(g, &vs.namespace).is_none() {
                    return Err(fail(&vs.file, format!("{at}: spec.gateways"), format!("no Gateway '{g}'")));
                }
            }
            for (i, r) in vs.spec.http.iter().enumerate() {
                let field = |f: &str| format!("{at}: spec.http[{i}].{f}");
                // Matches, actions, mirrors, rewrites, redirects, headers (model/routing.rs).
                self.check_http_rule(vs, i, r)?;
                for (j, d) in r.route.iter().enumerate() {
                    let host = fqdn(&d.destination.host, &vs.namespace);
                    let Some(svc) = self.service(&host) else {
                        return Err(fail(
                            &vs.file,
                            field(&format!("route[{j}].destination.host")),
                            format!("no Service '{host}'"),
                        ));
                    };
                    match &d.destination.port {
                        Some(p) if !svc.ports.iter().any(|sp| sp.port == p.number) => {
                            return Err(fail(
                                &vs.file,
                                field(&format!("route[{j}].destination.port.number")),
                                format!("Service '{host}' has no port {}", p.number),
                            ));
                        }
                        None if svc.ports.len() != 1 => {
                            return Err(fail(
                                &vs.file,
                                field(&format!("route[{j}].destination.port")),
                                format!("Service '{host}' has several ports: name one"),
                            ));
                        }
                        _ => {}
                    }
                    if let Some(subset) = &d.destination.subset {
                        let known = self
                            .destination_rule(&host)
                            .is_some_and(|dr| dr.spec.subsets.iter().any(|s| &s.name == subset));
                        if !known {
                            return Err(fail(
                                &vs.file,
                                field(&format!("route[{j}].destination.subset")),
                                format!("no DestinationRule for '{host}' defines subset '{subset}'"),
                            ));
                        }
                    }
                }
                if r.route.len() > 1 && r.route.iter().map(|d| d.weight.unwrap_or(0)).sum::<u32>() == 0 {
                    return Err(fail(&vs.file, field("route"), "several destinations need weights".into()));
                }
                let durations = [
                    r.timeout.clone(),
                    r.retries.as_ref().and_then(|x| x.per_try_timeout.clone()),
                    r.fault.as_ref().and_then(|f| f.delay.as_ref()).map(|d| d.fixed_delay.clone()),
                ];
                for d in durations.into_iter().flatten() {
                    if parse_duration(&d).is_none() {
                        return Err(fail(&vs.file, field("timeout"), format!("bad duration '{d}'")));
                    }
                }
            }
        }
        Ok(())
    }

    /// A Gateway named as a VirtualService names it: `name` (same namespace) or `ns/name`.
    pub fn gateway(&self, name: &str, ns: &str) -> Option<&Resource<GatewaySpec>> {
        let (gns, gname) = name.split_once('/').unwrap_or((ns, name));
        self.gateways.iter().find(|g| g.namespace == gns && g.meta.name == gname)
    }

    /// Distinct Service and ServiceEntry ports: one outbound listener and route table each.
    pub fn service_ports(&self) -> BTreeSet<u16> {
        let external = self.edge.service_entries.iter().flat_map(|e| e.ports.iter().map(|p| p.number));
        self.services.iter().flat_map(|s| s.ports.iter().map(|p| p.port)).chain(external).collect()
    }
}
