//! Manifests as users write them: a folder of YAML files, several documents per file, each a
//! Kubernetes `Service`/`Deployment`/`Secret` or an Istio `VirtualService`, `DestinationRule`,
//! `Gateway`, `PeerAuthentication`, `AuthorizationPolicy` or `RequestAuthentication` (`security`),
//! `ServiceEntry` or `Sidecar` (`edge`, with Secrets). Anything else (another kind, a field this
//! control plane does not translate) is refused with the file, the field and the reason.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;

mod routing;
pub use routing::{
    DirectResponse, DirectResponseBody, HeaderOperations, Headers, MirrorPolicy, PortTrafficPolicy, Redirect,
    RegexRewrite, Rewrite,
};
mod edge;
pub mod security;
pub use edge::{
    OutboundTrafficPolicy, ServerTls, ServiceEntry, ServiceEntryEndpoint, ServiceEntryPort, ServiceEntrySpec,
    SidecarSpec, TlsSecret, find_secret,
};

/// A refused manifest: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field}: {reason}")]
pub struct ManifestError {
    pub file: String,
    /// The document and field path (`VirtualService reviews: spec.http[0].mirror`).
    pub field: String,
    pub reason: String,
}

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub annotations: Labels,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Doc<S> {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: Meta,
    spec: S,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<serde_yaml::Value>,
}

// ---- Kubernetes ----

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(u16),
    Str(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub target_port: Option<IntOrString>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub app_protocol: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub selector: Labels,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    pub container_port: u16,
    #[serde(default)]
    pub name: Option<String>,
}

/// A container: only its ports matter to the mesh; image, env, resources... are ignored (the
/// demo runs the workspace's demo app for every container).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub service_account_name: Option<String>,
    pub containers: Vec<Container>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    #[serde(default)]
    pub metadata: Meta,
    pub spec: PodSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentSpec {
    #[serde(default)]
    pub replicas: Option<u32>,
    pub template: PodTemplate,
}

