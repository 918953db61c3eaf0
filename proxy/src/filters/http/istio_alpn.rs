//! Istio's `istio.alpn` HTTP filter (`istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig`):
//! upstream TLS connections of this connection manager offer an ALPN chosen by the upstream
//! protocol (`istio-http/1.0`, `istio-http/1.1`, `istio-h2` first) instead of the cluster's list
//! (`istio-peer-exchange, istio`). The server sidecar selects its HTTP filter chain by that ALPN;
//! without it an HTTP request would land on the TCP chain of an Istio inbound listener.
//!
//! Pools are keyed by the override, so connections with different ALPNs are never shared.

use envoy_types::pb::google::protobuf::{Any, value};
use prost::Message;

use crate::config::ConfigError;

pub const TYPE: &str = "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig";

#[derive(Clone, PartialEq, prost::Message)]
struct FilterConfigProto {
    #[prost(message, repeated, tag = "1")]
    alpn_override: Vec<AlpnOverrideProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AlpnOverrideProto {
    /// HTTP10 = 0, HTTP11 = 1, HTTP2 = 2.
    #[prost(int32, tag = "1")]
    upstream_protocol: i32,
    #[prost(string, repeated, tag = "2")]
    alpn_override: Vec<String>,
}

pub use crate::upstream::pool::Alpn;

/// The compiled filter: an ALPN list per upstream protocol.
#[derive(Debug, Clone, Default)]
pub struct AlpnOverride {
    http10: Option<Alpn>,
    http11: Option<Alpn>,
    http2: Option<Alpn>,
}

impl AlpnOverride {
    pub fn from_any(any: &Any, field: &str) -> Result<Self, ConfigError> {
        let entries: Vec<(i32, Vec<String>)> = if xds_client::any::type_name(&any.type_url) == TYPE {
            FilterConfigProto::decode(any.value.as_slice())
                .map_err(|e| ConfigError::new(field, format!("invalid {TYPE}: {e}")))?
                .alpn_override
                .into_iter()
                .map(|o| (o.upstream_protocol, o.alpn_override))
                .collect()
        } else {
            // Inside a TypedStruct: `{alpn_override: [{upstream_protocol: "HTTP11", alpn_override: [...]}]}`.
            let ts = xds_client::any::TypedStruct::decode(any.value.as_slice())
                .map_err(|e| ConfigError::new(field, format!("invalid TypedStruct: {e}")))?;
            let s = ts.value.unwrap_or_default();
            let mut out = Vec::new();
            if let Some(value::Kind::ListValue(l)) = s.fields.get("alpn_override").and_then(|v| v.kind.clone()) {
                for item in l.values {
                    let Some(value::Kind::StructValue(o)) = item.kind else { continue };
                    let proto = match o.fields.get("upstream_protocol").and_then(|v| v.kind.clone()) {
                        Some(value::Kind::StringValue(p)) if p == "HTTP11" => 1,
                        Some(value::Kind::StringValue(p)) if p == "HTTP2" => 2,
                        Some(value::Kind::NumberValue(n)) => n as i32,
                        _ => 0,
                    };
                    let list = match o.fields.get("alpn_override").and_then(|v| v.kind.clone()) {
                        Some(value::Kind::ListValue(l)) => l
                            .values
                            .into_iter()
                            .filter_map(|v| match v.kind {
                                Some(value::Kind::StringValue(s)) => Some(s),
                                _ => None,
                            })
                            .collect(),
                        _ => Vec::new(),
                    };
                    out.push((proto, list));
                }
            }
            out
        };
        let mut o = AlpnOverride::default();
        for (proto, list) in entries {
            let alpn = Alpn {
                key: xxhash_rust::xxh64::xxh64(list.join(",").as_bytes(), 0x15710),
                protocols: list.into_iter().map(String::into_bytes).collect(),
            };
            match proto {
                0 => o.http10 = Some(alpn),
                1 => o.http11 = Some(alpn),
                2 => o.http2 = Some(alpn),
                p => return Err(ConfigError::new(field, format!("unknown upstream_protocol {p}"))),
            }
        }
        Ok(o)
    }

    /// The list for a request going upstream over HTTP/2 (`h2`), or HTTP/1.x (`http10` for a
    /// downstream HTTP/1.0 request).
    pub fn for_request(&self, h2: bool, http10: bool) -> Option<&Alpn> {
        match (h2, http10) {
            (true, _) => self.http2.as_ref(),
            (false, true) => self.http10.as_ref(),
            (false, false) => self.http11.as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_override_lists_by_protocol() {
        let cfg = FilterConfigProto {
            alpn_override: vec![
                AlpnOverrideProto {
                    upstream_protocol: 0,
                    alpn_override: vec!["istio-http/1.0".into(), "istio".into()],
                },
                AlpnOverrideProto {
                    upstream_protocol: 1,
                    alpn_override: vec!["istio-http/1.1".into(), "istio".into()],
                },
                AlpnOverrideProto { upstream_protocol: 2, alpn_override: vec!["istio-h2".into(), "istio".into()] },
            ],
        };
        let any = Any { type_url: format!("type.googleapis.com/{TYPE}"), value: cfg.encode_to_vec() };
        let o = AlpnOverride::from_any(&any, "f").unwrap_or_default();
        assert_eq!(o.for_request(true, false).map(|a| a.protocols[0].clone()), Some(b"istio-h2".to_vec()));
        assert_eq!(o.for_request(false, false).map(|a| a.protocols[0].clone()), Some(b"istio-http/1.1".to_vec()));
        assert_eq!(o.for_request(false, true).map(|a| a.protocols[0].clone()), Some(b"istio-http/1.0".to_vec()));
        let (a, b) = (o.for_request(true, false).map(|a| a.key), o.for_request(false, false).map(|a| a.key));
        assert_ne!(a, b);
    }
}
