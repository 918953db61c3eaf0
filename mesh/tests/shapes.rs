//! The control plane's output for examples/demo follows istiod's names and shapes: resource names
//! as istiod writes them, and every field of a generated outbound cluster, inbound mTLS filter
//! chain and route is one istiod itself sets in the dumps of shared/testdata/istio.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use mesh::xds::{self, Proxy};
use serde_json::Value;

fn demo() -> mesh::model::Mesh {
    mesh::runner::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo")).unwrap()
}

fn names(values: &[Value], key: &str) -> BTreeSet<String> {
    values.iter().map(|v| v[key].as_str().unwrap().to_string()).collect()
}

#[test]
fn names_are_istiods() {
    let mesh = demo();
    let pod = mesh.pods.iter().find(|p| p.name == "reviews-v1-0").unwrap();
    let sidecar = Proxy::Sidecar(pod);
    let clusters = names(&xds::clusters(&mesh, &sidecar), "name");
    for want in [
        "outbound|9080||reviews.default.svc.cluster.local",
        "outbound|9080|v1|reviews.default.svc.cluster.local",
        "outbound|9080|v2|reviews.default.svc.cluster.local",
        "outbound|8000||frontend.default.svc.cluster.local",
        "outbound|9081||ratings.default.svc.cluster.local",
        "inbound|9080||",
        "BlackHoleCluster",
        "PassthroughCluster",
    ] {
        assert!(clusters.contains(want), "{want} missing from {clusters:?}");
    }
    let listeners = names(&xds::listeners(&mesh, &sidecar), "name");
    let out = pod.outbound_ip;
    let inb = pod.ip;
    let want: BTreeSet<String> =
        [format!("{out}_8000"), format!("{out}_9080"), format!("{out}_9081"), format!("{inb}_9080")].into();
    assert_eq!(listeners, want);
    let routes = xds::sidecar_route_configs(&mesh, "default", &pod.labels);
    assert_eq!(names(&routes, "name"), ["8000", "9080", "9081"].map(String::from).into());
    let r9080 = routes.iter().find(|r| r["name"] == "9080").unwrap();
    assert_eq!(r9080["virtual_hosts"][0]["name"], "reviews.default.svc.cluster.local:9080");
    assert_eq!(
        r9080["virtual_hosts"][0]["domains"],
        serde_json::json!(["reviews.default.svc.cluster.local", "reviews", "reviews.default.svc", "reviews.default"])
    );
    assert_eq!(r9080["virtual_hosts"].as_array().unwrap().last().unwrap()["name"], "block_all");
    // The canary route: weighted subsets, the VirtualService's retries and timeout.
    let canary = &r9080["virtual_hosts"][0]["routes"][0];
    assert_eq!(canary["name"], "canary");
    assert_eq!(
        canary["route"]["weighted_clusters"]["clusters"],
        serde_json::json!([
            {"name": "outbound|9080|v1|reviews.default.svc.cluster.local", "weight": 90},
            {"name": "outbound|9080|v2|reviews.default.svc.cluster.local", "weight": 10}
        ])
    );
    let retry = &canary["route"]["retry_policy"];
    assert_eq!(retry["num_retries"], 3);
    assert_eq!(retry["retry_on"], "5xx,connect-failure,refused-stream");
    assert_eq!(retry["per_try_timeout"], "2s");
    assert!(retry.get("retriable_status_codes").is_none());
    assert_eq!(canary["route"]["timeout"], "10s");
    // A service no VirtualService routes gets istiod's default route and retry policy.
    let r9081 = routes.iter().find(|r| r["name"] == "9081").unwrap();
    let default = &r9081["virtual_hosts"][0]["routes"][0];
    assert_eq!(default["name"], "default");
    assert_eq!(default["route"]["cluster"], "outbound|9081||ratings.default.svc.cluster.local");
    assert_eq!(default["route"]["retry_policy"]["retriable_status_codes"], serde_json::json!([503]));
    let gw = xds::gateway_route_configs(&mesh);
    assert_eq!(gw[0]["name"], "http.8080");
    assert_eq!(gw[0]["virtual_hosts"][0]["name"], "*:8080");
    let bind = [(8080, 18080)];
    let gl = names(&xds::listeners(&mesh, &Proxy::Gateway { bind: &bind }), "name");
    assert_eq!(gl, ["0.0.0.0_8080".to_string()].into());
    assert_eq!(pod.node_id(), format!("sidecar~{}~reviews-v1-0.default~default.svc.cluster.local", pod.ip));
    // Every resource encodes (the proto3 JSON is valid for Envoy's types).
    mesh::resources(&mesh, &sidecar).unwrap();
    mesh::resources(&mesh, &Proxy::Gateway { bind: &bind }).unwrap();
}

