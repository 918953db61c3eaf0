//! Engine tests: every permission and principal form, the actions, the matcher form, the
//! rejections, and the stat names.

use super::*;
use crate::matcher::RequestHeaders;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind as VK};
use serde_json::json;

fn rules(v: serde_json::Value) -> Result<Engine, ConfigError> {
    let p: RbacProto = xds_client::json::message_from_json(
        &xds_client::descriptors::pool(),
        v,
        xds_client::json::JsonOptions::default(),
    )
    .map_err(|e| ConfigError::new("json", e.to_string()))?;
    Engine::from_rules(&p, "rules")
}

fn matcher(v: serde_json::Value, cx: Context) -> Result<Engine, ConfigError> {
    let p: MatcherProto = xds_client::json::message_from_json(
        &xds_client::descriptors::pool(),
        v,
        xds_client::json::JsonOptions::default(),
    )
    .map_err(|e| ConfigError::new("json", e.to_string()))?;
    Engine::from_matcher(&p, cx, "matcher")
}

/// An ALLOW engine with one policy made of one permission and one principal.
fn allow(permission: serde_json::Value, principal: serde_json::Value) -> Engine {
    rules(json!({"policies": {"p": {"permissions": [permission], "principals": [principal]}}})).unwrap()
}

fn permission(p: serde_json::Value) -> Engine {
    allow(p, json!({"any": true}))
}

fn principal(p: serde_json::Value) -> Engine {
    allow(json!({"any": true}), p)
}

/// A request as the engine sees it.
struct Req {
    method: &'static str,
    path: &'static str,
    authority: &'static str,
    headers: http::HeaderMap,
    local: SocketAddr,
    direct_remote: SocketAddr,
    remote: SocketAddr,
    conn: ConnInfo,
    metadata: Option<DynamicMetadata>,
    http: bool,
}

impl Default for Req {
    fn default() -> Self {
        Req {
            method: "GET",
            path: "/",
            authority: "example.com",
            headers: http::HeaderMap::new(),
            local: "10.0.0.2:8080".parse().unwrap(),
            direct_remote: "10.0.0.1:40000".parse().unwrap(),
            remote: "10.0.0.1:40000".parse().unwrap(),
            conn: ConnInfo::default(),
            metadata: None,
            http: true,
        }
    }
}

impl Req {
    fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers.append(k, http::HeaderValue::from_static(v));
        self
    }

    fn eval(&self, e: &Engine) -> Decision {
        let h = RequestHeaders {
            method: self.method,
            path: self.path,
            authority: self.authority,
            scheme: "http",
            headers: &self.headers,
        };
        e.evaluate(&Input {
            local: self.local,
            direct_remote: self.direct_remote,
            remote: self.remote,
            conn: &self.conn,
            headers: self.http.then_some(&h),
            metadata: self.metadata.as_ref(),
        })
    }

    fn allowed(&self, e: &Engine) -> bool {
        self.eval(e).allowed
    }
}

fn mtls(uri: &[&str], dns: &[&str], subject: &str) -> ConnInfo {
    ConnInfo {
        tls_version: Some("TLSv1.3"),
        peer_uri_sans: uri.iter().map(|s| s.to_string()).collect(),
        peer_dns_sans: dns.iter().map(|s| s.to_string()).collect(),
        peer_subject: Some(subject.to_string()),
        peer_cert_sha256: Some("00".into()),
        local_uri_sans: vec!["spiffe://cluster.local/ns/default/sa/httpbin".into()],
        ..Default::default()
    }
}

// === permissions ===

#[test]
fn any_and_or_not() {
    let r = Req::default();
    assert!(r.allowed(&permission(json!({"any": true}))));
    let get = json!({"header": {"name": ":method", "exact_match": "GET"}});
    let post = json!({"header": {"name": ":method", "exact_match": "POST"}});
    assert!(r.allowed(&permission(json!({"or_rules": {"rules": [post.clone(), get.clone()]}}))));
    assert!(!r.allowed(&permission(json!({"and_rules": {"rules": [post.clone(), get.clone()]}}))));
    assert!(r.allowed(&permission(json!({"not_rule": post}))));
    assert!(!r.allowed(&permission(json!({"not_rule": get}))));
}

