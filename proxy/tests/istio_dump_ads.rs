//! Real istiod output over ADS, the acceptance test of the xDS work: the control-plane harness
//! serves each config dump in shared/testdata/istio (every Cluster, Listener, RouteConfiguration
//! and ClusterLoadAssignment, as typed `Any`s with Istio's own configs inside, per-resource
//! versions kept) to remora over Delta ADS, as istiod does. Remora must ACK every type, NACK
//! nothing (the expected NACKs are listed here when there are any), and afterwards its
//! `/config_dump` must list the same dynamic resources with the same versions as the dump.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Remora, free_port, http_get};
use serde_json::Value;
use xds_client::ads;
use xds_client::server::ControlPlane;

fn testdata() -> Option<PathBuf> {
    let dir = std::env::var_os("REMORA_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"));
    dir.join("istio").is_dir().then_some(dir.join("istio"))
}

/// name -> version of one dump section, e.g. ("dynamic_active_clusters", "cluster").
fn section(dump: &Value, list: &str, inner: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for c in dump["configs"].as_array().into_iter().flatten() {
        for d in c[list].as_array().into_iter().flatten() {
            let (name, version) = if list == "dynamic_listeners" {
                // A listener Envoy rejected (only `error_state`) is not served by the harness.
                let state = if d.get("active_state").is_some() { &d["active_state"] } else { &d["warming_state"] };
                if state.is_null() {
                    continue;
                }
                (d["name"].as_str(), state["version_info"].as_str())
            } else {
                let name = d[inner]["name"].as_str().or_else(|| d[inner]["cluster_name"].as_str());
                (name, d["version_info"].as_str())
            };
            if let Some(n) = name {
                out.insert(n.to_string(), version.unwrap_or_default().to_string());
            }
        }
    }
    out
}

fn clusters(dump: &Value) -> BTreeMap<String, String> {
    let mut all = section(dump, "dynamic_active_clusters", "cluster");
    all.extend(section(dump, "dynamic_warming_clusters", "cluster"));
    all
}

fn bootstrap(admin: u16, xds: u16) -> String {
    format!(
        r#"
node:
  id: sidecar~10.0.0.1~replay-1.default~default.svc.cluster.local
  cluster: replay.default
  metadata: {{NAMESPACE: default, SERVICE_ACCOUNT: default, ISTIO_VERSION: "1.20.8"}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
dynamic_resources:
  ads_config:
    api_type: DELTA_GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{{envoy_grpc: {{cluster_name: xds-grpc}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds-grpc
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {xds}}}}}}}}}]}}]
"#
    )
}

/// Envoy's `/config_dump` redacts private keys (`"[redacted]"`), so a dump's SDS secrets cannot
/// be served as they are: each keeps its name and version but gets a dev-CA certificate and key
/// (or the dev root for a validation context), as pilot-agent would serve real ones.
fn replace_redacted_secrets(cp: &ControlPlane) {
    use certs::dev_ca::{CaOptions, DevCa, WorkloadOptions};
    use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, TlsCertificate, secret};
    use prost::Message;
    let names = cp.names(ads::SECRET);
    if names.is_empty() {
        return;
    }
    let ca = DevCa::new_root(&CaOptions::default()).unwrap();
    let id = certs::SpiffeId::parse("spiffe://cluster.local/ns/default/sa/default").unwrap();
    let leaf = ca.issue(&WorkloadOptions::spiffe(id)).unwrap();
    let inline = |pem: &str| {
        Some(DataSource { specifier: Some(Specifier::InlineString(pem.to_string())), ..Default::default() })
    };
    for name in names {
        let served = cp.get(ads::SECRET, &name).unwrap();
        let mut s = Secret::decode(served.resource.value.as_slice()).unwrap();
        match &mut s.r#type {
            Some(secret::Type::TlsCertificate(c)) => {
                *c = TlsCertificate {
                    certificate_chain: inline(&leaf.chain_pem),
                    private_key: inline(&leaf.key_pem),
                    ..Default::default()
                }
            }
            Some(secret::Type::ValidationContext(v)) => v.trusted_ca = inline(&leaf.root_pem),
            _ => {}
        }
        cp.set_with_version(ads::SECRET, &name, &served.version, xds_client::any::pack(&s));
    }
}

/// NACKs a dump is expected to get today (type URL, substring of the reason); empty = none.
fn expected_nacks(_file: &str) -> Vec<(&'static str, &'static str)> {
    Vec::new()
}

