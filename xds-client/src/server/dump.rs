//! Loading an Envoy `/config_dump` (what istiod made a proxy hold) into served resources.
//!
//! Each resource is parsed with the crate's proto3 JSON loader into its envoy-types message and
//! re-encoded, so nested typed configs (Istio's `stats.PluginConfig`, TypedStructs, ...) reach
//! the client as the same typed `Any` istiod sent.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;
use prost_reflect::DescriptorPool;
use serde_json::Value;

use super::{Served, ServerError};
use crate::ads::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use crate::json::{JsonOptions, message_from_json, yaml_to_json};

/// How many resources of each kind a dump held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpCounts {
    pub clusters: usize,
    pub listeners: usize,
    pub routes: usize,
    pub endpoints: usize,
    pub secrets: usize,
}

type Loaded = Vec<(String, String, Served)>;

fn err(path: &str, reason: impl Into<String>) -> ServerError {
    ServerError::Dump { path: path.to_string(), reason: reason.into() }
}

pub(super) fn parse(text: &str) -> Result<(Loaded, DumpCounts), ServerError> {
    // Dumps are JSON; some saved as .yaml are JSON too, and real YAML goes through the YAML loader.
    let root: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(json_err) => {
            yaml_to_json(text).map_err(|e| err("", format!("neither JSON ({json_err}) nor YAML ({e})")))?
        }
    };
    let configs = root
        .get("configs")
        .and_then(Value::as_array)
        .ok_or_else(|| err("configs", "missing or not a list (not an Envoy /config_dump)"))?;
    let pool = crate::descriptors::pool();
    let mut out = Vec::new();
    let mut counts = DumpCounts::default();
    for (i, cfg) in configs.iter().enumerate() {
        let path = format!("configs[{i}]");
        let ty = cfg.get("@type").and_then(Value::as_str).unwrap_or_default();
        let kind = ty.rsplit('/').next().unwrap_or(ty);
        let (section, field, inner_path) = match kind {
            "envoy.admin.v3.ClustersConfigDump" => ("dynamic_active_clusters", "cluster", None),
            "envoy.admin.v3.ListenersConfigDump" => ("dynamic_listeners", "listener", Some("active_state")),
            "envoy.admin.v3.RoutesConfigDump" => ("dynamic_route_configs", "route_config", None),
            "envoy.admin.v3.EndpointsConfigDump" => ("dynamic_endpoint_configs", "endpoint_config", None),
            "envoy.admin.v3.SecretsConfigDump" => ("dynamic_active_secrets", "secret", None),
            _ => continue,
        };
        let Some(entries) = cfg.get(section) else { continue };
        let entries = entries.as_array().ok_or_else(|| err(&format!("{path}.{section}"), "not a list"))?;
        for (j, entry) in entries.iter().enumerate() {
            let mut epath = format!("{path}.{section}[{j}]");
            let holder = match inner_path {
                // A listener only warming or draining has no active state: nothing to serve.
                Some(p) => match entry.get(p) {
                    Some(h) => {
                        epath = format!("{epath}.{p}");
                        h
                    }
                    None => continue,
                },
                None => entry,
            };
            let version = holder.get("version_info").and_then(Value::as_str).unwrap_or_default().to_string();
            let res = holder.get(field).ok_or_else(|| err(&epath, format!("missing \"{field}\"")))?;
            let (type_url, name, any) = convert(&pool, res, &format!("{epath}.{field}"))?;
            match type_url {
                CLUSTER => counts.clusters += 1,
                LISTENER => counts.listeners += 1,
                ROUTE => counts.routes += 1,
                ENDPOINT => counts.endpoints += 1,
                SECRET => counts.secrets += 1,
                _ => {}
            }
            out.push((type_url.to_string(), name, Served { version, resource: any }));
        }
    }
    Ok((out, counts))
}

/// Parses one resource written as JSON with its `@type` (Cluster, Listener, RouteConfiguration,
/// ClusterLoadAssignment or Secret); returns its type URL, name and `Any`. `path` names it in
/// errors.
pub fn resource_from_json(value: &Value, path: &str) -> Result<(&'static str, String, Any), ServerError> {
    convert(&crate::descriptors::pool(), value, path)
}

fn convert(pool: &DescriptorPool, value: &Value, path: &str) -> Result<(&'static str, String, Any), ServerError> {
    let obj = value.as_object().ok_or_else(|| err(path, "expected an object"))?;
    let ty = obj.get("@type").and_then(Value::as_str).ok_or_else(|| err(path, "missing \"@type\""))?;
    let mut body = obj.clone();
    body.remove("@type");
    let body = Value::Object(body);
    let opts = JsonOptions::default();
    let bad = |e: crate::json::JsonError| err(path, e.to_string());
    let name = ty.rsplit('/').next().unwrap_or(ty);
    Ok(match name {
        "envoy.config.cluster.v3.Cluster" => {
            let m: Cluster = message_from_json(pool, body, opts).map_err(bad)?;
            (CLUSTER, m.name.clone(), crate::any::pack(&m))
        }
        "envoy.config.listener.v3.Listener" => {
            let m: Listener = message_from_json(pool, body, opts).map_err(bad)?;
            (LISTENER, m.name.clone(), crate::any::pack(&m))
        }
        "envoy.config.route.v3.RouteConfiguration" => {
            let m: RouteConfiguration = message_from_json(pool, body, opts).map_err(bad)?;
            (ROUTE, m.name.clone(), crate::any::pack(&m))
        }
        "envoy.config.endpoint.v3.ClusterLoadAssignment" => {
            let m: ClusterLoadAssignment = message_from_json(pool, body, opts).map_err(bad)?;
            (ENDPOINT, m.cluster_name.clone(), crate::any::pack(&m))
        }
        "envoy.extensions.transport_sockets.tls.v3.Secret" => {
            let m: Secret = message_from_json(pool, body, opts).map_err(bad)?;
            (SECRET, m.name.clone(), crate::any::pack(&m))
        }
        other => return Err(err(path, format!("unsupported resource type \"{other}\""))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_dump_names_the_path() {
        let e = parse(r#"{"configs":[{"@type":"type.googleapis.com/envoy.admin.v3.ClustersConfigDump","dynamic_active_clusters":[{"version_info":"1","cluster":{"@type":"type.googleapis.com/envoy.config.cluster.v3.Cluster","name":"a","connect_timeout":5}}]}]}"#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("configs[0].dynamic_active_clusters[0].cluster"), "{e}");
        assert!(parse("{}").is_err());
        assert!(parse("[").is_err());
    }
}
