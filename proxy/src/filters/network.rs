//! Network filters: the terminal filter of a filter chain decides what a connection becomes;
//! non-terminal filters before it (`NetworkFilter`, e.g. RBAC) may close the connection first.

pub mod http_connection_manager;
pub mod istio_stats;
pub mod metadata_exchange;
pub mod rbac;
pub mod tcp_proxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3::{Filter as NetworkFilterProto, filter};
use envoy_types::pb::google::protobuf::Any;

use crate::config::{BuildCtx, ConfigError};
use crate::stream_info::ConnInfo;
use http_connection_manager::HttpConnectionManager;
use metadata_exchange::MetadataExchange;
use tcp_proxy::TcpProxy;

/// What a filter chain does with a connection.
pub enum Terminal {
    Http(Arc<HttpConnectionManager>),
    Tcp(Arc<TcpProxy>),
}

/// What a network filter entry of a chain becomes.
pub enum NetworkFilterConfig {
    /// The last filter: HTTP or TCP proxying.
    Terminal(Terminal),
    /// A filter that may close the connection before the terminal one sees it.
    Filter(Arc<dyn NetworkFilter>),
    /// Istio's TCP metadata exchange, run by the listener around the transport socket.
    MetadataExchange(Arc<MetadataExchange>),
    /// Istio's TCP metrics, reported by the chain's tcp_proxy.
    TcpStats(Arc<istio_stats::TcpStats>),
    /// Nothing to run (see the registry for why).
    Skip,
}

pub(crate) type Factory = fn(name: &str, any: &Any, cx: &BuildCtx) -> Result<NetworkFilterConfig, ConfigError>;

fn unpack<T: prost::Message + prost::Name + Default>(any: &Any) -> Result<T, ConfigError> {
    xds_client::any::unpack(any).map_err(|e| ConfigError::new("typed_config", e.to_string()))
}

/// The network filters remora implements, by the type of their `typed_config`.
pub(crate) const REGISTRY: &[(&str, Factory)] = &[
    (http_connection_manager::TYPE, |_, any, cx| {
        let h = HttpConnectionManager::from_proto(&unpack(any)?, cx).map_err(|e| e.within("typed_config"))?;
        Ok(NetworkFilterConfig::Terminal(Terminal::Http(Arc::new(h))))
    }),
    (tcp_proxy::TYPE, |_, any, cx| {
        let t = TcpProxy::from_proto(&unpack(any)?, cx).map_err(|e| e.within("typed_config"))?;
        Ok(NetworkFilterConfig::Terminal(Terminal::Tcp(Arc::new(t))))
    }),
    (istio_stats::TYPE, |_, any, cx| Ok(NetworkFilterConfig::TcpStats(istio_stats::factory(any, cx)?))),
    (rbac::TYPE, |name, any, cx| Ok(NetworkFilterConfig::Filter(rbac::factory(name, any, cx)?))),
    (metadata_exchange::TYPE, |_, any, cx| {
        Ok(NetworkFilterConfig::MetadataExchange(MetadataExchange::from_any(any, cx)?))
    }),
    // Istio's `istio_authn` stores the peer's and the local SPIFFE principal as filter state for
    // RBAC; remora's RBAC engine reads them straight from the connection's TLS facts.
    ("io.istio.network.authn.Config", |_, _, _| Ok(NetworkFilterConfig::Skip)),
];

/// Builds one entry of a filter chain's `filters`.
pub fn build(f: &NetworkFilterProto, cx: &BuildCtx) -> Result<NetworkFilterConfig, ConfigError> {
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        return Err(ConfigError::new(
            "typed_config",
            format!("Didn't find a registered implementation for '{}' with type URL: ''", f.name),
        ));
    };
    let type_name = xds_client::any::effective_type_name(any);
    match REGISTRY.iter().find(|(t, _)| *t == type_name) {
        Some((_, factory)) => factory(&f.name, any, cx),
        None if super::telemetry_only(&f.name, &type_name) => {
            tracing::debug!("skipping telemetry-only network filter {} ({type_name})", f.name);
            Ok(NetworkFilterConfig::Skip)
        }
        None => Err(ConfigError::new(
            "typed_config",
            format!("Didn't find a registered implementation for '{}' with type URL: '{type_name}'", f.name),
        )),
    }
}

/// What a non-terminal network filter sees of a connection.
pub struct NetworkCtx<'a> {
    /// The peer address (the TCP peer; PROXY protocol would change it).
    pub remote: SocketAddr,
    /// The local address after original_dst restoration.
    pub local: SocketAddr,
    /// SNI, ALPN and the TLS peer identity (filled after the handshake).
    pub conn: &'a ConnInfo,
}

