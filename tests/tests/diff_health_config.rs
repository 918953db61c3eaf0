//! Differential tests of active health checks against the reference Envoy, on bootstraps of
//! their own: clusters over file-based CDS (a changed cluster restarts its checker with the new
//! config, a removed one stops it), checks over the cluster's TLS transport socket, and Envoy's
//! verdicts on bad health check configs (`--mode validate`, the field named by remora). The
//! scenarios on the shared bootstrap are in `diff_health.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use tests::{Kind, Options, Proxy, Vars};

#[path = "diff_health/upstreams.rs"]
#[allow(dead_code)] // shared with diff_health.rs, which uses all of it
mod upstreams;
use upstreams::*;

fn kinds() -> Vec<Kind> {
    let require = std::env::var("REMORA_DIFF_REQUIRE").is_ok_and(|v| v == "1");
    match tests::remora_bin() {
        Ok(Some(_)) => vec![Kind::Envoy, Kind::Remora],
        _ if require => panic!("REMORA_DIFF_REQUIRE=1 but the remora binary is not built"),
        _ => {
            eprintln!("NOTICE: remora binary not found: checking Envoy's behaviour only");
            vec![Kind::Envoy]
        }
    }
}

/// The scenarios depend on timing: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A bootstrap whose clusters come from a file (file-based CDS).
const CDS_BOOTSTRAP: &str = r#"
node: {id: health-test, cluster: health-test}
admin: {address: {socket_address: {address: 127.0.0.1, port_value: {{port:admin}}}}}
dynamic_resources:
  cds_config: {path_config_source: {path: {{cds_file}}}, resource_api_version: V3}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: {{port:listener}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: cds
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
          route_config:
            validate_clusters: false
            virtual_hosts: [{name: v, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: cds_hc}}]}]
"#;

/// The clusters file: `cds_hc` over `hosts` with the given expected statuses, or no cluster.
fn write_cds(path: &std::path::Path, version: u32, cluster: Option<(&[u16], &str)>) {
    let resources = match cluster {
        None => "resources: []\n".to_string(),
        Some((hosts, expected)) => {
            let eps: String = hosts
                .iter()
                .map(|p| {
                    format!(
                        "      - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}}}\n"
                    )
                })
                .collect();
            format!(
                "resources:\n- \"@type\": type.googleapis.com/envoy.config.cluster.v3.Cluster\n  name: cds_hc\n  connect_timeout: 1s\n  common_lb_config: {{update_merge_window: 0s}}\n  health_checks:\n  - {{timeout: 1s, interval: 0.2s, no_traffic_interval: 0.2s, unhealthy_threshold: 2, healthy_threshold: 2, http_health_check: {{path: /healthz, expected_statuses: [{expected}]}}}}\n  load_assignment:\n    cluster_name: cds_hc\n    endpoints:\n    - lb_endpoints:\n{eps}"
            )
        }
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("version_info: \"{version}\"\n{resources}")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[derive(Debug, PartialEq)]
struct CdsUpdates {
    first: Vec<String>,
    traffic_first: Vec<String>,
    updated: Vec<String>,
    traffic_updated: Vec<String>,
    removed: Vec<String>,
    checks_stopped: bool,
}

/// Polls until `count()` stays the same for 1 s (checks run every 200 ms), up to 15 s.
fn settles(count: impl Fn() -> usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let before = count();
        thread::sleep(Duration::from_secs(1));
        if count() == before {
            return true;
        }
    }
    false
}

#[test]
fn cds_updates_restart_and_removal_stops_the_checker() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut seen = Vec::new();
    for kind in kinds() {
        let c1 = start_srv("c1");
        let c2 = start_srv("c2");
        c2.hc_status.store(503, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("diff-health-cds-{}-{}", std::process::id(), kind.name()));
        std::fs::create_dir_all(&dir).unwrap();
        let cds = dir.join("cds.yaml");
        let hosts = [c1.port, c2.port];
        write_cds(&cds, 1, Some((&hosts, "{start: 200, end: 201}")));
        let mut vars = Vars::new();
        vars.set("cds_file", cds.display());
        let opts = Options { log_level: "warning".into(), ..Options::default() };
        let proxy = Proxy::start(kind, CDS_BOOTSTRAP, vars, &opts).unwrap();
        let flags = |want: &[&str]| {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let (_, body) = proxy.admin("/clusters").unwrap();
                let got: Vec<String> = hosts
                    .iter()
                    .map(|p| {
                        let key = format!("cds_hc::127.0.0.1:{p}::health_flags::");
                        body.lines().find_map(|l| l.strip_prefix(&key)).unwrap_or("<absent>").to_string()
                    })
                    .collect();
                if got == want || Instant::now() > deadline {
                    return got;
                }
                thread::sleep(Duration::from_millis(50));
            }
        };
        let port = proxy.port("listener");
        let first = flags(&["healthy", "/failed_active_hc"]);
        let traffic_first = names(&spread(port, "/", 20));
        // A changed cluster: a new checker, with 503 now the expected status.
        write_cds(&cds, 2, Some((&hosts, "{start: 503, end: 504}")));
        let updated = flags(&["/failed_active_hc", "healthy"]);
        let traffic_updated = names(&spread(port, "/", 20));
        write_cds(&cds, 3, None);
        let removed = flags(&["<absent>", "<absent>"]);
        let checks_stopped = settles(|| c1.hc_seen.lock().unwrap().len() + c2.hc_seen.lock().unwrap().len());
        let t = CdsUpdates { first, traffic_first, updated, traffic_updated, removed, checks_stopped };
        eprintln!("cds updates [{}]: {t:?}", kind.name());
        if kind == Kind::Envoy {
            assert_eq!(t.first, ["healthy", "/failed_active_hc"]);
            assert_eq!(t.traffic_first, ["c1"]);
            assert_eq!(t.updated, ["/failed_active_hc", "healthy"]);
            assert_eq!(t.traffic_updated, ["c2"]);
            assert_eq!(t.removed, ["<absent>", "<absent>"]);
            assert!(t.checks_stopped);
        }
        seen.push(t);
    }
    if let [envoy, remora] = &seen[..] {
        assert_eq!(envoy, remora, "cds updates: remora (right) differs from Envoy (left)");
    }
}

