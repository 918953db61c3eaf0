//! `envoy.filters.http.cors`: answers CORS preflight requests locally and adds the
//! `access-control-*` headers to responses of allowed origins.
//!
//! The policy comes from `typed_per_filter_config` (`envoy.extensions.filters.http.cors.v3.CorsPolicy`)
//! at the route, virtual host and route configuration levels; each setting is taken from the most
//! specific level that sets it, `filter_enabled`/`shadow_enabled` from the most specific policy.
//! Only when no level has a typed policy are the deprecated `cors` fields of the route action and
//! the virtual host used. Routes without a route entry (direct responses, redirects) and
//! unmatched requests are left alone, as in Envoy.

use std::sync::Arc;

use envoy_types::pb::envoy::config::route::v3::{CorsPolicy as LegacyCorsPolicy, cors_policy};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::{Cors, CorsPolicy as CorsPolicyProto};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher as StringMatcherProto;
use envoy_types::pb::google::protobuf::Any;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::{FilterAction, HttpFilter, RequestCtx};
use crate::config::Percent;
use crate::config::{BuildCtx, ConfigError};
use crate::http::local_reply::LocalReply;
use crate::matcher::StringMatcher;
use crate::stats::Counter;

pub const NAME: &str = "envoy.filters.http.cors";
pub const TYPE: &str = "envoy.extensions.filters.http.cors.v3.Cors";
pub const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.cors.v3.CorsPolicy";

const ALLOW_ORIGIN: &str = "access-control-allow-origin";
const ALLOW_CREDENTIALS: &str = "access-control-allow-credentials";
const ALLOW_METHODS: &str = "access-control-allow-methods";
const ALLOW_HEADERS: &str = "access-control-allow-headers";
const MAX_AGE: &str = "access-control-max-age";
const EXPOSE_HEADERS: &str = "access-control-expose-headers";
const ALLOW_PRIVATE_NETWORK: &str = "access-control-allow-private-network";
const REQUEST_METHOD: &str = "access-control-request-method";
const REQUEST_HEADERS: &str = "access-control-request-headers";
const REQUEST_PRIVATE_NETWORK: &str = "access-control-request-private-network";

/// One level's CORS policy. Unset strings are empty; unset booleans are None.
#[derive(Debug, Default)]
pub struct CorsPolicy {
    allow_origins: Vec<StringMatcher>,
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    allow_credentials: Option<bool>,
    allow_private_network_access: Option<bool>,
    forward_not_matching_preflights: Option<bool>,
    enabled: Percent,
    shadow: Percent,
}

fn header_value(s: &str, field: &str) -> Result<Option<HeaderValue>, ConfigError> {
    if s.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_str(s).map(Some).map_err(|_| ConfigError::new(field, format!("invalid header value {s:?}")))
}

