//! The filter on fake requests with real keys made here (RSA by the openssl CLI, EC P-256/P-384
//! and Ed25519 by ring): verification outcomes and Envoy's answers, extraction, requirements,
//! what a verified token does to the request, and config refusals.

use std::sync::OnceLock;

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{Value, json};

use super::*;
use crate::filters::common::DynamicMetadata;
use crate::filters::http::ConnInfo;

const ISS: &str = "https://issuer.example.com";

enum Material {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair, &'static str),
    Ed(Ed25519KeyPair),
    Hmac(Vec<u8>),
}

struct TestKey {
    kid: &'static str,
    m: Material,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn rsa_key() -> &'static TestKey {
    static K: OnceLock<TestKey> = OnceLock::new();
    K.get_or_init(|| {
        let out = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-outform", "DER"])
            .output()
            .expect("openssl genpkey");
        let k = RsaKeyPair::from_pkcs8(&out.stdout).or_else(|_| RsaKeyPair::from_der(&out.stdout)).expect("rsa key");
        TestKey { kid: "rsa1", m: Material::Rsa(k) }
    })
}

fn ec_key(kid: &'static str, p384: bool) -> TestKey {
    let rng = SystemRandom::new();
    let (alg, crv) = if p384 {
        (&signature::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384")
    } else {
        (&signature::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256")
    };
    let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    TestKey { kid, m: Material::Ec(EcdsaKeyPair::from_pkcs8(alg, doc.as_ref(), &rng).unwrap(), crv) }
}

fn ed_key(kid: &'static str) -> TestKey {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    TestKey { kid, m: Material::Ed(Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap()) }
}

impl TestKey {
    fn jwk(&self) -> Value {
        match &self.m {
            Material::Rsa(k) => {
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(k.public());
                json!({"kty": "RSA", "kid": self.kid, "n": b64(&c.n), "e": b64(&c.e)})
            }
            Material::Ec(k, crv) => {
                let p = k.public_key().as_ref();
                let len = (p.len() - 1) / 2;
                json!({"kty": "EC", "kid": self.kid, "crv": crv, "x": b64(&p[1..1 + len]), "y": b64(&p[1 + len..])})
            }
            Material::Ed(k) => {
                json!({"kty": "OKP", "kid": self.kid, "crv": "Ed25519", "x": b64(k.public_key().as_ref())})
            }
            Material::Hmac(s) => json!({"kty": "oct", "kid": self.kid, "k": b64(s)}),
        }
    }

    fn sign_with(&self, alg: &str, kid: Option<&str>, payload: &Value) -> String {
        let mut header = json!({"alg": alg, "typ": "JWT"});
        if let Some(k) = kid {
            header["kid"] = json!(k);
        }
        let signed = format!("{}.{}", b64(header.to_string().as_bytes()), b64(payload.to_string().as_bytes()));
        let rng = SystemRandom::new();
        let sig = match &self.m {
            Material::Rsa(k) => {
                let enc: &dyn signature::RsaEncoding = match alg {
                    "PS256" => &signature::RSA_PSS_SHA256,
                    "RS384" => &signature::RSA_PKCS1_SHA384,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut out = vec![0; k.public().modulus_len()];
                k.sign(enc, &rng, signed.as_bytes(), &mut out).unwrap();
                out
            }
            Material::Ec(k, _) => k.sign(&rng, signed.as_bytes()).unwrap().as_ref().to_vec(),
            Material::Ed(k) => k.sign(signed.as_bytes()).as_ref().to_vec(),
            Material::Hmac(s) => {
                ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s), signed.as_bytes()).as_ref().to_vec()
            }
        };
        format!("{signed}.{}", b64(&sig))
    }

    fn sign(&self, alg: &str, payload: &Value) -> String {
        self.sign_with(alg, Some(self.kid), payload)
    }
}

fn now() -> u64 {
    now_secs()
}

fn claims() -> Value {
    json!({"iss": ISS, "sub": "alice", "aud": "api", "exp": now() + 600, "scope": "read write"})
}

fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

fn build(v: Value) -> Result<JwtAuthnFilter, ConfigError> {
    let p: JwtAuthentication = xds_client::json::message_from_json(
        &xds_client::descriptors::pool(),
        v,
        xds_client::json::JsonOptions::default(),
    )
    .map_err(|e| ConfigError::new("json", e.to_string()))?;
    let cx = BuildCtx { stats: Arc::new(Store::default()), http_stat_prefix: Some("ing".into()), ..Default::default() };
    JwtAuthnFilter::from_proto(NAME, &p, &cx)
}

/// One provider `p` (extra fields merged in), required on every path.
fn filter_with(keys: &[&TestKey], extra: Value) -> JwtAuthnFilter {
    let mut provider = json!({"issuer": ISS, "audiences": ["api"], "local_jwks": {"inline_string": jwks(keys)}});
    if let (Some(p), Value::Object(e)) = (provider.as_object_mut(), extra) {
        p.extend(e);
    }
    build(json!({"providers": {"p": provider}, "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "p"}}]}))
        .unwrap()
}

struct Outcome {
    status: Option<u16>,
    body: String,
    www: Option<String>,
    parts: Parts,
    metadata: Option<DynamicMetadata>,
}

fn run_req(f: &JwtAuthnFilter, req: http::Request<()>) -> Outcome {
    let conn = ConnInfo::default();
    let mut cx = RequestCtx {
        remote: "10.0.0.1:1234".parse().unwrap(),
        direct_remote: "10.0.0.1:1234".parse().unwrap(),
        local: "10.0.0.2:8080".parse().unwrap(),
        conn: &conn,
        route: None,
        stat_prefix: "ing",
        state: http::Extensions::new(),
    };
    let (mut parts, ()) = req.into_parts();
    let action = f.on_request(&mut cx, &mut parts);
    let metadata = cx.state.get::<DynamicMetadata>().cloned();
    match action {
        FilterAction::Respond(r) => Outcome {
            status: Some(r.status.as_u16()),
            body: String::from_utf8_lossy(&r.body).into_owned(),
            www: r.headers.get("www-authenticate").map(|v| v.to_str().unwrap().to_string()),
            parts,
            metadata,
        },
        _ => Outcome { status: None, body: String::new(), www: None, parts, metadata },
    }
}

fn run(f: &JwtAuthnFilter, token: Option<&str>) -> Outcome {
    let mut b =
        http::Request::builder().uri("/api/x?q=1").header("host", "svc.local").header("x-forwarded-proto", "http");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    run_req(f, b.body(()).unwrap())
}

fn rejected(o: &Outcome) -> (u16, &str) {
    (o.status.unwrap_or(0), o.body.as_str())
}

#[test]
fn rs256_es256_eddsa_ps256_hs256_verify() {
    let ec = ec_key("ec1", false);
    let ec384 = ec_key("ec2", true);
    let ed = ed_key("ed1");
    let hm = TestKey { kid: "hs1", m: Material::Hmac(b"0123456789abcdef0123456789abcdef".to_vec()) };
    let f = filter_with(&[rsa_key(), &ec, &ec384, &ed, &hm], json!({}));
    for (k, alg) in [
        (rsa_key(), "RS256"),
        (rsa_key(), "PS256"),
        (rsa_key(), "RS384"),
        (&ec, "ES256"),
        (&ec384, "ES384"),
        (&ed, "EdDSA"),
        (&hm, "HS256"),
    ] {
        let o = run(&f, Some(&k.sign(alg, &claims())));
        assert_eq!(o.status, None, "{alg}: {}", o.body);
        // Not forwarded by default.
        assert!(o.parts.headers.get("authorization").is_none(), "{alg}");
    }
    // No kid in the token: every key is tried.
    assert_eq!(run(&f, Some(&ec.sign_with("ES256", None, &claims()))).status, None);
}

#[test]
fn failures_answer_as_envoy() {
    let ec = ec_key("ec1", false);
    let other = ec_key("ec1", false);
    let f = filter_with(&[&ec], json!({}));
    let mut c = claims();
    let o = run(&f, None);
    assert_eq!(rejected(&o), (401, "Jwt is missing"));
    assert_eq!(o.www.as_deref(), Some("Bearer realm=\"http://svc.local/api/x?q=1\""));

    c["exp"] = json!(now() - 120);
    let o = run(&f, Some(&ec.sign("ES256", &c)));
    assert_eq!(rejected(&o), (401, "Jwt is expired"));
    assert_eq!(o.www.as_deref(), Some("Bearer realm=\"http://svc.local/api/x?q=1\", error=\"invalid_token\""));
    // Within the default 60 s clock skew it passes.
    c["exp"] = json!(now() - 30);
    assert_eq!(run(&f, Some(&ec.sign("ES256", &c))).status, None);

    let mut c = claims();
    c["nbf"] = json!(now() + 300);
    assert_eq!(rejected(&run(&f, Some(&ec.sign("ES256", &c)))), (401, "Jwt not yet valid"));

    let mut c = claims();
    c["iss"] = json!("https://evil.example.com");
    assert_eq!(rejected(&run(&f, Some(&ec.sign("ES256", &c)))), (401, "Jwt issuer is not configured"));

    let mut c = claims();
    c["aud"] = json!(["other"]);
    assert_eq!(rejected(&run(&f, Some(&ec.sign("ES256", &c)))), (403, "Audiences in Jwt are not allowed"));

    assert_eq!(rejected(&run(&f, Some(&other.sign("ES256", &claims())))), (401, "Jwt verification fails"));
    let unknown_kid = other.sign_with("ES256", Some("nope"), &claims());
    assert_eq!(rejected(&run(&f, Some(&unknown_kid))), (401, "Jwks doesn't have key to match kid or alg from Jwt"));

    let bad = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections";
    assert_eq!(rejected(&run(&f, Some("abc.def"))), (401, bad));
    assert_eq!(rejected(&run(&f, Some("a.b.c.d"))), (401, bad));
    assert_eq!(rejected(&run(&f, Some("a!.e30.e30"))), (401, "Jwt header is an invalid Base64url encoded"));
    assert_eq!(
        rejected(&run(&f, Some("e30.e30.e30"))),
        (401, "Jwt header [alg] field is required and must be a string")
    );
    // alg: none is not an algorithm Envoy implements.
    let none = format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(claims().to_string().as_bytes()));
    assert_eq!(rejected(&run(&f, Some(&format!("{none}x")))), (401, "Jwt header [alg] is not supported"));
    let str_exp = json!({"iss": ISS, "exp": "soon"});
    assert_eq!(
        rejected(&run(&f, Some(&ec.sign("ES256", &str_exp)))),
        (401, "Jwt payload [exp] field is not an integer")
    );
    let neg_exp = json!({"iss": ISS, "exp": -1});
    assert_eq!(
        rejected(&run(&f, Some(&ec.sign("ES256", &neg_exp)))),
        (401, "Jwt payload [exp] field is not a positive 64 bit integer")
    );
    let aud_num = json!({"iss": ISS, "aud": 5});
    assert_eq!(
        rejected(&run(&f, Some(&ec.sign("ES256", &aud_num)))),
        (401, "Jwt payload [aud] field is not a string or string list")
    );
    // An oversized token is parsed like any other and fails without harm.
    let mut big = claims();
    big["pad"] = json!("x".repeat(200_000));
    let mut t = ec.sign("ES256", &big);
    t.push('A');
    assert_eq!(rejected(&run(&f, Some(&t))), (401, "Jwt verification fails"));
}

#[test]
fn strip_failure_response_sends_no_body_or_header() {
    let ec = ec_key("ec1", false);
    let p = json!({"issuer": ISS, "local_jwks": {"inline_string": jwks(&[&ec])}});
    let f = build(json!({"providers": {"p": p}, "strip_failure_response": true,
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "p"}}]}))
    .unwrap();
    let o = run(&f, None);
    assert_eq!((o.status, o.body.as_str(), o.www), (Some(401), "", None));
}

