//! Differential suite "jwt" (tests/configs/diff_jwt.yaml): envoy.filters.http.jwt_authn through
//! Envoy and remora with the same keys and tokens, made here (RSA by the openssl CLI, P-256 and
//! Ed25519 by ring): Envoy's 401/403 bodies and `www-authenticate` for missing, expired,
//! not-yet-valid, badly signed, wrongly addressed, malformed and `alg: none` tokens; forward on
//! and off, payload and claim headers, token locations (header, prefix, query, cookie),
//! requires_any / requires_all / allow_missing / allow_missing_or_failed, per-route `disabled`
//! and `requirement_name`, CORS preflight bypass, and RBAC on the payload metadata in Istio's
//! requestPrincipals shape (403 `RBAC: access denied` vs 200).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{Value, json};
use tests::Request;
use tests::diff::{Case, Suite};

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

enum Key {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

struct Signer {
    kid: &'static str,
    key: Key,
}

impl Signer {
    fn rsa(kid: &'static str) -> Signer {
        let out = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-outform", "DER"])
            .output()
            .expect("openssl genpkey");
        let k = RsaKeyPair::from_pkcs8(&out.stdout).or_else(|_| RsaKeyPair::from_der(&out.stdout)).expect("rsa key");
        Signer { kid, key: Key::Rsa(k) }
    }

    fn ec(kid: &'static str) -> Signer {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        Signer { kid, key: Key::Ec(EcdsaKeyPair::from_pkcs8(alg, doc.as_ref(), &rng).unwrap()) }
    }

    fn ed(kid: &'static str) -> Signer {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Signer { kid, key: Key::Ed(Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap()) }
    }

    fn alg(&self) -> &'static str {
        match self.key {
            Key::Rsa(_) => "RS256",
            Key::Ec(_) => "ES256",
            Key::Ed(_) => "EdDSA",
        }
    }

