//! SPIFFE identities, rustls configs from Envoy TLS contexts, SAN matching, the Istio CA client
//! and a dev CA.
//!
//! Module map:
//! - [`spiffe`]: `SpiffeId` parsing and accessors;
//! - [`secret`]: `SecretStore`, the named certificates and trust bundles SDS (or the CA client)
//!   delivers, read lock-free per handshake;
//! - [`tls`]: `ServerTlsConfig` / `ClientTlsConfig` from `DownstreamTlsContext` /
//!   `UpstreamTlsContext`, SAN matchers, peer identity;
//! - [`dev_ca`]: a development CA (root + SPIFFE workload certificates) and `remora certs` args;
//! - [`ca`]: the Istio CA client (CSR -> `IstioCertificateService/CreateCertificate`), renewing
//!   into the `SecretStore`;
//! - `test_util` (feature `test-util`): an in-process Istio CA server for tests.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod ca;
pub mod dev_ca;
pub mod secret;
pub mod spiffe;
pub mod tls;

#[cfg(any(test, feature = "test-util"))]
pub mod test_util;

pub use secret::{DEFAULT_CERT_SECRET, ROOT_CA_SECRET, SecretStore};
pub use spiffe::{SpiffeId, SpiffeIdError};
pub use tls::{ClientTlsConfig, PeerIdentity, Readiness, ServerTlsConfig, TlsError};
