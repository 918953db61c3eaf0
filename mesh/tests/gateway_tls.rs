//! The mesh's edges through `remora demo`, on mesh/tests/data/edge: an HTTPS gateway server
//! terminating TLS with a `kubernetes.io/tls` Secret (curl trusts the test CA and names the host
//! with SNI), an HTTP server redirecting to it (Envoy's 301 for `require_tls`), an unknown SNI
//! refused at the handshake; ServiceEntry hosts (STATIC and DNS) reached from the app through its
//! sidecar, a host outside the registry answered 502 under REGISTRY_ONLY. And the manifest errors
//! of these resources, each with its file, field and reason. The walk runs on remora and, with the
//! same assertions, on Envoy as every proxy (`remora demo --envoy`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A port `p` with `p..p+n` free now: the demo publishes the gateway's ports consecutively.
fn free_ports(n: u16) -> u16 {
    loop {
        let p = free_port();
        if p.checked_add(n).is_some() && (1..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            return p;
        }
    }
}

fn remora_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("REMORA_BIN") {
        return p.into();
    }
    Path::new(env!("CARGO_BIN_EXE_remora-demo")).with_file_name("remora")
}

/// A copy of the edge folder with `edits` (old, new) applied to `file`.
fn edge_with(file: &str, edits: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(data().join("edge")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let path = dir.path().join(file);
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    for (old, new) in edits {
        assert!(old.is_empty() || text.contains(old), "{file} has no '{old}'");
        text = if old.is_empty() { format!("{text}{new}") } else { text.replace(old, new) };
    }
    std::fs::write(&path, text).unwrap();
    dir
}

/// An HTTP/1.1 server outside the mesh: answers every request `{"outside": true}` and counts them.
fn outside_server() -> (u16, Arc<AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let h = h.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                h.fetch_add(1, Ordering::SeqCst);
                let body = r#"{"outside":true}"#;
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    (port, hits)
}

struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        let _ = Command::new("kill").args(["-INT", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// curl's exit code, the status and the body (`-w` appends `\n<code> <redirect>`).
fn curl(args: &[&str]) -> (i32, String) {
    let out = Command::new("curl").args(["-sS", "--max-time", "10"]).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn envoy_bin() -> Option<PathBuf> {
    let p = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/remora/envoy-venv/bin/envoy")))?;
    p.exists().then_some(p)
}

/// One mesh at a time in this test binary: two demos started together can take each other's
/// "free" ports (one's admin port is the port the other chose for its gateway).
static ONE_MESH: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn https_gateway_redirect_and_service_entries_on_remora() {
    let _one_mesh = ONE_MESH.lock().unwrap_or_else(|e| e.into_inner());
    edge_walk(None);
}

/// The same walk with Envoy as every proxy (`remora demo --envoy`): the oracle on the same
/// control-plane output.
#[test]
fn https_gateway_redirect_and_service_entries_on_envoy() {
    let _one_mesh = ONE_MESH.lock().unwrap_or_else(|e| e.into_inner());
    match envoy_bin() {
        Some(envoy) => edge_walk(Some(&envoy)),
        None => eprintln!("skipped: no Envoy (set ENVOY_BIN or run scripts/install-test-deps)"),
    }
}

fn edge_walk(envoy: Option<&Path>) {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("skipped: no curl (scripts/install-test-deps)");
        return;
    }
    let (outside, hits) = outside_server();
    let (static_port, dns_port, internal_port) = (free_port(), free_port(), free_port());
    let (o, sp, dp, ip) =
        (outside.to_string(), static_port.to_string(), dns_port.to_string(), internal_port.to_string());
    // static.ext.test:STATIC -> 127.0.0.1:OUTSIDE; dns.ext.test:DNS -> localhost:OUTSIDE.
    let dir = edge_with(
        "egress.yaml",
        &[
            ("number: 18091", &format!("number: {sp}")),
            ("number: 18092", &format!("number: {dp}")),
            ("number: 18093", &format!("number: {ip}")),
            ("ports: {http-internal: 18091}", &format!("ports: {{http-internal: {o}}}")),
            ("- address: 127.0.0.1", &format!("- address: 127.0.0.1\n    ports: {{http: {o}}}")),
            ("ports: {http: 18091}", &format!("ports: {{http: {o}}}")),
        ],
    );
    let tmp = tempfile::tempdir().unwrap();
    let ready = tmp.path().join("ready.json");
    let gw_port = free_ports(4);
    let mut cmd = Command::new(remora_bin());
    cmd.arg("demo");
    if let Some(envoy) = envoy {
        cmd.arg("--envoy").arg(envoy);
    }
    let child = cmd
        .arg("--mesh")
        .arg(dir.path())
        .args(["--gateway-port", &gw_port.to_string()])
        .arg("--work-dir")
        .arg(tmp.path().join("work"))
        .arg("--ready-file")
        .arg(&ready)
        .env("REMORA_DEMO_BIN", env!("CARGO_BIN_EXE_remora-demo"))
        .env("REMORA_BIN", remora_bin())
        .stdout(std::fs::File::create(tmp.path().join("demo.out")).unwrap())
        .stderr(std::fs::File::create(tmp.path().join("demo.err")).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut demo = Demo(child);
    let err = || std::fs::read_to_string(tmp.path().join("demo.err")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "not ready: {}", err());
        assert!(demo.0.try_wait().unwrap().is_none(), "exited: {}", err());
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(200));
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    assert_eq!(summary["nacks"], serde_json::json!([]), "{}", err());
    // Every proxy is the binary under test.
    let want = envoy.map(Path::to_path_buf).unwrap_or_else(remora_bin);
    let work = tmp.path().join("work");
    // `remora demo` may name the binary by its resolved path: match either spelling.
    let resolved = want.canonicalize().unwrap_or_else(|_| want.clone());
    let pattern = format!("^({}|{}) -c {}", want.display(), resolved.display(), work.display());
    let running = Command::new("pgrep").args(["-fc", &pattern]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&running.stdout).trim(), "2", "proxies running {}", want.display());
    let http = summary["gateway"]["8080"].as_u64().unwrap();
    let https = summary["gateway"]["8443"].as_u64().unwrap();
    let out = std::fs::read_to_string(tmp.path().join("demo.out")).unwrap();
    assert!(out.contains(&format!("https://127.0.0.1:{https}/")), "{out}");

    let ca = data().join("edge-ca.pem");
    let ca = ca.to_str().unwrap();
    let resolve = format!("web.example.com:{https}:127.0.0.1");
    let url = |path: &str| format!("https://web.example.com:{https}{path}");
    // HTTPS with the Secret's certificate, verified against the test CA; the gateway's listener
    // is ready once its secret arrived over ADS, so the first request can race it: retry a while.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (code, body) = loop {
        let r = curl(&["--cacert", ca, "--resolve", &resolve, &url("/")]);
        if r.0 == 0 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(code, 0, "{body}\n{}", err());
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["service"], "web", "{body}");
    // HTTP/2 over TLS too (ALPN h2).
    let (code, body) = curl(&[
        "--http2",
        "--cacert",
        ca,
        "--resolve",
        &resolve,
        "-o",
        "/dev/null",
        "-w",
        "%{http_version}",
        &url("/"),
    ]);
    assert_eq!((code, body.as_str()), (0, "2"));
    // minProtocolVersion TLSV1_3: a TLS 1.2 client is refused at the handshake.
    let (code, body) = curl(&["--cacert", ca, "--resolve", &resolve, "--tls-max", "1.2", &url("/")]);
    assert_eq!(code, 35, "{body}");
    // An SNI no server names: no filter chain matches, the handshake is refused (curl: 35).
    let other = format!("other.example.com:{https}:127.0.0.1");
    let (code, body) = curl(&["--cacert", ca, "--resolve", &other, &format!("https://other.example.com:{https}/")]);
    assert_eq!(code, 35, "{body}");
    // Plain HTTP on the httpsRedirect server: 301 to https.
    let (code, body) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "-H",
        "Host: web.example.com",
        &format!("http://127.0.0.1:{http}/some/path?q=1"),
    ]);
    assert_eq!(code, 0, "{body}");
    assert_eq!(body, "301 https://web.example.com/some/path?q=1");

    // The ServiceEntry hosts, from the app through its sidecar (STATIC, then DNS `localhost`,
    // then MESH_INTERNAL: plaintext, the endpoint has no tlsMode label).
    let hosts = [
        format!("static.ext.test:{static_port}"),
        format!("dns.ext.test:{dns_port}"),
        format!("internal.ext.test:{internal_port}"),
    ];
    for host in hosts {
        let before = hits.load(Ordering::SeqCst);
        let (code, body) = curl(&["--cacert", ca, "--resolve", &resolve, &url(&format!("/call/{host}/x"))]);
        assert_eq!(code, 0, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(v["upstream_status"], 200, "{host}: {body}");
        assert_eq!(v["upstream"]["outside"], true, "{host}: {body}");
        assert_eq!(hits.load(Ordering::SeqCst), before + 1, "{host}");
    }
    // A host outside the registry on the same port: REGISTRY_ONLY's block_all, 502, not forwarded.
    let before = hits.load(Ordering::SeqCst);
    let (code, body) =
        curl(&["--cacert", ca, "--resolve", &resolve, &url(&format!("/call/unlisted.ext.test:{static_port}/x"))]);
    assert_eq!(code, 0, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["upstream_status"], 502, "{body}");
    assert_eq!(hits.load(Ordering::SeqCst), before);
    let web = summary["admin"]["web-0"].as_u64().unwrap();
    let (_, stats) = curl(&[&format!("http://127.0.0.1:{web}/stats")]);
    assert!(
        stats
            .lines()
            .any(|l| l.starts_with(&format!("cluster.outbound|{static_port}||static.ext.test.upstream_rq_200: 1"))),
        "{stats}"
    );
    drop(demo);
}

