//! The gRPC channel to the management server: a unix socket or TCP, optionally TLS (ALPN h2),
//! with `:authority` set to the cluster name as Envoy sends it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tonic::transport::{Channel, Endpoint};

use super::{ClientConfig, Target};

/// Bounds the TCP/unix connect and the TLS handshake; a stuck connect is retried with backoff.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Connects one channel (one HTTP/2 connection); the stream loop makes a new one per attempt.
pub(crate) async fn connect(config: &ClientConfig) -> Result<Channel, String> {
    let origin = origin(&config.authority);
    let endpoint = Endpoint::from_shared(origin.to_string())
        .map_err(|e| format!("invalid authority '{}': {e}", config.authority))?
        .origin(origin);
    let target = config.target.clone();
    let tls = match &config.tls {
        Some(tls) => {
            let mut tls = (**tls).clone();
            // gRPC needs HTTP/2; the proxy's upstream context may carry other ALPNs (or none).
            tls.alpn_protocols = vec![b"h2".to_vec()];
            let name = server_name(config)?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(tls)), name))
        }
        None => None,
    };
    let connector = tower::service_fn(move |_: Uri| {
        let target = target.clone();
        let tls = tls.clone();
        async move {
            let io = tokio::time::timeout(CONNECT_TIMEOUT, open(target, tls))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            Ok::<_, io::Error>(TokioIo::new(io))
        }
    });
    endpoint.connect_with_connector(connector).await.map_err(|e| format!("{}: {}", describe(&config.target), chain(&e)))
}

async fn open(
    target: Target,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
) -> io::Result<Box<dyn Io>> {
    let plain: Box<dyn Io> = match &target {
        Target::Unix(path) => Box::new(UnixStream::connect(path).await?),
        Target::Tcp(addr) => {
            let s = TcpStream::connect(addr.as_str()).await?;
            // Small request/ACK messages should not wait for Nagle.
            let _ = s.set_nodelay(true);
            Box::new(s)
        }
    };
    match tls {
        Some((connector, name)) => Ok(Box::new(connector.connect(name, plain).await?)),
        None => Ok(plain),
    }
}

/// `http://<authority>`: tonic takes `:authority` from the origin. A name that is not a valid URI
/// authority falls back to `localhost` rather than failing every attempt.
fn origin(authority: &str) -> Uri {
    let candidate = if authority.is_empty() { "localhost" } else { authority };
    format!("http://{candidate}").parse::<Uri>().unwrap_or_else(|_| Uri::from_static("http://localhost"))
}

fn server_name(config: &ClientConfig) -> Result<ServerName<'static>, String> {
    let name = match (&config.tls_server_name, &config.target) {
        (Some(n), _) if !n.is_empty() => n.clone(),
        (_, Target::Tcp(addr)) => host_of(addr).to_string(),
        _ => config.authority.clone(),
    };
    ServerName::try_from(name.clone()).map_err(|e| format!("invalid TLS server name '{name}': {e}"))
}

/// `host` of `host:port` / `[v6]:port`.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((host, _)) => host,
        None => addr,
    }
}

pub(crate) fn describe(target: &Target) -> String {
    match target {
        Target::Unix(p) => format!("unix:{}", p.display()),
        Target::Tcp(a) => a.clone(),
    }
}

/// The error with its sources: tonic's top-level transport error says little on its own.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_of("istiod.istio-system.svc:15012"), "istiod.istio-system.svc");
        assert_eq!(host_of("[::1]:15012"), "::1");
        assert_eq!(host_of("example"), "example");
        assert_eq!(origin("xds-grpc").authority().map(|a| a.as_str()), Some("xds-grpc"));
        assert_eq!(origin("bad name|x").authority().map(|a| a.as_str()), Some("localhost"));
    }
}
