//! `envoy.filters.http.fault`: injects delays, aborts (HTTP or gRPC status) and response
//! throttling into matching requests, as configured or as asked by `x-envoy-fault-*` headers.
//!
//! A per-route `HTTPFault` replaces the filter's settings for that route. Stats are
//! `http.<stat_prefix>.fault.{aborts_injected,delays_injected,faults_overflow,response_rl_injected}`
//! and the gauge `active_faults`; with `x-envoy-downstream-service-cluster` also
//! `http.<stat_prefix>.fault.<cluster>.{aborts,delays}_injected`. Runtime keys are accepted but
//! only their defaults are used (remora has no runtime overrides).

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{
    FaultDelay, FaultRateLimit, fault_delay, fault_rate_limit,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault, fault_abort};
use envoy_types::pb::google::protobuf::Any;
use http::request::Parts;
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};

use super::{FilterAction, HttpFilter, RequestCtx};
use crate::access_log::ResponseFlags;
use crate::config::Percent;
use crate::config::{BuildCtx, ConfigError};
use crate::http::body::{BoxError, ResponseBody};
use crate::http::local_reply::LocalReply;
use crate::matcher::{HeaderMatcher, RequestHeaders};
use crate::stats::{Counter, Gauge, GaugeGuard, Store};

pub const NAME: &str = "envoy.filters.http.fault";
pub const TYPE: &str = "envoy.extensions.filters.http.fault.v3.HTTPFault";

const DELAY_REQUEST: &str = "x-envoy-fault-delay-request";
const DELAY_PERCENTAGE: &str = "x-envoy-fault-delay-request-percentage";
const ABORT_REQUEST: &str = "x-envoy-fault-abort-request";
const ABORT_GRPC_REQUEST: &str = "x-envoy-fault-abort-grpc-request";
const ABORT_PERCENTAGE: &str = "x-envoy-fault-abort-request-percentage";
const THROUGHPUT_RESPONSE: &str = "x-envoy-fault-throughput-response";
const THROUGHPUT_PERCENTAGE: &str = "x-envoy-fault-throughput-response-percentage";
const DOWNSTREAM_CLUSTER: &str = "x-envoy-downstream-service-cluster";
const DOWNSTREAM_NODE: &str = "x-envoy-downstream-service-node";

/// How often a throttled response body is released (Envoy's stream rate limiter interval).
const THROTTLE_INTERVAL: Duration = Duration::from_millis(50);

/// A percentage that `x-envoy-fault-*-percentage` may lower (only for header-driven faults).
#[derive(Debug, Clone, Copy)]
struct FaultPercent {
    configured: Percent,
    /// The configured denominator as a per-million scale, for header numerators.
    scale: u64,
    header: Option<&'static str>,
}

impl FaultPercent {
    fn new(p: Option<&envoy_types::pb::envoy::r#type::v3::FractionalPercent>, header: Option<&'static str>) -> Self {
        use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType as D;
        let scale = match p.map(|p| D::try_from(p.denominator)) {
            Some(Ok(D::TenThousand)) => 100,
            Some(Ok(D::Million)) => 1,
            _ => 10_000,
        };
        FaultPercent { configured: p.map(Percent::from_proto).unwrap_or(Percent::NEVER), scale, header }
    }

    fn sample(&self, h: &HeaderMap) -> bool {
        let mut p = self.configured;
        if let Some(name) = self.header
            && let Some(n) = first_u64(h, name)
        {
            p = p.capped(n.saturating_mul(self.scale));
        }
        p.sample()
    }
}

#[derive(Debug, Clone, Copy)]
enum AbortKind {
    Http(StatusCode),
    Grpc(u32),
    Header,
}

#[derive(Debug, Clone, Copy)]
enum DelayKind {
    Fixed(Duration),
    Header,
}

#[derive(Debug, Clone, Copy)]
enum RateKind {
    FixedKbps(u64),
    Header,
}

