//! The handshake generator (`bench handshakes`, started pinned to the load CPU): a closed loop of
//! N concurrent clients, each opening a new TCP connection, doing a full TLS 1.3 handshake
//! (session resumption disabled, so every handshake is a full one), sending one HTTP/1.1 request
//! with `Connection: close`, reading the 1 KiB answer, and closing. Also the ECDSA P-256
//! certificate every proxy terminates TLS with, made with rcgen.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// The name in the certificate (and the SNI the generator sends).
pub const SERVER_NAME: &str = "handshake.bench";

/// Paths of the TLS-terminating proxies' certificate.
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub cert: String,
    pub key: String,
    /// cert + key in one file, as HAProxy's `crt` wants.
    pub combined: String,
}

/// A self-signed ECDSA P-256 certificate for `handshake.bench`, written to `dir`.
pub fn make_cert(dir: &Path) -> Result<ServerCert> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])?.self_signed(&key)?;
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    let s = |name: &str| dir.join(name).display().to_string();
    let out = ServerCert { cert: s("cert.pem"), key: s("key.pem"), combined: s("combined.pem") };
    std::fs::write(&out.cert, &cert_pem)?;
    std::fs::write(&out.key, &key_pem)?;
    std::fs::write(&out.combined, format!("{cert_pem}{key_pem}"))?;
    Ok(out)
}

/// What one generator run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Handshakes {
    /// Connections that completed the handshake and got a 200 with the full body.
    pub completed: u64,
    pub errors: u64,
    pub secs: f64,
    pub per_sec: f64,
    /// The first error seen, for the notes.
    pub first_error: Option<String>,
    /// CPU seconds the generator itself used (to tell whether it was the bottleneck).
    pub generator_cpu_secs: f64,
}

/// Accepts any certificate and signature: verifying the server is client-side work (the same
/// for every target), and the load CPU is the scarce one. The server still signs every
/// handshake, which is what is measured.
#[derive(Debug)]
struct AcceptAny(Vec<SignatureScheme>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

fn client_config() -> Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let schemes = provider.signature_verification_algorithms.supported_schemes();
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(schemes)))
        .with_no_client_auth();
    // Every connection a full handshake: no tickets or session IDs kept.
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// Runs the generator in this process: `connections` concurrent clients for `secs`.
pub fn run(addr: SocketAddr, connections: u32, secs: f64) -> Result<Handshakes> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let connector = TlsConnector::from(Arc::new(client_config()?));
    rt.block_on(async move {
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(secs);
        let tasks: Vec<_> =
            (0..connections.max(1)).map(|_| tokio::spawn(client(addr, connector.clone(), end))).collect();
        let (mut completed, mut errors, mut first_error) = (0, 0, None);
        for t in tasks {
            let (c, e, fe) = t.await?;
            completed += c;
            errors += e;
            first_error = first_error.or(fe);
        }
        let secs = start.elapsed().as_secs_f64();
        let generator_cpu_secs = crate::procs::cpu_seconds(&[std::process::id()]);
        Ok(Handshakes { completed, errors, secs, per_sec: completed as f64 / secs, first_error, generator_cpu_secs })
    })
}

const REQUEST: &[u8] =
    b"GET / HTTP/1.1\r\nHost: handshake.bench\r\nUser-Agent: remora-bench\r\nConnection: close\r\n\r\n";

/// One closed-loop client: `(completed, errors, first error)`.
async fn client(addr: SocketAddr, connector: TlsConnector, end: Instant) -> (u64, u64, Option<String>) {
    let (mut completed, mut errors, mut first_error) = (0, 0, None);
    while Instant::now() < end {
        match tokio::time::timeout(Duration::from_secs(5), one(addr, &connector)).await {
            Ok(Ok(())) => completed += 1,
            Ok(Err(e)) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(_) => {
                errors += 1;
                first_error.get_or_insert_with(|| "no answer within 5 s".to_string());
            }
        }
        if errors > 0 && errors % 100 == 0 {
            // A target that refuses everything: do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    (completed, errors, first_error)
}

async fn one(addr: SocketAddr, connector: &TlsConnector) -> Result<()> {
    let tcp = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(SERVER_NAME)?;
    let mut tls = connector.connect(name, tcp).await.context("TLS handshake")?;
    tls.write_all(REQUEST).await?;
    let status = read_response(&mut tls).await?;
    if status != 200 {
        bail!("status {status}");
    }
    // close_notify and FIN; the server closes too (Connection: close).
    let _ = tls.shutdown().await;
    Ok(())
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns its status.
async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> Result<u16> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..head_end]).context("non-UTF-8 head")?;
            let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("bad status line")?;
            let len = head
                .split("\r\n")
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .context("no content-length")?;
            while buf.len() < head_end + 4 + len {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    bail!("connection closed in the body");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(status);
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One TLS request through `addr` (readiness): Ok once it answers 200 with the full body.
pub fn probe(addr: SocketAddr) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let connector = TlsConnector::from(Arc::new(client_config()?));
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), one(addr, &connector)).await? })
}
