//! Route actions: which cluster (`cluster`, `weighted_clusters`, `cluster_header`), path and host
//! rewrites, timeouts, retry and hash policies; plus `direct_response`.

use std::sync::Arc;
use std::time::Duration;

use crate::config::read_data_source;
use bytes::Bytes;
use envoy_types::pb::envoy::config::route::v3::{DirectResponseAction, RouteAction as RouteActionProto, route_action};
use http::{HeaderName, HeaderValue};

use super::header_mutation::HeaderMutations;
use super::retry::RetryPolicy;
use crate::config::{BuildCtx, ConfigError, duration, optional_timeout};

/// Envoy's default route timeout.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct WeightedCluster {
    pub name: Arc<str>,
    pub weight: u32,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub host_rewrite: Option<HeaderValue>,
}

#[derive(Debug, Clone)]
pub enum ClusterSpecifier {
    Name(Arc<str>),
    Header(HeaderName),
    Weighted { clusters: Vec<WeightedCluster>, total: u64 },
}

/// A route's `max_stream_duration` (Envoy's "new timeouts"): the route `timeout` no longer
/// applies; the stream is bounded by `max` (None: the HCM's; zero: none), or for a request with
/// `grpc-timeout`, when `grpc_header_max` is set, by that header (capped, then shortened by the
/// offset).
#[derive(Debug, Clone, Copy)]
pub struct StreamDuration {
    pub max: Option<Duration>,
    pub grpc_header_max: Option<Duration>,
    pub grpc_header_offset: Option<Duration>,
}

impl StreamDuration {
    /// The stream's time limit for a request carrying `grpc_timeout` (Envoy's
    /// `refreshDurationTimeout`); None: no limit.
    pub fn limit(&self, grpc_timeout: Option<Duration>) -> Option<Duration> {
        match (grpc_timeout, self.grpc_header_max) {
            (Some(mut t), Some(max)) => {
                if !max.is_zero() && t > max {
                    t = max;
                }
                if !t.is_zero()
                    && let Some(off) = self.grpc_header_offset
                {
                    // An offset at least as long as the timeout leaves nothing: it fires at once.
                    t = t.saturating_sub(off);
                }
                Some(t)
            }
            _ => self.max.filter(|m| !m.is_zero()),
        }
    }
}

#[derive(Debug, Clone)]
pub enum HostRewrite {
    None,
    Literal(HeaderValue),
    /// `auto_host_rewrite`: the upstream host's hostname (DNS clusters) or address.
    Auto,
    Header(HeaderName),
    PathRegex(regex::Regex, String),
}

#[derive(Debug, Clone)]
pub enum HashPolicy {
    Header {
        name: HeaderName,
        terminal: bool,
    },
    /// With a `ttl`, a missing cookie is generated and set on the response.
    Cookie {
        name: String,
        ttl: Option<Duration>,
        path: String,
        terminal: bool,
    },
    SourceIp {
        terminal: bool,
    },
    QueryParameter {
        name: String,
        terminal: bool,
    },
}

/// A compiled `RouteAction`.
#[derive(Debug, Clone)]
pub struct RouteAction {
    pub cluster: ClusterSpecifier,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(regex::Regex, String)>,
    pub host_rewrite: HostRewrite,
    pub timeout: Option<Duration>,
    /// `idle_timeout`: replaces the HCM's `stream_idle_timeout` (zero: no idle timeout at all).
    pub idle_timeout: Option<Duration>,
    pub retry_policy: Option<Arc<RetryPolicy>>,
    pub hash_policy: Vec<HashPolicy>,
    /// The deprecated `max_grpc_timeout` (istiod sets it on every route: 0s or the
    /// VirtualService timeout); read only without `max_stream_duration`.
    pub max_grpc_timeout: Option<Duration>,
    /// The deprecated `grpc_timeout_offset`, with `max_grpc_timeout`.
    pub grpc_timeout_offset: Option<Duration>,
    /// `max_stream_duration`: when set, Envoy's "new timeouts" apply instead of `timeout`.
    pub stream_duration: Option<StreamDuration>,
    pub append_x_forwarded_host: bool,
    /// `priority: HIGH`: the cluster's high-priority circuit breakers and connection pools.
    pub high_priority: bool,
    /// The deprecated `cors` field (the CORS filter reads it when no typed config is set).
    pub cors: Option<crate::config::ExtensionConfig>,
    /// `request_mirror_policies`: shadow copies sent fire-and-forget.
    pub mirrors: Vec<MirrorPolicy>,
}

