//! Envoy's string and header matchers, compiled once at config time.

use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher as HeaderMatcherProto, header_matcher};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    MetadataMatcher as MetadataMatcherProto, PathMatcher as PathMatcherProto, RegexMatcher,
    StringMatcher as StringMatcherProto, ValueMatcher as ValueMatcherProto, metadata_matcher, path_matcher,
    string_matcher, value_matcher,
};
use envoy_types::pb::google::protobuf::{Struct as PbStruct, Value as PbValue, value::Kind};
use envoy_types::pb::xds::r#type::matcher::v3::StringMatcher as XdsStringMatcher;
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
        self.matches_value(req.get(&self.name))
    }

    /// The header name this matcher reads (lowercase).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the matcher asks, in words (route explain).
    pub fn describe(&self) -> String {
        let test = match &self.test {
            HeaderTest::Present(true) => "is present".to_string(),
            HeaderTest::Present(false) => "is absent".to_string(),
            HeaderTest::String(m) => m.describe(),
            HeaderTest::Range(lo, hi) => format!("is an integer in [{lo}, {hi})"),
        };
        let not = if self.invert { "not: " } else { "" };
        format!("{}: {not}{test}", self.name)
    }

    /// Matches the (comma-joined) value of the header, `None` when the request lacks it.
    pub fn matches_value(&self, value: Option<std::borrow::Cow<'_, str>>) -> bool {
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

// === impl StringMatcher (xds) ===

impl StringMatcher {
    /// What the matcher asks, in words (route explain).
    pub fn describe(&self) -> String {
        let case = |ic: bool| if ic { " (ignoring case)" } else { "" };
        match self {
            StringMatcher::Exact(v, ic) => format!("equals \"{v}\"{}", case(*ic)),
            StringMatcher::Prefix(v, ic) => format!("starts with \"{v}\"{}", case(*ic)),
            StringMatcher::Suffix(v, ic) => format!("ends with \"{v}\"{}", case(*ic)),
            StringMatcher::Contains(v, ic) => format!("contains \"{v}\"{}", case(*ic)),
            StringMatcher::Regex(r) => format!("matches regex \"{}\"", r.as_str()),
        }
    }

    /// Compiles the `xds.type.matcher.v3.StringMatcher` used by the unified matcher API (same
    /// semantics as Envoy's own StringMatcher).
    pub fn from_xds(p: &XdsStringMatcher, field: &str) -> Result<Self, ConfigError> {
        use envoy_types::pb::xds::r#type::matcher::v3::string_matcher::MatchPattern as X;
        use string_matcher::MatchPattern as P;
        let pattern = match &p.match_pattern {
            Some(X::Exact(s)) => P::Exact(s.clone()),
            Some(X::Prefix(s)) => P::Prefix(s.clone()),
            Some(X::Suffix(s)) => P::Suffix(s.clone()),
            Some(X::Contains(s)) => P::Contains(s.clone()),
            Some(X::SafeRegex(r)) => P::SafeRegex(RegexMatcher { regex: r.regex.clone(), ..Default::default() }),
            Some(X::Custom(c)) => {
                return Err(ConfigError::new(field, format!("custom string matcher {} is not supported", c.name)));
            }
            None => return Err(ConfigError::new(field, "StringMatcher needs a match_pattern")),
        };
        StringMatcher::from_proto(
            &StringMatcherProto { match_pattern: Some(pattern), ignore_case: p.ignore_case },
            field,
        )
    }
}

// === impl Cidr ===

/// A CIDR block as `filter_chain_match` and the HCM's `internal_address_config` read it: an unset
/// `prefix_len` is the whole address (a host) and a length beyond the family's width is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub ip: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn from_proto(c: &CidrRange, field: &str) -> Result<Self, ConfigError> {
        let ip: IpAddr = c
            .address_prefix
            .parse()
            .map_err(|_| ConfigError::new(field, format!("malformed IP address: {}", c.address_prefix)))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = c.prefix_len.map(|v| v.value).unwrap_or(max);
        if len > max {
            return Err(ConfigError::new(field, format!("invalid prefix length {len}")));
        }
        Ok(Cidr { ip, len: len as u8 })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.ip, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            (_, ip) => ip,
        };
        match (self.ip, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = if self.len == 0 { 0 } else { u32::MAX << (32 - self.len as u32) };
                (u32::from(a) & mask) == (u32::from(b) & mask)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = if self.len == 0 { 0 } else { u128::MAX << (128 - self.len as u32) };
                (u128::from(a) & mask) == (u128::from(b) & mask)
            }
            _ => false,
        }
    }
}

