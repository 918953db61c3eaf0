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
//! - `test_util` (feature `test-util`): an in-process Istio CA server and Istio-shaped TLS
//!   contexts for tests.
//!
//! How the proxy uses it:
//!
//! ```no_run
//! # async fn example(
//! #     downstream: &envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext,
//! #     upstream: &envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext,
//! #     sds_secret: &envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret,
//! #     accepted: tokio::net::TcpStream,
//! #     dialed: tokio::net::TcpStream,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use certs::{ClientTlsConfig, PeerIdentity, SecretStore, ServerTlsConfig};
//!
//! // One store per proxy; SDS (or the CA client) feeds it. A bad secret is an error to NACK.
//! let store = SecretStore::new();
//! store.apply(sds_secret)?;
//!
//! // Config time (LDS/CDS): compile once; errors name the field and become NACKs.
//! let server = ServerTlsConfig::from_proto(downstream, &store)?;
//! let client = ClientTlsConfig::from_proto(upstream, &store)?;
//! if !server.readiness().is_ready() {
//!     server.ready().await; // the listener warms until its secrets arrive
//! }
//!
//! // Per connection: handshake, then read the peer's verified identity.
//! let tls = server.accept(accepted).await?;
//! let peer = PeerIdentity::from_connection(tls.get_ref().1);
//! let spiffe = peer.as_ref().and_then(|p| p.spiffe.as_ref());
//! # let _ = spiffe;
//! let upstream_tls = client.connect(Some("reviews.default.svc.cluster.local"), dialed).await?;
//! # let _ = upstream_tls;
//! # Ok(())
//! # }
//! ```

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
