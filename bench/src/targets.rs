//! Starting the upstream and the targets under test, each with its generated config.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::slice;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::configs::{self, PairCerts};
use crate::handshake::{self, ServerCert};
use crate::procs::{self, Guard};
use crate::tools::Tools;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Direct,
    Remora,
    Envoy,
    Haproxy,
    Nginx,
}

impl Target {
    pub const ALL: [Target; 5] = [Target::Direct, Target::Remora, Target::Envoy, Target::Haproxy, Target::Nginx];

    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Remora => "remora",
            Target::Envoy => "envoy",
            Target::Haproxy => "haproxy",
            Target::Nginx => "nginx",
        }
    }

    pub fn parse(s: &str) -> Result<Target> {
        Target::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .with_context(|| format!("unknown target {s:?} (direct, remora, envoy, haproxy, nginx)"))
    }

    /// The binary this target needs, or why it cannot run.
    pub fn binary(self, tools: &Tools) -> Result<Option<PathBuf>, String> {
        let need = |p: &Option<PathBuf>, what: &str| p.clone().map(Some).ok_or_else(|| format!("{what} not found"));
        match self {
            Target::Direct => Ok(None),
            Target::Remora => need(&tools.remora, "remora binary"),
            Target::Envoy => need(&tools.envoy, "envoy"),
            Target::Haproxy => need(&tools.haproxy, "haproxy"),
            Target::Nginx => need(&tools.nginx, "nginx"),
        }
    }
}

/// Where things run and where their files go.
pub struct Env {
    pub work: PathBuf,
    pub proxy_cpu: String,
    pub load_cpu: String,
}

/// A target ready for load: its entry address and the processes to measure.
pub struct Running {
    pub target: Target,
    pub addr: SocketAddr,
    guards: Vec<Guard>,
}

impl Running {
    pub fn pids(&self) -> Vec<u32> {
        self.guards.iter().map(Guard::pid).collect()
    }