/// One `request_mirror_policies` entry (Istio's VirtualService `mirror`/`mirrorPercentage`).
#[derive(Debug, Clone)]
pub struct MirrorPolicy {
    /// The cluster by name, or (`cluster_header`) by a request header.
    pub cluster: ClusterSpecifier,
    /// `runtime_fraction` (all requests when unset).
    pub fraction: crate::config::Percent,
    /// Append `-shadow` to the host (unless `disable_shadow_host_suffix_append`).
    pub shadow_suffix: bool,
}

impl MirrorPolicy {
    fn from_proto(p: &route_action::RequestMirrorPolicy, field: &str) -> Result<Self, ConfigError> {
        let cluster = match (p.cluster.is_empty(), p.cluster_header.is_empty()) {
            (false, true) => ClusterSpecifier::Name(p.cluster.as_str().into()),
            (true, false) => ClusterSpecifier::Header(
                http::HeaderName::from_bytes(p.cluster_header.as_bytes())
                    .map_err(|_| ConfigError::new(format!("{field}.cluster_header"), "invalid header name"))?,
            ),
            _ => {
                return Err(ConfigError::new(field, "only one of cluster and cluster_header can be specified"));
            }
        };
        Ok(MirrorPolicy {
            cluster,
            fraction: crate::config::Percent::from_runtime(p.runtime_fraction.as_ref(), crate::config::Percent::ALWAYS),
            shadow_suffix: !p.disable_shadow_host_suffix_append,
        })
    }
}

/// Converts an RE2 substitution (`\1`) into the regex crate's (`${1}`).
pub fn re2_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str(&format!("${{{d}}}"));
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            },
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