#[test]
fn header_permissions() {
    let r = Req::default().header("x-env", "prod").header("x-multi", "a").header("x-multi", "b");
    assert!(r.allowed(&permission(json!({"header": {"name": "X-Env", "exact_match": "prod"}}))));
    assert!(r.allowed(&permission(
        json!({"header": {"name": "x-env", "string_match": {"prefix": "PR", "ignore_case": true}}})
    )));
    assert!(r.allowed(&permission(json!({"header": {"name": "x-multi", "exact_match": "a,b"}}))));
    assert!(r.allowed(&permission(json!({"header": {"name": "x-absent", "present_match": false}}))));
    assert!(!r.allowed(&permission(json!({"header": {"name": "x-absent", "exact_match": "x", "invert_match": true}}))));
    assert!(r.allowed(&permission(json!({"header": {"name": "x-env", "exact_match": "dev", "invert_match": true}}))));
    assert!(r.allowed(&permission(json!({"header": {"name": ":authority", "suffix_match": ".com"}}))));
    assert!(r.allowed(&permission(json!({"header": {"name": ":path", "safe_regex_match": {"regex": "/.*"}}}))));
    // The network filter sees no headers at all, not even pseudo-headers.
    let net = Req { http: false, ..Req::default() };
    assert!(!net.allowed(&permission(json!({"header": {"name": ":method", "present_match": true}}))));
    assert!(net.allowed(&permission(json!({"header": {"name": ":method", "present_match": false}}))));
}

#[test]
fn url_path_ignores_the_query() {
    let r = Req { path: "/api/v1/items?id=3#frag", ..Req::default() };
    assert!(r.allowed(&permission(json!({"url_path": {"path": {"exact": "/api/v1/items"}}}))));
    assert!(r.allowed(&permission(json!({"url_path": {"path": {"prefix": "/api/"}}}))));
    assert!(!r.allowed(&permission(json!({"url_path": {"path": {"suffix": "id=3"}}}))));
    assert!(
        !Req { http: false, ..Req::default() }.allowed(&permission(json!({"url_path": {"path": {"prefix": "/"}}})))
    );
    // :path as a header keeps the query.
    assert!(r.allowed(&permission(json!({"header": {"name": ":path", "suffix_match": "#frag"}}))));
}

#[test]
fn destination_ip_and_ports() {
    let r = Req::default(); // local 10.0.0.2:8080
    assert!(r.allowed(&permission(json!({"destination_ip": {"address_prefix": "10.0.0.0", "prefix_len": 24}}))));
    assert!(!r.allowed(&permission(json!({"destination_ip": {"address_prefix": "10.0.1.0", "prefix_len": 24}}))));
    assert!(r.allowed(&permission(json!({"destination_port": 8080}))));
    assert!(!r.allowed(&permission(json!({"destination_port": 80}))));
    assert!(r.allowed(&permission(json!({"destination_port_range": {"start": 8000, "end": 8081}}))));
    assert!(!r.allowed(&permission(json!({"destination_port_range": {"start": 8000, "end": 8080}}))));
    let err = |p: serde_json::Value| {
        rules(json!({"policies": {"p": {"permissions": [p], "principals": [{"any": true}]}}})).unwrap_err()
    };
    assert!(err(json!({"destination_port": 70000})).reason.contains("65535"));
    let e = err(json!({"destination_port_range": {"start": 9000, "end": 9000}}));
    assert_eq!(e.reason, "range start 9000 cannot be greater or equal than range end 9000");
    assert_eq!(e.field, "rules.policies[p].permissions[0].destination_port_range");
    assert!(err(json!({"destination_port_range": {"start": -1, "end": 9000}})).reason.contains("out of bounds"));
    assert!(err(json!({"destination_ip": {"address_prefix": "bogus"}})).reason.contains("malformed IP address: bogus"));
}

#[test]
fn cidr_semantics_follow_envoy() {
    let r = Req { direct_remote: "127.0.0.1:1".parse().unwrap(), ..Req::default() };
    // An unset prefix_len is /0; a too-long one is clamped to the address width.
    assert!(r.allowed(&principal(json!({"direct_remote_ip": {"address_prefix": "10.0.0.1"}}))));
    assert!(r.allowed(&principal(json!({"direct_remote_ip": {"address_prefix": "127.0.0.1", "prefix_len": 40}}))));
    assert!(!r.allowed(&principal(json!({"direct_remote_ip": {"address_prefix": "127.0.0.9", "prefix_len": 40}}))));
    // Families never mix, except IPv4-mapped IPv6 peers, which compare as IPv4.
    assert!(!r.allowed(&principal(json!({"direct_remote_ip": {"address_prefix": "::", "prefix_len": 0}}))));
    let mapped = Req { direct_remote: "[::ffff:127.0.0.1]:1".parse().unwrap(), ..Req::default() };
    assert!(mapped.allowed(&principal(json!({"direct_remote_ip": {"address_prefix": "127.0.0.0", "prefix_len": 8}}))));
    let v6 = Req { direct_remote: "[2001:db8::7]:1".parse().unwrap(), ..Req::default() };
    assert!(v6.allowed(&principal(json!({"direct_remote_ip": {"address_prefix": "2001:db8::", "prefix_len": 32}}))));
}

