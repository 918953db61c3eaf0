//! Differential tests of the HTTP connection manager's stream timers and the router's per-try
//! idle timeout (tests/configs/diff_timeouts.yaml) against the reference Envoy on the same
//! bootstrap: `stream_idle_timeout` and the route's `idle_timeout` over it, `request_timeout`,
//! `common_http_protocol_options.max_stream_duration` and the route's `max_stream_duration`
//! over it, and `retry_policy.per_try_idle_timeout`.
//!
//! A case is what a raw HTTP/1 client sees (status, body, whether the connection closed, with a
//! slow client or a slow upstream where the case needs one), then the access log lines (status,
//! response flags, details) and the counters. Envoy's answers are pinned, so a comparison of two
//! wrong answers fails; remora must give the same. The timers are short (300-400 ms) and the
//! slow peers much slower (a second or more), so nothing here depends on the machine's speed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tests::{Kind, Options, Proxy, Upstreams, Vars};

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

/// An upstream that answers every request with its headers and half its body, then stalls for
/// three seconds before it closes: the response has started when a timer passes.
struct Stall {
    port: u16,
    requests: Arc<AtomicU32>,
}

impl Stall {
    fn start() -> Stall {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let requests = Arc::new(AtomicU32::new(0));
        let n = requests.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let n = n.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    n.fetch_add(1, Ordering::SeqCst);
                    let _ =
                        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\ncontent-type: text/plain\r\n\r\nhello");
                    std::thread::sleep(Duration::from_secs(3));
                });
            }
        });
        Stall { port, requests }
    }
}

struct Run {
    proxy: Proxy,
    log: std::path::PathBuf,
    stall: Stall,
    _ups: Upstreams,
}

impl Run {
    fn start(kind: Kind) -> Run {
        assert!(tests::envoy_bin().is_some(), "no reference Envoy (ENVOY_BIN; scripts/install-test-deps)");
        let ups = Upstreams::start(&["a"]).unwrap();
        let stall = Stall::start();
        // Tests run in parallel: one log file per run.
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let n = RUNS.fetch_add(1, Ordering::SeqCst);
        let log =
            std::env::temp_dir().join(format!("remora-diff-timeouts-{}-{}-{n}.log", kind.name(), std::process::id()));
        let _ = std::fs::remove_file(&log);
        let mut vars = Vars::new();
        for u in ups.iter() {
            vars.set(format!("upstream:{}", u.name()), u.port());
        }
        vars.set("stall", stall.port);
        vars.set("log", log.display());
        let template = std::fs::read_to_string(tests::process::crate_dir().join("configs/diff_timeouts.yaml")).unwrap();
        let opts = Options { log_level: "warning".into(), ..Options::default() };
        let proxy = Proxy::start(kind, &template, vars, &opts).unwrap();
        Run { proxy, log, stall, _ups: ups }
    }

    fn stat(&self, name: &str) -> i64 {
        self.proxy.stat(name).unwrap_or(0)
    }

