//! Kubernetes `Endpoints` for Services without a selector: the way a mesh names something that
//! runs outside it (a tracing collector on the host). istiod builds such a Service's EDS from
//! these addresses, without `tlsMode: istio` (the workload has no sidecar), so the callers'
//! sidecars reach it in plaintext.

use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::manifest::{ManifestError, Meta};

#[derive(Debug, Clone, PartialEq)]
pub struct Endpoints {
    pub file: String,
    pub name: String,
    pub namespace: String,
    /// (address, port, port name).
    pub addresses: Vec<(Ipv4Addr, u16, Option<String>)>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Doc {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: Meta,
    #[serde(default)]
    subsets: Vec<Subset>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Subset {
    #[serde(default)]
    addresses: Vec<Address>,
    #[serde(default)]
    ports: Vec<EndpointPort>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Address {
    ip: Ipv4Addr,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EndpointPort {
    port: u16,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    protocol: Option<String>,
}

pub fn parse(file: &str, at: &str, doc: &str) -> Result<Endpoints, ManifestError> {
    let err =
        |field: String, reason: String| ManifestError { file: file.into(), field: format!("{at}: {field}"), reason };
    let d: Doc = serde_yaml::from_str(doc).map_err(|e| {
        let msg = e.to_string();
        match msg.split_once(": ") {
            Some((path, rest)) if !path.contains(' ') => err(path.into(), rest.into()),
            _ => err("-".into(), msg),
        }
    })?;
    let mut addresses = Vec::new();
    for (i, s) in d.subsets.iter().enumerate() {
        for (j, p) in s.ports.iter().enumerate() {
            if p.protocol.as_deref().is_some_and(|x| x != "TCP") {
                return Err(err(format!("subsets[{i}].ports[{j}].protocol"), "only TCP is supported".into()));
            }
            for a in &s.addresses {
                addresses.push((a.ip, p.port, p.name.clone()));
            }
        }
    }
    let namespace = d.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    Ok(Endpoints { file: file.into(), name: d.metadata.name, namespace, addresses })
}

/// The EDS endpoints of a Service without a selector for one of its ports: its `Endpoints`
/// addresses on the port of the same name (or the only port), plaintext.
pub fn lb_endpoints(
    mesh: &crate::model::Mesh,
    svc: &crate::model::Service,
    port: &crate::model::Port,
) -> Vec<serde_json::Value> {
    let Some(e) = mesh.external_endpoints(svc) else { return Vec::new() };
    let single = svc.ports.len() == 1;
    e.addresses
        .iter()
        .filter(|(_, _, name)| single || name.as_deref() == Some(port.name.as_str()))
        .map(|(ip, p, _)| {
            serde_json::json!({
                "endpoint": {"address": {"socket_address": {"address": ip.to_string(), "port_value": p}}},
                "load_balancing_weight": 1,
            })
        })
        .collect()
}