#[test]
fn requested_server_name() {
    let e = permission(json!({"requested_server_name": {"suffix": ".svc.cluster.local"}}));
    assert!(!Req::default().allowed(&e));
    let sni =
        Req { conn: ConnInfo { sni: Some("a.ns.svc.cluster.local".into()), ..Default::default() }, ..Req::default() };
    assert!(sni.allowed(&e));
    // No SNI is the empty server name.
    assert!(Req::default().allowed(&permission(json!({"requested_server_name": {"exact": ""}}))));
}

fn claims_metadata() -> DynamicMetadata {
    let s = |v: &str| Value { kind: Some(VK::StringValue(v.into())) };
    let mut claims = Struct::default();
    claims.fields.insert(
        "iss".into(),
        Value { kind: Some(VK::ListValue(ListValue { values: vec![s("https://accounts.google.com")] })) },
    );
    claims.fields.insert("admin".into(), Value { kind: Some(VK::BoolValue(true)) });
    claims.fields.insert("level".into(), Value { kind: Some(VK::NumberValue(3.0)) });
    let mut md = DynamicMetadata::default();
    md.set("istio_authn", "request.auth.claims", Value { kind: Some(VK::StructValue(claims)) });
    md.set_string("istio_authn", "request.auth.principal", "issuer/subject");
    md
}

#[test]
fn metadata_permissions_and_principals() {
    let r = Req { metadata: Some(claims_metadata()), ..Req::default() };
    let iss = json!({"metadata": {"filter": "istio_authn", "path": [{"key": "request.auth.claims"}, {"key": "iss"}],
        "value": {"list_match": {"one_of": {"string_match": {"exact": "https://accounts.google.com"}}}}}});
    assert!(r.allowed(&principal(iss.clone())));
    assert!(!Req::default().allowed(&principal(iss)), "absent metadata never matches");
    let m = |value: serde_json::Value, invert: bool| {
        permission(
            json!({"metadata": {"filter": "istio_authn", "path": [{"key": "request.auth.claims"}, {"key": "admin"}], "value": value, "invert": invert}}),
        )
    };
    assert!(r.allowed(&m(json!({"bool_match": true}), false)));
    assert!(!r.allowed(&m(json!({"bool_match": true}), true)));
    assert!(r.allowed(&m(json!({"present_match": true}), false)));
    assert!(!r.allowed(&m(json!({"null_match": {}}), false)));
    let level = |value: serde_json::Value| {
        permission(
            json!({"metadata": {"filter": "istio_authn", "path": [{"key": "request.auth.claims"}, {"key": "level"}], "value": value}}),
        )
    };
    assert!(r.allowed(&level(json!({"double_match": {"range": {"start": 1, "end": 4}}}))));
    assert!(!r.allowed(&level(json!({"double_match": {"exact": 4}}))));
    assert!(r.allowed(&level(
        json!({"or_match": {"value_matchers": [{"double_match": {"exact": 4}}, {"double_match": {"exact": 3}}]}})
    )));
    // Missing values: present_match false never matches, inverted matchers do.
    let missing = |value: serde_json::Value, invert: bool| {
        permission(
            json!({"metadata": {"filter": "istio_authn", "path": [{"key": "nope"}], "value": value, "invert": invert}}),
        )
    };
    assert!(!r.allowed(&missing(json!({"present_match": false}), false)));
    assert!(r.allowed(&missing(json!({"present_match": true}), true)));
    // sourced_metadata: DYNAMIC works, ROUTE is refused.
    let sm = |source: &str| {
        rules(json!({"policies": {"p": {"permissions": [{"sourced_metadata": {"metadata_source": source,
            "metadata_matcher": {"filter": "istio_authn", "path": [{"key": "request.auth.principal"}], "value": {"string_match": {"prefix": "issuer/"}}}}}],
            "principals": [{"any": true}]}}}))
    };
    assert!(r.allowed(&sm("DYNAMIC").unwrap()));
    let e = sm("ROUTE").unwrap_err();
    assert!(e.reason.contains("ROUTE metadata"), "{e}");
}

// === principals ===

