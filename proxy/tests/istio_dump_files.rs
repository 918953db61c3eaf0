//! Real istiod output through file-based xDS: the clusters and listeners of every config dump in
//! shared/testdata/istio (proto3 JSON with Istio's own typed configs: stats.PluginConfig,
//! MetadataExchange, istio.alpn, istio_authn, TypedStructs) are accepted as a whole, and the
//! config dump lists them by name. Listeners are kept off their ports (`bind_to_port: false`) so
//! the test needs no free well-known ports; binding is covered elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Remora, free_port, http_get};
use serde_json::{Value, json};

fn testdata() -> Option<PathBuf> {
    let dir = std::env::var_os("REMORA_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"));
    dir.join("istio").is_dir().then_some(dir.join("istio"))
}

/// (clusters, listeners) of the dump's dynamic sections.
fn split(dump: &Value) -> (Vec<Value>, Vec<Value>) {
    let (mut clusters, mut listeners) = (Vec::new(), Vec::new());
    for c in dump["configs"].as_array().into_iter().flatten() {
        let t = c["@type"].as_str().unwrap_or_default();
        if t.ends_with("ClustersConfigDump") {
            for d in c["dynamic_active_clusters"].as_array().into_iter().flatten() {
                clusters.push(d["cluster"].clone());
            }
        } else if t.ends_with("ListenersConfigDump") {
            for d in c["dynamic_listeners"].as_array().into_iter().flatten() {
                if let Some(l) = d.get("active_state").map(|a| a["listener"].clone()) {
                    listeners.push(l);
                }
            }
        }
    }
    for l in &mut listeners {
        l["bind_to_port"] = json!(false);
        if let Some(o) = l.as_object_mut() {
            o.remove("deprecated_v1");
        }
    }
    (clusters, listeners)
}

fn names(v: &[Value]) -> Vec<String> {
    let mut n: Vec<String> = v.iter().map(|r| r["name"].as_str().unwrap_or_default().to_string()).collect();
    n.sort();
    n
}

fn wait_stat(r: &Remora, name: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = r.stat(name).unwrap_or(0);
        if v > 0 || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn istiod_dumps_are_accepted_over_file_xds() {
    let Some(dir) = testdata() else {
        eprintln!("skipped: shared/testdata/istio not found (set REMORA_TESTDATA)");
        return;
    };
    let mut dumps: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    dumps.sort();
    let mut replayed = 0;
    for path in dumps {
        let dump: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let (clusters, listeners) = split(&dump);
        if clusters.is_empty() && listeners.is_empty() {
            continue;
        }
        let tmp = std::env::temp_dir().join(format!("remora-istio-files-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&tmp).unwrap();
        let (cds, lds) = (tmp.join("cds.json"), tmp.join("lds.json"));
        std::fs::write(&cds, json!({"version_info": "dump", "resources": clusters}).to_string()).unwrap();
        std::fs::write(&lds, json!({"version_info": "dump", "resources": listeners}).to_string()).unwrap();
        let admin = free_port();
        let yaml = format!(
            r#"
node: {{id: "sidecar~10.0.0.1~replay.default~default.svc.cluster.local", cluster: replay.default}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
dynamic_resources:
  cds_config: {{path_config_source: {{path: {}}}, resource_api_version: V3}}
  lds_config: {{path_config_source: {{path: {}}}, resource_api_version: V3}}
"#,
            cds.display(),
            lds.display()
        );
        let r = Remora::start(&yaml, admin);
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let log = || std::fs::read_to_string(&r.log).unwrap_or_default();
        assert_eq!(wait_stat(&r, "cluster_manager.cds.update_success"), 1, "{file}: CDS not accepted:\n{}", log());
        assert_eq!(r.stat("cluster_manager.cds.update_rejected"), Some(0), "{file}:\n{}", log());
        assert_eq!(wait_stat(&r, "listener_manager.lds.update_success"), 1, "{file}: LDS not accepted:\n{}", log());
        assert_eq!(r.stat("listener_manager.lds.update_rejected"), Some(0), "{file}:\n{}", log());

        // /config_dump names every dynamic cluster and listener of the dump.
        let (_, body) = http_get(admin, "/config_dump").unwrap();
        let ours: Value = serde_json::from_str(&body).unwrap();
        let (mut got_clusters, mut got_listeners) = (Vec::new(), Vec::new());
        for c in ours["configs"].as_array().into_iter().flatten() {
            // EDS clusters stay warming: no EDS source here.
            for section in ["dynamic_active_clusters", "dynamic_warming_clusters"] {
                for d in c[section].as_array().into_iter().flatten() {
                    got_clusters.push(d["cluster"].clone());
                }
            }
            for d in c["dynamic_listeners"].as_array().into_iter().flatten() {
                got_listeners.push(json!({"name": d["name"]}));
            }
        }
        assert_eq!(names(&got_clusters), names(&clusters), "{file}: clusters in /config_dump");
        assert_eq!(names(&got_listeners), names(&listeners), "{file}: listeners in /config_dump");
        drop(r);
        std::fs::remove_dir_all(&tmp).ok();
        replayed += 1;
    }
    assert!(replayed >= 4, "expected the four istiod dumps with clusters and listeners, replayed {replayed}");
}
