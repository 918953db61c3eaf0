//! The runner behind `remora demo`: the control plane (one xDS harness per proxy, Delta ADS), the
//! Istio CA, one demo-app process per Deployment replica with a remora sidecar beside it (plain
//! ports: every pod gets its own loopback addresses), and a remora ingress gateway. It watches the
//! folder and pushes changes; a refused change is printed and the last good config keeps serving.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use certs::test_util::{TestCaOptions, TestCaServer};
use tokio::process::{Child, Command};
use xds_client::server::ControlPlane;

use crate::manifest;
use crate::model::{Mesh, Pod};
use crate::xds::{self, GATEWAY_NAMESPACE, GATEWAY_SA, Proxy};

#[derive(Debug, Clone)]
pub struct Options {
    pub mesh: PathBuf,
    /// Where the gateway's first HTTP server port is published on 127.0.0.1 (others follow).
    pub gateway_port: u16,
    pub remora: PathBuf,
    /// Run this Envoy binary as every proxy instead of remora: the oracle for the same
    /// control-plane output. Its SDS secrets come from its xDS harness (pilot-agent's job).
    pub envoy: Option<PathBuf>,
    pub app: PathBuf,
    /// Logs, bootstraps and certificates go here.
    pub work_dir: PathBuf,
    /// Once up, the runner writes a JSON summary (admin ports, gateway address) here.
    pub ready_file: Option<PathBuf>,
    /// Start Prometheus (when `prometheus` is on PATH) on this 127.0.0.1 port (taken: any free
    /// one); `None`: do not.
    pub prometheus: Option<u16>,
}

/// Loads and checks a folder.
pub fn load(dir: &Path) -> Result<Mesh, manifest::ManifestError> {
    Mesh::build(manifest::load_dir(dir)?)
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) struct ProxyRun {
    /// `None` for the gateway.
    pub(crate) pod: Option<Pod>,
    pub(crate) cp: ControlPlane,
    pub(crate) admin: u16,
    /// Upstream Envoy serves this proxy (`--envoy`): it is sent the config without Istio's own
    /// extensions, which Envoy lacks.
    pub(crate) envoy: bool,
}

/// The bootstrap pilot-agent would write for a proxy: node (with the metadata pilot-agent sets,
/// `xds::telemetry::node_metadata`), admin, Delta ADS to `xds`, and an `sds-grpc` cluster that
/// remora never dials because `--ca-address` serves the secrets.
pub fn bootstrap(node_id: &str, cluster: &str, metadata: &serde_json::Value, admin: u16, xds: SocketAddr) -> String {
    format!(
        r#"{{
  "node": {{"id": "{node_id}", "cluster": "{cluster}",
    "metadata": {metadata}}},
  "admin": {{"address": {{"socket_address": {{"address": "127.0.0.1", "port_value": {admin}}}}}}},
  "stats_config": {stats},
  "dynamic_resources": {{
    "ads_config": {{"api_type": "DELTA_GRPC", "transport_api_version": "V3", "set_node_on_first_message_only": true,
      "grpc_services": [{{"envoy_grpc": {{"cluster_name": "xds-grpc"}}}}]}},
    "cds_config": {{"ads": {{}}, "resource_api_version": "V3"}},
    "lds_config": {{"ads": {{}}, "resource_api_version": "V3"}}
  }},
  "static_resources": {{"clusters": [
    {{"name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s",
      "typed_extension_protocol_options": {{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {{
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {{"http2_protocol_options": {{}}}}}}}},
      "load_assignment": {{"cluster_name": "xds-grpc", "endpoints": [{{"lb_endpoints": [{{"endpoint": {{"address":
        {{"socket_address": {{"address": "{ip}", "port_value": {port}}}}}}}}}]}}]}}}},
    {{"name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s",
      "load_assignment": {{"cluster_name": "sds-grpc", "endpoints": [{{"lb_endpoints": [{{"endpoint": {{"address":
        {{"pipe": {{"path": "./var/run/secrets/workload-spiffe-uds/socket"}}}}}}}}]}}]}}}}
  ]}}
}}"#,
        ip = xds.ip(),
        port = xds.port(),
        stats = xds::telemetry::stats_config()
    )
}

