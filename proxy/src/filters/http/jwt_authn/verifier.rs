//! Providers and requirements, compiled once, and their evaluation for a request (Envoy's
//! `Verifier` tree and `Authenticator`). Local JWKS only, so a request is decided synchronously.
//!
//! Semantics kept from Envoy: every token found for a requirement must verify (tokens are tried
//! last-found first); `requires_any` passes on the first passing child and otherwise reports the
//! most telling failure (anything over an unknown issuer, an unknown issuer over a missing token),
//! with `allow_missing` / `allow_missing_or_failed` in the list applying to that result;
//! `requires_all` stops at the first failure; a bare `allow_missing[_or_failed]` checks the tokens
//! of every provider, finding each token's provider by its issuer. Header writes and removals of
//! a verified token happen even if an enclosing requirement fails later, as in Envoy.

use std::collections::HashMap;

use envoy_types::pb::google::protobuf::{ListValue, Struct, Value as PbValue, value::Kind};
use http::request::Parts;
use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::extractor::{Extractor, Token};
use super::jwks::Jwks;
use super::jwt::Jwt;
use super::status::Status;
use crate::matcher::StringMatcher;

/// Audiences compared as jwt_verify_lib does: without an `http://`/`https://` scheme and a
/// trailing slash.
#[derive(Debug, Clone, Default)]
pub struct Audiences(Vec<String>);

fn sanitize_aud(a: &str) -> &str {
    let a = a.strip_prefix("http://").or_else(|| a.strip_prefix("https://")).unwrap_or(a);
    a.strip_suffix('/').unwrap_or(a)
}

impl Audiences {
    pub fn new(list: &[String]) -> Self {
        Audiences(list.iter().map(|a| sanitize_aud(a).to_string()).collect())
    }

    /// True when none are configured or one of the token's audiences is configured.
    pub fn allows(&self, token_auds: &[String]) -> bool {
        self.0.is_empty() || token_auds.iter().any(|a| self.0.iter().any(|c| c == sanitize_aud(a)))
    }
}

/// A compiled `JwtProvider`.
#[derive(Debug)]
pub struct Provider {
    pub issuer: String,
    pub audiences: Audiences,
    pub subjects: Option<StringMatcher>,
    /// `require_expiration` / `max_lifetime`: None = any token; Some(None) = must have `exp`;
    /// Some(Some(s)) = must expire within `s` seconds from now.
    pub max_exp: Option<Option<f64>>,
    pub forward: bool,
    pub forward_payload_header: Option<HeaderName>,
    pub pad_forward_payload_header: bool,
    pub payload_in_metadata: String,
    pub space_delimited_claims: Vec<String>,
    pub header_in_metadata: String,
    pub claim_to_headers: Vec<(HeaderName, String)>,
    /// Select the route again after a token of this provider verified.
    pub clear_route_cache: bool,
    pub clock_skew: u64,
    /// None without local JWKS (an empty inline string): every token then fails with "Jwks
    /// doesn't have any valid public key", as in Envoy.
    pub jwks: Option<Jwks>,
    pub extractor: Extractor,
}

/// All providers, and the extractor over all of them (for `allow_missing[_or_failed]`).
#[derive(Debug, Default)]
pub struct Providers {
    pub list: Vec<Provider>,
    pub by_name: HashMap<String, usize>,
    pub all: Extractor,
}

impl Providers {
    /// The first provider (by name) with this issuer, else the first without an issuer.
    fn by_issuer(&self, iss: &str) -> Option<&Provider> {
        self.list.iter().find(|p| p.issuer == iss).or_else(|| self.list.iter().find(|p| p.issuer.is_empty()))
    }
}

/// A compiled `JwtRequirement`.
#[derive(Debug)]
pub enum Requirement {
    Provider { index: usize, audiences: Option<Audiences> },
    Any { children: Vec<Requirement>, allow_missing_or_failed: bool, allow_missing: bool },
    All(Vec<Requirement>),
    AllowMissingOrFailed,
    AllowMissing,
    AllowAll,
}

/// Per-request verification state.
pub struct VerifyCtx<'r> {
    pub req: &'r mut Parts,
    /// Seconds since the Unix epoch.
    pub now: u64,
    /// What verified tokens put into the metadata (`payload_in_metadata` /
    /// `header_in_metadata` name -> struct).
    pub extracted: Vec<(String, Struct)>,
    /// A verified token's provider asks for the route to be selected again.
    pub clear_route_cache: bool,
    /// Tokens checked for a named provider (Envoy's `jwt_cache_miss`).
    pub tokens_for_provider: u64,
}

impl Requirement {
    pub fn verify(&self, ps: &Providers, cx: &mut VerifyCtx<'_>) -> Status {
        match self {
            Requirement::Provider { index, audiences } => {
                let Some(p) = ps.list.get(*index) else { return Status::JwtUnknownIssuer };
                authenticate(ps, Some((p, audiences.as_ref())), false, false, &p.extractor, cx)
            }
            Requirement::AllowMissingOrFailed => authenticate(ps, None, true, true, &ps.all, cx),
            Requirement::AllowMissing => authenticate(ps, None, false, true, &ps.all, cx),
            Requirement::AllowAll => Status::Ok,
            Requirement::All(children) => {
                for c in children {
                    let s = c.verify(ps, cx);
                    if !s.is_ok() {
                        return s;
                    }
                }
                Status::Ok
            }
            Requirement::Any { children, allow_missing_or_failed, allow_missing } => {
                let mut result = Status::JwtMissed;
                for c in children {
                    let s = c.verify(ps, cx);
                    if s.is_ok() {
                        return Status::Ok;
                    }
                    if (s != Status::JwtMissed && s != Status::JwtUnknownIssuer) || result == Status::JwtMissed {
                        result = s;
                    }
                }
                if *allow_missing_or_failed || (*allow_missing && result == Status::JwtMissed) {
                    Status::Ok
                } else {
                    result
                }
            }
        }
    }
}

