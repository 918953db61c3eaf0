//! RBAC permissions and principals (`envoy.config.rbac.v3.Permission` / `Principal`), compiled into
//! one rule tree that evaluates without allocating.
//!
//! Invariant: every field of those protos either compiles into a rule with Envoy's semantics or
//! fails translation with the field's path; nothing is ignored (an ignored rule can turn a DENY
//! into an allow).

use envoy_types::pb::envoy::config::rbac::v3::{
    MetadataSource, Permission, Principal, SourcedMetadata, permission, principal,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{FilterStateMatcher, filter_state_matcher};

use super::{FilterStateKey, Input};
use crate::config::ConfigError;
use crate::matcher::{HeaderMatcher, IpRange, MetadataMatcher, PathMatcher, StringMatcher};

/// A compiled permission or principal.
#[derive(Debug, Clone)]
pub enum Rule {
    Any,
    And(Box<[Rule]>),
    Or(Box<[Rule]>),
    Not(Box<Rule>),
    Header(HeaderMatcher),
    UrlPath(PathMatcher),
    /// The downstream local address (after original_dst).
    DestinationIp(IpRange),
    DestinationPort(u16),
    /// `[start, end)`.
    DestinationPortRange(u32, u32),
    /// Dynamic metadata of the request (or connection).
    Metadata(MetadataMatcher),
    RequestedServerName(StringMatcher),
    /// A TLS connection whose peer matches (URI SANs, then DNS SANs, then the subject).
    Authenticated(Option<StringMatcher>),
    /// `source_ip` (deprecated) and `direct_remote_ip`: the TCP peer.
    DirectRemoteIp(IpRange),
    /// `remote_ip`: the downstream address after x-forwarded-for processing.
    RemoteIp(IpRange),
    FilterState(FilterStateKey, StringMatcher),
}

impl Rule {
    /// Compiles a permission.
    pub fn permission(p: &Permission, field: &str) -> Result<Rule, ConfigError> {
        use permission::Rule as R;
        let f = |name: &str| format!("{field}.{name}");
        Ok(match &p.rule {
            Some(R::AndRules(set)) => Rule::And(permissions(&set.rules, &f("and_rules.rules"))?),
            Some(R::OrRules(set)) => Rule::Or(permissions(&set.rules, &f("or_rules.rules"))?),
            Some(R::Any(any)) => any_rule(*any, &f("any"))?,
            Some(R::Header(h)) => Rule::Header(HeaderMatcher::from_proto(h, &f("header"))?),
            Some(R::UrlPath(p)) => Rule::UrlPath(PathMatcher::from_proto(p, &f("url_path"))?),
            Some(R::DestinationIp(c)) => Rule::DestinationIp(IpRange::from_proto(c, &f("destination_ip"))?),
            Some(R::DestinationPort(port)) => match u16::try_from(*port) {
                Ok(port) => Rule::DestinationPort(port),
                Err(_) => {
                    return Err(ConfigError::new(f("destination_port"), "value must be less than or equal to 65535"));
                }
            },
            Some(R::DestinationPortRange(r)) => {
                let fld = f("destination_port_range");
                if !(0..=65536).contains(&r.start) {
                    return Err(ConfigError::new(fld, format!("range start {} is out of bounds", r.start)));
                }
                if !(0..=65536).contains(&r.end) {
                    return Err(ConfigError::new(fld, format!("range end {} is out of bounds", r.end)));
                }
                if r.start >= r.end {
                    return Err(ConfigError::new(
                        fld,
                        format!("range start {} cannot be greater or equal than range end {}", r.start, r.end),
                    ));
                }
                Rule::DestinationPortRange(r.start as u32, r.end as u32)
            }
            Some(R::Metadata(m)) => Rule::Metadata(MetadataMatcher::from_proto(m, &f("metadata"))?),
            Some(R::SourcedMetadata(sm)) => sourced_metadata(sm, &f("sourced_metadata"))?,
            Some(R::NotRule(inner)) => Rule::Not(Box::new(Rule::permission(inner, &f("not_rule"))?)),
            Some(R::RequestedServerName(m)) => {
                Rule::RequestedServerName(StringMatcher::from_proto(m, &f("requested_server_name"))?)
            }
            Some(R::Matcher(ext)) => {
                return Err(ConfigError::new(
                    f("matcher"),
                    format!(
                        "RBAC permission matcher extension '{}' ({}) is not supported",
                        ext.name,
                        ext.typed_config.as_ref().map(xds_client::any::effective_type_name).unwrap_or_default()
                    ),
                ));
            }
            Some(R::UriTemplate(ext)) => {
                return Err(ConfigError::new(
                    f("uri_template"),
                    format!("RBAC uri_template permissions ('{}') are not supported", ext.name),
                ));
            }
            None => return Err(ConfigError::new(field, "a permission needs a rule (value is required)")),
        })
    }

    /// Compiles a principal.
    pub fn principal(p: &Principal, field: &str) -> Result<Rule, ConfigError> {
        use principal::Identifier as I;
        let f = |name: &str| format!("{field}.{name}");
        Ok(match &p.identifier {
            Some(I::AndIds(set)) => Rule::And(principals(&set.ids, &f("and_ids.ids"))?),
            Some(I::OrIds(set)) => Rule::Or(principals(&set.ids, &f("or_ids.ids"))?),
            Some(I::Any(any)) => any_rule(*any, &f("any"))?,
            Some(I::Authenticated(a)) => Rule::Authenticated(match &a.principal_name {
                Some(m) => Some(StringMatcher::from_proto(m, &f("authenticated.principal_name"))?),
                None => None,
            }),
            Some(I::SourceIp(c)) => Rule::DirectRemoteIp(IpRange::from_proto(c, &f("source_ip"))?),
            Some(I::DirectRemoteIp(c)) => Rule::DirectRemoteIp(IpRange::from_proto(c, &f("direct_remote_ip"))?),
            Some(I::RemoteIp(c)) => Rule::RemoteIp(IpRange::from_proto(c, &f("remote_ip"))?),
            Some(I::Header(h)) => Rule::Header(HeaderMatcher::from_proto(h, &f("header"))?),
            Some(I::UrlPath(p)) => Rule::UrlPath(PathMatcher::from_proto(p, &f("url_path"))?),
            Some(I::Metadata(m)) => Rule::Metadata(MetadataMatcher::from_proto(m, &f("metadata"))?),
            Some(I::SourcedMetadata(sm)) => sourced_metadata(sm, &f("sourced_metadata"))?,
            Some(I::FilterState(fs)) => filter_state(fs, &f("filter_state"))?,
            Some(I::NotId(inner)) => Rule::Not(Box::new(Rule::principal(inner, &f("not_id"))?)),
            Some(I::Custom(ext)) => {
                return Err(ConfigError::new(
                    f("custom"),
                    format!(
                        "RBAC custom principal extension '{}' ({}) is not supported",
                        ext.name,
                        ext.typed_config.as_ref().map(xds_client::any::effective_type_name).unwrap_or_default()
                    ),
                ));
            }
            None => return Err(ConfigError::new(field, "a principal needs an identifier (value is required)")),
        })
    }

    pub fn matches(&self, i: &Input<'_>) -> bool {
        match self {
            Rule::Any => true,
            Rule::And(rules) => rules.iter().all(|r| r.matches(i)),
            Rule::Or(rules) => rules.iter().any(|r| r.matches(i)),
            Rule::Not(r) => !r.matches(i),
            Rule::Header(h) => h.matches_value(i.headers.and_then(|hs| hs.get(h.name()))),
            Rule::UrlPath(p) => i.headers.is_some_and(|h| p.matches(h.path)),
            Rule::DestinationIp(r) => r.contains(i.local.ip()),
            Rule::DestinationPort(p) => i.local.port() == *p,
            Rule::DestinationPortRange(lo, hi) => {
                let p = u32::from(i.local.port());
                *lo <= p && p < *hi
            }
            Rule::Metadata(m) => m.matches(i.metadata.and_then(|md| md.get(&m.filter))),
            Rule::RequestedServerName(m) => m.matches(i.conn.sni.as_deref().unwrap_or("")),
            Rule::Authenticated(m) => {
                if !i.is_tls() {
                    return false;
                }
                let Some(m) = m else { return true };
                i.conn.peer_uri_sans.iter().any(|s| m.matches(s))
                    || i.conn.peer_dns_sans.iter().any(|s| m.matches(s))
                    || m.matches(i.conn.peer_subject.as_deref().unwrap_or(""))
            }
            Rule::DirectRemoteIp(r) => r.contains(i.direct_remote.ip()),
            Rule::RemoteIp(r) => r.contains(i.remote.ip()),
            Rule::FilterState(key, m) => key.value(i.conn).is_some_and(|v| m.matches(v)),
        }
    }
}

fn any_rule(any: bool, field: &str) -> Result<Rule, ConfigError> {
    if any { Ok(Rule::Any) } else { Err(ConfigError::new(field, "value must equal true")) }
}

pub(super) fn permissions(v: &[Permission], field: &str) -> Result<Box<[Rule]>, ConfigError> {
    if v.is_empty() {
        return Err(ConfigError::new(field, "value must contain at least 1 item(s)"));
    }
    v.iter().enumerate().map(|(i, p)| Rule::permission(p, &format!("{field}[{i}]"))).collect()
}

pub(super) fn principals(v: &[Principal], field: &str) -> Result<Box<[Rule]>, ConfigError> {
    if v.is_empty() {
        return Err(ConfigError::new(field, "value must contain at least 1 item(s)"));
    }
    v.iter().enumerate().map(|(i, p)| Rule::principal(p, &format!("{field}[{i}]"))).collect()
}

fn sourced_metadata(sm: &SourcedMetadata, field: &str) -> Result<Rule, ConfigError> {
    let Some(m) = &sm.metadata_matcher else {
        return Err(ConfigError::new(format!("{field}.metadata_matcher"), "value is required"));
    };
    match MetadataSource::try_from(sm.metadata_source) {
        Ok(MetadataSource::Dynamic) => {
            Ok(Rule::Metadata(MetadataMatcher::from_proto(m, &format!("{field}.metadata_matcher"))?))
        }
        Ok(MetadataSource::Route) => Err(ConfigError::new(
            format!("{field}.metadata_source"),
            "RBAC matching on ROUTE metadata is not supported (route metadata is not kept)",
        )),
        Err(_) => {
            Err(ConfigError::new(format!("{field}.metadata_source"), "value must be one of the defined enum values"))
        }
    }
}

fn filter_state(fs: &FilterStateMatcher, field: &str) -> Result<Rule, ConfigError> {
    let Some(key) = FilterStateKey::from_name(&fs.key) else {
        return Err(ConfigError::new(
            format!("{field}.key"),
            format!(
                "filter state key '{}' is not available in remora (supported: {})",
                fs.key,
                FilterStateKey::NAMES.join(", ")
            ),
        ));
    };
    match &fs.matcher {
        Some(filter_state_matcher::Matcher::StringMatch(m)) => {
            Ok(Rule::FilterState(key, StringMatcher::from_proto(m, &format!("{field}.string_match"))?))
        }
        Some(filter_state_matcher::Matcher::AddressMatch(_)) => Err(ConfigError::new(
            format!("{field}.address_match"),
            format!("filter state '{}' holds a string, not an address", fs.key),
        )),
        None => Err(ConfigError::new(field, "a filter state matcher needs string_match")),
    }
}