/// For an Envoy proxy: the SDS secrets pilot-agent would serve, `default` (a certificate for
/// `spiffe` from the mesh's CA) and `ROOTCA`, on the proxy's own xDS harness.
fn serve_secrets(cp: &ControlPlane, ca: &TestCaServer, spiffe: &str) -> Result<(), String> {
    let id = certs::SpiffeId::parse(spiffe).map_err(|e| format!("{spiffe}: {e}"))?;
    let leaf = ca.ca().issue(&certs::dev_ca::WorkloadOptions::spiffe(id)).map_err(|e| e.to_string())?;
    let secret = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    for s in [
        serde_json::json!({"@type": secret, "name": "default", "tls_certificate": {
            "certificate_chain": {"inline_string": leaf.chain_pem}, "private_key": {"inline_string": leaf.key_pem}}}),
        serde_json::json!({"@type": secret, "name": "ROOTCA", "validation_context": {
            "trusted_ca": {"inline_string": ca.root_pem()}}}),
    ] {
        let (ty, name, any) = xds_client::server::resource_from_json(&s, "secret").map_err(|e| e.to_string())?;
        cp.set(ty, &name, any);
    }
    Ok(())
}

/// The bootstrap for Envoy: `sds-grpc` is the proxy's xDS harness (HTTP/2 over TCP) instead of
/// pilot-agent's unix socket.
fn envoy_bootstrap(boot: &str, xds: SocketAddr) -> Result<String, String> {
    let pipe = r#"{"pipe": {"path": "./var/run/secrets/workload-spiffe-uds/socket"}}"#;
    let sds = r#"{"name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s","#;
    if !boot.contains(pipe) || !boot.contains(sds) {
        return Err("the bootstrap's sds-grpc cluster has changed shape; cannot point it at the harness".into());
    }
    Ok(boot
        .replace(pipe, &format!(r#"{{"socket_address": {{"address": "{}", "port_value": {}}}}}"#, xds.ip(), xds.port()))
        .replace(
            sds,
            r#"{"name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s",
      "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}},"#,
        ))
}

/// Serves `mesh` to every proxy: replaces each harness's resources.
pub(crate) fn push(mesh: &Mesh, proxies: &[ProxyRun], gateway_bind: &[(u16, u16)]) -> Result<(), String> {
    for p in proxies {
        let proxy = match &p.pod {
            Some(pod) => Proxy::Sidecar(pod),
            None => Proxy::Gateway { bind: gateway_bind },
        };
        let resources = if p.envoy { crate::resources_for_envoy(mesh, &proxy) } else { crate::resources(mesh, &proxy) };
        for (ty, res) in resources? {
            if ty != xds_client::ads::SECRET {
                p.cp.set_all(ty, res);
                continue;
            }
            // The gateway's credentials (`kubernetes://NAME`) only: under --envoy the harness also
            // serves the proxy's `default` and `ROOTCA`, which a push must leave alone.
            let keep: Vec<&str> = res.iter().map(|(n, _)| n.as_str()).collect();
            for stale in p.cp.names(ty).into_iter().filter(|n| n.starts_with("kubernetes://")) {
                if !keep.contains(&stale.as_str()) {
                    p.cp.remove(ty, &stale);
                }
            }
            for (name, any) in res {
                p.cp.set(ty, &name, any);
            }
        }
    }
    Ok(())
}

/// Fingerprint of the folder: names and contents of its files (manifest folders are small; an
/// edit that keeps the size within the mtime granularity is still seen).
pub(crate) fn fingerprint(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.path(), std::fs::read(e.path()).ok()?)))
        .collect();
    v.sort();
    v
}

