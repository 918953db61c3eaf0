//! Telemetry `metrics` overrides, merged as istiod's `mergeMetrics` does for the prometheus
//! provider (pilot/pkg/model telemetry.go) and turned into `stats.PluginConfig` by
//! `generateStatsConfig`: per workload mode (CLIENT: sidecar outbound and the gateway; SERVER:
//! sidecar inbound), a metric's `disabled` (`drop`) and `tagOverrides` (UPSERT: a `dimensions`
//! entry; REMOVE: `tags_to_remove`); disabling all metrics of a mode drops the filter there;
//! `reportingInterval` is the TCP reporting duration. Tag values are the attribute expressions
//! remora's `istio.stats` evaluates; anything else is refused here, naming the field.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsOverride {
    #[serde(default, rename = "match")]
    pub selector: Option<MetricSelector>,
    #[serde(default)]
    pub disabled: Option<bool>,
    #[serde(default)]
    pub tag_overrides: BTreeMap<String, TagOverride>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSelector {
    #[serde(default)]
    pub metric: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagOverride {
    #[serde(default)]
    pub operation: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
}

/// Istio's metric enum names and their Prometheus names (`metricToPrometheusMetric`), sorted by
/// enum name as istiod's `allMetrics` is.
const METRICS: &[(&str, &str)] = &[
    ("GRPC_REQUEST_MESSAGES", "request_messages_total"),
    ("GRPC_RESPONSE_MESSAGES", "response_messages_total"),
    ("REQUEST_COUNT", "requests_total"),
    ("REQUEST_DURATION", "request_duration_milliseconds"),
    ("REQUEST_SIZE", "request_bytes"),
    ("RESPONSE_SIZE", "response_bytes"),
    ("TCP_CLOSED_CONNECTIONS", "tcp_connections_closed_total"),
    ("TCP_OPENED_CONNECTIONS", "tcp_connections_opened_total"),
    ("TCP_RECEIVED_BYTES", "tcp_received_bytes_total"),
    ("TCP_SENT_BYTES", "tcp_sent_bytes_total"),
];

#[derive(Debug, Clone, Default, PartialEq)]
struct Override {
    disabled: Option<bool>,
    /// Tag -> Some(value) to upsert, None to remove.
    tags: BTreeMap<String, Option<String>>,
}

/// The merged metrics config of one proxy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsPlan {
    /// (client, server): every metric disabled for that mode.
    disabled_all: (bool, bool),
    client: BTreeMap<String, Override>,
    server: BTreeMap<String, Override>,
    reporting_interval: Option<String>,
}

fn modes(selector: Option<&MetricSelector>) -> (bool, bool) {
    match selector.and_then(|s| s.mode.as_deref()) {
        Some("CLIENT") => (true, false),
        Some("SERVER") => (false, true),
        _ => (true, true),
    }
}

impl StatsPlan {
    /// Merges the `metrics` entries in scope, in order (root namespace first).
    pub fn merge<'a>(entries: impl Iterator<Item = &'a super::Metrics>) -> StatsPlan {
        let mut plan = StatsPlan::default();
        for m in entries {
            if let Some(ri) = &m.reporting_interval {
                plan.reporting_interval = Some(ri.clone());
            }
            for o in &m.overrides {
                let (client, server) = modes(o.selector.as_ref());
                let metric = o.selector.as_ref().and_then(|s| s.metric.as_deref());
                let all = metric.is_none_or(|m| m == "ALL_METRICS");
                if all && o.disabled == Some(true) {
                    plan.disabled_all = (plan.disabled_all.0 || client, plan.disabled_all.1 || server);
                    continue;
                }
                let names: Vec<&str> = match metric {
                    Some(m) if m != "ALL_METRICS" => vec![m],
                    _ => METRICS.iter().map(|(n, _)| *n).collect(),
                };
                for (on, map, flag) in [
                    (client, &mut plan.client, &mut plan.disabled_all.0),
                    (server, &mut plan.server, &mut plan.disabled_all.1),
                ] {
                    if !on {
                        continue;
                    }
                    *flag = false;
                    for n in &names {
                        let e = map.entry(n.to_string()).or_default();
                        if let Some(d) = o.disabled {
                            e.disabled = Some(d);
                        }
                        for (k, t) in &o.tag_overrides {
                            let remove = t.operation.as_deref() == Some("REMOVE");
                            e.tags.insert(k.clone(), if remove { None } else { t.value.clone() });
                        }
                    }
                }
            }
        }
        plan
    }

    /// The `stats.PluginConfig` fields for a mode (`client`: sidecar outbound and the gateway),
    /// or None when every metric is disabled there.
    pub fn config(&self, client: bool) -> Option<Value> {
        let (disabled, map) =
            if client { (self.disabled_all.0, &self.client) } else { (self.disabled_all.1, &self.server) };
        if disabled {
            return None;
        }
        let mut cfg = json!({});
        let mut metrics = Vec::new();
        for (name, o) in map {
            let prom = METRICS.iter().find(|(n, _)| n == name).map(|(_, p)| *p).unwrap_or(name);
            let mut m = json!({"name": prom});
            if o.disabled == Some(true) {
                m["drop"] = json!(true);
            }
            let dims: BTreeMap<&String, &String> =
                o.tags.iter().filter_map(|(k, v)| v.as_ref().map(|v| (k, v))).collect();
            if !dims.is_empty() {
                m["dimensions"] = json!(dims);
            }
            let remove: Vec<&String> = o.tags.iter().filter(|(_, v)| v.is_none()).map(|(k, _)| k).collect();
            if !remove.is_empty() {
                m["tags_to_remove"] = json!(remove);
            }
            metrics.push(m);
        }
        if !metrics.is_empty() {
            cfg["metrics"] = json!(metrics);
        }
        if let Some(ri) = &self.reporting_interval {
            cfg["tcp_reporting_duration"] = json!(ri);
        }
        Some(cfg)
    }
}