#[allow(clippy::too_many_arguments)]
fn build(
    origins: &[StringMatcherProto],
    methods: &str,
    headers: &str,
    expose: &str,
    max_age: &str,
    credentials: Option<bool>,
    private_network: Option<bool>,
    forward: Option<bool>,
    enabled: Percent,
    shadow: Percent,
) -> Result<CorsPolicy, ConfigError> {
    let allow_origins = origins
        .iter()
        .enumerate()
        .map(|(i, m)| StringMatcher::from_proto(m, &format!("allow_origin_string_match[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(CorsPolicy {
        allow_origins,
        allow_methods: header_value(methods, "allow_methods")?,
        allow_headers: header_value(headers, "allow_headers")?,
        expose_headers: header_value(expose, "expose_headers")?,
        max_age: header_value(max_age, "max_age")?,
        allow_credentials: credentials,
        allow_private_network_access: private_network,
        forward_not_matching_preflights: forward,
        enabled,
        shadow,
    })
}

impl CorsPolicy {
    /// The typed per-route policy (`envoy.extensions.filters.http.cors.v3.CorsPolicy`).
    pub fn from_proto(p: &CorsPolicyProto) -> Result<Self, ConfigError> {
        build(
            &p.allow_origin_string_match,
            &p.allow_methods,
            &p.allow_headers,
            &p.expose_headers,
            &p.max_age,
            p.allow_credentials.map(|b| b.value),
            p.allow_private_network_access.map(|b| b.value),
            p.forward_not_matching_preflights.map(|b| b.value),
            Percent::from_runtime(p.filter_enabled.as_ref(), Percent::ALWAYS),
            Percent::from_runtime(p.shadow_enabled.as_ref(), Percent::NEVER),
        )
    }

    /// The deprecated `cors` field of a virtual host or route action.
    /// The deprecated `cors` field of a route or virtual host, for the route table
    /// (`crate::config::Extensions::legacy_cors`).
    pub fn legacy_extension(p: &LegacyCorsPolicy, field: &str) -> Result<crate::config::ExtensionConfig, ConfigError> {
        Ok(CorsPolicy::from_legacy(p, field)?)
    }

    pub fn from_legacy(p: &LegacyCorsPolicy, field: &str) -> Result<Arc<Self>, ConfigError> {
        let enabled = match &p.enabled_specifier {
            Some(cors_policy::EnabledSpecifier::FilterEnabled(r)) => Percent::from_runtime(Some(r), Percent::ALWAYS),
            None => Percent::ALWAYS,
        };
        build(
            &p.allow_origin_string_match,
            &p.allow_methods,
            &p.allow_headers,
            &p.expose_headers,
            &p.max_age,
            p.allow_credentials.map(|b| b.value),
            p.allow_private_network_access.map(|b| b.value),
            p.forward_not_matching_preflights.map(|b| b.value),
            enabled,
            Percent::from_runtime(p.shadow_enabled.as_ref(), Percent::NEVER),
        )
        .map(Arc::new)
        .map_err(|e| e.within(field))
    }
}

/// The policies that apply to a request, most specific first.
struct Policies<'a>(Vec<&'a CorsPolicy>);

impl<'a> Policies<'a> {
    fn first<T>(&self, f: impl Fn(&'a CorsPolicy) -> Option<T>) -> Option<T> {
        self.0.iter().find_map(|p| f(p))
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let origins = self.0.iter().map(|p| &p.allow_origins).find(|o| !o.is_empty());
        origins.is_some_and(|o| o.iter().any(|m| m.matches("*") || m.matches(origin)))
    }

    fn credentials(&self) -> bool {
        self.first(|p| p.allow_credentials).unwrap_or(false)
    }

    fn expose_headers(&self) -> Option<&'a HeaderValue> {
        self.first(|p| p.expose_headers.as_ref())
    }
}

pub struct CorsStats {
    origin_valid: Counter,
    origin_invalid: Counter,
}

/// The CORS filter; its own config is empty.
pub struct CorsFilter {
    name: String,
    stats: CorsStats,
}

/// What the response hook needs: the origin to echo, when it was allowed.
#[derive(Clone)]
struct Latched {
    origin: HeaderValue,
    credentials: bool,
    expose: Option<HeaderValue>,
}

pub fn factory(name: &str, any: &Any, cx: &BuildCtx) -> Result<Arc<dyn HttpFilter>, ConfigError> {
    let _: Cors = xds_client::any::unpack(any).map_err(|e| ConfigError::new("typed_config", e.to_string()))?;
    Ok(Arc::new(CorsFilter::new(name, cx)))
}

pub fn per_route_factory(any: &Any, _cx: &BuildCtx) -> Result<Arc<dyn std::any::Any + Send + Sync>, ConfigError> {
    let p: CorsPolicyProto = xds_client::any::unpack(any).map_err(|e| ConfigError::new("", e.to_string()))?;
    Ok(Arc::new(CorsPolicy::from_proto(&p)?))
}

impl CorsFilter {
    /// `stats` are named `http.<stat_prefix>.cors.*`, but the prefix is per HCM: the counters are
    /// resolved lazily per prefix through the store (cheap: looked up once per filter build).
    pub fn new(name: &str, cx: &BuildCtx) -> Self {
        let prefix = cx.http_stat_prefix.as_deref().unwrap_or("");
        CorsFilter {
            name: name.to_string(),
            stats: CorsStats {
                origin_valid: cx.stats.counter(&format!("http.{prefix}.cors.origin_valid")),
                origin_invalid: cx.stats.counter(&format!("http.{prefix}.cors.origin_invalid")),
            },
        }
    }

