//! The field-coverage guard: honour or refuse. Every field set in a resource remora translates is
//! looked up in `fields.txt` (beside this file): implemented, accepted as a no-op for a stated
//! reason, telemetry-only (accepted loudly: logged once, counted, listed on the admin API), or
//! else refused with its path and "not supported by remora". An operator who configured outlier
//! detection must not believe it is on when it is not.
//!
//! The guard is generic: at start it compiles the policy against the protobuf descriptors (field
//! numbers, message types, map entries) into a small table, then checks a resource by walking its
//! wire encoding, descending into sub-messages and into the typed configs inside `Any`s. Nothing
//! is decoded twice and the descriptor pool is not kept.

use std::collections::HashMap;
use std::fmt::Write as _;

use prost_reflect::{DescriptorPool, Kind as PbKind, MessageDescriptor};

use super::wire::{Reader, Value};

/// The policy, compiled into the binary.
pub const POLICY: &str = include_str!("fields.txt");

/// What remora does with a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Translated and honoured.
    Implemented,
    /// Accepted without effect, for the reason given (e.g. "a stats prefix only").
    NoOp(String),
    /// Feeds only telemetry that remora does not produce: accepted loudly.
    Telemetry(String),
    /// Accepted only when its value is zero or empty (a duration of 0 meaning "disabled");
    /// anything else is refused with the reason.
    Zero(String),
    /// Refused.
    Unsupported,
}

#[derive(Debug, Clone)]
enum Kind {
    Scalar,
    Message(String),
    Any,
    /// A `map<K, V>` entry: key field 1, value field 2 (of `value` kind).
    Map(Box<Kind>),
}

#[derive(Debug, Clone)]
struct Field {
    name: String,
    kind: Kind,
    repeated: bool,
    verdict: Verdict,
}

/// A message's fields by number. A message listed `whole` has every field `Implemented`: its
/// translator reads every field and refuses what it cannot honour itself.
#[derive(Debug, Default)]
struct Message {
    fields: HashMap<u32, Field>,
}

/// A field the guard flagged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Where in the resource, e.g. `filter_chains[0].filters[1].typed_config.tracing`.
    pub path: String,
    /// The message type and field, e.g. `envoy.config.cluster.v3.Cluster.outlier_detection`.
    pub field: String,
    /// Why (telemetry-only findings; the broken rule for invalid values).
    pub reason: String,
    /// The value breaks Envoy's validation rules (rather than being unsupported).
    pub invalid: bool,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.invalid {
            return write!(f, "{}: {} ({})", self.path, self.reason, self.field);
        }
        write!(f, "{}: not supported by remora ({}", self.path, self.field)?;
        if !self.reason.is_empty() {
            write!(f, ": {}", self.reason)?;
        }
        f.write_str(")")
    }
}

/// The compiled guard, and the telemetry-only fields it has let through so far.
#[derive(Debug, Default)]
pub struct FieldGuard {
    messages: HashMap<String, Message>,
    /// Envoy's proto validation rules, checked after the policy.
    rules: super::pgv::Rules,
    /// `Message.field` -> (reason, times seen), for the log, the stats and `/config_guard`.
    seen: std::sync::Mutex<std::collections::BTreeMap<String, (String, u64)>>,
}

/// Messages whose content is data, not config remora could ignore (metadata, typed structs):
/// never walked.
const OPAQUE: &[&str] = &[
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "xds.type.v3.TypedStruct",
    "udpa.type.v1.TypedStruct",
];

/// Wrappers and durations: one value field, always read where the outer field is.
fn is_value_type(name: &str) -> bool {
    name.starts_with("google.protobuf.") && !OPAQUE.contains(&name) && name != "google.protobuf.Any"
}

/// One parsed policy entry.
#[derive(Debug)]
pub struct PolicyMessage {
    pub name: String,
    pub whole: Option<String>,
    pub fields: Vec<(String, Verdict)>,
}

