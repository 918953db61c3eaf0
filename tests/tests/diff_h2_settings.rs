//! HTTP/2 flow-control settings against the reference Envoy: the HCM's
//! `http2_protocol_options` (`initial_stream_window_size`, `initial_connection_window_size`,
//! `max_concurrent_streams`) as a real HTTP/2 client (nghttp) sees them in the proxy's SETTINGS
//! and its connection-level WINDOW_UPDATE.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use tests::{Kind, Options, Proxy, Vars};

const BOOTSTRAP: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: {{port:admin}}}}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: {{port:listener}}}}
    filter_chains: [{filters: [{name: envoy.filters.network.http_connection_manager, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: h2, codec_type: HTTP2, http2_protocol_options: {initial_stream_window_size: 65536, initial_connection_window_size: 1048576, max_concurrent_streams: 77}, http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}], route_config: {virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, direct_response: {status: 200, body: {inline_string: ok}}}]}]}}}]}]
"#;

/// The settings the proxy announced and the connection window it opened.
fn settings(kind: Kind) -> Vec<String> {
    let p = Proxy::start(kind, BOOTSTRAP, Vars::new(), &Options::default()).unwrap();
    let out = Command::new("nghttp")
        .args(["-nv", &format!("http://127.0.0.1:{}/", p.port("listener"))])
        .output()
        .expect("nghttp (scripts/install-test-deps installs nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut seen = Vec::new();
    let mut in_settings = false;
    let mut in_window_update = false;
    for line in text.lines() {
        let l = line.trim();
        if l.contains("recv SETTINGS frame") {
            in_settings = !l.contains("ACK");
            in_window_update = false;
            continue;
        }
        if l.contains("recv WINDOW_UPDATE frame") && l.contains("stream_id=0") {
            in_window_update = true;
            in_settings = false;
            continue;
        }
        if l.contains("frame <") {
            in_settings = false;
            in_window_update = false;
        }
        for key in ["SETTINGS_INITIAL_WINDOW_SIZE", "SETTINGS_MAX_CONCURRENT_STREAMS"] {
            if in_settings && l.starts_with(&format!("[{key}")) {
                seen.push(l.to_string());
            }
        }
        if in_window_update && l.starts_with("(window_size_increment=") {
            seen.push(format!("connection {l}"));
        }
    }
    seen.sort();
    seen
}

#[test]
fn http2_windows_and_stream_limit() {
    if tests::envoy_bin().is_none() || tests::remora_bin().ok().flatten().is_none() {
        assert!(std::env::var("REMORA_DIFF_REQUIRE").as_deref() != Ok("1"), "needs ENVOY_BIN and REMORA_BIN");
        return;
    }
    let envoy = settings(Kind::Envoy);
    assert!(envoy.iter().any(|s| s.contains("SETTINGS_INITIAL_WINDOW_SIZE(0x04):65536")), "{envoy:#?}");
    assert!(envoy.iter().any(|s| s.contains("SETTINGS_MAX_CONCURRENT_STREAMS(0x03):77")), "{envoy:#?}");
    let remora = settings(Kind::Remora);
    assert_eq!(remora, envoy);
}