    fn policies<'a>(&self, cx: &'a RequestCtx<'_>) -> Policies<'a> {
        let Some(r) = cx.route else { return Policies(Vec::new()) };
        let typed: Vec<&CorsPolicy> = [&r.route.per_filter, &r.vhost.per_filter, &r.table.per_filter]
            .into_iter()
            .filter_map(|m| m.get(&self.name).and_then(|c| c.downcast_ref::<CorsPolicy>()))
            .collect();
        if !typed.is_empty() {
            return Policies(typed);
        }
        let route_cors = match &r.route.action {
            crate::router::route::Action::Route(a) => a.cors.as_ref(),
            _ => None,
        };
        let legacy = route_cors.into_iter().chain(r.vhost.cors.as_ref());
        Policies(legacy.filter_map(|c| c.downcast_ref::<CorsPolicy>()).collect())
    }
}

impl HttpFilter for CorsFilter {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(&self, cx: &mut RequestCtx<'_>, req: &mut Parts) -> FilterAction {
        // Only routes with a route entry: not direct responses or redirects.
        let Some(r) = cx.route else { return FilterAction::Continue };
        if !matches!(r.route.action, crate::router::route::Action::Route(_)) || cx.disabled(&self.name) {
            return FilterAction::Continue;
        }
        let policies = self.policies(cx);
        let Some(top) = policies.0.first() else { return FilterAction::Continue };
        let enabled = top.enabled.sample();
        let shadow = top.shadow.sample();
        if !enabled && !shadow {
            return FilterAction::Continue;
        }
        let Some(origin) = req.headers.get(http::header::ORIGIN).filter(|o| !o.is_empty()) else {
            return FilterAction::Continue;
        };
        let allowed = policies.origin_allowed(origin.to_str().unwrap_or(""));
        if allowed {
            self.stats.origin_valid.inc();
        } else {
            self.stats.origin_invalid.inc();
        }
        if !enabled {
            return FilterAction::Continue;
        }
        let latched = allowed.then(|| Latched {
            origin: origin.clone(),
            credentials: policies.credentials(),
            expose: policies.expose_headers().cloned(),
        });
        let is_preflight =
            req.method == Method::OPTIONS && req.headers.get(REQUEST_METHOD).is_some_and(|m| !m.is_empty());
        if !is_preflight {
            if let Some(l) = latched {
                cx.state.insert(l);
            }
            return FilterAction::Continue;
        }
        if !allowed && policies.first(|p| p.forward_not_matching_preflights).unwrap_or(true) {
            return FilterAction::Continue;
        }
        FilterAction::Respond(preflight(&policies, &req.headers, latched.as_ref()))
    }

    fn on_response(&self, cx: &mut RequestCtx<'_>, resp: &mut http::response::Parts) {
        if let Some(l) = cx.state.remove::<Latched>() {
            apply_simple(&l, &mut resp.headers);
        }
    }
}

