//! Reading the `validate.rules` annotations of the descriptors into the rule table.

use prost_reflect::{DynamicMessage, Kind as PbKind, MessageDescriptor, Value as PbValue};

use super::*;

pub(super) fn get<'a>(m: &'a DynamicMessage, name: &str) -> Option<std::borrow::Cow<'a, PbValue>> {
    if m.has_field_by_name(name) { m.get_field_by_name(name) } else { None }
}

pub(super) fn num(v: &PbValue) -> Option<f64> {
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

pub(super) fn nums(v: Option<std::borrow::Cow<'_, PbValue>>) -> Vec<f64> {
    match v.as_deref() {
        Some(PbValue::List(l)) => l.iter().filter_map(num).collect(),
        _ => Vec::new(),
    }
}

pub(super) fn u(m: &DynamicMessage, name: &str) -> Option<u64> {
    get(m, name).and_then(|v| num(&v)).map(|f| f as u64)
}

pub(super) fn s(m: &DynamicMessage, name: &str) -> Option<String> {
    get(m, name).and_then(|v| v.as_str().map(str::to_string))
}

pub(super) fn strs(m: &DynamicMessage, name: &str) -> Vec<String> {
    match get(m, name).as_deref() {
        Some(PbValue::List(l)) => l.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    }
}

pub(super) fn b(m: &DynamicMessage, name: &str) -> bool {
    get(m, name).and_then(|v| v.as_bool()).unwrap_or(false)
}

pub(super) fn duration_nanos(v: &PbValue) -> Option<i128> {
    let m = v.as_message()?;
    let secs = get(m, "seconds").and_then(|v| v.as_i64()).unwrap_or(0);
    let nanos = get(m, "nanos").and_then(|v| v.as_i32()).unwrap_or(0);
    Some(i128::from(secs) * 1_000_000_000 + i128::from(nanos))
}

/// Compiles one `validate.FieldRules` (or the rules of items/keys/values) for a value of kind `k`.
pub(super) fn compile_rule(r: &DynamicMessage, k: &PbKind) -> Option<Rule> {
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

pub(super) fn compile_message(
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
