//! Istio's mesh config and the Telemetry API, as far as the demo control plane translates them.
//!
//! The mesh config comes from a `ConfigMap` named `istio` in `istio-system` whose `data.mesh` is
//! MeshConfig YAML, as istiod reads it: `extensionProviders` (`zipkin`, `envoyFileAccessLog`,
//! `prometheus`), `defaultProviders` (`tracing`, `metrics`, `accessLogging`), `enableTracing`
//! (false only: the legacy bootstrap tracer is not generated), `accessLogFile`,
//! `accessLogFormat` and `accessLogEncoding` (TEXT). istiod's built-in providers are always there:
//! `prometheus`, `envoy` (file access log to /dev/stdout) and `stackdriver` (refused when used);
//! `defaultProviders.metrics` defaults to `[prometheus]`. Without the ConfigMap the mesh config is
//! istiod's default with tracing off (the demo has no `zipkin.istio-system` to send to).
//!
//! `Telemetry` (telemetry.istio.io) resources apply namespace-wide (no selector, no targetRefs):
//! the one in the root namespace (`istio-system`) to every proxy, then the one in the proxy's own
//! namespace, later entries overriding earlier ones as istiod merges them (pilot/pkg/model
//! telemetry.go): `tracing` (providers, randomSamplingPercentage, disableSpanReporting,
//! customTags: literal, environment, header),
//! `accessLogging` (providers, disabled) and `metrics` (providers: prometheus only;
//! overrides and reportingInterval, see `metrics`). Anything else
//! is refused with the file, the document, the field and the reason.

use std::collections::BTreeMap;

use serde::Deserialize;

pub mod metrics;

use crate::manifest::{ManifestError, Resource};
use crate::model::{Mesh, ROOT_NAMESPACE, fqdn};

