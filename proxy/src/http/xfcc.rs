//! `x-forwarded-client-cert` (XFCC): the HTTP connection manager's `forward_client_cert_details`
//! and `set_current_client_cert_details`, as Envoy's `mutateXfccRequestHeader` applies them.
//! Istio's inbound listeners use `APPEND_FORWARD` with subject, URI and DNS, so the app sees the
//! caller's SPIFFE ID; the default `SANITIZE` strips a client-supplied header, so it cannot be
//! spoofed.

use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager as HcmProto;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::ForwardClientCertDetails as Mode;
use http::{HeaderMap, HeaderName, HeaderValue};
use rustls_pki_types::CertificateDer;

use crate::stream_info::ConnInfo;

pub const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// What goes into a new XFCC element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detail {
    Cert,
    Chain,
    Subject,
    Uri,
    Dns,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Sanitize,
    ForwardOnly,
    AppendForward,
    SanitizeSet,
    AlwaysForwardOnly,
}

/// The compiled XFCC behaviour of one connection manager.
#[derive(Debug, Clone)]
pub struct Xfcc {
    action: Action,
    details: Vec<Detail>,
}

impl Xfcc {
    pub fn from_proto(p: &HcmProto) -> Self {
        let action = match Mode::try_from(p.forward_client_cert_details) {
            Ok(Mode::ForwardOnly) => Action::ForwardOnly,
            Ok(Mode::AppendForward) => Action::AppendForward,
            Ok(Mode::SanitizeSet) => Action::SanitizeSet,
            Ok(Mode::AlwaysForwardOnly) => Action::AlwaysForwardOnly,
            Ok(Mode::Sanitize) | Err(_) => Action::Sanitize,
        };
        let mut details = Vec::new();
        if let Some(d) = &p.set_current_client_cert_details {
            // The order Envoy writes them (checked against Envoy 1.40).
            let wanted = [
                (d.cert, Detail::Cert),
                (d.chain, Detail::Chain),
                (d.subject.is_some_and(|b| b.value), Detail::Subject),
                (d.uri, Detail::Uri),
                (d.dns, Detail::Dns),
            ];
            details.extend(wanted.into_iter().filter(|(on, _)| *on).map(|(_, d)| d));
        }
        Xfcc { action, details }
    }

    /// Rewrites the request's XFCC header for a request arriving on `conn`.
    pub fn apply(&self, headers: &mut HeaderMap, conn: &ConnInfo) {
        match self.action {
            Action::AlwaysForwardOnly => return,
            Action::Sanitize => {
                headers.remove(X_FORWARDED_CLIENT_CERT);
                return;
            }
            _ if !conn.peer_certificate_presented() => {
                headers.remove(X_FORWARDED_CLIENT_CERT);
                return;
            }
            Action::ForwardOnly => return,
            Action::AppendForward | Action::SanitizeSet => {}
        }
        let element = self.element(conn);
        let value = match (self.action, headers.get(X_FORWARDED_CLIENT_CERT).and_then(|v| v.to_str().ok())) {
            (Action::AppendForward, Some(prev)) if !prev.is_empty() => format!("{prev},{element}"),
            _ => element,
        };
        match HeaderValue::from_str(&value) {
            Ok(v) => {
                headers.insert(X_FORWARDED_CLIENT_CERT, v);
            }
            // A SAN with bytes a header cannot carry: drop rather than forward a stale value.
            Err(_) => {
                headers.remove(X_FORWARDED_CLIENT_CERT);
            }
        }
    }

