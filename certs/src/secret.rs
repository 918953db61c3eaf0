//! The secret store: named TLS certificates and validation contexts, as SDS (or the Istio CA
//! client, or static bootstrap `secrets`) delivers them.
//!
//! Each name owns a slot (`Arc<Slot<T>>`) that TLS configs resolve once, at build time; a
//! handshake then reads the slot with one lock-free `ArcSwap` load, no map lookup and no lock.
//! Replacing a value is atomic: handshakes already past the load keep the old value, the next
//! ones see the new one. Values are validated and compiled when they are set, so a bad SDS
//! secret is rejected (NACKed) before anything can use it. Certificates and validation contexts
//! live in separate namespaces, as Envoy keys its SDS subscriptions by type.
//!
//! Updates come one at a time ([`SecretStore::apply`], the `set_*` helpers) or as a batch
//! ([`CompiledSecret::from_proto`] for each secret of an SDS response, then one
//! [`SecretStore::set`]), so a caller can validate a whole response before anything changes.
//!
//! Change notification: [`SecretStore::subscribe`] returns a `watch` receiver whose value (a
//! generation counter) changes on every update, so warming listeners/clusters can wait. Every
//! update also resets TLS session resumption (see `tls::resumption`).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use tokio::sync::watch;

use crate::tls::{CertificateSecret, TlsError, ValidationSecret, compile_tls_certificate, compile_validation_secret};

/// Istio's name for the workload certificate secret.
pub const DEFAULT_CERT_SECRET: &str = "default";
/// Istio's name for the trust bundle secret.
pub const ROOT_CA_SECRET: &str = "ROOTCA";

/// A validated and compiled secret, not stored yet: what [`SecretStore::set`] takes.
#[derive(Debug, Clone)]
pub enum CompiledSecret {
    /// A certificate chain and its private key (`tls_certificate`).
    TlsCertificate(Arc<CertificateSecret>),
    /// A trust bundle and SAN matchers (`validation_context`).
    ValidationContext(Arc<ValidationSecret>),
}

impl CompiledSecret {
    /// Compiles an SDS (or static bootstrap) `Secret`; `field` names it in errors, e.g.
    /// `static_resources.secrets[0]`. Errors mean the secret must be refused (NACKed).
    pub fn from_proto(secret: &Secret, field: &str) -> Result<Self, TlsError> {
        match &secret.r#type {
            Some(secret::Type::TlsCertificate(c)) => Ok(CompiledSecret::TlsCertificate(Arc::new(
                compile_tls_certificate(c, &format!("{field}.tls_certificate"))?,
            ))),
            Some(secret::Type::ValidationContext(v)) => Ok(CompiledSecret::ValidationContext(Arc::new(
                compile_validation_secret(v, &format!("{field}.validation_context"))?,
            ))),
            Some(secret::Type::SessionTicketKeys(_)) => {
                Err(TlsError::unsupported(format!("{field}.session_ticket_keys"), "session ticket keys"))
            }
            Some(secret::Type::GenericSecret(_)) => {
                Err(TlsError::unsupported(format!("{field}.generic_secret"), "generic secrets"))
            }
            None => Err(TlsError::invalid(field, "has no type")),
        }
    }
}

/// One named value, shared by every config that references the name.
pub(crate) struct Slot<T> {
    name: String,
    value: ArcSwapOption<T>,
}

impl<T> Slot<T> {
    fn new(name: &str) -> Self {
        Slot { name: name.to_string(), value: ArcSwapOption::empty() }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The current value: one atomic load.
    pub(crate) fn load(&self) -> Option<Arc<T>> {
        self.value.load_full()
    }
}

struct Inner {
    certs: Mutex<HashMap<String, Arc<Slot<CertificateSecret>>>>,
    validations: Mutex<HashMap<String, Arc<Slot<ValidationSecret>>>>,
    generation: watch::Sender<u64>,
    /// Same count as `generation`, readable without a lock (session caches check it).
    epoch: AtomicU64,
}

/// Named TLS secrets. Cheap to clone (all clones share the same secrets).
#[derive(Clone)]
pub struct SecretStore {
    inner: Arc<Inner>,
}

impl Default for SecretStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretStore").field("generation", &*self.inner.generation.borrow()).finish()
    }
}

fn slot_in<T>(map: &Mutex<HashMap<String, Arc<Slot<T>>>>, name: &str) -> Arc<Slot<T>> {
    // Only the config path locks; a poisoned map is still consistent (inserts are atomic).
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    m.entry(name.to_string()).or_insert_with(|| Arc::new(Slot::new(name))).clone()
}

fn inline(bytes: &[u8]) -> Option<DataSource> {
    Some(DataSource { specifier: Some(Specifier::InlineBytes(bytes.to_vec())), ..Default::default() })
}

impl SecretStore {
    pub fn new() -> Self {
        let (generation, _) = watch::channel(0);
        SecretStore {
            inner: Arc::new(Inner {
                certs: Mutex::new(HashMap::new()),
                validations: Mutex::new(HashMap::new()),
                generation,
                epoch: AtomicU64::new(0),
            }),
        }
    }