/// Istio's default sampling (`PILOT_TRACE_SAMPLING`), in percent.
pub const DEFAULT_SAMPLING: f64 = 1.0;
pub const DEV_STDOUT: &str = "/dev/stdout";

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshConfig {
    #[serde(default)]
    pub extension_providers: Vec<ExtensionProvider>,
    #[serde(default)]
    pub default_providers: DefaultProviders,
    #[serde(default)]
    pub enable_tracing: Option<bool>,
    #[serde(default)]
    pub access_log_file: Option<String>,
    #[serde(default)]
    pub access_log_format: Option<String>,
    #[serde(default)]
    pub access_log_encoding: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefaultProviders {
    #[serde(default)]
    pub tracing: Vec<String>,
    #[serde(default)]
    pub metrics: Option<Vec<String>>,
    #[serde(default)]
    pub access_logging: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    pub name: String,
    #[serde(default)]
    pub zipkin: Option<ZipkinProvider>,
    #[serde(default)]
    pub envoy_file_access_log: Option<FileAccessLogProvider>,
    #[serde(default)]
    pub prometheus: Option<Empty>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZipkinProvider {
    /// `[namespace/]hostname` of a Service.
    pub service: String,
    pub port: u16,
    #[serde(default)]
    pub max_tag_length: Option<u32>,
    #[serde(default, rename = "enable64bitTraceId")]
    pub enable_64bit_trace_id: Option<bool>,
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileAccessLogProvider {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogFormat {
    pub text: String,
}

// ---- Telemetry (telemetry.istio.io) ----

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetrySpec {
    #[serde(default)]
    pub tracing: Vec<Tracing>,
    #[serde(default)]
    pub access_logging: Vec<AccessLogging>,
    #[serde(default)]
    pub metrics: Vec<Metrics>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderRef {
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    #[serde(default)]
    pub random_sampling_percentage: Option<f64>,
    #[serde(default)]
    pub disable_span_reporting: Option<bool>,
    /// Tag name -> value source; a later entry's map replaces an earlier one's, as in istiod.
    #[serde(default)]
    pub custom_tags: Option<BTreeMap<String, CustomTag>>,
}

/// A Telemetry tracing custom tag: exactly one of a literal, an environment variable of the
/// proxy (read when remora loads the config) or a request header.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomTag {
    #[serde(default)]
    pub literal: Option<LiteralTag>,
    #[serde(default)]
    pub environment: Option<ValueSource>,
    #[serde(default)]
    pub header: Option<ValueSource>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LiteralTag {
    pub value: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueSource {
    pub name: String,
    #[serde(default)]
    pub default_value: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogging {
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    #[serde(default)]
    pub disabled: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metrics {
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    #[serde(default)]
    pub overrides: Vec<metrics::MetricsOverride>,
    #[serde(default)]
    pub reporting_interval: Option<String>,
}

/// The `ConfigMap` document: only `istio` in `istio-system`, with `data.mesh`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConfigMapDoc {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: crate::manifest::Meta,
    #[serde(default)]
    data: std::collections::BTreeMap<String, String>,
}

/// Parses a `ConfigMap` document: the mesh config, or a refusal naming the field.
pub fn parse_config_map(file: &str, at: &str, doc: &str) -> Result<MeshConfig, ManifestError> {
    let err =
        |field: &str, reason: String| ManifestError { file: file.into(), field: format!("{at}: {field}"), reason };
    let cm: ConfigMapDoc = serde_yaml::from_str(doc).map_err(|e| err("-", e.to_string()))?;
    let ns = cm.metadata.namespace.as_deref().unwrap_or("default");
    if cm.metadata.name != "istio" || ns != ROOT_NAMESPACE {
        return Err(err(
            "metadata.name",
            format!(
                "the demo control plane reads one ConfigMap, the mesh config 'istio' in {ROOT_NAMESPACE} \
                 (not '{}' in {ns})",
                cm.metadata.name
            ),
        ));
    }
    if let Some(k) = cm.data.keys().find(|k| k.as_str() != "mesh") {
        return Err(err(&format!("data.{k}"), "only data.mesh (MeshConfig YAML) is read".into()));
    }
    let text = cm.data.get("mesh").map(String::as_str).unwrap_or("{}");
    let mc: MeshConfig = serde_yaml::from_str(text).map_err(|e| {
        let msg = e.to_string();
        match msg.split_once(": ") {
            Some((path, rest)) if !path.contains(' ') => err(&format!("data.mesh.{path}"), rest.to_string()),
            _ => err("data.mesh", msg),
        }
    })?;
    Ok(mc)
}

/// A provider after lookup: istiod's built-ins plus the mesh config's own.
#[derive(Debug, Clone, PartialEq)]
pub enum Provider {
    Prometheus,
    Zipkin(ZipkinProvider),
    FileAccessLog(FileAccessLogProvider),
    /// Built in, but the demo does not generate it.
    Stackdriver,
}

impl MeshConfig {
    /// istiod's `fetchProvider`: by name, case-insensitively, the mesh config's first.
    pub fn provider(&self, name: &str) -> Option<Provider> {
        if let Some(p) = self.extension_providers.iter().find(|p| p.name.eq_ignore_ascii_case(name)) {
            return Some(if let Some(z) = &p.zipkin {
                Provider::Zipkin(z.clone())
            } else if let Some(f) = &p.envoy_file_access_log {
                Provider::FileAccessLog(f.clone())
            } else {
                Provider::Prometheus
            });
        }
        match name.to_ascii_lowercase().as_str() {
            "prometheus" => Some(Provider::Prometheus),
            "envoy" => {
                Some(Provider::FileAccessLog(FileAccessLogProvider { path: Some(DEV_STDOUT.into()), log_format: None }))
            }
            "stackdriver" => Some(Provider::Stackdriver),
            _ => None,
        }
    }

    pub fn default_metrics(&self) -> Vec<String> {
        self.default_providers.metrics.clone().unwrap_or_else(|| vec!["prometheus".into()])
    }
}

/// Tracing for one proxy: the Zipkin provider, the sampling percentage, the custom tags.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingPlan {
    pub zipkin: ZipkinProvider,
    pub sampling: f64,
    pub custom_tags: BTreeMap<String, CustomTag>,
}

/// What one proxy gets, resolved from the mesh config and the Telemetry resources in scope.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProxyTelemetry {
    /// `None`: no tracing.
    pub tracing: Option<TracingPlan>,
    /// File access logs: (path, text format).
    pub access_logs: Vec<(String, String)>,
    /// Whether `istio.stats` is generated (a prometheus metrics provider in scope).
    pub metrics: bool,
    /// The merged metric overrides (`istio.stats` config per workload mode).
    pub stats: metrics::StatsPlan,
}

/// The Telemetry resources in scope for a proxy in `ns`: the root namespace's, then its own.
fn in_scope<'a>(mesh: &'a Mesh, ns: &str) -> Vec<&'a Resource<TelemetrySpec>> {
    let root = mesh.telemetries.iter().filter(|t| t.namespace == ROOT_NAMESPACE);
    let own = mesh.telemetries.iter().filter(|t| t.namespace == ns && ns != ROOT_NAMESPACE);
    root.chain(own).collect()
}

/// istiod's resolution for a proxy in namespace `ns` (the gateway: `istio-system`).
pub fn for_proxy(mesh: &Mesh, ns: &str) -> ProxyTelemetry {
    let mc = &mesh.mesh_config;
    let tels = in_scope(mesh, ns);
    // Tracing: the default provider, then each Tracing entry in order.
    let mut provider = mc.default_providers.tracing.first().and_then(|n| mc.provider(n));
    let mut sampling = None;
    let mut disabled = false;
    let mut custom_tags = BTreeMap::new();
    let mut any = provider.is_some();
    for t in tels.iter().flat_map(|t| t.spec.tracing.iter()) {
        any = true;
        if let Some(p) = t.providers.first() {
            provider = mc.provider(&p.name);
        }
        if let Some(d) = t.disable_span_reporting {
            disabled = d;
        }
        if let Some(s) = t.random_sampling_percentage {
            sampling = Some(s);
        }
        if let Some(tags) = &t.custom_tags {
            custom_tags = tags.clone();
        }
    }
    let tracing = match provider {
        Some(Provider::Zipkin(zipkin)) if any && !disabled => {
            Some(TracingPlan { zipkin, sampling: sampling.unwrap_or(DEFAULT_SAMPLING), custom_tags })
        }
        _ => None,
    };
    // Access logging: the default providers unless a Telemetry names its own; `disabled` turns
    // the providers in force off.
    let mut names: Vec<String> = mc.default_providers.access_logging.clone();
    let mut off = false;
    let mut configured = !names.is_empty();
    for a in tels.iter().flat_map(|t| t.spec.access_logging.iter()) {
        configured = true;
        if !a.providers.is_empty() {
            names = a.providers.iter().map(|p| p.name.clone()).collect();
        }
        off = a.disabled.unwrap_or(false);
    }
    let mut access_logs = Vec::new();
    if configured {
        if !off {
            names.sort();
            names.dedup();
            for n in names {
                if let Some(Provider::FileAccessLog(f)) = mc.provider(&n) {
                    let format = match (&f.log_format, n.eq_ignore_ascii_case("envoy")) {
                        (Some(lf), _) => with_newline(&lf.text),
                        (None, true) => mesh_log_format(mc),
                        (None, false) => ENVOY_TEXT_LOG_FORMAT.to_string(),
                    };
                    access_logs.push((f.path.clone().unwrap_or_else(|| DEV_STDOUT.into()), format));
                }
            }
        }
    } else if let Some(path) = mc.access_log_file.as_deref().filter(|p| !p.is_empty()) {
        access_logs.push((path.to_string(), mesh_log_format(mc)));
    }
    // Metrics: the default providers unless a Telemetry names its own.
    let mut metrics = mc.default_metrics();
    for m in tels.iter().flat_map(|t| t.spec.metrics.iter()) {
        if !m.providers.is_empty() {
            metrics = m.providers.iter().map(|p| p.name.clone()).collect();
        }
    }
    let metrics = metrics.iter().any(|n| mc.provider(n) == Some(Provider::Prometheus));
    let stats = metrics::StatsPlan::merge(tels.iter().flat_map(|t| t.spec.metrics.iter()));
    ProxyTelemetry { tracing, access_logs, metrics, stats }
}

fn with_newline(s: &str) -> String {
    if s.ends_with('\n') { s.to_string() } else { format!("{s}\n") }
}

fn mesh_log_format(mc: &MeshConfig) -> String {
    match mc.access_log_format.as_deref() {
        Some(f) if !f.is_empty() => with_newline(f),
        _ => ENVOY_TEXT_LOG_FORMAT.to_string(),
    }
}

/// Istio's default text access log format (pilot/pkg/model telemetry_logging.go, 1.9 onwards).
pub const ENVOY_TEXT_LOG_FORMAT: &str = concat!(
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" ",
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% ",
    "\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ",
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" ",
    "\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% ",
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% ",
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
);

/// istiod's `LookupCluster`: a Zipkin provider's `[namespace/]hostname` and port name a Service
/// of the mesh; its host name and `outbound|PORT||HOST` cluster.
pub fn lookup(mesh: &Mesh, service: &str, port: u16) -> Result<(String, String), String> {
    let found: Vec<_> = match service.split_once('/') {
        Some((ns, host)) => mesh.services.iter().filter(|s| s.namespace == ns && s.fqdn() == fqdn(host, ns)).collect(),
        None => mesh.services.iter().filter(|s| s.fqdn() == service).collect(),
    };
    match found.as_slice() {
        [s] if s.ports.iter().any(|p| p.port == port) => Ok((s.fqdn(), crate::xds::outbound_name(port, "", &s.fqdn()))),
        [s] => Err(format!("Service '{}' has no port {port}", s.fqdn())),
        [] => Err(format!("no Service '{service}' (write the fully qualified host name, or namespace/host)")),
        _ => Err(format!("'{service}' is in several namespaces: write namespace/host")),
    }
}

/// Checks the mesh config and the Telemetry resources against the mesh: every provider named
/// exists and suits its use, Zipkin services resolve, at most one Telemetry per namespace.
pub fn check(mesh: &Mesh) -> Result<(), ManifestError> {
    let mc = &mesh.mesh_config;
    let file = mesh.mesh_config_file.clone().unwrap_or_else(|| "(default mesh config)".into());
    let fail = |file: &str, field: String, reason: String| ManifestError { file: file.into(), field, reason };
    if mc.enable_tracing == Some(true) {
        return Err(fail(
            &file,
            "ConfigMap istio: data.mesh.enableTracing".into(),
            "true is not supported (the legacy bootstrap tracer is not generated): use a Telemetry resource with \
             a zipkin extensionProvider"
                .into(),
        ));
    }
    if let Some(e) = mc.access_log_encoding.as_deref().filter(|e| *e != "TEXT") {
        return Err(fail(&file, "ConfigMap istio: data.mesh.accessLogEncoding".into(), format!("{e}: only TEXT")));
    }
    for (i, p) in mc.extension_providers.iter().enumerate() {
        let at = format!("ConfigMap istio: data.mesh.extensionProviders[{i}]");
        let kinds = [p.zipkin.is_some(), p.envoy_file_access_log.is_some(), p.prometheus.is_some()];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(fail(&file, at, "give exactly one of zipkin, envoyFileAccessLog, prometheus".into()));
        }
        if let Some(z) = &p.zipkin {
            lookup(mesh, &z.service, z.port).map_err(|r| fail(&file, format!("{at}.zipkin.service"), r))?;
        }
    }
    let named = |file: &str, field: String, name: &str, want: &str| -> Result<Provider, ManifestError> {
        let p = mc
            .provider(name)
            .ok_or_else(|| fail(file, field.clone(), format!("no extensionProvider '{name}' in the mesh config")))?;
        let ok = matches!(
            (&p, want),
            (Provider::Zipkin(_), "tracing")
                | (Provider::FileAccessLog(_), "accessLogging")
                | (Provider::Prometheus, "metrics")
        );
        if !ok {
            return Err(fail(file, field, format!("provider '{name}' is not a {want} provider the demo generates")));
        }
        Ok(p)
    };
    for (i, n) in mc.default_providers.tracing.iter().enumerate() {
        named(&file, format!("ConfigMap istio: data.mesh.defaultProviders.tracing[{i}]"), n, "tracing")?;
    }
    for (i, n) in mc.default_providers.access_logging.iter().enumerate() {
        named(&file, format!("ConfigMap istio: data.mesh.defaultProviders.accessLogging[{i}]"), n, "accessLogging")?;
    }
    for (i, n) in mc.default_metrics().iter().enumerate() {
        named(&file, format!("ConfigMap istio: data.mesh.defaultProviders.metrics[{i}]"), n, "metrics")?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for t in &mesh.telemetries {
        let at = format!("Telemetry {}", t.meta.name);
        if !seen.insert(t.namespace.clone()) {
            return Err(fail(
                &t.file,
                at,
                format!(
                    "a second Telemetry in namespace {}: the demo reads one namespace-wide Telemetry per namespace",
                    t.namespace
                ),
            ));
        }
        for (i, tr) in t.spec.tracing.iter().enumerate() {
            for (j, p) in tr.providers.iter().enumerate() {
                named(&t.file, format!("{at}: spec.tracing[{i}].providers[{j}].name"), &p.name, "tracing")?;
            }
            for (tag, v) in tr.custom_tags.iter().flatten() {
                let set = [v.literal.is_some(), v.environment.is_some(), v.header.is_some()];
                if set.iter().filter(|x| **x).count() != 1 {
                    return Err(fail(
                        &t.file,
                        format!("{at}: spec.tracing[{i}].customTags.{tag}"),
                        "give exactly one of literal, environment, header".into(),
                    ));
                }
            }
            if let Some(s) = tr.random_sampling_percentage
                && !(0.0..=100.0).contains(&s)
            {
                return Err(fail(
                    &t.file,
                    format!("{at}: spec.tracing[{i}].randomSamplingPercentage"),
                    format!("{s} is not a percentage (0 to 100)"),
                ));
            }
        }
        for (i, a) in t.spec.access_logging.iter().enumerate() {
            for (j, p) in a.providers.iter().enumerate() {
                named(&t.file, format!("{at}: spec.accessLogging[{i}].providers[{j}].name"), &p.name, "accessLogging")?;
            }
        }
        for (i, m) in t.spec.metrics.iter().enumerate() {
            for (j, p) in m.providers.iter().enumerate() {
                named(&t.file, format!("{at}: spec.metrics[{i}].providers[{j}].name"), &p.name, "metrics")?;
            }
            metrics::check(m, &format!("{at}: spec.metrics[{i}]")).map_err(|(f, r)| fail(&t.file, f, r))?;
        }
    }
    Ok(())
}
