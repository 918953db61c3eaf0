//! Test helpers (feature `test-util`): an in-process Istio CA server speaking the real gRPC
//! protocol over TLS on a loopback port.
//!
//! The server signs CSRs with a [`DevCa`], and checks what istiod checks that matters to a
//! client: the bearer token, that the CSR asks for exactly the expected SPIFFE identity, and
//! that its key is ECDSA P-256. It can be told to fail the first N requests, and records the
//! `ClusterID` header it saw.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rcgen::CertificateSigningRequestParams;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};

use crate::SpiffeId;
use crate::ca::pb::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use crate::ca::pb::{IstioCertificateRequest, IstioCertificateResponse};
use crate::dev_ca::{CaOptions, DevCa, Validity, WorkloadOptions};

/// What the test CA accepts.
#[derive(Debug, Clone)]
pub struct TestCaOptions {
    /// Required `authorization: Bearer <token>`; `None` accepts any caller.
    pub token: Option<String>,
    /// The only identity it will sign; `None` signs any single SPIFFE URI SAN.
    pub identity: Option<SpiffeId>,
    /// Upper bound on the issued lifetime (the request's `validity_duration` is honoured below).
    pub max_validity: Duration,
    /// Fail this many requests with UNAVAILABLE before answering.
    pub fail_first: usize,
    /// DNS name in the CA's serving certificate.
    pub server_name: String,
}

impl Default for TestCaOptions {
    fn default() -> Self {
        TestCaOptions {
            token: None,
            identity: None,
            max_validity: Duration::from_secs(24 * 3600),
            fail_first: 0,
            server_name: "istiod.istio-system.svc".into(),
        }
    }
}

#[derive(Default)]
struct Stats {
    requests: AtomicUsize,
    issued: AtomicUsize,
    cluster_ids: Mutex<Vec<String>>,
}

struct Svc {
    ca: Arc<DevCa>,
    opts: TestCaOptions,
    stats: Arc<Stats>,
    failures_left: AtomicUsize,
}

#[tonic::async_trait]
impl IstioCertificateService for Svc {
    async fn create_certificate(
        &self,
        req: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        self.stats.requests.fetch_add(1, Ordering::SeqCst);
        if self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Status::unavailable("injected failure"));
        }
        if let Some(token) = &self.opts.token {
            let got = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if got != Some(format!("Bearer {token}").as_str()) {
                return Err(Status::unauthenticated("bad or missing bearer token"));
            }
        }
        if let Some(c) = req
            .metadata()
            .get("clusterid")
            .and_then(|v| v.to_str().ok())
        {
            self.stats
                .cluster_ids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(c.to_string());
        }
        let body = req.into_inner();
        let csr = CertificateSigningRequestParams::from_pem(&body.csr)
            .map_err(|e| Status::invalid_argument(format!("CSR: {e}")))?;
        if csr.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(Status::invalid_argument("CSR key must be ECDSA P-256"));
        }
        let uris: Vec<&str> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|s| match s {
                rcgen::SanType::URI(u) => Some(u.as_str()),
                _ => None,
            })
            .collect();
        let [uri] = uris.as_slice() else {
            return Err(Status::invalid_argument(
                "CSR must carry exactly one URI SAN",
            ));
        };
        let id = SpiffeId::parse(uri)
            .map_err(|e| Status::invalid_argument(format!("CSR URI SAN: {e}")))?;
        if let Some(want) = &self.opts.identity {
            if &id != want {
                return Err(Status::permission_denied(format!(
                    "caller may not request {id}"
                )));
            }
        }
        let requested = Duration::from_secs(body.validity_duration.max(1) as u64);
        let validity = Validity::for_duration(requested.min(self.opts.max_validity));
        let chain = self
            .ca
            .sign_csr(&body.csr, validity)
            .map_err(|e| Status::internal(e.to_string()))?;
        self.stats.issued.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain,
        }))
    }
}