/// Parses `fields.txt`:
///
/// ```text
/// message envoy.config.cluster.v3.Cluster
///   name
///   alt_stat_name noop a stats name only
///   track_cluster_stats telemetry per-cluster request/response size stats
/// message envoy.type.matcher.v3.StringMatcher whole the matcher compiles every variant
/// ```
///
/// A field alone on its line is implemented; fields not listed are refused.
pub fn parse_policy(text: &str) -> Result<Vec<PolicyMessage>, String> {
    let mut out: Vec<PolicyMessage> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split_once('#').map_or(raw, |(l, _)| l);
        if line.trim().is_empty() {
            continue;
        }
        let err = |m: &str| format!("fields.txt:{}: {m}", n + 1);
        if let Some(rest) = line.strip_prefix("message ") {
            let mut words = rest.trim().splitn(3, ' ');
            let name = words.next().unwrap_or_default().to_string();
            let whole = match words.next() {
                None => None,
                Some("whole") => Some(words.next().unwrap_or_default().trim().to_string()),
                Some(w) => return Err(err(&format!("unexpected `{w}` after the message name"))),
            };
            out.push(PolicyMessage { name, whole, fields: Vec::new() });
            continue;
        }
        if !line.starts_with(' ') {
            return Err(err("a field line must be indented under a `message` line"));
        }
        let Some(m) = out.last_mut() else { return Err(err("field before any message")) };
        let mut words = line.trim().splitn(3, ' ');
        let field = words.next().unwrap_or_default().to_string();
        let kind = words.next();
        let reason = words.next().unwrap_or_default().trim().to_string();
        let verdict = match kind {
            None => Verdict::Implemented,
            Some("noop") => Verdict::NoOp(reason),
            Some("telemetry") => Verdict::Telemetry(reason),
            Some("zero") => Verdict::Zero(reason),
            Some(w) => return Err(err(&format!("unknown verdict `{w}` (noop, telemetry, zero or nothing)"))),
        };
        if matches!(&verdict, Verdict::NoOp(r) | Verdict::Telemetry(r) | Verdict::Zero(r) if r.is_empty()) {
            return Err(err("noop, telemetry and zero need a reason"));
        }
        m.fields.push((field, verdict));
    }
    Ok(out)
}

impl FieldGuard {
    /// Compiles the policy against the descriptors. Every message and field it names must exist.
    pub fn build(pool: &DescriptorPool, policy: &str) -> Result<Self, String> {
        let parsed = parse_policy(policy)?;
        let mut guard = FieldGuard { rules: super::pgv::Rules::build(pool), ..FieldGuard::default() };
        let mut by_name: HashMap<&str, &PolicyMessage> = HashMap::new();
        for m in &parsed {
            if by_name.insert(m.name.as_str(), m).is_some() {
                return Err(format!("fields.txt: message {} listed twice", m.name));
            }
        }
        for m in &parsed {
            let Some(desc) = pool.get_message_by_name(&m.name) else {
                return Err(format!("fields.txt: unknown message {}", m.name));
            };
            let mut compiled = Message { fields: HashMap::new() };
            for (fname, _) in &m.fields {
                if desc.get_field_by_name(fname).is_none() {
                    return Err(format!("fields.txt: {} has no field {fname}", m.name));
                }
            }
            for f in desc.fields() {
                let verdict = if m.whole.is_some() {
                    Verdict::Implemented
                } else {
                    m.fields.iter().find(|(n, _)| n == f.name()).map(|(_, v)| v.clone()).unwrap_or(Verdict::Unsupported)
                };
                compiled.fields.insert(
                    f.number(),
                    Field { name: f.name().to_string(), kind: kind_of(&f), repeated: f.is_list(), verdict },
                );
            }
            guard.messages.insert(m.name.clone(), compiled);
        }
        Ok(guard)
    }

    /// Loads the guard from the crate's descriptor pool and `fields.txt`.
    pub fn load() -> Result<Self, String> {
        let pool = xds_client::descriptors::pool();
        FieldGuard::build(&pool, POLICY)
    }

    /// Checks a resource of message type `type_name` (full name, e.g.
    /// `envoy.config.cluster.v3.Cluster`) in its wire encoding. Returns the telemetry-only fields
    /// it carries, or the first refused field: one remora does not support, or a value outside
    /// Envoy's validation rules.
    pub fn check(&self, type_name: &str, bytes: &[u8]) -> Result<Vec<Finding>, Finding> {
        let mut telemetry = Vec::new();
        let mut path = String::new();
        self.walk(type_name, bytes, &mut path, &mut telemetry)?;
        self.rules.check(type_name, bytes).map_err(|v| Finding {
            path: v.path,
            field: v.field,
            reason: v.reason,
            invalid: true,
        })?;
        Ok(telemetry)
    }

    /// [`check`](Self::check) for a decoded message.
    pub fn check_message<M: prost::Message + prost::Name>(&self, m: &M) -> Result<Vec<Finding>, Finding> {
        self.check(&M::full_name(), &m.encode_to_vec())
    }