fn testdata() -> Option<PathBuf> {
    let dir = std::env::var_os("REMORA_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"));
    dir.join("istio").is_dir().then_some(dir.join("istio"))
}

/// Every key path of `ours` exists in `theirs` (arrays: the union of their elements' keys).
fn paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = format!("{prefix}.{k}");
                out.insert(p.clone());
                if k != "typed_per_filter_config" {
                    paths(x, &p, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| paths(x, &format!("{prefix}[]"), out)),
        _ => {}
    }
}

#[test]
fn fields_are_ones_istiod_sets() {
    let Some(dir) = testdata() else {
        eprintln!("skipped: shared/testdata/istio not found (set REMORA_TESTDATA)");
        return;
    };
    let dump: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("sidecar_istio1.20.8_ossm_hello-openshift.config_dump.json")).unwrap(),
    )
    .unwrap();
    let configs = dump["configs"].as_array().unwrap();
    let of = |t: &str| configs.iter().find(|c| c["@type"].as_str().unwrap().ends_with(t)).unwrap();
    let mut theirs = BTreeSet::new();
    for c in of("ClustersConfigDump")["dynamic_active_clusters"].as_array().unwrap() {
        paths(&c["cluster"], "cluster", &mut theirs);
    }
    for l in of("ListenersConfigDump")["dynamic_listeners"].as_array().unwrap() {
        paths(&l["active_state"]["listener"], "listener", &mut theirs);
    }
    let mesh = demo();
    let pod = mesh.pods.iter().find(|p| p.name == "reviews-v1-0").unwrap();
    let sidecar = Proxy::Sidecar(pod);
    let mut ours = BTreeSet::new();
    for c in xds::clusters(&mesh, &sidecar) {
        if c["name"].as_str().unwrap().starts_with("outbound|") {
            paths(&c, "cluster", &mut ours);
        }
    }
    for l in xds::listeners(&mesh, &sidecar) {
        paths(&l, "listener", &mut ours);
    }
    ours.retain(|p| !p.ends_with("@type"));
    // The dump has no DestinationRule with outlierDetection; these are the fields istiod's
    // applyOutlierDetection (pilot/pkg/networking/core/cluster_traffic_policy.go) sets for one.
    ours.retain(|p| {
        !p.starts_with("cluster.outlier_detection")
            && !p.starts_with("cluster.common_lb_config.healthy_panic_threshold")
    });
    let missing: Vec<_> = ours.difference(&theirs).collect();
    assert!(missing.is_empty(), "fields istiod does not set in the dump: {missing:#?}");
}

#[test]
fn peer_authentication_sets_the_inbound_chains() {
    let mut mesh = demo();
    let pod = mesh.pods.iter().find(|p| p.name == "ratings-0").unwrap().clone();
    let inbound = |mesh: &mesh::model::Mesh| {
        let ls = xds::listeners(mesh, &Proxy::Sidecar(&pod));
        let l = ls.into_iter().find(|l| l["name"] == format!("{}_9081", pod.ip)).unwrap();
        l["filter_chains"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["filter_chain_match"]["transport_protocol"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    // STRICT (examples/demo, mesh-wide): TLS only, client certificate required.
    assert_eq!(inbound(&mesh), ["tls"]);
    // PERMISSIVE: TLS and plaintext, told apart by the TLS inspector.
    mesh.strict.insert("istio-system".into(), false);
    assert_eq!(inbound(&mesh), ["tls", "raw_buffer"]);
}
