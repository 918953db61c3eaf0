//! `filter_chain_match`: Envoy's selection of a filter chain for a connection, narrowing level by
//! level in Envoy's order (destination port, destination IP, server name, transport protocol,
//! application protocols, direct source IP, source type, source IP, source port). At each level
//! chains with a matching specific criterion win over chains that leave it empty; for IP ranges
//! and server names the most specific match wins.

use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::{FilterChainMatch, filter_chain_match::ConnectionSourceType};

use crate::config::ConfigError;
use crate::matcher::Cidr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceType {
    Local,
    External,
}

/// A compiled `FilterChainMatch`.
#[derive(Debug, Clone, Default)]
pub struct ChainMatch {
    destination_port: Option<u16>,
    prefix_ranges: Vec<Cidr>,
    server_names: Vec<String>,
    transport_protocol: Option<String>,
    application_protocols: Vec<String>,
    direct_source_prefix_ranges: Vec<Cidr>,
    source_type: Option<SourceType>,
    source_prefix_ranges: Vec<Cidr>,
    source_ports: Vec<u16>,
}

/// What is known about a connection when its chain is chosen.
#[derive(Debug, Clone, Default)]
pub struct ConnFacts<'a> {
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub direct_remote: Option<SocketAddr>,
    pub server_name: Option<&'a str>,
    pub transport_protocol: &'a str,
    pub application_protocols: &'a [String],
}

impl ChainMatch {
    pub fn from_proto(m: &FilterChainMatch, field: &str) -> Result<Self, ConfigError> {
        let cidrs = |v: &[CidrRange], f: &str| -> Result<Vec<Cidr>, ConfigError> {
            v.iter().enumerate().map(|(i, c)| Cidr::from_proto(c, &format!("{field}.{f}[{i}]"))).collect()
        };
        let port =
            |p: u32, f: &str| u16::try_from(p).map_err(|_| ConfigError::new(format!("{field}.{f}"), "invalid port"));
        if !m.address_suffix.is_empty() || m.suffix_len.is_some() {
            return Err(ConfigError::new(field, "address_suffix / suffix_len are not supported"));
        }
        Ok(ChainMatch {
            destination_port: match m.destination_port {
                Some(p) => Some(port(p.value, "destination_port")?),
                None => None,
            },
            prefix_ranges: cidrs(&m.prefix_ranges, "prefix_ranges")?,
            server_names: m.server_names.iter().map(|s| s.to_ascii_lowercase()).collect(),
            transport_protocol: (!m.transport_protocol.is_empty()).then(|| m.transport_protocol.clone()),
            application_protocols: m.application_protocols.clone(),
            direct_source_prefix_ranges: cidrs(&m.direct_source_prefix_ranges, "direct_source_prefix_ranges")?,
            source_type: match ConnectionSourceType::try_from(m.source_type) {
                Ok(ConnectionSourceType::Any) | Err(_) => None,
                Ok(ConnectionSourceType::SameIpOrLoopback) => Some(SourceType::Local),
                Ok(ConnectionSourceType::External) => Some(SourceType::External),
            },
            source_prefix_ranges: cidrs(&m.source_prefix_ranges, "source_prefix_ranges")?,
            source_ports: m.source_ports.iter().map(|p| port(*p, "source_ports")).collect::<Result<_, _>>()?,
        })
    }

    /// True when the chain needs the TLS inspector's SNI / ALPN or the HTTP inspector.
    pub fn needs_server_name(&self) -> bool {
        !self.server_names.is_empty()
    }
    pub fn needs_transport(&self) -> bool {
        self.transport_protocol.is_some()
    }
    pub fn needs_alpn(&self) -> bool {
        !self.application_protocols.is_empty()
    }
}

/// Longest matching prefix length, or None.
fn best_cidr(v: &[Cidr], ip: Option<IpAddr>) -> Option<u8> {
    let ip = ip?;
    v.iter().filter(|c| c.contains(ip)).map(|c| c.len).max()
}

/// Server-name specificity: exact beats the longest wildcard suffix.
fn server_name_score(names: &[String], sni: Option<&str>) -> Option<usize> {
    let sni = sni?.to_ascii_lowercase();
    let mut best = None;
    for n in names {
        let score = if *n == sni {
            Some(usize::MAX)
        } else if let Some(suffix) = n.strip_prefix('*') {
            (sni.len() > suffix.len() && sni.ends_with(suffix)).then_some(suffix.len())
        } else {
            None
        };
        if score > best {
            best = score;
        }
    }
    best
}

