//! Real clients: curl over HTTP/1.1 or h2c prior knowledge, returning status, ordered lowercased
//! headers and the body. A transfer that gets no response (reset, timeout) is not an error: it is
//! a `Response` with status 0 and curl's exit code, because that is what a client observes.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

/// The downstream protocol a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// HTTP/1.1 (`curl --http1.1`).
    H1,
    /// HTTP/2 over cleartext with prior knowledge (`curl --http2-prior-knowledge`).
    H2c,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::H1 => "h1",
            Proto::H2c => "h2c",
        }
    }
}

/// One request, built with the methods below.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    /// `Host` for HTTP/1.1, `:authority` for h2c; curl's default (`127.0.0.1:PORT`) if None.
    pub authority: Option<String>,
    pub proto: Proto,
    pub timeout: Duration,
}

impl Request {
    pub fn get(path: &str) -> Request {
        Request {
            method: "GET".into(),
            path: path.into(),
            headers: Vec::new(),
            body: None,
            authority: None,
            proto: Proto::H1,
            timeout: Duration::from_secs(10),
        }
    }
    pub fn method(mut self, m: &str) -> Request {
        self.method = m.into();
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = Some(body.into());
        self
    }
    pub fn host(mut self, authority: &str) -> Request {
        self.authority = Some(authority.into());
        self
    }
    pub fn proto(mut self, p: Proto) -> Request {
        self.proto = p;
        self
    }
    pub fn h2c(self) -> Request {
        self.proto(Proto::H2c)
    }
    pub fn timeout(mut self, t: Duration) -> Request {
        self.timeout = t;
        self
    }
    /// A one-line summary for reports.
    pub fn summary(&self) -> String {
        let mut s = format!("{} {} {}", self.proto.name(), self.method, self.path);
        if let Some(a) = &self.authority {
            s.push_str(&format!(" host={a}"));
        }
        for (k, v) in &self.headers {
            s.push_str(&format!(" [{k}: {v}]"));
        }
        if let Some(b) = &self.body {
            s.push_str(&format!(" body={}B", b.len()));
        }
        s
    }
}

impl Response {
    fn decoded(&self) -> std::borrow::Cow<'_, [u8]> {
        use std::io::Read;
        if self.header("content-encoding") == Some("gzip") {
            let mut out = Vec::new();
            if flate2::read::GzDecoder::new(self.body.as_slice()).read_to_end(&mut out).is_ok() {
                return std::borrow::Cow::Owned(out);
            }
        }
        std::borrow::Cow::Borrowed(&self.body)
    }
}

/// What the client saw.
#[derive(Clone, Debug, Default)]
pub struct Response {
    /// 0 if no response arrived (see `curl_exit`).
    pub status: u16,
    /// `HTTP/1.1` or `HTTP/2`.
    pub version: String,
    /// In arrival order, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// curl's exit code (0 on success; 52 empty reply, 56 receive failure, 28 timeout, ...).
    pub curl_exit: i32,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }
    /// The body as text, gunzipped when it came with `content-encoding: gzip` (compressed bytes
    /// differ between zlib builds; what the client decodes is what is compared).
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.decoded()).into_owned()
    }
    /// The echo upstream's JSON, if the (decoded) body is one.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.decoded()).ok()
    }
}

const END: &str = "\n@@remora-curl-end@@\n";

fn curl_args(port: u16, req: &Request, repeat: usize) -> Vec<String> {
    let mut a: Vec<String> = ["-s", "-S", "-i", "-g", "--path-as-is", "--noproxy", "*"].map(String::from).to_vec();
    a.push(match req.proto {
        Proto::H1 => "--http1.1".into(),
        Proto::H2c => "--http2-prior-knowledge".into(),
    });
    a.push("--max-time".into());
    a.push(format!("{:.3}", req.timeout.as_secs_f64()));
    a.push("-w".into());
    a.push(END.into());
    if req.method == "HEAD" {
        a.push("--head".into());
    } else if req.method != "GET" || req.body.is_some() {
        a.push("-X".into());
        a.push(req.method.clone());
    }
    if let Some(h) = &req.authority {
        a.push("-H".into());
        a.push(format!("Host: {h}"));
    }
    for (k, v) in &req.headers {
        a.push("-H".into());
        // curl sends `name;` as a header with an empty value; `name:` would remove it.
        a.push(if v.is_empty() { format!("{k};") } else { format!("{k}: {v}") });
    }
    if req.body.is_some() {
        a.push("--data-binary".into());
        a.push("@-".into());
        if !req.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("expect")) {
            a.push("-H".into());
            a.push("Expect:".into());
        }
    }
    let url = format!("http://127.0.0.1:{port}{}", req.path);
    for _ in 0..repeat {
        a.push(url.clone());
    }
    a
}

