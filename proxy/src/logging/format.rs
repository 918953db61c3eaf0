//! Envoy's application-log line format: the spdlog pattern of `--log-format` (default
//! `[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v`), `--log-format-escaped`, and the bootstrap's
//! `application_log_config.log_format` (a text pattern, or a JSON object whose string values are
//! patterns). Times are UTC, as in a container with no TZ set.

use std::fmt::Write as _;
use std::time::SystemTime;

/// Envoy's default application-log pattern.
pub const DEFAULT_PATTERN: &str = "[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v";

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Lit(String),
    Flag(char, Option<Pad>),
}

/// spdlog's padding spec between `%` and the flag: `%8l` (right), `%-8l` (left), `%=8l`
/// (centre), a trailing `!` truncating to the width.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Pad {
    width: usize,
    align: char,
    truncate: bool,
}

/// A compiled log-line pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct LineFormat {
    pieces: Vec<Piece>,
    /// `--log-format-escaped`: the message's C-style escape sequences are escaped so a message
    /// never spans lines.
    escaped: bool,
}

/// What one log line says.
pub struct Record<'a> {
    pub time: SystemTime,
    /// Envoy's level name: trace, debug, info, warning, error, critical.
    pub level: &'static str,
    /// Envoy's logger (component) name.
    pub logger: &'a str,
    pub file: &'a str,
    pub line: u32,
    /// The function, where known (the module path otherwise).
    pub function: &'a str,
    pub thread: u64,
    pub message: &'a str,
}

/// The flags spdlog and Envoy define (Envoy's `--log-format` documentation).
const FLAGS: &str = "v_jtPnlLaAbBcCYDxmdHIMSefFprRTXzE%@sg#!";

impl LineFormat {
    /// Compiles a text pattern as spdlog does: an unknown flag is written as it stands, a lone
    /// `%` at the end is dropped, `%^`/`%$` (colour range) write nothing.
    pub fn text(pattern: &str, escaped: bool) -> LineFormat {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                lit.push(c);
                continue;
            }
            let mut pad = None;
            let align = match chars.peek() {
                Some(&a @ ('-' | '=')) => {
                    chars.next();
                    a
                }
                _ => '>',
            };
            let mut width = String::new();
            while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                width.push(d);
                chars.next();
            }
            if let Ok(width) = width.parse::<usize>() {
                let truncate = chars.peek() == Some(&'!');
                if truncate {
                    chars.next();
                }
                pad = Some(Pad { width: width.min(128), align, truncate });
            }
            match chars.next() {
                Some('%') => lit.push('%'),
                Some('^' | '$') => {}
                Some(f) if FLAGS.contains(f) => {
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Flag(f, pad));
                }
                Some(f) => {
                    lit.push('%');
                    lit.push(f);
                }
                None => {}
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        LineFormat { pieces, escaped }
    }

    /// Compiles `json_format`: the object is written as JSON (keys sorted, literal text escaped)
    /// and that text is the pattern, as Envoy does. `%v` and `%_` could break the JSON and are
    /// refused (use `%j`).
    pub fn json(object: &serde_json::Map<String, serde_json::Value>, escaped: bool) -> Result<LineFormat, String> {
        fn check(v: &serde_json::Value) -> Result<(), String> {
            match v {
                serde_json::Value::String(s) => {
                    let mut chars = s.chars();
                    while let Some(c) = chars.next() {
                        if c == '%' {
                            match chars.next() {
                                Some('v') | Some('_') => {
                                    return Err(format!(
                                        "usage of %v and %_ is unavailable for JSON log formats (in '{s}'): use %j"
                                    ));
                                }
                                _ => {}
                            }
                        }
                    }
                    Ok(())
                }
                serde_json::Value::Object(m) => m.values().try_for_each(check),
                serde_json::Value::Array(a) => a.iter().try_for_each(check),
                _ => Ok(()),
            }
        }
        object.values().try_for_each(check)?;
        let template = serde_json::Value::Object(object.clone()).to_string();
        Ok(LineFormat::text(&template, escaped))
    }

    /// Appends one line (with its newline) to `out`.
    pub fn render(&self, r: &Record<'_>, out: &mut String) {
        let t = Tm::new(r.time);
        let mut scratch = String::new();
        for p in &self.pieces {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Flag(f, None) => self.flag(*f, r, &t, out),
                Piece::Flag(f, Some(pad)) => {
                    scratch.clear();
                    self.flag(*f, r, &t, &mut scratch);
                    pad.apply(&scratch, out);
                }
            }
        }
        out.push('\n');
    }

    fn flag(&self, f: char, r: &Record<'_>, t: &Tm, out: &mut String) {
        {
            let _ = match f {
                'v' if self.escaped => {
                    escape_c(r.message, out);
                    Ok(())
                }
                'v' => {
                    out.push_str(r.message);
                    Ok(())
                }
                '_' => {
                    escape_c(r.message, out);
                    Ok(())
                }
                'j' => {
                    escape_json(r.message, out);
                    Ok(())
                }
                't' => write!(out, "{}", r.thread),
                'P' => write!(out, "{}", std::process::id()),
                'n' => {
                    out.push_str(r.logger);
                    Ok(())
                }
                'l' => {
                    out.push_str(r.level);
                    Ok(())
                }
                'L' => {
                    out.push(short_level(r.level));
                    Ok(())
                }
                'a' => write!(out, "{}", &WEEKDAYS[t.wday][..3]),
                'A' => write!(out, "{}", WEEKDAYS[t.wday]),
                'b' => write!(out, "{}", &MONTHS[t.mon as usize - 1][..3]),
                'B' => write!(out, "{}", MONTHS[t.mon as usize - 1]),
                'c' => write!(
                    out,
                    "{} {} {:02} {:02}:{:02}:{:02} {}",
                    &WEEKDAYS[t.wday][..3],
                    &MONTHS[t.mon as usize - 1][..3],
                    t.day,
                    t.hour,
                    t.min,
                    t.sec,
                    t.year
                ),
                'C' => write!(out, "{:02}", t.year.rem_euclid(100)),
                'Y' => write!(out, "{}", t.year),
                'D' | 'x' => write!(out, "{:02}/{:02}/{:02}", t.mon, t.day, t.year.rem_euclid(100)),
                'm' => write!(out, "{:02}", t.mon),
                'd' => write!(out, "{:02}", t.day),
                'H' => write!(out, "{:02}", t.hour),
                'I' => write!(out, "{:02}", hour12(t.hour)),
                'M' => write!(out, "{:02}", t.min),
                'S' => write!(out, "{:02}", t.sec),
                'e' => write!(out, "{:03}", t.nanos / 1_000_000),
                'f' => write!(out, "{:06}", t.nanos / 1_000),
                'F' => write!(out, "{:09}", t.nanos),
                'p' => write!(out, "{}", if t.hour < 12 { "AM" } else { "PM" }),
                'r' => write!(
                    out,
                    "{:02}:{:02}:{:02} {}",
                    hour12(t.hour),
                    t.min,
                    t.sec,
                    if t.hour < 12 { "AM" } else { "PM" }
                ),
                'R' => write!(out, "{:02}:{:02}", t.hour, t.min),
                'T' | 'X' => write!(out, "{:02}:{:02}:{:02}", t.hour, t.min, t.sec),
                'z' => write!(out, "+00:00"),
                'E' => write!(out, "{}", t.epoch),
                '@' => write!(out, "{}:{}", r.file, r.line),
                's' => write!(out, "{}", r.file.rsplit('/').next().unwrap_or(r.file)),
                'g' => write!(out, "{}", r.file),
                '#' => write!(out, "{}", r.line),
                '!' => write!(out, "{}", r.function),
                _ => Ok(()),
            };
        }
    }
}

