//! `request_headers_to_add/remove` and `response_headers_to_add/remove` at route, virtual host
//! and route configuration level, with Envoy's append actions and substitutions.

use envoy_types::pb::envoy::config::core::v3::{HeaderValueOption, header_value_option::HeaderAppendAction};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::ConfigError;
use crate::formatter::{FormatContext, Formatter};

#[derive(Debug, Clone, Copy, PartialEq)]
enum AppendAction {
    AppendOrAdd,
    AddIfAbsent,
    OverwriteOrAdd,
    OverwriteIfExists,
}

#[derive(Debug, Clone)]
struct AddHeader {
    name: HeaderName,
    value: Formatter,
    append: AppendAction,
    keep_empty: bool,
}

/// One level's header mutations (compiled).
#[derive(Debug, Clone, Default)]
pub struct HeaderMutations {
    add: Vec<AddHeader>,
    remove: Vec<HeaderName>,
}

/// Headers Envoy refuses to let config add or remove (pseudo-headers and `host`).
fn is_protected(name: &str) -> bool {
    name.starts_with(':') || name == "host"
}

impl HeaderMutations {
    pub fn from_proto(
        add: &[HeaderValueOption],
        remove: &[String],
        field_add: &str,
        field_remove: &str,
    ) -> Result<Self, ConfigError> {
        let mut out = HeaderMutations::default();
        for (i, o) in add.iter().enumerate() {
            let f = format!("{field_add}[{i}]");
            let Some(h) = &o.header else {
                return Err(ConfigError::new(f, "header is required"));
            };
            let key = h.key.to_ascii_lowercase();
            if is_protected(&key) {
                return Err(ConfigError::new(f, format!(":-prefixed or host headers may not be modified: {key}")));
            }
            let name = HeaderName::from_bytes(key.as_bytes())
                .map_err(|_| ConfigError::new(&f, format!("invalid header name {:?}", h.key)))?;
            let raw = if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8(h.raw_value.clone()).map_err(|_| ConfigError::new(&f, "raw_value is not UTF-8"))?
            };
            let value = Formatter::parse(&raw, &format!("{f}.header.value"))?;
            let append = match (o.append, HeaderAppendAction::try_from(o.append_action)) {
                // The deprecated `append` wins when set (false means overwrite).
                (Some(b), _) if !b.value => AppendAction::OverwriteOrAdd,
                (Some(_), _) => AppendAction::AppendOrAdd,
                (None, Ok(HeaderAppendAction::AppendIfExistsOrAdd)) => AppendAction::AppendOrAdd,
                (None, Ok(HeaderAppendAction::AddIfAbsent)) => AppendAction::AddIfAbsent,
                (None, Ok(HeaderAppendAction::OverwriteIfExistsOrAdd)) => AppendAction::OverwriteOrAdd,
                (None, Ok(HeaderAppendAction::OverwriteIfExists)) => AppendAction::OverwriteIfExists,
                (None, Err(_)) => return Err(ConfigError::new(f, "unknown append_action")),
            };
            out.add.push(AddHeader { name, value, append, keep_empty: o.keep_empty_value });
        }
        for (i, r) in remove.iter().enumerate() {
            let key = r.to_ascii_lowercase();
            if is_protected(&key) {
                return Err(ConfigError::new(
                    format!("{field_remove}[{i}]"),
                    format!(":-prefixed or host headers may not be removed: {key}"),
                ));
            }
            let name = HeaderName::from_bytes(key.as_bytes())
                .map_err(|_| ConfigError::new(format!("{field_remove}[{i}]"), format!("invalid header name {r:?}")))?;
            out.remove.push(name);
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// True when a value reads the request headers (`%REQ(x)%`).
    pub fn uses_request_headers(&self) -> bool {
        self.add.iter().any(|a| a.value.uses_request_headers())
    }

    /// Applies removals, then additions, to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap, cx: &FormatContext<'_>) {
        for r in &self.remove {
            headers.remove(r);
        }
        for a in &self.add {
            let v = a.value.format(cx);
            if v.is_empty() && !a.keep_empty {
                continue;
            }
            let Ok(v) = HeaderValue::from_str(&v) else {
                continue;
            };
            match a.append {
                AppendAction::AppendOrAdd => {
                    headers.append(a.name.clone(), v);
                }
                AppendAction::AddIfAbsent => {
                    if !headers.contains_key(&a.name) {
                        headers.insert(a.name.clone(), v);
                    }
                }
                AppendAction::OverwriteOrAdd => {
                    headers.insert(a.name.clone(), v);
                }
                AppendAction::OverwriteIfExists => {
                    if headers.contains_key(&a.name) {
                        headers.insert(a.name.clone(), v);
                    }
                }
            }
        }
    }
}

