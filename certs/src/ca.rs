//! The Istio CA client: what pilot-agent does to obtain the workload certificate.
//!
//! It makes a new ECDSA P-256 key and a CSR carrying the SPIFFE ID as URI SAN, calls
//! `istio.v1.auth.IstioCertificateService/CreateCertificate` over TLS (trusting a given root
//! and verifying the CA's name), authenticated by `authorization: Bearer <token>` read from a
//! file on every request (projected tokens rotate) and tagged with the `ClusterID` header. The
//! answer (leaf first, root last) is checked (leaf chains to the root, carries the requested
//! identity, matches our key) and written to the [`SecretStore`] as `default` and `ROOTCA`,
//! the names SDS would use. [`CaClient::run`] renews at a fraction of the lifetime (default
//! one half) and retries failures with capped exponential backoff and jitter;
//! [`CaClient::run_with`] is the same loop handing each certificate to the caller instead (the
//! proxy installs it through its SDS path, as [`IssuedWorkloadCert::sds_secrets`]).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use crate::tls::{PeerIdentity, TlsError, base_provider};
use crate::{CompiledSecret, DEFAULT_CERT_SECRET, ROOT_CA_SECRET, SecretStore, SpiffeId};

/// Generated from `proto/istio/v1/auth/ca.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("istio.v1.auth");
}

use pb::istio_certificate_service_client::IstioCertificateServiceClient;

/// CA client errors.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("CA client configuration: {0}")]
    Config(String),
    #[error("reading token {}: {source}", path.display())]
    Token { path: PathBuf, source: std::io::Error },
    #[error("making the CSR: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("calling the CA: {0}")]
    Status(#[from] tonic::Status),
    #[error("invalid CA response: {0}")]
    Response(String),
    #[error("storing the certificate: {0}")]
    Secret(#[from] TlsError),
}

/// How to reach the CA and what to ask for.
#[derive(Debug, Clone)]
pub struct CaClientConfig {
    /// `host:port` or `https://host:port`, e.g. `istiod.istio-system.svc:15012`.
    pub address: String,
    /// The name to verify in the CA's certificate; defaults to the address's host.
    pub tls_server_name: Option<String>,
    /// PEM root(s) to trust for the CA's serving certificate.
    pub ca_root_pem: Vec<u8>,
    /// File holding the bearer token (e.g. the projected service account token).
    pub token_path: Option<PathBuf>,
    /// Sent as the `ClusterID` header.
    pub cluster_id: String,
    /// The identity to request.
    pub identity: SpiffeId,
    /// Requested certificate lifetime.
    pub validity: Duration,
    /// Renew when this fraction of the lifetime has passed (0 < f < 1).
    pub renew_fraction: f64,
    /// First retry delay after a failure; doubles up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Deadline for one request (connect included).
    pub request_timeout: Duration,
    /// Secret names written into the store.
    pub cert_secret: String,
    pub root_secret: String,
}

impl CaClientConfig {
    /// Defaults as pilot-agent: 24h certificates renewed at half life, `default` and `ROOTCA`.
    pub fn new(address: impl Into<String>, ca_root_pem: Vec<u8>, identity: SpiffeId) -> Self {
        CaClientConfig {
            address: address.into(),
            tls_server_name: None,
            ca_root_pem,
            token_path: None,
            cluster_id: "Kubernetes".into(),
            identity,
            validity: Duration::from_secs(24 * 3600),
            renew_fraction: 0.5,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            cert_secret: DEFAULT_CERT_SECRET.into(),
            root_secret: ROOT_CA_SECRET.into(),
        }
    }
}

/// A signed workload certificate.
#[derive(Debug, Clone)]
pub struct IssuedWorkloadCert {
    /// Leaf first, then intermediates (the root is not included).
    pub chain_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
    /// The root certificate (last element of the CA's answer).
    pub root_pem: String,
    /// Validity of the leaf, seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
}

impl IssuedWorkloadCert {
    /// When to renew: `fraction` of the way through the lifetime.
    pub fn renew_at(&self, fraction: f64) -> SystemTime {
        let life = (self.not_after - self.not_before).max(0) as f64;
        let at = self.not_before as f64 + life * fraction.clamp(0.0, 1.0);
        UNIX_EPOCH + Duration::from_secs_f64(at.max(0.0))
    }

    /// The certificate as SDS would deliver it, the way pilot-agent's SDS server does: the
    /// trust bundle first (`root_secret`, a validation context with the root), then the
    /// workload certificate (`cert_secret`, chain and key).
    pub fn sds_secrets(&self, cert_secret: &str, root_secret: &str) -> Vec<Secret> {
        fn inline(s: &str) -> Option<DataSource> {
            Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(s.to_string())),
                ..Default::default()
            })
        }
        vec![
            Secret {
                name: root_secret.to_string(),
                r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
                    trusted_ca: inline(&self.root_pem),
                    ..Default::default()
                })),
            },
            Secret {
                name: cert_secret.to_string(),
                r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                    certificate_chain: inline(&self.chain_pem),
                    private_key: inline(&self.key_pem),
                    ..Default::default()
                })),
            },
        ]
    }
}