/// A running test CA. Stops when dropped.
pub struct TestCaServer {
    addr: SocketAddr,
    ca: Arc<DevCa>,
    opts: TestCaOptions,
    stats: Arc<Stats>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for TestCaServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCaServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl TestCaServer {
    /// Starts on 127.0.0.1 with a new root CA.
    pub async fn start(opts: TestCaOptions) -> std::io::Result<Self> {
        let ca = DevCa::new_root(&CaOptions::default()).map_err(std::io::Error::other)?;
        Self::start_with_ca(opts, ca).await
    }

    /// Starts on 127.0.0.1 signing with `ca` (which also issues the serving certificate).
    pub async fn start_with_ca(opts: TestCaOptions, ca: DevCa) -> std::io::Result<Self> {
        let ca = Arc::new(ca);
        let serving = ca
            .issue(&WorkloadOptions {
                spiffe: None,
                dns_names: vec![opts.server_name.clone()],
                ips: vec![],
                common_name: None,
                validity: Validity::for_duration(Duration::from_secs(24 * 3600)),
                key_type: Default::default(),
            })
            .map_err(std::io::Error::other)?;
        let store = crate::SecretStore::new();
        store
            .set_tls_certificate_pem(
                "serving",
                serving.chain_pem.as_bytes(),
                serving.key_pem.as_bytes(),
            )
            .map_err(std::io::Error::other)?;
        let certified = store
            .tls_certificate("serving")
            .ok_or_else(|| std::io::Error::other("serving certificate missing"))?
            .certified_key()
            .clone();
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let svc = Svc {
            ca: ca.clone(),
            opts: opts.clone(),
            stats: stats.clone(),
            failures_left: AtomicUsize::new(opts.fail_first),
        };
        let (conns_tx, conns_rx) = mpsc::channel::<Result<TlsConn, std::io::Error>>(16);
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let tx = conns_tx.clone();
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(tls) => {
                            let _ = tx.send(Ok(TlsConn(tls))).await;
                        }
                        Err(e) => tracing::debug!("test CA: TLS handshake failed: {e}"),
                    }
                });
            }
        });
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(IstioCertificateServiceServer::new(svc))
                .serve_with_incoming_shutdown(Incoming(conns_rx), async {
                    let _ = shutdown_rx.await;
                })
                .await;
            accept_task.abort();
        });
        Ok(TestCaServer {
            addr,
            ca,
            opts,
            stats,
            shutdown: Some(shutdown_tx),
        })
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The root to trust, both for the serving certificate and the issued certificates.
    pub fn root_pem(&self) -> &str {
        self.ca.root_pem()
    }

    /// The DNS name in the serving certificate.
    pub fn server_name(&self) -> &str {
        &self.opts.server_name
    }

    /// The signing CA.
    pub fn ca(&self) -> &DevCa {
        &self.ca
    }

    /// Requests received (including refused ones).
    pub fn requests(&self) -> usize {
        self.stats.requests.load(Ordering::SeqCst)
    }

    /// Certificates issued.
    pub fn issued(&self) -> usize {
        self.stats.issued.load(Ordering::SeqCst)
    }

    /// `ClusterID` header values seen, in order.
    pub fn cluster_ids(&self) -> Vec<String> {
        self.stats
            .cluster_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A [`CaClientConfig`](crate::ca::CaClientConfig) pointing at this server.
    pub fn client_config(&self, identity: SpiffeId) -> crate::ca::CaClientConfig {
        let mut cfg = crate::ca::CaClientConfig::new(
            self.addr.to_string(),
            self.root_pem().as_bytes().to_vec(),
            identity,
        );
        cfg.tls_server_name = Some(self.opts.server_name.clone());
        cfg
    }
}

impl Drop for TestCaServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Accepted TLS connections, as tonic wants them.
struct Incoming(mpsc::Receiver<Result<TlsConn, std::io::Error>>);

impl futures_util::Stream for Incoming {
    type Item = Result<TlsConn, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

struct TlsConn(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for TlsConn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