#[test]
fn authenticated_checks_uri_then_dns_sans_then_subject() {
    let sleep = "spiffe://cluster.local/ns/default/sa/sleep";
    let e = principal(json!({"authenticated": {"principal_name": {"exact": sleep}}}));
    assert!(Req { conn: mtls(&[sleep], &[], "O=x"), ..Req::default() }.allowed(&e));
    assert!(
        !Req { conn: mtls(&["spiffe://cluster.local/ns/default/sa/other"], &[], ""), ..Req::default() }.allowed(&e)
    );
    let dns = principal(json!({"authenticated": {"principal_name": {"suffix": ".example.com"}}}));
    assert!(Req { conn: mtls(&[sleep], &["api.example.com"], "CN=z"), ..Req::default() }.allowed(&dns));
    let subject = principal(json!({"authenticated": {"principal_name": {"exact": "CN=client,O=acme"}}}));
    assert!(Req { conn: mtls(&[], &[], "CN=client,O=acme"), ..Req::default() }.allowed(&subject));
    // Namespaces as Istio writes them: a regex on the principal.
    let ns = principal(json!({"authenticated": {"principal_name": {"safe_regex": {"regex": ".*/ns/test/.*"}}}}));
    assert!(Req { conn: mtls(&["spiffe://cluster.local/ns/test/sa/a"], &[], ""), ..Req::default() }.allowed(&ns));
    assert!(!Req { conn: mtls(&[sleep], &[], ""), ..Req::default() }.allowed(&ns));
    // No principal_name: any TLS connection; plaintext never matches.
    let any_tls = principal(json!({"authenticated": {}}));
    assert!(
        Req { conn: ConnInfo { tls_version: Some("TLSv1.2"), ..Default::default() }, ..Req::default() }
            .allowed(&any_tls)
    );
    assert!(!Req::default().allowed(&any_tls));
    assert!(!Req::default().allowed(&e));
    // Envoy matches the (empty) subject of a TLS peer without a certificate.
    let empty = principal(json!({"authenticated": {"principal_name": {"prefix": ""}}}));
    assert!(
        Req { conn: ConnInfo { tls_version: Some("TLSv1.3"), ..Default::default() }, ..Req::default() }.allowed(&empty)
    );
}

#[test]
fn source_direct_remote_and_remote_ip() {
    // Behind a proxy: the TCP peer is 10.0.0.1, x-forwarded-for says 203.0.113.9.
    let r = Req { remote: "203.0.113.9:0".parse().unwrap(), ..Req::default() };
    let peer = json!({"address_prefix": "10.0.0.1", "prefix_len": 32});
    let client = json!({"address_prefix": "203.0.113.0", "prefix_len": 24});
    assert!(r.allowed(&principal(json!({"source_ip": peer.clone()}))));
    assert!(r.allowed(&principal(json!({"direct_remote_ip": peer.clone()}))));
    assert!(!r.allowed(&principal(json!({"remote_ip": peer}))));
    assert!(r.allowed(&principal(json!({"remote_ip": client.clone()}))));
    assert!(!r.allowed(&principal(json!({"direct_remote_ip": client}))));
}

#[test]
fn header_and_url_path_principals() {
    let r = Req { path: "/admin?x=1", ..Req::default() }.header("x-user", "alice");
    assert!(r.allowed(&principal(json!({"header": {"name": "x-user", "exact_match": "alice"}}))));
    assert!(r.allowed(&principal(json!({"url_path": {"path": {"exact": "/admin"}}}))));
    assert!(r.allowed(&principal(json!({"not_id": {"header": {"name": "x-user", "exact_match": "bob"}}}))));
    assert!(r.allowed(&principal(
        json!({"and_ids": {"ids": [{"any": true}, {"header": {"name": "x-user", "present_match": true}}]}})
    )));
    assert!(!r.allowed(&principal(json!({"or_ids": {"ids": [{"header": {"name": "x-user", "exact_match": "bob"}}]}}))));
}

#[test]
fn istio_filter_state_principals() {
    let sleep = "spiffe://cluster.local/ns/default/sa/sleep";
    let peer = |m: serde_json::Value| {
        principal(json!({"filter_state": {"key": "io.istio.peer_principal", "string_match": m}}))
    };
    let exact = peer(json!({"exact": sleep}));
    assert!(Req { conn: mtls(&["urn:other", sleep], &[], ""), ..Req::default() }.allowed(&exact));
    assert!(!Req::default().allowed(&exact), "no peer certificate, no filter state");
    let ns = peer(json!({"safe_regex": {"regex": ".*/ns/test/.*"}}));
    assert!(Req { conn: mtls(&["spiffe://cluster.local/ns/test/sa/x"], &[], ""), ..Req::default() }.allowed(&ns));
    // The filter state is absent without a certificate: not_id of it matches.
    assert!(Req::default().allowed(&principal(
        json!({"not_id": {"filter_state": {"key": "io.istio.peer_principal", "string_match": {"prefix": ""}}}})
    )));
    let local = principal(
        json!({"filter_state": {"key": "io.istio.local_principal", "string_match": {"suffix": "/sa/httpbin"}}}),
    );
    assert!(Req { conn: mtls(&[sleep], &[], ""), ..Req::default() }.allowed(&local));
    let e = rules(json!({"policies": {"p": {"permissions": [{"any": true}], "principals": [{"filter_state": {"key": "some.other", "string_match": {"exact": "x"}}}]}}})).unwrap_err();
    assert_eq!(e.field, "rules.policies[p].principals[0].filter_state.key");
    assert!(e.reason.contains("not available"), "{e}");
}

