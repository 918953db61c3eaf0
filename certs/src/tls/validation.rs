//! Peer certificate validation: `CertificateValidationContext` (static, SDS, or combined
//! default-plus-SDS) compiled into trust anchors and SAN matchers, and the rustls verifiers
//! that apply it at handshake time, reading SDS values from the secret store on each handshake.
//!
//! Invariants:
//! - SAN matchers are never applied without a trusted CA (Envoy rejects that config);
//! - a validation context with neither a CA nor SAN matchers verifies nothing (as in Envoy);
//! - a combined context is the proto merge (`MergeFrom`) of the default context with the SDS
//!   one; the merge is compiled once per SDS value and cached;
//! - every unsupported security field is an error, not a no-op.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SdsSecretConfig,
    certificate_validation_context::TrustChainVerification, common_tls_context::ValidationContextType,
};
use prost::Message;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::*;

use super::data_source::{pem_certificates, read};
use super::matcher::{SanMatcher, SanType, StringMatch, any_san_matches, compile_san_matchers};
use super::{TlsError, base_provider, verify_algorithms};
use crate::secret::{SecretStore, Slot};

/// A validation context received through SDS (or set directly on the store).
pub struct ValidationSecret {
    proto: CertificateValidationContext,
    compiled: Arc<Validation>,
}

impl ValidationSecret {
    /// Number of trusted CA certificates.
    pub fn trusted_ca_count(&self) -> usize {
        self.compiled.roots.as_ref().map_or(0, |r| r.len())
    }
}

impl fmt::Debug for ValidationSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidationSecret")
            .field("trusted_ca_count", &self.trusted_ca_count())
            .field("san_matchers", &self.compiled.san_matchers.len())
            .finish()
    }
}

/// Compiles an SDS validation context. The "SAN matchers need a trusted CA" rule is applied
/// where the context is used, since a combined context may get its CA from the other half.
pub(crate) fn compile_validation_secret(
    proto: &CertificateValidationContext,
    field: &str,
) -> Result<ValidationSecret, TlsError> {
    Ok(ValidationSecret { proto: proto.clone(), compiled: Arc::new(compile(proto, field)?) })
}

/// Compiled validation settings.
pub(crate) struct Validation {
    roots: Option<Arc<RootCertStore>>,
    /// Chain verification for client certificates (clientAuth EKU), built from `roots`.
    client_chain: Option<Arc<dyn ClientCertVerifier>>,
    san_matchers: Vec<SanMatcher>,
    /// The trusted CAs' subjects, sent in a server's `CertificateRequest` (empty with
    /// `suppress_client_ca_list`), as BoringSSL does for Envoy.
    ca_names: Vec<DistinguishedName>,
}

impl Validation {
    fn verifies_nothing(&self) -> bool {
        self.roots.is_none() && self.san_matchers.is_empty()
    }

    fn check_ca(&self, field: &str) -> Result<(), TlsError> {
        if self.roots.is_none() && !self.san_matchers.is_empty() {
            return Err(TlsError::invalid(
                field,
                "SAN-based verification of peer certificates without trusted CA is insecure and not allowed",
            ));
        }
        Ok(())
    }
}

