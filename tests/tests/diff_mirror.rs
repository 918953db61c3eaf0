//! Differential test of request mirroring (tests/configs/diff_mirror.yaml) against the reference
//! Envoy on the same bootstrap: the mirror receives the method, path, body and Envoy's `-shadow`
//! host (before the port), unless the suffix is disabled; a 0 % runtime fraction mirrors nothing;
//! `cluster_header` picks the mirror cluster per request; the client always gets the main
//! cluster's answer. What the recording mirror saw must be equal for both proxies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tests::{Kind, Options, Proxy, Upstreams, Vars};

/// One request the mirror saw: (method, path, host, body).
type Request = (String, String, String, String);
type Seen = Arc<Mutex<Vec<Request>>>;

/// A keep-alive HTTP/1.1 upstream that records each request and answers 200.
fn recorder() -> (u16, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let seen = s2.clone();
            thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        let mut lines = head.split("\r\n");
                        let mut first = lines.next().unwrap_or("").split(' ');
                        let (method, path) =
                            (first.next().unwrap_or("").to_string(), first.next().unwrap_or("").to_string());
                        let mut host = String::new();
                        let mut len = 0usize;
                        for l in lines {
                            if let Some((k, v)) = l.split_once(':') {
                                match k.trim().to_ascii_lowercase().as_str() {
                                    "host" => host = v.trim().to_string(),
                                    "content-length" => len = v.trim().parse().unwrap_or(0),
                                    _ => {}
                                }
                            }
                        }
                        while buf.len() < end + 4 + len {
                            match s.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                        buf.drain(..end + 4 + len);
                        seen.lock().unwrap().push((method, path, host, body));
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").is_err() {
                            return;
                        }
                        continue;
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (port, seen)
}

/// One HTTP/1.1 request; returns the status and the body.
fn send(port: u16, method: &str, path: &str, host: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Runs the requests through one proxy; returns what the mirror saw (sorted) and the statuses.
fn run(kind: Kind) -> (Vec<Request>, Vec<u16>) {
    let ups = Upstreams::start(&["a"]).unwrap();
    let (mirror_port, seen) = recorder();
    let mut vars = Vars::new();
    vars.set("upstream:a", ups.get("a").port());
    vars.set("mirror", mirror_port);
    let template = std::fs::read_to_string(tests::process::crate_dir().join("configs/diff_mirror.yaml")).unwrap();
    let opts = Options { log_level: "warning".into(), ..Options::default() };
    let proxy = Proxy::start(kind, &template, vars, &opts).unwrap();
    let port = proxy.port("listener");
    let statuses = vec![
        send(port, "POST", "/all/x?q=1", "svc.test:8080", &[], "hello mirror").0,
        send(port, "GET", "/all/get", "svc.test", &[], "").0,
        send(port, "POST", "/none", "svc.test", &[], "not mirrored").0,
        send(port, "PUT", "/nosuffix", "plain.test", &[], "same host").0,
        send(port, "POST", "/by-header", "h.test", &[("x-mirror-to", "mirror")], "picked").0,
        send(port, "POST", "/by-header", "h.test", &[("x-mirror-to", "nowhere")], "unknown cluster").0,
    ];
    // Mirrors are fire-and-forget: wait for the four that should arrive.
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.lock().unwrap().len() < 4 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(200));
    drop(proxy);
    let mut v = seen.lock().unwrap().clone();
    v.sort();
    (v, statuses)
}

#[test]
fn mirror_matches_envoy() {
    assert!(tests::envoy_bin().is_some(), "no reference Envoy (ENVOY_BIN; scripts/install-test-deps)");
    let (envoy, envoy_status) = run(Kind::Envoy);
    // Envoy's own behaviour, pinned so that a comparison of nothing cannot pass.
    assert_eq!(envoy_status, vec![200; 6], "every client gets the main cluster's answer");
    assert_eq!(envoy.len(), 4, "Envoy mirrored {envoy:?}");
    assert!(envoy.contains(&(
        "POST".into(),
        "/all/x?q=1".into(),
        "svc.test-shadow:8080".into(),
        "hello mirror".into()
    )));
    assert!(envoy.contains(&("PUT".into(), "/nosuffix".into(), "plain.test".into(), "same host".into())));
    let require = std::env::var("REMORA_DIFF_REQUIRE").is_ok_and(|v| v == "1");
    match tests::remora_bin() {
        Ok(Some(_)) => {}
        _ if require => panic!("REMORA_DIFF_REQUIRE=1 but the remora binary is not built"),
        _ => return,
    }
    let (remora, remora_status) = run(Kind::Remora);
    assert_eq!(remora_status, envoy_status);
    assert_eq!(remora, envoy, "what the mirror saw");
}
