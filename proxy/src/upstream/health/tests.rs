use std::time::Duration;

use super::*;

fn config(unhealthy: u32, healthy: u32) -> HealthCheckConfig {
    HealthCheckConfig {
        timeout: Duration::from_secs(1),
        interval: Duration::from_millis(100),
        initial_jitter: Duration::ZERO,
        interval_jitter: Duration::ZERO,
        interval_jitter_percent: 0,
        unhealthy_threshold: unhealthy,
        healthy_threshold: healthy,
        no_traffic_interval: Duration::from_secs(60),
        no_traffic_healthy_interval: Duration::from_secs(50),
        unhealthy_interval: Duration::from_millis(200),
        unhealthy_edge_interval: Duration::from_millis(300),
        healthy_edge_interval: Duration::from_millis(400),
        reuse_connection: true,
        kind: Kind::Tcp(TcpCheck { send: Vec::new(), receive: Vec::new() }),
    }
}

fn host(failed: bool) -> Host {
    let h = Host::new("10.0.0.1:80".parse().unwrap(), "", 1, 0, None);
    h.set_flag(flag::FAILED_ACTIVE_HC, failed);
    h
}

const OK: Outcome = Outcome::Success { degraded: false };
const NET: Outcome = Outcome::Failure { kind: Failure::Network, retriable: false };
const ACTIVE: Outcome = Outcome::Failure { kind: Failure::Active, retriable: false };
const RETRIABLE: Outcome = Outcome::Failure { kind: Failure::Active, retriable: true };
const TIMEOUT: Outcome = Outcome::Failure { kind: Failure::NetworkTimeout, retriable: false };

#[test]
fn first_success_makes_a_new_host_healthy_at_once() {
    let s = Store::default();
    let st = HealthCheckStats::new(&Arc::new(s), "c");
    let c = config(2, 3);
    let h = host(true);
    let mut sess = Session::default();
    assert_eq!(sess.on_result(&h, &c, &st, OK), Transition::Changed);
    assert!(!h.has(flag::FAILED_ACTIVE_HC));
    assert_eq!(st.success.value(), 1);
}

#[test]
fn network_failures_count_up_to_the_threshold_active_ones_do_not_wait() {
    let st = HealthCheckStats::new(&Arc::new(Store::default()), "c");
    let c = config(3, 2);
    let h = host(false);
    let mut s = Session::default();
    assert_eq!(s.on_result(&h, &c, &st, NET), Transition::ChangePending);
    assert_eq!(s.on_result(&h, &c, &st, TIMEOUT), Transition::ChangePending);
    assert!(!h.has(flag::FAILED_ACTIVE_HC));
    // A success in between resets the count.
    assert_eq!(s.on_result(&h, &c, &st, OK), Transition::Unchanged);
    assert_eq!(s.on_result(&h, &c, &st, NET), Transition::ChangePending);
    assert_eq!(s.on_result(&h, &c, &st, NET), Transition::ChangePending);
    assert_eq!(s.on_result(&h, &c, &st, TIMEOUT), Transition::Changed);
    assert!(h.has(flag::FAILED_ACTIVE_HC) && h.has(flag::ACTIVE_HC_TIMEOUT));
    assert_eq!(h.health_flags(), "/failed_active_hc/active_hc_timeout");
    // Failing again changes nothing; a non-timeout failure clears the timeout flag.
    assert_eq!(s.on_result(&h, &c, &st, NET), Transition::Unchanged);
    assert_eq!(h.health_flags(), "/failed_active_hc");
    assert_eq!((st.failure.value(), st.network_failure.value()), (6, 6));
    // Recovery takes healthy_threshold successes (not the first check any more).
    assert_eq!(s.on_result(&h, &c, &st, OK), Transition::ChangePending);
    assert_eq!(s.on_result(&h, &c, &st, OK), Transition::Changed);
    assert_eq!(h.health_flags(), "healthy");
    // An unexpected HTTP status fails at once; a retriable one counts like a network failure.
    assert_eq!(s.on_result(&h, &c, &st, ACTIVE), Transition::Changed);
    assert!(h.has(flag::FAILED_ACTIVE_HC));
    let h = host(false);
    let mut s = Session::default();
    assert_eq!(s.on_result(&h, &c, &st, RETRIABLE), Transition::ChangePending);
    assert_eq!(s.on_result(&h, &c, &st, RETRIABLE), Transition::ChangePending);
    assert_eq!(s.on_result(&h, &c, &st, RETRIABLE), Transition::Changed);
    assert_eq!(st.network_failure.value(), 6, "active failures are not network failures");
}

#[test]
fn degraded_success_flags_the_host() {
    let st = HealthCheckStats::new(&Arc::new(Store::default()), "c");
    let c = config(1, 1);
    let h = host(false);
    let mut s = Session::default();
    assert_eq!(s.on_result(&h, &c, &st, Outcome::Success { degraded: true }), Transition::Changed);
    assert!(h.degraded() && !h.available());
    assert_eq!(h.health_flags(), "/degraded_active_hc");
    assert_eq!(s.on_result(&h, &c, &st, OK), Transition::Changed);
    assert!(h.available());
}

