//! rustls configurations built from Envoy's TLS transport socket protos.
//!
//! `ServerTlsConfig` (from `DownstreamTlsContext`) and `ClientTlsConfig` (from
//! `UpstreamTlsContext`) are built once per listener filter chain / cluster and then handed an
//! `Arc<rustls::ServerConfig>` / `Arc<rustls::ClientConfig>` per handshake. Certificates and
//! validation contexts named by SDS are read from the [`SecretStore`](crate::SecretStore) at
//! handshake time, so a rotated secret applies to the next handshake without rebuilding anything,
//! and open connections are untouched.
//!
//! Envoy semantics kept on purpose:
//! - upstream: no hostname verification; the chain must reach `trusted_ca` and, if configured, a
//!   SAN matcher must match; with no validation context the server certificate is not verified;
//! - downstream: client certificates are requested when a validation context is configured and
//!   required when `require_client_certificate` is set or SAN matchers exist;
//! - ALPN mismatch on the server side continues without ALPN (BoringSSL's behaviour), it does not
//!   abort the handshake as rustls would by default.
//!
//! Anything security-relevant that is not implemented is a [`TlsError::Unsupported`], never
//! silently ignored.

mod certificate;
mod client;
mod data_source;
mod matcher;
mod params;
mod peer;
mod resumption;
mod server;
mod validation;

use std::path::PathBuf;

pub use certificate::CertificateSecret;
pub use client::ClientTlsConfig;
pub use matcher::{SanMatcher, SanType, StringMatch};
pub use peer::PeerIdentity;
pub use server::ServerTlsConfig;
pub use validation::{SanMismatch, ValidationSecret};

pub(crate) use certificate::compile_tls_certificate;
pub(crate) use validation::compile_validation_secret;

/// Errors building TLS configuration from Envoy protos. Each names the proto field at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A field has a value that is invalid (as Envoy would reject it).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// A field asks for something remora does not implement. Security-relevant settings are
    /// never ignored: the whole resource is rejected.
    #[error("{field}: not supported by remora: {reason}")]
    Unsupported { field: String, reason: String },
    /// A `DataSource` names a file that cannot be read.
    #[error("{field}: reading {}: {source}", path.display())]
    ReadFile { field: String, path: PathBuf, source: std::io::Error },
    /// rustls refused a value (key type, protocol versions, ...).
    #[error("{field}: {source}")]
    Rustls { field: String, source: rustls::Error },
}

impl TlsError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        TlsError::Invalid { field: field.into(), reason: reason.into() }
    }

    pub(crate) fn unsupported(field: impl Into<String>, reason: impl Into<String>) -> Self {
        TlsError::Unsupported { field: field.into(), reason: reason.into() }
    }
}

/// Whether a TLS configuration can serve handshakes yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Every referenced secret is present.
    Ready,
    /// Waiting for these SDS secrets (Envoy keeps the listener or cluster warming).
    Warming { missing: Vec<String> },
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        matches!(self, Readiness::Ready)
    }
}

/// The secrets a compiled context reads: its certificates and its validation settings.
pub(crate) struct Secrets<'a> {
    pub(crate) certs: &'a [certificate::CertSource],
    pub(crate) validation: &'a validation::ValidationSource,
}

impl Secrets<'_> {
    /// Whether every named secret is present (no allocation).
    pub(crate) fn is_ready(&self) -> bool {
        self.certs.iter().all(|s| s.load().is_some()) && self.validation.is_ready()
    }

    /// The SDS secret names, certificates first, present or not.
    pub(crate) fn names(&self) -> Vec<String> {
        let certs = self.certs.iter().filter_map(|s| s.secret_name());
        certs.chain(self.validation.secret_name()).map(str::to_string).collect()
    }

    pub(crate) fn readiness(&self) -> Readiness {
        let mut missing: Vec<String> = self
            .certs
            .iter()
            .filter(|s| s.load().is_none())
            .filter_map(|s| s.secret_name().map(str::to_string))
            .collect();
        if !self.validation.is_ready() {
            missing.extend(self.validation.secret_name().map(str::to_string));
        }
        if missing.is_empty() { Readiness::Ready } else { Readiness::Warming { missing } }
    }

    /// Waits until every named secret is present.
    pub(crate) async fn wait(&self, store: &crate::SecretStore) {
        let mut rx = store.subscribe();
        while !self.is_ready() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// The crypto provider every config starts from (ring), before `tls_params` narrow it.
pub(crate) fn base_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Signature algorithms used to verify certificate chains and handshake signatures.
pub(crate) fn verify_algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
    base_provider().signature_verification_algorithms
}
