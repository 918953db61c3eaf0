//! AuthorizationPolicy and RequestAuthentication as istiod turns them into HTTP filters
//! (pilot/pkg/security/authz/builder, authz/model, security/authn, and the filter order of
//! networking/core/listener_builder.go): on a sidecar's inbound connection managers and the
//! gateway's, after any metadata-exchange filter, `envoy.filters.http.jwt_authn` (authn.rs), then
//! one `envoy.filters.http.rbac` for the DENY policies, then one for the ALLOW policies, then the
//! rest (fault, router). Policies named `ns[NS]-policy[NAME]-rule[N]`; a policy without rules
//! (`spec: {}`) gets istiod's never-matching policy, so an empty ALLOW policy denies everything.
//! Policies annotated `istio.io/dry-run: "true"` go to the filter's shadow rules. The principals
//! are matched as istiod does for sidecars and gateways (`authenticated`, the peer certificate's
//! URI SAN), request principals and claims on the JWT payload in the jwt_authn filter's dynamic
//! metadata.

use serde_json::{Value, json};

use super::Proxy;
use super::authn;
use crate::manifest::security::{
    self, AuthorizationPolicySpec, Condition, Operation, RequestAuthenticationSpec, Rule, Source, bracketed,
};
use crate::manifest::{Labels, ManifestError, Resource};
use crate::model::{Mesh, ROOT_NAMESPACE};

const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
const JWT_PAYLOAD: &str = "payload";
const DRY_RUN: &str = "istio.io/dry-run";

/// The checked security resources of a mesh.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub authorization_policies: Vec<Resource<AuthorizationPolicySpec>>,
    pub request_authentications: Vec<Resource<RequestAuthenticationSpec>>,
}

impl Security {
    pub fn build(
        authorization_policies: Vec<Resource<AuthorizationPolicySpec>>,
        request_authentications: Vec<Resource<RequestAuthenticationSpec>>,
    ) -> Result<Security, ManifestError> {
        for p in &authorization_policies {
            security::check_authorization_policy(p)?;
            if let Some(v) = p.meta.annotations.get(DRY_RUN)
                && v != "true"
                && v != "false"
            {
                return Err(ManifestError {
                    file: p.file.clone(),
                    field: format!("AuthorizationPolicy {}: metadata.annotations.{DRY_RUN}", p.meta.name),
                    reason: format!("'{v}' is not a boolean (\"true\" or \"false\")"),
                });
            }
        }
        for r in &request_authentications {
            security::check_request_authentication(r)?;
        }
        Ok(Security { authorization_policies, request_authentications })
    }
}

/// The workload a proxy stands for: namespace and labels, and whether it is a gateway.
struct Workload<'a> {
    namespace: &'a str,
    labels: Labels,
    gateway: bool,
}

fn workload<'a>(proxy: &'a Proxy) -> Workload<'a> {
    match proxy {
        Proxy::Sidecar(pod) => Workload { namespace: &pod.namespace, labels: pod.labels.clone(), gateway: false },
        // The ingress gateway's pod labels as Istio's charts set them.
        Proxy::Gateway { .. } => Workload {
            namespace: ROOT_NAMESPACE,
            labels: [("app", "istio-ingressgateway"), ("istio", "ingressgateway")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            gateway: true,
        },
    }
}

/// The authn/authz HTTP filters of a proxy, in istiod's order (none without policies).
pub fn http_filters(mesh: &Mesh, proxy: &Proxy) -> Vec<Value> {
    let w = workload(proxy);
    let sec = &mesh.security;
    let mut out = Vec::new();
    let jwt: Vec<&Resource<RequestAuthenticationSpec>> = sec
        .request_authentications
        .iter()
        .filter(|r| security::applies(&r.namespace, r.spec.selector.as_ref(), w.namespace, &w.labels))
        .collect();
    if let Some(f) = authn::jwt_filter(&jwt, w.gateway) {
        out.push(f);
    }
    let policies: Vec<&Resource<AuthorizationPolicySpec>> = sec
        .authorization_policies
        .iter()
        .filter(|p| security::applies(&p.namespace, p.spec.selector.as_ref(), w.namespace, &w.labels))
        .collect();
    // ListAuthorizationPolicies: the root namespace's policies first, then the workload's.
    let ordered = policies
        .iter()
        .filter(|p| p.namespace == ROOT_NAMESPACE)
        .chain(policies.iter().filter(|p| p.namespace != ROOT_NAMESPACE));
    let (deny, allow): (Vec<_>, Vec<_>) = ordered.copied().partition(|p| p.spec.action.as_deref() == Some("DENY"));
    for (action, list) in [("DENY", deny), ("ALLOW", allow)] {
        if let Some(f) = rbac_filter(action, &list) {
            out.push(f);
        }
    }
    out
}

