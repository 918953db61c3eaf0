//! `DownstreamTlsContext` / `UpstreamTlsContext` → rustls server / client configs.
//!
//! A context names its certificate and trust either inline/by file or by SDS secret name. The
//! rustls config is rebuilt when the secret store's generation moves (rotation applies to the
//! next handshake) and is shared by every handshake in between.

use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, TlsParameters, UpstreamTlsContext, common_tls_context,
    tls_parameters::TlsProtocol,
};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, ServerConfig, SupportedCipherSuite};
use rustls_pki_types::ServerName;

use super::secrets::{CertKey, Secret, SecretStore};
use super::verify::{DownstreamVerifier, UpstreamVerifier, Validation};
use crate::config::ConfigError;

#[derive(Debug, Clone)]
enum CertSource {
    Static(Arc<CertKey>),
    Sds(String),
}

#[derive(Debug, Clone)]
enum ValidationSource {
    None,
    Static(Arc<Validation>),
    Sds(String),
    Combined(Arc<Validation>, String),
}

/// The compiled `CommonTlsContext`.
#[derive(Debug, Clone)]
struct Common {
    certs: Vec<CertSource>,
    validation: ValidationSource,
    alpn: Vec<Vec<u8>>,
    versions: Vec<&'static rustls::SupportedProtocolVersion>,
    suites: Option<Vec<SupportedCipherSuite>>,
    /// Files of file-based SDS (`sds_config.path_config_source`), watched for the secrets.
    sds_files: Vec<std::path::PathBuf>,
    /// The first secret fetched from a config source (not static): Envoy's SDS API name for it.
    dynamic_sds: Option<&'static str>,
}

/// OpenSSL-style cipher suite names Envoy takes, mapped to rustls (TLS 1.2; TLS 1.3 suites are
/// always on, as in Envoy).
fn suite_by_name(name: &str) -> Option<SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite as cs;
    Some(match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-AES128-GCM-SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-ECDSA-AES256-GCM-SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-AES256-GCM-SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-CHACHA20-POLY1305" => cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-RSA-CHACHA20-POLY1305" => cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        _ => return None,
    })
}

fn tls13_suites() -> Vec<SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite as cs;
    vec![cs::TLS13_AES_128_GCM_SHA256, cs::TLS13_AES_256_GCM_SHA384, cs::TLS13_CHACHA20_POLY1305_SHA256]
}

fn params(
    p: Option<&TlsParameters>,
    field: &str,
) -> Result<(Vec<&'static rustls::SupportedProtocolVersion>, Option<Vec<SupportedCipherSuite>>), ConfigError> {
    let Some(p) = p else {
        return Ok((vec![&rustls::version::TLS13, &rustls::version::TLS12], None));
    };
    let v = |x: i32| TlsProtocol::try_from(x).unwrap_or(TlsProtocol::TlsAuto);
    // Envoy's defaults: TLS 1.2 minimum, TLS 1.3 maximum (1.0/1.1 are not offered by rustls).
    let min = match v(p.tls_minimum_protocol_version) {
        TlsProtocol::TlsAuto | TlsProtocol::TlSv10 | TlsProtocol::TlSv11 | TlsProtocol::TlSv12 => 12,
        TlsProtocol::TlSv13 => 13,
    };
    let max = match v(p.tls_maximum_protocol_version) {
        TlsProtocol::TlsAuto | TlsProtocol::TlSv13 => 13,
        TlsProtocol::TlSv12 => 12,
        TlsProtocol::TlSv10 | TlsProtocol::TlSv11 => {
            return Err(ConfigError::new(
                format!("{field}.tls_maximum_protocol_version"),
                "TLS 1.0 and 1.1 are not supported",
            ));
        }
    };
    if min > max {
        return Err(ConfigError::new(field, "tls_minimum_protocol_version is above tls_maximum_protocol_version"));
    }
    let mut versions = Vec::new();
    if max >= 13 {
        versions.push(&rustls::version::TLS13);
    }
    if min <= 12 {
        versions.push(&rustls::version::TLS12);
    }
    let suites = if p.cipher_suites.is_empty() {
        None
    } else {
        let mut s = tls13_suites();
        let mut missing = Vec::new();
        for entry in &p.cipher_suites {
            // `[A|B]` is an equal-preference group.
            for name in entry.trim_start_matches('[').trim_end_matches(']').split('|') {
                match suite_by_name(name) {
                    Some(cs) if !s.contains(&cs) => s.push(cs),
                    Some(_) => {}
                    None => missing.push(name.to_string()),
                }
            }
        }
        let tls12 = s.len() > 3;
        if !tls12 && max == 12 {
            return Err(ConfigError::new(
                format!("{field}.cipher_suites"),
                format!("none of the cipher suites is available (unsupported: {})", missing.join(", ")),
            ));
        }
        if !missing.is_empty() {
            // Offering fewer suites than configured is stricter, never weaker: warn and go on.
            tracing::warn!(target: "remora::config", "{field}.cipher_suites: not available, not offered: {}", missing.join(", "));
        }
        Some(s)
    };
    Ok((versions, suites))
}

