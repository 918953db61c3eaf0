//! `envoy.filters.http.local_ratelimit`: token buckets shared by all workers (lock-free), per
//! filter or per route, with optional descriptor buckets selected by the filter's `rate_limits`.
//!
//! Like Envoy 1.40 the buckets refill continuously (`tokens_per_fill / fill_interval` per second,
//! up to `max_tokens`, full at start). A limited request gets `status` (429 unless >= 400) with
//! body `local_rate_limited` and `response_headers_to_add` when enforced; otherwise it continues
//! with `request_headers_to_add_when_not_enforced`. Stats are
//! `<stat_prefix>.http_local_rate_limit.{enabled,enforced,rate_limited,ok,shadow_mode}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::route::v3::{RateLimit, rate_limit};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::r#type::v3::TokenBucket as TokenBucketProto;
use envoy_types::pb::google::protobuf::Any;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::{FilterAction, HttpFilter, RequestCtx};
use crate::access_log::ResponseFlags;
use crate::config::Percent;
use crate::config::{BuildCtx, ConfigError};
use crate::formatter::FormatContext;
use crate::http::local_reply::LocalReply;
use crate::matcher::{HeaderMatcher, RequestHeaders};
use crate::router::header_mutation::HeaderMutations;
use crate::stats::Counter;

pub const NAME: &str = "envoy.filters.http.local_ratelimit";
pub const TYPE: &str = "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

// === impl TokenBucket ===

/// Envoy's atomic token bucket: fractional tokens refilled from elapsed time by whichever
/// request gets there first, then consumed with a CAS loop. Shared by every worker.
pub struct TokenBucket {
    max: f64,
    /// Tokens per second.
    rate: f64,
    /// f64 bits of the current token count.
    tokens: AtomicU64,
    /// Nanoseconds since `base` of the last refill.
    last: AtomicU64,
    filling: AtomicBool,
    base: Instant,
}

impl TokenBucket {
    pub fn new(max_tokens: u32, tokens_per_fill: u32, fill_interval: Duration) -> Self {
        // Envoy's minimal rate: one token a year.
        let rate = (f64::from(tokens_per_fill) / fill_interval.as_secs_f64()).max(1.0 / (365.0 * 24.0 * 3600.0));
        TokenBucket {
            max: f64::from(max_tokens),
            rate,
            tokens: AtomicU64::new(f64::from(max_tokens).to_bits()),
            last: AtomicU64::new(0),
            filling: AtomicBool::new(false),
            base: Instant::now(),
        }
    }

    fn refill(&self) {
        if self.filling.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return;
        }
        let now = self.base.elapsed().as_nanos() as u64;
        let last = self.last.swap(now, Ordering::Relaxed);
        let add = now.saturating_sub(last) as f64 / 1e9 * self.rate;
        let _ = self.tokens.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
            Some((f64::from_bits(t) + add).min(self.max).to_bits())
        });
        self.filling.store(false, Ordering::Release);
    }

    /// Takes one token if there is one.
    pub fn consume(&self) -> bool {
        self.refill();
        self.tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                let t = f64::from_bits(t);
                (t.floor() >= 1.0).then(|| (t - 1.0).to_bits())
            })
            .is_ok()
    }

    pub fn max_tokens(&self) -> u64 {
        self.max as u64
    }

    pub fn remaining(&self) -> u64 {
        f64::from_bits(self.tokens.load(Ordering::Relaxed)).floor().max(0.0) as u64
    }

    /// Envoy's `x-ratelimit-reset`: 0 while a token is left, else the whole seconds one token takes.
    pub fn reset_seconds(&self) -> u64 {
        if f64::from_bits(self.tokens.load(Ordering::Relaxed)) >= 1.0 {
            return 0;
        }
        ((1.0 / self.rate) * 1000.0).ceil() as u64 / 1000
    }

    fn fill_rate(&self) -> f64 {
        self.rate
    }
}