fn refused(dir: &Path) -> String {
    mesh::runner::load(dir).expect_err("must be refused").to_string()
}

#[test]
fn the_edge_folder_is_accepted() {
    let m = mesh::runner::load(&data().join("edge")).unwrap();
    assert_eq!(m.edge.secrets.len(), 1);
    assert_eq!(m.edge.service_entries.len(), 3);
    assert!(m.service_ports().contains(&18091) && m.service_ports().contains(&18092));
}

/// A refusal case: the file edited, its edits (old, new), what the error must say.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);

#[test]
fn gateway_tls_errors_name_file_field_and_reason() {
    let cases: &[Case] = &[
        (
            "gateway.yaml",
            &[("credentialName: web-cert", "credentialName: nope")],
            &["gateway.yaml", "Gateway web: spec.servers[1].tls.credentialName", "no Secret 'nope'", "istio-system"],
        ),
        (
            "gateway.yaml",
            &[("mode: SIMPLE", "mode: MUTUAL")],
            &["gateway.yaml", "spec.servers[1].tls.mode", "MUTUAL", "use SIMPLE"],
        ),
        (
            "gateway.yaml",
            &[("TLSV1_3", "TLSV1_4")],
            &["spec.servers[1].tls.minProtocolVersion", "'TLSV1_4' is not a TLS version"],
        ),
        ("gateway.yaml", &[("mode: SIMPLE", "mode: ISTIO_MUTUAL")], &["spec.servers[1].tls.mode", "ISTIO_MUTUAL"]),
        ("gateway.yaml", &[("mode: SIMPLE", "mode: PASSTHROUGH")], &["spec.servers[1].tls.mode", "PASSTHROUGH"]),
        ("gateway.yaml", &[("      mode: SIMPLE\n", "")], &["spec.servers[1].tls.mode", "PASSTHROUGH (the default)"]),
        (
            "gateway.yaml",
            &[(
                "credentialName: web-cert",
                "credentialName: web-cert\n      cipherSuites: [ECDHE-ECDSA-AES128-GCM-SHA256]",
            )],
            &["spec.servers[1].tls", "unknown field `cipherSuites`"],
        ),
        (
            "gateway.yaml",
            &[("number: 8443", "number: 8080")],
            &["spec.servers[1].port.protocol", "one port is HTTP or HTTPS"],
        ),
        (
            "secret.yaml",
            &[("namespace: istio-system", "namespace: default")],
            &["gateway.yaml", "no Secret 'web-cert'", "there is one in namespace default"],
        ),
        ("secret.yaml", &[("type: kubernetes.io/tls", "type: Opaque")], &["secret.yaml", "Secret web-cert", "type"]),
        ("secret.yaml", &[("tls.key: ", "tls.key: x*")], &["secret.yaml", "data.tls.key", "not base64"]),
        (
            "egress.yaml",
            &[("resolution: STATIC", "resolution: NONE")],
            &["egress.yaml", "ServiceEntry ext-static: spec.resolution", "original destination"],
        ),
        (
            "egress.yaml",
            &[("- address: localhost", "- address: localhost\n    labels: {a: b}")],
            &["egress.yaml", "unknown field `labels`"],
        ),
        (
            "egress.yaml",
            &[("protocol: HTTP}\n  endpoints:\n  - address: 127", "protocol: TCP}\n  endpoints:\n  - address: 127")],
            &["spec.ports[0].protocol", "HTTP ports only"],
        ),
        (
            "egress.yaml",
            &[("mode: REGISTRY_ONLY", "mode: ALLOW_ANY")],
            &["Sidecar default: spec.outboundTrafficPolicy.mode", "plain-ports"],
        ),
        (
            "egress.yaml",
            &[("outboundTrafficPolicy:", "egress: [{hosts: ['./*']}]\n  outboundTrafficPolicy:")],
            &["Sidecar default", "unknown field `egress`"],
        ),
    ];
    for (file, edits, want) in cases {
        let d = edge_with(file, edits);
        let e = refused(d.path());
        for w in *want {
            assert!(e.contains(w), "{file} {edits:?}: '{w}' not in: {e}");
        }
    }
}
