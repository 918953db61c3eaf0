//! `TlsParameters`: protocol versions, TLS 1.2 cipher suites and ECDH curves, mapped onto a
//! rustls `CryptoProvider` and version list.
//!
//! Envoy takes OpenSSL/BoringSSL names. rustls implements only forward-secret AEAD suites, so
//! names BoringSSL knows but rustls lacks (CBC, static-RSA key exchange, PSK, 3DES) and curves
//! it lacks (P-521, hybrid post-quantum groups) narrow the allowed set: they are dropped and
//! reported in `warnings`, which is never weaker than what was configured. Istio's default
//! inbound list carries two such names (`AES256-GCM-SHA384`, `AES128-GCM-SHA256`), so failing on
//! them would reject every Istio listener. Unknown names, cipher-string operators, and a
//! configuration that leaves nothing to negotiate are errors. `signature_algorithms` and
//! `compliance_policies` are unsupported.

use std::sync::Arc;

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{TlsParameters, tls_parameters::TlsProtocol};
use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::{cipher_suite as cs, kx_group};
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};

use super::{TlsError, base_provider};

/// Which end of the connection the parameters are for (the defaults differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Server,
    Client,
}

/// The compiled parameters.
#[derive(Debug)]
pub(crate) struct Params {
    pub provider: Arc<CryptoProvider>,
    pub versions: Vec<&'static SupportedProtocolVersion>,
    pub warnings: Vec<String>,
}

/// BoringSSL cipher names rustls implements, TLS 1.2 only (TLS 1.3 suites are not configurable
/// in Envoy either).
fn tls12_suite(name: &str) -> Option<SupportedCipherSuite> {
    Some(match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-AES128-GCM-SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-ECDSA-AES256-GCM-SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-AES256-GCM-SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-CHACHA20-POLY1305" => cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-RSA-CHACHA20-POLY1305" => cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        _ => return None,
    })
}

/// Names BoringSSL accepts that rustls does not implement.
const KNOWN_UNSUPPORTED_CIPHERS: &[&str] = &[
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES128-SHA256",
    "ECDHE-ECDSA-AES256-SHA384",
    "ECDHE-RSA-AES256-SHA384",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "AES128-SHA256",
    "AES256-SHA256",
    "DES-CBC3-SHA",
    "ECDHE-PSK-AES128-CBC-SHA",
    "ECDHE-PSK-AES256-CBC-SHA",
    "ECDHE-PSK-CHACHA20-POLY1305",
    "PSK-AES128-CBC-SHA",
    "PSK-AES256-CBC-SHA",
];

/// TLS 1.3 suite names: accepted by BoringSSL in a cipher list, but without effect.
const TLS13_NAMES: &[&str] = &["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"];

fn kx(name: &str) -> Option<&'static dyn rustls::crypto::SupportedKxGroup> {
    Some(match name {
        "X25519" => kx_group::X25519,
        "P-256" | "prime256v1" => kx_group::SECP256R1,
        "P-384" | "secp384r1" => kx_group::SECP384R1,
        _ => return None,
    })
}

const KNOWN_UNSUPPORTED_CURVES: &[&str] =
    &["P-521", "secp521r1", "X25519Kyber768Draft00", "X25519MLKEM768", "P256Kyber768Draft00"];

fn version_rank(p: TlsProtocol) -> u8 {
    match p {
        TlsProtocol::TlsAuto => 0,
        TlsProtocol::TlSv10 => 10,
        TlsProtocol::TlSv11 => 11,
        TlsProtocol::TlSv12 => 12,
        TlsProtocol::TlSv13 => 13,
    }
}