    /// Checks a resource and accounts for what it carries: a telemetry-only field is logged the
    /// first time it is seen and counted in `config_guard.telemetry_only.<Message>.<field>`.
    /// Returns the refused field, if any, for the caller's error.
    pub fn admit<M: prost::Message + prost::Name>(&self, m: &M, stats: &crate::stats::Store) -> Result<(), Finding> {
        let found = self.check_message(m)?;
        if found.is_empty() {
            return Ok(());
        }
        for f in found {
            self.note_telemetry(&f.field, &f.reason, stats);
        }
        Ok(())
    }

    /// Accounts for a telemetry-only field found outside the policy walk (a filter reading its
    /// own config, as Istio's JSON-only configs): logged the first time, counted in
    /// `config_guard.telemetry_only.<Message>.<field>`, listed on `/config_guard`.
    pub fn note_telemetry(&self, field: &str, reason: &str, stats: &crate::stats::Store) {
        let key = short_field(field);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let entry = seen.entry(key.clone()).or_insert_with(|| {
            tracing::warn!(
                target: "remora::config",
                "{field} is accepted but has no effect in remora: {reason} (listed on /config_guard)"
            );
            (reason.to_string(), 0)
        });
        entry.1 += 1;
        stats.counter(&format!("config_guard.telemetry_only.{key}")).inc();
    }

