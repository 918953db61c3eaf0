//! The docker-compose mesh: the same control plane as `remora demo`, with every pod a container
//! pair on one compose network (the app, and its remora sidecar in the app's network namespace,
//! `network_mode: service:<pod>`), plain ports (interception mode NONE): the app listens on
//! 127.0.0.1, the sidecar's outbound listeners are on 127.0.0.2, its inbound listeners on the
//! pod's static IP. `control_plane` serves every proxy on one ADS port by node id and relays the
//! Istio CA; `files` writes the compose file and the sidecars' bootstrap for a mesh folder.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use certs::test_util::{TestCaOptions, TestCaServer};
use serde_json::{Value, json};
use xds_client::server::ControlPlane;

use crate::model::{Mesh, Pod};
use crate::runner::{ProxyRun, fingerprint, load, push, report_new_nacks};
use crate::xds::{self, GATEWAY_NAMESPACE};

/// The compose network: pods are `.11` onwards, the control plane `.2`, the gateway `.3`.
pub const SUBNET: [u8; 3] = [10, 213, 89];
pub const XDS_PORT: u16 = 15010;
pub const CA_PORT: u16 = 15012;
/// Every proxy's admin inside its container; published on 127.0.0.1:`ADMIN_BASE + n` (gateway: n = 0).
pub const ADMIN_PORT: u16 = 15000;
pub const ADMIN_BASE: u16 = 19000;
/// Where the control plane writes the CA root, a volume the sidecars mount.
pub const STATE_DIR: &str = "/var/run/remora-mesh";
pub const BOOTSTRAP: &str = "/etc/remora/bootstrap.json";
const CA_NAME: &str = "istiod.istio-system.svc";

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], last)
}

pub fn control_plane_ip() -> Ipv4Addr {
    ip(2)
}

pub fn gateway_ip() -> Ipv4Addr {
    ip(3)
}

/// Gives every pod its compose address (`.11` onwards), the app 127.0.0.1 and the outbound
/// listeners 127.0.0.2 inside the pod, and binds the gateway on 0.0.0.0.
pub fn place(mesh: &mut Mesh) -> Result<(), String> {
    if mesh.pods.len() > 240 {
        return Err(format!("the compose mesh runs at most 240 pods, not {}", mesh.pods.len()));
    }
    for (i, p) in mesh.pods.iter_mut().enumerate() {
        p.ip = ip(11 + i as u8);
        p.app_ip = Ipv4Addr::LOCALHOST;
        p.outbound_ip = Ipv4Addr::new(127, 0, 0, 2);
    }
    mesh.gateway_ip = Ipv4Addr::UNSPECIFIED;
    Ok(())
}

/// Loads and places a folder.
pub fn load_placed(dir: &Path) -> Result<Mesh, String> {
    let mut m = load(dir).map_err(|e| format!("refused: {e}"))?;
    place(&mut m)?;
    Ok(m)
}

/// Gateway server ports, each published on the same port.
fn gateway_bind(mesh: &Mesh) -> Vec<(u16, u16)> {
    let mut ports: Vec<u16> = mesh.gateways.iter().flat_map(|g| g.spec.servers.iter().map(|s| s.port.number)).collect();
    ports.sort();
    ports.dedup();
    ports.into_iter().map(|p| (p, p)).collect()
}

#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    pub mesh: PathBuf,
    /// ADS for every proxy (by node id).
    pub listen: SocketAddr,
    /// The Istio CA.
    pub ca_listen: SocketAddr,
    /// `ca-root.pem` is written here once both ports serve.
    pub out: PathBuf,
}