pub async fn run(opts: Options) -> Result<(), String> {
    // A loopback block of our own (127.x.BLOCK.N), so a second mesh does not collide with us.
    let block = (std::process::id() % 250 + 1) as u8;
    let mut mesh = load(&opts.mesh).map_err(|e| format!("refused: {e}"))?;
    mesh.renumber(block);
    std::fs::create_dir_all(&opts.work_dir).map_err(|e| format!("{}: {e}", opts.work_dir.display()))?;
    let ca = TestCaServer::start(TestCaOptions::default()).await.map_err(|e| format!("starting the Istio CA: {e}"))?;
    let root = opts.work_dir.join("ca-root.pem");
    std::fs::write(&root, ca.root_pem()).map_err(|e| format!("{}: {e}", root.display()))?;

    let mut gateway_bind = Vec::new();
    let mut next = opts.gateway_port;
    let mut gw_ports: Vec<u16> =
        mesh.gateways.iter().flat_map(|g| g.spec.servers.iter().map(|s| s.port.number)).collect();
    gw_ports.sort();
    gw_ports.dedup();
    for p in gw_ports {
        gateway_bind.push((p, next));
        next = next.saturating_add(1);
    }

    for (port, local) in &gateway_bind {
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", *local)) {
            return Err(format!(
                "the gateway's port {port} is to be published on 127.0.0.1:{local}, which is not free ({e}); \
                 pass --gateway-port"
            ));
        }
    }
    check_privileged_ports(&mesh, block)?;
    let mut children: Vec<(String, Child)> = Vec::new();
    let mut proxies = Vec::new();
    let result = start_all(&opts, &mesh, &ca, &root, &gateway_bind, &mut children, &mut proxies).await;
    if let Err(e) = result {
        stop_all(&mut children).await;
        return Err(e);
    }
    let nacks = wait_ready(&proxies).await;
    for n in &nacks {
        eprintln!("remora-demo: a proxy refused config: {n}");
    }
    let prom = start_prometheus(&opts, &proxies, &mut children);
    print_summary(&opts, &mesh, &proxies, &gateway_bind, &nacks, prom);

    let mut current = fingerprint(&opts.mesh);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| format!("SIGINT handler: {e}"))?;
    let mut good = mesh;
    let mut seen_nacks = nacks.len();
    loop {
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        for (name, c) in children.iter_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                eprintln!(
                    "remora-demo: {name} exited ({status}); see {}",
                    opts.work_dir.join(format!("{name}.log")).display()
                );
            }
        }
        children.retain_mut(|(_, c)| !matches!(c.try_wait(), Ok(Some(_))));
        let now = fingerprint(&opts.mesh);
        if now == current {
            continue;
        }
        current = now;
        match load(&opts.mesh).map(|mut m| {
            m.renumber(block);
            m
        }) {
            Err(e) => eprintln!("remora-demo: refused: {e}; still serving the last good config"),
            Ok(m) if m.pods != good.pods => eprintln!(
                "remora-demo: refused: {}: Deployments or replicas changed; the demo does not add or remove pods \
                 while running (restart it); still serving the last good config",
                opts.mesh.display()
            ),
            Ok(m) => match push(&m, &proxies, &gateway_bind) {
                Ok(()) => {
                    eprintln!("remora-demo: pushed the new config to {} proxies", proxies.len());
                    good = m;
                    report_new_nacks(&proxies, &mut seen_nacks).await;
                }
                Err(e) => eprintln!("remora-demo: refused: {e}; still serving the last good config"),
            },
        }
    }
    eprintln!("remora-demo: stopping {} processes", children.len());
    stop_all(&mut children).await;
    for p in &proxies {
        p.cp.stop();
    }
    Ok(())
}

async fn stop_all(children: &mut Vec<(String, Child)>) {
    for (_, c) in children.iter_mut() {
        let _ = c.start_kill();
    }
    for (_, c) in children.iter_mut() {
        let _ = c.wait().await;
    }
    children.clear();
}

fn log_file(opts: &Options, name: &str) -> Result<std::fs::File, String> {
    let p = opts.work_dir.join(format!("{name}.log"));
    std::fs::File::create(&p).map_err(|e| format!("{}: {e}", p.display()))
}

