//! Listeners: translation of `envoy.config.listener.v3.Listener` and the accept loop each worker
//! runs on its own SO_REUSEPORT socket.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use envoy_types::pb::envoy::config::listener::v3::{
    Filter as NetworkFilterProto, FilterChain as FilterChainProto, Listener as ListenerProto, filter,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager as HcmProto;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::{BuildCtx, ConfigError};
use crate::filters::network::http_connection_manager::{self as hcm, HttpConnectionManager};
use crate::stats::{Counter, Gauge, GaugeGuard};
use crate::upstream::cluster::socket_address_of;
use crate::worker::WorkerCtx;

/// What a filter chain does with a connection.
pub enum Terminal {
    Http(Arc<HttpConnectionManager>),
}

pub struct NetworkChain {
    pub name: String,
    pub terminal: Terminal,
}

pub struct ListenerStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_destroy: Counter,
    pub no_filter_chain_match: Counter,
}

/// A compiled listener.
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub bind_to_port: bool,
    pub chains: Vec<NetworkChain>,
    pub default_chain: Option<NetworkChain>,
    pub stats: ListenerStats,
    pub proto: ListenerProto,
    /// Inbound listeners are the ones `/drain_listeners?inboundonly` drains.
    pub inbound: bool,
    /// Turned on to stop accepting (listener removed, replaced or the server shutting down).
    pub stop: watch::Sender<bool>,
    /// Turned on to make open connections finish gracefully.
    pub drain: watch::Sender<bool>,
}

/// Listener filters that need no work from us yet (they only add information we do not read).
const PASSIVE_LISTENER_FILTERS: &[&str] = &[
    "envoy.filters.listener.tls_inspector",
    "envoy.filters.listener.http_inspector",
    "envoy.listener.tls_inspector",
    "envoy.listener.http_inspector",
];

impl Listener {
    /// Stops accepting and asks open connections to finish.
    pub fn shut(&self) {
        self.stop.send_replace(true);
        self.drain.send_replace(true);
    }

    pub fn from_proto(p: &ListenerProto, cx: &BuildCtx) -> Result<Self, ConfigError> {
        let address = socket_address_of(p.address.as_ref(), "address")?;
        for (i, lf) in p.listener_filters.iter().enumerate() {
            if !PASSIVE_LISTENER_FILTERS.contains(&lf.name.as_str()) {
                return Err(ConfigError::new(
                    format!("listener_filters[{i}]"),
                    format!("listener filter {} is not supported yet", lf.name),
                ));
            }
        }
        let mut chains = Vec::new();
        for (i, fc) in p.filter_chains.iter().enumerate() {
            chains.push(build_chain(fc, cx).map_err(|e| e.within(&format!("filter_chains[{i}]")))?);
        }
        let default_chain = match &p.default_filter_chain {
            Some(fc) => Some(build_chain(fc, cx).map_err(|e| e.within("default_filter_chain"))?),
            None => None,
        };
        if chains.is_empty() && default_chain.is_none() {
            return Err(ConfigError::new("filter_chains", "no filter chains specified"));
        }
        let stat_addr = stat_address(address);
        let c = |n: &str| cx.stats.counter(&format!("listener.{stat_addr}.{n}"));
        Ok(Listener {
            name: p.name.clone(),
            address,
            bind_to_port: p.bind_to_port.map(|b| b.value).unwrap_or(true),
            chains,
            default_chain,
            stats: ListenerStats {
                downstream_cx_total: c("downstream_cx_total"),
                downstream_cx_active: cx.stats.gauge(&format!("listener.{stat_addr}.downstream_cx_active")),
                downstream_cx_destroy: c("downstream_cx_destroy"),
                no_filter_chain_match: c("no_filter_chain_match"),
            },
            proto: p.clone(),
            inbound: p.traffic_direction == envoy_types::pb::envoy::config::core::v3::TrafficDirection::Inbound as i32,
            stop: watch::channel(false).0,
            drain: watch::channel(false).0,
        })
    }

    /// The filter chain for a connection (filter_chain_match support comes with the sidecar work).
    fn select_chain(&self) -> Option<&NetworkChain> {
        self.chains.first().or(self.default_chain.as_ref())
    }

    /// Serves one accepted connection on this worker.
    pub async fn serve_connection(self: Arc<Self>, stream: TcpStream, remote: SocketAddr, worker: Rc<WorkerCtx>) {
        self.stats.downstream_cx_total.inc();
        let _active = GaugeGuard::new(&self.stats.downstream_cx_active);
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(self.address);
        let Some(chain) = self.select_chain() else {
            self.stats.no_filter_chain_match.inc();
            return;
        };
        match &chain.terminal {
            Terminal::Http(h) => {
                let conn = crate::filters::http::ConnInfo::default();
                hcm::serve(h.clone(), stream, worker, remote, local, self.drain.subscribe(), conn, "http").await
            }
        }
        self.stats.downstream_cx_destroy.inc();
    }
}

/// Envoy's listener stat name for an address: `0.0.0.0_8080`, `[__1]_8080`.
pub fn stat_address(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => format!("{}_{}", v.ip(), v.port()),
        SocketAddr::V6(v) => format!("[{}]_{}", v.ip().to_string().replace(':', "_"), v.port()),
    }
}

fn build_chain(fc: &FilterChainProto, cx: &BuildCtx) -> Result<NetworkChain, ConfigError> {
    if let Some(ts) = &fc.transport_socket
        && ts.name != "envoy.transport_sockets.raw_buffer"
    {
        return Err(ConfigError::new("transport_socket", format!("transport socket {} is not supported yet", ts.name)));
    }
    if fc.filters.is_empty() {
        return Err(ConfigError::new("filters", "a filter chain needs at least one network filter"));
    }
    let mut terminal = None;
    for (i, f) in fc.filters.iter().enumerate() {
        let field = format!("filters[{i}]");
        if terminal.is_some() {
            return Err(ConfigError::new(field, "a terminal filter must be the last filter in the chain"));
        }
        terminal = Some(build_network_filter(f, cx).map_err(|e| e.within(&field))?);
    }
    let Some(terminal) = terminal else {
        return Err(ConfigError::new("filters", "no terminal filter"));
    };
    Ok(NetworkChain { name: fc.name.clone(), terminal })
}

fn build_network_filter(f: &NetworkFilterProto, cx: &BuildCtx) -> Result<Terminal, ConfigError> {
    let any = match &f.config_type {
        Some(filter::ConfigType::TypedConfig(a)) => a,
        _ => {
            return Err(ConfigError::new(
                "typed_config",
                format!("Didn't find a registered implementation for '{}' with type URL: ''", f.name),
            ));
        }
    };
    let type_name = xds_client::any::effective_type_name(any);
    match type_name.as_str() {
        hcm::TYPE => {
            let p: HcmProto =
                xds_client::any::unpack(any).map_err(|e| ConfigError::new("typed_config", e.to_string()))?;
            let h = HttpConnectionManager::from_proto(&p, cx).map_err(|e| e.within("typed_config"))?;
            Ok(Terminal::Http(Arc::new(h)))
        }
        t => Err(ConfigError::new(
            "typed_config",
            format!("Didn't find a registered implementation for '{}' with type URL: '{t}'", f.name),
        )),
    }
}