    fn jwks(&self) -> String {
        let jwk = match &self.key {
            Key::Rsa(k) => {
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(k.public());
                json!({"kty": "RSA", "kid": self.kid, "alg": "RS256", "n": b64(&c.n), "e": b64(&c.e)})
            }
            Key::Ec(k) => {
                let p = k.public_key().as_ref();
                json!({"kty": "EC", "kid": self.kid, "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..])})
            }
            Key::Ed(k) => json!({"kty": "OKP", "kid": self.kid, "crv": "Ed25519", "x": b64(k.public_key().as_ref())}),
        };
        json!({"keys": [jwk]}).to_string()
    }

    fn token_with(&self, header: Value, claims: &Value) -> String {
        let signed = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let rng = SystemRandom::new();
        let sig = match &self.key {
            Key::Rsa(k) => {
                let mut out = vec![0; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, signed.as_bytes(), &mut out).unwrap();
                out
            }
            Key::Ec(k) => k.sign(&rng, signed.as_bytes()).unwrap().as_ref().to_vec(),
            Key::Ed(k) => k.sign(signed.as_bytes()).as_ref().to_vec(),
        };
        format!("{signed}.{}", b64(&sig))
    }

    fn token(&self, claims: &Value) -> String {
        self.token_with(json!({"alg": self.alg(), "kid": self.kid, "typ": "JWT"}), claims)
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn claims(iss: &str, sub: &str) -> Value {
    json!({"iss": iss, "sub": sub, "aud": "api", "exp": now() + 3600, "iat": now(),
        "scope": "read admin", "level": 3, "org": {"team": "blue"}})
}

fn bearer(path: &str, token: &str) -> Request {
    Request::get(path).header("authorization", &format!("Bearer {token}"))
}

const RS: &str = "https://rs.example.com";
const ES: &str = "https://es.example.com";
const ED: &str = "https://ed.example.com";

#[test]
fn jwt_authn_matches_envoy() {
    let rs = Signer::rsa("rs-1");
    let es = Signer::ec("es-1");
    let ed = Signer::ed("ed-1");
    let other_rs = Signer::rsa("rs-1");
    let mut s = Suite::new("jwt", "diff_jwt.yaml")
        .upstreams(&["a", "b"])
        .value("jwks_rs", rs.jwks())
        .value("jwks_es", es.jwks())
        .value("jwks_ed", ed.jwks());

    let good = rs.token(&claims(RS, "alice"));
    let es_good = es.token(&claims(ES, "bob"));
    let ed_good = ed.token(&claims(ED, "carol"));

    // Verification outcomes on one provider (RS256, Authorization: Bearer).
    s.add_both(Case::new("missing", Request::get("/rs")).expect_status(401).expect_body("Jwt is missing"));
    s.add_both(
        Case::new("valid", bearer("/rs/x?q=1", &good).header("x-jwt-sub", "forged"))
            .expect_status(200)
            .expect_seen("authorization", None)
            .expect_seen("x-jwt-sub", Some("alice"))
            .expect_seen("x-jwt-level", Some("3"))
            .expect_seen("x-jwt-team", Some("blue")),
    );
    let mut c = claims(RS, "alice");
    c["exp"] = json!(now() - 3600);
    s.add(Case::new("expired", bearer("/rs", &rs.token(&c))).expect_status(401).expect_body("Jwt is expired"));
    let mut c = claims(RS, "alice");
    c["nbf"] = json!(now() + 3600);
    s.add(Case::new("not-yet-valid", bearer("/rs", &rs.token(&c))).expect_status(401));
    s.add(
        Case::new("bad-signature", bearer("/rs", &other_rs.token(&claims(RS, "alice"))))
            .expect_status(401)
            .expect_body("Jwt verification fails"),
    );
    let mut c = claims(RS, "alice");
    c["aud"] = json!(["nope", "other"]);
    s.add(
        Case::new("wrong-audience", bearer("/rs", &rs.token(&c)))
            .expect_status(403)
            .expect_body("Audiences in Jwt are not allowed"),
    );
    let mut c = claims(RS, "alice");
    c["aud"] = json!("http://svc.example.com");
    s.add(Case::new("audience-sanitised", bearer("/rs", &rs.token(&c))).expect_status(200));
    s.add(Case::new("provider-and-audiences", bearer("/aud", &good)).expect_status(403));
    s.add(
        Case::new("wrong-issuer", bearer("/rs", &rs.token(&claims("https://evil.example.com", "alice"))))
            .expect_status(401)
            .expect_body("Jwt issuer is not configured"),
    );
    s.add(
        Case::new(
            "unknown-kid",
            bearer("/rs", &rs.token_with(json!({"alg": "RS256", "kid": "zzz"}), &claims(RS, "a"))),
        )
        .expect_status(401),
    );
    s.add(Case::new("alg-mismatch", bearer("/rs", &es.token(&claims(RS, "a")))).expect_status(401));
    s.add(Case::new("malformed/two-parts", bearer("/rs", "abc.def")).expect_status(401));
    s.add(Case::new("malformed/bad-base64", bearer("/rs", "a*b.e30.e30")).expect_status(401));
    s.add(Case::new("malformed/not-json", bearer("/rs", "YWJj.e30.e30")).expect_status(401));
    let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), b64(claims(RS, "a").to_string().as_bytes()));
    s.add(Case::new("alg-none", bearer("/rs", &none)).expect_status(401));
    s.add(Case::new("bearer-lowercase", Request::get("/rs").header("authorization", &format!("bearer {good}"))));
    s.add(Case::new("query-default", Request::get(&format!("/rs?a=1&access_token={good}&b=2"))).expect_status(200));
    s.add(
        Case::new("two-tokens-one-bad", bearer(&format!("/rs?access_token={good}"), "e30.e30.e30")).expect_status(401),
    );
    let mut c = claims(RS, "alice");
    c["exp"] = json!("tomorrow");
    s.add(Case::new("exp-not-integer", bearer("/rs", &rs.token(&c))).expect_status(401));

    s.add(Case::new(
        "grpc-missing",
        Request::get("/rs").method("POST").header("content-type", "application/grpc").h2c(),
    ));
    s.add(Case::new(
        "grpc-expired",
        bearer("/rs", &rs.token(&json!({"iss": RS, "exp": 1000})))
            .method("POST")
            .header("content-type", "application/grpc")
            .h2c(),
    ));

    // Other providers: header with forward, query/cookie with padded payload header.
    s.add_both(
        Case::new("es/forward", Request::get("/es").header("x-es-token", &es_good).header("x-es-payload", "forged"))
            .expect_status(200)
            .expect_seen("x-es-token", Some(&es_good))
            .expect_seen("x-es-payload", Some(es_good.split('.').nth(1).unwrap())),
    );
    s.add(Case::new("es/bearer-is-not-its-location", bearer("/es", &es_good)).expect_status(401));
    let mut c = claims(ES, "bob");
    c["exp"] = json!(now() - 30);
    s.add(Case::new("es/clock-skew-5s", Request::get("/es").header("x-es-token", &es.token(&c))).expect_status(401));
    s.add(
        Case::new("ed/query", Request::get(&format!("/ed/p?x=1&tok={ed_good}")))
            .expect_status(200)
            .expect_path("/ed/p?x=1"),
    );
    s.add(
        Case::new("ed/cookie", Request::get("/ed").header("cookie", &format!("a=b; edtok={ed_good}")))
            .expect_status(200),
    );
    let mut c = claims(ED, "carol");
    c.as_object_mut().unwrap().remove("exp");
    s.add(Case::new("ed/require-expiration", Request::get(&format!("/ed?tok={}", ed.token(&c)))).expect_status(401));

    // subjects, max_lifetime and a header value prefix.
    let sub = |subject: &str, life: u64| {
        let mut c = claims("https://sub.example.com", subject);
        c["exp"] = json!(now() + life);
        Request::get("/sub").header("x-sub-token", &format!("x, Tok {}", rs.token(&c)))
    };
    s.add(Case::new("sub/ok", sub("spiffe://td/ns/a", 300)).expect_status(200));
    s.add(Case::new("sub/wrong-subject", sub("alice", 300)).expect_status(401));
    s.add(Case::new("sub/lifetime-too-long", sub("spiffe://td/ns/a", 3600)).expect_status(401));

    // clear_route_cache: the claim header written by the filter selects the route.
    let cr = |team: &str| {
        let mut c = claims("https://cr.example.com", "dave");
        c["org"]["team"] = json!(team);
        Request::get("/cr").header("x-cr-token", &es.token(&c))
    };
    s.add_both(
        Case::new("clear-route-cache/blue", cr("blue")).expect_upstream("b").expect_seen("x-route-team", Some("blue")),
    );
    s.add(Case::new("clear-route-cache/red", cr("red")).expect_upstream("a"));
    s.add(Case::new("clear-route-cache/forged", Request::get("/cr").header("x-route-team", "blue")).expect_status(401));

    // strip_failure_response: no body, no www-authenticate.
    s.add(
        Case::new("strip/missing", Request::get("/x"))
            .listener("strip")
            .expect_status(401)
            .expect_resp("www-authenticate", None),
    );
    s.add(
        Case::new("strip/wrong-aud", bearer("/x", &rs.token(&json!({"iss": RS, "aud": "no"}))))
            .listener("strip")
            .expect_status(403),
    );
    s.add(Case::new("strip/bad-name", Request::get("/badname")).listener("strip").expect_status(403));
    s.add(Case::new("strip/valid", bearer("/x", &good)).listener("strip").expect_status(200));

    // Requirements.
    s.add(Case::new("any/es", Request::get("/any").header("x-es-token", &es_good)).expect_status(200));
    s.add(Case::new("any/none", Request::get("/any")).expect_status(401).expect_body("Jwt is missing"));
    s.add(Case::new("any/bad-es", Request::get("/any").header("x-es-token", "e30.e30.e30")).expect_status(401));
    s.add(Case::new("all/both", bearer("/all", &good).header("x-es-token", &es_good)).expect_status(200));
    s.add(Case::new("all/rs-only", bearer("/all", &good)).expect_status(401));
    s.add(Case::new("optional/none", Request::get("/optional")).expect_status(200));
    s.add(Case::new("optional/good", bearer("/optional", &good)).expect_status(200));
    s.add(Case::new("optional/bad", bearer("/optional", "e30.e30.e30")).expect_status(401));
    s.add(Case::new("istio2/none", Request::get("/istio2")).expect_status(200));
    s.add(Case::new("istio2/rs", bearer("/istio2", &good)).expect_status(200));
    s.add(Case::new("istio2/es", Request::get("/istio2").header("x-es-token", &es_good)).expect_status(200));
    s.add(Case::new("istio2/both", bearer("/istio2", &good).header("x-es-token", &es_good)).expect_status(200));
    s.add(Case::new("istio2/bad-rs", bearer("/istio2", "e30.e30.e30")).expect_status(401));
    s.add(Case::new("istio2/good-rs-bad-es", bearer("/istio2", &good).header("x-es-token", "e30.e30.e30")));
    s.add(Case::new("istio2/es-token-in-rs-place", bearer("/istio2", &es_good)).expect_status(401));
    s.add(Case::new("failed/bad", bearer("/failed", "e30.e30.e30")).expect_status(200));
    s.add(Case::new("failed/good-es", Request::get("/failed").header("x-es-token", &es_good)).expect_status(200));
    s.add(Case::new("missing-allowed/none", Request::get("/missing")).expect_status(200));
    s.add(Case::new("missing-allowed/bad", Request::get("/missing").header("x-es-token", &ed_good)).expect_status(401));
    s.add(Case::new("open", Request::get("/open")).expect_status(200));
    s.add(Case::new("default-rule", Request::get("/elsewhere")).expect_status(401));

    // Per-route configs.
    s.add(Case::new("route/disabled", Request::get("/disabled")).expect_status(200));
    s.add(Case::new("route/by-name", bearer("/byname", &good).header("x-es-token", &es_good)).expect_status(200));
    s.add(Case::new("route/by-name-missing", bearer("/byname", &good)).expect_status(401));
    s.add(Case::new("route/bad-name", Request::get("/badname")).expect_status(403));

    // CORS preflight bypass.
    s.add(
        Case::new(
            "cors-preflight",
            Request::get("/rs")
                .method("OPTIONS")
                .header("origin", "https://x")
                .header("access-control-request-method", "GET"),
        )
        .expect_status(200),
    );
    s.add(Case::new("options-not-preflight", Request::get("/rs").method("OPTIONS")).expect_status(401));

    // RBAC on the payload metadata (Istio's requestPrincipals and claims shapes).
    s.add(Case::new("rbac/principal", bearer("/rbac", &good)).expect_status(200));
    s.add(
        Case::new("rbac/other-subject", bearer("/rbac", &rs.token(&claims(RS, "mallory"))))
            .expect_status(403)
            .expect_body("RBAC: access denied"),
    );
    s.add(Case::new("rbac/no-token", Request::get("/rbac")).expect_status(403));
    s.add(Case::new("rbac/scope-claim", bearer("/rbac/scope", &rs.token(&claims(RS, "mallory")))).expect_status(200));
    s.run();
}
