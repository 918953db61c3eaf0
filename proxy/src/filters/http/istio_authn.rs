//! Istio's `istio_authn` HTTP filter (Istio <= 1.20,
//! `istio.envoy.config.filter.http.authn.v2alpha1.FilterConfig`).
//!
//! Peer mTLS is enforced by the listener's filter chains istiod generates (STRICT has no
//! plaintext chain), so `peers` add nothing here. `origins` (what istiod 1.10-1.20 emits for a
//! RequestAuthentication, after `envoy.filters.http.jwt_authn` with `payload_in_metadata` set to
//! the issuer) turn the verified payload into the `istio_authn` dynamic metadata RBAC matches:
//! `request.auth.principal` (`iss/sub`), `request.auth.audiences` (the first), `request.auth.presenter`
//! (`azp`), `request.auth.claims` (string claims split on spaces into lists, string lists kept,
//! objects nested, other values dropped) and `request.auth.raw_claims` (the payload as JSON).
//! The first origin whose issuer has a payload wins; with none, the request fails with 401
//! `Origin authentication failed.` unless `origin_is_optional` (always set by istiod). The route is
//! selected again afterwards unless `disable_clear_route_cache`. JWT peer methods, trigger rules,
//! exchanged-token headers and `principal_binding: USE_PEER` with origins are refused.

use std::sync::Arc;

use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
use http::request::Parts;

use super::{FilterAction, HttpFilter, RequestCtx};
use crate::config::ConfigError;
use crate::filters::common::DynamicMetadata;
use crate::http::local_reply::LocalReply;

pub const TYPE: &str = "istio.envoy.config.filter.http.authn.v2alpha1.FilterConfig";
/// The dynamic metadata namespace the filter writes (and Istio's RBAC reads).
pub const METADATA_NAMESPACE: &str = "istio_authn";
const JWT_NAMESPACE: &str = super::jwt_authn::METADATA_NAMESPACE;

