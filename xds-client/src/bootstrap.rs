//! The bootstrap: `-c <file>` (JSON, YAML or binary proto, by extension) with `--config-yaml`
//! merged over it using protobuf merge semantics, exactly as Envoy does.

use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use prost::Message;

use crate::descriptors;
use crate::json::{JsonError, JsonOptions, message_from_json, yaml_to_json};

/// Where the bootstrap comes from.
#[derive(Debug, Clone, Default)]
pub struct BootstrapSource {
    pub path: Option<PathBuf>,
    pub config_yaml: Option<String>,
    pub allow_unknown_fields: bool,
}

/// A bootstrap that could not be loaded; renders as Envoy's validate message does.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("unable to read file: {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("unable to parse {what}: {source}")]
    Parse { what: String, source: JsonError },
    #[error("unable to decode binary bootstrap {path}: {reason}")]
    Binary { path: String, reason: String },
    #[error("at least one of --config-path or --config-yaml or Options::configProto() should be non-empty")]
    Empty,
}

/// Loads the bootstrap from the file and/or inline YAML.
pub fn load(src: &BootstrapSource) -> Result<Bootstrap, BootstrapError> {
    if src.path.is_none() && src.config_yaml.as_deref().is_none_or(str::is_empty) {
        return Err(BootstrapError::Empty);
    }
    let opts = JsonOptions { allow_unknown_fields: src.allow_unknown_fields, yaml_scalars: false };
    let mut bootstrap = match &src.path {
        Some(p) => load_file(p, opts)?,
        None => Bootstrap::default(),
    };
    if let Some(yaml) = src.config_yaml.as_deref().filter(|y| !y.is_empty()) {
        let what = "--config-yaml".to_string();
        let json = yaml_to_json(yaml).map_err(|source| BootstrapError::Parse { what: what.clone(), source })?;
        let pool = descriptors::pool();
        let overlay: Bootstrap = message_from_json(&pool, json, JsonOptions { yaml_scalars: true, ..opts })
            .map_err(|source| BootstrapError::Parse { what, source })?;
        // Protobuf merge: scalars overwrite, messages merge, repeated fields append.
        bootstrap
            .merge(overlay.encode_to_vec().as_slice())
            .map_err(|e| BootstrapError::Binary { path: "--config-yaml".into(), reason: e.to_string() })?;
    }
    Ok(bootstrap)
}

fn load_file(path: &Path, opts: JsonOptions) -> Result<Bootstrap, BootstrapError> {
    let display = path.display().to_string();
    let bytes =
        std::fs::read(path).map_err(|e| BootstrapError::Read { path: display.clone(), reason: e.to_string() })?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext == "pb" {
        return Bootstrap::decode(bytes.as_slice())
            .map_err(|e| BootstrapError::Binary { path: display, reason: e.to_string() });
    }
    let text =
        String::from_utf8(bytes).map_err(|e| BootstrapError::Read { path: display.clone(), reason: e.to_string() })?;
    let parse = |e: JsonError| BootstrapError::Parse { what: display.clone(), source: e };
    let (json, yaml) = if ext == "yaml" || ext == "yml" {
        (yaml_to_json(&text).map_err(parse)?, true)
    } else {
        match serde_json::from_str(&text) {
            Ok(v) => (v, false),
            // Not JSON: Envoy falls back to YAML for other extensions.
            Err(_) => (yaml_to_json(&text).map_err(parse)?, true),
        }
    };
    let pool = descriptors::pool();
    message_from_json(&pool, json, JsonOptions { yaml_scalars: yaml, ..opts }).map_err(parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_yaml_merges_over_file() {
        let dir = std::env::temp_dir().join(format!("xds-client-bs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("b.yaml");
        std::fs::write(&f, "node: {id: a, cluster: c}\nstatic_resources:\n  clusters:\n  - name: one\n").unwrap();
        let b = load(&BootstrapSource {
            path: Some(f),
            config_yaml: Some("node: {id: b}\nstatic_resources:\n  clusters:\n  - name: two\n".into()),
            allow_unknown_fields: false,
        })
        .unwrap();
        let node = b.node.unwrap();
        assert_eq!(node.id, "b");
        assert_eq!(node.cluster, "c");
        let names: Vec<_> = b.static_resources.unwrap().clusters.into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["one", "two"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let e = load(&BootstrapSource { path: Some("/nonexistent/x.yaml".into()), ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.yaml"), "{e}");
    }
}
