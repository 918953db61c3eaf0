//! Differential test support: a tiny upstream, the real Envoy and remora started on the same
//! bootstrap, and curl as the client.
#![allow(dead_code)]

use std::io::{BufRead, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};

/// The Envoy binary: `ENVOY_BIN`, else the venv one, else `envoy` on PATH.
pub fn envoy_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("ENVOY_BIN")
        && std::path::Path::new(&p).exists()
    {
        return Some(p.into());
    }
    let venv = PathBuf::from("/tmp/envoyvenv/bin/envoy");
    if venv.exists() {
        return Some(venv);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("envoy")).find(|p| p.exists())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// A running proxy; killed on drop.
pub struct Proxy {
    pub name: &'static str,
    pub port: u16,
    pub admin: u16,
    child: Child,
    pub dir: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A counter or gauge from `/stats` (None when absent).
    pub fn stat(&self, name: &str) -> Option<i64> {
        let out = Command::new("curl").args(["-s", &format!("http://127.0.0.1:{}/stats", self.admin)]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

static BASE_ID: AtomicU32 = AtomicU32::new(0);

/// Starts Envoy and remora on `bootstrap` (placeholders `{PORT}`, `{ADMIN}`, `{UPSTREAM}`, `{DIR}`).
/// None when no Envoy binary is installed.
pub fn start_pair(test: &str, bootstrap: &str, upstream: u16) -> Option<(Proxy, Proxy)> {
    let Some(envoy) = envoy_bin() else {
        eprintln!("SKIP {test}: no Envoy binary (set ENVOY_BIN)");
        return None;
    };
    let remora = PathBuf::from(env!("CARGO_BIN_EXE_remora"));
    let envoy = start(test, "envoy", &envoy, bootstrap, upstream);
    let remora = start(test, "remora", &remora, bootstrap, upstream);
    Some((envoy, remora))
}

fn start(test: &str, name: &'static str, bin: &std::path::Path, bootstrap: &str, upstream: u16) -> Proxy {
    // Ports are picked free and may be taken by someone else before the proxy binds: retry.
    let mut last = String::new();
    for attempt in 0..3 {
        match try_start(test, name, bin, bootstrap, upstream, attempt) {
            Ok(p) => return p,
            Err(e) => last = e,
        }
    }
    panic!("{name} did not start: {last}");
}

fn try_start(
    test: &str,
    name: &'static str,
    bin: &std::path::Path,
    bootstrap: &str,
    upstream: u16,
    attempt: u32,
) -> Result<Proxy, String> {
    let dir = std::env::temp_dir().join(format!("remora-diff-{test}-{name}-{}-{attempt}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (port, admin) = (free_port(), free_port());
    let cfg = bootstrap
        .replace("{PORT}", &port.to_string())
        .replace("{ADMIN}", &admin.to_string())
        .replace("{UPSTREAM}", &upstream.to_string())
        .replace("{DIR}", &dir.display().to_string());
    let path = dir.join("bootstrap.yaml");
    std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
    let log = |f: &str| std::fs::File::create(dir.join(f)).map(Stdio::from).map_err(|e| e.to_string());
    let child = Command::new(bin)
        .arg("-c")
        .arg(&path)
        .args(["--concurrency", "1", "-l", "warning", "--file-flush-interval-msec", "50", "--disable-hot-restart"])
        .stdout(log("stdout.log")?)
        .stderr(log("stderr.log")?)
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut p = Proxy { name, port, admin, child, dir };
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() && TcpStream::connect(("127.0.0.1", admin)).is_ok() {
            return Ok(p);
        }
        if let Ok(Some(status)) = p.child.try_wait() {
            return Err(format!("exited with {status}: {}", p.stderr()));
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    Err(format!("not listening on {port}: {}", p.stderr()))
}

impl Proxy {
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }
}

/// What curl saw.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Lowercased names, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Headers a client can compare across proxies: without `date` and timing headers, sorted.
    pub fn stable_headers(&self) -> Vec<(String, String)> {
        let mut h: Vec<(String, String)> = self
            .headers
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "date" | "x-envoy-upstream-service-time"))
            .cloned()
            .collect();
        h.sort();
        h
    }
}

/// Runs curl with `args` (URL included) and parses the (last) response.
pub fn curl(args: &[&str]) -> Reply {
    let body_file = std::env::temp_dir().join(format!(
        "remora-diff-body-{}-{}",
        std::process::id(),
        BASE_ID.fetch_add(1, Ordering::Relaxed)
    ));
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "10", "-D", "-", "-o"])
        .arg(&body_file)
        .args(args)
        .output()
        .expect("run curl");
    let mut body = Vec::new();
    if let Ok(mut f) = std::fs::File::open(&body_file) {
        let _ = f.read_to_end(&mut body);
    }
    let _ = std::fs::remove_file(&body_file);
    let mut status = 0;
    let mut headers = Vec::new();
    for line in out.stdout.lines().map_while(Result::ok) {
        let line = line.trim_end().to_string();
        if line.starts_with("HTTP/") {
            status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            headers.clear();
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Reply { status, headers, body }
}

/// Asserts that Envoy and remora answered the same to a client.
pub fn assert_same(what: &str, envoy: &Reply, remora: &Reply) {
    assert_eq!(envoy.status, remora.status, "{what}: status\nenvoy: {envoy:?}\nremora: {remora:?}");
    assert_eq!(envoy.stable_headers(), remora.stable_headers(), "{what}: headers");
    assert_eq!(String::from_utf8_lossy(&envoy.body), String::from_utf8_lossy(&remora.body), "{what}: body");
}

/// Sends the same request to both and asserts the same answer; returns Envoy's.
pub fn same(what: &str, pair: &(Proxy, Proxy), path: &str, args: &[&str]) -> Reply {
    let e = curl(&[args, &[pair.0.url(path).as_str()]].concat());
    let r = curl(&[args, &[pair.1.url(path).as_str()]].concat());
    assert_same(what, &e, &r);
    e
}

// === upstream ===

/// A tiny HTTP/1.1 upstream. Query parameters: `n` body length (default 100), `ct` content type
/// (`none` for no header), `s` status, `h=name:value` extra headers, `chunked` to stream without
/// a length, `echo=name` to return a request header as `x-echo`.
pub fn upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let port = listener.local_addr().map(|a: SocketAddr| a.port()).unwrap_or(0);
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let Ok((s, _)) = l.accept().await else { continue };
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(handle);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    });
    port
}

