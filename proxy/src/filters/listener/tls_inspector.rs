//! `envoy.filters.listener.tls_inspector`: reads the TLS ClientHello with `peek` (nothing is
//! consumed, the transport socket still sees it) and reports SNI and ALPN for filter chain
//! matching. Not TLS means transport protocol `raw_buffer`.

use std::time::Duration;

use tokio::net::TcpStream;

/// What the inspector learned.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClientHello {
    pub server_name: Option<String>,
    pub alpn: Vec<String>,
}

/// Max bytes Envoy's inspector reads (64 KiB).
const MAX_HELLO: usize = 64 * 1024;

/// Peeks until a full ClientHello is available, the bytes are not TLS, or the timeout passes.
/// Returns None for non-TLS (or an unparsable hello).
pub async fn inspect(stream: &TcpStream, timeout: Duration) -> Option<ClientHello> {
    let mut buf = vec![0u8; 1024];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return None,
        };
        if n == 0 {
            return None;
        }
        match parse(&buf[..n]) {
            Parse::Done(h) => return Some(h),
            Parse::NotTls => return None,
            Parse::NeedMore(want) => {
                let want = want.min(MAX_HELLO);
                if want <= n {
                    // The peer has not sent more yet: wait briefly for the rest.
                    if n == buf.len() && buf.len() < MAX_HELLO {
                        buf.resize((buf.len() * 2).min(MAX_HELLO), 0);
                    } else {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                } else if buf.len() < want {
                    buf.resize(want, 0);
                } else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                if tokio::time::Instant::now() >= deadline {
                    return None;
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    Done(ClientHello),
    NotTls,
    /// Need at least this many bytes.
    NeedMore(usize),
}

/// Parses a ClientHello from the start of a TLS stream (possibly spread over several records).
pub fn parse(data: &[u8]) -> Parse {
    if data.is_empty() {
        return Parse::NeedMore(5);
    }
    if data[0] != 0x16 {
        return Parse::NotTls;
    }
    if data.len() >= 2 && data[1] != 0x03 {
        return Parse::NotTls;
    }
    // Reassemble handshake bytes from consecutive handshake records.
    let mut hs = Vec::new();
    let mut at = 0;
    loop {
        if data.len() < at + 5 {
            return Parse::NeedMore(at + 5);
        }
        if data[at] != 0x16 {
            return Parse::NotTls;
        }
        let len = u16::from_be_bytes([data[at + 3], data[at + 4]]) as usize;
        if data.len() < at + 5 + len {
            // Maybe the handshake message is already complete in what we have.
            hs.extend_from_slice(&data[at + 5..]);
            if let Some(h) = parse_handshake(&hs) {
                return h;
            }
            return Parse::NeedMore(at + 5 + len);
        }
        hs.extend_from_slice(&data[at + 5..at + 5 + len]);
        at += 5 + len;
        if let Some(h) = parse_handshake(&hs) {
            return h;
        }
    }
}

/// Some(result) when the handshake message is complete (or malformed).
fn parse_handshake(hs: &[u8]) -> Option<Parse> {
    if hs.len() < 4 {
        return None;
    }
    if hs[0] != 0x01 {
        return Some(Parse::NotTls);
    }
    let len = ((hs[1] as usize) << 16) | ((hs[2] as usize) << 8) | hs[3] as usize;
    if hs.len() < 4 + len {
        return None;
    }
    Some(match parse_client_hello(&hs[4..4 + len]) {
        Some(h) => Parse::Done(h),
        None => Parse::NotTls,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }
}

fn parse_client_hello(body: &[u8]) -> Option<ClientHello> {
    let mut r = Reader(body);
    r.take(2)?; // legacy version
    r.take(32)?; // random
    let n = r.u8()?;
    r.take(n)?; // session id
    let n = r.u16()?;
    r.take(n)?; // cipher suites
    let n = r.u8()?;
    r.take(n)?; // compression methods
    let mut hello = ClientHello::default();
    if r.0.is_empty() {
        return Some(hello);
    }
    let n = r.u16()?;
    let mut ext = Reader(r.take(n)?);
    while !ext.0.is_empty() {
        let ty = ext.u16()?;
        let len = ext.u16()?;
        let mut data = Reader(ext.take(len)?);
        match ty {
            0 => {
                // server_name: list of (type, name)
                let list_len = data.u16()?;
                let mut list = Reader(data.take(list_len)?);
                while !list.0.is_empty() {
                    let kind = list.u8()?;
                    let l = list.u16()?;
                    let name = list.take(l)?;
                    if kind == 0 {
                        hello.server_name = std::str::from_utf8(name).ok().map(str::to_ascii_lowercase);
                    }
                }
            }
            16 => {
                let list_len = data.u16()?;
                let mut list = Reader(data.take(list_len)?);
                while !list.0.is_empty() {
                    let l = list.u8()?;
                    let p = list.take(l)?;
                    if let Ok(s) = std::str::from_utf8(p) {
                        hello.alpn.push(s.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    Some(hello)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello with SNI and ALPN, built by hand.
    fn hello(sni: &str, alpn: &[&str]) -> Vec<u8> {
        let mut ext = Vec::new();
        let mut sn = vec![0u8];
        sn.extend((sni.len() as u16).to_be_bytes());
        sn.extend(sni.as_bytes());
        ext.extend(0u16.to_be_bytes());
        ext.extend(((sn.len() + 2) as u16).to_be_bytes());
        ext.extend((sn.len() as u16).to_be_bytes());
        ext.extend(sn);
        let mut al = Vec::new();
        for p in alpn {
            al.push(p.len() as u8);
            al.extend(p.as_bytes());
        }
        ext.extend(16u16.to_be_bytes());
        ext.extend(((al.len() + 2) as u16).to_be_bytes());
        ext.extend((al.len() as u16).to_be_bytes());
        ext.extend(al);
        let mut body = vec![3, 3];
        body.extend([0u8; 32]);
        body.push(0);
        body.extend(2u16.to_be_bytes());
        body.extend([0x13, 0x01]);
        body.extend([1, 0]);
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(ext);
        let mut hs = vec![1, 0, 0, 0];
        let l = body.len();
        hs[1] = (l >> 16) as u8;
        hs[2] = (l >> 8) as u8;
        hs[3] = l as u8;
        hs.extend(body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    #[test]
    fn parses_sni_and_alpn_even_split() {
        let h = hello("Example.COM", &["istio-peer-exchange", "h2"]);
        let want = ClientHello {
            server_name: Some("example.com".into()),
            alpn: vec!["istio-peer-exchange".into(), "h2".into()],
        };
        assert_eq!(parse(&h), Parse::Done(want.clone()));
        assert!(matches!(parse(&h[..20]), Parse::NeedMore(_)));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parse::NotTls);
        // The same hello split into two records.
        let hs = &h[5..];
        let mut split = vec![0x16, 3, 1, 0, 10];
        split.extend(&hs[..10]);
        split.extend([0x16, 3, 1]);
        split.extend(((hs.len() - 10) as u16).to_be_bytes());
        split.extend(&hs[10..]);
        assert_eq!(parse(&split), Parse::Done(want));
    }
}
