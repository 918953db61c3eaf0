//! The RBAC engine shared by `envoy.filters.http.rbac` and `envoy.filters.network.rbac`: an
//! `envoy.config.rbac.v3.RBAC` (action + named policies) or a unified `matcher` tree, compiled
//! once into an evaluator, plus the filters' statistics.
//!
//! Semantics (Envoy's): a policy matches when one of its permissions and one of its principals
//! match. ALLOW allows iff some policy matches, DENY denies iff some policy matches, LOG always
//! allows and reports whether some policy matched. Policies are tried in name order, so the
//! reported policy is the first matching name. A matcher tree that reaches no action denies.
//!
//! Invariants: everything a config asks for is either compiled with Envoy's semantics or
//! rejected with the field's path (`rule.rs` and `matcher.rs` list what is rejected); evaluation
//! reads only the `Input` and does not allocate (except the joined values some matcher inputs
//! produce).

pub mod matcher;
pub mod rule;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::rbac::v3::{Rbac as RbacProto, rbac};
use envoy_types::pb::xds::r#type::matcher::v3::Matcher as MatcherProto;

use super::DynamicMetadata;
use crate::config::ConfigError;
use crate::matcher::RequestHeaders;
use crate::stats::{Counter, Store};
use crate::stream_info::ConnInfo;
use rule::Rule;

/// What a matching policy (or matcher action) means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Log,
}

/// Which filter compiles the engine: the network filter has no HTTP request to read, so
/// HTTP-only matcher inputs are rejected for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    Http,
    Network,
}

/// Filter state remora can provide: the Istio principals Istio's `istio_authn` network filter
/// stores (the first `spiffe://` URI SAN of the peer's and of the local certificate, set only
/// when the peer presented a certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterStateKey {
    PeerPrincipal,
    LocalPrincipal,
}

impl FilterStateKey {
    pub const NAMES: &[&str] = &["io.istio.peer_principal", "io.istio.local_principal"];

    pub fn from_name(key: &str) -> Option<Self> {
        match key {
            "io.istio.peer_principal" => Some(FilterStateKey::PeerPrincipal),
            "io.istio.local_principal" => Some(FilterStateKey::LocalPrincipal),
            _ => None,
        }
    }

    pub fn value(self, conn: &ConnInfo) -> Option<&str> {
        if !conn.peer_certificate_presented() && conn.peer_uri_sans.is_empty() {
            return None;
        }
        let sans = match self {
            FilterStateKey::PeerPrincipal => &conn.peer_uri_sans,
            FilterStateKey::LocalPrincipal => &conn.local_uri_sans,
        };
        sans.iter().find(|s| s.starts_with("spiffe://")).map(String::as_str)
    }
}

/// What the engine reads about a request or connection.
pub struct Input<'a> {
    /// The downstream local address (after original_dst).
    pub local: SocketAddr,
    /// The TCP peer.
    pub direct_remote: SocketAddr,
    /// The downstream address after x-forwarded-for processing (the TCP peer for connections).
    pub remote: SocketAddr,
    pub conn: &'a ConnInfo,
    /// The request headers; `None` for the network filter (header rules see no headers).
    pub headers: Option<&'a RequestHeaders<'a>>,
    pub metadata: Option<&'a DynamicMetadata>,
}

impl Input<'_> {
    /// A TLS connection (Envoy's `connection.ssl() != nullptr`).
    pub fn is_tls(&self) -> bool {
        self.conn.tls_version.is_some()
    }
}

/// An engine's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The policy (or matcher action) that decided, if one matched.
    pub policy: Option<Arc<str>>,
    /// For LOG engines: whether the request should be logged.
    pub log: Option<bool>,
    /// Envoy's response code details for a denial: `rbac_access_denied_matched_policy[<policy>]`.
    pub denied_details: &'static str,
}

/// `rbac_access_denied_matched_policy[<policy or none>]` (whitespace in the name becomes `_`),
/// interned: one copy per distinct policy name for the life of the process, made when config is
/// compiled, so denials neither allocate nor lock.
pub fn denied_details(policy: Option<&str>) -> &'static str {
    static INTERNED: Mutex<Option<std::collections::HashSet<&'static str>>> = Mutex::new(None);
    let policy: String = policy.unwrap_or("none").chars().map(|c| if c.is_whitespace() { '_' } else { c }).collect();
    let s = format!("rbac_access_denied_matched_policy[{policy}]");
    let mut g = INTERNED.lock().unwrap_or_else(|p| p.into_inner());
    let set = g.get_or_insert_with(Default::default);
    if let Some(v) = set.get(s.as_str()) {
        return v;
    }
    let v: &'static str = Box::leak(s.into_boxed_str());
    set.insert(v);
    v
}

