//! Admin renderings of the store: Envoy's `/stats` text and `/stats/prometheus`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::histogram::BUCKETS;
use super::{Entry, Store, Value};

/// Options of `/stats`.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub used_only: bool,
    pub regex: Option<regex::Regex>,
}

impl Filter {
    fn keep(&self, e: &Entry) -> bool {
        (!self.used_only || e.used) && self.regex.as_ref().is_none_or(|r| r.is_match(&e.name))
    }
}

const QUANTILES: [(f64, &str); 10] = [
    (0.0, "P0"),
    (0.25, "P25"),
    (0.5, "P50"),
    (0.75, "P75"),
    (0.9, "P90"),
    (0.95, "P95"),
    (0.99, "P99"),
    (0.995, "P99.5"),
    (0.999, "P99.9"),
    (1.0, "P100"),
];

/// `name: value` lines, counters and gauges sorted by name, then histograms.
pub fn text(store: &Store, filter: &Filter) -> String {
    let entries = store.entries();
    let mut out = String::new();
    let mut hists = String::new();
    for e in entries.iter().filter(|e| filter.keep(e)) {
        match &e.value {
            Value::Counter(v) => {
                let _ = writeln!(out, "{}: {v}", e.name);
            }
            Value::Gauge(v) => {
                // Envoy's gauges are unsigned (an unlimited `remaining_cx_pools` is u64::MAX).
                let _ = writeln!(out, "{}: {}", e.name, *v as u64);
            }
            Value::Histogram(s) => {
                if s.count == 0 {
                    let _ = writeln!(hists, "{}: No recorded values", e.name);
                    continue;
                }
                let _ = write!(hists, "{}:", e.name);
                for (q, label) in QUANTILES {
                    let v = s.quantile(q).unwrap_or(f64::NAN);
                    let _ = write!(hists, " {label}(nan,{v})");
                }
                hists.push('\n');
            }
        }
    }
    out.push_str(&hists);
    out
}

/// Prometheus text exposition with Envoy's tag extraction and `envoy_` prefix.
pub fn prometheus(store: &Store, used_only: bool) -> String {
    let entries = store.entries();
    // Group by metric family (tag-extracted name) so each family gets one TYPE line.
    let mut families: BTreeMap<String, (&'static str, Vec<String>)> = BTreeMap::new();
    for e in entries.iter().filter(|e| !used_only || e.used) {
        let (family, labels) = match &e.tagged {
            Some(t) => (
                sanitize(&t.family),
                t.tags
                    .iter()
                    .map(|(k, v)| format!("{}=\"{}\"", sanitize(k), escape_label(v)))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            None => {
                let (base, tags) = store.tag_extractors().extract(&e.name);
                let labels = tags
                    .iter()
                    .map(|(k, v)| format!("{}=\"{}\"", sanitize(k), escape_label(v)))
                    .collect::<Vec<_>>()
                    .join(",");
                (format!("envoy_{}", sanitize(&base)), labels)
            }
        };
        let kind = match e.value {
            Value::Counter(_) => "counter",
            Value::Gauge(_) => "gauge",
            Value::Histogram(_) => "histogram",
        };
        let lines = &mut families.entry(family.clone()).or_insert((kind, Vec::new())).1;
        match &e.value {
            Value::Counter(v) => lines.push(format!("{family}{{{labels}}} {v}")),
            Value::Gauge(v) => lines.push(format!("{family}{{{labels}}} {}", *v as u64)),
            Value::Histogram(s) => {
                let sep = if labels.is_empty() { "" } else { "," };
                let mut cum = 0;
                for (i, b) in BUCKETS.iter().enumerate() {
                    cum += s.buckets.get(i).copied().unwrap_or(0);
                    lines.push(format!("{family}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}"));
                }
                lines.push(format!("{family}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", s.count));
                lines.push(format!("{family}_sum{{{labels}}} {}", s.sum));
                lines.push(format!("{family}_count{{{labels}}} {}", s.count));
            }
        }
    }
    let mut out = String::new();
    for (family, (kind, lines)) in families {
        let _ = writeln!(out, "# TYPE {family} {kind}");
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