fn check_node(api: Option<&'static str>, node: &crate::config::NodeInfo, field: &str) -> Result<(), ConfigError> {
    match api {
        Some(api) if node.id.is_empty() || node.cluster.is_empty() => Err(ConfigError::new(
            field,
            format!(
                "{api}: node 'id' and 'cluster' are required. Set it either in 'node' config or via --service-node and --service-cluster options."
            ),
        )),
        _ => Ok(()),
    }
}

fn compile_common(c: &CommonTlsContext, field: &str) -> Result<Common, ConfigError> {
    let mut certs = Vec::new();
    let mut sds_files = Vec::new();
    let mut dynamic_sds = None;
    let mut sds_file = |s: &envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SdsSecretConfig,
                        api: &'static str| {
        if let Some(p) = s.sds_config.as_ref().and_then(crate::config::file_source) {
            sds_files.push(p);
        }
        if s.sds_config.is_some() {
            dynamic_sds.get_or_insert(api);
        }
    };
    for (i, t) in c.tls_certificates.iter().enumerate() {
        certs.push(CertSource::Static(Arc::new(CertKey::from_proto(t, &format!("{field}.tls_certificates[{i}]"))?)));
    }
    for (i, s) in c.tls_certificate_sds_secret_configs.iter().enumerate() {
        if s.name.is_empty() {
            return Err(ConfigError::new(
                format!("{field}.tls_certificate_sds_secret_configs[{i}].name"),
                "is required",
            ));
        }
        sds_file(s, "TlsCertificateSdsApi");
        certs.push(CertSource::Sds(s.name.clone()));
    }
    if c.tls_certificate_provider_instance.is_some()
        || c.custom_handshaker.is_some()
        || c.custom_tls_certificate_selector.is_some()
    {
        return Err(ConfigError::new(field, "certificate providers and custom handshakers are not supported"));
    }
    use common_tls_context::ValidationContextType as V;
    let validation = match &c.validation_context_type {
        None => ValidationSource::None,
        Some(V::ValidationContext(v)) => {
            ValidationSource::Static(Arc::new(Validation::from_proto(v, &format!("{field}.validation_context"))?))
        }
        Some(V::ValidationContextSdsSecretConfig(s)) => {
            sds_file(s, "CertificateValidationContextSdsApi");
            ValidationSource::Sds(s.name.clone())
        }
        Some(V::CombinedValidationContext(cv)) => {
            let default = match &cv.default_validation_context {
                Some(v) => Validation::from_proto(
                    v,
                    &format!("{field}.combined_validation_context.default_validation_context"),
                )?,
                None => Validation::default(),
            };
            match &cv.validation_context_sds_secret_config {
                Some(s) => {
                    sds_file(s, "CertificateValidationContextSdsApi");
                    ValidationSource::Combined(Arc::new(default), s.name.clone())
                }
                None if cv.validation_context_certificate_provider_instance.is_some() => {
                    return Err(ConfigError::new(field, "validation certificate providers are not supported"));
                }
                None => ValidationSource::Static(Arc::new(default)),
            }
        }
        Some(_) => return Err(ConfigError::new(field, "validation certificate providers are not supported")),
    };
    let (versions, suites) = params(c.tls_params.as_ref(), &format!("{field}.tls_params"))?;
    Ok(Common {
        certs,
        validation,
        alpn: c.alpn_protocols.iter().map(|a| a.as_bytes().to_vec()).collect(),
        versions,
        suites,
        sds_files,
        dynamic_sds,
    })
}

