//! `envoy.filters.http.jwt_authn`: verifies JSON Web Tokens against providers with local JWKS
//! and enforces requirements chosen by route rules, a per-route `requirement_name`, or not at
//! all (`PerRouteConfig.disabled`).
//!
//! Answers as Envoy's: a failure is a local reply with jwt_verify_lib's text as the body (401,
//! 403 for a disallowed audience) and `www-authenticate: Bearer realm="<original URL>"` (with
//! `, error="invalid_token"` unless the token was missing); `strip_failure_response` sends neither
//! body nor header. A verified token can be forwarded or removed, its payload copied to a header
//! (`forward_payload_header`), claims to headers (`claim_to_headers`), and its payload/header to
//! the dynamic metadata namespace `envoy.filters.http.jwt_authn` (what Istio's RBAC reads).
//!
//! `clear_route_cache` has the route selected again after a token verified (claim headers can
//! then steer routing). Config is compiled once: JWKS are parsed when the listener is built.
//! Remote JWKS, filter-state rules, `failed_status_in_metadata` and extract-only requirements are
//! refused. Stats: `http.<hcm prefix>.jwt_authn.<stat_prefix>allowed|denied|
//! cors_preflight_bypassed|jwt_cache_miss` (and, always 0, `jwt_cache_hit|jwks_fetch_success|
//! jwks_fetch_failed`).

mod extractor;
pub mod jwks;
pub mod jwt;
pub mod status;
mod verifier;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtProvider, JwtRequirement, PerRouteConfig, jwt_provider, jwt_requirement, per_route_config,
    requirement_rule,
};
use envoy_types::pb::google::protobuf::{Any, Value as PbValue, value::Kind};
use http::request::Parts;
use http::{HeaderName, HeaderValue};

use super::{FilterAction, HttpFilter, RequestCtx};
use crate::config::{BuildCtx, ConfigError};
use crate::http::local_reply::LocalReply;
use crate::matcher::{RequestHeaders, StringMatcher};
use crate::router::route::{MatchInput, RouteMatcher};
use crate::stats::{Counter, Store};
use extractor::{Extractor, ProviderLocations};
use status::Status;
use verifier::{Audiences, Provider, Providers, Requirement, VerifyCtx};

pub const NAME: &str = "envoy.filters.http.jwt_authn";
pub const TYPE: &str = "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
pub const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig";
/// The dynamic metadata namespace verified payloads go to.
pub const METADATA_NAMESPACE: &str = "envoy.filters.http.jwt_authn";
/// jwt_verify_lib's default clock skew.
const DEFAULT_CLOCK_SKEW: u64 = 60;
/// Envoy keeps at most this much of the path in the `www-authenticate` realm.
const MAX_REALM_PATH: usize = 256;

/// A compiled `PerRouteConfig`.
#[derive(Debug)]
pub enum JwtPerRoute {
    Disabled,
    RequirementName(String),
}

/// The `typed_per_filter_config` factory.
pub fn per_route_factory(any: &Any, _cx: &BuildCtx) -> Result<Arc<dyn std::any::Any + Send + Sync>, ConfigError> {
    let p: PerRouteConfig = xds_client::any::unpack(any).map_err(|e| ConfigError::new("", e.to_string()))?;
    Ok(Arc::new(match p.requirement_specifier {
        Some(per_route_config::RequirementSpecifier::Disabled(true)) => JwtPerRoute::Disabled,
        Some(per_route_config::RequirementSpecifier::Disabled(false)) => {
            return Err(ConfigError::new("disabled", "value must equal true"));
        }
        Some(per_route_config::RequirementSpecifier::RequirementName(n)) if !n.is_empty() => {
            JwtPerRoute::RequirementName(n)
        }
        Some(per_route_config::RequirementSpecifier::RequirementName(_)) => {
            return Err(ConfigError::new("requirement_name", "value length must be at least 1 characters"));
        }
        None => return Err(ConfigError::new("requirement_specifier", "value is required")),
    }))
}

/// The HTTP filter factory.
pub fn factory(name: &str, any: &Any, cx: &BuildCtx) -> Result<Arc<dyn HttpFilter>, ConfigError> {
    let p: JwtAuthentication =
        xds_client::any::unpack(any).map_err(|e| ConfigError::new("typed_config", e.to_string()))?;
    Ok(Arc::new(JwtAuthnFilter::from_proto(name, &p, cx).map_err(|e| e.within("typed_config"))?))
}

