//! Secrets: the store is the certs crate's [`SecretStore`] (named certificates and validation
//! contexts, validated when set, read lock-free per handshake, session resumption reset on every
//! change). The config manager fills it from the bootstrap's `static_resources.secrets`, SDS,
//! file-based SDS and the CA client, one [`Secret`] at a time compiled first, so a bad one is
//! refused before anything changes.
//!
//! What is the proxy's own is where a TLS context's SDS secrets come from ([`SdsSources`]): the
//! files of file-based SDS the config manager watches, and whether any secret is fetched from a
//! config source at all (Envoy then requires the node's id and cluster).

use std::path::PathBuf;

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, SdsSecretConfig, common_tls_context::ValidationContextType,
};

use crate::config::{ConfigError, NodeInfo};

pub use certs::SecretStore;

/// A compiled secret, ready for [`SecretStore::set`]: `Secret::from_proto(&proto, field)`.
pub use certs::CompiledSecret as Secret;

/// The SDS side of a `CommonTlsContext`, as the proxy wires it.
#[derive(Debug, Default)]
pub(crate) struct SdsSources {
    /// Files of file-based SDS (`sds_config.path_config_source`), watched for the secrets.
    pub(crate) files: Vec<PathBuf>,
    /// Secrets whose config source is `ads`: Envoy subscribes to them on the ADS stream, not on
    /// an SDS cluster's (istiod serves a Gateway's `credentialName` this way).
    pub(crate) ads: Vec<String>,
    /// Envoy's SDS API name for the first secret fetched from a config source (not static).
    api: Option<&'static str>,
}

impl SdsSources {
    pub(crate) fn of(common: Option<&CommonTlsContext>) -> Self {
        let mut out = SdsSources::default();
        let Some(c) = common else { return out };
        for s in &c.tls_certificate_sds_secret_configs {
            out.add(s, "TlsCertificateSdsApi");
        }
        let validation = match &c.validation_context_type {
            Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => Some(s),
            Some(ValidationContextType::CombinedValidationContext(cv)) => {
                cv.validation_context_sds_secret_config.as_ref()
            }
            _ => None,
        };
        if let Some(s) = validation {
            out.add(s, "CertificateValidationContextSdsApi");
        }
        out
    }

    fn add(&mut self, s: &SdsSecretConfig, api: &'static str) {
        let Some(source) = &s.sds_config else { return };
        if let Some(p) = crate::config::file_source(source) {
            self.files.push(p);
        }
        if matches!(
            source.config_source_specifier,
            Some(envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier::Ads(_))
        ) {
            self.ads.push(s.name.clone());
        }
        self.api.get_or_insert(api);
    }

    /// Envoy refuses secrets from a config source when the node has no id or cluster.
    pub(crate) fn check_node(&self, node: &NodeInfo, field: &str) -> Result<(), ConfigError> {
        match self.api {
            Some(api) if node.id.is_empty() || node.cluster.is_empty() => Err(ConfigError::new(
                field,
                format!(
                    "{api}: node 'id' and 'cluster' are required. Set it either in 'node' config or via --service-node and --service-cluster options."
                ),
            )),
            _ => Ok(()),
        }
    }
}