/// Whether remora's `istio.stats` evaluates a dimension expression: the request and response
/// attributes it implements, or a quoted literal.
fn supported_expression(e: &str) -> bool {
    let e = e.trim();
    let quoted =
        e.len() >= 2 && ((e.starts_with('"') && e.ends_with('"')) || (e.starts_with('\'') && e.ends_with('\'')));
    let header = e.strip_prefix("request.headers[").and_then(|r| r.strip_suffix(']')).is_some_and(|n| {
        n.len() >= 2 && (n.starts_with('\'') && n.ends_with('\'') || n.starts_with('"') && n.ends_with('"'))
    });
    quoted
        || header
        || ["request.host", "request.method", "request.path", "request.url_path", "request.scheme", "response.code"]
            .contains(&e)
}

/// Checks one `metrics` entry; `at` is its field path. `Err((field, reason))`.
pub fn check(m: &super::Metrics, at: &str) -> Result<(), (String, String)> {
    if let Some(ri) = &m.reporting_interval
        && crate::manifest::parse_duration(ri).is_none()
    {
        return Err((format!("{at}.reportingInterval"), format!("bad duration '{ri}'")));
    }
    let known: BTreeSet<&str> = METRICS.iter().map(|(n, _)| *n).chain(["ALL_METRICS"]).collect();
    for (i, o) in m.overrides.iter().enumerate() {
        let at = format!("{at}.overrides[{i}]");
        if let Some(s) = &o.selector {
            if let Some(metric) = s.metric.as_deref().filter(|m| !known.contains(m)) {
                return Err((format!("{at}.match.metric"), format!("{metric} is not one of Istio's metrics")));
            }
            if let Some(mode) = s.mode.as_deref().filter(|m| !["CLIENT", "SERVER", "CLIENT_AND_SERVER"].contains(m)) {
                return Err((format!("{at}.match.mode"), format!("{mode}: CLIENT, SERVER or CLIENT_AND_SERVER")));
            }
        }
        for (tag, t) in &o.tag_overrides {
            let field = format!("{at}.tagOverrides.{tag}");
            match (t.operation.as_deref().unwrap_or("UPSERT"), t.value.as_deref()) {
                ("REMOVE", _) => {}
                ("UPSERT", Some(v)) if supported_expression(v) => {}
                ("UPSERT", Some(v)) => {
                    return Err((
                        format!("{field}.value"),
                        format!(
                            "'{v}': remora evaluates request.host, request.method, request.path, request.url_path, \
                             request.scheme, request.headers['name'], response.code and quoted literals (no CEL)"
                        ),
                    ));
                }
                ("UPSERT", None) => return Err((format!("{field}.value"), "UPSERT needs a value".into())),
                (op, _) => return Err((format!("{field}.operation"), format!("{op}: UPSERT or REMOVE"))),
            }
        }
    }
    Ok(())
}