/// The fields of the config remora reads (Istio's field numbers).
#[derive(Clone, PartialEq, prost::Message)]
struct FilterConfig {
    #[prost(message, optional, tag = "1")]
    policy: Option<Policy>,
    #[prost(bool, tag = "5")]
    disable_clear_route_cache: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Policy {
    #[prost(message, repeated, tag = "2")]
    peers: Vec<PeerMethod>,
    #[prost(message, repeated, tag = "4")]
    origins: Vec<OriginMethod>,
    #[prost(bool, tag = "5")]
    origin_is_optional: bool,
    /// 0 = USE_PEER, 1 = USE_ORIGIN.
    #[prost(int32, tag = "6")]
    principal_binding: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PeerMethod {
    #[prost(bytes = "vec", optional, tag = "1")]
    mtls: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    jwt: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct OriginMethod {
    #[prost(message, optional, tag = "1")]
    jwt: Option<Jwt>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Jwt {
    #[prost(string, tag = "1")]
    issuer: String,
    #[prost(string, repeated, tag = "6")]
    jwt_headers: Vec<String>,
    #[prost(bytes = "vec", repeated, tag = "9")]
    trigger_rules: Vec<Vec<u8>>,
}

impl prost::Name for FilterConfig {
    const NAME: &'static str = "FilterConfig";
    const PACKAGE: &'static str = "istio.envoy.config.filter.http.authn.v2alpha1";
}

/// A configured filter with origins (without origins the filter does nothing and is not built).
pub struct IstioAuthn {
    name: String,
    issuers: Vec<String>,
    origin_is_optional: bool,
    clear_route_cache: bool,
}

/// Builds the filter: `None` when the config asks only for peer mTLS (nothing to do).
pub fn from_any(
    name: &str,
    any: &envoy_types::pb::google::protobuf::Any,
    field: &str,
) -> Result<Option<Arc<IstioAuthn>>, ConfigError> {
    let f = |n: &str| if field.is_empty() { n.to_string() } else { format!("{field}.{n}") };
    let c: FilterConfig =
        xds_client::any::unpack(any).map_err(|e| ConfigError::new(f("typed_config"), e.to_string()))?;
    let Some(p) = c.policy else { return Ok(None) };
    if p.peers.iter().any(|m| m.jwt.is_some()) {
        return Err(ConfigError::new(
            f("typed_config.policy.peers"),
            "istio_authn: JWT peer authentication is not supported",
        ));
    }
    if p.origins.is_empty() {
        return Ok(None);
    }
    if p.principal_binding != 1 {
        return Err(ConfigError::new(
            f("typed_config.policy.principal_binding"),
            "istio_authn: origins are supported with principal_binding USE_ORIGIN only",
        ));
    }
    let mut issuers = Vec::new();
    for (i, o) in p.origins.iter().enumerate() {
        let of = f(&format!("typed_config.policy.origins[{i}].jwt"));
        let Some(j) = &o.jwt else { return Err(ConfigError::new(of, "istio_authn: an origin needs a jwt")) };
        if !j.trigger_rules.is_empty() {
            return Err(ConfigError::new(
                format!("{of}.trigger_rules"),
                "istio_authn: trigger_rules are not supported",
            ));
        }
        if !j.jwt_headers.is_empty() {
            return Err(ConfigError::new(
                format!("{of}.jwt_headers"),
                "istio_authn: exchanged-token headers are not supported",
            ));
        }
        issuers.push(j.issuer.clone());
    }
    Ok(Some(Arc::new(IstioAuthn {
        name: name.to_string(),
        issuers,
        origin_is_optional: p.origin_is_optional,
        clear_route_cache: !c.disable_clear_route_cache,
    })))
}

fn s(v: impl Into<String>) -> Value {
    Value { kind: Some(Kind::StringValue(v.into())) }
}

fn list(values: Vec<Value>) -> Value {
    Value { kind: Some(Kind::ListValue(ListValue { values })) }
}

/// Istio's claim processing: strings become lists of their space-separated words, lists of
/// strings stay lists, objects are processed recursively, everything else is dropped.
fn claims(payload: &Struct) -> Struct {
    let mut out = Struct::default();
    for (k, v) in &payload.fields {
        match &v.kind {
            Some(Kind::StringValue(text)) => {
                let words: Vec<Value> = text.split(' ').filter(|w| !w.is_empty()).map(s).collect();
                if !words.is_empty() {
                    out.fields.insert(k.clone(), list(words));
                }
            }
            Some(Kind::ListValue(l)) => {
                let strs: Option<Vec<Value>> = l
                    .values
                    .iter()
                    .map(|v| match &v.kind {
                        Some(Kind::StringValue(x)) => Some(s(x.clone())),
                        _ => None,
                    })
                    .collect();
                if let Some(strs) = strs
                    && !strs.is_empty()
                {
                    out.fields.insert(k.clone(), list(strs));
                }
            }
            Some(Kind::StructValue(n)) => {
                out.fields.insert(k.clone(), Value { kind: Some(Kind::StructValue(claims(n))) });
            }
            _ => {}
        }
    }
    out
}

fn first(claims: &Struct, key: &str) -> Option<String> {
    match claims.fields.get(key)?.kind.as_ref()? {
        Kind::ListValue(l) => match l.values.first()?.kind.as_ref()? {
            Kind::StringValue(v) => Some(v.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn to_json(v: &Value) -> serde_json::Value {
    match &v.kind {
        Some(Kind::StringValue(x)) => serde_json::Value::String(x.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => serde_json::Value::from(*n as i64),
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, serde_json::Value::Number)
        }
        Some(Kind::StructValue(st)) => {
            serde_json::Value::Object(st.fields.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
        Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.iter().map(to_json).collect()),
        Some(Kind::NullValue(_)) | None => serde_json::Value::Null,
    }
}

/// The `istio_authn` metadata for a verified payload.
fn origin_metadata(payload: &Struct, md: &mut DynamicMetadata) {
    let c = claims(payload);
    if let (Some(iss), Some(sub)) = (first(&c, "iss"), first(&c, "sub")) {
        md.set(METADATA_NAMESPACE, "request.auth.principal", s(format!("{iss}/{sub}")));
    }
    if let Some(aud) = first(&c, "aud") {
        md.set(METADATA_NAMESPACE, "request.auth.audiences", s(aud));
    }
    if let Some(azp) = first(&c, "azp") {
        md.set(METADATA_NAMESPACE, "request.auth.presenter", s(azp));
    }
    let raw = to_json(&Value { kind: Some(Kind::StructValue(payload.clone())) }).to_string();
    if !c.fields.is_empty() {
        md.set(METADATA_NAMESPACE, "request.auth.claims", Value { kind: Some(Kind::StructValue(c)) });
    }
    md.set(METADATA_NAMESPACE, "request.auth.raw_claims", s(raw));
}

fn is_cors_preflight(req: &Parts) -> bool {
    let non_empty = |h: &str| req.headers.get(h).is_some_and(|v| !v.is_empty());
    req.method == http::Method::OPTIONS && non_empty("origin") && non_empty("access-control-request-method")
}

impl HttpFilter for IstioAuthn {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(&self, cx: &mut RequestCtx<'_>, req: &mut Parts) -> FilterAction {
        if cx.disabled(&self.name) {
            return FilterAction::Continue;
        }
        let payload = if is_cors_preflight(req) {
            None
        } else {
            let jwt = cx.state.get::<DynamicMetadata>().and_then(|m| m.get(JWT_NAMESPACE));
            let found = jwt.and_then(|ns| {
                self.issuers.iter().find_map(|iss| match ns.fields.get(iss)?.kind.as_ref()? {
                    Kind::StructValue(p) if !p.fields.is_empty() => Some(p.clone()),
                    _ => None,
                })
            });
            if found.is_none() && !self.origin_is_optional {
                let mut reply = LocalReply::new(
                    http::StatusCode::UNAUTHORIZED,
                    "Origin authentication failed.",
                    "",
                    "istio_authn_access_denied",
                );
                super::grpc_local_reply(&req.headers, &mut reply, None);
                return FilterAction::Respond(reply);
            }
            found
        };
        if let Some(p) = payload {
            origin_metadata(&p, crate::filters::common::metadata_mut(&mut cx.state));
        }
        if self.clear_route_cache {
            cx.state.insert(super::ClearRouteCache);
        }
        FilterAction::Continue
    }
}

/// The config istiod 1.10-1.20 emits for RequestAuthentication issuers (for tests of the chain).
#[cfg(test)]
pub(crate) fn istiod_config(issuers: &[&str]) -> envoy_types::pb::google::protobuf::Any {
    use prost::Message;
    let origins = issuers
        .iter()
        .map(|i| OriginMethod { jwt: Some(Jwt { issuer: i.to_string(), jwt_headers: vec![], trigger_rules: vec![] }) })
        .collect();
    let c = FilterConfig {
        policy: Some(Policy { origins, origin_is_optional: true, principal_binding: 1, ..Default::default() }),
        disable_clear_route_cache: true,
    };
    envoy_types::pb::google::protobuf::Any { type_url: format!("type.googleapis.com/{TYPE}"), value: c.encode_to_vec() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::http::ConnInfo;
    use prost::Message;

    fn any(c: FilterConfig) -> envoy_types::pb::google::protobuf::Any {
        envoy_types::pb::google::protobuf::Any {
            type_url: format!("type.googleapis.com/{TYPE}"),
            value: c.encode_to_vec(),
        }
    }

    fn cfg(p: Policy) -> FilterConfig {
        FilterConfig { policy: Some(p), disable_clear_route_cache: true }
    }

    fn origin(iss: &str) -> OriginMethod {
        OriginMethod { jwt: Some(Jwt { issuer: iss.into(), jwt_headers: vec![], trigger_rules: vec![] }) }
    }

    #[test]
    fn config_mtls_only_is_a_noop_jwt_peers_are_refused() {
        let mtls = PeerMethod { mtls: Some(vec![0x10, 0x01]), jwt: None };
        let p = Policy { peers: vec![mtls], ..Default::default() };
        assert!(from_any("f", &any(cfg(p)), "f").unwrap().is_none());
        let jwt = PeerMethod { mtls: None, jwt: Some(vec![]) };
        assert!(from_any("f", &any(cfg(Policy { peers: vec![jwt], ..Default::default() })), "f").is_err());
        let mut o = origin("https://a");
        if let Some(j) = o.jwt.as_mut() {
            j.trigger_rules.push(vec![]);
        }
        let p = Policy { origins: vec![o], principal_binding: 1, ..Default::default() };
        let e = from_any("f", &any(cfg(p)), "f").err().unwrap();
        assert!(e.to_string().contains("trigger_rules"), "{e}");
        let p = Policy { origins: vec![origin("https://a")], principal_binding: 0, ..Default::default() };
        assert!(from_any("f", &any(cfg(p)), "f").is_err(), "USE_PEER with origins");
    }

    fn run(f: &IstioAuthn, jwt_md: Option<(&str, serde_json::Value)>) -> (Option<u16>, Option<DynamicMetadata>) {
        let conn = ConnInfo::default();
        let mut cx = RequestCtx {
            remote: "10.0.0.1:1".parse().unwrap(),
            direct_remote: "10.0.0.1:1".parse().unwrap(),
            local: "10.0.0.2:80".parse().unwrap(),
            conn: &conn,
            route: None,
            stat_prefix: "s",
            state: http::Extensions::new(),
        };
        if let Some((iss, payload)) = jwt_md {
            let serde_json::Value::Object(m) = payload else { panic!() };
            let st = super::super::jwt_authn::payload_struct(&m);
            crate::filters::common::metadata_mut(&mut cx.state).set(
                JWT_NAMESPACE,
                iss,
                Value { kind: Some(Kind::StructValue(st)) },
            );
        }
        let (mut parts, ()) = http::Request::builder().uri("/").body(()).unwrap().into_parts();
        let status = match f.on_request(&mut cx, &mut parts) {
            FilterAction::Respond(r) => Some(r.status.as_u16()),
            _ => None,
        };
        (status, cx.state.get::<DynamicMetadata>().cloned())
    }

    fn md_str(md: &DynamicMetadata, key: &str) -> Option<String> {
        match md.get(METADATA_NAMESPACE)?.fields.get(key)?.kind.as_ref()? {
            Kind::StringValue(v) => Some(v.clone()),
            _ => None,
        }
    }

    #[test]
    fn origins_set_istio_metadata_from_the_jwt_payload() {
        let p = Policy {
            origins: vec![origin("https://a"), origin("https://b")],
            origin_is_optional: true,
            principal_binding: 1,
            ..Default::default()
        };
        let f = from_any("istio_authn", &any(cfg(p)), "").unwrap().unwrap();
        let payload = serde_json::json!({"iss": "https://b", "sub": "alice", "aud": ["x", "y"], "azp": "cli",
            "scope": "read  write", "n": 5, "org": {"team": "blue"}});
        let (status, md) = run(&f, Some(("https://b", payload)));
        assert_eq!(status, None);
        let md = md.unwrap();
        assert_eq!(md_str(&md, "request.auth.principal").as_deref(), Some("https://b/alice"));
        assert_eq!(md_str(&md, "request.auth.audiences").as_deref(), Some("x"));
        assert_eq!(md_str(&md, "request.auth.presenter").as_deref(), Some("cli"));
        let Some(Kind::StructValue(c)) = &md.get(METADATA_NAMESPACE).unwrap().fields["request.auth.claims"].kind else {
            panic!("claims")
        };
        let Some(Kind::ListValue(scope)) = &c.fields["scope"].kind else { panic!("scope") };
        assert_eq!(scope.values.len(), 2);
        assert!(!c.fields.contains_key("n"), "numbers are dropped");
        assert!(matches!(c.fields["org"].kind, Some(Kind::StructValue(_))));
        let raw: serde_json::Value = serde_json::from_str(&md_str(&md, "request.auth.raw_claims").unwrap()).unwrap();
        assert_eq!(raw["n"], 5);
        // No payload: optional origins pass without metadata; required ones answer 401.
        assert_eq!(run(&f, None), (None, None));
        let p = Policy { origins: vec![origin("https://a")], principal_binding: 1, ..Default::default() };
        let f = from_any("istio_authn", &any(cfg(p)), "").unwrap().unwrap();
        assert_eq!(run(&f, None).0, Some(401));
    }
}
