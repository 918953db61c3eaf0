//! Envoy's certificate validation: chain to `trusted_ca`, then subject-alt-name matchers
//! (`match_typed_subject_alt_names`, or the older `match_subject_alt_names` over every SAN
//! type). Like Envoy, an upstream certificate's hostname is not checked against SNI unless a
//! matcher says so, and without a validation context nothing is verified.

use std::sync::Arc;

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, SubjectAltNameMatcher, certificate_validation_context, subject_alt_name_matcher,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::config::ConfigError;
use crate::config::read_data_source;
use crate::matcher::StringMatcher;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanType {
    Dns,
    Uri,
    Email,
    Ip,
    OtherName,
}

#[derive(Debug, Clone)]
pub struct SanMatcher {
    /// None: any SAN type (the deprecated `match_subject_alt_names`).
    pub kind: Option<SanType>,
    pub matcher: StringMatcher,
}

/// A compiled `CertificateValidationContext`.
#[derive(Debug, Clone, Default)]
pub struct Validation {
    pub roots: Option<Arc<RootCertStore>>,
    /// The trust bundle as DER, for merging into combined contexts.
    pub root_ders: Vec<CertificateDer<'static>>,
    pub san_matchers: Vec<SanMatcher>,
}

/// The SANs of a certificate.
#[derive(Debug, Clone, Default)]
pub struct Sans {
    pub uri: Vec<String>,
    pub dns: Vec<String>,
    pub email: Vec<String>,
    pub ip: Vec<String>,
    pub subject: String,
}

/// Parses a certificate's SANs and subject.
pub fn sans_of(cert: &CertificateDer<'_>) -> Option<Sans> {
    use x509_parser::prelude::*;
    let (_, c) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let mut s = Sans { subject: c.subject().to_string(), ..Default::default() };
    if let Ok(Some(ext)) = c.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                GeneralName::URI(u) => s.uri.push(u.to_string()),
                GeneralName::DNSName(d) => s.dns.push(d.to_string()),
                GeneralName::RFC822Name(e) => s.email.push(e.to_string()),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default()).to_string(),
                        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default()).to_string(),
                        _ => continue,
                    };
                    s.ip.push(ip);
                }
                _ => {}
            }
        }
    }
    Some(s)
}

/// Lowercase hex SHA-256 of a certificate.
pub fn sha256_hex(cert: &CertificateDer<'_>) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_roots(pem: &[u8], field: &str) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), ConfigError> {
    use rustls_pki_types::pem::PemObject;
    let ders: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ConfigError::new(field, format!("invalid PEM: {e}")))?;
    if ders.is_empty() {
        return Err(ConfigError::new(field, "Failed to load trusted CA certificates: no certificates found"));
    }
    let mut store = RootCertStore::empty();
    for d in &ders {
        store
            .add(d.clone())
            .map_err(|e| ConfigError::new(field, format!("Failed to load trusted CA certificate: {e}")))?;
    }
    Ok((store, ders))
}

impl Validation {
    pub fn from_proto(v: &CertificateValidationContext, field: &str) -> Result<Self, ConfigError> {
        if !v.verify_certificate_spki.is_empty() || !v.verify_certificate_hash.is_empty() {
            return Err(ConfigError::new(field, "verify_certificate_spki / verify_certificate_hash are not supported"));
        }
        if v.crl.is_some() {
            return Err(ConfigError::new(format!("{field}.crl"), "certificate revocation lists are not supported"));
        }
        if v.require_signed_certificate_timestamp.is_some_and(|b| b.value) {
            return Err(ConfigError::new(field, "require_signed_certificate_timestamp is not supported"));
        }
        if v.allow_expired_certificate {
            return Err(ConfigError::new(field, "allow_expired_certificate is not supported"));
        }
        if v.custom_validator_config.is_some() {
            return Err(ConfigError::new(field, "custom_validator_config is not supported"));
        }
        if v.trust_chain_verification == certificate_validation_context::TrustChainVerification::AcceptUntrusted as i32
        {
            return Err(ConfigError::new(field, "trust_chain_verification ACCEPT_UNTRUSTED is not supported"));
        }
        if v.system_root_certs.is_some() {
            return Err(ConfigError::new(field, "system_root_certs is not supported"));
        }
        let mut out = Validation::default();
        if let Some(ca) = &v.trusted_ca {
            let pem = read_data_source(ca, &format!("{field}.trusted_ca"))?;
            let (store, ders) = parse_roots(&pem, &format!("{field}.trusted_ca"))?;
            out.roots = Some(Arc::new(store));
            out.root_ders = ders;
        }
        for (i, m) in v.match_typed_subject_alt_names.iter().enumerate() {
            out.san_matchers.push(typed_san(m, &format!("{field}.match_typed_subject_alt_names[{i}]"))?);
        }
        for (i, m) in v.match_subject_alt_names.iter().enumerate() {
            let f = format!("{field}.match_subject_alt_names[{i}]");
            out.san_matchers.push(SanMatcher { kind: None, matcher: StringMatcher::from_proto(m, &f)? });
        }
        Ok(out)
    }

