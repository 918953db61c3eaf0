//! Subscription state of one client across its streams, and the requests it sends: initial
//! requests, ACK/NACK, subscription changes. Network-free so the protocol rules live in one place.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource as PbResource,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;
use prost::Message;
use tokio::sync::mpsc::UnboundedSender;

use super::{ApiType, CLUSTER, LISTENER, Names, Resource, Update, XdsHandler};

/// `google.rpc.Code.INVALID_ARGUMENT`, the code Envoy puts in a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;
/// SotW resources may come wrapped in `envoy.service.discovery.v3.Resource` (Envoy unwraps it).
const RESOURCE_WRAPPER: &str = "type.googleapis.com/envoy.service.discovery.v3.Resource";

/// The request channel of the current stream.
pub(crate) enum Tx {
    Sotw(UnboundedSender<DiscoveryRequest>),
    Delta(UnboundedSender<DeltaDiscoveryRequest>),
}

/// A response read from the current stream.
pub(crate) enum Response {
    Sotw(DiscoveryResponse),
    Delta(DeltaDiscoveryResponse),
}

/// One resource type.
#[derive(Debug, Default)]
struct Sub {
    type_url: String,
    wildcard: bool,
    /// A wildcard type that is not yet requested (LDS until the first CDS response).
    deferred: bool,
    /// Names of a non-wildcard type.
    names: Names,
    /// A request for this type went out on the current stream.
    active: bool,
    /// SotW: last accepted `version_info` (kept across streams, as Envoy does).
    version: String,
    /// SotW: last response nonce on the current stream.
    nonce: String,
    /// Delta: versions of the accepted resources, for `initial_resource_versions`.
    versions: BTreeMap<String, String>,
}

impl Sub {
    fn wanted(&self) -> bool {
        !self.deferred && (self.wildcard || !self.names.is_empty())
    }
}

pub(crate) struct State {
    api: ApiType,
    node: Node,
    /// In subscription order, which is the order of the initial requests on a new stream.
    subs: Vec<Sub>,
    tx: Option<Tx>,
    node_sent: bool,
}

impl State {
    pub(crate) fn new(api: ApiType, node: Node) -> Self {
        State { api, node, subs: Vec::new(), tx: None, node_sent: false }
    }

    /// A wildcard type; `deferred` ones start with [`State::start_deferred`].
    pub(crate) fn add_wildcard(&mut self, type_url: &str, deferred: bool) {
        self.subs.push(Sub { type_url: type_url.to_string(), wildcard: true, deferred, ..Default::default() });
    }

    /// A new stream: sends the request of every wanted type (node on the first only). Delta
    /// resubscribes with the accepted versions; SotW repeats the accepted `version_info`.
    pub(crate) fn start_stream(&mut self, tx: Tx) {
        self.tx = Some(tx);
        self.node_sent = false;
        for i in 0..self.subs.len() {
            let sub = &mut self.subs[i];
            sub.active = false;
            sub.nonce.clear();
            if sub.wanted() {
                self.send_initial(i);
            }
        }
    }

    pub(crate) fn end_stream(&mut self) {
        self.tx = None;
        for sub in &mut self.subs {
            sub.active = false;
            sub.nonce.clear();
        }
    }

    /// Starts the deferred wildcard types (Envoy requests LDS once CDS has been handled).
    pub(crate) fn start_deferred(&mut self) {
        for i in 0..self.subs.len() {
            if self.subs[i].deferred {
                self.subs[i].deferred = false;
                if self.tx.is_some() {
                    self.send_initial(i);
                }
            }
        }
    }

