//! The `matcher` form of RBAC: an `xds.type.matcher.v3.Matcher` tree whose actions are
//! `envoy.config.rbac.v3.Action` (name + ALLOW/DENY/LOG). A request no matcher decides is
//! denied, as in Envoy.
//!
//! Supported: matcher lists (single, or, and, not predicates), exact and prefix match maps,
//! nested matchers and `on_no_match`; inputs: request headers (HTTP only), source/destination
//! IP and port, direct source IP, source type, server name, the Istio principals in filter state
//! and the peer certificate's URI SANs, DNS SANs and subject; matchers: `value_match` and the
//! `envoy.matching.matchers.ip` CIDR matcher. Anything else (other inputs, CEL, custom trees,
//! `keep_matching`) fails translation with the field it is in.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::rbac::v3::{Action as ActionProto, rbac};
use envoy_types::pb::envoy::extensions::matching::common_inputs::network::v3::FilterStateInput;
use envoy_types::pb::envoy::extensions::matching::input_matchers::ip::v3::Ip as IpMatcherProto;
use envoy_types::pb::envoy::r#type::matcher::v3::HttpRequestHeaderMatchInput;
use envoy_types::pb::xds::core::v3::TypedExtensionConfig;
use envoy_types::pb::xds::r#type::matcher::v3::Matcher as MatcherProto;
use envoy_types::pb::xds::r#type::matcher::v3::matcher::{
    MatcherType, OnMatch as OnMatchProto, matcher_list::Predicate as PredicateProto, matcher_list::predicate,
    matcher_tree::TreeType, on_match,
};

use super::{Action, Context, FilterStateKey, Input};
use crate::config::ConfigError;
use crate::matcher::{IpRange, StringMatcher};

/// A named RBAC action, the leaf of a matcher tree.
#[derive(Debug, Clone)]
pub struct RbacAction {
    pub name: Arc<str>,
    pub action: Action,
    pub denied_details: &'static str,
}

/// A compiled unified matcher.
#[derive(Debug)]
pub struct Matcher {
    kind: Kind,
    on_no_match: Option<Box<OnMatch>>,
}

#[derive(Debug)]
enum Kind {
    List(Vec<(Predicate, OnMatch)>),
    Exact(DataInput, HashMap<String, OnMatch>),
    /// Longest prefix first.
    Prefix(DataInput, Vec<(String, OnMatch)>),
    /// Only `on_no_match`.
    Empty,
}

#[derive(Debug)]
enum OnMatch {
    Action(RbacAction),
    Matcher(Box<Matcher>),
}

#[derive(Debug)]
enum Predicate {
    Single(DataInput, InputMatcher),
    Or(Vec<Predicate>),
    And(Vec<Predicate>),
    Not(Box<Predicate>),
}

#[derive(Debug)]
enum InputMatcher {
    Value(StringMatcher),
    Ip(Vec<IpRange>),
}

/// Where a predicate's value comes from.
#[derive(Debug, Clone)]
enum DataInput {
    RequestHeader(String),
    DestinationIp,
    DestinationPort,
    SourceIp,
    SourcePort,
    DirectSourceIp,
    SourceType,
    ServerName,
    FilterState(FilterStateKey),
    UriSan,
    DnsSan,
    Subject,
}

// === impl Matcher ===

