//! Istio's TCP metadata exchange between two remora sidecars, in the shape istiod generates:
//! the outbound cluster offers ALPN `istio-peer-exchange` and carries the
//! `istio.metadata_exchange` upstream filter; the inbound TLS chain runs the network filter
//! before `tcp_proxy`. Both sides swap headers and the app sees only its own bytes, both ways,
//! including a server-first greeting. A raw TLS client that negotiates the ALPN but does not
//! speak the exchange is passed through (as Istio does) after receiving remora's header.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use certs::SpiffeId;
use certs::dev_ca::{CaOptions, DevCa, WorkloadOptions};
use common::{Remora, free_port, tcp_echo};

const MX: &str = r#"name: istio.metadata_exchange
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange
          value: {protocol: istio-peer-exchange, enable_discovery: true}"#;

fn bootstrap(admin: u16, outbound: u16, inbound: u16, app: u16, d: &str) -> String {
    format!(
        r#"
node:
  id: sidecar~127.0.0.1~app-1.default~default.svc.cluster.local
  cluster: app.default
  metadata: {{NAMESPACE: default, WORKLOAD_NAME: app, CLUSTER_ID: Kubernetes, LABELS: {{app: app}}}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: outbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {outbound}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: outbound
          cluster: "outbound|9000||svc.default.svc.cluster.local"
  - name: inbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {inbound}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [istio-peer-exchange, h2, http/1.1]
            tls_certificates: [{{certificate_chain: {{filename: {d}/me.pem}}, private_key: {{filename: {d}/me.key}}}}]
            validation_context: {{trusted_ca: {{filename: {d}/ca.pem}}}}
      filters:
      - {MX}
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: inbound
          cluster: "inbound|9000||"
  clusters:
  - name: "outbound|9000||svc.default.svc.cluster.local"
    connect_timeout: 1s
    filters:
      - {MX}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: outbound_.9000_._.svc.default.svc.cluster.local
        common_tls_context:
          alpn_protocols: [istio-peer-exchange, istio]
          tls_certificates: [{{certificate_chain: {{filename: {d}/me.pem}}, private_key: {{filename: {d}/me.key}}}}]
          validation_context:
            trusted_ca: {{filename: {d}/ca.pem}}
            match_subject_alt_names: [{{exact: "spiffe://cluster.local/ns/default/sa/app"}}]
    load_assignment: {{cluster_name: svc, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {inbound}}}}}}}}}]}}]}}
  - name: "inbound|9000||"
    connect_timeout: 1s
    load_assignment: {{cluster_name: app, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {app}}}}}}}}}]}}]}}
"#
    )
}

