//! The protobuf descriptor pool used for proto3 JSON/YAML: every Envoy API type (from the
//! descriptor set that ships with `envoy-types`) plus the few extra types this crate carries.
//!
//! The pool costs ~50 MB once decoded, so it is loaded on demand and shared while in use
//! (`pool()` hands out an `Arc`); once the last user drops it, [`release_memory`] gives the
//! memory back to the OS. Config loading and `/config_dump` are the only users; the data plane
//! never touches it.

use std::sync::{Arc, Mutex, Weak};

use prost_reflect::DescriptorPool;

static ENVOY_TYPES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_types.bin"));
static EXTRA: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/extra.bin"));

static CACHE: Mutex<Weak<DescriptorPool>> = Mutex::new(Weak::new());

/// Returns the shared descriptor pool, decoding it if no one holds it.
pub fn pool() -> Arc<DescriptorPool> {
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = cache.upgrade() {
        return p;
    }
    let p = Arc::new(build());
    *cache = Arc::downgrade(&p);
    p
}

fn build() -> DescriptorPool {
    // Both sets are produced at build time from checked inputs; failing to decode them is a
    // build defect, so fall back to an empty pool (every @type then fails with a clear error)
    // rather than panicking.
    let mut pool = match DescriptorPool::decode(ENVOY_TYPES) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("envoy descriptor set is corrupt: {e}");
            DescriptorPool::new()
        }
    };
    match <prost_types::FileDescriptorSet as prost::Message>::decode(EXTRA) {
        Ok(extra) => {
            let files: Vec<_> = extra.file.into_iter().filter(|f| pool.get_file_by_name(f.name()).is_none()).collect();
            if let Err(e) = pool.add_file_descriptor_protos(files) {
                tracing::error!("extra descriptor set is invalid: {e}");
            }
        }
        Err(e) => tracing::error!("extra descriptor set is corrupt: {e}"),
    }
    pool
}

/// Returns freed heap memory to the OS. Call after a config load or a config dump, when the
/// descriptor pool has been dropped.
pub fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim only releases free pages of the glibc heap; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_has_envoy_and_extra_types() {
        let p = pool();
        assert!(p.get_message_by_name("envoy.config.bootstrap.v3.Bootstrap").is_some());
        assert!(p.get_message_by_name("udpa.type.v1.TypedStruct").is_some());
        assert!(p.get_message_by_name("xds.type.v3.TypedStruct").is_some());
    }
}