#[test]
fn verified_token_headers_and_metadata() {
    let ec = ec_key("ec1", false);
    let f = filter_with(
        &[&ec],
        json!({"forward": true, "forward_payload_header": "x-jwt-payload", "payload_in_metadata": "payload",
            "header_in_metadata": "hdr", "normalize_payload_in_metadata": {"space_delimited_claims": ["scope"]},
            "claim_to_headers": [{"header_name": "x-sub", "claim_name": "sub"}, {"header_name": "x-n", "claim_name": "nested.n"},
                {"header_name": "x-obj", "claim_name": "nested"}]}),
    );
    let mut c = claims();
    c["nested"] = json!({"n": 7});
    let t = ec.sign("ES256", &c);
    let req = http::Request::builder()
        .uri("/")
        .header("authorization", format!("Bearer {t}"))
        .header("x-sub", "forged")
        .header("x-jwt-payload", "forged")
        .body(())
        .unwrap();
    let o = run_req(&f, req);
    assert_eq!(o.status, None, "{}", o.body);
    let h = &o.parts.headers;
    assert_eq!(h.get("authorization").unwrap(), &format!("Bearer {t}"));
    assert_eq!(h.get_all("x-sub").iter().collect::<Vec<_>>(), vec!["alice"]);
    assert_eq!(h.get("x-n").unwrap(), "7");
    assert!(h.get("x-obj").is_none(), "objects are not copied to headers");
    assert_eq!(h.get("x-jwt-payload").unwrap(), t.split('.').nth(1).unwrap());
    let md = o.metadata.unwrap();
    let ns = md.get(METADATA_NAMESPACE).unwrap();
    let Some(Kind::StructValue(p)) = &ns.fields["payload"].kind else { panic!("payload struct") };
    assert!(matches!(&p.fields["sub"].kind, Some(Kind::StringValue(s)) if s == "alice"));
    let Some(Kind::ListValue(scope)) = &p.fields["scope"].kind else { panic!("scope list") };
    assert_eq!(scope.values.len(), 2);
    let Some(Kind::StructValue(hd)) = &ns.fields["hdr"].kind else { panic!("header struct") };
    assert!(matches!(&hd.fields["alg"].kind, Some(Kind::StringValue(s)) if s == "ES256"));
}

