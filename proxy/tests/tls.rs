#![allow(clippy::unwrap_used, clippy::expect_used)]
//! TLS transport sockets end to end: an mTLS sidecar pair inside one remora (outbound listener:
//! plaintext in, mTLS out; inbound listener: mTLS in with SPIFFE SAN checks) and real curl as
//! the client, with the refusals counted in Envoy's `ssl.*` stats.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};

struct Pki {
    dir: std::path::PathBuf,
}

fn write(dir: &Path, name: &str, data: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p.to_str().unwrap().to_string()
}

/// A CA, and leaf certificates with a SPIFFE URI SAN signed by it (or by a stranger CA).
fn pki() -> Pki {
    let dir = std::env::temp_dir().join(format!("remora-tls-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = |cn: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        (cert, key)
    };
    let (ca_cert, ca_key) = ca("remora test root");
    let (other_cert, other_key) = ca("stranger root");
    write(&dir, "ca.pem", &ca_cert.pem());
    let leaf = |name: &str, spiffe: &str, issuer_cert: &rcgen::Certificate, issuer_key: &KeyPair| {
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.subject_alt_names.push(SanType::URI(spiffe.try_into().unwrap()));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_ca_cert_der(issuer_cert.der(), issuer_key).unwrap();
        let cert = p.signed_by(&key, &issuer).unwrap();
        write(&dir, &format!("{name}.pem"), &cert.pem());
        write(&dir, &format!("{name}.key"), &key.serialize_pem());
    };
    leaf("server", "spiffe://cluster.local/ns/default/sa/server", &ca_cert, &ca_key);
    leaf("client", "spiffe://cluster.local/ns/default/sa/client", &ca_cert, &ca_key);
    leaf("intruder", "spiffe://cluster.local/ns/evil/sa/intruder", &ca_cert, &ca_key);
    leaf("stranger", "spiffe://cluster.local/ns/default/sa/client", &other_cert, &other_key);
    Pki { dir }
}

fn curl(args: &[&str]) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "5"])
        .args(args)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    (out.status.code().unwrap_or(-1), s)
}

#[test]
fn mtls_sidecar_pair_with_spiffe_checks() {
    let pki = pki();
    let d = pki.dir.to_str().unwrap();
    let app = http_server("app-b", Duration::ZERO);
    let (admin, outbound, inbound) = (free_port(), free_port(), free_port());
    let yaml = format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  secrets:
  - name: default
    tls_certificate:
      certificate_chain: {{filename: {d}/client.pem}}
      private_key: {{filename: {d}/client.key}}
  - name: ROOTCA
    validation_context:
      trusted_ca: {{filename: {d}/ca.pem}}
  listeners:
  - name: outbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {outbound}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound
          route_config:
            virtual_hosts: [{{name: v, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: svc-b}}}}]}}]
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
  - name: inbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {inbound}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{filename: {d}/server.pem}}
              private_key: {{filename: {d}/server.key}}
            alpn_protocols: ["h2", "http/1.1"]
            combined_validation_context:
              default_validation_context:
                match_typed_subject_alt_names:
                - san_type: URI
                  matcher: {{prefix: "spiffe://cluster.local/ns/default/"}}
              validation_context_sds_secret_config: {{name: ROOTCA}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          forward_client_cert_details: SANITIZE_SET
          route_config:
            virtual_hosts:
            - name: v
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: app}}
                request_headers_to_add:
                - header: {{key: x-peer, value: "%DOWNSTREAM_PEER_URI_SAN%"}}
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
  clusters:
  - name: svc-b
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: server.default
        common_tls_context:
          alpn_protocols: ["h2"]
          tls_certificate_sds_secret_configs: [{{name: default}}]
          combined_validation_context:
            default_validation_context:
              match_subject_alt_names: [{{exact: "spiffe://cluster.local/ns/default/sa/server"}}]
            validation_context_sds_secret_config: {{name: ROOTCA}}
    load_assignment: {{cluster_name: svc-b, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {inbound}}}}}}}}}]}}]}}
  - name: app
    connect_timeout: 1s
    load_assignment: {{cluster_name: app, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {app}}}}}}}}}]}}]}}
"#
    );
    let r = Remora::start(&yaml, admin);

    // Through the pair: plaintext in, mTLS (HTTP/2 over TLS) between the listeners.
    let (_, out) = curl(&[&format!("http://127.0.0.1:{outbound}/hello")]);
    assert!(out.ends_with("\n200") && out.starts_with("app-b"), "{out}");
    assert!(r.stat("cluster.svc-b.ssl.handshake").unwrap_or(0) >= 1);
    assert!(r.stat("cluster.svc-b.upstream_cx_http2_total").unwrap_or(0) >= 1);

    // curl with the client certificate is accepted.
    let url = format!("https://localhost:{inbound}/");
    let (code, out) = curl(&[
        "--cacert",
        &format!("{d}/ca.pem"),
        "--cert",
        &format!("{d}/client.pem"),
        "--key",
        &format!("{d}/client.key"),
        &url,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.ends_with("\n200"), "{out}");

    // Refused: no client certificate, a SAN outside the allowed namespace, an untrusted CA.
    let stat = |n: &str| r.stat(&format!("listener.127.0.0.1_{inbound}.ssl.{n}")).unwrap_or(0);
    let (code, _) = curl(&["--cacert", &format!("{d}/ca.pem"), &url]);
    assert_ne!(code, 0, "no client cert must be refused");
    let (code, _) = curl(&[
        "--cacert",
        &format!("{d}/ca.pem"),
        "--cert",
        &format!("{d}/intruder.pem"),
        "--key",
        &format!("{d}/intruder.key"),
        &url,
    ]);
    assert_ne!(code, 0, "a wrong SPIFFE ID must be refused");
    let (code, _) = curl(&[
        "--cacert",
        &format!("{d}/ca.pem"),
        "--cert",
        &format!("{d}/stranger.pem"),
        "--key",
        &format!("{d}/stranger.key"),
        &url,
    ]);
    assert_ne!(code, 0, "an untrusted CA must be refused");
    // Plaintext to the TLS listener is refused too.
    assert!(http_get(inbound, "/").is_none_or(|(s, _)| s != 200));
    std::thread::sleep(Duration::from_millis(200));
    assert!(stat("connection_error") >= 4, "connection_error={}", stat("connection_error"));
    assert!(stat("fail_verify_san") >= 1);
    assert!(stat("fail_verify_error") >= 1);
    std::fs::remove_dir_all(&pki.dir).ok();
}
