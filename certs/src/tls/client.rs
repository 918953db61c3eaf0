//! Upstream (client side) TLS: `UpstreamTlsContext` -> rustls `ClientConfig` + `ServerName`.
//!
//! One `ClientTlsConfig` per cluster (or per transport socket match). The client certificate
//! and the validation context are read from the secret store per handshake. The server name
//! only decides the SNI sent: hostnames are never verified unless SAN matchers (or
//! `auto_sni_san_validation`) say so, as in Envoy.

use std::io;
use std::sync::Arc;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{CommonTlsContext, UpstreamTlsContext};
use rustls::ClientConfig;
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::sign::CertifiedKey;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

use super::certificate::{CertSource, alpn, cert_sources, check_common_unsupported};
use super::params::{self, Side};
use super::resumption::ClientSessions;
use super::validation::{UpstreamVerifier, ValidationSource};
use super::{Readiness, Secrets, TlsError};
use crate::SecretStore;

/// Most ALPN variants kept per context (they come from config, so there are few).
const MAX_ALPN_VARIANTS: usize = 8;

/// The config with another ALPN list, by list.
type AlpnVariants = Vec<(Vec<Vec<u8>>, Arc<ClientConfig>)>;

/// A compiled `UpstreamTlsContext`.
#[derive(Debug)]
pub struct ClientTlsConfig {
    config: Arc<ClientConfig>,
    alpn_variants: ArcSwap<AlpnVariants>,
    sni: Option<ServerName<'static>>,
    auto_host_sni: bool,
    resolver: Arc<ClientCertResolver>,
    verifier: Arc<UpstreamVerifier>,
    store: SecretStore,
    warnings: Vec<String>,
}

/// The name used when no SNI is to be sent: rustls sends no SNI for an IP address, and the
/// verifier ignores names unless `auto_sni_san_validation` is on (which needs a DNS name).
fn no_sni() -> ServerName<'static> {
    ServerName::from(std::net::Ipv4Addr::UNSPECIFIED)
}

impl ClientTlsConfig {
    /// Compiles `ctx`. Secrets named through SDS need not be present yet: check
    /// [`readiness`](Self::readiness) (Envoy keeps the cluster warming).
    #[allow(deprecated)] // enforce_rsa_key_usage is checked on purpose
    pub fn from_proto(ctx: &UpstreamTlsContext, store: &SecretStore) -> Result<Self, TlsError> {
        let default_common = CommonTlsContext::default();
        let common = ctx.common_tls_context.as_ref().unwrap_or(&default_common);
        let field = "common_tls_context";
        check_common_unsupported(common, field)?;
        if ctx.enforce_rsa_key_usage.is_some_and(|b| b.value) {
            return Err(TlsError::unsupported("enforce_rsa_key_usage", "enforcing the RSA key usage extension"));
        }

        let mut sources = cert_sources(common, store, field)?;
        if sources.len() > 1 {
            return Err(TlsError::invalid(field, "multiple TLS certificates are not supported for client contexts"));
        }
        let params = params::compile(common.tls_params.as_ref(), Side::Client, &format!("{field}.tls_params"))?;
        let validation = ValidationSource::from_common(common, store, field)?;
        if ctx.auto_sni_san_validation && matches!(validation, ValidationSource::None) {
            return Err(TlsError::invalid(
                "auto_sni_san_validation",
                "'auto_sni_san_validation' was configured without configuring a trusted CA",
            ));
        }
        let sni = if ctx.sni.is_empty() {
            None
        } else {
            if ctx.sni.len() > 255 || ctx.sni.contains('\0') {
                return Err(TlsError::invalid("sni", "must be at most 255 bytes without NUL"));
            }
            Some(
                ServerName::try_from(ctx.sni.clone())
                    .map_err(|e| TlsError::invalid("sni", format!("{:?} is not a valid server name: {e}", ctx.sni)))?,
            )
        };

        let verifier = Arc::new(UpstreamVerifier::new(validation, ctx.auto_sni_san_validation));
        let resolver = Arc::new(ClientCertResolver { source: sources.pop() });
        let mut cfg = ClientConfig::builder_with_provider(params.provider.clone())
            .with_protocol_versions(&params.versions)
            .map_err(|source| TlsError::Rustls { field: format!("{field}.tls_params"), source })?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_cert_resolver(resolver.clone());
        cfg.alpn_protocols = alpn(common);
        // Envoy sends SNI only when configured (or taken from the host with auto_host_sni).
        cfg.enable_sni = sni.is_some() || ctx.auto_host_sni;
        // Envoy's default is one session key; the cache is dropped whenever secrets change, as
        // Envoy's context rebuild does.
        let size = ctx.max_session_keys.map_or(1, |v| v.value as usize);
        cfg.resumption = match ClientSessions::new(store, size) {
            Some(s) if size > 0 => Resumption::store(Arc::new(s)),
            _ => Resumption::disabled(),
        };
        // Renegotiation is never performed by rustls; `allow_renegotiation` only permits it.

        Ok(ClientTlsConfig {
            config: Arc::new(cfg),
            alpn_variants: ArcSwap::from_pointee(Vec::new()),
            sni,
            auto_host_sni: ctx.auto_host_sni,
            resolver,
            verifier,
            store: store.clone(),
            warnings: params.warnings,
        })
    }