// === actions and policies ===

#[test]
fn allow_deny_log_actions() {
    let pol = |action: &str| {
        rules(json!({"action": action, "policies": {
            "b-get": {"permissions": [{"header": {"name": ":method", "exact_match": "GET"}}], "principals": [{"any": true}]},
            "a-admin": {"permissions": [{"url_path": {"path": {"prefix": "/admin"}}}], "principals": [{"any": true}]}
        }}))
        .unwrap()
    };
    let get_admin = Req { path: "/admin", ..Req::default() };
    let post = Req { method: "POST", path: "/x", ..Req::default() };
    // Policies are tried in name order: "a-admin" reports first.
    let d = get_admin.eval(&pol("ALLOW"));
    assert_eq!((d.allowed, d.policy.as_deref(), d.log), (true, Some("a-admin"), None));
    let d = post.eval(&pol("ALLOW"));
    assert_eq!((d.allowed, d.policy.as_deref()), (false, None));
    assert_eq!(d.denied_details, "rbac_access_denied_matched_policy[none]");
    let d = get_admin.eval(&pol("DENY"));
    assert_eq!((d.allowed, d.policy.as_deref()), (false, Some("a-admin")));
    assert_eq!(d.denied_details, "rbac_access_denied_matched_policy[a-admin]");
    assert!(post.eval(&pol("DENY")).allowed);
    let d = get_admin.eval(&pol("LOG"));
    assert_eq!((d.allowed, d.log, d.policy.as_deref()), (true, Some(true), Some("a-admin")));
    let d = post.eval(&pol("LOG"));
    assert_eq!((d.allowed, d.log), (true, Some(false)));
    // No policies: ALLOW denies everything, DENY allows everything.
    assert!(!Req::default().allowed(&rules(json!({})).unwrap()));
    assert!(Req::default().allowed(&rules(json!({"action": "DENY"})).unwrap()));
}

#[test]
fn policy_needs_a_permission_and_a_principal() {
    let e = rules(json!({"policies": {"p": {
        "permissions": [{"url_path": {"path": {"prefix": "/a"}}}, {"url_path": {"path": {"prefix": "/b"}}}],
        "principals": [{"header": {"name": "x-id", "exact_match": "1"}}, {"header": {"name": "x-id", "exact_match": "2"}}]
    }}}))
    .unwrap();
    assert!(Req { path: "/b", ..Req::default() }.header("x-id", "2").allowed(&e));
    assert!(!Req { path: "/b", ..Req::default() }.header("x-id", "3").allowed(&e));
    assert!(!Req { path: "/c", ..Req::default() }.header("x-id", "1").allowed(&e));
}

