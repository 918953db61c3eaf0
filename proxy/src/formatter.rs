//! Envoy's substitution formatter (`%DOWNSTREAM_REMOTE_ADDRESS%`, `%REQ(x-foo)%`, ...), compiled
//! once into literal and command segments. Used by header mutations (missing values render
//! empty) and access logs (missing values render `-`, or `null` and typed numbers in JSON).

use std::fmt::Write as _;
use std::net::SocketAddr;

use http::HeaderMap;

use crate::config::ConfigError;

#[derive(Debug, Clone, PartialEq)]
enum Command {
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamRemotePort,
    DownstreamDirectRemoteAddress,
    DownstreamDirectRemoteAddressWithoutPort,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamLocalPort,
    UpstreamRemoteAddress,
    UpstreamRemoteAddressWithoutPort,
    UpstreamRemotePort,
    UpstreamCluster,
    Protocol,
    Hostname,
    RouteName,
    ResponseCode,
    ResponseCodeDetails,
    ResponseFlags,
    ResponseFlagsLong,
    BytesReceived,
    BytesSent,
    Duration,
    RequestDuration,
    ResponseDuration,
    ResponseTxDuration,
    UpstreamLocalAddress,
    UpstreamLocalAddressWithoutPort,
    UpstreamLocalPort,
    UpstreamTransportFailureReason,
    ConnectionTerminationDetails,
    UpstreamClusterRaw,
    ConnectionId,
    DownstreamTlsVersion,
    RequestHeadersBytes,
    ResponseHeadersBytes,
    /// Known to Envoy but not tracked by remora (`DYNAMIC_METADATA`, `FILTER_STATE`, ...): `-`.
    Unavailable,
    StartTime(Option<String>),
    /// `%REQ(a?b):len%`
    Req(String, Option<String>, Option<usize>),
    Resp(String, Option<String>, Option<usize>),
    Trailer(String, Option<String>, Option<usize>),
    DownstreamPeerUriSan,
    DownstreamLocalUriSan,
    RequestedServerName,
    Environment(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Command(Command),
}

/// A compiled format string.
#[derive(Debug, Clone, PartialEq)]
pub struct Formatter {
    segments: Vec<Segment>,
}

/// What a formatter reads from the request being handled. Unset values render as Envoy does
/// for header values: empty (the caller decides whether an empty header is kept).
#[derive(Default, Clone, Copy)]
pub struct FormatContext<'a> {
    pub downstream_remote: Option<SocketAddr>,
    pub downstream_direct_remote: Option<SocketAddr>,
    pub downstream_local: Option<SocketAddr>,
    pub upstream_remote: Option<SocketAddr>,
    pub upstream_cluster: Option<&'a str>,
    pub protocol: Option<&'static str>,
    pub route_name: Option<&'a str>,
    pub response_code: Option<u16>,
    pub request_headers: Option<&'a HeaderMap>,
    pub response_headers: Option<&'a HeaderMap>,
    pub peer_uri_san: Option<&'a str>,
    pub local_uri_san: Option<&'a str>,
    pub server_name: Option<&'a str>,
    pub hostname: Option<&'a str>,
    /// The request's pseudo-headers, for `%REQ(:METHOD)%` and friends.
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    pub authority: Option<&'a str>,
    pub scheme: Option<&'a str>,
    /// Access-log facts (set when a request is logged).
    pub log: Option<&'a LogFacts<'a>>,
}

/// What only an access log knows about a finished request.
#[derive(Default, Clone, Copy)]
pub struct LogFacts<'a> {
    pub start_time: Option<std::time::SystemTime>,
    pub duration: Option<std::time::Duration>,
    pub request_duration: Option<std::time::Duration>,
    pub response_duration: Option<std::time::Duration>,
    pub response_flags: crate::access_log::ResponseFlags,
    pub response_code_details: Option<&'a str>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub response_trailers: Option<&'a HeaderMap>,
    pub connection_id: Option<u64>,
    pub tls_version: Option<&'a str>,
}

/// A rendered command: missing, text or a number (numbers stay numbers in JSON logs).
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    None,
    Str(std::borrow::Cow<'a, str>),
    Num(u64),
}

