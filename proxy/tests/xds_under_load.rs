//! Dynamic configuration under load, with zero failed requests: remora driven over Delta ADS by
//! the control-plane harness while a client sends a steady stream of requests through it.
//! - endpoints added and removed every 200 ms for 20 s at 2,000 rps;
//! - route weights moved 90/10 -> 50/50 -> 0/100;
//! - a NACKed update (the last good config keeps serving) followed by a good one;
//! - the control plane stopped and restarted mid-stream (remora keeps serving, reconnects and
//!   takes the next update).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Remora, free_port, http_server};
use serde_json::{Value, json};
use xds_client::ads;
use xds_client::server::{ControlPlane, resource_from_json};

fn set(cp: &ControlPlane, v: Value) {
    let (t, name, any) = resource_from_json(&v, "test").unwrap();
    cp.set(t, &name, any);
}

fn eds_cluster(name: &str) -> Value {
    json!({"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": name, "type": "EDS",
           "connect_timeout": "1s", "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}}})
}

fn endpoints(name: &str, ports: &[u16]) -> Value {
    let eps: Vec<Value> = ports
        .iter()
        .map(|p| json!({"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}))
        .collect();
    json!({"@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
           "cluster_name": name, "endpoints": [{"lb_endpoints": eps}]})
}

fn listener(port: u16) -> Value {
    json!({"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "http",
      "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
      "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "rds": {"route_config_name": "routes", "config_source": {"ads": {}, "resource_api_version": "V3"}},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
          "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]})
}

fn routes(weights: &[(&str, u32)]) -> Value {
    let action = if weights.len() == 1 {
        json!({"cluster": weights[0].0})
    } else {
        let w: Vec<Value> = weights.iter().map(|(c, w)| json!({"name": c, "weight": w})).collect();
        json!({"weighted_clusters": {"clusters": w}})
    };
    json!({"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "name": "routes",
      "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": action}]}]})
}

fn bootstrap(admin: u16, xds: u16) -> String {
    format!(
        r#"
node: {{id: load-test, cluster: load-test}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
dynamic_resources:
  ads_config:
    api_type: DELTA_GRPC
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds-grpc}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds-grpc
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {xds}}}}}}}}}]}}]
"#
    )
}

