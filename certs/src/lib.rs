//! SPIFFE identities, rustls configs from Envoy TLS contexts, SAN matching, the secret store,
//! the Istio CA client and a dev CA. This crate is remora's only TLS implementation: the proxy
//! builds every rustls config, verifies every peer and stores every secret through it, and keeps
//! only its own glue (config errors in Envoy's field paths, file-based SDS, `ssl.*` stats).
//!
//! Module map:
//! - [`spiffe`]: `SpiffeId` parsing and accessors;
//! - [`secret`]: `SecretStore`, the named certificates and trust bundles SDS (or static
//!   bootstrap secrets, or the CA client) delivers, validated when set and read lock-free per
//!   handshake; every change resets TLS session resumption, as Envoy's context rebuild does;
//! - [`tls`]: `ServerTlsConfig` / `ClientTlsConfig` from `DownstreamTlsContext` /
//!   `UpstreamTlsContext` (Envoy's ALPN fallback, client-certificate rules and CA names, SNI,
//!   TLS parameters), SAN matchers, peer identity;
//! - [`dev_ca`]: a development CA (root + SPIFFE workload certificates) and `remora certs` args;
//! - [`ca`]: the Istio CA client (CSR -> `IstioCertificateService/CreateCertificate`) and its
//!   renewal loop, renewing into the `SecretStore` or handing certificates to the caller;
//! - `test_util` (feature `test-util`): an in-process Istio CA server and Istio-shaped TLS
//!   contexts for tests.
//!
//! How the proxy uses it (`remora::tls` wraps these calls):
//!
//! ```no_run
//! # async fn example(
//! #     downstream: &envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext,
//! #     upstream: &envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext,
//! #     sds_secrets: &[envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret],
//! #     accepted: tokio::net::TcpStream,
//! #     dialed: tokio::net::TcpStream,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use certs::{ClientTlsConfig, CompiledSecret, PeerIdentity, SecretStore, ServerTlsConfig};
//!
//! // One store per proxy. An SDS response is compiled whole first (a bad secret is an error
//! // to NACK, and nothing changes), then stored as one update.
//! let store = SecretStore::new();
//! let mut compiled = Vec::new();
//! for s in sds_secrets {
//!     compiled.push((s.name.clone(), CompiledSecret::from_proto(s, &s.name)?));
//! }
//! store.set(compiled);
//!
//! // Config time (LDS/CDS): compile once; errors name the field and become NACKs. A listener
//! // or cluster warms until `secret_names()` are all in the store.
//! let server = ServerTlsConfig::from_proto(downstream, &store)?;
//! let client = ClientTlsConfig::from_proto(upstream, &store)?;
//!
//! // Per accepted connection: handshake (ALPN as Envoy), then the peer's verified identity.
//! if server.is_ready() {
//!     let tls = server.accept(accepted).await?;
//!     let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
//!     let peer = leaf.map(PeerIdentity::from_der).transpose()?;
//!     let spiffe = peer.as_ref().and_then(|p| p.spiffe.as_ref());
//!     # let _ = spiffe;
//! }
//!
//! // Per upstream connection: the shared rustls config (or one with another ALPN list) and
//! // the server name that sends the configured SNI, or none.
//! if client.is_ready() {
//!     let cfg = client.client_config_with_alpn(&[b"istio-peer-exchange".to_vec()]);
//!     let upstream_tls = tokio_rustls::TlsConnector::from(cfg).connect(client.server_name(None), dialed).await?;
//!     # let _ = upstream_tls;
//! }
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

pub use secret::{CompiledSecret, DEFAULT_CERT_SECRET, ROOT_CA_SECRET, SecretStore};
pub use spiffe::{SpiffeId, SpiffeIdError};
pub use tls::{ClientTlsConfig, PeerIdentity, Readiness, ServerTlsConfig, TlsError};