impl Common {
    fn provider(&self) -> Arc<CryptoProvider> {
        let mut p = rustls::crypto::ring::default_provider();
        if let Some(s) = &self.suites {
            p.cipher_suites = s.clone();
        }
        Arc::new(p)
    }

    /// SDS names this context waits for.
    fn secret_names(&self) -> Vec<String> {
        let mut v: Vec<String> =
            self.certs.iter().filter_map(|c| if let CertSource::Sds(n) = c { Some(n.clone()) } else { None }).collect();
        match &self.validation {
            ValidationSource::Sds(n) | ValidationSource::Combined(_, n) => v.push(n.clone()),
            _ => {}
        }
        v
    }

    fn cert(&self, store: &SecretStore) -> Result<Option<Arc<CertKey>>, String> {
        match self.certs.first() {
            None => Ok(None),
            Some(CertSource::Static(c)) => Ok(Some(c.clone())),
            Some(CertSource::Sds(n)) => match store.get(n) {
                Some(Secret::Certificate(c)) => Ok(Some(c)),
                Some(_) => Err(format!("secret {n} is not a tls_certificate")),
                None => Err(format!("secret {n} has not arrived")),
            },
        }
    }

    fn validation(&self, store: &SecretStore) -> Result<Option<Arc<Validation>>, String> {
        let sds = |n: &str| match store.get(n) {
            Some(Secret::Validation(v)) => Ok(v),
            Some(_) => Err(format!("secret {n} is not a validation_context")),
            None => Err(format!("secret {n} has not arrived")),
        };
        Ok(match &self.validation {
            ValidationSource::None => None,
            ValidationSource::Static(v) => Some(v.clone()),
            ValidationSource::Sds(n) => Some(sds(n)?),
            ValidationSource::Combined(d, n) => Some(Arc::new(Validation::combine(d, sds(n)?.as_ref()))),
        })
    }
}

