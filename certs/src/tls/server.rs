//! Downstream (server side) TLS: `DownstreamTlsContext` -> rustls `ServerConfig`.
//!
//! One `ServerTlsConfig` per filter chain. The certificate resolver and client verifier read
//! SDS secrets on each handshake, so rotation needs no rebuild of anything that matters for
//! security. Two rustls configs are kept, with and without ALPN, because Envoy (BoringSSL)
//! continues a handshake without ALPN when the client's list shares nothing with ours, where
//! rustls would abort: [`ServerTlsConfig::accept`] and [`ServerTlsConfig::config_for`] pick per
//! ClientHello. The pair is rebuilt (lazily, at the next handshake) when the secrets change and
//! the trust bundle comes from SDS, because the CA names sent in a `CertificateRequest` are
//! read by reference from the config.

use std::io;
use std::sync::Arc;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{DownstreamTlsContext, downstream_tls_context};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite};

use super::certificate::{CertSource, alpn, cert_sources, check_common_unsupported};
use super::matcher::dns_name_match;
use super::params::{self, Side};
use super::resumption::{ServerSessions, Tickets};
use super::validation::{DownstreamValidation, DownstreamVerifier, ValidationSource};
use super::{CertificateSecret, Readiness, Secrets, TlsError};
use crate::SecretStore;

/// Session-ID cache entries per server config (rustls' default).
const SERVER_SESSION_CACHE_SIZE: usize = 256;

/// Envoy's error for a server context without certificates.
const NO_CERTIFICATES: &str = "No TLS certificates found for server context";

/// A compiled `DownstreamTlsContext`.
#[derive(Debug)]
pub struct ServerTlsConfig {
    built: ArcSwap<Built>,
    template: Template,
    alpn: Vec<Vec<u8>>,
    resolver: Arc<ServerCertResolver>,
    validation: Arc<DownstreamValidation>,
    store: SecretStore,
    warnings: Vec<String>,
}

/// The rustls configs of one secret epoch.
#[derive(Debug)]
struct Built {
    epoch: u64,
    with_alpn: Arc<ServerConfig>,
    without_alpn: Arc<ServerConfig>,
}

/// What every rebuild of the rustls configs shares.
#[derive(Debug)]
struct Template {
    provider: Arc<rustls::crypto::CryptoProvider>,
    versions: Vec<&'static SupportedProtocolVersion>,
    ignore_client_order: bool,
    /// None: stateless resumption disabled.
    ticketer: Option<Arc<dyn ProducesTickets>>,
    session_storage: Arc<dyn StoresServerSessions>,
    /// The CA names can change with the secrets (the trust bundle comes from SDS).
    dynamic_ca_names: bool,
}

impl ServerTlsConfig {
    /// Compiles `ctx`. Secrets it names through SDS need not be present yet: check
    /// [`readiness`](Self::readiness) before serving (Envoy keeps the listener warming).
    pub fn from_proto(ctx: &DownstreamTlsContext, store: &SecretStore) -> Result<Self, TlsError> {
        let field = "common_tls_context";
        let Some(common) = ctx.common_tls_context.as_ref() else {
            return Err(TlsError::invalid(field, NO_CERTIFICATES));
        };
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
            return Err(TlsError::invalid(field, NO_CERTIFICATES));
        }
        let params = params::compile(common.tls_params.as_ref(), Side::Server, &format!("{field}.tls_params"))?;
        let validation = ValidationSource::from_common(common, store, field)?;
        let require_client_cert = ctx.require_client_certificate.is_some_and(|b| b.value);
        if require_client_cert && !validation.is_configured() {
            // Envoy accepts this and then neither requests nor checks a client certificate;
            // remora refuses a requirement it could not enforce.
            return Err(TlsError::invalid(
                "require_client_certificate",
                "needs a validation context with a trusted CA to verify the client certificate",
            ));
        }
        let dynamic_ca_names = validation.is_dynamic();
        let validation = Arc::new(DownstreamValidation { source: validation, require_client_cert });
        let resolver = Arc::new(ServerCertResolver { sources, require_sni: ctx.require_sni.is_some_and(|b| b.value) });

        let stateless_disabled = matches!(
            ctx.session_ticket_keys_type,
            Some(downstream_tls_context::SessionTicketKeysType::DisableStatelessSessionResumption(true))
        );
        // Resumption state is dropped whenever secrets change, as Envoy's context rebuild does.
        let ticketer: Option<Arc<dyn ProducesTickets>> =
            if stateless_disabled { None } else { Some(Arc::new(Tickets::new(store)?)) };
        let session_storage: Arc<dyn StoresServerSessions> = if ctx.disable_stateful_session_resumption {
            Arc::new(rustls::server::NoServerSessionStorage {})
        } else {
            match ServerSessions::new(store, SERVER_SESSION_CACHE_SIZE) {
                Some(s) => Arc::new(s),
                None => Arc::new(rustls::server::NoServerSessionStorage {}),
            }
        };
        let template = Template {
            provider: params.provider.clone(),
            versions: params.versions.clone(),
            ignore_client_order: !ctx.prefer_client_ciphers,
            ticketer,
            session_storage,
            dynamic_ca_names,
        };
        let alpn = alpn(common);
        let built = build(&template, &alpn, &resolver, &validation, store.epoch())
            .map_err(|source| TlsError::Rustls { field: format!("{field}.tls_params"), source })?;