#[allow(deprecated)] // match_subject_alt_names is still what Istio sends
fn compile(ctx: &CertificateValidationContext, field: &str) -> Result<Validation, TlsError> {
    let unsupported = |name: &str, reason: &str| Err(TlsError::unsupported(format!("{field}.{name}"), reason));
    if ctx.ca_certificate_provider_instance.is_some() {
        return unsupported("ca_certificate_provider_instance", "certificate provider instances");
    }
    if ctx.system_root_certs.is_some() {
        return unsupported("system_root_certs", "the system trust store");
    }
    if ctx.watched_directory.is_some() {
        return unsupported(
            "watched_directory",
            "file watching for rotation; deliver rotated secrets through SDS instead",
        );
    }
    if !ctx.verify_certificate_spki.is_empty() {
        return unsupported("verify_certificate_spki", "SPKI pinning");
    }
    if !ctx.verify_certificate_hash.is_empty() {
        return unsupported("verify_certificate_hash", "certificate hash pinning");
    }
    if ctx.require_signed_certificate_timestamp.is_some_and(|b| b.value) {
        return unsupported("require_signed_certificate_timestamp", "signed certificate timestamps");
    }
    if ctx.crl.is_some() {
        return unsupported("crl", "certificate revocation lists");
    }
    if ctx.allow_expired_certificate {
        return unsupported("allow_expired_certificate", "accepting expired certificates");
    }
    match TrustChainVerification::try_from(ctx.trust_chain_verification) {
        Ok(TrustChainVerification::VerifyTrustChain) => {}
        Ok(TrustChainVerification::AcceptUntrusted) => {
            return unsupported("trust_chain_verification", "ACCEPT_UNTRUSTED (peer certificates are always verified)");
        }
        Err(_) => {
            return Err(TlsError::invalid(
                format!("{field}.trust_chain_verification"),
                format!("unknown value {}", ctx.trust_chain_verification),
            ));
        }
    }
    if let Some(c) = &ctx.custom_validator_config {
        return unsupported("custom_validator_config", &format!("custom certificate validator {:?}", c.name));
    }
    if ctx.max_verify_depth.is_some() {
        return unsupported("max_verify_depth", "limiting the verification depth");
    }

    let san_matchers = compile_san_matchers(&ctx.match_typed_subject_alt_names, &ctx.match_subject_alt_names, field)?;

    let ca_field = format!("{field}.trusted_ca");
    let (roots, client_chain) = match read(ctx.trusted_ca.as_ref(), &ca_field)? {
        None => (None, None),
        Some(pem) => {
            let certs = pem_certificates(&pem, &ca_field)?;
            let mut store = RootCertStore::empty();
            for (i, c) in certs.into_iter().enumerate() {
                store.add(c).map_err(|e| {
                    TlsError::invalid(&ca_field, format!("certificate #{i} is not a usable trust anchor: {e}"))
                })?;
            }
            let roots = Arc::new(store);
            let client_chain = WebPkiClientVerifier::builder_with_provider(roots.clone(), Arc::new(base_provider()))
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::invalid(&ca_field, e.to_string()))?;
            (Some(roots), Some(client_chain))
        }
    };
    let ca_names = match &roots {
        Some(r) if !ctx.suppress_client_ca_list => r.subjects(),
        _ => Vec::new(),
    };
    Ok(Validation { roots, client_chain, san_matchers, ca_names })
}

// === impl ValidationSource ===

/// Where a TLS context's validation settings come from.
pub(crate) enum ValidationSource {
    /// No validation context: peer certificates are not verified (upstream) or not requested
    /// (downstream).
    None,
    Static(Arc<Validation>),
    Sds(Arc<Slot<ValidationSecret>>),
    Combined(Box<Combined>),
}

pub(crate) struct Combined {
    default: CertificateValidationContext,
    slot: Arc<Slot<ValidationSecret>>,
    cache: ArcSwapOption<CombinedEntry>,
    field: String,
}

struct CombinedEntry {
    secret: Arc<ValidationSecret>,
    result: Result<Arc<Validation>, String>,
}

/// The validation settings in force for one handshake.
pub(crate) enum Current {
    /// Verify nothing.
    Unverified,
    Ready(Arc<Validation>),
    /// The named SDS secret has not arrived.
    NotReady(String),
    /// The settings are unusable (e.g. a merged combined context is invalid).
    Failed(String),
}

pub(crate) fn sds_name(s: &SdsSecretConfig, field: &str) -> Result<String, TlsError> {
    if s.name.is_empty() {
        return Err(TlsError::invalid(format!("{field}.name"), "must not be empty"));
    }
    Ok(s.name.clone())
}

