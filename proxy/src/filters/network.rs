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

/// For a plaintext connection: waits for its first bytes (without consuming them), then runs the
/// filters. Returns true when the terminal filter should get the connection. A connection that
/// closes (or the listener drains) before sending anything is not judged, as in Envoy, and
/// returns false. A closed connection's pending bytes are read first, so the peer sees a FIN
/// (Envoy's close after reading), not a reset.
pub async fn admit_plaintext(
    filters: &[std::sync::Arc<dyn NetworkFilter>],
    stream: &tokio::net::TcpStream,
    cx: &NetworkCtx<'_>,
    mut drain: tokio::sync::watch::Receiver<bool>,
) -> bool {
    if filters.is_empty() {
        return true;
    }
    let mut b = [0u8; 1];
    loop {
        tokio::select! {
            r = stream.peek(&mut b) => match r {
                Ok(n) if n > 0 => break,
                _ => return false,
            },
            changed = drain.changed() => {
                if changed.is_err() || *drain.borrow() {
                    return false;
                }
            }
        }
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
