//! SDS: secrets into the shared store; clusters and listeners waiting on them stop warming.

use std::sync::Arc;

use super::*;

impl ConfigManager {
    // === secrets (SDS) ===

    /// Applies SDS secrets: the next handshakes use them; waiting clusters and listeners warm up.
    pub fn apply_secrets(
        self: &Arc<Self>,
        _version: &str,
        resources: Vec<envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret>,
        removed: &[String],
    ) -> Result<(), Vec<ResourceError>> {
        let mut errors = Vec::new();
        let mut good = Vec::new();
        for s in resources {
            if let Err(e) = self.admit(&s) {
                errors.push(ResourceError::new(&s.name, e));
                continue;
            }
            match crate::tls::secrets::Secret::from_proto(&s, &s.name) {
                Ok(v) => good.push((s.name.clone(), v)),
                Err(e) => errors.push(ResourceError::new(&s.name, e)),
            }
        }
        if !good.is_empty() {
            self.cx.secrets.set(good);
        }
        if !removed.is_empty() {
            self.cx.secrets.remove(removed);
        }
        if self.promote(&mut errors) {
            self.publish();
        }
        self.sds.record(errors.is_empty());
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}