/// A non-terminal network filter's verdict on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkAction {
    Continue,
    /// Close the connection without passing it on, after `delay` if set.
    Close {
        delay: Option<Duration>,
    },
}

/// A read filter placed before the terminal filter. The listener calls `on_data` once per
/// connection (after the TLS handshake for TLS connections): for HTTP when the first bytes have
/// arrived, the point where Envoy's read filters first run; for tcp_proxy at once (see
/// `admit_plaintext`). Filters run in chain order and the first `Close` ends the connection
/// before the terminal filter sees it.
pub trait NetworkFilter: Send + Sync {
    fn name(&self) -> &str;

    fn on_data(&self, cx: &NetworkCtx<'_>) -> NetworkAction;
}

/// Runs the non-terminal filters in order; the first `Close` wins.
pub fn run_filters(filters: &[std::sync::Arc<dyn NetworkFilter>], cx: &NetworkCtx<'_>) -> NetworkAction {
    for f in filters {
        if let NetworkAction::Close { delay } = f.on_data(cx) {
            tracing::debug!(target: "remora::network", "{} closed the connection from {}", f.name(), cx.remote);
            return NetworkAction::Close { delay };
        }
    }
    NetworkAction::Continue
}

/// For a plaintext connection: runs the filters and returns true when the terminal filter should
/// get the connection. A closed connection's pending bytes are read first, so the peer sees a FIN
/// (Envoy's close after reading), not a reset.
///
/// With `wait_for_data` (client-first terminals: HTTP) the filters run when the first bytes have
/// arrived (peeked, not consumed), as Envoy's read filters do, and a connection that closes (or
/// the listener drains) before sending anything is not judged and returns false. Without it
/// (tcp_proxy, where the upstream may speak first) they run at once: the verdict is the same, as
/// nothing they read depends on the data, and a server-first protocol is not held up waiting for
/// a client byte that never comes.
pub async fn admit_plaintext(
    filters: &[std::sync::Arc<dyn NetworkFilter>],
    stream: &tokio::net::TcpStream,
    cx: &NetworkCtx<'_>,
    wait_for_data: bool,
    mut drain: tokio::sync::watch::Receiver<bool>,
) -> bool {
    if filters.is_empty() {
        return true;
    }
    if wait_for_data && !first_bytes(stream, &mut drain).await {
        return false;
    }
    match run_filters(filters, cx) {
        NetworkAction::Continue => true,
        NetworkAction::Close { delay } => {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            let mut buf = [0u8; 4096];
            for _ in 0..64 {
                match stream.try_read(&mut buf) {
                    Ok(n) if n > 0 => continue,
                    _ => break,
                }
            }
            false
        }
    }
}

/// Waits until the connection has data to read (not consuming it): false on EOF, error or drain.
async fn first_bytes(stream: &tokio::net::TcpStream, drain: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    let mut b = [0u8; 1];
    loop {
        tokio::select! {
            r = stream.peek(&mut b) => return matches!(r, Ok(n) if n > 0),
            changed = drain.changed() => {
                if changed.is_err() || *drain.borrow() {
                    return false;
                }
            }
        }
    }
}

/// A cluster's upstream network `filters` (`crate::config::Extensions::upstream_filters`): Istio's
/// metadata exchange runs; anything else is refused by name rather than silently left out.
pub fn upstream_filters(
    filters: &[envoy_types::pb::envoy::config::cluster::v3::Filter],
    cx: &crate::config::BuildCtx,
) -> Result<Vec<crate::config::ExtensionConfig>, crate::config::ConfigError> {
    use crate::config::ConfigError;
    use metadata_exchange::{MetadataExchange, TYPE};
    let mut out: Vec<crate::config::ExtensionConfig> = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        let field = format!("filters[{i}]");
        let Some(any) = &f.typed_config else {
            return Err(ConfigError::new(field, format!("upstream filter '{}' has no typed_config", f.name)));
        };
        match xds_client::any::effective_type_name(any).as_str() {
            TYPE => out.push(MetadataExchange::from_any(any, cx).map_err(|e| e.within(&field))?),
            t => {
                return Err(ConfigError::new(
                    format!("{field}.typed_config"),
                    format!("Didn't find a registered upstream network filter for '{}' with type URL: '{t}'", f.name),
                ));
            }
        }
    }
    Ok(out)
}
