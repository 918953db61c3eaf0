//! A mesh in network namespaces, the harness the mesh tests (and later the demo) use.
//!
//! Every pod is a network namespace joined by a veth to a bridge that lives in its own namespace
//! (nothing is added to the host's namespace). A pod runs app servers (threads of the test
//! process that entered the pod's namespace) and, when it has a sidecar, remora as UID 1337 with
//! Istio's iptables rules: outbound TCP to 15001 except the proxy's own, inbound to 15006,
//! 127.0.0.6 left alone. Each sidecar has its own control plane (the xds-client harness) on unix
//! sockets, the way pilot-agent proxies istiod: `XDS` for ADS and `SDS` for the secrets.
//! Dropping the mesh kills the sidecars and deletes the namespaces and the hosts files.
#![allow(dead_code, unsafe_code, clippy::unwrap_used, clippy::expect_used)]

pub mod apps;
pub mod istio;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use certs::SpiffeId;
use certs::dev_ca::{CaOptions, DevCa, WorkloadOptions};
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use serde_json::Value;
use xds_client::ads;
use xds_client::server::{ControlPlane, resource_from_json};

/// The proxy's UID and GID, as Istio's injector runs it (the iptables rules exempt it).
pub const PROXY_UID: u32 = 1337;

/// Which proxy a pod's sidecar is: remora, or the reference Envoy (the oracle).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Proxy {
    Remora,
    Envoy,
}

/// The resources for upstream Envoy, which lacks Istio's own extensions (`istio.alpn`,
/// `istio.metadata_exchange`, `istio.stats`, the HTTP peer metadata filter): they are
/// dropped from listener, HTTP and cluster filter lists, and so is the `istio-peer-exchange`
/// ALPN; everything else is kept.
pub fn envoy_compatible(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        // Without the exchange filter the ALPN must not be offered either.
                        ("alpn_protocols", Value::Array(a)) => Value::Array(
                            a.iter().filter(|p| p.as_str() != Some("istio-peer-exchange")).cloned().collect(),
                        ),
                        ("filters" | "http_filters", Value::Array(a)) => Value::Array(
                            a.iter()
                                .filter(|f| !f["name"].as_str().is_some_and(|n| n.starts_with("istio.")))
                                .map(envoy_compatible)
                                .collect(),
                        ),
                        _ => envoy_compatible(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(envoy_compatible).collect()),
        other => other.clone(),
    }
}

/// Why the mesh cannot run here, or None when it can (root, `ip`, `iptables`, `setpriv`).
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["ip", "iptables-restore", "ip6tables-restore", "setpriv", "curl"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("{tool} is missing"));
        }
    }
    None
}

