//! Child processes pinned with `taskset`, killed on drop, and read through `/proc`.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A running child process: SIGTERM then SIGKILL when dropped, so an error anywhere in the
/// harness never leaves a proxy or an upstream behind.
pub struct Guard {
    pub name: String,
    /// The admin port, for Envoy and remora.
    pub admin: Option<u16>,
    log: PathBuf,
    child: Option<Child>,
}

impl Guard {
    /// Starts `program args` pinned to `cpu` (via `taskset -c`, which execs, so the pid is the
    /// program's own). stdout and stderr go to `log`.
    pub fn spawn_pinned(name: &str, cpu: &str, program: &Path, args: &[String], log: &Path) -> Result<Guard> {
        let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new("taskset")
            .arg("-c")
            .arg(cpu)
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: taskset -c {cpu} {}", program.display()))?;
        Ok(Guard { name: name.to_string(), admin: None, log: log.to_path_buf(), child: Some(child) })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Fails if the process has already exited (a bad config, a port in use).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            let tail = fs::read_to_string(&self.log).unwrap_or_default();
            let tail: String = tail.lines().rev().take(15).collect::<Vec<_>>().join("\n  ");
            bail!("{} exited early ({status}); last log lines (newest first):\n  {tail}", self.name);
        }
        Ok(())
    }

    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // Graceful first: nginx's master stops its workers on SIGTERM.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough on a machine we control).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a probe port")?;
    Ok(listener.local_addr()?.port())
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// `(ppid, utime + stime in ticks)` from `/proc/<pid>/stat`.
fn stat_of(pid: u32) -> Option<(u32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// The pid and all its descendants (nginx's workers under its master).
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                && let Some((ppid, _)) = stat_of(pid)
            {
                parents.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(parents.iter().filter(|(_, ppid)| *ppid == parent).map(|(pid, _)| *pid));
        i += 1;
    }
    tree
}

/// CPU seconds (user + system) used so far by the processes and their descendants.
pub fn cpu_seconds(roots: &[u32]) -> f64 {
    let ticks: u64 = roots.iter().flat_map(|r| process_tree(*r)).filter_map(|pid| stat_of(pid).map(|(_, t)| t)).sum();
    ticks as f64 / clock_ticks()
}

fn status_kb(pid: u32, key: &str) -> u64 {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resident memory in MiB summed over the process trees: `VmRSS` (now) or `VmHWM` (peak).
pub fn memory_mib(roots: &[u32], key: &str) -> f64 {
    let kb: u64 = roots.iter().flat_map(|r| process_tree(*r)).map(|pid| status_kb(pid, key)).sum();
    kb as f64 / 1024.0
}

/// One blocking HTTP/1.1 GET (Connection: close): `(status, body length)`.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, usize)> {
    http_get_text(addr, path).map(|(status, body)| (status, body.len()))
}

/// One blocking HTTP/1.1 GET (Connection: close): `(status, body)`.
pub fn http_get_text(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("no status line")?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// Polls `GET path` on `addr` until it answers 200 (and, if given, with a body of `body_len`);
/// fails at once if one of `guards` exits.
pub fn wait_http_ok(
    addr: SocketAddr,
    path: &str,
    body_len: Option<usize>,
    timeout: Duration,
    guards: &mut [Guard],
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        for g in guards.iter_mut() {
            g.check_alive()?;
        }
        match http_get(addr, path) {
            Ok((200, len)) if body_len.is_none_or(|want| want == len) => return Ok(()),
            Ok((status, len)) => last = format!("status {status}, body {len} bytes"),
            Err(e) => last = format!("{e:#}"),
        }
        sleep(Duration::from_millis(100));
    }
    bail!("http://{addr}{path} not ready after {timeout:?}: {last}")
}
