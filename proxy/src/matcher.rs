//! Envoy's string and header matchers, compiled once at config time.

use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher as HeaderMatcherProto, header_matcher};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher as StringMatcherProto, string_matcher};
use http::HeaderMap;

use crate::config::ConfigError;

/// A compiled `envoy.type.matcher.v3.StringMatcher`.
#[derive(Debug, Clone)]
pub enum StringMatcher {
    Exact(String, bool),
    Prefix(String, bool),
    Suffix(String, bool),
    Contains(String, bool),
    Regex(regex::Regex),
}

/// Compiles an RE2 `safe_regex` for a full match, as Envoy does.
pub fn compile_regex(r: &RegexMatcher, field: &str) -> Result<regex::Regex, ConfigError> {
    compile_full_regex(&r.regex, field)
}

pub fn compile_full_regex(pattern: &str, field: &str) -> Result<regex::Regex, ConfigError> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| ConfigError::new(field, format!("invalid regex {pattern:?}: {e}")))
}

impl StringMatcher {
    pub fn from_proto(p: &StringMatcherProto, field: &str) -> Result<Self, ConfigError> {
        use string_matcher::MatchPattern as P;
        let ic = p.ignore_case;
        let fold = |s: &str| {
            if ic { s.to_ascii_lowercase() } else { s.to_string() }
        };
        Ok(match &p.match_pattern {
            Some(P::Exact(s)) => StringMatcher::Exact(fold(s), ic),
            Some(P::Prefix(s)) => StringMatcher::Prefix(fold(s), ic),
            Some(P::Suffix(s)) => StringMatcher::Suffix(fold(s), ic),
            Some(P::Contains(s)) => StringMatcher::Contains(fold(s), ic),
            Some(P::SafeRegex(r)) => StringMatcher::Regex(compile_regex(r, field)?),
            Some(P::Custom(c)) => {
                return Err(ConfigError::new(field, format!("custom string matcher {} is not supported", c.name)));
            }
            None => {
                return Err(ConfigError::new(field, "StringMatcher needs a match_pattern"));
            }
        })
    }

    pub fn matches(&self, v: &str) -> bool {
        fn cmp(ic: bool, v: &str, f: impl Fn(&str) -> bool) -> bool {
            if ic { f(&v.to_ascii_lowercase()) } else { f(v) }
        }
        match self {
            StringMatcher::Exact(s, ic) => {
                if *ic {
                    v.eq_ignore_ascii_case(s)
                } else {
                    v == s
                }
            }
            StringMatcher::Prefix(s, ic) => {
                v.len() >= s.len()
                    && v.is_char_boundary(s.len())
                    && if *ic { v[..s.len()].eq_ignore_ascii_case(s) } else { v.starts_with(s.as_str()) }
            }
            StringMatcher::Suffix(s, ic) => {
                v.len() >= s.len()
                    && v.is_char_boundary(v.len() - s.len())
                    && if *ic { v[v.len() - s.len()..].eq_ignore_ascii_case(s) } else { v.ends_with(s.as_str()) }
            }
            StringMatcher::Contains(s, ic) => cmp(*ic, v, |x| x.contains(s.as_str())),
            StringMatcher::Regex(r) => r.is_match(v),
        }
    }
}

/// What a header matcher can look at: the regular headers plus the request's pseudo-headers.
pub struct RequestHeaders<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub scheme: &'a str,
    pub headers: &'a HeaderMap,
}

impl RequestHeaders<'_> {
    /// All values of a header joined by "," (Envoy's getAllOfHeaderAsString), or None if absent.
    pub fn get(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        match name {
            ":method" => return Some(Cow::Borrowed(self.method)),
            ":path" => return Some(Cow::Borrowed(self.path)),
            ":authority" | "host" => return Some(Cow::Borrowed(self.authority)),
            ":scheme" => return Some(Cow::Borrowed(self.scheme)),
            _ => {}
        }
        let mut it = self.headers.get_all(name).iter();
        let first = it.next()?;
        let first = String::from_utf8_lossy(first.as_bytes());
        let mut rest = it.peekable();
        if rest.peek().is_none() {
            return Some(first);
        }
        let mut s = first.into_owned();
        for v in rest {
            s.push(',');
            s.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
        Some(Cow::Owned(s))
    }
}

#[derive(Debug, Clone)]
enum HeaderTest {
    Present(bool),
    String(StringMatcher),
    Range(i64, i64),
}

/// A compiled route `HeaderMatcher`.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    name: String,
    test: HeaderTest,
    invert: bool,
    treat_missing_as_empty: bool,
}

