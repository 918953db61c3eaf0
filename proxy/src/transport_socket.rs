//! Transport sockets (`envoy.transport_sockets.*`): what a listener filter chain or a cluster runs
//! its bytes through. The registry below has the two remora implements, raw buffer (plaintext)
//! and TLS (`crate::tls`); any other is a config error naming it.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{DownstreamTlsContext, UpstreamTlsContext};

use crate::config::{BuildCtx, ConfigError};
use crate::tls::{ClientTls, ServerTls};

const RAW_BUFFER_NAME: &str = "envoy.transport_sockets.raw_buffer";
const RAW_BUFFER: &str = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";
const DOWNSTREAM_TLS: &str = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const UPSTREAM_TLS: &str = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// The typed config's type name; `None` for a raw buffer named without one.
fn type_of<'a>(
    ts: &'a TransportSocket,
    field: &str,
) -> Result<Option<(&'a envoy_types::pb::google::protobuf::Any, String)>, ConfigError> {
    match &ts.config_type {
        Some(ConfigType::TypedConfig(a)) => Ok(Some((a, xds_client::any::effective_type_name(a)))),
        None if ts.name == RAW_BUFFER_NAME || ts.name.is_empty() => Ok(None),
        None => Err(ConfigError::new(field, format!("transport socket {} needs a typed_config", ts.name))),
    }
}

/// A listener filter chain's transport socket: TLS (Some) or raw buffer (None).
pub fn downstream(ts: &TransportSocket, cx: &BuildCtx) -> Result<Option<Arc<ServerTls>>, ConfigError> {
    const FIELD: &str = "transport_socket";
    let Some((any, t)) = type_of(ts, FIELD)? else { return Ok(None) };
    match t.as_str() {
        RAW_BUFFER => Ok(None),
        DOWNSTREAM_TLS => {
            let p: DownstreamTlsContext =
                xds_client::any::unpack(any).map_err(|e| ConfigError::new(FIELD, e.to_string()))?;
            let tls = ServerTls::from_proto(&p, cx.secrets.clone(), "transport_socket.typed_config")?;
            tls.check_node(&cx.node, "transport_socket.typed_config")?;
            Ok(Some(Arc::new(tls)))
        }
        t => Err(ConfigError::new(FIELD, format!("transport socket {} ({t}) is not supported", ts.name))),
    }
}

/// A cluster's (or a `transport_socket_matches` entry's) transport socket: TLS (Some) or raw
/// buffer (None).
pub fn upstream(ts: &TransportSocket, cx: &BuildCtx, field: &str) -> Result<Option<Arc<ClientTls>>, ConfigError> {
    let Some((any, t)) = type_of(ts, field)? else { return Ok(None) };
    match t.as_str() {
        RAW_BUFFER => Ok(None),
        UPSTREAM_TLS => {
            let p: UpstreamTlsContext =
                xds_client::any::unpack(any).map_err(|e| ConfigError::new(field, e.to_string()))?;
            let typed = format!("{field}.typed_config");
            let tls = ClientTls::from_proto(&p, cx.secrets.clone(), &typed)?;
            tls.check_node(&cx.node, &typed)?;
            Ok(Some(Arc::new(tls)))
        }
        t => Err(ConfigError::new(field, format!("transport socket {} ({t}) is not supported", ts.name))),
    }
}
