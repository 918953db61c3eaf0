//! What the seed scenario tests share: a `remora demo` run on a copy of an examples/ folder, plain
//! HTTP/1.1 requests, the proxies' stats, and pushing a file into the running mesh.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A port `p` such that `p..p+n` are all free now (the demo publishes a gateway's ports on
/// consecutive local ports from `--gateway-port`).
pub fn free_ports(n: u16) -> u16 {
    loop {
        let p = free_port();
        if p.checked_add(n).is_some() && (1..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            return p;
        }
    }
}

/// One HTTP/1.1 GET with `Host: host`; `(status, body)`.
pub fn get_host(addr: &str, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// The whole HTTP/1.1 response (status line, headers, body) to a GET with `Host: host`.
pub fn get_raw(addr: &str, host: &str, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(buf)
}

pub fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    get_host(addr, "demo", path)
}

/// A GET that must answer 200 with a JSON body.
pub fn get_json(addr: &str, path: &str) -> serde_json::Value {
    let (status, body) = get(addr, path).unwrap();
    assert_eq!(status, 200, "GET {addr}{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {addr}{path}: {e}: {body}"))
}

/// The sum of the counters of the proxy at `admin` whose names end with `suffix`.
pub fn stat(admin: u64, suffix: &str) -> u64 {
    let (_, body) = get(&format!("127.0.0.1:{admin}"), "/stats").unwrap();
    body.lines()
        .filter(|l| l.split(':').next().is_some_and(|n| n.ends_with(suffix)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Polls `f` every 200 ms until it is true or `secs` pass.
pub fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn remora_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("REMORA_BIN") {
        return p.into();
    }
    Path::new(env!("CARGO_BIN_EXE_remora-demo")).with_file_name("remora")
}

/// The reference Envoy for the oracle runs: `$ENVOY_BIN` or scripts/install-test-deps' venv.
/// `None` (the Envoy half of a test is skipped) unless `REMORA_DIFF_REQUIRE=1` demands it.
pub fn envoy_bin() -> Option<PathBuf> {
    let p = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/remora/envoy-venv/bin/envoy")))
        .filter(|p| p.exists());
    if p.is_none() {
        assert!(std::env::var("REMORA_DIFF_REQUIRE").as_deref() != Ok("1"), "REMORA_DIFF_REQUIRE=1 but no Envoy");
        eprintln!("skipped: no Envoy (set ENVOY_BIN or run scripts/install-test-deps)");
    }
    p
}

/// The sum of the counters whose names contain `part` and end with `suffix`.
pub fn stat_matching(admin: u64, part: &str, suffix: &str) -> u64 {
    let (_, body) = get(&format!("127.0.0.1:{admin}"), "/stats").unwrap();
    body.lines()
        .filter(|l| l.split(':').next().is_some_and(|n| n.contains(part) && n.ends_with(suffix)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name)
}

/// One mesh at a time per test binary: a seed's remora and Envoy runs would otherwise share the
/// machine's two cores (and a steady load's pacing) with each other.
static ONE_MESH: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A running `remora demo` on a copy of a folder; SIGINT then SIGKILL on drop.
pub struct Demo {
    child: Child,
    _one_mesh: std::sync::MutexGuard<'static, ()>,
    pub tmp: tempfile::TempDir,
    /// The copy of the mesh folder the demo watches.
    pub dir: PathBuf,
    pub work: PathBuf,
    pub summary: serde_json::Value,
    pub gateway_port: u16,
}

impl Demo {
    /// Copies the top-level YAML files of `src` and then `extra` (paths relative to `src`) into a
    /// fresh folder and runs `remora demo` on it until every proxy is ready; with `envoy`, Envoy
    /// is every proxy (`remora demo --envoy`), the oracle on the same control-plane output.
    pub fn start(src: &Path, extra: &[&str], envoy: Option<&Path>) -> Demo {
        // A failed test poisons the lock; the next one still runs alone.
        let one_mesh = ONE_MESH.lock().unwrap_or_else(|e| e.into_inner());
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("mesh");
        std::fs::create_dir(&dir).unwrap();
        for e in std::fs::read_dir(src).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
            }
        }
        for f in extra {
            let p = src.join(f);
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
        let work = tmp.path().join("work");
        let ready = tmp.path().join("ready.json");
        let gateway_port = free_ports(4);
        let remora = remora_bin();
        assert!(remora.exists(), "no remora binary at {} (cargo build -p remora, or set REMORA_BIN)", remora.display());
        let mut cmd = Command::new(&remora);
        if let Some(envoy) = envoy {
            cmd.arg("demo").arg("--envoy").arg(envoy);
        } else {
            cmd.arg("demo");
        }
        let child = cmd
            .arg("--mesh")
            .arg(&dir)
            .args(["--gateway-port", &gateway_port.to_string()])
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
        let mut demo =
            Demo { child, _one_mesh: one_mesh, tmp, dir, work, summary: serde_json::Value::Null, gateway_port };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ready.exists() {
            assert!(Instant::now() < deadline, "demo not ready: {}", demo.stderr());
            assert!(demo.child.try_wait().unwrap().is_none(), "demo exited: {}", demo.stderr());
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_millis(200));
        demo.summary = serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
        assert_eq!(demo.summary["nacks"], serde_json::json!([]), "a proxy refused the generated config");
        // The proxies are the binary asked for (`remora demo` may name itself by its resolved
        // path, so match either spelling).
        let want = envoy.map(Path::to_path_buf).unwrap_or(remora);
        let resolved = want.canonicalize().unwrap_or_else(|_| want.clone());
        let running = Command::new("pgrep")
            .args(["-fc", &format!("^({}|{}) -c {}", want.display(), resolved.display(), demo.work.display())])
            .output()
            .unwrap();
        let n: usize = String::from_utf8_lossy(&running.stdout).trim().parse().unwrap_or(0);
        assert_eq!(n, demo.summary["admin"].as_object().map_or(0, |a| a.len()), "proxies running {}", want.display());
        demo
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("demo.err")).unwrap_or_default()
    }

    pub fn admin(&self, pod: &str) -> u64 {
        self.summary["admin"][pod].as_u64().unwrap_or_else(|| panic!("no admin port for {pod}: {}", self.summary))
    }

    fn pod(&self, pod: &str) -> &serde_json::Value {
        self.summary["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == pod)
            .unwrap_or_else(|| panic!("no pod {pod}: {}", self.summary))
    }

    /// The pod's own address (its sidecar's inbound listeners).
    pub fn pod_ip(&self, pod: &str) -> String {
        self.pod(pod)["ip"].as_str().unwrap().to_string()
    }

    /// `ip:port` of the pod's app, which calls other services through its sidecar (`/call/...`).
    pub fn app(&self, pod: &str, port: u16) -> String {
        format!("{}:{port}", self.pod(pod)["app"].as_str().unwrap())
    }

    pub fn gateway(&self) -> String {
        format!("127.0.0.1:{}", self.gateway_port)
    }

    /// Writes `name` into the watched folder (the mesh pushes it to every proxy).
    pub fn push(&self, name: &str, text: &str) {
        std::fs::write(self.dir.join(name), text).unwrap();
    }

    /// Copies `src` into the watched folder under its own file name.
    pub fn push_file(&self, src: &Path) {
        std::fs::copy(src, self.dir.join(src.file_name().unwrap())).unwrap();
    }

    /// Waits until the demo's stderr contains every needle.
    pub fn wait_log(&self, needles: &[&str]) {
        eventually(30, &format!("{needles:?} in the demo's log"), || {
            let err = self.stderr();
            needles.iter().all(|n| err.contains(n))
        });
    }

    /// SIGINT, then checks that every process the demo started is gone.
    pub fn stop(mut self) {
        Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "demo did not stop on SIGINT");
            std::thread::sleep(Duration::from_millis(100));
        }
        let left = Command::new("pgrep").args(["-f", self.work.to_str().unwrap()]).output().unwrap();
        assert!(left.stdout.is_empty(), "processes left: {}", String::from_utf8_lossy(&left.stdout));
    }
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

/// A client connection, plain or TLS.
trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// A TLS client trusting the PEM roots in `ca` (rustls, TLS 1.2 and 1.3).
pub fn tls_client(ca: &Path) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    std::sync::Arc::new(cfg)
}