#[test]
fn istiod_dumps_over_delta_ads() {
    let Some(dir) = testdata() else {
        eprintln!("skipped: shared/testdata/istio not found (set REMORA_TESTDATA)");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let mut dumps: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    dumps.sort();
    let mut summary = Vec::new();
    for path in dumps {
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let dump: Value = serde_json::from_str(&text).unwrap();
        let cp = ControlPlane::from_config_dump(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        replace_redacted_secrets(&cp);
        let xds = rt.block_on(cp.serve_tcp("127.0.0.1:0".parse().unwrap())).unwrap();
        let admin = free_port();
        let r = Remora::start(&bootstrap(admin, xds.port()), admin);

        // Every type the dump has is ACKed; RDS and EDS follow the names the config references.
        let types: Vec<&str> = [ads::CLUSTER, ads::LISTENER, ads::ROUTE, ads::ENDPOINT]
            .into_iter()
            .filter(|t| cp.count(t) > 0)
            // EDS is only asked for the clusters the config has.
            .filter(|t| *t != ads::ENDPOINT || cp.count(ads::CLUSTER) > 0)
            .collect();
        let want = types.clone();
        let acked = rt.block_on(cp.wait_for(
            move |cp| want.iter().all(|t| cp.acks().iter().chain(cp.nacks().iter()).any(|a| a.type_url == *t)),
            Duration::from_secs(30),
        ));
        let log = || std::fs::read_to_string(&r.log).unwrap_or_default();
        assert!(acked, "{file}: not every type answered; acks {:?}\n{}", cp.acks(), log());
        let nacks: Vec<(String, String)> =
            cp.nacks().into_iter().map(|n| (n.type_url.clone(), n.error_detail.clone().unwrap_or_default())).collect();
        let expected = expected_nacks(&file);
        assert_eq!(nacks.len(), expected.len(), "{file}: NACKs {nacks:#?}");
        for ((t, reason), (et, er)) in nacks.iter().zip(&expected) {
            assert!(t == et && reason.contains(er), "{file}: unexpected NACK {t}: {reason}");
        }

        // /config_dump lists the dump's dynamic resources with the dump's versions.
        let deadline = Instant::now() + Duration::from_secs(10);
        let ours = loop {
            let (_, body) = http_get(admin, "/config_dump").unwrap();
            let ours: Value = serde_json::from_str(&body).unwrap();
            if clusters(&ours).len() >= clusters(&dump).len() || Instant::now() > deadline {
                break ours;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(clusters(&ours), clusters(&dump), "{file}: clusters (name -> version)");
        assert_eq!(
            section(&ours, "dynamic_listeners", ""),
            section(&dump, "dynamic_listeners", ""),
            "{file}: listeners (name -> version)"
        );
        assert_eq!(
            section(&ours, "dynamic_route_configs", "route_config"),
            section(&dump, "dynamic_route_configs", "route_config"),
            "{file}: route configs (name -> version)"
        );
        assert_eq!(r.stat("control_plane.connected_state"), Some(1), "{file}");

        // Listeners Envoy rejected (`error_state`) are NACKed by remora too, naming the listener,
        // and the rest keeps serving.
        let mut rejected = 0;
        for c in dump["configs"].as_array().into_iter().flatten() {
            for l in c["dynamic_listeners"].as_array().into_iter().flatten() {
                let Some(failed) = l.get("error_state").map(|e| &e["failed_configuration"]) else { continue };
                let (t, name, any) = xds_client::server::resource_from_json(failed, "failed_configuration").unwrap();
                let before = cp.nacks().len();
                cp.set(t, &name, any);
                let nacked = rt.block_on(cp.wait_for(move |cp| cp.nacks().len() > before, Duration::from_secs(10)));
                assert!(nacked, "{file}: {name}, rejected by Envoy, was not NACKed");
                let detail = cp.nacks().last().and_then(|n| n.error_detail.clone()).unwrap_or_default();
                assert!(detail.contains(&name), "{file}: NACK does not name {name}: {detail}");
                eprintln!("{file}: {name} NACKed (Envoy rejected it too): {detail}");
                rejected += 1;
            }
        }
        assert_eq!(
            section(&ours, "dynamic_listeners", "").len(),
            section(&dump, "dynamic_listeners", "").len(),
            "{file}"
        );
        summary.push(format!(
            "{file}: served {} clusters, {} listeners, {} routes, {} endpoint sets; {} NACKs; {rejected} listener(s) Envoy rejected, NACKed",
            cp.count(ads::CLUSTER),
            cp.count(ads::LISTENER),
            cp.count(ads::ROUTE),
            cp.count(ads::ENDPOINT),
            nacks.len()
        ));
        drop(r);
        cp.stop();
    }
    eprintln!("{}", summary.join("\n"));
    assert!(summary.len() >= 5, "expected the five istiod JSON dumps, replayed {}", summary.len());
}

/// Route explain on real istiod output: the productpage sidecar of the 1.9.1 dump, served over
/// ADS. A request leaving through virtualOutbound for reviews:9080 is handed to the 9080
/// listener, its RDS table picks reviews' virtual host and cluster; an unknown host falls to
/// the catch-all virtual host (allow_any and PassthroughCluster on port 80); an mTLS connection into virtualInbound takes a TLS chain and
/// every other chain is listed with the criterion it failed.
#[test]
fn route_explain_on_an_istiod_dump() {
    let Some(dir) = testdata() else {
        eprintln!("skipped: shared/testdata/istio not found (set REMORA_TESTDATA)");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let text = std::fs::read_to_string(dir.join("sidecar_istio1.9.1_productpage.config_dump.json")).unwrap();
    let cp = ControlPlane::from_config_dump(&text).unwrap();
    replace_redacted_secrets(&cp);
    let xds = rt.block_on(cp.serve_tcp("127.0.0.1:0".parse().unwrap())).unwrap();
    let admin = free_port();
    let r = Remora::start(&bootstrap(admin, xds.port()), admin);
    let explain = |q: &str| {
        // RDS arrives after LDS, and a listener waiting for its routes is not active yet: wait
        // until neither shows.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, body) = http_get(admin, &format!("/explain?{q}")).unwrap();
            let settled = !body.contains("has not arrived") && !body.contains("no listener owns");
            if settled || Instant::now() > deadline {
                return (code, body);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    let (code, out) = explain("listener=virtualOutbound&dst=10.99.0.7:9080&host=reviews:9080&path=/reviews/1");
    assert_eq!(code, 200, "{out}");
    for want in [
        "use_original_dst: handed to listener 0.0.0.0_9080",
        "RDS route table \"9080\"",
        "virtual host \"reviews.default.svc.cluster.local:9080\": chosen by domain \"reviews:9080\"",
        "cluster outbound|9080||reviews.default.svc.cluster.local",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }

    // This mesh (slime) routes unknown hosts on 9080 to a global sidecar whose cluster the dump
    // does not have: explain says so, as Envoy would answer 503 NC.
    let (_, out) = explain("listener=virtualOutbound&dst=10.99.0.7:9080&host=elsewhere.example&path=/");
    assert!(
        out.contains("virtual host \"to_global_sidecar\": chosen by domain \"*\" for host \"elsewhere.example\""),
        "{out}"
    );
    assert!(
        out.contains("cluster outbound|9080||global-sidecar.default.svc.cluster.local: not found: 503 (NC)"),
        "{out}"
    );
    // Port 80's table has allow_any -> PassthroughCluster.
    let (_, out) = explain("listener=virtualOutbound&dst=10.99.0.8:80&host=elsewhere.example&path=/");
    assert!(out.contains("virtual host \"allow_any\": chosen by domain \"*\""), "{out}");
    assert!(out.contains("cluster PassthroughCluster"), "{out}");

    let (_, out) =
        explain("listener=virtualInbound&dst=10.0.0.1:9080&src=10.0.0.2:50000&alpn=istio-peer-exchange,istio");
    assert!(out.contains("filter chain") && out.contains(": chosen (TLS)"), "{out}");
    assert!(out.contains("no: transport_protocol does not match") || out.contains("no: another chain"), "{out}");

    let (code, out) = explain("listener=nope");
    assert_eq!(code, 400, "{out}");
    assert!(out.contains("no listener named 'nope'"), "{out}");

    // The CLI asks the same endpoint.
    let bin = std::env::var("REMORA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/remora"));
    if bin.exists() {
        let o = std::process::Command::new(&bin)
            .args(["explain", "--admin", &format!("127.0.0.1:{admin}"), "port=9080", "host=reviews", "path=/x"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
        assert!(stdout.contains("cluster outbound|9080||reviews.default.svc.cluster.local"), "{stdout}");
    }
    drop(r);
    cp.stop();
}
