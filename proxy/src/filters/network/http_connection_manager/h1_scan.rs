//! Envoy's HTTP/1 codec checks on the raw request bytes, before hyper parses them: the header
//! block's size (`max_request_headers_kb`, counted over the raw bytes from the request line to
//! the blank line, as Envoy's codec counts them) and line count (`max_headers_count`), the
//! method against the codec's list, and the framing Envoy refuses (Content-Length with
//! Transfer-Encoding, a transfer-encoding other than `chunked`, repeated or malformed
//! Content-Length, malformed chunk sizes, oversized trailers).
//!
//! The scanner follows the framing of every request (Content-Length bodies, chunked bodies and
//! their trailers) so that it always knows where the next header block starts; it keeps no
//! buffer, only a few counters and the first bytes of the header names and values it must read.
//! After CONNECT, an upgrade, or the HTTP/2 preface it steps aside for the rest of the
//! connection (the bytes are no longer HTTP/1 requests).

/// What Envoy answers to a request the scanner refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 431: the header block (or the trailers) is over the size or count limit.
    TooLarge,
    /// 400: malformed framing, an unknown method.
    BadRequest,
    /// 501: a transfer-encoding other than `chunked`.
    NotImplemented,
}

#[derive(Debug, Clone, Copy)]
pub struct ScanLimits {
    pub max_bytes: u32,
    pub max_count: u32,
    pub allow_chunked_length: bool,
    /// The first bytes may be the HTTP/2 preface (AUTO codec).
    pub h2_preface: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Between requests: leading CR/LF are skipped, the next byte starts a request line.
    Idle,
    Method,
    Target,
    LineStart,
    /// A CR at the start of a line: the blank line's LF must follow.
    BlankCr,
    Name,
    Value,
    /// Content-Length body: bytes left.
    Body(u64),
    ChunkSize,
    /// After the size's hex digits: whitespace, an extension, then the line's end.
    ChunkSizeEnd,
    ChunkExt,
    ChunkData(u64),
    /// The CR/LF after a chunk's data.
    ChunkDataCr,
    ChunkDataLf,
    /// Not HTTP/1 requests any more (CONNECT, upgrade, HTTP/2): nothing is checked.
    Passthrough,
}

/// The header names the scanner must recognise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Other,
    ContentLength,
    TransferEncoding,
    Upgrade,
}

/// Longest header name the scanner must recognise (`transfer-encoding`), with room to spare;
/// also the longest method.
const NAME_CAP: usize = 20;
/// Longest framing value the scanner reads (a Content-Length of 19 digits, `chunked`).
const VALUE_CAP: usize = 24;

/// The methods Envoy's HTTP/1 codec accepts (case-sensitive); anything else is a 400.
const METHODS: &[&[u8]] = &[
    b"GET",
    b"POST",
    b"PUT",
    b"DELETE",
    b"HEAD",
    b"OPTIONS",
    b"PATCH",
    b"CONNECT",
    b"TRACE",
    b"COPY",
    b"LOCK",
    b"MKCOL",
    b"MOVE",
    b"PROPFIND",
    b"PROPPATCH",
    b"SEARCH",
    b"UNLOCK",
    b"BIND",
    b"REBIND",
    b"UNBIND",
    b"ACL",
    b"REPORT",
    b"MKACTIVITY",
    b"CHECKOUT",
    b"MERGE",
    b"NOTIFY",
    b"SUBSCRIBE",
    b"UNSUBSCRIBE",
    b"PURGE",
    b"MKCALENDAR",
    b"LINK",
    b"UNLINK",
    b"SOURCE",
];

pub struct Scanner {
    lim: ScanLimits,
    st: St,
    /// Bytes and lines of the current header block (or trailer block).
    bytes: u32,
    lines: u32,
    /// In the trailers of a chunked body (the block ends the request, not a head).
    trailers: bool,
    /// Header blocks begun on this connection.
    heads: u32,
    buf: [u8; VALUE_CAP],
    len: usize,
    over: bool,
    known: Known,
    cl_count: u8,
    cl: Option<u64>,
    cl_bad: bool,
    te_count: u8,
    te_chunked: bool,
    upgrade: bool,
    connect: bool,
}