type UpBody = http_body_util::Either<
    Full<Bytes>,
    StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<http_body::Frame<Bytes>, std::convert::Infallible>>>,
    >,
>;

async fn handle(req: http::Request<hyper::body::Incoming>) -> Result<http::Response<UpBody>, std::convert::Infallible> {
    let query = req.uri().query().unwrap_or("").to_string();
    let mut n = 100usize;
    let mut ct = "text/plain".to_string();
    let mut status = 200u16;
    let mut extra = Vec::new();
    let mut chunked = false;
    let mut echo = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "n" => n = v.parse().unwrap_or(100),
            "ct" => ct = v.to_string(),
            "s" => status = v.parse().unwrap_or(200),
            "h" => {
                if let Some((a, b)) = v.split_once(':') {
                    extra.push((a.to_string(), b.to_string()));
                }
            }
            "chunked" => chunked = true,
            "echo" => echo = Some(v.to_string()),
            _ => {}
        }
    }
    let echoed = echo.and_then(|e| req.headers().get(e.as_str()).cloned());
    let _ = req.into_body().collect().await;
    let text: Vec<u8> = b"hello world ".iter().copied().cycle().take(n).collect();
    let mut b = http::Response::builder().status(status);
    if ct != "none" {
        b = b.header("content-type", ct);
    }
    for (k, v) in extra {
        b = b.header(k, v);
    }
    if let Some(v) = echoed {
        b = b.header("x-echo", v);
    }
    let body = if chunked {
        let frames: Vec<_> = text.chunks(64).map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c)))).collect();
        http_body_util::Either::Right(StreamBody::new(futures_util::stream::iter(frames)))
    } else {
        b = b.header("content-length", n);
        http_body_util::Either::Left(Full::new(Bytes::from(text)))
    };
    Ok(b.body(body).unwrap_or_else(|_| http::Response::new(http_body_util::Either::Left(Full::new(Bytes::new())))))
}

/// The listener, cluster and admin parts every differential bootstrap shares: `{FILTERS}` and
/// `{ROUTES}` / `{VHOST_EXTRA}` / `{HCM_EXTRA}` are filled in by each test.
pub const BOOTSTRAP: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: {ADMIN}}}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: {PORT}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
{HCM_EXTRA}
          route_config:
            name: local_route
            virtual_hosts:
            - name: backend
              domains: ["*"]
{VHOST_EXTRA}
              routes:
{ROUTES}
          http_filters:
{FILTERS}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {UPSTREAM}}}}
"#;

pub fn bootstrap(hcm_extra: &str, vhost_extra: &str, routes: &str, filters: &str) -> String {
    BOOTSTRAP
        .replace("{HCM_EXTRA}", hcm_extra)
        .replace("{VHOST_EXTRA}", vhost_extra)
        .replace("{ROUTES}", routes)
        .replace("{FILTERS}", filters)
}