/// Our certificate for every handshake. Built by hand rather than with rustls' helpers, which
/// refuse X.509 v1 certificates that Envoy (and its examples) accept.
#[derive(Debug)]
struct FixedCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for FixedCert {
    fn resolve(
        &self,
        _issuers: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Loads the key and checks it belongs to the certificate (same public key).
fn certified_key(c: &CertKey, provider: &CryptoProvider) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let signer =
        provider.key_provider.load_private_key(c.key.clone_key()).map_err(|e| format!("unusable private key: {e}"))?;
    if let (Some(pk), Some(leaf)) = (signer.public_key(), c.chain.first()) {
        use x509_parser::prelude::*;
        if let Ok((_, cert)) = X509Certificate::from_der(leaf.as_ref())
            && cert.public_key().raw != pk.as_ref()
        {
            return Err("the private key does not match the certificate".to_string());
        }
    }
    Ok(Arc::new(rustls::sign::CertifiedKey::new(c.chain.clone(), signer)))
}

type Cache<T> = Mutex<Option<(u64, Arc<T>)>>;

/// A client config for one ALPN list at one secret generation.
type AlpnConfig = (Vec<Vec<u8>>, u64, Arc<ClientConfig>);

fn cached<T>(cache: &Cache<T>, generation: u64, build: impl FnOnce() -> Result<T, String>) -> Result<Arc<T>, String> {
    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((g, cfg)) = c.as_ref()
        && *g == generation
    {
        return Ok(cfg.clone());
    }
    let cfg = Arc::new(build()?);
    *c = Some((generation, cfg.clone()));
    Ok(cfg)
}

// === downstream ===

/// A listener filter chain's TLS: builds the rustls server config for each handshake.
#[derive(Debug)]
pub struct ServerTls {
    common: Common,
    require_client_cert: bool,
    store: Arc<SecretStore>,
    cache: Cache<ServerConfig>,
}

impl ServerTls {
    pub fn from_proto(p: &DownstreamTlsContext, store: Arc<SecretStore>, field: &str) -> Result<Self, ConfigError> {
        let Some(c) = &p.common_tls_context else {
            return Err(ConfigError::new(field, "common_tls_context is required"));
        };
        let common = compile_common(c, &format!("{field}.common_tls_context"))?;
        if common.certs.is_empty() {
            return Err(ConfigError::new(
                format!("{field}.common_tls_context"),
                "No TLS certificates found for server context",
            ));
        }
        let require_client_cert = p.require_client_certificate.map(|b| b.value).unwrap_or(false);
        if require_client_cert && matches!(common.validation, ValidationSource::None) {
            return Err(ConfigError::new(
                field,
                "require_client_certificate needs a validation context to verify the client certificate",
            ));
        }
        if p.require_sni.is_some_and(|b| b.value) {
            tracing::debug!("{field}.require_sni: connections without SNI are refused by the filter chain match");
        }
        let tls = ServerTls { common, require_client_cert, store, cache: Mutex::new(None) };
        // Static material is checked now, so a bad file fails the config, not the handshake.
        if tls.secret_names().is_empty() {
            tls.config().map_err(|e| ConfigError::new(field, e))?;
        }
        Ok(tls)
    }

    pub fn secret_names(&self) -> Vec<String> {
        self.common.secret_names()
    }

    /// Files of file-based SDS this context reads its secrets from.
    pub fn secret_files(&self) -> &[std::path::PathBuf] {
        &self.common.sds_files
    }

    /// Envoy refuses secrets from a config source when the node has no id or cluster.
    pub fn check_node(&self, node: &crate::config::NodeInfo, field: &str) -> Result<(), ConfigError> {
        check_node(self.common.dynamic_sds, node, field)
    }

    pub fn ready(&self) -> bool {
        self.secret_names().iter().all(|n| self.store.contains(n))
    }

    /// The config for the next handshake.
    pub fn config(&self) -> Result<Arc<ServerConfig>, String> {
        cached(&self.cache, self.store.generation(), || self.build())
    }

    fn build(&self) -> Result<ServerConfig, String> {
        let provider = self.common.provider();
        let cert = self.common.cert(&self.store)?.ok_or("no certificate")?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&self.common.versions)
            .map_err(|e| e.to_string())?;
        let builder = match self.common.validation(&self.store)? {
            Some(v) => {
                let subjects = v
                    .roots
                    .as_ref()
                    .map(|r| {
                        r.roots.iter().map(|t| rustls::DistinguishedName::in_sequence(t.subject.as_ref())).collect()
                    })
                    .unwrap_or_default();
                builder.with_client_cert_verifier(Arc::new(DownstreamVerifier {
                    validation: v,
                    required: self.require_client_cert,
                    provider: provider.clone(),
                    subjects,
                }))
            }
            None => builder.with_no_client_auth(),
        };
        let mut cfg = builder.with_cert_resolver(Arc::new(FixedCert(certified_key(&cert, &provider)?)));
        cfg.alpn_protocols = self.common.alpn.clone();
        Ok(cfg)
    }