/// Runs the control plane until SIGTERM or SIGINT, pushing every change of the folder.
pub async fn control_plane(opts: ControlPlaneOptions) -> Result<(), String> {
    let root = opts.out.join("ca-root.pem");
    // A root left by an earlier run would let the sidecars start before this one serves.
    let _ = std::fs::remove_file(&root);
    let mesh = load_placed(&opts.mesh)?;
    let ca = TestCaServer::start(TestCaOptions { server_name: CA_NAME.into(), ..Default::default() })
        .await
        .map_err(|e| format!("starting the Istio CA: {e}"))?;
    let bind = gateway_bind(&mesh);
    let mut proxies = Vec::new();
    let mut harnesses = BTreeMap::new();
    let runs = mesh.pods.iter().map(Some).chain(std::iter::once(None).filter(|_| !bind.is_empty()));
    for pod in runs {
        let cp = ControlPlane::new();
        let addr = cp.serve_tcp(([127, 0, 0, 1], 0).into()).await.map_err(|e| e.to_string())?;
        harnesses.insert(pod.map(Pod::node_id).unwrap_or_else(xds::gateway_node_id), addr);
        proxies.push(ProxyRun { pod: pod.cloned(), cp, admin: 0, envoy: false });
    }
    push(&mesh, &proxies, &bind)?;
    let xds_addr = crate::dispatch::serve(opts.listen, harnesses).await?;
    let ca_addr = crate::dispatch::relay(opts.ca_listen, ca.addr()).await?;
    let tmp = opts.out.join(".ca-root.pem.tmp");
    std::fs::write(&tmp, ca.root_pem())
        .and_then(|()| std::fs::rename(&tmp, &root))
        .map_err(|e| format!("{}: {e}", root.display()))?;
    eprintln!(
        "remora-demo control plane: {} pods from {}; ADS on {xds_addr} (by node id), Istio CA on {ca_addr}, root in {}",
        mesh.pods.len(),
        opts.mesh.display(),
        root.display()
    );
    for p in &mesh.pods {
        eprintln!("  {:<24} {}  node {}", p.name, p.ip, p.node_id());
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| format!("SIGINT handler: {e}"))?;
    let mut current = fingerprint(&opts.mesh);
    let mut good = mesh;
    let mut seen_nacks = 0;
    let mut acked = std::collections::BTreeSet::new();
    loop {
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        for p in &proxies {
            let name = p.pod.as_ref().map(|p| p.name.clone()).unwrap_or_else(|| "gateway".into());
            if !acked.contains(&name) && p.cp.acks().iter().any(|a| a.type_url == xds_client::ads::ROUTE) {
                eprintln!("remora-demo: {name} connected and ACKed its config");
                acked.insert(name);
            }
        }
        report_new_nacks(&proxies, &mut seen_nacks).await;
        let now = fingerprint(&opts.mesh);
        if now == current {
            continue;
        }
        current = now;
        match load_placed(&opts.mesh) {
            Err(e) => eprintln!("remora-demo: {e}; still serving the last good config"),
            Ok(m) if m.pods != good.pods => eprintln!(
                "remora-demo: refused: {}: Deployments or replicas changed; regenerate the compose file \
                 (remora-demo compose) and restart the mesh; still serving the last good config",
                opts.mesh.display()
            ),
            Ok(m) => match push(&m, &proxies, &bind) {
                Ok(()) => {
                    eprintln!("remora-demo: pushed the new config to {} proxies", proxies.len());
                    good = m;
                }
                Err(e) => eprintln!("remora-demo: refused: {e}; still serving the last good config"),
            },
        }
    }
    eprintln!("remora-demo: control plane stopping");
    for p in &proxies {
        p.cp.stop();
    }
    let _ = std::fs::remove_file(&root);
    Ok(())
}

/// The bootstrap every proxy of the compose mesh starts from (pilot-agent's shape: Delta ADS to
/// `xds-grpc`, admin on 0.0.0.0:15000 inside the pod); the node comes with `--config-yaml`.
pub fn bootstrap() -> Value {
    json!({
        "admin": {"address": {"socket_address": {"address": "0.0.0.0", "port_value": ADMIN_PORT}}},
        "stats_config": xds::telemetry::stats_config(),
        "dynamic_resources": {
            "ads_config": {"api_type": "DELTA_GRPC", "transport_api_version": "V3", "set_node_on_first_message_only": true,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [
            {"name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s",
                "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
                "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {"address":
                    {"socket_address": {"address": control_plane_ip().to_string(), "port_value": XDS_PORT}}}}]}]}},
        ]},
    })
}

