//! Load generators: wrk (closed loop, throughput) and a built-in open-loop HTTP/1.1 generator
//! with coordinated-omission correction (latency at a fixed request rate, wrk2-style).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What one wrk run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClosedLoop {
    pub rps: f64,
    pub requests: u64,
    pub errors: u64,
}

/// Runs `wrk` pinned to `cpu` against `http://addr/` for `secs` with `connections`.
pub fn wrk(wrk: &Path, cpu: &str, addr: SocketAddr, connections: u32, secs: u32) -> Result<ClosedLoop> {
    let out = Command::new("taskset")
        .arg("-c")
        .arg(cpu)
        .arg(wrk)
        .args(["-t1", &format!("-c{connections}"), &format!("-d{secs}s")])
        .arg(format!("http://{addr}/"))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed ({}): {text}{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&text)
}

fn parse_wrk(text: &str) -> Result<ClosedLoop> {
    let field = |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix)).map(str::trim);
    let rps: f64 = field("Requests/sec:").context("no Requests/sec in wrk output")?.parse()?;
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let mut errors: u64 = field("Non-2xx or 3xx responses:").and_then(|n| n.parse().ok()).unwrap_or(0);
    if let Some(socket) = field("Socket errors:") {
        // "connect 0, read 0, write 0, timeout 0"
        errors += socket.split(',').filter_map(|p| p.split_whitespace().nth(1)?.parse::<u64>().ok()).sum::<u64>();
    }
    Ok(ClosedLoop { rps, requests, errors })
}

/// What one open-loop run measured (latencies in microseconds, warm-up excluded).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenLoop {
    pub rate: f64,
    pub achieved_rps: f64,
    /// All requests completed, warm-up included (for CPU per request).
    pub completed: u64,
    pub samples: u64,
    pub errors: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

#[derive(Debug, Clone)]
pub struct OpenLoopArgs {
    pub addr: SocketAddr,
    pub rate: f64,
    pub connections: u32,
    pub duration: Duration,
    pub warmup: Duration,
}

/// Runs the open-loop generator in this process (the `openloop` subcommand, which the harness
/// starts pinned to the load CPU).
pub fn run_open_loop(args: &OpenLoopArgs) -> Result<OpenLoop> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(open_loop(args.clone()))
}

struct ConnResult {
    latencies: Vec<u32>,
    completed: u64,
    errors: u64,
}

async fn open_loop(args: OpenLoopArgs) -> Result<OpenLoop> {
    let conns = args.connections.max(1);
    let interval = Duration::from_secs_f64(f64::from(conns) / args.rate);
    let stagger = Duration::from_secs_f64(1.0 / args.rate);
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let mut tasks = Vec::new();
    for i in 0..conns {
        let first = start + stagger * i;
        tasks.push(tokio::spawn(connection(args.addr, first, interval, measure_from, end)));
    }
    let mut latencies = Vec::new();
    let (mut completed, mut errors) = (0, 0);
    for task in tasks {
        let r = task.await??;
        latencies.extend(r.latencies);
        completed += r.completed;
        errors += r.errors;
    }
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let idx = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        f64::from(latencies[idx.clamp(1, latencies.len()) - 1])
    };
    Ok(OpenLoop {
        rate: args.rate,
        achieved_rps: latencies.len() as f64 / args.duration.as_secs_f64(),
        completed,
        samples: latencies.len() as u64,
        errors,
        p50_us: pct(50.0),
        p90_us: pct(90.0),
        p99_us: pct(99.0),
        p999_us: pct(99.9),
        max_us: pct(100.0),
    })
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: remora-bench\r\n\r\n";

/// One keep-alive connection sending at its share of the rate. Each request has an intended
/// send time on a fixed schedule. If the previous response arrived after that time (the system
/// under test held us up), latency counts from the intended time: the coordinated-omission
/// correction. Otherwise it counts from the actual send, so the generator's own timer slack is
/// not billed to the proxy.
async fn connection(
    addr: SocketAddr,
    first: Instant,
    interval: Duration,
    measure_from: Instant,
    end: Instant,
) -> Result<ConnResult> {
    let mut stream = Some(connect(addr).await?);
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut result = ConnResult { latencies: Vec::new(), completed: 0, errors: 0 };
    let mut intended = first;
    while intended < end {
        let now = Instant::now();
        let t0 = if now < intended {
            tokio::time::sleep_until(intended).await;
            Instant::now()
        } else {
            intended
        };
        let status = match stream.as_mut() {
            Some(s) => exchange(s, &mut buf).await,
            None => match connect(addr).await {
                Ok(s) => exchange(stream.insert(s), &mut buf).await,
                Err(e) => Err(e),
            },
        };
        let done = Instant::now();
        result.completed += 1;
        let Ok(status) = status else {
            // A reset or a close: count it, reconnect for the next request.
            result.errors += 1;
            stream = None;
            buf.clear();
            intended += interval;
            continue;
        };
        if status != 200 {
            result.errors += 1;
        } else if intended >= measure_from {
            let us = done.duration_since(t0).as_micros();
            result.latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
        }
        intended += interval;
    }
    Ok(result)
}

async fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn exchange(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<u16> {
    let io = async {
        stream.write_all(REQUEST).await?;
        read_response(stream, buf).await
    };
    tokio::time::timeout(Duration::from_secs(5), io).await.context("no response within 5 s")?
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns its status.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<u16> {
    loop {
        if let Some(head_end) = find(buf, b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..head_end]).context("non-UTF-8 head")?;
            let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("bad status line")?;
            let mut len = None;
            for line in head.split("\r\n").skip(1) {
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse::<usize>().ok();
                    } else if k.eq_ignore_ascii_case("transfer-encoding") {
                        bail!("chunked responses are not supported by the generator");
                    }
                }
            }
            let total = head_end + 4 + len.unwrap_or(0);
            while buf.len() < total {
                read_more(stream, buf).await?;
            }
            buf.drain(..total);
            return Ok(status);
        }
        read_more(stream, buf).await?;
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<()> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        bail!("connection closed by peer");
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let text = "Running 3s test @ http://127.0.0.1:1/\n  1 threads and 32 connections\n  \
            45678 requests in 3.00s, 50.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n\
            Non-2xx or 3xx responses: 4\nRequests/sec:  15226.00\nTransfer/sec:      16.67MB\n";
        let r = parse_wrk(text).unwrap();
        assert_eq!(r.requests, 45678);
        assert_eq!(r.errors, 7);
        assert!((r.rps - 15226.0).abs() < 0.01);
    }
}