struct Policy {
    name: Arc<str>,
    denied_details: &'static str,
    permissions: Box<[Rule]>,
    principals: Box<[Rule]>,
}

enum Kind {
    Policies { action: Action, policies: Box<[Policy]> },
    Matcher(matcher::Matcher),
}

/// A compiled RBAC engine.
pub struct Engine {
    kind: Kind,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Policies { action, policies } => f
                .debug_struct("Engine")
                .field("action", action)
                .field("policies", &policies.iter().map(|p| &*p.name).collect::<Vec<_>>())
                .finish(),
            Kind::Matcher(m) => f.debug_tuple("Engine").field(m).finish(),
        }
    }
}

impl Engine {
    /// Compiles `rules` (`field` names it in errors).
    pub fn from_rules(p: &RbacProto, field: &str) -> Result<Self, ConfigError> {
        let action = match rbac::Action::try_from(p.action) {
            Ok(rbac::Action::Allow) => Action::Allow,
            Ok(rbac::Action::Deny) => Action::Deny,
            Ok(rbac::Action::Log) => Action::Log,
            Err(_) => {
                return Err(ConfigError::new(
                    format!("{field}.action"),
                    "value must be one of the defined enum values",
                ));
            }
        };
        if let Some(audit) = &p.audit_logging_options {
            for (i, l) in audit.logger_configs.iter().enumerate() {
                if !l.is_optional {
                    let name = l.audit_logger.as_ref().map(|a| a.name.as_str()).unwrap_or("");
                    return Err(ConfigError::new(
                        format!("{field}.audit_logging_options.logger_configs[{i}]"),
                        format!("RBAC audit logger '{name}' is not supported"),
                    ));
                }
            }
        }
        let mut names: Vec<&String> = p.policies.keys().collect();
        names.sort();
        let mut policies = Vec::with_capacity(names.len());
        for name in names {
            let Some(pol) = p.policies.get(name) else { continue };
            let f = format!("{field}.policies[{name}]");
            if pol.condition.is_some() || pol.checked_condition.is_some() {
                return Err(ConfigError::new(
                    format!("{f}.condition"),
                    "RBAC policy conditions (CEL expressions) are not supported",
                ));
            }
            policies.push(Policy {
                name: name.as_str().into(),
                denied_details: denied_details(Some(name)),
                permissions: rule::permissions(&pol.permissions, &format!("{f}.permissions"))?,
                principals: rule::principals(&pol.principals, &format!("{f}.principals"))?,
            });
        }
        Ok(Engine { kind: Kind::Policies { action, policies: policies.into() } })
    }

    /// Compiles a unified matcher tree.
    pub fn from_matcher(m: &MatcherProto, cx: Context, field: &str) -> Result<Self, ConfigError> {
        Ok(Engine { kind: Kind::Matcher(matcher::Matcher::from_proto(m, cx, field)?) })
    }

    /// The engine a filter config asks for: the matcher when set (Envoy then ignores the
    /// rules), else the rules, else none (no enforcement).
    pub fn from_either(
        rules: Option<&RbacProto>,
        matcher: Option<&MatcherProto>,
        cx: Context,
        rules_field: &str,
        matcher_field: &str,
    ) -> Result<Option<Arc<Self>>, ConfigError> {
        Ok(match (matcher, rules) {
            (Some(m), _) => Some(Arc::new(Engine::from_matcher(m, cx, matcher_field)?)),
            (None, Some(r)) => Some(Arc::new(Engine::from_rules(r, rules_field)?)),
            (None, None) => None,
        })
    }

    pub fn evaluate(&self, i: &Input<'_>) -> Decision {
        match &self.kind {
            Kind::Policies { action, policies } => {
                let matched = policies
                    .iter()
                    .find(|p| p.permissions.iter().any(|r| r.matches(i)) && p.principals.iter().any(|r| r.matches(i)));
                let denied_details = matched.map_or_else(|| denied_details(None), |p| p.denied_details);
                let policy = matched.map(|p| p.name.clone());
                match action {
                    Action::Allow => Decision { allowed: policy.is_some(), policy, log: None, denied_details },
                    Action::Deny => Decision { allowed: policy.is_none(), policy, log: None, denied_details },
                    Action::Log => Decision { allowed: true, log: Some(policy.is_some()), policy, denied_details },
                }
            }
            Kind::Matcher(m) => match m.evaluate(i) {
                Some(a) => Decision {
                    allowed: a.action != Action::Deny,
                    policy: Some(a.name.clone()),
                    log: (a.action == Action::Log).then_some(true),
                    denied_details: a.denied_details,
                },
                None => Decision { allowed: false, policy: None, log: None, denied_details: denied_details(None) },
            },
        }
    }
}

