//! The identity a peer proved in a handshake, from the leaf of its verified chain: what Envoy's
//! `x-forwarded-client-cert` (Hash, Subject, URI, DNS), RBAC principals and Istio telemetry need.

use std::fmt::Write;

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::*;

use super::TlsError;
use super::matcher::ip_to_string;
use crate::SpiffeId;

/// The identity in a peer's leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// URI SANs in certificate order.
    pub uri_sans: Vec<String>,
    /// DNS SANs in certificate order.
    pub dns_sans: Vec<String>,
    /// IP SANs as text.
    pub ip_sans: Vec<String>,
    /// Subject in RFC 2253 form (most specific RDN first, as OpenSSL's `XN_FLAG_RFC2253`).
    pub subject: String,
    /// The first URI SAN that is a valid SPIFFE ID.
    pub spiffe: Option<SpiffeId>,
    /// Lowercase hex SHA-256 of the leaf certificate's DER (XFCC `Hash`).
    pub sha256: String,
    /// Expiry, seconds since the Unix epoch.
    pub not_after: i64,
}

impl PeerIdentity {
    /// Reads the identity from a DER certificate.
    pub fn from_der(der: &CertificateDer<'_>) -> Result<Self, TlsError> {
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| TlsError::invalid("certificate", format!("invalid X.509: {e}")))?;
        let mut id = PeerIdentity {
            uri_sans: Vec::new(),
            dns_sans: Vec::new(),
            ip_sans: Vec::new(),
            subject: rfc2253(cert.subject()),
            spiffe: None,
            sha256: sha256_hex(der.as_ref()),
            not_after: cert.validity().not_after.timestamp(),
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => id.uri_sans.push((*u).to_string()),
                    GeneralName::DNSName(d) => id.dns_sans.push((*d).to_string()),
                    GeneralName::IPAddress(b) => id.ip_sans.extend(ip_to_string(b)),
                    _ => {}
                }
            }
        }
        id.spiffe = id.uri_sans.iter().find_map(|u| SpiffeId::parse(u).ok());
        Ok(id)
    }

    /// The identity of the peer of an established connection (its leaf certificate), if the peer
    /// presented one. Certificates are only exposed by rustls after they were verified.
    pub fn from_connection(conn: &rustls::CommonState) -> Option<Self> {
        let leaf = conn.peer_certificates()?.first()?;
        Self::from_der(leaf).ok()
    }
}

/// Lowercase hex SHA-256.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut s = String::with_capacity(64);
    for b in digest.as_ref() {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Formats a distinguished name like OpenSSL's `X509_NAME_print_ex(.., XN_FLAG_RFC2253)`:
/// RDNs in reverse order separated by `,`, multi-valued RDNs joined by `+`, short attribute
/// names, RFC 2253 escaping, and bytes outside printable ASCII as `\XX`.
pub(crate) fn rfc2253(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    let rdns: Vec<_> = name.iter().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = atv.attr_type();
            match short_name(&oid.to_id_string()) {
                Some(sn) => out.push_str(sn),
                None => out.push_str(&oid.to_id_string()),
            }
            out.push('=');
            match atv.as_str() {
                Ok(v) => escape_value(v, &mut out),
                Err(_) => {
                    // Unknown string type: dump the DER value as hex, as OpenSSL does.
                    out.push('#');
                    for b in atv.attr_value().data.iter() {
                        let _ = write!(out, "{b:02X}");
                    }
                }
            }
        }
    }
    out
}

fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.5" => "serialNumber",
        "2.5.4.4" => "SN",
        "2.5.4.42" => "GN",
        "2.5.4.12" => "title",
        "2.5.4.46" => "dnQualifier",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        "1.2.840.113549.1.9.1" => "emailAddress",
        _ => return None,
    })
}

fn escape_value(v: &str, out: &mut String) {
    let bytes = v.as_bytes();
    let last = bytes.len().saturating_sub(1);
    for (i, &b) in bytes.iter().enumerate() {
        let special = matches!(b, b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';')
            || (i == 0 && (b == b'#' || b == b' '))
            || (i == last && b == b' ');
        if special {
            out.push('\\');
            out.push(b as char);
        } else if !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\{b:02X}");
        } else {
            out.push(b as char);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_is_lower_hex() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn escapes_like_rfc2253() {
        let mut s = String::new();
        escape_value(" a,b+c\"d\\e<f>g;h ", &mut s);
        assert_eq!(s, "\\ a\\,b\\+c\\\"d\\\\e\\<f\\>g\\;h\\ ");
        let mut s = String::new();
        escape_value("#x é", &mut s);
        assert_eq!(s, "\\#x \\C3\\A9");
    }
}