/// A bootstrap with one cluster carrying `hc` (YAML flow mappings) and `extra` cluster fields.
fn bad_bootstrap(hc: &str, extra: &str) -> String {
    format!(
        "static_resources:\n  clusters:\n  - name: c\n    connect_timeout: 1s\n{extra}    health_checks: [{hc}]\n    load_assignment: {{cluster_name: c, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}}}}}]}}]}}\n"
    )
}

/// `--mode validate`'s exit code and output.
fn validate(bin: &std::path::Path, config: &str, dir: &std::path::Path, i: usize) -> (i32, String) {
    let path = dir.join(format!("bad-{i}.yaml"));
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(bin).args(["--mode", "validate", "-c"]).arg(&path).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn bad_health_checks_are_refused_as_envoy_does() {
    const BASE: &str = "timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1";
    let h2 = "    typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}}\n";
    // (health check, extra cluster fields, the field remora's error names)
    let cases: Vec<(String, &str, &str)> = vec![
        (
            "{timeout: 1s, interval: 0s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {}}"
                .to_string(),
            "",
            "health_checks[0].interval",
        ),
        (
            "{interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {}}".into(),
            "",
            "health_checks[0].timeout",
        ),
        (
            "{timeout: 1s, interval: 1s, healthy_threshold: 1, tcp_health_check: {}}".into(),
            "",
            "health_checks[0].unhealthy_threshold",
        ),
        (format!("{{{BASE}}}"), "", "health_checks[0].health_checker"),
        (
            format!("{{{BASE}, no_traffic_interval: 0s, tcp_health_check: {{}}}}"),
            "",
            "health_checks[0].no_traffic_interval",
        ),
        (format!("{{{BASE}, interval_jitter: -1s, tcp_health_check: {{}}}}"), "", "health_checks[0].interval_jitter"),
        (format!("{{{BASE}, http_health_check: {{path: \"\"}}}}"), "", "health_checks[0].http_health_check.path"),
        (
            format!("{{{BASE}, http_health_check: {{path: /h, expected_statuses: [{{start: 99, end: 200}}]}}}}"),
            "",
            "health_checks[0].http_health_check.expected_statuses[0]",
        ),
        (format!("{{{BASE}, tcp_health_check: {{send: {{text: zz}}}}}}"), "", "health_checks[0].tcp_health_check.send"),
        (format!("{{{BASE}, grpc_health_check: {{}}}}"), "", "health_checks[0].grpc_health_check"),
        (format!("{{{BASE}, tcp_health_check: {{}}}}, {{{BASE}, tcp_health_check: {{}}}}"), "", "health_checks"),
        (
            format!(
                "{{{BASE}, custom_health_check: {{name: x, typed_config: {{\"@type\": type.googleapis.com/google.protobuf.Struct, value: {{}}}}}}}}"
            ),
            "",
            "health_checks[0].custom_health_check",
        ),
    ];
    let envoy = tests::envoy_bin().expect("no reference Envoy (ENVOY_BIN; scripts/install-test-deps)");
    let remora = kinds().contains(&Kind::Remora).then(|| tests::remora_bin().unwrap().unwrap());
    let dir = std::env::temp_dir().join(format!("diff-health-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The bases are valid for both (an HTTP/2 cluster for the gRPC check).
    let valid = [
        bad_bootstrap(&format!("{{{BASE}, tcp_health_check: {{}}}}"), ""),
        bad_bootstrap(&format!("{{{BASE}, grpc_health_check: {{}}}}"), h2),
    ];
    for (i, ok) in valid.iter().enumerate() {
        assert_eq!(validate(&envoy, ok, &dir, 100 + i).0, 0, "Envoy accepts {ok}");
        if let Some(r) = &remora {
            assert_eq!(validate(r, ok, &dir, 200 + i).0, 0, "remora accepts {ok}");
        }
    }
    for (i, (hc, extra, field)) in cases.iter().enumerate() {
        let cfg = bad_bootstrap(hc, extra);
        let (code, out) = validate(&envoy, &cfg, &dir, i);
        assert_eq!(code, 1, "Envoy refuses {hc}: {out}");
        if let Some(r) = &remora {
            let (code, out) = validate(r, &cfg, &dir, 50 + i);
            assert_eq!(code, 1, "remora refuses {hc}: {out}");
            let want = format!("static_resources.clusters[0].{field}");
            assert!(out.contains(&want), "remora's error names {want}: {out}");
        }
    }
}

/// Two clusters on one TLS upstream (`openssl s_server -www`, 200 to any GET): checks go over the
/// cluster's transport socket, so the TLS cluster's host passes and the plaintext one's fails.
const TLS_BOOTSTRAP: &str = r#"
admin: {address: {socket_address: {address: 127.0.0.1, port_value: {{port:admin}}}}}
static_resources:
  clusters:
  - name: tls_hc
    connect_timeout: 1s
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config: {"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, sni: localhost}
    health_checks:
    - {timeout: 1s, interval: 0.2s, no_traffic_interval: 0.2s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {path: /healthz}}
    load_assignment:
      cluster_name: tls_hc
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{tls_port}}}}}}]}]
  - name: plain_hc
    connect_timeout: 1s
    health_checks:
    - {timeout: 1s, interval: 0.2s, no_traffic_interval: 0.2s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {path: /healthz}}
    load_assignment:
      cluster_name: plain_hc
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{tls_port}}}}}}]}]
"#;

