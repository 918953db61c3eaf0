//! `TlsCertificate` (certificate chain + private key) compiled into a rustls `CertifiedKey`.
//!
//! Keys: PKCS#8, PKCS#1 (RSA) or SEC1 (EC) PEM; RSA, ECDSA P-256/P-384 and Ed25519, checked to
//! match the leaf certificate. Encrypted keys, PKCS#12, private key providers, OCSP stapling,
//! SCTs and per-certificate TLS parameters are rejected as unsupported.

use std::sync::Arc;

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::TlsCertificate;
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;

use super::data_source::{pem_certificates, pem_private_key, read, read_required};
use super::{PeerIdentity, TlsError, base_provider};

/// A loaded certificate chain and private key, ready for handshakes.
#[derive(Debug)]
pub struct CertificateSecret {
    pub(crate) certified: Arc<CertifiedKey>,
    identity: PeerIdentity,
}

impl CertificateSecret {
    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    /// The identity in the leaf certificate (SANs, subject, SPIFFE ID, expiry).
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    /// The rustls key, for callers building their own configs.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }
}

/// Loads and checks a `TlsCertificate`; `field` is its proto path for errors.
pub(crate) fn compile_tls_certificate(c: &TlsCertificate, field: &str) -> Result<CertificateSecret, TlsError> {
    if c.pkcs12.is_some() {
        return Err(TlsError::unsupported(
            format!("{field}.pkcs12"),
            "PKCS#12 certificates; use certificate_chain and private_key (PEM)",
        ));
    }
    if c.password.is_some() {
        return Err(TlsError::unsupported(format!("{field}.password"), "encrypted private keys"));
    }
    if c.watched_directory.is_some() {
        return Err(TlsError::unsupported(
            format!("{field}.watched_directory"),
            "file watching for rotation; deliver rotated secrets through SDS instead",
        ));
    }
    if let Some(p) = &c.private_key_provider {
        // Envoy falls back to `private_key` when the provider is unavailable and fallback is set;
        // remora has no providers, so that is the only acceptable form.
        if !(p.fallback && c.private_key.is_some()) {
            return Err(TlsError::unsupported(
                format!("{field}.private_key_provider"),
                format!("private key provider {:?}", p.provider_name),
            ));
        }
    }
    if c.ocsp_staple.is_some() {
        return Err(TlsError::unsupported(format!("{field}.ocsp_staple"), "OCSP stapling"));
    }
    if !c.signed_certificate_timestamp.is_empty() {
        return Err(TlsError::unsupported(
            format!("{field}.signed_certificate_timestamp"),
            "signed certificate timestamps",
        ));
    }
    if c.tls_params.is_some() {
        return Err(TlsError::unsupported(format!("{field}.tls_params"), "per-certificate TLS parameters"));
    }

    let chain_field = format!("{field}.certificate_chain");
    let key_field = format!("{field}.private_key");
    let chain_pem = read_required(c.certificate_chain.as_ref(), &chain_field)?;
    let chain = pem_certificates(&chain_pem, &chain_field)?;
    let key_pem =
        read(c.private_key.as_ref(), &key_field)?.ok_or_else(|| TlsError::invalid(&key_field, "is required"))?;
    let key_der = pem_private_key(&key_pem, &key_field)?;
    let provider = base_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|source| TlsError::Rustls { field: key_field.clone(), source })?;
    let identity = PeerIdentity::from_der(&chain[0]).map_err(|e| match e {
        TlsError::Invalid { reason, .. } => TlsError::invalid(&chain_field, reason),
        e => e,
    })?;
    // Compared by hand rather than with `CertifiedKey::keys_match`, which parses the leaf with
    // webpki and so refuses X.509 v1 certificates that Envoy (and its examples) accept. Some key
    // types cannot report their public key; nothing to compare then.
    if let Some(key_spki) = signing_key.public_key()
        && leaf_spki(&chain[0]).is_some_and(|cert_spki| cert_spki != key_spki.as_ref())
    {
        return Err(TlsError::invalid(&key_field, "private key does not match the leaf certificate's public key"));
    }
    let certified = CertifiedKey::new(chain, signing_key);
    Ok(CertificateSecret { certified: Arc::new(certified), identity })
}

/// The DER `SubjectPublicKeyInfo` of a certificate (any X.509 version).
fn leaf_spki(leaf: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.public_key().raw.to_vec())
}

// === CertSource ===

/// Where a TLS context gets one of its certificates.
pub(crate) enum CertSource {
    Static(Arc<CertificateSecret>),
    Sds(Arc<crate::secret::Slot<CertificateSecret>>),
}

impl CertSource {
    /// The current value: for SDS, one atomic load.
    pub(crate) fn load(&self) -> Option<Arc<CertificateSecret>> {
        match self {
            CertSource::Static(c) => Some(c.clone()),
            CertSource::Sds(s) => s.load(),
        }
    }

    /// The SDS secret name, if this is an SDS source.
    pub(crate) fn secret_name(&self) -> Option<&str> {
        match self {
            CertSource::Static(_) => None,
            CertSource::Sds(s) => Some(s.name()),
        }
    }
}

impl std::fmt::Debug for CertSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertSource::Static(c) => write!(f, "Static({:?})", c.identity().subject),
            CertSource::Sds(s) => write!(f, "Sds({:?})", s.name()),
        }
    }
}

/// The certificates of a `CommonTlsContext`: inline ones first, then SDS ones.
pub(crate) fn cert_sources(
    common: &envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::CommonTlsContext,
    store: &crate::SecretStore,
    field: &str,
) -> Result<Vec<CertSource>, TlsError> {
    let mut out = Vec::new();
    for (i, c) in common.tls_certificates.iter().enumerate() {
        let compiled = compile_tls_certificate(c, &format!("{field}.tls_certificates[{i}]"))?;
        out.push(CertSource::Static(Arc::new(compiled)));
    }
    for (i, s) in common.tls_certificate_sds_secret_configs.iter().enumerate() {
        let name = super::validation::sds_name(s, &format!("{field}.tls_certificate_sds_secret_configs[{i}]"))?;
        out.push(CertSource::Sds(store.cert_slot(&name)));
    }
    Ok(out)
}

/// Rejects `CommonTlsContext` features remora does not implement.
#[allow(deprecated)] // deprecated provider fields are rejected on purpose
pub(crate) fn check_common_unsupported(
    common: &envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::CommonTlsContext,
    field: &str,
) -> Result<(), TlsError> {
    let un = |name: &str, reason: &str| Err(TlsError::unsupported(format!("{field}.{name}"), reason));
    if common.tls_certificate_provider_instance.is_some() {
        return un("tls_certificate_provider_instance", "certificate providers");
    }
    if common.tls_certificate_certificate_provider.is_some() {
        return un("tls_certificate_certificate_provider", "certificate providers");
    }
    if common.tls_certificate_certificate_provider_instance.is_some() {
        return un("tls_certificate_certificate_provider_instance", "certificate providers");
    }
    if common.custom_tls_certificate_selector.is_some() {
        return un("custom_tls_certificate_selector", "custom certificate selectors");
    }
    if common.custom_handshaker.is_some() {
        return un("custom_handshaker", "custom handshakers");
    }
    if common.key_log.is_some() {
        return un("key_log", "TLS key logging");
    }
    Ok(())
}

/// ALPN protocol names as bytes.
pub(crate) fn alpn(
    common: &envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::CommonTlsContext,
) -> Vec<Vec<u8>> {
    common.alpn_protocols.iter().filter(|p| !p.is_empty()).map(|p| p.as_bytes().to_vec()).collect()
}
