//! Network filters: the terminal filter of a filter chain decides what a connection becomes;
//! non-terminal filters before it (`NetworkFilter`, e.g. RBAC) may close the connection first.

pub mod http_connection_manager;
pub mod rbac;
pub mod tcp_proxy;

use std::net::SocketAddr;
use std::time::Duration;

use crate::filters::http::ConnInfo;

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

/// A read filter placed before the terminal filter. The listener calls `on_data` once, when the
/// connection's first bytes have arrived (after the TLS handshake for TLS connections), the
/// point where Envoy's read filters first run; filters run in chain order and the first `Close`
/// ends the connection before the terminal filter sees it.
pub trait NetworkFilter: Send + Sync {
    fn name(&self) -> &str;

    fn on_data(&self, cx: &NetworkCtx<'_>) -> NetworkAction;
}
