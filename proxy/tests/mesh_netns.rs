//! A mesh in network namespaces with real iptables interception (the `mesh` harness): pods
//! `a` (client, sidecar), `b` (server, sidecar, service `svc-b` with HTTP port 80 -> 8080 and
//! TCP port 9000), `c` (no sidecar) and `ext` (outside the mesh). Real clients (curl, a gRPC
//! call over h2c, a TCP client) run inside the pods and never name a proxy: iptables sends
//! their traffic through the sidecars.
//! - a -> http://svc-b over both sidecars with mTLS, HTTP/1.1, h2c and gRPC; b's app sees a's
//!   SPIFFE ID in x-forwarded-client-cert; TCP to svc-b:9000 (server-first) likewise;
//! - a -> ext (not in the registry): PassthroughCluster under ALLOW_ANY, refused (BlackHole)
//!   after the outbound policy is switched to REGISTRY_ONLY over xDS;
//! - dual stack: the same over IPv6 (VIP, passthrough, inbound), as istiod's
//!   `additional_addresses` and `additional_source_addresses` shape it;
//! - STRICT inbound refuses c's plaintext (connection closed, `no_filter_chain_match` counted);
//!   after a push to PERMISSIVE it is served, and a's mTLS still is.
//!
//! Needs root (namespaces, iptables); `REMORA_NETNS_REQUIRE=1` (set by scripts/test) makes a
//! missing capability a failure instead of a skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod mesh;

use std::net::{Ipv4Addr, SocketAddr};

use mesh::apps::{grpc_call, http_app, tcp_app, tcp_ping};
use mesh::istio::{self, Mtls, Outbound, Protocol, Service, Sidecar};
use mesh::{Mesh, Pod, Proxy};

const SVC_B_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const HOSTS: &str = "10.96.0.20 svc-b svc-b.default svc-b.default.svc.cluster.local\n10.77.0.50 ext\n";

fn services(b: &Pod) -> Vec<Service> {
    vec![
        Service {
            name: "svc-b",
            vip: SVC_B_VIP,
            port: 80,
            target_port: 8080,
            protocol: Protocol::Http,
            endpoints: vec![(b.ip, "b")],
        },
        Service {
            name: "svc-b",
            vip: SVC_B_VIP,
            port: 9000,
            target_port: 9000,
            protocol: Protocol::Tcp,
            endpoints: vec![(b.ip, "b")],
        },
    ]
}

struct World {
    _mesh: Mesh,
    a: Pod,
    b: Pod,
    c: Pod,
    svcs: Vec<Service>,
}

fn world(test: &str, b_mtls: Mtls) -> World {
    world_with(test, b_mtls, Proxy::Remora)
}

fn world_with(test: &str, b_mtls: Mtls, b_proxy: Proxy) -> World {
    let mut mesh = Mesh::new(test);
    let mut a = mesh.pod("a", 10, HOSTS);
    let mut b = mesh.pod("b", 20, HOSTS);
    let c = mesh.pod("c", 30, HOSTS);
    let ext = mesh.pod("ext", 50, HOSTS);
    http_app(&b.ns, "b", 8080);
    tcp_app(&b.ns, "b", 9000);
    http_app(&ext.ns, "ext", 8000);
    let svcs = services(&b);
    let a_cfg = Sidecar { services: &svcs, inbound: &[], mtls: Mtls::Strict, outbound: Outbound::AllowAny };
    let b_cfg = Sidecar {
        services: &svcs,
        inbound: &[(8080, Protocol::Http), (9000, Protocol::Tcp)],
        mtls: b_mtls,
        outbound: Outbound::AllowAny,
    };
    mesh.sidecar(&mut a, "a", &istio::resources(&a_cfg));
    mesh.sidecar_with(b_proxy, &mut b, "b", &istio::resources(&b_cfg));
    World { _mesh: mesh, a, b, c, svcs }
}

