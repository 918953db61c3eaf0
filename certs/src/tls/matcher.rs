//! Envoy's `StringMatcher` and `SubjectAltNameMatcher`, compiled once and applied to the SANs of
//! a verified peer certificate.
//!
//! Semantics (Envoy's `DefaultCertValidator`): a certificate passes if ANY matcher matches ANY
//! SAN of the matcher's type. A DNS matcher using `exact` compares like a hostname against the
//! SAN, which may be a wildcard (`*.example.com` matches exactly one extra leading label), case
//! insensitively. The deprecated `match_subject_alt_names` matches every SAN type (DNS, URI,
//! EMAIL, IP_ADDRESS) and is ignored when `match_typed_subject_alt_names` is also set.

use std::net::IpAddr;

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{SubjectAltNameMatcher, subject_alt_name_matcher};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use x509_parser::extensions::GeneralName;

use super::TlsError;

/// A compiled `envoy.type.matcher.v3.StringMatcher`.
#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact {
        value: String,
        ignore_case: bool,
    },
    Prefix {
        value: String,
        ignore_case: bool,
    },
    Suffix {
        value: String,
        ignore_case: bool,
    },
    Contains {
        value: String,
        ignore_case: bool,
    },
    /// Anchored at both ends (Envoy's `safe_regex` is a full match).
    Regex(regex::Regex),
}

impl StringMatch {
    /// Compiles a `StringMatcher`; `field` names it in errors.
    pub fn from_proto(m: &StringMatcher, field: &str) -> Result<Self, TlsError> {
        let ic = m.ignore_case;
        let non_empty = |v: &String, kind: &str| {
            if v.is_empty() { Err(TlsError::invalid(format!("{field}.{kind}"), "must not be empty")) } else { Ok(()) }
        };
        // With ignore_case the configured value is lowercased once, the input on each match.
        let norm = |v: &String| {
            if ic { v.to_ascii_lowercase() } else { v.clone() }
        };
        Ok(match &m.match_pattern {
            None => {
                return Err(TlsError::invalid(
                    field,
                    "one of exact, prefix, suffix, contains or safe_regex is required",
                ));
            }
            Some(MatchPattern::Exact(v)) => StringMatch::Exact { value: norm(v), ignore_case: ic },
            Some(MatchPattern::Prefix(v)) => {
                non_empty(v, "prefix")?;
                StringMatch::Prefix { value: norm(v), ignore_case: ic }
            }
            Some(MatchPattern::Suffix(v)) => {
                non_empty(v, "suffix")?;
                StringMatch::Suffix { value: norm(v), ignore_case: ic }
            }
            Some(MatchPattern::Contains(v)) => {
                non_empty(v, "contains")?;
                StringMatch::Contains { value: norm(v), ignore_case: ic }
            }
            Some(MatchPattern::SafeRegex(r)) => {
                let re = regex::Regex::new(&format!("^(?:{})$", r.regex))
                    .map_err(|e| TlsError::invalid(format!("{field}.safe_regex.regex"), e.to_string()))?;
                StringMatch::Regex(re)
            }
            Some(MatchPattern::Custom(ext)) => {
                return Err(TlsError::unsupported(
                    format!("{field}.custom"),
                    format!("custom string matcher {:?}", ext.name),
                ));
            }
        })
    }

    /// Whether `input` matches.
    pub fn matches(&self, input: &str) -> bool {
        fn cmp(input: &str, value: &str, ic: bool, f: impl Fn(&str, &str) -> bool) -> bool {
            if ic { f(&input.to_ascii_lowercase(), value) } else { f(input, value) }
        }
        match self {
            StringMatch::Exact { value, ignore_case } => cmp(input, value, *ignore_case, |a, b| a == b),
            StringMatch::Prefix { value, ignore_case } => cmp(input, value, *ignore_case, |a, b| a.starts_with(b)),
            StringMatch::Suffix { value, ignore_case } => cmp(input, value, *ignore_case, |a, b| a.ends_with(b)),
            StringMatch::Contains { value, ignore_case } => cmp(input, value, *ignore_case, |a, b| a.contains(b)),
            StringMatch::Regex(re) => re.is_match(input),
        }
    }
}

/// The SAN type a [`SanMatcher`] looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanType {
    Dns,
    Uri,
    Email,
    IpAddress,
}

/// A compiled `SubjectAltNameMatcher`.
#[derive(Debug, Clone)]
pub struct SanMatcher {
    pub san_type: SanType,
    pub matcher: StringMatch,
}

