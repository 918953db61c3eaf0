//! Istio's network stats filter (`istio.stats` with `stats.PluginConfig` in a TCP chain):
//! `istio_tcp_connections_opened_total`, `_closed_total`, `istio_tcp_sent_bytes_total` and
//! `istio_tcp_received_bytes_total` with Istio's standard TCP labels (filters::common::istio_stats).
//!
//! tcp_proxy reports each connection: opened once the peer is known (at the destination the
//! downstream's metadata exchange, at the source the upstream's), bytes every
//! `tcp_reporting_duration` while open and at close, closed at the end. A connection that never
//! reached an upstream is opened and closed at once with its response flag (`UF`, `UH`, `UO`,
//! `NR`), as Istio reports it.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::Any;

use crate::access_log::ResponseFlags;
use crate::config::{BuildCtx, ConfigError};
use crate::filters::common::istio_stats::{self as common, Key, Metric, Metrics, Protocol, Settings, Workload};
use crate::stats::Counter;
use crate::stream_info::{ConnInfo, PeerMetadata};

pub use common::TYPE;

struct Handles {
    opened: Option<Counter>,
    closed: Option<Counter>,
    sent: Option<Counter>,
    received: Option<Counter>,
}

/// The compiled filter: one per chain, shared by its connections.
pub struct TcpStats {
    m: Metrics<Handles>,
}

impl std::fmt::Debug for TcpStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpStats").field("destination", &self.m.settings.destination).finish()
    }
}

pub fn factory(any: &Any, cx: &BuildCtx) -> Result<Arc<TcpStats>, ConfigError> {
    Ok(Arc::new(TcpStats { m: Metrics::new(cx.stats.clone(), Settings::from_any(any, cx)?) }))
}

/// What tcp_proxy knows when it reports a connection.
pub struct TcpFacts<'a> {
    pub conn: &'a ConnInfo,
    /// The upstream's metadata from the exchange (source reporter).
    pub upstream_peer: Option<&'a PeerMetadata>,
    pub cluster: Option<&'a str>,
    pub cluster_metadata: Option<&'a Metadata>,
    pub flags: ResponseFlags,
}

/// One connection's reporter: bytes reported so far.
pub struct ConnReport {
    handles: Arc<Handles>,
    sent: u64,
    received: u64,
}

impl TcpStats {
    /// How often an open connection reports its bytes.
    pub fn reporting_interval(&self) -> std::time::Duration {
        self.m.settings.tcp_reporting
    }

    fn key(&self, f: &TcpFacts<'_>) -> Key {
        let m = &self.m;
        let (peer, peer_san, local_san) = if m.settings.destination {
            let peer = match f.conn.peer_metadata.as_deref() {
                Some(p) => m.peer(Some(&p.id), || Workload::from_metadata(Some(&p.metadata))),
                None => m.peer(None, Workload::default),
            };
            (
                peer,
                m.string(f.conn.peer_uri_sans.first().map_or("", String::as_str)),
                m.string(f.conn.local_uri_sans.first().map_or("", String::as_str)),
            )
        } else {
            let peer = match f.upstream_peer {
                Some(p) => m.peer(Some(&p.id), || Workload::from_metadata(Some(&p.metadata))),
                None => m.peer(None, Workload::default),
            };
            (peer, m.string(""), m.string(""))
        };
        let (service_host, service_name) = common::service(None, f.cluster, f.cluster_metadata, None, false);
        Key {
            peer,
            peer_san,
            local_san,
            service_host: m.string(service_host),
            service_name: m.string(service_name),
            protocol: Protocol::Tcp,
            response_code: 0,
            grpc_status: None,
            flags: f.flags,
            // No request on a TCP connection: its attributes read `unknown`.
            dims: m.dims(|_| ""),
        }
    }

    /// Counts a connection as opened.
    pub fn open(&self, f: &TcpFacts<'_>) -> ConnReport {
        let handles = self.m.handles(self.key(f), |l| Handles {
            opened: l.counter(Metric::TcpOpened),
            closed: l.counter(Metric::TcpClosed),
            sent: l.counter(Metric::TcpSent),
            received: l.counter(Metric::TcpReceived),
        });
        if let Some(c) = &handles.opened {
            c.inc();
        }
        ConnReport { handles, sent: 0, received: 0 }
    }

    /// A connection that ended before it was proxied: opened and closed at once.
    pub fn failed(&self, f: &TcpFacts<'_>) {
        self.open(f).close(0, 0);
    }
}

impl ConnReport {
    /// Adds the bytes moved since the last report; `sent` is toward the downstream, `received`
    /// from it (Istio's view from the downstream connection), both totals so far.
    pub fn bytes(&mut self, received: u64, sent: u64) {
        if let Some(c) = &self.handles.sent {
            c.add(sent.saturating_sub(self.sent));
        }
        if let Some(c) = &self.handles.received {
            c.add(received.saturating_sub(self.received));
        }
        self.sent = self.sent.max(sent);
        self.received = self.received.max(received);
    }

    pub fn close(mut self, received: u64, sent: u64) {
        self.bytes(received, sent);
        if let Some(c) = &self.handles.closed {
            c.inc();
        }
    }
}
