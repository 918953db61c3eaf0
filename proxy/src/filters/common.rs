//! What several filters share: the RBAC engine (used by the HTTP and the network RBAC filters)
//! and the per-request dynamic metadata filters write for later filters and access logs.

pub mod istio_stats;
pub mod rbac;

use std::collections::HashMap;

use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

/// Envoy's dynamic metadata of a request (or connection): one `Struct` per filter namespace
/// (`envoy.filters.http.rbac`, `envoy.common`, `istio_authn`, ...). Filters keep it in
/// `RequestCtx::state`; filters that match on metadata (RBAC) read it from there.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DynamicMetadata {
    pub filter_metadata: HashMap<String, Struct>,
}

impl DynamicMetadata {
    /// The metadata of one namespace.
    pub fn get(&self, namespace: &str) -> Option<&Struct> {
        self.filter_metadata.get(namespace)
    }

    /// Sets one field of a namespace, keeping its other fields (Envoy merges a filter's
    /// `setDynamicMetadata` into what is there).
    pub fn set(&mut self, namespace: &str, key: impl Into<String>, value: Value) {
        match self.filter_metadata.get_mut(namespace) {
            Some(s) => {
                s.fields.insert(key.into(), value);
            }
            None => {
                let mut s = Struct::default();
                s.fields.insert(key.into(), value);
                self.filter_metadata.insert(namespace.to_string(), s);
            }
        }
    }

    pub fn set_string(&mut self, namespace: &str, key: impl Into<String>, value: impl Into<String>) {
        self.set(namespace, key, Value { kind: Some(Kind::StringValue(value.into())) });
    }

    pub fn set_bool(&mut self, namespace: &str, key: impl Into<String>, value: bool) {
        self.set(namespace, key, Value { kind: Some(Kind::BoolValue(value)) });
    }
}

/// The dynamic metadata of a request, created on first use.
pub fn metadata_mut(state: &mut http::Extensions) -> &mut DynamicMetadata {
    state.get_or_insert_default::<DynamicMetadata>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_merges_fields_of_a_namespace() {
        let mut m = DynamicMetadata::default();
        m.set_string("ns", "a", "1");
        m.set_bool("ns", "b", true);
        let s = m.get("ns").unwrap();
        assert_eq!(s.fields.len(), 2);
        assert!(m.get("other").is_none());
    }
}
