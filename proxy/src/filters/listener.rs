//! Listener filters: they run on an accepted connection before a filter chain is chosen, and
//! recover or sniff what chain matching reads. The registry below maps Envoy's names and type
//! URLs to the three remora has; any other listener filter is a config error.

pub mod http_inspector;
pub mod original_dst;
pub mod tls_inspector;

use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::listener_filter_chain_match_predicate::Rule;
use envoy_types::pb::envoy::config::listener::v3::{ListenerFilter, ListenerFilterChainMatchPredicate};

use crate::config::ConfigError;

/// Which listener filters a listener runs (each at most once, in Envoy's fixed order:
/// original_dst, then tls_inspector, then http_inspector), and when each is disabled.
#[derive(Debug, Default, Clone)]
pub struct ListenerFilters {
    /// Restore the destination before an iptables REDIRECT (`SO_ORIGINAL_DST`).
    pub original_dst: bool,
    /// Read SNI and ALPN from a TLS ClientHello.
    pub tls_inspector: bool,
    /// Tell HTTP/1.x from HTTP/2 on plaintext connections (sets the ALPN chains match on).
    pub http_inspector: bool,
    /// `filter_disabled`: the filter is skipped for connections the predicate matches.
    disabled: Vec<(Which, Predicate)>,
}

/// A listener filter, for `filter_disabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    OriginalDst,
    TlsInspector,
    HttpInspector,
}

/// A compiled `ListenerFilterChainMatchPredicate`, evaluated on the destination port.
#[derive(Debug, Clone)]
enum Predicate {
    Or(Vec<Predicate>),
    And(Vec<Predicate>),
    Not(Box<Predicate>),
    Any,
    /// `[start, end)`, as Envoy's Int32Range.
    Ports(i32, i32),
}

impl Predicate {
    fn from_proto(p: &ListenerFilterChainMatchPredicate, field: &str) -> Result<Self, ConfigError> {
        let set = |rules: &[ListenerFilterChainMatchPredicate], f: &str| -> Result<Vec<Predicate>, ConfigError> {
            if rules.len() < 2 {
                return Err(ConfigError::new(format!("{field}.{f}.rules"), "value must contain at least 2 item(s)"));
            }
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| Predicate::from_proto(r, &format!("{field}.{f}.rules[{i}]")))
                .collect()
        };
        match &p.rule {
            Some(Rule::OrMatch(m)) => Ok(Predicate::Or(set(&m.rules, "or_match")?)),
            Some(Rule::AndMatch(m)) => Ok(Predicate::And(set(&m.rules, "and_match")?)),
            Some(Rule::NotMatch(m)) => {
                Ok(Predicate::Not(Box::new(Predicate::from_proto(m, &format!("{field}.not_match"))?)))
            }
            Some(Rule::AnyMatch(true)) => Ok(Predicate::Any),
            Some(Rule::AnyMatch(false)) => Err(ConfigError::new(format!("{field}.any_match"), "value must equal true")),
            Some(Rule::DestinationPortRange(r)) => Ok(Predicate::Ports(r.start, r.end)),
            None => Err(ConfigError::new(field, "rule is required")),
        }
    }

    fn matches(&self, port: u16) -> bool {
        match self {
            Predicate::Or(v) => v.iter().any(|p| p.matches(port)),
            Predicate::And(v) => v.iter().all(|p| p.matches(port)),
            Predicate::Not(p) => !p.matches(port),
            Predicate::Any => true,
            Predicate::Ports(start, end) => (*start..*end).contains(&i32::from(port)),
        }
    }
}

/// One registered listener filter: its type URL, the legacy names that may stand without a
/// typed config, and the flag it sets.
struct Registered {
    type_name: &'static str,
    names: &'static [&'static str],
    which: Which,
    enable: fn(&mut ListenerFilters),
}

const REGISTRY: &[Registered] = &[
    Registered {
        type_name: "envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
        names: &["envoy.filters.listener.original_dst", "envoy.listener.original_dst"],
        which: Which::OriginalDst,
        enable: |f| f.original_dst = true,
    },
    Registered {
        type_name: "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
        names: &["envoy.filters.listener.tls_inspector", "envoy.listener.tls_inspector"],
        which: Which::TlsInspector,
        enable: |f| f.tls_inspector = true,
    },
    Registered {
        type_name: "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
        names: &["envoy.filters.listener.http_inspector", "envoy.listener.http_inspector"],
        which: Which::HttpInspector,
        enable: |f| f.http_inspector = true,
    },
];

impl ListenerFilters {
    /// A listener's `listener_filters`.
    pub fn from_proto(filters: &[ListenerFilter]) -> Result<Self, ConfigError> {
        let mut lf = ListenerFilters::default();
        for (i, f) in filters.iter().enumerate() {
            let t = match &f.config_type {
                Some(ConfigType::TypedConfig(a)) => xds_client::any::effective_type_name(a),
                _ => String::new(),
            };
            let found = REGISTRY
                .iter()
                .find(|r| if t.is_empty() { r.names.contains(&f.name.as_str()) } else { r.type_name == t });
            match found {
                Some(r) => {
                    (r.enable)(&mut lf);
                    if let Some(d) = &f.filter_disabled {
                        let p = Predicate::from_proto(d, &format!("listener_filters[{i}].filter_disabled"))?;
                        lf.disabled.push((r.which, p));
                    }
                }
                None => {
                    return Err(ConfigError::new(
                        format!("listener_filters[{i}]"),
                        format!("listener filter {} ({t}) is not supported", f.name),
                    ));
                }
            }
        }
        Ok(lf)
    }

    /// Whether `which` runs for a connection to `dst_port` (configured and not disabled).
    pub fn runs(&self, which: Which, dst_port: u16) -> bool {
        let on = match which {
            Which::OriginalDst => self.original_dst,
            Which::TlsInspector => self.tls_inspector,
            Which::HttpInspector => self.http_inspector,
        };
        on && !self.disabled.iter().any(|(w, p)| *w == which && p.matches(dst_port))
    }
}
