//! A JWT parsed as Envoy's jwt_verify_lib parses it: the same checks in the same order, so a bad
//! token gets the same status (and so the same 401 body) as in Envoy. The signature is checked
//! later against a provider's keys (`jwks.rs`).

use base64::Engine as _;
use serde_json::{Map, Value};

use super::status::Status;

/// base64url as absl's `WebSafeBase64Unescape` reads it: padding optional.
pub(crate) const B64URL: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// The signing algorithms Envoy implements (`alg` must be one of these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Es256,
    Es384,
    Es512,
    Hs256,
    Hs384,
    Hs512,
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    EdDsa,
}

impl Alg {
    pub fn from_name(s: &str) -> Option<Alg> {
        Some(match s {
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "ES512" => Alg::Es512,
            "HS256" => Alg::Hs256,
            "HS384" => Alg::Hs384,
            "HS512" => Alg::Hs512,
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "EdDSA" => Alg::EdDsa,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::Es512 => "ES512",
            Alg::Hs256 => "HS256",
            Alg::Hs384 => "HS384",
            Alg::Hs512 => "HS512",
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::EdDsa => "EdDSA",
        }
    }
}

/// A parsed (not yet verified) JWT.
#[derive(Debug)]
pub struct Jwt<'a> {
    /// `<header>.<payload>`: the signed bytes.
    pub signed: std::borrow::Cow<'a, str>,
    /// The payload segment as sent (for `forward_payload_header`).
    pub payload_b64: &'a str,
    pub alg: Alg,
    pub kid: String,
    pub header: Map<String, Value>,
    pub payload: Map<String, Value>,
    pub iss: String,
    pub sub: String,
    pub nbf: u64,
    pub exp: u64,
    pub audiences: Vec<String>,
    pub signature: Vec<u8>,
}

/// How a claim of the wrong type is reported.
enum Get<'v> {
    Missing,
    Ok(&'v Value),
}

fn get<'v>(m: &'v Map<String, Value>, k: &str) -> Get<'v> {
    match m.get(k) {
        None => Get::Missing,
        Some(v) => Get::Ok(v),
    }
}

fn string_claim(m: &Map<String, Value>, k: &str, wrong: Status) -> Result<String, Status> {
    match get(m, k) {
        Get::Missing => Ok(String::new()),
        Get::Ok(Value::String(s)) => Ok(s.clone()),
        Get::Ok(_) => Err(wrong),
    }
}

/// jwt_verify_lib's `GetUInt64`: a JSON number in [0, 2^64), truncated.
fn u64_claim(m: &Map<String, Value>, k: &str, wrong: Status, range: Status) -> Result<u64, Status> {
    match get(m, k) {
        Get::Missing => Ok(0),
        Get::Ok(Value::Number(n)) => {
            let d = n.as_f64().unwrap_or(f64::NAN);
            if !(0.0..18_446_744_073_709_551_616.0).contains(&d) {
                return Err(range);
            }
            Ok(d as u64)
        }
        Get::Ok(_) => Err(wrong),
    }
}

fn json_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

impl<'a> Jwt<'a> {
    /// Parses a token; the error is the status Envoy reports for it.
    pub fn parse(token: &'a str) -> Result<Jwt<'a>, Status> {
        // Split on '.', skipping empty pieces, as absl::StrSplit(.., SkipEmpty()) does.
        let mut parts = token.split('.').filter(|p| !p.is_empty());
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(Status::JwtBadFormat);
        };
        let header_bytes = B64URL.decode(h).map_err(|_| Status::JwtHeaderParseErrorBadBase64)?;
        let header = json_object(&header_bytes).ok_or(Status::JwtHeaderParseErrorBadJson)?;
        let alg = match get(&header, "alg") {
            Get::Ok(Value::String(a)) => Alg::from_name(a).ok_or(Status::JwtHeaderNotImplementedAlg)?,
            _ => return Err(Status::JwtHeaderBadAlg),
        };
        let kid = string_claim(&header, "kid", Status::JwtHeaderBadKid)?;
        let payload_bytes = B64URL.decode(p).map_err(|_| Status::JwtPayloadParseErrorBadBase64)?;
        let payload = json_object(&payload_bytes).ok_or(Status::JwtPayloadParseErrorBadJson)?;
        let iss = string_claim(&payload, "iss", Status::JwtPayloadParseErrorIssNotString)?;
        let sub = string_claim(&payload, "sub", Status::JwtPayloadParseErrorSubNotString)?;
        u64_claim(
            &payload,
            "iat",
            Status::JwtPayloadParseErrorIatNotInteger,
            Status::JwtPayloadParseErrorIatOutOfRange,
        )?;
        let nbf = u64_claim(
            &payload,
            "nbf",
            Status::JwtPayloadParseErrorNbfNotInteger,
            Status::JwtPayloadParseErrorNbfOutOfRange,
        )?;
        let exp = u64_claim(
            &payload,
            "exp",
            Status::JwtPayloadParseErrorExpNotInteger,
            Status::JwtPayloadParseErrorExpOutOfRange,
        )?;
        string_claim(&payload, "jti", Status::JwtPayloadParseErrorJtiNotString)?;
        let audiences = match get(&payload, "aud") {
            Get::Missing => Vec::new(),
            Get::Ok(Value::String(a)) => vec![a.clone()],
            Get::Ok(Value::Array(list)) => {
                let mut out = Vec::with_capacity(list.len());
                for v in list {
                    match v {
                        Value::String(a) => out.push(a.clone()),
                        _ => return Err(Status::JwtPayloadParseErrorAudNotString),
                    }
                }
                out
            }
            Get::Ok(_) => return Err(Status::JwtPayloadParseErrorAudNotString),
        };
        let signature = B64URL.decode(s).map_err(|_| Status::JwtSignatureParseErrorBadBase64)?;
        // The signed bytes are the first two pieces joined by one dot (borrowed when the token
        // has them so).
        let start = h.as_ptr() as usize - token.as_ptr() as usize;
        let end = start + h.len() + 1 + p.len();
        let signed = match token.get(start..end) {
            Some(t)
                if t.len() == h.len() + 1 + p.len()
                    && t.ends_with(p)
                    && t.starts_with(h)
                    && t.as_bytes()[h.len()] == b'.' =>
            {
                std::borrow::Cow::Borrowed(t)
            }
            _ => std::borrow::Cow::Owned(format!("{h}.{p}")),
        };
        Ok(Jwt { signed, payload_b64: p, alg, kid, header, payload, iss, sub, nbf, exp, audiences, signature })
    }

    /// `nbf` and `exp` against `now`, with the clock skew allowed either way.
    pub fn verify_time(&self, now: u64, skew: u64) -> Result<(), Status> {
        if now.saturating_add(skew) < self.nbf {
            return Err(Status::JwtNotYetValid);
        }
        if self.exp != 0 && now > self.exp.saturating_add(skew) {
            return Err(Status::JwtExpired);
        }
        Ok(())
    }

    /// A claim by a dotted path (`a.b.c`), as jwt_verify_lib's `StructUtils::GetValue` finds it.
    pub fn claim(&self, path: &str) -> Option<&Value> {
        let mut cur = &self.payload;
        let mut segs = path.split('.').peekable();
        while let Some(seg) = segs.next() {
            let v = cur.get(seg)?;
            if segs.peek().is_none() {
                return Some(v);
            }
            match v {
                Value::Object(m) => cur = m,
                _ => return None,
            }
        }
        None
    }
}
