//! The upstream request's headers: hop-by-hop stripping, x-forwarded-host, path rewrites, the
//! request built for the pool, and the small header parsers forwarding needs (grpc-timeout,
//! upgrades, x-envoy-* millisecond values, cookies).

use crate::http::body::RequestBody;
use crate::http::headers as hn;
use crate::router::action::RouteAction;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri, Version, header};
use std::time::Duration;

/// Hop-by-hop headers never forwarded.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    hn::KEEP_ALIVE,
    hn::PROXY_CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

/// Renders a timeout as Envoy's `toGrpcTimeout` does: milliseconds (`7000m`), or a coarser unit
/// once the value would pass eight digits.
pub(super) fn format_grpc_timeout(t: Duration) -> http::HeaderValue {
    const MAX: u128 = 99_999_999;
    let mut n = t.as_millis();
    let mut unit = 'm';
    for (next, div) in [('S', 1000), ('M', 60), ('H', 60)] {
        if n <= MAX {
            break;
        }
        n /= div;
        unit = next;
    }
    http::HeaderValue::from_str(&format!("{}{unit}", n.min(MAX))).unwrap_or(http::HeaderValue::from_static("0m"))
}

/// Parses a gRPC `grpc-timeout` value: digits then a unit (H, M, S, m, u, n).
pub(super) fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The upgrade type of an HTTP/1.1 upgrade request (`Connection: upgrade` + `Upgrade: x`).
pub(super) fn upgrade_type(h: &HeaderMap) -> Option<String> {
    let conn_upgrade = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")));
    if !conn_upgrade {
        return None;
    }
    h.get(header::UPGRADE).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_ascii_lowercase())
}

pub(super) fn take_header_ms(h: &mut HeaderMap, name: &HeaderName) -> Option<u64> {
    h.remove(name).and_then(|v| v.to_str().ok().and_then(|s| s.trim().parse().ok()))
}

/// Removes hop-by-hop headers; `nominated`: also those the `Connection` header names, which
/// Envoy does for requests only (a response keeps them; the differential test checks both).
pub(super) fn strip_hop_by_hop(h: &mut HeaderMap, nominated: bool) {
    // One pass over the names first: most messages carry none of these, or only
    // `connection: keep-alive`, and a scan is far cheaper than a hashed lookup per name.
    let mut connection = false;
    let mut other = false;
    for n in h.keys() {
        if n == header::CONNECTION {
            connection = true;
        } else if n == header::TE || HOP_BY_HOP.contains(n) {
            other = true;
        }
    }
    if connection {
        if nominated {
            strip_connection_named(h);
        }
        h.remove(header::CONNECTION);
    }
    if !other {
        return;
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    if h.get(header::TE).is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers")) {
        h.remove(header::TE);
    }
}

pub(super) fn strip_connection_named(h: &mut HeaderMap) {
    let mut named: Vec<HeaderName> = Vec::new();
    for v in h.get_all(header::CONNECTION) {
        let Ok(v) = v.to_str() else { continue };
        for token in v.split(',').map(str::trim) {
            // TE survives as `te: trailers`, checked on its own. The usual tokens
            // (keep-alive, close) name no header present: look before building a name.
            if token.eq_ignore_ascii_case("te") || !h.contains_key(token) {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(token.to_ascii_lowercase().as_bytes()) {
                named.push(n);
            }
        }
    }
    for n in named {
        h.remove(n);
    }
}

pub(super) fn append_x_forwarded_host(h: &mut HeaderMap, original: &str) {
    let v = match h.get(&hn::X_FORWARDED_HOST).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => format!("{prev},{original}"),
        _ => original.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&v) {
        h.insert(hn::X_FORWARDED_HOST, v);
    }
}

/// Applies `prefix_rewrite` / `regex_rewrite`; None when the path is unchanged.
pub(super) fn rewrite_path(action: &RouteAction, path_and_query: &str, matched_len: usize) -> Option<String> {
    let (path, query) = match path_and_query.find('?') {
        Some(i) => (&path_and_query[..i], &path_and_query[i..]),
        None => (path_and_query, ""),
    };
    if let Some(p) = &action.prefix_rewrite {
        let rest = path.get(matched_len.min(path.len())..).unwrap_or("");
        return Some(format!("{p}{rest}{query}"));
    }
    if let Some((re, sub)) = &action.regex_rewrite {
        return Some(format!("{}{query}", re.replace_all(path, sub.as_str())));
    }
    None
}

pub(super) fn build_request(
    parts: &Parts,
    mut headers: HeaderMap,
    authority: &str,
    path_and_query: &str,
    reuse_pq: Option<&PathAndQuery>,
    h2: bool,
    body: RequestBody,
) -> Result<Request<RequestBody>, http::Error> {
    let pq = match reuse_pq {
        Some(p) => p.clone(),
        None => PathAndQuery::try_from(path_and_query)?,
    };
    let uri = if h2 {
        Uri::builder().scheme("http").authority(authority).path_and_query(pq).build()?
    } else {
        Uri::builder().path_and_query(pq).build()?
    };
    if h2 {
        headers.remove(header::HOST);
    } else {
        // The downstream HTTP/1.1 Host is usually the authority already: keep it, no copy.
        let mut hosts = headers.get_all(header::HOST).iter();
        let same = hosts.next().is_some_and(|v| v.as_bytes() == authority.as_bytes()) && hosts.next().is_none();
        if !same {
            headers.insert(header::HOST, HeaderValue::from_str(authority)?);
        }
        // Envoy's HTTP/1.1 codec states an empty body explicitly, except for methods that
        // normally carry none.
        if matches!(body, RequestBody::Empty)
            && !headers.contains_key(header::CONTENT_LENGTH)
            && !matches!(
                parts.method,
                http::Method::GET
                    | http::Method::HEAD
                    | http::Method::DELETE
                    | http::Method::CONNECT
                    | http::Method::TRACE
            )
        {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
    }
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = if h2 { Version::HTTP_2 } else { Version::HTTP_11 };
    *req.headers_mut() = headers;
    Ok(req)
}

pub(super) fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
        v.split(';').map(str::trim).find_map(|kv| {
            let (k, val) = kv.split_once('=')?;
            (k == name).then_some(val)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_round_trip_in_envoys_units() {
        let f = |d: Duration| format_grpc_timeout(d).to_str().unwrap().to_string();
        assert_eq!(f(Duration::from_millis(7000)), "7000m");
        assert_eq!(f(Duration::from_millis(99_999_999)), "99999999m");
        assert_eq!(f(Duration::from_secs(200_000)), "200000S");
        assert_eq!(f(Duration::from_secs(3600 * 2_000_000)), "2000000H");
        assert_eq!(parse_grpc_timeout("7000m"), Some(Duration::from_millis(7000)));
        assert_eq!(parse_grpc_timeout("7S"), Some(Duration::from_secs(7)));
        assert_eq!(parse_grpc_timeout("1234567890m"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
    }
}