/// A child process killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn checks_use_the_cluster_transport_socket() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("diff-health-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl")
        .status
        .success();
    assert!(ok, "openssl req");
    let mut seen = Vec::new();
    for kind in kinds() {
        let port = tests::process::free_port();
        let _server = Child(
            std::process::Command::new("openssl")
                .args(["s_server", "-quiet", "-www", "-accept", &format!("127.0.0.1:{port}"), "-cert"])
                .arg(&cert)
                .arg("-key")
                .arg(&key)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("openssl s_server"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let mut vars = Vars::new();
        vars.set("tls_port", port);
        let opts = Options { log_level: "warning".into(), ..Options::default() };
        let proxy = Proxy::start(kind, TLS_BOOTSTRAP, vars, &opts).unwrap();
        let want = ["healthy", "/failed_active_hc"];
        let deadline = Instant::now() + Duration::from_secs(15);
        let flags = loop {
            let (_, body) = proxy.admin("/clusters").unwrap();
            let got: Vec<String> = ["tls_hc", "plain_hc"]
                .iter()
                .map(|c| {
                    let key = format!("{c}::127.0.0.1:{port}::health_flags::");
                    body.lines().find_map(|l| l.strip_prefix(&key)).unwrap_or("<absent>").to_string()
                })
                .collect();
            if got == want || Instant::now() > deadline {
                break got;
            }
            thread::sleep(Duration::from_millis(50));
        };
        let handshakes = proxy.stat("cluster.tls_hc.ssl.handshake").unwrap_or(-1);
        eprintln!("tls [{}]: {flags:?} handshakes {handshakes}", kind.name());
        assert_eq!(flags, want, "{}", kind.name());
        seen.push(flags);
    }
    if let [envoy, remora] = &seen[..] {
        assert_eq!(envoy, remora);
    }
}