/// A steady client: `conns` keep-alive connections, each sending at `rps / conns`; counts
/// answers per body and failures (anything but a 200, or a broken connection).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    bodies: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, rps: u32, conns: u32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let bodies = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let gap = Duration::from_secs_f64(f64::from(conns) / f64::from(rps));
        let threads = (0..conns)
            .map(|_| {
                let (stop, ok, failed, bodies) = (stop.clone(), ok.clone(), failed.clone(), bodies.clone());
                std::thread::spawn(move || {
                    let mut conn: Option<std::net::TcpStream> = None;
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        }
                        next += gap;
                        if conn.is_none() {
                            conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok();
                        }
                        match conn.as_mut().map(get) {
                            Some(Some((200, body))) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                *bodies.lock().unwrap().entry(body).or_default() += 1;
                            }
                            other => {
                                eprintln!("failed request: {other:?}");
                                failed.fetch_add(1, Ordering::Relaxed);
                                conn = None;
                            }
                        }
                    }
                })
            })
            .collect();
        Load { stop, ok, failed, bodies, threads }
    }

    fn take_bodies(&self) -> std::collections::HashMap<String, u64> {
        std::mem::take(&mut *self.bodies.lock().unwrap())
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

/// One keep-alive HTTP/1.1 GET on `s`: (status, body).
fn get(s: &mut std::net::TcpStream) -> Option<(u16, String)> {
    use std::io::{BufRead, BufReader, Read, Write};
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nhost: load\r\n\r\n").ok()?;
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let status: u16 = line.split(' ').nth(1)?.parse().ok()?;
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    // Nothing may be left buffered: the server answers one request at a time.
    if !r.buffer().is_empty() {
        return None;
    }
    Some((status, String::from_utf8_lossy(&body).to_string()))
}

struct Setup {
    rt: tokio::runtime::Runtime,
    cp: ControlPlane,
    xds: std::net::SocketAddr,
    remora: Remora,
    port: u16,
}

fn setup(clusters: &[(&str, Vec<u16>)], weights: &[(&str, u32)]) -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let cp = ControlPlane::new();
    let port = free_port();
    for (name, ports) in clusters {
        set(&cp, eds_cluster(name));
        set(&cp, endpoints(name, ports));
    }
    set(&cp, listener(port));
    set(&cp, routes(weights));
    let xds = rt.block_on(cp.serve_tcp("127.0.0.1:0".parse().unwrap())).unwrap();
    let admin = free_port();
    let remora = Remora::start(&bootstrap(admin, xds.port()), admin);
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::http_get(port, "/").map(|(s, _)| s) != Some(200) {
        assert!(Instant::now() < deadline, "listener never served: {}", std::fs::read_to_string(&remora.log).unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    Setup { rt, cp, xds, remora, port }
}

fn upstreams(names: &[&'static str]) -> Vec<u16> {
    names.iter().map(|n| http_server(n, Duration::ZERO)).collect()
}

#[test]
fn endpoint_churn_every_200ms_at_2000_rps() {
    let ports = upstreams(&["e0", "e1", "e2", "e3", "e4", "e5"]);
    let s = setup(&[("svc", ports.clone())], &[("svc", 1)]);
    let load = Load::start(s.port, 2000, 16);
    let start = Instant::now();
    let mut pushes = 0;
    while start.elapsed() < Duration::from_secs(20) {
        // A different non-empty subset each time: some endpoints leave, others join.
        let subset: Vec<u16> = ports.iter().copied().filter(|_| fastrand::bool()).collect();
        let subset = if subset.is_empty() { vec![ports[pushes % ports.len()]] } else { subset };
        set(&s.cp, endpoints("svc", &subset));
        pushes += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, failed) = load.finish();
    let rps = ok as f64 / start.elapsed().as_secs_f64();
    eprintln!("endpoint churn: {pushes} EDS pushes, {ok} ok ({rps:.0} rps), {failed} failed");
    assert_eq!(failed, 0, "failed requests during endpoint churn");
    assert!(ok > 10_000, "too few requests went through: {ok}");
    assert!(s.cp.nacks().is_empty(), "{:?}", s.cp.nacks());
    drop(s.remora);
    drop(s.rt);
}

#[test]
fn weight_shifts_nack_and_control_plane_restart_under_load() {
    let v1 = upstreams(&["v1"]);
    let v2 = upstreams(&["v2"]);
    let s = setup(&[("v1", v1), ("v2", v2)], &[("v1", 90), ("v2", 10)]);
    let load = Load::start(s.port, 1000, 8);
    let phase = |weights: &[(&str, u32)]| {
        set(&s.cp, routes(weights));
        std::thread::sleep(Duration::from_secs(1)); // let the update land
        load.take_bodies();
        std::thread::sleep(Duration::from_secs(3));
        load.take_bodies()
    };
    let first = {
        std::thread::sleep(Duration::from_secs(3));
        load.take_bodies()
    };
    let share = |b: &std::collections::HashMap<String, u64>| {
        let v2 = *b.get("v2").unwrap_or(&0) as f64;
        v2 / (v2 + *b.get("v1").unwrap_or(&0) as f64).max(1.0)
    };
    assert!((0.04..0.2).contains(&share(&first)), "90/10: {first:?}");
    let half = phase(&[("v1", 50), ("v2", 50)]);
    assert!((0.4..0.6).contains(&share(&half)), "50/50: {half:?}");
    let all = phase(&[("v1", 0), ("v2", 100)]);
    assert_eq!(all.get("v1"), None, "0/100 still reached v1: {all:?}");

    // A cluster remora must refuse: NACKed with the reason, the old config keeps serving.
    set(
        &s.cp,
        json!({"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "bad", "type": "STATIC",
               "lb_policy": "RING_HASH",
               "ring_hash_lb_config": {"minimum_ring_size": "1000", "maximum_ring_size": "10"}}),
    );
    let nacked = s.rt.block_on(s.cp.wait_for(|cp| !cp.nacks().is_empty(), Duration::from_secs(10)));
    assert!(nacked, "bad cluster not NACKed");
    let nack = s.cp.nacks().remove(0);
    assert_eq!(nack.type_url, ads::CLUSTER);
    assert!(nack.error_detail.as_deref().unwrap_or_default().contains("bad"), "{nack:?}");
    s.cp.remove(ads::CLUSTER, "bad");
    let acks_before = s.cp.acks().len();
    set(&s.cp, eds_cluster("v3"));
    assert!(s.rt.block_on(s.cp.wait_for(move |cp| cp.acks().len() > acks_before, Duration::from_secs(10))));

    // The control plane goes away: traffic keeps flowing on the last good config.
    s.cp.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.remora.stat("control_plane.connected_state") != Some(0) {
        assert!(Instant::now() < deadline, "connected_state never dropped to 0");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    // It comes back on the same address; remora reconnects and takes the next update.
    s.rt.block_on(s.cp.serve_tcp(s.xds)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.remora.stat("control_plane.connected_state") != Some(1) {
        assert!(Instant::now() < deadline, "remora never reconnected");
        std::thread::sleep(Duration::from_millis(100));
    }
    let back = phase(&[("v1", 100), ("v2", 0)]);
    assert_eq!(back.get("v2"), None, "update after reconnect not applied: {back:?}");

    let (ok, failed) = load.finish();
    eprintln!("weights/NACK/restart: {ok} ok, {failed} failed");
    assert_eq!(failed, 0, "failed requests");
    drop(s.remora);
    drop(s.rt);
}

/// Envoy's update rules, seen through one keep-alive client connection (so one worker's pools):
/// re-pushing an unchanged cluster keeps its upstream connections; an EDS update keeps the
/// connections to surviving endpoints; an updated listener lets the old connection finish (no
/// request on it fails, it is closed between requests) while new connections reach the new one.
#[test]
fn unchanged_clusters_and_surviving_endpoints_keep_pools_listener_update_drains() {
    let ups = upstreams(&["a1", "a2", "a3"]);
    let s = setup(&[("a", vec![ups[0], ups[1]])], &[("a", 1)]);
    let cx_total = || s.remora.stat("cluster.a.upstream_cx_total").unwrap_or(-1);
    let mut old = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    let mut burst = |n: usize| {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..n {
            let (status, body) = get(&mut old).expect("request on the kept connection");
            assert_eq!(status, 200);
            seen.insert(body);
        }
        seen
    };
    assert_eq!(burst(20), ["a1", "a2"].map(String::from).into());
    let base = cx_total();
    assert!(base >= 2, "upstream_cx_total {base}");

    // The same cluster again (a new version, same content): pools kept.
    let acks = s.cp.acks().len();
    set(&s.cp, eds_cluster("a"));
    assert!(s.rt.block_on(s.cp.wait_for(move |cp| cp.acks().len() > acks, Duration::from_secs(10))));
    std::thread::sleep(Duration::from_millis(200));
    burst(20);
    assert_eq!(cx_total(), base, "an unchanged cluster must keep its connections");

    // EDS adds a3 then removes a1: only a3 needs a new connection; a2's survives.
    set(&s.cp, endpoints("a", &[ups[0], ups[1], ups[2]]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !burst(3).contains("a3") {
        assert!(Instant::now() < deadline, "a3 never served");
    }
    assert_eq!(cx_total(), base + 1, "adding an endpoint must not reconnect to the others");
    set(&s.cp, endpoints("a", &[ups[1], ups[2]]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while burst(6).contains("a1") {
        assert!(Instant::now() < deadline, "a1 still served after its removal");
    }
    assert_eq!(burst(20), ["a2", "a3"].map(String::from).into());
    assert_eq!(cx_total(), base + 1, "removing an endpoint must keep the survivors' connections");

    // An updated listener: the old connection drains (its next request is served with
    // `connection: close`); new connections are served by the new listener.
    let mut updated = listener(s.port);
    updated["filter_chains"][0]["filters"][0]["typed_config"]["stat_prefix"] = json!("ingress_v2");
    set(&s.cp, updated);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.remora.stat("http.ingress_v2.downstream_rq_total").unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the new listener never served");
        if let Some((status, _)) = common::http_get(s.port, "/") {
            assert_eq!(status, 200);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut served_on_old, mut closed) = (0, false);
    for _ in 0..40 {
        use std::io::{Read, Write};
        // Closed by the server between requests: a read sees EOF without a status line.
        if old.write_all(b"GET / HTTP/1.1\r\nhost: load\r\n\r\n").is_err() {
            closed = true;
            break;
        }
        let mut head = [0u8; 12];
        match old.read(&mut head) {
            Ok(0) | Err(_) => {
                closed = true;
                break;
            }
            Ok(_) => {
                assert!(head.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&head));
                // Drain the rest of this small response before the next request.
                std::thread::sleep(Duration::from_millis(20));
                let mut rest = [0u8; 4096];
                old.set_read_timeout(Some(Duration::from_millis(200))).ok();
                let _ = old.read(&mut rest);
                served_on_old += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("old connection: {served_on_old} requests after the update, closed: {closed}");
    // As Envoy's listener drain: the idle HTTP/1 connection stays usable, its next response
    // says `connection: close`, and then it is closed.
    assert_eq!((served_on_old, closed), (1, true));
    assert!(s.cp.nacks().is_empty(), "{:?}", s.cp.nacks());
}

/// pilot-agent's readiness view: until the first CDS and LDS are applied the server is not
/// LIVE, `/ready` is 503 and `listener_manager.workers_started` is 0 (with
/// `initial_fetch_timeout: 0s`, as istiod's bootstrap sets it, the wait has no deadline and a
/// control plane that refuses connections does not end it); afterwards all turn.
#[test]
fn readiness_waits_for_the_first_cds_and_lds() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let cp = ControlPlane::new();
    let xds_port = free_port();
    let admin = free_port();
    let yaml = bootstrap(admin, xds_port)
        .replace(
            "cds_config: {ads: {}, resource_api_version: V3}",
            "cds_config: {ads: {}, resource_api_version: V3, initial_fetch_timeout: 0s}",
        )
        .replace(
            "lds_config: {ads: {}, resource_api_version: V3}",
            "lds_config: {ads: {}, resource_api_version: V3, initial_fetch_timeout: 0s}",
        );
    assert!(yaml.contains("initial_fetch_timeout"));
    let r = Remora::start_unready(&yaml, admin);
    let stats = || {
        common::http_get(admin, "/stats?usedonly&filter=^(server\\.state|listener_manager\\.workers_started)$")
            .map(|(_, b)| b)
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s_has(&stats(), "server.state") {
        assert!(Instant::now() < deadline, "admin never came up");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Nobody listens on the xDS port yet: a few connection attempts fail meanwhile.
    std::thread::sleep(Duration::from_millis(1500));
    let before = stats();
    assert_eq!(common::http_get(admin, "/ready").map(|r| r.0), Some(503), "{before}");
    assert!(!before.contains("server.state: 0"), "LIVE before any CDS/LDS: {before}");
    assert!(!before.contains("listener_manager.workers_started: 1"), "{before}");

    let ups = upstreams(&["x"]);
    let port = free_port();
    set(&cp, eds_cluster("x"));
    set(&cp, endpoints("x", &ups));
    set(&cp, listener(port));
    set(&cp, routes(&[("x", 1)]));
    rt.block_on(cp.serve_tcp(format!("127.0.0.1:{xds_port}").parse().unwrap())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::http_get(admin, "/ready").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "never ready: {}", stats());
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = stats();
    assert!(after.contains("server.state: 0") && after.contains("listener_manager.workers_started: 1"), "{after}");
    assert_eq!(r.stat("cluster_manager.cds.update_success"), Some(1));
    assert_eq!(r.stat("listener_manager.lds.update_success"), Some(1));
    let (code, body) = common::http_get(port, "/").unwrap();
    assert_eq!((code, body.as_str()), (200, "x"));
}

fn s_has(stats: &str, name: &str) -> bool {
    stats.lines().any(|l| l.starts_with(&format!("{name}: ")))
}

/// A listener updated again and again while clients open a new connection for every request:
/// not one connection is refused or reset. As in Envoy, the new version of a listener at the
/// same address takes over the listen sockets of the one it replaces, so a connection waiting in
/// an accept queue when the old version stops is accepted by the new one.
#[test]
fn listener_updates_reset_no_new_connection() {
    let ups = upstreams(&["a1"]);
    let s = setup(&[("a", vec![ups[0]])], &[("a", 1)]);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let port = s.port;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                while !stop.load(Ordering::Relaxed) {
                    let answer = (|| -> std::io::Result<String> {
                        let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
                        c.set_read_timeout(Some(Duration::from_secs(5)))?;
                        c.write_all(b"GET / HTTP/1.1\r\nhost: load\r\nconnection: close\r\n\r\n")?;
                        let mut out = String::new();
                        c.read_to_string(&mut out)?;
                        Ok(out)
                    })();
                    match answer {
                        Ok(a) if a.starts_with("HTTP/1.1 200") => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("failed: {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    let modified = || s.remora.stat("listener_manager.listener_modified").unwrap_or(0);
    for i in 0..20 {
        let mut updated = listener(s.port);
        updated["filter_chains"][0]["filters"][0]["typed_config"]["stat_prefix"] = json!(format!("ingress_{i}"));
        set(&s.cp, updated);
        let deadline = Instant::now() + Duration::from_secs(10);
        while modified() < i + 1 {
            assert!(Instant::now() < deadline, "update {i} not applied");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{ok} requests on new connections across 20 listener updates, {failed} failed");
    assert!(ok > 100, "only {ok} requests");
    assert_eq!(failed, 0, "connections refused or reset across listener updates");

    // The kept sockets go with the listeners: after /drain_listeners a new connection is
    // refused, not queued with no one to accept it.
    {
        use std::io::{Read, Write};
        let mut a = std::net::TcpStream::connect(("127.0.0.1", s.remora.admin)).unwrap();
        a.write_all(b"POST /drain_listeners HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = a.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            other => {
                assert!(Instant::now() < deadline, "still accepting after /drain_listeners: {other:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
