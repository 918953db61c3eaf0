//! Tests of the test harness itself: the echo upstream's knobs (driven by curl directly, no
//! proxy), template rendering, and the process lifecycle (start on a template, `/ready`, kill and
//! reap on drop) with the reference Envoy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tests::{Kind, Options, Proxy, Request, Upstreams, Vars, curl, curl_repeat};

fn ups() -> Upstreams {
    Upstreams::start(&["a", "b"]).expect("upstreams")
}

#[test]
fn echo_describes_the_request() {
    let u = ups();
    let r = curl(
        u.get("a").port(),
        &Request::get("/p/q?x=1").method("POST").header("x-test", "v").body("hello").host("h.test"),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-echo-upstream"), Some("a"));
    let j = r.json().expect("json body");
    assert_eq!(j["upstream"], "a");
    assert_eq!(j["method"], "POST");
    assert_eq!(j["path"], "/p/q?x=1");
    assert_eq!(j["authority"], "h.test");
    assert_eq!(j["version"], "HTTP/1.1");
    assert_eq!(j["body_len"], 5);
    assert!(j["headers"].as_array().unwrap().iter().any(|h| h[0] == "x-test" && h[1] == "v"), "{j}");
    assert_eq!(u.get("a").requests(), 1);
    assert_eq!(u.get("b").requests(), 0);

    let r = curl(u.get("b").port(), &Request::get("/h2").h2c().host("h2.test")).unwrap();
    let j = r.json().expect("json body");
    assert_eq!(j["version"], "HTTP/2");
    assert_eq!(j["authority"], "h2.test");
    assert_eq!(r.version, "HTTP/2");
}

#[test]
fn echo_knobs() {
    let u = ups();
    let port = u.get("a").port();
    let r =
        curl(port, &Request::get("/").header("x-echo-status", "418").header("x-echo-header", "x-extra: 1")).unwrap();
    assert_eq!(r.status, 418);
    assert_eq!(r.header("x-extra"), Some("1"));

    let r = curl(port, &Request::get("/").header("x-echo-body-size", "12345")).unwrap();
    assert_eq!(r.body.len(), 12345);

    let t = Instant::now();
    let r = curl(port, &Request::get("/").header("x-echo-delay-ms", "300")).unwrap();
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));

    // A reset: no response at all (curl: empty reply / receive error).
    let r = curl(port, &Request::get("/").header("x-echo-reset", "1")).unwrap();
    assert_eq!(r.status, 0);
    assert_ne!(r.curl_exit, 0);
    let r = curl(port, &Request::get("/").header("x-echo-reset", "1").h2c()).unwrap();
    assert_eq!(r.status, 0);
    assert_ne!(r.curl_exit, 0);

    let r = curl(port, &Request::get("/").header("x-echo-close", "1")).unwrap();
    assert_eq!(r.header("connection"), Some("close"));
}

#[test]
fn echo_fail_first_counts_attempts_across_the_group() {
    let u = ups();
    let req = |port| {
        curl(
            port,
            &Request::get("/")
                .header("x-echo-fail-first", "2")
                .header("x-echo-status", "503")
                .header("x-echo-key", "k1"),
        )
        .unwrap()
    };
    assert_eq!(req(u.get("a").port()).status, 503);
    assert_eq!(req(u.get("b").port()).status, 503);
    let r = req(u.get("a").port());
    assert_eq!(r.status, 200);
    assert_eq!(r.json().unwrap()["attempt"], 3);
    assert_eq!(u.attempts("k1"), 3);
    assert_eq!(u.attempts("other"), 0);
    // Keyed by x-request-id when there is no x-echo-key.
    let by_id =
        Request::get("/").header("x-echo-fail-first", "1").header("x-echo-reset", "1").header("x-request-id", "rid");
    assert_eq!(curl(u.get("a").port(), &by_id).unwrap().status, 0);
    assert_eq!(curl(u.get("a").port(), &by_id).unwrap().status, 200);
    assert_eq!(u.attempts("rid"), 2);
}

#[test]
fn repeat_clients_return_every_response() {
    let u = ups();
    let v = curl_repeat(u.get("a").port(), &Request::get("/r"), 30).unwrap();
    assert_eq!(v.len(), 30);
    assert!(v.iter().all(|r| r.status == 200 && r.header("x-echo-upstream") == Some("a")));
    let v = curl_repeat(u.get("b").port(), &Request::get("/r").h2c().header("x-echo-status", "201"), 25).unwrap();
    assert_eq!(v.len(), 25);
    assert!(v.iter().all(|r| r.status == 201 && r.header("x-echo-upstream") == Some("b")), "{v:?}");
    assert_eq!(u.get("b").requests(), 25);
}

#[test]
fn templates_render_ports_and_values() {
    let mut vars = Vars::new();
    vars.set("upstream:a", 1234);
    let out = vars.render("a={{upstream:a}} p={{port:x}} q={{ port:x }} r={{port:y}}").unwrap();
    let x = vars.port("x").unwrap();
    let y = vars.port("y").unwrap();
    assert_ne!(x, y);
    assert_eq!(out, format!("a=1234 p={x} q={x} r={y}"));
    assert!(vars.render("{{nope}}").is_err());
    assert!(vars.render("{{unterminated").is_err());
}

const MINIMAL: &str = r#"
admin: {address: {socket_address: {address: 127.0.0.1, port_value: {{port:admin}}}}}
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: {{port:listener}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: t
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
          route_config:
            virtual_hosts: [{name: v, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: a}}]}]
  clusters:
  - name: a
    connect_timeout: 1s
    load_assignment:
      cluster_name: a
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{upstream:a}}}}}}]}]
"#;

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

#[test]
fn envoy_process_lifecycle() {
    if tests::envoy_bin().is_none() {
        panic!("no Envoy binary: run scripts/install-test-deps or set ENVOY_BIN");
    }
    let u = ups();
    let mut vars = Vars::new();
    vars.set("upstream:a", u.get("a").port());
    let p = Proxy::start(Kind::Envoy, MINIMAL, vars, &Options::default()).expect("envoy starts");
    assert_eq!(p.admin("/ready").unwrap().0, 200);
    let r = curl(p.port("listener"), &Request::get("/via-envoy")).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json().unwrap()["path"], "/via-envoy");
    assert_eq!(p.stat("cluster.a.upstream_rq_200"), Some(1));
    let pid = p.pid();
    assert!(pid_alive(pid));
    drop(p);
    assert!(!pid_alive(pid), "envoy {pid} still running after drop");
}

#[test]
fn a_bad_config_fails_with_the_log() {
    if tests::envoy_bin().is_none() {
        panic!("no Envoy binary: run scripts/install-test-deps or set ENVOY_BIN");
    }
    let bad = "admin: {address: {socket_address: {address: 127.0.0.1, port_value: {{port:admin}}}}}\nbogus_field: 1\n";
    let err = match Proxy::start(Kind::Envoy, bad, Vars::new(), &Options::default()) {
        Ok(_) => panic!("envoy accepted an unknown field"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("exited before ready"), "{err}");
    assert!(err.contains("bogus_field"), "{err}");
}