/// Puts the proxy's authn/authz filters into its HTTP connection managers: a sidecar's inbound
/// listeners (istiod adds none outbound) and every gateway listener, after any metadata exchange
/// filter (istiod puts it first so RBAC can see the peer).
pub fn add_filters(mesh: &Mesh, proxy: &Proxy, listeners: &mut [Value]) {
    let filters = http_filters(mesh, proxy);
    if filters.is_empty() {
        return;
    }
    let gateway = matches!(proxy, Proxy::Gateway { .. });
    for l in listeners.iter_mut() {
        if !gateway && l["traffic_direction"] != "INBOUND" {
            continue;
        }
        let Some(chains) = l.get_mut("filter_chains").and_then(Value::as_array_mut) else { continue };
        for chain in chains {
            let Some(fs) = chain.get_mut("filters").and_then(Value::as_array_mut) else { continue };
            for f in fs.iter_mut().filter(|f| f["name"] == "envoy.filters.network.http_connection_manager") {
                let Some(hf) = f["typed_config"].get_mut("http_filters").and_then(Value::as_array_mut) else {
                    continue;
                };
                let at = hf
                    .iter()
                    .take_while(|x| {
                        x["name"] == "istio.metadata_exchange" || x["name"] == "envoy.filters.http.peer_metadata"
                    })
                    .count();
                for (i, x) in filters.iter().enumerate() {
                    hf.insert(at + i, x.clone());
                }
            }
        }
    }
}

/// builder.go `build` + `buildHTTP` for one action: every rule of every policy becomes a policy
/// of the filter's rules (or shadow rules for dry-run policies).
fn rbac_filter(action: &str, policies: &[&Resource<AuthorizationPolicySpec>]) -> Option<Value> {
    if policies.is_empty() {
        return None;
    }
    let mut enforce = serde_json::Map::new();
    let mut shadow = serde_json::Map::new();
    let (mut has_enforce, mut has_shadow) = (false, false);
    for p in policies {
        let dry = p.meta.annotations.get(DRY_RUN).is_some_and(|v| v == "true");
        let target = if dry {
            has_shadow = true;
            &mut shadow
        } else {
            has_enforce = true;
            &mut enforce
        };
        let name = |i: usize| format!("ns[{}]-policy[{}]-rule[{i}]", p.namespace, p.meta.name);
        for (i, r) in p.spec.rules.iter().enumerate() {
            target.insert(name(i), policy(r, &p.namespace));
        }
        if p.spec.rules.is_empty() {
            target.insert(name(0), match_never());
        }
    }
    let rules = |m: serde_json::Map<String, Value>| json!({"action": action, "policies": m});
    let mut cfg = json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"});
    if has_enforce {
        cfg["rules"] = rules(enforce);
    }
    // shadowRuleStatPrefix: istiod reads the action of the (possibly absent) shadow rules, ALLOW
    // when there are none.
    let prefix = if has_shadow && action == "DENY" { "istio_dry_run_deny_" } else { "istio_dry_run_allow_" };
    if has_shadow {
        cfg["shadow_rules"] = rules(shadow);
    }
    cfg["shadow_rules_stat_prefix"] = json!(prefix);
    Some(json!({"name": "envoy.filters.http.rbac", "typed_config": cfg}))
}

/// `rbacPolicyMatchNever`.
fn match_never() -> Value {
    json!({"permissions": [{"not_rule": {"any": true}}], "principals": [{"not_id": {"any": true}}]})
}

// ---- string and header matchers (authz/matcher) ----

fn regex(r: String) -> Value {
    json!({"safe_regex": {"regex": r}})
}

