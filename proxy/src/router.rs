//! Route tables: a `RouteConfiguration` compiled into virtual hosts found by `:authority` with
//! Envoy's domain precedence (exact, longest `*suffix`, longest `prefix*`, `*`), each holding its
//! routes in order (first match wins).

pub mod action;
pub mod header_mutation;
pub mod redirect;
pub mod retry;
pub mod route;

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost as VirtualHostProto};

use crate::config::{BuildCtx, ConfigError};
use header_mutation::HeaderMutations;
use retry::RetryPolicy;
use route::{MatchInput, Route};

/// A compiled virtual host.
#[derive(Debug)]
pub struct VirtualHost {
    pub name: Arc<str>,
    pub routes: Vec<Route>,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub include_attempt_count_in_request: bool,
    pub include_attempt_count_in_response: bool,
    pub per_filter: crate::config::PerFilterConfigs,
    /// The deprecated `cors` field (the CORS filter reads it when no typed config is set).
    pub cors: Option<crate::config::ExtensionConfig>,
    /// `require_tls`: which requests must have come over TLS (else a 301 to https).
    pub require_tls: RequireTls,
}

/// A virtual host's `require_tls` (Istio's Gateway `httpsRedirect` sets ALL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequireTls {
    None,
    /// Requests not marked internal (`x-envoy-internal: true`) must use TLS.
    ExternalOnly,
    All,
}

impl RequireTls {
    /// Whether a request must be redirected to https: Envoy reads the scheme from
    /// `x-forwarded-proto`, which the connection manager has set by now.
    pub fn redirects(self, headers: &http::HeaderMap) -> bool {
        let https = headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
        match self {
            RequireTls::None => false,
            RequireTls::All => !https,
            RequireTls::ExternalOnly => !https && headers.get("x-envoy-internal").is_none_or(|v| v != "true"),
        }
    }
}

/// A compiled `RouteConfiguration`.
#[derive(Debug)]
pub struct RouteTable {
    pub name: Arc<str>,
    exact: HashMap<String, usize>,
    /// (suffix, vhost) sorted by suffix length, longest first.
    suffixes: Vec<(String, usize)>,
    /// (prefix, vhost) sorted by prefix length, longest first.
    prefixes: Vec<(String, usize)>,
    default: Option<usize>,
    vhosts: Vec<VirtualHost>,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub most_specific_header_mutations_wins: bool,
    /// Remove the port from the host before vhost matching (HCM `strip_any_host_port`).
    pub ignore_port_in_host_matching: bool,
    pub per_filter: crate::config::PerFilterConfigs,
}