/// Skips (returns true) when the mesh cannot run, unless `REMORA_NETNS_REQUIRE=1` (the test
/// command sets it) makes that a failure.
pub fn skip(test: &str) -> bool {
    match unavailable() {
        None => false,
        Some(why) if std::env::var("REMORA_NETNS_REQUIRE").as_deref() == Ok("1") => {
            panic!("{test}: the namespace mesh cannot run: {why}")
        }
        Some(why) => {
            eprintln!("{test}: skipped: {why}");
            true
        }
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

fn run_stdin(cmd: &str, args: &[&str], input: &str) {
    use std::io::Write;
    let mut c = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Runs `f` on a thread inside network namespace `ns` and returns its result.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        enter(&path);
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Starts a detached thread inside `ns` running `f` (a server: it lives as long as the test).
pub fn spawn_in_ns(ns: &str, f: impl FnOnce() + Send + 'static) {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        enter(&path);
        f()
    });
}

fn enter(path: &str) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: setns on a namespace fd moves only the calling thread into that namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// Istio's iptables rules (as `istio-iptables` writes them for a sidecar): inbound TCP to 15006
/// (but the sidecar's own ports), outbound TCP to 15001, except traffic of the proxy's UID/GID,
/// loopback traffic from 127.0.0.6 (the inbound cluster's source) and to 127.0.0.1; the proxy
/// calling its own pod's IP over loopback goes back through inbound.
fn istio_iptables() -> String {
    let uid = PROXY_UID;
    format!(
        "*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner {uid} -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner {uid} -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner {uid} -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --gid-owner {uid} -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner {uid} -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner {uid} -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
"
    )
}

/// The network: a bridge namespace and the pods on it (10.77.0.0/24, gateway 10.77.0.1).
pub struct Mesh {
    tag: String,
    pub dir: PathBuf,
    pub ca: DevCa,
    pods: Vec<String>,
    sidecars: Vec<Child>,
    rt: tokio::runtime::Runtime,
}

/// A pod: its namespace, IP and (when it has a sidecar) the sidecar's control plane.
pub struct Pod {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub cp: Option<ControlPlane>,
    pub log: Option<PathBuf>,
    pub proxy: Option<Proxy>,
}

impl Mesh {
    /// Creates the bridge namespace; `test` keeps names apart between tests running at once.
    pub fn new(test: &str) -> Mesh {
        let tag = format!("rm{}{}", std::process::id() % 100_000, test);
        let dir = std::env::temp_dir().join(format!("remora-mesh-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let br = format!("{tag}-br");
        let _ = Command::new("ip").args(["netns", "del", &br]).output();
        run("ip", &["netns", "add", &br]);
        // No multicast snooping: IPv6 neighbour discovery must reach every port at once.
        run("ip", &["-n", &br, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"]);
        run("ip", &["-n", &br, "addr", "add", "10.77.0.1/24", "dev", "br0"]);
        run("ip", &["-n", &br, "addr", "add", "fd77::1/64", "dev", "br0", "nodad"]);
        run("ip", &["-n", &br, "link", "set", "br0", "up"]);
        run("ip", &["-n", &br, "link", "set", "lo", "up"]);
        let ca = DevCa::new_root(&CaOptions::default()).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        Mesh { tag, dir, ca, pods: vec![br], sidecars: Vec::new(), rt }
    }

    /// Adds pod `name` at 10.77.0.`host` with `hosts` lines for its /etc/hosts (what kube-dns
    /// would answer), without a sidecar.
    pub fn pod(&mut self, name: &str, host: u8, hosts: &str) -> Pod {
        let ns = format!("{}-{name}", self.tag);
        let br = format!("{}-br", self.tag);
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        run("ip", &["netns", "add", &ns]);
        self.pods.push(ns.clone());
        let peer = format!("v{name}");
        run("ip", &["-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns", &br]);
        run("ip", &["-n", &br, "link", "set", &peer, "master", "br0", "up"]);
        let ip = Ipv4Addr::new(10, 77, 0, host);
        run("ip", &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        run("ip", &["-n", &ns, "route", "add", "default", "via", "10.77.0.1"]);
        // fd77::<host> reads like 10.77.0.<host> (host 50 is fd77::50).
        let ip6: Ipv6Addr = format!("fd77::{host}").parse().unwrap();
        run("ip", &["-n", &ns, "addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"]);
        run("ip", &["-n", &ns, "-6", "route", "add", "default", "via", "fd77::1"]);
        // `ip netns exec` bind-mounts /etc/netns/<ns>/hosts over /etc/hosts.
        let etc = PathBuf::from("/etc/netns").join(&ns);
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("hosts"), format!("127.0.0.1 localhost\n{ip} {name}\n{hosts}")).unwrap();
        Pod { name: name.into(), ns, ip, ip6, cp: None, log: None, proxy: None }
    }

    /// Gives `pod` a remora sidecar with service account `sa` (see `sidecar_with`).
    pub fn sidecar(&mut self, pod: &mut Pod, sa: &str, resources: &[Value]) {
        self.sidecar_with(Proxy::Remora, pod, sa, resources);
    }

    /// Gives `pod` a sidecar with service account `sa`: Istio's iptables rules, the proxy on a
    /// pilot-agent-shaped bootstrap, its workload certificate and root over SDS and
    /// `resources` over Delta ADS. remora runs as UID 1337; Envoy (whose venv is under /root)
    /// as root with GID 1337, which the rules exempt just the same. Returns once the proxy is
    /// ready (it has applied CDS and LDS).
    pub fn sidecar_with(&mut self, proxy: Proxy, pod: &mut Pod, sa: &str, resources: &[Value]) {
        run_stdin("ip", &["netns", "exec", &pod.ns, "iptables-restore"], &istio_iptables());
        // Dual stack, as istio-init sets it up: the same rules for IPv6 (::6 and ::1 in place
        // of 127.0.0.6 and 127.0.0.1), and ::6 on loopback for the inbound clusters' source.
        let v6 = istio_iptables().replace("127.0.0.6/32", "::6/128").replace("127.0.0.1/32", "::1/128");
        run_stdin("ip", &["netns", "exec", &pod.ns, "ip6tables-restore"], &v6);
        run("ip", &["-n", &pod.ns, "addr", "add", "::6/128", "dev", "lo", "nodad"]);
        let dir = self.dir.join(&pod.name);
        std::fs::create_dir_all(&dir).unwrap();
        let cp = ControlPlane::new();
        let id = SpiffeId::parse(&format!("spiffe://cluster.local/ns/default/sa/{sa}")).unwrap();
        let cert = self.ca.issue(&WorkloadOptions::spiffe(id)).unwrap();
        cp.set(ads::SECRET, "default", secret("default", &cert.chain_pem, Some(&cert.key_pem)));
        cp.set(ads::SECRET, "ROOTCA", secret("ROOTCA", self.ca.cert_pem(), None));
        pod.proxy = Some(proxy);
        set_all(&cp, proxy, resources);
        for sock in ["XDS", "SDS"] {
            let path = dir.join(sock);
            self.rt.block_on(cp.serve_unix(&path)).unwrap();
            // The proxy runs as 1337: it must be able to connect.
            run("chmod", &["0777", &path.display().to_string()]);
        }
        let bootstrap = dir.join("bootstrap.yaml");
        std::fs::write(&bootstrap, istio::bootstrap(&pod.name, pod.ip, sa, &dir)).unwrap();
        let log = dir.join("proxy.log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &pod.ns, "setpriv"]);
        match proxy {
            Proxy::Remora => {
                cmd.args([format!("--reuid={PROXY_UID}"), format!("--regid={PROXY_UID}"), "--clear-groups".into()])
                    .arg(remora_bin())
                    .args(["-l", "debug"]);
            }
            Proxy::Envoy => {
                let envoy = envoy_bin().expect("the reference Envoy (ENVOY_BIN or scripts/install-test-deps)");
                cmd.args([format!("--regid={PROXY_UID}"), "--clear-groups".into()]).arg(envoy).args([
                    "-l",
                    "info",
                    "--disable-hot-restart",
                ]);
            }
        }
        let child = cmd
            .args(["-c", &bootstrap.display().to_string(), "--concurrency", "1", "--drain-time-s", "1"])
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        self.sidecars.push(child);
        pod.cp = Some(cp);
        pod.log = Some(log.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        while admin_get(&pod.ns, "/ready").map(|r| r.0) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "{}: sidecar not ready:\n{}",
                pod.name,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for c in &mut self.sidecars {
            // The whole process group: Envoy's launcher may leave the binary as a child.
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", c.id())]).output();
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.pods.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(ns));
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Pod {
    pub fn cp(&self) -> &ControlPlane {
        self.cp.as_ref().expect("pod has a sidecar")
    }

    /// Replaces resources in the sidecar's control plane (pushed to the sidecar at once).
    pub fn push(&self, resources: &[Value]) {
        set_all(self.cp(), self.proxy.unwrap_or(Proxy::Remora), resources);
    }

    pub fn log(&self) -> String {
        self.log.as_ref().and_then(|l| std::fs::read_to_string(l).ok()).unwrap_or_default()
    }

    /// A counter or gauge from the sidecar's admin `/stats`.
    pub fn stat(&self, name: &str) -> Option<i64> {
        let (_, body) = admin_get(&self.ns, &format!("/stats?filter=^{}$", regex::escape(name)))?;
        body.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).and_then(|v| v.trim().parse().ok()))
    }

    /// Runs `cmd args` inside the pod (a real client, with the pod's /etc/hosts): (exit code,
    /// stdout).
    pub fn exec(&self, cmd: &str, args: &[&str]) -> (i32, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, cmd])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// curl inside the pod with a 5 s bound: (exit code, `<status>\n<body>`).
    pub fn curl(&self, args: &[&str]) -> (i32, String) {
        let mut all = vec!["-sS", "-g", "-m", "5", "-o", "-", "-w", "\n%{http_code}"];
        all.extend_from_slice(args);
        let (code, out) = self.exec("curl", &all);
        // Reorder to status first for readable assertions.
        let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
        (code, format!("{status}\n{body}"))
    }
}

/// GET on the sidecar's admin port (127.0.0.1:15000 in the pod): (status, body).
pub fn admin_get(ns: &str, path: &str) -> Option<(u16, String)> {
    let path = path.to_string();
    in_ns(ns, move || http_get("127.0.0.1:15000", &path))
}

/// A minimal HTTP/1.1 GET with `Connection: close`.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

fn set_all(cp: &ControlPlane, proxy: Proxy, resources: &[Value]) {
    for r in resources {
        let r = if proxy == Proxy::Envoy { envoy_compatible(r) } else { r.clone() };
        let (t, name, any) = resource_from_json(&r, "mesh").unwrap_or_else(|e| panic!("{e}: {r}"));
        cp.set(t, &name, any);
    }
}

fn secret(name: &str, chain: &str, key: Option<&str>) -> envoy_types::pb::google::protobuf::Any {
    let inline =
        |pem: &str| Some(DataSource { specifier: Some(Specifier::InlineString(pem.into())), ..Default::default() });
    let r#type = match key {
        Some(k) => secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(chain),
            private_key: inline(k),
            ..Default::default()
        }),
        None => secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: inline(chain),
            ..Default::default()
        }),
    };
    xds_client::any::pack(&Secret { name: name.into(), r#type: Some(r#type) })
}

fn remora_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_remora"))
}

/// The reference Envoy: `$ENVOY_BIN`, else the test venv's.
pub fn envoy_bin() -> Option<PathBuf> {
    let p = std::env::var("ENVOY_BIN").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/remora/envoy-venv/bin/envoy")
    });
    p.exists().then_some(p)
}