#[test]
fn intervals_follow_state_and_traffic() {
    let c = config(2, 2);
    let ms = |d: Duration| d.as_millis();
    assert_eq!(ms(next_interval(&c, true, true, Transition::Unchanged)), 100);
    assert_eq!(ms(next_interval(&c, true, true, Transition::ChangePending)), 400);
    assert_eq!(ms(next_interval(&c, true, false, Transition::Unchanged)), 200);
    assert_eq!(ms(next_interval(&c, true, false, Transition::ChangePending)), 300);
    assert_eq!(ms(next_interval(&c, false, true, Transition::Unchanged)), 50_000);
    assert_eq!(ms(next_interval(&c, false, true, Transition::ChangePending)), 60_000);
    assert_eq!(ms(next_interval(&c, false, false, Transition::Changed)), 60_000);
    let j =
        HealthCheckConfig { interval_jitter_percent: 50, interval_jitter: Duration::from_millis(10), ..config(1, 1) };
    for _ in 0..50 {
        let d = ms(next_interval(&j, true, true, Transition::Unchanged));
        assert!((100..160).contains(&d), "{d}");
    }
}

#[test]
fn payloads_match_in_order() {
    use super::probe::payload_matches;
    assert!(payload_matches(&[b"ab".to_vec(), b"cd".to_vec()], b"xxabyycdzz"));
    assert!(!payload_matches(&[b"cd".to_vec(), b"ab".to_vec()], b"xxabyycdzz"));
    assert!(!payload_matches(&[b"abc".to_vec()], b"ab"));
    assert!(payload_matches(&[], b""));
}

fn parse(yaml: &str) -> Result<HealthCheckConfig, ConfigError> {
    let v = xds_client::json::yaml_to_json(yaml).expect("yaml");
    let hc: HealthCheck = xds_client::json::message_from_json(&xds_client::descriptors::pool(), v, Default::default())
        .expect("HealthCheck");
    HealthCheckConfig::from_proto(&hc)
}

#[test]
fn config_defaults_and_refusals() {
    let c = parse(
        "timeout: 1s\ninterval: 0.2s\nunhealthy_threshold: 2\nhealthy_threshold: 1\nhttp_health_check: {path: /healthz}",
    )
    .unwrap();
    assert_eq!(c.no_traffic_interval, Duration::from_secs(60));
    assert_eq!(c.unhealthy_edge_interval, Duration::from_millis(200));
    assert!(c.reuse_connection);
    let Kind::Http(h) = &c.kind else { panic!("http") };
    assert_eq!(h.expected, [(200, 201)]);
    let tcp = parse(
        "timeout: 1s\ninterval: 1s\nunhealthy_threshold: 1\nhealthy_threshold: 1\ntcp_health_check: {send: {text: '50494e47'}, receive: [{text: '504f4e47'}]}",
    )
    .unwrap();
    let Kind::Tcp(t) = &tcp.kind else { panic!("tcp") };
    assert_eq!((&t.send[..], &t.receive[0][..]), (&b"PING"[..], &b"PONG"[..]));
    let err = |y: &str| parse(y).unwrap_err().to_string();
    let base = "timeout: 1s\ninterval: 1s\nunhealthy_threshold: 1\nhealthy_threshold: 1\n";
    assert!(
        err("interval: 1s\nunhealthy_threshold: 1\nhealthy_threshold: 1\ntcp_health_check: {}").contains("timeout")
    );
    assert!(err(&format!("{base}tcp_health_check: {{send: {{text: 'zz'}}}}")).contains("invalid hex"));
    assert!(
        err(&format!("{base}http_health_check: {{path: /h, expected_statuses: [{{start: 200, end: 700}}]}}"))
            .contains("end <= 600")
    );
    assert!(
        err(&format!("{base}http_health_check: {{path: /h, codec_client_type: HTTP3}}")).contains("codec_client_type")
    );
    assert!(err(base).contains("health_checker"));
    assert!(err(&format!("{base}interval_jitter: -1s\ntcp_health_check: {{}}")).contains("interval_jitter"));
}

#[test]
fn hosts_keep_their_check_state_across_updates() {
    use crate::upstream::host::{Endpoint, HostSet};
    let ep = |port: u16, weight: u32, eds: i32| {
        let mut e = Endpoint::ip(format!("10.0.0.1:{port}").parse().unwrap(), String::new(), weight, 0, None);
        e.eds_flags = flag::from_eds(eds);
        e
    };
    let empty = HostSet::default();
    // A new host of a checked cluster starts failing; without checks it is healthy.
    let a = HostSet::reuse(&empty, ep(80, 1, 0), false, true);
    assert_eq!(a.health_flags(), "/failed_active_hc");
    assert_eq!(HostSet::reuse(&empty, ep(80, 1, 0), false, false).health_flags(), "healthy");
    a.set_flag(flag::FAILED_ACTIVE_HC, false);
    a.set_flag(flag::HC_CHECKED, true);
    let prev = HostSet { all: vec![a.clone()], ..Default::default() };
    // Same endpoint: the same host; its EDS status follows the update.
    let same = HostSet::reuse(&prev, ep(80, 1, 5), false, true);
    assert!(Arc::ptr_eq(&same, &a));
    assert_eq!(same.health_flags(), "/degraded_eds_health");
    // A changed weight makes a new host object that keeps the check state of the address.
    let reweighted = HostSet::reuse(&prev, ep(80, 3, 0), false, true);
    assert!(!Arc::ptr_eq(&reweighted, &a));
    assert_eq!(reweighted.health_flags(), "healthy");
    assert!(reweighted.has(flag::HC_CHECKED));
    // Another address is new: failing until checked.
    assert_eq!(HostSet::reuse(&prev, ep(81, 1, 2), false, true).health_flags(), "/failed_active_hc/failed_eds_health");
}
