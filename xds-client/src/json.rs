//! proto3 JSON (and YAML, through JSON) into prost messages, with Envoy's strictness.
//!
//! The mapping itself is done by `prost-reflect` against the descriptor pool. Before that, a walk
//! over the JSON value checks it against the message descriptors so every error names its path
//! (`static_resources.listeners[0].name: ...`), unknown fields are rejected (or dropped when
//! `allow_unknown_fields`, like Envoy's `--allow-unknown-static-fields`), and YAML scalars are
//! coerced the way Envoy's YAML loader does (`port: "80"` and `value: 80` both work).

use std::fmt::Write as _;

use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions,
};
use serde_json::Value;

/// What went wrong while turning JSON into a message; `path` is empty at the root.
#[derive(Debug, thiserror::Error)]
#[error("{}{reason}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct JsonError {
    pub path: String,
    pub reason: String,
}

impl JsonError {
    fn at(path: &str, reason: impl Into<String>) -> Self {
        JsonError { path: path.to_string(), reason: reason.into() }
    }
}

/// Options for [`message_from_json`].
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonOptions {
    /// Drop unknown fields instead of failing (Envoy's `--allow-unknown-static-fields`).
    pub allow_unknown_fields: bool,
    /// The value came from YAML: coerce scalars to the field's type where unambiguous.
    pub yaml_scalars: bool,
}

/// Parses YAML text into a JSON value, with YAML merge keys (`<<: *anchor`) applied.
pub fn yaml_to_json(text: &str) -> Result<Value, JsonError> {
    let mut y: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| JsonError::at("", format!("invalid YAML: {e}")))?;
    y.apply_merge().map_err(|e| JsonError::at("", format!("invalid YAML merge key: {e}")))?;
    serde_json::to_value(y).map_err(|e| JsonError::at("", format!("YAML is not JSON-compatible: {e}")))
}

/// Converts a proto3 JSON value into the message `T`, through the descriptor of `T`.
pub fn message_from_json<T: prost::Message + prost::Name + Default>(
    pool: &DescriptorPool,
    mut value: Value,
    opts: JsonOptions,
) -> Result<T, JsonError> {
    let full = T::full_name();
    let desc = pool
        .get_message_by_name(&full)
        .ok_or_else(|| JsonError::at("", format!("type {full} is not in the descriptor pool")))?;
    let mut path = String::new();
    check_message(pool, &mut value, &desc, &mut path, opts)?;
    let dynamic = DynamicMessage::deserialize_with_options(
        desc,
        value,
        &DeserializeOptions::new().deny_unknown_fields(!opts.allow_unknown_fields),
    )
    .map_err(|e| JsonError::at("", format!("invalid {full}: {e}")))?;
    dynamic.transcode_to::<T>().map_err(|e| JsonError::at("", format!("re-encoding {full}: {e}")))
}

/// Converts a proto3 JSON value into the wire encoding of the message named `full` (for a
/// TypedStruct's payload, whose type is known only by name).
pub fn bytes_from_json(pool: &DescriptorPool, full: &str, mut value: Value) -> Result<Vec<u8>, JsonError> {
    use prost::Message;
    let desc = pool
        .get_message_by_name(full)
        .ok_or_else(|| JsonError::at("", format!("type {full} is not in the descriptor pool")))?;
    let mut path = String::new();
    check_message(pool, &mut value, &desc, &mut path, JsonOptions::default())?;
    let dynamic = DynamicMessage::deserialize_with_options(desc, value, &DeserializeOptions::new())
        .map_err(|e| JsonError::at("", format!("invalid {full}: {e}")))?;
    Ok(dynamic.encode_to_vec())
}

/// Renders a message as Envoy's `/config_dump` does: proto3 JSON with the original
/// (snake_case) field names, `Any` expanded through the pool.
pub fn message_to_json<T: prost::Message + prost::Name>(pool: &DescriptorPool, msg: &T) -> Result<Value, JsonError> {
    let full = T::full_name();
    let desc = pool
        .get_message_by_name(&full)
        .ok_or_else(|| JsonError::at("", format!("type {full} is not in the descriptor pool")))?;
    dynamic_to_json(desc, &msg.encode_to_vec())
}

