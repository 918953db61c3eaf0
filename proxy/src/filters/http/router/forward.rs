//! Forwarding one routed request: cluster choice, header preparation, the attempt loop with
//! per-try and global timeouts and retries, and the response headers Envoy adds.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, Response, Version, header};
use http_body::Body as _;
use hyper::body::Incoming;

use super::Downstream;
use super::upstream_headers::{
    append_x_forwarded_host, build_request, cookie, format_grpc_timeout, rewrite_path, strip_hop_by_hop,
    take_header_ms, upgrade_type,
};
use crate::formatter::FormatContext;
use crate::http::body::{ReplayBody, RequestBody, ResponseBody};
use crate::http::headers as hn;
use crate::http::local_reply::LocalReply;
use crate::router::action::{ClusterSpecifier, HashPolicy, HostRewrite, RouteAction, WeightedCluster};
use crate::router::header_mutation::{apply_request_mutations, apply_response_mutations};
use crate::router::retry::{RetryPolicy, parse_retry_on};
use crate::router::route::Route;
use crate::router::{RouteTable, VirtualHost};
use crate::stream_info::ResetReason;
use crate::upstream::circuit_breaker::{Held, Priority, RequestGuard};
use crate::upstream::cluster::{Cluster, DiscoveryType, UpstreamProtocol};
use crate::upstream::host::{ActiveRequest, Host};
use crate::upstream::lb::{combine_hash, hash_key};
use crate::upstream::outlier::{Outcome, grpc_to_http};
use crate::upstream::pool::Lease;

/// The body size kept for retries (Envoy's default per-connection buffer limit).
const RETRY_BUFFER_LIMIT: usize = 1 << 20;

/// One routed request on its way upstream.
pub struct Forward<'a> {
    pub cx: &'a Downstream<'a>,
    pub table: &'a RouteTable,
    pub vhost: &'a VirtualHost,
    pub route: &'a Route,
    pub action: &'a RouteAction,
    pub matched_len: usize,
    pub authority: &'a str,
    pub downstream_remote: SocketAddr,
    pub format_cx: &'a FormatContext<'a>,
}

enum AttemptError {
    Reset(ResetReason),
    /// The client's request body broke (malformed chunked framing, trailers or chunk
    /// extensions over hyper's limits): the client's error, not the upstream's.
    DownstreamBody,
    PerTryTimeout,
    /// `per_try_idle_timeout`: no response headers that long after the request went out.
    PerTryIdleTimeout,
    GlobalTimeout,
}