// === impl IpRange ===

/// A CIDR range as RBAC and the IP input matcher read `envoy.config.core.v3.CidrRange`: an unset
/// `prefix_len` is 0 (the whole address family) and a length beyond the family's width is clamped
/// to it, as Envoy does. IPv4-mapped IPv6 addresses are compared as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    net: IpAddr,
    len: u8,
}

impl IpRange {
    pub fn from_proto(c: &CidrRange, field: &str) -> Result<Self, ConfigError> {
        let ip: IpAddr = c.address_prefix.parse().map_err(|_| {
            ConfigError::new(field, format!("Failed to create CIDR range: malformed IP address: {}", c.address_prefix))
        })?;
        let ip = ip.to_canonical();
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = c.prefix_len.map(|v| v.value).unwrap_or(0).min(max) as u8;
        Ok(IpRange { net: ip, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                (u32::from(a) & mask) == (u32::from(b) & mask)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.len)).unwrap_or(0);
                (u128::from(a) & mask) == (u128::from(b) & mask)
            }
            _ => false,
        }
    }
}

// === impl PathMatcher ===

/// A compiled `envoy.type.matcher.v3.PathMatcher`: a StringMatcher on the request path without
/// its query string and fragment.
#[derive(Debug, Clone)]
pub struct PathMatcher(StringMatcher);

impl PathMatcher {
    pub fn from_proto(p: &PathMatcherProto, field: &str) -> Result<Self, ConfigError> {
        match &p.rule {
            Some(path_matcher::Rule::Path(m)) => {
                Ok(PathMatcher(StringMatcher::from_proto(m, &format!("{field}.path"))?))
            }
            None => Err(ConfigError::new(field, "PathMatcher needs a path")),
        }
    }

    /// `path` is the `:path` value (query and fragment are ignored).
    pub fn matches(&self, path: &str) -> bool {
        let end = path.find(['?', '#']).unwrap_or(path.len());
        self.0.matches(&path[..end])
    }
}

// === impl ValueMatcher ===

/// A compiled `envoy.type.matcher.v3.ValueMatcher` over a `google.protobuf.Value`.
#[derive(Debug, Clone)]
pub enum ValueMatcher {
    Null,
    DoubleExact(f64),
    DoubleRange(f64, f64),
    String(StringMatcher),
    Bool(bool),
    Present(bool),
    /// `list_match.one_of`: some element of a list value matches.
    ListOneOf(Box<ValueMatcher>),
    Or(Vec<ValueMatcher>),
}

impl ValueMatcher {
    pub fn from_proto(p: &ValueMatcherProto, field: &str) -> Result<Self, ConfigError> {
        use envoy_types::pb::envoy::r#type::matcher::v3::{double_matcher, list_matcher};
        use value_matcher::MatchPattern as P;
        Ok(match &p.match_pattern {
            Some(P::NullMatch(_)) => ValueMatcher::Null,
            Some(P::DoubleMatch(d)) => match &d.match_pattern {
                Some(double_matcher::MatchPattern::Exact(v)) => ValueMatcher::DoubleExact(*v),
                Some(double_matcher::MatchPattern::Range(r)) => ValueMatcher::DoubleRange(r.start, r.end),
                None => return Err(ConfigError::new(format!("{field}.double_match"), "a match_pattern is required")),
            },
            Some(P::StringMatch(m)) => {
                ValueMatcher::String(StringMatcher::from_proto(m, &format!("{field}.string_match"))?)
            }
            Some(P::BoolMatch(b)) => ValueMatcher::Bool(*b),
            Some(P::PresentMatch(b)) => ValueMatcher::Present(*b),
            Some(P::ListMatch(l)) => match &l.match_pattern {
                Some(list_matcher::MatchPattern::OneOf(v)) => ValueMatcher::ListOneOf(Box::new(
                    ValueMatcher::from_proto(v, &format!("{field}.list_match.one_of"))?,
                )),
                None => return Err(ConfigError::new(format!("{field}.list_match"), "one_of is required")),
            },
            Some(P::OrMatch(o)) => {
                if o.value_matchers.len() < 2 {
                    return Err(ConfigError::new(
                        format!("{field}.or_match.value_matchers"),
                        "value must contain at least 2 item(s)",
                    ));
                }
                ValueMatcher::Or(
                    o.value_matchers
                        .iter()
                        .enumerate()
                        .map(|(i, v)| ValueMatcher::from_proto(v, &format!("{field}.or_match.value_matchers[{i}]")))
                        .collect::<Result<_, _>>()?,
                )
            }
            None => return Err(ConfigError::new(field, "ValueMatcher needs a match_pattern")),
        })
    }

