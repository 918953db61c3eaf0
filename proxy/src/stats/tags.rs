//! Envoy's tag extraction: turns `cluster.foo.upstream_rq_total` into the tag-extracted name
//! `cluster.upstream_rq_total` with tag `envoy.cluster_name="foo"`, for Prometheus output.
//!
//! An extractor is a regex whose first capture group is removed from the name and whose second
//! capture group (or the first, if there is only one) is the tag value. Extractors run in order
//! over the original name; all removed ranges are cut at the end.

use fancy_regex::Regex;

/// One tag extractor: `tag_name` + regex (+ an optional substring that must be present, a fast
/// pre-check Envoy uses for its defaults).
#[derive(Debug)]
pub struct TagExtractor {
    pub name: String,
    regex: Regex,
    substr: Option<&'static str>,
}

/// The ordered extractor list of a server.
#[derive(Debug)]
pub struct TagExtractors(Vec<TagExtractor>);

/// Envoy's default extractors (`use_all_default_tags`), most specific first.
const DEFAULTS: &[(&str, &str, Option<&str>)] = &[
    ("envoy.response_code", r"_rq(_(\d{3}))$", Some("_rq_")),
    ("envoy.response_code_class", r"_rq_(\d)xx$", Some("_rq_")),
    ("envoy.http_user_agent", r"^http(?=\.).*?\.user_agent\.((.*?)\.)\w+?$", Some(".user_agent.")),
    ("envoy.virtual_cluster", r"^vhost(?=\.).*?\.vcluster\.((.*?)\.)\w+?$", Some(".vcluster.")),
    ("envoy.fault_downstream_cluster", r"^http(?=\.).*?\.fault\.((.*?)\.)\w+?$", Some(".fault.")),
    ("envoy.ssl_cipher", r"^listener(?=\.).*?\.ssl\.cipher(\.(.*?))$", None),
    ("envoy.ssl_cipher_suite", r"^cluster(?=\.).*?\.ssl\.ciphers(\.(.*?))$", Some(".ssl.ciphers.")),
    ("envoy.tcp_prefix", r"^tcp\.((.*?)\.)\w+?$", None),
    ("envoy.udp_prefix", r"^udp\.((.*?)\.)\w+?$", None),
    ("envoy.ratelimit_prefix", r"^ratelimit\.((.*?)\.)\w+?$", None),
    (
        "envoy.cluster_name",
        r"^cluster\.((.*?)\.)(?:upstream_|lb_|membership_|max_host_weight|bind_errors|original_dst_|retry_or_shadow_abandoned|assignment_|update_|version|outlier_detection|circuit_breakers|default\.|internal\.|external\.|canary\.|ssl\.|http1\.|http2\.|http3\.|tcp_|init_fetch|zone\.|health_check|warming_state|ext_authz|ratelimit|client_ssl|grpc|redis|mongo|thrift|dubbo)",
        None,
    ),
    ("envoy.http_conn_manager_prefix", r"^listener(?=\.).*?\.http\.((.*?)\.)", Some(".http.")),
    ("envoy.http_conn_manager_prefix", r"^http\.((.*?)\.)", None),
    ("envoy.listener_address", r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)", None),
    ("envoy.virtual_host", r"^vhost\.((.*?)\.)", None),
    ("envoy.rds_route_config", r"^http(?=\.).*?\.rds\.((.*?)\.)\w+?$", Some(".rds.")),
    ("envoy.worker_id", r"^listener_manager\.((worker_\d+)\.)", Some("listener_manager.worker_")),
];

impl Default for TagExtractors {
    fn default() -> Self {
        TagExtractors::new(true, &[]).unwrap_or(TagExtractors(Vec::new()))
    }
}

impl TagExtractors {
    /// Builds the list: `custom` (bootstrap `stats_tags`: name, regex) first, then the defaults
    /// when `use_defaults`.
    pub fn new(use_defaults: bool, custom: &[(String, String)]) -> Result<Self, String> {
        let mut v = Vec::new();
        for (name, re) in custom {
            let regex = Regex::new(re).map_err(|e| format!("stats_tags {name}: invalid regex: {e}"))?;
            v.push(TagExtractor { name: name.clone(), regex, substr: None });
        }
        if use_defaults {
            for (name, re, substr) in DEFAULTS {
                if custom.iter().any(|(n, _)| n == name) {
                    continue;
                }
                let regex = Regex::new(re).map_err(|e| format!("default tag {name}: {e}"))?;
                v.push(TagExtractor { name: (*name).to_string(), regex, substr: *substr });
            }
        }
        Ok(TagExtractors(v))
    }

    /// Returns the tag-extracted name and the tags, in extractor order.
    pub fn extract(&self, name: &str) -> (String, Vec<(String, String)>) {
        let mut tags = Vec::new();
        let mut removed: Vec<(usize, usize)> = Vec::new();
        for t in &self.0 {
            if let Some(s) = t.substr
                && !name.contains(s)
            {
                continue;
            }
            let Ok(Some(caps)) = t.regex.captures(name) else {
                continue;
            };
            let Some(remove) = caps.get(1) else { continue };
            if removed.iter().any(|&(a, b)| remove.start() < b && a < remove.end()) {
                continue;
            }
            let value = caps.get(2).unwrap_or(remove);
            tags.push((t.name.clone(), value.as_str().to_string()));
            removed.push((remove.start(), remove.end()));
        }
        if removed.is_empty() {
            return (name.to_string(), tags);
        }
        removed.sort_unstable();
        let mut out = String::with_capacity(name.len());
        let mut at = 0;
        for (a, b) in removed {
            if a > at {
                out.push_str(&name[at..a]);
            }
            at = at.max(b);
        }
        out.push_str(&name[at..]);
        (out, tags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_extraction_matches_envoy() {
        let t = TagExtractors::default();
        let (n, tags) = t.extract("cluster.outbound|80||svc.ns.svc.cluster.local.upstream_rq_total");
        assert_eq!(n, "cluster.upstream_rq_total");
        assert_eq!(tags, [("envoy.cluster_name".to_string(), "outbound|80||svc.ns.svc.cluster.local".to_string())]);
        let (n, tags) = t.extract("http.ingress_http.downstream_rq_2xx");
        assert_eq!(n, "http.downstream_rq_xx");
        assert_eq!(tags.len(), 2);
        let (n, tags) = t.extract("cluster.a.upstream_rq_503");
        assert_eq!(n, "cluster.upstream_rq");
        assert!(tags.contains(&("envoy.response_code".into(), "503".into())));
        let (n, tags) = t.extract("server.live");
        assert_eq!((n.as_str(), tags.len()), ("server.live", 0));
    }
}
