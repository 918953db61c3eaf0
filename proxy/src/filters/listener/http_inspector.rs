//! `envoy.filters.listener.http_inspector`: peeks the first bytes of a plaintext connection and
//! reports `h2c` (HTTP/2 prior knowledge preface) or `http/1.1` / `http/1.0` for filter chain
//! matching (Istio's inbound chains match on it).

use std::time::Duration;

use tokio::net::TcpStream;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The application protocol, or None if the bytes are not HTTP.
pub async fn inspect(stream: &TcpStream, timeout: Duration) -> Option<&'static str> {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return None,
        };
        if n == 0 {
            return None;
        }
        match classify(&buf[..n]) {
            Classify::Done(p) => return p,
            Classify::NeedMore if n < buf.len() => {
                if tokio::time::Instant::now() >= deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Classify::NeedMore => return None,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Classify {
    Done(Option<&'static str>),
    NeedMore,
}

pub fn classify(b: &[u8]) -> Classify {
    let n = b.len().min(H2_PREFACE.len());
    if b[..n] == H2_PREFACE[..n] {
        return if b.len() >= H2_PREFACE.len() { Classify::Done(Some("h2c")) } else { Classify::NeedMore };
    }
    // An HTTP/1 request line: METHOD SP target SP HTTP/1.x CRLF
    let Some(eol) = b.iter().position(|&c| c == b'\n') else {
        if b.iter().any(|c| !(c.is_ascii_graphic() || *c == b' ' || *c == b'\r')) {
            return Classify::Done(None);
        }
        return Classify::NeedMore;
    };
    let line = &b[..eol];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&c| c == b' ');
    let (Some(method), Some(_target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Classify::Done(None);
    };
    if method.is_empty() || !method.iter().all(|c| c.is_ascii_uppercase()) {
        return Classify::Done(None);
    }
    match version {
        b"HTTP/1.1" => Classify::Done(Some("http/1.1")),
        b"HTTP/1.0" => Classify::Done(Some("http/1.0")),
        _ => Classify::Done(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: a\r\n"), Classify::Done(Some("http/1.1")));
        assert_eq!(classify(b"POST /x HTTP/1.0\r\n"), Classify::Done(Some("http/1.0")));
        assert_eq!(classify(H2_PREFACE), Classify::Done(Some("h2c")));
        assert_eq!(classify(b"PRI * HT"), Classify::NeedMore);
        assert_eq!(classify(b"GET / HT"), Classify::NeedMore);
        assert_eq!(classify(b"\x16\x03\x01\x00"), Classify::Done(None));
        assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Classify::Done(None));
    }
}
