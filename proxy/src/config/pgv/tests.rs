use super::*;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{SocketAddress, socket_address::PortSpecifier};
use envoy_types::pb::envoy::config::route::v3::{RetryPolicy, RouteConfiguration, VirtualHost};
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
use prost::{Message, Name};

fn rules() -> Rules {
    Rules::build(&xds_client::descriptors::pool())
}

fn check<M: Message + Name>(r: &Rules, m: &M) -> Result<(), Violation> {
    r.check(&M::full_name(), &m.encode_to_vec())
}

#[test]
fn durations_numbers_and_strings() {
    let r = rules();
    let ok =
        Cluster { name: "c".into(), connect_timeout: Some(Duration { seconds: 1, nanos: 0 }), ..Default::default() };
    assert_eq!(check(&r, &ok), Ok(()));
    // connect_timeout: gt 0s.
    let zero = Cluster { connect_timeout: Some(Duration { seconds: 0, nanos: 0 }), ..ok.clone() };
    let v = check(&r, &zero).unwrap_err();
    assert_eq!(v.path, "connect_timeout");
    assert_eq!(v.reason, "value must be greater than 0s");
    // Any negative duration, rule or not (Envoy's validateDurationFields).
    let neg = Cluster { dns_refresh_rate: Some(Duration { seconds: 5, nanos: -1 }), ..ok.clone() };
    let v = check(&r, &neg).unwrap_err();
    assert_eq!(v.path, "dns_refresh_rate");
    assert!(v.reason.starts_with("Invalid duration: Expected positive duration"), "{}", v.reason);
    // A socket address port above 65535.
    let sa = SocketAddress {
        address: "1.2.3.4".into(),
        port_specifier: Some(PortSpecifier::PortValue(70000)),
        ..Default::default()
    };
    let v = check(&r, &sa).unwrap_err();
    assert_eq!(v.path, "port_value");
    assert_eq!(v.reason, "value must be less than or equal to 65535");
    // address: min_len 1 (checked on the unset zero value too).
    let sa = SocketAddress { port_specifier: Some(PortSpecifier::PortValue(80)), ..Default::default() };
    let v = check(&r, &sa).unwrap_err();
    assert_eq!((v.path.as_str(), v.reason.as_str()), ("address", "value length must be at least 1 characters"));
}

#[test]
fn nested_paths_enums_and_wrappers() {
    let r = rules();
    let rc = RouteConfiguration {
        virtual_hosts: vec![VirtualHost {
            name: "v".into(),
            domains: vec!["*".into()],
            require_tls: 7,
            ..Default::default()
        }],
        ..Default::default()
    };
    let v = check(&r, &rc).unwrap_err();
    assert_eq!(v.path, "virtual_hosts[0].require_tls");
    assert_eq!(v.reason, "value must be one of the defined enum values");
    // domains: min_items 1.
    let rc = RouteConfiguration {
        virtual_hosts: vec![VirtualHost { name: "v".into(), ..Default::default() }],
        ..Default::default()
    };
    let v = check(&r, &rc).unwrap_err();
    assert_eq!(
        (v.path.as_str(), v.reason.as_str()),
        ("virtual_hosts[0].domains", "value must contain at least 1 item(s)")
    );
    // A wrapper's rule applies to its value: RetryPolicy.host_selection_retry_max_attempts is an
    // int64 (no rule); per_try_timeout has none either; num_retries is a UInt32Value without a
    // rule: a plain policy passes.
    let rp = RetryPolicy { num_retries: Some(UInt32Value { value: 3 }), ..Default::default() };
    assert_eq!(check(&r, &rp), Ok(()));
}
