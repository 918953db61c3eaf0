//! State-of-the-World streams (StreamAggregatedResources, StreamSecrets): each response carries
//! every subscribed resource of its type, with a fresh version and nonce.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::ControlPlane as CpIdentifier;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::{AckRecord, Inner, Subscription, eds_names, push_rank};
use crate::ads::{CLUSTER, ENDPOINT};

type Tx = mpsc::Sender<Result<DiscoveryResponse, Status>>;

#[derive(Default)]
struct TypeState {
    sub: Subscription,
    /// The type's change counter when we last sent it; `None` before the first response.
    sent_at: Option<u64>,
}

struct Stream {
    id: u64,
    node_id: String,
    types: HashMap<String, TypeState>,
}

pub(super) async fn run(inner: Arc<Inner>, mut reqs: Streaming<DiscoveryRequest>, tx: Tx, only: Option<&'static str>) {
    let mut stop = inner.generation.subscribe();
    stop.borrow_and_update();
    let mut changes = inner.changes.subscribe();
    changes.borrow_and_update();
    let first = tokio::select! {
        r = reqs.message() => r,
        _ = stop.changed() => return,
    };
    let Ok(Some(first)) = first else { return };
    let node_id = first.node.as_ref().map(|n| n.id.clone()).unwrap_or_default();
    let id = inner.register_stream(&node_id, false);
    let mut s = Stream { id, node_id, types: HashMap::new() };
    let mut next = Some(first);
    loop {
        if let Some(req) = next.take() {
            if !s.on_request(&inner, req, only, &tx).await {
                break;
            }
            continue;
        }
        tokio::select! {
            r = reqs.message() => match r {
                Ok(Some(req)) => next = Some(req),
                Ok(None) | Err(_) => break,
            },
            c = changes.changed() => {
                if c.is_err() || !s.push_changed(&inner, &tx).await {
                    break;
                }
            }
            _ = stop.changed() => break,
            _ = tx.closed() => break,
        }
    }
    inner.unregister_stream(id);
}

impl Stream {
    /// Handles one request: records an ACK/NACK, updates the subscription and answers when the
    /// subscription changed. Returns false when the client is gone.
    async fn on_request(&mut self, inner: &Inner, req: DiscoveryRequest, only: Option<&str>, tx: &Tx) -> bool {
        let type_url = match (req.type_url.is_empty(), only) {
            (true, Some(t)) => t.to_string(),
            _ => req.type_url.clone(),
        };
        if !req.response_nonce.is_empty() {
            inner.record_ack(AckRecord {
                type_url: type_url.clone(),
                version_info: req.version_info.clone(),
                nonce: req.response_nonce.clone(),
                error_detail: req.error_detail.as_ref().map(|s| s.message.clone()),
                node_id: self.node_id.clone(),
                stream_id: self.id,
                delta: false,
            });
        }
        let first = !self.types.contains_key(&type_url);
        let ts = self.types.entry(type_url.clone()).or_default();
        let mut names: BTreeSet<String> = req.resource_names.into_iter().collect();
        // Legacy wildcard: no names on the first request (and as long as none are named);
        // `*` is the explicit form.
        let wildcard = names.remove("*") || (names.is_empty() && (first || ts.sub.wildcard));
        let sub = Subscription { wildcard, names };
        if !first && sub == ts.sub {
            return true;
        }
        ts.sub = sub;
        inner.record_subscription(self.id, &type_url, &ts.sub);
        self.respond(inner, &type_url, tx).await
    }

    /// Pushes every type whose resources changed since it was last sent, in istiod's order.
    async fn push_changed(&mut self, inner: &Inner, tx: &Tx) -> bool {
        let mut types: Vec<String> = self.types.keys().cloned().collect();
        types.sort_by(|a, b| push_rank(a).cmp(&push_rank(b)).then_with(|| a.cmp(b)));
        for t in types {
            // Checked right before sending: a cluster push may have marked EDS for resending.
            let due = {
                let st = inner.lock();
                let ts = self.types.get(&t);
                let changed = st.type_changed.get(&t).copied().unwrap_or(0);
                ts.is_some_and(|ts| ts.sent_at.is_none_or(|s| changed > s))
            };
            if due && !self.respond(inner, &t, tx).await {
                return false;
            }
        }
        true
    }

    async fn respond(&mut self, inner: &Inner, type_url: &str, tx: &Tx) -> bool {
        let Some(ts) = self.types.get_mut(type_url) else { return true };
        let (resp, changed_at) = {
            let mut st = inner.lock();
            let changed_at = st.type_changed.get(type_url).copied().unwrap_or(0);
            let resources = st
                .resources
                .get(type_url)
                .map(|m| m.iter().filter(|(n, _)| ts.sub.matches(n)).map(|(_, r)| r.resource.clone()).collect())
                .unwrap_or_default();
            let v = st.bump();
            let resp = DiscoveryResponse {
                version_info: v.to_string(),
                resources,
                type_url: type_url.to_string(),
                nonce: format!("nonce-{v}"),
                control_plane: Some(CpIdentifier { identifier: "remora-test-control-plane".into() }),
                ..Default::default()
            };
            (resp, changed_at)
        };
        ts.sent_at = Some(changed_at);
        tracing::debug!(type_url, version = %resp.version_info, n = resp.resources.len(), "SotW push");
        let resend_eds = type_url == CLUSTER
            && self
                .types
                .get(ENDPOINT)
                .is_some_and(|e| eds_names(resp.resources.iter()).iter().any(|n| e.sub.matches(n)));
        if tx.send(Ok(resp)).await.is_err() {
            return false;
        }
        if resend_eds {
            return Box::pin(self.respond(inner, ENDPOINT, tx)).await;
        }
        true
    }
}

/// FetchSecrets: a one-shot SotW answer for the named resources.
pub(super) fn fetch(inner: &Inner, req: &DiscoveryRequest, default_type: &str) -> DiscoveryResponse {
    let type_url = if req.type_url.is_empty() { default_type } else { &req.type_url };
    let mut st = inner.lock();
    let resources = st
        .resources
        .get(type_url)
        .map(|m| {
            m.iter()
                .filter(|(n, _)| req.resource_names.is_empty() || req.resource_names.contains(n))
                .map(|(_, r)| r.resource.clone())
                .collect()
        })
        .unwrap_or_default();
    let v = st.bump();
    DiscoveryResponse {
        version_info: v.to_string(),
        resources,
        type_url: type_url.to_string(),
        nonce: format!("nonce-{v}"),
        ..Default::default()
    }
}