impl RouteTable {
    /// Compiles a route configuration. `validate_clusters` is Envoy's default for static
    /// (inline) route configs: every route must name a known cluster.
    pub fn from_proto(
        p: &RouteConfiguration,
        cx: &BuildCtx,
        validate_clusters_default: bool,
    ) -> Result<Self, ConfigError> {
        let validate = p.validate_clusters.map(|b| b.value).unwrap_or(validate_clusters_default);
        let mut t = RouteTable {
            name: p.name.as_str().into(),
            exact: HashMap::new(),
            suffixes: Vec::new(),
            prefixes: Vec::new(),
            default: None,
            vhosts: Vec::new(),
            request_headers: HeaderMutations::from_proto(
                &p.request_headers_to_add,
                &p.request_headers_to_remove,
                "request_headers_to_add",
                "request_headers_to_remove",
            )?,
            response_headers: HeaderMutations::from_proto(
                &p.response_headers_to_add,
                &p.response_headers_to_remove,
                "response_headers_to_add",
                "response_headers_to_remove",
            )?,
            most_specific_header_mutations_wins: p.most_specific_header_mutations_wins,
            ignore_port_in_host_matching: p.ignore_port_in_host_matching,
            per_filter: (cx.extensions.per_filter_config)(&p.typed_per_filter_config, cx, "typed_per_filter_config")?,
        };
        for (i, vh) in p.virtual_hosts.iter().enumerate() {
            let field = format!("virtual_hosts[{i}]");
            let idx = t.vhosts.len();
            t.vhosts.push(compile_vhost(vh, cx, validate, &field)?);
            for d in &vh.domains {
                let d = d.to_ascii_lowercase();
                let dup = if d == "*" {
                    t.default.replace(idx).is_some()
                } else if let Some(s) = d.strip_prefix('*') {
                    push_unique(&mut t.suffixes, s, idx)
                } else if let Some(p) = d.strip_suffix('*') {
                    push_unique(&mut t.prefixes, p, idx)
                } else {
                    t.exact.insert(d.clone(), idx).is_some()
                };
                if dup {
                    return Err(ConfigError::new(
                        format!("{field}.domains"),
                        format!(
                            "Only unique values for domains are permitted. Duplicate entry of domain {d} in route {}",
                            p.name
                        ),
                    ));
                }
            }
        }
        // Envoy bounds direct response bodies (4 KiB unless the table says otherwise).
        let max_body = p.max_direct_response_body_size_bytes.map_or(4096, |v| v.value as usize);
        for (i, vh) in t.vhosts.iter().enumerate() {
            for (j, r) in vh.routes.iter().enumerate() {
                if let route::Action::Direct(d) = &r.action
                    && d.body.len() > max_body
                {
                    return Err(ConfigError::new(
                        format!("virtual_hosts[{i}].routes[{j}].direct_response.body"),
                        format!("response body size is {} bytes; maximum is {max_body}", d.body.len()),
                    ));
                }
            }
        }
        t.suffixes.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        t.prefixes.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        Ok(t)
    }

    /// Finds the virtual host for a host header value (case-insensitive).
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        self.find_virtual_host(host).and_then(|(i, _)| self.vhosts.get(i))
    }

    /// The virtual host's index and the domain that chose it (`*` for the default): Envoy's
    /// order is exact, then the longest `*suffix`, then the longest `prefix*`, then `*`.
    pub fn find_virtual_host(&self, host: &str) -> Option<(usize, String)> {
        let lowered;
        let mut host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        if self.ignore_port_in_host_matching {
            host = strip_port(host);
        }
        if let Some(&i) = self.exact.get(host) {
            return Some((i, host.to_string()));
        }
        for (s, i) in &self.suffixes {
            if host.len() > s.len() && host.ends_with(s.as_str()) {
                return Some((*i, format!("*{s}")));
            }
        }
        for (p, i) in &self.prefixes {
            if host.len() > p.len() && host.starts_with(p.as_str()) {
                return Some((*i, format!("{p}*")));
            }
        }
        self.default.map(|i| (i, "*".to_string()))
    }

    pub fn virtual_hosts(&self) -> &[VirtualHost] {
        &self.vhosts
    }
}

fn strip_port(host: &str) -> &str {
    if host.ends_with(']') {
        return host;
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) && !host[..i].contains(':') => &host[..i],
        _ => host,
    }
}

fn push_unique(v: &mut Vec<(String, usize)>, s: &str, idx: usize) -> bool {
    if v.iter().any(|(x, _)| x == s) {
        return true;
    }
    v.push((s.to_string(), idx));
    false
}