/// The headers Envoy adds to the response of an allowed origin (also to its own preflight answer).
fn apply_simple(l: &Latched, h: &mut HeaderMap) {
    h.insert(ALLOW_ORIGIN, l.origin.clone());
    if l.credentials {
        h.insert(ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
    if let Some(e) = &l.expose {
        h.insert(EXPOSE_HEADERS, e.clone());
    }
}

/// Envoy's local answer to a preflight request: 200, no body.
fn preflight(policies: &Policies<'_>, req: &HeaderMap, latched: Option<&Latched>) -> LocalReply {
    let mut reply = LocalReply::new(StatusCode::OK, "", "", "cors_response");
    let h = &mut reply.headers;
    if let Some(l) = latched {
        h.insert(ALLOW_ORIGIN, l.origin.clone());
    }
    if policies.credentials() {
        h.insert(ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
    let echo = |name: &str| req.get(name).cloned().unwrap_or_else(|| HeaderValue::from_static(""));
    if let Some(m) = policies.first(|p| p.allow_methods.as_ref()) {
        h.insert(ALLOW_METHODS, if m == "*" { echo(REQUEST_METHOD) } else { m.clone() });
    }
    if let Some(a) = policies.first(|p| p.allow_headers.as_ref()) {
        h.insert(ALLOW_HEADERS, if a == "*" { echo(REQUEST_HEADERS) } else { a.clone() });
    }
    if let Some(m) = policies.first(|p| p.max_age.as_ref()) {
        h.insert(MAX_AGE, m.clone());
    }
    if policies.first(|p| p.allow_private_network_access).unwrap_or(false)
        && req.get(REQUEST_PRIVATE_NETWORK).is_some_and(|v| v == "true")
    {
        h.insert(ALLOW_PRIVATE_NETWORK, HeaderValue::from_static("true"));
    }
    // Envoy's CORS encoder hook also runs on its own reply.
    if let Some(l) = latched {
        apply_simple(l, h);
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, string_matcher::MatchPattern};
    use envoy_types::pb::google::protobuf::BoolValue;

    fn policy(origins: Vec<MatchPattern>) -> CorsPolicyProto {
        CorsPolicyProto {
            allow_origin_string_match: origins
                .into_iter()
                .map(|p| StringMatcherProto { match_pattern: Some(p), ignore_case: false })
                .collect(),
            ..Default::default()
        }
    }

    fn req(method: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri("/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn config_accept_and_reject() {
        let mut p = policy(vec![MatchPattern::SafeRegex(RegexMatcher { regex: "(".into(), ..Default::default() })]);
        assert!(CorsPolicy::from_proto(&p).is_err(), "bad regex");
        p = policy(vec![MatchPattern::Exact("https://a".into())]);
        p.max_age = "bad\nvalue".into();
        assert!(CorsPolicy::from_proto(&p).is_err(), "bad header value");
        p.max_age = "60".into();
        let c = CorsPolicy::from_proto(&p).unwrap();
        assert_eq!(c.enabled, Percent::ALWAYS);
        assert_eq!(c.shadow, Percent::NEVER);
    }

    #[test]
    fn preflight_and_fallback_across_levels() {
        let mut route = policy(vec![MatchPattern::Suffix(".example.com".into())]);
        route.allow_methods = "*".into();
        route.allow_credentials = Some(BoolValue { value: true });
        let mut vhost = policy(vec![MatchPattern::Exact("*".into())]);
        vhost.allow_headers = "x-a".into();
        vhost.max_age = "600".into();
        vhost.expose_headers = "x-exp".into();
        let (route, vhost) = (CorsPolicy::from_proto(&route).unwrap(), CorsPolicy::from_proto(&vhost).unwrap());
        let ps = Policies(vec![&route, &vhost]);
        assert!(ps.origin_allowed("https://a.example.com"));
        assert!(!ps.origin_allowed("https://evil.com"), "route-level origins win over the vhost's");
        let r = req("OPTIONS", &[("origin", "https://a.example.com"), (REQUEST_METHOD, "PUT")]);
        let l = Latched {
            origin: HeaderValue::from_static("https://a.example.com"),
            credentials: true,
            expose: ps.expose_headers().cloned(),
        };
        let reply = preflight(&ps, &r.headers, Some(&l));
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.body.is_empty());
        let h = &reply.headers;
        assert_eq!(h[ALLOW_ORIGIN], "https://a.example.com");
        assert_eq!(h[ALLOW_METHODS], "PUT");
        assert_eq!(h[ALLOW_HEADERS], "x-a");
        assert_eq!(h[MAX_AGE], "600");
        assert_eq!(h[ALLOW_CREDENTIALS], "true");
        assert_eq!(h[EXPOSE_HEADERS], "x-exp");
        assert!(!h.contains_key(ALLOW_PRIVATE_NETWORK));
    }

    #[test]
    fn star_matcher_allows_any_origin() {
        let p = CorsPolicy::from_proto(&policy(vec![MatchPattern::SafeRegex(RegexMatcher {
            regex: "\\*".into(),
            ..Default::default()
        })]))
        .unwrap();
        assert!(Policies(vec![&p]).origin_allowed("https://anything"));
        assert!(!Policies(vec![]).origin_allowed("https://anything"));
    }
}
