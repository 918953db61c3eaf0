//! `remora demo` end to end on a copy of examples/demo: the runner starts the control plane, the
//! CA, the apps, their remora sidecars and the gateway; every proxy ACKs its config; traffic goes
//! through the gateway and between services over mTLS (the sidecars' ssl.handshake stats, and a
//! plaintext connection to a STRICT sidecar is refused); the 90/10 canary holds within a
//! tolerance; a weight edited in the folder shifts traffic; a bad file is refused with its name
//! while traffic keeps flowing; SIGINT tears down every process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP/1.1 GET; `(status, body)`.
fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

fn remora_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("REMORA_BIN") {
        return p.into();
    }
    Path::new(env!("CARGO_BIN_EXE_remora-demo")).with_file_name("remora")
}

fn stat(admin: u64, name_suffix: &str) -> u64 {
    let (_, body) = get(&format!("127.0.0.1:{admin}"), "/stats").unwrap();
    body.lines()
        .filter(|l| l.split(':').next().is_some_and(|n| n.ends_with(name_suffix)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Calls reviews through the gateway and frontend `n` times: how many answers came from v2.
fn v2_share(gw: &str, n: usize) -> usize {
    (0..n)
        .filter(|_| {
            let (status, body) = get(gw, "/call/reviews:9080/").unwrap();
            assert_eq!(status, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["upstream_status"], 200, "{body}");
            v["upstream"]["version"] == "v2"
        })
        .count()
}

struct Demo {
    child: Child,
    work: PathBuf,
}

impl Drop for Demo {
    /// On a failed assertion: Ctrl-C first so the runner stops its processes, then SIGKILL.
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One mesh at a time in this test binary: two demos started together can take each other's
/// "free" ports (one's admin port is the port the other chose for its gateway).
static ONE_MESH: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn demo_mesh_end_to_end() {
    let _one_mesh = ONE_MESH.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let mesh_dir = tmp.path().join("mesh");
    std::fs::create_dir(&mesh_dir).unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo");
    for e in std::fs::read_dir(&demo).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), mesh_dir.join(e.file_name())).unwrap();
    }
    let work = tmp.path().join("work");
    let ready = tmp.path().join("ready.json");
    let gw_port = free_port();
    let remora = remora_bin();
    assert!(remora.exists(), "no remora binary at {} (cargo build -p remora, or set REMORA_BIN)", remora.display());
    // `remora demo` execs remora-demo; run it through remora as a user would.
    let child = Command::new(&remora)
        .arg("demo")
        .arg("--mesh")
        .arg(&mesh_dir)
        .args(["--gateway-port", &gw_port.to_string()])
        .arg("--work-dir")
        .arg(&work)
        .arg("--ready-file")
        .arg(&ready)
        .env("REMORA_DEMO_BIN", env!("CARGO_BIN_EXE_remora-demo"))
        .env("REMORA_BIN", &remora)
        .stdout(std::fs::File::create(tmp.path().join("demo.out")).unwrap())
        .stderr(std::fs::File::create(tmp.path().join("demo.err")).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut demo_run = Demo { child, work: work.clone() };
    let deadline = Instant::now() + Duration::from_secs(90);
    while !ready.exists() {
        assert!(
            Instant::now() < deadline,
            "demo not ready: {}",
            std::fs::read_to_string(tmp.path().join("demo.err")).unwrap_or_default()
        );
        assert!(
            demo_run.child.try_wait().unwrap().is_none(),
            "demo exited: {}",
            std::fs::read_to_string(tmp.path().join("demo.err")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(200));
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    assert_eq!(summary["nacks"], serde_json::json!([]), "a proxy refused the generated config");
    let out = std::fs::read_to_string(tmp.path().join("demo.out")).unwrap();
    assert!(out.contains(&format!("http://127.0.0.1:{gw_port}/")) && out.contains("/stats/prometheus"), "{out}");
    eprintln!("mesh up after {:?}", started.elapsed());

    // Through the gateway to frontend.
    let gw = format!("127.0.0.1:{gw_port}");
    let (status, body) = get(&gw, "/").unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["service"], "frontend");
    let (status, _) = get(&gw, "/status/418").unwrap();
    assert_eq!(status, 418);

    // The 90/10 canary, frontend -> reviews through both sidecars.
    let n = 200;
    let v2 = v2_share(&gw, n);
    assert!((6..=40).contains(&v2), "v2 got {v2}/{n}, expected about 10%");

    // mTLS: the reviews sidecars' inbound listeners completed TLS handshakes with client certs.
    let admin = |pod: &str| summary["admin"][pod].as_u64().unwrap();
    let handshakes: u64 =
        ["reviews-v1-0", "reviews-v1-1", "reviews-v2-0"].iter().map(|p| stat(admin(p), "_9080.ssl.handshake")).sum();
    assert!(handshakes > 0, "no TLS handshakes on the reviews sidecars");
    assert!(stat(admin("frontend-0"), "reviews.default.svc.cluster.local.ssl.handshake") > 0);
    // STRICT: plaintext straight to a sidecar's inbound port gets no answer.
    let pod_ip = summary["pods"].as_array().unwrap().iter().find(|p| p["name"] == "reviews-v1-0").unwrap()["ip"]
        .as_str()
        .unwrap()
        .to_string();
    let plain = get(&format!("{pod_ip}:9080"), "/");
    assert!(!matches!(plain, Ok((200, _))), "plaintext was served under STRICT: {plain:?}");

    // A bad file is refused with its name; the mesh keeps serving.
    std::fs::write(
        mesh_dir.join("zz-bad.yaml"),
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: c}\nspec: {}\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let err = std::fs::read_to_string(tmp.path().join("demo.err")).unwrap_or_default();
        if err.contains("zz-bad.yaml") && err.contains("kind 'CronJob' is not supported") {
            break;
        }
        assert!(Instant::now() < deadline, "bad file not reported: {err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get(&gw, "/").unwrap().0, 200);
    std::fs::remove_file(mesh_dir.join("zz-bad.yaml")).unwrap();

    // Shift the canary to 0/100: every answer comes from v2.
    let routing = mesh_dir.join("routing.yaml");
    let text = std::fs::read_to_string(&routing)
        .unwrap()
        .replace("weight: 90", "weight: 0")
        .replace("weight: 10", "weight: 100");
    std::fs::write(&routing, text).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while v2_share(&gw, 20) != 20 {
        assert!(Instant::now() < deadline, "traffic did not shift to v2");
        std::thread::sleep(Duration::from_millis(300));
    }

    // Ctrl-C: everything stops.
    Command::new("kill").args(["-INT", &demo_run.child.id().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while demo_run.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "demo did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = Command::new("pgrep").args(["-f", demo_run.work.to_str().unwrap()]).output().unwrap();
    assert!(left.stdout.is_empty(), "processes left: {}", String::from_utf8_lossy(&left.stdout));
    eprintln!("demo test took {:?}", started.elapsed());
}

const SHOP: &str = r#"---
# A mesh that is not examples/demo: another namespace, a named targetPort, a gateway in
# istio-system with a host, faults on the gateway routes, an HTTP/2 port, PERMISSIVE mTLS.
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http-web, port: 8090, targetPort: web}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop, labels: {team: a}}
spec:
  selector: {matchLabels: {app: web}}
  strategy: {type: RollingUpdate}
  template:
    metadata: {labels: {app: web, version: v3}}
    spec:
      serviceAccountName: web
      containers:
      - name: web
        image: example/web:1
        imagePullPolicy: IfNotPresent
        ports: [{containerPort: 8091, name: web}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  selector: {app: api}
  ports: [{name: http2, port: 9300}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: api, version: v1}}
    spec:
      containers: [{name: api, ports: [{containerPort: 9300}]}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["web.example.com"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec:
  hosts: ["web.example.com"]
  gateways: [istio-system/public]
  http:
  - match: [{uri: {prefix: /teapot}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /slow}}]
    fault: {delay: {fixedDelay: 400ms}}
    route: [{destination: {host: web.shop.svc.cluster.local, port: {number: 8090}}}]
  - route: [{destination: {host: web}}]
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: PERMISSIVE}}
"#;

/// Gets with a Host header.
fn get_host(addr: &str, host: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

#[test]
fn another_mesh_faults_hosts_and_permissive() {
    let _one_mesh = ONE_MESH.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let mesh_dir = tmp.path().join("mesh");
    std::fs::create_dir(&mesh_dir).unwrap();
    std::fs::write(mesh_dir.join("shop.yml"), SHOP).unwrap();
    let work = tmp.path().join("work");
    let ready = tmp.path().join("ready.json");
    let gw_port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_remora-demo"))
        .arg("--mesh")
        .arg(&mesh_dir)
        .args(["--gateway-port", &gw_port.to_string()])
        .arg("--remora")
        .arg(remora_bin())
        .arg("--work-dir")
        .arg(&work)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("demo.err")).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut demo_run = Demo { child, work };
    let deadline = Instant::now() + Duration::from_secs(90);
    while !ready.exists() {
        let err = std::fs::read_to_string(tmp.path().join("demo.err")).unwrap_or_default();
        assert!(Instant::now() < deadline, "not ready: {err}");
        assert!(demo_run.child.try_wait().unwrap().is_none(), "exited: {err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(200));
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    assert_eq!(summary["nacks"], serde_json::json!([]));
    let gw = format!("127.0.0.1:{gw_port}");
    let (status, body) = get_host(&gw, "web.example.com", "/");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"service\":\"web\"") && body.contains("\"version\":\"v3\""), "{body}");
    // The port is ignored in host matching, as istiod configures the gateway.
    assert_eq!(get_host(&gw, "web.example.com:80", "/").0, 200);
    assert_eq!(get_host(&gw, "other.example.com", "/").0, 404);
    assert_eq!(get_host(&gw, "web.example.com", "/teapot").0, 418);
    let t = Instant::now();
    assert_eq!(get_host(&gw, "web.example.com", "/slow").0, 200);
    assert!(t.elapsed() >= Duration::from_millis(400), "no delay: {:?}", t.elapsed());
    // web -> api across the mesh (short name, same namespace), then PERMISSIVE: plaintext to the
    // api sidecar is served too.
    let (status, body) = get_host(&gw, "web.example.com", "/call/api:9300/");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"upstream_status\":200") && body.contains("\"service\":\"api\""), "{body}");
    let api_ip = summary["pods"].as_array().unwrap().iter().find(|p| p["name"] == "api-0").unwrap()["ip"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(get_host(&format!("{api_ip}:9300"), "api", "/").0, 200);
    // api's port is named http2: web's sidecar speaks h2 to api's, api's sidecar h2c to the app.
    let web_admin = summary["admin"]["web-0"].as_u64().unwrap();
    assert!(stat(web_admin, "outbound|9300||api.shop.svc.cluster.local.upstream_cx_http2_total") > 0);
    let api_admin = summary["admin"]["api-0"].as_u64().unwrap();
    let api1_admin = summary["admin"]["api-1"].as_u64().unwrap();
    assert!(
        stat(api_admin, "inbound|9300||.upstream_cx_http2_total")
            + stat(api1_admin, "inbound|9300||.upstream_cx_http2_total")
            > 0
    );
    drop(demo_run);
    let left = Command::new("pgrep").args(["-f", tmp.path().join("work").to_str().unwrap()]).output().unwrap();
    assert!(left.stdout.is_empty(), "processes left: {}", String::from_utf8_lossy(&left.stdout));
}
