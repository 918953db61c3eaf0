//! The control-plane harness driving the real Envoy (the oracle): Delta and SotW ADS, over TCP
//! and a unix socket. Envoy must ACK every type, route traffic to an in-test upstream, NACK a
//! cluster it rejects (the harness records the error_detail), ACK the fix, and reconnect when the
//! control plane is restarted under it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use xds_client::ads::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use xds_client::server::{ControlPlane, resource_from_json};

const WAIT: Duration = Duration::from_secs(30);

fn envoy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("REMORA_ENVOY") {
        return p.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let p = PathBuf::from(home).join(".cache/remora/envoy-venv/bin/envoy");
    assert!(p.exists(), "{} missing: run scripts/install-test-deps", p.display());
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A tiny HTTP/1.1 upstream answering every request with `body`.
async fn upstream(body: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

/// GET / through Envoy's listener; returns the raw response.
async fn get(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").await.ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await.ok()?.ok()?;
    Some(out)
}

async fn get_until(port: u16, want: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        if let Some(r) = get(port).await {
            if r.starts_with("HTTP/1.1 200") && r.contains(want) {
                return r;
            }
            last = r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no 200 with {want:?} through Envoy; last response: {last:?}");
}

fn set(cp: &ControlPlane, v: Value) {
    let (type_url, name, any) = resource_from_json(&v, "test").unwrap();
    cp.set(type_url, &name, any);
}

fn ads() -> Value {
    json!({"ads": {}, "resource_api_version": "V3"})
}

fn cluster(extra: Value) -> Value {
    let mut c = json!({
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": "upstream", "type": "EDS", "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": ads()},
    });
    c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    c
}

fn declare(cp: &ControlPlane, listen_port: u16, upstream: SocketAddr) {
    set(cp, cluster(json!({})));
    set(
        cp,
        json!({
            "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "cluster_name": "upstream",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address":
                {"address": "127.0.0.1", "port_value": upstream.port()}}}}]}],
        }),
    );
    set(
        cp,
        json!({
            "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
            "name": "http", "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "http",
                "rds": {"route_config_name": "local_route", "config_source": ads()},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config":
                    {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            }}]}],
        }),
    );
    set(
        cp,
        json!({
            "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            "name": "local_route",
            "virtual_hosts": [{"name": "all", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}],
        }),
    );
}

enum Xds<'a> {
    Tcp(SocketAddr),
    Unix(&'a Path),
}

fn bootstrap(api_type: &str, xds: &Xds) -> Value {
    let address = match xds {
        Xds::Tcp(a) => json!({"socket_address": {"address": "127.0.0.1", "port_value": a.port()}}),
        Xds::Unix(p) => json!({"pipe": {"path": p}}),
    };
    json!({
        "node": {"id": "sidecar~127.0.0.1~test.default~default.svc.cluster.local", "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type, "transport_api_version": "V3", "set_node_on_first_message_only": true,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
            },
            "cds_config": ads(),
            "lds_config": ads(),
        },
        "static_resources": {"clusters": [{
            "name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }},
            "load_assignment": {"cluster_name": "xds-grpc",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}]},
        }]},
    })
}

struct Envoy {
    _child: tokio::process::Child,
    log: PathBuf,
}