impl Matcher {
    pub fn from_proto(p: &MatcherProto, cx: Context, field: &str) -> Result<Self, ConfigError> {
        let on_no_match = match &p.on_no_match {
            Some(o) => Some(Box::new(OnMatch::from_proto(o, cx, &format!("{field}.on_no_match"))?)),
            None => None,
        };
        let kind = match &p.matcher_type {
            Some(MatcherType::MatcherList(list)) => {
                let f = format!("{field}.matcher_list.matchers");
                if list.matchers.is_empty() {
                    return Err(ConfigError::new(f, "value must contain at least 1 item(s)"));
                }
                let mut out = Vec::with_capacity(list.matchers.len());
                for (i, fm) in list.matchers.iter().enumerate() {
                    let f = format!("{f}[{i}]");
                    let Some(pred) = &fm.predicate else {
                        return Err(ConfigError::new(format!("{f}.predicate"), "value is required"));
                    };
                    let Some(on) = &fm.on_match else {
                        return Err(ConfigError::new(format!("{f}.on_match"), "value is required"));
                    };
                    out.push((
                        Predicate::from_proto(pred, cx, &format!("{f}.predicate"))?,
                        OnMatch::from_proto(on, cx, &format!("{f}.on_match"))?,
                    ));
                }
                Kind::List(out)
            }
            Some(MatcherType::MatcherTree(tree)) => {
                let f = format!("{field}.matcher_tree");
                let Some(input) = &tree.input else {
                    return Err(ConfigError::new(format!("{f}.input"), "value is required"));
                };
                let input = DataInput::from_proto(input, cx, &format!("{f}.input"))?;
                match &tree.tree_type {
                    Some(TreeType::ExactMatchMap(m)) => {
                        let mut map = HashMap::with_capacity(m.map.len());
                        for (k, on) in &m.map {
                            map.insert(k.clone(), OnMatch::from_proto(on, cx, &format!("{f}.exact_match_map[{k}]"))?);
                        }
                        Kind::Exact(input, map)
                    }
                    Some(TreeType::PrefixMatchMap(m)) => {
                        let mut v = Vec::with_capacity(m.map.len());
                        for (k, on) in &m.map {
                            v.push((k.clone(), OnMatch::from_proto(on, cx, &format!("{f}.prefix_match_map[{k}]"))?));
                        }
                        v.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
                        Kind::Prefix(input, v)
                    }
                    Some(TreeType::CustomMatch(ext)) => {
                        return Err(ConfigError::new(
                            format!("{f}.custom_match"),
                            format!("custom matcher tree '{}' is not supported in RBAC", ext.name),
                        ));
                    }
                    None => return Err(ConfigError::new(f, "a matcher tree needs a tree_type")),
                }
            }
            None => Kind::Empty,
        };
        Ok(Matcher { kind, on_no_match })
    }

    /// The action the tree arrives at, if any.
    pub fn evaluate(&self, i: &Input<'_>) -> Option<&RbacAction> {
        let found = match &self.kind {
            Kind::List(list) => list.iter().find_map(|(pred, on)| if pred.matches(i) { on.evaluate(i) } else { None }),
            Kind::Exact(input, map) => input.value(i).and_then(|v| map.get(v.as_ref())).and_then(|on| on.evaluate(i)),
            Kind::Prefix(input, v) => input.value(i).and_then(|val| {
                v.iter().find_map(|(p, on)| if val.starts_with(p.as_str()) { on.evaluate(i) } else { None })
            }),
            Kind::Empty => None,
        };
        found.or_else(|| self.on_no_match.as_ref().and_then(|on| on.evaluate(i)))
    }
}

impl OnMatch {
    fn from_proto(p: &OnMatchProto, cx: Context, field: &str) -> Result<Self, ConfigError> {
        if p.keep_matching {
            return Err(ConfigError::new(format!("{field}.keep_matching"), "keep_matching is not supported in RBAC"));
        }
        match &p.on_match {
            Some(on_match::OnMatch::Matcher(m)) => {
                Ok(OnMatch::Matcher(Box::new(Matcher::from_proto(m, cx, &format!("{field}.matcher"))?)))
            }
            Some(on_match::OnMatch::Action(a)) => Ok(OnMatch::Action(rbac_action(a, &format!("{field}.action"))?)),
            None => Err(ConfigError::new(field, "on_match needs a matcher or an action")),
        }
    }

    fn evaluate(&self, i: &Input<'_>) -> Option<&RbacAction> {
        match self {
            OnMatch::Action(a) => Some(a),
            OnMatch::Matcher(m) => m.evaluate(i),
        }
    }
}

fn rbac_action(ext: &TypedExtensionConfig, field: &str) -> Result<RbacAction, ConfigError> {
    let Some(any) = &ext.typed_config else {
        return Err(ConfigError::new(format!("{field}.typed_config"), "value is required"));
    };
    let t = xds_client::any::effective_type_name(any);
    if t != "envoy.config.rbac.v3.Action" {
        return Err(ConfigError::new(
            format!("{field}.typed_config"),
            format!("RBAC matcher actions must be envoy.config.rbac.v3.Action, not '{t}'"),
        ));
    }
    let a: ActionProto =
        xds_client::any::unpack(any).map_err(|e| ConfigError::new(format!("{field}.typed_config"), e.to_string()))?;
    if a.name.is_empty() {
        return Err(ConfigError::new(
            format!("{field}.typed_config.name"),
            "value length must be at least 1 characters",
        ));
    }
    let action = match rbac::Action::try_from(a.action) {
        Ok(rbac::Action::Allow) => Action::Allow,
        Ok(rbac::Action::Deny) => Action::Deny,
        Ok(rbac::Action::Log) => Action::Log,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{field}.typed_config.action"),
                "value must be one of the defined enum values",
            ));
        }
    };
    Ok(RbacAction { name: a.name.as_str().into(), action, denied_details: super::denied_details(Some(&a.name)) })
}

// === impl Predicate ===

