//! Request mirroring (`request_mirror_policies`, Istio's VirtualService `mirror`): a shadow copy
//! of the request goes to the mirror cluster, fire-and-forget, with `-shadow` appended to the
//! host as Envoy does. The body reaches the mirror as the first attempt streams it (a tee); the
//! caller never waits on the mirror, and the mirror's response is read and discarded.

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, Version};
use http_body_util::BodyExt as _;

use super::Downstream;
use super::upstream_headers::build_request;
use crate::http::body::{RequestBody, TeeBody};
use crate::router::action::{ClusterSpecifier, MirrorPolicy};
use crate::upstream::circuit_breaker::Priority;
use crate::upstream::cluster::{Cluster, UpstreamProtocol};
use crate::upstream::host::ActiveRequest;
use crate::upstream::pool::Lease;

/// Envoy's shadow host: `-shadow` before the port, if any (`a.b:8080` -> `a.b-shadow:8080`).
pub fn shadow_host(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((host, port))
            if (!host.contains(':') || (host.starts_with('[') && host.ends_with(']'))) && !port.is_empty() =>
        {
            format!("{host}-shadow:{port}")
        }
        _ => format!("{authority}-shadow"),
    }
}

/// Starts the sampled mirrors of a request and returns the body the first attempt should send
/// (teed when a mirror needs a copy of it).
#[allow(clippy::too_many_arguments)]
pub(super) fn start(
    ds: &Downstream<'_>,
    policies: &[MirrorPolicy],
    parts: &Parts,
    headers: &HeaderMap,
    authority: &str,
    path_and_query: &str,
    reuse_pq: Option<&PathAndQuery>,
    body: Option<RequestBody>,
    timeout: Option<Duration>,
) -> Option<RequestBody> {
    let clusters = ds.worker.shared.clusters.load();
    let mut targets: Vec<(Arc<Cluster>, bool)> = Vec::new();
    for p in policies {
        if !p.fraction.sample() {
            continue;
        }
        let name = match &p.cluster {
            ClusterSpecifier::Name(n) => n.as_ref(),
            // The request headers are in `headers` by now (taken from `parts`).
            ClusterSpecifier::Header(h) => headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or(""),
            ClusterSpecifier::Weighted { .. } => continue,
        };
        // A mirror cluster that does not exist is skipped, as in Envoy.
        if let Some(c) = clusters.cluster(name) {
            targets.push((c.clone(), p.shadow_suffix));
        }
    }
    if targets.is_empty() {
        return body;
    }
    let (body, copies) = match body {
        None | Some(RequestBody::Empty) => (body, None),
        Some(b) => {
            let (tee, copies) = TeeBody::new(b, targets.len());
            (Some(RequestBody::Tee(Box::new(tee))), Some(copies))
        }
    };
    let mut copies = copies.map(|c| c.into_iter());
    for (cluster, suffix) in targets {
        let mirror_body = match copies.as_mut().and_then(Iterator::next) {
            Some(c) => RequestBody::Mirror(c),
            None => RequestBody::Empty,
        };
        let h2 = match cluster.protocol {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Downstream => parts.version == Version::HTTP_2,
        };
        let host_header = if suffix { shadow_host(authority) } else { authority.to_string() };
        let Ok(req) = build_request(parts, headers.clone(), &host_header, path_and_query, reuse_pq, h2, mirror_body)
        else {
            continue;
        };
        let pools = ds.worker.pools.clone();
        tokio::task::spawn_local(async move {
            let send = async {
                let Some(host) = cluster.choose_host(None, &[]) else { return };
                let _active = ActiveRequest::new(&host);
                let Ok((lease, _rq)) = pools.acquire(&cluster, &host, h2, None, Priority::Default).await else {
                    return;
                };
                let (resp, release) = match lease {
                    Lease::H1 { mut sender, served, key, max } => match sender.send_request(req).await {
                        Ok(r) => (r, Some((sender, served + 1, key, max))),
                        Err(_) => return,
                    },
                    Lease::H2 { mut sender } => match sender.send_request(req).await {
                        Ok(r) => (r, None),
                        Err(_) => return,
                    },
                };
                let status = resp.status().as_u16();
                let mut body = resp.into_body();
                while let Some(frame) = body.frame().await {
                    if frame.is_err() {
                        return;
                    }
                }
                cluster.stats.upstream_rq.record(status, true);
                cluster.stats.upstream_rq_completed.inc();
                if let Some((sender, served, key, max)) = release {
                    pools.release(key, sender, served, max);
                }
            };
            match timeout {
                Some(t) => {
                    let _ = tokio::time::timeout(t, send).await;
                }
                None => send.await,
            }
        });
    }
    body
}

#[cfg(test)]
mod tests {
    use super::shadow_host;

    #[test]
    fn shadow_host_goes_before_the_port() {
        assert_eq!(shadow_host("a.example"), "a.example-shadow");
        assert_eq!(shadow_host("a.example:8080"), "a.example-shadow:8080");
        assert_eq!(shadow_host("[::1]:80"), "[::1]-shadow:80");
    }
}
