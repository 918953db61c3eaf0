//! Listeners: translation of `envoy.config.listener.v3.Listener`, and what happens to an accepted
//! connection: listener filters (original_dst, tls_inspector, http_inspector), the
//! `use_original_dst` hand-off to the listener owning the original destination, filter chain
//! selection, then the chain's terminal network filter.

pub mod filter_chain;
pub mod socket;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3::{FilterChain as FilterChainProto, Listener as ListenerProto};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::{BuildCtx, ConfigError, duration};
use crate::filters::listener::{ListenerFilters, Which};
use crate::filters::network::metadata_exchange::{self, MetadataExchange};
use crate::filters::network::{NetworkAction, NetworkCtx, NetworkFilter, NetworkFilterConfig, Terminal};
use crate::runtime::WorkerCtx;
use crate::stats::{Counter, Gauge, GaugeGuard};
use crate::stream_info::ConnInfo;
use crate::upstream::cluster::socket_address_of;
use filter_chain::{ChainMatch, ConnFacts};

pub struct NetworkChain {
    pub name: String,
    pub matcher: ChainMatch,
    /// The downstream TLS transport socket (None: plaintext).
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// Non-terminal filters (RBAC), run in order before the terminal filter (on the first bytes
    /// for plaintext HTTP, at accept for tcp_proxy, after the handshake for TLS).
    pub filters: Vec<Arc<dyn NetworkFilter>>,
    /// Istio's TCP metadata exchange, run after the handshake when its ALPN was negotiated.
    pub metadata_exchange: Option<Arc<MetadataExchange>>,
    /// Istio's network `istio.stats` filters: tcp_proxy reports its connections to them.
    pub tcp_stats: Vec<Arc<crate::filters::network::istio_stats::TcpStats>>,
    pub terminal: Terminal,
}

pub struct ListenerStats {
    pub downstream_cx_total: Counter,
    pub downstream_global_cx_overflow: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_destroy: Counter,
    pub no_filter_chain_match: Counter,
    pub downstream_listener_filter_error: Counter,
    pub downstream_pre_cx_timeout: Counter,
    pub ssl_handshake: Counter,
    pub ssl_connection_error: Counter,
    pub ssl_no_certificate: Counter,
    pub ssl_fail_verify_error: Counter,
    pub ssl_fail_verify_san: Counter,
}

/// The active listeners, published whole by the config manager; a worker reads it once per
/// connection the `use_original_dst` hand-off passes on.
pub type ActiveListeners = arc_swap::ArcSwap<Vec<Arc<Listener>>>;

/// A compiled listener.
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    /// `additional_addresses` (Istio's dual stack: `[::]:<port>` beside `0.0.0.0:<port>`): bound
    /// too, same filter chains and stats.
    pub additional_addresses: Vec<SocketAddr>,
    pub bind_to_port: bool,
    pub use_original_dst: bool,
    /// Not limited by (nor counted against) the global downstream connection limit.
    pub ignore_global_conn_limit: bool,
    pub listener_filters: ListenerFilters,
    pub listener_filters_timeout: Option<Duration>,
    pub continue_on_listener_filters_timeout: bool,
    pub chains: Vec<NetworkChain>,
    pub default_chain: Option<NetworkChain>,
    matchers: Vec<ChainMatch>,
    pub stats: ListenerStats,
    pub proto: ListenerProto,
    /// Inbound listeners are the ones `/drain_listeners?inboundonly` drains.
    pub inbound: bool,
    /// Turned on to stop accepting (listener removed, replaced or the server shutting down).
    pub stop: watch::Sender<bool>,
    /// Turned on to make open connections finish gracefully.
    pub drain: watch::Sender<bool>,
    /// The listener's `access_log` (connections without a matching filter chain, flag `NR`).
    pub access_logs: Arc<[crate::access_log::AccessLog]>,
}

