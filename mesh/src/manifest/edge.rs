//! The manifests at the mesh's edges: a Gateway server's `tls`, Kubernetes `Secret`s of type
//! `kubernetes.io/tls` (a Gateway's `credentialName`), `ServiceEntry` and `Sidecar` (its
//! `outboundTrafficPolicy` only). Fields this control plane does not translate are refused.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

use super::{ManifestError, Manifests, Meta, Resource, parse};

/// A Gateway server's `tls` (Istio's ServerTLSSettings): `SIMPLE` termination with a
/// `credentialName` and the TLS versions, or `httpsRedirect` on an HTTP server.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTls {
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub credential_name: Option<String>,
    #[serde(default)]
    pub https_redirect: bool,
    #[serde(default)]
    pub min_protocol_version: Option<String>,
    #[serde(default)]
    pub max_protocol_version: Option<String>,
}

impl ServerTls {
    /// Envoy's TLS version for Istio's `TLSV1_2` and the like; `None` for `TLS_AUTO` or a name
    /// that is not a version.
    pub fn envoy_version(v: &str) -> Option<&'static str> {
        match v {
            "TLSV1_0" => Some("TLSv1_0"),
            "TLSV1_1" => Some("TLSv1_1"),
            "TLSV1_2" => Some("TLSv1_2"),
            "TLSV1_3" => Some("TLSv1_3"),
            _ => None,
        }
    }
}

/// A `kubernetes.io/tls` Secret: its certificate chain and key, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSecret {
    pub file: String,
    pub name: String,
    pub namespace: String,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SecretDoc {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: Meta,
    #[serde(default, rename = "type")]
    secret_type: Option<String>,
    #[serde(default)]
    data: BTreeMap<String, String>,
    #[serde(default)]
    string_data: BTreeMap<String, String>,
    #[serde(default)]
    #[allow(dead_code)]
    immutable: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntryPort {
    pub number: u16,
    pub name: String,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub target_port: Option<u16>,
}

/// A ServiceEntry endpoint (WorkloadEntry): an address, per-port-name overrides, a weight.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntryEndpoint {
    pub address: String,
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    pub hosts: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    pub ports: Vec<ServiceEntryPort>,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub resolution: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<ServiceEntryEndpoint>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    pub mode: String,
}

/// A `Sidecar`: only `outboundTrafficPolicy` (the demo builds every pod's listeners itself, see
/// README "Plain-ports mode"; `egress`, `ingress` and `workloadSelector` are refused).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarSpec {
    #[serde(default)]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// Adds one `Secret`, `ServiceEntry` or `Sidecar` document (`group`: its apiVersion's group).
pub(super) fn load(
    file: &str,
    at: &str,
    kind: &str,
    api: &str,
    doc: &str,
    out: &mut Manifests,
) -> Result<(), ManifestError> {
    let err = |field: String, reason: String| ManifestError { file: file.to_string(), field, reason };
    let group = if api.contains('/') { api.split('/').next().unwrap_or_default() } else { "" };
    let want = if kind == "Secret" { "" } else { "networking.istio.io" };
    if group != want {
        return Err(err(format!("{at}: apiVersion"), format!("{kind} must be in API group '{want}', not '{api}'")));
    }
    match kind {
        "ServiceEntry" => out.service_entries.push(parse(file, at, doc)?),
        "Sidecar" => out.sidecars.push(parse(file, at, doc)?),
        _ => out.secrets.push(secret(file, at, doc)?),
    }
    Ok(())
}

fn secret(file: &str, at: &str, doc: &str) -> Result<TlsSecret, ManifestError> {
    let err = |field: &str, reason: String| ManifestError {
        file: file.to_string(),
        field: if field.is_empty() { at.to_string() } else { format!("{at}: {field}") },
        reason,
    };
    let d: SecretDoc = serde_yaml::from_str(doc).map_err(|e| err("", e.to_string()))?;
    match d.secret_type.as_deref() {
        Some("kubernetes.io/tls") => {}
        other => {
            return Err(err(
                "type",
                format!(
                    "'{}': the demo reads Secrets of type kubernetes.io/tls only (a Gateway's credentialName)",
                    other.unwrap_or("Opaque")
                ),
            ));
        }
    }
    let value = |key: &str| -> Result<Vec<u8>, ManifestError> {
        if let Some(s) = d.string_data.get(key) {
            return Ok(s.as_bytes().to_vec());
        }
        let Some(b64) = d.data.get(key) else {
            return Err(err(&format!("data.{key}"), "missing (give it in data, base64, or stringData)".into()));
        };
        let compact: String = b64.split_whitespace().collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|e| err(&format!("data.{key}"), format!("not base64: {e}")))
    };
    for k in d.data.keys().chain(d.string_data.keys()) {
        if !["tls.crt", "tls.key", "ca.crt"].contains(&k.as_str()) {
            return Err(err(&format!("data.{k}"), "unknown key (tls.crt, tls.key)".into()));
        }
        if k == "ca.crt" {
            return Err(err(
                &format!("data.{k}"),
                "a CA for client certificates is MUTUAL TLS, which the demo does not serve".into(),
            ));
        }
    }
    let cert_pem = value("tls.crt")?;
    let key_pem = value("tls.key")?;
    let store = certs::SecretStore::new();
    store
        .set_tls_certificate_pem("check", &cert_pem, &key_pem)
        .map_err(|e| err("data", format!("tls.crt/tls.key are not a PEM certificate chain and its key: {e}")))?;
    let namespace = d.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    Ok(TlsSecret { file: file.to_string(), name: d.metadata.name, namespace, cert_pem, key_pem })
}

/// The resource a Gateway names with `credentialName` as istiod resolves it: the Secret of that
/// name in the gateway workload's namespace.
pub fn find_secret<'a>(m: &'a [TlsSecret], name: &str, ns: &str) -> Option<&'a TlsSecret> {
    let name = name.strip_prefix("kubernetes://").unwrap_or(name);
    m.iter().find(|s| s.name == name && s.namespace == ns)
}

/// A ServiceEntry as read.
pub type ServiceEntry = Resource<ServiceEntrySpec>;
