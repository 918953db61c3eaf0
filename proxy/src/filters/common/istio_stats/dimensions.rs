//! `metrics[].dimensions`: the attribute expressions Istio's Telemetry API writes for
//! `tagOverrides` (`request.host`, `request.headers['x-user']`, `response.code`, a quoted string).
//! Each is recognised at config time; anything else is refused with its path. Request
//! attributes are read once per request (at most `MAX` distinct ones per filter) and interned, so
//! they join the cache key like the standard labels; a missing value reads `unknown`, as an
//! expression Istio cannot evaluate does.

use std::collections::HashSet;
use std::sync::Mutex;

/// Distinct request attributes a filter's dimensions may read.
pub const MAX: usize = 4;

/// A request attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attr {
    Host,
    Method,
    /// The path with its query (`request.path`).
    Path,
    /// The path without its query (`request.url_path`).
    UrlPath,
    Scheme,
    Header(http::HeaderName),
}

impl Attr {
    /// The attribute's value on a request ("" when absent).
    pub fn read<'a>(&self, req: &'a http::request::Parts) -> &'a str {
        match self {
            Attr::Host => req
                .uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| req.headers.get(http::header::HOST).and_then(|v| v.to_str().ok()))
                .unwrap_or_default(),
            Attr::Method => req.method.as_str(),
            Attr::Path => req.uri.path_and_query().map_or("", |p| p.as_str()),
            Attr::UrlPath => req.uri.path(),
            Attr::Scheme => req.uri.scheme_str().unwrap_or("http"),
            Attr::Header(h) => req.headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or_default(),
        }
    }
}

/// What a dimension's value is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Literal(String),
    /// A request attribute, by its index in the filter's attribute list.
    Request(usize),
    ResponseCode,
}

/// A parsed expression: a literal, `response.code`, or a request attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Literal(String),
    ResponseCode,
    Request(Attr),
}

fn quoted(s: &str) -> Option<&str> {
    let q = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let inner = s.strip_prefix(q)?.strip_suffix(q)?;
    (!inner.contains(q) && !inner.contains('\\')).then_some(inner)
}

/// Recognises the simple attribute expressions; None for anything else.
pub fn parse(expr: &str) -> Option<Expr> {
    let e = expr.trim();
    if let Some(lit) = quoted(e) {
        return Some(Expr::Literal(lit.to_string()));
    }
    Some(match e {
        "response.code" => Expr::ResponseCode,
        "request.host" => Expr::Request(Attr::Host),
        "request.method" => Expr::Request(Attr::Method),
        "request.path" => Expr::Request(Attr::Path),
        "request.url_path" => Expr::Request(Attr::UrlPath),
        "request.scheme" => Expr::Request(Attr::Scheme),
        _ => {
            let name = quoted(e.strip_prefix("request.headers[")?.strip_suffix(']')?)?;
            Expr::Request(Attr::Header(http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok()?))
        }
    })
}

/// A tag name from config as a `&'static str` (tag names key the stat store's labels); each
/// distinct name is kept once for the life of the process.
pub fn tag_name(name: &str) -> &'static str {
    static NAMES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut g = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    let set = g.get_or_insert_with(HashSet::new);
    if let Some(n) = set.get(name) {
        return n;
    }
    let n: &'static str = Box::leak(name.to_string().into_boxed_str());
    set.insert(n);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_simple_expressions_only() {
        assert_eq!(parse("request.host"), Some(Expr::Request(Attr::Host)));
        assert_eq!(parse(" request.url_path "), Some(Expr::Request(Attr::UrlPath)));
        assert_eq!(
            parse("request.headers['X-User']"),
            Some(Expr::Request(Attr::Header(http::HeaderName::from_static("x-user"))))
        );
        assert_eq!(parse("\"v2\""), Some(Expr::Literal("v2".into())));
        assert_eq!(parse("response.code"), Some(Expr::ResponseCode));
        for bad in ["request.host + 'x'", "upstream_peer.labels['app'].value", "string(destination.port)", "'a", ""] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert!(std::ptr::eq(tag_name("request_host"), tag_name("request_host")));
    }
}