/// Why a chain dropped out of the selection (route explain): the criterion, and whether the
/// chain failed it or another chain matched it more specifically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub chain: usize,
    pub criterion: &'static str,
    pub outmatched: bool,
}

/// Narrows `candidates` by one criterion: keeps those with the best specific score; if none
/// matches specifically, keeps those where the criterion is empty.
fn narrow<T: Ord + Copy>(
    candidates: Vec<usize>,
    matches: &[ChainMatch],
    criterion: &'static str,
    trace: &mut Option<&mut Vec<Dropped>>,
    is_empty: impl Fn(&ChainMatch) -> bool,
    score: impl Fn(&ChainMatch) -> Option<T>,
) -> Vec<usize> {
    let scored: Vec<(usize, T)> = candidates
        .iter()
        .filter(|&&i| !is_empty(&matches[i]))
        .filter_map(|&i| score(&matches[i]).map(|s| (i, s)))
        .collect();
    let best = scored.iter().map(|(_, s)| *s).max();
    let kept: Vec<usize> = match best {
        Some(best) => scored.iter().filter(|(_, s)| *s == best).map(|(i, _)| *i).collect(),
        None => candidates.iter().copied().filter(|&i| is_empty(&matches[i])).collect(),
    };
    if let Some(t) = trace {
        for &i in candidates.iter().filter(|i| !kept.contains(i)) {
            // Dropped although it matched (or asked nothing): a more specific chain won.
            let outmatched = is_empty(&matches[i]) || scored.iter().any(|(j, _)| *j == i);
            t.push(Dropped { chain: i, criterion, outmatched });
        }
    }
    kept
}

/// Picks the chain index for a connection, following Envoy's order.
pub fn select(matches: &[ChainMatch], f: &ConnFacts<'_>) -> Option<usize> {
    select_traced(matches, f, None)
}

