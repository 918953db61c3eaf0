//! `envoy.filters.network.rbac`: allows or closes a connection with the shared RBAC engine
//! (`filters::common::rbac`), judged on what the connection shows: addresses, SNI and the TLS
//! peer identity (header rules see no headers). Shadow rules are evaluated and counted, never
//! enforced.
//!
//! Wiring: the listener builds it as a non-terminal `NetworkFilter` of the filter chain and calls
//! `on_data` once per connection, after the TLS handshake: for HTTP when the first bytes have
//! arrived, as Envoy's read filter does, for tcp_proxy at once; `Close` means close without
//! forwarding anything (after `delay_deny`, if set).
//!
//! Stats: `<stat_prefix>.rbac.allowed|denied` and
//! `<stat_prefix>.rbac.[<shadow_rules_stat_prefix>.]shadow_allowed|shadow_denied` (a stat prefix
//! ending in `.` is not doubled).
//!
//! Differences from Envoy, by design: the verdict is made once per connection for both
//! enforcement types (remora has no filter that changes a connection's RBAC inputs later, so
//! CONTINUOUS cannot change the verdict; Envoy re-counts `allowed` on every read with CONTINUOUS);
//! a denied connection never reaches the terminal filter (Envoy's tcp_proxy has already connected
//! upstream, and may have relayed a server-first greeting, when the client's first byte gets the
//! connection closed); in front of tcp_proxy the verdict (and its count) comes at accept, not on
//! the client's first byte, so server-first protocols are not held up.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::{Rbac as RbacProto, rbac::EnforcementType};
use envoy_types::pb::google::protobuf::Any;

use super::{NetworkAction, NetworkCtx, NetworkFilter};
use crate::config::{BuildCtx, ConfigError, duration};
use crate::filters::common::rbac::{Context, Engine, Input, RbacStats};

pub const NAME: &str = "envoy.filters.network.rbac";
pub const TYPE: &str = "envoy.extensions.filters.network.rbac.v3.RBAC";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    OneTimeOnFirstByte,
    Continuous,
}

/// A configured network RBAC filter.
pub struct NetworkRbac {
    name: String,
    enforced: Option<Arc<Engine>>,
    shadow: Option<Arc<Engine>>,
    pub enforcement: Enforcement,
    pub delay_deny: Option<Duration>,
    pub stats: RbacStats,
}

/// Builds the filter from a listener filter's `typed_config`.
pub fn factory(name: &str, any: &Any, cx: &BuildCtx) -> Result<Arc<dyn NetworkFilter>, ConfigError> {
    let p: RbacProto = xds_client::any::unpack(any).map_err(|e| ConfigError::new("typed_config", e.to_string()))?;
    Ok(Arc::new(NetworkRbac::from_proto(name, &p, cx).map_err(|e| e.within("typed_config"))?))
}

impl NetworkRbac {
    pub fn from_proto(name: &str, p: &RbacProto, cx: &BuildCtx) -> Result<Self, ConfigError> {
        if p.stat_prefix.is_empty() {
            return Err(ConfigError::new("stat_prefix", "value length must be at least 1 characters"));
        }
        let enforcement = match EnforcementType::try_from(p.enforcement_type) {
            Ok(EnforcementType::OneTimeOnFirstByte) => Enforcement::OneTimeOnFirstByte,
            Ok(EnforcementType::Continuous) => Enforcement::Continuous,
            Err(_) => {
                return Err(ConfigError::new("enforcement_type", "value must be one of the defined enum values"));
            }
        };
        Ok(NetworkRbac {
            name: name.to_string(),
            enforced: Engine::from_either(p.rules.as_ref(), p.matcher.as_ref(), Context::Network, "rules", "matcher")?,
            shadow: Engine::from_either(
                p.shadow_rules.as_ref(),
                p.shadow_matcher.as_ref(),
                Context::Network,
                "shadow_rules",
                "shadow_matcher",
            )?,
            enforcement,
            delay_deny: p.delay_deny.as_ref().map(duration).filter(|d| !d.is_zero()),
            stats: RbacStats::new(&cx.stats, &p.stat_prefix, "", &p.shadow_rules_stat_prefix),
        })
    }

    /// Judges a connection: runs the shadow engine (counted only), then the enforced one.
    /// Returns whether the connection may proceed (true when no enforced engine is configured).
    pub fn check(&self, cx: &NetworkCtx<'_>) -> bool {
        let input = Input {
            local: cx.local,
            direct_remote: cx.remote,
            remote: cx.remote,
            conn: cx.conn,
            headers: None,
            metadata: None,
        };
        if let Some(e) = &self.shadow {
            let d = e.evaluate(&input);
            tracing::debug!(target: "remora::rbac", "connection from {}: shadow allowed={}", cx.remote, d.allowed);
            self.stats.record(&d, true, false);
        }
        match &self.enforced {
            None => true,
            Some(e) => {
                let d = e.evaluate(&input);
                tracing::debug!(
                    target: "remora::rbac",
                    "connection from {}: allowed={} ({})", cx.remote, d.allowed, d.policy.as_deref().unwrap_or("no policy")
                );
                self.stats.record(&d, false, false);
                d.allowed
            }
        }
    }
}