impl Listener {
    /// The filter chain for a connection (the default chain when none matches), recording in
    /// `trace` why the other chains dropped out (route explain).
    pub fn chain_for(
        &self,
        facts: &filter_chain::ConnFacts<'_>,
        trace: Option<&mut Vec<filter_chain::Dropped>>,
    ) -> Option<&NetworkChain> {
        match filter_chain::select_traced(&self.matchers, facts, trace) {
            Some(i) => self.chains.get(i),
            None => self.default_chain.as_ref(),
        }
    }

    pub fn from_proto(p: &ListenerProto, cx: &BuildCtx) -> Result<Self, ConfigError> {
        let address = socket_address_of(p.address.as_ref(), "address")?;
        let additional_addresses = p
            .additional_addresses
            .iter()
            .enumerate()
            .map(|(i, a)| socket_address_of(a.address.as_ref(), &format!("additional_addresses[{i}].address")))
            .collect::<Result<Vec<_>, _>>()?;
        let lf = ListenerFilters::from_proto(&p.listener_filters)?;
        let inbound = p.traffic_direction == envoy_types::pb::envoy::config::core::v3::TrafficDirection::Inbound as i32;
        let outbound =
            p.traffic_direction == envoy_types::pb::envoy::config::core::v3::TrafficDirection::Outbound as i32;
        let cx = &BuildCtx { listener_stat_name: Some(stat_address(address)), inbound, outbound, ..cx.clone() };
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
        // Chains with identical matches are ambiguous (Envoy rejects them).
        for i in 0..p.filter_chains.len() {
            for j in 0..i {
                if p.filter_chains[i].filter_chain_match == p.filter_chains[j].filter_chain_match {
                    return Err(ConfigError::new(
                        format!("filter_chains[{i}]"),
                        format!(
                            "error adding listener '{}': filter chain '{}' has the same matching rules defined as '{}'",
                            p.name, p.filter_chains[i].name, p.filter_chains[j].name
                        ),
                    ));
                }
            }
        }
        // Chains that match on SNI/ALPN/transport need the TLS (or HTTP) inspector to see them;
        // without it they can only match the empty values, as in Envoy.
        let matchers = chains.iter().map(|c| c.matcher.clone()).collect();
        let stat_addr = stat_address(address);
        let c = |n: &str| cx.stats.counter(&format!("listener.{stat_addr}.{n}"));
        Ok(Listener {
            name: p.name.clone(),
            address,
            // Istio <= 1.9 says it with the deprecated `deprecated_v1.bind_to_port`.
            #[allow(deprecated)]
            additional_addresses,
            bind_to_port: p
                .bind_to_port
                .or_else(|| p.deprecated_v1.as_ref().and_then(|d| d.bind_to_port))
                .map(|b| b.value)
                .unwrap_or(true),
            use_original_dst: p.use_original_dst.map(|b| b.value).unwrap_or(false),
            ignore_global_conn_limit: p.ignore_global_conn_limit,
            listener_filters: lf,
            listener_filters_timeout: match &p.listener_filters_timeout {
                None => Some(Duration::from_secs(15)),
                Some(d) => Some(duration(d)).filter(|d| !d.is_zero()),
            },
            continue_on_listener_filters_timeout: p.continue_on_listener_filters_timeout,
            chains,
            default_chain,
            matchers,
            stats: ListenerStats {
                downstream_cx_total: c("downstream_cx_total"),
                downstream_global_cx_overflow: c("downstream_global_cx_overflow"),
                downstream_cx_active: cx.stats.gauge(&format!("listener.{stat_addr}.downstream_cx_active")),
                downstream_cx_destroy: c("downstream_cx_destroy"),
                no_filter_chain_match: c("no_filter_chain_match"),
                downstream_listener_filter_error: c("downstream_listener_filter_error"),
                downstream_pre_cx_timeout: c("downstream_pre_cx_timeout"),
                ssl_handshake: c("ssl.handshake"),
                ssl_connection_error: c("ssl.connection_error"),
                ssl_no_certificate: c("ssl.no_certificate"),
                ssl_fail_verify_error: c("ssl.fail_verify_error"),
                ssl_fail_verify_san: c("ssl.fail_verify_san"),
            },
            proto: p.clone(),
            inbound: p.traffic_direction == envoy_types::pb::envoy::config::core::v3::TrafficDirection::Inbound as i32,
            stop: watch::channel(false).0,
            drain: watch::channel(false).0,
            access_logs: crate::access_log::AccessLog::list_from_proto(&p.access_log, "access_log", cx)?.into(),
        })
    }

