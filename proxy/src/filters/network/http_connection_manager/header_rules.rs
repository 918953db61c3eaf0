//! Envoy's request-header rules (`ConnectionManagerUtility::mutateRequestHeaders` and the codec's
//! checks): HTTP/1.0, path normalisation, :authority, the trusted downstream address and
//! x-forwarded-for/-proto, internal vs external requests, x-envoy-* controls, x-request-id, XFCC
//! and via. Then the request goes to the filter manager.

use std::net::SocketAddr;

use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;

use super::connection::ConnCtx;
use crate::http::body::ResponseBody;
use crate::http::headers as hn;
use crate::http::local_reply::LocalReply;

/// The request-side work: Envoy's header rules, routing, filters, then the action.
pub(super) async fn process(
    req: Request<Incoming>,
    cx: &ConnCtx,
    timer: &crate::http::stream_timer::StreamTimer,
) -> Response<ResponseBody> {
    let hcm = &cx.hcm;
    if req.version() == Version::HTTP_10 && !hcm.accept_http_10 {
        let mut r =
            LocalReply::new(StatusCode::UPGRADE_REQUIRED, "Upgrade Required", "", "low_version").into_response();
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    if req.version() != Version::HTTP_2 && is_unconfigured_upgrade(req.headers(), &hcm.upgrades) {
        // Envoy's connection manager refuses an upgrade no `upgrade_configs` entry allows.
        let mut r = LocalReply::new(StatusCode::FORBIDDEN, "", "", "upgrade_failed").into_response();
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    let (mut parts, body) = req.into_parts();

    // Path normalisation happens before anything looks at the path (routes, RBAC).
    if hcm.normalize_path || hcm.merge_slashes || hcm.escaped_slashes != crate::http::path::EscapedSlashes::Keep {
        use crate::http::path::{Normalized, normalize};
        let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        match normalize(pq, hcm.normalize_path, hcm.merge_slashes, hcm.escaped_slashes) {
            Normalized::Unchanged => {}
            Normalized::Rewritten(p) => {
                let mut up = parts.uri.clone().into_parts();
                up.path_and_query = p.parse().ok();
                if let Ok(u) = http::Uri::from_parts(up) {
                    parts.uri = u;
                }
            }
            Normalized::Redirect(p) => {
                let mut r = LocalReply::new(StatusCode::TEMPORARY_REDIRECT, "", "", "path_normalization_redirect");
                if let Ok(v) = HeaderValue::from_str(&p) {
                    r.headers.insert(header::LOCATION, v);
                }
                return r.into_response();
            }
            Normalized::Reject => {
                // Envoy treats it as a protocol error: 400 and the connection closes.
                let mut r = LocalReply::new(StatusCode::BAD_REQUEST, "", "", "path_normalization_failed");
                r.headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
                return r.into_response();
            }
        }
    }

    // :authority (h2) or Host (h1).
    // Owned by a clone of the header or URI part (a reference count, no copy): `parts` is
    // changed below while this is in use.
    let (from_uri, from_host);
    let authority: &str = match parts.uri.authority() {
        Some(a) => {
            from_uri = a.clone();
            from_uri.as_str()
        }
        None => {
            from_host = parts.headers.get(header::HOST).cloned();
            from_host.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("")
        }
    };
    if authority.is_empty() {
        return LocalReply::new(StatusCode::BAD_REQUEST, "missing host header", "DPE", "missing_host_header")
            .into_response();
    }

    // Envoy's request header rules (ConnectionManagerUtility::mutateRequestHeaders): the
    // trusted downstream address, x-forwarded-for, internal or external, x-forwarded-proto.
    parts.headers.remove(&hn::X_ENVOY_INTERNAL);
    let (final_remote, allow_trusted_checks) = if hcm.use_remote_address {
        let allow = !parts.headers.contains_key(&hn::X_FORWARDED_FOR);
        let from_xff = match hcm.xff_num_trusted_hops {
            0 => None,
            n => xff_address(&parts.headers, n - 1).map(|(ip, _)| ip),
        };
        if !hcm.skip_xff_append {
            // A loopback peer is replaced by this host's address, as Envoy does.
            let ip = if cx.remote.ip().is_loopback() { cx.worker.shared.local_address } else { cx.remote.ip() };
            let ip = ip.to_string();
            let v = match parts.headers.get(&hn::X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
                Some(prev) if !prev.is_empty() => format!("{prev},{ip}"),
                _ => ip,
            };
            if let Ok(v) = HeaderValue::from_str(&v) {
                parts.headers.insert(hn::X_FORWARDED_FOR, v);
            }
        }
        let scheme = if cx.scheme == "https" { "https" } else { "http" };
        parts.headers.insert(hn::X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
        (Some(from_xff.map(|ip| SocketAddr::new(ip, 0)).unwrap_or(cx.remote)), allow)
    } else {
        match xff_address(&parts.headers, hcm.xff_num_trusted_hops) {
            Some((ip, single)) => (Some(SocketAddr::new(ip, 0)), single),
            None => (None, false),
        }
    };
    if !parts.headers.contains_key(&hn::X_FORWARDED_PROTO) {
        let scheme = if cx.scheme == "https" { "https" } else { "http" };
        parts.headers.insert(hn::X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    }
    let internal =
        allow_trusted_checks && final_remote.is_some_and(|a| hcm.internal_addresses.iter().any(|c| c.contains(a.ip())));
    let downstream_remote = final_remote.unwrap_or(cx.remote);
    let edge = hcm.use_remote_address && !internal;
    if internal {
        parts.headers.insert(hn::X_ENVOY_INTERNAL, HeaderValue::from_static("true"));
    } else {
        if hcm.use_remote_address
            && let Ok(v) = HeaderValue::from_str(&downstream_remote.ip().to_string())
        {
            parts.headers.insert(hn::X_ENVOY_EXTERNAL_ADDRESS, v);
        }
        // External requests may not steer the proxy.
        if hn::has_envoy_headers(&parts.headers) {
            for h in ENVOY_CONTROL_HEADERS {
                parts.headers.remove(*h);
            }
        }
    }
    // x-request-id
    if hcm.generate_request_id
        && (!parts.headers.contains_key(&hn::X_REQUEST_ID) || (edge && !hcm.preserve_external_request_id))
    {
        let id = uuid::Uuid::new_v4();
        let mut buf = uuid::Uuid::encode_buffer();
        if let Ok(v) = HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf)) {
            parts.headers.insert(hn::X_REQUEST_ID, v);
        }
    }
    hcm.xfcc.apply(&mut parts.headers, &cx.conn);
    if let Some(via) = &hcm.via {
        parts.headers.append(header::VIA, via.clone());
    }
    // Cloning a header value shares its bytes, which costs an allocation: only when needed.
    let request_id =
        if hcm.always_set_request_id_in_response { parts.headers.get(&hn::X_REQUEST_ID).cloned() } else { None };

    let mut resp = super::filter_manager::run(cx, &mut parts, body, authority, downstream_remote, timer).await;
    if let Some(id) = request_id {
        resp.headers_mut().insert(hn::X_REQUEST_ID, id);
    }
    resp
}

/// An HTTP/1.1 upgrade (`Connection: upgrade` and an `Upgrade` header) whose type is not among
/// the HCM's enabled `upgrade_configs`.
fn is_unconfigured_upgrade(h: &http::HeaderMap, enabled: &[String]) -> bool {
    let Some(kind) = h.get(header::UPGRADE) else { return false };
    if kind.as_bytes().trim_ascii().eq_ignore_ascii_case(b"h2c") {
        // Envoy ignores an h2c upgrade and serves the request on HTTP/1.1.
        return false;
    }
    let asks = h
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| v.as_bytes().split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade")));
    asks && !enabled.iter().any(|e| e.as_bytes().eq_ignore_ascii_case(kind.as_bytes().trim_ascii()))
}

/// The last XFF address (after trusting `trusted_hops` more), as Envoy's remote address.
/// Envoy's `getLastAddressFromXFF`: the address `skip` entries from the end, and whether XFF
/// had a single entry (only then may it decide internal vs external).
fn xff_address(h: &http::HeaderMap, skip: u32) -> Option<(std::net::IpAddr, bool)> {
    let v = h.get(&hn::X_FORWARDED_FOR)?.to_str().ok()?;
    let parts: Vec<&str> = v.split(',').map(str::trim).collect();
    let idx = parts.len().checked_sub(1 + skip as usize)?;
    let ip = parts.get(idx)?.parse().ok()?;
    Some((ip, parts.len() == 1))
}

/// Envoy's x-envoy-* request controls, removed from external requests.
const ENVOY_CONTROL_HEADERS: &[&str] = &[
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
    "x-envoy-original-url",
];
