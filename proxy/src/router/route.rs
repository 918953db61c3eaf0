//! One route: its compiled match (path, headers, query parameters, runtime fraction) and action.

use std::sync::Arc;

use envoy_types::pb::envoy::config::route::v3::{
    Route as RouteProto, RouteMatch as RouteMatchProto, route, route_match,
};
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;

use super::action::{DirectResponse, RouteAction};
use super::header_mutation::HeaderMutations;
use super::redirect::Redirect;
use super::retry::RetryPolicy;
use crate::config::{BuildCtx, ConfigError};
use crate::matcher::{HeaderMatcher, RequestHeaders, StringMatcher};

#[derive(Debug, Clone)]
enum PathMatch {
    Prefix(String),
    Path(String),
    Regex(regex::Regex),
    SeparatedPrefix(String),
    Connect,
}

#[derive(Debug, Clone)]
enum QueryTest {
    Present(bool),
    String(StringMatcher),
}

#[derive(Debug, Clone)]
struct QueryMatcher {
    name: String,
    test: QueryTest,
}

/// The first test of a route's match that a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    Path,
    Grpc,
    /// The index of the header matcher.
    Header(usize),
    Query,
    RuntimeFraction,
}

/// A compiled `RouteMatch`.
#[derive(Debug, Clone)]
pub struct RouteMatcher {
    path: PathMatch,
    case_sensitive: bool,
    headers: Vec<HeaderMatcher>,
    query: Vec<QueryMatcher>,
    /// Probability out of 1,000,000.
    runtime_fraction: Option<u64>,
    grpc: bool,
}

/// What the route acts with.
#[derive(Debug, Clone)]
pub enum Action {
    Route(Box<RouteAction>),
    Redirect(Redirect),
    Direct(DirectResponse),
    NonForwarding,
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: Arc<str>,
    pub matcher: RouteMatcher,
    pub action: Action,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub per_filter: crate::config::PerFilterConfigs,
    /// `decorator`: the span's operation name, and whether it is propagated
    /// (`x-envoy-decorator-operation`).
    pub decorator: Option<(Arc<str>, bool)>,
}

/// The request facts a route match reads.
pub struct MatchInput<'a> {
    pub headers: RequestHeaders<'a>,
    /// The path without the query string.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// A uniformly random value in 0..1_000_000 for `runtime_fraction`.
    pub random: u64,
    pub is_connect: bool,
}

