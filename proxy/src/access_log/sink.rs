//! Where access log lines go: a file (any path, `/dev/stdout` included) or the process's
//! stdout/stderr, each drained by its own background thread.
//!
//! Workers only send a line over a channel. The thread appends to a buffer and writes it when
//! 64 KiB are pending, when the flush interval (`--file-flush-interval-msec`, default 10 s, passed in when the sink opens) has
//! passed, or when asked to flush (shutdown). Sinks are shared by destination, like Envoy's
//! access log manager.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Pending bytes that trigger a write before the interval.
const FLUSH_SIZE: usize = 64 * 1024;

/// Envoy's default `--file-flush-interval-msec`.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    File(PathBuf),
    Stdout,
    Stderr,
}

enum Msg {
    Line(Vec<u8>),
    Flush(mpsc::Sender<()>),
}

/// A shared destination; dropping the last handle ends its thread after a final write.
pub struct Sink {
    tx: Option<mpsc::Sender<Msg>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Every open sink, by destination (config time only).
fn registry() -> &'static Mutex<HashMap<Destination, Weak<Sink>>> {
    static R: std::sync::OnceLock<Mutex<HashMap<Destination, Weak<Sink>>>> = std::sync::OnceLock::new();
    R.get_or_init(Default::default)
}

impl Sink {
    /// Opens (or shares) the sink for a destination. Files are opened now, as Envoy does, so a
    /// bad path is a config error.
    /// `flush` is `--file-flush-interval-msec`; a shared sink keeps the interval it opened with.
    pub fn open(dest: &Destination, flush: Duration) -> Result<Arc<Sink>, String> {
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = reg.get(dest).and_then(Weak::upgrade) {
            return Ok(s);
        }
        let out: Box<dyn Write + Send> = match dest {
            Destination::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("unable to open file '{}': {}", p.display(), io_reason(&e)))?,
            ),
            Destination::Stdout => Box::new(std::io::stdout()),
            Destination::Stderr => Box::new(std::io::stderr()),
        };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("access_log".into())
            .spawn(move || drain(rx, out, flush.max(Duration::from_millis(1))))
            .map_err(|e| format!("cannot start the access log thread: {e}"))?;
        let sink = Arc::new(Sink { tx: Some(tx), thread: Some(thread) });
        reg.retain(|_, w| w.strong_count() > 0);
        reg.insert(dest.clone(), Arc::downgrade(&sink));
        Ok(sink)
    }

    /// Queues a line (never blocks on I/O).
    pub fn write(&self, line: Vec<u8>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Line(line));
        }
    }

    /// Writes everything queued so far and waits for it (bounded).
    pub fn flush(&self) {
        if let Some(tx) = &self.tx {
            let (done_tx, done_rx) = mpsc::channel();
            if tx.send(Msg::Flush(done_tx)).is_ok() {
                let _ = done_rx.recv_timeout(Duration::from_secs(5));
            }
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // Closing the channel makes the thread write what is left and exit.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Flushes every open sink (at shutdown).
pub fn flush_all() {
    let sinks: Vec<Arc<Sink>> = {
        let reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        reg.values().filter_map(Weak::upgrade).collect()
    };
    for s in sinks {
        s.flush();
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "No such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "Permission denied".into(),
        _ => e.to_string(),
    }
}

fn drain(rx: mpsc::Receiver<Msg>, mut out: Box<dyn Write + Send>, interval: Duration) {
    let mut buf: Vec<u8> = Vec::with_capacity(FLUSH_SIZE);
    let mut last = Instant::now();
    let write_out = |buf: &mut Vec<u8>, out: &mut Box<dyn Write + Send>| {
        if !buf.is_empty() {
            if let Err(e) = out.write_all(buf).and_then(|_| out.flush()) {
                tracing::warn!(target: "remora::access_log", "access log write failed: {e}");
            }
            buf.clear();
        }
    };
    loop {
        let wait = interval.saturating_sub(last.elapsed());
        match rx.recv_timeout(wait) {
            Ok(Msg::Line(l)) => {
                buf.extend_from_slice(&l);
                if buf.len() >= FLUSH_SIZE {
                    write_out(&mut buf, &mut out);
                    last = Instant::now();
                }
            }
            Ok(Msg::Flush(done)) => {
                write_out(&mut buf, &mut out);
                last = Instant::now();
                let _ = done.send(());
            }
            Err(RecvTimeoutError::Timeout) => {
                write_out(&mut buf, &mut out);
                last = Instant::now();
            }
            Err(RecvTimeoutError::Disconnected) => {
                write_out(&mut buf, &mut out);
                return;
            }
        }
    }
}