fn run_curl(port: u16, req: &Request, repeat: usize) -> anyhow::Result<(Vec<u8>, i32, String)> {
    let mut child = Command::new("curl")
        .args(curl_args(port, req, repeat))
        .stdin(if req.body.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running curl (is it installed? scripts/install-test-deps)")?;
    if let (Some(body), Some(mut stdin)) = (&req.body, child.stdin.take()) {
        stdin.write_all(body)?;
    }
    let out = child.wait_with_output()?;
    Ok((out.stdout, out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned()))
}

/// One request through curl to `127.0.0.1:port`.
pub fn curl(port: u16, req: &Request) -> anyhow::Result<Response> {
    let (out, code, err) = run_curl(port, req, 1)?;
    let mut v = parse_transfers(&out)?;
    match v.len() {
        0 => Ok(Response { curl_exit: code, ..Response::default() }),
        1 => {
            let mut r = v.remove(0);
            r.curl_exit = code;
            Ok(r)
        }
        n => bail!("curl printed {n} transfers for one request; stderr: {err}"),
    }
}

/// `n` requests on one connection, fast enough for distributions: HTTP/1.1 as sequential
/// transfers of one curl process; h2c with `nghttp -m n` (concurrent streams on one connection;
/// curl 7.88 does not reuse a prior-knowledge connection), bodies left out. Requests that got
/// no response come back with status 0.
pub fn curl_repeat(port: u16, req: &Request, n: usize) -> anyhow::Result<Vec<Response>> {
    if req.proto == Proto::H2c {
        return nghttp_repeat(port, req, n);
    }
    let mut all = Vec::with_capacity(n);
    // Keep command lines short.
    for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
        let (out, code, err) = run_curl(port, req, chunk.len())?;
        let v = parse_transfers(&out)?;
        if v.len() != chunk.len() {
            bail!("curl returned {} of {} transfers (exit {code}): {err}", v.len(), chunk.len());
        }
        all.extend(v);
    }
    Ok(all)
}

/// `n` h2c requests on one connection with `nghttp -nv -m n`; statuses and headers only.
pub fn nghttp_repeat(port: u16, req: &Request, n: usize) -> anyhow::Result<Vec<Response>> {
    let mut a: Vec<String> = vec!["-nv".into(), "-m".into(), n.to_string()];
    a.push(format!("--timeout={}", req.timeout.as_secs().max(1)));
    if req.method != "GET" {
        a.push("-H".into());
        a.push(format!(":method: {}", req.method));
    }
    if let Some(h) = &req.authority {
        a.push("-H".into());
        a.push(format!(":authority: {h}"));
    }
    for (k, v) in &req.headers {
        a.push("-H".into());
        a.push(format!("{}: {v}", k.to_ascii_lowercase()));
    }
    let body_file = match &req.body {
        Some(b) => {
            let f = std::env::temp_dir().join(format!("remora-nghttp-body-{}", std::process::id()));
            std::fs::write(&f, b)?;
            a.push("-d".into());
            a.push(f.display().to_string());
            Some(f)
        }
        None => None,
    };
    a.push(format!("http://127.0.0.1:{port}{}", req.path));
    let out = Command::new("nghttp")
        .args(&a)
        .stdin(Stdio::null())
        .output()
        .context("running nghttp (is nghttp2-client installed? scripts/install-test-deps)")?;
    if let Some(f) = body_file {
        let _ = std::fs::remove_file(f);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut streams: std::collections::BTreeMap<u32, Response> = Default::default();
    for line in text.lines() {
        let Some(rest) = line.split_once("] recv (stream_id=").map(|x| x.1) else { continue };
        let Some((id, hdr)) = rest.split_once(") ") else { continue };
        let Ok(id) = id.parse::<u32>() else { continue };
        let Some((k, v)) = hdr.split_once(": ") else { continue };
        let r = streams.entry(id).or_insert_with(|| Response { version: "HTTP/2".into(), ..Response::default() });
        if k == ":status" {
            r.status = v.trim().parse().unwrap_or(0);
        } else if !k.starts_with(':') {
            r.headers.push((k.to_ascii_lowercase(), v.to_string()));
        }
    }
    let mut v: Vec<Response> = streams.into_values().filter(|r| r.status != 0).collect();
    if v.len() > n {
        bail!("nghttp reported {} responses for {n} requests", v.len());
    }
    v.resize_with(n, Response::default);
    Ok(v)
}

/// Splits curl `-i -w END` output into responses.
fn parse_transfers(out: &[u8]) -> anyhow::Result<Vec<Response>> {
    let end = END.as_bytes();
    let mut res = Vec::new();
    let mut rest = out;
    while let Some(pos) = find(rest, end) {
        let one = &rest[..pos];
        rest = &rest[pos + end.len()..];
        res.push(if one.is_empty() { Response::default() } else { parse_one(one)? });
    }
    Ok(res)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_one(mut buf: &[u8]) -> anyhow::Result<Response> {
    loop {
        let head_end = find(buf, b"\r\n\r\n").ok_or_else(|| anyhow!("no header block in curl output"))?;
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf = &buf[head_end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.split_whitespace();
        let version = parts.next().unwrap_or_default().to_string();
        let status: u16 =
            parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
        if (100..200).contains(&status) {
            continue;
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        return Ok(Response { status, version, headers, body: buf.to_vec(), curl_exit: 0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_two_transfers_and_skips_continue() {
        let out = format!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-A: 1\r\ncontent-length: 2\r\n\r\nhi{END}HTTP/2 404 \r\nfoo: bar\r\n\r\n{END}{END}"
        );
        let v = parse_transfers(out.as_bytes()).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].status, 200);
        assert_eq!(v[0].header("x-a"), Some("1"));
        assert_eq!(v[0].body, b"hi");
        assert_eq!(v[1].status, 404);
        assert_eq!(v[1].version, "HTTP/2");
        assert_eq!(v[1].header("foo"), Some("bar"));
        assert_eq!(v[2].status, 0);
    }
}
