//! The router's local answers: direct responses (`direct_response`) and redirects, with Envoy's
//! `Location` rules.

use http::request::Parts;
use http::{HeaderValue, Response, StatusCode, header};

use super::Downstream;
use crate::http::body::ResponseBody;
use crate::http::local_reply::LocalReplied;
use crate::router::action::DirectResponse;
use crate::router::redirect::Redirect;

/// A `direct_response`: its status and body; a 201 or 3xx points at the request's own URL.
pub(super) fn direct_response(
    d: &DirectResponse,
    parts: &Parts,
    ds: &Downstream<'_>,
    authority: &str,
    path_and_query: &str,
) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(d.body.clone()));
    *r.status_mut() = d.status;
    r.extensions_mut().insert(LocalReplied { flag: "", details: "direct_response", body: d.body.clone() });
    if !d.body.is_empty() {
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(d.body.len()));
    // Envoy points a 201 or 3xx direct response at the request's own URL.
    if d.status == StatusCode::CREATED || d.status.is_redirection() {
        let loc = format!("{}://{authority}{path_and_query}", scheme_for_redirect(parts, ds));
        if let Ok(v) = HeaderValue::from_str(&loc) {
            r.headers_mut().insert(header::LOCATION, v);
        }
    }
    r
}

/// A `redirect`: an empty body and the `Location` the route's rewrite rules give.
pub(super) fn redirect(
    rd: &Redirect,
    parts: &Parts,
    ds: &Downstream<'_>,
    authority: &str,
    path_and_query: &str,
    matched_len: usize,
) -> Response<ResponseBody> {
    let loc = rd.location(&scheme_for_redirect(parts, ds), authority, path_and_query, matched_len);
    let mut r = Response::new(ResponseBody::empty());
    *r.status_mut() = rd.status;
    r.extensions_mut().insert(LocalReplied { flag: "", details: "direct_response", body: bytes::Bytes::new() });
    if let Ok(v) = HeaderValue::from_str(&loc) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    r
}

/// `require_tls`: a 301 to the request's URL over https, empty body.
pub(super) fn https_redirect(authority: &str, path_and_query: &str) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::empty());
    *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
    r.extensions_mut().insert(LocalReplied { flag: "", details: "direct_response", body: bytes::Bytes::new() });
    if let Ok(v) = HeaderValue::from_str(&format!("https://{authority}{path_and_query}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    r
}

/// The scheme of the request as the client sent it: `x-forwarded-proto`, else the transport's.
fn scheme_for_redirect(parts: &Parts, ds: &Downstream<'_>) -> String {
    parts
        .headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| ds.scheme.to_string())
}