impl RouteMatcher {
    pub fn from_proto(p: &RouteMatchProto, field: &str) -> Result<Self, ConfigError> {
        use route_match::PathSpecifier as PS;
        let path = match &p.path_specifier {
            Some(PS::Prefix(s)) => PathMatch::Prefix(s.clone()),
            Some(PS::Path(s)) => PathMatch::Path(s.clone()),
            Some(PS::SafeRegex(r)) => {
                PathMatch::Regex(crate::matcher::compile_regex(r, &format!("{field}.safe_regex"))?)
            }
            Some(PS::PathSeparatedPrefix(s)) => {
                if s.contains('?') || s.contains('#') || (s.len() > 1 && s.ends_with('/')) {
                    return Err(ConfigError::new(
                        format!("{field}.path_separated_prefix"),
                        "must not contain '?' or '#' or end with '/'",
                    ));
                }
                PathMatch::SeparatedPrefix(s.clone())
            }
            Some(PS::ConnectMatcher(_)) => PathMatch::Connect,
            Some(PS::PathMatchPolicy(_)) => {
                return Err(ConfigError::new(
                    format!("{field}.path_match_policy"),
                    "path match policies are not supported",
                ));
            }
            None => {
                return Err(ConfigError::new(field, "route match needs a path specifier"));
            }
        };
        let case_sensitive = p.case_sensitive.map(|b| b.value).unwrap_or(true);
        let path = if case_sensitive {
            path
        } else {
            match path {
                PathMatch::Prefix(s) => PathMatch::Prefix(s.to_ascii_lowercase()),
                PathMatch::Path(s) => PathMatch::Path(s.to_ascii_lowercase()),
                PathMatch::SeparatedPrefix(s) => PathMatch::SeparatedPrefix(s.to_ascii_lowercase()),
                other => other,
            }
        };
        let mut headers = Vec::new();
        for (i, h) in p.headers.iter().enumerate() {
            headers.push(HeaderMatcher::from_proto(h, &format!("{field}.headers[{i}]"))?);
        }
        let mut query = Vec::new();
        for (i, q) in p.query_parameters.iter().enumerate() {
            use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
            let f = format!("{field}.query_parameters[{i}]");
            let test = match &q.query_parameter_match_specifier {
                Some(Q::StringMatch(m)) => QueryTest::String(StringMatcher::from_proto(m, &f)?),
                Some(Q::PresentMatch(b)) => QueryTest::Present(*b),
                None => QueryTest::Present(true),
            };
            query.push(QueryMatcher { name: q.name.clone(), test });
        }
        let runtime_fraction = match &p.runtime_fraction {
            Some(rf) => {
                let d = rf.default_value.unwrap_or_default();
                let scale = match DenominatorType::try_from(d.denominator) {
                    Ok(DenominatorType::Hundred) => 10_000,
                    Ok(DenominatorType::TenThousand) => 100,
                    Ok(DenominatorType::Million) => 1,
                    Err(_) => {
                        return Err(ConfigError::new(format!("{field}.runtime_fraction"), "unknown denominator"));
                    }
                };
                Some((d.numerator as u64 * scale).min(1_000_000))
            }
            None => None,
        };
        if p.tls_context.is_some() {
            return Err(ConfigError::new(
                format!("{field}.tls_context"),
                "tls_context route matching is not supported yet",
            ));
        }
        if !p.dynamic_metadata.is_empty() {
            return Err(ConfigError::new(
                format!("{field}.dynamic_metadata"),
                "dynamic_metadata route matching is not supported",
            ));
        }
        Ok(RouteMatcher { path, case_sensitive, headers, query, runtime_fraction, grpc: p.grpc.is_some() })
    }

    /// The length of the matched prefix, or None when the route does not match.
    pub fn matches(&self, m: &MatchInput<'_>) -> Option<usize> {
        self.check(m).ok()
    }

    /// The length of the matched prefix, or the first test that failed.
    pub fn check(&self, m: &MatchInput<'_>) -> Result<usize, Miss> {
        // A CONNECT request has no path: only `connect_matcher` routes match it (Envoy).
        if m.is_connect && !matches!(self.path, PathMatch::Connect) {
            return Err(Miss::Path);
        }
        let lowered;
        let path = if self.case_sensitive {
            m.path
        } else {
            lowered = m.path.to_ascii_lowercase();
            lowered.as_str()
        };
        let matched = match &self.path {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()).then_some(p.len()),
            PathMatch::Path(p) => (path == p).then_some(p.len()),
            PathMatch::Regex(r) => r.is_match(m.path).then_some(m.path.len()),
            PathMatch::SeparatedPrefix(p) => {
                let ok = path.starts_with(p.as_str())
                    && (path.len() == p.len() || path.as_bytes().get(p.len()) == Some(&b'/'));
                ok.then_some(p.len())
            }
            PathMatch::Connect => m.is_connect.then_some(0),
        }
        .ok_or(Miss::Path)?;
        if self.grpc
            && !m
                .headers
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/grpc"))
        {
            return Err(Miss::Grpc);
        }
        if let Some(i) = self.headers.iter().position(|h| !h.matches(&m.headers)) {
            return Err(Miss::Header(i));
        }
        if !self.query.is_empty() && !self.query_matches(m.query.unwrap_or("")) {
            return Err(Miss::Query);
        }
        if let Some(f) = self.runtime_fraction
            && m.random >= f
        {
            return Err(Miss::RuntimeFraction);
        }
        Ok(matched)
    }

    /// Says why a request missed this route (route explain).
    pub fn describe_miss(&self, miss: Miss) -> String {
        match miss {
            Miss::Path => {
                let case = if self.case_sensitive { "" } else { " (case-insensitive)" };
                match &self.path {
                    PathMatch::Prefix(p) => format!("path does not start with prefix \"{p}\"{case}"),
                    PathMatch::Path(p) => format!("path is not \"{p}\"{case}"),
                    PathMatch::Regex(r) => format!("path does not match regex \"{}\"", r.as_str()),
                    PathMatch::SeparatedPrefix(p) => format!("path does not start with segment prefix \"{p}\"{case}"),
                    PathMatch::Connect => "not a CONNECT request (connect_matcher)".to_string(),
                }
            }
            Miss::Grpc => "not a gRPC request (grpc match: content-type application/grpc)".to_string(),
            Miss::Header(i) => match self.headers.get(i) {
                Some(h) => format!("header matcher {i} failed: {}", h.describe()),
                None => "a header matcher failed".to_string(),
            },
            Miss::Query => {
                let names: Vec<&str> = self.query.iter().map(|q| q.name.as_str()).collect();
                format!("query parameters did not match ({})", names.join(", "))
            }
            Miss::RuntimeFraction => {
                format!("not sampled by runtime_fraction ({}%)", self.runtime_fraction.unwrap_or(0) as f64 / 10_000.0)
            }
        }
    }

    fn query_matches(&self, query: &str) -> bool {
        self.query.iter().all(|q| {
            let value = query.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k == q.name).then_some(v)
            });
            match (&q.test, value) {
                (QueryTest::Present(want), v) => v.is_some() == *want,
                (QueryTest::String(s), Some(v)) => s.matches(v),
                (QueryTest::String(_), None) => false,
            }
        })
    }
}