/// A JSON object as the `Struct` the filter puts in the metadata (for tests of the filters that
/// read it).
#[cfg(test)]
pub(crate) fn payload_struct(
    m: &serde_json::Map<String, serde_json::Value>,
) -> envoy_types::pb::google::protobuf::Struct {
    verifier::to_struct(m, &[])
}

// === config translation ===

fn header_name(s: &str, field: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(s.to_ascii_lowercase().as_bytes())
        .map_err(|_| ConfigError::new(field, format!("invalid header name {s:?}")))
}

fn provider_from_proto(name: &str, p: &JwtProvider, field: &str) -> Result<Provider, ConfigError> {
    let f = |n: &str| format!("{field}.{n}");
    let subjects = match &p.subjects {
        Some(m) => Some(StringMatcher::from_proto(m, &f("subjects"))?),
        None => None,
    };
    let mut max_exp = p.require_expiration.then_some(None);
    if let Some(d) = &p.max_lifetime {
        max_exp = Some(Some(d.seconds as f64 + f64::from(d.nanos) / 1e9));
    }
    let mut headers = Vec::new();
    for (i, h) in p.from_headers.iter().enumerate() {
        headers.push((header_name(&h.name, &f(&format!("from_headers[{i}].name")))?, h.value_prefix.clone()));
    }
    let forward_payload_header = match p.forward_payload_header.as_str() {
        "" => None,
        h => Some(header_name(h, &f("forward_payload_header"))?),
    };
    let mut claim_to_headers = Vec::new();
    for (i, c) in p.claim_to_headers.iter().enumerate() {
        let hf = f(&format!("claim_to_headers[{i}]"));
        if c.claim_name.is_empty() {
            return Err(ConfigError::new(format!("{hf}.claim_name"), "value length must be at least 1 characters"));
        }
        claim_to_headers.push((header_name(&c.header_name, &format!("{hf}.header_name"))?, c.claim_name.clone()));
    }
    let mut written: Vec<HeaderName> = forward_payload_header.iter().cloned().collect();
    written.extend(claim_to_headers.iter().map(|(h, _)| h.clone()));
    let locations = ProviderLocations {
        issuer: &p.issuer,
        headers: headers.clone(),
        params: &p.from_params,
        cookies: &p.from_cookies,
        written_headers: written,
    };
    let jwks = match &p.jwks_source_specifier {
        Some(jwt_provider::JwksSourceSpecifier::LocalJwks(ds)) => {
            let text = crate::config::read_data_source(ds, &f("local_jwks"))?;
            if text.is_empty() {
                None
            } else {
                match jwks::Jwks::parse(&text) {
                    Ok(k) => Some(k),
                    Err(jwks::JwksError::Invalid(why)) => {
                        return Err(ConfigError::new(
                            f("local_jwks"),
                            format!("Provider '{name}' in jwt_authn config has invalid local jwks: {why}"),
                        ));
                    }
                    Err(jwks::JwksError::Unsupported(why)) => {
                        return Err(ConfigError::new(f("local_jwks"), format!("jwt_authn: {why}")));
                    }
                }
            }
        }
        Some(jwt_provider::JwksSourceSpecifier::RemoteJwks(_)) => {
            return Err(ConfigError::new(f("remote_jwks"), "jwt_authn: remote_jwks is not supported (use local_jwks)"));
        }
        None => None,
    };
    Ok(Provider {
        issuer: p.issuer.clone(),
        audiences: Audiences::new(&p.audiences),
        subjects,
        max_exp,
        forward: p.forward,
        forward_payload_header,
        pad_forward_payload_header: p.pad_forward_payload_header,
        payload_in_metadata: p.payload_in_metadata.clone(),
        space_delimited_claims: p
            .normalize_payload_in_metadata
            .as_ref()
            .map(|n| n.space_delimited_claims.clone())
            .unwrap_or_default(),
        header_in_metadata: p.header_in_metadata.clone(),
        claim_to_headers,
        clear_route_cache: p.clear_route_cache,
        clock_skew: if p.clock_skew_seconds > 0 { u64::from(p.clock_skew_seconds) } else { DEFAULT_CLOCK_SKEW },
        jwks,
        extractor: Extractor::new([locations]),
    })
}