impl Value<'_> {
    fn push_to(&self, out: &mut String, missing: &str) {
        match self {
            Value::None => out.push_str(missing),
            Value::Str(s) => out.push_str(s),
            Value::Num(n) => {
                let _ = write!(out, "{n}");
            }
        }
    }
}

impl Formatter {
    /// A formatter that only produces `s` (no `%` processing).
    pub fn literal(s: &str) -> Self {
        Formatter { segments: vec![Segment::Literal(s.to_string())] }
    }

    pub fn parse(s: &str, field: &str) -> Result<Self, ConfigError> {
        let mut segments = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('%') {
            lit.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            if let Some(r) = rest.strip_prefix('%') {
                lit.push('%');
                rest = r;
                continue;
            }
            let Some(end) = find_command_end(rest) else {
                return Err(ConfigError::new(field, format!("unterminated '%' in format string {s:?}")));
            };
            let cmd = parse_command(&rest[..end]).map_err(|r| ConfigError::new(field, r))?;
            if !lit.is_empty() {
                segments.push(Segment::Literal(std::mem::take(&mut lit)));
            }
            segments.push(Segment::Command(cmd));
            rest = &rest[end + 1..];
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            segments.push(Segment::Literal(lit));
        }
        Ok(Formatter { segments })
    }

    /// True when the output reads request headers (`%REQ(...)%`).
    pub fn uses_request_headers(&self) -> bool {
        self.segments.iter().any(|s| matches!(s, Segment::Command(Command::Req(..))))
    }

    /// True when the output does not depend on the request.
    pub fn is_static(&self) -> bool {
        self.segments.iter().all(|s| matches!(s, Segment::Literal(_)))
    }

    pub fn format(&self, cx: &FormatContext<'_>) -> String {
        if let [Segment::Literal(s)] = self.segments.as_slice() {
            return s.clone();
        }
        let mut out = String::new();
        for seg in &self.segments {
            match seg {
                Segment::Literal(s) => out.push_str(s),
                Segment::Command(Command::ResponseCode) if cx.response_code.is_none() => out.push('0'),
                Segment::Command(c) => value(c, cx).push_to(&mut out, ""),
            }
        }
        out
    }

    /// Access-log text: missing values are `-` (or nothing with `omit_empty_values`).
    pub fn format_log(&self, cx: &FormatContext<'_>, omit_empty: bool, out: &mut String) {
        let missing = if omit_empty { "" } else { "-" };
        for seg in &self.segments {
            match seg {
                Segment::Literal(s) => out.push_str(s),
                Segment::Command(c) => match value(c, cx) {
                    Value::Str(s) if s.is_empty() => out.push_str(missing),
                    v => v.push_to(out, missing),
                },
            }
        }
    }

    /// A JSON log value: a lone command keeps its type (number, string, null); anything else is
    /// the text rendering.
    pub fn format_json(&self, cx: &FormatContext<'_>, omit_empty: bool) -> serde_json::Value {
        if let [Segment::Command(c)] = self.segments.as_slice() {
            return match value(c, cx) {
                Value::None => serde_json::Value::Null,
                Value::Str(s) if s.is_empty() => serde_json::Value::Null,
                Value::Str(s) => serde_json::Value::String(s.into_owned()),
                Value::Num(n) => serde_json::Value::from(n),
            };
        }
        let mut out = String::new();
        self.format_log(cx, omit_empty, &mut out);
        serde_json::Value::String(out)
    }
}

/// Finds the closing '%' of a command, skipping over parentheses (a `%` may appear in args).
fn find_command_end(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            '%' if depth == 0 => return Some(i),
            _ => {}
        }
    }
    None
}