impl SanMatcher {
    /// Compiles a typed SAN matcher; `field` names it in errors.
    pub fn from_proto(m: &SubjectAltNameMatcher, field: &str) -> Result<Self, TlsError> {
        use subject_alt_name_matcher::SanType as P;
        let san_type = match P::try_from(m.san_type) {
            Ok(P::Dns) => SanType::Dns,
            Ok(P::Uri) => SanType::Uri,
            Ok(P::Email) => SanType::Email,
            Ok(P::IpAddress) => SanType::IpAddress,
            Ok(P::OtherName) => {
                return Err(TlsError::unsupported(format!("{field}.san_type"), "OTHER_NAME subject alt name matching"));
            }
            Ok(P::Unspecified) | Err(_) => {
                return Err(TlsError::invalid(
                    format!("{field}.san_type"),
                    "must be one of DNS, URI, EMAIL, IP_ADDRESS",
                ));
            }
        };
        let matcher = m.matcher.as_ref().ok_or_else(|| TlsError::invalid(format!("{field}.matcher"), "is required"))?;
        Ok(SanMatcher { san_type, matcher: StringMatch::from_proto(matcher, &format!("{field}.matcher"))? })
    }

    /// Matches one SAN from a certificate.
    pub(crate) fn matches_general_name(&self, name: &GeneralName<'_>) -> bool {
        match (self.san_type, name) {
            (SanType::Dns, GeneralName::DNSName(san)) => match &self.matcher {
                StringMatch::Exact { value, .. } => dns_name_match(value, san),
                m => m.matches(san),
            },
            (SanType::Uri, GeneralName::URI(san)) => self.matcher.matches(san),
            (SanType::Email, GeneralName::RFC822Name(san)) => self.matcher.matches(san),
            (SanType::IpAddress, GeneralName::IPAddress(bytes)) => {
                ip_to_string(bytes).is_some_and(|s| self.matcher.matches(&s))
            }
            _ => false,
        }
    }
}

/// Compiles a validation context's SAN matchers: the typed list, or else the deprecated untyped
/// list expanded to one matcher per SAN type (as Envoy does).
pub(crate) fn compile_san_matchers(
    typed: &[SubjectAltNameMatcher],
    untyped: &[StringMatcher],
    field: &str,
) -> Result<Vec<SanMatcher>, TlsError> {
    if !typed.is_empty() {
        if !untyped.is_empty() {
            tracing::warn!(
                "{field}: ignoring match_subject_alt_names because match_typed_subject_alt_names is also set"
            );
        }
        return typed
            .iter()
            .enumerate()
            .map(|(i, m)| SanMatcher::from_proto(m, &format!("{field}.match_typed_subject_alt_names[{i}]")))
            .collect();
    }
    let mut out = Vec::with_capacity(untyped.len() * 4);
    for (i, m) in untyped.iter().enumerate() {
        let matcher = StringMatch::from_proto(m, &format!("{field}.match_subject_alt_names[{i}]"))?;
        for san_type in [SanType::Dns, SanType::Uri, SanType::Email, SanType::IpAddress] {
            out.push(SanMatcher { san_type, matcher: matcher.clone() });
        }
    }
    Ok(out)
}

