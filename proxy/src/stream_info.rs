//! Stream info (layer 0): what is known about a downstream connection, for filters, access logs
//! and the XFCC header: TLS facts, the peer's identity and the metadata it sent. Filled in by
//! the listener (transport socket, metadata exchange) and read by everything above it.

use envoy_types::pb::google::protobuf::{Struct, value};

/// Connection facts filters may read (TLS fields are filled by the TLS transport socket).
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    pub sni: Option<String>,
    pub alpn: Option<String>,
    pub tls_version: Option<&'static str>,
    /// The peer's URI SANs (first is the SPIFFE principal in a mesh).
    pub peer_uri_sans: Vec<String>,
    pub peer_dns_sans: Vec<String>,
    pub peer_subject: Option<String>,
    /// Lowercase hex SHA-256 of the peer's leaf certificate.
    pub peer_cert_sha256: Option<String>,
    pub local_uri_sans: Vec<String>,
    /// The peer's certificate chain, leaf first (XFCC `Cert` and `Chain`).
    pub peer_chain: std::sync::Arc<[rustls_pki_types::CertificateDer<'static>]>,
    /// What the peer sent in Istio's TCP metadata exchange.
    pub peer_metadata: Option<std::sync::Arc<PeerMetadata>>,
    /// The destination before an iptables redirect, when the original_dst filter restored it.
    pub original_dst: Option<std::net::SocketAddr>,
}

impl ConnInfo {
    /// True when the connection is TLS with a verified peer certificate.
    pub fn peer_certificate_presented(&self) -> bool {
        self.peer_cert_sha256.is_some()
    }
}

/// What the peer said about itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerMetadata {
    pub id: String,
    pub metadata: Struct,
}

impl PeerMetadata {
    /// A string field of the peer's metadata (`NAMESPACE`, `WORKLOAD_NAME`, ...).
    pub fn get(&self, key: &str) -> Option<&str> {
        match self.metadata.fields.get(key)?.kind.as_ref()? {
            value::Kind::StringValue(s) => Some(s),
            _ => None,
        }
    }
}

/// Why an attempt failed before a response (Envoy's reset reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    ConnectFailure,
    ConnectionTermination,
    RemoteReset,
    RemoteRefusedStream,
    LocalReset,
    Overflow,
    ProtocolError,
    ConnectTimeout,
}

impl ResetReason {
    /// The text Envoy puts after `reset reason: ` in its 503 body.
    pub fn envoy_text(self) -> &'static str {
        match self {
            ResetReason::ConnectFailure => "remote connection failure",
            ResetReason::ConnectTimeout => "connection timeout",
            ResetReason::ConnectionTermination => "connection termination",
            ResetReason::RemoteReset => "remote reset",
            ResetReason::RemoteRefusedStream => "remote refused stream reset",
            ResetReason::LocalReset => "local reset",
            ResetReason::Overflow => "overflow",
            ResetReason::ProtocolError => "protocol error",
        }
    }

    /// Envoy's response flag for the access log / `x-envoy-...` details.
    pub fn response_flag(self) -> &'static str {
        match self {
            ResetReason::ConnectFailure | ResetReason::ConnectTimeout => "UF",
            ResetReason::Overflow => "UO",
            _ => "UR",
        }
    }
}