/// One compiled `HTTPFault` (the filter's or a route's).
#[derive(Debug)]
pub struct FaultSettings {
    abort: Option<(AbortKind, FaultPercent, Bytes)>,
    delay: Option<(DelayKind, FaultPercent)>,
    rate_limit: Option<(RateKind, FaultPercent)>,
    upstream_cluster: String,
    headers: Vec<HeaderMatcher>,
    downstream_nodes: HashSet<String>,
    max_active_faults: Option<u64>,
    disable_downstream_cluster_stats: bool,
}

impl FaultSettings {
    pub fn from_proto(p: &HttpFault) -> Result<Self, ConfigError> {
        let abort = p.abort.as_ref().map(abort_from_proto).transpose().map_err(|e| e.within("abort"))?;
        let delay = p.delay.as_ref().map(delay_from_proto).transpose().map_err(|e| e.within("delay"))?;
        let rate_limit = p
            .response_rate_limit
            .as_ref()
            .map(rate_from_proto)
            .transpose()
            .map_err(|e| e.within("response_rate_limit"))?;
        let headers = p
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| HeaderMatcher::from_proto(h, &format!("headers[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(FaultSettings {
            abort,
            delay,
            rate_limit,
            upstream_cluster: p.upstream_cluster.clone(),
            headers,
            downstream_nodes: p.downstream_nodes.iter().cloned().collect(),
            max_active_faults: p.max_active_faults.map(|v| u64::from(v.value)),
            disable_downstream_cluster_stats: p.disable_downstream_cluster_stats,
        })
    }
}

fn abort_from_proto(a: &FaultAbort) -> Result<(AbortKind, FaultPercent, Bytes), ConfigError> {
    let (kind, header) = match &a.error_type {
        Some(fault_abort::ErrorType::HttpStatus(s)) => {
            if !(200..600).contains(s) {
                return Err(ConfigError::new("http_status", format!("value must be inside range [200, 600): {s}")));
            }
            let code = StatusCode::from_u16(*s as u16)
                .map_err(|_| ConfigError::new("http_status", format!("invalid status {s}")))?;
            (AbortKind::Http(code), None)
        }
        Some(fault_abort::ErrorType::GrpcStatus(s)) => (AbortKind::Grpc(*s), None),
        Some(fault_abort::ErrorType::HeaderAbort(_)) => (AbortKind::Header, Some(ABORT_PERCENTAGE)),
        None => return Err(ConfigError::new("error_type", "value is required")),
    };
    let body = if a.response_body.is_empty() { "fault filter abort".to_string() } else { a.response_body.clone() };
    Ok((kind, FaultPercent::new(a.percentage.as_ref(), header), Bytes::from(body)))
}

fn delay_from_proto(d: &FaultDelay) -> Result<(DelayKind, FaultPercent), ConfigError> {
    match &d.fault_delay_secifier {
        Some(fault_delay::FaultDelaySecifier::FixedDelay(dur)) => {
            if dur.seconds < 0 || (dur.seconds == 0 && dur.nanos <= 0) {
                return Err(ConfigError::new("fixed_delay", "value must be greater than 0s"));
            }
            Ok((DelayKind::Fixed(crate::config::duration(dur)), FaultPercent::new(d.percentage.as_ref(), None)))
        }
        Some(fault_delay::FaultDelaySecifier::HeaderDelay(_)) => {
            Ok((DelayKind::Header, FaultPercent::new(d.percentage.as_ref(), Some(DELAY_PERCENTAGE))))
        }
        None => Err(ConfigError::new("fault_delay_secifier", "value is required")),
    }
}

fn rate_from_proto(r: &FaultRateLimit) -> Result<(RateKind, FaultPercent), ConfigError> {
    match &r.limit_type {
        Some(fault_rate_limit::LimitType::FixedLimit(f)) => {
            if f.limit_kbps < 1 {
                return Err(ConfigError::new("fixed_limit.limit_kbps", "value must be greater than or equal to 1"));
            }
            Ok((RateKind::FixedKbps(f.limit_kbps), FaultPercent::new(r.percentage.as_ref(), None)))
        }
        Some(fault_rate_limit::LimitType::HeaderLimit(_)) => {
            Ok((RateKind::Header, FaultPercent::new(r.percentage.as_ref(), Some(THROUGHPUT_PERCENTAGE))))
        }
        None => Err(ConfigError::new("limit_type", "value is required")),
    }
}

