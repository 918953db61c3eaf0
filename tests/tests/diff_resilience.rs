//! Differential tests of the resilience features (tests/configs/diff_resilience.yaml) against the
//! reference Envoy on the same bootstrap: circuit breakers under concurrent load (HTTP/1.1
//! pending queue and max_connections, HTTP/2 max_requests, max_retries, HIGH priority), outlier
//! detection with a host that fails every request (ejected, stops getting traffic, comes back
//! after the ejection time and is ejected for longer the second time), ejection overflow, the
//! healthy panic threshold, local-origin errors, success rate and failure percentage, the
//! `/clusters` lines, upstream TCP keepalive (read with `ss`), and Envoy's verdicts on bad
//! values.
//!
//! Each scenario runs on Envoy, then on remora, with fresh upstreams; what a client and the admin
//! API observe must be equal, and Envoy's own values are pinned to its documented behaviour so a
//! test that compared nothing would fail. Timing-sensitive steps leave hundreds of
//! milliseconds of margin.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use tests::{Kind, Options, Proxy, Upstreams, Vars};

/// An upstream that answers 503 to every request (keep-alive HTTP/1.1).
struct Bad {
    port: u16,
    hits: Arc<AtomicU64>,
}

fn bad_upstream() -> Bad {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let h = h.clone();
            thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        h.fetch_add(1, Ordering::SeqCst);
                        let r = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nx-echo-upstream: bad\r\n\r\nfail";
                        if s.write_all(r).is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    Bad { port, hits }
}

/// What a client saw.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on its own connection (`Connection: close`).
fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: resilience.test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply { status, headers, body: body.to_string() }
}

