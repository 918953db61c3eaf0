//! The test upstreams of `diff_health.rs`: an HTTP/1.1 server with a scriptable health path that
//! also answers TCP checks, a real grpc.health.v1 server, and the client side of the traffic.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// A test upstream: HTTP/1.1 keep-alive answering its name, `/healthz` with a settable status
/// (or [`CLOSE`], [`GARBAGE`], [`HANG`], [`RESET`]), and `PING` with `PONG` (or `NOPE`) for TCP
/// checks.
pub struct Srv {
    pub port: u16,
    pub hc_status: Arc<AtomicU16>,
    pub pong: Arc<AtomicBool>,
    /// (Host, User-Agent) of each health check request.
    pub hc_seen: Arc<Mutex<Vec<(String, String)>>>,
}

pub const CLOSE: u16 = 0;
pub const GARBAGE: u16 = 1;
pub const HANG: u16 = 2;
pub const RESET: u16 = 3;
/// 200 with `x-envoy-degraded`.
pub const DEGRADED: u16 = 4;
/// 200 with the body `status: ok` and `x-envoy-upstream-healthchecked-cluster: svc-a`.
pub const SERVICE: u16 = 5;
/// 200 with the body `status: ok`, no service name.
pub const BODY_ONLY: u16 = 6;
/// 503 with `x-envoy-immediate-health-check-fail`.
pub const IMMEDIATE_FAIL: u16 = 7;

fn serve(
    mut s: TcpStream,
    name: String,
    status: Arc<AtomicU16>,
    pong: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(String, String)>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        loop {
            if buf.starts_with(b"PING") {
                buf.drain(..4);
                let r: &[u8] = if pong.load(Ordering::SeqCst) { b"PONG" } else { b"NOPE" };
                if s.write_all(r).is_err() {
                    return;
                }
                continue;
            }
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { break };
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let mut lines = head.lines();
            let path = lines.next().and_then(|l| l.split(' ').nth(1)).unwrap_or("").to_string();
            let hdr = |n: &str| {
                head.lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case(n))
                    .map(|(_, v)| v.trim().to_string())
                    .unwrap_or_default()
            };
            let r = if path == "/healthz" {
                seen.lock().unwrap().push((hdr("host"), hdr("user-agent")));
                match status.load(Ordering::SeqCst) {
                    CLOSE => {
                        let _ = s.shutdown(Shutdown::Both);
                        return;
                    }
                    GARBAGE => "\u{1}garbage \u{7f}\r\nnot: http\r\n\r\n".to_string(),
                    HANG => continue,
                    RESET => {
                        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                        return;
                    }
                    DEGRADED => "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-envoy-degraded: 1\r\n\r\nhc".to_string(),
                    SERVICE => "HTTP/1.1 200 OK\r\ncontent-length: 10\r\nx-envoy-upstream-healthchecked-cluster: svc-a\r\n\r\nstatus: ok"
                        .to_string(),
                    BODY_ONLY => "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nstatus: ok".to_string(),
                    IMMEDIATE_FAIL => {
                        "HTTP/1.1 503 X\r\ncontent-length: 2\r\nx-envoy-immediate-health-check-fail: true\r\n\r\nhc"
                            .to_string()
                    }
                    code => format!("HTTP/1.1 {code} X\r\ncontent-length: 2\r\n\r\nhc"),
                }
            } else {
                // Upstreams named `zf*` fail every request (their health checks pass).
                let code = if name.starts_with("zf") { "503 Service Unavailable" } else { "200 OK" };
                format!("HTTP/1.1 {code}\r\ncontent-length: {}\r\nx-upstream: {name}\r\n\r\n{name}", name.len())
            };
            if s.write_all(r.as_bytes()).is_err() {
                return;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

pub fn start_srv(name: &str) -> Srv {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let srv = Srv {
        port,
        hc_status: Arc::new(AtomicU16::new(200)),
        pong: Arc::new(AtomicBool::new(true)),
        hc_seen: Arc::default(),
    };
    let (st, pong, seen, name) = (srv.hc_status.clone(), srv.pong.clone(), srv.hc_seen.clone(), name.to_string());
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let (st, pong, seen, name) = (st.clone(), pong.clone(), seen.clone(), name.clone());
            thread::spawn(move || serve(s, name, st, pong, seen));
        }
    });
    srv
}

/// A real grpc.health.v1 server (tonic-health) whose service "svc" is serving or not.
pub struct Grpc {
    pub port: u16,
    pub reporter: tonic_health::server::HealthReporter,
}

pub fn start_grpc(rt: &tokio::runtime::Runtime, serving: bool) -> Grpc {
    let (reporter, svc) = tonic_health::server::health_reporter();
    let status = if serving { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing };
    rt.block_on(reporter.set_service_status("svc", status));
    let incoming =
        rt.block_on(async { tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()) }).unwrap();
    let port = incoming.local_addr().unwrap().port();
    rt.spawn(tonic::transport::Server::builder().add_service(svc).serve_with_incoming(incoming));
    Grpc { port, reporter }
}

/// One HTTP/1.1 request through the proxy: the upstream's name (or the status when not 200).
pub fn get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: health.test\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.lines().next().and_then(|l| l.split(' ').nth(1)).unwrap_or("0").to_string();
    match text.split_once("\r\n\r\n") {
        Some((_, body)) if status == "200" => body.to_string(),
        _ => format!("status {status}"),
    }
}

/// Which upstreams `n` requests reached (name -> count).
pub fn spread(port: u16, path: &str, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        *m.entry(get(port, path)).or_default() += 1;
    }
    m
}

/// The upstreams a spread reached.
pub fn names(m: &BTreeMap<String, usize>) -> Vec<String> {
    m.keys().cloned().collect()
}