impl RouteAction {
    pub fn from_proto(
        p: &RouteActionProto,
        vhost_retry: Option<&Arc<RetryPolicy>>,
        cx: &BuildCtx,
        validate_clusters: bool,
        field: &str,
    ) -> Result<Self, ConfigError> {
        use route_action::ClusterSpecifier as CS;
        let check_cluster = |name: &str, f: &str| -> Result<(), ConfigError> {
            if validate_clusters && !cx.cluster_names.contains(name) {
                return Err(ConfigError::new(f, format!("route: unknown cluster '{name}'")));
            }
            Ok(())
        };
        let cluster = match &p.cluster_specifier {
            Some(CS::Cluster(c)) => {
                if c.is_empty() {
                    return Err(ConfigError::new(format!("{field}.cluster"), "must not be empty"));
                }
                check_cluster(c, &format!("{field}.cluster"))?;
                ClusterSpecifier::Name(c.as_str().into())
            }
            Some(CS::ClusterHeader(h)) => ClusterSpecifier::Header(
                HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .map_err(|_| ConfigError::new(format!("{field}.cluster_header"), "invalid header name"))?,
            ),
            Some(CS::WeightedClusters(w)) => {
                let mut clusters = Vec::new();
                let mut total = 0u64;
                for (i, c) in w.clusters.iter().enumerate() {
                    let f = format!("{field}.weighted_clusters.clusters[{i}]");
                    if c.name.is_empty() {
                        return Err(ConfigError::new(
                            format!("{f}.name"),
                            "cluster_header in weighted clusters is not supported; name is required",
                        ));
                    }
                    check_cluster(&c.name, &f)?;
                    let weight = c.weight.map(|w| w.value).unwrap_or(0);
                    total += weight as u64;
                    let host_rewrite = match &c.host_rewrite_specifier {
                        Some(envoy_types::pb::envoy::config::route::v3::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(h)) => {
                            Some(HeaderValue::from_str(h).map_err(|_| ConfigError::new(format!("{f}.host_rewrite_literal"), "invalid value"))?)
                        }
                        None => None,
                    };
                    clusters.push(WeightedCluster {
                        name: c.name.as_str().into(),
                        weight,
                        request_headers: HeaderMutations::from_proto(
                            &c.request_headers_to_add,
                            &c.request_headers_to_remove,
                            &format!("{f}.request_headers_to_add"),
                            &format!("{f}.request_headers_to_remove"),
                        )?,
                        response_headers: HeaderMutations::from_proto(
                            &c.response_headers_to_add,
                            &c.response_headers_to_remove,
                            &format!("{f}.response_headers_to_add"),
                            &format!("{f}.response_headers_to_remove"),
                        )?,
                        host_rewrite,
                    });
                }
                if clusters.is_empty() {
                    return Err(ConfigError::new(format!("{field}.weighted_clusters"), "needs at least one cluster"));
                }
                if total == 0 {
                    return Err(ConfigError::new(
                        format!("{field}.weighted_clusters"),
                        "Sum of weights in the weighted_cluster must be greater than 0.",
                    ));
                }
                ClusterSpecifier::Weighted { clusters, total }
            }
            Some(CS::ClusterSpecifierPlugin(_)) | Some(CS::InlineClusterSpecifierPlugin(_)) => {
                return Err(ConfigError::new(field, "cluster specifier plugins are not supported"));
            }
            None => {
                return Err(ConfigError::new(field, "route action needs a cluster specifier"));
            }
        };
        let regex_rewrite = match &p.regex_rewrite {
            Some(r) => {
                let pat = r.pattern.as_ref().map(|m| m.regex.clone()).unwrap_or_default();
                let re = regex::Regex::new(&pat)
                    .map_err(|e| ConfigError::new(format!("{field}.regex_rewrite.pattern"), e.to_string()))?;
                Some((re, re2_substitution(&r.substitution)))
            }
            None => None,
        };
        use route_action::HostRewriteSpecifier as HR;
        let host_rewrite = match &p.host_rewrite_specifier {
            None => HostRewrite::None,
            Some(HR::HostRewriteLiteral(h)) => HostRewrite::Literal(
                HeaderValue::from_str(h)
                    .map_err(|_| ConfigError::new(format!("{field}.host_rewrite_literal"), "invalid value"))?,
            ),
            Some(HR::AutoHostRewrite(b)) if b.value => HostRewrite::Auto,
            Some(HR::AutoHostRewrite(_)) => HostRewrite::None,
            Some(HR::HostRewriteHeader(h)) => HostRewrite::Header(
                HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .map_err(|_| ConfigError::new(format!("{field}.host_rewrite_header"), "invalid header name"))?,
            ),
            Some(HR::HostRewritePathRegex(r)) => {
                let pat = r.pattern.as_ref().map(|m| m.regex.clone()).unwrap_or_default();
                let re = regex::Regex::new(&pat)
                    .map_err(|e| ConfigError::new(format!("{field}.host_rewrite_path_regex"), e.to_string()))?;
                HostRewrite::PathRegex(re, re2_substitution(&r.substitution))
            }
            Some(HR::HostRewrite(_)) => {
                return Err(ConfigError::new(
                    format!("{field}.host_rewrite"),
                    "substitution-format host rewrites are not supported",
                ));
            }
        };
        let retry_policy = match &p.retry_policy {
            Some(r) => Some(Arc::new(RetryPolicy::from_proto(r, &format!("{field}.retry_policy"))?)),
            None => vhost_retry.cloned(),
        };
        let mut hash_policy = Vec::new();
        for (i, h) in p.hash_policy.iter().enumerate() {
            use route_action::hash_policy::PolicySpecifier as PS;
            let terminal = h.terminal;
            let f = format!("{field}.hash_policy[{i}]");
            hash_policy.push(match &h.policy_specifier {
                Some(PS::Header(hh)) => HashPolicy::Header {
                    name: HeaderName::from_bytes(hh.header_name.to_ascii_lowercase().as_bytes())
                        .map_err(|_| ConfigError::new(&f, "invalid header name"))?,
                    terminal,
                },
                Some(PS::Cookie(c)) => HashPolicy::Cookie {
                    name: c.name.clone(),
                    ttl: c.ttl.as_ref().map(duration),
                    path: c.path.clone(),
                    terminal,
                },
                Some(PS::ConnectionProperties(c)) if c.source_ip => HashPolicy::SourceIp { terminal },
                Some(PS::ConnectionProperties(_)) => continue,
                Some(PS::QueryParameter(q)) => HashPolicy::QueryParameter { name: q.name.clone(), terminal },
                Some(PS::FilterState(_)) => {
                    return Err(ConfigError::new(f, "filter_state hash policy is not supported"));
                }
                None => continue,
            });
        }
        // RoutingPriority: DEFAULT (0) or HIGH (1); PGV's `enum.defined_only`.
        if !matches!(p.priority, 0 | 1) {
            return Err(ConfigError::new(format!("{field}.priority"), "value must be one of the defined enum values"));
        }
        Ok(RouteAction {
            cluster,
            prefix_rewrite: (!p.prefix_rewrite.is_empty()).then(|| p.prefix_rewrite.clone()),
            regex_rewrite,
            host_rewrite,
            timeout: optional_timeout(p.timeout.as_ref(), Some(DEFAULT_ROUTE_TIMEOUT)),
            idle_timeout: p.idle_timeout.as_ref().map(duration),
            retry_policy,
            hash_policy,
            max_grpc_timeout: p.max_grpc_timeout.as_ref().map(duration),
            grpc_timeout_offset: p.grpc_timeout_offset.as_ref().map(duration).filter(|d| !d.is_zero()),
            stream_duration: p.max_stream_duration.as_ref().map(|m| StreamDuration {
                max: m.max_stream_duration.as_ref().map(duration),
                grpc_header_max: m.grpc_timeout_header_max.as_ref().map(duration),
                grpc_header_offset: m.grpc_timeout_header_offset.as_ref().map(duration).filter(|d| !d.is_zero()),
            }),
            append_x_forwarded_host: p.append_x_forwarded_host,
            high_priority: p.priority == 1,
            mirrors: p
                .request_mirror_policies
                .iter()
                .enumerate()
                .map(|(i, m)| MirrorPolicy::from_proto(m, &format!("{field}.request_mirror_policies[{i}]")))
                .collect::<Result<_, _>>()?,
            cors: match &p.cors {
                Some(c) => Some((cx.extensions.legacy_cors)(c, &format!("{field}.cors"))?),
                None => None,
            },
        })
    }