    /// Our own URI SANs (for `%DOWNSTREAM_LOCAL_URI_SAN%`).
    pub fn local_uri_sans(&self) -> Vec<String> {
        self.common.cert(&self.store).ok().flatten().map(|c| c.uri_sans.clone()).unwrap_or_default()
    }
}

// === upstream ===

/// A cluster's TLS: client config, SNI and ALPN for upstream connections.
#[derive(Debug)]
pub struct ClientTls {
    common: Common,
    pub sni: Option<String>,
    store: Arc<SecretStore>,
    cache: Cache<ClientConfig>,
    /// Configs with other ALPN lists (Istio's `istio.alpn` override), by list.
    alpn_cache: Mutex<Vec<AlpnConfig>>,
}

impl ClientTls {
    pub fn from_proto(p: &UpstreamTlsContext, store: Arc<SecretStore>, field: &str) -> Result<Self, ConfigError> {
        let common = match &p.common_tls_context {
            Some(c) => compile_common(c, &format!("{field}.common_tls_context"))?,
            None => compile_common(&CommonTlsContext::default(), field)?,
        };
        let tls = ClientTls {
            common,
            sni: (!p.sni.is_empty()).then(|| p.sni.clone()),
            store,
            cache: Mutex::new(None),
            alpn_cache: Mutex::new(Vec::new()),
        };
        if tls.common.secret_names().is_empty() {
            tls.config().map_err(|e| ConfigError::new(field, e))?;
        }
        Ok(tls)
    }

    pub fn secret_names(&self) -> Vec<String> {
        self.common.secret_names()
    }

    /// Files of file-based SDS this context reads its secrets from.
    pub fn secret_files(&self) -> &[std::path::PathBuf] {
        &self.common.sds_files
    }

    /// Envoy refuses secrets from a config source when the node has no id or cluster.
    pub fn check_node(&self, node: &crate::config::NodeInfo, field: &str) -> Result<(), ConfigError> {
        check_node(self.common.dynamic_sds, node, field)
    }

    pub fn ready(&self) -> bool {
        self.secret_names().iter().all(|n| self.store.contains(n))
    }

    pub fn alpn(&self) -> &[Vec<u8>] {
        &self.common.alpn
    }

    /// The config for the next handshake.
    pub fn config(&self) -> Result<Arc<ClientConfig>, String> {
        cached(&self.cache, self.store.generation(), || self.build(&self.common.alpn))
    }

    /// The config with a different ALPN list.
    pub fn config_with_alpn(&self, alpn: &[Vec<u8>]) -> Result<Arc<ClientConfig>, String> {
        let g = self.store.generation();
        let mut c = self.alpn_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, cfg)) = c.iter().find(|(a, generation, _)| a == alpn && *generation == g) {
            return Ok(cfg.clone());
        }
        let cfg = Arc::new(self.build(alpn)?);
        c.retain(|(a, _, _)| a != alpn);
        c.push((alpn.to_vec(), g, cfg.clone()));
        Ok(cfg)
    }

    fn build(&self, alpn: &[Vec<u8>]) -> Result<ClientConfig, String> {
        let provider = self.common.provider();
        let verifier =
            Arc::new(UpstreamVerifier { validation: self.common.validation(&self.store)?, provider: provider.clone() });
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&self.common.versions)
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut cfg = match self.common.cert(&self.store)? {
            Some(c) => builder.with_client_cert_resolver(Arc::new(FixedCert(certified_key(&c, &provider)?))),
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = alpn.to_vec();
        // Envoy sends no SNI unless configured.
        cfg.enable_sni = self.sni.is_some();
        Ok(cfg)
    }

    /// The name for the handshake (rustls needs one even when SNI is off).
    pub fn server_name(&self) -> ServerName<'static> {
        self.sni
            .as_deref()
            .and_then(|s| ServerName::try_from(s.to_string()).ok())
            .unwrap_or_else(|| ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()))
    }
}
