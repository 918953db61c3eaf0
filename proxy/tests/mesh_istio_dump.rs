//! istiod's real output in the namespace mesh, remora against the reference Envoy: the
//! listeners, clusters and routes of shared/testdata/istio/sidecar_istio1.20.8_* are served to
//! a remora sidecar (pod `r`) and to an Envoy sidecar (pod `e`, the same resources without
//! Istio's own extensions), with every EDS cluster's endpoints pointed at an app pod that
//! answers `<host>:<port>`. From inside each pod, curl calls every outbound listener of the
//! dump (`<vip>_<port>` by address, `0.0.0.0_<port>` by each virtual host's domain, an unknown
//! host, an address outside the registry) and a pod without a sidecar calls the inbound port;
//! every call must end where Envoy's ends (same app, or the same status for local replies).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod mesh;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use mesh::apps::http_app;
use mesh::{Mesh, Pod, Proxy};
use serde_json::{Value, json};

const DUMP: &str = "sidecar_istio1.20.8_ossm_hello-openshift.config_dump.json";
const EXT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 50);

fn dump() -> Option<Value> {
    let dir = std::env::var_os("REMORA_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"));
    let text = std::fs::read_to_string(dir.join("istio").join(DUMP)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The dump's dynamic resources: (listeners, clusters, routes).
fn resources(dump: &Value) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let (mut l, mut c, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for cfg in dump["configs"].as_array().into_iter().flatten() {
        for x in cfg["dynamic_listeners"].as_array().into_iter().flatten() {
            if x["active_state"]["listener"].is_object() {
                l.push(x["active_state"]["listener"].clone());
            }
        }
        for x in cfg["dynamic_active_clusters"].as_array().into_iter().flatten() {
            c.push(x["cluster"].clone());
        }
        for x in cfg["dynamic_route_configs"].as_array().into_iter().flatten() {
            r.push(x["route_config"].clone());
        }
    }
    (l, c, r)
}

/// A call: from the pod to `ip:port` with `Host: host`.
#[derive(Clone, Debug)]
struct Call {
    ip: Ipv4Addr,
    port: u16,
    host: String,
}

/// What a client saw: the app that answered, or a local reply's status (curl's exit code when
/// the connection failed).
fn outcome(pod: &Pod, c: &Call) -> String {
    let url = format!("http://{}:{}/dump", c.ip, c.port);
    let (rc, out) = pod.curl(&["-H", &format!("Host: {}", c.host), &url]);
    let (status, body) = out.split_once('\n').unwrap_or((&out, ""));
    if rc != 0 {
        return format!("curl exit {rc}");
    }
    match body.split_once(" HTTP/") {
        Some((app, _)) if status == "200" => format!("200 from {app}"),
        _ => format!("{status} local reply"),
    }
}

#[test]
fn istiod_1_20_sidecar_config_routes_like_envoy() {
    if mesh::skip("istiod_1_20_sidecar_config_routes_like_envoy") {
        return;
    }
    let require = std::env::var("REMORA_DIFF_REQUIRE").as_deref() == Ok("1");
    let (Some(dump), Some(_)) = (dump(), mesh::envoy_bin()) else {
        assert!(!require, "the istio dump or the reference Envoy is missing");
        eprintln!("skipped: no testdata or no Envoy");
        return;
    };
    let (listeners, clusters, routes) = resources(&dump);
    assert!(
        listeners.len() >= 16 && clusters.len() >= 20,
        "{} listeners, {} clusters",
        listeners.len(),
        clusters.len()
    );

    let mut m = Mesh::new("d");
    // An app pod per service host, serving every port its clusters name; EDS points there.
    let mut hosts: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    let mut eds: Vec<(String, String, u16)> = Vec::new();
    for c in clusters.iter().filter(|c| c["type"] == "EDS") {
        let name = c["name"].as_str().unwrap().to_string();
        let service = c["eds_cluster_config"]["service_name"].as_str().unwrap_or(&name).to_string();
        let parts: Vec<&str> = name.split('|').collect();
        let (port, host): (u16, String) = (parts[1].parse().unwrap(), parts[3].to_string());
        hosts.entry(host.clone()).or_default().push(port);
        eds.push((service, host, port));
    }
    let mut app_ip = BTreeMap::new();
    for (i, (host, ports)) in hosts.iter().enumerate() {
        let pod = m.pod(&format!("s{i}"), 100 + i as u8, "");
        for p in ports {
            http_app(&pod.ns, Box::leak(format!("{host}:{p}").into_boxed_str()), *p);
        }
        app_ip.insert(host.clone(), pod.ip);
    }
    let cla: Vec<Value> = eds
        .iter()
        .map(|(service, host, port)| {
            json!({"@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment", "cluster_name": service,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                    "address": app_ip[host].to_string(), "port_value": port}}}}]}]})
        })
        .collect();

    // Outside the registry: one pod answering on every port the dump has a wildcard listener for.
    let ext = m.pod("ext", 50, "");
    let mut calls = vec![Call { ip: EXT, port: 8000, host: "ext".into() }];
    http_app(&ext.ns, "ext:8000", 8000);
    for l in &listeners {
        let name = l["name"].as_str().unwrap();
        let Some((ip, port)) = name.rsplit_once('_') else { continue };
        let (Ok(ip), Ok(port)) = (ip.parse::<Ipv4Addr>(), port.parse::<u16>()) else { continue };
        if !ip.is_unspecified() {
            calls.push(Call { ip, port, host: ip.to_string() });
            continue;
        }
        http_app(&ext.ns, Box::leak(format!("ext:{port}").into_boxed_str()), port);
        calls.push(Call { ip: EXT, port, host: "unknown.example.com".into() });
        let port_name = port.to_string();
        let rc = routes.iter().find(|r| r["name"].as_str() == Some(port_name.as_str()));
        for vh in rc.and_then(|r| r["virtual_hosts"].as_array()).into_iter().flatten() {
            if let Some(d) =
                vh["domains"].as_array().into_iter().flatten().filter_map(Value::as_str).find(|d| *d != "*")
            {
                calls.push(Call { ip: EXT, port, host: d.to_string() });
            }
        }
    }

    let all: Vec<Value> = listeners.iter().chain(&clusters).chain(&routes).chain(&cla).cloned().collect();
    let mut r = m.pod("r", 10, "");
    let mut e = m.pod("e", 11, "");
    http_app(&r.ns, "self-r", 8080);
    http_app(&e.ns, "self-e", 8080);
    m.sidecar_with(Proxy::Remora, &mut r, "hello-openshift", &all);
    m.sidecar_with(Proxy::Envoy, &mut e, "hello-openshift", &all);
    assert!(r.cp().nacks().is_empty(), "remora NACKed: {:?}", r.cp().nacks());
    assert!(e.cp().nacks().is_empty(), "Envoy NACKed: {:?}", e.cp().nacks());

    let mut differ = Vec::new();
    let mut served = 0;
    for c in &calls {
        let (want, got) = (outcome(&e, c), outcome(&r, c));
        eprintln!("{}:{} Host {:<55} envoy: {want:<60} remora: {got}", c.ip, c.port, c.host);
        if want != got {
            differ.push(format!("{c:?}: envoy {want}, remora {got}"));
        }
        served += usize::from(got.starts_with("200 from"));
    }
    // Inbound (virtualInbound, PERMISSIVE in this dump): plaintext from a pod without a sidecar.
    let probe = m.pod("probe", 60, "");
    for (pod, me) in [(&r, "self-r"), (&e, "self-e")] {
        let (rc, out) = probe.curl(&[&format!("http://{}:8080/in", pod.ip)]);
        assert!(rc == 0 && out.starts_with(&format!("200\n{me} HTTP/1.1")), "inbound of {}: {rc} {out}", pod.name);
    }
    assert!(
        differ.is_empty(),
        "{} of {} calls differ from Envoy:\n{}\n{}",
        differ.len(),
        calls.len(),
        differ.join("\n"),
        r.log()
    );
    // Not a vacuous comparison: most calls reach an app.
    assert!(served * 2 > calls.len(), "only {served} of {} calls reached an app", calls.len());
    eprintln!("{} calls, {served} reached an app, all as Envoy", calls.len());
}