fn compile_vhost(
    vh: &VirtualHostProto,
    cx: &BuildCtx,
    validate: bool,
    field: &str,
) -> Result<VirtualHost, ConfigError> {
    if vh.domains.is_empty() {
        return Err(ConfigError::new(format!("{field}.domains"), "must have at least one domain"));
    }
    let retry = match &vh.retry_policy {
        Some(r) => Some(Arc::new(RetryPolicy::from_proto(r, &format!("{field}.retry_policy"))?)),
        None => None,
    };
    let mut routes = Vec::with_capacity(vh.routes.len());
    for (i, r) in vh.routes.iter().enumerate() {
        routes.push(Route::from_proto(r, retry.as_ref(), cx, validate, &format!("{field}.routes[{i}]"))?);
    }
    Ok(VirtualHost {
        name: vh.name.as_str().into(),
        routes,
        request_headers: HeaderMutations::from_proto(
            &vh.request_headers_to_add,
            &vh.request_headers_to_remove,
            &format!("{field}.request_headers_to_add"),
            &format!("{field}.request_headers_to_remove"),
        )?,
        response_headers: HeaderMutations::from_proto(
            &vh.response_headers_to_add,
            &vh.response_headers_to_remove,
            &format!("{field}.response_headers_to_add"),
            &format!("{field}.response_headers_to_remove"),
        )?,
        include_attempt_count_in_request: vh.include_request_attempt_count,
        include_attempt_count_in_response: vh.include_attempt_count_in_response,
        per_filter: (cx.extensions.per_filter_config)(
            &vh.typed_per_filter_config,
            cx,
            &format!("{field}.typed_per_filter_config"),
        )?,
        require_tls: {
            use envoy_types::pb::envoy::config::route::v3::virtual_host::TlsRequirementType as T;
            match T::try_from(vh.require_tls) {
                Ok(T::None) => RequireTls::None,
                Ok(T::ExternalOnly) => RequireTls::ExternalOnly,
                Ok(T::All) => RequireTls::All,
                Err(_) => {
                    return Err(ConfigError::new(
                        format!("{field}.require_tls"),
                        "value must be one of the defined enum values",
                    ));
                }
            }
        },
        cors: match &vh.cors {
            Some(c) => Some((cx.extensions.legacy_cors)(c, &format!("{field}.cors"))?),
            None => None,
        },
    })
}

impl VirtualHost {
    /// The first matching route and its matched prefix length.
    pub fn route(&self, m: &MatchInput<'_>) -> Option<(&Route, usize)> {
        self.routes.iter().find_map(|r| r.matcher.matches(m).map(|len| (r, len)))
    }

    /// Route explain: each route in order with why it missed, up to the one that matches.
    pub fn explain_route(&self, m: &MatchInput<'_>) -> (Vec<(usize, &Route, String)>, Option<usize>) {
        let mut missed = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            match r.matcher.check(m) {
                Ok(_) => return (missed, Some(i)),
                Err(miss) => missed.push((i, r, r.matcher.describe_miss(miss))),
            }
        }
        (missed, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::route::v3::{Route as RouteProto, RouteMatch, route, route_match};

    fn cx() -> BuildCtx {
        BuildCtx {
            stats: Arc::new(crate::stats::Store::default()),
            cluster_names: Arc::new(Default::default()),
            listener_stat_name: None,
            node: Arc::default(),
            http_stat_prefix: None,
            secrets: Default::default(),
            ..Default::default()
        }
    }

    fn vh(name: &str, domains: &[&str]) -> VirtualHostProto {
        VirtualHostProto {
            name: name.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes: vec![RouteProto {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::Action::DirectResponse(
                    envoy_types::pb::envoy::config::route::v3::DirectResponseAction {
                        status: 200,
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn domain_precedence() {
        let rc = RouteConfiguration {
            virtual_hosts: vec![
                vh("exact", &["www.foo.com"]),
                vh("suffix", &["*.foo.com"]),
                vh("longsuffix", &["*-bar.foo.com"]),
                vh("prefix", &["www.*"]),
                vh("any", &["*"]),
            ],
            ..Default::default()
        };
        let t = RouteTable::from_proto(&rc, &cx(), true).unwrap();
        let name = |h| t.virtual_host(h).map(|v| v.name.to_string()).unwrap_or_default();
        assert_eq!(name("WWW.foo.com"), "exact");
        assert_eq!(name("a.foo.com"), "suffix");
        assert_eq!(name("a-bar.foo.com"), "longsuffix");
        assert_eq!(name("foo.com"), "any");
        assert_eq!(name("www.bar.org"), "prefix");
        assert_eq!(name("other"), "any");
        assert_eq!(name("www.foo.com:80"), "prefix");
    }

    #[test]
    fn duplicate_domains_rejected() {
        let rc = RouteConfiguration { virtual_hosts: vec![vh("a", &["x"]), vh("b", &["x"])], ..Default::default() };
        assert!(RouteTable::from_proto(&rc, &cx(), true).is_err());
    }
}