/// Renders encoded bytes of the message named by `desc` as proto3 JSON (snake_case names).
pub fn dynamic_to_json(desc: MessageDescriptor, bytes: &[u8]) -> Result<Value, JsonError> {
    let full = desc.full_name().to_string();
    let dynamic =
        DynamicMessage::decode(desc, bytes).map_err(|e| JsonError::at("", format!("decoding {full}: {e}")))?;
    let opts = SerializeOptions::new().use_proto_field_name(true).stringify_64_bit_integers(true);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &opts)
        .map_err(|e| JsonError::at("", format!("rendering {full}: {e}")))
}

/// Converts a protobuf `Struct` into the JSON object it stands for.
pub fn struct_to_json(s: &envoy_types::pb::google::protobuf::Struct) -> Value {
    Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), pb_value_to_json(v))).collect())
}

fn pb_value_to_json(v: &envoy_types::pb::google::protobuf::Value) -> Value {
    use envoy_types::pb::google::protobuf::value::Kind as K;
    match &v.kind {
        None | Some(K::NullValue(_)) => Value::Null,
        // Struct numbers are doubles; integral ones are written as integers so integer fields accept them.
        Some(K::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => Value::Number((*n as i64).into()),
        Some(K::NumberValue(n)) => serde_json::Number::from_f64(*n).map(Value::Number).unwrap_or(Value::Null),
        Some(K::StringValue(s)) => Value::String(s.clone()),
        Some(K::BoolValue(b)) => Value::Bool(*b),
        Some(K::StructValue(s)) => struct_to_json(s),
        Some(K::ListValue(l)) => Value::Array(l.values.iter().map(pb_value_to_json).collect()),
    }
}

// === the checking walk ===

fn check_message(
    pool: &DescriptorPool,
    value: &mut Value,
    desc: &MessageDescriptor,
    path: &mut String,
    opts: JsonOptions,
) -> Result<(), JsonError> {
    match desc.full_name() {
        "google.protobuf.Any" => return check_any(pool, value, path, opts),
        "google.protobuf.Duration" | "google.protobuf.Timestamp" | "google.protobuf.FieldMask" => {
            return expect_string(value, path, desc.full_name());
        }
        "google.protobuf.Struct" => {
            return match value {
                Value::Object(_) | Value::Null => Ok(()),
                _ => Err(JsonError::at(path, "expected an object for google.protobuf.Struct")),
            };
        }
        "google.protobuf.Value" => return Ok(()),
        "google.protobuf.ListValue" => {
            return match value {
                Value::Array(_) | Value::Null => Ok(()),
                _ => Err(JsonError::at(path, "expected an array for google.protobuf.ListValue")),
            };
        }
        name if is_wrapper(name) => {
            if let Some(inner) = desc.get_field_by_name("value") {
                return check_scalar(value, &inner.kind(), path, opts);
            }
        }
        _ => {}
    }
    let obj = match value {
        Value::Object(o) => o,
        Value::Null => return Ok(()),
        other => {
            return Err(JsonError::at(
                path,
                format!("expected an object for {}, found {}", desc.full_name(), kind_of(other)),
            ));
        }
    };
    let mut unknown = Vec::new();
    for (key, v) in obj.iter_mut() {
        let Some(field) = field_by_json_key(desc, key) else {
            unknown.push(key.clone());
            continue;
        };
        let len = path.len();
        push_field(path, key);
        check_field(pool, v, &field, path, opts)?;
        path.truncate(len);
    }
    if !unknown.is_empty() {
        if !opts.allow_unknown_fields {
            let len = path.len();
            push_field(path, &unknown[0]);
            let e = JsonError::at(path, format!("unknown field \"{}\" in {}", unknown[0], desc.full_name()));
            path.truncate(len);
            return Err(e);
        }
        for k in unknown {
            tracing::debug!("ignoring unknown field {path}.{k}");
            obj.remove(&k);
        }
    }
    Ok(())
}

fn check_field(
    pool: &DescriptorPool,
    value: &mut Value,
    field: &FieldDescriptor,
    path: &mut String,
    opts: JsonOptions,
) -> Result<(), JsonError> {
    if value.is_null() {
        return Ok(());
    }
    if field.is_map() {
        let Value::Object(map) = value else {
            return Err(JsonError::at(path, format!("expected an object (map), found {}", kind_of(value))));
        };
        let Kind::Message(entry) = field.kind() else {
            return Ok(());
        };
        let Some(vfield) = entry.map_entry_value_field().into() else {
            return Ok(());
        };
        for (k, v) in map.iter_mut() {
            let len = path.len();
            let _ = write!(path, "[{k:?}]");
            check_single(pool, v, &vfield.kind(), path, opts)?;
            path.truncate(len);
        }
        return Ok(());
    }
    if field.is_list() {
        let Value::Array(items) = value else {
            return Err(JsonError::at(path, format!("expected an array, found {}", kind_of(value))));
        };
        for (i, v) in items.iter_mut().enumerate() {
            let len = path.len();
            let _ = write!(path, "[{i}]");
            check_single(pool, v, &field.kind(), path, opts)?;
            path.truncate(len);
        }
        return Ok(());
    }
    check_single(pool, value, &field.kind(), path, opts)
}

fn check_single(
    pool: &DescriptorPool,
    value: &mut Value,
    kind: &Kind,
    path: &mut String,
    opts: JsonOptions,
) -> Result<(), JsonError> {
    match kind {
        Kind::Message(m) => check_message(pool, value, m, path, opts),
        other => check_scalar(value, other, path, opts),
    }
}

fn check_any(pool: &DescriptorPool, value: &mut Value, path: &mut String, opts: JsonOptions) -> Result<(), JsonError> {
    let obj = match value {
        Value::Object(o) => o,
        Value::Null => return Ok(()),
        other => {
            return Err(JsonError::at(path, format!("expected an object for Any, found {}", kind_of(other))));
        }
    };
    let Some(type_url) = obj.get("@type").and_then(Value::as_str).map(str::to_owned) else {
        if obj.is_empty() {
            return Ok(());
        }
        return Err(JsonError::at(path, "Any is missing its \"@type\""));
    };
    let name = type_url.rsplit('/').next().unwrap_or(&type_url);
    let Some(desc) = pool.get_message_by_name(name) else {
        return Err(JsonError::at(path, format!("unknown type URL \"{type_url}\"")));
    };
    let len = path.len();
    let _ = write!(path, ".<{name}>");
    let result = if is_special_wkt(name) {
        match obj.get_mut("value") {
            Some(v) => check_message(pool, v, &desc, path, opts),
            None => Ok(()),
        }
    } else {
        // Check the remaining keys as the fields of the named message.
        let mut rest = Value::Object(
            obj.iter().filter(|(k, _)| k.as_str() != "@type").map(|(k, v)| (k.clone(), v.clone())).collect(),
        );
        let r = check_message(pool, &mut rest, &desc, path, opts);
        if r.is_ok()
            && let Value::Object(mut m) = rest
        {
            m.insert("@type".into(), Value::String(type_url.clone()));
            *obj = m;
        }
        r
    };
    path.truncate(len);
    result
}

fn check_scalar(value: &mut Value, kind: &Kind, path: &str, opts: JsonOptions) -> Result<(), JsonError> {
    let ok = match (kind, &*value) {
        (_, Value::Null) => true,
        (Kind::String, Value::String(_)) => true,
        (Kind::String, Value::Number(_) | Value::Bool(_)) if opts.yaml_scalars => {
            *value = Value::String(match value {
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => String::new(),
            });
            true
        }
        (Kind::Bytes, Value::String(_)) => true,
        (Kind::Bool, Value::Bool(_)) => true,
        (Kind::Bool, Value::String(s)) if opts.yaml_scalars && (s == "true" || s == "false") => {
            *value = Value::Bool(s == "true");
            true
        }
        (
            Kind::Int32
            | Kind::Sint32
            | Kind::Sfixed32
            | Kind::Int64
            | Kind::Sint64
            | Kind::Sfixed64
            | Kind::Uint32
            | Kind::Fixed32
            | Kind::Uint64
            | Kind::Fixed64,
            Value::Number(_) | Value::String(_),
        ) => true,
        (Kind::Float | Kind::Double, Value::Number(_) | Value::String(_)) => true,
        (Kind::Enum(e), Value::String(s)) => {
            if e.get_value_by_name(s).is_none() {
                return Err(JsonError::at(path, format!("unknown value \"{s}\" for enum {}", e.full_name())));
            }
            true
        }
        (Kind::Enum(_), Value::Number(_)) => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(JsonError::at(path, format!("expected {}, found {}", kind_name(kind), kind_of(value))))
    }
}

fn expect_string(value: &Value, path: &str, what: &str) -> Result<(), JsonError> {
    match value {
        Value::String(_) | Value::Null => Ok(()),
        other => Err(JsonError::at(path, format!("expected a string for {what}, found {}", kind_of(other)))),
    }
}

fn field_by_json_key(desc: &MessageDescriptor, key: &str) -> Option<FieldDescriptor> {
    desc.get_field_by_name(key).or_else(|| desc.get_field_by_json_name(key))
}

fn push_field(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

fn is_wrapper(name: &str) -> bool {
    matches!(
        name,
        "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}

/// Well-known types whose JSON form is not an object of fields; inside an Any they sit under "value".
fn is_special_wkt(name: &str) -> bool {
    is_wrapper(name)
        || matches!(
            name,
            "google.protobuf.Duration"
                | "google.protobuf.Timestamp"
                | "google.protobuf.FieldMask"
                | "google.protobuf.Struct"
                | "google.protobuf.Value"
                | "google.protobuf.ListValue"
                | "google.protobuf.Any"
        )
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn kind_name(k: &Kind) -> String {
    match k {
        Kind::String => "a string".into(),
        Kind::Bytes => "a base64 string".into(),
        Kind::Bool => "a boolean".into(),
        Kind::Float | Kind::Double => "a number".into(),
        Kind::Enum(e) => format!("an enum {} name", e.full_name()),
        Kind::Message(m) => format!("an object for {}", m.full_name()),
        _ => "an integer".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;

    fn load(yaml: &str, opts: JsonOptions) -> Result<Bootstrap, JsonError> {
        let pool = crate::descriptors::pool();
        message_from_json(&pool, yaml_to_json(yaml)?, JsonOptions { yaml_scalars: true, ..opts })
    }

    #[test]
    fn unknown_field_names_its_path() {
        let e =
            load("static_resources:\n  listeners:\n  - name: a\n    bogus: 1\n", JsonOptions::default()).unwrap_err();
        assert_eq!(e.path, "static_resources.listeners[0].bogus");
        assert!(e.reason.contains("unknown field"), "{e}");
    }

    #[test]
    fn unknown_field_allowed_when_asked() {
        let b = load(
            "static_resources:\n  listeners:\n  - name: a\n    bogus: 1\n",
            JsonOptions { allow_unknown_fields: true, ..Default::default() },
        )
        .unwrap();
        assert_eq!(b.static_resources.unwrap().listeners[0].name, "a");
    }

    #[test]
    fn any_duration_enum_and_wrappers() {
        let b = load(
            r#"
static_resources:
  clusters:
  - name: c
    connect_timeout: 0.25s
    type: STRICT_DNS
    lb_policy: LEAST_REQUEST
    per_connection_buffer_limit_bytes: 1024
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
"#,
            JsonOptions::default(),
        )
        .unwrap();
        let c = &b.static_resources.unwrap().clusters[0];
        assert_eq!(c.connect_timeout.unwrap().nanos, 250_000_000);
        assert_eq!(c.per_connection_buffer_limit_bytes.unwrap().value, 1024);
        assert!(
            c.typed_extension_protocol_options.contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
        );
    }

    #[test]
    fn message_where_string_given_is_an_error() {
        let e = load(
            r#"
static_resources:
  listeners:
  - name: l
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          scheme_header_transformation: OVERWRITE_SCHEME
"#,
            JsonOptions::default(),
        )
        .unwrap_err();
        assert!(e.path.ends_with("scheme_header_transformation"), "{e}");
    }

    #[test]
    fn unknown_type_url_is_an_error() {
        let e = load(
            "static_resources:\n  listeners:\n  - name: a\n    filter_chains:\n    - filters:\n      - name: x\n        typed_config:\n          \"@type\": type.googleapis.com/no.such.Type\n",
            JsonOptions::default(),
        )
        .unwrap_err();
        assert!(e.reason.contains("no.such.Type"), "{e}");
    }
}
