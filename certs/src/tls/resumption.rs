//! Session resumption that forgets everything when secrets change.
//!
//! Envoy rebuilds its SSL contexts when an SDS secret changes, which drops their session caches
//! and ticket keys: after a certificate or trust bundle rotation every peer does a full
//! handshake against the new material. rustls configs here live across rotations, so their
//! session stores and ticketer are wrapped to start afresh whenever the secret store's epoch
//! moves (one atomic load per use).

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::NamedGroup;
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore};
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use rustls_pki_types::ServerName;

use super::TlsError;
use crate::SecretStore;

/// A value tied to the epoch it was created in.
struct Epoch<T: ?Sized> {
    epoch: u64,
    value: Arc<T>,
}

/// Holds one `T` per store epoch, recreating it on change.
struct PerEpoch<T: ?Sized> {
    store: SecretStore,
    current: ArcSwap<Epoch<T>>,
    make: Box<dyn Fn() -> Option<Arc<T>> + Send + Sync>,
}

impl<T: ?Sized> PerEpoch<T> {
    fn new(store: &SecretStore, make: impl Fn() -> Option<Arc<T>> + Send + Sync + 'static) -> Option<Self> {
        let value = make()?;
        Some(PerEpoch {
            store: store.clone(),
            current: ArcSwap::from_pointee(Epoch { epoch: store.epoch(), value }),
            make: Box::new(make),
        })
    }

    fn get(&self) -> Arc<T> {
        let epoch = self.store.epoch();
        let cur = self.current.load();
        if cur.epoch == epoch {
            return cur.value.clone();
        }
        // Keep the old value if a new one cannot be made (only the ticketer can fail).
        let value = (self.make)().unwrap_or_else(|| cur.value.clone());
        self.current.store(Arc::new(Epoch { epoch, value: value.clone() }));
        value
    }
}

// === client ===

/// Client session cache, emptied on every secret change.
pub(crate) struct ClientSessions(PerEpoch<ClientSessionMemoryCache>);

impl ClientSessions {
    pub(crate) fn new(store: &SecretStore, size: usize) -> Option<Self> {
        PerEpoch::new(store, move || Some(Arc::new(ClientSessionMemoryCache::new(size)))).map(ClientSessions)
    }
}

impl fmt::Debug for ClientSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSessions")
    }
}

impl ClientSessionStore for ClientSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.0.get().set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.0.get().kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: rustls::client::Tls12ClientSessionValue) {
        self.0.get().set_tls12_session(server_name, value)
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.0.get().tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.0.get().remove_tls12_session(server_name)
    }

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: rustls::client::Tls13ClientSessionValue) {
        self.0.get().insert_tls13_ticket(server_name, value)
    }

    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.0.get().take_tls13_ticket(server_name)
    }
}

// === server ===

/// Server session-ID cache, emptied on every secret change.
pub(crate) struct ServerSessions(PerEpoch<ServerSessionMemoryCache>);

impl ServerSessions {
    pub(crate) fn new(store: &SecretStore, size: usize) -> Option<Self> {
        PerEpoch::new(store, move || Some(ServerSessionMemoryCache::new(size))).map(ServerSessions)
    }
}

impl fmt::Debug for ServerSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerSessions")
    }
}

impl StoresServerSessions for ServerSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.0.get().put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get().get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get().take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// Session tickets under keys that are replaced on every secret change (old tickets then fail
/// to decrypt, forcing a full handshake).
pub(crate) struct Tickets(PerEpoch<dyn ProducesTickets>);

impl Tickets {
    pub(crate) fn new(store: &SecretStore) -> Result<Self, TlsError> {
        fn make() -> Option<Arc<dyn ProducesTickets>> {
            rustls::crypto::ring::Ticketer::new().ok()
        }
        PerEpoch::new(store, make)
            .map(Tickets)
            .ok_or_else(|| TlsError::invalid("session tickets", "cannot create a ticket key"))
    }
}

impl fmt::Debug for Tickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tickets")
    }
}

impl ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.0.get().lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.0.get().encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.0.get().decrypt(cipher)
    }
}
