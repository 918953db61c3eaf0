//! Starting the proxies under test: the remora binary or the reference Envoy, each on a bootstrap
//! rendered from a template, waiting for the admin `/ready`, logging to a file, and stopped
//! (SIGTERM, then SIGKILL) and reaped on drop.
//!
//! Templates use `{{name}}` placeholders: `{{port:NAME}}` picks a free loopback port the first
//! time NAME is seen (the same port for every later use); `{{closed_port:NAME}}` is a loopback
//! port that refuses connections (bound, never listening, held until the proxy stops, so no
//! other socket can take it); any other name comes from the variables the caller supplies (for instance `{{upstream:a}}`, the port of echo upstream `a`).
//! An unknown placeholder is an error, never left in the file.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

/// Which proxy a process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Envoy,
    Remora,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Envoy => "envoy",
            Kind::Remora => "remora",
        }
    }
}

/// The workspace root (the parent of this crate).
pub fn workspace_dir() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// `<workspace>/tests`, where `configs/` lives.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() { d } else { workspace_dir().join(d) }
        }
        None => workspace_dir().join("target"),
    }
}

/// The reference Envoy: `ENVOY_BIN`, else `envoy` on PATH, else the venv that
/// `scripts/install-test-deps` makes, else `/tmp/envoyvenv/bin/envoy`.
pub fn envoy_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let c = dir.join("envoy");
            if c.is_file() {
                return Some(c);
            }
        }
    }
    let venv = std::env::var_os("REMORA_ENVOY_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/remora/envoy-venv")));
    if let Some(v) = venv {
        let c = v.join("bin/envoy");
        if c.is_file() {
            return Some(c);
        }
    }
    let c = PathBuf::from("/tmp/envoyvenv/bin/envoy");
    c.is_file().then_some(c)
}

/// The remora binary if it is present: `REMORA_BIN` (which must then exist), else
/// `<target>/debug/remora`. `Ok(None)` means "not built".
pub fn remora_bin() -> anyhow::Result<Option<PathBuf>> {
    if let Some(p) = std::env::var_os("REMORA_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("REMORA_BIN={} does not exist", p.display());
        }
        return Ok(Some(p));
    }
    let p = target_dir().join("debug/remora");
    Ok(p.is_file().then_some(p))
}

/// The remora binary, building it with `cargo build -p remora` if it is missing.
pub fn remora_bin_or_build() -> anyhow::Result<PathBuf> {
    static BUILD: Mutex<()> = Mutex::new(());
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = remora_bin()? {
        return Ok(p);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "remora"])
        .current_dir(workspace_dir())
        .status()
        .context("running cargo build -p remora")?;
    if !status.success() {
        bail!("cargo build -p remora failed: {status}");
    }
    remora_bin()?.ok_or_else(|| anyhow!("cargo build -p remora succeeded but the binary is missing"))
}

/// A free loopback port, never handed out twice by this process.
pub fn free_port() -> u16 {
    static USED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let used = USED.get_or_init(Default::default);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"));
        if used.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

/// Placeholder values and the ports allocated while rendering.
#[derive(Clone, Debug, Default)]
pub struct Vars {
    values: BTreeMap<String, String>,
    ports: BTreeMap<String, u16>,
    closed: BTreeMap<String, (u16, Arc<socket2::Socket>)>,
}

/// A loopback port that refuses connections: a socket bound to it that never listens.
fn closed_port() -> anyhow::Result<(u16, Arc<socket2::Socket>)> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    let port = s.local_addr()?.as_socket().map(|a| a.port()).ok_or_else(|| anyhow!("no port"))?;
    Ok((port, Arc::new(s)))
}

impl Vars {
    pub fn new() -> Vars {
        Vars::default()
    }
    pub fn set(&mut self, name: impl Into<String>, value: impl ToString) -> &mut Vars {
        self.values.insert(name.into(), value.to_string());
        self
    }
    /// The port allocated for `{{port:NAME}}`.
    pub fn port(&self, name: &str) -> Option<u16> {
        self.ports.get(name).copied()
    }
    pub fn ports(&self) -> &BTreeMap<String, u16> {
        &self.ports
    }
    /// The ports allocated for `{{closed_port:NAME}}`.
    pub fn closed_ports(&self) -> impl Iterator<Item = (&str, u16)> {
        self.closed.iter().map(|(k, (p, _))| (k.as_str(), *p))
    }
    /// Forgets the allocated ports, so the next render picks new ones.
    pub fn reset_ports(&mut self) {
        self.ports.clear();
        self.closed.clear();
    }
    pub fn values(&self) -> &BTreeMap<String, String> {
        &self.values
    }

