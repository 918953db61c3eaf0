//! Opening upstream transports: TCP (optionally from a bound source address, Istio's
//! `upstream_bind_config` 127.0.0.6) or a unix socket, within the cluster's connect timeout.

use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::cluster::{Cluster, TcpKeepalive};
use super::host::Host;
use crate::stream_info::ResetReason;

/// Connects a TCP socket, first binding `source` (port 0) when set.
pub async fn connect_tcp(addr: SocketAddr, source: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    connect_tcp_with(addr, source, None).await
}

/// Like [`connect_tcp`], with the cluster's TCP keepalive set on the socket before it connects
/// (Envoy's `upstream_connection_options.tcp_keepalive`).
pub async fn connect_tcp_with(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    keepalive: Option<&TcpKeepalive>,
) -> std::io::Result<TcpStream> {
    if source.is_none() && keepalive.is_none() {
        return TcpStream::connect(addr).await;
    }
    let sock = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    if let Some(k) = keepalive {
        let mut ka = socket2::TcpKeepalive::new();
        if let Some(t) = k.time {
            ka = ka.with_time(t);
        }
        if let Some(i) = k.interval {
            ka = ka.with_interval(i);
        }
        if let Some(p) = k.probes {
            ka = ka.with_retries(p);
        }
        socket2::SockRef::from(&sock).set_tcp_keepalive(&ka)?;
    }
    if let Some(ip) = source {
        sock.set_reuseaddr(true)?;
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    sock.connect(addr).await
}

/// A connected upstream transport.
pub enum UpstreamIo {
    Tcp(TcpStream),
    Unix(tokio::net::UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl UpstreamIo {
    /// The ALPN protocol the TLS handshake settled on, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            UpstreamIo::Tls(s) => s.get_ref().1.alpn_protocol(),
            _ => None,
        }
    }
}

macro_rules! both {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            UpstreamIo::Tcp($s) => $e,
            UpstreamIo::Unix($s) => $e,
            UpstreamIo::Tls($s) => $e,
        }
    };
}

impl tokio::io::AsyncRead for UpstreamIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        both!(self, s => std::pin::Pin::new(s).poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for UpstreamIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        both!(self, s => std::pin::Pin::new(s).poll_write(cx, buf))
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        both!(self, s => std::pin::Pin::new(s).poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        both!(self, s => std::pin::Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        both!(self, s => std::pin::Pin::new(s).poll_shutdown(cx))
    }
}

/// Opens a transport to `host` within the cluster's connect timeout, counting the cluster's
/// connection stats.
pub async fn connect(cluster: &Cluster, host: &Host) -> Result<TokioIo<UpstreamIo>, ResetReason> {
    connect_with_alpn(cluster, host, None).await
}

/// Like [`connect`], offering `alpn` instead of the TLS context's list (Istio's ALPN override).
pub async fn connect_with_alpn(
    cluster: &Cluster,
    host: &Host,
    alpn: Option<&[Vec<u8>]>,
) -> Result<TokioIo<UpstreamIo>, ResetReason> {
    cluster.stats.upstream_cx_total.inc();
    cluster.stats.default_total_match_count.inc();
    open(cluster, host, host.address, alpn).await
}

/// A health check's connection to `host` on `port` (0: the host's own): the cluster's
/// transport socket and connect timeout, outside the cluster's traffic stats (as Envoy's
/// health check connections).
pub async fn connect_health_check(
    cluster: &Cluster,
    host: &Host,
    port: u16,
) -> Result<TokioIo<UpstreamIo>, ResetReason> {
    let mut addr = host.address;
    if port != 0 {
        addr.set_port(port);
    }
    open(cluster, host, addr, None).await
}

async fn open(
    cluster: &Cluster,
    host: &Host,
    address: SocketAddr,
    alpn: Option<&[Vec<u8>]>,
) -> Result<TokioIo<UpstreamIo>, ResetReason> {
    let tls = cluster.tls_for(host);
    let fut = async {
        match &host.pipe {
            Some(p) => tokio::net::UnixStream::connect(p).await.map(UpstreamIo::Unix),
            None => {
                let s = connect_tcp_with(address, cluster.bind_for(address), cluster.tcp_keepalive.as_ref()).await?;
                let _ = s.set_nodelay(true);
                match tls {
                    None => Ok(UpstreamIo::Tcp(s)),
                    Some(t) => {
                        let cfg = match alpn {
                            Some(a) => t.config_with_alpn(a),
                            None => t.config(),
                        }
                        .map_err(std::io::Error::other)?;
                        let tls =
                            tokio_rustls::TlsConnector::from(cfg).connect(t.server_name_for(&host.hostname), s).await;
                        match tls {
                            Ok(s) => {
                                cluster.stats.ssl_handshake.inc();
                                Ok(UpstreamIo::Tls(Box::new(s)))
                            }
                            Err(e) => {
                                cluster.stats.ssl_connection_error.inc();
                                Err(e)
                            }
                        }
                    }
                }
            }
        }
    };
    let stream = match tokio::time::timeout(cluster.connect_timeout.max(Duration::from_millis(1)), fut).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(target: "remora::upstream", cluster = %cluster.name, host = %host.address, "connect failed: {e}");
            cluster.stats.upstream_cx_connect_fail.inc();
            return Err(ResetReason::ConnectFailure);
        }
        Err(_) => {
            cluster.stats.upstream_cx_connect_fail.inc();
            cluster.stats.upstream_cx_connect_timeout.inc();
            return Err(ResetReason::ConnectTimeout);
        }
    };
    Ok(TokioIo::new(stream))
}
