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

use prost_reflect::{DescriptorPool, DynamicMessage, Kind as PbKind, MessageDescriptor, Value as PbValue};

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

// === reading the annotations ===

fn get<'a>(m: &'a DynamicMessage, name: &str) -> Option<std::borrow::Cow<'a, PbValue>> {
    if m.has_field_by_name(name) { m.get_field_by_name(name) } else { None }
}

fn num(v: &PbValue) -> Option<f64> {
    Some(match v {
        PbValue::I32(x) => f64::from(*x),
        PbValue::I64(x) => *x as f64,
        PbValue::U32(x) => f64::from(*x),
        PbValue::U64(x) => *x as f64,
        PbValue::F32(x) => f64::from(*x),
        PbValue::F64(x) => *x,
        PbValue::EnumNumber(x) => f64::from(*x),
        _ => return None,
    })
}

fn nums(v: Option<std::borrow::Cow<'_, PbValue>>) -> Vec<f64> {
    match v.as_deref() {
        Some(PbValue::List(l)) => l.iter().filter_map(num).collect(),
        _ => Vec::new(),
    }
}

fn u(m: &DynamicMessage, name: &str) -> Option<u64> {
    get(m, name).and_then(|v| num(&v)).map(|f| f as u64)
}

fn s(m: &DynamicMessage, name: &str) -> Option<String> {
    get(m, name).and_then(|v| v.as_str().map(str::to_string))
}

fn strs(m: &DynamicMessage, name: &str) -> Vec<String> {
    match get(m, name).as_deref() {
        Some(PbValue::List(l)) => l.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    }
}

fn b(m: &DynamicMessage, name: &str) -> bool {
    get(m, name).and_then(|v| v.as_bool()).unwrap_or(false)
}

fn duration_nanos(v: &PbValue) -> Option<i128> {
    let m = v.as_message()?;
    let secs = get(m, "seconds").and_then(|v| v.as_i64()).unwrap_or(0);
    let nanos = get(m, "nanos").and_then(|v| v.as_i32()).unwrap_or(0);
    Some(i128::from(secs) * 1_000_000_000 + i128::from(nanos))
}

