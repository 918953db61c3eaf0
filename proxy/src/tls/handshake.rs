//! After (or instead of) a downstream handshake: why it failed, in the terms of Envoy's listener
//! `ssl.*` stats, and what it established, as the `ConnInfo` facts filters, XFCC, RBAC and
//! access logs read.

use std::fmt;

use crate::stream_info::ConnInfo;

use super::ServerTls;

/// Why a server handshake failed. Each also counts `ssl.connection_error`; the variant names
/// the stat counted besides, if any ([`stat_name`](Self::stat_name)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The context's secrets have not arrived (no handshake was attempted).
    NotReady,
    /// A client certificate was required and none was sent (`ssl.no_certificate`).
    NoCertificate,
    /// The client certificate's SANs match no configured matcher (`ssl.fail_verify_san`).
    FailVerifySan,
    /// The client certificate did not verify: chain, validity, usage (`ssl.fail_verify_error`).
    FailVerifyError,
    /// Anything else: protocol, versions, ciphers, I/O.
    Other,
}

impl HandshakeFailure {
    /// Classifies a handshake error (the `io::Error` tokio-rustls returns).
    pub fn of(e: &std::io::Error) -> Self {
        let Some(e) = e.get_ref().and_then(|r| r.downcast_ref::<rustls::Error>()) else {
            return HandshakeFailure::Other;
        };
        match e {
            rustls::Error::NoCertificatesPresented => HandshakeFailure::NoCertificate,
            e if certs::tls::SanMismatch::is(e) => HandshakeFailure::FailVerifySan,
            rustls::Error::InvalidCertificate(_) => HandshakeFailure::FailVerifyError,
            _ => HandshakeFailure::Other,
        }
    }

    /// The Envoy listener stat (below `listener.<address>.`) this failure counts besides
    /// `ssl.connection_error`.
    pub fn stat_name(self) -> Option<&'static str> {
        match self {
            HandshakeFailure::NoCertificate => Some("ssl.no_certificate"),
            HandshakeFailure::FailVerifySan => Some("ssl.fail_verify_san"),
            HandshakeFailure::FailVerifyError => Some("ssl.fail_verify_error"),
            HandshakeFailure::NotReady | HandshakeFailure::Other => None,
        }
    }
}

/// A failed server handshake: the classified reason and the error itself.
#[derive(Debug)]
pub struct HandshakeError {
    pub failure: HandshakeFailure,
    pub error: std::io::Error,
}

impl HandshakeError {
    pub fn new(error: std::io::Error) -> Self {
        HandshakeError { failure: HandshakeFailure::of(&error), error }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for HandshakeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// What the handshake established, for filters, headers and logs: SNI, ALPN, version, our own
/// URI SANs and the peer's identity (from its verified leaf certificate).
pub fn conn_info(s: &rustls::ServerConnection, tls: &ServerTls) -> ConnInfo {
    let mut c = ConnInfo {
        sni: s.server_name().map(str::to_string),
        alpn: s.alpn_protocol().map(|a| String::from_utf8_lossy(a).into_owned()),
        tls_version: s.protocol_version().map(|v| match v {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            _ => "TLSv1.2",
        }),
        local_uri_sans: tls.local_uri_sans(),
        ..Default::default()
    };
    if let Some(chain) = s.peer_certificates()
        && let Some(leaf) = chain.first()
    {
        // The certs verifiers parsed this certificate before accepting it, so it parses here.
        if let Ok(id) = certs::PeerIdentity::from_der(leaf) {
            c.peer_uri_sans = id.uri_sans;
            c.peer_dns_sans = id.dns_sans;
            // Envoy's subject form (RFC 2253, most specific RDN first), for XFCC and RBAC.
            c.peer_subject = Some(id.subject);
            c.peer_cert_sha256 = Some(id.sha256);
        }
        c.peer_chain = chain.iter().map(|d| d.clone().into_owned()).collect();
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_envoy_stats() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let f = HandshakeFailure::of(&io(rustls::Error::NoCertificatesPresented));
        assert_eq!(f.stat_name(), Some("ssl.no_certificate"));
        let f = HandshakeFailure::of(&io(rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)));
        assert_eq!(f.stat_name(), Some("ssl.fail_verify_error"));
        let f = HandshakeFailure::of(&io(rustls::Error::HandshakeNotComplete));
        assert_eq!(f, HandshakeFailure::Other);
        assert_eq!(HandshakeFailure::of(&std::io::Error::other("reset")), HandshakeFailure::Other);
    }
}
