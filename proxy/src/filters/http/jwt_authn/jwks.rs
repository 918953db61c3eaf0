//! A provider's JSON Web Key Set, parsed once when config is built (never per request), and the
//! signature check against it, both following jwt_verify_lib: keys with a problem are skipped, a
//! set with no usable key is refused (with the first key's problem), a token's `kid` and `alg`
//! select the candidate keys, and every candidate is tried. The signatures are checked with
//! `ring`, the crypto the rest of remora uses (JWT parsing is ours, so that every malformed token
//! gets Envoy's exact status; no JWT crate reports those).

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
    /// Envoy refuses the config: jwt_verify_lib's text.
    Invalid(&'static str),
    /// A key or format Envoy verifies and remora cannot: the config is refused.
    Unsupported(String),
}

/// A field's value: absent, a string, or of another type.
enum Field<'v> {
    Missing,
    Str(&'v str),
    Other,
}

fn field<'v>(m: &'v Map<String, Value>, k: &str) -> Field<'v> {
    match m.get(k) {
        None => Field::Missing,
        Some(Value::String(s)) => Field::Str(s),
        Some(_) => Field::Other,
    }
}

/// A required string field, or jwt_verify_lib's error for it missing / not a string.
fn required<'v>(
    m: &'v Map<String, Value>,
    k: &str,
    missing: &'static str,
    bad: &'static str,
) -> Result<&'v str, KeyError> {
    match field(m, k) {
        Field::Str(s) => Ok(s),
        Field::Missing => Err(KeyError::Invalid(missing)),
        Field::Other => Err(KeyError::Invalid(bad)),
    }
}

/// Why a key cannot be used: jwt_verify_lib's text (Envoy skips the key, and refuses the set if
/// no key is usable), or a key remora cannot verify with.
enum KeyError {
    Invalid(&'static str),
    Unsupported(String),
}

fn parse_key(m: &Map<String, Value>) -> Result<Key, KeyError> {
    use KeyError::Invalid;
    let kty = required(m, "kty", "[kty] is missing in [keys]", "[kty] is bad in [keys]")?;
    let opt = |k: &str| match field(m, k) {
        Field::Str(s) => s.to_string(),
        _ => String::new(),
    };
    let (kid, alg) = (opt("kid"), opt("alg"));
    let material = match kty {
        "RSA" => {
            if !(alg.is_empty() || alg.starts_with("RS") || alg.starts_with("PS")) {
                return Err(Invalid("[alg] is not started with [RS] or [PS] for an RSA key"));
            }
            let n = required(m, "n", "[n] field is missing for a RSA key", "[n] field is not string for a RSA key")?;
            let e = required(m, "e", "[e] field is missing for a RSA key", "[e] field is not string for a RSA key")?;
            match (B64URL.decode(n), B64URL.decode(e)) {
                (Ok(n), Ok(e)) if !n.is_empty() && !e.is_empty() => KeyMaterial::Rsa { n, e },
                _ => return Err(Invalid("Jwks RSA [n] or [e] field is missing or has a parse error")),
            }
        }
        "EC" => {
            if !(alg.is_empty() || alg.starts_with("ES")) {
                return Err(Invalid("[alg] is not started with [ES] for an EC key"));
            }
            let crv = match field(m, "crv") {
                Field::Str(c) => c,
                Field::Missing => "",
                Field::Other => return Err(Invalid("[crv] field is not string for an EC key")),
            };
            if !alg.is_empty()
                && !crv.is_empty()
                && !matches!((alg.as_str(), crv), ("ES256", "P-256") | ("ES384", "P-384") | ("ES512", "P-521"))
            {
                return Err(Invalid("[crv] field specified is not compatible with [alg] for an EC key"));
            }
            let curve = if alg == "ES256" || crv == "P-256" || (alg.is_empty() && crv.is_empty()) {
                Curve::P256
            } else if alg == "ES384" || crv == "P-384" {
                Curve::P384
            } else if alg == "ES512" || crv == "P-521" {
                return Err(KeyError::Unsupported("ES512 (P-521) keys are not supported".into()));
            } else {
                return Err(Invalid("[crv] or [alg] field is not supported for an EC key"));
            };
            let x = required(m, "x", "[x] field is missing for an EC key", "[x] field is not string for an EC key")?;
            let y = required(m, "y", "[y] field is missing for an EC key", "[y] field is not string for an EC key")?;
            let (Ok(x), Ok(y)) = (B64URL.decode(x), B64URL.decode(y)) else {
                return Err(Invalid("Jwks EC [x] or [y] field is an invalid Base64."));
            };
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
            let (Some(x), Some(y)) = (coord(&x), coord(&y)) else {
                return Err(Invalid("Jwks EC [x] and [y] fields have a parse error."));
            };
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            KeyMaterial::Ec { curve, point }
        }
        "oct" => {
            if !alg.is_empty() && !matches!(alg.as_str(), "HS256" | "HS384" | "HS512") {
                return Err(Invalid("[alg] does not start with [HS] for an HMAC key"));
            }
            let k =
                required(m, "k", "[k] field is missing for an HMAC key", "[k] field is not string for an HMAC key")?;
            match B64URL.decode(k) {
                Ok(k) if !k.is_empty() => KeyMaterial::Oct(k),
                _ => return Err(Invalid("Jwks Oct key is an invalid Base64")),
            }
        }
        "OKP" => {
            if !alg.is_empty() && alg != "EdDSA" {
                return Err(Invalid("[alg] is not [EdDSA] for an OKP key"));
            }
            let crv = required(
                m,
                "crv",
                "[crv] field is missing for an OKP key",
                "[crv] field is not string for an OKP key",
            )?;
            if crv != "Ed25519" {
                return Err(Invalid("[crv] field is not supported for an OKP key"));
            }
            let x = required(m, "x", "[x] field is missing for an OKP key", "[x] field is not string for an OKP key")?;
            match B64URL.decode(x) {
                Ok(x) if x.len() == 32 => KeyMaterial::Ed25519(x),
                Ok(_) => return Err(Invalid("Jwks OKP [x] field is wrong length.")),
                Err(_) => return Err(Invalid("Jwks OKP [x] field is an invalid Base64.")),
            }
        }
        _ => return Err(Invalid("[kty] is not supported in [keys]")),
    };
    Ok(Key { kid, alg, material })
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
        // jwt_verify_lib reports the first failure, if no key is usable.
        let mut first_error = None;
        for k in keys {
            let Value::Object(m) = k else { continue };
            match parse_key(m) {
                Ok(key) => out.push(key),
                Err(KeyError::Invalid(why)) => {
                    first_error.get_or_insert(why);
                }
                Err(KeyError::Unsupported(why)) => return Err(JwksError::Unsupported(why)),
            }
        }
        if out.is_empty() {
            return Err(JwksError::Invalid(first_error.unwrap_or("Jwks doesn't have any valid public key")));
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