impl Forward<'_> {
    /// Counts a response (upstream or a local reply caused by the upstream) in the cluster's
    /// `upstream_rq_<code>` stats, as Envoy's router does.
    fn charge(&self, cluster: &Cluster, status: u16, internal: bool) {
        let s = &cluster.stats;
        s.upstream_rq.record(status, true);
        s.upstream_rq_completed.inc();
        if internal {
            s.internal_upstream_rq.record(status, true);
            s.internal_upstream_rq_completed.inc();
        } else {
            s.external_upstream_rq.record(status, true);
            s.external_upstream_rq_completed.inc();
        }
    }

    /// An overflow local reply (a circuit breaker): 503 UO with `x-envoy-overloaded: true`
    /// unless Envoy's headers are suppressed.
    fn overflow_reply(
        &self,
        cluster: &Cluster,
        internal: bool,
        weighted: Option<&WeightedCluster>,
    ) -> Response<ResponseBody> {
        let mut r = LocalReply::overflow();
        if !self.cx.router.suppress_envoy_headers {
            r.headers.insert(http::HeaderName::from_static("x-envoy-overloaded"), HeaderValue::from_static("true"));
        }
        self.cluster_reply(cluster, internal, weighted, r)
    }

    /// A local reply about the upstream: counted against the cluster, then sent.
    fn cluster_reply(
        &self,
        cluster: &Cluster,
        internal: bool,
        weighted: Option<&WeightedCluster>,
        r: LocalReply,
    ) -> Response<ResponseBody> {
        self.charge(cluster, r.status.as_u16(), internal);
        self.reply(weighted, r)
    }

    fn reply(&self, weighted: Option<&WeightedCluster>, r: LocalReply) -> Response<ResponseBody> {
        let mut resp = r.into_response();
        apply_response_mutations(
            self.table,
            self.vhost,
            self.route,
            weighted.map(|w| &w.response_headers),
            resp.headers_mut(),
            self.format_cx,
        );
        resp
    }

    pub async fn run(self, parts: &mut Parts, body: Incoming) -> Response<ResponseBody> {
        let router = self.cx.router;
        let action = self.action;

        // Which cluster.
        let mut weighted: Option<&WeightedCluster> = None;
        let cluster_name: &str = match &action.cluster {
            ClusterSpecifier::Name(n) => n,
            // A missing header names no cluster: Envoy answers 503 (cluster not found).
            ClusterSpecifier::Header(h) => parts.headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or(""),
            ClusterSpecifier::Weighted { clusters, total } => {
                let w = RouteAction::pick_weighted(clusters, *total, fastrand::u64(..));
                weighted = Some(w);
                &w.name
            }
        };
        let snapshot = self.cx.worker.shared.clusters.load_full();
        let Some(cluster) = snapshot.cluster(cluster_name).cloned() else {
            router.stats.no_cluster.inc();
            return self.reply(weighted, LocalReply::cluster_not_found());
        };
        let stats = &cluster.stats;
        let internal = parts.headers.get(&hn::X_ENVOY_INTERNAL).is_some_and(|v| v == "true");
        // Response header values may read request headers (`%REQ(x)%`): keep a copy then.
        let request_headers = [
            weighted.map(|w| &w.response_headers),
            Some(&self.route.response_headers),
            Some(&self.vhost.response_headers),
            Some(&self.table.response_headers),
        ]
        .into_iter()
        .flatten()
        .any(|m| m.uses_request_headers())
        .then(|| parts.headers.clone());

        let prio = if action.high_priority { Priority::High } else { Priority::Default };
        // Only outlier detection reads it (a gRPC status counts as its HTTP equivalent).
        let grpc = cluster.outlier.is_some()
            && parts.headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));

        // Envoy's x-envoy-* request controls (consumed here, never forwarded).
        let suppress = router.suppress_envoy_headers;
        let is_grpc =
            parts.headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let super::timeout::Timeouts { mut timeout, stream_limit, grpc_timeout_upstream } =
            super::timeout::Timeouts::of(action, &parts.headers, is_grpc);
        if let Some(limit) = stream_limit {
            // The route's stream duration replaces the connection manager's; the connection
            // manager's stream timers enforce it (408/504 DT, or a reset once the response started).
            self.cx.stream.set_duration(limit);
        }
        let mut policy: Option<RetryPolicy> = action.retry_policy.as_deref().cloned();
        // The client's controls are taken off every request, and only honoured on internal ones
        // (`x-envoy-internal: true`), as Envoy does.
        let controls = hn::has_envoy_headers(&parts.headers);
        let (rq_timeout, per_try_timeout, retry_on, max_retries) = if controls {
            let rq_timeout = take_header_ms(&mut parts.headers, &hn::X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS);
            let per_try_timeout = take_header_ms(&mut parts.headers, &hn::X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS);
            let retry_on =
                parts.headers.remove(&hn::X_ENVOY_RETRY_ON).and_then(|v| v.to_str().ok().map(parse_retry_on));
            let max_retries = take_header_ms(&mut parts.headers, &hn::X_ENVOY_MAX_RETRIES);
            for h in
                ["x-envoy-retriable-status-codes", "x-envoy-retriable-header-names", "x-envoy-hedge-on-per-try-timeout"]
            {
                parts.headers.remove(h);
            }
            (rq_timeout, per_try_timeout, retry_on, max_retries)
        } else {
            (None, None, None, None)
        };
        if internal {
            if let Some(ms) = rq_timeout {
                timeout = (ms > 0).then(|| Duration::from_millis(ms));
            }
            if let Some(ms) = per_try_timeout {
                policy.get_or_insert_with(RetryPolicy::default).per_try_timeout =
                    (ms > 0).then(|| Duration::from_millis(ms));
            }
            if let Some(on) = retry_on {
                policy.get_or_insert_with(RetryPolicy::default).retry_on |= on;
            }
            if let (Some(n), Some(p)) = (max_retries, policy.as_mut()) {
                p.num_retries = n as u32;
            }
        }
        // retriable_request_headers: without a match the request is never retried (Envoy creates
        // no retry state for it).
        let policy = policy.filter(|p| {
            p.retry_on != 0
                && p.num_retries > 0
                && (p.retriable_request_headers.is_empty()
                    || p.request_is_retriable(&crate::matcher::RequestHeaders {
                        method: parts.method.as_str(),
                        path: parts.uri.path_and_query().map_or("/", |pq| pq.as_str()),
                        authority: self.authority,
                        scheme: self.cx.scheme,
                        headers: &parts.headers,
                    }))
        });
        let per_try = policy.as_ref().and_then(|p| p.per_try_timeout);
        let per_try_idle = policy.as_ref().and_then(|p| p.per_try_idle_timeout);

        // An HTTP/1.1 upgrade (WebSocket) the HCM allows keeps its Upgrade/Connection headers
        // and joins the two connections after a 101.
        let upgrade = upgrade_type(&parts.headers)
            .filter(|t| self.cx.upgrades.iter().any(|u| u == t))
            .and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());

        // Upstream request headers.
        let mut headers = std::mem::take(&mut parts.headers);
        let upgrade_headers =
            upgrade.as_ref().map(|_| (headers.get(header::UPGRADE).cloned(), headers.get(header::CONNECTION).cloned()));
        strip_hop_by_hop(&mut headers, true);
        if let Some((u, _)) = &upgrade_headers {
            if let Some(u) = u {
                headers.insert(header::UPGRADE, u.clone());
            }
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        // A clone of the request's own path shares its bytes: reused upstream when not rewritten.
        let original_pq = parts.uri.path_and_query().cloned();
        let path_and_query = original_pq.as_ref().map_or("/", |p| p.as_str());
        let new_path = rewrite_path(action, path_and_query, self.matched_len);
        if new_path.is_some()
            && !suppress
            && let Ok(v) = HeaderValue::from_str(path_and_query)
        {
            headers.insert(hn::X_ENVOY_ORIGINAL_PATH, v);
        }
        let reuse_pq = if new_path.is_none() { original_pq.as_ref() } else { None };
        let path_and_query: Cow<'_, str> = new_path.map_or(Cow::Borrowed(path_and_query), Cow::Owned);
        apply_request_mutations(
            self.table,
            self.vhost,
            self.route,
            weighted.map(|w| &w.request_headers),
            &mut headers,
            self.format_cx,
        );
        let expected = per_try.or(timeout);
        if let (Some(t), false) = (expected, suppress) {
            headers.insert(hn::X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, hn::number(t.as_millis() as u64));
        }
        // The upstream gRPC server learns the timeout in force (Envoy's setTimeoutHeaders and
        // the stream duration).
        if let Some(t) = expected.filter(|_| is_grpc && action.stream_duration.is_none())
            && action.max_grpc_timeout.is_some()
        {
            headers.insert(hn::GRPC_TIMEOUT, format_grpc_timeout(t));
        }
        if let Some(t) = grpc_timeout_upstream {
            headers.insert(hn::GRPC_TIMEOUT, format_grpc_timeout(t));
        }
        let mut authority: Cow<'_, str> = Cow::Borrowed(self.authority);
        let literal = weighted.and_then(|w| w.host_rewrite.as_ref());
        let host_rewrite_applied = match (literal, &action.host_rewrite) {
            (Some(h), _) | (None, HostRewrite::Literal(h)) => {
                authority = Cow::Owned(h.to_str().unwrap_or(self.authority).to_string());
                true
            }
            (None, HostRewrite::Header(name)) => match headers.get(name).and_then(|v| v.to_str().ok()) {
                Some(v) if !v.is_empty() => {
                    authority = Cow::Owned(v.to_string());
                    true
                }
                _ => false,
            },
            (None, HostRewrite::PathRegex(re, sub)) => {
                let p = path_and_query.split('?').next().unwrap_or("");
                authority = Cow::Owned(re.replace_all(p, sub.as_str()).into_owned());
                true
            }
            _ => false,
        };
        if host_rewrite_applied && action.append_x_forwarded_host {
            append_x_forwarded_host(&mut headers, self.authority);
        }
        if (host_rewrite_applied || matches!(action.host_rewrite, HostRewrite::Auto))
            && let Ok(v) = HeaderValue::from_str(self.authority)
        {
            headers.insert(hn::X_ENVOY_ORIGINAL_HOST, v);
        }
        let h2 = upgrade.is_none()
            && match cluster.protocol {
                UpstreamProtocol::Http1 => false,
                UpstreamProtocol::Http2 => true,
                UpstreamProtocol::Downstream => parts.version == Version::HTTP_2,
            };

        // Hash key for ring hash / maglev.
        let (hash, set_cookie) =
            if cluster.lb.uses_hash() { self.hash_key(&headers, &path_and_query) } else { (None, None) };

        // The body: replayable when retries may happen.
        let mut replay: Option<ReplayBody> = None;
        let mut first_body = if body.is_end_stream() {
            Some(RequestBody::Empty)
        } else if policy.is_some() {
            let r = ReplayBody::new(body, RETRY_BUFFER_LIMIT);
            let first = r.replay();
            replay = Some(r);
            first.map(RequestBody::Replay)
        } else {
            Some(RequestBody::Incoming(body))
        };
        let body_is_empty = matches!(first_body, Some(RequestBody::Empty));
        if !action.mirrors.is_empty() {
            first_body = super::mirror::start(
                self.cx,
                &action.mirrors,
                parts,
                &headers,
                &authority,
                &path_and_query,
                reuse_pq,
                first_body,
                timeout,
            );
        }

        let deadline = timeout.map(|t| Instant::now() + t);
        let mut attempted: Vec<u64> = Vec::new();
        // Priority levels tried, and those the retry priority leaves out.
        let mut tried_priorities: Vec<u32> = Vec::new();
        let mut excluded_priorities: Vec<u32> = Vec::new();
        let mut retries_done = 0u32;
        let mut attempt = 0u32;
        // The retry in flight (Envoy's retries resource), held until the retried attempt is
        // answered.
        let mut _retry_held: Option<Held> = None;
        loop {
            attempt += 1;
            let avoid: &[u64] = if policy.as_ref().is_some_and(|p| p.avoid_previous_hosts) { &attempted } else { &[] };
            let host = if cluster.discovery == DiscoveryType::OriginalDst {
                // ORIGINAL_DST: the host is the downstream connection's destination as the
                // original_dst listener filter restored it (Istio's `inbound|<port>||`); none
                // when nothing was restored, as in Envoy.
                self.cx.conn.original_dst.map(|a| cluster.original_dst_host(a))
            } else if let Some(freq) = policy.as_ref().and_then(|p| p.previous_priorities) {
                // Envoy's PreviousPrioritiesRetryPriority: every `update_frequency` attempts, the
                // levels tried so far are left out of the priority load.
                if attempt > 1 && (attempt - 1).is_multiple_of(freq) {
                    excluded_priorities = tried_priorities.clone();
                }
                cluster.choose_host_excluding(hash, avoid, &excluded_priorities)
            } else {
                cluster.choose_host(hash, avoid)
            };
            let Some(host) = host else {
                stats.upstream_cx_none_healthy.inc();
                return self.cluster_reply(&cluster, internal, weighted, LocalReply::no_healthy_upstream());
            };
            attempted.push(host.id);
            if policy.as_ref().is_some_and(|p| p.previous_priorities.is_some())
                && !tried_priorities.contains(&host.priority)
            {
                tried_priorities.push(host.priority);
            }
            let body = match first_body.take() {
                Some(b) => b,
                None if body_is_empty => RequestBody::Empty,
                None => match replay.as_ref().and_then(ReplayBody::replay) {
                    Some(b) => RequestBody::Replay(b),
                    None => {
                        return self
                            .reply(weighted, LocalReply::upstream_reset(ResetReason::LocalReset.envoy_text(), "UR"));
                    }
                },
            };
            // Without a retry policy there is exactly one attempt: move the headers, do not copy.
            let mut hdrs = if policy.is_some() { headers.clone() } else { std::mem::take(&mut headers) };
            if self.vhost.include_attempt_count_in_request {
                hdrs.insert(hn::X_ENVOY_ATTEMPT_COUNT, hn::number(u64::from(attempt)));
            }
            if matches!(action.host_rewrite, HostRewrite::Auto) && literal.is_none() && !host.hostname.is_empty() {
                if action.append_x_forwarded_host && attempt == 1 {
                    append_x_forwarded_host(&mut hdrs, self.authority);
                }
                authority = Cow::Owned(host.hostname.to_string());
            }
            let req = match build_request(parts, hdrs, &authority, &path_and_query, reuse_pq, h2, body) {
                Ok(r) => r,
                Err(_) => {
                    return LocalReply::new(http::StatusCode::BAD_REQUEST, "", "DPE", "invalid_request")
                        .into_response();
                }
            };
            let started = Instant::now();
            let outcome = self.attempt(&cluster, &host, h2, req, (per_try, per_try_idle), deadline, prio).await;
            // The retried attempt is answered: its retry is no longer in flight.
            _retry_held = None;
            let can_replay = body_is_empty || replay.as_ref().is_some_and(ReplayBody::can_replay);
            // Envoy's `shouldRetry`: the per-request limit, then the cluster's retry circuit
            // breaker (or budget); a granted retry is held until the retried attempt answers.
            let mut try_retry = |p: &RetryPolicy| -> bool {
                if retries_done >= p.num_retries {
                    stats.upstream_rq_retry_limit_exceeded.inc();
                    return false;
                }
                if !can_replay || deadline.is_some_and(|d| Instant::now() >= d) {
                    return false;
                }
                if !cluster.circuit_breakers.get(prio).can_retry() {
                    stats.upstream_rq_retry_overflow.inc();
                    return false;
                }
                _retry_held = Some(Held::retry(&cluster, prio));
                retries_done += 1;
                stats.upstream_rq_retry.inc();
                true
            };
            match outcome {
                Ok((resp, lease, active, rq)) => {
                    let status = resp.status().as_u16();
                    if let Some(d) = &cluster.outlier {
                        // A gRPC status in the headers counts as its HTTP equivalent (Envoy).
                        let code = if grpc {
                            resp.headers()
                                .get("grpc-status")
                                .and_then(|v| v.to_str().ok()?.parse::<u32>().ok())
                                .map_or(status, grpc_to_http)
                        } else {
                            status
                        };
                        d.put_http_code(&host, code);
                    }
                    if let Some(p) = policy.as_ref() {
                        if p.retry_on_response(status, resp.headers()) {
                            if try_retry(p) {
                                self.charge(&cluster, status, internal);
                                drop(resp);
                                self.backoff(p, retries_done, deadline).await;
                                continue;
                            }
                        } else if retries_done > 0 {
                            stats.upstream_rq_retry_success.inc();
                        }
                    }
                    if status == 101
                        && let Some(down) = upgrade
                    {
                        return self.join_upgrade(resp, down, (active, rq), &cluster, started);
                    }
                    self.charge(&cluster, status, internal);
                    let mut resp = resp;
                    if let Some(c) = set_cookie {
                        resp.headers_mut().append(header::SET_COOKIE, c);
                    }
                    if let Some(d) = per_try_idle {
                        // The per-try idle timeout goes on while the response body streams.
                        self.cx.stream.set_upstream_idle(d, stats.upstream_rq_per_try_idle_timeout.clone());
                    }
                    return self.respond(
                        resp,
                        lease,
                        (active, rq),
                        (&cluster, &host),
                        started,
                        attempt,
                        weighted,
                        suppress,
                        request_headers.as_ref(),
                    );
                }
                Err(AttemptError::GlobalTimeout) => {
                    if let Some(d) = &cluster.outlier {
                        d.put_result(&host, Outcome::LocalOriginTimeout, Some(504));
                    }
                    stats.upstream_rq_timeout.inc();
                    return self.cluster_reply(&cluster, internal, weighted, LocalReply::upstream_timeout());
                }
                Err(e @ (AttemptError::PerTryTimeout | AttemptError::PerTryIdleTimeout)) => {
                    // Envoy's onPerTryTimeout and onPerTryIdleTimeout: a retry if the policy
                    // allows, else 504; each with its own counter.
                    let idle = matches!(e, AttemptError::PerTryIdleTimeout);
                    if let Some(d) = &cluster.outlier {
                        d.put_result(&host, Outcome::LocalOriginTimeout, Some(504));
                    }
                    if idle {
                        stats.upstream_rq_per_try_idle_timeout.inc();
                    } else {
                        stats.upstream_rq_per_try_timeout.inc();
                    }
                    let mut exhausted = false;
                    if let Some(p) = policy.as_ref().filter(|p| p.retry_on_per_try_timeout()) {
                        if try_retry(p) {
                            self.backoff(p, retries_done, deadline).await;
                            continue;
                        }
                        exhausted = retries_done >= p.num_retries;
                    }
                    let reply = if idle {
                        // Envoy's retry state notes the exhausted retries (URX).
                        let flags = if exhausted { "URX,UT" } else { "UT" };
                        let body = "upstream request timeout";
                        LocalReply::new(http::StatusCode::GATEWAY_TIMEOUT, body, flags, "upstream_per_try_idle_timeout")
                    } else {
                        stats.upstream_rq_timeout.inc();
                        LocalReply::upstream_timeout()
                    };
                    return self.cluster_reply(&cluster, internal, weighted, reply);
                }
                Err(AttemptError::DownstreamBody) => {
                    // Envoy's codec refuses the request: 400, counted as a downstream protocol
                    // error by the connection manager; nothing is held against the upstream.
                    return LocalReply::new(
                        http::StatusCode::BAD_REQUEST,
                        "Bad Request",
                        "DPE",
                        crate::http::local_reply::DOWNSTREAM_BODY_ERROR,
                    )
                    .into_response();
                }
                Err(AttemptError::Reset(ResetReason::Overflow)) => {
                    // A circuit breaker: no outlier report, no retry (Envoy).
                    return self.overflow_reply(&cluster, internal, weighted);
                }
                Err(AttemptError::Reset(reason)) => {
                    if let Some(d) = &cluster.outlier {
                        d.put_result(&host, Outcome::LocalOriginConnectFailed, None);
                    }
                    if reason != ResetReason::ConnectFailure && reason != ResetReason::ConnectTimeout {
                        stats.upstream_rq_rx_reset.inc();
                    }
                    if let Some(p) = policy.as_ref().filter(|p| p.retry_on_reset(reason))
                        && try_retry(p)
                    {
                        self.backoff(p, retries_done, deadline).await;
                        continue;
                    }
                    return self.cluster_reply(
                        &cluster,
                        internal,
                        weighted,
                        LocalReply::upstream_reset(reason.envoy_text(), reason.response_flag()),
                    );
                }
            }
        }
    }

    async fn backoff(&self, p: &RetryPolicy, n: u32, deadline: Option<Instant>) {
        let mut d = p.backoff(n);
        if let Some(dl) = deadline {
            d = d.min(dl.saturating_duration_since(Instant::now()));
        }
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }

    /// One attempt: connection, request, response headers, within the per-try and global limits.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        cluster: &Arc<Cluster>,
        host: &Arc<Host>,
        h2: bool,
        req: Request<RequestBody>,
        (per_try, per_try_idle): (Option<Duration>, Option<Duration>),
        deadline: Option<Instant>,
        prio: Priority,
    ) -> Result<(Response<Incoming>, Option<Lease>, ActiveRequest, RequestGuard), AttemptError> {
        let active = ActiveRequest::new(host);
        let pools = self.cx.worker.pools.clone();
        let fut = async {
            let http10 = req.version() == http::Version::HTTP_10;
            let alpn = self.cx.alpn_override.and_then(|o| o.for_request(h2, http10));
            // The request guard counts it in `upstream_rq_total`/`_active` and `max_requests`
            // once it is on a connection, as Envoy does.
            let (lease, rq) = pools.acquire(cluster, host, h2, alpn, prio).await.map_err(AttemptError::Reset)?;
            if let Some(d) = &cluster.outlier {
                d.put_result(host, Outcome::LocalOriginConnectSuccess, None);
            }
            match lease {
                Lease::H1 { mut sender, served, key, max } => {
                    let resp = idle_limited(per_try_idle, sender.send_request(req)).await?;
                    Ok((resp, Some(Lease::H1 { sender, served: served + 1, key, max }), rq))
                }
                Lease::H2 { mut sender } => {
                    let resp = idle_limited(per_try_idle, sender.send_request(req)).await?;
                    Ok((resp, None, rq))
                }
            }
        };
        let now = Instant::now();
        let global_left = deadline.map(|d| d.saturating_duration_since(now));
        let (limit, is_per_try) = match (per_try, global_left) {
            (Some(p), Some(g)) if p < g => (Some(p), true),
            (Some(p), None) => (Some(p), true),
            (_, g) => (g, false),
        };
        let r = match limit {
            Some(l) => match tokio::time::timeout(l, fut).await {
                Ok(r) => r,
                Err(_) if is_per_try => Err(AttemptError::PerTryTimeout),
                Err(_) => Err(AttemptError::GlobalTimeout),
            },
            None => fut.await,
        };
        r.map(|(resp, lease, rq)| (resp, lease, active, rq))
    }

    #[allow(clippy::too_many_arguments)]
    fn respond(
        &self,
        resp: Response<Incoming>,
        lease: Option<Lease>,
        active: (ActiveRequest, RequestGuard),
        (cluster, host): (&Arc<Cluster>, &Arc<Host>),
        started: Instant,
        attempt: u32,
        weighted: Option<&WeightedCluster>,
        suppress: bool,
        request_headers: Option<&HeaderMap>,
    ) -> Response<ResponseBody> {
        let elapsed = started.elapsed();
        let stats = &cluster.stats;
        stats.upstream_rq_time.record(elapsed.as_secs_f64() * 1000.0);
        let (mut rparts, body) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers, false);
        if self.cx.log_requests {
            rparts.extensions.insert(crate::access_log::ResponseInfo {
                details: Some("via_upstream".into()),
                upstream_host: Some(host.address),
                upstream_cluster: Some(cluster.name.clone()),
                upstream_cluster_metadata: cluster.metadata.clone(),
                first_upstream_byte: Some(Instant::now()),
                ..Default::default()
            });
        }
        if !suppress {
            rparts.headers.insert(hn::X_ENVOY_UPSTREAM_SERVICE_TIME, hn::number(elapsed.as_millis() as u64));
        }
        if self.vhost.include_attempt_count_in_response {
            rparts.headers.insert(hn::X_ENVOY_ATTEMPT_COUNT, hn::number(u64::from(attempt)));
        }
        let fcx = FormatContext {
            upstream_remote: Some(host.address),
            upstream_cluster: Some(&cluster.name),
            request_headers: request_headers.or(self.format_cx.request_headers),
            ..*self.format_cx
        };
        apply_response_mutations(
            self.table,
            self.vhost,
            self.route,
            weighted.map(|w| &w.response_headers),
            &mut rparts.headers,
            &fcx,
        );
        let on_end: Option<crate::http::body::OnEnd> = match lease {
            Some(Lease::H1 { sender, served, key, max }) => {
                let pools = self.cx.worker.pools.clone();
                Some(Box::new(move || pools.release(key, sender, served, max)))
            }
            _ => None,
        };
        let guards = Box::new((active, self.cx.activity.start()));
        Response::from_parts(rparts, ResponseBody::upstream(body, on_end, guards, Some(self.cx.stream.clone())))
    }

    /// After an upstream `101 Switching Protocols`, splices the upgraded connections together.
    fn join_upgrade(
        &self,
        mut resp: Response<Incoming>,
        down: hyper::upgrade::OnUpgrade,
        active: (ActiveRequest, RequestGuard),
        cluster: &Arc<Cluster>,
        started: Instant,
    ) -> Response<ResponseBody> {
        cluster.stats.upstream_rq_time.record(started.elapsed().as_secs_f64() * 1000.0);
        let up = hyper::upgrade::on(&mut resp);
        tokio::task::spawn_local(async move {
            let _active = active;
            let (Ok(up), Ok(down)) = (up.await, down.await) else { return };
            let mut up = hyper_util::rt::TokioIo::new(up);
            let mut down = hyper_util::rt::TokioIo::new(down);
            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
        });
        let (parts, _) = resp.into_parts();
        Response::from_parts(parts, ResponseBody::empty())
    }

    /// The request's hash for ring hash / maglev, and a `set-cookie` to send when a cookie
    /// hash policy with a ttl found no cookie (Envoy generates one per connection).
    fn hash_key(&self, headers: &HeaderMap, path_and_query: &str) -> (Option<u64>, Option<HeaderValue>) {
        let mut acc = None;
        let mut set_cookie = None;
        for p in &self.action.hash_policy {
            let (v, terminal): (Option<u64>, bool) = match p {
                HashPolicy::Header { name, terminal } => {
                    let vals: Vec<&[u8]> = headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
                    let v = (!vals.is_empty()).then(|| hash_key(&vals.join(&b","[..])));
                    (v, *terminal)
                }
                HashPolicy::Cookie { name, ttl, path, terminal } => match (cookie(headers, name), ttl) {
                    (Some(c), _) => (Some(hash_key(c.as_bytes())), *terminal),
                    (None, Some(ttl)) => {
                        // Stable per connection: a hash of the peer and local addresses.
                        let seed = format!("{}{}", self.cx.remote, self.cx.local);
                        let value = format!("{:016x}", hash_key(seed.as_bytes()));
                        let mut c = format!("{name}=\"{value}\"; Max-Age={}", ttl.as_secs());
                        if !path.is_empty() {
                            c.push_str(&format!("; Path={path}"));
                        }
                        c.push_str("; HttpOnly");
                        set_cookie = HeaderValue::from_str(&c).ok();
                        (Some(hash_key(value.as_bytes())), *terminal)
                    }
                    (None, None) => (None, *terminal),
                },
                HashPolicy::SourceIp { terminal } => {
                    (Some(hash_key(self.downstream_remote.ip().to_string().as_bytes())), *terminal)
                }
                HashPolicy::QueryParameter { name, terminal } => {
                    let q = path_and_query.split_once('?').map(|x| x.1).unwrap_or("");
                    let v = q.split('&').find_map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        (k == name).then_some(v)
                    });
                    (v.map(|v| hash_key(v.as_bytes())), *terminal)
                }
            };
            if let Some(h) = v {
                acc = Some(combine_hash(acc, h));
                if terminal {
                    break;
                }
            }
        }
        (acc, set_cookie)
    }
}

