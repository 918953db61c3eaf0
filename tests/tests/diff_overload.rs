//! The overload manager's global downstream connection limit against the reference Envoy:
//! beyond `max_active_downstream_connections` a new connection is closed at once and counted in
//! `downstream_global_cx_overflow`; a listener with `ignore_global_conn_limit` is neither limited
//! nor counted (Istio sets it on its stats and health listeners).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tests::{Kind, Options, Proxy, Vars};

const BOOTSTRAP: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: {{port:admin}}}}
overload_manager:
  resource_monitors:
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
      max_active_downstream_connections: 2
static_resources:
  listeners:
  - name: limited
    address: {socket_address: {address: 127.0.0.1, port_value: {{port:limited}}}}
    filter_chains: [{filters: [{name: envoy.filters.network.http_connection_manager, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: limited, http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}], route_config: {virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, direct_response: {status: 200, body: {inline_string: limited}}}]}]}}}]}]
  - name: exempt
    ignore_global_conn_limit: true
    address: {socket_address: {address: 127.0.0.1, port_value: {{port:exempt}}}}
    filter_chains: [{filters: [{name: envoy.filters.network.http_connection_manager, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: exempt, http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}], route_config: {virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, direct_response: {status: 200, body: {inline_string: exempt}}}]}]}}}]}]
"#;

/// One HTTP/1.1 GET on an open connection: the status line, or None if the connection was
/// closed without an answer.
fn get_on(s: &mut TcpStream) -> Option<String> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").is_err() {
        return None;
    }
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).ok()?;
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_string())
}

fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).unwrap()
}

/// What a client sees for each step, to compare between the proxies.
fn scenario(kind: Kind) -> Vec<String> {
    let p = Proxy::start(kind, BOOTSTRAP, Vars::new(), &Options::default()).unwrap();
    let (limited, exempt) = (p.port("limited"), p.port("exempt"));
    let mut seen = Vec::new();
    // Two connections fill the limit (each answered, so both are established in the proxy).
    let mut a = connect(limited);
    let mut b = connect(limited);
    seen.push(format!("1st: {:?}", get_on(&mut a)));
    seen.push(format!("2nd: {:?}", get_on(&mut b)));
    // The third is closed at once.
    let mut c = connect(limited);
    seen.push(format!("3rd over the limit: {:?}", get_on(&mut c)));
    // The exempt listener still serves, and does not use up the limit.
    let mut e1 = connect(exempt);
    let mut e2 = connect(exempt);
    seen.push(format!("exempt 1: {:?}", get_on(&mut e1)));
    seen.push(format!("exempt 2: {:?}", get_on(&mut e2)));
    // One limited connection closes: a new one fits again (the proxy notices the close first).
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    let again = loop {
        let mut d = connect(limited);
        match get_on(&mut d) {
            Some(line) => break Some(line),
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            None => break None,
        }
    };
    seen.push(format!("after a close: {again:?}"));
    let overflow = p.stat(&format!("listener.127.0.0.1_{limited}.downstream_global_cx_overflow")).unwrap_or(0);
    let exempt_overflow = p.stat(&format!("listener.127.0.0.1_{exempt}.downstream_global_cx_overflow")).unwrap_or(0);
    seen.push(format!("overflow counted: {}", overflow >= 1));
    seen.push(format!("exempt overflow: {exempt_overflow}"));
    drop((b, c, e1, e2));
    seen
}

#[test]
fn global_connection_limit_and_ignore_global_conn_limit() {
    if tests::envoy_bin().is_none() || tests::remora_bin().ok().flatten().is_none() {
        assert!(std::env::var("REMORA_DIFF_REQUIRE").as_deref() != Ok("1"), "needs ENVOY_BIN and REMORA_BIN");
        return;
    }
    let envoy = scenario(Kind::Envoy);
    // Envoy's own behaviour, pinned so the comparison cannot pass on two wrong answers.
    assert_eq!(envoy[2], "3rd over the limit: None", "{envoy:#?}");
    assert_eq!(envoy[3], "exempt 1: Some(\"HTTP/1.1 200 OK\")", "{envoy:#?}");
    let remora = scenario(Kind::Remora);
    assert_eq!(remora, envoy);
}
