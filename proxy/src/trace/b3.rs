//! B3 propagation as Envoy's Zipkin tracer reads and writes it: the multi-header form
//! (`x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`) and the single `b3` header
//! (`{traceid}-{spanid}[-{sampled}[-{parentspanid}]]`, or a lone sampling flag) on input.

use http::HeaderMap;

pub const X_B3_TRACE_ID: &str = "x-b3-traceid";
pub const X_B3_SPAN_ID: &str = "x-b3-spanid";
pub const X_B3_PARENT_SPAN_ID: &str = "x-b3-parentspanid";
pub const X_B3_SAMPLED: &str = "x-b3-sampled";
pub const B3: &str = "b3";

/// An incoming span context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    pub trace_id_high: Option<u64>,
    pub trace_id: u64,
    pub span_id: u64,
    pub parent_id: u64,
}

/// The incoming context could not be read: Envoy then traces nothing for this request.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    // An untrusted header: only the first value counts.
    h.get(name).map(|v| v.to_str().unwrap_or("\u{0}"))
}

/// Envoy's `StringUtil::atoull(.., 16)`: a whole non-empty hex string that fits in 64 bits.
fn hex(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

fn flag(c: u8, traced: bool) -> bool {
    match c {
        b'0' => false,
        b'1' | b'd' => true,
        _ => traced,
    }
}

/// Whether the request is sampled: the incoming B3 flag when there is one, else the decision.
pub fn sampled(h: &HeaderMap, traced: bool) -> bool {
    if let Some(b3) = header(h, B3) {
        let b = b3.as_bytes();
        let pos = match b.len() {
            1 => 0,
            35 | 52 => 34,
            51 | 68 => 50,
            _ => return traced,
        };
        return flag(b[pos], traced);
    }
    match header(h, X_B3_SAMPLED) {
        Some(s) => s == "1" || s == "true",
        None => traced,
    }
}

/// The incoming context, if any (the `b3` header wins over the multi-header form).
pub fn extract(h: &HeaderMap) -> Result<Option<Context>, Malformed> {
    if let Some(b3) = header(h, B3) {
        return single(b3);
    }
    let (Some(tid), Some(sid)) = (header(h, X_B3_TRACE_ID), header(h, X_B3_SPAN_ID)) else {
        return Ok(None);
    };
    let (trace_id_high, trace_id) = if tid.len() == 32 {
        (Some(hex(&tid[..16]).ok_or(Malformed)?), hex(&tid[16..]).ok_or(Malformed)?)
    } else {
        (None, hex(tid).ok_or(Malformed)?)
    };
    let span_id = hex(sid).ok_or(Malformed)?;
    let parent_id = match header(h, X_B3_PARENT_SPAN_ID) {
        Some(p) if !p.is_empty() => hex(p).ok_or(Malformed)?,
        _ => 0,
    };
    Ok(Some(Context { trace_id_high, trace_id, span_id, parent_id }))
}

fn valid_flag(c: u8) -> bool {
    matches!(c, b'0' | b'1' | b'd')
}

/// The single `b3` header.
fn single(b3: &str) -> Result<Option<Context>, Malformed> {
    let b = b3.as_bytes();
    if b.len() == 1 {
        return if valid_flag(b[0]) { Ok(None) } else { Err(Malformed) };
    }
    if b.len() < 16 + 1 + 16 || !b3.is_ascii() {
        return Err(Malformed);
    }
    let (trace_id_high, trace_id, mut pos) = if b[16] == b'-' {
        (None, hex(&b3[..16]).ok_or(Malformed)?, 16)
    } else {
        if b.len() < 32 + 1 + 16 {
            return Err(Malformed);
        }
        (Some(hex(&b3[..16]).ok_or(Malformed)?), hex(&b3[16..32]).ok_or(Malformed)?, 32)
    };
    if b[pos] != b'-' {
        return Err(Malformed);
    }
    pos += 1;
    let span = b3.get(pos..pos + 16).ok_or(Malformed)?;
    let span_id = hex(span).ok_or(Malformed)?;
    pos += 16;
    let mut parent_id = 0;
    if b.len() > pos {
        if b[pos] != b'-' {
            return Err(Malformed);
        }
        pos += 1;
        // The sampling flag, then optionally the parent span id.
        if !valid_flag(*b.get(pos).ok_or(Malformed)?) {
            return Err(Malformed);
        }
        pos += 1;
        if b.len() > pos {
            if b[pos] != b'-' || b.len() != pos + 1 + 16 {
                return Err(Malformed);
            }
            parent_id = hex(&b3[pos + 1..]).ok_or(Malformed)?;
        }
    }
    Ok(Some(Context { trace_id_high, trace_id, span_id, parent_id }))
}

/// 16 lowercase hex digits.
pub fn hex16(v: u64) -> String {
    format!("{v:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn multi_header() {
        let h = hm(&[
            (X_B3_TRACE_ID, "463ac35c9f6413ad48485a3953bb6124"),
            (X_B3_SPAN_ID, "a2fb4a1d1a96d312"),
            (X_B3_PARENT_SPAN_ID, "0020000000000001"),
            (X_B3_SAMPLED, "1"),
        ]);
        let c = extract(&h).unwrap().unwrap();
        assert_eq!(c.trace_id_high, Some(0x463ac35c9f6413ad));
        assert_eq!(c.trace_id, 0x48485a3953bb6124);
        assert_eq!(c.span_id, 0xa2fb4a1d1a96d312);
        assert_eq!(c.parent_id, 0x20000000000001);
        assert!(sampled(&h, false));
        assert_eq!(extract(&hm(&[(X_B3_TRACE_ID, "zz"), (X_B3_SPAN_ID, "1")])), Err(Malformed));
        assert_eq!(extract(&hm(&[(X_B3_TRACE_ID, "1")])), Ok(None));
        assert!(!sampled(&hm(&[(X_B3_SAMPLED, "0")]), true));
    }

    #[test]
    fn single_header() {
        let h = hm(&[(B3, "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")]);
        let c = extract(&h).unwrap().unwrap();
        assert_eq!(c.trace_id_high, Some(0x80f198ee56343ba8));
        assert_eq!(c.span_id, 0xe457b5a2e4d86bd1);
        assert_eq!(c.parent_id, 0x05e3ac9a4f6e3b90);
        assert!(sampled(&h, false));
        let h = hm(&[(B3, "e457b5a2e4d86bd1-05e3ac9a4f6e3b90-0")]);
        let c = extract(&h).unwrap().unwrap();
        assert_eq!((c.trace_id_high, c.trace_id), (None, 0xe457b5a2e4d86bd1));
        assert!(!sampled(&h, true));
        assert_eq!(extract(&hm(&[(B3, "0")])), Ok(None));
        assert!(!sampled(&hm(&[(B3, "0")]), true));
        assert_eq!(extract(&hm(&[(B3, "x")])), Err(Malformed));
        assert_eq!(extract(&hm(&[(B3, "e457b5a2e4d86bd1-05e3ac9a4f6e3b9")])), Err(Malformed));
        assert_eq!(extract(&hm(&[(B3, "e457b5a2e4d86bd1-05e3ac9a4f6e3b90-x")])), Err(Malformed));
    }
}