fn parse_command(s: &str) -> Result<Command, String> {
    // NAME, NAME(args), NAME(args):len
    let (name, args, len) = match s.find('(') {
        None => (s, None, None),
        Some(i) => {
            let close = s.rfind(')').ok_or_else(|| format!("missing ')' in %{s}%"))?;
            let tail = &s[close + 1..];
            let len = match tail.strip_prefix(':') {
                Some(n) => Some(n.parse::<usize>().map_err(|_| format!("invalid length in %{s}%"))?),
                None if tail.is_empty() => None,
                None => return Err(format!("unexpected text after ')' in %{s}%")),
            };
            (&s[..i], Some(&s[i + 1..close]), len)
        }
    };
    let header_args = |a: Option<&str>| -> Result<(String, Option<String>), String> {
        let a = a.ok_or_else(|| format!("%{name}% needs a header name"))?;
        let mut parts = a.splitn(2, '?');
        let main = parts.next().unwrap_or("").to_ascii_lowercase();
        let alt = parts.next().map(str::to_ascii_lowercase);
        Ok((main, alt))
    };
    Ok(match name {
        "DOWNSTREAM_REMOTE_ADDRESS" => Command::DownstreamRemoteAddress,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Command::DownstreamRemoteAddressWithoutPort,
        "DOWNSTREAM_REMOTE_PORT" => Command::DownstreamRemotePort,
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => Command::DownstreamDirectRemoteAddress,
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => Command::DownstreamDirectRemoteAddressWithoutPort,
        "DOWNSTREAM_LOCAL_ADDRESS" => Command::DownstreamLocalAddress,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Command::DownstreamLocalAddressWithoutPort,
        "DOWNSTREAM_LOCAL_PORT" => Command::DownstreamLocalPort,
        "UPSTREAM_REMOTE_ADDRESS" | "UPSTREAM_HOST" => Command::UpstreamRemoteAddress,
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Command::UpstreamRemoteAddressWithoutPort,
        "UPSTREAM_REMOTE_PORT" => Command::UpstreamRemotePort,
        "UPSTREAM_CLUSTER" => Command::UpstreamCluster,
        "PROTOCOL" => Command::Protocol,
        "HOSTNAME" => Command::Hostname,
        "ROUTE_NAME" => Command::RouteName,
        "RESPONSE_CODE" => Command::ResponseCode,
        "RESPONSE_CODE_DETAILS" => Command::ResponseCodeDetails,
        "RESPONSE_FLAGS" => Command::ResponseFlags,
        "RESPONSE_FLAGS_LONG" => Command::ResponseFlagsLong,
        "BYTES_RECEIVED" => Command::BytesReceived,
        "BYTES_SENT" => Command::BytesSent,
        "DURATION" => Command::Duration,
        "REQUEST_DURATION" => Command::RequestDuration,
        "RESPONSE_DURATION" => Command::ResponseDuration,
        "RESPONSE_TX_DURATION" => Command::ResponseTxDuration,
        "UPSTREAM_LOCAL_ADDRESS" => Command::UpstreamLocalAddress,
        "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Command::UpstreamLocalAddressWithoutPort,
        "UPSTREAM_LOCAL_PORT" => Command::UpstreamLocalPort,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => Command::UpstreamTransportFailureReason,
        "CONNECTION_TERMINATION_DETAILS" => Command::ConnectionTerminationDetails,
        "UPSTREAM_CLUSTER_RAW" => Command::UpstreamClusterRaw,
        "CONNECTION_ID" => Command::ConnectionId,
        "DOWNSTREAM_TLS_VERSION" => Command::DownstreamTlsVersion,
        "REQUEST_HEADERS_BYTES" => Command::RequestHeadersBytes,
        "RESPONSE_HEADERS_BYTES" => Command::ResponseHeadersBytes,
        "DYNAMIC_METADATA"
        | "CLUSTER_METADATA"
        | "UPSTREAM_METADATA"
        | "FILTER_STATE"
        | "UPSTREAM_FILTER_STATE"
        | "ROUTE_METADATA"
        | "VIRTUAL_CLUSTER_NAME"
        | "UPSTREAM_TRANSPORT_FAILURE_REASON_DETAILS"
        | "DOWNSTREAM_PEER_SUBJECT"
        | "DOWNSTREAM_LOCAL_SUBJECT"
        | "DOWNSTREAM_TLS_CIPHER"
        | "DOWNSTREAM_TLS_SESSION_ID"
        | "DOWNSTREAM_PEER_FINGERPRINT_256"
        | "DOWNSTREAM_PEER_SERIAL"
        | "UPSTREAM_REQUEST_ATTEMPT_COUNT"
        | "STREAM_ID"
        | "TRACE_ID"
        | "GRPC_STATUS"
        | "GRPC_STATUS_NUMBER" => Command::Unavailable,
        "START_TIME" => Command::StartTime(args.filter(|a| !a.is_empty()).map(str::to_string)),
        "REQ" => {
            let (a, b) = header_args(args)?;
            Command::Req(a, b, len)
        }
        "RESP" => {
            let (a, b) = header_args(args)?;
            Command::Resp(a, b, len)
        }
        "TRAILER" => {
            let (a, b) = header_args(args)?;
            Command::Trailer(a, b, len)
        }
        "DOWNSTREAM_PEER_URI_SAN" => Command::DownstreamPeerUriSan,
        "DOWNSTREAM_LOCAL_URI_SAN" => Command::DownstreamLocalUriSan,
        "REQUESTED_SERVER_NAME" => Command::RequestedServerName,
        "ENVIRONMENT" => Command::Environment(args.unwrap_or("").to_string()),
        other => return Err(format!("Not supported field in StreamInfo: {other}")),
    })
}

