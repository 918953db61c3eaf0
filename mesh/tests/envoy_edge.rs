//! Envoy accepts what the control plane generates for the edge test mesh (mesh/tests/data/edge:
//! an HTTPS gateway server with a `kubernetes.io/tls` credential, httpsRedirect, ServiceEntries
//! STATIC/DNS/MESH_INTERNAL, REGISTRY_ONLY): the sidecar's and the gateway's resources are served
//! over Delta ADS to Envoy (`ENVOY_BIN`), with `default`/`ROOTCA` on the `sds-grpc` stream from
//! the same harness (pilot-agent's job) and the credential on ADS (istiod's); then remora runs the
//! same gateway config and curl must see the same of both. Skipped when Envoy is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mesh::xds::{self, Proxy};
use xds_client::ads;
use xds_client::server::ControlPlane;

fn envoy() -> Option<PathBuf> {
    let p = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/remora/envoy-venv/bin/envoy")))?;
    p.exists().then_some(p)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Serves `proxy`'s resources (and the workload secrets signed by a dev CA) to Envoy (or remora,
/// which takes Envoy's command line) and checks that it ACKs every type of `want` and NACKs
/// nothing.
fn envoy_acks(envoy: &Path, mesh: &mesh::model::Mesh, label: &str, proxy: Proxy, node: &str, want: &[&str]) {
    run_proxy(envoy, mesh, label, proxy, node, want, &Vec::new);
}

/// [`envoy_acks`], then `probe` while the proxy runs: what a client sees.
fn run_proxy(
    envoy: &Path,
    mesh: &mesh::model::Mesh,
    label: &str,
    proxy: Proxy,
    node: &str,
    want: &[&str],
    probe: &dyn Fn() -> Vec<String>,
) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cp = ControlPlane::new();
    // Stock Envoy gets the config without Istio's own extensions, which it lacks.
    let resources =
        if envoy.file_name().is_some_and(|n| n == "envoy") { mesh::resources_for_envoy } else { mesh::resources };
    for (ty, res) in resources(mesh, &proxy).unwrap() {
        cp.set_all(ty, res);
    }
    let ca = certs::dev_ca::DevCa::new_root(&certs::dev_ca::CaOptions::default()).unwrap();
    let id = certs::SpiffeId::parse("spiffe://cluster.local/ns/default/sa/default").unwrap();
    let leaf = ca.issue(&certs::dev_ca::WorkloadOptions::spiffe(id)).unwrap();
    for secret in [
        serde_json::json!({"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            "name": "default", "tls_certificate": {"certificate_chain": {"inline_string": leaf.chain_pem},
            "private_key": {"inline_string": leaf.key_pem}}}),
        serde_json::json!({"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            "name": "ROOTCA", "validation_context": {"trusted_ca": {"inline_string": leaf.root_pem}}}),
    ] {
        let (ty, name, any) = xds_client::server::resource_from_json(&secret, "secret").unwrap();
        cp.set(ty, &name, any);
    }
    let addr = rt.block_on(cp.serve_tcp(([127, 0, 0, 1], 0).into())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bootstrap.json");
    let metadata = serde_json::json!({"NAMESPACE": "default", "SERVICE_ACCOUNT": "default", "CLUSTER_ID": "Kubernetes",
        "LABELS": {"app": "demo"}});
    // sds-grpc: the harness (HTTP/2) instead of pilot-agent's socket.
    let boot = mesh::runner::bootstrap(node, "demo", &metadata, free_port(), addr).replace(
        r#"{"pipe": {"path": "./var/run/secrets/workload-spiffe-uds/socket"}}"#,
        &format!(r#"{{"socket_address": {{"address": "127.0.0.1", "port_value": {}}}}}"#, addr.port()),
    );
    let boot = boot.replace(
        r#"{"name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s","#,
        r#"{"name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s",
          "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},"#,
    );
    assert_eq!(boot.matches(&format!("\"port_value\": {}", addr.port())).count(), 2, "{boot}");
    std::fs::write(&cfg, boot).unwrap();
    let mut child = Command::new(envoy)
        .arg("-c")
        .arg(&cfg)
        .args(["--concurrency", "1", "-l", "warning", "--base-id", &free_port().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("envoy.log")).unwrap())
        .spawn()
        .unwrap();
    let done = rt.block_on(cp.wait_for(
        |cp| {
            let acks = cp.acks();
            // SECRET: on the Delta ADS stream (sds-grpc, the workload secrets' source, is SotW).
            !cp.nacks().is_empty()
                || want.iter().all(|t| acks.iter().any(|a| a.type_url == *t && (*t != ads::SECRET || a.delta)))
        },
        Duration::from_secs(30),
    ));
    let seen = if done && cp.nacks().is_empty() { probe() } else { Vec::new() };
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.path().join("envoy.log")).unwrap_or_default();
    assert!(cp.nacks().is_empty(), "{label}: NACKed: {:#?}\n{log}", cp.nacks());
    assert!(done, "{label}: not every type ACKed: {:?}\n{log}", cp.acks());
    seen
}

/// What curl sees of the edge gateway (`http`, `https`: its local ports): the right SNI (retried
/// until the TLS listener, waiting for its secret, is up), TLS 1.2 against a TLS 1.3 minimum, an
/// SNI no server names, plain HTTP on the httpsRedirect server. Each as `exit status redirect`.
fn edge_probe(http: u16, https: u16) -> Vec<String> {
    let ca = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/edge-ca.pem");
    let ca = ca.to_str().unwrap().to_string();
    let curl = |host: &str, extra: &[&str], url: String| {
        let resolve = format!("{host}:{https}:127.0.0.1");
        let out = Command::new("curl")
            .args(["-s", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}"])
            .args(["--cacert", &ca, "--resolve", &resolve])
            .args(extra)
            .arg(url)
            .output()
            .unwrap();
        format!("{} {}", out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).trim_end())
    };
    let good = || curl("web.example.com", &[], format!("https://web.example.com:{https}/"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut first = good();
    while !first.starts_with("0 ") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        first = good();
    }
    vec![
        first,
        curl("web.example.com", &["--tls-max", "1.2"], format!("https://web.example.com:{https}/")),
        curl("other.example.com", &[], format!("https://other.example.com:{https}/")),
        curl("web.example.com", &["-H", "Host: web.example.com"], format!("http://127.0.0.1:{http}/some/path?q=1")),
    ]
}

const XDS: [&str; 4] = [ads::CLUSTER, ads::ENDPOINT, ads::LISTENER, ads::ROUTE];

/// The edge test mesh (mesh/tests/data/edge): the gateway's HTTPS listener with its SNI chain
/// and the `kubernetes://web-cert` secret fetched over ADS (Envoy ACKs the SECRET type too), the
/// httpsRedirect route table; the sidecar's ServiceEntry clusters (EDS and STRICT_DNS), their
/// endpoints and virtual hosts. Then the same gateway config on remora: it ACKs the same, and
/// curl sees the same of both (TLS with the right SNI, refusals, the redirect).
#[test]
fn envoy_accepts_the_edge_config() {
    let Some(envoy) = envoy() else {
        eprintln!("skipped: no Envoy (set ENVOY_BIN or run scripts/install-test-deps)");
        return;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/edge");
    let mut mesh = mesh::runner::load(&dir).unwrap();
    mesh.renumber((std::process::id() % 250 + 1) as u8);
    let pod = mesh.pods[0].clone();
    let (http, https) = (free_port(), free_port());
    let bind = [(8080u16, http), (8443u16, https)];
    let sidecar = Proxy::Sidecar(&pod);
    let clusters = xds::clusters(&mesh, &sidecar);
    assert!(clusters.iter().any(|c| c["name"] == "outbound|18092||dns.ext.test" && c["type"] == "STRICT_DNS"));
    envoy_acks(&envoy, &mesh, "edge sidecar", sidecar, &pod.node_id(), &XDS);
    let gw = Proxy::Gateway { bind: &bind };
    let listeners = xds::listeners(&mesh, &gw);
    let tls = listeners.iter().find(|l| l["name"] == "0.0.0.0_8443").unwrap();
    assert_eq!(tls["filter_chains"][0]["filter_chain_match"]["server_names"], serde_json::json!(["web.example.com"]));
    let params = &tls["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]["tls_params"];
    assert_eq!(params["tls_minimum_protocol_version"], "TLSv1_3");
    let mut want = XDS.to_vec();
    want.push(ads::SECRET);
    let probe = || edge_probe(http, https);
    let curl = Command::new("curl").arg("--version").output().is_ok();
    let probe: &dyn Fn() -> Vec<String> = if curl { &probe } else { &Vec::new };
    let envoy_saw = run_proxy(&envoy, &mesh, "edge gateway", gw.clone(), &xds::gateway_node_id(), &want, probe);
    if curl {
        // The handshake succeeds with the right SNI (the backends are not running: 503), TLS 1.2
        // and an unknown SNI are refused (curl: 35), plain HTTP is redirected.
        assert_eq!(envoy_saw[0], "0 503", "{envoy_saw:?}");
        assert_eq!(envoy_saw[1..3], ["35 000", "35 000"], "{envoy_saw:?}");
        assert_eq!(envoy_saw[3], "0 301 https://web.example.com/some/path?q=1", "{envoy_saw:?}");
    }
    // remora on the same bootstrap (sds-grpc for the workload secrets, no --ca-address) also
    // fetches the credential on ADS, by its config source, as Envoy does.
    let remora = std::env::var_os("REMORA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_BIN_EXE_remora-demo")).with_file_name("remora"));
    if remora.exists() {
        let remora_saw = run_proxy(&remora, &mesh, "edge gateway on remora", gw, &xds::gateway_node_id(), &want, probe);
        assert_eq!(remora_saw, envoy_saw, "remora, then Envoy");
    }
}
