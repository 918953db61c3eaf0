//! SPIFFE IDs: `spiffe://<trust-domain>/<path>`, with Istio's `/ns/<namespace>/sa/<account>` form.
//!
//! Parsing follows the SPIFFE ID specification: lowercase scheme and trust domain made of
//! `[a-z0-9._-]`, a path of non-empty segments of `[A-Za-z0-9._-]` that are neither `.` nor `..`,
//! no trailing slash, no port, user info, query or fragment, at most 2048 bytes in all.
//! A parsed value is immutable and keeps its canonical string, so `Display` never allocates.

use std::fmt;
use std::str::FromStr;

const SCHEME: &str = "spiffe://";
const MAX_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("SPIFFE ID {0:?} does not start with \"spiffe://\"")]
    Scheme(String),
    #[error("SPIFFE ID {0:?} is longer than 2048 bytes")]
    TooLong(String),
    #[error("SPIFFE ID {0:?} has an empty trust domain")]
    EmptyTrustDomain(String),
    #[error("SPIFFE ID {id:?}: trust domain has an invalid character {ch:?} (allowed: a-z 0-9 . - _)")]
    TrustDomainChar { id: String, ch: char },
    #[error("SPIFFE ID {0:?}: trust domain is longer than 255 bytes")]
    TrustDomainTooLong(String),
    #[error("SPIFFE ID {id:?}: path {reason}")]
    Path { id: String, reason: &'static str },
    #[error("SPIFFE ID {id:?}: path has an invalid character {ch:?} (allowed: A-Z a-z 0-9 . - _)")]
    PathChar { id: String, ch: char },
}

/// A validated SPIFFE ID.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The whole ID, canonical as given (parsing does not change case or form).
    full: String,
    /// Byte offset in `full` where the path starts (== full.len() when there is no path).
    path_start: usize,
}

impl SpiffeId {
    /// Parses and validates `s`.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        let err_id = || s.to_string();
        if s.len() > MAX_LEN {
            return Err(SpiffeIdError::TooLong(err_id()));
        }
        let rest = s.strip_prefix(SCHEME).ok_or_else(|| SpiffeIdError::Scheme(err_id()))?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if td.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain(err_id()));
        }
        if td.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(SpiffeIdError::TrustDomainTooLong(err_id()));
        }
        if let Some(ch) = td.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_')) {
            return Err(SpiffeIdError::TrustDomainChar { id: err_id(), ch });
        }
        if !path.is_empty() {
            validate_path(path).map_err(|e| match e {
                PathErr::Reason(reason) => SpiffeIdError::Path { id: err_id(), reason },
                PathErr::Char(ch) => SpiffeIdError::PathChar { id: err_id(), ch },
            })?;
        }
        Ok(SpiffeId { full: s.to_string(), path_start: SCHEME.len() + td.len() })
    }

    /// Builds Istio's workload identity `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn istio(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self, SpiffeIdError> {
        Self::parse(&format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"))
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.full[SCHEME.len()..self.path_start]
    }

    /// The path including its leading `/`, or `""` for a trust domain ID.
    pub fn path(&self) -> &str {
        &self.full[self.path_start..]
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// `(namespace, service_account)` when the path is exactly `/ns/<ns>/sa/<sa>`.
    pub fn istio_parts(&self) -> Option<(&str, &str)> {
        let mut it = self.path().strip_prefix('/')?.split('/');
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// The namespace of an Istio identity.
    pub fn namespace(&self) -> Option<&str> {
        self.istio_parts().map(|(ns, _)| ns)
    }

    /// The service account of an Istio identity.
    pub fn service_account(&self) -> Option<&str> {
        self.istio_parts().map(|(_, sa)| sa)
    }
}

enum PathErr {
    Reason(&'static str),
    Char(char),
}

fn validate_path(path: &str) -> Result<(), PathErr> {
    // `path` starts with '/'.
    if path.ends_with('/') {
        return Err(PathErr::Reason("must not end with '/'"));
    }
    for seg in path[1..].split('/') {
        if seg.is_empty() {
            return Err(PathErr::Reason("has an empty segment"));
        }
        if seg == "." || seg == ".." {
            return Err(PathErr::Reason("has a '.' or '..' segment"));
        }
        if let Some(ch) = seg.chars().find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_')) {
            return Err(PathErr::Char(ch));
        }
    }
    Ok(())
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.full)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for SpiffeId {
    type Error = SpiffeIdError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_identity() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/foo".parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/default/sa/foo");
        assert_eq!(id.namespace(), Some("default"));
        assert_eq!(id.service_account(), Some("foo"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/foo");
        assert_eq!(SpiffeId::istio("cluster.local", "default", "foo").unwrap(), id);
    }

    #[test]
    fn parses_generic_paths_and_trust_domain_ids() {
        let id = SpiffeId::parse("spiffe://example.org/a/b.c/D-e_f").unwrap();
        assert_eq!(id.path(), "/a/b.c/D-e_f");
        assert_eq!(id.istio_parts(), None);
        let td = SpiffeId::parse("spiffe://example.org").unwrap();
        assert_eq!(td.trust_domain(), "example.org");
        assert_eq!(td.path(), "");
        // /ns/x/sa/y/extra is a valid SPIFFE ID but not an Istio identity.
        let long = SpiffeId::parse("spiffe://td/ns/x/sa/y/extra").unwrap();
        assert_eq!(long.namespace(), None);
    }

    #[test]
    fn rejects_invalid_ids() {
        for bad in [
            "",
            "http://cluster.local/ns/a/sa/b",
            "SPIFFE://cluster.local/ns/a",
            "spiffe://",
            "spiffe:///ns/a",
            "spiffe://Cluster.local/ns/a",
            "spiffe://cluster.local:8080/ns/a",
            "spiffe://user@cluster.local/ns/a",
            "spiffe://cluster.local/",
            "spiffe://cluster.local/ns//a",
            "spiffe://cluster.local/ns/./a",
            "spiffe://cluster.local/ns/../a",
            "spiffe://cluster.local/ns/a?x=1",
            "spiffe://cluster.local/ns/a#frag",
            "spiffe://cluster.local/ns/a b",
            "spiffe://cluster.local/ns/%41",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let long = format!("spiffe://td/{}", "a".repeat(2100));
        assert!(matches!(SpiffeId::parse(&long), Err(SpiffeIdError::TooLong(_))));
    }

    #[test]
    fn error_messages_name_the_problem() {
        let e = SpiffeId::parse("spiffe://Bad/ns").unwrap_err().to_string();
        assert!(e.contains("invalid character 'B'"), "{e}");
        let e = SpiffeId::parse("spiffe://td/ns/").unwrap_err().to_string();
        assert!(e.contains("must not end with '/'"), "{e}");
    }
}
