//! The progress line on stderr: rewritten in place on a terminal, one line per step otherwise.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static OPEN_LINE: AtomicBool = AtomicBool::new(false);

fn tty() -> bool {
    std::io::stderr().is_terminal()
}

/// A status line: `[elapsed] what`.
pub fn status(start: Instant, what: &str) {
    let secs = start.elapsed().as_secs();
    let line = format!("[{:>2}:{:02}] {what}", secs / 60, secs % 60);
    let mut err = std::io::stderr().lock();
    if tty() {
        let _ = write!(err, "\r\x1b[K{line}");
        OPEN_LINE.store(true, Ordering::Relaxed);
    } else {
        let _ = writeln!(err, "{line}");
    }
    let _ = err.flush();
}

/// A line that stays (setup steps, warnings, results).
pub fn note(what: &str) {
    let mut err = std::io::stderr().lock();
    if OPEN_LINE.swap(false, Ordering::Relaxed) {
        let _ = writeln!(err);
    }
    let _ = writeln!(err, "bench: {what}");
}
