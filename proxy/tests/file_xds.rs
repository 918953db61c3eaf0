//! File-based xDS (`path_config_source`): CDS and LDS from DiscoveryResponse files, updated by
//! atomic rename; a bad update is rejected and the last good config keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

fn lds(port: u16, body: &str, cluster: &str) -> String {
    format!(
        r#"version_info: "{body}"
resources:
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: dyn
  address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: dyn
        route_config:
          virtual_hosts:
          - name: v
            domains: ["*"]
            routes:
            - match: {{prefix: "/up"}}
              route: {{cluster: {cluster}}}
            - match: {{prefix: "/"}}
              direct_response: {{status: 200, body: {{inline_string: "{body}"}}}}
        http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
"#
    )
}

fn cds(up: u16) -> String {
    format!(
        r#"version_info: "c1"
resources:
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: web
  connect_timeout: 1s
  load_assignment: {{cluster_name: web, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {up}}}}}}}}}]}}]}}
"#
    )
}

fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn wait_for(port: u16, path: &str, want: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some((200, b)) = http_get(port, path)
            && b == want
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn cds_and_lds_from_files() {
    let up = http_server("web-up", Duration::ZERO);
    let dir = std::env::temp_dir().join(format!("remora-filexds-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let (admin, port) = (free_port(), free_port());
    let (cds_path, lds_path) = (dir.join("cds.yaml"), dir.join("lds.yaml"));
    replace(&cds_path, &cds(up));
    replace(&lds_path, &lds(port, "v1", "web"));
    let yaml = format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
dynamic_resources:
  cds_config: {{path_config_source: {{path: {cds}}}, resource_api_version: V3}}
  lds_config: {{path_config_source: {{path: {lds}}}, resource_api_version: V3}}
"#,
        cds = cds_path.display(),
        lds = lds_path.display()
    );
    let r = Remora::start(&yaml, admin);
    assert!(wait_for(port, "/", "v1"));
    assert_eq!(http_get(port, "/up"), Some((200, "web-up".to_string())));
    assert_eq!(r.stat("cluster_manager.cds.update_success"), Some(1));
    assert_eq!(r.stat("listener_manager.lds.update_success"), Some(1));

    // An update replaces the listener (the new one takes new connections).
    replace(&lds_path, &lds(port, "v2", "web"));
    assert!(wait_for(port, "/", "v2"), "listener update not applied");

    // A listener naming an unknown cluster in its inline route is rejected; v2 keeps serving.
    replace(&lds_path, &lds(port, "v3", "no-such-cluster"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.stat("listener_manager.lds.update_rejected").unwrap_or(0) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(r.stat("listener_manager.lds.update_rejected"), Some(1));
    assert_eq!(http_get(port, "/"), Some((200, "v2".to_string())));

    // The config dump shows the dynamic resources with their versions.
    let (_, dump) = http_get(admin, "/config_dump").unwrap();
    assert!(dump.contains("\"dynamic_active_clusters\"") && dump.contains("\"version_info\": \"c1\""), "{dump}");
    assert!(dump.contains("\"active_state\""), "{dump}");
    std::fs::remove_dir_all(&dir).ok();
}