#[allow(clippy::too_many_arguments)]
async fn start_proxy(
    opts: &Options,
    mesh: &Mesh,
    pod: Option<&Pod>,
    gateway_bind: &[(u16, u16)],
    ca: &TestCaServer,
    root: &Path,
    children: &mut Vec<(String, Child)>,
    proxies: &mut Vec<ProxyRun>,
) -> Result<(), String> {
    let cp = ControlPlane::new();
    let addr = cp.serve_tcp(([127, 0, 0, 1], 0).into()).await.map_err(|e| e.to_string())?;
    let admin = free_port().map_err(|e| e.to_string())?;
    let (name, node, cluster) = match pod {
        Some(p) => (format!("sidecar-{}", p.name), p.node_id(), format!("{}.{}", p.app(), p.namespace)),
        None => ("gateway".to_string(), xds::gateway_node_id(), format!("istio-ingressgateway.{GATEWAY_NAMESPACE}")),
    };
    let (ns, sa) = match pod {
        Some(p) => (p.namespace.clone(), p.service_account.clone()),
        None => (GATEWAY_NAMESPACE.to_string(), GATEWAY_SA.to_string()),
    };
    let run = ProxyRun { pod: pod.cloned(), cp, admin, envoy: opts.envoy.is_some() };
    push(mesh, std::slice::from_ref(&run), gateway_bind)?;
    let cfg = opts.work_dir.join(format!("{name}.json"));
    let boot = bootstrap(&node, &cluster, &xds::telemetry::node_metadata(pod), admin, addr);
    let mut cmd = match &opts.envoy {
        Some(envoy) => {
            serve_secrets(&run.cp, ca, &format!("spiffe://{}/ns/{ns}/sa/{sa}", crate::model::TRUST_DOMAIN))?;
            std::fs::write(&cfg, envoy_bootstrap(&boot, addr)?).map_err(|e| format!("{}: {e}", cfg.display()))?;
            let mut c = Command::new(envoy);
            // A base id of its own: several Envoys on one machine must not share hot-restart memory.
            c.arg("-c").arg(&cfg).args(["--concurrency", "1", "-l", "info", "--base-id", &admin.to_string()]);
            c
        }
        None => {
            std::fs::write(&cfg, boot).map_err(|e| format!("{}: {e}", cfg.display()))?;
            let mut c = Command::new(&opts.remora);
            c.arg("-c")
                .arg(&cfg)
                .args(["--concurrency", "1", "-l", "info"])
                .args(["--ca-address", &ca.addr().to_string(), "--ca-server-name", ca.server_name()])
                .arg("--ca-root-cert")
                .arg(root);
            c
        }
    };
    let bin = opts.envoy.as_ref().unwrap_or(&opts.remora).display().to_string();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log_file(opts, &name)?)
        .stderr(log_file(opts, &format!("{name}.err"))?)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {bin}: {e}"))?;
    children.push((name, child));
    proxies.push(run);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn start_all(
    opts: &Options,
    mesh: &Mesh,
    ca: &TestCaServer,
    root: &Path,
    gateway_bind: &[(u16, u16)],
    children: &mut Vec<(String, Child)>,
    proxies: &mut Vec<ProxyRun>,
) -> Result<(), String> {
    for pod in &mesh.pods {
        let listen: Vec<String> = pod.ports.iter().map(|p| format!("{}:{p}", pod.app_ip)).collect();
        let child = Command::new(&opts.app)
            .env("SERVICE", pod.app())
            .env("VERSION", pod.version())
            .env("POD", &pod.name)
            .env("LISTEN", listen.join(","))
            .env("OUTBOUND", pod.outbound_ip.to_string())
            .stdin(Stdio::null())
            .stdout(log_file(opts, &format!("app-{}", pod.name))?)
            .stderr(log_file(opts, &format!("app-{}.err", pod.name))?)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", opts.app.display()))?;
        children.push((format!("app-{}", pod.name), child));
        start_proxy(opts, mesh, Some(pod), gateway_bind, ca, root, children, proxies).await?;
    }
    if !gateway_bind.is_empty() {
        start_proxy(opts, mesh, None, gateway_bind, ca, root, children, proxies).await?;
    }
    Ok(())
}

