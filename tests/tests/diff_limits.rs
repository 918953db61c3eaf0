//! Differential tests of the HTTP connection manager's limits and Envoy's HTTP/1 framing rules
//! (tests/configs/diff_limits.yaml) against the reference Envoy on the same bootstrap:
//! `max_request_headers_kb` and `max_headers_count` on HTTP/1 (raw bytes over a TCP socket) and
//! HTTP/2 (curl), `headers_with_underscores_action`, `request_headers_timeout`, the framing
//! Envoy's codec refuses (Content-Length with Transfer-Encoding, other transfer-encodings,
//! repeated Content-Length, unknown methods, malformed chunk sizes), CONNECT and upgrades
//! without config, and the stats those count.
//!
//! Each case pins Envoy's answer (so a comparison of two wrong answers fails) and requires
//! remora's to be the same: status, body, `connection: close`, and whether the connection closed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tests::{Kind, Options, Proxy, Request, Upstreams, Vars, curl};

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
    _ups: Upstreams,
}

impl Run {
    fn start(kind: Kind) -> Run {
        assert!(tests::envoy_bin().is_some(), "no reference Envoy (ENVOY_BIN; scripts/install-test-deps)");
        let ups = Upstreams::start(&["a"]).unwrap();
        let mut vars = Vars::new();
        for u in ups.iter() {
            vars.set(format!("upstream:{}", u.name()), u.port());
        }
        let template = std::fs::read_to_string(tests::process::crate_dir().join("configs/diff_limits.yaml")).unwrap();
        let opts = Options { log_level: "warning".into(), ..Options::default() };
        let proxy = Proxy::start(kind, &template, vars, &opts).unwrap();
        Run { proxy, _ups: ups }
    }

    fn port(&self, listener: &str) -> u16 {
        self.proxy.port(listener)
    }

    fn stat(&self, name: &str) -> i64 {
        self.proxy.stat(name).unwrap_or(0)
    }
}

/// One response as a raw HTTP/1 client read it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    status: u16,
    body: String,
    conn_close: bool,
    /// The proxy closed the connection after the reply.
    closed: bool,
}

/// Reads one response (Content-Length framed); with `connection: close`, waits for the close.
fn read_reply(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Reply> {
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let header = |n: &str| {
        head.lines().find_map(|l| l.strip_prefix(n).and_then(|v| v.strip_prefix(':')).map(|v| v.trim().to_string()))
    };
    let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let conn_close = header("connection").is_some_and(|v| v == "close");
    while buf.len() < head_end + len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let end = (head_end + len).min(buf.len());
    let body = String::from_utf8_lossy(&buf[head_end..end]).into_owned();
    buf.drain(..end);
    let mut closed = false;
    if conn_close {
        closed = matches!(s.read(&mut chunk), Ok(0) | Err(_));
    }
    Some(Reply { status, body, conn_close, closed })
}

/// Sends `data` on a new connection and reads `n` responses (fewer if the connection ends).
fn exchange(port: u16, data: &[u8], n: usize) -> Vec<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The proxy may answer and close before it read everything: a failed write is fine.
    let _ = s.write_all(data);
    let mut buf = Vec::new();
    (0..n).map_while(|_| read_reply(&mut s, &mut buf)).collect()
}

fn head(method: &str, extra: &str) -> String {
    format!("{method} / HTTP/1.1\r\nHost: limits.test\r\n{extra}\r\n")
}

fn big(n: usize) -> String {
    format!("x-big: {}\r\n", "a".repeat(n))
}

fn many(n: usize) -> String {
    (0..n).map(|i| format!("x-h{i}: v\r\n")).collect()
}