/// `select`, recording in `trace` why each other chain dropped out.
pub fn select_traced(matches: &[ChainMatch], f: &ConnFacts<'_>, mut trace: Option<&mut Vec<Dropped>>) -> Option<usize> {
    let t = &mut trace;
    let mut c: Vec<usize> = (0..matches.len()).collect();
    let local_port = f.local.map(|a| a.port());
    c = narrow(
        c,
        matches,
        "destination_port",
        t,
        |m| m.destination_port.is_none(),
        |m| (m.destination_port == local_port).then_some(1),
    );
    c = narrow(
        c,
        matches,
        "prefix_ranges",
        t,
        |m| m.prefix_ranges.is_empty(),
        |m| best_cidr(&m.prefix_ranges, f.local.map(|a| a.ip())),
    );
    c = narrow(
        c,
        matches,
        "server_names",
        t,
        |m| m.server_names.is_empty(),
        |m| server_name_score(&m.server_names, f.server_name),
    );
    c = narrow(
        c,
        matches,
        "transport_protocol",
        t,
        |m| m.transport_protocol.is_none(),
        |m| (m.transport_protocol.as_deref() == Some(f.transport_protocol)).then_some(1),
    );
    c = narrow(
        c,
        matches,
        "application_protocols",
        t,
        |m| m.application_protocols.is_empty(),
        |m| m.application_protocols.iter().any(|p| f.application_protocols.contains(p)).then_some(1),
    );
    c = narrow(
        c,
        matches,
        "direct_source_prefix_ranges",
        t,
        |m| m.direct_source_prefix_ranges.is_empty(),
        |m| best_cidr(&m.direct_source_prefix_ranges, f.direct_remote.or(f.remote).map(|a| a.ip())),
    );
    let is_local = match (f.remote, f.local) {
        (Some(r), Some(l)) => r.ip().is_loopback() || r.ip() == l.ip(),
        _ => false,
    };
    c = narrow(
        c,
        matches,
        "source_type",
        t,
        |m| m.source_type.is_none(),
        |m| match m.source_type {
            Some(SourceType::Local) => is_local.then_some(1),
            Some(SourceType::External) => (!is_local).then_some(1),
            _ => None,
        },
    );
    c = narrow(
        c,
        matches,
        "source_prefix_ranges",
        t,
        |m| m.source_prefix_ranges.is_empty(),
        |m| best_cidr(&m.source_prefix_ranges, f.remote.map(|a| a.ip())),
    );
    let sport = f.remote.map(|a| a.port());
    c = narrow(
        c,
        matches,
        "source_ports",
        t,
        |m| m.source_ports.is_empty(),
        |m| sport.filter(|p| m.source_ports.contains(p)).map(|_| 1),
    );
    if let Some(t) = trace {
        // Chains left tied after every criterion: the first one wins.
        for &i in c.iter().skip(1) {
            t.push(Dropped { chain: i, criterion: "order (an identical earlier chain)", outmatched: true });
        }
    }
    c.first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::UInt32Value;

    fn m(port: Option<u32>, tp: &str, alpn: &[&str], sni: &[&str], prefix: Option<(&str, u32)>) -> ChainMatch {
        ChainMatch::from_proto(
            &FilterChainMatch {
                destination_port: port.map(|value| UInt32Value { value }),
                transport_protocol: tp.into(),
                application_protocols: alpn.iter().map(|s| s.to_string()).collect(),
                server_names: sni.iter().map(|s| s.to_string()).collect(),
                prefix_ranges: prefix
                    .map(|(a, l)| {
                        vec![CidrRange { address_prefix: a.into(), prefix_len: Some(UInt32Value { value: l }) }]
                    })
                    .unwrap_or_default(),
                ..Default::default()
            },
            "m",
        )
        .unwrap()
    }

    #[test]
    fn istio_inbound_shape() {
        // Like virtualInbound: per-port chains for TLS (mTLS) and plaintext, plus catch-alls.
        let chains = vec![
            m(Some(8080), "tls", &["istio-peer-exchange", "istio"], &[], None),
            m(Some(8080), "raw_buffer", &[], &[], None),
            m(None, "tls", &[], &[], None),
            m(None, "raw_buffer", &["http/1.1", "h2c"], &[], None),
            m(None, "raw_buffer", &[], &[], None),
        ];
        let local: SocketAddr = "10.0.0.5:8080".parse().unwrap();
        let alpn = vec!["istio-peer-exchange".to_string()];
        let f = |tp, alpn: &'static [String], port: u16| ConnFacts {
            local: Some(SocketAddr::new(local.ip(), port)),
            transport_protocol: tp,
            application_protocols: alpn,
            ..Default::default()
        };
        let alpn: &'static [String] = Box::leak(alpn.into_boxed_slice());
        assert_eq!(select(&chains, &f("tls", alpn, 8080)), Some(0));
        assert_eq!(select(&chains, &f("raw_buffer", &[], 8080)), Some(1));
        assert_eq!(select(&chains, &f("tls", &[], 9090)), Some(2));
        let h1: &'static [String] = Box::leak(vec!["http/1.1".to_string()].into_boxed_slice());
        assert_eq!(select(&chains, &f("raw_buffer", h1, 9090)), Some(3));
        assert_eq!(select(&chains, &f("raw_buffer", &[], 9090)), Some(4));
    }

    #[test]
    fn most_specific_prefix_and_server_name() {
        let chains = vec![
            m(None, "", &[], &[], Some(("10.0.0.0", 8))),
            m(None, "", &[], &[], Some(("10.1.0.0", 16))),
            m(None, "", &[], &["*.example.com"], None),
            m(None, "", &[], &["api.example.com"], None),
        ];
        let f = |ip: &str, sni: Option<&'static str>| ConnFacts {
            local: Some(SocketAddr::new(ip.parse().unwrap(), 80)),
            server_name: sni,
            ..Default::default()
        };
        assert_eq!(select(&chains, &f("10.1.2.3", None)), Some(1));
        assert_eq!(select(&chains, &f("10.2.2.3", None)), Some(0));
        assert_eq!(select(&chains, &f("192.168.0.1", Some("api.example.com"))), Some(3));
        assert_eq!(select(&chains, &f("192.168.0.1", Some("www.example.com"))), Some(2));
        assert_eq!(select(&chains, &f("192.168.0.1", Some("other.org"))), None);
    }

    #[test]
    fn trace_says_why_each_chain_dropped() {
        let chains = vec![
            m(Some(8080), "tls", &[], &[], None),
            m(Some(8080), "raw_buffer", &[], &[], None),
            m(Some(9090), "", &[], &[], None),
            m(None, "", &[], &[], None),
        ];
        let f = ConnFacts {
            local: Some("10.0.0.5:8080".parse().unwrap()),
            transport_protocol: "raw_buffer",
            ..Default::default()
        };
        let mut trace = Vec::new();
        assert_eq!(select_traced(&chains, &f, Some(&mut trace)), Some(1));
        trace.sort_by_key(|d| d.chain);
        assert_eq!(
            trace,
            vec![
                Dropped { chain: 0, criterion: "transport_protocol", outmatched: false },
                Dropped { chain: 2, criterion: "destination_port", outmatched: false },
                Dropped { chain: 3, criterion: "destination_port", outmatched: true },
            ]
        );
    }
}