    /// `name: value` lines of every process's admin `/stats` matching `filter` (Envoy, remora).
    pub fn stats(&self, filter: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for g in &self.guards {
            let Some(port) = g.admin else { continue };
            if let Ok((200, body)) = procs::http_get_text(addr(port), &format!("/stats?filter={filter}")) {
                out.extend(
                    body.lines().filter_map(|l| l.split_once(": ")).map(|(k, v)| (k.to_string(), v.to_string())),
                );
            }
        }
        out
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The upstream nginx on the load CPU: `(guard, port)`.
pub fn start_upstream(env: &Env, nginx: &Path) -> Result<(Guard, u16)> {
    let dir = env.work.join("upstream");
    fs::create_dir_all(&dir)?;
    let port = procs::free_port()?;
    let conf = dir.join("nginx.conf");
    write(&conf, &configs::upstream_nginx(&dir.display().to_string(), port))?;
    let log = dir.join("out.log");
    let mut guard = Guard::spawn_pinned("upstream nginx", &env.load_cpu, nginx, &nginx_args(&conf, &dir), &log)?;
    procs::wait_http_ok(addr(port), "/", Some(configs::BODY_LEN), Duration::from_secs(10), slice::from_mut(&mut guard))
        .context("upstream nginx")?;
    Ok((guard, port))
}

fn nginx_args(conf: &Path, dir: &Path) -> Vec<String> {
    vec![
        "-c".into(),
        conf.display().to_string(),
        "-p".into(),
        format!("{}/", dir.display()),
        "-e".into(),
        dir.join("error.log").display().to_string(),
    ]
}

/// One process of a target: writes its config, starts it on the proxy CPU, waits for it.
fn spawn(env: &Env, target: Target, bin: &Path, dir: &Path, role: &str, conf: Conf) -> Result<Guard> {
    let log = dir.join(format!("{role}.log"));
    let (args, admin) = match conf {
        Conf::Envoy { yaml, admin } => {
            let path = dir.join(format!("{role}.yaml"));
            write(&path, &yaml)?;
            let args = vec![
                "-c".into(),
                path.display().to_string(),
                "--concurrency".into(),
                "1".into(),
                "--disable-hot-restart".into(),
                "-l".into(),
                "warning".into(),
            ];
            (args, Some(admin))
        }
        Conf::Haproxy(text) => {
            let path = dir.join(format!("{role}.cfg"));
            write(&path, &text)?;
            (vec!["-f".into(), path.display().to_string(), "-db".into()], None)
        }
        Conf::Nginx(text) => {
            let sub = dir.join(role);
            fs::create_dir_all(&sub)?;
            let path = sub.join("nginx.conf");
            write(&path, &text)?;
            (nginx_args(&path, &sub), None)
        }
    };
    let name = format!("{} {role}", target.name());
    let mut guard = Guard::spawn_pinned(&name, &env.proxy_cpu, bin, &args, &log)?;
    if let Some(admin) = admin {
        procs::wait_http_ok(addr(admin), "/ready", None, Duration::from_secs(20), slice::from_mut(&mut guard))
            .with_context(|| format!("{name} admin /ready"))?;
    }
    guard.check_alive()?;
    guard.admin = admin;
    Ok(guard)
}

enum Conf {
    Envoy { yaml: String, admin: u16 },
    Haproxy(String),
    Nginx(String),
}

fn ready(target: Target, entry: u16, guards: Vec<Guard>) -> Result<Running> {
    let mut guards = guards;
    procs::wait_http_ok(addr(entry), "/", Some(configs::BODY_LEN), Duration::from_secs(15), &mut guards)
        .with_context(|| format!("{} not answering 1 KiB through the proxy", target.name()))?;
    Ok(Running { target, addr: addr(entry), guards })
}

/// One plaintext HTTP/1.1 hop in front of the upstream (or the upstream itself for `direct`).
pub fn start_hop(env: &Env, tools: &Tools, target: Target, upstream: u16) -> Result<Running> {
    let Some(bin) = target.binary(tools).map_err(anyhow::Error::msg)? else {
        return ready(target, upstream, Vec::new());
    };
    let dir = env.work.join(format!("hop-{}", target.name()));
    fs::create_dir_all(&dir)?;
    let port = procs::free_port()?;
    let conf = match target {
        Target::Remora | Target::Envoy => {
            let admin = procs::free_port()?;
            Conf::Envoy { yaml: configs::envoy_hop(admin, port, upstream), admin }
        }
        Target::Haproxy => Conf::Haproxy(configs::haproxy_hop(port, upstream)),
        Target::Nginx => Conf::Nginx(configs::nginx_hop(&dir.join("hop").display().to_string(), port, upstream)),
        Target::Direct => bail!("direct has no process"),
    };
    let guard = spawn(env, target, &bin, &dir, "hop", conf)?;
    ready(target, port, vec![guard])
}

/// One hop terminating TLS with the handshake certificate, plaintext to the upstream.
pub fn start_tls_hop(env: &Env, tools: &Tools, target: Target, upstream: u16, cert: &ServerCert) -> Result<Running> {
    let Some(bin) = target.binary(tools).map_err(anyhow::Error::msg)? else {
        bail!("direct has no TLS listener");
    };
    let dir = env.work.join(format!("tls-{}", target.name()));
    fs::create_dir_all(&dir)?;
    let port = procs::free_port()?;
    let conf = match target {
        Target::Remora | Target::Envoy => {
            let admin = procs::free_port()?;
            Conf::Envoy { yaml: configs::envoy_tls_hop(admin, port, upstream, &cert.cert, &cert.key), admin }
        }
        Target::Haproxy => Conf::Haproxy(configs::haproxy_tls_hop(port, upstream, &cert.combined)),
        Target::Nginx => Conf::Nginx(configs::nginx_tls_hop(
            &dir.join("tls").display().to_string(),
            port,
            upstream,
            &cert.cert,
            &cert.key,
        )),
        Target::Direct => bail!("direct has no process"),
    };
    let mut guard = spawn(env, target, &bin, &dir, "tls", conf)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        guard.check_alive()?;
        match handshake::probe(addr(port)) {
            Ok(()) => break,
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("{} not answering 1 KiB over TLS", target.name())));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    Ok(Running { target, addr: addr(port), guards: vec![guard] })
}

/// The sidecar pair: outbound (plaintext in, mTLS out) -> inbound (mTLS in) -> upstream. Both
/// processes run on the proxy CPU.
pub fn start_pair(env: &Env, tools: &Tools, target: Target, upstream: u16, certs: &PairCerts) -> Result<Running> {
    let Some(bin) = target.binary(tools).map_err(anyhow::Error::msg)? else {
        return ready(target, upstream, Vec::new());
    };
    let dir = env.work.join(format!("pair-{}", target.name()));
    fs::create_dir_all(&dir)?;
    let (out_port, in_port) = (procs::free_port()?, procs::free_port()?);
    let sub = |role: &str| dir.join(role).display().to_string();
    let (outbound, inbound) = match target {
        Target::Remora | Target::Envoy => {
            let (a, b) = (procs::free_port()?, procs::free_port()?);
            (
                Conf::Envoy { yaml: configs::envoy_outbound(a, out_port, in_port, certs), admin: a },
                Conf::Envoy { yaml: configs::envoy_inbound(b, in_port, upstream, certs), admin: b },
            )
        }
        Target::Haproxy => (
            Conf::Haproxy(configs::haproxy_outbound(out_port, in_port, certs)),
            Conf::Haproxy(configs::haproxy_inbound(in_port, upstream, certs)),
        ),
        Target::Nginx => (
            Conf::Nginx(configs::nginx_outbound(&sub("outbound"), out_port, in_port, certs)),
            Conf::Nginx(configs::nginx_inbound(&sub("inbound"), in_port, upstream, certs)),
        ),
        Target::Direct => bail!("direct has no process"),
    };
    let inbound = spawn(env, target, &bin, &dir, "inbound", inbound)?;
    let outbound = spawn(env, target, &bin, &dir, "outbound", outbound)?;
    ready(target, out_port, vec![outbound, inbound])
}

/// A dev root CA and the two workload identities of the pair, made with `remora certs`.
pub fn make_certs(remora: &Path, dir: &Path) -> Result<PairCerts> {
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new(remora).arg("certs").args(args).output().context("running remora certs")?;
        if !out.status.success() {
            bail!("remora certs {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    let ca = dir.join("ca");
    let client = dir.join("client");
    let server = dir.join("server");
    let s = |p: &Path| p.display().to_string();
    run(&["root", "--out", &s(&ca)])?;
    run(&["workload", "--ca", &s(&ca), "--spiffe", configs::CLIENT_SPIFFE, "--out", &s(&client)])?;
    run(&[
        "workload",
        "--ca",
        &s(&ca),
        "--spiffe",
        configs::SERVER_SPIFFE,
        "--dns",
        "inbound.bench",
        "--out",
        &s(&server),
    ])?;
    let combine = |d: &Path| -> Result<String> {
        let mut pem = fs::read_to_string(d.join("cert-chain.pem"))?;
        pem.push_str(&fs::read_to_string(d.join("key.pem"))?);
        let path = d.join("combined.pem");
        fs::write(&path, pem)?;
        Ok(s(&path))
    };
    Ok(PairCerts {
        root: s(&ca.join("root-cert.pem")),
        client_chain: s(&client.join("cert-chain.pem")),
        client_key: s(&client.join("key.pem")),
        client_pem: combine(&client)?,
        server_chain: s(&server.join("cert-chain.pem")),
        server_key: s(&server.join("key.pem")),
        server_pem: combine(&server)?,
    })
}