impl Predicate {
    fn from_proto(p: &PredicateProto, cx: Context, field: &str) -> Result<Self, ConfigError> {
        use predicate::MatchType as M;
        let list = |l: &predicate::PredicateList, name: &str| -> Result<Vec<Predicate>, ConfigError> {
            let f = format!("{field}.{name}.predicate");
            if l.predicate.len() < 2 {
                return Err(ConfigError::new(f, "value must contain at least 2 item(s)"));
            }
            l.predicate.iter().enumerate().map(|(i, p)| Predicate::from_proto(p, cx, &format!("{f}[{i}]"))).collect()
        };
        Ok(match &p.match_type {
            Some(M::SinglePredicate(sp)) => {
                let f = format!("{field}.single_predicate");
                let Some(input) = &sp.input else {
                    return Err(ConfigError::new(format!("{f}.input"), "value is required"));
                };
                let input = DataInput::from_proto(input, cx, &format!("{f}.input"))?;
                use predicate::single_predicate::Matcher as SM;
                let m = match &sp.matcher {
                    Some(SM::ValueMatch(m)) => {
                        InputMatcher::Value(StringMatcher::from_xds(m, &format!("{f}.value_match"))?)
                    }
                    Some(SM::CustomMatch(ext)) => custom_input_matcher(ext, &format!("{f}.custom_match"))?,
                    None => return Err(ConfigError::new(f, "a single predicate needs value_match or custom_match")),
                };
                Predicate::Single(input, m)
            }
            Some(M::OrMatcher(l)) => Predicate::Or(list(l, "or_matcher")?),
            Some(M::AndMatcher(l)) => Predicate::And(list(l, "and_matcher")?),
            Some(M::NotMatcher(inner)) => {
                Predicate::Not(Box::new(Predicate::from_proto(inner, cx, &format!("{field}.not_matcher"))?))
            }
            None => return Err(ConfigError::new(field, "a predicate needs a match_type")),
        })
    }

    fn matches(&self, i: &Input<'_>) -> bool {
        match self {
            Predicate::Single(input, m) => match input.value(i) {
                // An input without data never matches.
                None => false,
                Some(v) => match m {
                    InputMatcher::Value(sm) => sm.matches(&v),
                    InputMatcher::Ip(ranges) => {
                        v.parse::<std::net::IpAddr>().is_ok_and(|ip| ranges.iter().any(|r| r.contains(ip)))
                    }
                },
            },
            Predicate::Or(ps) => ps.iter().any(|p| p.matches(i)),
            Predicate::And(ps) => ps.iter().all(|p| p.matches(i)),
            Predicate::Not(p) => !p.matches(i),
        }
    }
}

fn custom_input_matcher(ext: &TypedExtensionConfig, field: &str) -> Result<InputMatcher, ConfigError> {
    let t = ext.typed_config.as_ref().map(xds_client::any::effective_type_name).unwrap_or_default();
    match (t.as_str(), &ext.typed_config) {
        ("envoy.extensions.matching.input_matchers.ip.v3.Ip", Some(any)) => {
            let p: IpMatcherProto = xds_client::any::unpack(any)
                .map_err(|e| ConfigError::new(format!("{field}.typed_config"), e.to_string()))?;
            if p.stat_prefix.is_empty() {
                return Err(ConfigError::new(
                    format!("{field}.typed_config.stat_prefix"),
                    "value length must be at least 1 characters",
                ));
            }
            if p.cidr_ranges.is_empty() {
                return Err(ConfigError::new(
                    format!("{field}.typed_config.cidr_ranges"),
                    "value must contain at least 1 item(s)",
                ));
            }
            let ranges = p
                .cidr_ranges
                .iter()
                .enumerate()
                .map(|(i, c)| IpRange::from_proto(c, &format!("{field}.typed_config.cidr_ranges[{i}]")))
                .collect::<Result<_, _>>()?;
            Ok(InputMatcher::Ip(ranges))
        }
        _ => Err(ConfigError::new(
            field,
            format!("input matcher '{}' ({t}) is not supported in RBAC matchers", ext.name),
        )),
    }
}

// === impl DataInput ===

