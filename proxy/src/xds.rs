//! Dynamic configuration sources feeding the config manager: typed resource batches (from ADS,
//! SDS or files) decoded and applied with Envoy's semantics, and file-based xDS
//! (`path_config_source`), polled so both in-place writes and atomic renames are seen.

pub mod ads;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as ClusterProto;

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as ListenerProto;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret as SecretProto;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;

use crate::manager::{ConfigManager, ResourceError};

pub use crate::config::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};

/// Decodes every resource of a batch as `T`; failures are per resource.
fn decode<T: prost::Message + prost::Name + Default>(resources: &[Any], errors: &mut Vec<ResourceError>) -> Vec<T> {
    let mut out = Vec::with_capacity(resources.len());
    for (i, a) in resources.iter().enumerate() {
        match xds_client::any::unpack::<T>(a) {
            Ok(m) => out.push(m),
            Err(e) => errors.push(ResourceError { name: format!("resource[{i}]"), error: e.to_string() }),
        }
    }
    out
}

/// Applies one batch of resources of `type_url`. `full_state` is SotW semantics (everything not
/// listed is removed, for CDS and LDS).
pub fn apply(
    manager: &Arc<ConfigManager>,
    type_url: &str,
    version: &str,
    resources: &[Any],
    removed: &[String],
    full_state: bool,
) -> Result<(), Vec<ResourceError>> {
    let mut errors = Vec::new();
    // Configs wrapped in a TypedStruct are JSON, converted through the descriptor pool (by the
    // guard and by the extensions): hold it for the batch rather than decode it per resource.
    // (Endpoints and secrets carry no typed configs: their bytes are not scanned.)
    let pool = (type_url != ENDPOINT
        && type_url != SECRET
        && resources.iter().any(|r| memchr::memmem::find(&r.value, b"TypedStruct").is_some()))
    .then(xds_client::descriptors::pool);
    let result = match type_url {
        CLUSTER => {
            let r = decode::<ClusterProto>(resources, &mut errors);
            manager.apply_clusters(version, r, removed, full_state)
        }
        LISTENER => {
            let r = decode::<ListenerProto>(resources, &mut errors);
            manager.apply_listeners(version, r, removed, full_state)
        }
        ROUTE => {
            let r = decode::<RouteConfiguration>(resources, &mut errors);
            manager.apply_routes(version, r, removed)
        }
        ENDPOINT => {
            let r = decode::<ClusterLoadAssignment>(resources, &mut errors);
            manager.apply_endpoints(version, r, removed)
        }
        SECRET => {
            let r = decode::<SecretProto>(resources, &mut errors);
            manager.apply_secrets(version, r, removed)
        }
        other => Err(vec![ResourceError { name: String::new(), error: format!("unsupported type URL {other}") }]),
    };
    if pool.is_some() {
        drop(pool);
        xds_client::descriptors::release_memory();
    }
    if let Err(e) = result {
        errors.extend(e);
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// Envoy's `error_detail` text for a NACK: the failing resources and reasons.
pub fn error_detail(errors: &[ResourceError]) -> String {
    errors
        .iter()
        .map(|e| if e.name.is_empty() { e.error.clone() } else { format!("{}: {}", e.name, e.error) })
        .collect::<Vec<_>>()
        .join("\n")
}

// === file-based xDS ===

fn fingerprint(p: &std::path::Path) -> Option<(std::time::SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Reads a DiscoveryResponse (JSON or YAML by extension) from a file. Without
/// `reject_unknown` (`--reject-unknown-dynamic-fields`) unknown fields are dropped, as Envoy
/// does for dynamic config (static config is strict).
fn read_response(path: &std::path::Path, reject_unknown: bool) -> Result<DiscoveryResponse, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let yaml = path.extension().and_then(|e| e.to_str()) != Some("json");
    let json = if yaml {
        xds_client::json::yaml_to_json(&text).map_err(|e| format!("{}: {e}", path.display()))?
    } else {
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
    };
    let options = xds_client::json::JsonOptions { allow_unknown_fields: !reject_unknown, yaml_scalars: yaml };
    let pool = xds_client::descriptors::pool();
    let r = xds_client::json::message_from_json::<DiscoveryResponse>(&pool, json, options)
        .map_err(|e| format!("{}: {e}", path.display()));
    drop(pool);
    xds_client::descriptors::release_memory();
    r
}

/// Watches a file-based xDS source: applies it now and whenever it changes (polled every
/// 500 ms by modification time, size and inode, so the atomic rename or symlink swap of a
/// `watched_directory` is seen too). `type_url` is what the file must carry; `reject_unknown`
/// is `--reject-unknown-dynamic-fields`.
pub fn watch_file(
    manager: Arc<ConfigManager>,
    path: PathBuf,
    type_url: &'static str,
    reject_unknown: bool,
) -> tokio::task::AbortHandle {
    let task = tokio::spawn(async move {
        let mut last = None;
        loop {
            let fp = fingerprint(&path);
            if fp.is_some() && fp != last {
                last = fp;
                match read_response(&path, reject_unknown) {
                    Ok(r) => {
                        let bad = r.resources.iter().find(|a| a.type_url != type_url).map(|a| a.type_url.clone());
                        let res = match bad {
                            Some(t) => Err(vec![ResourceError {
                                name: String::new(),
                                error: format!("expected {type_url}, got {t}"),
                            }]),
                            None => apply(&manager, type_url, &r.version_info, &r.resources, &[], true),
                        };
                        match res {
                            Ok(()) => {
                                tracing::info!(target: "remora::config", "{}: applied version {:?}", path.display(), r.version_info)
                            }
                            Err(e) => {
                                tracing::warn!(target: "remora::config", "{}: rejected: {}", path.display(), error_detail(&e))
                            }
                        }
                    }
                    Err(e) => tracing::warn!(target: "remora::config", "file xDS: {e}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    task.abort_handle()
}

/// Keeps one watcher per file-based xDS file (SDS, RDS, EDS) the config references.
pub fn follow_files(manager: Arc<ConfigManager>, reject_unknown: bool) {
    let mut rx = manager.interest();
    tokio::spawn(async move {
        let mut watching: std::collections::BTreeMap<(PathBuf, &'static str), tokio::task::AbortHandle> =
            Default::default();
        loop {
            let want = rx.borrow_and_update().files.clone();
            watching.retain(|k, h| {
                let keep = want.contains(k);
                if !keep {
                    h.abort();
                }
                keep
            });
            for k in want {
                if let std::collections::btree_map::Entry::Vacant(e) = watching.entry(k) {
                    let (path, type_url) = e.key().clone();
                    e.insert(watch_file(manager.clone(), path, type_url, reject_unknown));
                }
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
    });
}