    /// The names of a non-wildcard type changed: subscribe/unsubscribe at once.
    pub(crate) fn set_interest(&mut self, type_url: &str, names: Names) {
        let i = match self.subs.iter().position(|s| s.type_url == type_url) {
            Some(i) => i,
            None => {
                self.subs.push(Sub { type_url: type_url.to_string(), ..Default::default() });
                self.subs.len() - 1
            }
        };
        let sub = &mut self.subs[i];
        if sub.wildcard {
            tracing::warn!(type_url, "set_interest on a wildcard type is ignored");
            return;
        }
        if sub.names == names {
            return;
        }
        let old = std::mem::replace(&mut sub.names, names);
        // Versions of unsubscribed resources must not be offered on reconnect.
        sub.versions.retain(|name, _| sub.names.contains(name));
        if self.tx.is_none() {
            return;
        }
        if !sub.active {
            if !sub.names.is_empty() {
                self.send_initial(i);
            }
            return;
        }
        let node = self.node_once();
        let sub = &self.subs[i];
        match self.tx.as_ref() {
            Some(Tx::Delta(tx)) => {
                let _ = tx.send(DeltaDiscoveryRequest {
                    node,
                    type_url: sub.type_url.clone(),
                    resource_names_subscribe: sub.names.difference(&old).cloned().collect(),
                    resource_names_unsubscribe: old.difference(&sub.names).cloned().collect(),
                    ..Default::default()
                });
            }
            // SotW: the full list with the last accepted version and the last nonce; an empty
            // list after a non-empty one unsubscribes (it is not a legacy wildcard then).
            Some(Tx::Sotw(tx)) => {
                let _ = tx.send(DiscoveryRequest {
                    node,
                    version_info: sub.version.clone(),
                    resource_names: sub.names.iter().cloned().collect(),
                    type_url: sub.type_url.clone(),
                    response_nonce: sub.nonce.clone(),
                    ..Default::default()
                });
            }
            None => {}
        }
    }

    fn node_once(&mut self) -> Option<Node> {
        if self.node_sent {
            return None;
        }
        self.node_sent = true;
        Some(self.node.clone())
    }

    fn send_initial(&mut self, i: usize) {
        let node = self.node_once();
        let sub = &mut self.subs[i];
        sub.active = true;
        // Wildcard: an empty list on the first request (legacy wildcard, as Envoy sends it).
        let names: Vec<String> = if sub.wildcard { Vec::new() } else { sub.names.iter().cloned().collect() };
        match self.tx.as_ref() {
            Some(Tx::Delta(tx)) => {
                let _ = tx.send(DeltaDiscoveryRequest {
                    node,
                    type_url: sub.type_url.clone(),
                    resource_names_subscribe: names,
                    initial_resource_versions: sub.versions.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    ..Default::default()
                });
            }
            Some(Tx::Sotw(tx)) => {
                let _ = tx.send(DiscoveryRequest {
                    node,
                    version_info: sub.version.clone(),
                    resource_names: names,
                    type_url: sub.type_url.clone(),
                    ..Default::default()
                });
            }
            None => {}
        }
    }

    /// Hands one response to the handler and ACKs or NACKs it.
    pub(crate) fn handle(&mut self, response: Response, handler: &dyn XdsHandler) {
        let type_url = match &response {
            Response::Sotw(r) => r.type_url.clone(),
            Response::Delta(r) => r.type_url.clone(),
        };
        let Some(i) = self.subs.iter().position(|s| s.type_url == type_url) else {
            // Envoy drops responses for types nobody subscribed to, without an ACK.
            tracing::warn!(type_url, "ignoring a response for a type with no subscription");
            return;
        };
        match response {
            Response::Sotw(r) => self.handle_sotw(i, r, handler),
            Response::Delta(r) => self.handle_delta(i, r, handler),
        }
    }

    fn handle_sotw(&mut self, i: usize, r: DiscoveryResponse, handler: &dyn XdsHandler) {
        let sub = &mut self.subs[i];
        sub.nonce = r.nonce.clone();
        let result = sotw_update(&r, sub.wildcard).and_then(|u| handler.on_update(u));
        let sub = &mut self.subs[i];
        let error_detail = match result {
            Ok(()) => {
                sub.version = r.version_info.clone();
                None
            }
            Err(message) => {
                tracing::warn!(type_url = %r.type_url, version = %r.version_info, %message, "rejecting update");
                Some(Status { code: INVALID_ARGUMENT, message, details: Vec::new() })
            }
        };
        let request = DiscoveryRequest {
            // NACK: the previously accepted version, with the rejected response's nonce.
            version_info: sub.version.clone(),
            resource_names: if sub.wildcard { Vec::new() } else { sub.names.iter().cloned().collect() },
            type_url: sub.type_url.clone(),
            response_nonce: r.nonce,
            error_detail,
            ..Default::default()
        };
        self.send_sotw(request);
    }

