//! A provider's JSON Web Key Set, parsed once when config is built (never per request), and the
//! signature check against it, both following jwt_verify_lib: keys with a problem are skipped, a
//! set with no usable key leaves the provider without keys, a token's `kid` and `alg` select the
//! candidate keys, and every candidate is tried. The signatures are checked with `ring`, the
//! crypto the rest of remora uses.

use base64::Engine as _;
use ring::signature::{self, UnparsedPublicKey};
use serde_json::{Map, Value};

use super::jwt::{Alg, B64URL, Jwt};
use super::status::Status;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
}

#[derive(Debug)]
enum KeyMaterial {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed SEC1 point (`04 || x || y`).
    Ec {
        curve: Curve,
        point: Vec<u8>,
    },
    Oct(Vec<u8>),
    Ed25519(Vec<u8>),
}

#[derive(Debug)]
struct Key {
    kid: String,
    alg: String,
    material: KeyMaterial,
}

/// A parsed key set (only its usable keys).
#[derive(Debug, Default)]
pub struct Jwks {
    keys: Vec<Key>,
}

/// Why a key set cannot be used at all, or a key remora cannot honour.
#[derive(Debug, PartialEq, Eq)]
pub enum JwksError {
    /// Envoy would accept the set (it warns and the provider has no keys): jwt_verify_lib's text.
    Invalid(&'static str),
    /// A key or format Envoy verifies and remora cannot: the config is refused.
    Unsupported(String),
}

fn str_field<'v>(m: &'v Map<String, Value>, k: &str) -> Result<Option<&'v str>, ()> {
    match m.get(k) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(()),
    }
}

/// One key's outcome: usable, skipped (Envoy skips it too), or refused.
enum KeyResult {
    Ok(Key),
    Skip,
    Unsupported(String),
}

fn parse_key(m: &Map<String, Value>) -> KeyResult {
    let Ok(Some(kty)) = str_field(m, "kty") else { return KeyResult::Skip };
    let kid = str_field(m, "kid").ok().flatten().unwrap_or("").to_string();
    let alg = str_field(m, "alg").ok().flatten().unwrap_or("").to_string();
    let material = match kty {
        "RSA" => {
            if !(alg.is_empty() || alg.starts_with("RS") || alg.starts_with("PS")) {
                return KeyResult::Skip;
            }
            let (Ok(Some(n)), Ok(Some(e))) = (str_field(m, "n"), str_field(m, "e")) else { return KeyResult::Skip };
            match (B64URL.decode(n), B64URL.decode(e)) {
                (Ok(n), Ok(e)) if !n.is_empty() && !e.is_empty() => KeyMaterial::Rsa { n, e },
                _ => return KeyResult::Skip,
            }
        }
        "EC" => {
            if !alg.is_empty() && !alg.starts_with("ES") {
                return KeyResult::Skip;
            }
            let Ok(crv) = str_field(m, "crv") else { return KeyResult::Skip };
            let crv = crv.unwrap_or("");
            if !alg.is_empty() && !crv.is_empty() {
                let ok = matches!((alg.as_str(), crv), ("ES256", "P-256") | ("ES384", "P-384") | ("ES512", "P-521"));
                if !ok {
                    return KeyResult::Skip;
                }
            }
            let curve = if alg == "ES256" || crv == "P-256" || (alg.is_empty() && crv.is_empty()) {
                Curve::P256
            } else if alg == "ES384" || crv == "P-384" {
                Curve::P384
            } else if alg == "ES512" || crv == "P-521" {
                return KeyResult::Unsupported("ES512 (P-521) keys are not supported".into());
            } else {
                return KeyResult::Skip;
            };
            let (Ok(Some(x)), Ok(Some(y))) = (str_field(m, "x"), str_field(m, "y")) else { return KeyResult::Skip };
            let (Ok(x), Ok(y)) = (B64URL.decode(x), B64URL.decode(y)) else { return KeyResult::Skip };
            let len = if curve == Curve::P256 { 32 } else { 48 };
            // Coordinates are big-endian numbers: shorter ones are left-padded.
            let coord = |v: &[u8]| -> Option<Vec<u8>> {
                let v = &v[v.iter().take_while(|b| **b == 0).count().min(v.len())..];
                (v.len() <= len).then(|| {
                    let mut out = vec![0u8; len - v.len()];
                    out.extend_from_slice(v);
                    out
                })
            };
            let (Some(x), Some(y)) = (coord(&x), coord(&y)) else { return KeyResult::Skip };
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            KeyMaterial::Ec { curve, point }
        }
        "oct" => {
            if !alg.is_empty() && !matches!(alg.as_str(), "HS256" | "HS384" | "HS512") {
                return KeyResult::Skip;
            }
            let Ok(Some(k)) = str_field(m, "k") else { return KeyResult::Skip };
            match B64URL.decode(k) {
                Ok(k) if !k.is_empty() => KeyMaterial::Oct(k),
                _ => return KeyResult::Skip,
            }
        }
        "OKP" => {
            if !alg.is_empty() && alg != "EdDSA" {
                return KeyResult::Skip;
            }
            if str_field(m, "crv") != Ok(Some("Ed25519")) {
                return KeyResult::Skip;
            }
            let Ok(Some(x)) = str_field(m, "x") else { return KeyResult::Skip };
            match B64URL.decode(x) {
                Ok(x) if x.len() == 32 => KeyMaterial::Ed25519(x),
                _ => return KeyResult::Skip,
            }
        }
        _ => return KeyResult::Skip,
    };
    KeyResult::Ok(Key { kid, alg, material })
}

