//! Downstream (server side) TLS: `DownstreamTlsContext` -> rustls `ServerConfig`.
//!
//! One `ServerTlsConfig` per filter chain. Its rustls configs are built once; the certificate
//! resolver and client verifier read SDS secrets on each handshake, so rotation needs no
//! rebuild. Two configs are kept, with and without ALPN, because Envoy (BoringSSL) continues a
//! handshake without ALPN when the client's list shares nothing with ours, where rustls would
//! abort: [`ServerTlsConfig::accept`] and [`ServerTlsConfig::config_for`] pick per ClientHello.

use std::io;
use std::sync::Arc;

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, downstream_tls_context,
};
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite};

use super::certificate::{CertSource, alpn, cert_sources, check_common_unsupported};
use super::matcher::dns_name_match;
use super::params::{self, Side};
use super::resumption::{ServerSessions, Tickets};
use super::validation::{DownstreamVerifier, ValidationSource};
use super::{Readiness, TlsError};
use crate::SecretStore;

/// Session-ID cache entries per server config (rustls' default).
const SERVER_SESSION_CACHE_SIZE: usize = 256;

/// A compiled `DownstreamTlsContext`.
#[derive(Debug)]
pub struct ServerTlsConfig {
    with_alpn: Arc<ServerConfig>,
    without_alpn: Arc<ServerConfig>,
    alpn: Vec<Vec<u8>>,
    resolver: Arc<ServerCertResolver>,
    verifier: Arc<DownstreamVerifier>,
    store: SecretStore,
    warnings: Vec<String>,
}

impl ServerTlsConfig {
    /// Compiles `ctx`. Secrets it names through SDS need not be present yet: check
    /// [`readiness`](Self::readiness) before serving (Envoy keeps the listener warming).
    pub fn from_proto(ctx: &DownstreamTlsContext, store: &SecretStore) -> Result<Self, TlsError> {
        let default_common = CommonTlsContext::default();
        let common = ctx.common_tls_context.as_ref().unwrap_or(&default_common);
        let field = "common_tls_context";
        check_common_unsupported(common, field)?;

        if let Some(kind) = &ctx.session_ticket_keys_type {
            match kind {
                downstream_tls_context::SessionTicketKeysType::SessionTicketKeys(_) => {
                    return Err(TlsError::unsupported(
                        "session_ticket_keys",
                        "configured session ticket keys (remora generates and rotates its own)",
                    ));
                }
                downstream_tls_context::SessionTicketKeysType::SessionTicketKeysSdsSecretConfig(_) => {
                    return Err(TlsError::unsupported(
                        "session_ticket_keys_sds_secret_config",
                        "session ticket keys from SDS",
                    ));
                }
                downstream_tls_context::SessionTicketKeysType::DisableStatelessSessionResumption(_) => {}
            }
        }
        if ctx.session_timeout.is_some() {
            return Err(TlsError::unsupported("session_timeout", "a custom TLS session lifetime"));
        }
        match downstream_tls_context::OcspStaplePolicy::try_from(ctx.ocsp_staple_policy) {
            Ok(downstream_tls_context::OcspStaplePolicy::LenientStapling) => {}
            _ => {
                return Err(TlsError::unsupported(
                    "ocsp_staple_policy",
                    "OCSP stapling policies other than LENIENT_STAPLING",
                ));
            }
        }

        let sources = cert_sources(common, store, field)?;
        if sources.is_empty() {
            return Err(TlsError::invalid(
                field,
                "no TLS certificate: set tls_certificates or tls_certificate_sds_secret_configs",
            ));
        }
        let params = params::compile(common.tls_params.as_ref(), Side::Server, &format!("{field}.tls_params"))?;
        let validation = ValidationSource::from_common(common, store, field)?;
        let require_client_cert = ctx.require_client_certificate.is_some_and(|b| b.value);
        let verifier = Arc::new(DownstreamVerifier::new(validation, require_client_cert));
        let resolver = Arc::new(ServerCertResolver { sources, require_sni: ctx.require_sni.is_some_and(|b| b.value) });

        let mut cfg = ServerConfig::builder_with_provider(params.provider.clone())
            .with_protocol_versions(&params.versions)
            .map_err(|source| TlsError::Rustls { field: format!("{field}.tls_params"), source })?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(resolver.clone());
        cfg.ignore_client_order = !ctx.prefer_client_ciphers;
        let stateless_disabled = matches!(
            ctx.session_ticket_keys_type,
            Some(downstream_tls_context::SessionTicketKeysType::DisableStatelessSessionResumption(true))
        );
        // Resumption state is dropped whenever secrets change, as Envoy's context rebuild does.
        if !stateless_disabled {
            cfg.ticketer = Arc::new(Tickets::new(store)?);
        }
        cfg.session_storage = if ctx.disable_stateful_session_resumption {
            Arc::new(rustls::server::NoServerSessionStorage {})
        } else {
            match ServerSessions::new(store, SERVER_SESSION_CACHE_SIZE) {
                Some(s) => Arc::new(s),
                None => Arc::new(rustls::server::NoServerSessionStorage {}),
            }
        };
        let without_alpn = Arc::new(cfg.clone());
        let alpn = alpn(common);
        cfg.alpn_protocols = alpn.clone();

        Ok(ServerTlsConfig {
            with_alpn: Arc::new(cfg),
            without_alpn,
            alpn,
            resolver,
            verifier,
            store: store.clone(),
            warnings: params.warnings,
        })
    }