/// True if any matcher matches any SAN in `sans`.
pub(crate) fn any_san_matches(matchers: &[SanMatcher], sans: &[GeneralName<'_>]) -> bool {
    matchers.iter().any(|m| sans.iter().any(|san| m.matches_general_name(san)))
}

/// Hostname comparison of a configured name against a certificate DNS SAN that may be a
/// wildcard: `*.example.com` covers `a.example.com`, not `example.com` nor `a.b.example.com`.
/// Case insensitive.
pub(crate) fn dns_name_match(name: &str, san: &str) -> bool {
    if name.eq_ignore_ascii_case(san) {
        return true;
    }
    if let Some(rest) = san.strip_prefix("*.") {
        if rest.is_empty() {
            return false;
        }
        if let Some(dot) = name.find('.') {
            let (label, suffix) = (&name[..dot], &name[dot + 1..]);
            return !label.is_empty() && suffix.eq_ignore_ascii_case(rest);
        }
    }
    false
}

/// An IP SAN (4 or 16 bytes) as text, like Envoy prints it.
pub(crate) fn ip_to_string(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => {
            let b: [u8; 4] = bytes.try_into().ok()?;
            Some(IpAddr::from(b).to_string())
        }
        16 => {
            let b: [u8; 16] = bytes.try_into().ok()?;
            Some(IpAddr::from(b).to_string())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;

    fn sm(p: MatchPattern, ignore_case: bool) -> StringMatcher {
        StringMatcher { ignore_case, match_pattern: Some(p) }
    }

    #[test]
    fn string_matcher_forms() {
        let m = |p, ic| StringMatch::from_proto(&sm(p, ic), "m").unwrap();
        assert!(m(MatchPattern::Exact("abc".into()), false).matches("abc"));
        assert!(!m(MatchPattern::Exact("abc".into()), false).matches("ABC"));
        assert!(m(MatchPattern::Exact("abc".into()), true).matches("ABC"));
        assert!(m(MatchPattern::Exact("AbC".into()), true).matches("aBc"));
        assert!(
            m(MatchPattern::Prefix("spiffe://cluster.local/".into()), false)
                .matches("spiffe://cluster.local/ns/a/sa/b")
        );
        assert!(!m(MatchPattern::Prefix("spiffe://cluster.local/".into()), false).matches("spiffe://other/ns/a/sa/b"));
        assert!(m(MatchPattern::Suffix("/sa/b".into()), false).matches("spiffe://x/ns/a/sa/b"));
        assert!(m(MatchPattern::Suffix("/SA/B".into()), true).matches("spiffe://x/ns/a/sa/b"));
        assert!(m(MatchPattern::Contains("/ns/a/".into()), false).matches("spiffe://x/ns/a/sa/b"));
        let re = m(
            MatchPattern::SafeRegex(RegexMatcher {
                regex: "spiffe://cluster\\.local/ns/[a-z]+/sa/.*".into(),
                ..Default::default()
            }),
            false,
        );
        assert!(re.matches("spiffe://cluster.local/ns/default/sa/x"));
        // Full match, not a search.
        assert!(!re.matches("xspiffe://cluster.local/ns/default/sa/x"));
    }

    #[test]
    fn string_matcher_errors() {
        let e = StringMatch::from_proto(&StringMatcher::default(), "f").unwrap_err().to_string();
        assert!(e.starts_with("f: one of exact"), "{e}");
        let e = StringMatch::from_proto(&sm(MatchPattern::Prefix(String::new()), false), "f").unwrap_err().to_string();
        assert_eq!(e, "f.prefix: must not be empty");
        let e = StringMatch::from_proto(
            &sm(MatchPattern::SafeRegex(RegexMatcher { regex: "(".into(), ..Default::default() }), false),
            "f",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("f.safe_regex.regex:"), "{e}");
    }

    #[test]
    fn dns_wildcards() {
        assert!(dns_name_match("a.example.com", "*.example.com"));
        assert!(dns_name_match("A.Example.com", "*.example.COM"));
        assert!(!dns_name_match("example.com", "*.example.com"));
        assert!(!dns_name_match("a.b.example.com", "*.example.com"));
        assert!(dns_name_match("example.com", "example.com"));
        assert!(!dns_name_match("*.example.com", "a.example.com"));
    }

    #[test]
    fn san_types_only_match_their_kind() {
        let uri = SanMatcher {
            san_type: SanType::Uri,
            matcher: StringMatch::Exact { value: "spiffe://td/ns/a/sa/b".into(), ignore_case: false },
        };
        assert!(uri.matches_general_name(&GeneralName::URI("spiffe://td/ns/a/sa/b")));
        assert!(!uri.matches_general_name(&GeneralName::DNSName("spiffe://td/ns/a/sa/b")));
        let ip = SanMatcher {
            san_type: SanType::IpAddress,
            matcher: StringMatch::Exact { value: "10.0.0.1".into(), ignore_case: false },
        };
        assert!(ip.matches_general_name(&GeneralName::IPAddress(&[10, 0, 0, 1])));
        let ip6 = SanMatcher {
            san_type: SanType::IpAddress,
            matcher: StringMatch::Exact { value: "::1".into(), ignore_case: false },
        };
        let mut one = [0u8; 16];
        one[15] = 1;
        assert!(ip6.matches_general_name(&GeneralName::IPAddress(&one)));
    }

    #[test]
    fn untyped_matchers_expand_to_all_types_and_typed_wins() {
        let untyped = [sm(MatchPattern::Exact("x".into()), false)];
        let m = compile_san_matchers(&[], &untyped, "v").unwrap();
        assert_eq!(m.len(), 4);
        let typed = [SubjectAltNameMatcher {
            san_type: subject_alt_name_matcher::SanType::Uri as i32,
            matcher: Some(sm(MatchPattern::Exact("y".into()), false)),
            oid: String::new(),
        }];
        let m = compile_san_matchers(&typed, &untyped, "v").unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].san_type, SanType::Uri);
        let bad = [SubjectAltNameMatcher {
            san_type: subject_alt_name_matcher::SanType::OtherName as i32,
            matcher: Some(sm(MatchPattern::Exact("y".into()), false)),
            oid: "1.2.3".into(),
        }];
        let e = compile_san_matchers(&bad, &[], "v").unwrap_err().to_string();
        assert!(e.starts_with("v.match_typed_subject_alt_names[0].san_type: not supported"), "{e}");
    }
}