    /// Picks the weighted cluster for a random value in `0..total`.
    pub fn pick_weighted(clusters: &[WeightedCluster], total: u64, r: u64) -> &WeightedCluster {
        let mut x = r % total;
        for c in clusters {
            if x < c.weight as u64 {
                return c;
            }
            x -= c.weight as u64;
        }
        &clusters[clusters.len() - 1]
    }
}

/// A compiled `direct_response`.
#[derive(Debug, Clone)]
pub struct DirectResponse {
    pub status: http::StatusCode,
    pub body: Bytes,
}

impl DirectResponse {
    pub fn from_proto(p: &DirectResponseAction, field: &str) -> Result<Self, ConfigError> {
        let status = u16::try_from(p.status)
            .ok()
            .filter(|s| (100..600).contains(s))
            .and_then(|s| http::StatusCode::from_u16(s).ok())
            .ok_or_else(|| ConfigError::new(format!("{field}.status"), "must be in [100, 600)"))?;
        let body = match &p.body {
            Some(ds) => read_data_source(ds, &format!("{field}.body"))?,
            None => Bytes::new(),
        };
        Ok(DirectResponse { status, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn re2_substitutions() {
        assert_eq!(re2_substitution(r"/v2/\1/x$"), "/v2/${1}/x$$");
    }

    #[test]
    fn stream_duration_limit_as_envoys_refresh_duration_timeout() {
        let ms = Duration::from_millis;
        let sd = |max: Option<u64>, hmax: Option<u64>, off: Option<u64>| StreamDuration {
            max: max.map(ms),
            grpc_header_max: hmax.map(ms),
            grpc_header_offset: off.map(ms),
        };
        // No grpc-timeout or no header max: max_stream_duration (0: none).
        assert_eq!(sd(Some(300), None, None).limit(Some(ms(50))), Some(ms(300)));
        assert_eq!(sd(Some(0), Some(2000), None).limit(None), None);
        assert_eq!(sd(None, Some(2000), None).limit(None), None);
        // The header, capped (0: no cap), then shortened; an offset that eats it leaves 0.
        assert_eq!(sd(None, Some(2000), None).limit(Some(ms(10_000))), Some(ms(2000)));
        assert_eq!(sd(None, Some(0), None).limit(Some(ms(7000))), Some(ms(7000)));
        assert_eq!(sd(None, Some(0), Some(100)).limit(Some(ms(700))), Some(ms(600)));
        assert_eq!(sd(None, Some(0), Some(100)).limit(Some(ms(50))), Some(ms(0)));
        assert_eq!(sd(None, Some(1000), Some(100)).limit(Some(ms(3000))), Some(ms(900)));
    }
}
