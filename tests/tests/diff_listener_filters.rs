//! Listener filter timeouts against the reference Envoy: a client that sends nothing within
//! `listener_filters_timeout` (a server-first protocol behind a TLS inspector) is closed and
//! counted in `downstream_pre_cx_timeout`, unless `continue_on_listener_filters_timeout`, where
//! the connection goes on to its filter chain with what was found (Istio's setting).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tests::{Kind, Options, Proxy, Vars};

const BOOTSTRAP: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: {{port:admin}}}}
static_resources:
  listeners:
  - name: strict
    address: {socket_address: {address: 127.0.0.1, port_value: {{port:strict}}}}
    listener_filters_timeout: 0.3s
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}
    filter_chains: [{filters: [{name: envoy.filters.network.http_connection_manager, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: strict, http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}], route_config: {virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, direct_response: {status: 200, body: {inline_string: strict}}}]}]}}}]}]
  - name: lenient
    address: {socket_address: {address: 127.0.0.1, port_value: {{port:lenient}}}}
    listener_filters_timeout: 0.3s
    continue_on_listener_filters_timeout: true
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}
    filter_chains: [{filters: [{name: envoy.filters.network.http_connection_manager, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: lenient, http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}], route_config: {virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, direct_response: {status: 200, body: {inline_string: lenient}}}]}]}}}]}]
"#;

/// Connects, stays silent past the timeout, then sends a request: the status line, or None if
/// the proxy closed the connection.
fn late_request(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::thread::sleep(Duration::from_millis(900));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(n) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_string()),
        _ => None,
    }
}

fn scenario(kind: Kind) -> Vec<String> {
    let p = Proxy::start(kind, BOOTSTRAP, Vars::new(), &Options::default()).unwrap();
    let (strict, lenient) = (p.port("strict"), p.port("lenient"));
    let a = late_request(strict);
    let b = late_request(lenient);
    let timeouts = |port: u16| p.stat(&format!("listener.127.0.0.1_{port}.downstream_pre_cx_timeout")).unwrap_or(-1);
    vec![
        format!("strict: {a:?}"),
        format!("lenient: {b:?}"),
        format!("strict timeouts: {}", timeouts(strict)),
        format!("lenient timeouts: {}", timeouts(lenient)),
    ]
}

#[test]
fn listener_filter_timeout_closes_or_continues() {
    if tests::envoy_bin().is_none() || tests::remora_bin().ok().flatten().is_none() {
        assert!(std::env::var("REMORA_DIFF_REQUIRE").as_deref() != Ok("1"), "needs ENVOY_BIN and REMORA_BIN");
        return;
    }
    let envoy = scenario(Kind::Envoy);
    assert_eq!(envoy[0], "strict: None", "{envoy:#?}");
    assert_eq!(envoy[1], "lenient: Some(\"HTTP/1.1 200 OK\")", "{envoy:#?}");
    let remora = scenario(Kind::Remora);
    assert_eq!(remora, envoy);
}