/// `n` requests at once, each on its own thread and connection.
fn concurrent(port: u16, path: &str, headers: &[(&str, &str)], n: usize) -> Vec<Reply> {
    let hs: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let hs = hs.clone();
            let path = path.to_string();
            thread::spawn(move || {
                let h: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                get(port, &path, &h)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn statuses(r: &[Reply]) -> Vec<u16> {
    let mut v: Vec<u16> = r.iter().map(|r| r.status).collect();
    v.sort_unstable();
    v
}

/// The proxies to compare: Envoy, and remora when built (required with REMORA_DIFF_REQUIRE=1).
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

struct Run {
    proxy: Proxy,
    ups: Upstreams,
    bad: Bad,
}

impl Run {
    fn start(kind: Kind) -> Run {
        assert!(tests::envoy_bin().is_some(), "no reference Envoy (ENVOY_BIN; scripts/install-test-deps)");
        let ups = Upstreams::start(&["a", "b", "c"]).unwrap();
        let bad = bad_upstream();
        let mut vars = Vars::new();
        for u in ups.iter() {
            vars.set(format!("upstream:{}", u.name()), u.port());
        }
        vars.set("bad", bad.port);
        let template =
            std::fs::read_to_string(tests::process::crate_dir().join("configs/diff_resilience.yaml")).unwrap();
        let opts = Options { log_level: "warning".into(), ..Options::default() };
        let proxy = Proxy::start(kind, &template, vars, &opts).unwrap();
        Run { proxy, ups, bad }
    }

    fn port(&self) -> u16 {
        self.proxy.port("listener")
    }

    /// A cluster stat (`cluster.<c>.<name>`), 0 when absent.
    fn stat(&self, c: &str, name: &str) -> i64 {
        self.proxy.stat(&format!("cluster.{c}.{name}")).unwrap_or(-1)
    }

    fn od(&self, c: &str, name: &str) -> i64 {
        self.stat(c, &format!("outlier_detection.{name}"))
    }

    /// `/clusters` lines of cluster `c` whose key (after `c::`) starts with `prefix`.
    fn clusters_lines(&self, c: &str, prefix: &str) -> Vec<String> {
        let (_, body) = self.proxy.admin("/clusters").unwrap();
        let p = format!("{c}::{prefix}");
        body.lines().filter(|l| l.starts_with(&p)).map(str::to_string).collect()
    }

    /// The `/clusters` health flags of cluster `c`'s host on `port`.
    fn health_flags(&self, c: &str, port: u16) -> String {
        let key = format!("{c}::127.0.0.1:{port}::health_flags::");
        let (_, body) = self.proxy.admin("/clusters").unwrap();
        body.lines().find_map(|l| l.strip_prefix(&key)).unwrap_or("<absent>").to_string()
    }

    /// `n` sequential requests: the statuses in order. They are 20 ms apart: an ejection is
    /// decided off the request path (Envoy's main thread, remora's detector task) and must not
    /// race the next request on a loaded machine.
    fn sequential(&self, path: &str, n: usize) -> Vec<u16> {
        (0..n)
            .map(|_| {
                let s = get(self.port(), path, &[]).status;
                thread::sleep(Duration::from_millis(20));
                s
            })
            .collect()
    }
}

fn count(v: &[u16], status: u16) -> usize {
    v.iter().filter(|s| **s == status).count()
}

/// The scenarios depend on timing (hundreds of milliseconds of margin): they run one at a time
/// even when the test harness runs this file's tests in parallel.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `scenario` on every proxy and checks that they observed the same.
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
struct CircuitBreakers {
    held: Vec<(&'static str, i64)>,
    statuses: Vec<u16>,
    overflow_reply: Option<(Option<String>, String)>,
    stats: Vec<(&'static str, i64)>,
    high: Vec<u16>,
    h2: Vec<u16>,
    /// Envoy 1.40 counts a max_requests overflow in upstream_rq_active_overflow only.
    h2_overflow: (i64, i64),
}

#[test]
fn circuit_breakers_under_concurrency() {
    differential(
        "circuit breakers",
        |r| {
            let port = r.port();
            // The only connection (max_connections 1) is busy for 1.2 s...
            let first = thread::spawn(move || get(port, "/cb", &[("x-echo-delay-ms", "1200")]));
            thread::sleep(Duration::from_millis(300));
            // ...so the next request waits for it (max_pending_requests 1)...
            let second = thread::spawn(move || get(port, "/cb", &[("x-echo-delay-ms", "50")]));
            thread::sleep(Duration::from_millis(300));
            let held = [
                "circuit_breakers.default.cx_open",
                "circuit_breakers.default.rq_pending_open",
                "circuit_breakers.default.rq_open",
                "circuit_breakers.default.remaining_cx",
                "circuit_breakers.default.remaining_pending",
                "circuit_breakers.default.remaining_rq",
                "upstream_rq_pending_active",
                "upstream_cx_active",
            ]
            .map(|n| (n, r.stat("cb", n)))
            .to_vec();
            // ...and the others overflow at once.
            let rest = concurrent(port, "/cb", &[], 8);
            let mut all = rest.clone();
            all.push(first.join().unwrap());
            all.push(second.join().unwrap());
            let overflow_reply = rest
                .iter()
                .find(|x| x.status == 503)
                .map(|x| (x.header("x-envoy-overloaded").map(str::to_string), x.body.clone()));
            let stats = [
                "upstream_rq_pending_overflow",
                "upstream_rq_pending_total",
                "upstream_cx_total",
                "upstream_rq_503",
                "circuit_breakers.default.cx_open",
                "circuit_breakers.default.rq_pending_open",
                "circuit_breakers.default.remaining_cx",
                "upstream_rq_pending_active",
            ]
            .map(|n| (n, r.stat("cb", n)))
            .to_vec();
            // HIGH priority has its own (default) limits and pools.
            let high = statuses(&concurrent(port, "/cb-high", &[("x-echo-delay-ms", "300")], 6));
            // HTTP/2: one connection, max_requests 2.
            assert_eq!(get(port, "/h2rq", &[]).status, 200);
            let h2 = statuses(&concurrent(port, "/h2rq", &[("x-echo-delay-ms", "800")], 6));
            CircuitBreakers {
                held,
                statuses: statuses(&all),
                overflow_reply,
                stats,
                high,
                h2,
                h2_overflow: (
                    r.stat("h2rq", "upstream_rq_active_overflow"),
                    r.stat("h2rq", "upstream_rq_pending_overflow"),
                ),
            }
        },
        |e| {
            assert_eq!(e.statuses, [200, 200, 503, 503, 503, 503, 503, 503, 503, 503]);
            assert_eq!(
                e.held[..2],
                [("circuit_breakers.default.cx_open", 1), ("circuit_breakers.default.rq_pending_open", 1)]
            );
            let (overloaded, body) = e.overflow_reply.clone().unwrap();
            assert_eq!(overloaded.as_deref(), Some("true"));
            assert_eq!(body, "upstream connect error or disconnect/reset before headers. reset reason: overflow");
            assert_eq!(e.stats[0], ("upstream_rq_pending_overflow", 8));
            assert_eq!(e.high, [200; 6]);
            assert_eq!(e.h2, [200, 200, 503, 503, 503, 503]);
            assert_eq!(e.h2_overflow, (4, 0));
        },
    );
}

#[test]
fn tcp_proxy_max_connections() {
    differential(
        "tcp_proxy circuit breakers",
        |r| {
            let port = r.proxy.port("tcp");
            // HTTP/1.1 with `Connection: close` through the TCP proxy: one connection each, the
            // first held for 1.2 s.
            let first = thread::spawn(move || get(port, "/", &[("x-echo-delay-ms", "1200")]));
            thread::sleep(Duration::from_millis(300));
            let second = thread::spawn(move || get(port, "/", &[("x-echo-delay-ms", "50")]));
            thread::sleep(Duration::from_millis(300));
            let pending = r.stat("cbtcp", "upstream_rq_pending_active");
            let mut all = concurrent(port, "/", &[], 3);
            all.push(first.join().unwrap());
            all.push(second.join().unwrap());
            let stats = [
                "upstream_rq_pending_overflow",
                "upstream_rq_pending_total",
                "upstream_cx_total",
                "upstream_cx_overflow",
            ]
            .map(|n| (n, r.stat("cbtcp", n)))
            .to_vec();
            (statuses(&all), pending, stats)
        },
        |e| {
            // Envoy's tcp_proxy refuses over max_connections rather than queueing.
            assert_eq!(e.0, [0, 0, 0, 0, 200], "every connection but the first is closed at once");
            assert_eq!(e.1, 0);
            assert_eq!(
                e.2,
                [
                    ("upstream_rq_pending_overflow", 0),
                    ("upstream_rq_pending_total", 1),
                    ("upstream_cx_total", 1),
                    ("upstream_cx_overflow", 4)
                ]
            );
        },
    );
}

#[test]
fn max_retries_overflow() {
    differential(
        "max_retries",
        |r| {
            let port = r.port();
            let knobs = |key: &'static str| {
                vec![
                    ("x-echo-key", key),
                    ("x-echo-fail-first", "2"),
                    ("x-echo-status", "503"),
                    ("x-echo-delay-ms", "600"),
                ]
            };
            // A's retry is in flight from 0.6 s to 1.2 s; B's first answer comes at 0.9 s, when
            // max_retries (1) is taken: B gets the upstream's 503.
            let a = thread::spawn(move || get(port, "/retry", &knobs("retry-a")));
            thread::sleep(Duration::from_millis(300));
            let b = get(port, "/retry", &knobs("retry-b"));
            let a = a.join().unwrap();
            (
                a.status,
                b.status,
                b.header("x-echo-upstream").map(str::to_string),
                r.ups.attempts("retry-a"),
                r.ups.attempts("retry-b"),
                r.stat("retry", "upstream_rq_retry_overflow"),
                r.stat("retry", "upstream_rq_retry"),
                r.stat("retry", "circuit_breakers.default.rq_retry_open"),
            )
        },
        |e| {
            assert_eq!((e.0, e.1, e.3, e.4, e.5, e.6), (200, 503, 3, 1, 1, 2));
            assert_eq!(e.2.as_deref(), Some("a"), "B's reply is the upstream's");
        },
    );
}

#[derive(Debug, PartialEq)]
struct Consecutive {
    first: usize,
    bad_hits: u64,
    ejected: Vec<(&'static str, i64)>,
    flags_ejected: String,
    unejected: bool,
    flags_after: String,
    second: usize,
    merged: bool,
    enforced_after: i64,
    panic: i64,
}

/// Polls until the cluster has no ejected host (true), or gives up after `secs`.
fn wait_unejected(r: &Run, c: &str, secs: u64) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if r.od(c, "ejections_active") == 0 {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn outlier_consecutive_5xx_ejects_and_returns() {
    differential(
        "consecutive 5xx",
        |r| {
            let first = count(&r.sequential("/od", 30), 503);
            let bad_hits = r.bad.hits.load(Ordering::SeqCst);
            let ejected = [
                "ejections_active",
                "ejections_enforced_consecutive_5xx",
                "ejections_detected_consecutive_5xx",
                "ejections_consecutive_5xx",
                "ejections_enforced_total",
                "ejections_total",
                "ejections_overflow",
            ]
            .map(|n| (n, r.od("od", n)))
            .into_iter()
            .chain([("membership_healthy", r.stat("od", "membership_healthy"))])
            .collect::<Vec<_>>();
            let flags_ejected = r.health_flags("od", r.bad.port);
            // base_ejection_time 2 s, checked every 1 s interval.
            let unejected = wait_unejected(r, "od", 6);
            let flags_after = format!("{} {}", r.health_flags("od", r.bad.port), r.stat("od", "membership_healthy"));
            // Past the 1 s update_merge_window, the next ejection reaches the load balancer at
            // once: the bad host answers 3 more times.
            thread::sleep(Duration::from_millis(1200));
            let second = count(&r.sequential("/od", 30), 503);
            // Right after an unejection an ejection waits for the merge window: the bad host
            // keeps its share meanwhile.
            wait_unejected(r, "od", 8);
            let merged = count(&r.sequential("/od", 30), 503) > 3;
            Consecutive {
                first,
                bad_hits,
                ejected,
                flags_ejected,
                unejected,
                flags_after,
                second,
                merged,
                enforced_after: r.od("od", "ejections_enforced_consecutive_5xx"),
                panic: r.stat("od", "lb_healthy_panic"),
            }
        },
        |e| {
            assert_eq!(e.first, 3, "the bad host answers 3 times, then is ejected");
            assert_eq!(e.bad_hits, 3);
            assert_eq!(
                e.ejected[..3],
                [
                    ("ejections_active", 1),
                    ("ejections_enforced_consecutive_5xx", 1),
                    ("ejections_detected_consecutive_5xx", 1)
                ]
            );
            assert_eq!(e.flags_ejected, "/failed_outlier_check");
            assert!(e.unejected);
            assert_eq!(e.flags_after, "healthy 3");
            assert_eq!(e.ejected.last(), Some(&("membership_healthy", 2)));
            assert_eq!((e.second, e.merged, e.enforced_after, e.panic), (3, true, 3, 0));
        },
    );
}

#[test]
fn outlier_overflow_panic_and_local_origin() {
    differential(
        "overflow, panic, local origin",
        |r| {
            let overflow = count(&r.sequential("/od-overflow", 15), 503);
            let overflow_stats =
                ["ejections_overflow", "ejections_active", "ejections_detected_consecutive_5xx", "ejections_total"]
                    .map(|n| (n, r.od("od-overflow", n)))
                    .to_vec();
            // Without panic the bad host would answer 3 times; in panic it keeps about half of
            // the traffic (the round-robin restart after the ejection may give it one more).
            let panic = (8..=12).contains(&count(&r.sequential("/od-panic", 20), 503));
            let panic_stats = (r.od("od-panic", "ejections_active"), r.stat("od-panic", "lb_healthy_panic") >= 10);
            let local: Vec<Reply> = (0..15)
                .map(|_| {
                    let x = get(r.port(), "/od-local", &[]);
                    thread::sleep(Duration::from_millis(20));
                    x
                })
                .collect();
            let local_503: Vec<String> = local.iter().filter(|x| x.status == 503).map(|x| x.body.clone()).collect();
            let local_stats = [
                "ejections_enforced_consecutive_local_origin_failure",
                "ejections_detected_consecutive_local_origin_failure",
                "ejections_active",
                "ejections_enforced_consecutive_5xx",
            ]
            .map(|n| (n, r.od("od-local", n)))
            .to_vec();
            (overflow, overflow_stats, panic, panic_stats, local_503, local_stats)
        },
        |e| {
            assert_eq!(e.0, 5, "never ejected: a third of the traffic fails");
            // The 3rd failure is a consecutive 5xx, the 5th a consecutive gateway failure (503):
            // two refused ejections.
            assert_eq!(e.1[..2], [("ejections_overflow", 2), ("ejections_active", 0)]);
            assert!(e.2, "in panic the ejected host still gets its share");
            assert_eq!(e.3, (1, true));
            assert_eq!(e.4.len(), 2);
            assert!(e.4[0].starts_with("upstream connect error or disconnect/reset before headers"), "{:?}", e.4);
            assert_eq!(
                e.5[..3],
                [
                    ("ejections_enforced_consecutive_local_origin_failure", 1),
                    ("ejections_detected_consecutive_local_origin_failure", 1),
                    ("ejections_active", 1)
                ]
            );
        },
    );
}

#[test]
fn outlier_success_rate_and_failure_percentage() {
    differential(
        "success rate, failure percentage",
        |r| {
            let mut out = Vec::new();
            for (c, stat) in
                [("od-fp", "ejections_enforced_failure_percentage"), ("od-sr", "ejections_enforced_success_rate")]
            {
                let path = format!("/{c}");
                // A burst: whichever interval bucket gets most of it has >= 5 requests per host,
                // even when a loaded machine spreads it over three 1 s intervals.
                let _ = concurrent(r.port(), &path, &[], 90);
                thread::sleep(Duration::from_millis(2600));
                let after = count(&r.sequential(&path, 12), 503);
                out.push((c, r.od(c, stat), r.od(c, "ejections_active"), after, r.health_flags(c, r.bad.port)));
            }
            out
        },
        |e| {
            for (c, enforced, active, after, flags) in e {
                assert_eq!((*enforced, *active, *after, flags.as_str()), (1, 1, 0, "/failed_outlier_check"), "{c}");
            }
        },
    );
}

#[test]
fn locality_weights_and_priority_failover() {
    differential(
        "locality, failover",
        |r| {
            let mut shares = std::collections::BTreeMap::new();
            let n = 400;
            for _ in 0..n {
                let up = get(r.port(), "/loc", &[]).header("x-echo-upstream").unwrap_or("none").to_string();
                *shares.entry(up).or_insert(0usize) += 1;
            }
            // Within 5 points of zone-a 25 %, zone-b's two hosts 37.5 % each.
            let near = |u: &str, want: f64| {
                let got = *shares.get(u).unwrap_or(&0) as f64 / n as f64;
                (got - want).abs() < 0.05
            };
            let locality = (near("a", 0.25), near("b", 0.375), near("c", 0.375));
            let failover = r.sequential("/failover", 12);
            (locality, failover, r.od("failover", "ejections_active"), r.stat("failover", "lb_healthy_panic"))
        },
        |e| {
            assert_eq!(e.0, (true, true, true));
            assert_eq!(e.1, [503, 503, 503, 200, 200, 200, 200, 200, 200, 200, 200, 200]);
            assert_eq!((e.2, e.3), (1, 0));
        },
    );
}

#[test]
fn clusters_admin_lines() {
    differential(
        "/clusters",
        |r| {
            let mut lines = r.clusters_lines("cb", "default_priority::");
            lines.extend(r.clusters_lines("cb", "high_priority::"));
            lines.extend(r.clusters_lines("od", "outlier::"));
            lines.extend(r.clusters_lines("retry", "default_priority::max_retries"));
            lines
        },
        |e| {
            assert!(e.contains(&"cb::default_priority::max_connections::1".to_string()), "{e:?}");
            assert!(e.contains(&"od::outlier::success_rate_average::-1".to_string()), "{e:?}");
        },
    );
}

#[test]
fn upstream_tcp_keepalive() {
    differential(
        "tcp_keepalive",
        |r| {
            assert_eq!(get(r.port(), "/ka", &[]).status, 200);
            let c = r.ups.get("c").port();
            let out = std::process::Command::new("ss")
                .args(["-tnoH", "state", "established", "dport", &format!("= :{c}")])
                .output()
                .expect("ss (iproute2)");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            // `timer:(keepalive,1min16sec,0)`: the time left before the first probe.
            let timer = text.split("timer:(").nth(1).and_then(|t| t.split(',').next()).map(str::to_string);
            let left = text
                .split("timer:(keepalive,")
                .nth(1)
                .and_then(|t| t.split(',').next())
                .map(|t| {
                    let (m, s) = t.split_once("min").unwrap_or(("0", t));
                    m.parse::<u64>().unwrap_or(0) * 60 + s.trim_end_matches("sec").parse::<u64>().unwrap_or(0)
                })
                .unwrap_or(0);
            (timer, (60..=77).contains(&left))
        },
        |e| assert_eq!(e, &(Some("keepalive".to_string()), true)),
    );
}

/// `--mode validate` on the suite's bootstrap with one cluster field replaced: Envoy's exit
/// code, and (remora) that the message names the field.
#[test]
fn bad_values_get_envoys_verdict() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let base = std::fs::read_to_string(tests::process::crate_dir().join("configs/diff_resilience.yaml")).unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "{consecutive_5xx: 3, interval: 1s, base_ejection_time: 2s, max_ejection_percent: 50}",
            "{interval: 0s}",
            "interval",
        ),
        (
            "{consecutive_5xx: 3, interval: 1s, base_ejection_time: 2s, max_ejection_percent: 50}",
            "{interval: -1s}",
            "interval",
        ),
        (
            "{consecutive_5xx: 3, interval: 1s, base_ejection_time: 2s, max_ejection_percent: 50}",
            "{max_ejection_percent: 101}",
            "max_ejection_percent",
        ),
        (
            "{consecutive_5xx: 3, interval: 1s, base_ejection_time: 2s, max_ejection_percent: 50}",
            "{enforcing_consecutive_5xx: 200}",
            "enforcing_consecutive_5xx",
        ),
        (
            "{consecutive_5xx: 3, interval: 1s, base_ejection_time: 2s, max_ejection_percent: 50}",
            "{failure_percentage_threshold: 101}",
            "failure_percentage_threshold",
        ),
        (
            "{consecutive_5xx: 3, interval: 1s, base_ejection_time: 2s, max_ejection_percent: 50}",
            "{base_ejection_time: 0s}",
            "base_ejection_time",
        ),
        (
            "{consecutive_5xx: 3, interval: 1s, base_ejection_time: 2s, max_ejection_percent: 50}",
            "{base_ejection_time: 10s, max_ejection_time: 5s}",
            "max_ejection_time",
        ),
        (
            "{consecutive_5xx: 3, interval: 1s, base_ejection_time: 2s, max_ejection_percent: 50}",
            "{max_ejection_time_jitter: -1s}",
            "max_ejection_time_jitter",
        ),
        (
            "{consecutive_5xx: 3, interval: 1s, base_ejection_time: 2s, max_ejection_percent: 50}",
            "{consecutive_5xx: 0, successful_active_health_check_uneject_host: false}",
            "",
        ),
        (
            "{healthy_panic_threshold: {value: 60}}",
            "{healthy_panic_threshold: {value: 150}}",
            "healthy_panic_threshold",
        ),
        ("{healthy_panic_threshold: {value: 60}}", "{locality_weighted_lb_config: {}}", ""),
        ("thresholds: [{max_retries: 1}]", "thresholds: [{priority: 5}]", "priority"),
        (
            "thresholds: [{max_retries: 1}]",
            "thresholds: [{retry_budget: {budget_percent: {value: 120}}}]",
            "budget_percent",
        ),
        (
            "thresholds: [{max_retries: 1}]",
            "thresholds: [{retry_budget: {budget_percent: {value: 25}, min_retry_concurrency: 2}}]",
            "",
        ),
        ("thresholds: [{max_retries: 1}]", "per_host_thresholds: [{max_requests: 3}]", "per_host_thresholds"),
        ("thresholds: [{max_retries: 1}]", "per_host_thresholds: [{max_connections: 3}]", ""),
    ];
    let envoy = tests::envoy_bin().expect("the reference Envoy");
    let remora = match tests::remora_bin() {
        Ok(Some(p)) => Some(p),
        _ => None,
    };
    let dir = std::env::temp_dir().join(format!("remora-resilience-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut failures = Vec::new();
    for (i, (from, to, field)) in cases.iter().enumerate() {
        assert!(base.contains(from), "case {i}: {from} not in the bootstrap");
        let mut vars = Vars::new();
        vars.set("upstream:a", 1).set("upstream:b", 2).set("upstream:c", 3).set("bad", 4);
        let yaml = vars.render(&base.replacen(from, to, 1)).unwrap();
        let path = dir.join(format!("case{i}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let run = |bin: &std::path::Path| {
            let o = std::process::Command::new(bin).args(["--mode", "validate", "-c"]).arg(&path).output().unwrap();
            (
                o.status.code().unwrap_or(-1),
                format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
            )
        };
        let (want, _) = run(&envoy);
        assert_eq!(want != 0, !field.is_empty(), "case {i} ({to}): Envoy's verdict changed");
        if let Some(r) = &remora {
            let (got, out) = run(r);
            if got != want || (want != 0 && !out.contains(field)) {
                failures.push(format!("case {i} ({to}): Envoy exits {want}, remora {got}: {}", out.trim()));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
