//! Route `redirect` actions: Envoy's rules for building the `location` header.

use envoy_types::pb::envoy::config::route::v3::{RedirectAction as RedirectProto, redirect_action};
use http::StatusCode;

use super::action::re2_substitution;
use crate::config::ConfigError;

#[derive(Debug, Clone)]
enum PathRewrite {
    None,
    Path(String),
    Prefix(String),
    Regex(regex::Regex, String),
}

/// A compiled `RedirectAction`.
#[derive(Debug, Clone)]
pub struct Redirect {
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u32>,
    path: PathRewrite,
    strip_query: bool,
    pub status: StatusCode,
}

impl Redirect {
    pub fn from_proto(p: &RedirectProto, field: &str) -> Result<Self, ConfigError> {
        use redirect_action::{PathRewriteSpecifier as PR, RedirectResponseCode as RC, SchemeRewriteSpecifier as SR};
        let scheme = match &p.scheme_rewrite_specifier {
            Some(SR::HttpsRedirect(true)) => Some("https".to_string()),
            Some(SR::HttpsRedirect(false)) | None => None,
            Some(SR::SchemeRedirect(s)) => Some(s.to_ascii_lowercase()),
        };
        let path = match &p.path_rewrite_specifier {
            None => PathRewrite::None,
            Some(PR::PathRedirect(s)) => PathRewrite::Path(s.clone()),
            Some(PR::PrefixRewrite(s)) => PathRewrite::Prefix(s.clone()),
            Some(PR::PathRewrite(_)) => {
                return Err(ConfigError::new(
                    format!("{field}.path_rewrite"),
                    "path template rewrites are not supported",
                ));
            }
            Some(PR::RegexRewrite(r)) => {
                let pat = r.pattern.as_ref().map(|m| m.regex.clone()).unwrap_or_default();
                let re = regex::Regex::new(&pat)
                    .map_err(|e| ConfigError::new(format!("{field}.regex_rewrite"), e.to_string()))?;
                PathRewrite::Regex(re, re2_substitution(&r.substitution))
            }
        };
        let status = match RC::try_from(p.response_code) {
            Ok(RC::MovedPermanently) => StatusCode::MOVED_PERMANENTLY,
            Ok(RC::Found) => StatusCode::FOUND,
            Ok(RC::SeeOther) => StatusCode::SEE_OTHER,
            Ok(RC::TemporaryRedirect) => StatusCode::TEMPORARY_REDIRECT,
            Ok(RC::PermanentRedirect) => StatusCode::PERMANENT_REDIRECT,
            Err(_) => {
                return Err(ConfigError::new(format!("{field}.response_code"), "unknown response code"));
            }
        };
        Ok(Redirect {
            scheme,
            host: (!p.host_redirect.is_empty()).then(|| p.host_redirect.clone()),
            port: (p.port_redirect != 0).then_some(p.port_redirect),
            path,
            strip_query: p.strip_query,
            status,
        })
    }

    /// Builds the new URI. `matched_prefix_len` is the length of the route's matched prefix (for
    /// `prefix_rewrite`).
    pub fn location(&self, scheme: &str, host: &str, path_and_query: &str, matched_prefix_len: usize) -> String {
        let final_scheme = self.scheme.as_deref().unwrap_or(scheme);
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        let final_host = match &self.host {
            Some(h) => {
                if self.port.is_some() {
                    strip_port(h).to_string()
                } else {
                    h.clone()
                }
            }
            None => {
                let (h, req_port) = split_port(host);
                match req_port {
                    Some(rp)
                        if self.port.is_some()
                            || (final_scheme == "http" && rp == "80")
                            || (final_scheme == "https" && rp == "443")
                            || (self.scheme.is_some() && final_scheme != scheme) =>
                    {
                        h.to_string()
                    }
                    _ => host.to_string(),
                }
            }
        };
        let (path, query) = match path_and_query.find('?') {
            Some(i) => (&path_and_query[..i], &path_and_query[i..]),
            None => (path_and_query, ""),
        };
        let mut final_path = match &self.path {
            PathRewrite::None => path_and_query.to_string(),
            PathRewrite::Path(p) => {
                if p.contains('?') {
                    p.clone()
                } else {
                    format!("{p}{query}")
                }
            }
            PathRewrite::Prefix(p) => {
                let rest = path.get(matched_prefix_len.min(path.len())..).unwrap_or("");
                format!("{p}{rest}{query}")
            }
            PathRewrite::Regex(re, sub) => format!("{}{query}", re.replace_all(path, sub.as_str())),
        };
        if self.strip_query
            && let Some(i) = final_path.find('?')
        {
            final_path.truncate(i);
        }
        format!("{final_scheme}://{final_host}{port}{final_path}")
    }
}

fn split_port(host: &str) -> (&str, Option<&str>) {
    // IPv6 literal: [::1]:80
    if let Some(end) = host.rfind(']') {
        return match host[end..].find(':') {
            Some(i) => (&host[..end + i], Some(&host[end + i + 1..])),
            None => (host, None),
        };
    }
    match host.rfind(':') {
        Some(i) => (&host[..i], Some(&host[i + 1..])),
        None => (host, None),
    }
}

fn strip_port(host: &str) -> &str {
    split_port(host).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use redirect_action::{PathRewriteSpecifier as PR, SchemeRewriteSpecifier as SR};

    #[test]
    fn builds_locations() {
        let r = |p: RedirectProto| Redirect::from_proto(&p, "r").unwrap();
        let https = r(RedirectProto { scheme_rewrite_specifier: Some(SR::HttpsRedirect(true)), ..Default::default() });
        assert_eq!(https.location("http", "a.com:80", "/x?y=1", 0), "https://a.com/x?y=1");
        let host = r(RedirectProto { host_redirect: "b.com".into(), ..Default::default() });
        assert_eq!(host.location("http", "a.com", "/x", 0), "http://b.com/x");
        let prefix = r(RedirectProto {
            path_rewrite_specifier: Some(PR::PrefixRewrite("/new".into())),
            strip_query: true,
            ..Default::default()
        });
        assert_eq!(prefix.location("http", "a.com", "/old/x?q", 4), "http://a.com/new/x");
        let port = r(RedirectProto { port_redirect: 8443, ..Default::default() });
        assert_eq!(port.location("http", "a.com:80", "/", 0), "http://a.com:8443/");
    }
}