#[test]
fn unsupported_or_invalid_config_is_rejected() {
    let pol = |perm: serde_json::Value, princ: serde_json::Value| {
        rules(json!({"policies": {"p": {"permissions": [perm], "principals": [princ]}}})).unwrap_err()
    };
    let any = json!({"any": true});
    let e = pol(
        json!({"uri_template": {"name": "envoy.path.match.uri_template.uri_template_matcher", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig", "path_template": "/{x}"}}}),
        any.clone(),
    );
    assert!(e.reason.contains("uri_template"), "{e}");
    let e = pol(
        json!({"matcher": {"name": "envoy.rbac.matchers.upstream_ip_port", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.rbac.matchers.upstream_ip_port.v3.UpstreamIpPortMatcher",
        "upstream_ip": {"address_prefix": "1.2.3.4", "prefix_len": 32}}}}),
        any.clone(),
    );
    assert!(e.reason.contains("upstream_ip_port"), "{e}");
    assert_eq!(e.field, "rules.policies[p].permissions[0].matcher");
    let e = pol(
        any.clone(),
        json!({"custom": {"name": "envoy.rbac.principals.mtls_authenticated", "typed_config": {
        "@type": "type.googleapis.com/envoy.config.rbac.v3.Action", "name": "x"}}}),
    );
    assert!(e.reason.contains("custom principal"), "{e}");
    assert_eq!(pol(json!({"any": false}), any.clone()).reason, "value must equal true");
    assert!(pol(json!({"and_rules": {"rules": []}}), any.clone()).reason.contains("at least 1"));
    assert!(pol(any.clone(), json!({"or_ids": {"ids": []}})).reason.contains("at least 1"));
    assert!(pol(json!({}), any.clone()).reason.contains("needs a rule"));
    let e = rules(json!({"policies": {"p": {"permissions": [], "principals": [{"any": true}]}}})).unwrap_err();
    assert_eq!(e.field, "rules.policies[p].permissions");
    let e = rules(json!({"policies": {"p": {"permissions": [{"any": true}], "principals": [{"any": true}],
        "condition": {"const_expr": {"bool_value": true}}}}}))
    .unwrap_err();
    assert!(e.reason.contains("CEL"), "{e}");
    let e = rules(json!({"audit_logging_options": {"audit_condition": "ON_DENY", "logger_configs": [{"audit_logger": {
        "name": "envoy.rbac.audit_loggers.stream", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.rbac.audit_loggers.stream.v3.StdoutAuditLog"}}}]}}))
    .unwrap_err();
    assert!(e.reason.contains("audit logger"), "{e}");
    // An optional audit logger is skipped, as Envoy skips unknown optional extensions.
    assert!(rules(json!({"audit_logging_options": {"logger_configs": [{"is_optional": true, "audit_logger": {
        "name": "x", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.rbac.audit_loggers.stream.v3.StdoutAuditLog"}}}]}}))
    .is_ok());
}

// === the matcher form ===

fn action(name: &str, action: &str) -> serde_json::Value {
    json!({"action": {"name": "action", "typed_config": {"@type": "type.googleapis.com/envoy.config.rbac.v3.Action", "name": name, "action": action}}})
}

fn header_input(name: &str) -> serde_json::Value {
    json!({"name": "envoy.matching.inputs.request_headers", "typed_config": {
        "@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput", "header_name": name}})
}

#[test]
fn matcher_list_like_envoys_example() {
    // envoy-examples/rbac_envoy.yaml: deny a referer outside the docs.
    let e = matcher(
        json!({
            "matcher_list": {"matchers": [{
                "predicate": {"not_matcher": {"single_predicate": {
                    "input": header_input("referer"),
                    "value_match": {"safe_regex": {"google_re2": {}, "regex": "https?://(www.)?envoyproxy.io/docs/envoy.*"}}}}},
                "on_match": action("illegal-referer", "DENY")
            }]},
            "on_no_match": action("all-pass", "ALLOW")
        }),
        Context::Http,
    )
    .unwrap();
    let good = Req::default().header("referer", "https://www.envoyproxy.io/docs/envoy/latest");
    let d = good.eval(&e);
    assert_eq!((d.allowed, d.policy.as_deref()), (true, Some("all-pass")));
    let d = Req::default().header("referer", "https://evil.example").eval(&e);
    assert_eq!((d.allowed, d.policy.as_deref()), (false, Some("illegal-referer")));
    assert_eq!(d.denied_details, "rbac_access_denied_matched_policy[illegal-referer]");
    // No referer: the input has no data, the single predicate fails, the not_matcher matches.
    assert!(!Req::default().allowed(&e));
}

#[test]
fn matcher_trees_nesting_and_no_match() {
    let e = matcher(
        json!({"matcher_tree": {
            "input": header_input("x-tenant"),
            "exact_match_map": {"map": {
                "a": action("tenant-a", "ALLOW"),
                "b": {"matcher": {"matcher_list": {"matchers": [{
                    "predicate": {"single_predicate": {"input": header_input(":method"), "value_match": {"exact": "GET"}}},
                    "on_match": action("tenant-b-read", "ALLOW")}]}}},
                "c": action("tenant-c-log", "LOG")
            }}
        }}),
        Context::Http,
    )
    .unwrap();
    assert!(Req::default().header("x-tenant", "a").allowed(&e));
    assert!(Req::default().header("x-tenant", "b").allowed(&e));
    assert!(!Req { method: "POST", ..Req::default() }.header("x-tenant", "b").allowed(&e), "nested no-match denies");
    let d = Req::default().header("x-tenant", "c").eval(&e);
    assert_eq!((d.allowed, d.log), (true, Some(true)));
    let d = Req::default().header("x-tenant", "z").eval(&e);
    assert_eq!((d.allowed, d.policy), (false, None));

    let p = matcher(
        json!({"matcher_tree": {
            "input": header_input(":path"),
            "prefix_match_map": {"map": {
                "/api/": action("api", "ALLOW"),
                "/api/admin": {"matcher": {"matcher_list": {"matchers": [{
                    "predicate": {"single_predicate": {"input": header_input("x-admin"), "value_match": {"exact": "1"}}},
                    "on_match": action("admin", "ALLOW")}]}}}
            }}
        }, "on_no_match": action("default-deny", "DENY")}),
        Context::Http,
    )
    .unwrap();
    assert_eq!(
        Req { path: "/api/admin/x", ..Req::default() }.header("x-admin", "1").eval(&p).policy.as_deref(),
        Some("admin")
    );
    // The longest prefix's nested matcher fails: the next longer prefix decides.
    assert_eq!(Req { path: "/api/admin/x", ..Req::default() }.eval(&p).policy.as_deref(), Some("api"));
    assert_eq!(Req { path: "/other", ..Req::default() }.eval(&p).policy.as_deref(), Some("default-deny"));
}

#[test]
fn matcher_network_and_tls_inputs() {
    let net = |t: &str| json!({"name": "i", "typed_config": {"@type": format!("type.googleapis.com/envoy.extensions.matching.common_inputs.{t}")}});
    let e = matcher(
        json!({"matcher_list": {"matchers": [
            {"predicate": {"and_matcher": {"predicate": [
                {"single_predicate": {"input": net("network.v3.DestinationPortInput"), "value_match": {"exact": "8080"}}},
                {"single_predicate": {"input": net("network.v3.SourceIPInput"), "custom_match": {"name": "ip", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.matching.input_matchers.ip.v3.Ip", "stat_prefix": "ip",
                    "cidr_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]}}}}
            ]}}, "on_match": action("lan", "ALLOW")},
            {"predicate": {"or_matcher": {"predicate": [
                {"single_predicate": {"input": net("ssl.v3.UriSanInput"), "value_match": {"prefix": "spiffe://cluster.local/ns/prod/"}}},
                {"single_predicate": {"input": net("ssl.v3.SubjectInput"), "value_match": {"exact": "CN=ops"}}}
            ]}}, "on_match": action("mesh", "ALLOW")}
        ]}}),
        Context::Network,
    )
    .unwrap();
    let net_req = |r: Req| Req { http: false, ..r };
    assert!(net_req(Req::default()).allowed(&e));
    assert!(!net_req(Req { remote: "192.168.0.1:1".parse().unwrap(), ..Req::default() }).allowed(&e));
    let prod = mtls(&["spiffe://cluster.local/ns/prod/sa/a"], &[], "");
    assert!(net_req(Req { remote: "192.168.0.1:1".parse().unwrap(), conn: prod, ..Req::default() }).allowed(&e));
    let ops = mtls(&[], &[], "CN=ops");
    assert!(net_req(Req { remote: "192.168.0.1:1".parse().unwrap(), conn: ops, ..Req::default() }).allowed(&e));
}

#[test]
fn matcher_rejections() {
    let keep = matcher(
        json!({"matcher_list": {"matchers": [{
            "predicate": {"single_predicate": {"input": header_input("a"), "value_match": {"exact": "1"}}},
            "on_match": {"keep_matching": true, "action": action("x", "ALLOW")["action"]}}]}}),
        Context::Http,
    )
    .unwrap_err();
    assert!(keep.reason.contains("keep_matching"), "{keep}");
    let bad_action = matcher(
        json!({"on_no_match": {"action": {"name": "a", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}}}),
        Context::Http,
    )
    .unwrap_err();
    assert!(bad_action.reason.contains("envoy.config.rbac.v3.Action"), "{bad_action}");
    let query = matcher(
        json!({"matcher_list": {"matchers": [{
            "predicate": {"single_predicate": {"input": {"name": "q", "typed_config": {
                "@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestQueryParamMatchInput", "query_param": "a"}},
                "value_match": {"exact": "1"}}},
            "on_match": action("x", "ALLOW")}]}}),
        Context::Http,
    )
    .unwrap_err();
    assert!(query.reason.contains("not supported"), "{query}");
    assert_eq!(query.field, "matcher.matcher_list.matchers[0].predicate.single_predicate.input");
}

// === stats ===

#[test]
fn stat_names_follow_envoy() {
    assert_eq!(stat_prefix_join("http.ing.", "rbac."), "http.ing.rbac.");
    assert_eq!(stat_prefix_join("tcp", "rbac."), "tcp.rbac.");
    assert_eq!(stat_prefix_join("http.ing.rbac.", ""), "http.ing.rbac.");
    assert_eq!(stat_prefix_join("http.ing.rbac.rsp_", "allowed"), "http.ing.rbac.rsp_.allowed");
    let store = Arc::new(Store::default());
    let s = RbacStats::new(&store, "http.ing.", "rsp_", "ssp_");
    let d = Decision { allowed: true, policy: Some("p a".into()), log: None, denied_details: denied_details(None) };
    s.record(&d, false, true);
    s.record(&Decision { allowed: false, policy: Some("sp1".into()), ..d.clone() }, true, true);
    s.record(&Decision { allowed: false, policy: None, ..d.clone() }, false, true);
    s.record(&Decision { allowed: false, policy: Some("untracked".into()), ..d.clone() }, false, false);
    let names: Vec<_> = store.entries().into_iter().map(|e| (e.name.to_string(), e.value)).collect();
    let value = |n: &str| store.value_of(n);
    assert_eq!(value("http.ing.rbac.rsp_.allowed"), Some(1));
    assert_eq!(value("http.ing.rbac.rsp_.denied"), Some(2));
    assert_eq!(value("http.ing.rbac.rsp_.policy.untracked.denied"), None);
    assert_eq!(value("http.ing.rbac.rsp_.policy.p a.allowed"), Some(1));
    assert_eq!(value("http.ing.rbac.ssp_.shadow_denied"), Some(1));
    assert_eq!(value("http.ing.rbac.ssp_.policy.sp1.shadow_denied"), Some(1));
    assert_eq!(value("http.ing.rbac.ssp_.shadow_allowed"), Some(0));
    assert_eq!(names.len(), 6, "{names:?}");
    assert_eq!(denied_details(Some("a b")), "rbac_access_denied_matched_policy[a_b]");
}

// === real istiod output ===

/// `shared/testdata` next to (an ancestor of) the crate, or `$REMORA_TESTDATA`.
fn testdata() -> Option<std::path::PathBuf> {
    if let Some(d) = std::env::var_os("REMORA_TESTDATA").map(std::path::PathBuf::from).filter(|d| d.is_dir()) {
        return Some(d);
    }
    let here = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().map(|a| a.join("shared/testdata")).find(|p| p.is_dir())
}

/// Every RBAC `typed_config` in a JSON tree (also inside TypedStructs): `(type, config)`.
fn rbac_configs(v: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
    match v {
        serde_json::Value::Object(o) => {
            let t = o.get("@type").and_then(|t| t.as_str()).unwrap_or("");
            let name = t.rsplit('/').next().unwrap_or("");
            if name.ends_with("TypedStruct") {
                let inner = o.get("type_url").and_then(|t| t.as_str()).unwrap_or("");
                let inner = inner.rsplit('/').next().unwrap_or("");
                if inner.contains(".rbac.v3.") {
                    out.push((inner.to_string(), o.get("value").cloned().unwrap_or(json!({}))));
                }
            } else if name.contains(".filters.http.rbac.v3.") || name.contains(".filters.network.rbac.v3.") {
                let mut c = o.clone();
                c.remove("@type");
                out.push((name.to_string(), serde_json::Value::Object(c)));
            }
            o.values().for_each(|v| rbac_configs(v, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| rbac_configs(v, out)),
        _ => {}
    }
}

#[test]
fn every_rbac_config_in_the_istio_dumps_compiles() {
    use crate::filters::http::rbac::{RbacFilter, RbacPerRoute};
    use crate::filters::network::rbac::NetworkRbac;
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
    use envoy_types::pb::envoy::extensions::filters::network::rbac::v3 as net_rbac;
    let Some(dir) = testdata() else {
        eprintln!("shared/testdata not found (set REMORA_TESTDATA): skipping");
        return;
    };
    let pool = xds_client::descriptors::pool();
    let cx = crate::config::BuildCtx {
        stats: Arc::new(Store::default()),
        http_stat_prefix: Some("inbound_0.0.0.0_80".into()),
        ..Default::default()
    };
    let mut total = 0;
    let mut files: Vec<_> = std::fs::read_dir(dir.join("istio")).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    for path in files.iter().filter(|p| p.is_file()) {
        let Ok(text) = std::fs::read_to_string(path) else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        let mut found = Vec::new();
        rbac_configs(&v, &mut found);
        for (i, (t, c)) in found.into_iter().enumerate() {
            let at = format!("{}: rbac config #{i} ({t})", path.display());
            let opts = xds_client::json::JsonOptions::default();
            match t.as_str() {
                "envoy.extensions.filters.http.rbac.v3.RBAC" => {
                    let p: http_rbac::Rbac = xds_client::json::message_from_json(&pool, c, opts).expect(&at);
                    RbacFilter::from_proto("envoy.filters.http.rbac", &p, &cx).unwrap_or_else(|e| panic!("{at}: {e}"));
                }
                "envoy.extensions.filters.http.rbac.v3.RBACPerRoute" => {
                    let p: http_rbac::RbacPerRoute = xds_client::json::message_from_json(&pool, c, opts).expect(&at);
                    RbacPerRoute::from_proto(&p).unwrap_or_else(|e| panic!("{at}: {e}"));
                }
                "envoy.extensions.filters.network.rbac.v3.RBAC" => {
                    let p: net_rbac::Rbac = xds_client::json::message_from_json(&pool, c, opts).expect(&at);
                    NetworkRbac::from_proto("envoy.filters.network.rbac", &p, &cx)
                        .unwrap_or_else(|e| panic!("{at}: {e}"));
                }
                other => panic!("{at}: unexpected RBAC type {other}"),
            }
            total += 1;
        }
    }
    // istio_official_authz_listeners_rbac.configdump.yaml: 10 HTTP filters, 3 network filters.
    assert!(total >= 13, "found only {total} RBAC configs");
}
