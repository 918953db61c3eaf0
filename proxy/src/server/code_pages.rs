//! Gives back the resident pages of code that only startup ran. Once the server is LIVE, the
//! executable's mappings that are read-only and were never written (text, rodata, unwind tables)
//! are dropped from the process's page tables with `madvise(MADV_DONTNEED)`. What serving runs
//! faults back in on first use (minor faults: the pages are still in the page cache); what only
//! startup ran (bootstrap decoding, building the field-guard and validation tables, the command
//! line parser) stays out of the resident set. The pages are clean copies of the binary's file,
//! so nothing is lost: the kernel drops them the same way under memory pressure.
//!
//! A mapping holding any anonymous page (copied on write, as the relocated `.data.rel.ro`) is
//! left alone: dropping it would lose what was written.

/// Drops the executable's clean read-only mappings; returns the KiB that were resident in them.
#[cfg(target_os = "linux")]
pub fn release_startup_code() -> u64 {
    let (Ok(exe), Ok(smaps)) = (std::fs::read_link("/proc/self/exe"), std::fs::read_to_string("/proc/self/smaps"))
    else {
        return 0;
    };
    let Some(exe) = exe.to_str() else { return 0 };
    let mut released = 0;
    for m in clean_mappings(&smaps, exe) {
        if madvise_dontneed(m.start, m.end - m.start) {
            released += m.rss_kib;
        }
    }
    released
}

#[cfg(not(target_os = "linux"))]
pub fn release_startup_code() -> u64 {
    0
}

#[derive(Debug, PartialEq)]
struct Mapping {
    start: usize,
    end: usize,
    rss_kib: u64,
}

/// The mappings of `exe` in `/proc/self/smaps` text that are not writable and hold no anonymous
/// page.
fn clean_mappings(smaps: &str, exe: &str) -> Vec<Mapping> {
    let mut out = Vec::new();
    // The mapping being read: (range, readable and not writable, of `exe`), its Rss and Anonymous.
    let mut cur: Option<(usize, usize, bool)> = None;
    let (mut rss, mut anon) = (0u64, None::<u64>);
    let flush = |cur: Option<(usize, usize, bool)>, rss: u64, anon: Option<u64>, out: &mut Vec<Mapping>| {
        if let Some((start, end, true)) = cur
            && anon == Some(0)
        {
            out.push(Mapping { start, end, rss_kib: rss });
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            flush(cur.take(), rss, anon, &mut out);
            let perms = fields.next().unwrap_or("");
            // Then offset, device and inode, then the path (which may hold spaces).
            let candidate =
                perms.starts_with('r') && perms.as_bytes().get(1) == Some(&b'-') && after_fields(line, 5) == exe;
            cur = Some((start, end, candidate));
            (rss, anon) = (0, None);
            continue;
        }
        let value = || fields.clone().next().and_then(|v| v.parse::<u64>().ok());
        match first {
            "Rss:" => rss = value().unwrap_or(0),
            "Anonymous:" => anon = value(),
            _ => {}
        }
    }
    flush(cur, rss, anon, &mut out);
    out
}

/// What follows the first `n` whitespace-separated fields of `line`, trimmed.
fn after_fields(line: &str, n: usize) -> &str {
    let mut s = line;
    for _ in 0..n {
        s = s.trim_start();
        s = &s[s.find(char::is_whitespace).unwrap_or(s.len())..];
    }
    s.trim()
}

#[allow(unsafe_code)]
fn madvise_dontneed(start: usize, len: usize) -> bool {
    // SAFETY: the range is a whole mapping of the executable's file that is not writable and has
    // no anonymous page; MADV_DONTNEED only drops its page-table entries, and the next access
    // maps the same file contents again. No Rust reference is invalidated.
    unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
5601ec768000-5601eccd9000 r--p 00000000 fe:00 5327854                    /opt/remora bin
Size:               5572 kB
Rss:                2400 kB
Anonymous:             0 kB
5601eccd9000-5601edbbd000 r-xp 00570000 fe:00 5327854                    /opt/remora bin
Rss:               11764 kB
Anonymous:             0 kB
5601edbbd000-5601edc3d000 r--p 01453000 fe:00 5327854                    /opt/remora bin
Rss:                 512 kB
Anonymous:           512 kB
5601edc3d000-5601edc42000 rw-p 014d2000 fe:00 5327854                    /opt/remora bin
Rss:                  20 kB
Anonymous:            20 kB
7f0000000000-7f0000001000 r-xp 00000000 fe:00 1                          /usr/lib/libc.so.6
Rss:                   4 kB
Anonymous:             0 kB
";

    #[test]
    fn only_clean_read_only_mappings_of_the_executable() {
        let got = clean_mappings(SMAPS, "/opt/remora bin");
        assert_eq!(
            got,
            vec![
                Mapping { start: 0x5601ec768000, end: 0x5601eccd9000, rss_kib: 2400 },
                Mapping { start: 0x5601eccd9000, end: 0x5601edbbd000, rss_kib: 11764 },
            ]
        );
        assert!(clean_mappings(SMAPS, "/opt/remora").is_empty());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn released_code_runs_again() {
        // The test binary's own code: resident before, dropped, then faulted back in by the
        // code that runs after (this assertion included).
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let resident = |s: &str| clean_mappings(s, exe.to_str().unwrap()).iter().map(|m| m.rss_kib).sum::<u64>();
        let before = resident(&std::fs::read_to_string("/proc/self/smaps").unwrap());
        assert!(before > 0);
        assert!(release_startup_code() > 0);
        let after = resident(&std::fs::read_to_string("/proc/self/smaps").unwrap());
        assert!(after < before, "{after} KiB resident after, {before} before");
    }
}