#[test]
fn tcp_metadata_exchange_between_sidecars() {
    let dir = std::env::temp_dir().join(format!("remora-mx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = DevCa::new_root(&CaOptions::default()).unwrap();
    let me = ca
        .issue(&WorkloadOptions::spiffe(SpiffeId::parse("spiffe://cluster.local/ns/default/sa/app").unwrap()))
        .unwrap();
    std::fs::write(dir.join("me.pem"), &me.chain_pem).unwrap();
    std::fs::write(dir.join("me.key"), &me.key_pem).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    let app = tcp_echo("hello\n");
    let (admin, outbound, inbound) = (free_port(), free_port(), free_port());
    let r = Remora::start(&bootstrap(admin, outbound, inbound, app, &dir.display().to_string()), admin);
    let log = || std::fs::read_to_string(&r.log).unwrap_or_default();

    // Through both sidecars: the greeting arrives clean, then the echo.
    let mut s = TcpStream::connect(("127.0.0.1", outbound)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = [0u8; 6];
    s.read_exact(&mut got).unwrap_or_else(|e| panic!("{e}\n{}", log()));
    assert_eq!(&got, b"hello\n", "the app's greeting must arrive without exchange headers");
    s.write_all(b"ping\n").unwrap();
    let mut echo = [0u8; 5];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping\n");
    drop(s);
    assert!(r.stat("cluster.outbound|9000||svc.default.svc.cluster.local.ssl.handshake").unwrap_or(0) >= 1);

    // A TLS client negotiating the ALPN without speaking the exchange: it first receives
    // remora's header (magic 0x3D230467), then its bytes reach the app untouched.
    let mut child = std::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &format!("127.0.0.1:{inbound}"), "-alpn", "istio-peer-exchange"])
        .args(["-cert", &dir.join("me.pem").display().to_string(), "-key", &dir.join("me.key").display().to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.as_mut().unwrap().write_all(b"raw-bytes\n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap().stdout;
    assert!(out.starts_with(&0x3D23_0467u32.to_be_bytes()), "no exchange header first: {out:?}");
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("hello\n") && text.contains("raw-bytes\n"), "passthrough failed: {text:?}");
    std::fs::remove_dir_all(&dir).ok();
}

fn peer_filter(dir: &str) -> String {
    format!(
        r#"- name: istio.metadata_exchange
            typed_config:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/io.istio.http.peer_metadata.Config
              value: {{{dir}_discovery: [{{istio_headers: {{}}}}, {{workload_discovery: {{}}}}], {dir}_propagation: [{{istio_headers: {{}}}}]}}"#
    )
}

fn http_listener(name: &str, port: u16, dir: &str) -> String {
    let filter = peer_filter(dir);
    format!(
        r#"  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts: [{{name: v, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: app}}}}]}}]
          http_filters:
          {filter}
          - {{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}
"#
    )
}

/// The HTTP peer metadata headers: an outbound HCM adds this node's headers to requests and
/// strips the upstream's from responses; an inbound HCM strips the caller's from requests and
/// answers with its own only to a caller that sent them.
#[test]
fn http_peer_metadata_headers() {
    use base64::Engine;
    use prost::Message;
    let app = support_upstream();
    let (admin, outbound, inbound) = (free_port(), free_port(), free_port());
    let yaml = format!(
        r#"
node:
  id: sidecar~127.0.0.1~app-1.default~default.svc.cluster.local
  cluster: app.default
  metadata: {{NAMESPACE: default, WORKLOAD_NAME: app, ISTIO_VERSION: "1.20.8"}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
{out}{inb}  clusters:
  - name: app
    connect_timeout: 1s
    load_assignment: {{cluster_name: app, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {app}}}}}}}}}]}}]}}
"#,
        out = http_listener("outbound", outbound, "upstream"),
        inb = http_listener("inbound", inbound, "downstream"),
    );
    let _r = Remora::start(&yaml, admin);
    let id = "sidecar~127.0.0.1~app-1.default~default.svc.cluster.local";

    // Outbound: the upstream receives this node's id and metadata (base64 Struct with the
    // exchange keys only); the upstream's own headers never reach the client.
    let r =
        curl(&format!("http://127.0.0.1:{outbound}/?echo=x-envoy-peer-metadata-id&h=x-envoy-peer-metadata-id:server"));
    assert_eq!(header(&r, "x-echo").as_deref(), Some(id), "{r}");
    assert_eq!(header(&r, "x-envoy-peer-metadata-id"), None, "the upstream's header must be stripped: {r}");
    let r = curl(&format!("http://127.0.0.1:{outbound}/?echo=x-envoy-peer-metadata"));
    let meta = header(&r, "x-echo").unwrap_or_default();
    let bytes = base64::engine::general_purpose::STANDARD.decode(meta.as_bytes()).unwrap();
    let s = envoy_types::pb::google::protobuf::Struct::decode(bytes.as_slice()).unwrap();
    assert!(s.fields.contains_key("NAMESPACE") && s.fields.contains_key("WORKLOAD_NAME"), "{s:?}");
    assert!(!s.fields.contains_key("ISTIO_VERSION"), "only the exchange keys travel: {s:?}");

    // Inbound: the caller's headers are removed before the app; the answer carries ours only
    // when the caller sent its own.
    let r = curl_h(
        &format!("http://127.0.0.1:{inbound}/?echo=x-envoy-peer-metadata-id"),
        &["x-envoy-peer-metadata-id: client", &format!("x-envoy-peer-metadata: {meta}")],
    );
    assert_eq!(header(&r, "x-echo"), None, "the app must not see the caller's headers: {r}");
    assert_eq!(header(&r, "x-envoy-peer-metadata-id").as_deref(), Some(id), "{r}");
    assert!(header(&r, "x-envoy-peer-metadata").is_some(), "{r}");
    let r = curl(&format!("http://127.0.0.1:{inbound}/"));
    assert_eq!(header(&r, "x-envoy-peer-metadata-id"), None, "a caller outside the mesh gets nothing: {r}");
}