#[test]
fn pad_forward_payload_header() {
    let ec = ec_key("ec1", false);
    let f = filter_with(&[&ec], json!({"forward_payload_header": "x-p", "pad_forward_payload_header": true}));
    for extra in ["", "a", "ab", "abc"] {
        let mut c = claims();
        c["x"] = json!(extra);
        let o = run(&f, Some(&ec.sign("ES256", &c)));
        let v = o.parts.headers.get("x-p").unwrap().to_str().unwrap().to_string();
        assert_eq!(v.len() % 4, 0, "{v}");
        assert!(base64::engine::general_purpose::URL_SAFE.decode(&v).is_ok());
    }
}

#[test]
fn extraction_locations() {
    let ec = ec_key("ec1", false);
    let t = ec.sign("ES256", &claims());
    let f = filter_with(
        &[&ec],
        json!({"from_headers": [{"name": "x-token", "value_prefix": "Tok "}], "from_params": ["jwt"], "from_cookies": ["session"]}),
    );
    let req = |h: Option<(&str, String)>, uri: &str| {
        let mut b = http::Request::builder().uri(uri);
        if let Some((k, v)) = h {
            b = b.header(k, v);
        }
        run_req(&f, b.body(()).unwrap())
    };
    let o = req(Some(("x-token", format!("Tok {t}"))), "/");
    assert_eq!(o.status, None);
    assert!(o.parts.headers.get("x-token").is_none(), "removed when not forwarded");
    // The prefix may appear anywhere; the token starts at the next base64url character.
    assert_eq!(req(Some(("x-token", format!("a=1, Tok   {t}"))), "/").status, None);
    let o = req(None, &format!("/p?a=1&jwt={t}&b=2"));
    assert_eq!(o.status, None);
    assert_eq!(o.parts.uri.to_string(), "/p?a=1&b=2", "param removed");
    assert_eq!(req(Some(("cookie", format!("a=b; session=\"{t}\""))), "/").status, None);
    // The defaults are off once a location is configured.
    assert_eq!(req(Some(("authorization", format!("Bearer {t}"))), "/").status, Some(401));
    // Defaults: Authorization: Bearer and access_token.
    let d = filter_with(&[&ec], json!({}));
    let o = run_req(&d, http::Request::builder().uri(format!("/?access_token={t}")).body(()).unwrap());
    assert_eq!(o.status, None);
    assert_eq!(o.parts.uri.to_string(), "/");
    // Two tokens: both must verify.
    let two = http::Request::builder()
        .uri(format!("/?access_token={t}"))
        .header("authorization", "Bearer e30.e30.e30")
        .body(())
        .unwrap();
    assert_eq!(run_req(&d, two).status, Some(401));
}

