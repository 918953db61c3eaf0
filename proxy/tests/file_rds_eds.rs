//! File-based RDS and EDS (`path_config_source`), remora against the reference Envoy: the
//! same bootstrap names a route configuration file and an endpoints file; both proxies serve
//! what they say, then follow an atomic-rename update of each (new route, endpoints moved to
//! another upstream), and keep the last good config when an update is malformed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use common::http_server;
use support::{curl, start_pair};

fn rds(version: &str, body: &str) -> String {
    format!(
        r#"version_info: "{version}"
resources:
- "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: r1
  virtual_hosts:
  - name: v
    domains: ["*"]
    routes:
    - match: {{prefix: "/up"}}
      route: {{cluster: web}}
    - match: {{prefix: "/"}}
      direct_response: {{status: 200, body: {{inline_string: "{body}"}}}}
"#
    )
}

fn eds(version: &str, port: u16) -> String {
    format!(
        r#"version_info: "{version}"
resources:
- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: web
  endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]
"#
    )
}

fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls both proxies until `path` answers `want` on both.
fn both_serve(pair: &(support::Proxy, support::Proxy), path: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let e = curl(&[pair.0.url(path).as_str()]);
        let r = curl(&[pair.1.url(path).as_str()]);
        let (eb, rb) = (String::from_utf8_lossy(&e.body).to_string(), String::from_utf8_lossy(&r.body).to_string());
        if eb == want && rb == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: want {want:?}; envoy {} {eb:?}, remora {} {rb:?}",
            e.status,
            r.status
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn file_based_rds_and_eds_follow_updates_like_envoy() {
    let dir = std::env::temp_dir().join(format!("remora-file-rds-eds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (rds_file, eds_file) = (dir.join("rds.yaml"), dir.join("eds.yaml"));
    let (one, two) = (http_server("one", Duration::ZERO), http_server("two", Duration::ZERO));
    replace(&rds_file, &rds("1", "v1"));
    replace(&eds_file, &eds("1", one));
    let bootstrap = format!(
        r#"
node: {{id: file-xds, cluster: file-xds}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {{ADMIN}}}}}}}}
static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: {{PORT}}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          rds:
            route_config_name: r1
            config_source: {{path_config_source: {{path: {rds}}}, resource_api_version: V3}}
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
  clusters:
  - name: web
    type: EDS
    connect_timeout: 1s
    eds_cluster_config:
      eds_config: {{path_config_source: {{path: {eds}}}, resource_api_version: V3}}
"#,
        rds = rds_file.display(),
        eds = eds_file.display()
    );
    let Some(pair) = start_pair("file_rds_eds", &bootstrap, one) else { return };
    both_serve(&pair, "/", "v1");
    both_serve(&pair, "/up", "one");

    // Updates by atomic rename: a new route body, the endpoints moved to the other upstream.
    replace(&rds_file, &rds("2", "v2"));
    replace(&eds_file, &eds("2", two));
    both_serve(&pair, "/", "v2");
    both_serve(&pair, "/up", "two");

    // Unknown fields in dynamic config are dropped (no --reject-unknown-dynamic-fields)...
    replace(&rds_file, &rds("3", "v3").replace("  name: r1\n", "  name: r1\n  bogus: 1\n"));
    both_serve(&pair, "/", "v3");
    // ...while an invalid update is rejected and the last good config keeps serving.
    replace(&rds_file, &rds("4", "v4").replace("status: 200", "status: 20"));
    replace(&eds_file, &eds("3", 1).replace("port_value: 1", "port_value: 99999"));
    std::thread::sleep(Duration::from_millis(1500));
    both_serve(&pair, "/", "v3");
    both_serve(&pair, "/up", "two");
    std::fs::remove_dir_all(&dir).ok();
}