    /// `By=<local URI SAN>;Hash=<sha256>;` then the configured details.
    fn element(&self, conn: &ConnInfo) -> String {
        let mut parts: Vec<String> = conn.local_uri_sans.iter().map(|u| format!("By={u}")).collect();
        if let Some(h) = &conn.peer_cert_sha256 {
            parts.push(format!("Hash={h}"));
        }
        for d in &self.details {
            match d {
                Detail::Subject => parts.push(format!("Subject=\"{}\"", conn.peer_subject.as_deref().unwrap_or(""))),
                Detail::Uri if conn.peer_uri_sans.is_empty() => parts.push("URI=".into()),
                Detail::Uri => parts.extend(conn.peer_uri_sans.iter().map(|u| format!("URI={u}"))),
                Detail::Dns => parts.extend(conn.peer_dns_sans.iter().map(|d| format!("DNS={d}"))),
                Detail::Cert => {
                    if let Some(leaf) = conn.peer_chain.first() {
                        parts.push(format!("Cert=\"{}\"", url_encode(&pem(leaf))));
                    }
                }
                Detail::Chain => {
                    if !conn.peer_chain.is_empty() {
                        let all: String = conn.peer_chain.iter().map(pem).collect();
                        parts.push(format!("Chain=\"{}\"", url_encode(&all)));
                    }
                }
            }
        }
        parts.join(";")
    }
}

/// PEM as OpenSSL writes it (64-column base64 lines).
fn pem(der: &CertificateDer<'static>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Percent-encodes all but RFC 3986's unreserved characters, as Envoy's `urlEncode`.
fn url_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, URL_ENCODE).to_string()
}

const URL_ENCODE: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> ConnInfo {
        ConnInfo {
            peer_uri_sans: vec!["spiffe://cluster.local/ns/a/sa/client".into()],
            peer_dns_sans: vec!["client.a".into()],
            peer_subject: Some("CN=client,O=mesh".into()),
            peer_cert_sha256: Some("ab12".into()),
            local_uri_sans: vec!["spiffe://cluster.local/ns/b/sa/server".into()],
            ..Default::default()
        }
    }

    fn hcm(mode: Mode, subject: bool, uri: bool, dns: bool) -> Xfcc {
        let mut p = HcmProto { forward_client_cert_details: mode as i32, ..Default::default() };
        p.set_current_client_cert_details = Some(
            envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::SetCurrentClientCertDetails {
                subject: Some(envoy_types::pb::google::protobuf::BoolValue { value: subject }),
                uri,
                dns,
                ..Default::default()
            },
        );
        Xfcc::from_proto(&p)
    }

    fn with_xfcc(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_CLIENT_CERT, HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")));
        h
    }

    #[test]
    fn sanitize_is_the_default_and_strips_spoofed_headers() {
        let x = Xfcc::from_proto(&HcmProto::default());
        let mut h = with_xfcc("By=spiffe://evil");
        x.apply(&mut h, &conn());
        assert!(h.get(X_FORWARDED_CLIENT_CERT).is_none());
    }

    #[test]
    fn append_forward_as_istio_inbound() {
        let x = hcm(Mode::AppendForward, true, true, true);
        let mut h = with_xfcc("By=x;Hash=y");
        x.apply(&mut h, &conn());
        assert_eq!(
            h.get(X_FORWARDED_CLIENT_CERT).and_then(|v| v.to_str().ok()),
            Some(
                "By=x;Hash=y,By=spiffe://cluster.local/ns/b/sa/server;Hash=ab12;Subject=\"CN=client,O=mesh\";\
                 URI=spiffe://cluster.local/ns/a/sa/client;DNS=client.a"
            )
        );
    }

    #[test]
    fn without_a_client_certificate_only_always_forward_keeps_the_header() {
        let plain = ConnInfo::default();
        for (mode, kept) in [
            (Mode::ForwardOnly, false),
            (Mode::AppendForward, false),
            (Mode::SanitizeSet, false),
            (Mode::AlwaysForwardOnly, true),
        ] {
            let mut h = with_xfcc("By=a");
            hcm(mode, false, true, false).apply(&mut h, &plain);
            assert_eq!(h.contains_key(X_FORWARDED_CLIENT_CERT), kept, "{mode:?}");
        }
        let mut h = with_xfcc("By=a");
        hcm(Mode::SanitizeSet, false, false, false).apply(&mut h, &conn());
        assert_eq!(
            h.get(X_FORWARDED_CLIENT_CERT).and_then(|v| v.to_str().ok()),
            Some("By=spiffe://cluster.local/ns/b/sa/server;Hash=ab12")
        );
    }

    #[test]
    fn url_encoding_keeps_only_unreserved() {
        assert_eq!(url_encode("a+b/c=\n-._~"), "a%2Bb%2Fc%3D%0A-._~");
    }
}
