//! `--mode validate` verdicts: for every Envoy example bootstrap and every Istio golden bootstrap
//! in the shared test data, remora must reach Envoy 1.40's verdict (exit code). Envoy's verdicts
//! are recorded below, so the test still checks remora where Envoy is not installed; where Envoy
//! is installed the recorded verdicts are checked against it too.
//!
//! The test data lives in `REMORA_TESTDATA`, by default `<workspace>/../shared/testdata`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Envoy 1.40's `--mode validate` exit code per file (0 accepted, 1 rejected).
const ENVOY_VERDICTS: &[(&str, i32)] = &[
    ("envoy-examples/cors_backend_envoy.yaml", 0),
    ("envoy-examples/double-proxy_envoy-backend.yaml", 1),
    ("envoy-examples/double-proxy_envoy-frontend.yaml", 1),
    ("envoy-examples/dynamic-config-cp_envoy.yaml", 0),
    ("envoy-examples/envoy_configs_envoy-demo.yaml", 1),
    ("envoy-examples/envoy_configs_envoyproxy_io_proxy.yaml", 1),
    ("envoy-examples/fault-injection_envoy.yaml", 1),
    ("envoy-examples/front-proxy_envoy.yaml", 0),
    ("envoy-examples/front-proxy_service-envoy.yaml", 0),
    ("envoy-examples/grpc-bridge_server_envoy-proxy.yaml", 0),
    ("envoy-examples/local_ratelimit_envoy.yaml", 0),
    ("envoy-examples/locality-load-balancing_envoy.yaml", 0),
    ("envoy-examples/rbac_envoy.yaml", 0),
    ("envoy-examples/route-mirror_envoy.yaml", 0),
    ("envoy-examples/tls_envoy-http-https.yaml", 0),
    ("envoy-examples/tls_envoy-https-http.yaml", 0),
    ("envoy-examples/tls_envoy-https-https.yaml", 0),
    ("envoy-examples/websocket_envoy-ws.yaml", 0),
    ("istio/bootstrap/all_golden.json", 0),
    ("istio/bootstrap/default_golden.json", 0),
    ("istio/bootstrap/secure_metrics_golden.json", 0),
    ("istio/bootstrap/xdsproxy_golden.json", 0),
];

/// Files Envoy accepts that remora refuses on purpose: a field it does not implement, named in
/// the error (the field-coverage guard; FIELDS.md lists every refused field).
const REMORA_REFUSES: &[(&str, &str)] = &[];

fn testdata() -> PathBuf {
    std::env::var_os("REMORA_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| tests::workspace_dir().join("../shared/testdata"))
}

/// The files to check: `envoy-examples/*.yaml` and `istio/bootstrap/*_golden.json`, relative.
fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for (dir, keep) in [
        ("envoy-examples", (|n: &str| n.ends_with(".yaml")) as fn(&str) -> bool),
        ("istio/bootstrap", |n: &str| n.ends_with("_golden.json")),
    ] {
        let Ok(rd) = std::fs::read_dir(root.join(dir)) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if keep(&name) {
                out.push(format!("{dir}/{name}"));
            }
        }
    }
    out.sort();
    out
}

