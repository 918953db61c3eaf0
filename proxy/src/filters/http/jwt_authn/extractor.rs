//! Where tokens are found (Envoy's `Extractor`): `from_headers` (name + value prefix),
//! `from_params`, `from_cookies`, or by default `Authorization: Bearer <token>` and the
//! `access_token` query parameter. Locations are shared by the providers that name them, each
//! location remembering which issuers may use it. Also removes a token when a provider does not
//! `forward` it, and the headers a provider writes (`sanitize`) before verification.

use std::collections::BTreeMap;

use http::HeaderName;
use http::request::Parts;

/// The issuers allowed to use a location (a provider without an issuer allows all).
#[derive(Debug, Clone, Default)]
pub struct IssuerChecker {
    allow_all: bool,
    issuers: Vec<String>,
}

impl IssuerChecker {
    fn add(&mut self, issuer: &str) {
        if issuer.is_empty() {
            self.allow_all = true;
        } else if !self.issuers.iter().any(|i| i == issuer) {
            self.issuers.push(issuer.to_string());
        }
    }

    pub fn allows(&self, iss: &str) -> bool {
        self.allow_all || self.issuers.iter().any(|i| i == iss)
    }
}

#[derive(Debug)]
struct HeaderLocation {
    name: HeaderName,
    prefix: String,
    issuers: IssuerChecker,
}

/// Where a token came from, to remove it.
#[derive(Debug, Clone)]
pub enum Location {
    Header(HeaderName),
    Param(String),
    Cookie,
}

/// An extracted token.
#[derive(Debug)]
pub struct Token<'e> {
    pub value: String,
    pub issuers: &'e IssuerChecker,
    pub location: Location,
}

/// What one provider contributes to an extractor.
pub struct ProviderLocations<'a> {
    pub issuer: &'a str,
    pub headers: Vec<(HeaderName, String)>,
    pub params: &'a [String],
    pub cookies: &'a [String],
    /// `forward_payload_header` and `claim_to_headers` names: removed from the request first.
    pub written_headers: Vec<HeaderName>,
}

/// The compiled locations of one provider or of several.
#[derive(Debug, Default)]
pub struct Extractor {
    /// Sorted by header name + prefix, as Envoy's std::map orders them.
    headers: Vec<HeaderLocation>,
    params: Vec<(String, IssuerChecker)>,
    cookies: Vec<(String, IssuerChecker)>,
    sanitize: Vec<HeaderName>,
}

const BASE64URL_AND_DOT: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";

impl Extractor {
    pub fn new<'a>(providers: impl IntoIterator<Item = ProviderLocations<'a>>) -> Self {
        let mut headers: BTreeMap<String, HeaderLocation> = BTreeMap::new();
        let mut params: BTreeMap<String, IssuerChecker> = BTreeMap::new();
        let mut cookies: BTreeMap<String, IssuerChecker> = BTreeMap::new();
        let mut sanitize = Vec::new();
        for p in providers {
            let default = p.headers.is_empty() && p.params.is_empty() && p.cookies.is_empty();
            let mut hs = p.headers;
            if default {
                hs.push((http::header::AUTHORIZATION, "Bearer ".to_string()));
            }
            for (name, prefix) in hs {
                let key = format!("{}{prefix}", name.as_str());
                headers
                    .entry(key)
                    .or_insert_with(|| HeaderLocation { name, prefix, issuers: IssuerChecker::default() })
                    .issuers
                    .add(p.issuer);
            }
            let default_param = ["access_token".to_string()];
            let ps: &[String] = if default { &default_param } else { p.params };
            for name in ps {
                params.entry(name.clone()).or_default().add(p.issuer);
            }
            for name in p.cookies {
                cookies.entry(name.clone()).or_default().add(p.issuer);
            }
            sanitize.extend(p.written_headers);
        }
        Extractor {
            headers: headers.into_values().collect(),
            params: params.into_iter().collect(),
            cookies: cookies.into_iter().collect(),
            sanitize,
        }
    }

    /// Removes the headers the providers write, so a client cannot forge them.
    pub fn sanitize(&self, req: &mut Parts) {
        for h in &self.sanitize {
            req.headers.remove(h);
        }
    }

    /// Every token in the request, in Envoy's order (headers, then params, then cookies).
    pub fn extract(&self, req: &Parts) -> Vec<Token<'_>> {
        let mut out = Vec::new();
        for loc in &self.headers {
            for v in req.headers.get_all(&loc.name) {
                let v = String::from_utf8_lossy(v.as_bytes());
                let token = if loc.prefix.is_empty() {
                    v.as_ref()
                } else {
                    let Some(pos) = v.find(loc.prefix.as_str()) else { continue };
                    let after = pos + loc.prefix.len();
                    // Skip to the first base64url character (or the rest as is, if none).
                    match v[after..].bytes().position(|b| BASE64URL_AND_DOT.contains(&b)) {
                        Some(i) => &v[after + i..],
                        None => v.as_ref(),
                    }
                };
                out.push(Token {
                    value: token.to_string(),
                    issuers: &loc.issuers,
                    location: Location::Header(loc.name.clone()),
                });
            }
        }
        if !self.params.is_empty()
            && let Some(q) = req.uri.query()
        {
            for (name, issuers) in &self.params {
                if let Some(v) = query_param(q, name) {
                    out.push(Token { value: v, issuers, location: Location::Param(name.clone()) });
                }
            }
        }
        if !self.cookies.is_empty() {
            for (name, issuers) in &self.cookies {
                if let Some(v) = cookie(req, name) {
                    out.push(Token { value: v, issuers, location: Location::Cookie });
                }
            }
        }
        out
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// The first value of a query parameter, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    let query = query.split('#').next().unwrap_or("");
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (decode(k) == name).then(|| decode(v))
    })
}

/// The first cookie of that name (surrounding double quotes removed), as Envoy's `parseCookies`.
fn cookie(req: &Parts, name: &str) -> Option<String> {
    for h in req.headers.get_all(http::header::COOKIE) {
        let Ok(h) = h.to_str() else { continue };
        for c in h.split(';') {
            let c = c.trim_start();
            let (k, v) = c.split_once('=').unwrap_or((c, ""));
            if k == name {
                let v = if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') { &v[1..v.len() - 1] } else { v };
                return Some(v.to_string());
            }
        }
    }
    None
}

impl Location {
    /// Removes the token from the request (cookies are left, as Envoy leaves them).
    pub fn remove(&self, req: &mut Parts) {
        match self {
            Location::Header(h) => {
                req.headers.remove(h);
            }
            Location::Param(name) => {
                let Some(pq) = req.uri.path_and_query() else { return };
                let Some(q) = pq.query() else { return };
                let kept: Vec<&str> = q
                    .split('&')
                    .filter(|kv| {
                        let k = kv.split_once('=').map_or(*kv, |(k, _)| k);
                        decode(k) != *name
                    })
                    .collect();
                let new =
                    if kept.is_empty() { pq.path().to_string() } else { format!("{}?{}", pq.path(), kept.join("&")) };
                let Ok(new) = new.parse() else { return };
                let mut uparts = req.uri.clone().into_parts();
                uparts.path_and_query = Some(new);
                if let Ok(u) = http::Uri::from_parts(uparts) {
                    req.uri = u;
                }
            }
            Location::Cookie => {}
        }
    }
}
