//! Differential test of `x-forwarded-client-cert`: Envoy and remora terminate mTLS on the same
//! bootstrap and the upstream reports the XFCC header it received, for every
//! `forward_client_cert_details` mode, with and without a client certificate, and with a
//! client-supplied (spoofed) header.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use certs::SpiffeId;
use certs::dev_ca::{CaOptions, DevCa, WorkloadOptions};
use support::*;

struct Pki {
    dir: std::path::PathBuf,
}

fn pki() -> Pki {
    let dir = std::env::temp_dir().join(format!("remora-xfcc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = DevCa::new_root(&CaOptions::default()).unwrap();
    let write = |name: &str, data: &str| std::fs::write(dir.join(name), data).unwrap();
    write("ca.pem", ca.cert_pem());
    let mut server = WorkloadOptions::spiffe(SpiffeId::parse("spiffe://cluster.local/ns/b/sa/server").unwrap());
    server.dns_names = vec!["localhost".into()];
    let s = ca.issue(&server).unwrap();
    write("server.pem", &s.chain_pem);
    write("server.key", &s.key_pem);
    let mut client = WorkloadOptions::spiffe(SpiffeId::parse("spiffe://cluster.local/ns/a/sa/client").unwrap());
    client.dns_names = vec!["client.a.svc".into(), "client.example".into()];
    client.common_name = Some("client workload".into());
    let c = ca.issue(&client).unwrap();
    write("client.pem", &c.chain_pem);
    write("client.key", &c.key_pem);
    Pki { dir }
}

fn bootstrap(dir: &Path, mode: &str, details: &str) -> String {
    let d = dir.display();
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {{ADMIN}}}}}}}}
static_resources:
  listeners:
  - name: inbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {{PORT}}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates: [{{certificate_chain: {{filename: {d}/server.pem}}, private_key: {{filename: {d}/server.key}}}}]
            validation_context: {{trusted_ca: {{filename: {d}/ca.pem}}}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          {mode}
          {details}
          route_config:
            virtual_hosts: [{{name: v, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: app}}}}]}}]
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
  clusters:
  - name: app
    connect_timeout: 1s
    load_assignment: {{cluster_name: app, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {{UPSTREAM}}}}}}}}}}]}}]}}
"#
    )
}

/// The XFCC header the upstream saw (`x-echo`), through `p` over TLS.
fn seen(p: &Proxy, dir: &Path, client_cert: bool, spoofed: Option<&str>) -> (u16, Option<String>) {
    let d = dir.display().to_string();
    let url = format!("https://localhost:{}/?echo=x-forwarded-client-cert", p.port);
    let ca = format!("{d}/ca.pem");
    let (cert, key) = (format!("{d}/client.pem"), format!("{d}/client.key"));
    let spoof = spoofed.map(|s| format!("x-forwarded-client-cert: {s}"));
    let mut args: Vec<&str> = vec!["--cacert", &ca];
    if client_cert {
        args.extend(["--cert", &cert, "--key", &key]);
    }
    if let Some(h) = &spoof {
        args.extend(["-H", h]);
    }
    args.push(&url);
    let r = curl(&args);
    (r.status, r.header("x-echo").map(str::to_string))
}

#[test]
fn xfcc_modes_match_envoy() {
    let pki = pki();
    let up = upstream();
    let all = "set_current_client_cert_details: {subject: true, uri: true, dns: true, cert: true, chain: true}";
    let istio = "set_current_client_cert_details: {subject: true, uri: true, dns: true}";
    let cases = [
        ("", ""),
        ("forward_client_cert_details: SANITIZE", istio),
        ("forward_client_cert_details: FORWARD_ONLY", ""),
        ("forward_client_cert_details: APPEND_FORWARD", istio),
        ("forward_client_cert_details: APPEND_FORWARD", all),
        ("forward_client_cert_details: SANITIZE_SET", ""),
        ("forward_client_cert_details: SANITIZE_SET", "set_current_client_cert_details: {uri: true}"),
        ("forward_client_cert_details: ALWAYS_FORWARD_ONLY", ""),
    ];
    let spoofed = "By=spiffe://cluster.local/ns/x/sa/evil;URI=spiffe://cluster.local/ns/x/sa/admin";
    for (mode, details) in cases {
        let b = bootstrap(&pki.dir, mode, details);
        let Some(pair) = start_pair("xfcc", &b, up) else { return };
        for (client_cert, spoof) in [(true, None), (true, Some(spoofed)), (false, Some(spoofed))] {
            let e = seen(&pair.0, &pki.dir, client_cert, spoof);
            let r = seen(&pair.1, &pki.dir, client_cert, spoof);
            assert_eq!(e.0, 200, "envoy {mode} {details}: {e:?}\n{}", pair.0.stderr());
            assert_eq!(e, r, "{mode} {details} client_cert={client_cert} spoofed={}", spoof.is_some());
        }
    }
    // Istio's inbound shape gives the app the caller's SPIFFE ID.
    let b = bootstrap(&pki.dir, "forward_client_cert_details: APPEND_FORWARD", istio);
    let Some(pair) = start_pair("xfcc", &b, up) else { return };
    let (_, xfcc) = seen(&pair.1, &pki.dir, true, None);
    let xfcc = xfcc.unwrap_or_default();
    assert!(xfcc.starts_with("By=spiffe://cluster.local/ns/b/sa/server;Hash="), "{xfcc}");
    assert!(xfcc.contains(";URI=spiffe://cluster.local/ns/a/sa/client"), "{xfcc}");
    std::fs::remove_dir_all(&pki.dir).ok();
}