    /// `None` is an absent value (Envoy's `KIND_NOT_SET`).
    pub fn matches(&self, v: Option<&PbValue>) -> bool {
        let kind = v.and_then(|v| v.kind.as_ref());
        match (self, kind) {
            (ValueMatcher::Null, Some(Kind::NullValue(_))) => true,
            (ValueMatcher::DoubleExact(x), Some(Kind::NumberValue(n))) => x == n,
            (ValueMatcher::DoubleRange(lo, hi), Some(Kind::NumberValue(n))) => lo <= n && n < hi,
            (ValueMatcher::String(m), Some(Kind::StringValue(s))) => m.matches(s),
            (ValueMatcher::Bool(b), Some(Kind::BoolValue(x))) => b == x,
            (ValueMatcher::Present(want), k) => *want && k.is_some(),
            (ValueMatcher::ListOneOf(m), Some(Kind::ListValue(l))) => l.values.iter().any(|e| m.matches(Some(e))),
            (ValueMatcher::Or(ms), _) => ms.iter().any(|m| m.matches(v)),
            _ => false,
        }
    }
}

// === impl MetadataMatcher ===

/// A compiled `envoy.type.matcher.v3.MetadataMatcher`: the value at `path` inside the metadata
/// of `filter`, matched by a ValueMatcher (a missing value is "not set", never "null").
#[derive(Debug, Clone)]
pub struct MetadataMatcher {
    pub filter: String,
    path: Vec<String>,
    value: ValueMatcher,
    invert: bool,
}

impl MetadataMatcher {
    pub fn from_proto(p: &MetadataMatcherProto, field: &str) -> Result<Self, ConfigError> {
        use metadata_matcher::path_segment::Segment;
        if p.filter.is_empty() {
            return Err(ConfigError::new(format!("{field}.filter"), "value length must be at least 1 characters"));
        }
        if p.path.is_empty() {
            return Err(ConfigError::new(format!("{field}.path"), "value must contain at least 1 item(s)"));
        }
        let mut path = Vec::with_capacity(p.path.len());
        for (i, seg) in p.path.iter().enumerate() {
            match &seg.segment {
                Some(Segment::Key(k)) if !k.is_empty() => path.push(k.clone()),
                _ => {
                    return Err(ConfigError::new(format!("{field}.path[{i}]"), "a non-empty key is required"));
                }
            }
        }
        let value = match &p.value {
            Some(v) => ValueMatcher::from_proto(v, &format!("{field}.value"))?,
            None => return Err(ConfigError::new(format!("{field}.value"), "value is required")),
        };
        Ok(MetadataMatcher { filter: p.filter.clone(), path, value, invert: p.invert })
    }

    /// Matches the metadata struct of this matcher's filter (`None` when the filter set none).
    pub fn matches(&self, filter_metadata: Option<&PbStruct>) -> bool {
        self.value.matches(filter_metadata.and_then(|s| struct_path(s, &self.path))) != self.invert
    }
}

/// The value at a path of keys in a Struct, descending through nested structs.
pub fn struct_path<'a>(s: &'a PbStruct, path: &[String]) -> Option<&'a PbValue> {
    let (last, parents) = path.split_last()?;
    let mut cur = s;
    for k in parents {
        match cur.fields.get(k).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StructValue(inner)) => cur = inner,
            _ => return None,
        }
    }
    cur.fields.get(last)
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
