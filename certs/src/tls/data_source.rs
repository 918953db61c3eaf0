//! Reading Envoy `DataSource` values (filename, inline bytes, inline string, environment
//! variable) and decoding PEM certificates and keys from them.

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsError;

/// Returns the bytes a `DataSource` points at, or `None` if the field is unset or has no
/// specifier. `field` is the proto path used in error messages.
pub(crate) fn read(ds: Option<&DataSource>, field: &str) -> Result<Option<Vec<u8>>, TlsError> {
    let Some(ds) = ds else { return Ok(None) };
    if ds.watched_directory.is_some() {
        return Err(TlsError::unsupported(
            format!("{field}.watched_directory"),
            "file watching for rotation; deliver rotated secrets through SDS instead",
        ));
    }
    match &ds.specifier {
        None => Ok(None),
        Some(Specifier::Filename(path)) => std::fs::read(path).map(Some).map_err(|source| TlsError::ReadFile {
            field: format!("{field}.filename"),
            path: path.into(),
            source,
        }),
        Some(Specifier::InlineBytes(b)) => Ok(Some(b.clone())),
        Some(Specifier::InlineString(s)) => Ok(Some(s.as_bytes().to_vec())),
        Some(Specifier::EnvironmentVariable(var)) => match std::env::var_os(var) {
            Some(v) => Ok(Some(v.into_encoded_bytes())),
            None => Err(TlsError::invalid(
                format!("{field}.environment_variable"),
                format!("environment variable {var:?} is not set"),
            )),
        },
    }
}

/// Like [`read`], but a missing value is an error.
pub(crate) fn read_required(ds: Option<&DataSource>, field: &str) -> Result<Vec<u8>, TlsError> {
    read(ds, field)?.ok_or_else(|| TlsError::invalid(field, "is required"))
}

/// Every certificate in a PEM bundle, in order. Fails if there is none or one is malformed.
pub(crate) fn pem_certificates(pem: &[u8], field: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::invalid(field, format!("invalid PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::invalid(field, "no PEM certificate (-----BEGIN CERTIFICATE-----) found"));
    }
    Ok(certs)
}

/// The first private key in a PEM blob (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub(crate) fn pem_private_key(pem: &[u8], field: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        let reason = match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no PEM private key found (encrypted keys are not supported)".to_string()
            }
            e => format!("invalid PEM private key: {e}"),
        };
        TlsError::invalid(field, reason)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(s: Specifier) -> DataSource {
        DataSource { specifier: Some(s), ..Default::default() }
    }

    #[test]
    fn reads_every_specifier() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"file").unwrap();
        let got = read(Some(&ds(Specifier::Filename(path.display().to_string()))), "x").unwrap();
        assert_eq!(got.as_deref(), Some(&b"file"[..]));
        let got = read(Some(&ds(Specifier::InlineBytes(b"b".to_vec()))), "x").unwrap();
        assert_eq!(got.as_deref(), Some(&b"b"[..]));
        let got = read(Some(&ds(Specifier::InlineString("s".into()))), "x").unwrap();
        assert_eq!(got.as_deref(), Some(&b"s"[..]));
        assert_eq!(read(None, "x").unwrap(), None);
        // PATH is set in every test environment.
        let got = read(Some(&ds(Specifier::EnvironmentVariable("PATH".into()))), "x").unwrap();
        assert!(got.is_some());
    }

    #[test]
    fn errors_name_field_and_file() {
        let e = read(
            Some(&ds(Specifier::Filename("/nonexistent/remora.pem".into()))),
            "common_tls_context.tls_certificates[0].certificate_chain",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("common_tls_context.tls_certificates[0].certificate_chain.filename"), "{e}");
        assert!(e.contains("/nonexistent/remora.pem"), "{e}");
        let e = read(Some(&ds(Specifier::EnvironmentVariable("REMORA_SURELY_UNSET_VAR".into()))), "trusted_ca")
            .unwrap_err()
            .to_string();
        assert!(e.contains("REMORA_SURELY_UNSET_VAR"), "{e}");
        let e = pem_certificates(b"not pem", "trusted_ca").unwrap_err().to_string();
        assert!(e.starts_with("trusted_ca: no PEM certificate"), "{e}");
        let e = pem_private_key(b"", "private_key").unwrap_err().to_string();
        assert!(e.starts_with("private_key: no PEM private key"), "{e}");
    }
}
