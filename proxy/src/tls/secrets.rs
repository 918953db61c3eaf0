//! The secret store: named TLS certificates and validation contexts, from the bootstrap's
//! `static_resources.secrets` and from SDS. Readers check the generation to rebuild configs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret as SecretProto, secret};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

use super::verify::Validation;
use crate::config::ConfigError;
use crate::config::read_data_source;

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct CertKey {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// URI SANs of the leaf (our own identity, `%DOWNSTREAM_LOCAL_URI_SAN%`).
    pub uri_sans: Vec<String>,
}

impl CertKey {
    /// Parses PEM certificate chain and key bytes.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8], field: &str) -> Result<Self, ConfigError> {
        use rustls_pki_types::pem::PemObject;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem)
                .collect::<Result<_, _>>()
                .map_err(|e| ConfigError::new(format!("{field}.certificate_chain"), format!("invalid PEM: {e}")))?;
        if chain.is_empty() {
            return Err(ConfigError::new(format!("{field}.certificate_chain"), "no certificate found in PEM"));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| ConfigError::new(format!("{field}.private_key"), format!("invalid private key PEM: {e}")))?;
        let uri_sans = super::verify::sans_of(&chain[0]).map(|s| s.uri).unwrap_or_default();
        Ok(CertKey { chain, key, uri_sans })
    }

    pub fn from_proto(
        c: &envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::TlsCertificate,
        field: &str,
    ) -> Result<Self, ConfigError> {
        let chain = match &c.certificate_chain {
            Some(d) => read_data_source(d, &format!("{field}.certificate_chain"))?,
            None => return Err(ConfigError::new(field, "certificate_chain is required")),
        };
        let key = match &c.private_key {
            Some(d) => read_data_source(d, &format!("{field}.private_key"))?,
            None => return Err(ConfigError::new(field, "private_key is required")),
        };
        if c.private_key_provider.is_some() {
            return Err(ConfigError::new(field, "private_key_provider is not supported"));
        }
        if c.password.is_some() {
            return Err(ConfigError::new(field, "encrypted private keys (password) are not supported"));
        }
        CertKey::from_pem(&chain, &key, field)
    }
}

/// One named secret.
#[derive(Debug, Clone)]
pub enum Secret {
    Certificate(Arc<CertKey>),
    Validation(Arc<Validation>),
}

impl Secret {
    pub fn from_proto(p: &SecretProto, field: &str) -> Result<Self, ConfigError> {
        match &p.r#type {
            Some(secret::Type::TlsCertificate(c)) => Ok(Secret::Certificate(Arc::new(CertKey::from_proto(c, field)?))),
            Some(secret::Type::ValidationContext(v)) => {
                Ok(Secret::Validation(Arc::new(Validation::from_proto(v, &format!("{field}.validation_context"))?)))
            }
            Some(_) => {
                Err(ConfigError::new(field, "only tls_certificate and validation_context secrets are supported"))
            }
            None => Err(ConfigError::new(field, "secret has no type")),
        }
    }
}

/// Named secrets, swapped atomically; `generation` changes on every update.
pub struct SecretStore {
    secrets: ArcSwap<HashMap<String, Secret>>,
    generation: AtomicU64,
    changed: watch::Sender<u64>,
}

impl Default for SecretStore {
    fn default() -> Self {
        SecretStore {
            secrets: ArcSwap::from_pointee(HashMap::new()),
            generation: AtomicU64::new(1),
            changed: watch::channel(1).0,
        }
    }
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore").field("generation", &self.generation()).finish()
    }
}

impl SecretStore {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn get(&self, name: &str) -> Option<Secret> {
        self.secrets.load().get(name).cloned()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.secrets.load().contains_key(name)
    }

    /// Adds or replaces secrets (one update, one generation bump).
    pub fn set(&self, updates: Vec<(String, Secret)>) {
        let mut m = HashMap::clone(&self.secrets.load());
        for (n, s) in updates {
            m.insert(n, s);
        }
        self.secrets.store(Arc::new(m));
        let g = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.changed.send_replace(g);
    }

    pub fn remove(&self, names: &[String]) {
        let mut m = HashMap::clone(&self.secrets.load());
        for n in names {
            m.remove(n);
        }
        self.secrets.store(Arc::new(m));
        let g = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.changed.send_replace(g);
    }

    /// Notified on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn names(&self) -> Vec<String> {
        self.secrets.load().keys().cloned().collect()
    }
}