fn requirement_from_proto(r: &JwtRequirement, ps: &Providers, field: &str) -> Result<Requirement, ConfigError> {
    use jwt_requirement::RequiresType as R;
    let provider = |name: &str| {
        ps.by_name
            .get(name)
            .copied()
            .ok_or_else(|| ConfigError::new(field, format!("Required provider ['{name}'] is not configured.")))
    };
    Ok(match &r.requires_type {
        None => Requirement::AllowAll,
        Some(R::ProviderName(n)) => Requirement::Provider { index: provider(n)?, audiences: None },
        Some(R::ProviderAndAudiences(pa)) => Requirement::Provider {
            index: provider(&pa.provider_name)?,
            audiences: (!pa.audiences.is_empty()).then(|| Audiences::new(&pa.audiences)),
        },
        Some(R::AllowMissing(_)) => Requirement::AllowMissing,
        Some(R::AllowMissingOrFailed(_)) => Requirement::AllowMissingOrFailed,
        Some(R::RequiresAll(list)) => {
            let mut children = Vec::new();
            for (i, c) in list.requirements.iter().enumerate() {
                children.push(requirement_from_proto(c, ps, &format!("{field}.requires_all.requirements[{i}]"))?);
            }
            Requirement::All(children)
        }
        Some(R::RequiresAny(list)) => {
            let (mut allow_missing, mut allow_missing_or_failed) = (false, false);
            let mut children = Vec::new();
            for (i, c) in list.requirements.iter().enumerate() {
                match &c.requires_type {
                    Some(R::AllowMissing(_)) => allow_missing = true,
                    Some(R::AllowMissingOrFailed(_)) => allow_missing_or_failed = true,
                    _ => children.push(requirement_from_proto(
                        c,
                        ps,
                        &format!("{field}.requires_any.requirements[{i}]"),
                    )?),
                }
            }
            if children.is_empty() {
                if allow_missing_or_failed {
                    children.push(Requirement::AllowMissingOrFailed);
                } else if allow_missing {
                    children.push(Requirement::AllowMissing);
                }
            }
            Requirement::Any { children, allow_missing_or_failed, allow_missing }
        }
        Some(R::ExtractOnlyWithoutValidation(_)) => {
            return Err(ConfigError::new(
                format!("{field}.extract_only_without_validation"),
                "jwt_authn: extract_only_without_validation is not supported",
            ));
        }
    })
}

/// The filter's counters.
struct JwtStats {
    allowed: Counter,
    denied: Counter,
    cors_preflight_bypassed: Counter,
    /// Tokens checked for a named provider (Envoy counts a miss of its token cache for each;
    /// remora keeps no cache, so `jwt_cache_hit` stays 0).
    jwt_cache_miss: Counter,
    /// `jwks_fetch_success`, `jwks_fetch_failed`, `jwt_cache_hit`: kept so they are listed, at 0.
    _never: [Counter; 3],
}

impl JwtStats {
    fn new(store: &Store, hcm_prefix: &str, stat_prefix: &str) -> Self {
        let c = |n: &str| store.counter(&format!("http.{hcm_prefix}.jwt_authn.{stat_prefix}{n}"));
        JwtStats {
            allowed: c("allowed"),
            denied: c("denied"),
            cors_preflight_bypassed: c("cors_preflight_bypassed"),
            jwt_cache_miss: c("jwt_cache_miss"),
            _never: [c("jwks_fetch_success"), c("jwks_fetch_failed"), c("jwt_cache_hit")],
        }
    }
}

/// A configured `envoy.filters.http.jwt_authn`.
pub struct JwtAuthnFilter {
    name: String,
    providers: Providers,
    /// Route rules in order; a rule without a requirement lets the request through.
    rules: Vec<(RouteMatcher, Option<Arc<Requirement>>)>,
    requirement_map: HashMap<String, Arc<Requirement>>,
    /// `requirement_map` names, sorted and joined by "," (Envoy's error text).
    requirement_names: String,
    bypass_cors_preflight: bool,
    strip_failure_response: bool,
    stat_prefix: String,
    store: Arc<Store>,
    stats: OnceLock<JwtStats>,
}

