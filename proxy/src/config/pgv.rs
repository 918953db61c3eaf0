//! Envoy's proto validation rules: the `validate.rules` annotations (protoc-gen-validate) on
//! Envoy's protos, checked generically from the descriptors, for the bootstrap and every xDS
//! resource alike, as Envoy's `MessageUtil::validate` does. A value outside its rules is refused
//! with the field's path and PGV's wording ("value must be greater than 0s").
//!
//! At start the rules of every message are compiled into a small table (only messages that
//! carry a rule, directly or through a sub-message, are kept); a resource is then checked by
//! walking its wire encoding, like the field guard, descending into typed configs inside `Any`s.
//! proto3 semantics as PGV's: a scalar field that is not set is checked as its zero value, unless
//! it is in a oneof; rules on wrapper types apply to the wrapped value when it is set.

use std::collections::HashMap;
use std::fmt::Write as _;

use prost_reflect::{DescriptorPool, Kind as PbKind};

use super::wire::{Reader, Value};

/// A number bound or set, compared as f64 (exact for every value a config carries).
#[derive(Debug, Clone, Default)]
struct NumRule {
    gt: Option<f64>,
    gte: Option<f64>,
    lt: Option<f64>,
    lte: Option<f64>,
    konst: Option<f64>,
    r#in: Vec<f64>,
    not_in: Vec<f64>,
}

#[derive(Debug, Clone, Default)]
struct StrRule {
    min_len: Option<u64>,
    max_len: Option<u64>,
    len: Option<u64>,
    min_bytes: Option<u64>,
    max_bytes: Option<u64>,
    prefix: Option<String>,
    suffix: Option<String>,
    contains: Option<String>,
    not_contains: Option<String>,
    konst: Option<String>,
    r#in: Vec<String>,
    not_in: Vec<String>,
    pattern: Option<regex::Regex>,
    /// A well-known format: header name/value (strict or not), hostname, ip, address, uri.
    well_known: Option<WellKnown>,
    ignore_empty: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum WellKnown {
    HeaderName { strict: bool },
    HeaderValue { strict: bool },
    Hostname,
    Ip,
    Ipv4,
    Ipv6,
    Address,
    Uri,
}

/// The rule of one value (a field, or the items/keys/values of a repeated field or map).
#[derive(Debug, Clone)]
enum Rule {
    Num(NumRule),
    Bool(Option<bool>),
    Str(StrRule),
    Enum {
        defined_only: bool,
        defined: Vec<i32>,
        konst: Option<i32>,
        r#in: Vec<i32>,
        not_in: Vec<i32>,
    },
    /// A duration's bounds in nanoseconds.
    Duration {
        required: bool,
        gt: Option<i128>,
        gte: Option<i128>,
        lt: Option<i128>,
        lte: Option<i128>,
    },
    Any {
        required: bool,
        r#in: Vec<String>,
        not_in: Vec<String>,
    },
    Message {
        required: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Scalar {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Bool,
    String,
    Bytes,
    Enum,
}

#[derive(Debug, Clone)]
enum Ty {
    Scalar(Scalar),
    /// A message type (its full name); wrappers and durations are resolved through this too.
    Message(String),
    Any,
    Map {
        key: Scalar,
        value: Box<Ty>,
    },
}

#[derive(Debug, Clone)]
struct FieldInfo {
    name: String,
    ty: Ty,
    repeated: bool,
    in_oneof: bool,
    /// The field's own rule (for repeated fields: min/max items live in `items_count`). Boxed:
    /// most fields have none, and the table lives as long as the process.
    rule: Option<Box<Rule>>,
    items: Option<Box<Rule>>,
    items_count: (Option<u64>, Option<u64>),
    unique: bool,
    map_keys: Option<Box<Rule>>,
    map_values: Option<Box<Rule>>,
    /// The field's type carries rules (descend into it).
    descend: bool,
}

#[derive(Debug, Clone, Default)]
struct MessageRules {
    /// By field number, sorted.
    fields: Vec<(u32, FieldInfo)>,
    /// Oneofs with `(validate.required) = true`: (name, member field numbers).
    required_oneofs: Vec<(String, Vec<u32>)>,
}

/// What failed: the path in the resource and PGV's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub field: String,
    pub reason: String,
}

/// The compiled rules.
#[derive(Debug, Default)]
pub struct Rules {
    messages: HashMap<String, MessageRules>,
}

const DURATION: &str = "google.protobuf.Duration";

const WRAPPERS: &[&str] = &[
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
];

fn scalar_of(k: &PbKind) -> Option<Scalar> {
    Some(match k {
        PbKind::Double => Scalar::Double,
        PbKind::Float => Scalar::Float,
        PbKind::Int32 => Scalar::Int32,
        PbKind::Int64 => Scalar::Int64,
        PbKind::Uint32 => Scalar::Uint32,
        PbKind::Uint64 => Scalar::Uint64,
        PbKind::Sint32 => Scalar::Sint32,
        PbKind::Sint64 => Scalar::Sint64,
        PbKind::Fixed32 => Scalar::Fixed32,
        PbKind::Fixed64 => Scalar::Fixed64,
        PbKind::Sfixed32 => Scalar::Sfixed32,
        PbKind::Sfixed64 => Scalar::Sfixed64,
        PbKind::Bool => Scalar::Bool,
        PbKind::String => Scalar::String,
        PbKind::Bytes => Scalar::Bytes,
        PbKind::Enum(_) => Scalar::Enum,
        PbKind::Message(_) => return None,
    })
}

fn ty_of(k: &PbKind) -> Ty {
    match k {
        PbKind::Message(m) if m.full_name() == "google.protobuf.Any" => Ty::Any,
        PbKind::Message(m) => Ty::Message(m.full_name().to_string()),
        other => Ty::Scalar(scalar_of(other).unwrap_or(Scalar::Bytes)),
    }
}

impl Rules {
    /// Compiles the rules of every message in the pool.
    pub fn build(pool: &DescriptorPool) -> Rules {
        let Some(ext) = pool.get_extension_by_name("validate.rules") else { return Rules::default() };
        let oneof_ext = pool.get_extension_by_name("validate.required");
        let mut all: HashMap<String, MessageRules> = HashMap::new();
        for m in pool.all_messages() {
            all.insert(m.full_name().to_string(), compile_message(&m, &ext, oneof_ext.as_ref()));
        }
        // Keep only messages with a rule somewhere below them; mark the fields to descend.
        let mut has: std::collections::HashSet<String> = all
            .iter()
            .filter(|(_, r)| !r.required_oneofs.is_empty() || r.fields.iter().any(|(_, f)| f.has_rule()))
            .map(|(n, _)| n.clone())
            .collect();
        loop {
            let before = has.len();
            for (name, r) in &all {
                if !has.contains(name) && r.fields.iter().any(|(_, f)| f.reaches(&has)) {
                    has.insert(name.clone());
                }
            }
            if has.len() == before {
                break;
            }
        }
        let mut messages = HashMap::with_capacity(has.len());
        for (name, mut r) in all {
            if !has.contains(&name) {
                continue;
            }
            r.fields.retain_mut(|(_, f)| {
                f.descend = f.reaches(&has);
                f.has_rule() || f.descend
            });
            r.fields.sort_by_key(|(n, _)| *n);
            r.fields.shrink_to_fit();
            messages.insert(name, r);
        }
        Rules { messages }
    }

