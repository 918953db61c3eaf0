//! Helpers for the remora crate's end-to-end tests: start the real binary on a bootstrap, wait
//! for its admin `/ready`, stop it on drop; tiny loopback servers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Remora {
    pub child: Child,
    pub admin: u16,
    pub log: PathBuf,
}

impl Remora {
    /// Starts remora with `yaml` (placeholders already substituted); `admin` is its admin port.
    pub fn start(yaml: &str, admin: u16) -> Remora {
        let r = Remora::start_unready(yaml, admin);
        r.wait_ready();
        r
    }

    /// Starts remora without waiting for `/ready` (for tests of readiness itself).
    pub fn start_unready(yaml: &str, admin: u16) -> Remora {
        let dir = std::env::temp_dir().join(format!("remora-test-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("bootstrap.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let log = dir.join("remora.log");
        let child = Command::new(env!("CARGO_BIN_EXE_remora"))
            .args(["-c", cfg.to_str().unwrap(), "--concurrency", "2", "-l", "debug", "--drain-time-s", "5"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Remora { child, admin, log }
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some((200, _)) = http_get(self.admin, "/ready") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("remora not ready; log:\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
    }

    pub fn stat(&self, name: &str) -> Option<i64> {
        let (_, body) = http_get(self.admin, &format!("/stats?filter=^{}$", regex_escape(name)))?;
        body.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).and_then(|v| v.trim().parse().ok()))
    }

    pub fn sigterm(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
    }
}

impl Drop for Remora {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn regex_escape(s: &str) -> String {
    s.chars().map(|c| if c.is_alphanumeric() || c == '_' { c.to_string() } else { format!("\\{c}") }).collect()
}

/// A minimal HTTP/1.1 GET with `Connection: close`: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split(' ').nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
    Some((status, body))
}

/// A TCP server answering every connection with `greeting` then echoing what it reads.
pub fn tcp_echo(greeting: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.write_all(greeting.as_bytes());
                let mut b = [0u8; 4096];
                loop {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&b[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

/// An HTTP/1.1 server answering `200 <name>` after `delay`, keep-alive.
pub fn http_server(name: &'static str, delay: Duration) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut b = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut b) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&b[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    std::thread::sleep(delay);
                    let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}", name.len());
                    if s.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}