/// The node as pilot-agent sends it, with its metadata (`xds::telemetry::node_metadata`).
fn node(id: &str, cluster: &str, pod: Option<&crate::model::Pod>) -> String {
    json!({"node": {"id": id, "cluster": cluster, "metadata": xds::telemetry::node_metadata(pod)}}).to_string()
}

/// The proxy's command: `envoy` (the same binary as remora, as pilot-agent execs it).
fn proxy_command(node: String) -> Value {
    json!([
        "envoy",
        "-c",
        BOOTSTRAP,
        "--config-yaml",
        node,
        "--concurrency",
        "1",
        "-l",
        "info",
        "--ca-address",
        format!("{}:{CA_PORT}", control_plane_ip()),
        "--ca-server-name",
        CA_NAME,
        "--ca-root-cert",
        format!("{STATE_DIR}/ca-root.pem"),
    ])
}

/// The compose file for a placed mesh. `mesh_src` is the manifests' folder as the compose file
/// names it (relative to the compose file's folder); `$REMORA_MESH_DIR` overrides it, and
/// `$REMORA_GATEWAY_PORT` the host port of the first gateway port.
/// `image` runs the proxies (sidecars, gateway), `demo_image` the control plane and the apps.
pub fn compose_yaml(mesh: &Mesh, mesh_src: &str, image: &str, demo_image: &str) -> Result<String, String> {
    let net = format!("{}.{}.{}", SUBNET[0], SUBNET[1], SUBNET[2]);
    let mut services = serde_json::Map::new();
    let cp_state = format!("mesh-state:{STATE_DIR}");
    services.insert(
        "controlplane".into(),
        json!({
            "image": demo_image,
            "command": ["remora-demo", "control-plane", "--mesh", "/etc/mesh",
                "--listen", format!("0.0.0.0:{XDS_PORT}"), "--ca-listen", format!("0.0.0.0:{CA_PORT}"), "--out", STATE_DIR],
            "volumes": [format!("${{REMORA_MESH_DIR:-{mesh_src}}}:/etc/mesh:ro"), cp_state],
            "networks": {"mesh": {"ipv4_address": control_plane_ip().to_string()}},
            "healthcheck": {"test": ["CMD", "remora-demo", "probe", format!("{STATE_DIR}/ca-root.pem")],
                "interval": "1s", "timeout": "5s", "retries": 120},
        }),
    );
    let sidecar_volumes =
        json!(["./bootstrap.json:/etc/remora/bootstrap.json:ro", format!("mesh-state:{STATE_DIR}:ro")]);
    for (i, p) in mesh.pods.iter().enumerate() {
        let listen: Vec<String> = p.ports.iter().map(|port| format!("{}:{port}", p.app_ip)).collect();
        services.insert(
            p.name.clone(),
            json!({
                "image": demo_image,
                "command": ["demo-app"],
                "environment": {"SERVICE": p.app(), "VERSION": p.version(), "POD": p.name,
                    "LISTEN": listen.join(","), "OUTBOUND": p.outbound_ip.to_string()},
                "networks": {"mesh": {"ipv4_address": p.ip.to_string()}},
                "ports": [format!("127.0.0.1:{}:{ADMIN_PORT}", ADMIN_BASE + 1 + i as u16)],
            }),
        );
        let cluster = format!("{}.{}", p.app(), p.namespace);
        services.insert(
            format!("{}-sidecar", p.name),
            json!({
                "image": image,
                "network_mode": format!("service:{}", p.name),
                "depends_on": {p.name.clone(): {"condition": "service_started"},
                    "controlplane": {"condition": "service_healthy"}},
                "volumes": sidecar_volumes,
                "command": proxy_command(node(&p.node_id(), &cluster, Some(p))),
            }),
        );
    }
    let bind = gateway_bind(mesh);
    if !bind.is_empty() {
        let ports: Vec<String> = bind
            .iter()
            .enumerate()
            .map(|(i, (p, _))| match i {
                0 => format!("127.0.0.1:${{REMORA_GATEWAY_PORT:-{p}}}:{p}"),
                _ => format!("127.0.0.1:{p}:{p}"),
            })
            .chain(std::iter::once(format!("127.0.0.1:{ADMIN_BASE}:{ADMIN_PORT}")))
            .collect();
        services.insert(
            "gateway".into(),
            json!({
                "image": image,
                "depends_on": {"controlplane": {"condition": "service_healthy"}},
                "networks": {"mesh": {"ipv4_address": gateway_ip().to_string()}},
                "ports": ports,
                "volumes": sidecar_volumes,
                "command": proxy_command(node(&xds::gateway_node_id(), &format!("istio-ingressgateway.{GATEWAY_NAMESPACE}"), None)),
            }),
        );
    }
    let doc = json!({
        "services": services,
        "networks": {"mesh": {"ipam": {"config": [{"subnet": format!("{net}.0/24")}]}}},
        "volumes": {"mesh-state": {}},
    });
    let body = serde_yaml::to_string(&doc).map_err(|e| e.to_string())?;
    let mut admin = format!("#   gateway admin: http://127.0.0.1:{ADMIN_BASE}/stats\n");
    for (i, p) in mesh.pods.iter().enumerate() {
        admin.push_str(&format!(
            "#   {} ({}) sidecar admin: http://127.0.0.1:{}/stats\n",
            p.name,
            p.ip,
            ADMIN_BASE + 1 + i as u16
        ));
    }
    Ok(format!(
        "# Generated by `remora-demo compose` from the manifests in {mesh_src}: regenerate it when\n\
         # Deployments, replicas or ports change (routing, weights and policies are pushed live).\n\
         # Up: docker/build && docker-compose -f docker/compose.yaml up   (or `docker compose`)\n\
         # Gateway: http://127.0.0.1:${{REMORA_GATEWAY_PORT:-8080}}/\n{admin}{body}"
    ))
}