fn two_providers(requires: Value) -> (JwtAuthnFilter, TestKey, TestKey) {
    let a = ec_key("a", false);
    let b = ed_key("b");
    let f = build(json!({
        "providers": {
            "pa": {"issuer": "https://a", "local_jwks": {"inline_string": jwks(&[&a])}, "from_headers": [{"name": "x-a"}]},
            "pb": {"issuer": "https://b", "local_jwks": {"inline_string": jwks(&[&b])}, "from_headers": [{"name": "x-b"}]}
        },
        "requirement_map": {"r": requires},
        "rules": [{"match": {"prefix": "/open"}}, {"match": {"prefix": "/"}, "requirement_name": "r"}]
    }))
    .unwrap();
    (f, a, b)
}

fn with(f: &JwtAuthnFilter, path: &str, headers: &[(&str, &str)]) -> Option<u16> {
    let mut b = http::Request::builder().uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    run_req(f, b.body(()).unwrap()).status
}

#[test]
fn requirements_any_all_allow_missing() {
    let tok = |k: &TestKey, iss: &str| {
        k.sign(if matches!(k.m, Material::Ed(_)) { "EdDSA" } else { "ES256" }, &json!({"iss": iss}))
    };
    let (any, a, b) =
        two_providers(json!({"requires_any": {"requirements": [{"provider_name": "pa"}, {"provider_name": "pb"}]}}));
    let (ta, tb) = (tok(&a, "https://a"), tok(&b, "https://b"));
    assert_eq!(with(&any, "/x", &[("x-a", &ta)]), None);
    assert_eq!(with(&any, "/x", &[("x-b", &tb)]), None);
    assert_eq!(with(&any, "/x", &[]), Some(401));
    assert_eq!(with(&any, "/open", &[]), None, "a rule without requirement");
    // A bad token in one location is reported over the missing one.
    let o = run_req(&any, http::Request::builder().uri("/x").header("x-a", tb.as_str()).body(()).unwrap());
    assert_eq!(rejected(&o), (401, "Jwt issuer is not configured"));

    let (all, a, b) =
        two_providers(json!({"requires_all": {"requirements": [{"provider_name": "pa"}, {"provider_name": "pb"}]}}));
    let (ta, tb) = (tok(&a, "https://a"), tok(&b, "https://b"));
    assert_eq!(with(&all, "/x", &[("x-a", &ta), ("x-b", &tb)]), None);
    assert_eq!(with(&all, "/x", &[("x-a", &ta)]), Some(401));

    // Istio's shape: requires_any [provider, allow_missing].
    let (istio, a, _) =
        two_providers(json!({"requires_any": {"requirements": [{"provider_name": "pa"}, {"allow_missing": {}}]}}));
    assert_eq!(with(&istio, "/x", &[]), None, "missing is allowed");
    assert_eq!(with(&istio, "/x", &[("x-a", &tok(&a, "https://a"))]), None);
    assert_eq!(with(&istio, "/x", &[("x-a", "e30.e30.e30")]), Some(401), "a bad token is not");

    let (am, a, _) = two_providers(json!({"allow_missing": {}}));
    assert_eq!(with(&am, "/x", &[]), None);
    assert_eq!(with(&am, "/x", &[("x-a", &tok(&a, "https://a"))]), None);
    assert_eq!(with(&am, "/x", &[("x-b", "e30.e30.e30")]), Some(401));
    let (amf, _, _) = two_providers(json!({"allow_missing_or_failed": {}}));
    assert_eq!(with(&amf, "/x", &[("x-b", "e30.e30.e30")]), None);

    let (pa, a, _) =
        two_providers(json!({"provider_and_audiences": {"provider_name": "pa", "audiences": ["https://svc/"]}}));
    assert_eq!(with(&pa, "/x", &[("x-a", &a.sign("ES256", &json!({"iss": "https://a", "aud": "svc"})))]), None);
    assert_eq!(with(&pa, "/x", &[("x-a", &a.sign("ES256", &json!({"iss": "https://a", "aud": "other"})))]), Some(403));
}