fn bucket_from_proto(b: &TokenBucketProto, field: &str) -> Result<TokenBucket, ConfigError> {
    let Some(fi) = b.fill_interval.as_ref() else {
        return Err(ConfigError::new(format!("{field}.fill_interval"), "value is required"));
    };
    let fill = crate::config::duration(fi);
    if fill.is_zero() {
        return Err(ConfigError::new(format!("{field}.fill_interval"), "value must be greater than 0s"));
    }
    if fill < Duration::from_millis(50) {
        return Err(ConfigError::new(field, "local rate limit token bucket fill timer must be >= 50ms"));
    }
    let per_fill = b.tokens_per_fill.map(|v| v.value).unwrap_or(1);
    if per_fill == 0 {
        return Err(ConfigError::new(format!("{field}.tokens_per_fill"), "value must be greater than 0"));
    }
    Ok(TokenBucket::new(b.max_tokens, per_fill, fill))
}

// === descriptors ===

/// One action of an embedded `rate_limits` entry, producing a descriptor entry.
enum DescriptorAction {
    GenericKey { key: String, value: String },
    RequestHeader { header: String, key: String, skip_if_absent: bool },
    RemoteAddress,
    DestinationCluster,
    SourceCluster(String),
    HeaderValueMatch { key: String, value: String, expect_match: bool, headers: Vec<HeaderMatcher> },
}

type Descriptor = Vec<(String, String)>;

struct RateLimitEntry {
    actions: Vec<DescriptorAction>,
}

impl RateLimitEntry {
    fn from_proto(r: &RateLimit, cx: &BuildCtx, field: &str) -> Result<Self, ConfigError> {
        use rate_limit::action::ActionSpecifier as A;
        if r.limit.is_some() {
            return Err(ConfigError::new(format!("{field}.limit"), "rate limit overrides are not supported"));
        }
        let mut actions = Vec::new();
        for (i, a) in r.actions.iter().enumerate() {
            let f = format!("{field}.actions[{i}]");
            actions.push(match &a.action_specifier {
                Some(A::GenericKey(g)) => DescriptorAction::GenericKey {
                    key: if g.descriptor_key.is_empty() { "generic_key".into() } else { g.descriptor_key.clone() },
                    value: g.descriptor_value.clone(),
                },
                Some(A::RequestHeaders(h)) => DescriptorAction::RequestHeader {
                    header: h.header_name.to_ascii_lowercase(),
                    key: h.descriptor_key.clone(),
                    skip_if_absent: h.skip_if_absent,
                },
                Some(A::RemoteAddress(_)) => DescriptorAction::RemoteAddress,
                Some(A::DestinationCluster(_)) => DescriptorAction::DestinationCluster,
                Some(A::SourceCluster(_)) => DescriptorAction::SourceCluster(cx.node.cluster.clone()),
                Some(A::HeaderValueMatch(m)) => DescriptorAction::HeaderValueMatch {
                    key: if m.descriptor_key.is_empty() { "header_match".into() } else { m.descriptor_key.clone() },
                    value: m.descriptor_value.clone(),
                    expect_match: m.expect_match.map(|b| b.value).unwrap_or(true),
                    headers: m
                        .headers
                        .iter()
                        .enumerate()
                        .map(|(j, h)| HeaderMatcher::from_proto(h, &format!("{f}.headers[{j}]")))
                        .collect::<Result<_, _>>()?,
                },
                Some(_) => {
                    return Err(ConfigError::new(
                        f,
                        "only generic_key, request_headers, remote_address, destination_cluster, source_cluster \
                         and header_value_match rate limit actions are supported",
                    ));
                }
                None => return Err(ConfigError::new(f, "action_specifier is required")),
            });
        }
        Ok(RateLimitEntry { actions })
    }

