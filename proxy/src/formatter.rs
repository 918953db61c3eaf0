//! Envoy's substitution formatter (`%DOWNSTREAM_REMOTE_ADDRESS%`, `%REQ(x-foo)%`, ...), compiled
//! once into literal and command segments. Used by header mutations (and access logs later).

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
    StartTime(Option<String>),
    /// `%REQ(a?b):len%`
    Req(String, Option<String>, Option<usize>),
    Resp(String, Option<String>, Option<usize>),
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
                Segment::Command(c) => render(c, cx, &mut out),
            }
        }
        out
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
        "START_TIME" => Command::StartTime(args.filter(|a| !a.is_empty()).map(str::to_string)),
        "REQ" => {
            let (a, b) = header_args(args)?;
            Command::Req(a, b, len)
        }
        "RESP" => {
            let (a, b) = header_args(args)?;
            Command::Resp(a, b, len)
        }
        "DOWNSTREAM_PEER_URI_SAN" => Command::DownstreamPeerUriSan,
        "DOWNSTREAM_LOCAL_URI_SAN" => Command::DownstreamLocalUriSan,
        "REQUESTED_SERVER_NAME" => Command::RequestedServerName,
        "ENVIRONMENT" => Command::Environment(args.unwrap_or("").to_string()),
        other => return Err(format!("not a supported command: %{other}%")),
    })
}

fn render(c: &Command, cx: &FormatContext<'_>, out: &mut String) {
    let addr = |a: Option<SocketAddr>, out: &mut String| {
        if let Some(a) = a {
            let _ = write!(out, "{a}");
        }
    };
    let ip = |a: Option<SocketAddr>, out: &mut String| {
        if let Some(a) = a {
            let _ = write!(out, "{}", a.ip());
        }
    };
    let port = |a: Option<SocketAddr>, out: &mut String| {
        if let Some(a) = a {
            let _ = write!(out, "{}", a.port());
        }
    };
    match c {
        Command::DownstreamRemoteAddress => addr(cx.downstream_remote, out),
        Command::DownstreamRemoteAddressWithoutPort => ip(cx.downstream_remote, out),
        Command::DownstreamRemotePort => port(cx.downstream_remote, out),
        Command::DownstreamDirectRemoteAddress => addr(cx.downstream_direct_remote.or(cx.downstream_remote), out),
        Command::DownstreamDirectRemoteAddressWithoutPort => {
            ip(cx.downstream_direct_remote.or(cx.downstream_remote), out)
        }
        Command::DownstreamLocalAddress => addr(cx.downstream_local, out),
        Command::DownstreamLocalAddressWithoutPort => ip(cx.downstream_local, out),
        Command::DownstreamLocalPort => port(cx.downstream_local, out),
        Command::UpstreamRemoteAddress => addr(cx.upstream_remote, out),
        Command::UpstreamRemoteAddressWithoutPort => ip(cx.upstream_remote, out),
        Command::UpstreamRemotePort => port(cx.upstream_remote, out),
        Command::UpstreamCluster => out.push_str(cx.upstream_cluster.unwrap_or("")),
        Command::Protocol => out.push_str(cx.protocol.unwrap_or("")),
        Command::Hostname => out.push_str(cx.hostname.unwrap_or("")),
        Command::RouteName => out.push_str(cx.route_name.unwrap_or("")),
        Command::ResponseCode => {
            let _ = write!(out, "{}", cx.response_code.unwrap_or(0));
        }
        Command::StartTime(_) => out.push_str(&httpdate::fmt_http_date(std::time::SystemTime::now())),
        Command::Req(a, b, len) => header(cx.request_headers, a, b.as_deref(), *len, out),
        Command::Resp(a, b, len) => header(cx.response_headers, a, b.as_deref(), *len, out),
        Command::DownstreamPeerUriSan => out.push_str(cx.peer_uri_san.unwrap_or("")),
        Command::DownstreamLocalUriSan => out.push_str(cx.local_uri_san.unwrap_or("")),
        Command::RequestedServerName => out.push_str(cx.server_name.unwrap_or("")),
        Command::Environment(v) => out.push_str(&std::env::var(v).unwrap_or_default()),
    }
}

fn header(h: Option<&HeaderMap>, a: &str, b: Option<&str>, len: Option<usize>, out: &mut String) {
    let Some(h) = h else { return };
    let v = h.get(a).or_else(|| b.and_then(|b| h.get(b)));
    if let Some(v) = v.and_then(|v| v.to_str().ok()) {
        match len {
            Some(n) => out.extend(v.chars().take(n)),
            None => out.push_str(v),
        }
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
}
