//! The local mesh: a demo and test control plane that reads Kubernetes and Istio manifests and
//! serves each proxy the xDS istiod would (`model`, `xds`), an Istio CA for SPIFFE certificates,
//! the demo app and the runner behind `remora demo` (`runner`). Production meshes use istiod.

pub mod compose;
pub mod dispatch;
pub mod endpoints;
pub mod manifest;
pub mod meshconfig;
pub mod model;
pub mod prometheus;
pub mod runner;
pub mod xds;

use envoy_types::pb::google::protobuf::Any;
use xds_client::ads;

use crate::model::Mesh;
use crate::xds::Proxy;

/// The resources of one proxy by type URL, in istiod's push order.
pub type Resources = Vec<(&'static str, Vec<(String, Any)>)>;

/// Generates and encodes every resource `proxy` gets.
pub fn resources(mesh: &Mesh, proxy: &Proxy) -> Result<Resources, String> {
    encode(mesh, proxy, |v| v)
}

/// The same for upstream Envoy as the proxy: Istio's own extensions dropped
/// (`xds::telemetry::for_upstream_envoy`).
pub fn resources_for_envoy(mesh: &Mesh, proxy: &Proxy) -> Result<Resources, String> {
    encode(mesh, proxy, |v| xds::telemetry::for_upstream_envoy(&v))
}

fn encode(
    mesh: &Mesh,
    proxy: &Proxy,
    adapt: impl Fn(serde_json::Value) -> serde_json::Value,
) -> Result<Resources, String> {
    // The descriptor pool stays decoded only while someone holds it: hold it across the
    // conversions below rather than decode it again for every resource.
    let _pool = xds_client::descriptors::pool();
    let routes = match proxy {
        Proxy::Sidecar(pod) => xds::sidecar_route_configs(mesh, &pod.namespace, &pod.labels),
        Proxy::Gateway { .. } => xds::gateway::route_configs(mesh),
    };
    let mut groups = vec![
        (ads::CLUSTER, xds::clusters(mesh, proxy)),
        (ads::ENDPOINT, xds::endpoints(mesh)),
        (ads::LISTENER, xds::listeners(mesh, proxy)),
        (ads::ROUTE, routes),
    ];
    // The gateway's credentials come over its ADS stream, as istiod serves them; the workload
    // certificates from the CA (pilot-agent's part).
    if let Proxy::Gateway { .. } = proxy {
        groups.push((ads::SECRET, xds::gateway::secrets(mesh)));
    }
    let mut out = Vec::new();
    for (ty, values) in groups {
        let mut encoded = Vec::new();
        for v in values {
            let (_, name, any) =
                xds_client::server::resource_from_json(&adapt(v), "generated").map_err(|e| e.to_string())?;
            encoded.push((name, any));
        }
        out.push((ty, encoded));
    }
    Ok(out)
}
