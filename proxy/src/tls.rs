//! TLS transport sockets (`envoy.transport_sockets.tls`): Envoy's `DownstreamTlsContext` and
//! `UpstreamTlsContext` compiled into rustls configs, with certificates and trust bundles taken
//! inline, from files, or by name from the secret store (static secrets and SDS), Envoy's
//! certificate validation (trusted CA + subject-alt-name matchers, no hostname check unless the
//! matchers ask) and the peer identity later filters read.
//!
//! Invariants: anything security-relevant remora cannot honour is a config error, never
//! ignored; a secret update applies to the next handshake (configs are rebuilt when the secret
//! store's generation changes), open connections are untouched.

pub mod context;
pub mod secrets;
pub mod verify;

pub use context::{ClientTls, ServerTls};
pub use secrets::SecretStore;

use std::sync::Arc;

/// The crypto provider all TLS uses (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