/// Writes `compose.yaml` and `bootstrap.json` for the folder `mesh_dir` into `out`.
pub fn files(mesh_dir: &Path, out: &Path, image: &str, demo_image: &str) -> Result<(), String> {
    let mesh = load_placed(mesh_dir)?;
    let src = relative(mesh_dir, out);
    let yaml = compose_yaml(&mesh, &src, image, demo_image)?;
    let boot = serde_json::to_string_pretty(&bootstrap()).map_err(|e| e.to_string())? + "\n";
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    for (name, text) in [("compose.yaml", yaml), ("bootstrap.json", boot)] {
        let p = out.join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

/// `target` as seen from `from` (both made absolute), for the compose file's volume source.
pub fn relative(target: &Path, from: &Path) -> String {
    let abs = |p: &Path| {
        std::path::absolute(p).map(|a| {
            a.components().fold(PathBuf::new(), |mut acc, c| {
                match c {
                    std::path::Component::ParentDir => {
                        acc.pop();
                    }
                    std::path::Component::CurDir => {}
                    c => acc.push(c),
                }
                acc
            })
        })
    };
    let (Ok(t), Ok(f)) = (abs(target), abs(from)) else { return target.display().to_string() };
    let common = t.components().zip(f.components()).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in f.components().skip(common) {
        rel.push("..");
    }
    for c in t.components().skip(common) {
        rel.push(c);
    }
    let s = rel.display().to_string();
    if s.is_empty() { ".".into() } else { s }
}