/// Runs `bin --mode validate -c path`: (exit code, stdout + stderr).
fn validate(bin: &Path, path: &Path) -> (i32, String) {
    let out = Command::new(bin)
        .args(["--mode", "validate", "-c"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn last_lines(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n        ")
}

#[test]
fn validate_verdicts_match_envoy() {
    let root = testdata();
    assert!(
        root.is_dir(),
        "shared test data not found at {} (set REMORA_TESTDATA to ../shared/testdata)",
        root.display()
    );
    let files = files(&root);
    assert!(
        files.len() >= ENVOY_VERDICTS.len(),
        "expected at least {} bootstraps under {}, found {}: {files:?}",
        ENVOY_VERDICTS.len(),
        root.display(),
        files.len()
    );
    for (f, _) in ENVOY_VERDICTS {
        assert!(files.iter().any(|x| x == f), "recorded file {f} is missing from {}", root.display());
    }
    let envoy = tests::envoy_bin();
    if envoy.is_none() {
        eprintln!("NOTICE: no Envoy binary: checking remora against the recorded verdicts only");
    }
    let remora = tests::remora_bin_or_build().expect("the remora binary");

    let mut failures = Vec::new();
    for f in &files {
        let path = root.join(f);
        let recorded = ENVOY_VERDICTS.iter().find(|(n, _)| n == f).map(|(_, v)| *v);
        let envoy_verdict = envoy.as_ref().map(|e| validate(e, &path));
        if let (Some(want), Some((got, out))) = (recorded, &envoy_verdict)
            && *got != want
        {
            failures.push(format!(
                "{f}: Envoy now exits {got}, recorded {want}: update ENVOY_VERDICTS\n        {}",
                last_lines(out, 3)
            ));
        }
        let Some(want) = envoy_verdict.as_ref().map(|(c, _)| *c).or(recorded) else {
            eprintln!("NOTICE: {f}: no recorded verdict and no Envoy: skipped");
            continue;
        };
        let (got, out) = validate(&remora, &path);
        if let Some((_, field)) = REMORA_REFUSES.iter().find(|(n, _)| n == f) {
            if got != 1 || !out.contains(field) || !out.contains("not supported by remora") {
                failures.push(format!(
                    "{f}: remora should refuse {field} (not supported), exits {got}\n        {}",
                    last_lines(&out, 4)
                ));
            }
            eprintln!("{f}: envoy {want}, remora {got} (refuses {field})");
            continue;
        }
        if got != want {
            failures.push(format!("{f}: remora exits {got}, Envoy {want}\n        {}", last_lines(&out, 4)));
        } else if got == 0 && !out.contains(&format!("configuration '{}' OK", path.display())) {
            failures.push(format!("{f}: remora accepted it without printing \"configuration '<path>' OK\": {out}"));
        } else if got != 0 && out.trim().is_empty() {
            failures.push(format!("{f}: remora rejected it without saying why"));
        }
        eprintln!("{f}: envoy {want}, remora {got}");
    }
    assert!(failures.is_empty(), "{} verdict mismatch(es):\n  {}", failures.len(), failures.join("\n  "));
}

/// A valid bootstrap the malformed cases below each break in one place.
const BASE: &str = r#"
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 9901}}}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: STAT_PREFIX
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              request_headers_to_add: [{header: {key: HEADER_KEY, value: v}}]
              routes:
              - match: {prefix: /}
                route: {cluster: backend, timeout: ROUTE_TIMEOUT, retry_policy: {retry_on: 5xx, retry_back_off: {base_interval: BACKOFF}}}
  clusters:
  - name: backend
    connect_timeout: CONNECT_TIMEOUT
    lb_policy: LB_POLICY
    typed_extension_protocol_options: PROTO_OPTS
    outlier_detection: {max_ejection_percent: EJECT_PCT}
    load_assignment:
      cluster_name: backend
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: PORT}}}}]}]
"#;

const DEFAULTS: &[(&str, &str)] = &[
    ("STAT_PREFIX", "main"),
    ("HEADER_KEY", "x-added"),
    ("ROUTE_TIMEOUT", "5s"),
    ("BACKOFF", "0.025s"),
    ("CONNECT_TIMEOUT", "1s"),
    ("LB_POLICY", "ROUND_ROBIN"),
    ("EJECT_PCT", "10"),
    ("PORT", "8080"),
    ("PROTO_OPTS", "{}"),
];

fn render(overrides: &[(&str, &str)]) -> String {
    let mut s = BASE.to_string();
    for (k, v) in DEFAULTS {
        let v = overrides.iter().find(|(o, _)| o == k).map_or(*v, |(_, v)| *v);
        s = s.replace(k, v);
    }
    s
}