    fn handle_delta(&mut self, i: usize, r: DeltaDiscoveryResponse, handler: &dyn XdsHandler) {
        let result = delta_update(&r).and_then(|u| {
            let accepted: Vec<(String, String)> =
                u.resources.iter().map(|res| (res.name.clone(), res.version.clone())).collect();
            let removed = u.removed.clone();
            handler.on_update(u).map(|()| (accepted, removed))
        });
        let sub = &mut self.subs[i];
        let error_detail = match result {
            Ok((accepted, removed)) => {
                // Only accepted versions are offered back on reconnect.
                for name in removed {
                    sub.versions.remove(&name);
                }
                for (name, version) in accepted {
                    if sub.wildcard || sub.names.contains(&name) {
                        sub.versions.insert(name, version);
                    }
                }
                None
            }
            Err(message) => {
                tracing::warn!(type_url = %r.type_url, nonce = %r.nonce, %message, "rejecting update");
                Some(Status { code: INVALID_ARGUMENT, message, details: Vec::new() })
            }
        };
        let request = DeltaDiscoveryRequest {
            type_url: sub.type_url.clone(),
            response_nonce: r.nonce,
            error_detail,
            ..Default::default()
        };
        self.send_delta(request);
    }

    fn send_sotw(&mut self, mut request: DiscoveryRequest) {
        request.node = self.node_once();
        if let Some(Tx::Sotw(tx)) = &self.tx {
            let _ = tx.send(request);
        }
    }

    fn send_delta(&mut self, mut request: DeltaDiscoveryRequest) {
        request.node = self.node_once();
        if let Some(Tx::Delta(tx)) = &self.tx {
            let _ = tx.send(request);
        }
    }

    pub(crate) fn api(&self) -> ApiType {
        self.api
    }
}

/// Name-only view of a resource: field 1 is the name of every xDS resource type (Cluster,
/// Listener, RouteConfiguration, ClusterLoadAssignment's cluster_name, Secret, ...).
#[derive(Clone, PartialEq, prost::Message)]
struct Named {
    #[prost(string, tag = "1")]
    name: String,
}

fn sotw_update(r: &DiscoveryResponse, wildcard: bool) -> Result<Update, String> {
    let mut resources = Vec::with_capacity(r.resources.len());
    for any in &r.resources {
        let (name, resource) = if any.type_url == RESOURCE_WRAPPER {
            let wrapped = PbResource::decode(any.value.as_slice())
                .map_err(|e| format!("{}: cannot decode a wrapped resource: {e}", r.type_url))?;
            // A wrapper without a body is a TTL heartbeat: nothing to apply.
            let Some(inner) = wrapped.resource else { continue };
            let name = if wrapped.name.is_empty() { resource_name(&inner)? } else { wrapped.name };
            (name, inner)
        } else {
            (resource_name(any)?, any.clone())
        };
        check_type(&r.type_url, &resource)?;
        resources.push(Resource { name, version: r.version_info.clone(), resource });
    }
    Ok(Update {
        type_url: r.type_url.clone(),
        version: r.version_info.clone(),
        resources,
        removed: Vec::new(),
        full_state: wildcard,
    })
}

fn delta_update(r: &DeltaDiscoveryResponse) -> Result<Update, String> {
    let mut resources = Vec::with_capacity(r.resources.len());
    for res in &r.resources {
        // A resource without a body only refreshes its TTL.
        let Some(body) = &res.resource else { continue };
        check_type(&r.type_url, body)?;
        let name = if res.name.is_empty() { resource_name(body)? } else { res.name.clone() };
        resources.push(Resource { name, version: res.version.clone(), resource: body.clone() });
    }
    let mut removed = r.removed_resources.clone();
    for n in &r.removed_resource_names {
        if !removed.contains(&n.name) {
            removed.push(n.name.clone());
        }
    }
    Ok(Update {
        type_url: r.type_url.clone(),
        version: r.system_version_info.clone(),
        resources,
        removed,
        full_state: false,
    })
}

fn check_type(type_url: &str, any: &Any) -> Result<(), String> {
    if any.type_url != type_url {
        return Err(format!(
            "type URL {} embedded in an individual Any does not match the message-wide type URL {type_url}",
            any.type_url
        ));
    }
    Ok(())
}

fn resource_name(any: &Any) -> Result<String, String> {
    Named::decode(any.value.as_slice())
        .map(|n| n.name)
        .map_err(|e| format!("{}: cannot decode resource: {e}", any.type_url))
}

/// The types of an ADS stream: CDS first, LDS once the first CDS response is handled.
pub(crate) fn ads_state(api: ApiType, node: Node) -> State {
    let mut state = State::new(api, node);
    state.add_wildcard(CLUSTER, false);
    state.add_wildcard(LISTENER, true);
    state
}