/// Compiles `tls_params` (absent means all defaults); `field` is its proto path for errors.
pub(crate) fn compile(p: Option<&TlsParameters>, side: Side, field: &str) -> Result<Params, TlsError> {
    let default = TlsParameters::default();
    let p = p.unwrap_or(&default);
    let mut warnings = Vec::new();

    let proto = |v: i32, name: &str| {
        TlsProtocol::try_from(v)
            .map_err(|_| TlsError::invalid(format!("{field}.{name}"), format!("unknown TLS version {v}")))
    };
    let min = match proto(p.tls_minimum_protocol_version, "tls_minimum_protocol_version")? {
        TlsProtocol::TlsAuto => 12,
        v => version_rank(v),
    };
    let max = match proto(p.tls_maximum_protocol_version, "tls_maximum_protocol_version")? {
        TlsProtocol::TlsAuto => match side {
            Side::Server => 13,
            Side::Client => 12,
        },
        v => version_rank(v),
    };
    if min > max {
        return Err(TlsError::invalid(
            field,
            "tls_minimum_protocol_version is greater than tls_maximum_protocol_version",
        ));
    }
    if max < 12 {
        return Err(TlsError::unsupported(
            format!("{field}.tls_maximum_protocol_version"),
            "TLS versions below TLSv1_2 (rustls implements TLSv1_2 and TLSv1_3)",
        ));
    }
    if min < 12 {
        warnings.push(format!("{field}.tls_minimum_protocol_version: TLS below 1.2 is not available, using TLSv1_2"));
    }
    let mut tls12 = min <= 12;
    let tls13 = max >= 13;

    let mut provider = base_provider();

    // Cipher suites (TLS 1.2).
    if !p.cipher_suites.is_empty() {
        let mut suites: Vec<SupportedCipherSuite> = Vec::new();
        for (i, entry) in p.cipher_suites.iter().enumerate() {
            let f = format!("{field}.cipher_suites[{i}]");
            // "[A|B]" is an equal-preference group; keep its order.
            let inner = match entry.strip_prefix('[') {
                Some(rest) => rest
                    .strip_suffix(']')
                    .ok_or_else(|| TlsError::invalid(&f, format!("unbalanced '[' in {entry:?}")))?,
                None => entry.as_str(),
            };
            for name in inner.split(['|', ':']) {
                let name = name.trim();
                if let Some(s) = tls12_suite(name) {
                    if !suites.iter().any(|x| x.suite() == s.suite()) {
                        suites.push(s);
                    }
                } else if KNOWN_UNSUPPORTED_CIPHERS.contains(&name) {
                    warnings.push(format!("{f}: {name} is not implemented by rustls, skipped"));
                } else if TLS13_NAMES.contains(&name) {
                    // No effect, as in Envoy.
                } else {
                    return Err(TlsError::invalid(&f, format!("unknown cipher suite {name:?}")));
                }
            }
        }
        if suites.is_empty() {
            if tls12 && !tls13 {
                return Err(TlsError::unsupported(
                    format!("{field}.cipher_suites"),
                    "none of the listed TLS 1.2 cipher suites is implemented by rustls \
                     (it has only ECDHE with AES-GCM or CHACHA20-POLY1305)",
                ));
            }
            if tls12 {
                warnings.push(format!("{field}.cipher_suites: no usable TLS 1.2 suite, TLS 1.2 disabled"));
            }
            tls12 = false;
        }
        let mut all: Vec<SupportedCipherSuite> =
            provider.cipher_suites.iter().copied().filter(|s| s.version() == &rustls::version::TLS13).collect();
        all.extend(suites);
        provider.cipher_suites = all;
    }

    // ECDH curves.
    if !p.ecdh_curves.is_empty() {
        let mut groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup> = Vec::new();
        for (i, entry) in p.ecdh_curves.iter().enumerate() {
            let f = format!("{field}.ecdh_curves[{i}]");
            for name in entry.split(':') {
                let name = name.trim();
                if let Some(g) = kx(name) {
                    if !groups.iter().any(|x| x.name() == g.name()) {
                        groups.push(g);
                    }
                } else if KNOWN_UNSUPPORTED_CURVES.contains(&name) {
                    warnings.push(format!("{f}: {name} is not implemented by rustls, skipped"));
                } else {
                    return Err(TlsError::invalid(&f, format!("unknown curve {name:?}")));
                }
            }
        }
        if groups.is_empty() {
            return Err(TlsError::unsupported(
                format!("{field}.ecdh_curves"),
                "none of the listed curves is implemented by rustls (X25519, P-256, P-384)",
            ));
        }
        provider.kx_groups = groups;
    }

    if !p.signature_algorithms.is_empty() {
        return Err(TlsError::unsupported(format!("{field}.signature_algorithms"), "restricting signature algorithms"));
    }
    if !p.compliance_policies.is_empty() {
        return Err(TlsError::unsupported(
            format!("{field}.compliance_policies"),
            "compliance policies (e.g. FIPS_202205)",
        ));
    }

    let mut versions = Vec::new();
    if tls13 {
        versions.push(&rustls::version::TLS13);
    }
    if tls12 {
        versions.push(&rustls::version::TLS12);
    }
    if versions.is_empty() {
        return Err(TlsError::invalid(field, "no TLS version left to negotiate"));
    }
    for w in &warnings {
        tracing::warn!("{w}");
    }
    Ok(Params { provider: Arc::new(provider), versions, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(min: TlsProtocol, max: TlsProtocol, ciphers: &[&str]) -> TlsParameters {
        TlsParameters {
            tls_minimum_protocol_version: min as i32,
            tls_maximum_protocol_version: max as i32,
            cipher_suites: ciphers.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn versions(p: &Params) -> Vec<rustls::ProtocolVersion> {
        p.versions.iter().map(|v| v.version).collect()
    }

    #[test]
    fn defaults_follow_envoy() {
        let s = compile(None, Side::Server, "p").unwrap();
        assert_eq!(versions(&s), [rustls::ProtocolVersion::TLSv1_3, rustls::ProtocolVersion::TLSv1_2]);
        let c = compile(None, Side::Client, "p").unwrap();
        assert_eq!(versions(&c), [rustls::ProtocolVersion::TLSv1_2]);
    }

    #[test]
    fn istio_inbound_params_are_accepted() {
        let p = params(
            TlsProtocol::TlSv12,
            TlsProtocol::TlSv13,
            &[
                "ECDHE-ECDSA-AES256-GCM-SHA384",
                "ECDHE-RSA-AES256-GCM-SHA384",
                "ECDHE-ECDSA-AES128-GCM-SHA256",
                "ECDHE-RSA-AES128-GCM-SHA256",
                "AES256-GCM-SHA384",
                "AES128-GCM-SHA256",
            ],
        );
        let c = compile(Some(&p), Side::Server, "p").unwrap();
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        let tls12: Vec<_> = c
            .provider
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .map(|s| s.suite())
            .collect();
        assert_eq!(
            tls12,
            [
                rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            ]
        );
    }

    #[test]
    fn rejections_name_the_field() {
        let e = compile(
            Some(&params(TlsProtocol::TlSv12, TlsProtocol::TlSv12, &["AES128-SHA"])),
            Side::Client,
            "common_tls_context.tls_params",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("common_tls_context.tls_params.cipher_suites: not supported"), "{e}");
        let e = compile(Some(&params(TlsProtocol::TlsAuto, TlsProtocol::TlsAuto, &["BOGUS"])), Side::Client, "t")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "t.cipher_suites[0]: unknown cipher suite \"BOGUS\"");
        let e = compile(Some(&params(TlsProtocol::TlSv10, TlsProtocol::TlSv11, &[])), Side::Client, "t")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.tls_maximum_protocol_version: not supported"), "{e}");
        let e = compile(Some(&params(TlsProtocol::TlSv13, TlsProtocol::TlSv12, &[])), Side::Client, "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("greater than"), "{e}");
        let p = TlsParameters { signature_algorithms: vec!["ecdsa_secp256r1_sha256".into()], ..Default::default() };
        assert!(matches!(compile(Some(&p), Side::Server, "t"), Err(TlsError::Unsupported { .. })));
    }

    #[test]
    fn tls13_only_with_unsupported_tls12_ciphers_is_fine() {
        let c = compile(Some(&params(TlsProtocol::TlSv13, TlsProtocol::TlSv13, &["AES128-SHA"])), Side::Server, "t")
            .unwrap();
        assert_eq!(versions(&c), [rustls::ProtocolVersion::TLSv1_3]);
    }

    #[test]
    fn curves() {
        let p = TlsParameters { ecdh_curves: vec!["P-256".into(), "X25519MLKEM768".into()], ..Default::default() };
        let c = compile(Some(&p), Side::Server, "t").unwrap();
        assert_eq!(c.provider.kx_groups.len(), 1);
        assert_eq!(c.provider.kx_groups[0].name(), rustls::NamedGroup::secp256r1);
        let p = TlsParameters { ecdh_curves: vec!["nope".into()], ..Default::default() };
        assert!(compile(Some(&p), Side::Server, "t").is_err());
    }
}