/// Plain-ports mode binds every service and container port on loopback addresses: ports below
/// the unprivileged limit (1024 by default) need root or CAP_NET_BIND_SERVICE. Probe one on an
/// unused address of our block and say so up front rather than let sidecars fail to listen.
fn check_privileged_ports(mesh: &Mesh, block: u8) -> Result<(), String> {
    let mut ports: Vec<u16> = mesh.service_ports().into_iter().collect();
    ports.extend(mesh.pods.iter().flat_map(|p| p.ports.iter().copied()));
    let Some(low) = ports.into_iter().filter(|p| *p < 1024).min() else { return Ok(()) };
    match std::net::TcpListener::bind((std::net::Ipv4Addr::new(127, 3, block, 254), low)) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(format!(
            "port {low} is below 1024 and this user may not bind it ({e}); the demo binds every service and \
             container port on loopback addresses: use ports >= 1024 in the manifests, or run as root"
        )),
        _ => Ok(()),
    }
}

/// Prints the NACKs that arrived since the last look (give the proxies a moment to answer).
pub(crate) async fn report_new_nacks(proxies: &[ProxyRun], seen: &mut usize) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all: Vec<String> = proxies
        .iter()
        .flat_map(|p| p.cp.nacks())
        .map(|n| format!("{}: {}", n.node_id, n.error_detail.unwrap_or_default()))
        .collect();
    for n in all.iter().skip(*seen) {
        eprintln!("remora-demo: a proxy refused config: {n}");
    }
    *seen = all.len();
}

/// Admin `/ready` of a proxy: whether it answers 200 (LIVE).
async fn admin_ready(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return false };
    if s.write_all(b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
    buf.starts_with(b"HTTP/1.1 200")
}

