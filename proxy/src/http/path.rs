//! Request path normalisation, as Envoy's HCM does it before routing (so route matches and
//! RBAC path rules see the canonical path, and the upstream gets it too): `normalize_path`
//! (RFC 3986 dot segments, percent-decoding of unreserved characters, `\` as `/`),
//! `merge_slashes`, and `path_with_escaped_slashes_action` for `%2F` / `%5C`.

/// What to do with `%2F`, `%5C` (Envoy's `PathWithEscapedSlashesAction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    #[default]
    Keep,
    Reject,
    UnescapeAndRedirect,
    UnescapeAndForward,
}

/// The outcome for one path.
#[derive(Debug, PartialEq, Eq)]
pub enum Normalized {
    Unchanged,
    /// Forward with this path (and query).
    Rewritten(String),
    /// Answer with a redirect to this path (and query).
    Redirect(String),
    /// Answer 400.
    Reject,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn has_escaped_slash(p: &str) -> bool {
    let b = p.as_bytes();
    b.windows(3)
        .any(|w| w[0] == b'%' && ((w[1] == b'2' && (w[2] | 0x20) == b'f') || (w[1] == b'5' && (w[2] | 0x20) == b'c')))
}

fn unescape_slashes(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    let b = p.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let (h, l) = (b[i + 1], b[i + 2] | 0x20);
            if h == b'2' && l == b'f' {
                out.push('/');
                i += 3;
                continue;
            }
            if h == b'5' && l == b'c' {
                out.push('\\');
                i += 3;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// Percent-decodes unreserved characters, upper-cases other escapes, turns `\` into `/`.
/// Returns None for a malformed escape (Envoy rejects those).
fn canonical_chars(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (Some(h), Some(l)) = (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex))
                else {
                    return None;
                };
                let c = h * 16 + l;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c);
                } else {
                    out.push(b'%');
                    out.push(b[i + 1].to_ascii_uppercase());
                    out.push(b[i + 2].to_ascii_uppercase());
                }
                i += 3;
            }
            b'\\' => {
                out.push(b'/');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// RFC 3986 section 5.2.4 remove_dot_segments for an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let trailing = path.ends_with("/.") || path.ends_with("/..") || path.ends_with('/');
    for seg in path.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    // A trailing "." or ".." leaves a directory path.
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing && !s.ends_with('/') {
        s.push('/');
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

fn merge(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut prev_slash = false;
    for c in path.chars() {
        if c == '/' && prev_slash {
            continue;
        }
        prev_slash = c == '/';
        out.push(c);
    }
    out
}

/// Applies the HCM's path options to `path_and_query`.
pub fn normalize(
    path_and_query: &str,
    normalize_path: bool,
    merge_slashes: bool,
    escaped: EscapedSlashes,
) -> Normalized {
    let (path, query) = match path_and_query.find('?') {
        Some(i) => (&path_and_query[..i], &path_and_query[i..]),
        None => (path_and_query, ""),
    };
    if !path.starts_with('/') {
        // Absolute-form, asterisk-form and CONNECT authority-form are left alone.
        return Normalized::Unchanged;
    }
    let mut p = std::borrow::Cow::Borrowed(path);
    let mut redirect = false;
    if escaped != EscapedSlashes::Keep && has_escaped_slash(&p) {
        match escaped {
            EscapedSlashes::Reject => return Normalized::Reject,
            EscapedSlashes::UnescapeAndRedirect => redirect = true,
            _ => {}
        }
        p = std::borrow::Cow::Owned(unescape_slashes(&p));
    }
    if normalize_path {
        let Some(c) = canonical_chars(&p) else { return Normalized::Reject };
        p = std::borrow::Cow::Owned(remove_dot_segments(&c));
    }
    if merge_slashes {
        p = std::borrow::Cow::Owned(merge(&p));
    }
    if p == path {
        return Normalized::Unchanged;
    }
    let full = format!("{p}{query}");
    if redirect { Normalized::Redirect(full) } else { Normalized::Rewritten(full) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        match normalize(p, true, false, EscapedSlashes::Keep) {
            Normalized::Unchanged => p.to_string(),
            Normalized::Rewritten(s) => s,
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn dot_segments_and_escapes() {
        assert_eq!(n("/admin"), "/admin");
        assert_eq!(n("/public/../admin"), "/admin");
        assert_eq!(n("/%61dmin"), "/admin");
        assert_eq!(n("/public/%2e%2e/admin"), "/admin");
        assert_eq!(n("/a/./b/"), "/a/b/");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/../../x?q=/../y"), "/x?q=/../y");
        assert_eq!(n("/a\\..\\b"), "/b");
        assert_eq!(n("/a%2fb"), "/a%2Fb");
        assert_eq!(n("/a%zz"), "Reject");
        assert_eq!(normalize("//a///b", false, true, EscapedSlashes::Keep), Normalized::Rewritten("/a/b".into()));
        assert_eq!(normalize("/a%2Fb", false, false, EscapedSlashes::Reject), Normalized::Reject);
        assert_eq!(
            normalize("/a%2Fb", false, false, EscapedSlashes::UnescapeAndForward),
            Normalized::Rewritten("/a/b".into())
        );
        assert_eq!(
            normalize("/a%2Fb", false, false, EscapedSlashes::UnescapeAndRedirect),
            Normalized::Redirect("/a/b".into())
        );
    }
}
