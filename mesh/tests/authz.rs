//! AuthorizationPolicy and RequestAuthentication end to end: tests/data/authz-mesh.yaml runs under
//! `remora-demo` (remora sidecars, the Istio CA, mTLS between them) and the test calls services
//! as a pod's app would, through that pod's sidecar outbound listener, so each request carries the
//! pod's SPIFFE identity: an allowed principal gets 200, another 403 `RBAC: access denied`; DENY by
//! path, method and header; a namespace's deny-all with explicit allows by path and namespace; a
//! mesh-wide DENY from the root namespace, on the sidecars and the gateway; JWT: no token 403
//! under a requestPrincipals policy, a valid token 200, a bad one 401, a claim condition; a live
//! policy edit, and a live bad policy refused while the mesh keeps serving. Also the generated
//! filters' names and order, and the refusals (unknown field, unsupported action...).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

const ISS: &str = "https://issuer.remora.test";
const MESH: &str = include_str!("data/authz-mesh.yaml");

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

struct Signer(EcdsaKeyPair);

impl Signer {
    fn new() -> Signer {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Signer(EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).unwrap())
    }
    fn jwks(&self) -> String {
        let p = self.0.public_key().as_ref();
        json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
            "x": b64(&p[1..33]), "y": b64(&p[33..65])}]})
        .to_string()
    }
    fn token(&self, claims: Value) -> String {
        let head = b64(json!({"alg": "ES256", "kid": "k1", "typ": "JWT"}).to_string().as_bytes());
        let body = b64(claims.to_string().as_bytes());
        let input = format!("{head}.{body}");
        let sig = self.0.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The test mesh with `jwks` in its RequestAuthentication.
pub fn mesh_text(jwks: &str) -> String {
    MESH.replace("@JWKS@", jwks)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn remora_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("REMORA_BIN") {
        return p.into();
    }
    Path::new(env!("CARGO_BIN_EXE_remora-demo")).with_file_name("remora")
}

/// One HTTP/1.1 request; `(status, body)`.
fn send(addr: &str, method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let status = buf.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

struct Demo {
    child: Child,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn policies_and_jwt_through_remora_sidecars() {
    let signer = Signer::new();
    let tmp = tempfile::tempdir().unwrap();
    let mesh_dir = tmp.path().join("mesh");
    std::fs::create_dir(&mesh_dir).unwrap();
    std::fs::write(mesh_dir.join("mesh.yaml"), mesh_text(&signer.jwks())).unwrap();
    let ready = tmp.path().join("ready.json");
    let gw_port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_remora-demo"))
        .arg("--mesh")
        .arg(&mesh_dir)
        .args(["--gateway-port", &gw_port.to_string()])
        .arg("--remora")
        .arg(remora_bin())
        .arg("--work-dir")
        .arg(tmp.path().join("work"))
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("demo.err")).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut demo = Demo { child };
    let deadline = Instant::now() + Duration::from_secs(90);
    while !ready.exists() {
        let err = std::fs::read_to_string(tmp.path().join("demo.err")).unwrap_or_default();
        assert!(Instant::now() < deadline, "not ready: {err}");
        assert!(demo.child.try_wait().unwrap().is_none(), "exited: {err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(200));
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    assert_eq!(summary["nacks"], json!([]));
    let pod = |name: &str, key: &str| -> String {
        let p = summary["pods"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap();
        format!("{}:8080", p[key].as_str().unwrap())
    };
    // As the app of pod `from` (its sidecar's outbound listener: mTLS with its identity).
    let call = |from: &str, method: &str, host: &str, path: &str, headers: &[(&str, &str)]| {
        send(&pod(from, "outbound"), method, host, path, headers)
    };
    let denied = |r: (u16, String)| {
        assert_eq!(r.0, 403, "{}", r.1);
        assert_eq!(r.1, "RBAC: access denied");
    };

    // ALLOW by principal: web yes, other no, a plaintext client (no principal) no.
    let (s, b) = call("web-0", "GET", "api", "/", &[]);
    assert_eq!(s, 200, "{b}");
    assert!(b.contains("\"service\":\"api\""), "{b}");
    denied(call("other-0", "GET", "api", "/", &[]));
    denied(send(&pod("api-0", "ip"), "GET", "api", "/", &[]));
    // DENY by path, method and header, before the ALLOW.
    denied(call("web-0", "GET", "api", "/admin/users", &[]));
    assert_eq!(call("web-0", "GET", "api", "/administrator", &[]).0, 200);
    denied(call("web-0", "DELETE", "api", "/", &[]));
    assert_eq!(call("web-0", "POST", "api", "/", &[]).0, 200);
    denied(call("web-0", "GET", "api", "/", &[("x-tenant", "blocked")]));
    assert_eq!(call("web-0", "GET", "api", "/", &[("x-tenant", "ok")]).0, 200);

    // Namespace deny-all (`spec: {}`) with explicit allows: GET from namespace shop; GET /healthz
    // from anyone; nothing else.
    assert_eq!(call("web-0", "GET", "vault.secure", "/", &[]).0, 200);
    denied(call("web-0", "POST", "vault.secure", "/", &[]));
    denied(call("intruder-0", "GET", "vault.secure", "/", &[]));
    // ... though a dry-run DENY policy matches it: counted as a shadow denial, not enforced.
    assert_eq!(call("intruder-0", "GET", "vault.secure", "/healthz", &[]).0, 200);
    let admin = summary["admin"]["vault-0"].as_u64().unwrap();
    let stats = send(&format!("127.0.0.1:{admin}"), "GET", "admin", "/stats", &[]).1;
    let shadow: u64 = stats
        .lines()
        .filter(|l| l.contains("rbac.istio_dry_run_deny_") && l.contains("shadow_denied:"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(shadow > 0, "{stats}");
    denied(call("intruder-0", "POST", "vault.secure", "/healthz", &[]));
    // intruder's own namespace has no policy.
    assert_eq!(call("web-0", "GET", "intruder.outside", "/", &[]).0, 200);

    // The root namespace's DENY applies to every workload and to the gateway.
    denied(call("web-0", "GET", "intruder.outside", "/forbidden", &[]));
    denied(call("web-0", "GET", "vault.secure", "/forbidden", &[]));
    let gw = format!("127.0.0.1:{gw_port}");
    assert_eq!(send(&gw, "GET", "shop.example", "/", &[]).0, 200);
    denied(send(&gw, "GET", "shop.example", "/forbidden", &[]));

    // JWT: no token -> 403 under requestPrincipals; valid -> 200; bad signature, unknown issuer,
    // expired -> 401; a claim condition on /admin.
    let claims = |sub: &str, groups: &[&str], exp: u64| json!({"iss": ISS, "sub": sub, "aud": "orders", "exp": exp, "groups": groups});
    let good = signer.token(claims("alice", &["users"], now() + 3600));
    let admin = signer.token(claims("root", &["admins", "users"], now() + 3600));
    let bearer = |t: &str| format!("Bearer {t}");
    denied(call("web-0", "GET", "orders", "/", &[]));
    let (s, b) = call("web-0", "GET", "orders", "/", &[("authorization", &bearer(&good))]);
    assert_eq!(s, 200, "{b}");
    assert!(b.contains("\"service\":\"orders\""), "{b}");
    let forged = Signer::new().token(claims("alice", &["users"], now() + 3600));
    let (s, b) = call("web-0", "GET", "orders", "/", &[("authorization", &bearer(&forged))]);
    assert_eq!((s, b.as_str()), (401, "Jwt verification fails"));
    let stranger = signer.token(json!({"iss": "https://other.test", "sub": "x", "exp": now() + 3600}));
    assert_eq!(call("web-0", "GET", "orders", "/", &[("authorization", &bearer(&stranger))]).0, 401);
    let expired = signer.token(claims("alice", &["users"], now() - 3600));
    let (s, b) = call("web-0", "GET", "orders", "/", &[("authorization", &bearer(&expired))]);
    assert_eq!((s, b.as_str()), (401, "Jwt is expired"));
    let wrong_aud = signer.token(json!({"iss": ISS, "sub": "alice", "aud": "billing", "exp": now() + 3600}));
    let (s, b) = call("web-0", "GET", "orders", "/", &[("authorization", &bearer(&wrong_aud))]);
    assert_eq!((s, b.as_str()), (403, "Audiences in Jwt are not allowed"));
    denied(call("web-0", "GET", "orders", "/admin", &[("authorization", &bearer(&good))]));
    assert_eq!(call("web-0", "GET", "orders", "/admin", &[("authorization", &bearer(&admin))]).0, 200);

    // A live edit: drop api's ALLOW policy -> other gets through (no ALLOW policy left, only the DENY).
    let text = mesh_text(&signer.jwks()).replace("name: api-allow", "name: api-allow-off").replace(
        "selector: {matchLabels: {app: api}}\n  action: ALLOW",
        "selector: {matchLabels: {app: nothing}}\n  action: ALLOW",
    );
    std::fs::write(mesh_dir.join("mesh.yaml"), text).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while call("other-0", "GET", "api", "/", &[]).0 != 200 {
        assert!(Instant::now() < deadline, "the edited policy was not pushed");
        std::thread::sleep(Duration::from_millis(300));
    }
    denied(call("other-0", "DELETE", "api", "/", &[]));

    // A policy naming a principal in an unknown format is refused with the file, the field and
    // the reason; the mesh keeps serving the last good config.
    let bad = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: typo, namespace: shop}\n\
               spec: {rules: [{from: [{source: {principals: [web]}}]}]}\n";
    std::fs::write(mesh_dir.join("zz-bad.yaml"), bad).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let err = std::fs::read_to_string(tmp.path().join("demo.err")).unwrap_or_default();
        if err.contains("zz-bad.yaml")
            && err.contains("AuthorizationPolicy typo")
            && err.contains("spec.rules[0].from[0].source.principals")
            && err.contains("'web' is not a workload identity")
        {
            break;
        }
        assert!(Instant::now() < deadline, "bad policy not reported: {err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(call("other-0", "GET", "api", "/", &[]).0, 200);
    denied(call("intruder-0", "GET", "vault.secure", "/", &[]));
    drop(demo);
}

fn load(text: &str) -> Result<mesh::model::Mesh, String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), text).unwrap();
    mesh::runner::load(dir.path()).map_err(|e| e.to_string())
}

/// The names istiod gives, the order it puts them in, and the shapes of the matchers.
#[test]
fn generated_filters_follow_istiod() {
    let mesh = load(&mesh_text(&Signer::new().jwks())).unwrap();
    let pod = |n: &str| mesh.pods.iter().find(|p| p.name == n).unwrap();
    let inbound_filters = |n: &str| -> Vec<Value> {
        let ls = mesh::xds::listeners(&mesh, &mesh::xds::Proxy::Sidecar(pod(n)));
        let l = ls.iter().find(|l| l["traffic_direction"] == "INBOUND").unwrap();
        // Every chain (mTLS and, PERMISSIVE, plaintext) gets the same filters.
        let chains = l["filter_chains"].as_array().unwrap();
        assert_eq!(chains.len(), 2);
        let http_filters = |c: &Value| {
            let fs = c["filters"].as_array().unwrap();
            let hcm = fs.iter().find(|f| f["name"] == "envoy.filters.network.http_connection_manager").unwrap();
            hcm["typed_config"]["http_filters"].as_array().unwrap().clone()
        };
        assert_eq!(http_filters(&chains[0]), http_filters(&chains[1]));
        // Istio's telemetry (xds/telemetry.rs) around them: the peer metadata filter first (before
        // RBAC, as istiod puts it), istio.stats before the router; the rest is authz's.
        let all = http_filters(&chains[0]);
        assert_eq!(all[0]["name"], "istio.metadata_exchange");
        assert_eq!(all[all.len() - 2]["name"], "istio.stats");
        all.into_iter().filter(|f| !f["name"].as_str().unwrap().starts_with("istio.")).collect()
    };
    let names = |fs: &[Value]| fs.iter().map(|f| f["name"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let api = inbound_filters("api-0");
    assert_eq!(
        names(&api),
        ["envoy.filters.http.rbac", "envoy.filters.http.rbac", "envoy.filters.http.fault", "envoy.filters.http.router"]
    );
    let deny = &api[0]["typed_config"]["rules"];
    assert_eq!(deny["action"], "DENY");
    let keys = |v: &Value| v["policies"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(deny),
        [
            "ns[istio-system]-policy[deny-forbidden]-rule[0]",
            "ns[shop]-policy[api-deny]-rule[0]",
            "ns[shop]-policy[api-deny]-rule[1]",
            "ns[shop]-policy[api-deny]-rule[2]"
        ]
    );
    assert_eq!(
        deny["policies"]["ns[shop]-policy[api-deny]-rule[0]"]["permissions"],
        json!([{"and_rules": {"rules": [{"or_rules": {"rules": [{"url_path": {"path": {"prefix": "/admin/"}}}]}}]}}])
    );
    let allow = &api[1]["typed_config"];
    assert_eq!(allow["rules"]["action"], "ALLOW");
    assert_eq!(allow["shadow_rules_stat_prefix"], "istio_dry_run_allow_");
    assert_eq!(
        allow["rules"]["policies"]["ns[shop]-policy[api-allow]-rule[0]"]["principals"],
        json!([{"and_ids": {"ids": [{"or_ids": {"ids": [{"authenticated": {"principal_name":
            {"exact": "spiffe://cluster.local/ns/shop/sa/web"}}}]}}]}}])
    );
    // Namespaces as istiod's regex on the principal.
    let vault_allow = &inbound_filters("vault-0")[1]["typed_config"]["rules"]["policies"];
    assert_eq!(
        vault_allow["ns[secure]-policy[allow-shop]-rule[0]"]["principals"][0]["and_ids"]["ids"][0]["or_ids"]["ids"][0],
        json!({"authenticated": {"principal_name": {"safe_regex": {"regex": ".*/ns/shop/.*"}}}})
    );
    // jwt_authn before RBAC; istiod's provider and requirement.
    let orders = inbound_filters("orders-0");
    assert_eq!(
        names(&orders)[..3],
        ["envoy.filters.http.jwt_authn", "envoy.filters.http.rbac", "envoy.filters.http.rbac"]
    );
    let jwt = &orders[0]["typed_config"];
    assert_eq!(jwt["providers"]["origins-0"]["issuer"], ISS);
    assert_eq!(jwt["providers"]["origins-0"]["payload_in_metadata"], "payload");
    assert_eq!(
        jwt["rules"][0]["requires"],
        json!({"requires_any": {"requirements": [{"provider_name": "origins-0"}, {"allow_missing": {}}]}})
    );
    let p = &orders[2]["typed_config"]["rules"]["policies"]["ns[shop]-policy[orders-require-jwt]-rule[0]"];
    assert_eq!(
        p["principals"][0]["and_ids"]["ids"][0]["and_ids"]["ids"][0]["metadata"]["path"],
        json!([{"key": "payload"}, {"key": "iss"}])
    );
    // The deny-all policy never matches. A dry-run policy goes to the shadow rules.
    let vault = inbound_filters("vault-0");
    let vault_deny = &vault[0]["typed_config"];
    assert_eq!(keys(&vault_deny["rules"]), ["ns[istio-system]-policy[deny-forbidden]-rule[0]"]);
    assert_eq!(keys(&vault_deny["shadow_rules"]), ["ns[secure]-policy[vault-dry-run]-rule[0]"]);
    assert_eq!(vault_deny["shadow_rules"]["action"], "DENY");
    assert_eq!(vault_deny["shadow_rules_stat_prefix"], "istio_dry_run_deny_");
    assert_eq!(
        vault[1]["typed_config"]["rules"]["policies"]["ns[secure]-policy[deny-all]-rule[0]"],
        json!({"permissions": [{"not_rule": {"any": true}}], "principals": [{"not_id": {"any": true}}]})
    );
    // No policy selects web's outbound listeners, nor intruder (namespace outside) beyond the
    // root namespace's DENY.
    let web = mesh::xds::listeners(&mesh, &mesh::xds::Proxy::Sidecar(pod("web-0")));
    for l in web.iter().filter(|l| l["traffic_direction"] == "OUTBOUND") {
        let hf = &l["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"];
        assert!(!hf.to_string().contains("rbac"), "{hf}");
    }
    assert_eq!(names(&inbound_filters("intruder-0"))[..2], ["envoy.filters.http.rbac", "envoy.filters.http.fault"]);
}

fn refused(text: &str) -> String {
    load(text).expect_err("must be refused")
}

const POLICY_HEAD: &str =
    "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n";

#[test]
fn manifest_errors_name_file_field_and_reason() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "  action: CUSTOM\n  provider: {name: ext}\n",
            "AuthorizationPolicy p: spec.action",
            "remora has no ext_authz",
        ),
        ("  action: AUDIT\n", "AuthorizationPolicy p: spec.action", "AUDIT is not supported"),
        ("  action: REJECT\n", "spec.action", "unknown action 'REJECT'"),
        (
            "  rules: [{from: [{source: {principal: [a]}}]}]\n",
            "spec.rules[0].from[0].source",
            "unknown field `principal`",
        ),
        ("  rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]\n", "source.ipBlocks", "IP-based matching"),
        (
            "  rules: [{from: [{source: {principals: [web]}}]}]\n",
            "source.principals",
            "'web' is not a workload identity",
        ),
        (
            "  rules: [{from: [{source: {principals: [\"spiffe://cluster.local/ns/a/sa/b\"]}}]}]\n",
            "source.principals",
            "without 'spiffe://'",
        ),
        ("  rules: [{to: [{operation: {paths: [\"/a*b*\"]}}]}]\n", "operation.paths", "wildcard"),
        ("  rules: [{to: [{operation: {paths: [\"/api/{*}\"]}}]}]\n", "operation.paths", "uri_template"),
        ("  rules: [{to: [{operation: {ports: [\"http\"]}}]}]\n", "operation.ports", "not a port number"),
        ("  rules: [{to: [{operation: {}}]}]\n", "spec.rules[0].to[0].operation", "must not be empty"),
        ("  rules: [{when: [{key: source.ip, values: [1.2.3.4]}]}]\n", "when[0].key", "IP-based"),
        ("  rules: [{when: [{key: request.time, values: [x]}]}]\n", "when[0].key", "'request.time' is not supported"),
        ("  rules: [{when: [{key: \"request.headers[x]\"}]}]\n", "when[0].values", "values or notValues"),
        ("  targetRef: {kind: Gateway, name: g}\n", "spec.targetRef", "not supported"),
    ];
    for (spec, field, reason) in cases {
        let e = refused(&format!("{POLICY_HEAD}{spec}"));
        assert!(e.contains("mesh.yaml") && e.contains(field) && e.contains(reason), "{spec}: {e}");
    }
    let ra = |rule: &str| {
        format!(
            "apiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\nmetadata: {{name: r}}\nspec:\n  jwtRules:\n  - {rule}\n"
        )
    };
    let e = refused(&ra("{issuer: a, jwksUri: \"https://a/keys\"}"));
    assert!(e.contains("RequestAuthentication r: spec.jwtRules[0].jwksUri") && e.contains("remote_jwks"), "{e}");
    let e = refused(&ra("{issuer: a}"));
    assert!(e.contains("spec.jwtRules[0].jwks") && e.contains("missing"), "{e}");
    let e = refused(&ra("{issuer: a, jwks: \"{}\"}"));
    assert!(e.contains("not a JSON Web Key Set"), "{e}");
    let e = refused(&ra("{issuer: a, jwks: x, jwtHeaders: [a]}"));
    assert!(e.contains("spec.jwtRules[0]") && e.contains("unknown field `jwtHeaders`"), "{e}");
    let e = refused(
        &format!("{POLICY_HEAD}  rules: []\n")
            .replace("metadata: {", "metadata: {annotations: {istio.io/dry-run: yes}, "),
    );
    assert!(e.contains("metadata.annotations.istio.io/dry-run"), "{e}");
    // The group must be security.istio.io.
    let e = refused(&POLICY_HEAD.replace("security.istio.io/v1", "networking.istio.io/v1"));
    assert!(e.contains("apiVersion") && e.contains("security.istio.io"), "{e}");
}