// ---- Istio networking ----

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uri: Option<StringMatch>,
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub method: Option<StringMatch>,
    #[serde(default)]
    pub authority: Option<StringMatch>,
    #[serde(default)]
    pub scheme: Option<StringMatch>,
    #[serde(default)]
    pub ignore_uri_case: bool,
    #[serde(default)]
    pub source_labels: Labels,
    /// Refused with a reason (`model::routing`).
    #[serde(default)]
    pub gateways: Option<serde_yaml::Value>,
    #[serde(default)]
    pub port: Option<serde_yaml::Value>,
    #[serde(default)]
    pub source_namespace: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    pub number: u16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    pub host: String,
    #[serde(default)]
    pub subset: Option<String>,
    #[serde(default)]
    pub port: Option<PortSelector>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    pub destination: Destination,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub headers: Option<Headers>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retries {
    pub attempts: u32,
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    #[serde(default)]
    pub retry_on: Option<String>,
    #[serde(default)]
    pub retry_remote_localities: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    pub value: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delay {
    pub fixed_delay: String,
    #[serde(default)]
    pub percentage: Option<Percent>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Abort {
    pub http_status: u32,
    #[serde(default)]
    pub percentage: Option<Percent>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    #[serde(default)]
    pub delay: Option<Delay>,
    #[serde(default)]
    pub abort: Option<Abort>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatch>,
    /// Empty for a `redirect` or `directResponse` rule.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
    #[serde(default)]
    pub retries: Option<Retries>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub fault: Option<Fault>,
    #[serde(default)]
    pub mirror: Option<Destination>,
    #[serde(default)]
    pub mirror_percentage: Option<Percent>,
    #[serde(default)]
    pub mirrors: Vec<MirrorPolicy>,
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    #[serde(default)]
    pub redirect: Option<Redirect>,
    #[serde(default)]
    pub direct_response: Option<DirectResponse>,
    #[serde(default)]
    pub headers: Option<Headers>,
    /// Refused with a reason (`model::routing`).
    #[serde(default)]
    pub cors_policy: Option<serde_yaml::Value>,
    #[serde(default)]
    pub mirror_percent: Option<serde_yaml::Value>,
    #[serde(default)]
    pub delegate: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    pub hosts: Vec<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub http: Vec<HttpRoute>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    #[serde(default)]
    pub simple: Option<String>,
    /// Refused with a reason (`model::routing`).
    #[serde(default)]
    pub consistent_hash: Option<serde_yaml::Value>,
    #[serde(default)]
    pub locality_lb_setting: Option<serde_yaml::Value>,
    #[serde(default)]
    pub warmup_duration_secs: Option<serde_yaml::Value>,
    #[serde(default)]
    pub warmup: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpPool {
    #[serde(default)]
    pub max_connections: Option<u32>,
    #[serde(default)]
    pub connect_timeout: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPool {
    #[serde(default)]
    pub http1_max_pending_requests: Option<u32>,
    #[serde(default)]
    pub http2_max_requests: Option<u32>,
    #[serde(default)]
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub idle_timeout: Option<String>,
    #[serde(default)]
    pub max_requests_per_connection: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPool {
    #[serde(default)]
    pub tcp: Option<TcpPool>,
    #[serde(default)]
    pub http: Option<HttpPool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(default)]
    pub consecutive5xx_errors: Option<u32>,
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    #[serde(default)]
    pub max_ejection_percent: Option<u32>,
    #[serde(default)]
    pub min_health_percent: Option<i32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTls {
    pub mode: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    #[serde(default)]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default)]
    pub connection_pool: Option<ConnectionPool>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    pub tls: Option<ClientTls>,
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicy>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    pub host: String,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default)]
    pub subsets: Vec<Subset>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayPort {
    pub number: u16,
    #[serde(default)]
    pub name: Option<String>,
    pub protocol: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayServer {
    pub port: GatewayPort,
    pub hosts: Vec<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tls: Option<ServerTls>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    #[serde(default)]
    pub selector: Labels,
    pub servers: Vec<GatewayServer>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerMtls {
    pub mode: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    #[serde(default)]
    pub mtls: Option<PeerMtls>,
}

/// One accepted resource, with the file it came from.
#[derive(Debug, Clone)]
pub struct Resource<S> {
    pub file: String,
    pub meta: Meta,
    pub namespace: String,
    pub spec: S,
}

/// Every resource of a folder, by kind.
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    pub services: Vec<Resource<ServiceSpec>>,
    pub deployments: Vec<Resource<DeploymentSpec>>,
    pub virtual_services: Vec<Resource<VirtualServiceSpec>>,
    pub destination_rules: Vec<Resource<DestinationRuleSpec>>,
    pub gateways: Vec<Resource<GatewaySpec>>,
    pub peer_authentications: Vec<Resource<PeerAuthenticationSpec>>,
    pub authorization_policies: Vec<Resource<security::AuthorizationPolicySpec>>,
    pub request_authentications: Vec<Resource<security::RequestAuthenticationSpec>>,
    pub secrets: Vec<TlsSecret>,
    pub service_entries: Vec<ServiceEntry>,
    pub sidecars: Vec<Resource<SidecarSpec>>,
    pub telemetries: Vec<Resource<crate::meshconfig::TelemetrySpec>>,
    /// The mesh config (`ConfigMap istio` in istio-system) and its file.
    pub mesh_config: Option<(String, crate::meshconfig::MeshConfig)>,
    /// `Endpoints` of Services without a selector.
    pub endpoints: Vec<crate::endpoints::Endpoints>,
}

/// Reads every `*.yaml`/`*.yml` file of `dir` (sorted by name).
pub fn load_dir(dir: &Path) -> Result<Manifests, ManifestError> {
    let io =
        |e: std::io::Error| ManifestError { file: dir.display().to_string(), field: "-".into(), reason: e.to_string() };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut out = Manifests::default();
    for path in files {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| ManifestError {
            file: file.clone(),
            field: "-".into(),
            reason: e.to_string(),
        })?;
        load_text(&file, &text, &mut out)?;
    }
    Ok(out)
}

/// Splits a YAML stream into documents, keeping each one's first line number.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = vec![(1, String::new())];
    for (i, line) in text.lines().enumerate() {
        if line == "---" || line.starts_with("--- ") {
            docs.push((i + 2, String::new()));
        } else if let Some((_, d)) = docs.last_mut() {
            d.push_str(line);
            d.push('\n');
        }
    }
    docs.retain(|(_, d)| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')));
    docs
}

/// Adds the documents of one file.
pub fn load_text(file: &str, text: &str, out: &mut Manifests) -> Result<(), ManifestError> {
    for (line, doc) in documents(text) {
        let err = |field: String, reason: String| ManifestError { file: file.to_string(), field, reason };
        let value: serde_yaml::Value =
            serde_yaml::from_str(&doc).map_err(|e| err(format!("document at line {line}"), e.to_string()))?;
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_string();
        let api = value.get("apiVersion").and_then(|k| k.as_str()).unwrap_or_default().to_string();
        let name =
            value.get("metadata").and_then(|m| m.get("name")).and_then(|k| k.as_str()).unwrap_or("?").to_string();
        let at = format!("{kind} {name} (line {line})");
        if name == "?" && !kind.is_empty() {
            return Err(err(format!("{at}: metadata.name"), "missing".into()));
        }
        let group = api.split('/').next().unwrap_or_default();
        let want_group = |g: &str| -> Result<(), ManifestError> {
            if group == g || (g.is_empty() && !api.contains('/')) {
                Ok(())
            } else {
                Err(err(format!("{at}: apiVersion"), format!("{kind} must be in API group '{g}', not '{api}'")))
            }
        };
        match kind.as_str() {
            "Service" => {
                want_group("")?;
                out.services.push(parse(file, &at, &doc)?)
            }
            "Deployment" => {
                want_group("apps")?;
                out.deployments.push(parse(file, &at, &doc)?)
            }
            "VirtualService" => {
                want_group("networking.istio.io")?;
                out.virtual_services.push(parse(file, &at, &doc)?)
            }
            "DestinationRule" => {
                want_group("networking.istio.io")?;
                out.destination_rules.push(parse(file, &at, &doc)?)
            }
            "Gateway" => {
                want_group("networking.istio.io")?;
                out.gateways.push(parse(file, &at, &doc)?)
            }
            "PeerAuthentication" => {
                want_group("security.istio.io")?;
                out.peer_authentications.push(parse(file, &at, &doc)?)
            }
            "Namespace" => {
                want_group("")?;
                // Every pod of the demo gets a sidecar: a namespace can only ask for that.
                let injection =
                    value.get("metadata").and_then(|m| m.get("labels")).and_then(|l| l.get("istio-injection"));
                if let Some(v) = injection.filter(|v| v.as_str() != Some("enabled")) {
                    return Err(err(
                        format!("{at}: metadata.labels.istio-injection"),
                        format!("{v:?}: the demo injects a sidecar into every pod; only 'enabled' is supported"),
                    ));
                }
            }
            "AuthorizationPolicy" => {
                want_group("security.istio.io")?;
                out.authorization_policies.push(parse(file, &at, &doc)?)
            }
            "RequestAuthentication" => {
                want_group("security.istio.io")?;
                out.request_authentications.push(parse(file, &at, &doc)?)
            }
            "Secret" | "ServiceEntry" | "Sidecar" => edge::load(file, &at, &kind, &api, &doc, out)?,
            "Telemetry" => {
                want_group("telemetry.istio.io")?;
                out.telemetries.push(parse(file, &at, &doc)?)
            }
            "ConfigMap" => {
                want_group("")?;
                let mc = crate::meshconfig::parse_config_map(file, &at, &doc)?;
                if out.mesh_config.is_some() {
                    return Err(err(format!("{at}: metadata.name"), "the mesh config is given twice".into()));
                }
                out.mesh_config = Some((file.to_string(), mc));
            }
            "Endpoints" => {
                want_group("")?;
                out.endpoints.push(crate::endpoints::parse(file, &at, &doc)?)
            }
            "" => return Err(err(format!("{at}: kind"), "missing".into())),
            other => {
                return Err(err(
                    format!("{at}: kind"),
                    format!(
                        "kind '{other}' is not supported by the demo control plane (supported: Namespace, \
                         Service, Deployment, Secret, Endpoints, ConfigMap istio, VirtualService, DestinationRule, \
                         Gateway, PeerAuthentication, AuthorizationPolicy, RequestAuthentication, ServiceEntry, \
                         Sidecar, Telemetry)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn parse<S: DeserializeOwned>(file: &str, at: &str, doc: &str) -> Result<Resource<S>, ManifestError> {
    let d: Doc<S> = serde_yaml::from_str(doc).map_err(|e| {
        // serde_yaml prefixes nested errors with the field path (`spec.http[0]: unknown field ...`).
        let msg = e.to_string();
        let (field, reason) = match msg.split_once(": ") {
            Some((path, rest)) if !path.contains(' ') => (path.to_string(), rest.to_string()),
            _ => ("-".to_string(), msg),
        };
        ManifestError { file: file.to_string(), field: format!("{at}: {field}"), reason }
    })?;
    let namespace = d.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    Ok(Resource { file: file.to_string(), meta: d.metadata, namespace, spec: d.spec })
}

/// Parses a duration as Istio writes them (`1s`, `250ms`, `1.5s`, `2m`, `1h`) into seconds.
pub fn parse_duration(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        return None;
    };
    let v: f64 = num.parse().ok()?;
    (v >= 0.0 && v.is_finite()).then_some(v * mul)
}