impl ValidationSource {
    #[allow(deprecated)] // deprecated provider fields are rejected on purpose
    pub(crate) fn from_common(common: &CommonTlsContext, store: &SecretStore, field: &str) -> Result<Self, TlsError> {
        Ok(match &common.validation_context_type {
            None => ValidationSource::None,
            Some(ValidationContextType::ValidationContext(v)) => {
                let f = format!("{field}.validation_context");
                let c = compile(v, &f)?;
                c.check_ca(&f)?;
                if c.verifies_nothing() { ValidationSource::None } else { ValidationSource::Static(Arc::new(c)) }
            }
            Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
                let name = sds_name(s, &format!("{field}.validation_context_sds_secret_config"))?;
                ValidationSource::Sds(store.validation_slot(&name))
            }
            Some(ValidationContextType::CombinedValidationContext(c)) => {
                let f = format!("{field}.combined_validation_context");
                if c.validation_context_certificate_provider.is_some()
                    || c.validation_context_certificate_provider_instance.is_some()
                {
                    return Err(TlsError::unsupported(
                        format!("{f}.validation_context_certificate_provider"),
                        "certificate providers",
                    ));
                }
                let default = c.default_validation_context.clone().unwrap_or_default();
                // Reject unsupported fields in the default half now, not at the first handshake.
                compile(&default, &format!("{f}.default_validation_context"))?;
                let sds = c.validation_context_sds_secret_config.as_ref().ok_or_else(|| {
                    TlsError::invalid(format!("{f}.validation_context_sds_secret_config"), "is required")
                })?;
                let name = sds_name(sds, &format!("{f}.validation_context_sds_secret_config"))?;
                ValidationSource::Combined(Box::new(Combined {
                    default,
                    slot: store.validation_slot(&name),
                    cache: ArcSwapOption::empty(),
                    field: f,
                }))
            }
            Some(ValidationContextType::ValidationContextCertificateProvider(_))
            | Some(ValidationContextType::ValidationContextCertificateProviderInstance(_)) => {
                return Err(TlsError::unsupported(
                    format!("{field}.validation_context_certificate_provider"),
                    "certificate providers",
                ));
            }
        })
    }

    /// Whether any validation is configured (downstream: whether to request a certificate).
    pub(crate) fn is_configured(&self) -> bool {
        !matches!(self, ValidationSource::None)
    }

    /// Whether the settings come from SDS (and so can change without a rebuild).
    pub(crate) fn is_dynamic(&self) -> bool {
        matches!(self, ValidationSource::Sds(_) | ValidationSource::Combined(_))
    }

    /// The SDS secret this source waits for, if any.
    pub(crate) fn secret_name(&self) -> Option<&str> {
        match self {
            ValidationSource::Sds(s) => Some(s.name()),
            ValidationSource::Combined(c) => Some(c.slot.name()),
            _ => None,
        }
    }

    /// Whether the named secret (if any) is present.
    pub(crate) fn is_ready(&self) -> bool {
        match self {
            ValidationSource::Sds(s) => s.load().is_some(),
            ValidationSource::Combined(c) => c.slot.load().is_some(),
            _ => true,
        }
    }

    /// The settings for a handshake starting now.
    pub(crate) fn current(&self) -> Current {
        match self {
            ValidationSource::None => Current::Unverified,
            ValidationSource::Static(v) => Current::Ready(v.clone()),
            ValidationSource::Sds(slot) => match slot.load() {
                None => Current::NotReady(slot.name().to_string()),
                Some(secret) => ready_or_failed(secret.compiled.clone(), slot.name()),
            },
            ValidationSource::Combined(c) => {
                let Some(secret) = c.slot.load() else {
                    return Current::NotReady(c.slot.name().to_string());
                };
                let cached = c.cache.load();
                let entry = match cached.as_ref() {
                    Some(e) if Arc::ptr_eq(&e.secret, &secret) => e.clone(),
                    _ => {
                        let result = c.merge(&secret.proto);
                        if let Err(e) = &result {
                            tracing::warn!("{e}");
                        }
                        let e = Arc::new(CombinedEntry { secret, result });
                        c.cache.store(Some(e.clone()));
                        e
                    }
                };
                match &entry.result {
                    Ok(v) if v.verifies_nothing() => Current::Unverified,
                    Ok(v) => Current::Ready(v.clone()),
                    Err(e) => Current::Failed(e.clone()),
                }
            }
        }
    }
}