impl Envoy {
    fn start(dir: &Path, bootstrap: &Value) -> Envoy {
        let cfg = dir.join("envoy.json");
        std::fs::write(&cfg, serde_json::to_vec_pretty(bootstrap).unwrap()).unwrap();
        let log = dir.join("envoy.log");
        let child = tokio::process::Command::new(envoy_bin())
            .arg("-c")
            .arg(&cfg)
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", "info"])
            .arg("--log-path")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Envoy { _child: child, log }
    }

    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        s.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

fn acked_all(cp: &ControlPlane) -> bool {
    let acks = cp.acks();
    [CLUSTER, ENDPOINT, LISTENER, ROUTE].iter().all(|t| acks.iter().any(|a| a.type_url == *t))
}

/// The whole scenario against one Envoy: ACKs, traffic, NACK, fix.
async fn scenario(api_type: &str, unix: bool) {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::new();
    let up = upstream("hello from upstream").await;
    let listen_port = free_port();
    declare(&cp, listen_port, up);
    let sock = dir.path().join("xds.sock");
    let xds = if unix {
        cp.serve_unix(&sock).await.unwrap();
        Xds::Unix(&sock)
    } else {
        Xds::Tcp(cp.serve_tcp("127.0.0.1:0".parse().unwrap()).await.unwrap())
    };
    let envoy = Envoy::start(dir.path(), &bootstrap(api_type, &xds));
    let delta = api_type == "DELTA_GRPC";

    assert!(cp.wait_for(acked_all, WAIT).await, "Envoy did not ACK every type: {:?}\n{}", cp.acks(), envoy.log_tail());
    assert!(cp.nacks().is_empty(), "{:?}", cp.nacks());
    let node = "sidecar~127.0.0.1~test.default~default.svc.cluster.local";
    assert!(cp.acks().iter().all(|a| a.node_id == node && a.delta == delta));
    let cds = cp.subscribed(CLUSTER).unwrap();
    assert!(cds.wildcard, "{cds:?}");
    let eds = cp.subscribed(ENDPOINT).unwrap();
    assert!(!eds.wildcard && eds.names.contains("upstream"), "{eds:?}");
    assert!(cp.subscribed(ROUTE).unwrap().names.contains("local_route"));
    get_until(listen_port, "hello from upstream").await;

    // A cluster Envoy rejects: NACKed with Envoy's reason, the old one keeps serving.
    set(&cp, cluster(json!({"lb_policy": "CLUSTER_PROVIDED"})));
    let ok = cp.wait_for(|cp| cp.nacks().iter().any(|n| n.type_url == CLUSTER), WAIT).await;
    assert!(ok, "no NACK for the bad cluster\n{}", envoy.log_tail());
    let nack = cp.nacks().into_iter().find(|n| n.type_url == CLUSTER).unwrap();
    let detail = nack.error_detail.clone().unwrap();
    eprintln!("{api_type}: NACK error_detail: {detail}");
    assert!(detail.contains("upstream"), "{detail}");
    assert!(!nack.nonce.is_empty());
    get_until(listen_port, "hello from upstream").await;

    // The fix is ACKed on a later nonce.
    let acked_before = cp.acks().len();
    set(&cp, cluster(json!({"connect_timeout": "2s"})));
    let ok = cp
        .wait_for(
            |cp| cp.acks().iter().skip(acked_before).any(|a| a.type_url == CLUSTER && a.nonce != nack.nonce),
            WAIT,
        )
        .await;
    assert!(ok, "fixed cluster not ACKed: {:?}\n{}", cp.acks(), envoy.log_tail());
    get_until(listen_port, "hello from upstream").await;
    cp.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_delta_over_tcp() {
    scenario("DELTA_GRPC", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_sotw_over_unix_socket() {
    scenario("GRPC", true).await;
}

/// The control plane dies mid-stream and comes back on the same socket: Envoy reconnects,
/// re-subscribes, keeps serving, and takes new pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_reconnects_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::new();
    let up = upstream("first").await;
    let listen_port = free_port();
    declare(&cp, listen_port, up);
    let addr = cp.serve_tcp("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let envoy = Envoy::start(dir.path(), &bootstrap("DELTA_GRPC", &Xds::Tcp(addr)));
    assert!(cp.wait_for(acked_all, WAIT).await, "{:?}\n{}", cp.acks(), envoy.log_tail());
    get_until(listen_port, "first").await;
    let first_stream = cp.streams()[0].stream_id;

    cp.stop();
    assert!(cp.wait_for(|cp| cp.streams().is_empty(), WAIT).await);
    get_until(listen_port, "first").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cp.serve_tcp(addr).await.unwrap(), addr);
    let ok = cp
        .wait_for(
            |cp| cp.streams().iter().any(|s| s.stream_id > first_stream && s.subscriptions.contains_key(ROUTE)),
            WAIT,
        )
        .await;
    assert!(ok, "Envoy did not come back: {:?}\n{}", cp.streams(), envoy.log_tail());

    // A push on the new stream moves traffic to a new upstream.
    let up2 = upstream("second").await;
    set(
        &cp,
        json!({
            "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "cluster_name": "upstream",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address":
                {"address": "127.0.0.1", "port_value": up2.port()}}}}]}],
        }),
    );
    get_until(listen_port, "second").await;
    assert!(cp.nacks().is_empty(), "{:?}", cp.nacks());
    cp.stop();
}