    /// The address and the additional addresses.
    pub fn addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        std::iter::once(self.address).chain(self.additional_addresses.iter().copied())
    }

    /// Stops accepting and asks open connections to finish.
    pub fn shut(&self) {
        self.stop.send_replace(true);
        self.drain.send_replace(true);
    }

    /// Serves one accepted connection on this worker.
    pub async fn serve_connection(
        self: Arc<Self>,
        stream: TcpStream,
        remote: SocketAddr,
        worker: Rc<WorkerCtx>,
        listeners: &ActiveListeners,
    ) {
        let _ = stream.set_nodelay(true);
        let mut local = stream.local_addr().unwrap_or(self.address);
        let mut restored = false;
        // Envoy adds the original_dst listener filter itself when `use_original_dst` is set
        // (Istio's virtualOutbound lists no listener filters and relies on it).
        if (self.listener_filters.runs(Which::OriginalDst, local.port()) || self.use_original_dst)
            && let Some(dst) = crate::filters::listener::original_dst::original_dst(&stream, local)
        {
            restored = dst != local;
            local = dst;
        }
        // use_original_dst: hand the connection to the listener owning the original destination
        // (exact address, then the wildcard address on that port); its listener filters run.
        if self.use_original_dst && restored {
            let snap = listeners.load();
            let target = handoff_target(&snap, &self, local);
            drop(snap);
            if let Some(t) = target {
                return t.serve_accepted(stream, remote, local, restored, worker).await;
            }
        }
        self.serve_accepted(stream, remote, local, restored, worker).await
    }

    /// Runs this listener's inspectors, picks the filter chain and runs it. `restored`: `local`
    /// is the pre-redirect destination the original_dst filter recovered.
    async fn serve_accepted(
        self: Arc<Self>,
        stream: TcpStream,
        remote: SocketAddr,
        local: SocketAddr,
        restored: bool,
        worker: Rc<WorkerCtx>,
    ) {
        let accepted = (std::time::SystemTime::now(), std::time::Instant::now());
        self.stats.downstream_cx_total.inc();
        let _active = GaugeGuard::new(&self.stats.downstream_cx_active);
        let timeout = self.listener_filters_timeout.unwrap_or(Duration::from_secs(3600));
        let deadline = std::time::Instant::now() + timeout;
        let mut transport = "raw_buffer";
        let mut sni = None;
        let mut alpn: Vec<String> = Vec::new();
        let tls_inspector = self.listener_filters.runs(Which::TlsInspector, local.port());
        let http_inspector = self.listener_filters.runs(Which::HttpInspector, local.port());
        if tls_inspector && let Some(h) = crate::filters::listener::tls_inspector::inspect(&stream, timeout).await {
            transport = "tls";
            sni = h.server_name;
            alpn = h.alpn;
        }
        if http_inspector
            && transport == "raw_buffer"
            && let Some(p) = crate::filters::listener::http_inspector::inspect(&stream, timeout).await
        {
            alpn = vec![p.to_string()];
        }
        // The inspectors give up only at the deadline (not TLS / not HTTP is known sooner): the
        // peer sent too little in time (a server-first protocol). Envoy closes the connection
        // unless continue_on_listener_filters_timeout (Istio sets it).
        if (tls_inspector || http_inspector)
            && transport == "raw_buffer"
            && alpn.is_empty()
            && self.listener_filters_timeout.is_some()
            && std::time::Instant::now() >= deadline
        {
            self.stats.downstream_pre_cx_timeout.inc();
            if !self.continue_on_listener_filters_timeout {
                return;
            }
        }
        let facts = ConnFacts {
            local: Some(local),
            remote: Some(remote),
            direct_remote: Some(remote),
            server_name: sni.as_deref(),
            transport_protocol: transport,
            application_protocols: &alpn,
        };
        let chain = self.chain_for(&facts, None);
        let Some(chain) = chain else {
            self.stats.no_filter_chain_match.inc();
            crate::access_log::log_connection(
                &self.access_logs,
                remote,
                local,
                sni.as_deref(),
                crate::access_log::ResponseFlags::NO_ROUTE_FOUND,
                accepted,
            );
            return;
        };
        match &chain.tls {
            None => {
                let conn = ConnInfo { sni, alpn: alpn.first().cloned(), ..Default::default() };
                // Non-terminal filters judge the connection (HTTP: on its first bytes).
                let ncx = NetworkCtx { remote, local, conn: &conn };
                let client_first = matches!(chain.terminal, Terminal::Http(_));
                let admitted = crate::filters::network::admit_plaintext(
                    &chain.filters,
                    &stream,
                    &ncx,
                    client_first,
                    self.drain.subscribe(),
                )
                .await;
                if !admitted {
                    self.count_refused(chain);
                    return;
                }
                self.run_terminal(chain, stream, conn, "http", remote, local, restored, worker).await;
            }
            Some(tls) => {
                let Some(s) = self.handshake(tls, stream).await else { return };
                let conn = crate::tls::conn_info(s.get_ref().1, tls);
                // After the handshake the filters see the peer's identity.
                let ncx = NetworkCtx { remote, local, conn: &conn };
                if let NetworkAction::Close { delay } = crate::filters::network::run_filters(&chain.filters, &ncx) {
                    if let Some(d) = delay {
                        tokio::time::sleep(d).await;
                    }
                    self.count_refused(chain);
                    return;
                }
                match &chain.metadata_exchange {
                    Some(mx) if mx.negotiated(conn.alpn.as_deref().map(str::as_bytes)) => {
                        let mut s = s;
                        match mx.exchange(&mut s).await {
                            Ok((peer, rest)) => {
                                let conn = ConnInfo { peer_metadata: peer.map(Arc::new), ..conn };
                                let s = metadata_exchange::Prefixed::new(rest, s);
                                self.run_terminal(chain, s, conn, "https", remote, local, restored, worker).await;
                            }
                            Err(e) => {
                                tracing::debug!(target: "remora::listener", "listener {}: metadata exchange: {e}", self.name);
                            }
                        }
                    }
                    _ => self.run_terminal(chain, s, conn, "https", remote, local, restored, worker).await,
                }
            }
        }
        self.stats.downstream_cx_destroy.inc();
    }

    /// A connection a network filter refused: Envoy creates the HCM at accept, so it counts the
    /// connection it never served.
    fn count_refused(&self, chain: &NetworkChain) {
        if let Terminal::Http(h) = &chain.terminal {
            h.stats.downstream_cx_total.inc();
            h.stats.downstream_cx_destroy.inc();
        }
        self.stats.downstream_cx_destroy.inc();
    }

    /// The server TLS handshake, counting Envoy's `ssl.*` listener stats on failure.
    async fn handshake(
        &self,
        tls: &crate::tls::ServerTls,
        stream: TcpStream,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        use crate::tls::HandshakeFailure as F;
        match tokio::time::timeout(Duration::from_secs(15), tls.accept(stream)).await {
            Ok(Ok(s)) => {
                self.stats.ssl_handshake.inc();
                Some(s)
            }
            Ok(Err(e)) => {
                self.stats.ssl_connection_error.inc();
                match e.failure {
                    F::NoCertificate => self.stats.ssl_no_certificate.inc(),
                    F::FailVerifySan => self.stats.ssl_fail_verify_san.inc(),
                    F::FailVerifyError => self.stats.ssl_fail_verify_error.inc(),
                    F::NotReady | F::Other => {}
                }
                tracing::debug!(target: "remora::listener", "listener {}: TLS handshake failed: {e}", self.name);
                None
            }
            Err(_) => {
                self.stats.ssl_connection_error.inc();
                None
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_terminal<IO>(
        &self,
        chain: &NetworkChain,
        io: IO,
        conn: ConnInfo,
        scheme: &'static str,
        remote: SocketAddr,
        local: SocketAddr,
        restored: bool,
        worker: Rc<WorkerCtx>,
    ) where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // ORIGINAL_DST clusters connect only to a destination the original_dst filter restored
        // (Envoy: `localAddressRestored()`), never back to the listener itself.
        let original_dst = restored.then_some(local);
        let conn = ConnInfo { original_dst, ..conn };
        match &chain.terminal {
            Terminal::Http(h) => {
                crate::filters::network::http_connection_manager::serve(
                    h.clone(),
                    io,
                    worker,
                    remote,
                    local,
                    self.drain.subscribe(),
                    conn,
                    scheme,
                )
                .await
            }
            Terminal::Tcp(t) => t.serve(io, worker, original_dst, &conn, &chain.tcp_stats).await,
        }
    }
}

/// Envoy's listener stat name for an address: `0.0.0.0_8080`, `[__1]_8080`.
/// The listener a `use_original_dst` listener hands a connection to: the one bound to the
/// original destination, else the wildcard address of its family on its port (as Envoy).
pub fn handoff_target(listeners: &[Arc<Listener>], from: &Arc<Listener>, dst: SocketAddr) -> Option<Arc<Listener>> {
    listeners
        .iter()
        .find(|l| l.addresses().any(|a| a == dst) && !Arc::ptr_eq(l, from))
        .or_else(|| {
            listeners.iter().find(|l| {
                l.addresses().any(|a| a.port() == dst.port() && a.ip().is_unspecified() && a.is_ipv4() == dst.is_ipv4())
                    && !Arc::ptr_eq(l, from)
            })
        })
        .cloned()
}

pub fn stat_address(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => format!("{}_{}", v.ip(), v.port()),
        SocketAddr::V6(v) => format!("[{}]_{}", v.ip().to_string().replace(':', "_"), v.port()),
    }
}