pub struct FaultStats {
    aborts_injected: Counter,
    delays_injected: Counter,
    faults_overflow: Counter,
    response_rl_injected: Counter,
    active_faults: Gauge,
    /// `http.<stat_prefix>.fault.`: per-downstream-cluster counters are made on demand.
    prefix: String,
    store: Arc<Store>,
}

impl FaultStats {
    fn new(cx: &BuildCtx) -> Self {
        let prefix = format!("http.{}.fault.", cx.http_stat_prefix.as_deref().unwrap_or(""));
        let c = |n: &str| cx.stats.counter(&format!("{prefix}{n}"));
        FaultStats {
            aborts_injected: c("aborts_injected"),
            delays_injected: c("delays_injected"),
            faults_overflow: c("faults_overflow"),
            response_rl_injected: c("response_rl_injected"),
            active_faults: cx.stats.gauge(&format!("{prefix}active_faults")),
            prefix,
            store: cx.stats.clone(),
        }
    }
}

/// The fault filter: its own settings, used unless the route has its own `HTTPFault`.
pub struct FaultFilter {
    name: String,
    settings: FaultSettings,
    stats: FaultStats,
}

pub fn factory(name: &str, any: &Any, cx: &BuildCtx) -> Result<Arc<dyn HttpFilter>, ConfigError> {
    let p: HttpFault = xds_client::any::unpack(any).map_err(|e| ConfigError::new("typed_config", e.to_string()))?;
    let settings = FaultSettings::from_proto(&p).map_err(|e| e.within("typed_config"))?;
    Ok(Arc::new(FaultFilter { name: name.to_string(), settings, stats: FaultStats::new(cx) }))
}

pub fn per_route_factory(any: &Any, _cx: &BuildCtx) -> Result<Arc<dyn std::any::Any + Send + Sync>, ConfigError> {
    let p: HttpFault = xds_client::any::unpack(any).map_err(|e| ConfigError::new("", e.to_string()))?;
    Ok(Arc::new(FaultSettings::from_proto(&p)?))
}