    pub(crate) fn cert_slot(&self, name: &str) -> Arc<Slot<CertificateSecret>> {
        slot_in(&self.inner.certs, name)
    }

    pub(crate) fn validation_slot(&self, name: &str) -> Arc<Slot<ValidationSecret>> {
        slot_in(&self.inner.validations, name)
    }

    fn bump(&self) {
        self.inner.epoch.fetch_add(1, Ordering::Release);
        self.inner.generation.send_modify(|g| *g += 1);
    }

    /// Changes on every update; one atomic load.
    pub(crate) fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Acquire)
    }

    /// Applies an SDS `Secret`. Errors (which name the secret and field) mean the update must
    /// be NACKed; the previous value stays in place.
    pub fn apply(&self, secret: &Secret) -> Result<(), TlsError> {
        if secret.name.is_empty() {
            return Err(TlsError::invalid("secret.name", "must not be empty"));
        }
        let compiled = CompiledSecret::from_proto(secret, &format!("secret {:?}", secret.name))?;
        self.set([(secret.name.clone(), compiled)]);
        Ok(())
    }

    /// Stores compiled secrets, replacing values of the same name and kind, as one update (one
    /// generation, one reset of session resumption). Later entries win over earlier ones.
    pub fn set(&self, secrets: impl IntoIterator<Item = (String, CompiledSecret)>) {
        let mut changed = false;
        for (name, secret) in secrets {
            match secret {
                CompiledSecret::TlsCertificate(c) => self.cert_slot(&name).value.store(Some(c)),
                CompiledSecret::ValidationContext(v) => self.validation_slot(&name).value.store(Some(v)),
            }
            changed = true;
        }
        if changed {
            self.bump();
        }
    }

    /// Sets (or replaces) the certificate named `name`.
    pub fn set_tls_certificate(&self, name: &str, cert: &TlsCertificate) -> Result<(), TlsError> {
        self.set_tls_certificate_as(name, cert, &format!("secret {name:?}.tls_certificate"))
    }

    fn set_tls_certificate_as(&self, name: &str, cert: &TlsCertificate, field: &str) -> Result<(), TlsError> {
        let compiled = compile_tls_certificate(cert, field)?;
        self.set([(name.to_string(), CompiledSecret::TlsCertificate(Arc::new(compiled)))]);
        Ok(())
    }

    /// Sets the certificate `name` from PEM text (chain, leaf first; private key).
    pub fn set_tls_certificate_pem(&self, name: &str, chain_pem: &[u8], key_pem: &[u8]) -> Result<(), TlsError> {
        let cert =
            TlsCertificate { certificate_chain: inline(chain_pem), private_key: inline(key_pem), ..Default::default() };
        self.set_tls_certificate(name, &cert)
    }

    /// Sets (or replaces) the validation context named `name`.
    pub fn set_validation_context(&self, name: &str, ctx: &CertificateValidationContext) -> Result<(), TlsError> {
        self.set_validation_context_as(name, ctx, &format!("secret {name:?}.validation_context"))
    }

    fn set_validation_context_as(
        &self,
        name: &str,
        ctx: &CertificateValidationContext,
        field: &str,
    ) -> Result<(), TlsError> {
        let compiled = compile_validation_secret(ctx, field)?;
        self.set([(name.to_string(), CompiledSecret::ValidationContext(Arc::new(compiled)))]);
        Ok(())
    }

    /// Sets the validation context `name` to trust the PEM bundle `ca_pem` (Istio's `ROOTCA`).
    pub fn set_trusted_ca_pem(&self, name: &str, ca_pem: &[u8]) -> Result<(), TlsError> {
        let ctx = CertificateValidationContext { trusted_ca: inline(ca_pem), ..Default::default() };
        self.set_validation_context(name, &ctx)
    }

    /// Removes secrets of either kind (SDS removal), as one update. Configs using them go back
    /// to warming; established connections are unaffected.
    pub fn remove<S: AsRef<str>>(&self, names: &[S]) {
        let mut changed = false;
        for name in names {
            let name = name.as_ref();
            if let Some(s) = self.inner.certs.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
                changed |= s.value.swap(None).is_some();
            }
            if let Some(s) = self.inner.validations.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
                changed |= s.value.swap(None).is_some();
            }
        }
        if changed {
            self.bump();
        }
    }

    /// Whether a secret of either kind is present under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tls_certificate(name).is_some() || self.validation_context(name).is_some()
    }

    /// The current certificate named `name`.
    pub fn tls_certificate(&self, name: &str) -> Option<Arc<CertificateSecret>> {
        self.inner.certs.lock().unwrap_or_else(|e| e.into_inner()).get(name).and_then(|s| s.load())
    }

    /// The current validation context named `name`.
    pub fn validation_context(&self, name: &str) -> Option<Arc<ValidationSecret>> {
        self.inner.validations.lock().unwrap_or_else(|e| e.into_inner()).get(name).and_then(|s| s.load())
    }

    /// A receiver that changes whenever any secret is set or removed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    /// Counts updates so far.
    pub fn generation(&self) -> u64 {
        *self.inner.generation.borrow()
    }
}