    /// Substitutes every `{{...}}` in `template`.
    pub fn render(&mut self, template: &str) -> anyhow::Result<String> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| anyhow!("unterminated {{{{ in template"))?;
            let name = after[..end].trim();
            if let Some(p) = name.strip_prefix("closed_port:") {
                if !self.closed.contains_key(p) {
                    self.closed.insert(p.to_string(), closed_port()?);
                }
                out.push_str(&self.closed[p].0.to_string());
            } else if let Some(p) = name.strip_prefix("port:") {
                let port = *self.ports.entry(p.to_string()).or_insert_with(free_port);
                out.push_str(&port.to_string());
            } else if let Some(v) = self.values.get(name) {
                out.push_str(v);
            } else {
                bail!("template placeholder {{{{{name}}}}} has no value");
            }
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// How to start a proxy.
#[derive(Clone, Debug)]
pub struct Options {
    pub concurrency: u32,
    pub log_level: String,
    pub extra_args: Vec<String>,
    pub ready_timeout: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            concurrency: 1,
            log_level: std::env::var("REMORA_TEST_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
            extra_args: Vec::new(),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

/// A running proxy process.
pub struct Proxy {
    kind: Kind,
    child: Child,
    dir: PathBuf,
    log: PathBuf,
    admin_port: u16,
    vars: Vars,
}

fn scratch_dir(kind: Kind) -> anyhow::Result<PathBuf> {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join("remora-tests").join(format!(
        "{}-{}-{}",
        kind.name(),
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

impl Proxy {
    /// Renders `template` with `vars` (which must make `{{port:admin}}` the admin port), starts
    /// `kind` on it and waits for `/ready`.
    pub fn start(kind: Kind, template: &str, vars: Vars, opts: &Options) -> anyhow::Result<Proxy> {
        // A port picked by `free_port` is released before the proxy binds it, so another socket
        // may take it in between: start again on fresh ports when that happens.
        let mut attempt = 0;
        loop {
            let mut v = vars.clone();
            v.reset_ports();
            match Proxy::start_once(kind, template, v, opts) {
                Err(e) if attempt < 3 && is_bind_failure(&format!("{e:#}")) => attempt += 1,
                r => return r,
            }
        }
    }

    fn start_once(kind: Kind, template: &str, mut vars: Vars, opts: &Options) -> anyhow::Result<Proxy> {
        let bin = match kind {
            Kind::Envoy => envoy_bin().ok_or_else(|| anyhow!("no envoy binary (set ENVOY_BIN)"))?,
            Kind::Remora => remora_bin_or_build()?,
        };
        let yaml = vars.render(template)?;
        let admin_port = vars.port("admin").ok_or_else(|| anyhow!("the template has no {{{{port:admin}}}}"))?;
        let dir = scratch_dir(kind)?;
        let cfg = dir.join("bootstrap.yaml");
        std::fs::write(&cfg, &yaml)?;
        let log = dir.join(format!("{}.log", kind.name()));
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(&cfg)
            .args(["--concurrency", &opts.concurrency.to_string(), "-l", &opts.log_level])
            .args(["--disable-hot-restart", "--drain-time-s", "1"])
            .args(&opts.extra_args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        let mut p = Proxy { kind, child, dir, log, admin_port, vars };
        p.wait_ready(opts.ready_timeout)?;
        Ok(p)
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited before ready ({status}); log {}:\n{}",
                    self.kind.name(),
                    self.log.display(),
                    self.log_summary()
                );
            }
            if let Ok((200, _)) = http_get(self.admin_port, "/ready") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after {timeout:?}; log {}:\n{}",
                    self.kind.name(),
                    self.log.display(),
                    self.log_summary()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }
    /// The port allocated for `{{port:NAME}}`.
    pub fn port(&self, name: &str) -> u16 {
        self.vars.port(name).unwrap_or_else(|| panic!("the template has no {{{{port:{name}}}}}"))
    }
    pub fn vars(&self) -> &Vars {
        &self.vars
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The log's error lines and its last lines: enough to see why a start failed.
    pub fn log_summary(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let mut out: Vec<&str> =
            lines.iter().copied().filter(|l| l.contains("critical") || l.contains("[error]")).take(20).collect();
        out.push("...");
        out.extend(lines.iter().skip(lines.len().saturating_sub(25)));
        out.join("\n")
    }

    /// The process log so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// GET on the admin API: (status, body).
    pub fn admin(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(self.admin_port, path)
    }
    /// A counter or gauge from the admin `/stats`.
    pub fn stat(&self, name: &str) -> Option<i64> {
        let (_, body) = self.admin("/stats").ok()?;
        body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.trim().parse().ok())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() && std::env::var_os("REMORA_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn is_bind_failure(err: &str) -> bool {
    let e = err.to_ascii_lowercase();
    e.contains("address already in use") || e.contains("cannot bind") || e.contains("eaddrinuse")
}

/// A minimal HTTP/1.1 GET with `Connection: close` to 127.0.0.1:`port`: (status, body).
pub fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP response from :{port}{path}"))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Ok((status, if chunked { dechunk(body) } else { body.to_string() }))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else { break };
        let (Some(chunk), Some(after)) = (rest.get(..n), rest.get(n..)) else { break };
        if n == 0 {
            break;
        }
        out.push_str(chunk);
        s = after.strip_prefix("\r\n").unwrap_or(after);
    }
    out
}
