//! Differential tests of active health checks and EDS `health_status`
//! (tests/configs/diff_health.yaml) against the reference Envoy on the same bootstrap: an HTTP
//! check where one of three real upstreams answers 503 (no traffic reaches it until it heals,
//! then one that closes the connection on the health path drops out after the threshold), a TCP
//! check with send/receive payloads (a host answering the wrong bytes times out), a gRPC check
//! against real grpc.health.v1 servers, EDS health statuses on a static ClusterLoadAssignment,
//! garbage, hanging and resetting answers, HTTP/2 checks, body / service-name / degraded /
//! immediate-fail answers, an outlier ejection undone by a passing check and hosts coming and
//! going over file-based EDS; the `/clusters` health flags (text and JSON) and the
//! `health_check.*` stats. CDS updates, TLS and bad configs are in `diff_health_config.rs`.
//!
//! Each scenario runs on Envoy, then on remora, with fresh upstreams. Health checks run every
//! 200 ms; every step polls for the state it expects with a generous bound instead of sleeping a
//! fixed time, and records what it saw; the records must be equal, and Envoy's are pinned to its
//! documented behaviour so a test that compared nothing would fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use tests::{Kind, Options, Proxy, Vars};

#[path = "diff_health/upstreams.rs"]
mod upstreams;
use upstreams::*;

fn kinds() -> Vec<Kind> {
    let require = std::env::var("REMORA_DIFF_REQUIRE").is_ok_and(|v| v == "1");
    match tests::remora_bin() {
        Ok(Some(_)) => vec![Kind::Envoy, Kind::Remora],
        _ if require => panic!("REMORA_DIFF_REQUIRE=1 but the remora binary is not built"),
        _ => {
            eprintln!("NOTICE: remora binary not found: checking Envoy's behaviour only");
            vec![Kind::Envoy]
        }
    }
}

const SRVS: [&str; 29] = [
    "h1", "h2", "h3", "t1", "t2", "e1", "e2", "e3", "e4", "e5", "d1", "d2", "x1", "x2", "x3", "x4", "n1", "n2", "n3",
    "y1", "y2", "y3", "y4", "y5", "y6", "zf1", "zf2", "z3", "z4",
];