    /// Combines the default (inline) context with one from SDS: trust from the SDS one when it
    /// has it, matchers from both.
    pub fn combine(default: &Validation, sds: &Validation) -> Validation {
        let (roots, root_ders) = if sds.roots.is_some() {
            (sds.roots.clone(), sds.root_ders.clone())
        } else {
            (default.roots.clone(), default.root_ders.clone())
        };
        let mut san_matchers = default.san_matchers.clone();
        san_matchers.extend(sds.san_matchers.iter().cloned());
        Validation { roots, root_ders, san_matchers }
    }

    /// True when the SANs satisfy the matchers (no matchers: anything goes).
    pub fn sans_match(&self, sans: &Sans) -> bool {
        if self.san_matchers.is_empty() {
            return true;
        }
        self.san_matchers.iter().any(|m| {
            let lists: Vec<&Vec<String>> = match m.kind {
                Some(SanType::Uri) => vec![&sans.uri],
                Some(SanType::Dns) => vec![&sans.dns],
                Some(SanType::Email) => vec![&sans.email],
                Some(SanType::Ip) => vec![&sans.ip],
                Some(SanType::OtherName) => vec![],
                None => vec![&sans.dns, &sans.uri, &sans.email, &sans.ip],
            };
            lists.into_iter().flatten().any(|v| match (m.kind, &m.matcher) {
                // DNS SAN wildcards (`*.example.com`) match like Envoy's dnsNameMatch for exact.
                (Some(SanType::Dns) | None, StringMatcher::Exact(e, _)) if v.starts_with("*.") => {
                    e.split_once('.').is_some_and(|(_, rest)| rest == &v[2..])
                }
                _ => m.matcher.matches(v),
            })
        })
    }
}

fn typed_san(m: &SubjectAltNameMatcher, field: &str) -> Result<SanMatcher, ConfigError> {
    use subject_alt_name_matcher::SanType as T;
    let kind = match T::try_from(m.san_type) {
        Ok(T::Dns) => SanType::Dns,
        Ok(T::Uri) => SanType::Uri,
        Ok(T::Email) => SanType::Email,
        Ok(T::IpAddress) => SanType::Ip,
        Ok(T::OtherName) => SanType::OtherName,
        Ok(T::Unspecified) | Err(_) => {
            return Err(ConfigError::new(format!("{field}.san_type"), "san_type must be specified"));
        }
    };
    let Some(sm) = &m.matcher else {
        return Err(ConfigError::new(format!("{field}.matcher"), "matcher is required"));
    };
    Ok(SanMatcher { kind: Some(kind), matcher: StringMatcher::from_proto(sm, &format!("{field}.matcher"))? })
}

fn bad(e: impl std::fmt::Display) -> rustls::Error {
    rustls::Error::General(e.to_string())
}

fn verify_chain(
    roots: &RootCertStore,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
    provider: &CryptoProvider,
) -> Result<(), rustls::Error> {
    let cert =
        webpki::EndEntityCert::try_from(end_entity).map_err(|e| rustls::Error::InvalidCertificate(pki_error(e)))?;
    cert.verify_for_usage(
        provider.signature_verification_algorithms.all,
        &roots.roots,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| rustls::Error::InvalidCertificate(pki_error(e)))
}

fn pki_error(e: webpki::Error) -> rustls::CertificateError {
    use rustls::CertificateError as C;
    match e {
        webpki::Error::CertExpired { .. } => C::Expired,
        webpki::Error::CertNotValidYet { .. } => C::NotValidYet,
        webpki::Error::UnknownIssuer => C::UnknownIssuer,
        webpki::Error::InvalidSignatureForPublicKey => C::BadSignature,
        other => C::Other(rustls::OtherError(Arc::new(std::io::Error::other(format!("{other:?}"))))),
    }
}

fn check_sans(v: &Validation, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
    if v.san_matchers.is_empty() {
        return Ok(());
    }
    let sans = sans_of(end_entity).ok_or_else(|| bad("unparsable certificate"))?;
    if v.sans_match(&sans) {
        Ok(())
    } else {
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
    }
}

// === upstream: verifying the server ===

/// Verifies an upstream's certificate the way Envoy does (no hostname check).
#[derive(Debug)]
pub struct UpstreamVerifier {
    pub validation: Option<Arc<Validation>>,
    pub provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(v) = &self.validation else { return Ok(ServerCertVerified::assertion()) };
        if let Some(roots) = &v.roots {
            verify_chain(roots, end_entity, intermediates, now, webpki::KeyUsage::server_auth(), &self.provider)?;
        }
        check_sans(v, end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

// === downstream: verifying the client ===

/// Verifies client certificates: chain to the trusted CA, then SAN matchers.
#[derive(Debug)]
pub struct DownstreamVerifier {
    pub validation: Arc<Validation>,
    pub required: bool,
    pub provider: Arc<CryptoProvider>,
    pub subjects: Vec<DistinguishedName>,
}

impl ClientCertVerifier for DownstreamVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.subjects
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Some(roots) = &self.validation.roots {
            verify_chain(roots, end_entity, intermediates, now, webpki::KeyUsage::client_auth(), &self.provider)?;
        }
        check_sans(&self.validation, end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
