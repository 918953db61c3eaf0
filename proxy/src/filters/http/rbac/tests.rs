//! Behaviour of the HTTP RBAC filter on fake requests: enforcement, shadow rules, stats,
//! dynamic metadata and per-route overrides.

use super::*;
use crate::filters::http::{ConnInfo, RouteRef};
use crate::router::RouteTable;
use crate::router::route::MatchInput;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::value::Kind;
use serde_json::json;

fn pool_json<T: prost::Message + prost::Name + Default>(v: serde_json::Value) -> T {
    xds_client::json::message_from_json(&xds_client::descriptors::pool(), v, xds_client::json::JsonOptions::default())
        .unwrap()
}

fn build_ctx() -> BuildCtx {
    BuildCtx {
        stats: Arc::new(Store::default()),
        http_stat_prefix: Some("ing".into()),
        extensions: crate::filters::EXTENSIONS,
        ..Default::default()
    }
}

fn filter(v: serde_json::Value) -> (RbacFilter, Arc<Store>) {
    let cx = build_ctx();
    let p: RbacProto = pool_json(v);
    (RbacFilter::from_proto(NAME, &p, &cx).unwrap(), cx.stats)
}

struct Outcome {
    status: Option<StatusCode>,
    body: Option<bytes::Bytes>,
    details: Option<&'static str>,
    metadata: Option<DynamicMetadata>,
}

fn run(f: &RbacFilter, method: &str, uri: &str, route: Option<RouteRef<'_>>) -> Outcome {
    let conn = ConnInfo::default();
    let mut cx = RequestCtx {
        remote: "10.0.0.1:1234".parse().unwrap(),
        direct_remote: "10.0.0.1:1234".parse().unwrap(),
        local: "10.0.0.2:8080".parse().unwrap(),
        conn: &conn,
        route,
        stat_prefix: "ing",
        state: http::Extensions::new(),
    };
    let (mut parts, ()) = http::Request::builder().method(method).uri(uri).body(()).unwrap().into_parts();
    let action = f.on_request(&mut cx, &mut parts);
    let metadata = cx.state.get::<DynamicMetadata>().cloned();
    match action {
        FilterAction::Respond(r) => {
            Outcome { status: Some(r.status), body: Some(r.body.clone()), details: Some(r.details), metadata }
        }
        _ => Outcome { status: None, body: None, details: None, metadata },
    }
}

fn md_str<'a>(m: &'a DynamicMetadata, ns: &str, key: &str) -> Option<&'a str> {
    match m.get(ns)?.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s),
        _ => None,
    }
}

fn config() -> serde_json::Value {
    json!({
        "rules_stat_prefix": "rsp_",
        "shadow_rules_stat_prefix": "ssp_",
        "track_per_rule_stats": true,
        "rules": {"policies": {"public": {
            "permissions": [{"and_rules": {"rules": [
                {"header": {"name": ":method", "exact_match": "GET"}},
                {"url_path": {"path": {"prefix": "/public"}}}]}}],
            "principals": [{"any": true}]}}},
        "shadow_rules": {"action": "DENY", "policies": {"no-secrets": {
            "permissions": [{"url_path": {"path": {"prefix": "/public/secret"}}}],
            "principals": [{"any": true}]}}}
    })
}

#[test]
fn denies_with_envoys_local_reply_and_counts() {
    let (f, store) = filter(config());
    let o = run(&f, "GET", "http://h/public/a?x=1", None);
    assert!(o.status.is_none());
    let md = o.metadata.unwrap();
    assert_eq!(md_str(&md, METADATA_NAMESPACE, "rsp_enforced_effective_policy_id"), Some("public"));
    assert_eq!(md_str(&md, METADATA_NAMESPACE, "rsp_enforced_engine_result"), Some("allowed"));
    assert_eq!(md_str(&md, METADATA_NAMESPACE, "ssp_shadow_engine_result"), Some("allowed"));
    assert_eq!(md_str(&md, METADATA_NAMESPACE, "ssp_shadow_effective_policy_id"), None);

    let o = run(&f, "POST", "http://h/public/a", None);
    assert_eq!(o.status, Some(StatusCode::FORBIDDEN));
    assert_eq!(o.body.as_deref(), Some(&b"RBAC: access denied"[..]));
    assert_eq!(o.details, Some("rbac_access_denied_matched_policy[none]"));

    // Shadow rules are never enforced.
    let o = run(&f, "GET", "http://h/public/secret", None);
    assert!(o.status.is_none());
    let md = o.metadata.unwrap();
    assert_eq!(md_str(&md, METADATA_NAMESPACE, "ssp_shadow_engine_result"), Some("denied"));
    assert_eq!(md_str(&md, METADATA_NAMESPACE, "ssp_shadow_effective_policy_id"), Some("no-secrets"));

    let v = |n: &str| store.value_of(n);
    assert_eq!(v("http.ing.rbac.rsp_.allowed"), Some(2));
    assert_eq!(v("http.ing.rbac.rsp_.denied"), Some(1));
    assert_eq!(v("http.ing.rbac.rsp_.policy.public.allowed"), Some(2));
    assert_eq!(v("http.ing.rbac.ssp_.shadow_allowed"), Some(2));
    assert_eq!(v("http.ing.rbac.ssp_.shadow_denied"), Some(1));
    assert_eq!(v("http.ing.rbac.ssp_.policy.no-secrets.shadow_denied"), Some(1));
    assert_eq!(v("http.ing.rbac.allowed"), None, "the rules prefix replaces the plain names");
}

