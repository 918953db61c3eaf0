//! Admin views of the running config: `/config_dump` in Envoy's ConfigDump shape, `/clusters`
//! and `/listeners` in Envoy's text and JSON formats.

use bytes::Bytes;
use envoy_types::pb::envoy::admin::v3::{
    BootstrapConfigDump, ClustersConfigDump, ConfigDump, ListenersConfigDump, clusters_config_dump,
    listeners_config_dump,
};
use http::{Response, header};
use http_body_util::Full;
use prost::Name;

use crate::admin::AdminState;
use xds_client::any::pack;

fn now() -> envoy_types::pb::google::protobuf::Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    envoy_types::pb::google::protobuf::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// Builds Envoy's `/config_dump` JSON.
pub fn config_dump(
    st: &AdminState,
    resource: Option<&str>,
    name_regex: Option<&str>,
    _include_eds: bool,
) -> Result<serde_json::Value, String> {
    let re = match name_regex {
        Some(r) if !r.is_empty() => Some(regex::Regex::new(r).map_err(|e| e.to_string())?),
        _ => None,
    };
    let keep = |n: &str| re.as_ref().is_none_or(|r| r.is_match(n));
    let snap = st.control.shared.snapshot.load_full();
    let boot = BootstrapConfigDump { bootstrap: Some(st.bootstrap.clone()), last_updated: Some(now()) };
    let mut clusters = ClustersConfigDump::default();
    let mut names: Vec<_> = snap.clusters.keys().cloned().collect();
    names.sort();
    for n in names {
        if !keep(&n) {
            continue;
        }
        if let Some(c) = snap.clusters.get(&n) {
            clusters
                .static_clusters
                .push(clusters_config_dump::StaticCluster { cluster: Some(pack(&c.proto)), last_updated: Some(now()) });
        }
    }
    let mut listeners = ListenersConfigDump::default();
    for l in &snap.listeners {
        if !keep(&l.name) {
            continue;
        }
        listeners
            .static_listeners
            .push(listeners_config_dump::StaticListener { listener: Some(pack(&l.proto)), last_updated: Some(now()) });
    }
    let all = [pack(&boot), pack(&clusters), pack(&listeners)];
    let configs: Vec<_> = match resource {
        Some(r) if !r.is_empty() => {
            // `?resource=static_clusters` etc.: the matching repeated field's entries.
            let mut v = Vec::new();
            match r {
                "static_clusters" => v.extend(clusters.static_clusters.iter().filter_map(|c| c.cluster.clone())),
                "static_listeners" => v.extend(listeners.static_listeners.iter().filter_map(|l| l.listener.clone())),
                _ => return Err(format!("{r} not found in config dump")),
            }
            v
        }
        _ => all.to_vec(),
    };
    let dump = ConfigDump { configs };
    let pool = xds_client::descriptors::pool();
    let v = xds_client::json::message_to_json(&pool, &dump).map_err(|e| e.to_string());
    drop(pool);
    xds_client::descriptors::release_memory();
    let _ = ConfigDump::full_name();
    v
}

fn reply(body: String, json: bool) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    let ct = if json { "application/json" } else { "text/plain; charset=UTF-8" };
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(ct));
    r
}

/// `/clusters`: Envoy's `name::key::value` lines, or JSON.
pub fn clusters(st: &AdminState, json: bool) -> Response<Full<Bytes>> {
    let snap = st.control.shared.snapshot.load_full();
    let mut names: Vec<_> = snap.clusters.keys().cloned().collect();
    names.sort();
    if json {
        let mut statuses = Vec::new();
        for n in &names {
            let Some(c) = snap.clusters.get(n) else {
                continue;
            };
            let hosts = c.hosts.load();
            let hs: Vec<_> = hosts
                .all
                .iter()
                .map(|h| {
                    serde_json::json!({
                        "address": {"socket_address": {"address": h.address.ip().to_string(), "port_value": h.address.port()}},
                        "hostname": &*h.hostname,
                        "weight": h.weight,
                        "priority": h.priority,
                        "health_status": {"eds_health_status": "HEALTHY"},
                    })
                })
                .collect();
            statuses.push(serde_json::json!({"name": &**n, "added_via_api": false, "host_statuses": hs}));
        }
        let body = serde_json::to_string_pretty(&serde_json::json!({"cluster_statuses": statuses})).unwrap_or_default();
        return reply(body, true);
    }
    let mut out = String::new();
    for n in &names {
        let Some(c) = snap.clusters.get(n) else {
            continue;
        };
        let t = c.thresholds;
        out.push_str(&format!("{n}::observability_name::{n}\n"));
        out.push_str(&format!("{n}::default_priority::max_connections::{}\n", t.max_connections));
        out.push_str(&format!("{n}::default_priority::max_pending_requests::{}\n", t.max_pending_requests));
        out.push_str(&format!("{n}::default_priority::max_requests::{}\n", t.max_requests));
        out.push_str(&format!("{n}::default_priority::max_retries::{}\n", t.max_retries));
        out.push_str(&format!("{n}::added_via_api::false\n"));
        for h in c.hosts.load().all.iter() {
            let a = h.address;
            out.push_str(&format!(
                "{n}::{a}::rq_active::{}\n",
                h.active_requests.load(std::sync::atomic::Ordering::Relaxed)
            ));
            out.push_str(&format!("{n}::{a}::hostname::{}\n", h.hostname));
            out.push_str(&format!(
                "{n}::{a}::health_flags::{}\n",
                if h.healthy() { "healthy" } else { "/failed_eds_health" }
            ));
            out.push_str(&format!("{n}::{a}::weight::{}\n", h.weight));
            out.push_str(&format!("{n}::{a}::priority::{}\n", h.priority));
        }
    }
    reply(out, false)
}

/// `/listeners`: `name::address` lines, or JSON.
pub fn listeners(st: &AdminState, json: bool) -> Response<Full<Bytes>> {
    let snap = st.control.shared.snapshot.load_full();
    if json {
        let v: Vec<_> = snap
            .listeners
            .iter()
            .map(|l| {
                serde_json::json!({"name": l.name, "local_address": {"socket_address": {"address": l.address.ip().to_string(), "port_value": l.address.port()}}})
            })
            .collect();
        return reply(
            serde_json::to_string_pretty(&serde_json::json!({"listener_statuses": v})).unwrap_or_default(),
            true,
        );
    }
    let mut out = String::new();
    for l in &snap.listeners {
        out.push_str(&format!("{}::{}\n", l.name, l.address));
    }
    reply(out, false)
}