        Ok(ServerTlsConfig {
            built: ArcSwap::from_pointee(built),
            template,
            alpn,
            resolver,
            validation,
            store: store.clone(),
            warnings: params.warnings,
        })
    }

    /// The rustls configs for a handshake starting now.
    fn current(&self) -> Arc<Built> {
        let built = self.built.load_full();
        if !self.template.dynamic_ca_names {
            return built;
        }
        let epoch = self.store.epoch();
        if built.epoch == epoch {
            return built;
        }
        match build(&self.template, &self.alpn, &self.resolver, &self.validation, epoch) {
            Ok(b) => {
                let b = Arc::new(b);
                self.built.store(b.clone());
                b
            }
            Err(e) => {
                // Cannot happen (the same inputs built at config time); keep the old CA names.
                tracing::warn!("rebuilding the TLS server config: {e}");
                built
            }
        }
    }

    /// The rustls config (with ALPN). Prefer [`accept`](Self::accept) or
    /// [`config_for`](Self::config_for), which follow Envoy on ALPN mismatch.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current().with_alpn.clone()
    }

    /// The config to use for this ClientHello: without ALPN if the client offered protocols
    /// and none is ours (the handshake then continues without ALPN, as in Envoy).
    pub fn config_for(&self, hello: &ClientHello<'_>) -> Arc<ServerConfig> {
        let built = self.current();
        if self.alpn.is_empty() {
            return built.with_alpn.clone();
        }
        match hello.alpn() {
            Some(mut offered) => {
                if offered.any(|p| self.alpn.iter().any(|ours| ours.as_slice() == p)) {
                    built.with_alpn.clone()
                } else {
                    built.without_alpn.clone()
                }
            }
            None => built.with_alpn.clone(),
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

    fn secrets(&self) -> Secrets<'_> {
        Secrets { certs: &self.resolver.sources, validation: &self.validation.source }
    }

    /// Whether every secret this config names is present: [`readiness`](Self::readiness)
    /// without the names, no allocation (for a check per connection).
    pub fn is_ready(&self) -> bool {
        self.secrets().is_ready()
    }

    /// The SDS secret names this config reads (certificates first, then the validation
    /// context), present or not.
    pub fn secret_names(&self) -> Vec<String> {
        self.secrets().names()
    }

    /// The first configured certificate as it is now (the default one when there are
    /// several): our identity, e.g. for `%DOWNSTREAM_LOCAL_URI_SAN%`.
    pub fn certificate(&self) -> Option<Arc<CertificateSecret>> {
        self.resolver.sources.first().and_then(|s| s.load())
    }

    /// Whether every secret this config names is present.
    pub fn readiness(&self) -> Readiness {
        self.secrets().readiness()
    }

    /// Waits until [`readiness`](Self::readiness) is `Ready`.
    pub async fn ready(&self) {
        self.secrets().wait(&self.store).await
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

/// Builds the pair of rustls configs (with and without ALPN) with the CA names of now.
fn build(
    t: &Template,
    alpn: &[Vec<u8>],
    resolver: &Arc<ServerCertResolver>,
    validation: &Arc<DownstreamValidation>,
    epoch: u64,
) -> Result<Built, rustls::Error> {
    let verifier = Arc::new(DownstreamVerifier::new(validation.clone()));
    let mut cfg = ServerConfig::builder_with_provider(t.provider.clone())
        .with_protocol_versions(&t.versions)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver.clone());
    cfg.ignore_client_order = t.ignore_client_order;
    if let Some(ticketer) = &t.ticketer {
        cfg.ticketer = ticketer.clone();
    }
    cfg.session_storage = t.session_storage.clone();
    let without_alpn = Arc::new(cfg.clone());
    cfg.alpn_protocols = alpn.to_vec();
    Ok(Built { epoch, with_alpn: Arc::new(cfg), without_alpn })
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
        let usable = |c: &&Arc<CertificateSecret>| c.certified.key.choose_scheme(schemes).is_some();
        if let Some(sni) = sni
            && let Some(c) =
                current.iter().filter(usable).find(|c| c.identity().dns_sans.iter().any(|san| dns_name_match(sni, san)))
        {
            return Some(c.certified.clone());
        }
        current.iter().find(usable).or(current.first()).map(|c| c.certified.clone())
    }
}