impl Scanner {
    /// A scanner for a connection; `enabled: false` (an HTTP/2-only codec) checks nothing.
    pub fn new(lim: ScanLimits, enabled: bool) -> Scanner {
        Scanner {
            lim,
            st: if enabled { St::Idle } else { St::Passthrough },
            bytes: 0,
            lines: 0,
            trailers: false,
            heads: 0,
            buf: [0; VALUE_CAP],
            len: 0,
            over: false,
            known: Known::Other,
            cl_count: 0,
            cl: None,
            cl_bad: false,
            te_count: 0,
            te_chunked: false,
            upgrade: false,
            connect: false,
        }
    }

    /// Within a header block (the request-headers timer runs).
    pub fn in_head(&self) -> bool {
        !self.trailers
            && matches!(self.st, St::Method | St::Target | St::LineStart | St::BlankCr | St::Name | St::Value)
    }

    /// Within a request's body or trailers (the request is not received whole yet).
    pub fn in_body(&self) -> bool {
        self.trailers
            || matches!(
                self.st,
                St::Body(_)
                    | St::ChunkSize
                    | St::ChunkSizeEnd
                    | St::ChunkExt
                    | St::ChunkData(_)
                    | St::ChunkDataCr
                    | St::ChunkDataLf
            )
    }

    /// Header blocks begun so far.
    pub fn heads(&self) -> u32 {
        self.heads
    }

    /// Stepped aside for the rest of the connection.
    pub fn passthrough(&self) -> bool {
        self.st == St::Passthrough
    }