impl NetworkFilter for NetworkRbac {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_data(&self, cx: &NetworkCtx<'_>) -> NetworkAction {
        if self.check(cx) { NetworkAction::Continue } else { NetworkAction::Close { delay: self.delay_deny } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Store;
    use crate::stream_info::ConnInfo;

    fn build(json: serde_json::Value) -> Result<(NetworkRbac, Arc<Store>), ConfigError> {
        let p: RbacProto = xds_client::json::message_from_json(
            &xds_client::descriptors::pool(),
            json,
            xds_client::json::JsonOptions::default(),
        )
        .map_err(|e| ConfigError::new("json", e.to_string()))?;
        let store = Arc::new(Store::default());
        let cx = BuildCtx { stats: store.clone(), ..Default::default() };
        Ok((NetworkRbac::from_proto(NAME, &p, &cx)?, store))
    }

    fn ctx<'a>(remote: &str, local: &str, conn: &'a ConnInfo) -> NetworkCtx<'a> {
        NetworkCtx { remote: remote.parse().unwrap(), local: local.parse().unwrap(), conn }
    }

    #[test]
    fn istio_empty_rules_deny_every_connection_and_count() {
        let (f, store) = build(serde_json::json!({
            "rules": {}, "stat_prefix": "tcp.", "shadow_rules_stat_prefix": "istio_dry_run_allow_"
        }))
        .unwrap();
        let conn = ConnInfo::default();
        assert_eq!(f.on_data(&ctx("10.0.0.1:5555", "10.0.0.2:80", &conn)), NetworkAction::Close { delay: None });
        assert_eq!(store.value_of("tcp.rbac.denied"), Some(1));
        assert_eq!(store.value_of("tcp.rbac.allowed"), Some(0));
        assert_eq!(store.value_of("tcp.rbac.istio_dry_run_allow_.shadow_allowed"), Some(0));
    }

    #[test]
    fn principals_and_ports_on_connections() {
        let (f, store) = build(serde_json::json!({
            "stat_prefix": "tcp",
            "delay_deny": "0.5s",
            "rules": {"action": "ALLOW", "policies": {
                "sleep": {
                    "permissions": [{"destination_port": 9000}],
                    "principals": [{"authenticated": {"principal_name": {"exact": "spiffe://cluster.local/ns/default/sa/sleep"}}}]
                },
                "lan": {
                    "permissions": [{"destination_port_range": {"start": 8000, "end": 8100}}],
                    "principals": [{"direct_remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}}]
                }
            }},
            "shadow_rules": {"action": "DENY", "policies": {
                "hdr": {"permissions": [{"header": {"name": ":method", "present_match": false}}], "principals": [{"any": true}]}
            }}
        }))
        .unwrap();
        let plain = ConnInfo::default();
        let mtls = ConnInfo {
            tls_version: Some("TLSv1.3"),
            peer_uri_sans: vec!["spiffe://cluster.local/ns/default/sa/sleep".into()],
            peer_cert_sha256: Some("ab".into()),
            ..Default::default()
        };
        assert!(f.check(&ctx("10.1.2.3:1000", "10.0.0.2:8080", &plain)));
        assert!(!f.check(&ctx("192.168.1.1:1000", "10.0.0.2:8080", &plain)));
        assert!(!f.check(&ctx("192.168.1.1:1000", "10.0.0.2:9000", &plain)));
        assert!(f.check(&ctx("192.168.1.1:1000", "10.0.0.2:9000", &mtls)));
        assert_eq!(
            f.on_data(&ctx("192.168.1.1:1000", "10.0.0.2:9001", &mtls)),
            NetworkAction::Close { delay: Some(Duration::from_millis(500)) }
        );
        assert_eq!(store.value_of("tcp.rbac.allowed"), Some(2));
        assert_eq!(store.value_of("tcp.rbac.denied"), Some(3));
        // present_match: false matches the absent :method of a connection: shadow DENY hits all.
        assert_eq!(store.value_of("tcp.rbac.shadow_denied"), Some(5));
    }

    #[test]
    fn rejects_http_matcher_inputs_and_missing_prefix() {
        let e = build(serde_json::json!({"rules": {}})).err().unwrap();
        assert_eq!(e.field, "stat_prefix");
        let e = build(serde_json::json!({
            "stat_prefix": "t",
            "matcher": {"matcher_list": {"matchers": [{
                "predicate": {"single_predicate": {
                    "input": {"name": "h", "typed_config": {
                        "@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
                        "header_name": "x"}},
                    "value_match": {"exact": "a"}}},
                "on_match": {"action": {"name": "a", "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.rbac.v3.Action", "name": "a", "action": "ALLOW"}}}
            }]}}
        }))
        .err()
        .unwrap();
        assert!(e.reason.contains("needs HTTP data"), "{e}");
    }

    #[test]
    fn no_engine_allows_without_counting() {
        let (f, store) = build(serde_json::json!({"stat_prefix": "t."})).unwrap();
        let conn = ConnInfo::default();
        assert!(f.check(&ctx("1.2.3.4:1", "5.6.7.8:2", &conn)));
        assert_eq!(store.value_of("t.rbac.allowed"), Some(0));
    }
}