#[test]
fn subjects_lifetime_and_cors() {
    let ec = ec_key("ec1", false);
    let f = filter_with(&[&ec], json!({"subjects": {"prefix": "spiffe://"}, "max_lifetime": "3600s"}));
    let mut c = claims();
    c["sub"] = json!("spiffe://a/b");
    assert_eq!(run(&f, Some(&ec.sign("ES256", &c))).status, None);
    let o = run(&f, Some(&ec.sign("ES256", &claims())));
    assert_eq!(rejected(&o), (401, "Jwt verification fails"));
    c["exp"] = json!(now() + 7200);
    assert_eq!(rejected(&run(&f, Some(&ec.sign("ES256", &c)))), (401, "Jwt verification fails"));

    let p = json!({"issuer": ISS, "local_jwks": {"inline_string": jwks(&[&ec])}});
    let f = build(json!({"providers": {"p": p}, "bypass_cors_preflight": true,
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "p"}}]}))
    .unwrap();
    let pre = http::Request::builder()
        .method("OPTIONS")
        .uri("/")
        .header("origin", "https://x")
        .header("access-control-request-method", "GET")
        .body(())
        .unwrap();
    assert_eq!(run_req(&f, pre).status, None);
    let st = f.stats("ing");
    assert_eq!((st.cors_preflight_bypassed.value(), st.allowed.value()), (1, 1));
}