    /// The rustls config (with ALPN). Prefer [`accept`](Self::accept) or
    /// [`config_for`](Self::config_for), which follow Envoy on ALPN mismatch.
    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.with_alpn
    }

    /// The config to use for this ClientHello: without ALPN if the client offered protocols
    /// and none is ours (the handshake then continues without ALPN, as in Envoy).
    pub fn config_for(&self, hello: &ClientHello<'_>) -> Arc<ServerConfig> {
        if self.alpn.is_empty() {
            return self.with_alpn.clone();
        }
        match hello.alpn() {
            Some(mut offered) => {
                if offered.any(|p| self.alpn.iter().any(|ours| ours.as_slice() == p)) {
                    self.with_alpn.clone()
                } else {
                    self.without_alpn.clone()
                }
            }
            None => self.with_alpn.clone(),
        }
    }

    /// Runs the server handshake on `io`.
    pub async fn accept<IO>(&self, io: IO) -> io::Result<tokio_rustls::server::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
        let cfg = self.config_for(&start.client_hello());
        start.into_stream(cfg).await
    }

    /// Whether every secret this config names is present.
    pub fn readiness(&self) -> Readiness {
        let mut missing: Vec<String> = self
            .resolver
            .sources
            .iter()
            .filter(|s| s.load().is_none())
            .filter_map(|s| s.secret_name().map(str::to_string))
            .collect();
        if !self.verifier.source.is_ready() {
            missing.extend(self.verifier.source.secret_name().map(str::to_string));
        }
        if missing.is_empty() { Readiness::Ready } else { Readiness::Warming { missing } }
    }

    /// Waits until [`readiness`](Self::readiness) is `Ready`.
    pub async fn ready(&self) {
        let mut rx = self.store.subscribe();
        while !self.readiness().is_ready() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Settings that were narrowed to what rustls implements (e.g. skipped cipher suites).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The ALPN protocols offered, in preference order.
    pub fn alpn_protocols(&self) -> &[Vec<u8>] {
        &self.alpn
    }
}

/// Picks the server certificate per handshake from the current secrets.
#[derive(Debug)]
struct ServerCertResolver {
    sources: Vec<CertSource>,
    require_sni: bool,
}

impl ResolvesServerCert for ServerCertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name();
        if self.require_sni && sni.is_none() {
            tracing::debug!("TLS handshake refused: require_sni is set and the client sent none");
            return None;
        }
        if let [only] = self.sources.as_slice() {
            return only.load().map(|c| c.certified.clone());
        }
        // Several certificates: prefer one whose DNS SANs match the SNI and whose key the client
        // can use, then any usable one, then the first (as Envoy falls back to its default).
        let schemes = hello.signature_schemes();
        let current: Vec<_> = self.sources.iter().filter_map(|s| s.load()).collect();
        let usable = |c: &&Arc<super::CertificateSecret>| c.certified.key.choose_scheme(schemes).is_some();
        if let Some(sni) = sni
            && let Some(c) =
                current.iter().filter(usable).find(|c| c.identity().dns_sans.iter().any(|san| dns_name_match(sni, san)))
        {
            return Some(c.certified.clone());
        }
        current.iter().find(usable).or(current.first()).map(|c| c.certified.clone())
    }
}