/// Held while a request has an injected fault (`active_faults`); dropped with the request (or
/// with the response body when it is throttled).
#[derive(Clone)]
struct ActiveFault(#[allow(dead_code)] Arc<GaugeGuard>);

/// A throttled response was decided for this request (bytes per second).
#[derive(Clone, Copy)]
struct Throttle(u64);

fn first_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

impl FaultFilter {
    fn settings<'a>(&'a self, route: Option<super::RouteRef<'a>>) -> &'a FaultSettings {
        super::per_route_of::<FaultSettings>(route, &self.name).unwrap_or(&self.settings)
    }

    /// Counts the request as an active fault unless `max_active_faults` is reached.
    fn try_activate(&self, s: &FaultSettings, cx: &mut RequestCtx<'_>) -> bool {
        if cx.state.get::<ActiveFault>().is_some() {
            return true;
        }
        let max = s.max_active_faults.unwrap_or(u64::MAX);
        if self.stats.active_faults.value().max(0) as u64 >= max {
            self.stats.faults_overflow.inc();
            return false;
        }
        cx.state.insert(ActiveFault(Arc::new(GaugeGuard::new(&self.stats.active_faults))));
        true
    }

    fn downstream_counter(&self, s: &FaultSettings, cluster: Option<&str>, stat: &str) {
        if let Some(c) = cluster.filter(|c| !c.is_empty() && !s.disable_downstream_cluster_stats) {
            self.stats.store.counter(&format!("{}{c}.{stat}", self.stats.prefix)).inc();
        }
    }

    /// The abort to send, if the abort fault fires for this request.
    fn abort_reply(&self, s: &FaultSettings, req: &Parts) -> Option<LocalReply> {
        let (kind, pct, body) = s.abort.as_ref()?;
        if !pct.sample(&req.headers) {
            return None;
        }
        let (status, grpc) = match kind {
            AbortKind::Http(c) => (*c, None),
            AbortKind::Grpc(g) => (StatusCode::OK, Some(*g)),
            AbortKind::Header => {
                let http = first_u64(&req.headers, ABORT_REQUEST)
                    .filter(|c| (200..600).contains(c))
                    .and_then(|c| StatusCode::from_u16(c as u16).ok());
                match http {
                    Some(c) => (c, None),
                    None => (StatusCode::OK, Some(first_u64(&req.headers, ABORT_GRPC_REQUEST)? as u32)),
                }
            }
        };
        let mut reply = LocalReply::new(status, body.clone(), "FI", "fault_filter_abort");
        super::grpc_local_reply(&req.headers, &mut reply, grpc);
        Some(reply)
    }
}

impl HttpFilter for FaultFilter {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(&self, cx: &mut RequestCtx<'_>, req: &mut Parts) -> FilterAction {
        if cx.disabled(&self.name) {
            return FilterAction::Continue;
        }
        let s = self.settings(cx.route);
        if !s.upstream_cluster.is_empty() {
            let cluster = cx.route.and_then(|r| match &r.route.action {
                crate::router::route::Action::Route(a) => match &a.cluster {
                    crate::router::action::ClusterSpecifier::Name(n) => Some(n.to_string()),
                    crate::router::action::ClusterSpecifier::Header(h) => {
                        req.headers.get(h).and_then(|v| v.to_str().ok()).map(str::to_string)
                    }
                    crate::router::action::ClusterSpecifier::Weighted { .. } => None,
                },
                _ => None,
            });
            if cluster.as_deref() != Some(s.upstream_cluster.as_str()) {
                return FilterAction::Continue;
            }
        }
        if !s.downstream_nodes.is_empty() {
            let node = req.headers.get(DOWNSTREAM_NODE).and_then(|v| v.to_str().ok());
            if !node.is_some_and(|n| s.downstream_nodes.contains(n)) {
                return FilterAction::Continue;
            }
        }
        if !s.headers.is_empty() {
            let path = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let authority = req
                .uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| req.headers.get(http::header::HOST).and_then(|v| v.to_str().ok()))
                .unwrap_or("");
            let view = RequestHeaders {
                method: req.method.as_str(),
                path,
                authority,
                scheme: req.uri.scheme_str().unwrap_or("http"),
                headers: &req.headers,
            };
            if !s.headers.iter().all(|m| m.matches(&view)) {
                return FilterAction::Continue;
            }
        }
        let downstream_cluster = req.headers.get(DOWNSTREAM_CLUSTER).and_then(|v| v.to_str().ok()).map(str::to_string);

        // Response throttling.
        if let Some((kind, pct)) = &s.rate_limit
            && pct.sample(&req.headers)
        {
            let kbps = match kind {
                RateKind::FixedKbps(k) => Some(*k),
                RateKind::Header => first_u64(&req.headers, THROUGHPUT_RESPONSE).filter(|k| *k > 0),
            };
            if let Some(k) = kbps
                && self.try_activate(s, cx)
            {
                self.stats.response_rl_injected.inc();
                cx.state.insert(Throttle(k.saturating_mul(1024)));
            }
        }

        // Delay (possibly followed by an abort).
        if let Some((kind, pct)) = &s.delay
            && pct.sample(&req.headers)
        {
            let d = match kind {
                DelayKind::Fixed(d) => Some(*d),
                DelayKind::Header => first_u64(&req.headers, DELAY_REQUEST).map(Duration::from_millis),
            };
            if let Some(d) = d.filter(|d| d.as_millis() > 0)
                && self.try_activate(s, cx)
            {
                self.stats.delays_injected.inc();
                self.downstream_counter(s, downstream_cluster.as_deref(), "delays_injected");
                cx.set_response_flag(ResponseFlags::DELAY_INJECTED);
                return match self.abort_reply(s, req) {
                    Some(reply) => {
                        self.stats.aborts_injected.inc();
                        self.downstream_counter(s, downstream_cluster.as_deref(), "aborts_injected");
                        cx.set_response_flag(ResponseFlags::FAULT_INJECTED);
                        FilterAction::DelayThen(d, Box::new(reply))
                    }
                    None => FilterAction::Delay(d),
                };
            }
        }

        if let Some(reply) = self.abort_reply(s, req)
            && self.try_activate(s, cx)
        {
            self.stats.aborts_injected.inc();
            self.downstream_counter(s, downstream_cluster.as_deref(), "aborts_injected");
            cx.set_response_flag(ResponseFlags::FAULT_INJECTED);
            return FilterAction::Respond(reply);
        }
        FilterAction::Continue
    }

    fn wrap_body(&self, cx: &mut RequestCtx<'_>, _resp: &http::response::Parts, body: ResponseBody) -> ResponseBody {
        let Some(Throttle(rate)) = cx.state.remove::<Throttle>() else { return body };
        let guard = cx.state.remove::<ActiveFault>();
        ResponseBody::Boxed(Box::pin(Throttled::new(body, rate, guard)))
    }
}