// === stats ===

/// Envoy's `statPrefixJoin`: joins with a dot unless the prefix is empty or ends with one.
pub fn stat_prefix_join(prefix: &str, token: &str) -> String {
    if prefix.is_empty() {
        token.to_string()
    } else if prefix.ends_with('.') {
        format!("{prefix}{token}")
    } else {
        format!("{prefix}.{token}")
    }
}

/// The RBAC filters' counters: `<prefix>rbac.[<rules_prefix>.]allowed|denied` and
/// `<prefix>rbac.[<shadow_prefix>.]shadow_allowed|shadow_denied`, plus, for engines with
/// per-rule stats, `...policy.<name>.allowed|denied|shadow_allowed|shadow_denied` created on
/// first use.
pub struct RbacStats {
    pub allowed: Counter,
    pub denied: Counter,
    pub shadow_allowed: Counter,
    pub shadow_denied: Counter,
    per_policy: PerPolicyStats,
}

struct PerPolicyStats {
    store: Arc<Store>,
    rules_prefix: String,
    shadow_prefix: String,
    counters: arc_swap::ArcSwap<HashMap<(Arc<str>, u8), Counter>>,
    insert: Mutex<()>,
}

impl RbacStats {
    /// `prefix` is the filter's scope: `http.<hcm stat_prefix>.` or the network filter's
    /// `stat_prefix`.
    pub fn new(store: &Arc<Store>, prefix: &str, rules_prefix: &str, shadow_prefix: &str) -> Self {
        let base = stat_prefix_join(prefix, "rbac.");
        let rules = stat_prefix_join(&base, rules_prefix);
        let shadow = stat_prefix_join(&base, shadow_prefix);
        let c = |p: &str, n: &str| store.counter(&stat_prefix_join(p, n));
        RbacStats {
            allowed: c(&rules, "allowed"),
            denied: c(&rules, "denied"),
            shadow_allowed: c(&shadow, "shadow_allowed"),
            shadow_denied: c(&shadow, "shadow_denied"),
            per_policy: PerPolicyStats {
                store: store.clone(),
                rules_prefix: stat_prefix_join(&rules, "policy."),
                shadow_prefix: stat_prefix_join(&shadow, "policy."),
                counters: arc_swap::ArcSwap::from_pointee(HashMap::new()),
                insert: Mutex::new(()),
            },
        }
    }

    /// Counts one enforced (`shadow == false`) or shadow decision, and its policy's counter when
    /// the deciding engine has per-rule stats (`track_per_rule_stats`).
    pub fn record(&self, d: &Decision, shadow: bool, per_rule: bool) {
        match (shadow, d.allowed) {
            (false, true) => self.allowed.inc(),
            (false, false) => self.denied.inc(),
            (true, true) => self.shadow_allowed.inc(),
            (true, false) => self.shadow_denied.inc(),
        }
        if per_rule && let Some(policy) = &d.policy {
            self.per_policy.counter(policy, shadow, d.allowed).inc();
        }
    }
}

impl PerPolicyStats {
    fn counter(&self, policy: &Arc<str>, shadow: bool, allowed: bool) -> Counter {
        let kind = u8::from(shadow) << 1 | u8::from(allowed);
        let key = (policy.clone(), kind);
        if let Some(c) = self.counters.load().get(&key) {
            return c.clone();
        }
        let _g = self.insert.lock().unwrap_or_else(|p| p.into_inner());
        let mut m = HashMap::clone(&self.counters.load());
        let c = m
            .entry(key)
            .or_insert_with(|| {
                let (prefix, name) = match (shadow, allowed) {
                    (false, true) => (&self.rules_prefix, "allowed"),
                    (false, false) => (&self.rules_prefix, "denied"),
                    (true, true) => (&self.shadow_prefix, "shadow_allowed"),
                    (true, false) => (&self.shadow_prefix, "shadow_denied"),
                };
                self.store.counter(&format!("{prefix}{policy}.{name}"))
            })
            .clone();
        self.counters.store(Arc::new(m));
        c
    }
}

#[cfg(test)]
mod tests;