impl Pad {
    fn apply(&self, s: &str, out: &mut String) {
        let len = s.chars().count();
        if len >= self.width {
            if self.truncate {
                out.extend(s.chars().take(self.width));
            } else {
                out.push_str(s);
            }
            return;
        }
        let fill = self.width - len;
        let (before, after) = match self.align {
            '-' => (0, fill),
            '=' => (fill / 2, fill - fill / 2),
            _ => (fill, 0),
        };
        out.extend(std::iter::repeat_n(' ', before));
        out.push_str(s);
        out.extend(std::iter::repeat_n(' ', after));
    }
}

fn short_level(level: &str) -> char {
    match level {
        "trace" => 'T',
        "debug" => 'D',
        "info" => 'I',
        "warning" => 'W',
        "error" => 'E',
        "critical" => 'C',
        _ => 'O',
    }
}

fn hour12(h: u32) -> u32 {
    match h % 12 {
        0 => 12,
        h => h,
    }
}

/// C-style escapes (absl::CEscape, what `--log-format-escaped` applies): the message stays on
/// one line.
fn escape_c(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '"' => out.push_str("\\\""),
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\{:03o}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// The inside of a JSON string (RFC 8259 escapes), for `%j`.
fn escape_json(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

const WEEKDAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// A UTC broken-down time.
struct Tm {
    epoch: i64,
    year: i64,
    mon: u32,
    day: u32,
    hour: u32,
    min: u32,
    sec: u32,
    nanos: u32,
    /// Index into WEEKDAYS (1970-01-01 was a Thursday).
    wday: usize,
}

impl Tm {
    fn new(t: SystemTime) -> Tm {
        let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let epoch = since.as_secs() as i64;
        let days = epoch.div_euclid(86_400);
        let sod = epoch.rem_euclid(86_400) as u32;
        let (year, mon, day) = crate::formatter::civil_from_days(days);
        Tm {
            epoch,
            year,
            mon,
            day,
            hour: sod / 3600,
            min: (sod / 60) % 60,
            sec: sod % 60,
            nanos: since.subsec_nanos(),
            wday: days.rem_euclid(7) as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record(message: &str) -> Record<'_> {
        Record {
            // 2018-03-27 15:25:06.008789123 UTC, a Tuesday
            time: std::time::UNIX_EPOCH + Duration::new(1_522_164_306, 8_789_123),
            level: "warning",
            logger: "upstream",
            file: "proxy/src/upstream/cluster.rs",
            line: 123,
            function: "remora::upstream::cluster",
            thread: 42,
            message,
        }
    }

    fn line(pattern: &str, escaped: bool, message: &str) -> String {
        let f = LineFormat::text(pattern, escaped);
        let mut out = String::new();
        f.render(&record(message), &mut out);
        out
    }

    #[test]
    fn envoy_default_pattern() {
        assert_eq!(
            line(DEFAULT_PATTERN, false, "cluster added"),
            "[2018-03-27 15:25:06.008][42][warning][upstream] [proxy/src/upstream/cluster.rs:123] cluster added\n"
        );
    }

    #[test]
    fn every_time_flag() {
        assert_eq!(
            line("%a %A %b %B %C %Y %D %x %m %d %H %I %M %S %e %f %F %p %r %R %T %X %z %E", false, ""),
            "Tue Tuesday Mar March 18 2018 03/27/18 03/27/18 03 27 15 03 25 06 008 008789 008789123 PM \
             03:25:06 PM 15:25 15:25:06 15:25:06 +00:00 1522164306\n"
        );
        assert_eq!(line("%c", false, ""), "Tue Mar 27 15:25:06 2018\n");
    }

    #[test]
    fn source_and_process_flags() {
        assert_eq!(
            line("%L %l %n %@ %s %g %# %! %t %%", false, "m"),
            "W warning upstream proxy/src/upstream/cluster.rs:123 cluster.rs proxy/src/upstream/cluster.rs 123 \
             remora::upstream::cluster 42 %\n"
        );
        assert_eq!(line("%P", false, ""), format!("{}\n", std::process::id()));
    }

    #[test]
    fn istio_pilot_agent_pattern() {
        // What pilot-agent passes by default (pkg/envoy/proxy.go).
        assert_eq!(
            line("%Y-%m-%dT%T.%fZ\t%l\tenvoy %n %g:%#\t%v\tthread=%t", false, "hello"),
            "2018-03-27T15:25:06.008789Z\twarning\tenvoy upstream proxy/src/upstream/cluster.rs:123\thello\tthread=42\n"
        );
    }

    #[test]
    fn escaping() {
        let msg = "two\nlines \"quoted\" \\ tab\t\u{1}";
        assert_eq!(line("%v", false, msg), format!("{msg}\n"));
        assert_eq!(line("%v", true, msg), "two\\nlines \\\"quoted\\\" \\\\ tab\\t\\001\n");
        assert_eq!(line("%_", false, "a\nb"), "a\\nb\n");
        assert_eq!(line("%j", false, msg), "two\\nlines \\\"quoted\\\" \\\\ tab\\t\\u0001\n");
    }

    #[test]
    fn json_format_is_a_json_object_per_line() {
        let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
            r#"{"time": "%Y-%m-%dT%T.%e%z", "level": "%l", "msg": "%j", "src": "%g:%#", "n": 1, "nested": {"t": "%t"}}"#,
        )
        .unwrap();
        let f = LineFormat::json(&obj, false).unwrap();
        let mut out = String::new();
        f.render(&record("say \"hi\"\nbye"), &mut out);
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(v["msg"], "say \"hi\"\nbye");
        assert_eq!(v["time"], "2018-03-27T15:25:06.008+00:00");
        assert_eq!(v["level"], "warning");
        assert_eq!(v["src"], "proxy/src/upstream/cluster.rs:123");
        assert_eq!(v["n"], 1);
        assert_eq!(v["nested"]["t"], "42");
    }

    #[test]
    fn padding_and_odd_flags_as_spdlog() {
        assert_eq!(line("[%8l][%-8n][%=9L][%3!n]", false, ""), "[ warning][upstream][    W    ][ups]\n");
        assert_eq!(line("%Q %^x%$ end%", false, ""), "%Q x end\n");
    }

    #[test]
    fn json_refuses_unescaped_messages() {
        let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(r#"{"m": "%v"}"#).unwrap();
        assert!(LineFormat::json(&obj, false).unwrap_err().contains("%j"));
        let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(r#"{"m": "%_"}"#).unwrap();
        assert!(LineFormat::json(&obj, false).is_err());
    }
}
