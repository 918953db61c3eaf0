//! Envoy accepts the authn/authz filters the control plane generates: the resources of the
//! sidecars of tests/data/authz-mesh.yaml (RBAC by principal, path, method and header, a deny-all
//! namespace, jwt_authn with request principals and claims) and of its gateway (a root-namespace
//! DENY) are served over Delta ADS to Envoy (`ENVOY_BIN`), which must ACK every type and NACK
//! nothing, as envoy.rs checks for examples/demo; and Envoy and remora, each the sidecar on the
//! same generated config, answer the same to the same requests (JWT, RBAC by request principal,
//! claim, path and method). Skipped when Envoy is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// Serves the SDS secrets `default` and `ROOTCA` (a dev CA's certificate for `pod`) beside the
/// resources already in `cp`; returns the harness address.
fn serve(rt: &tokio::runtime::Runtime, cp: &ControlPlane, pod: &mesh::model::Pod) -> std::net::SocketAddr {
    let ca = certs::dev_ca::DevCa::new_root(&certs::dev_ca::CaOptions::default()).unwrap();
    let id = certs::SpiffeId::parse(&pod.spiffe()).unwrap();
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
    rt.block_on(cp.serve_tcp(([127, 0, 0, 1], 0).into())).unwrap()
}

/// Starts `bin` (Envoy or remora) on a pilot-agent-shaped bootstrap whose SDS is the harness.
fn start_proxy(bin: &Path, node: &str, addr: std::net::SocketAddr, dir: &Path) -> Child {
    let cfg = dir.join("bootstrap.json");
    let metadata = serde_json::json!({"NAMESPACE": "shop", "SERVICE_ACCOUNT": "default", "CLUSTER_ID": "Kubernetes"});
    let boot = mesh::runner::bootstrap(node, "authz", &metadata, free_port(), addr)
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
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(&cfg).args(["--concurrency", "1", "-l", "warning"]);
    if bin.file_name().is_some_and(|n| n == "envoy") {
        cmd.args(["--base-id", &free_port().to_string()]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("proxy.log")).unwrap())
        .spawn()
        .unwrap()
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
    // Blocks 1-100 here, 101-242 in the other test of this binary (they run side by side).
    mesh.renumber((std::process::id() % 100 + 1) as u8);
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
        let resources = mesh::resources_for_envoy(&mesh, &proxy).unwrap();
        let listeners = &resources.iter().find(|(t, _)| *t == ads::LISTENER).unwrap().1;
        let filters: usize = listeners
            .iter()
            .map(|(_, any)| String::from_utf8_lossy(&any.value).matches("envoy.filters.http.rbac").count())
            .sum();
        assert!(filters > 0, "{label}: no RBAC filter generated");
        for (ty, res) in resources {
            cp.set_all(ty, res);
        }
        let addr = serve(&rt, &cp, &pods[0]);
        let work = tempfile::tempdir().unwrap();
        let mut child = start_proxy(&envoy, &node, addr, work.path());
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
        let log = std::fs::read_to_string(work.path().join("proxy.log")).unwrap_or_default();
        assert!(cp.nacks().is_empty(), "{label}: Envoy NACKed: {:#?}\n{log}", cp.nacks());
        assert!(done, "{label}: Envoy did not ACK every type: {:?}\n{log}", cp.acks());
    }
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One plaintext HTTP/1.1 request: status, `www-authenticate` and body.
fn send(addr: &str, method: &str, path: &str, auth: Option<&str>) -> (u16, String, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return (0, String::new(), String::new()) };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = auth.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n{auth}Content-Length: 0\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new(), String::new());
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let status = buf.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let www = head.lines().find_map(|l| l.strip_prefix("www-authenticate: ")).unwrap_or_default().to_string();
    (status, www, body.to_string())
}

fn token(key: &EcdsaKeyPair, claims: serde_json::Value) -> String {
    let head = b64(serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "JWT"}).to_string().as_bytes());
    let input = format!("{head}.{}", b64(claims.to_string().as_bytes()));
    let sig = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    format!("{input}.{}", b64(sig.as_ref()))
}

