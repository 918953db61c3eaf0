#![allow(clippy::unwrap_used, clippy::expect_used)]
//! tcp_proxy, filter chain selection by the HTTP inspector's verdict, WebSocket upgrades and
//! graceful drain on SIGTERM, through the real remora binary on loopback.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn hcm(prefix: &str, cluster: &str, upgrades: bool) -> String {
    let up = if upgrades { "upgrade_configs: [{upgrade_type: websocket}]" } else { "" };
    format!(
        r#"
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {prefix}
          {up}
          route_config:
            virtual_hosts: [{{name: v, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: {cluster}, timeout: 0s}}}}]}}]
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]"#
    )
}

fn cluster(name: &str, port: u16) -> String {
    format!(
        r#"
  - name: {name}
    connect_timeout: 1s
    load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]}}"#
    )
}

#[test]
fn http_inspector_splits_http_and_raw_tcp_on_one_port() {
    let echo = tcp_echo("hello-tcp\n");
    let web = http_server("web", Duration::ZERO);
    let (admin, port) = (free_port(), free_port());
    let yaml = format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: mixed
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    listener_filters:
    - name: envoy.filters.listener.http_inspector
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector}}
    listener_filters_timeout: 0.2s
    filter_chains:
    - name: http
      filter_chain_match: {{application_protocols: ["http/1.1", "h2c"]}}
      filters:{hcm}
    - name: tcp
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: raw
          cluster: echo
  clusters:{c1}{c2}
"#,
        hcm = hcm("mixed", "web", false),
        c1 = cluster("echo", echo),
        c2 = cluster("web", web),
    );
    let r = Remora::start(&yaml, admin);
    // HTTP goes to the HTTP chain.
    assert_eq!(http_get(port, "/"), Some((200, "web".to_string())));
    // Raw bytes that are not HTTP go to the TCP chain (after the inspector gives up on them).
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"\x00\x01binary").unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 64];
    while got.len() < "hello-tcp\n".len() + 8 {
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "connection closed early: {got:?}");
        got.extend_from_slice(&b[..n]);
    }
    assert_eq!(&got[..], b"hello-tcp\n\x00\x01binary");
    drop(s);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(r.stat("tcp.raw.downstream_cx_total"), Some(1));
    assert!(r.stat("http.mixed.downstream_rq_total").unwrap_or(0) >= 1);
}

#[test]
fn websocket_upgrade_is_spliced() {
    // Upstream: answers 101 then echoes with a prefix.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut b = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut b).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&b[..n]);
                }
                let req = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                assert!(req.contains("upgrade: websocket"), "{req}");
                s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                    .unwrap();
                loop {
                    let n = s.read(&mut b).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    let mut out = b"echo:".to_vec();
                    out.extend_from_slice(&b[..n]);
                    s.write_all(&out).unwrap();
                }
            });
        }
    });
    let (admin, port) = (free_port(), free_port());
    let yaml = format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: ws
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:{hcm}
  clusters:{c}
"#,
        hcm = hcm("ws", "ws", true),
        c = cluster("ws", up),
    );
    let _r = Remora::start(&yaml, admin);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").unwrap();
    let mut b = [0u8; 1024];
    let n = s.read(&mut b).unwrap();
    let head = String::from_utf8_lossy(&b[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping").unwrap();
    let n = s.read(&mut b).unwrap();
    assert_eq!(&b[..n], b"echo:ping");
}

#[test]
fn sigterm_finishes_in_flight_requests() {
    let slow = http_server("slow-done", Duration::from_millis(800));
    let (admin, port) = (free_port(), free_port());
    let yaml = format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:{hcm}
  clusters:{c}
"#,
        hcm = hcm("drain", "slow", false),
        c = cluster("slow", slow),
    );
    let mut r = Remora::start(&yaml, admin);
    let t = std::thread::spawn(move || http_get(port, "/"));
    std::thread::sleep(Duration::from_millis(200));
    r.sigterm();
    assert_eq!(t.join().unwrap(), Some((200, "slow-done".to_string())));
    // New connections are refused once draining started.
    std::thread::sleep(Duration::from_millis(300));
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err() || http_get(port, "/").is_none());
    let status = r.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
