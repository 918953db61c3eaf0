//! `ControlPlane::from_config_dump` over every istiod config dump in the shared test data: the
//! resources it serves match what the JSON holds, counted independently.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use serde_json::Value;
use xds_client::ads::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use xds_client::server::{ControlPlane, DumpCounts};

/// `REMORA_TESTDATA`, else `../shared/testdata` next to the workspace (or next to the
/// worktree directory that holds it).
fn testdata() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let candidates = match std::env::var_os("REMORA_TESTDATA") {
        Some(d) => vec![PathBuf::from(d)],
        None => vec![root.join("../shared/testdata"), root.join("../../shared/testdata")],
    };
    candidates.iter().map(|d| d.join("istio")).find(|d| d.is_dir()).unwrap_or_else(|| {
        panic!("shared test data not found in {candidates:?} (set REMORA_TESTDATA to ../shared/testdata)")
    })
}

fn dumps() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(testdata())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains("dump"))
        .collect();
    v.sort();
    assert!(v.len() >= 6, "expected the istio config dumps, found {v:?}");
    v
}

/// Counts (entries, unique names) per section straight from the JSON.
fn count(root: &Value) -> (DumpCounts, [usize; 5]) {
    let mut c = DumpCounts::default();
    let mut names: [std::collections::BTreeSet<String>; 5] = Default::default();
    for cfg in root["configs"].as_array().unwrap() {
        let ty = cfg["@type"].as_str().unwrap();
        let list = |k: &str| cfg.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
        if ty.ends_with("ClustersConfigDump") {
            for e in list("dynamic_active_clusters") {
                c.clusters += 1;
                names[0].insert(e["cluster"]["name"].as_str().unwrap().to_string());
            }
        } else if ty.ends_with("ListenersConfigDump") {
            for e in list("dynamic_listeners") {
                if let Some(a) = e.get("active_state") {
                    c.listeners += 1;
                    names[1].insert(a["listener"]["name"].as_str().unwrap().to_string());
                }
            }
        } else if ty.ends_with("RoutesConfigDump") {
            for e in list("dynamic_route_configs") {
                c.routes += 1;
                names[2].insert(e["route_config"]["name"].as_str().unwrap().to_string());
            }
        } else if ty.ends_with("EndpointsConfigDump") {
            for e in list("dynamic_endpoint_configs") {
                c.endpoints += 1;
                names[3].insert(e["endpoint_config"]["cluster_name"].as_str().unwrap().to_string());
            }
        } else if ty.ends_with("SecretsConfigDump") {
            for e in list("dynamic_active_secrets") {
                c.secrets += 1;
                names[4].insert(e["secret"]["name"].as_str().unwrap().to_string());
            }
        }
    }
    (c, names.map(|s| s.len()))
}

#[test]
fn every_istio_dump_loads_with_matching_counts() {
    let files = dumps();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let root: Value = serde_json::from_str(&text).unwrap();
        let (want, unique) = count(&root);
        let cp = ControlPlane::new();
        let got = cp.load_config_dump(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert_eq!(got, want, "{}", f.display());
        let served = [CLUSTER, LISTENER, ROUTE, ENDPOINT, SECRET].map(|t| cp.count(t));
        assert_eq!(served, unique, "{}: served resources by unique name", f.display());
        eprintln!("{}: {got:?}", f.file_name().unwrap().to_string_lossy());
    }
}

#[test]
fn dump_keeps_versions_and_istio_typed_configs() {
    let Some(f) = dumps().into_iter().find(|p| p.to_string_lossy().contains("1.18.2")) else { return };
    let text = std::fs::read_to_string(&f).unwrap();
    let root: Value = serde_json::from_str(&text).unwrap();
    let cp = ControlPlane::from_config_dump(&text).unwrap();
    let first = &root["configs"][1]["dynamic_active_clusters"][0];
    let name = first["cluster"]["name"].as_str().unwrap();
    let served = cp.get(CLUSTER, name).unwrap();
    assert_eq!(served.version, first["version_info"].as_str().unwrap());
    assert_eq!(served.resource.type_url, "type.googleapis.com/envoy.config.cluster.v3.Cluster");
    // Istio's own typed configs travel inside listeners as istiod encoded them.
    let any_with = |needle: &[u8]| {
        cp.names(LISTENER).iter().any(|n| {
            let v = &cp.get(LISTENER, n).unwrap().resource.value;
            v.windows(needle.len()).any(|w| w == needle)
        })
    };
    assert!(any_with(b"type.googleapis.com/stats.PluginConfig"));
    assert!(any_with(b"type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange"));
    // (1.18's only TypedStructs sit in a listener's error_state, which is not served.)
    assert!(!any_with(b"type.googleapis.com/udpa.type.v1.TypedStruct"));

    let f = dumps().into_iter().find(|p| p.to_string_lossy().contains("1.20.8_ossm_hello")).unwrap();
    let cp = ControlPlane::from_config_dump(&std::fs::read_to_string(f).unwrap()).unwrap();
    let listeners_with = |needle: &[u8]| {
        cp.names(LISTENER)
            .iter()
            .filter(|n| cp.get(LISTENER, n).unwrap().resource.value.windows(needle.len()).any(|w| w == needle))
            .count()
    };
    assert!(listeners_with(b"type.googleapis.com/udpa.type.v1.TypedStruct") > 0);
    assert!(listeners_with(b"type.googleapis.com/io.istio.http.peer_metadata.Config") > 0);
}

#[test]
fn malformed_dumps_name_the_path() {
    let e = ControlPlane::from_config_dump("{\"configs\": 3}").unwrap_err().to_string();
    assert!(e.contains("configs"), "{e}");
    let bad = r#"{"configs":[{"@type":"type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
        "dynamic_listeners":[{"name":"l","active_state":{"version_info":"v1",
        "listener":{"@type":"type.googleapis.com/envoy.config.listener.v3.Listener","name":"l","bogus":1}}}]}]}"#;
    let e = ControlPlane::from_config_dump(bad).unwrap_err().to_string();
    assert!(e.contains("configs[0].dynamic_listeners[0].active_state.listener"), "{e}");
    assert!(e.contains("bogus"), "{e}");
}