// === impl Throttled ===

/// A response body released at most `rate` bytes per second, in 50 ms slices (Envoy's stream
/// rate limiter: a one-second bucket that starts with one slice of tokens).
struct Throttled {
    inner: ResponseBody,
    rate: f64,
    tokens: f64,
    last: Instant,
    pending: Bytes,
    trailers: Option<HeaderMap>,
    inner_done: bool,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    _active: Option<ActiveFault>,
}

impl Throttled {
    fn new(inner: ResponseBody, rate: u64, active: Option<ActiveFault>) -> Self {
        let rate = rate.max(1) as f64;
        Throttled {
            inner,
            rate,
            tokens: (rate * THROTTLE_INTERVAL.as_secs_f64()).floor(),
            last: Instant::now(),
            pending: Bytes::new(),
            trailers: None,
            inner_done: false,
            sleep: None,
            _active: active,
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate);
        self.last = now;
    }
}

impl Body for Throttled {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(s) = this.sleep.as_mut() {
                if s.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.sleep = None;
            }
            if this.pending.is_empty() {
                if let Some(t) = this.trailers.take() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                if this.inner_done {
                    return Poll::Ready(None);
                }
                match Pin::new(&mut this.inner).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => {
                        this.inner_done = true;
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(d) => this.pending = d,
                        Err(frame) => {
                            if let Ok(t) = frame.into_trailers() {
                                this.trailers = Some(t);
                            }
                            continue;
                        }
                    },
                }
                continue;
            }
            this.refill();
            let n = (this.tokens.floor() as usize).min(this.pending.len());
            if n > 0 {
                this.tokens -= n as f64;
                return Poll::Ready(Some(Ok(Frame::data(this.pending.split_to(n)))));
            }
            this.sleep = Some(Box::pin(tokio::time::sleep(THROTTLE_INTERVAL)));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.trailers.is_none() && (self.inner_done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let mut h = self.inner.size_hint();
        let extra = self.pending.len() as u64;
        h.set_lower(h.lower() + extra);
        if let Some(u) = h.upper() {
            h.set_upper(u + extra);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
    use envoy_types::pb::google::protobuf::Duration as PbDuration;

    fn hundred() -> Option<FractionalPercent> {
        Some(FractionalPercent { numerator: 100, denominator: 0 })
    }

    fn abort(status: u32) -> HttpFault {
        HttpFault {
            abort: Some(FaultAbort {
                percentage: hundred(),
                error_type: Some(fault_abort::ErrorType::HttpStatus(status)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn filter(p: HttpFault) -> FaultFilter {
        let cx = BuildCtx { http_stat_prefix: Some("in".into()), ..Default::default() };
        FaultFilter { name: NAME.into(), settings: FaultSettings::from_proto(&p).unwrap(), stats: FaultStats::new(&cx) }
    }

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri("/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn run(f: &FaultFilter, req: &mut Parts) -> FilterAction {
        let conn = super::super::ConnInfo::default();
        let a: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut cx = RequestCtx {
            remote: a,
            direct_remote: a,
            local: a,
            conn: &conn,
            route: None,
            stat_prefix: "in",
            state: http::Extensions::new(),
        };
        f.on_request(&mut cx, req)
    }

    #[test]
    fn config_validation() {
        assert!(FaultSettings::from_proto(&abort(199)).is_err());
        assert!(FaultSettings::from_proto(&abort(600)).is_err());
        assert!(FaultSettings::from_proto(&abort(503)).is_ok());
        let no_type = HttpFault { abort: Some(FaultAbort::default()), ..Default::default() };
        assert!(FaultSettings::from_proto(&no_type).is_err());
        let zero_delay = HttpFault {
            delay: Some(FaultDelay {
                percentage: hundred(),
                fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(PbDuration::default())),
            }),
            ..Default::default()
        };
        assert!(FaultSettings::from_proto(&zero_delay).is_err());
    }

    #[test]
    fn abort_is_envoys_local_reply() {
        let f = filter(abort(503));
        match run(&f, &mut parts(&[])) {
            FilterAction::Respond(r) => {
                assert_eq!(r.status, 503);
                assert_eq!(&r.body[..], b"fault filter abort");
            }
            _ => panic!("expected an abort"),
        }
        assert_eq!(f.stats.aborts_injected.value(), 1);
        // A gRPC request gets a gRPC status.
        match run(&f, &mut parts(&[("content-type", "application/grpc")])) {
            FilterAction::Respond(r) => {
                assert_eq!(r.status, 200);
                assert_eq!(r.headers["grpc-status"], "14");
                assert!(r.body.is_empty());
            }
            _ => panic!("expected an abort"),
        }
    }

    #[test]
    fn header_abort_and_percentage() {
        let mut p = abort(503);
        if let Some(a) = p.abort.as_mut() {
            a.error_type = Some(fault_abort::ErrorType::HeaderAbort(Default::default()));
        }
        let f = filter(p);
        assert!(matches!(run(&f, &mut parts(&[])), FilterAction::Continue), "no header, no abort");
        match run(&f, &mut parts(&[(ABORT_REQUEST, "429")])) {
            FilterAction::Respond(r) => assert_eq!(r.status, 429),
            _ => panic!("expected an abort"),
        }
        assert!(matches!(
            run(&f, &mut parts(&[(ABORT_REQUEST, "429"), (ABORT_PERCENTAGE, "0")])),
            FilterAction::Continue
        ));
        // Unset percentage means 0%.
        let mut p = abort(503);
        if let Some(a) = p.abort.as_mut() {
            a.percentage = None;
        }
        assert!(matches!(run(&filter(p), &mut parts(&[])), FilterAction::Continue));
    }

    #[test]
    fn max_active_faults_overflows() {
        let mut p = HttpFault {
            delay: Some(FaultDelay {
                percentage: hundred(),
                fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(PbDuration {
                    seconds: 1,
                    nanos: 0,
                })),
            }),
            ..Default::default()
        };
        p.max_active_faults = Some(envoy_types::pb::google::protobuf::UInt32Value { value: 0 });
        let f = filter(p);
        assert!(matches!(run(&f, &mut parts(&[])), FilterAction::Continue));
        assert_eq!(f.stats.faults_overflow.value(), 1);
    }

    #[tokio::test]
    async fn throttled_body_is_paced() {
        use http_body_util::BodyExt;
        let body = ResponseBody::full(Bytes::from(vec![b'x'; 3000]));
        // 20 KiB/s: 1024 bytes in the first slice, the rest over ~100 ms.
        let t = Throttled::new(body, 20 * 1024, None);
        let start = Instant::now();
        let out = t.collect().await.unwrap().to_bytes();
        assert_eq!(out.len(), 3000);
        assert!(start.elapsed() >= Duration::from_millis(80), "{:?}", start.elapsed());
    }
}