fn value<'a>(c: &'a Command, cx: &FormatContext<'a>) -> Value<'a> {
    use std::borrow::Cow;
    let addr = |a: Option<SocketAddr>| a.map_or(Value::None, |a| Value::Str(Cow::Owned(a.to_string())));
    let ip = |a: Option<SocketAddr>| a.map_or(Value::None, |a| Value::Str(Cow::Owned(a.ip().to_string())));
    let port = |a: Option<SocketAddr>| a.map_or(Value::None, |a| Value::Num(u64::from(a.port())));
    let s = |v: Option<&'a str>| v.map_or(Value::None, |v| Value::Str(Cow::Borrowed(v)));
    let ms = |d: Option<std::time::Duration>| d.map_or(Value::None, |d| Value::Num(d.as_millis() as u64));
    let log = cx.log;
    match c {
        Command::DownstreamRemoteAddress => addr(cx.downstream_remote),
        Command::DownstreamRemoteAddressWithoutPort => ip(cx.downstream_remote),
        Command::DownstreamRemotePort => port(cx.downstream_remote),
        Command::DownstreamDirectRemoteAddress => addr(cx.downstream_direct_remote.or(cx.downstream_remote)),
        Command::DownstreamDirectRemoteAddressWithoutPort => ip(cx.downstream_direct_remote.or(cx.downstream_remote)),
        Command::DownstreamLocalAddress => addr(cx.downstream_local),
        Command::DownstreamLocalAddressWithoutPort => ip(cx.downstream_local),
        Command::DownstreamLocalPort => port(cx.downstream_local),
        Command::UpstreamRemoteAddress => addr(cx.upstream_remote),
        Command::UpstreamRemoteAddressWithoutPort => ip(cx.upstream_remote),
        Command::UpstreamRemotePort => port(cx.upstream_remote),
        Command::UpstreamCluster | Command::UpstreamClusterRaw => s(cx.upstream_cluster),
        Command::Protocol => s(cx.protocol),
        Command::Hostname => s(cx.hostname),
        Command::RouteName => s(cx.route_name.filter(|r| !r.is_empty())),
        Command::ResponseCode => cx.response_code.map_or(Value::Num(0), |c| Value::Num(u64::from(c))),
        Command::ResponseCodeDetails => s(log.and_then(|l| l.response_code_details)),
        Command::ResponseFlags => log.map_or(Value::None, |l| Value::Str(Cow::Owned(l.response_flags.short_string()))),
        Command::ResponseFlagsLong => {
            log.map_or(Value::None, |l| Value::Str(Cow::Owned(l.response_flags.long_string())))
        }
        Command::BytesReceived => Value::Num(log.map_or(0, |l| l.bytes_received)),
        Command::BytesSent => Value::Num(log.map_or(0, |l| l.bytes_sent)),
        Command::Duration => ms(log.and_then(|l| l.duration)),
        Command::RequestDuration => ms(log.and_then(|l| l.request_duration)),
        Command::ResponseDuration => ms(log.and_then(|l| l.response_duration)),
        Command::ResponseTxDuration => match log.and_then(|l| Some((l.duration?, l.response_duration?))) {
            Some((d, r)) => Value::Num(d.saturating_sub(r).as_millis() as u64),
            None => Value::None,
        },
        Command::UpstreamLocalAddress
        | Command::UpstreamLocalAddressWithoutPort
        | Command::UpstreamLocalPort
        | Command::UpstreamTransportFailureReason
        | Command::ConnectionTerminationDetails
        | Command::Unavailable => Value::None,
        Command::ConnectionId => log.and_then(|l| l.connection_id).map_or(Value::None, Value::Num),
        Command::DownstreamTlsVersion => s(log.and_then(|l| l.tls_version)),
        Command::RequestHeadersBytes => Value::Num(
            cx.request_headers.map_or(0, |h| h.iter().map(|(k, v)| k.as_str().len() + v.len()).sum::<usize>()) as u64,
        ),
        Command::ResponseHeadersBytes => Value::Num(
            cx.response_headers.map_or(0, |h| h.iter().map(|(k, v)| k.as_str().len() + v.len()).sum::<usize>()) as u64,
        ),
        Command::StartTime(f) => {
            let t = log.and_then(|l| l.start_time).unwrap_or_else(std::time::SystemTime::now);
            Value::Str(Cow::Owned(format_time(t, f.as_deref().unwrap_or(DEFAULT_TIME_FORMAT))))
        }
        Command::Req(a, b, len) => request_header(cx, a, b.as_deref(), *len),
        Command::Resp(a, b, len) => header(cx.response_headers, a, b.as_deref(), *len),
        Command::Trailer(a, b, len) => header(log.and_then(|l| l.response_trailers), a, b.as_deref(), *len),
        Command::DownstreamPeerUriSan => s(cx.peer_uri_san),
        Command::DownstreamLocalUriSan => s(cx.local_uri_san),
        Command::RequestedServerName => s(cx.server_name.filter(|n| !n.is_empty())),
        Command::Environment(v) => std::env::var(v).map_or(Value::None, |v| Value::Str(Cow::Owned(v))),
    }
}

