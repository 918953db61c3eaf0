//! Istio's HTTP peer metadata filter (`istio.metadata_exchange` with
//! `io.istio.http.peer_metadata.Config`, Istio 1.20+), its `istio_headers` method:
//! - discovery (downstream: on the request; upstream: on the response) reads the peer's
//!   `x-envoy-peer-metadata` (base64 protobuf `Struct`) and `x-envoy-peer-metadata-id`, keeps
//!   them for telemetry, and removes them, so the app never sees them;
//! - upstream propagation adds this node's headers to every request sent upstream;
//! - downstream propagation adds them to the response only when the request carried them (a
//!   mesh peer asked), as Istio's filter does.
//!
//! `workload_discovery` and `baggage` have nothing to read without Istio's workload xDS and are
//! left out; `upstream_filter_state` likewise.

use std::sync::Arc;

use base64::Engine;
use envoy_types::pb::google::protobuf::{Any, Struct, value};
use http::{HeaderName, HeaderValue};
use prost::Message;

use super::{FilterAction, HttpFilter, Parts, RequestCtx};
use crate::config::{BuildCtx, ConfigError};

pub const TYPE: &str = "io.istio.http.peer_metadata.Config";
pub const METADATA: HeaderName = HeaderName::from_static("x-envoy-peer-metadata");
pub const METADATA_ID: HeaderName = HeaderName::from_static("x-envoy-peer-metadata-id");

/// The downstream peer as its headers described it (kept in the request's state).
#[derive(Debug, Clone, Default)]
pub struct DownstreamPeer {
    pub id: Option<String>,
    pub metadata: Option<Struct>,
}

/// The upstream peer from the response headers.
#[derive(Debug, Clone, Default)]
pub struct UpstreamPeer {
    pub id: Option<String>,
    pub metadata: Option<Struct>,
}

pub struct PeerMetadata {
    name: String,
    downstream_discovery: bool,
    downstream_propagation: bool,
    upstream_discovery: bool,
    upstream_propagation: bool,
    id: HeaderValue,
    value: HeaderValue,
}

/// Whether a list of methods (`[{istio_headers: {}}, {workload_discovery: {}}]`) names
/// `istio_headers`.
fn has_istio_headers(config: &Struct, field: &str) -> bool {
    let Some(value::Kind::ListValue(l)) = config.fields.get(field).and_then(|v| v.kind.as_ref()) else {
        return false;
    };
    l.values
        .iter()
        .any(|m| matches!(&m.kind, Some(value::Kind::StructValue(s)) if s.fields.contains_key("istio_headers")))
}

pub fn factory(name: &str, any: &Any, cx: &BuildCtx) -> Result<Arc<dyn HttpFilter>, ConfigError> {
    // istiod sends this config inside a TypedStruct (its JSON as a Struct).
    let config = if xds_client::any::type_name(&any.type_url) == TYPE {
        return Err(ConfigError::new(
            "typed_config",
            format!("{TYPE} is only understood inside a udpa/xds TypedStruct (as istiod sends it)"),
        ));
    } else {
        xds_client::any::TypedStruct::decode(any.value.as_slice())
            .map_err(|e| ConfigError::new("typed_config", format!("invalid TypedStruct: {e}")))?
            .value
            .unwrap_or_default()
    };
    // Fields that only shape what telemetry sees: accepted loudly.
    if let Some(g) = &cx.guard {
        let set = |k: &str| match config.fields.get(k).and_then(|v| v.kind.as_ref()) {
            Some(value::Kind::BoolValue(b)) => *b,
            Some(value::Kind::ListValue(l)) => !l.values.is_empty(),
            Some(value::Kind::StructValue(s)) => !s.fields.is_empty(),
            Some(value::Kind::StringValue(s)) => !s.is_empty(),
            Some(value::Kind::NumberValue(n)) => *n != 0.0,
            _ => false,
        };
        if set("shared_with_upstream") {
            g.note_telemetry(
                &format!("{TYPE}.shared_with_upstream"),
                "sharing the peer's metadata with upstream filters (for their telemetry) is not implemented",
                &cx.stats,
            );
        }
        if set("additional_labels") {
            g.note_telemetry(
                &format!("{TYPE}.additional_labels"),
                "extra labels in the propagated peer metadata (metric labels only) are not added",
                &cx.stats,
            );
        }
    }
    let metadata = crate::filters::network::metadata_exchange::exchanged_metadata(&cx.node);
    let value = base64::engine::general_purpose::STANDARD.encode(metadata.encode_to_vec());
    let header = |v: &str| HeaderValue::from_str(v).map_err(|_| ConfigError::new("node", "not a valid header value"));
    Ok(Arc::new(PeerMetadata {
        name: name.to_string(),
        downstream_discovery: has_istio_headers(&config, "downstream_discovery"),
        downstream_propagation: has_istio_headers(&config, "downstream_propagation"),
        upstream_discovery: has_istio_headers(&config, "upstream_discovery"),
        upstream_propagation: has_istio_headers(&config, "upstream_propagation"),
        id: header(&cx.node.id)?,
        value: header(&value)?,
    }))
}

fn decode_metadata(v: &HeaderValue) -> Option<Struct> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(v.as_bytes()).ok()?;
    Struct::decode(bytes.as_slice()).ok()
}

fn id_of(v: Option<&HeaderValue>) -> Option<String> {
    v.and_then(|v| v.to_str().ok()).map(str::to_string)
}

impl HttpFilter for PeerMetadata {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(&self, cx: &mut RequestCtx<'_>, req: &mut Parts) -> FilterAction {
        if self.downstream_discovery {
            let peer = DownstreamPeer {
                id: id_of(req.headers.get(&METADATA_ID)),
                metadata: req.headers.get(&METADATA).map(|v| decode_metadata(v).unwrap_or_default()),
            };
            req.headers.remove(&METADATA_ID);
            req.headers.remove(&METADATA);
            cx.state.insert(peer);
        }
        if self.upstream_propagation {
            req.headers.insert(METADATA_ID, self.id.clone());
            req.headers.insert(METADATA, self.value.clone());
        }
        FilterAction::Continue
    }

    fn on_response(&self, cx: &mut RequestCtx<'_>, resp: &mut http::response::Parts) {
        if self.upstream_discovery {
            let peer = UpstreamPeer {
                id: id_of(resp.headers.get(&METADATA_ID)),
                metadata: resp.headers.get(&METADATA).map(|v| decode_metadata(v).unwrap_or_default()),
            };
            resp.headers.remove(&METADATA_ID);
            resp.headers.remove(&METADATA);
            cx.state.insert(peer);
        }
        if self.downstream_propagation
            && let Some(peer) = cx.state.get::<DownstreamPeer>()
        {
            // Only a peer that sent its own headers gets ours.
            if peer.id.is_some() {
                resp.headers.insert(METADATA_ID, self.id.clone());
            }
            if peer.metadata.is_some() {
                resp.headers.insert(METADATA, self.value.clone());
            }
        }
    }
}
