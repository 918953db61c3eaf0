//! mTLS with secrets over SDS and with the real Envoy as the peer sidecar:
//! - pilot-agent's shape: secrets `default` and `ROOTCA` served over `StreamSecrets` on the
//!   `sds-grpc` unix socket by the control-plane harness; the certificate is rotated twice
//!   under load and no request fails, and new handshakes present the new certificate;
//! - remora outbound -> Envoy inbound (Envoy checks remora's SPIFFE ID) and Envoy outbound ->
//!   remora inbound (remora checks Envoy's), both over HTTP/2 + mTLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use certs::SpiffeId;
use certs::dev_ca::{CaOptions, DevCa, IssuedCert, WorkloadOptions};
use common::{Remora, free_port, http_get, http_server};
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use xds_client::ads;
use xds_client::server::ControlPlane;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("remora-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn issue(ca: &DevCa, sa: &str) -> IssuedCert {
    let id = SpiffeId::parse(&format!("spiffe://cluster.local/ns/default/sa/{sa}")).unwrap();
    ca.issue(&WorkloadOptions::spiffe(id)).unwrap()
}

fn inline(pem: &str) -> Option<DataSource> {
    Some(DataSource { specifier: Some(Specifier::InlineString(pem.to_string())), ..Default::default() })
}

fn cert_secret(c: &IssuedCert) -> envoy_types::pb::google::protobuf::Any {
    xds_client::any::pack(&Secret {
        name: "default".into(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(&c.chain_pem),
            private_key: inline(&c.key_pem),
            ..Default::default()
        })),
    })
}

fn root_secret(ca: &DevCa) -> envoy_types::pb::google::protobuf::Any {
    xds_client::any::pack(&Secret {
        name: "ROOTCA".into(),
        r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: inline(ca.cert_pem()),
            ..Default::default()
        })),
    })
}

/// Istio's SDS config source, as in the listeners and clusters istiod generates.
const SDS: &str = "{api_config_source: {api_type: GRPC, transport_api_version: V3, \
    grpc_services: [{envoy_grpc: {cluster_name: sds-grpc}}]}, resource_api_version: V3}";

const H2: &str = r#"typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"#;

fn hcm(prefix: &str, cluster: &str) -> String {
    format!(
        r#"- name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {prefix}
          forward_client_cert_details: APPEND_FORWARD
          set_current_client_cert_details: {{uri: true}}
          route_config:
            virtual_hosts: [{{name: v, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: {cluster}}}}}]}}]
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]"#
    )
}

/// The sidecar pair over SDS: `outbound` (plaintext) -> svc-b (mTLS, h2, 3 requests per
/// connection so handshakes keep happening) -> `inbound` (mTLS) -> app.
fn sds_bootstrap(admin: u16, outbound: u16, inbound: u16, app: u16, sock: &Path) -> String {
    let (sock, hcm_out, hcm_in) = (sock.display(), hcm("outbound", "svc-b"), hcm("inbound", "app"));
    format!(
        r#"
node: {{id: "sidecar~127.0.0.1~app.default~default.svc.cluster.local", cluster: app.default}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: outbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {outbound}}}}}
    filter_chains:
    - filters:
      {hcm_out}
  - name: inbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {inbound}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificate_sds_secret_configs: [{{name: default, sds_config: {SDS}}}]
            combined_validation_context:
              default_validation_context:
                match_typed_subject_alt_names: [{{san_type: URI, matcher: {{prefix: "spiffe://cluster.local/"}}}}]
              validation_context_sds_secret_config: {{name: ROOTCA, sds_config: {SDS}}}
      filters:
      {hcm_in}
  clusters:
  - name: sds-grpc
    type: STATIC
    connect_timeout: 1s
    {H2}
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: sds-grpc
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{pipe: {{path: "{sock}"}}}}}}}}]}}]
  - name: svc-b
    connect_timeout: 1s
    {H2}
        common_http_protocol_options: {{max_requests_per_connection: 3}}
        explicit_http_config: {{http2_protocol_options: {{}}}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: outbound_.80_._.svc-b.default.svc.cluster.local
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificate_sds_secret_configs: [{{name: default, sds_config: {SDS}}}]
          combined_validation_context:
            default_validation_context:
              match_subject_alt_names: [{{exact: "spiffe://cluster.local/ns/default/sa/app"}}]
            validation_context_sds_secret_config: {{name: ROOTCA, sds_config: {SDS}}}
    load_assignment: {{cluster_name: svc-b, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {inbound}}}}}}}}}]}}]}}
  - name: app
    connect_timeout: 1s
    load_assignment: {{cluster_name: app, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {app}}}}}}}}}]}}]}}