/// The endpoints file of cluster `eds_hc` listing `hosts` (written whole, then renamed in).
fn write_eds(path: &std::path::Path, version: u32, hosts: &[u16]) {
    let eps: String = hosts
        .iter()
        .map(|p| format!("    - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}}}\n"))
        .collect();
    let body = format!(
        "version_info: \"{version}\"\nresources:\n- \"@type\": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment\n  cluster_name: eds_hc\n  endpoints:\n  - lb_endpoints:\n{eps}"
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Run {
    proxy: Proxy,
    srv: BTreeMap<&'static str, Srv>,
    grpc: Vec<Grpc>,
    rt: tokio::runtime::Runtime,
    echo: tests::Upstreams,
    eds: std::path::PathBuf,
}

impl Run {
    fn start(kind: Kind) -> Run {
        assert!(tests::envoy_bin().is_some(), "no reference Envoy (ENVOY_BIN; scripts/install-test-deps)");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let mut srv = BTreeMap::new();
        for n in SRVS {
            srv.insert(n, start_srv(n));
        }
        // h3 fails its health checks from the start, t2 answers the wrong bytes, x1-x3 badly.
        srv["h3"].hc_status.store(503, Ordering::SeqCst);
        srv["t2"].pong.store(false, Ordering::SeqCst);
        srv["x1"].hc_status.store(GARBAGE, Ordering::SeqCst);
        srv["x2"].hc_status.store(HANG, Ordering::SeqCst);
        srv["x3"].hc_status.store(RESET, Ordering::SeqCst);
        srv["y1"].hc_status.store(SERVICE, Ordering::SeqCst);
        srv["y3"].hc_status.store(BODY_ONLY, Ordering::SeqCst);
        srv["y4"].hc_status.store(DEGRADED, Ordering::SeqCst);
        srv["y6"].hc_status.store(IMMEDIATE_FAIL, Ordering::SeqCst);
        let echo = tests::Upstreams::start(&["a"]).unwrap();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "diff-health-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let eds = dir.join("eds.yaml");
        write_eds(&eds, 1, &[srv["n1"].port, srv["n2"].port]);
        let grpc = vec![start_grpc(&rt, true), start_grpc(&rt, false)];
        let mut vars = Vars::new();
        for (n, s) in &srv {
            vars.set(format!("h:{n}"), s.port);
        }
        vars.set("g:g1", grpc[0].port);
        vars.set("g:g2", grpc[1].port);
        vars.set("upstream:a", echo.get("a").port());
        vars.set("eds_file", eds.display());
        let template = std::fs::read_to_string(tests::process::crate_dir().join("configs/diff_health.yaml")).unwrap();
        let opts = Options { log_level: "warning".into(), ..Options::default() };
        let proxy = Proxy::start(kind, &template, vars, &opts).unwrap();
        Run { proxy, srv, grpc, rt, echo, eds }
    }

    fn port(&self) -> u16 {
        self.proxy.port("listener")
    }

    /// The `/clusters` health flags of cluster `c`'s host on `port`.
    fn flags(&self, c: &str, port: u16) -> String {
        let key = format!("{c}::127.0.0.1:{port}::health_flags::");
        let (_, body) = self.proxy.admin("/clusters").unwrap();
        body.lines().find_map(|l| l.strip_prefix(&key)).unwrap_or("<absent>").to_string()
    }

    /// The flags of the named hosts of cluster `c`, polled until they are `want` (up to 15 s);
    /// returns what was seen last.
    fn wait_flags(&self, c: &str, hosts: &[(&str, u16)], want: &[&str]) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got: Vec<String> = hosts.iter().map(|(_, p)| self.flags(c, *p)).collect();
            if got == want || Instant::now() > deadline {
                return got;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn hosts(&self, names: &[&'static str]) -> Vec<(&'static str, u16)> {
        names.iter().map(|n| (*n, self.srv[n].port)).collect()
    }

    /// `/clusters?format=json`: the `health_status` of each host of `clusters`, by upstream name.
    fn json_health(&self, clusters: &[&str]) -> Vec<(String, String)> {
        let (_, body) = self.proxy.admin("/clusters?format=json").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let name_of = |port: u64| {
            self.srv.iter().find(|(_, s)| u64::from(s.port) == port).map_or("?".to_string(), |(n, _)| n.to_string())
        };
        let mut out: Vec<(String, String)> = v["cluster_statuses"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| clusters.iter().any(|n| c["name"] == *n))
            .flat_map(|c| c["host_statuses"].as_array().cloned().unwrap_or_default())
            .map(|h| {
                let port = h["address"]["socket_address"]["port_value"].as_u64().unwrap_or(0);
                (name_of(port), h["health_status"].to_string())
            })
            .collect();
        out.sort();
        out
    }

    fn stat(&self, name: &str) -> i64 {
        self.proxy.stat(name).unwrap_or(-1)
    }
}

static SERIAL: Mutex<()> = Mutex::new(());

fn differential<T: std::fmt::Debug + PartialEq>(name: &str, scenario: impl Fn(&Run) -> T, expect: impl Fn(&T)) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut seen: Vec<(Kind, T)> = Vec::new();
    for kind in kinds() {
        let run = Run::start(kind);
        let t = scenario(&run);
        eprintln!("{name} [{}]: {t:?}", kind.name());
        if kind == Kind::Envoy {
            expect(&t);
        }
        seen.push((kind, t));
    }
    if let [(_, envoy), (_, remora)] = &seen[..] {
        assert_eq!(envoy, remora, "{name}: remora (right) differs from Envoy (left)");
    }
}

#[derive(Debug, PartialEq)]
struct HttpCheck {
    /// Read once when the proxy is ready: initialisation waits for the first checks.
    at_ready: Vec<String>,
    failing: Vec<String>,
    traffic_while_failing: Vec<String>,
    healed: Vec<String>,
    traffic_healed: Vec<String>,
    closing: Vec<String>,
    traffic_closing: Vec<String>,
    /// Host and User-Agent of the health check requests h1 received.
    request: Option<(String, String)>,
    stats: Vec<(&'static str, bool)>,
    healthy_gauge: i64,
}

#[test]
fn http_health_check_takes_failing_hosts_out_and_back() {
    differential(
        "http health check",
        |r| {
            let hosts = r.hosts(&["h1", "h2", "h3"]);
            let at_ready = hosts.iter().map(|(_, p)| r.flags("http_hc", *p)).collect();
            let failing = r.wait_flags("http_hc", &hosts, &["healthy", "healthy", "/failed_active_hc"]);
            let traffic_while_failing = names(&spread(r.port(), "/http", 30));
            r.srv["h3"].hc_status.store(200, Ordering::SeqCst);
            let healed = r.wait_flags("http_hc", &hosts, &["healthy", "healthy", "healthy"]);
            let traffic_healed = names(&spread(r.port(), "/http", 30));
            // h2 now closes the connection on the health path: network failures, which take
            // unhealthy_threshold (2) checks.
            r.srv["h2"].hc_status.store(0, Ordering::SeqCst);
            let closing = r.wait_flags("http_hc", &hosts, &["healthy", "/failed_active_hc", "healthy"]);
            let traffic_closing = names(&spread(r.port(), "/http", 30));
            let request = r.srv["h1"].hc_seen.lock().unwrap().first().cloned();
            let s = |n: &str| r.stat(&format!("cluster.http_hc.health_check.{n}"));
            let stats = vec![
                ("attempt", s("attempt") > 5),
                ("success", s("success") > 3),
                ("failure", s("failure") >= 3),
                ("network_failure", s("network_failure") >= 2),
                ("passive_failure", s("passive_failure") == 0),
                ("verify_cluster", s("verify_cluster") == 0),
            ];
            HttpCheck {
                at_ready,
                failing,
                traffic_while_failing,
                healed,
                traffic_healed,
                closing,
                traffic_closing,
                request,
                stats,
                healthy_gauge: s("healthy"),
            }
        },
        |t| {
            assert_eq!(t.at_ready, ["healthy", "healthy", "/failed_active_hc"]);
            assert_eq!(t.failing, ["healthy", "healthy", "/failed_active_hc"]);
            assert_eq!(t.traffic_while_failing, ["h1", "h2"]);
            assert_eq!(t.traffic_healed, ["h1", "h2", "h3"]);
            assert_eq!(t.traffic_closing, ["h1", "h3"]);
            assert_eq!(t.request, Some(("http_hc".to_string(), "Envoy/HC".to_string())));
            assert!(t.stats.iter().all(|(_, ok)| *ok), "{:?}", t.stats);
            assert_eq!(t.healthy_gauge, 2);
        },
    );
}

#[derive(Debug, PartialEq)]
struct TcpCheck {
    failing: Vec<String>,
    traffic: Vec<String>,
    recovered: Vec<String>,
    traffic_recovered: Vec<String>,
}

#[test]
fn tcp_health_check_sends_and_expects_payloads() {
    differential(
        "tcp health check",
        |r| {
            let hosts = r.hosts(&["t1", "t2"]);
            let failing = r.wait_flags("tcp_hc", &hosts, &["healthy", "/failed_active_hc/active_hc_timeout"]);
            let traffic = names(&spread(r.port(), "/tcp", 20));
            r.srv["t2"].pong.store(true, Ordering::SeqCst);
            let recovered = r.wait_flags("tcp_hc", &hosts, &["healthy", "healthy"]);
            let traffic_recovered = names(&spread(r.port(), "/tcp", 20));
            TcpCheck { failing, traffic, recovered, traffic_recovered }
        },
        |t| {
            assert_eq!(t.failing, ["healthy", "/failed_active_hc/active_hc_timeout"]);
            assert_eq!(t.traffic, ["t1"]);
            assert_eq!(t.traffic_recovered, ["t1", "t2"]);
        },
    );
}

#[derive(Debug, PartialEq)]
struct GrpcCheck {
    initial: Vec<String>,
    recovered: Vec<String>,
    again: Vec<String>,
    healthy_gauge: i64,
}

#[test]
fn grpc_health_check_asks_grpc_health_v1() {
    differential(
        "grpc health check",
        |r| {
            let hosts = [("g1", r.grpc[0].port), ("g2", r.grpc[1].port)];
            let initial = r.wait_flags("grpc_hc", &hosts, &["healthy", "/failed_active_hc"]);
            r.rt.block_on(r.grpc[1].reporter.set_service_status("svc", tonic_health::ServingStatus::Serving));
            let recovered = r.wait_flags("grpc_hc", &hosts, &["healthy", "healthy"]);
            // NOT_SERVING is an active failure: no threshold to wait for.
            r.rt.block_on(r.grpc[0].reporter.set_service_status("svc", tonic_health::ServingStatus::NotServing));
            let again = r.wait_flags("grpc_hc", &hosts, &["/failed_active_hc", "healthy"]);
            GrpcCheck { initial, recovered, again, healthy_gauge: r.stat("cluster.grpc_hc.health_check.healthy") }
        },
        |t| {
            assert_eq!(t.initial, ["healthy", "/failed_active_hc"]);
            assert_eq!(t.recovered, ["healthy", "healthy"]);
            assert_eq!(t.again, ["/failed_active_hc", "healthy"]);
            assert_eq!(t.healthy_gauge, 1);
        },
    );
}

#[derive(Debug, PartialEq)]
struct EdsStatus {
    mixed_flags: Vec<String>,
    mixed_traffic: Vec<String>,
    degraded_flags: Vec<String>,
    degraded_traffic: Vec<String>,
    gauges: Vec<(&'static str, i64)>,
    /// `/clusters?format=json`: each host's `health_status`, by upstream name.
    json: Vec<(String, String)>,
}

#[test]
fn eds_health_status_is_honoured() {
    differential(
        "eds health_status",
        |r| {
            let mixed = r.hosts(&["e1", "e2", "e3", "e4", "e5"]);
            let mixed_flags: Vec<String> = mixed.iter().map(|(_, p)| r.flags("eds_mixed", *p)).collect();
            let degraded = r.hosts(&["d1", "d2"]);
            let degraded_flags: Vec<String> = degraded.iter().map(|(_, p)| r.flags("eds_degraded", *p)).collect();
            let g = |c: &str, n: &str| r.stat(&format!("cluster.{c}.{n}"));
            let json = r.json_health(&["eds_mixed", "eds_degraded"]);
            EdsStatus {
                mixed_flags,
                mixed_traffic: names(&spread(r.port(), "/eds-mixed", 20)),
                degraded_flags,
                degraded_traffic: names(&spread(r.port(), "/eds-degraded", 10)),
                gauges: vec![
                    ("mixed total", g("eds_mixed", "membership_total")),
                    ("mixed healthy", g("eds_mixed", "membership_healthy")),
                    ("mixed excluded", g("eds_mixed", "membership_excluded")),
                    ("degraded healthy", g("eds_degraded", "membership_healthy")),
                    ("degraded degraded", g("eds_degraded", "membership_degraded")),
                    ("degraded panic", g("eds_degraded", "lb_healthy_panic")),
                ],
                json,
            }
        },
        |t| {
            assert_eq!(
                t.mixed_flags,
                ["healthy", "healthy", "/failed_eds_health", "/eds_status_draining", "/failed_eds_health"]
            );
            assert_eq!(t.mixed_traffic, ["e1", "e2"]);
            assert_eq!(t.degraded_flags, ["/degraded_eds_health", "/failed_eds_health"]);
            assert_eq!(t.degraded_traffic, ["d1"]);
            assert_eq!(t.json.len(), 7);
        },
    );
}

#[derive(Debug, PartialEq)]
struct BadAnswers {
    flags: Vec<String>,
    h2_flags: Vec<String>,
    echo_checked: bool,
    network_failures: bool,
}

#[test]
fn garbage_hangs_and_resets_fail_checks_and_http2_checks_pass() {
    differential(
        "bad answers",
        |r| {
            let hosts = r.hosts(&["x1", "x2", "x3", "x4"]);
            let want = ["/failed_active_hc", "/failed_active_hc/active_hc_timeout", "/failed_active_hc", "healthy"];
            let flags = r.wait_flags("http_bad", &hosts, &want);
            let closed = r.proxy.vars().closed_ports().find(|(n, _)| *n == "c").map_or(0, |(_, p)| p);
            let h2 = [("a", r.echo.get("a").port()), ("closed", closed)];
            let h2_flags = r.wait_flags("http2_hc", &h2, &["healthy", "/failed_active_hc"]);
            BadAnswers {
                flags,
                h2_flags,
                echo_checked: r.echo.get("a").requests() > 0,
                network_failures: r.stat("cluster.http_bad.health_check.network_failure") >= 3,
            }
        },
        |t| {
            assert_eq!(
                t.flags,
                ["/failed_active_hc", "/failed_active_hc/active_hc_timeout", "/failed_active_hc", "healthy"]
            );
            assert_eq!(t.h2_flags, ["healthy", "/failed_active_hc"]);
            assert!(t.echo_checked && t.network_failures);
        },
    );
}

#[derive(Debug, PartialEq)]
struct EdsUpdates {
    first: Vec<String>,
    moved: Vec<String>,
    traffic_moved: Vec<String>,
    removed: Vec<String>,
    traffic_removed: Vec<String>,
}

#[test]
fn eds_updates_start_and_stop_checks() {
    differential(
        "eds updates",
        |r| {
            let hosts = r.hosts(&["n1", "n2", "n3"]);
            let first = r.wait_flags("eds_hc", &hosts, &["healthy", "healthy", "<absent>"]);
            // n2 leaves while it passes its checks; n3 arrives failing them.
            r.srv["n3"].hc_status.store(503, Ordering::SeqCst);
            write_eds(&r.eds, 2, &[r.srv["n1"].port, r.srv["n3"].port]);
            let moved = r.wait_flags("eds_hc", &hosts, &["healthy", "/pending_dynamic_removal", "/failed_active_hc"]);
            let traffic_moved = names(&spread(r.port(), "/eds-hc", 20));
            // Once n2 fails a check it goes.
            r.srv["n2"].hc_status.store(503, Ordering::SeqCst);
            r.srv["n3"].hc_status.store(200, Ordering::SeqCst);
            let removed = r.wait_flags("eds_hc", &hosts, &["healthy", "<absent>", "healthy"]);
            let traffic_removed = names(&spread(r.port(), "/eds-hc", 20));
            EdsUpdates { first, moved, traffic_moved, removed, traffic_removed }
        },
        |t| {
            assert_eq!(t.first, ["healthy", "healthy", "<absent>"]);
            assert_eq!(t.moved, ["healthy", "/pending_dynamic_removal", "/failed_active_hc"]);
            assert_eq!(t.traffic_moved, ["n1", "n2"]);
            assert_eq!(t.removed, ["healthy", "<absent>", "healthy"]);
            assert_eq!(t.traffic_removed, ["n1", "n3"]);
        },
    );
}

#[derive(Debug, PartialEq)]
struct Answers {
    matched: Vec<String>,
    verify_cluster: bool,
    degraded: Vec<String>,
    degraded_traffic: Vec<String>,
    degraded_share_ok: bool,
    degraded_gauge: i64,
    json: Vec<(String, String)>,
}

#[test]
fn response_body_service_name_and_degraded_answers() {
    differential(
        "answers",
        |r| {
            // y1 answers the expected body and service name, y2 neither (plain "hc"), y3 a
            // body without the service name header: both fail at once; y6 asks to be excluded.
            let matched = r.wait_flags(
                "http_match",
                &r.hosts(&["y1", "y2", "y3", "y6"]),
                &[
                    "healthy",
                    "/failed_active_hc",
                    "/failed_active_hc",
                    "/failed_active_hc/excluded_via_immediate_hc_fail",
                ],
            );
            // One healthy host of two takes 70 % (1.4 x 50 %), the degraded one the rest: about
            // 30 of 100 requests (15 to 45 is over three standard deviations either way).
            let degraded = r.wait_flags("http_degraded", &r.hosts(&["y4", "y5"]), &["/degraded_active_hc", "healthy"]);
            let traffic = spread(r.port(), "/degraded-hc", 100);
            Answers {
                matched,
                verify_cluster: r.stat("cluster.http_match.health_check.verify_cluster") > 0,
                degraded,
                degraded_traffic: names(&traffic),
                degraded_share_ok: (15..=45).contains(&traffic.get("y4").copied().unwrap_or(0)),
                degraded_gauge: r.stat("cluster.http_degraded.health_check.degraded"),
                json: r.json_health(&["http_match", "http_degraded"]),
            }
        },
        |t| {
            assert_eq!(
                t.matched,
                [
                    "healthy",
                    "/failed_active_hc",
                    "/failed_active_hc",
                    "/failed_active_hc/excluded_via_immediate_hc_fail"
                ]
            );
            assert!(t.verify_cluster);
            assert_eq!(t.degraded, ["/degraded_active_hc", "healthy"]);
            assert_eq!(t.degraded_traffic, ["y4", "y5"]);
            assert!(t.degraded_share_ok);
            assert_eq!(t.degraded_gauge, 1);
            assert_eq!(t.json.len(), 6);
        },
    );
}

#[derive(Debug, PartialEq)]
struct Uneject {
    ejected: (i64, i64),
    uneject_flags: String,
    keep_flags: String,
    active: (i64, i64),
}

#[test]
fn a_passing_health_check_unejects_an_outlier() {
    differential(
        "uneject",
        |r| {
            // zf1 and zf2 fail every request (one 5xx ejects) but pass their health checks.
            for path in ["/od-uneject", "/od-keep"] {
                for _ in 0..6 {
                    get(r.port(), path);
                }
            }
            let od = |c: &str, n: &str| r.stat(&format!("cluster.{c}.outlier_detection.{n}"));
            let ejected = (od("od_uneject", "ejections_enforced_total"), od("od_keep", "ejections_enforced_total"));
            let zf1 = r.srv["zf1"].port;
            let uneject_flags = r.wait_flags("od_uneject", &[("zf1", zf1)], &["healthy"]).remove(0);
            // Wait for a few more checks of zf2: it stays ejected (300 s) without the uneject.
            let checks = || r.stat("cluster.od_keep.health_check.success");
            let before = checks();
            let deadline = Instant::now() + Duration::from_secs(15);
            while checks() < before + 4 && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            let keep_flags = r.flags("od_keep", r.srv["zf2"].port);
            Uneject {
                ejected,
                uneject_flags,
                keep_flags,
                active: (od("od_uneject", "ejections_active"), od("od_keep", "ejections_active")),
            }
        },
        |t| {
            assert_eq!(t.ejected, (1, 1));
            assert_eq!(t.uneject_flags, "healthy");
            assert_eq!(t.keep_flags, "/failed_outlier_check");
            assert_eq!(t.active, (0, 1));
        },
    );
}