impl Route {
    pub fn from_proto(
        p: &RouteProto,
        vhost_retry: Option<&Arc<RetryPolicy>>,
        cx: &BuildCtx,
        validate_clusters: bool,
        field: &str,
    ) -> Result<Self, ConfigError> {
        let Some(m) = &p.r#match else {
            return Err(ConfigError::new(format!("{field}.match"), "route needs a match"));
        };
        let matcher = RouteMatcher::from_proto(m, &format!("{field}.match"))?;
        use route::Action as A;
        let action = match &p.action {
            Some(A::Route(r)) => Action::Route(Box::new(RouteAction::from_proto(
                r,
                vhost_retry,
                cx,
                validate_clusters,
                &format!("{field}.route"),
            )?)),
            Some(A::Redirect(r)) => Action::Redirect(Redirect::from_proto(r, &format!("{field}.redirect"))?),
            Some(A::DirectResponse(d)) => {
                Action::Direct(DirectResponse::from_proto(d, &format!("{field}.direct_response"))?)
            }
            Some(A::NonForwardingAction(_)) => Action::NonForwarding,
            Some(A::FilterAction(_)) => {
                return Err(ConfigError::new(format!("{field}.filter_action"), "filter actions are not supported"));
            }
            None => return Err(ConfigError::new(field, "route needs an action")),
        };
        let decorator = match &p.decorator {
            Some(d) if d.operation.is_empty() => {
                return Err(ConfigError::new(
                    format!("{field}.decorator.operation"),
                    "value length must be at least 1 characters",
                ));
            }
            Some(d) => Some((d.operation.as_str().into(), d.propagate.map(|b| b.value).unwrap_or(true))),
            None => None,
        };
        Ok(Route {
            decorator,
            name: p.name.as_str().into(),
            matcher,
            action,
            request_headers: HeaderMutations::from_proto(
                &p.request_headers_to_add,
                &p.request_headers_to_remove,
                &format!("{field}.request_headers_to_add"),
                &format!("{field}.request_headers_to_remove"),
            )?,
            response_headers: HeaderMutations::from_proto(
                &p.response_headers_to_add,
                &p.response_headers_to_remove,
                &format!("{field}.response_headers_to_add"),
                &format!("{field}.response_headers_to_remove"),
            )?,
            per_filter: (cx.extensions.per_filter_config)(
                &p.typed_per_filter_config,
                cx,
                &format!("{field}.typed_per_filter_config"),
            )?,
        })
    }
}