impl Jwks {
    /// Parses a JWKS document.
    pub fn parse(text: &[u8]) -> Result<Jwks, JwksError> {
        let doc: Map<String, Value> = match serde_json::from_slice(text) {
            Ok(Value::Object(m)) => m,
            _ => return Err(JwksError::Invalid("Jwks is an invalid JSON")),
        };
        let keys = match doc.get("keys") {
            None => {
                // Google's `{"kid": "<PEM certificate>"}` form.
                if !doc.is_empty() && doc.values().all(|v| v.as_str().is_some_and(|s| s.contains("-----BEGIN"))) {
                    return Err(JwksError::Unsupported("JWKS as a map of X.509 certificates is not supported".into()));
                }
                return Err(JwksError::Invalid("Jwks does not have [keys] field"));
            }
            Some(Value::Array(list)) => list,
            Some(_) => return Err(JwksError::Invalid("[keys] in Jwks is not an array")),
        };
        let mut out = Vec::new();
        for k in keys {
            let Value::Object(m) = k else { continue };
            match parse_key(m) {
                KeyResult::Ok(key) => out.push(key),
                KeyResult::Skip => {}
                KeyResult::Unsupported(why) => return Err(JwksError::Unsupported(why)),
            }
        }
        if out.is_empty() {
            return Err(JwksError::Invalid("Jwks doesn't have any valid public key"));
        }
        Ok(Jwks { keys: out })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks a token's signature (jwt_verify_lib's `verifyJwtWithoutTimeChecking`).
    pub fn verify(&self, jwt: &Jwt<'_>) -> Status {
        let msg = jwt.signed.as_bytes();
        let sig = jwt.signature.as_slice();
        let mut kid_alg_matched = false;
        for key in &self.keys {
            if !jwt.kid.is_empty() && !key.kid.is_empty() && key.kid != jwt.kid {
                continue;
            }
            if !key.alg.is_empty() && key.alg != jwt.alg.name() {
                continue;
            }
            kid_alg_matched = true;
            let ok = match &key.material {
                KeyMaterial::Ec { curve, point } => {
                    let alg: &dyn signature::VerificationAlgorithm = match (curve, jwt.alg) {
                        (Curve::P384, Alg::Es384) => &signature::ECDSA_P384_SHA384_FIXED,
                        (Curve::P256, a) if !matches!(a, Alg::Es384 | Alg::Es512) => {
                            &signature::ECDSA_P256_SHA256_FIXED
                        }
                        // A curve used with another hash: not a signature anyone makes.
                        _ => continue,
                    };
                    UnparsedPublicKey::new(alg, point).verify(msg, sig).is_ok()
                }
                KeyMaterial::Rsa { n, e } => {
                    let params: &signature::RsaParameters = match jwt.alg {
                        Alg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                        Alg::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                        Alg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                        Alg::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                        Alg::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
                        Alg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                        _ => continue,
                    };
                    signature::RsaPublicKeyComponents { n: n.as_slice(), e: e.as_slice() }
                        .verify(params, msg, sig)
                        .is_ok()
                }
                KeyMaterial::Oct(k) => {
                    let a = match jwt.alg {
                        Alg::Hs384 => ring::hmac::HMAC_SHA384,
                        Alg::Hs512 => ring::hmac::HMAC_SHA512,
                        _ => ring::hmac::HMAC_SHA256,
                    };
                    ring::hmac::verify(&ring::hmac::Key::new(a, k), msg, sig).is_ok()
                }
                KeyMaterial::Ed25519(x) => {
                    if sig.len() != 64 {
                        return Status::JwtEd25519SignatureWrongLength;
                    }
                    UnparsedPublicKey::new(&signature::ED25519, x).verify(msg, sig).is_ok()
                }
            };
            if ok {
                return Status::Ok;
            }
        }
        if kid_alg_matched { Status::JwtVerificationFail } else { Status::JwksKidAlgMismatch }
    }
}