    /// The descriptor for a request, or None when an action produces nothing.
    fn descriptor(&self, cx: &RequestCtx<'_>, req: &Parts) -> Option<Descriptor> {
        let mut out = Vec::with_capacity(self.actions.len());
        for a in &self.actions {
            match a {
                DescriptorAction::GenericKey { key, value } => out.push((key.clone(), value.clone())),
                DescriptorAction::RequestHeader { header, key, skip_if_absent } => {
                    match req.headers.get(header).and_then(|v| v.to_str().ok()) {
                        Some(v) => out.push((key.clone(), v.to_string())),
                        None if *skip_if_absent => continue,
                        None => return None,
                    }
                }
                DescriptorAction::RemoteAddress => out.push(("remote_address".into(), cx.remote.ip().to_string())),
                DescriptorAction::DestinationCluster => {
                    let r = cx.route?;
                    let crate::router::route::Action::Route(ra) = &r.route.action else { return None };
                    let crate::router::action::ClusterSpecifier::Name(n) = &ra.cluster else { return None };
                    out.push(("destination_cluster".into(), n.to_string()));
                }
                DescriptorAction::SourceCluster(c) => out.push(("source_cluster".into(), c.clone())),
                DescriptorAction::HeaderValueMatch { key, value, expect_match, headers } => {
                    let view = request_view(req);
                    if headers.iter().all(|m| m.matches(&view)) != *expect_match {
                        return None;
                    }
                    out.push((key.clone(), value.clone()));
                }
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

fn request_view(req: &Parts) -> RequestHeaders<'_> {
    RequestHeaders {
        method: req.method.as_str(),
        path: req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        authority: req
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers.get(http::header::HOST).and_then(|v| v.to_str().ok()))
            .unwrap_or(""),
        scheme: req.uri.scheme_str().unwrap_or("http"),
        headers: &req.headers,
    }
}

struct DescriptorBucket {
    entries: Descriptor,
    bucket: TokenBucket,
    shadow: bool,
}

// === config ===

pub struct LocalRateLimitStats {
    enabled: Counter,
    enforced: Counter,
    rate_limited: Counter,
    ok: Counter,
    shadow_mode: Counter,
}

/// One compiled `LocalRateLimit` (the filter's or a route's).
pub struct RateLimitConfig {
    status: StatusCode,
    bucket: Option<TokenBucket>,
    descriptors: Vec<DescriptorBucket>,
    rate_limits: Vec<RateLimitEntry>,
    always_consume_default: bool,
    enabled: Percent,
    enforced: Percent,
    response_headers: HeaderMutations,
    request_headers: HeaderMutations,
    x_ratelimit_headers: bool,
    retry_after: bool,
    grpc_resource_exhausted: bool,
    stats: LocalRateLimitStats,
}

impl RateLimitConfig {
    pub fn from_proto(p: &LocalRateLimit, cx: &BuildCtx, per_route: bool) -> Result<Self, ConfigError> {
        use envoy_types::pb::envoy::extensions::common::ratelimit::v3::XRateLimitHeadersRfcVersion;
        if p.stat_prefix.is_empty() {
            return Err(ConfigError::new("stat_prefix", "value length must be at least 1 characters"));
        }
        if per_route && p.token_bucket.is_none() {
            return Err(ConfigError::new("", "local rate limit token bucket must be set for per filter configs"));
        }
        if p.local_rate_limit_per_downstream_connection {
            return Err(ConfigError::new(
                "local_rate_limit_per_downstream_connection",
                "per-connection local rate limiting is not supported",
            ));
        }
        if p.local_cluster_rate_limit.is_some() {
            return Err(ConfigError::new("local_cluster_rate_limit", "local cluster rate limits are not supported"));
        }
        let bucket = p.token_bucket.as_ref().map(|b| bucket_from_proto(b, "token_bucket")).transpose()?;
        let fill = p.token_bucket.as_ref().and_then(|b| b.fill_interval.as_ref()).map(crate::config::duration);
        let mut descriptors: Vec<DescriptorBucket> = Vec::new();
        for (i, d) in p.descriptors.iter().enumerate() {
            let f = format!("descriptors[{i}]");
            let Some(tb) = &d.token_bucket else {
                return Err(ConfigError::new(format!("{f}.token_bucket"), "value is required"));
            };
            let b = bucket_from_proto(tb, &format!("{f}.token_bucket"))?;
            if let (Some(fill), Some(dfi)) = (fill, tb.fill_interval.as_ref())
                && !crate::config::duration(dfi).as_millis().is_multiple_of(fill.as_millis().max(1))
            {
                return Err(ConfigError::new(
                    f,
                    "local rate descriptor limit is not a multiple of token bucket fill timer",
                ));
            }
            let entries: Descriptor = d.entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect();
            if entries.iter().any(|(_, v)| v.is_empty()) {
                return Err(ConfigError::new(f, "dynamic descriptors (entries with an empty value) are not supported"));
            }
            if descriptors.iter().any(|x| x.entries == entries) {
                let shown: Vec<String> = entries.iter().map(|(k, v)| format!("{k}={v}")).collect();
                return Err(ConfigError::new(
                    "descriptors",
                    format!("duplicate descriptor in the local rate descriptor: {}", shown.join(", ")),
                ));
            }
            descriptors.push(DescriptorBucket { entries, bucket: b, shadow: d.shadow_mode });
        }
        // Descriptors are selected from the filter's own `rate_limits`; remora does not read
        // route-level `rate_limits`, so descriptors without them could never match.
        if !descriptors.is_empty() && p.rate_limits.is_empty() {
            return Err(ConfigError::new(
                "descriptors",
                "descriptors need the filter's rate_limits (route-level rate_limits are not supported)",
            ));
        }
        let rate_limits = p
            .rate_limits
            .iter()
            .enumerate()
            .filter(|(_, r)| r.stage.map(|s| s.value).unwrap_or(0) == p.stage)
            .map(|(i, r)| RateLimitEntry::from_proto(r, cx, &format!("rate_limits[{i}]")))
            .collect::<Result<_, _>>()?;
        let c = |n: &str| cx.stats.counter(&format!("{}.http_local_rate_limit.{n}", p.stat_prefix));
        let status = p.status.as_ref().map(|s| s.code as u16).filter(|c| *c >= 400);
        Ok(RateLimitConfig {
            status: status.and_then(|c| StatusCode::from_u16(c).ok()).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
            bucket,
            descriptors,
            rate_limits,
            always_consume_default: p.always_consume_default_token_bucket.map(|b| b.value).unwrap_or(true),
            enabled: Percent::from_runtime(p.filter_enabled.as_ref(), Percent::NEVER),
            enforced: Percent::from_runtime(p.filter_enforced.as_ref(), Percent::NEVER),
            response_headers: HeaderMutations::from_proto(
                &p.response_headers_to_add,
                &[],
                "response_headers_to_add",
                "",
            )?,
            request_headers: HeaderMutations::from_proto(
                &p.request_headers_to_add_when_not_enforced,
                &[],
                "request_headers_to_add_when_not_enforced",
                "",
            )?,
            x_ratelimit_headers: p.enable_x_ratelimit_headers == XRateLimitHeadersRfcVersion::DraftVersion03 as i32,
            retry_after: p.enable_retry_after_header,
            grpc_resource_exhausted: p.rate_limited_as_resource_exhausted,
            stats: LocalRateLimitStats {
                enabled: c("enabled"),
                enforced: c("enforced"),
                rate_limited: c("rate_limited"),
                ok: c("ok"),
                shadow_mode: c("shadow_mode"),
            },
        })
    }

    /// Envoy's `requestAllowed`: the matched descriptor buckets (slowest first), then the default
    /// bucket. Returns whether allowed, the bucket that decided (for `x-ratelimit-*`) and whether
    /// a shadow-mode descriptor was the one that said no.
    fn request_allowed(&self, descriptors: &[Descriptor]) -> (bool, Option<&TokenBucket>, bool) {
        let mut matched: Vec<&DescriptorBucket> =
            self.descriptors.iter().filter(|d| descriptors.contains(&d.entries)).collect();
        matched.sort_by(|a, b| a.bucket.fill_rate().total_cmp(&b.bucket.fill_rate()));
        for d in &matched {
            if !d.bucket.consume() {
                return (false, Some(&d.bucket), d.shadow);
            }
        }
        if matched.is_empty() || self.always_consume_default {
            let Some(b) = &self.bucket else {
                return (true, matched.first().map(|d| &d.bucket), false);
            };
            if !b.consume() {
                return (false, Some(b), false);
            }
            return (true, Some(matched.first().map(|d| &d.bucket).unwrap_or(b)), false);
        }
        (true, matched.first().map(|d| &d.bucket), false)
    }
}

/// The bucket context kept for the response headers.
#[derive(Clone, Copy)]
struct XRateLimit {
    limit: u64,
    remaining: u64,
    reset: u64,
}

impl XRateLimit {
    fn apply(&self, h: &mut HeaderMap) {
        h.append("x-ratelimit-limit", HeaderValue::from(self.limit));
        h.append("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        h.append("x-ratelimit-reset", HeaderValue::from(self.reset));
    }
}

pub struct LocalRateLimitFilter {
    name: String,
    config: RateLimitConfig,
}

pub fn factory(name: &str, any: &Any, cx: &BuildCtx) -> Result<Arc<dyn HttpFilter>, ConfigError> {
    let p: LocalRateLimit =
        xds_client::any::unpack(any).map_err(|e| ConfigError::new("typed_config", e.to_string()))?;
    let config = RateLimitConfig::from_proto(&p, cx, false).map_err(|e| e.within("typed_config"))?;
    Ok(Arc::new(LocalRateLimitFilter { name: name.to_string(), config }))
}

pub fn per_route_factory(any: &Any, cx: &BuildCtx) -> Result<Arc<dyn std::any::Any + Send + Sync>, ConfigError> {
    let p: LocalRateLimit = xds_client::any::unpack(any).map_err(|e| ConfigError::new("", e.to_string()))?;
    Ok(Arc::new(RateLimitConfig::from_proto(&p, cx, true)?))
}

impl HttpFilter for LocalRateLimitFilter {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(&self, cx: &mut RequestCtx<'_>, req: &mut Parts) -> FilterAction {
        if cx.disabled(&self.name) {
            return FilterAction::Continue;
        }
        let c = cx.per_route::<RateLimitConfig>(&self.name).unwrap_or(&self.config);
        if !c.enabled.sample() {
            return FilterAction::Continue;
        }
        c.stats.enabled.inc();
        let descriptors: Vec<Descriptor> = if c.descriptors.is_empty() {
            Vec::new()
        } else {
            c.rate_limits.iter().filter_map(|r| r.descriptor(cx, req)).collect()
        };
        let (allowed, bucket, shadow) = c.request_allowed(&descriptors);
        let x = bucket.filter(|_| c.x_ratelimit_headers).map(|b| XRateLimit {
            limit: b.max_tokens(),
            remaining: b.remaining(),
            reset: b.reset_seconds(),
        });
        if allowed {
            c.stats.ok.inc();
            if let Some(x) = x {
                cx.state.insert(x);
            }
            return FilterAction::Continue;
        }
        c.stats.rate_limited.inc();
        if shadow {
            c.stats.shadow_mode.inc();
        }
        if shadow || !c.enforced.sample() {
            if !c.request_headers.is_empty() {
                c.request_headers.apply(&mut req.headers, &FormatContext::default());
            }
            if let Some(x) = x {
                cx.state.insert(x);
            }
            return FilterAction::Continue;
        }
        c.stats.enforced.inc();
        let mut reply = LocalReply::new(c.status, "local_rate_limited", "RL", "local_rate_limited");
        if !c.response_headers.is_empty() {
            c.response_headers.apply(&mut reply.headers, &FormatContext::default());
        }
        if c.retry_after
            && let Some(b) = bucket
        {
            reply.headers.insert(http::header::RETRY_AFTER, HeaderValue::from(b.reset_seconds()));
        }
        super::grpc_local_reply(&req.headers, &mut reply, c.grpc_resource_exhausted.then_some(8));
        // The filter's response hook runs on its own reply too.
        if let Some(x) = x {
            x.apply(&mut reply.headers);
        }
        cx.set_response_flag(ResponseFlags::RATE_LIMITED);
        FilterAction::Respond(reply)
    }

    fn on_response(&self, cx: &mut RequestCtx<'_>, resp: &mut http::response::Parts) {
        if let Some(x) = cx.state.remove::<XRateLimit>() {
            x.apply(&mut resp.headers);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
    use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
    use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};

    fn all() -> Option<RuntimeFractionalPercent> {
        Some(RuntimeFractionalPercent {
            default_value: Some(FractionalPercent { numerator: 100, denominator: 0 }),
            runtime_key: String::new(),
        })
    }

    fn proto(max: u32, secs: i64) -> LocalRateLimit {
        LocalRateLimit {
            stat_prefix: "rl".into(),
            token_bucket: Some(TokenBucketProto {
                max_tokens: max,
                tokens_per_fill: Some(UInt32Value { value: max }),
                fill_interval: Some(PbDuration { seconds: secs, nanos: 0 }),
            }),
            filter_enabled: all(),
            filter_enforced: all(),
            ..Default::default()
        }
    }

    #[test]
    fn config_validation() {
        let cx = BuildCtx::default();
        assert!(RateLimitConfig::from_proto(&proto(2, 5), &cx, false).is_ok());
        let mut p = proto(2, 5);
        p.stat_prefix.clear();
        assert!(RateLimitConfig::from_proto(&p, &cx, false).is_err());
        let mut p = proto(2, 0);
        if let Some(b) = p.token_bucket.as_mut() {
            b.fill_interval = Some(PbDuration { seconds: 0, nanos: 10_000_000 });
        }
        let e = RateLimitConfig::from_proto(&p, &cx, false).err().unwrap();
        assert!(e.reason.contains(">= 50ms"), "{e}");
        let mut p = proto(2, 5);
        p.token_bucket = None;
        assert!(RateLimitConfig::from_proto(&p, &cx, true).is_err(), "per-route needs a bucket");
        assert!(RateLimitConfig::from_proto(&p, &cx, false).is_ok());
        let mut p = proto(2, 5);
        p.status = Some(envoy_types::pb::envoy::r#type::v3::HttpStatus { code: 302 });
        assert_eq!(RateLimitConfig::from_proto(&p, &cx, false).unwrap().status, 429);
    }

    #[test]
    fn bucket_consumes_and_reports() {
        let b = TokenBucket::new(2, 2, Duration::from_secs(5));
        assert!(b.consume());
        assert_eq!(b.remaining(), 1);
        assert_eq!(b.reset_seconds(), 0);
        assert!(b.consume());
        assert!(!b.consume());
        assert_eq!(b.remaining(), 0);
        assert_eq!(b.reset_seconds(), 2, "2.5 s per token, whole seconds");
        let fast = TokenBucket::new(1, 1, Duration::from_millis(50));
        assert!(fast.consume());
        std::thread::sleep(Duration::from_millis(70));
        assert!(fast.consume(), "refilled from elapsed time");
    }

    #[test]
    fn no_bucket_allows_everything() {
        let mut p = proto(1, 5);
        p.token_bucket = None;
        let c = RateLimitConfig::from_proto(&p, &BuildCtx::default(), false).unwrap();
        for _ in 0..5 {
            assert!(c.request_allowed(&[]).0);
        }
    }

    #[test]
    fn descriptors_pick_their_bucket() {
        use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
            LocalRateLimitDescriptor, rate_limit_descriptor::Entry,
        };
        let mut p = proto(100, 5);
        p.descriptors = vec![LocalRateLimitDescriptor {
            entries: vec![Entry { key: "client".into(), value: "a".into() }],
            token_bucket: proto(1, 60).token_bucket,
            shadow_mode: false,
        }];
        let cx = BuildCtx::default();
        assert!(RateLimitConfig::from_proto(&p, &cx, false).is_err(), "descriptors without rate_limits");
        p.rate_limits = vec![RateLimit {
            actions: vec![rate_limit::Action {
                action_specifier: Some(rate_limit::action::ActionSpecifier::RequestHeaders(
                    rate_limit::action::RequestHeaders {
                        header_name: "x-client".into(),
                        descriptor_key: "client".into(),
                        skip_if_absent: false,
                    },
                )),
            }],
            ..Default::default()
        }];
        let c = RateLimitConfig::from_proto(&p, &cx, false).unwrap();
        let a = vec![vec![("client".to_string(), "a".to_string())]];
        assert!(c.request_allowed(&a).0);
        assert!(!c.request_allowed(&a).0, "the descriptor bucket has one token");
        let b = vec![vec![("client".to_string(), "b".to_string())]];
        assert!(c.request_allowed(&b).0, "other clients use the default bucket");
    }
}
