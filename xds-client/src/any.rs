//! Typed `Any` unpacking, as Envoy does it for `typed_config`: the payload is either the named
//! message itself or a `udpa.type.v1.TypedStruct` / `xds.type.v3.TypedStruct` wrapping its JSON.

use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::protobuf::Struct;
use prost::Message;

use crate::json::{JsonOptions, message_from_json, struct_to_json};

pub const UDPA_TYPED_STRUCT: &str = "udpa.type.v1.TypedStruct";
pub const XDS_TYPED_STRUCT: &str = "xds.type.v3.TypedStruct";

/// `udpa.type.v1.TypedStruct` and `xds.type.v3.TypedStruct` share this wire shape.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypedStruct {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Struct>,
}

#[derive(Debug, thiserror::Error)]
pub enum AnyError {
    #[error("expected {expected}, got {got}")]
    WrongType { expected: String, got: String },
    #[error("invalid {type_name}: {reason}")]
    Decode { type_name: String, reason: String },
}

/// The message name an `Any` carries (`a.b.C` from `type.googleapis.com/a.b.C`).
pub fn type_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

/// The effective message name: for a TypedStruct, the name of the message it wraps.
pub fn effective_type_name(any: &Any) -> String {
    let name = type_name(&any.type_url);
    if (name == UDPA_TYPED_STRUCT || name == XDS_TYPED_STRUCT)
        && let Ok(ts) = TypedStruct::decode(any.value.as_slice())
    {
        return type_name(&ts.type_url).to_string();
    }
    name.to_string()
}

/// Decodes `any` as `T`, directly or through a TypedStruct.
pub fn unpack<T: Message + prost::Name + Default>(any: &Any) -> Result<T, AnyError> {
    let name = type_name(&any.type_url);
    let want = T::full_name();
    if name == want {
        return T::decode(any.value.as_slice())
            .map_err(|e| AnyError::Decode { type_name: want.clone(), reason: e.to_string() });
    }
    if name == UDPA_TYPED_STRUCT || name == XDS_TYPED_STRUCT {
        let ts = TypedStruct::decode(any.value.as_slice())
            .map_err(|e| AnyError::Decode { type_name: name.to_string(), reason: e.to_string() })?;
        let inner = type_name(&ts.type_url);
        if inner != want {
            return Err(AnyError::WrongType { expected: want, got: inner.to_string() });
        }
        let json = ts.value.as_ref().map(struct_to_json).unwrap_or(serde_json::Value::Object(Default::default()));
        let pool = crate::descriptors::pool();
        return message_from_json::<T>(&pool, json, JsonOptions::default())
            .map_err(|e| AnyError::Decode { type_name: want.clone(), reason: e.to_string() });
    }
    Err(AnyError::WrongType { expected: want, got: name.to_string() })
}

/// Packs a message into an `Any`.
pub fn pack<T: Message + prost::Name>(msg: &T) -> Any {
    Any { type_url: T::type_url(), value: msg.encode_to_vec() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    use envoy_types::pb::google::protobuf::{BoolValue, Value, value::Kind};
    use prost::Name;

    #[test]
    fn unpacks_direct_and_typed_struct() {
        let direct = pack(&Router { suppress_envoy_headers: true, ..Default::default() });
        assert!(unpack::<Router>(&direct).unwrap().suppress_envoy_headers);

        let mut fields = std::collections::HashMap::new();
        fields.insert("suppress_envoy_headers".to_string(), Value { kind: Some(Kind::BoolValue(true)) });
        let ts = TypedStruct { type_url: Router::type_url(), value: Some(Struct { fields }) };
        let any = Any { type_url: format!("type.googleapis.com/{UDPA_TYPED_STRUCT}"), value: ts.encode_to_vec() };
        assert_eq!(effective_type_name(&any), "envoy.extensions.filters.http.router.v3.Router");
        assert!(unpack::<Router>(&any).unwrap().suppress_envoy_headers);
        assert!(matches!(unpack::<BoolValue>(&any), Err(AnyError::WrongType { .. })));
    }
}