// === applying the levels ===

/// The levels (weighted cluster, route, virtual host, route table) in the order they apply: most
/// specific first unless the table says `most_specific_header_mutations_wins`.
fn ordered<'a>(
    table: &super::RouteTable,
    mut levels: [Option<&'a HeaderMutations>; 4],
) -> [Option<&'a HeaderMutations>; 4] {
    if table.most_specific_header_mutations_wins {
        levels.reverse();
    }
    levels
}

/// Response header mutations, in [`ordered`] order.
pub fn apply_response_mutations(
    table: &super::RouteTable,
    vhost: &super::VirtualHost,
    route: &super::route::Route,
    weighted: Option<&HeaderMutations>,
    headers: &mut http::HeaderMap,
    fcx: &FormatContext<'_>,
) {
    let levels = ordered(
        table,
        [weighted, Some(&route.response_headers), Some(&vhost.response_headers), Some(&table.response_headers)],
    );
    let cx = FormatContext { response_headers: None, ..*fcx };
    for m in levels.into_iter().flatten() {
        if !m.is_empty() {
            m.apply(headers, &cx);
        }
    }
}

/// Request header mutations in the same order.
pub fn apply_request_mutations(
    table: &super::RouteTable,
    vhost: &super::VirtualHost,
    route: &super::route::Route,
    weighted: Option<&HeaderMutations>,
    headers: &mut http::HeaderMap,
    fcx: &FormatContext<'_>,
) {
    let levels = ordered(
        table,
        [weighted, Some(&route.request_headers), Some(&vhost.request_headers), Some(&table.request_headers)],
    );
    // Substitutions read the request headers as they were before any mutation.
    let original = levels.iter().flatten().any(|m| !m.is_empty()).then(|| headers.clone());
    let cx = FormatContext { request_headers: original.as_ref(), ..*fcx };
    for m in levels.into_iter().flatten() {
        if !m.is_empty() {
            m.apply(headers, &cx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::HeaderValue as HV;

    fn opt(k: &str, v: &str, action: HeaderAppendAction) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(HV { key: k.into(), value: v.into(), ..Default::default() }),
            append_action: action as i32,
            ..Default::default()
        }
    }

    #[test]
    fn append_actions() {
        let m = HeaderMutations::from_proto(
            &[
                opt("x-a", "2", HeaderAppendAction::AppendIfExistsOrAdd),
                opt("x-b", "2", HeaderAppendAction::AddIfAbsent),
                opt("x-c", "2", HeaderAppendAction::OverwriteIfExistsOrAdd),
                opt("x-d", "2", HeaderAppendAction::OverwriteIfExists),
                opt("x-e", "%DOWNSTREAM_REMOTE_ADDRESS%", HeaderAppendAction::AppendIfExistsOrAdd),
            ],
            &["x-gone".into()],
            "add",
            "remove",
        )
        .unwrap();
        let mut h = HeaderMap::new();
        for k in ["x-a", "x-b", "x-c", "x-gone"] {
            h.insert(k, "1".parse().unwrap());
        }
        m.apply(&mut h, &FormatContext::default());
        assert_eq!(h.get_all("x-a").iter().count(), 2);
        assert_eq!(h["x-b"], "1");
        assert_eq!(h["x-c"], "2");
        assert!(!h.contains_key("x-d"));
        assert!(!h.contains_key("x-e"), "empty values are dropped");
        assert!(!h.contains_key("x-gone"));
        assert!(
            HeaderMutations::from_proto(&[opt(":path", "x", HeaderAppendAction::AddIfAbsent)], &[], "a", "r").is_err()
        );
    }
}