fn logs(w: &World) -> String {
    format!("--- a's sidecar:\n{}\n--- b's sidecar:\n{}", tail(&w.a.log()), tail(&w.b.log()))
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[test]
fn pod_to_pod_through_both_sidecars_and_outbound_policy() {
    if mesh::skip("pod_to_pod_through_both_sidecars_and_outbound_policy") {
        return;
    }
    let w = world("p", Mtls::Strict);
    let (a, b) = (&w.a, &w.b);
    // MESH_DEBUG_PAUSE=<seconds> holds the mesh up for poking with `ip netns exec`.
    if let Ok(s) = std::env::var("MESH_DEBUG_PAUSE") {
        std::thread::sleep(std::time::Duration::from_secs(s.parse().unwrap()));
    }

    // HTTP/1.1: a's curl names only the service; both sidecars are crossed over mTLS.
    let (rc, out) = a.curl(&["http://svc-b/hello"]);
    assert_eq!(rc, 0, "{out}\n{}", logs(&w));
    let (status, body) = out.split_once('\n').unwrap();
    assert_eq!(status, "200", "{out}\n{}", logs(&w));
    assert!(body.starts_with("b HTTP/1.1 xfcc="), "{body}");
    // The server side sees the client's SPIFFE ID (and its own, as By=).
    assert!(body.contains("By=spiffe://cluster.local/ns/default/sa/b"), "{body}");
    assert!(body.contains("URI=spiffe://cluster.local/ns/default/sa/a"), "{body}");
    let svc_b = "outbound|80||svc-b.default.svc.cluster.local";
    assert!(a.stat(&format!("cluster.{svc_b}.ssl.handshake")).unwrap_or(0) >= 1, "a's upstream was not mTLS");
    assert!(b.stat("listener.0.0.0.0_15006.ssl.handshake").unwrap_or(0) >= 1, "b's inbound was not mTLS");
    assert!(b.stat("cluster.inbound|8080||.upstream_rq_total").unwrap_or(0) >= 1);

    // Istio's request metric on both sides, labelled with the peer's workload and identity.
    let (_, prom) = mesh::admin_get(&b.ns, "/stats/prometheus").unwrap();
    let line = prom
        .lines()
        .find(|l| l.starts_with("istio_requests_total{reporter=\"destination\""))
        .unwrap_or_else(|| panic!("{prom}"));
    for label in [
        "source_workload=\"a\"",
        "source_workload_namespace=\"default\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/a\"",
        "source_app=\"a\"",
        "source_version=\"v1\"",
        "destination_workload=\"b\"",
        "destination_principal=\"spiffe://cluster.local/ns/default/sa/b\"",
        "request_protocol=\"http\"",
        "response_code=\"200\"",
        "connection_security_policy=\"mutual_tls\"",
    ] {
        assert!(line.contains(label), "{label} missing: {line}");
    }
    assert!(line.ends_with(" 1"), "{line}");
    let (_, prom) = mesh::admin_get(&a.ns, "/stats/prometheus").unwrap();
    let line = prom
        .lines()
        .find(|l| l.starts_with("istio_requests_total{reporter=\"source\""))
        .unwrap_or_else(|| panic!("{prom}"));
    for label in
        ["source_workload=\"a\"", "destination_workload=\"b\"", "destination_app=\"b\"", "response_code=\"200\""]
    {
        assert!(line.contains(label), "{label} missing: {line}");
    }

    // h2c from the client: HTTP/2 all the way (istio.alpn offers istio-h2, b picks its chain).
    let (rc, out) = a.curl(&["--http2-prior-knowledge", "http://svc-b/h2"]);
    assert_eq!((rc, out.lines().next()), (0, Some("200")), "{out}\n{}", logs(&w));
    assert!(out.contains("b HTTP/2.0 xfcc="), "{out}");
    // Connections counted by the codec AUTO picked (the first was HTTP/1.1, this one h2c; b's
    // inbound got HTTP/2 over TLS).
    assert!(a.stat("http.outbound_0.0.0.0_80.downstream_cx_http1_total").unwrap_or(0) >= 1);
    assert!(a.stat("http.outbound_0.0.0.0_80.downstream_cx_http2_total").unwrap_or(0) >= 1);
    assert!(b.stat("http.inbound_0.0.0.0_8080.downstream_cx_http2_total").unwrap_or(0) >= 1);

    // gRPC (unary, over h2c), trailers included.
    let vip = SocketAddr::from((SVC_B_VIP, 80));
    let (status, msg) = grpc_call(&a.ns, vip, "svc-b").unwrap_or_else(|e| panic!("{e}\n{}", logs(&w)));
    assert_eq!(status, "0", "{msg}");
    assert!(msg.starts_with("b HTTP/2.0") && msg.contains("URI=spiffe://cluster.local/ns/default/sa/a"), "{msg}");

    // Plain TCP to the service's VIP (server-first app, metadata exchange between sidecars).
    let (greeting, echo) =
        tcp_ping(&a.ns, SocketAddr::from((SVC_B_VIP, 9000)), false).unwrap_or_else(|e| panic!("{e}\n{}", logs(&w)));
    assert_eq!((greeting.as_str(), echo.as_str()), ("b\n", "ping\n"));
    assert!(a.stat("cluster.outbound|9000||svc-b.default.svc.cluster.local.ssl.handshake").unwrap_or(0) >= 1);

    // A destination outside the registry: PassthroughCluster under ALLOW_ANY...
    let (rc, out) = a.curl(&["http://ext:8000/out"]);
    assert_eq!((rc, out.lines().next()), (0, Some("200")), "{out}\n{}", logs(&w));
    assert!(out.contains("ext HTTP/1.1 xfcc=-"), "{out}");
    assert!(a.stat("cluster.PassthroughCluster.upstream_cx_total").unwrap_or(0) >= 1);

    // IPv6 (dual stack): the VIP over IPv6 is intercepted ([::]:15001, IPv6 SO_ORIGINAL_DST)
    // and routed by its host; an address outside the registry passes through over IPv6.
    let (rc, out) = a.curl(&["-H", "Host: svc-b", "http://[fd96::20]/v6"]);
    assert_eq!((rc, out.lines().next()), (0, Some("200")), "{out}\n{}", logs(&w));
    assert!(out.contains("URI=spiffe://cluster.local/ns/default/sa/a"), "{out}");
    let (rc, out) = a.curl(&["http://[fd77::50]:8000/v6"]);
    assert_eq!((rc, out.lines().next()), (0, Some("200")), "{out}\n{}", logs(&w));
    assert!(out.contains("ext HTTP/1.1"), "{out}");

    // ...refused once the policy is REGISTRY_ONLY (virtualOutbound's catch-all is BlackHole).
    let before = a.stat("cluster.BlackHoleCluster.upstream_cx_none_healthy").unwrap_or(0);
    let acks = a.cp().acks().len();
    a.push(&[istio::virtual_outbound(Outbound::RegistryOnly)]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while a.cp().acks().len() == acks {
        assert!(std::time::Instant::now() < deadline, "the policy update was not ACKed: {:?}", a.cp().nacks());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (rc, out) = a.curl(&["http://ext:8000/out"]);
    assert_ne!(rc, 0, "REGISTRY_ONLY must refuse ext: {out}");
    assert!(a.stat("cluster.BlackHoleCluster.upstream_cx_none_healthy").unwrap_or(0) > before);
    // The registry's services are unaffected.
    assert_eq!(a.curl(&["http://svc-b/still"]).1.lines().next(), Some("200"));
    assert!(a.cp().nacks().is_empty() && b.cp().nacks().is_empty(), "{:?} {:?}", a.cp().nacks(), b.cp().nacks());
}

#[test]
fn strict_refuses_plaintext_permissive_accepts() {
    if mesh::skip("strict_refuses_plaintext_permissive_accepts") {
        return;
    }
    let w = world("s", Mtls::Strict);
    let (a, b, c) = (&w.a, &w.b, &w.c);
    let pod_b = format!("http://{}:8080/direct", b.ip);

    // c has no sidecar: its plaintext reaches b's inbound through iptables and is refused.
    let (rc, out) = c.curl(&[&pod_b]);
    assert_ne!(rc, 0, "STRICT must refuse plaintext: {out}");
    assert!(b.stat("listener.0.0.0.0_15006.no_filter_chain_match").unwrap_or(0) >= 1, "{}", logs(&w));
    let (rc, out) = c.curl(&[&format!("http://[{}]:8080/direct6", b.ip6)]);
    assert_ne!(rc, 0, "STRICT must refuse plaintext over IPv6: {out}");
    let tcp = tcp_ping(&c.ns, SocketAddr::from((b.ip, 9000)), true);
    assert!(
        tcp.as_ref().is_err_and(|e| e.starts_with("closed") || e.contains("reset")),
        "STRICT must refuse plaintext TCP: {tcp:?}"
    );

    // PERMISSIVE (pushed over xDS): plaintext is served, without a client identity...
    let b_cfg = Sidecar {
        services: &w.svcs,
        inbound: &[(8080, Protocol::Http), (9000, Protocol::Tcp)],
        mtls: Mtls::Permissive,
        outbound: Outbound::AllowAny,
    };
    let acks = b.cp().acks().len();
    b.push(&istio::resources(&b_cfg));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while b.cp().acks().len() == acks {
        assert!(std::time::Instant::now() < deadline, "PERMISSIVE was not ACKed: {:?}", b.cp().nacks());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut served = None;
    for _ in 0..50 {
        let (rc, out) = c.curl(&[&pod_b]);
        if rc == 0 {
            served = Some(out);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = served.unwrap_or_else(|| panic!("PERMISSIVE never served plaintext\n{}", logs(&w)));
    assert!(out.starts_with("200\nb HTTP/1.1 xfcc=-"), "{out}");
    // Over IPv6 too: [::]:15006, IPv6 SO_ORIGINAL_DST, the inbound cluster binds ::6.
    let (rc, out) = c.curl(&[&format!("http://[{}]:8080/direct6", b.ip6)]);
    assert!(rc == 0 && out.starts_with("200\nb HTTP/1.1 xfcc=-"), "{rc} {out}\n{}", logs(&w));
    let (greeting, echo) = tcp_ping(&c.ns, SocketAddr::from((b.ip, 9000)), true).unwrap();
    assert_eq!((greeting.as_str(), echo.as_str()), ("b\n", "ping\n"));

    // ...and a's mTLS still is, with its identity.
    let (rc, out) = a.curl(&["http://svc-b/mtls"]);
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("URI=spiffe://cluster.local/ns/default/sa/a"), "{out}");
    assert!(a.cp().nacks().is_empty() && b.cp().nacks().is_empty(), "{:?} {:?}", a.cp().nacks(), b.cp().nacks());
}

/// The reference Envoy as b's sidecar (its config without Istio's own extensions, which
/// upstream Envoy lacks): remora's outbound speaks to it over mTLS with HTTP/1.1, h2c, gRPC
/// and TCP, Envoy's inbound checks a's certificate and forwards a's identity.
#[test]
fn remora_client_sidecar_to_envoy_server_sidecar() {
    if mesh::skip("remora_client_sidecar_to_envoy_server_sidecar") {
        return;
    }
    if mesh::envoy_bin().is_none() {
        assert!(std::env::var("REMORA_DIFF_REQUIRE").as_deref() != Ok("1"), "no reference Envoy");
        eprintln!("skipped: no reference Envoy");
        return;
    }
    let w = world_with("e", Mtls::Strict, Proxy::Envoy);
    let (a, b) = (&w.a, &w.b);
    for (args, version) in
        [(vec!["http://svc-b/e1"], "HTTP/1.1"), (vec!["--http2-prior-knowledge", "http://svc-b/e2"], "HTTP/2.0")]
    {
        let (rc, out) = a.curl(&args);
        assert_eq!((rc, out.lines().next()), (0, Some("200")), "{out}\n{}", logs(&w));
        assert!(out.contains(&format!("b {version} xfcc=")), "{out}");
        assert!(out.contains("URI=spiffe://cluster.local/ns/default/sa/a"), "{out}");
    }
    let (status, msg) =
        grpc_call(&a.ns, SocketAddr::from((SVC_B_VIP, 80)), "svc-b").unwrap_or_else(|e| panic!("{e}\n{}", logs(&w)));
    assert_eq!(status, "0", "{msg}");
    let tcp = tcp_ping(&a.ns, SocketAddr::from((SVC_B_VIP, 9000)), false);
    assert_eq!(tcp, Ok(("b\n".into(), "ping\n".into())), "{}", logs(&w));
    assert!(b.stat("listener.0.0.0.0_15006.ssl.handshake").unwrap_or(0) >= 3, "{}", logs(&w));
    assert!(a.cp().nacks().is_empty() && b.cp().nacks().is_empty(), "{:?} {:?}", a.cp().nacks(), b.cp().nacks());
}