/// Waits (up to 60 s) until every proxy has ACKed listeners and routes (or NACKed something) and
/// its admin says LIVE; returns the NACKs (`node: message`).
async fn wait_ready(proxies: &[ProxyRun]) -> Vec<String> {
    use xds_client::ads::{LISTENER, ROUTE};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for p in proxies {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        p.cp.wait_for(
            |cp| {
                let acks = cp.acks();
                !cp.nacks().is_empty() || [LISTENER, ROUTE].iter().all(|t| acks.iter().any(|a| a.type_url == *t))
            },
            left,
        )
        .await;
        while tokio::time::Instant::now() < deadline && !admin_ready(p.admin).await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut out: Vec<String> = proxies
        .iter()
        .flat_map(|p| p.cp.nacks())
        .map(|n| format!("{}: {}", n.node_id, n.error_detail.unwrap_or_default()))
        .collect();
    // Each harness serves one proxy: a stream from another node id would get someone else's config.
    for p in proxies {
        let want = p.pod.as_ref().map(Pod::node_id).unwrap_or_else(xds::gateway_node_id);
        for s in p.cp.streams().into_iter().filter(|s| s.node_id != want) {
            out.push(format!("{}: connected to the control plane of {want}", s.node_id));
        }
    }
    out
}

/// Starts Prometheus over every proxy (see `crate::prometheus`); its port, or None (said why).
fn start_prometheus(opts: &Options, proxies: &[ProxyRun], children: &mut Vec<(String, Child)>) -> Option<u16> {
    let want = opts.prometheus?;
    let Some(bin) = crate::prometheus::find() else {
        eprintln!("remora-demo: no prometheus on PATH (apt-get install prometheus): not scraping the proxies");
        return None;
    };
    let port = match std::net::TcpListener::bind(("127.0.0.1", want)) {
        Ok(_) if want != 0 => want,
        _ => free_port().ok()?,
    };
    let targets: Vec<crate::prometheus::Target> = proxies
        .iter()
        .map(|p| crate::prometheus::Target {
            pod: p.pod.as_ref().map(|p| p.name.clone()).unwrap_or_else(|| "gateway".into()),
            namespace: p.pod.as_ref().map(|p| p.namespace.clone()).unwrap_or_else(|| GATEWAY_NAMESPACE.into()),
            admin: p.admin,
        })
        .collect();
    match crate::prometheus::start(&bin, &opts.work_dir, port, &targets) {
        Ok(child) => {
            children.push(("prometheus".into(), child));
            Some(port)
        }
        Err(e) => {
            eprintln!("remora-demo: {e}: not scraping the proxies");
            None
        }
    }
}

fn print_summary(
    opts: &Options,
    mesh: &Mesh,
    proxies: &[ProxyRun],
    gateway_bind: &[(u16, u16)],
    nacks: &[String],
    prom: Option<u16>,
) {
    let mut admins = serde_json::Map::new();
    println!("remora demo: {} pods from {}", mesh.pods.len(), opts.mesh.display());
    for p in proxies {
        let name = p.pod.as_ref().map(|p| p.name.clone()).unwrap_or_else(|| "gateway".into());
        match &p.pod {
            Some(pod) => println!(
                "  {name:<24} app {}  sidecar in {}  out {}  admin http://127.0.0.1:{}/stats/prometheus",
                pod.app_ip, pod.ip, pod.outbound_ip, p.admin
            ),
            None => println!("  {name:<24} ingress gateway  admin http://127.0.0.1:{}/stats/prometheus", p.admin),
        }
        admins.insert(name, serde_json::json!(p.admin));
    }
    for (port, local) in gateway_bind {
        let https = mesh
            .gateways
            .iter()
            .flat_map(|g| g.spec.servers.iter())
            .any(|s| s.port.number == *port && s.port.protocol == "HTTPS");
        let scheme = if https { "https" } else { "http" };
        println!("gateway: Gateway port {port} is on {scheme}://127.0.0.1:{local}/");
    }
    // The first port that answers rather than redirects to HTTPS.
    let servers = || mesh.gateways.iter().flat_map(|g| g.spec.servers.iter());
    let redirects =
        |port: u16| servers().any(|s| s.port.number == port && s.tls.as_ref().is_some_and(|t| t.https_redirect));
    let https = |port: u16| servers().any(|s| s.port.number == port && s.port.protocol == "HTTPS");
    let first = gateway_bind.iter().find(|(p, _)| !redirects(*p) || https(*p)).or(gateway_bind.first());
    if let Some((port, local)) = first {
        // The first host a VirtualService binds to a Gateway on this port ("*" needs no header).
        let host = mesh
            .virtual_services
            .iter()
            .filter(|vs| {
                vs.spec
                    .gateways
                    .iter()
                    .filter_map(|g| mesh.gateway(g, &vs.namespace))
                    .any(|g| g.spec.servers.iter().any(|s| s.port.number == *port))
            })
            .flat_map(|vs| vs.spec.hosts.iter())
            .next()
            .filter(|h| h.as_str() != "*");
        // HTTPS: the certificate is the folder's own (-k), the host is sent as SNI (--resolve).
        let base = match host {
            Some(h) if https(*port) => format!("-k --resolve {h}:{local}:127.0.0.1 https://{h}:{local}"),
            None if https(*port) => format!("-k https://127.0.0.1:{local}"),
            Some(h) => format!("-H 'Host: {h}' http://127.0.0.1:{local}"),
            None => format!("http://127.0.0.1:{local}"),
        };
        println!("try:\n  curl -s {base}/");
        for svc in &mesh.services {
            if let Some(p) = svc.ports.first() {
                println!(
                    "  curl -s {base}/call/{}.{}:{}/   # through the gateway's backend to {}",
                    svc.name, svc.namespace, p.port, svc.name
                );
            }
        }
        println!("  curl -s {base}/status/503   /delay/500   (the demo app's knobs)");
    }
    if let Some(port) = prom {
        println!(
            "prometheus: http://127.0.0.1:{port}/ scrapes every proxy each second, e.g.\n  \
             curl -s http://127.0.0.1:{port}/api/v1/query --data-urlencode \
             'query=sum(istio_requests_total) by (source_workload, destination_workload, response_code)'"
        );
    }
    println!("logs, bootstraps and the CA root: {}\nCtrl-C stops everything.", opts.work_dir.display());
    if let Some(f) = &opts.ready_file {
        let summary = serde_json::json!({
            "nacks": nacks,
            "admin": admins,
            "prometheus": prom,
            "gateway": gateway_bind.iter().map(|(p, l)| (p.to_string(), serde_json::json!(l))).collect::<serde_json::Map<_, _>>(),
            "pods": mesh.pods.iter().map(|p| serde_json::json!({"name": p.name, "ip": p.ip.to_string(),
                "app": p.app_ip.to_string(), "outbound": p.outbound_ip.to_string()})).collect::<Vec<_>>(),
        });
        let _ = std::fs::write(f, summary.to_string());
    }
}