/// Compiles one `validate.FieldRules` (or the rules of items/keys/values) for a value of kind `k`.
fn compile_rule(r: &DynamicMessage, k: &PbKind) -> Option<Rule> {
    let numeric = [
        "float", "double", "int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32", "fixed64", "sfixed32",
        "sfixed64",
    ];
    for n in numeric {
        if let Some(v) = get(r, n)
            && let Some(m) = v.as_message()
        {
            let f = |name: &str| get(m, name).and_then(|v| num(&v));
            return Some(Rule::Num(NumRule {
                gt: f("gt"),
                gte: f("gte"),
                lt: f("lt"),
                lte: f("lte"),
                konst: f("const"),
                r#in: nums(get(m, "in")),
                not_in: nums(get(m, "not_in")),
            }));
        }
    }
    if let Some(v) = get(r, "bool")
        && let Some(m) = v.as_message()
    {
        return Some(Rule::Bool(get(m, "const").and_then(|v| v.as_bool())));
    }
    for n in ["string", "bytes"] {
        if let Some(v) = get(r, n)
            && let Some(m) = v.as_message()
        {
            let well_known = if let Some(wk) = get(m, "well_known_regex").and_then(|v| v.as_enum_number()) {
                let strict = get(m, "strict").and_then(|v| v.as_bool()).unwrap_or(true);
                match wk {
                    1 => Some(WellKnown::HeaderName { strict }),
                    2 => Some(WellKnown::HeaderValue { strict }),
                    _ => None,
                }
            } else if b(m, "hostname") {
                Some(WellKnown::Hostname)
            } else if b(m, "ip") {
                Some(WellKnown::Ip)
            } else if b(m, "ipv4") {
                Some(WellKnown::Ipv4)
            } else if b(m, "ipv6") {
                Some(WellKnown::Ipv6)
            } else if b(m, "address") {
                Some(WellKnown::Address)
            } else if b(m, "uri") {
                Some(WellKnown::Uri)
            } else {
                None
            };
            return Some(Rule::Str(StrRule {
                min_len: u(m, "min_len"),
                max_len: u(m, "max_len"),
                len: u(m, "len"),
                min_bytes: u(m, "min_bytes"),
                max_bytes: u(m, "max_bytes"),
                prefix: s(m, "prefix"),
                suffix: s(m, "suffix"),
                contains: s(m, "contains"),
                not_contains: s(m, "not_contains"),
                konst: s(m, "const"),
                r#in: strs(m, "in"),
                not_in: strs(m, "not_in"),
                pattern: s(m, "pattern").and_then(|p| regex::Regex::new(&p).ok()),
                well_known,
                ignore_empty: b(r, "ignore_empty") || b(m, "ignore_empty"),
            }));
        }
    }
    if let Some(v) = get(r, "enum")
        && let Some(m) = v.as_message()
    {
        let defined = match k {
            PbKind::Enum(e) => e.values().map(|v| v.number()).collect(),
            _ => Vec::new(),
        };
        let ints = |name: &str| nums(get(m, name)).into_iter().map(|f| f as i32).collect::<Vec<_>>();
        return Some(Rule::Enum {
            defined_only: b(m, "defined_only"),
            defined,
            konst: get(m, "const").and_then(|v| num(&v)).map(|f| f as i32),
            r#in: ints("in"),
            not_in: ints("not_in"),
        });
    }
    if let Some(v) = get(r, "duration")
        && let Some(m) = v.as_message()
    {
        let d = |name: &str| get(m, name).and_then(|v| duration_nanos(&v));
        return Some(Rule::Duration {
            required: b(m, "required"),
            gt: d("gt"),
            gte: d("gte"),
            lt: d("lt"),
            lte: d("lte"),
        });
    }
    if let Some(v) = get(r, "any")
        && let Some(m) = v.as_message()
    {
        return Some(Rule::Any { required: b(m, "required"), r#in: strs(m, "in"), not_in: strs(m, "not_in") });
    }
    if let Some(v) = get(r, "message")
        && let Some(m) = v.as_message()
        && b(m, "required")
    {
        return Some(Rule::Message { required: true });
    }
    None
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
                self.walk(t, inner, path)?;
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

fn compile_message(
    m: &MessageDescriptor,
    ext: &prost_reflect::ExtensionDescriptor,
    oneof_ext: Option<&prost_reflect::ExtensionDescriptor>,
) -> MessageRules {
    let mut out = MessageRules::default();
    for f in m.fields() {
        let opts = f.options();
        let rules = opts.has_extension(ext).then(|| opts.get_extension(ext).into_owned());
        let rules = rules.as_ref().and_then(|v| v.as_message());
        let kind = f.kind();
        let (ty, value_kind) = if f.is_map() {
            match &kind {
                PbKind::Message(entry) => {
                    let key = entry.get_field(1).and_then(|k| scalar_of(&k.kind())).unwrap_or(Scalar::String);
                    let vk = entry.get_field(2).map(|v| v.kind());
                    (Ty::Map { key, value: Box::new(vk.as_ref().map_or(Ty::Scalar(Scalar::Bytes), ty_of)) }, vk)
                }
                _ => (Ty::Scalar(Scalar::Bytes), None),
            }
        } else {
            (ty_of(&kind), None)
        };
        let mut info = FieldInfo {
            name: f.name().to_string(),
            ty,
            repeated: f.is_list(),
            in_oneof: f.containing_oneof().is_some() || f.field_descriptor_proto().proto3_optional(),
            rule: None,
            items: None,
            items_count: (None, None),
            unique: false,
            map_keys: None,
            map_values: None,
            descend: false,
        };
        // A wrapper's rules apply to its value.
        let value_kind_for_rule = match &kind {
            PbKind::Message(wm) if WRAPPERS.contains(&wm.full_name()) => {
                wm.get_field(1).map(|v| v.kind()).unwrap_or(kind.clone())
            }
            _ => kind.clone(),
        };
        if let Some(r) = rules {
            if f.is_map() {
                if let Some(mr) = get(r, "map").and_then(|v| v.as_message().cloned()) {
                    info.items_count = (u(&mr, "min_pairs"), u(&mr, "max_pairs"));
                    if let PbKind::Message(entry) = &kind {
                        let kk = entry.get_field(1).map(|k| k.kind());
                        info.map_keys = get(&mr, "keys")
                            .and_then(|v| v.as_message().cloned())
                            .and_then(|km| kk.as_ref().and_then(|kk| compile_rule(&km, kk)))
                            .map(Box::new);
                    }
                    info.map_values = get(&mr, "values")
                        .and_then(|v| v.as_message().cloned())
                        .and_then(|vm| value_kind.as_ref().and_then(|vk| compile_rule(&vm, vk)))
                        .map(Box::new);
                }
                info.repeated = true;
            } else if f.is_list() {
                if let Some(rr) = get(r, "repeated").and_then(|v| v.as_message().cloned()) {
                    info.items_count = (u(&rr, "min_items"), u(&rr, "max_items"));
                    info.unique = b(&rr, "unique");
                    info.items = get(&rr, "items")
                        .and_then(|v| v.as_message().cloned())
                        .and_then(|im| compile_rule(&im, &value_kind_for_rule))
                        .map(Box::new);
                }
            } else {
                info.rule = compile_rule(r, &value_kind_for_rule).map(Box::new);
            }
        }
        out.fields.push((f.number(), info));
    }
    if let Some(oe) = oneof_ext {
        for o in m.oneofs() {
            if o.is_synthetic() {
                continue;
            }
            let opts = o.options();
            if opts.has_extension(oe) && opts.get_extension(oe).as_bool() == Some(true) {
                out.required_oneofs.push((o.name().to_string(), o.fields().map(|f| f.number()).collect()));
            }
        }
    }
    out
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

/// A wrapper or duration value's rules, read from its encoding.
fn check_message_value(rule: &Rule, type_name: &str, b: &[u8]) -> Result<(), String> {
    match rule {
        Rule::Duration { gt, gte, lt, lte, .. } => {
            let mut r = Reader { buf: b };
            let (mut secs, mut nanos) = (0i64, 0i32);
            while let Some((n, v)) = r.next_field() {
                match (n, v) {
                    (1, Value::Int(x)) => secs = x as i64,
                    (2, Value::Int(x)) => nanos = x as i32,
                    _ => {}
                }
            }
            let d = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
            let show = |n: i128| format_duration(n);
            if let Some(g) = gt
                && d <= *g
            {
                return Err(format!("value must be greater than {}", show(*g)));
            }
            if let Some(g) = gte
                && d < *g
            {
                return Err(format!("value must be greater than or equal to {}", show(*g)));
            }
            if let Some(l) = lt
                && d >= *l
            {
                return Err(format!("value must be less than {}", show(*l)));
            }
            if let Some(l) = lte
                && d > *l
            {
                return Err(format!("value must be less than or equal to {}", show(*l)));
            }
            Ok(())
        }
        Rule::Message { .. } | Rule::Any { .. } => Ok(()),
        scalar if WRAPPERS.contains(&type_name) => {
            let ty = match type_name {
                "google.protobuf.DoubleValue" => Scalar::Double,
                "google.protobuf.FloatValue" => Scalar::Float,
                "google.protobuf.Int64Value" => Scalar::Int64,
                "google.protobuf.UInt64Value" => Scalar::Uint64,
                "google.protobuf.Int32Value" => Scalar::Int32,
                "google.protobuf.UInt32Value" => Scalar::Uint32,
                "google.protobuf.BoolValue" => Scalar::Bool,
                "google.protobuf.StringValue" => Scalar::String,
                _ => Scalar::Bytes,
            };
            let mut r = Reader { buf: b };
            let mut v = match ty {
                Scalar::String | Scalar::Bytes => Value::Bytes(&[]),
                Scalar::Double => Value::Fixed64(0),
                Scalar::Float => Value::Fixed32(0),
                _ => Value::Int(0),
            };
            while let Some((n, x)) = r.next_field() {
                if n == 1 {
                    v = x;
                }
            }
            check_scalar(scalar, &Ty::Scalar(ty), &v)
        }
        _ => Ok(()),
    }
}

/// Envoy refuses a negative duration, and one beyond protobuf's range, wherever it is
/// (`MessageUtil::validateDurationFields`).
fn check_duration_range(b: &[u8]) -> Result<(), String> {
    let mut r = Reader { buf: b };
    let (mut secs, mut nanos) = (0i64, 0i32);
    while let Some((n, v)) = r.next_field() {
        match (n, v) {
            (1, Value::Int(x)) => secs = x as i64,
            (2, Value::Int(x)) => nanos = x as i32,
            _ => {}
        }
    }
    if secs < 0 || nanos < 0 {
        return Err(format!("Invalid duration: Expected positive duration: seconds: {secs} nanos: {nanos}"));
    }
    if secs > 315_576_000_000 || nanos > 999_999_999 {
        return Err(format!("Duration out-of-range: seconds: {secs} nanos: {nanos}"));
    }
    Ok(())
}

fn format_duration(n: i128) -> String {
    let secs = n / 1_000_000_000;
    let nanos = n % 1_000_000_000;
    if nanos == 0 { format!("{secs}s") } else { format!("{}s", n as f64 / 1e9) }
}

fn scalar_number(s: Scalar, v: &Value<'_>) -> Option<f64> {
    Some(match (s, v) {
        (Scalar::Int32 | Scalar::Enum, Value::Int(x)) => f64::from(*x as i32),
        (Scalar::Int64, Value::Int(x)) => *x as i64 as f64,
        (Scalar::Uint32, Value::Int(x)) => f64::from(*x as u32),
        (Scalar::Uint64, Value::Int(x)) => *x as f64,
        (Scalar::Sint32 | Scalar::Sint64, Value::Int(x)) => ((*x >> 1) as i64 ^ -((*x & 1) as i64)) as f64,
        (Scalar::Fixed32, Value::Fixed32(x)) => f64::from(*x),
        (Scalar::Sfixed32, Value::Fixed32(x)) => f64::from(*x as i32),
        (Scalar::Float, Value::Fixed32(x)) => f64::from(f32::from_bits(*x)),
        (Scalar::Fixed64, Value::Fixed64(x)) => *x as f64,
        (Scalar::Sfixed64, Value::Fixed64(x)) => *x as i64 as f64,
        (Scalar::Double, Value::Fixed64(x)) => f64::from_bits(*x),
        (Scalar::Float | Scalar::Double, Value::Int(0)) => 0.0,
        _ => return None,
    })
}

fn show(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 { format!("{}", x as i64) } else { format!("{x}") }
}

fn check_scalar(rule: &Rule, ty: &Ty, v: &Value<'_>) -> Result<(), String> {
    let Ty::Scalar(s) = ty else { return Ok(()) };
    match rule {
        Rule::Num(r) => {
            let Some(x) = scalar_number(*s, v) else { return Ok(()) };
            if let Some(c) = r.konst
                && x != c
            {
                return Err(format!("value must equal {}", show(c)));
            }
            // PGV words a two-sided bound as a range.
            let lower = r.gt.map(|g| (g, false)).or(r.gte.map(|g| (g, true)));
            let upper = r.lt.map(|l| (l, false)).or(r.lte.map(|l| (l, true)));
            let below = lower.is_some_and(|(g, inc)| if inc { x < g } else { x <= g });
            let above = upper.is_some_and(|(l, inc)| if inc { x > l } else { x >= l });
            if below || above {
                return Err(match (lower, upper) {
                    (Some((g, gi)), Some((l, li))) => format!(
                        "value must be inside range {}{}, {}{}",
                        if gi { "[" } else { "(" },
                        show(g),
                        show(l),
                        if li { "]" } else { ")" }
                    ),
                    (Some((g, true)), None) => format!("value must be greater than or equal to {}", show(g)),
                    (Some((g, false)), None) => format!("value must be greater than {}", show(g)),
                    (None, Some((l, true))) => format!("value must be less than or equal to {}", show(l)),
                    (None, Some((l, false))) => format!("value must be less than {}", show(l)),
                    (None, None) => String::new(),
                });
            }
            if !r.r#in.is_empty() && !r.r#in.contains(&x) {
                return Err(format!("value must be in list {:?}", r.r#in));
            }
            if r.not_in.contains(&x) {
                return Err(format!("value must not be in list {:?}", r.not_in));
            }
            Ok(())
        }
        Rule::Bool(Some(c)) => match v {
            Value::Int(x) if (*x != 0) != *c => Err(format!("value must equal {c}")),
            _ => Ok(()),
        },
        Rule::Bool(None) => Ok(()),
        Rule::Enum { defined_only, defined, konst, r#in, not_in } => {
            let Value::Int(x) = v else { return Ok(()) };
            let x = *x as i32;
            if let Some(c) = konst
                && x != *c
            {
                return Err(format!("value must equal {c}"));
            }
            if *defined_only && !defined.contains(&x) {
                return Err("value must be one of the defined enum values".into());
            }
            if !r#in.is_empty() && !r#in.contains(&x) {
                return Err(format!("value must be in list {in:?}", in = r#in));
            }
            if not_in.contains(&x) {
                return Err(format!("value must not be in list {not_in:?}"));
            }
            Ok(())
        }
        Rule::Str(r) => {
            let Value::Bytes(b) = v else { return Ok(()) };
            if r.ignore_empty && b.is_empty() {
                return Ok(());
            }
            check_string(r, *s, b)
        }
        _ => Ok(()),
    }
}

fn check_string(r: &StrRule, s: Scalar, b: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(b);
    let chars = text.chars().count() as u64;
    let bytes = b.len() as u64;
    let is_str = s == Scalar::String;
    let (len_word, n) = if is_str { ("characters", chars) } else { ("bytes", bytes) };
    if let Some(l) = r.len
        && n != l
    {
        return Err(format!("value length must be {l} {len_word}"));
    }
    if let Some(m) = r.min_len
        && n < m
    {
        return Err(format!("value length must be at least {m} {len_word}"));
    }
    if let Some(m) = r.max_len
        && n > m
    {
        return Err(format!("value length must be at most {m} {len_word}"));
    }
    if let Some(m) = r.min_bytes
        && bytes < m
    {
        return Err(format!("value length must be at least {m} bytes"));
    }
    if let Some(m) = r.max_bytes
        && bytes > m
    {
        return Err(format!("value length must be at most {m} bytes"));
    }
    if let Some(c) = &r.konst
        && *text != **c
    {
        return Err(format!("value must equal {c}"));
    }
    if let Some(p) = &r.prefix
        && !text.starts_with(p.as_str())
    {
        return Err(format!("value does not have prefix {p:?}"));
    }
    if let Some(p) = &r.suffix
        && !text.ends_with(p.as_str())
    {
        return Err(format!("value does not have suffix {p:?}"));
    }
    if let Some(p) = &r.contains
        && !text.contains(p.as_str())
    {
        return Err(format!("value does not contain substring {p:?}"));
    }
    if let Some(p) = &r.not_contains
        && text.contains(p.as_str())
    {
        return Err(format!("value contains substring {p:?}"));
    }
    if !r.r#in.is_empty() && !r.r#in.iter().any(|x| *x == *text) {
        return Err(format!("value must be in list {:?}", r.r#in));
    }
    if r.not_in.iter().any(|x| *x == *text) {
        return Err(format!("value must not be in list {:?}", r.not_in));
    }
    if let Some(p) = &r.pattern
        && !p.is_match(&text)
    {
        return Err(format!("value does not match regex pattern {:?}", p.as_str()));
    }
    if let Some(w) = r.well_known {
        let ok = match w {
            WellKnown::HeaderName { strict: true } => {
                let t = text.strip_prefix(':').unwrap_or(&text);
                !t.is_empty() && t.bytes().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_|~`".contains(&c))
            }
            WellKnown::HeaderValue { strict: true } => {
                !b.iter().any(|&c| c < 0x09 || (0x0a..0x20).contains(&c) || c == 0x7f)
            }
            WellKnown::HeaderName { strict: false } | WellKnown::HeaderValue { strict: false } => {
                !b.iter().any(|&c| c == 0 || c == b'\n' || c == b'\r')
            }
            WellKnown::Hostname => is_hostname(&text),
            WellKnown::Ip => text.parse::<std::net::IpAddr>().is_ok(),
            WellKnown::Ipv4 => text.parse::<std::net::Ipv4Addr>().is_ok(),
            WellKnown::Ipv6 => text.parse::<std::net::Ipv6Addr>().is_ok(),
            WellKnown::Address => text.parse::<std::net::IpAddr>().is_ok() || is_hostname(&text),
            WellKnown::Uri => text.contains(':') && http::Uri::try_from(text.as_ref()).is_ok(),
        };
        if !ok {
            return Err(match w {
                WellKnown::HeaderName { .. } => "value does not match regex pattern for a valid HTTP header name",
                WellKnown::HeaderValue { .. } => "value does not match regex pattern for a valid HTTP header value",
                WellKnown::Hostname => "value must be a valid hostname",
                WellKnown::Ip => "value must be a valid IP address",
                WellKnown::Ipv4 => "value must be a valid IPv4 address",
                WellKnown::Ipv6 => "value must be a valid IPv6 address",
                WellKnown::Address => "value must be a valid hostname, or ip address",
                WellKnown::Uri => "value must be a valid URI",
            }
            .into());
        }
    }
    Ok(())
}

fn is_hostname(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

#[cfg(test)]
mod tests;