impl HeaderMatcher {
    pub fn from_proto(p: &HeaderMatcherProto, field: &str) -> Result<Self, ConfigError> {
        use header_matcher::HeaderMatchSpecifier as S;
        if p.name.is_empty() {
            return Err(ConfigError::new(field, "header matcher name must not be empty"));
        }
        let test = match &p.header_match_specifier {
            None => HeaderTest::Present(true),
            Some(S::ExactMatch(s)) => HeaderTest::String(StringMatcher::Exact(s.clone(), false)),
            Some(S::SafeRegexMatch(r)) => HeaderTest::String(StringMatcher::Regex(compile_regex(r, field)?)),
            Some(S::RangeMatch(r)) => HeaderTest::Range(r.start, r.end),
            Some(S::PresentMatch(b)) => HeaderTest::Present(*b),
            Some(S::PrefixMatch(s)) => HeaderTest::String(StringMatcher::Prefix(s.clone(), false)),
            Some(S::SuffixMatch(s)) => HeaderTest::String(StringMatcher::Suffix(s.clone(), false)),
            Some(S::ContainsMatch(s)) => HeaderTest::String(StringMatcher::Contains(s.clone(), false)),
            Some(S::StringMatch(m)) => HeaderTest::String(StringMatcher::from_proto(m, field)?),
        };
        Ok(HeaderMatcher {
            name: p.name.to_ascii_lowercase(),
            test,
            invert: p.invert_match,
            treat_missing_as_empty: p.treat_missing_header_as_empty,
        })
    }

    pub fn matches(&self, req: &RequestHeaders<'_>) -> bool {
        let value = req.get(&self.name);
        let value = match (value, self.treat_missing_as_empty) {
            (Some(v), _) => Some(v),
            (None, true) => Some(std::borrow::Cow::Borrowed("")),
            (None, false) => None,
        };
        let result = match (&self.test, value) {
            // present_match: false matches when the header is absent.
            (HeaderTest::Present(want), v) => v.is_some() == *want,
            (_, None) => return false, // absent headers never match, even inverted (Envoy)
            (HeaderTest::String(m), Some(v)) => m.matches(&v),
            (HeaderTest::Range(lo, hi), Some(v)) => v.parse::<i64>().is_ok_and(|n| n >= *lo && n < *hi),
        };
        result != self.invert
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_matchers() {
        let m = |p: string_matcher::MatchPattern, ic| {
            StringMatcher::from_proto(&StringMatcherProto { match_pattern: Some(p), ignore_case: ic }, "f").unwrap()
        };
        use string_matcher::MatchPattern as P;
        assert!(m(P::Exact("Abc".into()), true).matches("aBC"));
        assert!(!m(P::Exact("Abc".into()), false).matches("aBC"));
        assert!(m(P::Prefix("/ap".into()), false).matches("/api"));
        assert!(m(P::Suffix(".JS".into()), true).matches("x.js"));
        assert!(m(P::Contains("mid".into()), false).matches("amidb"));
        let re = P::SafeRegex(RegexMatcher { regex: "a+b".into(), ..Default::default() });
        assert!(m(re.clone(), false).matches("aab"));
        assert!(!m(re, false).matches("xaab"), "safe_regex is a full match");
    }

    #[test]
    fn header_matcher_present_absent_invert() {
        let mut h = HeaderMap::new();
        h.insert("x-a", "1".parse().unwrap());
        h.append("x-m", "a".parse().unwrap());
        h.append("x-m", "b".parse().unwrap());
        let req = RequestHeaders { method: "GET", path: "/", authority: "h", scheme: "http", headers: &h };
        let hm = |spec, invert| {
            HeaderMatcher::from_proto(
                &HeaderMatcherProto {
                    name: "x-a".into(),
                    header_match_specifier: spec,
                    invert_match: invert,
                    ..Default::default()
                },
                "f",
            )
            .unwrap()
        };
        use header_matcher::HeaderMatchSpecifier as S;
        assert!(hm(Some(S::PresentMatch(true)), false).matches(&req));
        assert!(!hm(Some(S::PresentMatch(false)), false).matches(&req));
        assert!(!hm(Some(S::ExactMatch("1".into())), true).matches(&req));
        assert!(
            hm(Some(S::RangeMatch(envoy_types::pb::envoy::r#type::v3::Int64Range { start: 0, end: 5 })), false)
                .matches(&req)
        );
        assert_eq!(req.get("x-m").unwrap(), "a,b");
        assert_eq!(req.get(":method").unwrap(), "GET");
    }
}