"#
    )
}

/// The leaf certificate a TLS server on `port` presents (PEM), via `openssl s_client`.
fn presented(port: u16, dir: &Path) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "x"])
        .args(["-cert", &dir.join("client.pem").display().to_string()])
        .args(["-key", &dir.join("client.key").display().to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find("-----BEGIN CERTIFICATE-----").unwrap_or(0);
    let end = text.find("-----END CERTIFICATE-----").map(|e| e + 25).unwrap_or(0);
    text.get(start..end).unwrap_or_default().to_string()
}

fn first_pem(chain: &str) -> String {
    let end = chain.find("-----END CERTIFICATE-----").map(|e| e + 25).unwrap_or(0);
    chain[..end].to_string()
}

#[test]
fn sds_over_unix_socket_rotation_under_load() {
    let dir = tmpdir("sds-mtls");
    let sock = dir.join("sds.sock");
    let ca = DevCa::new_root(&CaOptions::default()).unwrap();
    let client = issue(&ca, "tester");
    std::fs::write(dir.join("client.pem"), &client.chain_pem).unwrap();
    std::fs::write(dir.join("client.key"), &client.key_pem).unwrap();
    let first = issue(&ca, "app");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let cp = ControlPlane::new();
    cp.set(ads::SECRET, "default", cert_secret(&first));
    cp.set(ads::SECRET, "ROOTCA", root_secret(&ca));
    rt.block_on(cp.serve_unix(&sock)).unwrap();

    let app = http_server("app", Duration::ZERO);
    let (admin, outbound, inbound) = (free_port(), free_port(), free_port());
    let r = Remora::start(&sds_bootstrap(admin, outbound, inbound, app, &sock), admin);
    let log = || std::fs::read_to_string(&r.log).unwrap_or_default();

    // The secrets came over SDS (StreamSecrets, by name) and were ACKed. The admin port can
    // answer before the SDS stream has subscribed: wait for it (on a loaded machine it takes a
    // moment).
    let subscribed = || cp.subscribed(ads::SECRET).map(|s| s.names.into_iter().collect::<Vec<_>>()).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while subscribed().len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let sub = subscribed();
    assert!(sub.contains(&"default".to_string()) && sub.contains(&"ROOTCA".to_string()), "subscribed {sub:?}");
    // Subscribed is not yet applied: wait for the ACK (remora ACKs once the secrets are in).
    let acked =
        rt.block_on(cp.wait_for(|cp| cp.acks().iter().any(|a| a.type_url == ads::SECRET), Duration::from_secs(10)));
    assert!(acked, "secrets not ACKed: {}", log());
    assert!(cp.nacks().is_empty(), "NACKs {:?}", cp.nacks());
    assert_eq!(http_get(outbound, "/"), Some((200, "app".into())), "{}", log());
    assert_eq!(presented(inbound, &dir), first_pem(&first.chain_pem));

    // Load through the pair while the certificate rotates twice.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match http_get(outbound, "/") {
                        Some((200, body)) if body == "app" => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_secs(2));
        let before = ok.load(Ordering::Relaxed);
        let current = issue(&ca, "app");
        cp.set(ads::SECRET, "default", cert_secret(&current));
        let want = first_pem(&current.chain_pem);
        let deadline = Instant::now() + Duration::from_secs(5);
        while presented(inbound, &dir) != want {
            assert!(Instant::now() < deadline, "new handshakes still present the old certificate\n{}", log());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(ok.load(Ordering::Relaxed) > before, "no traffic flowed while rotating");
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("rotation under load: {ok} requests, {failed} failed");
    assert_eq!(failed, 0, "requests failed during rotation ({ok} ok)\n{}", log());
    assert!(ok > 100, "too little load to mean anything: {ok}");
    assert!(cp.nacks().is_empty(), "NACKs {:?}", cp.nacks());
    // Handshakes kept happening (3 requests per upstream connection), all of them verified.
    assert!(r.stat("cluster.svc-b.ssl.handshake").unwrap_or(0) > 10);
    assert_eq!(r.stat("cluster.svc-b.ssl.fail_verify_san").unwrap_or(0), 0);
    drop(r);
    cp.stop();
    std::fs::remove_dir_all(&dir).ok();
}

fn tls_upstream_cluster(name: &str, port: u16, d: &str, san: &str) -> String {
    format!(
        r#"  - name: {name}
    connect_timeout: 1s
    {H2}
        explicit_http_config: {{http2_protocol_options: {{}}}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificates: [{{certificate_chain: {{filename: {d}/me.pem}}, private_key: {{filename: {d}/me.key}}}}]
          validation_context:
            trusted_ca: {{filename: {d}/ca.pem}}
            match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: "{san}"}}}}]
    load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]}}