/// Sends a request; Envoy's per-try idle timer starts once the attempt has a connection.
async fn idle_limited<T>(
    idle: Option<Duration>,
    sent: impl std::future::Future<Output = Result<T, hyper::Error>>,
) -> Result<T, AttemptError> {
    let r = match idle {
        Some(d) => tokio::time::timeout(d, sent).await.map_err(|_| AttemptError::PerTryIdleTimeout)?,
        None => sent.await,
    };
    r.map_err(|e| attempt_error(&e))
}

/// A failed attempt: the client's broken body (an error of the downstream body hyper was
/// sending), else the upstream's reset.
fn attempt_error(e: &hyper::Error) -> AttemptError {
    use std::error::Error as _;
    if e.is_user() && e.source().is_some_and(|s| s.is::<hyper::Error>()) {
        return AttemptError::DownstreamBody;
    }
    AttemptError::Reset(classify(e))
}

/// Maps a hyper client error to Envoy's reset reason.
fn classify(e: &hyper::Error) -> ResetReason {
    use std::error::Error as _;
    let mut src = e.source();
    while let Some(s) = src {
        if let Some(h2e) = s.downcast_ref::<h2::Error>() {
            if h2e.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return ResetReason::RemoteRefusedStream;
            }
            if h2e.is_remote() {
                return ResetReason::RemoteReset;
            }
        }
        src = s.source();
    }
    if e.is_parse() {
        return ResetReason::ProtocolError;
    }
    ResetReason::ConnectionTermination
}