fn truncate(v: &str, len: Option<usize>) -> Value<'_> {
    use std::borrow::Cow;
    match len {
        Some(n) => Value::Str(Cow::Owned(v.chars().take(n).collect())),
        None => Value::Str(Cow::Borrowed(v)),
    }
}

/// `%REQ(...)%`: pseudo-headers come from the request line.
fn request_header<'a>(cx: &FormatContext<'a>, a: &str, b: Option<&str>, len: Option<usize>) -> Value<'a> {
    let pseudo = |n: &str| match n {
        ":method" => Some(cx.method),
        ":path" => Some(cx.path),
        ":authority" | "host" => Some(cx.authority),
        ":scheme" => Some(cx.scheme),
        _ => None,
    };
    for name in std::iter::once(a).chain(b) {
        if let Some(v) = pseudo(name) {
            match v {
                Some(v) => return truncate(v, len),
                None if name == "host" => {}
                None => continue,
            }
        }
        if let Some(v) = cx.request_headers.and_then(|h| h.get(name)).and_then(|v| v.to_str().ok()) {
            return truncate(v, len);
        }
    }
    Value::None
}

/// Envoy's default `%START_TIME%` format.
pub const DEFAULT_TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%E3SZ";

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// strftime in UTC with Envoy's extensions (`%E3S`: seconds with 3 decimals, `%3f`: 3 fraction
/// digits, `%f`: nanoseconds, `%s`: epoch seconds).
pub fn format_time(t: std::time::SystemTime, fmt: &str) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let nanos = since.subsec_nanos();
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s) = (sod / 3600, (sod / 60) % 60, sod % 60);
    let frac = |n: usize| format!("{:09}", nanos)[..n.min(9)].to_string();
    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        // %E<n>S and %<n>f
        let mut digits = String::new();
        let e = chars.peek() == Some(&'E');
        if e {
            chars.next();
        }
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        let n: Option<usize> = digits.parse().ok();
        match chars.next() {
            Some('S') if e => {
                let _ = write!(out, "{s:02}");
                match n {
                    Some(0) => {}
                    Some(n) => {
                        out.push('.');
                        out.push_str(&frac(n));
                    }
                    None => {
                        out.push('.');
                        out.push_str(&frac(9));
                    }
                }
            }
            Some('f') => out.push_str(&frac(n.unwrap_or(9))),
            Some('Y') => {
                let _ = write!(out, "{y}");
            }
            Some('y') => {
                let _ = write!(out, "{:02}", y.rem_euclid(100));
            }
            Some('m') => {
                let _ = write!(out, "{mo:02}");
            }
            Some('d') => {
                let _ = write!(out, "{d:02}");
            }
            Some('e') => {
                let _ = write!(out, "{d:2}");
            }
            Some('H') => {
                let _ = write!(out, "{h:02}");
            }
            Some('M') => {
                let _ = write!(out, "{mi:02}");
            }
            Some('S') => {
                let _ = write!(out, "{s:02}");
            }
            Some('T') => {
                let _ = write!(out, "{h:02}:{mi:02}:{s:02}");
            }
            Some('F') => {
                let _ = write!(out, "{y}-{mo:02}-{d:02}");
            }
            Some('s') => {
                let _ = write!(out, "{secs}");
            }
            Some('b') | Some('h') => out.push_str(MONTHS[(mo as usize).saturating_sub(1) % 12]),
            Some('a') => out.push_str(DAYS[days.rem_euclid(7) as usize]),
            Some('z') => out.push_str("+0000"),
            Some('Z') => out.push_str("UTC"),
            Some('j') => {
                let jan1 = days - (days_from_civil(y, 1, 1));
                let _ = write!(out, "{:03}", jan1 + 1);
            }
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn header<'a>(h: Option<&'a HeaderMap>, a: &str, b: Option<&str>, len: Option<usize>) -> Value<'a> {
    let Some(h) = h else { return Value::None };
    match h.get(a).or_else(|| b.and_then(|b| h.get(b))).and_then(|v| v.to_str().ok()) {
        Some(v) => truncate(v, len),
        None => Value::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        let f = Formatter::parse("ip=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% 100%% %REQ(x-a?x-b):2%", "f").unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-b", "hello".parse().unwrap());
        let cx = FormatContext {
            downstream_remote: Some("10.0.0.1:5555".parse().unwrap()),
            request_headers: Some(&h),
            ..Default::default()
        };
        assert_eq!(f.format(&cx), "ip=10.0.0.1 100% he");
        assert!(Formatter::parse("%NOPE%", "f").is_err());
        assert!(Formatter::parse("50%", "f").is_err());
        assert!(Formatter::parse("plain", "f").unwrap().is_static());
    }

    #[test]
    fn log_rendering_and_time() {
        let f = Formatter::parse("%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_SENT% \"%UPSTREAM_HOST%\"", "f").unwrap();
        let facts = LogFacts { bytes_sent: 12, ..Default::default() };
        let cx = FormatContext {
            method: Some("GET"),
            path: Some("/a"),
            response_code: Some(200),
            log: Some(&facts),
            ..Default::default()
        };
        let mut out = String::new();
        f.format_log(&cx, false, &mut out);
        assert_eq!(out, "GET /a 200 - 12 \"-\"");
        assert_eq!(Formatter::parse("%BYTES_SENT%", "f").unwrap().format_json(&cx, false), serde_json::json!(12));
        assert_eq!(Formatter::parse("%UPSTREAM_HOST%", "f").unwrap().format_json(&cx, false), serde_json::Value::Null);
        let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(format_time(t, DEFAULT_TIME_FORMAT), "2023-11-14T22:13:20.123Z");
        assert_eq!(format_time(t, "%s %3f %j %a %b"), "1700000000 123 318 Tue Nov");
    }
}