impl JwtAuthnFilter {
    pub fn from_proto(name: &str, p: &JwtAuthentication, cx: &BuildCtx) -> Result<Self, ConfigError> {
        let mut names: Vec<&String> = p.providers.keys().collect();
        names.sort();
        let mut providers = Providers::default();
        for n in names {
            let Some(pp) = p.providers.get(n) else { continue };
            let prov = provider_from_proto(n, pp, &format!("providers[{n}]"))?;
            providers.by_name.insert(n.clone(), providers.list.len());
            providers.list.push(prov);
        }
        let all_locations: Vec<ProviderLocations<'_>> = p
            .providers
            .iter()
            .filter_map(|(n, pp)| {
                let prov = providers.list.get(*providers.by_name.get(n)?)?;
                let mut written: Vec<HeaderName> = prov.forward_payload_header.iter().cloned().collect();
                written.extend(prov.claim_to_headers.iter().map(|(h, _)| h.clone()));
                let headers = pp
                    .from_headers
                    .iter()
                    .filter_map(|h| Some((header_name(&h.name, "").ok()?, h.value_prefix.clone())))
                    .collect();
                Some(ProviderLocations {
                    issuer: &pp.issuer,
                    headers,
                    params: &pp.from_params,
                    cookies: &pp.from_cookies,
                    written_headers: written,
                })
            })
            .collect();
        providers.all = Extractor::new(all_locations);

        let mut requirement_map = HashMap::new();
        let mut req_names: Vec<&String> = p.requirement_map.keys().collect();
        req_names.sort();
        for n in &req_names {
            let Some(r) = p.requirement_map.get(*n) else { continue };
            let req = requirement_from_proto(r, &providers, &format!("requirement_map[{n}]"))?;
            requirement_map.insert((*n).clone(), Arc::new(req));
        }
        let requirement_names = req_names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",");
        let mut rules = Vec::new();
        for (i, rule) in p.rules.iter().enumerate() {
            let f = format!("rules[{i}]");
            let Some(m) = &rule.r#match else {
                return Err(ConfigError::new(format!("{f}.match"), "value is required"));
            };
            let matcher = RouteMatcher::from_proto(m, &format!("{f}.match"))?;
            let req = match &rule.requirement_type {
                Some(requirement_rule::RequirementType::Requires(r)) => {
                    Some(Arc::new(requirement_from_proto(r, &providers, &format!("{f}.requires"))?))
                }
                Some(requirement_rule::RequirementType::RequirementName(n)) => match requirement_map.get(n) {
                    Some(r) => Some(r.clone()),
                    None => {
                        return Err(ConfigError::new(
                            format!("{f}.requirement_name"),
                            format!("Wrong requirement_name: {n}. It should be one of [{requirement_names}]"),
                        ));
                    }
                },
                None => None,
            };
            rules.push((matcher, req));
        }
        let stats = match &cx.http_stat_prefix {
            Some(hcm) => OnceLock::from(JwtStats::new(&cx.stats, hcm, &p.stat_prefix)),
            None => OnceLock::new(),
        };
        Ok(JwtAuthnFilter {
            name: name.to_string(),
            providers,
            rules,
            requirement_map,
            requirement_names,
            bypass_cors_preflight: p.bypass_cors_preflight,
            strip_failure_response: p.strip_failure_response,
            stat_prefix: p.stat_prefix.clone(),
            store: cx.stats.clone(),
            stats,
        })
    }

    fn stats(&self, hcm_prefix: &str) -> &JwtStats {
        self.stats.get_or_init(|| JwtStats::new(&self.store, hcm_prefix, &self.stat_prefix))
    }

    /// The requirement of the first rule whose match accepts the request.
    fn find_rule(&self, req: &Parts) -> Option<&Arc<Requirement>> {
        if self.rules.is_empty() {
            return None;
        }
        let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let (path, query) = match pq.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (pq, None),
        };
        let input = MatchInput {
            headers: RequestHeaders {
                method: req.method.as_str(),
                path: pq,
                authority: authority(req),
                scheme: req.uri.scheme_str().unwrap_or("http"),
                headers: &req.headers,
            },
            path,
            query,
            random: fastrand::u64(0..1_000_000),
            is_connect: req.method == http::Method::CONNECT,
        };
        self.rules.iter().find(|(m, _)| m.matches(&input).is_some()).and_then(|(_, r)| r.as_ref())
    }

    /// `original`: the request's URI before verification (a removed query token stays in the
    /// realm, as in Envoy).
    fn reject(&self, req: &Parts, original: &http::Uri, status: Status) -> LocalReply {
        let mut reply = if self.strip_failure_response {
            LocalReply::new(status.http_status(), "", "", status.details())
        } else {
            let mut r = LocalReply::new(status.http_status(), status.text(), "", status.details());
            let mut v = format!("Bearer realm=\"{}\"", original_uri(req, original));
            if status != Status::JwtMissed {
                v.push_str(", error=\"invalid_token\"");
            }
            if let Ok(v) = HeaderValue::from_str(&v) {
                r.headers.insert(http::header::WWW_AUTHENTICATE, v);
            }
            r
        };
        super::grpc_local_reply(&req.headers, &mut reply, None);
        reply
    }
}