    /// Checks a resource of message type `type_name` in its wire encoding.
    pub fn check(&self, type_name: &str, bytes: &[u8]) -> Result<(), Violation> {
        let mut path = String::new();
        self.walk(type_name, bytes, &mut path)
    }

    fn walk(&self, type_name: &str, bytes: &[u8], path: &mut String) -> Result<(), Violation> {
        let Some(msg) = self.messages.get(type_name) else { return Ok(()) };
        let mut seen: Vec<(u32, u64)> = Vec::new();
        let mut items: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
        let mut r = Reader { buf: bytes };
        while let Some((number, value)) = r.next_field() {
            match seen.iter_mut().find(|(n, _)| *n == number) {
                Some((_, c)) => *c += 1,
                None => seen.push((number, 1)),
            }
            let Some(f) = msg.field(number) else { continue };
            let index = seen.iter().find(|(n, _)| *n == number).map_or(0, |(_, c)| c - 1);
            let base = path.len();
            push_name(path, &f.name);
            if f.repeated {
                // Packed scalars: several values in one length-delimited field.
                let values: Vec<Value<'_>> = match (&f.ty, value) {
                    (Ty::Scalar(s), Value::Bytes(b)) if !matches!(s, Scalar::String | Scalar::Bytes) => unpack(*s, b),
                    (_, v) => vec![v],
                };
                let mut i = index;
                for v in values {
                    let b2 = path.len();
                    let _ = write!(path, "[{i}]");
                    if f.unique
                        && let Value::Bytes(b) = &v
                    {
                        items.entry(number).or_default().push(b.to_vec());
                    }
                    self.check_value(type_name, f, f.items.as_deref(), &v, path)?;
                    path.truncate(b2);
                    i += 1;
                }
                if let Some((_, c)) = seen.iter_mut().find(|(n, _)| *n == number) {
                    *c = i;
                }
            } else {
                self.check_value(type_name, f, f.rule.as_deref(), &value, path)?;
            }
            path.truncate(base);
        }
        // Presence: required messages and durations, required oneofs, item counts, the zero
        // value of unset scalars.
        for (number, f) in msg.fields.iter().map(|(n, f)| (n, f)) {
            let count = seen.iter().find(|(n, _)| n == number).map_or(0, |(_, c)| *c);
            let violation = |reason: String| {
                let mut p = path.clone();
                push_name(&mut p, &f.name);
                Violation { path: p, field: format!("{type_name}.{}", f.name), reason }
            };
            if f.repeated {
                let (min, max) = f.items_count;
                if let Some(min) = min
                    && count < min
                {
                    return Err(violation(format!("value must contain at least {min} item(s)")));
                }
                if let Some(max) = max
                    && count > max
                {
                    return Err(violation(format!("value must contain no more than {max} item(s)")));
                }
                if f.unique
                    && let Some(v) = items.get(number)
                {
                    let mut sorted = v.clone();
                    sorted.sort();
                    sorted.dedup();
                    if sorted.len() != v.len() {
                        return Err(violation("repeated value must contain unique items".into()));
                    }
                }
                continue;
            }
            // A oneof member's rules apply only when it is the one set.
            if count > 0 || f.in_oneof {
                continue;
            }
            match f.rule.as_deref() {
                Some(Rule::Message { required: true })
                | Some(Rule::Duration { required: true, .. })
                | Some(Rule::Any { required: true, .. }) => {
                    return Err(violation("value is required".into()));
                }
                Some(rule) if !f.in_oneof && matches!(f.ty, Ty::Scalar(_)) => {
                    let zero = match &f.ty {
                        Ty::Scalar(Scalar::String) | Ty::Scalar(Scalar::Bytes) => Value::Bytes(&[]),
                        _ => Value::Int(0),
                    };
                    if let Err(reason) = check_scalar(rule, &f.ty, &zero) {
                        return Err(violation(reason));
                    }
                }
                _ => {}
            }
        }
        for (name, members) in &msg.required_oneofs {
            if !members.iter().any(|m| seen.iter().any(|(n, _)| n == m)) {
                let mut p = path.clone();
                push_name(&mut p, name);
                return Err(Violation {
                    path: p,
                    field: format!("{type_name}.{name}"),
                    reason: "value is required".into(),
                });
            }
        }
        Ok(())
    }

