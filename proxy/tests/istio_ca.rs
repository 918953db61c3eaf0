//! `--ca-address`: remora gets its workload certificate from an Istio CA (the in-process test CA
//! of the certs crate: real gRPC over TLS, CSR checked for SAN, key type and token) and its TLS
//! listener, which names the SDS secrets `default` and `ROOTCA` as istiod's listeners do, serves
//! it; openssl checks the chain against the CA's root and reads the SPIFFE ID.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use certs::SpiffeId;
use certs::test_util::{TestCaOptions, TestCaServer};
use common::free_port;

const ID: &str = "spiffe://cluster.local/ns/shop/sa/cart";

fn bootstrap(admin: u16, port: u16) -> String {
    format!(
        r#"
node:
  id: sidecar~127.0.0.1~cart.shop~shop.svc.cluster.local
  cluster: cart.shop
  metadata: {{NAMESPACE: shop, SERVICE_ACCOUNT: cart}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: inbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - name: default
              sds_config: {{api_config_source: {{api_type: GRPC, grpc_services: [{{envoy_grpc: {{cluster_name: sds-grpc}}}}]}}}}
            validation_context_sds_secret_config:
              name: ROOTCA
              sds_config: {{api_config_source: {{api_type: GRPC, grpc_services: [{{envoy_grpc: {{cluster_name: sds-grpc}}}}]}}}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: /}}, direct_response: {{status: 200, body: {{inline_string: hello}}}}}}]
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
  clusters:
  - name: sds-grpc
    type: STATIC
    load_assignment:
      cluster_name: sds-grpc
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{pipe: {{path: /nonexistent/remora-test-sds}}}}}}}}]}}]
"#
    )
}

#[test]
fn workload_certificate_comes_from_the_istio_ca() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = rt
        .block_on(TestCaServer::start(TestCaOptions {
            token: Some("tok".into()),
            identity: Some(SpiffeId::parse(ID).unwrap()),
            ..Default::default()
        }))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.pem");
    std::fs::write(&root, ca.root_pem()).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "tok\n").unwrap();
    let cfg = dir.path().join("bootstrap.yaml");
    let (admin, port) = (free_port(), free_port());
    std::fs::write(&cfg, bootstrap(admin, port)).unwrap();
    let log = dir.path().join("remora.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_remora"))
        .args(["-c", cfg.to_str().unwrap(), "--concurrency", "1", "-l", "info"])
        .args(["--ca-address", &ca.addr().to_string(), "--ca-server-name", ca.server_name()])
        .args(["--ca-root-cert", root.to_str().unwrap(), "--ca-token-file", token.to_str().unwrap()])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();

    // The listener warms until the secrets arrive, then serves the CA-issued certificate.
    let deadline = Instant::now() + Duration::from_secs(20);
    let pem = loop {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-CAfile", root.to_str().unwrap()])
            .args(["-verify_return_error", "-showcerts"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() && text.contains("Verify return code: 0 (ok)") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no verified handshake; openssl: {text}{}\nremora log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let leaf_start = pem.find("-----BEGIN CERTIFICATE-----").unwrap();
    let leaf_end = pem.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    let leaf = dir.path().join("leaf.pem");
    std::fs::write(&leaf, &pem[leaf_start..leaf_end]).unwrap();
    let san = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in", leaf.to_str().unwrap()])
        .output()
        .unwrap();
    let san = String::from_utf8_lossy(&san.stdout);
    assert!(san.contains(&format!("URI:{ID}")), "leaf SAN: {san}");
    assert!(ca.issued() >= 1, "the CA issued nothing");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn missing_ca_root_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bootstrap.yaml");
    std::fs::write(&cfg, bootstrap(free_port(), free_port())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_remora"))
        .args(["-c", cfg.to_str().unwrap(), "--ca-address", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca-root-cert"), "{out:?}");
}