/// Envoy's `Authenticator`: verifies every token the extractor finds.
fn authenticate(
    ps: &Providers,
    provider: Option<(&Provider, Option<&Audiences>)>,
    allow_failed: bool,
    allow_missing: bool,
    extractor: &Extractor,
    cx: &mut VerifyCtx<'_>,
) -> Status {
    extractor.sanitize(cx.req);
    let mut tokens = extractor.extract(cx.req);
    let finish = |s: Status| {
        if allow_failed || (allow_missing && s == Status::JwtMissed) { Status::Ok } else { s }
    };
    while let Some(token) = tokens.pop() {
        if provider.is_some() {
            cx.tokens_for_provider += 1;
        }
        let s = verify_token(ps, provider, &token, cx);
        if (!s.is_ok() && !allow_failed && !allow_missing) || tokens.is_empty() {
            return finish(s);
        }
    }
    finish(Status::JwtMissed)
}

fn verify_token(
    ps: &Providers,
    provider: Option<(&Provider, Option<&Audiences>)>,
    token: &Token<'_>,
    cx: &mut VerifyCtx<'_>,
) -> Status {
    let jwt = match Jwt::parse(&token.value) {
        Ok(j) => j,
        Err(s) => return s,
    };
    if !token.issuers.allows(&jwt.iss) {
        return Status::JwtUnknownIssuer;
    }
    let (p, audiences) = match provider {
        Some((p, a)) => (p, a),
        None => match ps.by_issuer(&jwt.iss) {
            Some(p) => (p, None),
            None => return Status::JwtUnknownIssuer,
        },
    };
    if let Err(s) = jwt.verify_time(cx.now, p.clock_skew) {
        return s;
    }
    if !audiences.unwrap_or(&p.audiences).allows(&jwt.audiences) {
        return Status::JwtAudienceNotAllowed;
    }
    if let Some(m) = &p.subjects
        && !m.matches(&jwt.sub)
    {
        return Status::JwtVerificationFail;
    }
    if let Some(max) = p.max_exp {
        let ok = match (jwt.exp, max) {
            (0, _) => false,
            (_, None) => true,
            (exp, Some(secs)) => (exp as f64 - cx.now as f64) < secs,
        };
        if !ok {
            return Status::JwtVerificationFail;
        }
    }
    let Some(jwks) = &p.jwks else { return Status::JwksNoValidKeys };
    let s = jwks.verify(&jwt);
    if !s.is_ok() {
        return s;
    }
    accept(p, &jwt, token, cx);
    Status::Ok
}

/// What a verified token does to the request: payload and claim headers, token removal,
/// metadata.
fn accept(p: &Provider, jwt: &Jwt<'_>, token: &Token<'_>, cx: &mut VerifyCtx<'_>) {
    if let Some(h) = &p.forward_payload_header {
        let v = if p.pad_forward_payload_header {
            let pad = (4 - jwt.payload_b64.len() % 4) % 4;
            HeaderValue::from_str(&format!("{}{}", jwt.payload_b64, &"==="[..pad]))
        } else {
            HeaderValue::from_str(jwt.payload_b64)
        };
        if let Ok(v) = v {
            cx.req.headers.append(h.clone(), v);
        }
    }
    for (header, claim) in &p.claim_to_headers {
        let v = match jwt.claim(claim) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => number_text(n.as_f64().unwrap_or(0.0)),
            Some(Value::Bool(b)) => b.to_string(),
            _ => continue,
        };
        if !v.is_empty()
            && let Ok(v) = HeaderValue::from_str(&v)
        {
            cx.req.headers.append(header.clone(), v);
        }
    }
    if !p.forward {
        token.location.remove(cx.req);
    }
    cx.clear_route_cache |= p.clear_route_cache;
    if !p.header_in_metadata.is_empty() {
        cx.extracted.push((p.header_in_metadata.clone(), to_struct(&jwt.header, &[])));
    }
    if !p.payload_in_metadata.is_empty() {
        cx.extracted.push((p.payload_in_metadata.clone(), to_struct(&jwt.payload, &p.space_delimited_claims)));
    }
}

/// Envoy's claim number to text: an unsigned integer as such, anything else as C's `%f`.
fn number_text(d: f64) -> String {
    if (0.0..18_446_744_073_709_551_616.0).contains(&d) && d.fract() == 0.0 {
        format!("{}", d as u64)
    } else {
        format!("{d:.6}")
    }
}

fn to_pb(v: &Value) -> PbValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(ListValue { values: a.iter().map(to_pb).collect() }),
        Value::Object(m) => Kind::StructValue(to_struct(m, &[])),
    };
    PbValue { kind: Some(kind) }
}

/// A JSON object as a protobuf `Struct`; the listed claims, when strings, become lists of their
/// space-separated words (`normalize_payload_in_metadata.space_delimited_claims`).
pub fn to_struct(m: &Map<String, Value>, space_delimited: &[String]) -> Struct {
    let mut s = Struct::default();
    for (k, v) in m {
        let pv = match v {
            Value::String(text) if space_delimited.iter().any(|c| c == k) => PbValue {
                kind: Some(Kind::ListValue(ListValue {
                    values: text
                        .split(' ')
                        .filter(|w| !w.is_empty())
                        .map(|w| PbValue { kind: Some(Kind::StringValue(w.to_string())) })
                        .collect(),
                })),
            },
            _ => to_pb(v),
        };
        s.fields.insert(k.clone(), pv);
    }
    s
}