/// The same generated config with Envoy and with remora as the sidecar of `orders` (JWT and
/// RBAC on request principals and claims) and `vault` (namespace deny-all plus explicit allows,
/// the root namespace's DENY): plaintext clients (no peer principal; the namespace is PERMISSIVE)
/// see the same status, `www-authenticate` and body from both.
#[test]
fn envoy_and_remora_decide_alike() {
    let Some(envoy) = envoy() else {
        eprintln!("skipped: no Envoy (set ENVOY_BIN or run scripts/install-test-deps)");
        return;
    };
    let remora = std::env::var_os("REMORA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_BIN_EXE_remora-demo")).with_file_name("remora"));
    assert!(remora.exists(), "no remora at {}", remora.display());
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).unwrap();
    let p = key.public_key().as_ref();
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
        "x": b64(&p[1..33]), "y": b64(&p[33..65])}]})
    .to_string();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), include_str!("data/authz-mesh.yaml").replace("@JWKS@", &jwks))
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut procs = Procs(Vec::new());
    // One copy of the mesh per proxy binary, on loopback blocks of their own.
    let base = (std::process::id() % 70) as u8 * 2 + 101;
    let mut targets = Vec::new();
    for (i, bin) in [&envoy, &remora].into_iter().enumerate() {
        let mut mesh = mesh::runner::load(dir.path()).unwrap();
        mesh.renumber(base + i as u8);
        for name in ["orders-0", "vault-0"] {
            let pod = mesh.pods.iter().find(|p| p.name == name).unwrap().clone();
            procs.0.push(
                Command::new(env!("CARGO_BIN_EXE_demo-app"))
                    .env("SERVICE", pod.app())
                    .env("POD", &pod.name)
                    .env("LISTEN", format!("{}:8080", pod.app_ip))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
            let cp = ControlPlane::new();
            // Envoy gets the config without Istio's own extensions, which it lacks.
            let resources = if i == 0 { mesh::resources_for_envoy } else { mesh::resources };
            for (ty, res) in resources(&mesh, &Proxy::Sidecar(&pod)).unwrap() {
                cp.set_all(ty, res);
            }
            let addr = serve(&rt, &cp, &pod);
            let work = dir.path().join(format!("{i}-{name}"));
            std::fs::create_dir(&work).unwrap();
            procs.0.push(start_proxy(bin, &pod.node_id(), addr, &work));
            let acked = rt.block_on(cp.wait_for(
                |cp| !cp.nacks().is_empty() || cp.acks().iter().any(|a| a.type_url == ads::LISTENER),
                Duration::from_secs(30),
            ));
            let log = std::fs::read_to_string(work.join("proxy.log")).unwrap_or_default();
            assert!(acked && cp.nacks().is_empty(), "{}: {:?}\n{log}", bin.display(), cp.nacks());
            targets.push((i, name, format!("{}:8080", pod.ip), cp));
        }
    }
    // Both inbound listeners answer before comparing.
    for (_, name, addr, _) in &targets {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while send(addr, "GET", "/healthz", None).0 == 0 {
            assert!(std::time::Instant::now() < deadline, "{name} at {addr} does not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = |aud: &str, groups: &[&str], exp: u64| serde_json::json!({"iss": "https://issuer.remora.test", "sub": "alice", "aud": aud, "exp": exp, "groups": groups});
    let good = token(&key, claims("orders", &["users"], now + 3600));
    let admin = token(&key, claims("orders", &["admins"], now + 3600));
    let expired = token(&key, claims("orders", &["users"], now - 3600));
    let wrong_aud = token(&key, claims("billing", &["users"], now + 3600));
    let other_key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap().as_ref(),
        &rng,
    )
    .unwrap();
    let forged = token(&other_key, claims("orders", &["users"], now + 3600));
    let cases: Vec<(&str, &str, &str, Option<&str>, u16)> = vec![
        ("orders-0", "GET", "/", None, 403),
        ("orders-0", "GET", "/", Some(&good), 200),
        ("orders-0", "GET", "/", Some(&forged), 401),
        ("orders-0", "GET", "/", Some(&expired), 401),
        ("orders-0", "GET", "/", Some(&wrong_aud), 403),
        ("orders-0", "GET", "/", Some("not-a-jwt"), 401),
        ("orders-0", "GET", "/admin", Some(&good), 403),
        ("orders-0", "GET", "/admin", Some(&admin), 200),
        ("orders-0", "GET", "/forbidden", Some(&good), 403),
        ("vault-0", "GET", "/", None, 403),
        ("vault-0", "GET", "/healthz", None, 200),
        ("vault-0", "POST", "/healthz", None, 403),
        ("vault-0", "GET", "/forbidden", None, 403),
    ];
    for (pod, method, path, tok, want) in cases {
        let at = |i: usize| &targets.iter().find(|t| t.0 == i && t.1 == pod).unwrap().2;
        let from_envoy = send(at(0), method, path, tok);
        let from_remora = send(at(1), method, path, tok);
        assert_eq!(from_envoy.0, want, "Envoy, {pod} {method} {path} {tok:?}: {from_envoy:?}");
        assert_eq!(from_remora, from_envoy, "{pod} {method} {path} {tok:?}");
    }
    drop(procs);
}
