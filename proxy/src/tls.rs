//! TLS transport sockets (`envoy.transport_sockets.tls`), the proxy's side. TLS itself has one
//! owner, the certs crate: it compiles `DownstreamTlsContext` / `UpstreamTlsContext` into rustls
//! configs, verifies peers (trusted CA, SAN matchers), stores and rotates secrets, resets session
//! resumption when they change and reads the peer's identity. What stays here is the proxy's own:
//! - [`context`]: the glue from Envoy protos and the `BuildCtx` to certs calls (config errors in
//!   the listener's or cluster's field path, the node check for SDS, the files of file-based SDS
//!   the config manager watches), and the configs listeners and clusters hold;
//! - [`secrets`]: the secret store and the compiled secrets the config manager feeds it
//!   (bootstrap `static_resources.secrets`, SDS, the CA client);
//! - [`handshake`]: handshake outcomes as Envoy's `ssl.*` stats, and the `ConnInfo` facts a
//!   listener hands its filters after a handshake.
//!
//! Invariants: anything security-relevant remora cannot honour is a config error, never
//! ignored; a secret update applies to the next handshake, open connections are untouched.

pub mod context;
pub mod handshake;
pub mod secrets;

pub use context::{ClientTls, ServerTls, Tls};
pub use handshake::{HandshakeError, HandshakeFailure, conn_info};
pub use secrets::SecretStore;

use crate::config::ConfigError;

/// certs names the field at fault relative to the TLS context (or secret) it was given;
/// [`ConfigError::within`] then prefixes the enclosing path.
impl From<certs::TlsError> for ConfigError {
    fn from(e: certs::TlsError) -> Self {
        use certs::TlsError as E;
        match e {
            E::Invalid { field, reason } => ConfigError::new(field, reason),
            E::Unsupported { field, reason } => ConfigError::new(field, format!("not supported by remora: {reason}")),
            E::ReadFile { field, path, source } => {
                ConfigError::new(field, format!("Invalid path: {}: {source}", path.display()))
            }
            E::Rustls { field, source } => ConfigError::new(field, source.to_string()),
        }
    }
}