    /// The telemetry-only fields accepted so far: (`Message.field`, reason, times).
    pub fn seen(&self) -> Vec<(String, String, u64)> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter().map(|(k, (r, n))| (k.clone(), r.clone(), *n)).collect()
    }

    /// Whether the policy covers a message type.
    pub fn covers(&self, type_name: &str) -> bool {
        self.messages.contains_key(type_name)
    }

    fn walk(&self, type_name: &str, bytes: &[u8], path: &mut String, tele: &mut Vec<Finding>) -> Result<(), Finding> {
        if OPAQUE.contains(&type_name) || is_value_type(type_name) {
            return Ok(());
        }
        let msg = self.messages.get(type_name);
        let mut counts: Vec<(u32, usize)> = Vec::new();
        let mut r = Reader { buf: bytes };
        while let Some((number, value)) = r.next_field() {
            let base = path.len();
            let field = msg.and_then(|m| m.fields.get(&number));
            let name = field.map_or_else(|| number.to_string(), |f| f.name.clone());
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&name);
            let verdict = match (msg, field) {
                // A message the policy does not list: every set field is refused.
                (None, _) => Verdict::Unsupported,
                (Some(_), None) => Verdict::Unsupported,
                (Some(_), Some(f)) => f.verdict.clone(),
            };
            match verdict {
                Verdict::Unsupported => {
                    return Err(Finding {
                        path: path.clone(),
                        field: format!("{type_name}.{name}"),
                        reason: String::new(),
                        invalid: false,
                    });
                }
                Verdict::Telemetry(reason) => {
                    tele.push(Finding {
                        path: path.clone(),
                        field: format!("{type_name}.{name}"),
                        reason,
                        invalid: false,
                    });
                }
                Verdict::NoOp(_) => {}
                Verdict::Zero(reason) => {
                    let zero = match value {
                        Value::Int(v) => v == 0,
                        Value::Bytes(b) => b.is_empty(),
                        Value::Fixed32(v) => v == 0,
                        Value::Fixed64(v) => v == 0,
                    };
                    if !zero {
                        return Err(Finding {
                            path: path.clone(),
                            field: format!("{type_name}.{name}"),
                            reason,
                            invalid: false,
                        });
                    }
                }
                Verdict::Implemented => {
                    if let (Some(f), Value::Bytes(b)) = (field, value) {
                        let i = match counts.iter_mut().find(|(n, _)| *n == number) {
                            Some((_, c)) => {
                                *c += 1;
                                *c - 1
                            }
                            None => {
                                counts.push((number, 1));
                                0
                            }
                        };
                        self.walk_value(&f.kind, b, f.repeated.then_some(i), path, tele)?;
                    }
                }
            }
            path.truncate(base);
        }
        Ok(())
    }

    fn walk_value(
        &self,
        kind: &Kind,
        bytes: &[u8],
        index: Option<usize>,
        path: &mut String,
        tele: &mut Vec<Finding>,
    ) -> Result<(), Finding> {
        match kind {
            Kind::Scalar => Ok(()),
            Kind::Message(t) => {
                if let Some(i) = index {
                    let _ = write!(path, "[{i}]");
                }
                self.walk(t, bytes, path, tele)
            }
            Kind::Any => {
                if let Some(i) = index {
                    let _ = write!(path, "[{i}]");
                }
                self.walk_any(bytes, path, tele)
            }
            Kind::Map(value_kind) => {
                let mut key = String::new();
                let mut value: Option<&[u8]> = None;
                let mut r = Reader { buf: bytes };
                while let Some((n, v)) = r.next_field() {
                    match (n, v) {
                        (1, Value::Bytes(b)) => key = String::from_utf8_lossy(b).into_owned(),
                        (1, Value::Int(i)) => key = i.to_string(),
                        (2, Value::Bytes(b)) => value = Some(b),
                        _ => {}
                    }
                }
                let _ = write!(path, "[{key}]");
                match (value, value_kind.as_ref()) {
                    (Some(b), Kind::Message(t)) => self.walk(t, b, path, tele),
                    (Some(b), Kind::Any) => self.walk_any(b, path, tele),
                    _ => Ok(()),
                }
            }
        }
    }

    /// An `Any`: the typed config inside is checked when the policy covers its type; a type it
    /// does not cover is left to the extension registries, which refuse what they lack.
    fn walk_any(&self, bytes: &[u8], path: &mut String, tele: &mut Vec<Finding>) -> Result<(), Finding> {
        let mut type_url = "";
        let mut value: &[u8] = &[];
        let mut r = Reader { buf: bytes };
        while let Some((n, v)) = r.next_field() {
            match (n, v) {
                (1, Value::Bytes(b)) => type_url = std::str::from_utf8(b).unwrap_or_default(),
                (2, Value::Bytes(b)) => value = b,
                _ => {}
            }
        }
        let t = type_url.rsplit('/').next().unwrap_or(type_url);
        // A TypedStruct carries its config as JSON: checked as the message it stands for.
        if let Some((inner, bytes)) = super::wire::typed_struct_payload(t, value) {
            if !self.messages.contains_key(inner.as_str()) {
                return Ok(());
            }
            return self.walk(&inner, &bytes, path, tele);
        }
        if !self.messages.contains_key(t) {
            return Ok(());
        }
        self.walk(t, value, path, tele)
    }

    /// The policy as the README's tables: for each message, the refused, no-op and
    /// telemetry-only fields (`descriptors` gives every field of each message).
    pub fn markdown(pool: &DescriptorPool, policy: &str) -> Result<String, String> {
        let parsed = parse_policy(policy)?;
        let mut out = String::from(
            "| message | refused (not supported) | accepted without effect | telemetry only |\n|---|---|---|---|\n",
        );
        for m in &parsed {
            if m.whole.is_some() {
                continue;
            }
            let Some(desc) = pool.get_message_by_name(&m.name) else { continue };
            let listed: Vec<&str> = m.fields.iter().map(|(n, _)| n.as_str()).collect();
            let mut refused: Vec<String> =
                desc.fields().filter(|f| !listed.contains(&f.name())).map(|f| f.name().to_string()).collect();
            refused.sort_unstable();
            let list = |want: fn(&Verdict) -> Option<&String>| -> String {
                m.fields
                    .iter()
                    .filter_map(|(n, v)| want(v).map(|r| format!("`{n}` ({r})")))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let noop = list(|v| if let Verdict::NoOp(r) = v { Some(r) } else { None });
            let tele = list(|v| if let Verdict::Telemetry(r) = v { Some(r) } else { None });
            let refused = refused.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ");
            let short = m.name.as_str();
            let _ = writeln!(out, "| `{short}` | {refused} | {noop} | {tele} |");
        }
        Ok(out)
    }
}

/// `envoy.config.cluster.v3.Cluster.track_cluster_stats` -> `Cluster.track_cluster_stats`.
fn short_field(full: &str) -> String {
    let mut parts = full.rsplitn(3, '.');
    let field = parts.next().unwrap_or_default();
    let message = parts.next().unwrap_or_default();
    format!("{message}.{field}")
}

fn kind_of(f: &prost_reflect::FieldDescriptor) -> Kind {
    let base = |k: PbKind| match k {
        PbKind::Message(m) => message_kind(&m),
        _ => Kind::Scalar,
    };
    if f.is_map() {
        if let PbKind::Message(entry) = f.kind()
            && let Some(v) = entry.get_field(2)
        {
            return Kind::Map(Box::new(base(v.kind())));
        }
        return Kind::Scalar;
    }
    base(f.kind())
}

fn message_kind(m: &MessageDescriptor) -> Kind {
    if m.full_name() == "google.protobuf.Any" { Kind::Any } else { Kind::Message(m.full_name().to_string()) }
}

#[cfg(test)]
mod tests;
