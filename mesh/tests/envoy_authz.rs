//! Envoy accepts the authn/authz filters the control plane generates: the resources of the
//! sidecars of tests/data/authz-mesh.yaml (RBAC by principal, path, method and header, a deny-all
//! namespace, jwt_authn with request principals and claims) and of its gateway (a root-namespace
//! DENY) are served over Delta ADS to Envoy (`ENVOY_BIN`), which must ACK every type and NACK
//! nothing, as envoy.rs checks for examples/demo. Skipped when Envoy is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use mesh::xds::{self, Proxy};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use xds_client::ads;
use xds_client::server::ControlPlane;

fn envoy() -> Option<PathBuf> {
    let p = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/remora/envoy-venv/bin/envoy")))?;
    p.exists().then_some(p)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn b64(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = c.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn jwks() -> String {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let k = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).unwrap();
    let p = k.public_key().as_ref();
    serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
        "x": b64(&p[1..33]), "y": b64(&p[33..65])}]})
    .to_string()
}

#[test]
fn envoy_accepts_the_generated_authz_filters() {
    let Some(envoy) = envoy() else {
        eprintln!("skipped: no Envoy (set ENVOY_BIN or run scripts/install-test-deps)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let text = include_str!("data/authz-mesh.yaml").replace("@JWKS@", &jwks());
    std::fs::write(dir.path().join("mesh.yaml"), text).unwrap();
    let mut mesh = mesh::runner::load(dir.path()).unwrap();
    mesh.renumber((std::process::id() % 250 + 1) as u8);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bind = [(8080u16, free_port())];
    let pods: Vec<_> = ["api-0", "orders-0", "vault-0"]
        .iter()
        .map(|n| mesh.pods.iter().find(|p| p.name == *n).unwrap().clone())
        .collect();
    let mut proxies: Vec<(String, Proxy, String)> =
        pods.iter().map(|p| (p.name.clone(), Proxy::Sidecar(p), p.node_id())).collect();
    proxies.push(("gateway".into(), Proxy::Gateway { bind: &bind }, xds::gateway_node_id()));
    for (label, proxy, node) in proxies {
        let cp = ControlPlane::new();
        let resources = mesh::resources(&mesh, &proxy).unwrap();
        let listeners = &resources.iter().find(|(t, _)| *t == ads::LISTENER).unwrap().1;
        let filters: usize = listeners
            .iter()
            .map(|(_, any)| String::from_utf8_lossy(&any.value).matches("envoy.filters.http.rbac").count())
            .sum();
        assert!(filters > 0, "{label}: no RBAC filter generated");
        for (ty, res) in resources {
            cp.set_all(ty, res);
        }
        let ca = certs::dev_ca::DevCa::new_root(&certs::dev_ca::CaOptions::default()).unwrap();
        let id = certs::SpiffeId::parse(&pods[0].spiffe()).unwrap();
        let leaf = ca.issue(&certs::dev_ca::WorkloadOptions::spiffe(id)).unwrap();
        for secret in [
            serde_json::json!({"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                "name": "default", "tls_certificate": {"certificate_chain": {"inline_string": leaf.chain_pem},
                "private_key": {"inline_string": leaf.key_pem}}}),
            serde_json::json!({"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                "name": "ROOTCA", "validation_context": {"trusted_ca": {"inline_string": leaf.root_pem}}}),
        ] {
            let (ty, name, any) = xds_client::server::resource_from_json(&secret, "secret").unwrap();
            cp.set(ty, &name, any);
        }
        let addr = rt.block_on(cp.serve_tcp(([127, 0, 0, 1], 0).into())).unwrap();
        let work = tempfile::tempdir().unwrap();
        let cfg = work.path().join("bootstrap.json");
        let boot = mesh::runner::bootstrap(&node, "authz", "shop", "default", &Default::default(), free_port(), addr)
            .replace(
                r#"{"pipe": {"path": "./var/run/secrets/workload-spiffe-uds/socket"}}"#,
                &format!(r#"{{"socket_address": {{"address": "127.0.0.1", "port_value": {}}}}}"#, addr.port()),
            )
            .replace(
                r#"{"name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s","#,
                r#"{"name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s",
              "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},"#,
            );
        assert_eq!(boot.matches(&format!("\"port_value\": {}", addr.port())).count(), 2, "{boot}");
        std::fs::write(&cfg, boot).unwrap();
        let mut child = Command::new(&envoy)
            .arg("-c")
            .arg(&cfg)
            .args(["--concurrency", "1", "-l", "warning", "--base-id", &free_port().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.path().join("envoy.log")).unwrap())
            .spawn()
            .unwrap();
        let done = rt.block_on(cp.wait_for(
            |cp| {
                let acks = cp.acks();
                !cp.nacks().is_empty()
                    || [ads::CLUSTER, ads::ENDPOINT, ads::LISTENER, ads::ROUTE]
                        .iter()
                        .all(|t| acks.iter().any(|a| a.type_url == *t))
            },
            Duration::from_secs(30),
        ));
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(work.path().join("envoy.log")).unwrap_or_default();
        assert!(cp.nacks().is_empty(), "{label}: Envoy NACKed: {:#?}\n{log}", cp.nacks());
        assert!(done, "{label}: Envoy did not ACK every type: {:?}\n{log}", cp.acks());
    }
}