"#
    )
}

/// One sidecar: `outbound` (plaintext) -> peer's inbound over mTLS checking `peer_san`;
/// `inbound` (mTLS, client SAN checked against `peer_san`) -> app.
fn peer_bootstrap(
    admin: u16,
    outbound: u16,
    inbound: u16,
    peer_inbound: u16,
    app: u16,
    d: &str,
    peer_san: &str,
) -> String {
    let (hcm_out, hcm_in) = (hcm("outbound", "peer"), hcm("inbound", "app"));
    let peer = tls_upstream_cluster("peer", peer_inbound, d, peer_san);
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: outbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {outbound}}}}}
    filter_chains:
    - filters:
      {hcm_out}
  - name: inbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {inbound}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates: [{{certificate_chain: {{filename: {d}/me.pem}}, private_key: {{filename: {d}/me.key}}}}]
            validation_context:
              trusted_ca: {{filename: {d}/ca.pem}}
              match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: "{peer_san}"}}}}]
      filters:
      {hcm_in}
  clusters:
{peer}  - name: app
    connect_timeout: 1s
    load_assignment: {{cluster_name: app, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {app}}}}}}}}}]}}]}}
"#
    )
}

/// The app behind each sidecar reports the XFCC it received (the caller's identity).
fn xfcc_app() -> u16 {
    support::upstream()
}