/// The client. Cheap to clone; the gRPC channel connects lazily and reconnects on demand.
#[derive(Debug, Clone)]
pub struct CaClient {
    cfg: Arc<CaClientConfig>,
    client: IstioCertificateServiceClient<Channel>,
}

fn split_address(address: &str) -> Result<(String, u16), CaError> {
    let rest = address.strip_prefix("https://").unwrap_or(address).trim_end_matches('/');
    if rest.contains("://") {
        return Err(CaError::Config(format!("address {address:?}: only https:// (or no scheme) is supported")));
    }
    let (host, port) =
        rest.rsplit_once(':').ok_or_else(|| CaError::Config(format!("address {address:?} has no port")))?;
    let port: u16 = port.parse().map_err(|_| CaError::Config(format!("address {address:?} has an invalid port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(CaError::Config(format!("address {address:?} has no host")));
    }
    Ok((host.to_string(), port))
}

impl CaClient {
    pub fn new(cfg: CaClientConfig) -> Result<Self, CaError> {
        if !(cfg.renew_fraction > 0.0 && cfg.renew_fraction < 1.0) {
            return Err(CaError::Config(format!("renew_fraction {} must be between 0 and 1", cfg.renew_fraction)));
        }
        let (host, port) = split_address(&cfg.address)?;
        let name = cfg.tls_server_name.clone().unwrap_or_else(|| host.clone());
        let server_name = ServerName::try_from(name.clone())
            .map_err(|e| CaError::Config(format!("tls_server_name {name:?}: {e}")))?;

        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_slice_iter(&cfg.ca_root_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CaError::Config(format!("CA root: invalid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(CaError::Config("CA root: no PEM certificate".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| CaError::Config(format!("CA root: {e}")))?;
        }
        let mut tls = ClientConfig::builder_with_provider(Arc::new(base_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| CaError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));

        let connect = tower::service_fn(move |uri: http::Uri| {
            let connector = connector.clone();
            let server_name = server_name.clone();
            async move {
                let host = uri
                    .host()
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                let port = uri.port_u16().unwrap_or(443);
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        });
        let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        // The connector does TLS itself; "http" keeps tonic from wanting its own TLS, while the
        // origin makes requests carry :scheme https and the CA's authority.
        let origin: http::Uri = format!("https://{authority}")
            .parse()
            .map_err(|e| CaError::Config(format!("address {:?}: {e}", cfg.address)))?;
        let endpoint = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| CaError::Config(format!("address {:?}: {e}", cfg.address)))?
            .origin(origin)
            .connect_timeout(cfg.request_timeout)
            .timeout(cfg.request_timeout);
        let channel = endpoint.connect_with_connector_lazy(connect);
        Ok(CaClient { cfg: Arc::new(cfg), client: IstioCertificateServiceClient::new(channel) })
    }

    pub fn config(&self) -> &CaClientConfig {
        &self.cfg
    }

    /// One round trip: new key, CSR, signature, checks.
    pub async fn request(&self) -> Result<IssuedWorkloadCert, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(self.cfg.identity.as_str().try_into()?)];
        let csr = params.serialize_request(&key)?.pem()?;

        let mut req = tonic::Request::new(pb::IstioCertificateRequest {
            csr,
            validity_duration: self.cfg.validity.as_secs() as i64,
            metadata: None,
        });
        if let Some(path) = &self.cfg.token_path {
            let token = tokio::fs::read_to_string(path)
                .await
                .map_err(|source| CaError::Token { path: path.clone(), source })?;
            let value = format!("Bearer {}", token.trim())
                .parse()
                .map_err(|_| CaError::Config(format!("token in {} is not ASCII", path.display())))?;
            req.metadata_mut().insert("authorization", value);
        }
        if !self.cfg.cluster_id.is_empty() {
            let value = self
                .cfg
                .cluster_id
                .parse()
                .map_err(|_| CaError::Config(format!("cluster id {:?} is not ASCII", self.cfg.cluster_id)))?;
            req.metadata_mut().insert("clusterid", value);
        }
        let resp = self.client.clone().create_certificate(req).await?.into_inner();
        self.check_response(resp.cert_chain, key.serialize_pem())
    }

    fn check_response(&self, chain: Vec<String>, key_pem: String) -> Result<IssuedWorkloadCert, CaError> {
        let bad = |m: String| CaError::Response(m);
        if chain.is_empty() {
            return Err(bad("empty cert_chain".into()));
        }
        let mut ders = Vec::new();
        for (i, pem) in chain.iter().enumerate() {
            let mut certs = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("cert_chain[{i}]: invalid PEM: {e}")))?;
            if certs.is_empty() {
                return Err(bad(format!("cert_chain[{i}]: no certificate")));
            }
            ders.append(&mut certs);
        }
        let leaf = PeerIdentity::from_der(&ders[0]).map_err(|e| bad(format!("leaf certificate: {e}")))?;
        if leaf.spiffe.as_ref() != Some(&self.cfg.identity) {
            return Err(bad(format!("leaf certificate is for {:?}, requested {}", leaf.uri_sans, self.cfg.identity)));
        }
        // Root: the last element; a one-element answer is a self-signed leaf, which is useless.
        let (root, rest) = ders.split_last().ok_or_else(|| bad("empty cert_chain".into()))?;
        if rest.is_empty() {
            return Err(bad("cert_chain has no root after the leaf".into()));
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root.clone()).map_err(|e| bad(format!("root certificate: {e}")))?;
        let parsed =
            rustls::server::ParsedCertificate::try_from(&rest[0]).map_err(|e| bad(format!("leaf certificate: {e}")))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &rest[1..],
            rustls_pki_types::UnixTime::now(),
            base_provider().signature_verification_algorithms.all,
        )
        .map_err(|e| bad(format!("leaf does not verify against the returned root: {e}")))?;

        let not_before = {
            let (_, c) = x509_parser::parse_x509_certificate(rest[0].as_ref())
                .map_err(|e| bad(format!("leaf certificate: {e}")))?;
            c.validity().not_before.timestamp()
        };
        let n = chain.len();
        let chain_pem: String = chain[..n - 1]
            .iter()
            .map(|p| {
                let mut p = p.trim_end().to_string();
                p.push('\n');
                p
            })
            .collect();
        Ok(IssuedWorkloadCert {
            chain_pem,
            key_pem,
            root_pem: chain[n - 1].clone(),
            not_before,
            not_after: leaf.not_after,
        })
    }

    /// Requests a certificate and writes it and the root into `store`.
    pub async fn refresh(&self, store: &SecretStore) -> Result<IssuedWorkloadCert, CaError> {
        let issued = self.request().await?;
        self.install(store, &issued)?;
        Ok(issued)
    }

    /// Writes `issued` into `store` as one update (all or nothing).
    fn install(&self, store: &SecretStore, issued: &IssuedWorkloadCert) -> Result<(), TlsError> {
        let mut compiled = Vec::new();
        for s in issued.sds_secrets(&self.cfg.cert_secret, &self.cfg.root_secret) {
            let c = CompiledSecret::from_proto(&s, &format!("secret {:?}", s.name))?;
            compiled.push((s.name, c));
        }
        store.set(compiled);
        Ok(())
    }

    /// Keeps the certificate fresh in `store` until `shutdown` completes: renews at
    /// `renew_fraction` of each certificate's lifetime, retrying failures with backoff (never
    /// past the point where it would be useless to wait: a retry is always scheduled).
    pub async fn run(self, store: SecretStore, shutdown: impl std::future::Future<Output = ()>) {
        let client = self.clone();
        self.run_with(move |issued| client.install(&store, issued).map_err(|e| e.to_string()), shutdown).await
    }

    /// [`run`](Self::run), handing each new certificate to `install` instead of a store. An
    /// error from `install` counts as a failed renewal (retried with backoff).
    pub async fn run_with(
        self,
        mut install: impl FnMut(&IssuedWorkloadCert) -> Result<(), String>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut delay = self.cfg.retry_initial;
        loop {
            let result = match self.request().await {
                Ok(issued) => install(&issued).map(|()| issued).map_err(|e| format!("installing the certificate: {e}")),
                Err(e) => Err(e.to_string()),
            };
            let wait = match result {
                Ok(issued) => {
                    delay = self.cfg.retry_initial;
                    let at = issued.renew_at(self.cfg.renew_fraction);
                    // Floor: a CA handing out nearly expired certificates must not make us spin.
                    let wait = at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO).max(MIN_RENEW_WAIT);
                    tracing::info!(
                        identity = %self.cfg.identity,
                        renew_in_secs = wait.as_secs(),
                        "workload certificate issued"
                    );
                    wait
                }
                Err(e) => {
                    let wait = jitter(delay);
                    tracing::warn!(
                        identity = %self.cfg.identity,
                        retry_in_ms = wait.as_millis() as u64,
                        "CA request failed: {e}"
                    );
                    delay = (delay * 2).min(self.cfg.retry_max);
                    wait
                }
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// Shortest wait between two successful renewals.
const MIN_RENEW_WAIT: Duration = Duration::from_secs(1);

/// `d` scaled by a random factor in [0.8, 1.2).
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.8 + fastrand::f64() * 0.4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            split_address("istiod.istio-system.svc:15012").unwrap(),
            ("istiod.istio-system.svc".to_string(), 15012)
        );
        assert_eq!(split_address("https://127.0.0.1:15012/").unwrap(), ("127.0.0.1".to_string(), 15012));
        assert_eq!(split_address("[::1]:15012").unwrap(), ("::1".to_string(), 15012));
        assert!(split_address("http://x:1").is_err());
        assert!(split_address("x").is_err());
        assert!(split_address(":1").is_err());
    }

    #[test]
    fn renewal_point() {
        let c = IssuedWorkloadCert {
            chain_pem: String::new(),
            key_pem: String::new(),
            root_pem: String::new(),
            not_before: 1000,
            not_after: 2000,
        };
        assert_eq!(c.renew_at(0.5), UNIX_EPOCH + Duration::from_secs(1500));
        assert_eq!(c.renew_at(0.8), UNIX_EPOCH + Duration::from_secs(1800));
    }

    #[test]
    fn bad_fraction_is_rejected() {
        let mut cfg = CaClientConfig::new("127.0.0.1:1", Vec::new(), SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap());
        cfg.renew_fraction = 1.5;
        assert!(matches!(CaClient::new(cfg), Err(CaError::Config(_))));
    }
}