fn ready_or_failed(v: Arc<Validation>, name: &str) -> Current {
    if v.verifies_nothing() {
        return Current::Unverified;
    }
    if v.roots.is_some() {
        return Current::Ready(v);
    }
    // Only formats on the (rare) error path: this runs on every handshake.
    match v.check_ca(&format!("validation context secret {name:?}")) {
        Ok(()) => Current::Ready(v),
        Err(e) => Current::Failed(e.to_string()),
    }
}

impl Combined {
    fn merge(&self, dynamic: &CertificateValidationContext) -> Result<Arc<Validation>, String> {
        // Envoy: default_validation_context.MergeFrom(sds value). Protobuf merge semantics are
        // exactly "decode the second message's encoding on top of the first".
        let mut merged = self.default.clone();
        merged
            .merge(dynamic.encode_to_vec().as_slice())
            .map_err(|e| format!("{}: merging with SDS secret: {e}", self.field))?;
        let v = compile(&merged, &self.field).map_err(|e| e.to_string())?;
        v.check_ca(&self.field).map_err(|e| e.to_string())?;
        Ok(Arc::new(v))
    }
}

impl fmt::Debug for ValidationSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValidationSource::None => f.write_str("None"),
            ValidationSource::Static(_) => f.write_str("Static"),
            ValidationSource::Sds(s) => write!(f, "Sds({:?})", s.name()),
            ValidationSource::Combined(c) => write!(f, "Combined(sds: {:?})", c.slot.name()),
        }
    }
}

// === SAN checks ===

/// The error a handshake fails with when the peer's certificate chains to a trusted CA but its
/// SANs match no configured matcher (Envoy counts these as `ssl.fail_verify_san`). It reaches
/// callers as `rustls::Error::InvalidCertificate(CertificateError::Other(..))`, the alert sent
/// is `certificate_unknown`, as BoringSSL sends for Envoy. rustls shows certificate errors
/// with `{:?}`, so Debug carries the readable message.
pub struct SanMismatch(String);

impl SanMismatch {
    /// Whether `e` (a handshake error) is a SAN mismatch.
    pub fn is(e: &rustls::Error) -> bool {
        matches!(e, rustls::Error::InvalidCertificate(CertificateError::Other(o)) if o.0.is::<SanMismatch>())
    }
}

impl fmt::Debug for SanMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SanMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer certificate SANs [{}] match no configured SAN matcher", self.0)
    }
}

impl std::error::Error for SanMismatch {}

fn check_sans(end_entity: &CertificateDer<'_>, matchers: &[SanMatcher]) -> Result<(), rustls::Error> {
    if matchers.is_empty() {
        return Ok(());
    }
    let (_, cert) = X509Certificate::from_der(end_entity.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let sans: Vec<GeneralName<'_>> = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext.value.general_names.clone(),
        Ok(None) => Vec::new(),
        Err(_) => {
            return Err(rustls::Error::InvalidCertificate(CertificateError::BadEncoding));
        }
    };
    if any_san_matches(matchers, &sans) {
        return Ok(());
    }
    let shown: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let err = SanMismatch(shown.join(", "));
    tracing::debug!("verify cert failed: {err}");
    Err(rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(err)))))
}

fn not_ready(name: &str) -> rustls::Error {
    rustls::Error::General(format!("validation context secret {name:?} has not been received yet"))
}

// === impl UpstreamVerifier ===

/// Verifies server certificates for upstream connections: chain to `trusted_ca`, then SAN
/// matchers (or, with `auto_sni_san_validation`, a DNS SAN matching the SNI). No hostname
/// verification otherwise.
pub(crate) struct UpstreamVerifier {
    pub(crate) source: ValidationSource,
    pub(crate) auto_sni_san: bool,
    pub(crate) algs: WebPkiSupportedAlgorithms,
}