    fn check_value(
        &self,
        type_name: &str,
        f: &FieldInfo,
        rule: Option<&Rule>,
        value: &Value<'_>,
        path: &mut String,
    ) -> Result<(), Violation> {
        let fail = |path: &String, reason: String| Violation {
            path: path.clone(),
            field: format!("{type_name}.{}", f.name),
            reason,
        };
        match (&f.ty, value) {
            (Ty::Scalar(_), v) => {
                if let Some(rule) = rule {
                    check_scalar(rule, &f.ty, v).map_err(|r| fail(path, r))?;
                }
            }
            (Ty::Message(t), Value::Bytes(b)) => {
                if t == DURATION {
                    check_duration_range(b).map_err(|r| fail(path, r))?;
                }
                if let Some(rule) = rule {
                    check_message_value(rule, t, b).map_err(|r| fail(path, r))?;
                }
                if f.descend {
                    self.walk(t, b, path)?;
                }
            }
            (Ty::Any, Value::Bytes(b)) => {
                let (type_url, inner) = any_parts(b);
                if let Some(Rule::Any { r#in, not_in, .. }) = rule {
                    if !r#in.is_empty() && !r#in.iter().any(|t| t == type_url) {
                        return Err(fail(path, format!("type URL must be in list {in:?}", in = r#in)));
                    }
                    if not_in.iter().any(|t| t == type_url) {
                        return Err(fail(path, format!("type URL must not be in list {not_in:?}")));
                    }
                }
                let t = type_url.rsplit('/').next().unwrap_or(type_url);
                match super::wire::typed_struct_payload(t, inner) {
                    Some((name, bytes)) => self.walk(&name, &bytes, path)?,
                    None => self.walk(t, inner, path)?,
                }
            }
            (Ty::Map { key, value: vt }, Value::Bytes(b)) => {
                let mut r = Reader { buf: b };
                let mut k: Option<Value<'_>> = None;
                let mut v: Option<Value<'_>> = None;
                while let Some((n, x)) = r.next_field() {
                    match n {
                        1 => k = Some(x),
                        2 => v = Some(x),
                        _ => {}
                    }
                }
                let key_ty = Ty::Scalar(*key);
                let kv = k.unwrap_or(if matches!(key, Scalar::String) { Value::Bytes(&[]) } else { Value::Int(0) });
                if let Value::Bytes(kb) = &kv {
                    let _ = write!(path, "[{}]", String::from_utf8_lossy(kb));
                }
                if let Some(rule) = &f.map_keys {
                    check_scalar(rule, &key_ty, &kv).map_err(|r| fail(path, format!("map key: {r}")))?;
                }
                match (vt.as_ref(), v) {
                    (Ty::Message(t), Some(Value::Bytes(vb))) => {
                        if let Some(rule) = &f.map_values {
                            check_message_value(rule, t, vb).map_err(|r| fail(path, r))?;
                        }
                        self.walk(t, vb, path)?;
                    }
                    (Ty::Any, Some(Value::Bytes(vb))) => {
                        let (type_url, inner) = any_parts(vb);
                        let t = type_url.rsplit('/').next().unwrap_or(type_url);
                        self.walk(t, inner, path)?;
                    }
                    (ty @ Ty::Scalar(_), Some(val)) => {
                        if let Some(rule) = &f.map_values {
                            check_scalar(rule, ty, &val).map_err(|r| fail(path, format!("map value: {r}")))?;
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl MessageRules {
    fn field(&self, number: u32) -> Option<&FieldInfo> {
        self.fields.binary_search_by_key(&number, |(n, _)| *n).ok().map(|i| &self.fields[i].1)
    }
}

impl FieldInfo {
    fn has_rule(&self) -> bool {
        self.rule.is_some()
            || self.items.is_some()
            || self.items_count != (None, None)
            || self.unique
            || self.map_keys.is_some()
            || self.map_values.is_some()
    }

    fn reaches(&self, has: &std::collections::HashSet<String>) -> bool {
        match &self.ty {
            // Every duration is checked for sign and range (Envoy's validateDurationFields).
            Ty::Message(t) if t == DURATION => true,
            Ty::Message(t) => has.contains(t),
            Ty::Any => true,
            Ty::Map { value, .. } => match value.as_ref() {
                Ty::Message(t) => has.contains(t),
                Ty::Any => true,
                _ => false,
            },
            Ty::Scalar(_) => false,
        }
    }
}

/// `type_url` and `value` of an encoded `Any`.
fn any_parts(b: &[u8]) -> (&str, &[u8]) {
    let mut r = Reader { buf: b };
    let (mut t, mut v): (&str, &[u8]) = ("", &[]);
    while let Some((n, x)) = r.next_field() {
        match (n, x) {
            (1, Value::Bytes(s)) => t = std::str::from_utf8(s).unwrap_or_default(),
            (2, Value::Bytes(s)) => v = s,
            _ => {}
        }
    }
    (t, v)
}

fn unpack(s: Scalar, b: &[u8]) -> Vec<Value<'_>> {
    let mut out = Vec::new();
    let mut r = Reader { buf: b };
    while !r.buf.is_empty() {
        match s {
            Scalar::Fixed32 | Scalar::Sfixed32 | Scalar::Float => match r.buf.split_first_chunk::<4>() {
                Some((x, rest)) => {
                    out.push(Value::Fixed32(u32::from_le_bytes(*x)));
                    r.buf = rest;
                }
                None => break,
            },
            Scalar::Fixed64 | Scalar::Sfixed64 | Scalar::Double => match r.buf.split_first_chunk::<8>() {
                Some((x, rest)) => {
                    out.push(Value::Fixed64(u64::from_le_bytes(*x)));
                    r.buf = rest;
                }
                None => break,
            },
            _ => match r.varint() {
                Some(v) => out.push(Value::Int(v)),
                None => break,
            },
        }
    }
    out
}

fn push_name(path: &mut String, name: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(name);
}

mod check;
mod compile;

use check::{check_duration_range, check_message_value, check_scalar};
use compile::compile_message;

#[cfg(test)]
mod tests;