/// Envoy's proto validation rules (the `validate.rules` annotations) and its duration checks,
/// on configs a user could write: Envoy refuses each, so must remora, naming the field.
#[test]
fn malformed_values_are_refused_like_envoy() {
    let remora = tests::remora_bin_or_build().expect("the remora binary");
    let envoy = tests::envoy_bin();
    if envoy.is_none() {
        eprintln!("NOTICE: no Envoy binary: checking remora only");
    }
    let dir = std::env::temp_dir().join(format!("remora-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // (name, placeholder overrides, the field remora's error must name; "" for a valid config)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("valid", &[], ""),
        ("connect-timeout-zero", &[("CONNECT_TIMEOUT", "0s")], "clusters[0].connect_timeout"),
        ("connect-timeout-negative", &[("CONNECT_TIMEOUT", "-1s")], "clusters[0].connect_timeout"),
        ("route-timeout-negative", &[("ROUTE_TIMEOUT", "-5s")], "route.timeout"),
        ("backoff-zero", &[("BACKOFF", "0s")], "retry_back_off.base_interval"),
        ("port-out-of-range", &[("PORT", "70000")], "port_value"),
        ("eject-percent-over-100", &[("EJECT_PCT", "150")], "outlier_detection.max_ejection_percent"),
        ("empty-stat-prefix", &[("STAT_PREFIX", "\"\"")], "stat_prefix"),
        // Header keys are checked non-strictly (Envoy accepts a space), but never a newline.
        ("bad-header-name", &[("HEADER_KEY", "\"bad\\nheader\"")], "request_headers_to_add[0].header.key"),
        ("lb-policy-undefined", &[("LB_POLICY", "99")], "lb_policy"),
        // Envoy: "ALPN configured for cluster ... which has a non-ALPN transport socket".
        (
            "auto-config-without-tls",
            &[(
                "PROTO_OPTS",
                "{envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, auto_config: {}}}",
            )],
            "auto_config",
        ),
    ];
    let mut failures = Vec::new();
    for (name, overrides, field) in cases {
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, render(overrides)).unwrap();
        let want = if field.is_empty() { 0 } else { 1 };
        if let Some(e) = &envoy {
            let (got, out) = validate(e, &path);
            if got != want {
                failures.push(format!("{name}: Envoy exits {got}, expected {want}\n        {}", last_lines(&out, 3)));
            }
        }
        let (got, out) = validate(&remora, &path);
        if got != want {
            failures.push(format!("{name}: remora exits {got}, Envoy {want}\n        {}", last_lines(&out, 3)));
        } else if want == 1 && !out.contains(field) {
            failures.push(format!("{name}: remora's error does not name {field}\n        {}", last_lines(&out, 3)));
        }
        eprintln!("{name}: remora: {}", last_lines(&out, 1));
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{} mismatch(es):\n  {}", failures.len(), failures.join("\n  "));
}

/// A CDS source of its own (`api_config_source`, no ADS): Envoy opens a CDS stream; remora only
/// speaks ADS and file sources, so it refuses the bootstrap naming the field, rather than start
/// and fetch nothing.
#[test]
fn separate_cds_stream_is_refused_by_name() {
    let remora = tests::remora_bin_or_build().expect("the remora binary");
    let dir = std::env::temp_dir().join(format!("remora-validate-cds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cds.yaml");
    std::fs::write(
        &path,
        r#"
node: {id: test, cluster: test}
dynamic_resources:
  cds_config: {api_config_source: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}, resource_api_version: V3}
static_resources:
  clusters:
  - name: xds
    connect_timeout: 1s
    typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {"@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}}
    load_assignment: {cluster_name: xds, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}}]}]}
"#,
    )
    .unwrap();
    if let Some(e) = tests::envoy_bin() {
        let (code, out) = validate(&e, &path);
        assert_eq!(code, 0, "Envoy accepts a separate CDS stream: {}", last_lines(&out, 3));
    }
    let (code, out) = validate(&remora, &path);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("dynamic_resources.cds_config.api_config_source"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