#[test]
fn envoy_is_the_peer_sidecar_in_both_directions() {
    let Some(envoy_bin) = support::envoy_bin() else {
        eprintln!("SKIP: no Envoy binary (set ENVOY_BIN)");
        return;
    };
    let ca = DevCa::new_root(&CaOptions::default()).unwrap();
    let (rd, ed) = (tmpdir("peer-remora"), tmpdir("peer-envoy"));
    let remora_id = "spiffe://cluster.local/ns/default/sa/remora";
    let envoy_id = "spiffe://cluster.local/ns/default/sa/envoy";
    for (dir, sa) in [(&rd, "remora"), (&ed, "envoy")] {
        let c = issue(&ca, sa);
        std::fs::write(dir.join("me.pem"), &c.chain_pem).unwrap();
        std::fs::write(dir.join("me.key"), &c.key_pem).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    }
    let app = xfcc_app();
    let (r_admin, r_out, r_in) = (free_port(), free_port(), free_port());
    let (e_admin, e_out, e_in) = (free_port(), free_port(), free_port());
    let e_cfg = peer_bootstrap(e_admin, e_out, e_in, r_in, app, &ed.display().to_string(), remora_id);
    std::fs::write(ed.join("envoy.yaml"), e_cfg).unwrap();
    let mut envoy = Command::new(envoy_bin)
        .args(["-c", &ed.join("envoy.yaml").display().to_string(), "--concurrency", "1", "-l", "warning"])
        .args(["--disable-hot-restart", "--base-id", &free_port().to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(ed.join("envoy.log")).unwrap())
        .spawn()
        .unwrap();
    let remora =
        Remora::start(&peer_bootstrap(r_admin, r_out, r_in, e_in, app, &rd.display().to_string(), envoy_id), r_admin);
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(e_admin, "/ready").is_none_or(|(s, _)| s != 200) {
        assert!(
            Instant::now() < deadline,
            "envoy not ready: {}",
            std::fs::read_to_string(ed.join("envoy.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // remora outbound -> Envoy inbound: Envoy verified remora's SPIFFE ID and tells the app.
    let r = support::curl(&[&format!("http://127.0.0.1:{r_out}/?echo=x-forwarded-client-cert")]);
    assert_eq!(r.status, 200, "{r:?}\n{}", std::fs::read_to_string(&remora.log).unwrap_or_default());
    let xfcc = r.header("x-echo").unwrap_or_default().to_string();
    assert!(
        xfcc.starts_with(&format!("By={envoy_id};Hash=")) && xfcc.ends_with(&format!(";URI={remora_id}")),
        "{xfcc}"
    );
    assert!(remora.stat("cluster.peer.upstream_cx_http2_total").unwrap_or(0) >= 1);

    // Envoy outbound -> remora inbound: remora verified Envoy's SPIFFE ID and tells the app.
    let e = support::curl(&[&format!("http://127.0.0.1:{e_out}/?echo=x-forwarded-client-cert")]);
    assert_eq!(e.status, 200, "{e:?}");
    let xfcc = e.header("x-echo").unwrap_or_default().to_string();
    assert!(
        xfcc.starts_with(&format!("By={remora_id};Hash=")) && xfcc.ends_with(&format!(";URI={envoy_id}")),
        "{xfcc}"
    );
    assert!(remora.stat(&format!("listener.127.0.0.1_{r_in}.ssl.handshake")).unwrap_or(0) >= 1);

    // A remora sidecar with another identity is refused by Envoy's SAN check (remora's own
    // refusals are in tests/tls.rs).
    let intruder = issue(&ca, "intruder");
    let id = tmpdir("peer-intruder");
    std::fs::write(id.join("me.pem"), &intruder.chain_pem).unwrap();
    std::fs::write(id.join("me.key"), &intruder.key_pem).unwrap();
    std::fs::write(id.join("ca.pem"), ca.cert_pem()).unwrap();
    let (i_admin, i_out, i_in) = (free_port(), free_port(), free_port());
    let bad =
        Remora::start(&peer_bootstrap(i_admin, i_out, i_in, e_in, app, &id.display().to_string(), envoy_id), i_admin);
    let b = support::curl(&[&format!("http://127.0.0.1:{i_out}/")]);
    assert_eq!(b.status, 503, "Envoy must refuse a client with the wrong SPIFFE ID: {b:?}");
    drop(bad);
    let _ = envoy.kill();
    let _ = envoy.wait();
    drop(remora);
    for d in [rd, ed, id] {
        std::fs::remove_dir_all(d).ok();
    }
}

/// File-based SDS (`sds_config.path_config_source`), the standalone way: Envoy and remora run
/// the same bootstrap, and an atomic rename of the secret file rotates the certificate both
/// present on new handshakes.
#[test]
fn file_based_sds_rotates_like_envoy() {
    let dir = tmpdir("file-sds");
    let ca = DevCa::new_root(&CaOptions::default()).unwrap();
    let client = issue(&ca, "tester");
    std::fs::write(dir.join("client.pem"), &client.chain_pem).unwrap();
    std::fs::write(dir.join("client.key"), &client.key_pem).unwrap();
    let secret_file = dir.join("sds.yaml");
    let write_secret = |c: &IssuedCert, n: u32| {
        let (cert, key) = (dir.join(format!("cert{n}.pem")), dir.join(format!("key{n}.pem")));
        std::fs::write(&cert, &c.chain_pem).unwrap();
        std::fs::write(&key, &c.key_pem).unwrap();
        let body = format!(
            "version_info: \"{n}\"\nresources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  name: server\n  tls_certificate: {{certificate_chain: {{filename: {}}}, private_key: {{filename: {}}}}}\n",
            cert.display(),
            key.display()
        );
        let tmp = dir.join("sds.yaml.tmp");
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, &secret_file).unwrap();
    };
    let first = issue(&ca, "app");
    write_secret(&first, 1);
    let bootstrap = format!(
        r#"
node: {{id: standalone, cluster: demo}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {{ADMIN}}}}}}}}
static_resources:
  listeners:
  - name: tls
    address: {{socket_address: {{address: 127.0.0.1, port_value: {{PORT}}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - name: server
              sds_config: {{path_config_source: {{path: {file}}}, resource_api_version: V3}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: tls
          route_config:
            virtual_hosts: [{{name: v, domains: ["*"], routes: [{{match: {{prefix: "/"}}, direct_response: {{status: 200, body: {{inline_string: ok}}}}}}]}}]
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
"#,
        file = secret_file.display()
    );
    // Without a node id and cluster, both refuse a secret from a config source.
    let no_node = dir.join("no-node.yaml");
    std::fs::write(
        &no_node,
        bootstrap.replace("node: {id: standalone, cluster: demo}", "").replace("{ADMIN}", "0").replace("{PORT}", "0"),
    )
    .unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_remora")).args(["--mode", "validate", "-c"]).arg(&no_node).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && err.contains("TlsCertificateSdsApi: node 'id' and 'cluster' are required"),
        "{err}"
    );
    let Some(pair) = support::start_pair("file_sds", &bootstrap, 1) else { return };
    let wait_for = |p: &support::Proxy, want: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = presented(p.port, &dir);
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{} presents another certificate:\n{got}\n{}", p.name, p.stderr());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    for p in [&pair.0, &pair.1] {
        wait_for(p, &first_pem(&first.chain_pem));
    }
    let second = issue(&ca, "app");
    write_secret(&second, 2);
    for p in [&pair.0, &pair.1] {
        wait_for(p, &first_pem(&second.chain_pem));
    }
    std::fs::remove_dir_all(&dir).ok();
}