#[test]
fn config_is_checked() {
    let e =
        build(json!({"providers": {}, "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "nope"}}]}));
    assert!(e.err().unwrap().to_string().contains("Required provider ['nope'] is not configured."));
    let e = build(json!({"providers": {}, "requirement_map": {"b": {}, "a": {}},
        "rules": [{"match": {"prefix": "/"}, "requirement_name": "c"}]}));
    assert!(e.err().unwrap().to_string().contains("Wrong requirement_name: c. It should be one of [a,b]"));
    let remote = json!({"providers": {"p": {"issuer": ISS, "remote_jwks": {"http_uri": {"uri": "https://x/jwks", "cluster": "c", "timeout": "1s"}}}}});
    assert!(build(remote).err().unwrap().to_string().contains("remote_jwks"));
    let p521 = json!({"keys": [{"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}]}).to_string();
    let e = build(json!({"providers": {"p": {"issuer": ISS, "local_jwks": {"inline_string": p521}}}}));
    assert!(e.err().unwrap().to_string().contains("P-521"));
    // A JWKS without a usable key is refused with the first key's problem (Envoy 1.40's text).
    let bad = json!({"keys": [{"kty": "RSA", "n": 5}, {"kty": "EC"}]}).to_string();
    let e = build(json!({"providers": {"nokeys": {"issuer": ISS, "local_jwks": {"inline_string": bad}}}}));
    assert!(e.err().unwrap().to_string().contains(
        "Provider 'nokeys' in jwt_authn config has invalid local jwks: [n] field is not string for a RSA key"
    ));
    // No JWKS at all is accepted and fails every token.
    let f = build(json!({"providers": {"p": {"issuer": ISS, "local_jwks": {"inline_string": ""}}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "p"}}]}))
    .unwrap();
    let ec = ec_key("k", false);
    assert_eq!(rejected(&run(&f, Some(&ec.sign("ES256", &claims())))), (401, "Jwks doesn't have any valid public key"));
}

#[test]
fn jwks_skips_bad_keys_like_envoy() {
    let ec = ec_key("ec1", false);
    let mut keys = vec![json!({"kty": "EC", "alg": "RS256", "x": "AA", "y": "AA"}), json!(5), json!({"kty": "XX"})];
    keys.push(ec.jwk());
    let set = jwks::Jwks::parse(json!({"keys": keys}).to_string().as_bytes()).unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!(jwks::Jwks::parse(b"nope").unwrap_err(), jwks::JwksError::Invalid("Jwks is an invalid JSON"));
    assert_eq!(jwks::Jwks::parse(b"{}").unwrap_err(), jwks::JwksError::Invalid("Jwks does not have [keys] field"));
    let only_bad = json!({"keys": [5, {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}]}).to_string();
    assert_eq!(
        jwks::Jwks::parse(only_bad.as_bytes()).unwrap_err(),
        jwks::JwksError::Invalid("Jwks OKP [x] field is wrong length.")
    );
    assert_eq!(
        jwks::Jwks::parse(br#"{"keys": []}"#).unwrap_err(),
        jwks::JwksError::Invalid("Jwks doesn't have any valid public key")
    );
}

#[test]
fn per_route_disabled_and_requirement_name() {
    let (f, a, _) = two_providers(json!({"provider_name": "pa"}));
    let ta = a.sign("ES256", &json!({"iss": "https://a"}));
    let any = |v: PerRouteConfig| Any {
        type_url: format!("type.googleapis.com/{PER_ROUTE_TYPE}"),
        value: prost::Message::encode_to_vec(&v),
    };
    let disabled =
        PerRouteConfig { requirement_specifier: Some(per_route_config::RequirementSpecifier::Disabled(true)) };
    assert!(per_route_factory(&any(disabled), &BuildCtx::default()).is_ok());
    let off = PerRouteConfig { requirement_specifier: Some(per_route_config::RequirementSpecifier::Disabled(false)) };
    assert!(per_route_factory(&any(off), &BuildCtx::default()).is_err());
    // Routes carrying these are exercised end to end in tests/tests/diff_jwt.rs.
    let _ = (ta, f);
}

/// Istio 1.10-1.20's chain: jwt_authn (payload under the issuer) -> istio_authn (origins) -> RBAC
/// on `istio_authn` `request.auth.principal`; and Istio 1.21+'s: RBAC on the jwt_authn payload.
#[test]
fn istio_chains_reach_rbac() {
    use crate::filters::http::rbac::RbacFilter;
    let ec = ec_key("k", false);
    let rbac = |v: Value| {
        let p = xds_client::json::message_from_json(
            &xds_client::descriptors::pool(),
            v,
            xds_client::json::JsonOptions::default(),
        )
        .unwrap();
        let cx =
            BuildCtx { stats: Arc::new(Store::default()), http_stat_prefix: Some("ing".into()), ..Default::default() };
        RbacFilter::from_proto("envoy.filters.http.rbac", &p, &cx).unwrap()
    };
    let principal = |filter: &str, path: Value, v: &str| {
        json!({"rules": {"action": "ALLOW", "policies": {"p": {"permissions": [{"any": true}],
            "principals": [{"metadata": {"filter": filter, "path": path, "value": {"string_match": {"exact": v}}}}]}}}})
    };
    let chain = |filters: Vec<Arc<dyn HttpFilter>>, token: &str| {
        let conn = ConnInfo::default();
        let mut cx = RequestCtx {
            remote: "10.0.0.1:1".parse().unwrap(),
            direct_remote: "10.0.0.1:1".parse().unwrap(),
            local: "10.0.0.2:80".parse().unwrap(),
            conn: &conn,
            route: None,
            stat_prefix: "ing",
            state: http::Extensions::new(),
        };
        let (mut parts, ()) = http::Request::builder()
            .uri("/")
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap()
            .into_parts();
        for f in &filters {
            if let FilterAction::Respond(r) = f.on_request(&mut cx, &mut parts) {
                return r.status.as_u16();
            }
        }
        200
    };
    let jwt = |metadata_key: &str| -> Arc<dyn HttpFilter> {
        let p =
            json!({"issuer": ISS, "local_jwks": {"inline_string": jwks(&[&ec])}, "payload_in_metadata": metadata_key});
        Arc::new(
            build(json!({"providers": {"origins-0": p}, "rules": [{"match": {"prefix": "/"},
                "requires": {"requires_any": {"requirements": [{"provider_name": "origins-0"}, {"allow_missing": {}}]}}}]}))
            .unwrap(),
        )
    };
    let alice = ec.sign("ES256", &claims());
    let mut c = claims();
    c["sub"] = json!("bob");
    let bob = ec.sign("ES256", &c);

    let authn: Arc<dyn HttpFilter> = crate::filters::http::istio_authn::from_any(
        "istio_authn",
        &crate::filters::http::istio_authn::istiod_config(&[ISS]),
        "",
    )
    .unwrap()
    .unwrap();
    let old = |t: &str| {
        let r = rbac(principal("istio_authn", json!([{"key": "request.auth.principal"}]), &format!("{ISS}/alice")));
        chain(vec![jwt(ISS), authn.clone(), Arc::new(r)], t)
    };
    assert_eq!(old(&alice), 200);
    assert_eq!(old(&bob), 403);

    let new = |t: &str| {
        let r = rbac(json!({"rules": {"action": "ALLOW", "policies": {"p": {"permissions": [{"any": true}],
        "principals": [{"and_ids": {"ids": [
            {"metadata": {"filter": NAME, "path": [{"key": "payload"}, {"key": "iss"}], "value": {"string_match": {"exact": ISS}}}},
            {"metadata": {"filter": NAME, "path": [{"key": "payload"}, {"key": "sub"}], "value": {"string_match": {"exact": "alice"}}}}
        ]}}]}}}}));
        chain(vec![jwt("payload"), Arc::new(r)], t)
    };
    assert_eq!(new(&alice), 200);
    assert_eq!(new(&bob), 403);
}

/// Garbage in every position: never a panic, always a 401 (nothing here verifies).
#[test]
fn garbage_tokens_never_panic() {
    let ec = ec_key("k", false);
    let f =
        filter_with(&[&ec], json!({"from_headers": [{"name": "x-t"}], "from_params": ["t"], "from_cookies": ["c"]}));
    let good = ec.sign("ES256", &claims());
    let pieces = [
        "",
        ".",
        "..",
        "e30",
        "eyJhbGciOiJFUzI1NiJ9",
        "%",
        "=",
        "===",
        "\u{e9}",
        "*",
        " ",
        "e30=",
        "bnVsbA",
        "W10",
        "MQ",
    ];
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..3000 {
        let mut t = String::new();
        for _ in 0..rng.usize(1..8) {
            t.push_str(pieces[rng.usize(..pieces.len())]);
            if rng.bool() {
                t.push('.');
            }
        }
        if rng.u8(..10) == 0 {
            // A real token with a changed signed byte (a base64 character, a dot, or an extra dot).
            let mut b = good.clone().into_bytes();
            let i = rng.usize(..good.rfind('.').unwrap_or(1));
            let c = b"A.-_x"[rng.usize(..5)];
            if b[i] == c {
                continue;
            }
            b[i] = c;
            t = String::from_utf8(b).unwrap();
        }
        let enc = percent_encoding::utf8_percent_encode(&t, percent_encoding::NON_ALPHANUMERIC).to_string();
        let Ok(req) = http::Request::builder()
            .uri(format!("/p?t={enc}"))
            .header("x-t", t.as_str())
            .header("cookie", format!("c={enc}"))
            .body(())
        else {
            continue;
        };
        assert_eq!(run_req(&f, req).status, Some(401), "{t:?}");
    }
}