fn build_chain(fc: &FilterChainProto, cx: &BuildCtx) -> Result<NetworkChain, ConfigError> {
    let tls = match &fc.transport_socket {
        Some(ts) => crate::transport_socket::downstream(ts, cx)?,
        None => None,
    };
    let matcher = match &fc.filter_chain_match {
        Some(m) => ChainMatch::from_proto(m, "filter_chain_match")?,
        None => ChainMatch::default(),
    };
    if fc.filters.is_empty() {
        return Err(ConfigError::new("filters", "a filter chain needs at least one network filter"));
    }
    let mut terminal = None;
    let mut filters = Vec::new();
    let mut metadata_exchange = None;
    let mut tcp_stats = Vec::new();
    for (i, f) in fc.filters.iter().enumerate() {
        let field = format!("filters[{i}]");
        if terminal.is_some() {
            return Err(ConfigError::new(field, "a terminal filter must be the last filter in the chain"));
        }
        match crate::filters::network::build(f, cx).map_err(|e| e.within(&field))? {
            NetworkFilterConfig::Terminal(t) => terminal = Some(t),
            NetworkFilterConfig::Filter(nf) => filters.push(nf),
            NetworkFilterConfig::MetadataExchange(m) => metadata_exchange = Some(m),
            NetworkFilterConfig::TcpStats(s) => {
                tcp_stats.push((field, s));
            }
            NetworkFilterConfig::Skip => {}
        }
    }
    let Some(terminal) = terminal else {
        return Err(ConfigError::new("filters", "the last filter of a chain must be a terminal filter"));
    };
    // Istio puts its network stats filter only before tcp_proxy; HTTP chains count in the HTTP
    // filter, and TCP-level metrics of an HTTP chain are not produced.
    if let (Terminal::Http(_), Some((field, _))) = (&terminal, tcp_stats.first()) {
        return Err(ConfigError::new(
            format!("{field}.typed_config"),
            "the istio.stats network filter is only supported before tcp_proxy",
        ));
    }
    let tcp_stats = tcp_stats.into_iter().map(|(_, s)| s).collect();
    Ok(NetworkChain { name: fc.name.clone(), matcher, tls, filters, metadata_exchange, tcp_stats, terminal })
}