struct Case {
    name: &'static str,
    listener: &'static str,
    data: Vec<u8>,
    /// Envoy's answers, pinned: (status, body) per response, in order.
    expect: Vec<(u16, &'static str)>,
    /// The last answer closes the connection.
    closes: bool,
    /// Why remora's answer differs from Envoy's, where it does (the differing part is not
    /// compared; Envoy's answer is still checked).
    remora_diff: Option<&'static str>,
}

fn case(name: &'static str, listener: &'static str, data: impl Into<Vec<u8>>, status: u16, body: &'static str) -> Case {
    let closes = status != 200;
    Case { name, listener, data: data.into(), expect: vec![(status, body)], closes, remora_diff: None }
}

const E431: &str = "Request Header Fields Too Large";
const E400: &str = "Bad Request";
const E501: &str = "Not Implemented";

fn h1_cases() -> Vec<Case> {
    // The header block counts from the request line to the blank line: 4 KB on `tight` is
    // 16 + 19 + (7 + n + 2) + 2 bytes, so n = 4050 is exactly 4096.
    let te = "Transfer-Encoding: chunked\r\n";
    let mut v = vec![
        case("59 KB header", "dflt", head("GET", &big(59 << 10)), 200, ""),
        case("61 KB header", "dflt", head("GET", &big(61 << 10)), 431, E431),
        case("61 KB unfinished header block", "dflt", format!("GET / HTTP/1.1\r\n{}", big(61 << 10)), 431, E431),
        case("101 headers", "dflt", head("GET", &many(100)), 431, E431),
        case("60 headers", "dflt", head("GET", &many(59)), 200, ""),
        case("4096-byte block", "tight", head("GET", &big(4050)), 200, ""),
        case("4097-byte block", "tight", head("GET", &big(4051)), 431, E431),
        case("20 headers", "tight", head("GET", &many(19)), 200, ""),
        case("21 headers", "tight", head("GET", &many(20)), 431, E431),
        case("underscore allowed", "dflt", head("GET", "x_under: 1\r\n"), 200, ""),
        case("underscore rejected", "tight", head("GET", "x_under: 1\r\n"), 400, E400),
        case("underscore dropped", "drop", head("GET", "x_under: 1\r\n"), 200, ""),
        case(
            "CL and TE",
            "dflt",
            head("POST", &format!("Content-Length: 3\r\n{te}")) + "3\r\nabc\r\n0\r\n\r\n",
            400,
            E400,
        ),
        Case {
            remora_diff: Some("close: hyper ends a connection whose request had Content-Length and Transfer-Encoding"),
            ..case(
                "CL and TE with allow_chunked_length",
                "chunklen",
                head("POST", &format!("Content-Length: 3\r\n{te}")) + "3\r\nabc\r\n0\r\n\r\n",
                200,
                "",
            )
        },
        case(
            "TE identity, chunked",
            "dflt",
            head("POST", "Transfer-Encoding: identity, chunked\r\n") + "0\r\n\r\n",
            501,
            E501,
        ),
        case("TE gzip", "dflt", head("POST", "Transfer-Encoding: gzip\r\n"), 501, E501),
        case("TE twice", "dflt", head("POST", &format!("{te}{te}")) + "0\r\n\r\n", 501, E501),
        case(
            "CL twice, same value",
            "dflt",
            head("POST", "Content-Length: 3\r\nContent-Length: 3\r\n") + "abc",
            400,
            E400,
        ),
        case("CL 3, 3", "dflt", head("POST", "Content-Length: 3, 3\r\n") + "abc", 400, E400),
        case(
            "CL twice, different",
            "dflt",
            head("POST", "Content-Length: 3\r\nContent-Length: 4\r\n") + "abcd",
            400,
            E400,
        ),
        case("CL +3", "dflt", head("POST", "Content-Length: +3\r\n") + "abc", 400, E400),
        case("unknown method", "dflt", head("FOO", ""), 400, E400),
        case("lowercase method", "dflt", head("get", ""), 400, E400),
        case("bad chunk size", "dflt", head("POST", te) + "zz\r\nabc\r\n0\r\n\r\n", 400, E400),
        case("bare LF", "dflt", "GET / HTTP/1.1\nHost: limits.test\n\n", 200, ""),
        case("chunk size with BWS and extension", "dflt", head("POST", te) + "3 ;e=1\r\nabc\r\n0\r\n\r\n", 200, ""),
        Case {
            remora_diff: Some("status: hyper's 16 KB trailer limit fails the body first: 400, the client's error"),
            ..case(
                "trailers over the limit",
                "dflt",
                head("POST", te) + "3\r\nabc\r\n0\r\n" + &big(70 << 10) + "\r\n",
                431,
                E431,
            )
        },
        case("CONNECT without config", "dflt", "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n", 404, ""),
        case(
            "websocket without config",
            "dflt",
            head("GET", "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"),
            403,
            "",
        ),
        case(
            "h2c upgrade ignored",
            "dflt",
            head(
                "GET",
                "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n",
            ),
            200,
            "",
        ),
    ];
    // Bodies are not header blocks: an 8 KB body on the 4 KB listener, then a second request.
    let body = "b".repeat(8 << 10);
    let mut c = case(
        "CL body then a request",
        "tight",
        head("POST", &format!("Content-Length: {}\r\n", body.len())) + &body + &head("GET", ""),
        200,
        "",
    );
    c.expect.push((200, ""));
    v.push(c);
    let mut c = case(
        "chunked body then a request",
        "tight",
        head("POST", te) + &format!("{:x}\r\n{body}\r\n0\r\nx-t: 1\r\n\r\n", body.len()) + &head("GET", ""),
        200,
        "",
    );
    c.expect.push((200, ""));
    v.push(c);
    v
}

/// What one proxy answered to every case, and its stats after.
struct Observed {
    replies: Vec<Vec<Reply>>,
    stats: Vec<(String, i64)>,
}

const STATS: &[&str] = &[
    "http.dflt.downstream_cx_protocol_error",
    "http.dflt.downstream_rq_4xx",
    "http.dflt.downstream_rq_total",
    "http.tight.downstream_cx_protocol_error",
    "http.tight.downstream_rq_4xx",
    "http.tight.downstream_rq_total",
    "http1.requests_rejected_with_underscores_in_headers",
    "http1.dropped_headers_with_underscores",
    "cluster.a.upstream_rq_5xx",
];

fn observe(kind: Kind, cases: &[Case]) -> Observed {
    let run = Run::start(kind);
    let replies = cases.iter().map(|c| exchange(run.port(c.listener), &c.data, c.expect.len())).collect();
    let stats = STATS.iter().map(|s| (s.to_string(), run.stat(s))).collect();
    Observed { replies, stats }
}

#[test]
fn http1_limits_and_framing_as_envoy() {
    let cases = h1_cases();
    let runs: Vec<(Kind, Observed)> = kinds().into_iter().map(|k| (k, observe(k, &cases))).collect();
    let mut failures = Vec::new();
    for (kind, o) in &runs {
        for (c, got) in cases.iter().zip(&o.replies) {
            let want: Vec<(u16, &str)> = c.expect.clone();
            let seen: Vec<(u16, &str)> =
                got.iter().map(|r| (r.status, if r.status == 200 { "" } else { r.body.as_str() })).collect();
            let diff = if *kind == Kind::Remora { c.remora_diff.unwrap_or("") } else { "" };
            if seen != want && !diff.starts_with("status") {
                failures.push(format!("{} {}: want {want:?}, got {seen:?}", kind.name(), c.name));
                continue;
            }
            let last = got.last().unwrap();
            if (c.closes != last.conn_close || c.closes != last.closed) && !diff.starts_with("close") {
                failures.push(format!(
                    "{} {}: connection: close {} closed {} (want {})",
                    kind.name(),
                    c.name,
                    last.conn_close,
                    last.closed,
                    c.closes
                ));
            }
        }
    }
    // The stats move as Envoy's: every refusal is the client's error, none the upstream's.
    let envoy = &runs[0].1.stats;
    assert!(envoy.iter().any(|(n, v)| n == "http.dflt.downstream_cx_protocol_error" && *v >= 15), "{envoy:?}");
    assert!(envoy.iter().any(|(n, v)| n == "cluster.a.upstream_rq_5xx" && *v == 0), "{envoy:?}");
    for (kind, o) in runs.iter().skip(1) {
        if &o.stats != envoy {
            failures.push(format!("{} stats {:?}\n  envoy stats {envoy:?}", kind.name(), o.stats));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn request_headers_timeout_as_envoy() {
    for kind in kinds() {
        let run = Run::start(kind);
        // A header block that never ends: 408 after request_headers_timeout (1 s), then close.
        let r = exchange(run.port("hdrto"), b"GET / HTTP/1.1\r\nHost: limits.test\r\n", 1);
        let want = Reply { status: 408, body: "request header timeout".into(), conn_close: true, closed: true };
        assert_eq!(r, vec![want], "{}", kind.name());
        // A complete request is not affected.
        let r = exchange(run.port("hdrto"), head("GET", "").as_bytes(), 1);
        assert_eq!(r.first().map(|r| r.status), Some(200), "{}", kind.name());
        assert_eq!(run.stat("http.hdrto.downstream_rq_header_timeout"), 1, "{}", kind.name());
        assert_eq!(run.stat("http.hdrto.downstream_rq_4xx"), 1, "{}", kind.name());
    }
}

/// The largest `n` for which `ok(n)` holds, `ok` being true up to a point and false after.
fn boundary(lo: usize, hi: usize, ok: impl Fn(usize) -> bool) -> usize {
    assert!(ok(lo) && !ok(hi), "the boundary is not within {lo}..{hi}");
    let (mut lo, mut hi) = (lo, hi);
    while lo + 1 < hi {
        let m = (lo + hi) / 2;
        if ok(m) { lo = m } else { hi = m }
    }
    lo
}

#[test]
fn http2_limits_as_envoy() {
    let mut found = Vec::new();
    for kind in kinds() {
        let run = Run::start(kind);
        let port = run.port("tight");
        let h2 = |extra: &[(String, String)]| {
            let mut r = Request::get("/").h2c().host("limits.test");
            for (k, v) in extra {
                r = r.header(k, v);
            }
            curl(port, &r).unwrap()
        };
        // Over the limits, Envoy resets the stream (curl: no status, HTTP/2 stream error).
        let size = boundary(3000, 5000, |n| h2(&[("x-big".into(), "a".repeat(n))]).status == 200);
        let count = boundary(1, 40, |n| {
            h2(&(0..n).map(|i| (format!("x-h{i}"), "v".to_string())).collect::<Vec<_>>()).status == 200
        });
        let over = h2(&(0..count + 1).map(|i| (format!("x-h{i}"), "v".to_string())).collect::<Vec<_>>());
        assert_eq!((over.status, over.curl_exit), (0, 92), "{}: a reset stream", kind.name());
        let under = h2(&[("x_under".into(), "1".into())]);
        assert_eq!((under.status, under.curl_exit), (0, 92), "{}: underscore rejected", kind.name());
        let dropped = curl(run.port("drop"), &Request::get("/").h2c().header("x_under", "1")).unwrap();
        assert_eq!(dropped.status, 200, "{}", kind.name());
        let seen = dropped.json().unwrap()["headers"].as_array().unwrap().iter().any(|h| h[0] == "x_under");
        assert!(!seen, "{}: x_under reached the upstream", kind.name());
        assert_eq!(run.stat("http2.requests_rejected_with_underscores_in_headers"), 1, "{}", kind.name());
        assert_eq!(run.stat("http2.dropped_headers_with_underscores"), 1, "{}", kind.name());
        // A reset stream counts as a request, not as a completed one.
        let stats: Vec<i64> = ["downstream_rq_total", "downstream_rq_completed", "downstream_rq_2xx"]
            .iter()
            .map(|n| run.stat(&format!("http.tight.{n}")))
            .collect();
        found.push((kind.name(), size, count, stats));
    }
    // The same limits on HTTP/2 as on HTTP/1: names plus values (pseudo-headers included) up to
    // 4096 bytes, 20 fields with the pseudo-headers.
    for w in found.windows(2) {
        assert_eq!((w[0].1, w[0].2, &w[0].3), (w[1].1, w[1].2, &w[1].3), "{found:?}");
    }
}

/// Whether the peer closed the connection within the read timeout.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

/// nghttp's frames for `n` concurrent requests on one h2c connection: (statuses, GOAWAY seen).
fn nghttp(port: u16, n: usize) -> (Vec<u16>, bool) {
    let urls: Vec<String> = (0..n).map(|i| format!("http://127.0.0.1:{port}/r{i}")).collect();
    let out = std::process::Command::new("nghttp")
        .arg("-v")
        .args(&urls)
        .output()
        .expect("nghttp (scripts/install-test-deps)");
    let text = String::from_utf8_lossy(&out.stdout);
    let statuses =
        text.lines().filter_map(|l| l.split(":status: ").nth(1)).filter_map(|s| s.trim().parse().ok()).collect();
    (statuses, text.contains("recv GOAWAY"))
}

#[test]
fn requests_per_connection_and_connection_duration_as_envoy() {
    for kind in kinds() {
        let run = Run::start(kind);
        let k = kind.name();
        // max_requests_per_connection 2: the second response closes the HTTP/1 connection.
        let mut s = TcpStream::connect(("127.0.0.1", run.port("maxrq"))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        let mut replies = Vec::new();
        for _ in 0..2 {
            s.write_all(head("GET", "").as_bytes()).unwrap();
            replies.push(read_reply(&mut s, &mut buf).map(|r| (r.status, r.conn_close)));
        }
        assert_eq!(replies, vec![Some((200, false)), Some((200, true))], "{k}");
        assert!(closed_by_peer(&mut s), "{k}: the connection stays open after the last request");
        // HTTP/2: a GOAWAY once the limit is reached; the streams already open are served.
        let (statuses, goaway) = nghttp(run.port("maxrq"), 3);
        assert_eq!((statuses, goaway), (vec![200, 200, 200], true), "{k}");
        assert_eq!(run.stat("http.maxrq.downstream_cx_max_requests_reached"), 3, "{k}");

        // max_connection_duration 1 s: an idle HTTP/1 connection is closed when it ends.
        let mut s = TcpStream::connect(("127.0.0.1", run.port("maxdur"))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(head("GET", "").as_bytes()).unwrap();
        let mut buf = Vec::new();
        assert_eq!(read_reply(&mut s, &mut buf).map(|r| (r.status, r.conn_close)), Some((200, false)), "{k}");
        assert!(closed_by_peer(&mut s), "{k}: open after max_connection_duration");
        // A request in flight when the time ends is answered with `connection: close`.
        let mut s = TcpStream::connect(("127.0.0.1", run.port("maxdur"))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(head("GET", "x-echo-delay-ms: 1500\r\n").as_bytes()).unwrap();
        let r = read_reply(&mut s, &mut Vec::new()).map(|r| (r.status, r.conn_close, r.closed));
        assert_eq!(r, Some((200, true, true)), "{k}");
        assert_eq!(run.stat("http.maxdur.downstream_cx_max_duration_reached"), 2, "{k}");
    }
}

#[test]
fn idle_timeout_as_envoy() {
    for kind in kinds() {
        let run = Run::start(kind);
        let k = kind.name();
        // idle_timeout 1 s: a stream in flight longer than that is not cut ...
        let mut s = TcpStream::connect(("127.0.0.1", run.port("idle"))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(head("GET", "x-echo-delay-ms: 1500\r\n").as_bytes()).unwrap();
        let mut buf = Vec::new();
        assert_eq!(read_reply(&mut s, &mut buf).map(|r| (r.status, r.conn_close)), Some((200, false)), "{k}");
        // ... and the connection closes once it has had no stream for that long.
        assert!(closed_by_peer(&mut s), "{k}: open after the idle timeout");
        assert_eq!(run.stat("http.idle.downstream_cx_idle_timeout"), 1, "{k}");
    }
}

/// `--mode validate` on a one-listener bootstrap with `hcm` spliced into the HCM and `cluster`
/// into the cluster: (exit code, output).
fn validate(bin: &std::path::Path, hcm: &str, cluster: &str) -> (i32, String) {
    let yaml = format!(
        r#"static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: 10000}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l
          {hcm}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
          route_config: {{virtual_hosts: [{{name: vh, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: a}}}}]}}]}}
  clusters:
  - name: a
    connect_timeout: 1s
    {cluster}
    load_assignment: {{cluster_name: a, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 10001}}}}}}}}]}}]}}