fn authority(req: &Parts) -> &str {
    match req.uri.authority() {
        Some(a) => a.as_str(),
        None => req.headers.get(http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or(""),
    }
}

/// Envoy's `buildOriginalUri`: `<x-forwarded-proto>://<host><path>`, the path before any rewrite
/// and cut to 256 bytes.
fn original_uri(req: &Parts, uri: &http::Uri) -> String {
    let proto = req.headers.get(crate::http::headers::X_FORWARDED_PROTO).and_then(|v| v.to_str().ok()).unwrap_or("");
    let path = match req.headers.get(crate::http::headers::X_ENVOY_ORIGINAL_PATH).and_then(|v| v.to_str().ok()) {
        Some(p) => p,
        None => uri.path_and_query().map(|p| p.as_str()).unwrap_or(""),
    };
    let mut cut = path.len().min(MAX_REALM_PATH);
    while !path.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{proto}://{}{}", authority(req), &path[..cut])
}

fn is_cors_preflight(req: &Parts) -> bool {
    let non_empty = |h: &str| req.headers.get(h).is_some_and(|v| !v.is_empty());
    req.method == http::Method::OPTIONS && non_empty("origin") && non_empty("access-control-request-method")
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl HttpFilter for JwtAuthnFilter {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(&self, cx: &mut RequestCtx<'_>, req: &mut Parts) -> FilterAction {
        if cx.disabled(&self.name) {
            return FilterAction::Continue;
        }
        let stats = self.stats(cx.stat_prefix);
        if self.bypass_cors_preflight && is_cors_preflight(req) {
            stats.cors_preflight_bypassed.inc();
            stats.allowed.inc();
            return FilterAction::Continue;
        }
        let requirement = match cx.per_route::<JwtPerRoute>(&self.name) {
            Some(JwtPerRoute::Disabled) => None,
            Some(JwtPerRoute::RequirementName(n)) => match self.requirement_map.get(n) {
                Some(r) => Some(r.clone()),
                None => {
                    stats.denied.inc();
                    let msg = format!("Wrong requirement_name: {n}. It should be one of [{}]", self.requirement_names);
                    let body = if self.strip_failure_response {
                        String::new()
                    } else {
                        format!("Failed JWT authentication: {msg}")
                    };
                    let mut reply = LocalReply::new(
                        http::StatusCode::FORBIDDEN,
                        body,
                        "",
                        "jwt_authn_access_denied{Wrong_requirement_name}",
                    );
                    super::grpc_local_reply(&req.headers, &mut reply, None);
                    return FilterAction::Respond(reply);
                }
            },
            None => self.find_rule(req).cloned(),
        };
        let Some(requirement) = requirement else {
            stats.allowed.inc();
            return FilterAction::Continue;
        };
        // A cheap clone (shared bytes), kept for the realm of a rejection.
        let original = req.uri.clone();
        let mut vcx =
            VerifyCtx { req, now: now_secs(), extracted: Vec::new(), clear_route_cache: false, tokens_for_provider: 0 };
        let status = requirement.verify(&self.providers, &mut vcx);
        let extracted = std::mem::take(&mut vcx.extracted);
        let clear_route_cache = vcx.clear_route_cache;
        if vcx.tokens_for_provider > 0 {
            stats.jwt_cache_miss.add(vcx.tokens_for_provider);
        }
        if !extracted.is_empty() {
            let md = crate::filters::common::metadata_mut(&mut cx.state);
            for (k, s) in extracted {
                md.set(METADATA_NAMESPACE, k, PbValue { kind: Some(Kind::StructValue(s)) });
            }
        }
        if status.is_ok() {
            stats.allowed.inc();
            if clear_route_cache {
                cx.state.insert(super::ClearRouteCache);
            }
            FilterAction::Continue
        } else {
            stats.denied.inc();
            tracing::debug!(target: "remora::jwt_authn", "rejected: {}", status.text());
            FilterAction::Respond(self.reject(req, &original, status))
        }
    }
}

#[cfg(test)]
mod tests;