    /// The access log lines of a listener, in order (the log is written when a stream ends; the
    /// file logger flushes on its own schedule, so this waits for `n` lines for a while).
    fn log(&self, prefix: &str, n: usize) -> Vec<String> {
        let mut lines = Vec::new();
        for _ in 0..100 {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            lines = text.lines().filter(|l| l.starts_with(prefix)).map(str::to_string).collect::<Vec<_>>();
            if lines.len() >= n {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        lines.sort();
        lines
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

/// What the client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    status: u16,
    body: String,
    /// The body was cut short (fewer bytes than its content-length).
    truncated: bool,
    /// The proxy closed the connection after (or instead of finishing) the response.
    closed: bool,
}

/// Sends the head, then each body piece after its pause, and reads one response.
fn send(port: u16, head: &str, pieces: &[(u64, &str)]) -> Seen {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    for (pause, piece) in pieces {
        std::thread::sleep(Duration::from_millis(*pause));
        // The proxy may have answered and closed already.
        let _ = s.write_all(piece.as_bytes());
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return Seen { status: 0, body: String::new(), truncated: false, closed: true },
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let text = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let len: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    let mut closed = false;
    while buf.len() < head_end + len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => {
                closed = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let end = (head_end + len).min(buf.len());
    let truncated = end < head_end + len;
    if !closed {
        // Closed after the response (connection: close, or an HTTP/1 reset)?
        s.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
        closed = matches!(s.read(&mut chunk), Ok(0))
            || matches!(s.read(&mut chunk), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset);
    }
    Seen { status, body: String::from_utf8_lossy(&buf[head_end..end]).into_owned(), truncated, closed }
}

fn get(path: &str, case: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: t.test\r\nx-case: {case}\r\n{extra}\r\n")
}

fn post(path: &str, case: &str, len: usize) -> String {
    format!("POST {path} HTTP/1.1\r\nhost: t.test\r\nx-case: {case}\r\ncontent-length: {len}\r\n\r\n")
}

fn seen(status: u16, body: &str, truncated: bool, closed: bool) -> Seen {
    Seen { status, body: body.into(), truncated, closed }
}

/// Runs `f` against each proxy and requires every answer to equal Envoy's pinned one.
fn compare<T: std::fmt::Debug + PartialEq>(name: &str, expect: &T, f: impl Fn(&Run) -> T) {
    for kind in kinds() {
        let run = Run::start(kind);
        let got = f(&run);
        assert_eq!(&got, expect, "{name}: {} differs from Envoy's pinned answer", kind.name());
    }
}

#[test]
fn stream_idle_timeout_as_envoy() {
    type Out = (Vec<(&'static str, Seen)>, Vec<String>, Vec<i64>);
    let expect: Out = (
        vec![
            // A slow upstream, request received: the connection manager answers.
            ("slow", seen(504, "stream timeout", false, false)),
            // The route's idle_timeout 0 turns it off; a longer one replaces it.
            ("noidle", seen(200, "", false, false)),
            ("longidle", seen(200, "", false, false)),
            // The request body stops arriving: 408, and the connection closes.
            ("halfbody", seen(408, "stream timeout", false, true)),
            // A body that keeps arriving, a piece every 100 ms, keeps the stream alive.
            ("trickle", seen(200, "", false, false)),
            // The response started, then stalls: the stream is reset (HTTP/1: closed).
            ("stall", seen(200, "hello", true, true)),
        ],
        vec![
            "sidle halfbody 408 SI stream_idle_timeout".into(),
            "sidle longidle 200 - via_upstream".into(),
            "sidle noidle 200 - via_upstream".into(),
            "sidle slow 504 SI stream_idle_timeout".into(),
            "sidle stall 200 SI stream_idle_timeout".into(),
            "sidle trickle 200 - via_upstream".into(),
        ],
        // Timed out: slow, halfbody, stall; 2xx: noidle, longidle, trickle, stall.
        vec![3, 0, 4],
    );
    compare("stream_idle_timeout", &expect, |run| {
        let port = run.proxy.port("sidle");
        let slow = "x-echo-delay-ms: 1000\r\n";
        let mut out = vec![
            ("slow", send(port, &get("/", "slow", slow), &[])),
            ("noidle", send(port, &get("/noidle", "noidle", slow), &[])),
            ("longidle", send(port, &get("/longidle", "longidle", slow), &[])),
            ("halfbody", send(port, &post("/", "halfbody", 10), &[(0, "hello")])),
            (
                "trickle",
                send(
                    port,
                    &post("/", "trickle", 6),
                    &[(100, "a"), (100, "b"), (100, "c"), (100, "d"), (100, "e"), (100, "f")],
                ),
            ),
            ("stall", send(port, &get("/stall", "stall", ""), &[])),
        ];
        // Only the status and whether the body came whole matter for echoed bodies.
        for (_, s) in out.iter_mut() {
            if s.status == 200 && !s.truncated {
                s.body.clear();
            }
        }
        let counters = ["downstream_rq_idle_timeout", "downstream_rq_timeout", "downstream_rq_2xx"]
            .map(|c| run.stat(&format!("http.sidle.{c}")));
        (out, run.log("sidle ", 6), counters.to_vec())
    });
}

#[test]
fn route_idle_timeout_without_a_connection_manager_one_as_envoy() {
    // stream_idle_timeout 0 turns the connection manager's off; a route's idle_timeout still
    // applies to its own streams.
    let expect = (seen(504, "stream timeout", false, false), seen(200, "", false, false), 1);
    compare("route idle_timeout", &expect, |run| {
        let port = run.proxy.port("routeidle");
        let a = send(port, &get("/shortidle", "short", "x-echo-delay-ms: 1000\r\n"), &[]);
        let mut b = send(port, &get("/", "other", "x-echo-delay-ms: 1000\r\n"), &[]);
        b.body.clear();
        (a, b, run.stat("http.routeidle.downstream_rq_idle_timeout"))
    });
}

#[test]
fn request_timeout_as_envoy() {
    let expect = (
        vec![
            seen(408, "request timeout", false, true),
            // The whole request arrived: a slow upstream is not the request timeout's business.
            seen(200, "", false, false),
        ],
        vec!["rqto halfbody 408 - request_overall_timeout".to_string(), "rqto slow 200 - via_upstream".to_string()],
        vec![1, 0],
    );
    compare("request_timeout", &expect, |run| {
        let port = run.proxy.port("rqto");
        let a = send(port, &post("/", "halfbody", 10), &[(0, "hello")]);
        let mut b = send(port, &get("/", "slow", "x-echo-delay-ms: 1000\r\n"), &[]);
        b.body.clear();
        let counters =
            ["downstream_rq_timeout", "downstream_rq_idle_timeout"].map(|c| run.stat(&format!("http.rqto.{c}")));
        (vec![a, b], run.log("rqto ", 2), counters.to_vec())
    });
}

#[test]
fn max_stream_duration_as_envoy() {
    let expect = (
        vec![
            seen(504, "downstream duration timeout", false, false),
            seen(408, "downstream duration timeout", false, true),
            // The route's max_stream_duration replaces the connection manager's: 0 is none.
            seen(200, "", false, false),
            seen(200, "", false, false),
            seen(200, "hello", true, true),
        ],
        vec![
            "maxdur halfbody 408 - max_duration_timeout".to_string(),
            "maxdur longer 200 - via_upstream".to_string(),
            "maxdur nomax 200 - via_upstream".to_string(),
            "maxdur slow 504 - max_duration_timeout".to_string(),
            "maxdur stall 200 - max_duration_timeout".to_string(),
        ],
        3,
    );
    compare("max_stream_duration", &expect, |run| {
        let port = run.proxy.port("maxdur");
        let slow = "x-echo-delay-ms: 1000\r\n";
        let mut v = vec![
            send(port, &get("/", "slow", slow), &[]),
            send(port, &post("/", "halfbody", 10), &[(0, "hello")]),
            send(port, &get("/nomax", "nomax", slow), &[]),
            send(port, &get("/longer", "longer", slow), &[]),
            send(port, &get("/stall", "stall", ""), &[]),
        ];
        for s in v.iter_mut().filter(|s| s.status == 200 && !s.truncated) {
            s.body.clear();
        }
        (v, run.log("maxdur ", 5), run.stat("http.maxdur.downstream_rq_max_duration_reached"))
    });
}

#[test]
fn per_try_idle_timeout_as_envoy() {
    let expect = (
        vec![
            // Both tries idle past 300 ms: 504 after the retry.
            seen(504, "upstream request timeout", false, false),
            // The first try idles, the retry answers at once.
            seen(200, "", false, false),
            // The response started, then stalls: reset, no retry.
            seen(200, "hello", true, true),
        ],
        vec![
            "ptidle retried 200 - via_upstream".to_string(),
            "ptidle slow 504 URX,UT upstream_per_try_idle_timeout".to_string(),
            "ptidle stall 200 UT upstream_per_try_idle_timeout".to_string(),
        ],
        // Per-try idle timeouts on `a` (two for `slow`, one for `retried`), retries, on `stall`.
        vec![3, 2, 1],
    );
    compare("per_try_idle_timeout", &expect, |run| {
        let port = run.proxy.port("ptidle");
        let mut v = vec![
            send(port, &get("/", "slow", "x-echo-delay-ms: 1000\r\n"), &[]),
            send(
                port,
                &get("/", "retried", "x-echo-delay-ms: 1000\r\nx-echo-fail-first: 1\r\nx-echo-key: k1\r\n"),
                &[],
            ),
            send(port, &get("/stall", "stall", ""), &[]),
        ];
        for s in v.iter_mut().filter(|s| s.status == 200 && !s.truncated) {
            s.body.clear();
        }
        let counters =
            ["upstream_rq_per_try_idle_timeout", "upstream_rq_retry"].map(|c| run.stat(&format!("cluster.a.{c}")));
        let stalled = run.stat("cluster.stall.upstream_rq_per_try_idle_timeout");
        assert_eq!(run.stall.requests.load(Ordering::SeqCst), 1, "the stalled response is not retried");
        (v, run.log("ptidle ", 3), vec![counters[0], counters[1], stalled])
    });
}

#[test]
fn stream_timers_on_http2_as_envoy() {
    // HTTP/2 (h2c): the same answers per stream; a stalled response is a reset stream (curl
    // fails), the connection is not what ends it.
    let expect = (
        (504, "stream timeout".to_string(), false),
        (200, "hello".to_string(), true),
        (504, "downstream duration timeout".to_string(), false),
        (504, "upstream request timeout".to_string(), false),
        3,
    );
    compare("stream timers on HTTP/2", &expect, |run| {
        let h2 = |listener: &str, path: &str, extra: Option<(&str, &str)>| {
            let mut req = tests::Request::get(path).h2c().host("t.test").timeout(Duration::from_secs(6));
            if let Some((k, v)) = extra {
                req = req.header(k, v);
            }
            let r = tests::curl(run.proxy.port(listener), &req).unwrap();
            (r.status, r.body_str(), r.curl_exit != 0)
        };
        let slow = Some(("x-echo-delay-ms", "1000"));
        (
            h2("sidle", "/", slow),
            h2("sidle", "/stall", None),
            h2("maxdur", "/", slow),
            h2("ptidle", "/", slow),
            run.stat("http.sidle.downstream_rq_idle_timeout")
                + run.stat("http.maxdur.downstream_rq_max_duration_reached"),
        )
    });
}