/// One keep-alive HTTP/1.1 connection (over TLS with `tls`, SNI = the host): GETs answered with
/// a Content-Length body.
pub struct KeepAlive {
    addr: String,
    host: String,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    conn: Option<std::io::BufReader<Box<dyn Conn>>>,
}

impl KeepAlive {
    pub fn new(addr: &str, host: &str, tls: Option<std::sync::Arc<rustls::ClientConfig>>) -> KeepAlive {
        KeepAlive { addr: addr.to_string(), host: host.to_string(), tls, conn: None }
    }

    fn connect(&self) -> Result<Box<dyn Conn>, String> {
        let s = TcpStream::connect(&self.addr).map_err(|e| format!("connect {}: {e}", self.addr))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(match &self.tls {
            None => Box::new(s),
            Some(cfg) => {
                let name = rustls_pki_types::ServerName::try_from(self.host.clone()).map_err(|e| e.to_string())?;
                let c = rustls::ClientConnection::new(cfg.clone(), name).map_err(|e| e.to_string())?;
                Box::new(rustls::StreamOwned::new(c, s))
            }
        })
    }

    /// `(status, body)`, reconnecting when the previous connection was closed.
    pub fn get(&mut self, path: &str) -> Result<(u16, String), String> {
        use std::io::BufRead;
        if self.conn.is_none() {
            self.conn = Some(std::io::BufReader::new(self.connect()?));
        }
        let r = self.conn.as_mut().unwrap();
        let result = (|| -> Result<(u16, String, bool), String> {
            let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
            r.get_mut().write_all(req.as_bytes()).map_err(|e| e.to_string())?;
            r.get_mut().flush().map_err(|e| e.to_string())?;
            let mut line = String::new();
            r.read_line(&mut line).map_err(|e| format!("status line: {e}"))?;
            let status: u16 = line.get(9..12).and_then(|c| c.parse().ok()).ok_or(format!("status line {line:?}"))?;
            let (mut len, mut close) = (0usize, false);
            loop {
                line.clear();
                r.read_line(&mut line).map_err(|e| format!("headers: {e}"))?;
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                let (k, v) = l.split_once(':').unwrap_or((l, ""));
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().map_err(|_| format!("content-length {v:?}"))?,
                    "connection" => close = v.trim().eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
            Ok((status, String::from_utf8_lossy(&body).into_owned(), close))
        })();
        match result {
            Ok((status, body, close)) => {
                if close {
                    self.conn = None;
                }
                Ok((status, body))
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

/// What a load run saw since its last `take`.
#[derive(Debug, Default, Clone)]
pub struct Window {
    /// Answers by the `version` field of the app's JSON.
    pub by_version: std::collections::BTreeMap<String, u64>,
    /// Anything but a 200 with the app's JSON: (status or error, body).
    pub failures: Vec<String>,
    pub requests: u64,
}

/// A steady load: `threads` keep-alive connections, each paced to `rps / threads` requests per
/// second, recording every answer.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    window: std::sync::Arc<std::sync::Mutex<Window>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub started: Instant,
    total: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Load {
    pub fn start(
        addr: &str,
        host: &str,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
        path: &str,
        rps: u32,
        threads: u32,
    ) -> Load {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let window = std::sync::Arc::new(std::sync::Mutex::new(Window::default()));
        let total = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let period = Duration::from_secs_f64(f64::from(threads) / f64::from(rps));
        let threads = (0..threads)
            .map(|_| {
                let (stop, window, total) = (stop.clone(), window.clone(), total.clone());
                let mut c = KeepAlive::new(addr, host, tls.clone());
                let path = path.to_string();
                std::thread::spawn(move || {
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        let answer = c.get(&path);
                        let version = match &answer {
                            Ok((200, body)) => serde_json::from_str::<serde_json::Value>(body)
                                .ok()
                                .and_then(|v| v["version"].as_str().map(str::to_string)),
                            _ => None,
                        };
                        total.fetch_add(1, Ordering::Relaxed);
                        {
                            let mut w = window.lock().unwrap();
                            w.requests += 1;
                            match version {
                                Some(v) => *w.by_version.entry(v).or_default() += 1,
                                None => w.failures.push(format!("{answer:?}")),
                            }
                        }
                        next += period;
                        match next.checked_duration_since(Instant::now()) {
                            Some(d) => std::thread::sleep(d),
                            None => next = Instant::now(),
                        }
                    }
                })
            })
            .collect();
        Load { stop, window, threads, started: Instant::now(), total }
    }

    /// What was seen since the last call, and a fresh window.
    pub fn take(&self) -> Window {
        std::mem::take(&mut *self.window.lock().unwrap())
    }

    /// Stops the load; the requests per second it achieved over its whole run.
    pub fn finish(self) -> (Window, f64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let total = self.total.load(std::sync::atomic::Ordering::Relaxed);
        let rate = total as f64 / self.started.elapsed().as_secs_f64();
        (std::mem::take(&mut *self.window.lock().unwrap()), rate)
    }
}
