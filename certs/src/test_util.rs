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

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, TlsCertificate,
    UpstreamTlsContext, common_tls_context,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};

use crate::ca::pb::istio_certificate_service_server::{IstioCertificateService, IstioCertificateServiceServer};
use crate::ca::pb::{IstioCertificateRequest, IstioCertificateResponse};
use crate::dev_ca::IssuedCert;
use crate::dev_ca::{CaOptions, DevCa, Validity, WorkloadOptions};
use crate::{DEFAULT_CERT_SECRET, ROOT_CA_SECRET, SecretStore, SpiffeId};

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
        if self.failures_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(Status::unavailable("injected failure"));
        }
        if let Some(token) = &self.opts.token {
            let got = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
            if got != Some(format!("Bearer {token}").as_str()) {
                return Err(Status::unauthenticated("bad or missing bearer token"));
            }
        }
        if let Some(c) = req.metadata().get("clusterid").and_then(|v| v.to_str().ok()) {
            self.stats.cluster_ids.lock().unwrap_or_else(|e| e.into_inner()).push(c.to_string());
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
            return Err(Status::invalid_argument("CSR must carry exactly one URI SAN"));
        };
        let id = SpiffeId::parse(uri).map_err(|e| Status::invalid_argument(format!("CSR URI SAN: {e}")))?;
        if let Some(want) = &self.opts.identity
            && &id != want
        {
            return Err(Status::permission_denied(format!("caller may not request {id}")));
        }
        let requested = Duration::from_secs(body.validity_duration.max(1) as u64);
        let validity = Validity::starting_now(requested.min(self.opts.max_validity));
        let chain = self.ca.sign_csr(&body.csr, validity).map_err(|e| Status::internal(e.to_string()))?;
        self.stats.issued.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(IstioCertificateResponse { cert_chain: chain }))
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
        f.debug_struct("TestCaServer").field("addr", &self.addr).finish()
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
        let store = SecretStore::new();
        store
            .set_tls_certificate_pem("serving", serving.chain_pem.as_bytes(), serving.key_pem.as_bytes())
            .map_err(std::io::Error::other)?;
        let certified = store
            .tls_certificate("serving")
            .ok_or_else(|| std::io::Error::other("serving certificate missing"))?
            .certified_key()
            .clone();
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
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
        Ok(TestCaServer { addr, ca, opts, stats, shutdown: Some(shutdown_tx) })
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
        self.stats.cluster_ids.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A [`CaClientConfig`](crate::ca::CaClientConfig) pointing at this server.
    pub fn client_config(&self, identity: SpiffeId) -> crate::ca::CaClientConfig {
        let mut cfg =
            crate::ca::CaClientConfig::new(self.addr.to_string(), self.root_pem().as_bytes().to_vec(), identity);
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
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
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

// === Istio-shaped TLS contexts ===

/// An inline `DataSource`.
pub fn inline(s: &str) -> DataSource {
    DataSource { specifier: Some(Specifier::InlineString(s.to_string())), ..Default::default() }
}

/// A `DataSource` naming a file.
pub fn file(path: &std::path::Path) -> DataSource {
    DataSource { specifier: Some(Specifier::Filename(path.display().to_string())), ..Default::default() }
}

/// An SDS reference (the config source is irrelevant to the store).
pub fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig { name: name.to_string(), sds_config: None }
}

/// A `TlsCertificate` with inline PEM.
pub fn tls_certificate(issued: &IssuedCert) -> TlsCertificate {
    TlsCertificate {
        certificate_chain: Some(inline(&issued.chain_pem)),
        private_key: Some(inline(&issued.key_pem)),
        ..Default::default()
    }
}

/// A `StringMatcher` of the given form.
pub fn string_matcher(p: MatchPattern) -> StringMatcher {
    StringMatcher { ignore_case: false, match_pattern: Some(p) }
}

/// Combined validation: default context with untyped SAN matchers (as Istio sends) + SDS
/// `ROOTCA`.
pub fn combined_validation(sans: Vec<MatchPattern>) -> common_tls_context::ValidationContextType {
    #[allow(deprecated)]
    let default = CertificateValidationContext {
        match_subject_alt_names: sans.into_iter().map(string_matcher).collect(),
        ..Default::default()
    };
    common_tls_context::ValidationContextType::CombinedValidationContext(
        common_tls_context::CombinedCertificateValidationContext {
            default_validation_context: Some(default),
            validation_context_sds_secret_config: Some(sds(ROOT_CA_SECRET)),
            ..Default::default()
        },
    )
}

/// What istiod sends for an inbound mTLS filter chain: SDS `default`, client certificates
/// required and matched by prefix `spiffe://<trust_domain>/`, SDS `ROOTCA`.
pub fn istio_inbound_context(trust_domain: &str, alpn: &[&str]) -> DownstreamTlsContext {
    DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
            tls_certificate_sds_secret_configs: vec![sds(DEFAULT_CERT_SECRET)],
            validation_context_type: Some(combined_validation(vec![MatchPattern::Prefix(format!(
                "spiffe://{trust_domain}/"
            ))])),
            ..Default::default()
        }),
        require_client_certificate: Some(envoy_types::pb::google::protobuf::BoolValue { value: true }),
        ..Default::default()
    }
}

/// What istiod sends for an outbound mTLS cluster: SDS `default`, the server must present
/// `peer_spiffe` (exact) chained to SDS `ROOTCA`, ALPN `istio-peer-exchange`/`istio`.
pub fn istio_outbound_context(peer_spiffe: &str, sni: &str) -> UpstreamTlsContext {
    UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: vec!["istio-peer-exchange".into(), "istio".into()],
            tls_certificate_sds_secret_configs: vec![sds(DEFAULT_CERT_SECRET)],
            validation_context_type: Some(combined_validation(vec![MatchPattern::Exact(peer_spiffe.to_string())])),
            ..Default::default()
        }),
        sni: sni.to_string(),
        ..Default::default()
    }
}

/// Puts `issued` into `store` as `default` (chain + key) and `ROOTCA` (its root).
pub fn install(store: &SecretStore, issued: &IssuedCert) -> Result<(), crate::TlsError> {
    store.set_trusted_ca_pem(ROOT_CA_SECRET, issued.root_pem.as_bytes())?;
    store.set_tls_certificate_pem(DEFAULT_CERT_SECRET, issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())
}

/// A new root CA (panics on failure: test helper).
#[allow(clippy::expect_used)]
pub fn new_root() -> DevCa {
    DevCa::new_root(&CaOptions::default()).expect("generating a root CA")
}

/// A workload certificate for `spiffe` from `ca`, with `validity` (panics on failure).
#[allow(clippy::expect_used)]
pub fn workload(ca: &DevCa, spiffe: &str, validity: Validity) -> IssuedCert {
    let mut opts = WorkloadOptions::spiffe(SpiffeId::parse(spiffe).expect("valid SPIFFE ID"));
    opts.validity = validity;
    ca.issue(&opts).expect("issuing a workload certificate")
}