    /// The rustls config, shared by every handshake of this context.
    pub fn client_config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// The rustls config offering `alpn` instead of the context's ALPN list (Istio's ALPN
    /// override); everything else, session cache included, is shared with
    /// [`client_config`](Self::client_config). Built once per list.
    pub fn client_config_with_alpn(&self, alpn: &[Vec<u8>]) -> Arc<ClientConfig> {
        if alpn == self.config.alpn_protocols.as_slice() {
            return self.config.clone();
        }
        if let Some((_, cfg)) = self.alpn_variants.load().iter().find(|(a, _)| a.as_slice() == alpn) {
            return cfg.clone();
        }
        let mut cfg = ClientConfig::clone(&self.config);
        cfg.alpn_protocols = alpn.to_vec();
        let cfg = Arc::new(cfg);
        self.alpn_variants.rcu(|variants| {
            let mut v = AlpnVariants::clone(variants);
            if !v.iter().any(|(a, _)| a.as_slice() == alpn) {
                if v.len() >= MAX_ALPN_VARIANTS {
                    v.remove(0);
                }
                v.push((alpn.to_vec(), cfg.clone()));
            }
            v
        });
        cfg
    }

    /// The server name for a connection. `host_name` is the upstream host's hostname when
    /// known (DNS clusters, or `hostname` on the endpoint); it is used only with
    /// `auto_host_sni`. Otherwise the configured `sni`, else no SNI at all.
    pub fn server_name(&self, host_name: Option<&str>) -> ServerName<'static> {
        if self.auto_host_sni
            && let Some(name) = host_name.and_then(|h| ServerName::try_from(h.to_string()).ok())
        {
            return name;
        }
        self.sni.clone().unwrap_or_else(no_sni)
    }

    /// The SNI this config sends without a host name, if any.
    pub fn sni(&self) -> Option<&ServerName<'static>> {
        self.sni.as_ref()
    }

    /// Runs the client handshake on `io`.
    pub async fn connect<IO>(&self, host_name: Option<&str>, io: IO) -> io::Result<tokio_rustls::client::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        tokio_rustls::TlsConnector::from(self.config.clone()).connect(self.server_name(host_name), io).await
    }

    fn secrets(&self) -> Secrets<'_> {
        Secrets { certs: self.resolver.source.as_slice(), validation: &self.verifier.source }
    }

    /// Whether every secret this config names is present: [`readiness`](Self::readiness)
    /// without the names, no allocation (for a check per connection).
    pub fn is_ready(&self) -> bool {
        self.secrets().is_ready()
    }

    /// The SDS secret names this config reads (the certificate, then the validation
    /// context), present or not.
    pub fn secret_names(&self) -> Vec<String> {
        self.secrets().names()
    }

    /// The ALPN protocols offered, in preference order.
    pub fn alpn_protocols(&self) -> &[Vec<u8>] {
        &self.config.alpn_protocols
    }

    /// Whether every secret this config names is present.
    pub fn readiness(&self) -> Readiness {
        self.secrets().readiness()
    }

    /// Waits until [`readiness`](Self::readiness) is `Ready`.
    pub async fn ready(&self) {
        self.secrets().wait(&self.store).await
    }

    /// Settings that were narrowed to what rustls implements.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// The client certificate, read per handshake.
#[derive(Debug)]
struct ClientCertResolver {
    source: Option<CertSource>,
}

impl ResolvesClientCert for ClientCertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.source.as_ref()?.load().map(|c| c.certified.clone())
    }

    fn has_certs(&self) -> bool {
        self.source.as_ref().is_some_and(|s| s.load().is_some())
    }
}
