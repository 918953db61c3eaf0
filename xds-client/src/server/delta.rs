//! Delta (incremental) streams (DeltaAggregatedResources, DeltaSecrets): the server tracks which
//! version of each resource the client holds and sends only what differs, plus
//! `removed_resources` for what it holds but the server no longer serves.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::ControlPlane as CpIdentifier;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::{AckRecord, Inner, Subscription, eds_names, push_rank};
use crate::ads::{CLUSTER, ENDPOINT};

type Tx = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

#[derive(Default)]
struct TypeState {
    sub: Subscription,
    /// name -> version the client holds (seeded from `initial_resource_versions`).
    known: HashMap<String, String>,
    /// nonce -> system version of that response, so ACKs can be recorded with a version.
    nonces: HashMap<String, String>,
}

struct Stream {
    id: u64,
    node_id: String,
    types: HashMap<String, TypeState>,
}

pub(super) async fn run(
    inner: Arc<Inner>,
    mut reqs: Streaming<DeltaDiscoveryRequest>,
    tx: Tx,
    only: Option<&'static str>,
) {
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
    let id = inner.register_stream(&node_id, true);
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
                if c.is_err() || !s.push_all(&inner, &tx).await {
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
    async fn on_request(&mut self, inner: &Inner, req: DeltaDiscoveryRequest, only: Option<&str>, tx: &Tx) -> bool {
        let type_url = match (req.type_url.is_empty(), only) {
            (true, Some(t)) => t.to_string(),
            _ => req.type_url.clone(),
        };
        let first = !self.types.contains_key(&type_url);
        let ts = self.types.entry(type_url.clone()).or_default();
        if !req.response_nonce.is_empty() {
            inner.record_ack(AckRecord {
                type_url: type_url.clone(),
                version_info: ts.nonces.get(&req.response_nonce).cloned().unwrap_or_default(),
                nonce: req.response_nonce.clone(),
                error_detail: req.error_detail.as_ref().map(|s| s.message.clone()),
                node_id: self.node_id.clone(),
                stream_id: self.id,
                delta: true,
            });
        }
        let before = ts.sub.clone();
        if first {
            // What the client kept from an earlier stream: not resent unless it changed.
            ts.known = req.initial_resource_versions.clone();
            // Legacy wildcard: a first request naming nothing.
            ts.sub.wildcard = req.resource_names_subscribe.is_empty();
        }
        for n in req.resource_names_subscribe {
            if n == "*" {
                ts.sub.wildcard = true;
            } else {
                ts.sub.names.insert(n);
            }
        }
        for n in req.resource_names_unsubscribe {
            if n == "*" {
                ts.sub.wildcard = false;
            } else {
                ts.sub.names.remove(&n);
                // The client dropped it: resubscribing later must send it again.
                ts.known.remove(&n);
            }
        }
        if !first && before == ts.sub {
            return true;
        }
        inner.record_subscription(self.id, &type_url, &ts.sub);
        // A wildcard type always gets a first answer, even an empty one, so the client's
        // initialization (CDS/LDS) completes.
        let force = first && ts.sub.wildcard;
        self.respond(inner, &type_url, force, tx).await
    }

    async fn push_all(&mut self, inner: &Inner, tx: &Tx) -> bool {
        let mut types: Vec<String> = self.types.keys().cloned().collect();
        types.sort_by(|a, b| push_rank(a).cmp(&push_rank(b)).then_with(|| a.cmp(b)));
        for t in types {
            if !self.respond(inner, &t, false, tx).await {
                return false;
            }
        }
        true
    }

    /// Sends what the client lacks or holds in another version, and what it holds but should
    /// not; nothing when it is up to date (unless `force`).
    async fn respond(&mut self, inner: &Inner, type_url: &str, force: bool, tx: &Tx) -> bool {
        let Some(ts) = self.types.get_mut(type_url) else { return true };
        let resp = {
            let mut st = inner.lock();
            let empty = Default::default();
            let served = st.resources.get(type_url).unwrap_or(&empty);
            let mut resources = Vec::new();
            for (name, r) in served.iter().filter(|(n, _)| ts.sub.matches(n)) {
                if ts.known.get(name) != Some(&r.version) {
                    resources.push(Resource {
                        name: name.clone(),
                        version: r.version.clone(),
                        resource: Some(r.resource.clone()),
                        ..Default::default()
                    });
                }
            }
            let mut removed_resources = Vec::new();
            let mut forget = Vec::new();
            for name in ts.known.keys() {
                if !ts.sub.matches(name) {
                    forget.push(name.clone());
                } else if !served.contains_key(name) {
                    removed_resources.push(name.clone());
                }
            }
            if resources.is_empty() && removed_resources.is_empty() && !force {
                for n in forget {
                    ts.known.remove(&n);
                }
                return true;
            }
            for n in forget.iter().chain(&removed_resources) {
                ts.known.remove(n);
            }
            for r in &resources {
                ts.known.insert(r.name.clone(), r.version.clone());
            }
            removed_resources.sort();
            let v = st.bump();
            let nonce = format!("nonce-{v}");
            ts.nonces.insert(nonce.clone(), v.to_string());
            DeltaDiscoveryResponse {
                system_version_info: v.to_string(),
                resources,
                type_url: type_url.to_string(),
                removed_resources,
                nonce,
                control_plane: Some(CpIdentifier { identifier: "remora-test-control-plane".into() }),
                ..Default::default()
            }
        };
        tracing::debug!(type_url, n = resp.resources.len(), removed = resp.removed_resources.len(), "Delta push");
        let mut resend_eds = false;
        if type_url == CLUSTER
            && let Some(e) = self.types.get_mut(ENDPOINT)
        {
            for n in eds_names(resp.resources.iter().filter_map(|r| r.resource.as_ref())) {
                resend_eds |= e.known.remove(&n).is_some();
            }
        }
        if tx.send(Ok(resp)).await.is_err() {
            return false;
        }
        if resend_eds {
            return Box::pin(self.respond(inner, ENDPOINT, false, tx)).await;
        }
        true
    }
}
