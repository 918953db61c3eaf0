//! Unit tests of the guard: policy parsing, wire walking, paths, Any and maps.

use super::*;

#[test]
fn policy_parses() {
    let p =
        parse_policy("message a.B\n  x\n  y noop a stats name\n  z telemetry tracing\nmessage a.C whole read whole\n")
            .unwrap();
    assert_eq!(p.len(), 2);
    assert_eq!(p[0].fields[1].1, Verdict::NoOp("a stats name".into()));
    assert_eq!(p[0].fields[2].1, Verdict::Telemetry("tracing".into()));
    assert_eq!(p[1].whole.as_deref(), Some("read whole"));
    assert!(parse_policy("message a.B\n  y noop\n").is_err(), "a no-op needs a reason");
    assert!(parse_policy("  y\n").is_err(), "field before message");
}

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, OutlierDetection};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};

fn guard(policy: &str) -> FieldGuard {
    FieldGuard::build(&xds_client::descriptors::pool(), policy).unwrap()
}

#[test]
fn refuses_an_unlisted_field_with_its_path() {
    let g = guard("message envoy.config.cluster.v3.Cluster\n  name\n  connect_timeout\n");
    let mut c =
        Cluster { name: "a".into(), connect_timeout: Some(Duration { seconds: 1, nanos: 0 }), ..Default::default() };
    assert_eq!(g.check_message(&c), Ok(vec![]));
    c.outlier_detection =
        Some(OutlierDetection { consecutive_5xx: Some(UInt32Value { value: 5 }), ..Default::default() });
    let f = g.check_message(&c).unwrap_err();
    assert_eq!(f.path, "outlier_detection");
    assert_eq!(f.field, "envoy.config.cluster.v3.Cluster.outlier_detection");
    assert!(f.to_string().contains("not supported by remora"), "{f}");
}

#[test]
fn descends_into_listed_messages_and_indexes_lists() {
    let g = guard(
        "message envoy.config.route.v3.RouteConfiguration\n  name\n  virtual_hosts\n\
         message envoy.config.route.v3.VirtualHost\n  name\n  domains\n",
    );
    let vh = |n: &str| VirtualHost { name: n.into(), domains: vec!["*".into()], ..Default::default() };
    let mut rc = RouteConfiguration { name: "r".into(), virtual_hosts: vec![vh("a"), vh("b")], ..Default::default() };
    assert!(g.check_message(&rc).is_ok());
    rc.virtual_hosts[1].include_request_attempt_count = true;
    assert_eq!(g.check_message(&rc).unwrap_err().path, "virtual_hosts[1].include_request_attempt_count");
}

#[test]
fn telemetry_fields_pass_and_are_reported() {
    let g = guard("message envoy.config.cluster.v3.Cluster\n  name\n  track_cluster_stats telemetry size histograms\n");
    let c = Cluster { name: "a".into(), track_cluster_stats: Some(Default::default()), ..Default::default() };
    let found = g.check_message(&c).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].reason, "size histograms");
    let store = crate::stats::Store::default();
    g.admit(&c, &store).unwrap();
    g.admit(&c, &store).unwrap();
    assert_eq!(g.seen(), vec![("Cluster.track_cluster_stats".into(), "size histograms".into(), 2)]);
}

#[test]
fn zero_accepts_only_empty_values() {
    // (A field without a validation rule: dns_refresh_rate's `gt: 1ms` would refuse 0 anyway.)
    let g = guard(
        "message envoy.config.cluster.v3.Cluster\n  name\n  per_connection_buffer_limit_bytes zero only 0 is supported\n",
    );
    let mut c =
        Cluster { name: "a".into(), per_connection_buffer_limit_bytes: Some(Default::default()), ..Default::default() };
    assert!(g.check_message(&c).is_ok());
    c.per_connection_buffer_limit_bytes = Some(envoy_types::pb::google::protobuf::UInt32Value { value: 5 });
    let f = g.check_message(&c).unwrap_err();
    assert_eq!(f.reason, "only 0 is supported");
}

#[test]
fn typed_configs_inside_any_are_checked_when_listed() {
    use envoy_types::pb::envoy::config::cluster::v3::Filter;
    let g = guard(
        "message envoy.config.cluster.v3.Cluster\n  name\n  filters\n\
         message envoy.config.cluster.v3.Filter\n  name\n  typed_config\n\
         message envoy.config.route.v3.VirtualHost\n  name\n",
    );
    let any = xds_client::any::pack(&VirtualHost { name: "x".into(), require_tls: 1, ..Default::default() });
    let c = Cluster {
        name: "a".into(),
        filters: vec![Filter { name: "f".into(), typed_config: Some(any), ..Default::default() }],
        ..Default::default()
    };
    assert_eq!(g.check_message(&c).unwrap_err().path, "filters[0].typed_config.require_tls");
}

#[test]
fn the_shipped_policy_compiles_and_covers_the_resources() {
    let g = FieldGuard::load().unwrap();
    for t in [
        "envoy.config.bootstrap.v3.Bootstrap",
        "envoy.config.cluster.v3.Cluster",
        "envoy.config.listener.v3.Listener",
        "envoy.config.route.v3.RouteConfiguration",
        "envoy.config.endpoint.v3.ClusterLoadAssignment",
        "envoy.extensions.transport_sockets.tls.v3.Secret",
    ] {
        assert!(g.covers(t), "{t}");
    }
}

#[test]
fn values_outside_envoys_validation_rules_are_invalid() {
    let g = guard("message envoy.config.cluster.v3.Cluster\n  name\n  connect_timeout\n");
    let c =
        Cluster { name: "a".into(), connect_timeout: Some(Duration { seconds: 0, nanos: 0 }), ..Default::default() };
    let f = g.check_message(&c).unwrap_err();
    assert!(f.invalid);
    assert_eq!(f.path, "connect_timeout");
    assert_eq!(
        crate::config::ConfigError::unsupported(&f).to_string(),
        "connect_timeout: value must be greater than 0s (envoy.config.cluster.v3.Cluster.connect_timeout)"
    );
}