impl DataInput {
    fn from_proto(ext: &TypedExtensionConfig, cx: Context, field: &str) -> Result<Self, ConfigError> {
        const NET: &str = "envoy.extensions.matching.common_inputs.network.v3.";
        const SSL: &str = "envoy.extensions.matching.common_inputs.ssl.v3.";
        let Some(any) = &ext.typed_config else {
            return Err(ConfigError::new(format!("{field}.typed_config"), "value is required"));
        };
        let t = xds_client::any::effective_type_name(any);
        let unpack_err =
            |e: xds_client::any::AnyError| ConfigError::new(format!("{field}.typed_config"), e.to_string());
        let input = match t.as_str() {
            "envoy.type.matcher.v3.HttpRequestHeaderMatchInput" => {
                if cx == Context::Network {
                    return Err(ConfigError::new(
                        field,
                        format!(
                            "input '{}' ({t}) needs HTTP data and cannot be used by the network RBAC filter",
                            ext.name
                        ),
                    ));
                }
                let h: HttpRequestHeaderMatchInput = xds_client::any::unpack(any).map_err(unpack_err)?;
                let bare = h.header_name.strip_prefix(':').unwrap_or(&h.header_name);
                if http::HeaderName::from_bytes(bare.as_bytes()).is_err() {
                    return Err(ConfigError::new(
                        format!("{field}.typed_config.header_name"),
                        format!("invalid header name {:?}", h.header_name),
                    ));
                }
                DataInput::RequestHeader(h.header_name.to_ascii_lowercase())
            }
            _ if t.starts_with(NET) => match &t[NET.len()..] {
                "DestinationIPInput" => DataInput::DestinationIp,
                "DestinationPortInput" => DataInput::DestinationPort,
                "SourceIPInput" => DataInput::SourceIp,
                "SourcePortInput" => DataInput::SourcePort,
                "DirectSourceIPInput" => DataInput::DirectSourceIp,
                "SourceTypeInput" => DataInput::SourceType,
                "ServerNameInput" => DataInput::ServerName,
                "FilterStateInput" => {
                    let fs: FilterStateInput = xds_client::any::unpack(any).map_err(unpack_err)?;
                    match FilterStateKey::from_name(&fs.key) {
                        Some(k) => DataInput::FilterState(k),
                        None => {
                            return Err(ConfigError::new(
                                format!("{field}.typed_config.key"),
                                format!(
                                    "filter state key '{}' is not available in remora (supported: {})",
                                    fs.key,
                                    FilterStateKey::NAMES.join(", ")
                                ),
                            ));
                        }
                    }
                }
                _ => return Err(unsupported_input(ext, &t, field)),
            },
            _ if t.starts_with(SSL) => match &t[SSL.len()..] {
                "UriSanInput" => DataInput::UriSan,
                "DnsSanInput" => DataInput::DnsSan,
                "SubjectInput" => DataInput::Subject,
                _ => return Err(unsupported_input(ext, &t, field)),
            },
            _ => return Err(unsupported_input(ext, &t, field)),
        };
        Ok(input)
    }

    /// The input's value, `None` when it has no data.
    fn value<'a>(&self, i: &'a Input<'_>) -> Option<Cow<'a, str>> {
        match self {
            DataInput::RequestHeader(name) => i.headers.and_then(|h| h.get(name)),
            DataInput::DestinationIp => Some(Cow::Owned(i.local.ip().to_canonical().to_string())),
            DataInput::DestinationPort => Some(Cow::Owned(i.local.port().to_string())),
            DataInput::SourceIp => Some(Cow::Owned(i.remote.ip().to_canonical().to_string())),
            DataInput::SourcePort => Some(Cow::Owned(i.remote.port().to_string())),
            DataInput::DirectSourceIp => Some(Cow::Owned(i.direct_remote.ip().to_canonical().to_string())),
            DataInput::SourceType => {
                let ip = i.remote.ip().to_canonical();
                (ip.is_loopback() || ip == i.local.ip().to_canonical()).then_some(Cow::Borrowed("local"))
            }
            DataInput::ServerName => i.conn.sni.as_deref().filter(|s| !s.is_empty()).map(Cow::Borrowed),
            DataInput::FilterState(k) => k.value(i.conn).map(Cow::Borrowed),
            DataInput::UriSan => join_nonempty(i.is_tls(), &i.conn.peer_uri_sans),
            DataInput::DnsSan => join_nonempty(i.is_tls(), &i.conn.peer_dns_sans),
            DataInput::Subject => {
                if !i.is_tls() {
                    return None;
                }
                i.conn.peer_subject.as_deref().filter(|s| !s.is_empty()).map(Cow::Borrowed)
            }
        }
    }
}

fn join_nonempty(tls: bool, v: &[String]) -> Option<Cow<'_, str>> {
    match v {
        _ if !tls => None,
        [] => None,
        [one] => Some(Cow::Borrowed(one.as_str())),
        many => Some(Cow::Owned(many.join(","))),
    }
}

fn unsupported_input(ext: &TypedExtensionConfig, t: &str, field: &str) -> ConfigError {
    ConfigError::new(field, format!("matcher input '{}' ({t}) is not supported in RBAC matchers", ext.name))
}