/// Go's `regexp.QuoteMeta`.
fn quote_meta(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `StringMatcherWithPrefix`: `*` is `.+`, `*x` a suffix, `x*` a prefix, else exact; `prefix`
/// prepended.
fn string_matcher(v: &str, prefix: &str) -> Value {
    if v == "*" {
        regex(".+".into())
    } else if let Some(rest) = v.strip_prefix('*') {
        if prefix.is_empty() { json!({"suffix": rest}) } else { regex(format!("{prefix}.*{}", quote_meta(rest))) }
    } else if let Some(rest) = v.strip_suffix('*') {
        json!({"prefix": format!("{prefix}{rest}")})
    } else {
        json!({"exact": format!("{prefix}{v}")})
    }
}

/// `HeaderMatcher` / `HostMatcher` (host: case-insensitive).
fn header_matcher(name: &str, v: &str, ignore_case: bool) -> Value {
    let sm = |k: &str, s: &str| {
        let mut m = json!({k: s});
        if ignore_case {
            m["ignore_case"] = json!(true);
        }
        json!({"name": name, "string_match": m})
    };
    if v == "*" {
        json!({"name": name, "present_match": true})
    } else if let Some(rest) = v.strip_prefix('*') {
        sm("suffix", rest)
    } else if let Some(rest) = v.strip_suffix('*') {
        sm("prefix", rest)
    } else {
        sm("exact", v)
    }
}

fn authenticated(m: Value) -> Value {
    json!({"authenticated": {"principal_name": m}})
}

fn jwt_metadata(path: &[String], value: Value) -> Value {
    let mut p = vec![json!({"key": JWT_PAYLOAD})];
    p.extend(path.iter().map(|k| json!({"key": k})));
    json!({"metadata": {"filter": JWT_FILTER, "path": p, "value": value}})
}

/// `StringOrMatcher`.
fn string_or(values: &[String]) -> Value {
    let ms: Vec<Value> = values.iter().map(|v| json!({"string_match": string_matcher(v, "")})).collect();
    if ms.len() == 1 { ms[0].clone() } else { json!({"or_match": {"value_matchers": ms}}) }
}

/// `MetadataListValueMatcherForJWTClaims`: the claim is a list with one element matching, or a
/// value matching.
fn claims(path: &[String], values: &[String]) -> Value {
    let v = string_or(values);
    jwt_metadata(path, json!({"or_match": {"value_matchers": [{"list_match": {"one_of": v}}, v]}}))
}

/// `requestPrincipalGenerator`: `ISS/SUB` on the payload's `iss` and `sub`.
fn request_principals(values: &[String]) -> Value {
    let any = || regex(".+".into());
    let mut or = Vec::new();
    for value in values {
        let (iss, sub, found) = match value.rfind('/') {
            Some(i) => (&value[..i], &value[i + 1..], true),
            None => (value.as_str(), "", false),
        };
        let (mi, ms) = if value == "*" {
            (any(), any())
        } else if let Some(rest) = value.strip_prefix('*') {
            if found {
                let mi = match iss.strip_prefix('*') {
                    Some("") => any(),
                    Some(s) => json!({"suffix": s}),
                    None => json!({"exact": iss}),
                };
                (mi, json!({"exact": sub}))
            } else {
                (any(), json!({"suffix": rest}))
            }
        } else if let Some(v) = value.strip_suffix('*') {
            if found {
                let ms = match sub.strip_suffix('*') {
                    Some("") => any(),
                    Some(s) => json!({"prefix": s}),
                    None => json!({"exact": sub}),
                };
                (json!({"exact": iss}), ms)
            } else {
                (json!({"prefix": v}), any())
            }
        } else {
            (json!({"exact": iss}), json!({"exact": sub}))
        };
        let one = |k: &str, m: Value| jwt_metadata(&[k.to_string()], json!({"string_match": m}));
        or.push(json!({"and_ids": {"ids": [one("iss", mi), one("sub", ms)]}}));
    }
    if or.len() == 1 { or.remove(0) } else { json!({"or_ids": {"ids": or}}) }
}

fn namespace_principal(v: &str) -> Value {
    let ns = v.split('*').map(quote_meta).collect::<Vec<_>>().join(".*");
    authenticated(regex(format!(".*/ns/{ns}/.*")))
}

fn service_account_principal(v: &str, policy_ns: &str) -> Value {
    let (ns, sa) = v.split_once('/').unwrap_or((policy_ns, v));
    authenticated(regex(format!("spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?", quote_meta(ns), quote_meta(sa))))
}

fn source_principal(v: &str) -> Value {
    authenticated(string_matcher(v, "spiffe://"))
}

// ---- rules (authz/model) ----

/// One condition as RBAC principals: the values OR'ed, the not-values negated.
fn ids(values: &[String], not: &[String], one: &dyn Fn(&str) -> Value) -> Vec<Value> {
    let mut out = Vec::new();
    if !values.is_empty() {
        out.push(json!({"or_ids": {"ids": values.iter().map(|v| one(v)).collect::<Vec<_>>()}}));
    }
    if !not.is_empty() {
        out.push(json!({"not_id": {"or_ids": {"ids": not.iter().map(|v| one(v)).collect::<Vec<_>>()}}}));
    }
    out
}

/// An "extended" condition (request principals, claims): one matcher for all values.
fn ids_ext(values: &[String], not: &[String], all: &dyn Fn(&[String]) -> Value) -> Vec<Value> {
    let mut out = Vec::new();
    if !values.is_empty() {
        out.push(all(values));
    }
    if !not.is_empty() {
        out.push(json!({"not_id": all(not)}));
    }
    out
}

fn rules(values: &[String], not: &[String], one: &dyn Fn(&str) -> Value) -> Vec<Value> {
    let mut out = Vec::new();
    if !values.is_empty() {
        out.push(json!({"or_rules": {"rules": values.iter().map(|v| one(v)).collect::<Vec<_>>()}}));
    }
    if !not.is_empty() {
        out.push(json!({"not_rule": {"or_rules": {"rules": not.iter().map(|v| one(v)).collect::<Vec<_>>()}}}));
    }
    out
}

fn port(v: &str) -> Value {
    json!({"destination_port": v.parse::<u32>().unwrap_or(0)})
}

/// A `when` condition: `(is_permission, matchers)`. `Security::build` refused every other key.
fn condition(c: &Condition, policy_ns: &str) -> (bool, Vec<Value>) {
    let (v, n) = (&c.values, &c.not_values);
    let k = c.key.as_str();
    if let Some(rest) = k.strip_prefix("request.headers") {
        let name = bracketed(rest).and_then(|v| v.into_iter().next()).unwrap_or_default();
        return (false, ids(v, n, &|x| json!({"header": header_matcher(&name, x, false)})));
    }
    if let Some(rest) = k.strip_prefix("request.auth.claims") {
        let path = bracketed(rest).unwrap_or_default();
        return (false, ids_ext(v, n, &|xs| claims(&path, xs)));
    }
    match k {
        "source.namespace" => (false, ids(v, n, &namespace_principal)),
        "source.principal" => (false, ids(v, n, &source_principal)),
        "source.serviceAccount" => (false, ids(v, n, &|x| service_account_principal(x, policy_ns))),
        "request.auth.principal" => (false, ids_ext(v, n, &request_principals)),
        "request.auth.audiences" => (false, ids_ext(v, n, &|xs| claims(&["aud".into()], xs))),
        "request.auth.presenter" => (false, ids_ext(v, n, &|xs| claims(&["azp".into()], xs))),
        "destination.port" => (true, rules(v, n, &port)),
        "connection.sni" => (true, rules(v, n, &|x| json!({"requested_server_name": string_matcher(x, "")}))),
        _ => (false, Vec::new()),
    }
}

fn source_ids(s: &Source, policy_ns: &str) -> Vec<Value> {
    let mut out = ids(&s.principals, &s.not_principals, &source_principal);
    out.extend(ids_ext(&s.request_principals, &s.not_request_principals, &request_principals));
    out.extend(ids(&s.service_accounts, &s.not_service_accounts, &|x| service_account_principal(x, policy_ns)));
    out.extend(ids(&s.namespaces, &s.not_namespaces, &namespace_principal));
    out
}

fn operation_rules(o: &Operation) -> Vec<Value> {
    let mut out = rules(&o.hosts, &o.not_hosts, &|x| json!({"header": header_matcher(":authority", x, true)}));
    out.extend(rules(&o.methods, &o.not_methods, &|x| json!({"header": header_matcher(":method", x, false)})));
    out.extend(rules(&o.paths, &o.not_paths, &|x| json!({"url_path": {"path": string_matcher(x, "")}})));
    out.extend(rules(&o.ports, &o.not_ports, &port));
    out
}

fn and_ids(mut v: Vec<Value>) -> Value {
    if v.is_empty() {
        v.push(json!({"any": true}));
    }
    json!({"and_ids": {"ids": v}})
}

fn and_rules(mut v: Vec<Value>) -> Value {
    if v.is_empty() {
        v.push(json!({"any": true}));
    }
    json!({"and_rules": {"rules": v}})
}

/// `model.New` + `Generate` for one rule: a permission per `to` (or one), a principal per `from`
/// (or one), each AND'ed with the rule's `when` conditions.
fn policy(r: &Rule, policy_ns: &str) -> Value {
    let (mut base_perm, mut base_prin) = (Vec::new(), Vec::new());
    for c in &r.when {
        let (is_perm, m) = condition(c, policy_ns);
        if is_perm { base_perm.extend(m) } else { base_prin.extend(m) }
    }
    let principals: Vec<Value> = if r.from.is_empty() {
        vec![and_ids(base_prin.clone())]
    } else {
        r.from
            .iter()
            .map(|f| {
                let mut v = f.source.as_ref().map(|s| source_ids(s, policy_ns)).unwrap_or_default();
                v.extend(base_prin.iter().cloned());
                and_ids(v)
            })
            .collect()
    };
    let permissions: Vec<Value> = if r.to.is_empty() {
        vec![and_rules(base_perm.clone())]
    } else {
        r.to.iter()
            .map(|t| {
                let mut v = t.operation.as_ref().map(operation_rules).unwrap_or_default();
                v.extend(base_perm.iter().cloned());
                and_rules(v)
            })
            .collect()
    };
    json!({"permissions": permissions, "principals": principals})
}