"#
    );
    let dir = std::env::temp_dir().join(format!("remora-limits-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("b{}.yaml", fastrand_name(&yaml)));
    std::fs::write(&file, &yaml).unwrap();
    let out =
        std::process::Command::new(bin).args(["--mode", "validate", "-l", "error", "-c"]).arg(&file).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn fastrand_name(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

#[test]
fn limit_values_validated_as_envoy() {
    let envoy = tests::envoy_bin().expect("no reference Envoy");
    let remora = tests::remora_bin().ok().flatten();
    for (hcm, verdict) in [
        ("max_request_headers_kb: 8192", 0),
        ("max_request_headers_kb: 0", 1),
        ("max_request_headers_kb: 8193", 1),
        ("common_http_protocol_options: {max_headers_count: 0}", 1),
        ("common_http_protocol_options: {max_headers_count: 1, headers_with_underscores_action: DROP_HEADER}", 0),
    ] {
        assert_eq!(validate(&envoy, hcm, "").0, verdict, "envoy: {hcm}");
        if let Some(r) = &remora {
            let (code, text) = validate(r, hcm, "");
            assert_eq!(code, verdict, "remora: {hcm}: {text}");
        }
    }
    // On a cluster (upstream responses) the header limits are not implemented: Envoy accepts,
    // remora refuses with the field's path.
    let cluster = "common_http_protocol_options: {max_headers_count: 50}";
    assert_eq!(validate(&envoy, "", cluster).0, 0);
    if let Some(r) = &remora {
        let (code, text) = validate(r, "", cluster);
        assert_eq!(code, 1, "{text}");
        assert!(text.contains("common_http_protocol_options.max_headers_count"), "{text}");
    }
}