impl UpstreamVerifier {
    pub(crate) fn new(source: ValidationSource, auto_sni_san: bool) -> Self {
        UpstreamVerifier { source, auto_sni_san, algs: verify_algorithms() }
    }
}

impl fmt::Debug for UpstreamVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamVerifier")
            .field("source", &self.source)
            .field("auto_sni_san", &self.auto_sni_san)
            .finish()
    }
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let v = match self.source.current() {
            Current::Unverified => return Ok(ServerCertVerified::assertion()),
            Current::Ready(v) => v,
            Current::NotReady(name) => return Err(not_ready(&name)),
            Current::Failed(e) => return Err(rustls::Error::General(e)),
        };
        let Some(roots) = &v.roots else {
            // Unreachable: check_ca guarantees a CA whenever there is anything to verify.
            return Err(rustls::Error::General("no trusted CA".into()));
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(&cert, roots, intermediates, now, self.algs.all)?;
        match (self.auto_sni_san, server_name) {
            (true, ServerName::DnsName(sni)) => {
                let m = [SanMatcher {
                    san_type: SanType::Dns,
                    matcher: StringMatch::Exact { value: sni.as_ref().to_string(), ignore_case: false },
                }];
                check_sans(end_entity, &m)?;
            }
            _ => check_sans(end_entity, &v.san_matchers)?,
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

// === impl DownstreamVerifier ===

/// What a server checks client certificates against: the validation settings and whether a
/// certificate is required. Shared by the [`DownstreamVerifier`] of every config rebuild.
pub(crate) struct DownstreamValidation {
    pub(crate) source: ValidationSource,
    pub(crate) require_client_cert: bool,
}

impl fmt::Debug for DownstreamValidation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DownstreamValidation")
            .field("source", &self.source)
            .field("require_client_cert", &self.require_client_cert)
            .finish()
    }
}

/// Verifies client certificates on inbound connections: chain to `trusted_ca` (clientAuth),
/// then SAN matchers. It carries the CA names of the moment it was made, sent in the
/// `CertificateRequest` as BoringSSL does for Envoy: rustls reads them by reference, so a server
/// config is rebuilt with a new verifier when an SDS trust bundle changes.
pub(crate) struct DownstreamVerifier {
    validation: Arc<DownstreamValidation>,
    ca_names: Vec<DistinguishedName>,
    algs: WebPkiSupportedAlgorithms,
}

impl DownstreamVerifier {
    pub(crate) fn new(validation: Arc<DownstreamValidation>) -> Self {
        let ca_names = match validation.source.current() {
            Current::Ready(v) => v.ca_names.clone(),
            _ => Vec::new(),
        };
        DownstreamVerifier { validation, ca_names, algs: verify_algorithms() }
    }
}

impl fmt::Debug for DownstreamVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DownstreamVerifier")
            .field("validation", &self.validation)
            .field("ca_names", &self.ca_names.len())
            .finish()
    }
}

impl ClientCertVerifier for DownstreamVerifier {
    fn offer_client_auth(&self) -> bool {
        self.validation.require_client_cert || self.validation.source.is_configured()
    }

    fn client_auth_mandatory(&self) -> bool {
        // Envoy: required if asked for, or if SAN matchers must be checked.
        self.validation.require_client_cert
            || matches!(self.validation.source.current(), Current::Ready(v) if !v.san_matchers.is_empty())
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.ca_names
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let v = match self.validation.source.current() {
            // A certificate nobody can verify is not accepted as an identity.
            Current::Unverified => {
                return Err(rustls::Error::General("no trusted CA configured to verify the client certificate".into()));
            }
            Current::Ready(v) => v,
            Current::NotReady(name) => return Err(not_ready(&name)),
            Current::Failed(e) => return Err(rustls::Error::General(e)),
        };
        let Some(chain) = &v.client_chain else {
            return Err(rustls::Error::General("no trusted CA".into()));
        };
        chain.verify_client_cert(end_entity, intermediates, now)?;
        check_sans(end_entity, &v.san_matchers)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}