/// The tiny upstream of the differential tests (query `echo=`, `h=`), on loopback.
fn support_upstream() -> u16 {
    support::upstream()
}

fn curl(url: &str) -> String {
    curl_h(url, &[])
}

fn curl_h(url: &str, headers: &[&str]) -> String {
    let mut c = std::process::Command::new("curl");
    c.args(["-s", "-D", "-", "-o", "/dev/null", "--max-time", "5"]);
    for h in headers {
        c.args(["-H", h]);
    }
    String::from_utf8_lossy(&c.arg(url).output().unwrap().stdout).to_string()
}

fn header(resp: &str, name: &str) -> Option<String> {
    resp.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// `istio.alpn`: an outbound HCM with the filter offers `istio-http/1.1` upstream, so an Istio
/// inbound listener picks its HTTP chain by `application_protocols`; without the filter the
/// cluster's `istio-peer-exchange, istio` lands on the TCP chain.
#[test]
fn istio_alpn_selects_the_peers_http_chain() {
    let dir = std::env::temp_dir().join(format!("remora-alpn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = DevCa::new_root(&CaOptions::default()).unwrap();
    let me = ca
        .issue(&WorkloadOptions::spiffe(SpiffeId::parse("spiffe://cluster.local/ns/default/sa/app").unwrap()))
        .unwrap();
    std::fs::write(dir.join("me.pem"), &me.chain_pem).unwrap();
    std::fs::write(dir.join("me.key"), &me.key_pem).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    let d = dir.display().to_string();
    let (admin, with, without, inbound) = (free_port(), free_port(), free_port(), free_port());
    let alpn_filter = r#"- name: istio.alpn
            typed_config:
              "@type": type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig
              alpn_override:
              - {alpn_override: [istio-http/1.0, istio, http/1.0]}
              - {upstream_protocol: HTTP11, alpn_override: [istio-http/1.1, istio, http/1.1]}
              - {upstream_protocol: HTTP2, alpn_override: [istio-h2, istio, h2]}"#;
    let outbound = |name: &str, port: u16, filter: &str| {
        format!(
            r#"  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts: [{{name: v, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: peer}}}}]}}]
          http_filters:
          {filter}
          - {{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}
"#
        )
    };
    let chain = |protocols: &str, alpn: &str, body: &str| {
        format!(
            r#"    - filter_chain_match: {{transport_protocol: tls, application_protocols: [{protocols}]}}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [{alpn}]
            tls_certificates: [{{certificate_chain: {{filename: {d}/me.pem}}, private_key: {{filename: {d}/me.key}}}}]
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {body}
          route_config:
            virtual_hosts: [{{name: v, domains: ["*"], routes: [{{match: {{prefix: "/"}}, direct_response: {{status: 200, body: {{inline_string: {body}}}}}}}]}}]
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
"#
        )
    };
    let yaml = format!(
        r#"
node: {{id: "sidecar~127.0.0.1~app-1.default~default.svc.cluster.local", cluster: app.default}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
{with_l}{without_l}  - name: inbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {inbound}}}}}
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}
    filter_chains:
{http_chain}{tcp_chain}  clusters:
  - name: peer
    connect_timeout: 1s
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          alpn_protocols: [istio-peer-exchange, istio]
          validation_context: {{trusted_ca: {{filename: {d}/ca.pem}}}}
    load_assignment: {{cluster_name: peer, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {inbound}}}}}}}}}]}}]}}
"#,
        with_l = outbound("with_alpn", with, alpn_filter),
        without_l = outbound("without_alpn", without, ""),
        http_chain = chain("istio-http/1.0, istio-http/1.1, istio-h2", "h2, http/1.1", "http-chain"),
        tcp_chain = chain("istio-peer-exchange, istio", "istio-peer-exchange, h2, http/1.1", "tcp-chain"),
    );
    let _r = Remora::start(&yaml, admin);
    let body = |port: u16| {
        let out = std::process::Command::new("curl")
            .args(["-s", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{port}/"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(body(with), "http-chain");
    assert_eq!(body(without), "tcp-chain");
    std::fs::remove_dir_all(&dir).ok();
}