    /// Scans the next bytes the client sent.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), Verdict> {
        let mut i = 0;
        while i < data.len() {
            match self.st {
                St::Passthrough => return Ok(()),
                St::Body(left) => {
                    let n = left.min((data.len() - i) as u64);
                    i += n as usize;
                    self.st = if n == left { St::Idle } else { St::Body(left - n) };
                    continue;
                }
                St::ChunkData(left) => {
                    let n = left.min((data.len() - i) as u64);
                    i += n as usize;
                    self.st = if n == left { St::ChunkDataCr } else { St::ChunkData(left - n) };
                    continue;
                }
                // The request target and the values of headers the scanner does not read are
                // only counted: skip to the line's end at once.
                // A header name: copied (up to NAME_CAP) and counted up to the colon.
                St::Name => {
                    let rest = &data[i..];
                    let n = memchr::memchr2(b':', b'\n', rest).unwrap_or(rest.len());
                    let name = &rest[..n];
                    let room = NAME_CAP - self.len;
                    if name.len() > room {
                        self.over = true;
                    } else {
                        self.buf[self.len..self.len + name.len()].copy_from_slice(name);
                        self.len += name.len();
                    }
                    self.bytes = self.bytes.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
                    if self.bytes > self.lim.max_bytes {
                        return Err(Verdict::TooLarge);
                    }
                    i += n;
                    if i == data.len() {
                        return Ok(());
                    }
                }
                St::Target | St::Value if self.st == St::Target || self.known == Known::Other => {
                    let rest = &data[i..];
                    let n = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
                    self.bytes = self.bytes.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
                    if self.bytes > self.lim.max_bytes {
                        return Err(Verdict::TooLarge);
                    }
                    i += n;
                    if i == data.len() {
                        return Ok(());
                    }
                }
                _ => {}
            }
            let b = data[i];
            i += 1;
            self.byte(b)?;
        }
        Ok(())
    }

    fn count(&mut self) -> Result<(), Verdict> {
        self.bytes += 1;
        if self.bytes > self.lim.max_bytes { Err(Verdict::TooLarge) } else { Ok(()) }
    }

    fn byte(&mut self, b: u8) -> Result<(), Verdict> {
        match self.st {
            St::Idle => {
                if b == b'\r' || b == b'\n' {
                    return Ok(());
                }
                self.begin_head();
                self.st = St::Method;
                self.count()?;
                self.push(b);
            }
            St::Method => {
                self.count()?;
                if b == b' ' {
                    let m = &self.buf[..self.len];
                    if self.lim.h2_preface && self.heads == 1 && m == b"PRI" {
                        self.st = St::Passthrough;
                        return Ok(());
                    }
                    if self.over || !METHODS.contains(&m) {
                        return Err(Verdict::BadRequest);
                    }
                    self.connect = m == b"CONNECT";
                    self.st = St::Target;
                } else if self.len >= NAME_CAP || b == b'\r' || b == b'\n' {
                    return Err(Verdict::BadRequest);
                } else {
                    self.push(b);
                }
            }
            St::Target => {
                self.count()?;
                if b == b'\n' {
                    self.st = St::LineStart;
                }
            }
            St::LineStart => {
                self.count()?;
                match b {
                    b'\r' => self.st = St::BlankCr,
                    b'\n' => return self.end_block(),
                    _ => {
                        self.len = 0;
                        self.over = false;
                        self.push(b);
                        self.st = St::Name;
                    }
                }
            }
            St::BlankCr => {
                self.count()?;
                if b != b'\n' {
                    return Err(Verdict::BadRequest);
                }
                return self.end_block();
            }
            St::Name => {
                self.count()?;
                match b {
                    b':' => {
                        let name = &self.buf[..self.len];
                        let is = |known: &[u8]| !self.over && !self.trailers && name.eq_ignore_ascii_case(known);
                        self.known = if is(b"content-length") {
                            Known::ContentLength
                        } else if is(b"transfer-encoding") {
                            Known::TransferEncoding
                        } else if is(b"upgrade") {
                            Known::Upgrade
                        } else {
                            Known::Other
                        };
                        self.len = 0;
                        self.over = false;
                        self.st = St::Value;
                    }
                    b'\n' => return Err(Verdict::BadRequest),
                    _ => self.push(b),
                }
            }
            St::Value => {
                self.count()?;
                if b == b'\n' {
                    self.end_line()?;
                    self.st = St::LineStart;
                } else if self.known != Known::Other && !(self.len == 0 && (b == b' ' || b == b'\t')) {
                    self.push(b);
                }
            }
            St::ChunkSize => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                    let v = self.cl.unwrap_or(0);
                    if v > (u64::MAX >> 4) {
                        return Err(Verdict::BadRequest);
                    }
                    self.cl = Some(v << 4 | d);
                }
                _ if self.cl.is_none() => return Err(Verdict::BadRequest),
                _ => {
                    self.st = St::ChunkSizeEnd;
                    return self.byte(b);
                }
            },
            St::ChunkSizeEnd => match b {
                b' ' | b'\t' | b'\r' => {}
                b';' => self.st = St::ChunkExt,
                b'\n' => self.end_chunk_size(),
                _ => return Err(Verdict::BadRequest),
            },
            St::ChunkExt => {
                if b == b'\n' {
                    self.end_chunk_size();
                }
            }
            St::ChunkDataCr => match b {
                b'\r' => self.st = St::ChunkDataLf,
                b'\n' => self.st = St::ChunkSize,
                _ => return Err(Verdict::BadRequest),
            },
            St::ChunkDataLf => {
                if b != b'\n' {
                    return Err(Verdict::BadRequest);
                }
                self.st = St::ChunkSize;
            }
            St::Body(_) | St::ChunkData(_) | St::Passthrough => {}
        }
        Ok(())
    }

    fn push(&mut self, b: u8) {
        let cap = if self.st == St::Value { VALUE_CAP } else { NAME_CAP };
        if self.len < cap {
            self.buf[self.len] = b;
            self.len += 1;
        } else {
            self.over = true;
        }
    }

    fn begin_head(&mut self) {
        self.heads = self.heads.wrapping_add(1);
        self.bytes = 0;
        self.lines = 0;
        self.trailers = false;
        self.len = 0;
        self.over = false;
        self.cl_count = 0;
        self.cl = None;
        self.cl_bad = false;
        self.te_count = 0;
        self.te_chunked = false;
        self.upgrade = false;
        self.connect = false;
    }

    fn end_line(&mut self) -> Result<(), Verdict> {
        self.lines += 1;
        if self.lines > self.lim.max_count {
            return Err(Verdict::TooLarge);
        }
        let mut v = &self.buf[..self.len];
        while let [rest @ .., b' ' | b'\t' | b'\r'] = v {
            v = rest;
        }
        match self.known {
            Known::Other => {}
            Known::ContentLength => {
                self.cl_count = self.cl_count.saturating_add(1);
                let n = (!self.over && !v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit))
                    .then(|| v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
                match n {
                    Some(n) => self.cl = Some(n),
                    None => self.cl_bad = true,
                }
            }
            Known::TransferEncoding => {
                self.te_count = self.te_count.saturating_add(1);
                self.te_chunked = !self.over && v.eq_ignore_ascii_case(b"chunked");
            }
            // Envoy's codec ignores an h2c upgrade: the connection stays HTTP/1.
            Known::Upgrade => self.upgrade |= self.over || !v.eq_ignore_ascii_case(b"h2c"),
        }
        self.known = Known::Other;
        Ok(())
    }

    /// The blank line: the end of a header block or of the trailers.
    fn end_block(&mut self) -> Result<(), Verdict> {
        if self.trailers {
            self.trailers = false;
            self.st = St::Idle;
            return Ok(());
        }
        let te = self.te_count > 0;
        if te && self.cl_count > 0 && !self.lim.allow_chunked_length {
            return Err(Verdict::BadRequest);
        }
        if te && (self.te_count > 1 || !self.te_chunked) {
            return Err(Verdict::NotImplemented);
        }
        if !te && (self.cl_count > 1 || self.cl_bad) {
            return Err(Verdict::BadRequest);
        }
        self.st = if self.connect || self.upgrade {
            St::Passthrough
        } else if te {
            self.cl = None;
            St::ChunkSize
        } else {
            match self.cl {
                Some(n) if n > 0 => St::Body(n),
                _ => St::Idle,
            }
        };
        Ok(())
    }

    fn end_chunk_size(&mut self) {
        match self.cl.take() {
            Some(0) | None => {
                // The last chunk: the trailers, counted against the same limits.
                self.trailers = true;
                self.bytes = 0;
                self.lines = 0;
                self.st = St::LineStart;
            }
            Some(n) => self.st = St::ChunkData(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(max_bytes: u32, max_count: u32) -> ScanLimits {
        ScanLimits { max_bytes, max_count, allow_chunked_length: false, h2_preface: true }
    }

    fn scan(l: ScanLimits, parts: &[&[u8]]) -> Result<Scanner, Verdict> {
        let mut s = Scanner::new(l, true);
        for p in parts {
            s.feed(p)?;
        }
        Ok(s)
    }

    fn head(extra: &str) -> Vec<u8> {
        format!("GET / HTTP/1.1\r\nHost: x\r\n{extra}\r\n").into_bytes()
    }

    #[test]
    fn size_counts_raw_bytes_from_the_request_line_to_the_blank_line() {
        // 16 + 9 + (7 + n + 2) + 2 bytes: n = 4060 is exactly 4096.
        let ok = head(&format!("x-big: {}\r\n", "a".repeat(4060)));
        assert_eq!(ok.len(), 4096);
        assert!(scan(lim(4096, 100), &[&ok]).is_ok());
        let over = head(&format!("x-big: {}\r\n", "a".repeat(4061)));
        assert_eq!(scan(lim(4096, 100), &[&over]).err(), Some(Verdict::TooLarge));
        // An unfinished block is refused as soon as it passes the limit.
        let unfinished = format!("GET / HTTP/1.1\r\nx-big: {}", "a".repeat(5000));
        assert_eq!(scan(lim(4096, 100), &[unfinished.as_bytes()]).err(), Some(Verdict::TooLarge));
        // Split anywhere, the verdict is the same.
        for cut in [1, 5, 17, 30, 4000] {
            assert!(scan(lim(4096, 100), &[&ok[..cut], &ok[cut..]]).is_ok());
            assert_eq!(scan(lim(4096, 100), &[&over[..cut], &over[cut..]]).err(), Some(Verdict::TooLarge));
        }
    }

    #[test]
    fn count_limit_includes_host() {
        let h = |n: usize| head(&(0..n).map(|i| format!("x-h{i}: v\r\n")).collect::<String>());
        assert!(scan(lim(60 << 10, 20), &[&h(19)]).is_ok());
        assert_eq!(scan(lim(60 << 10, 20), &[&h(20)]).err(), Some(Verdict::TooLarge));
    }

    #[test]
    fn framing_as_envoy() {
        let l = lim(60 << 10, 100);
        // The verdict is the same whether the bytes come at once or one by one.
        let bad = |s: &str| {
            let whole = scan(l, &[s.as_bytes()]).err();
            let bytes: Vec<&[u8]> = s.as_bytes().chunks(1).collect();
            assert_eq!(scan(l, &bytes).err(), whole, "{s:?} byte by byte");
            whole
        };
        assert_eq!(
            bad("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(Verdict::BadRequest)
        );
        assert_eq!(
            bad("POST / HTTP/1.1\r\nTransfer-Encoding: identity, chunked\r\n\r\n"),
            Some(Verdict::NotImplemented)
        );
        assert_eq!(bad("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"), Some(Verdict::NotImplemented));
        assert_eq!(
            bad("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(Verdict::NotImplemented)
        );
        assert_eq!(
            bad("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
            Some(Verdict::BadRequest)
        );
        assert_eq!(bad("POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc"), Some(Verdict::BadRequest));
        assert_eq!(bad("POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc"), Some(Verdict::BadRequest));
        assert_eq!(bad("FOO / HTTP/1.1\r\n\r\n"), Some(Verdict::BadRequest));
        assert_eq!(bad("get / HTTP/1.1\r\n\r\n"), Some(Verdict::BadRequest));
        assert_eq!(
            bad("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n"),
            Some(Verdict::BadRequest)
        );
        assert_eq!(bad("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX"), Some(Verdict::BadRequest));
        // Accepted: chunked in any case, bare LF, a chunk extension, whitespace after the size,
        // PURGE, CL+TE when allowed.
        assert!(bad("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n3 ;ext=1\r\nabc\r\n0\r\n\r\n").is_none());
        assert!(bad("GET / HTTP/1.1\nHost: x\n\n").is_none());
        assert!(bad("PURGE / HTTP/1.1\r\n\r\n").is_none());
        let allow = ScanLimits { allow_chunked_length: true, ..l };
        assert!(
            scan(
                allow,
                &[b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"]
            )
            .is_ok()
        );
    }

    #[test]
    fn follows_bodies_to_the_next_request() {
        let l = lim(200, 100);
        // A body of bytes that would be an over-long header block is not counted as one.
        let body = "a".repeat(1000);
        let req = format!("POST / HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{body}GET / HTTP/1.1\r\n\r\n");
        let s = scan(l, &[req.as_bytes()]).unwrap();
        assert_eq!(s.heads(), 2);
        assert!(!s.in_head());
        let chunked = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n{body}\r\n0\r\nx-t: 1\r\n\r\nGET / HTTP/1.1\r\n"
        );
        let s = scan(l, &[chunked.as_bytes()]).unwrap();
        assert_eq!(s.heads(), 2);
        assert!(s.in_head());
        // Trailers have their own limit.
        let big = format!("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx-t: {body}\r\n\r\n");
        assert_eq!(scan(l, &[big.as_bytes()]).err(), Some(Verdict::TooLarge));
    }

    #[test]
    fn steps_aside_after_connect_upgrade_and_h2() {
        let l = lim(100, 100);
        let junk = "x".repeat(500);
        for start in [
            "CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            let s = scan(l, &[start.as_bytes(), junk.as_bytes()]).unwrap();
            assert!(s.passthrough(), "{start}");
        }
        let h2c = "GET / HTTP/1.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\nGET / HTTP/1.1\r\n";
        let s = scan(l, &[h2c.as_bytes()]).unwrap();
        assert!(!s.passthrough() && s.heads() == 2, "an h2c upgrade is ignored");
        let no_h2 = ScanLimits { h2_preface: false, ..l };
        assert_eq!(scan(no_h2, &[b"PRI * HTTP/2.0\r\n"]).err(), Some(Verdict::BadRequest));
    }
}