#[test]
fn log_action_sets_the_access_log_hint() {
    let (f, store) = filter(json!({"rules": {"action": "LOG", "policies": {"lp": {
        "permissions": [{"url_path": {"path": {"prefix": "/log"}}}], "principals": [{"any": true}]}}}}));
    let md = run(&f, "GET", "/log/x", None).metadata.unwrap();
    let hint = md.get("envoy.common").and_then(|s| s.fields.get("access_log_hint")).and_then(|v| v.kind.clone());
    assert_eq!(hint, Some(Kind::BoolValue(true)));
    assert_eq!(md_str(&md, METADATA_NAMESPACE, "enforced_effective_policy_id"), Some("lp"));
    let md = run(&f, "GET", "/other", None).metadata.unwrap();
    let hint = md.get("envoy.common").and_then(|s| s.fields.get("access_log_hint")).and_then(|v| v.kind.clone());
    assert_eq!(hint, Some(Kind::BoolValue(false)));
    assert_eq!(store.value_of("http.ing.rbac.allowed"), Some(2));
}

#[test]
fn no_rules_means_no_enforcement_and_empty_rules_deny_all() {
    let (f, store) = filter(json!({}));
    assert!(run(&f, "GET", "/", None).status.is_none());
    // The counters exist from the start, as in Envoy, and nothing was counted.
    assert_eq!(store.value_of("http.ing.rbac.allowed"), Some(0));
    let (f, _) = filter(json!({"rules": {}}));
    assert_eq!(run(&f, "GET", "/", None).status, Some(StatusCode::FORBIDDEN));
}

fn table() -> RouteTable {
    let rc: RouteConfiguration = pool_json(json!({
        "virtual_hosts": [{
            "name": "v", "domains": ["*"],
            "routes": [
                {"match": {"prefix": "/open"}, "direct_response": {"status": 200},
                 "typed_per_filter_config": {"envoy.filters.http.rbac": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"}}},
                {"match": {"prefix": "/override"}, "direct_response": {"status": 200},
                 "typed_per_filter_config": {"envoy.filters.http.rbac": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
                    "rbac": {"rules": {"action": "DENY", "policies": {"no-delete": {
                        "permissions": [{"header": {"name": ":method", "exact_match": "DELETE"}}],
                        "principals": [{"any": true}]}}}}}}},
                {"match": {"prefix": "/off"}, "direct_response": {"status": 200},
                 "typed_per_filter_config": {"envoy.filters.http.rbac": {
                    "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": true}}},
                {"match": {"prefix": "/"}, "direct_response": {"status": 200}}
            ]
        }]
    }));
    RouteTable::from_proto(&rc, &build_ctx(), true).unwrap()
}

fn routed<'a>(t: &'a RouteTable, path: &'a str, h: &'a http::HeaderMap) -> RouteRef<'a> {
    let vhost = t.virtual_host("h").unwrap();
    let input = MatchInput {
        headers: RequestHeaders { method: "GET", path, authority: "h", scheme: "http", headers: h },
        path,
        query: None,
        random: 0,
        is_connect: false,
    };
    let (route, _) = vhost.route(&input).unwrap();
    RouteRef { table: t, vhost, route }
}

#[test]
fn per_route_disable_and_override() {
    let (f, _) = filter(config());
    let t = table();
    let h = http::HeaderMap::new();
    // Global rules deny POST /open..., but RBACPerRoute without rbac turns the filter off.
    assert!(run(&f, "POST", "/open/x", Some(routed(&t, "/open/x", &h))).status.is_none());
    assert!(run(&f, "POST", "/off/x", Some(routed(&t, "/off/x", &h))).status.is_none());
    // The override replaces the global rules (and the shadow rules) on its route.
    assert!(run(&f, "POST", "/override", Some(routed(&t, "/override", &h))).status.is_none());
    let o = run(&f, "DELETE", "/override", Some(routed(&t, "/override", &h)));
    assert_eq!(o.status, Some(StatusCode::FORBIDDEN));
    assert_eq!(o.details, Some("rbac_access_denied_matched_policy[no-delete]"));
    // Elsewhere the filter's own rules apply.
    assert_eq!(run(&f, "POST", "/x", Some(routed(&t, "/x", &h))).status, Some(StatusCode::FORBIDDEN));
}

#[test]
fn config_errors_name_the_field() {
    let cx = build_ctx();
    let p: RbacProto =
        pool_json(json!({"shadow_rules": {"policies": {"p": {"permissions": [{"any": true}], "principals": []}}}}));
    let e = RbacFilter::from_proto(NAME, &p, &cx).err().unwrap();
    assert_eq!(e.field, "shadow_rules.policies[p].principals");
    // The matcher wins over rules (Envoy ignores rules then), so a broken rules block is unused
    // but a broken matcher is an error.
    let p: RbacProto = pool_json(json!({"matcher": {"on_no_match": {"action": {"name": "a", "typed_config": {
        "@type": "type.googleapis.com/envoy.config.rbac.v3.Action", "name": ""}}}}}));
    let e = RbacFilter::from_proto(NAME, &p, &cx).err().unwrap();
    assert_eq!(e.field, "matcher.on_no_match.action.typed_config.name");
}
