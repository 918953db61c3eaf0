//! Istio's security resources as users write them: `AuthorizationPolicy` and
//! `RequestAuthentication` (security.istio.io/v1 and v1beta1). `check` refuses, with the file, the
//! field and the reason, what the demo control plane cannot turn into the filters istiod would
//! generate (see xds/authz.rs): IP-based conditions, CUSTOM and AUDIT actions, `targetRef`s, remote
//! JWKS, path templates, and the wildcards and principals istiod's validation rejects.

use serde::Deserialize;

use super::{Labels, ManifestError, Resource, parse_duration};
use crate::model::ROOT_NAMESPACE;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: Labels,
}

impl WorkloadSelector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct From {
    #[serde(default)]
    pub source: Option<Source>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct To {
    #[serde(default)]
    pub operation: Option<Operation>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub from: Vec<From>,
    #[serde(default)]
    pub to: Vec<To>,
    #[serde(default)]
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Provider {
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub target_ref: Option<serde_yaml::Value>,
    #[serde(default)]
    pub target_refs: Option<serde_yaml::Value>,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub provider: Option<Provider>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub prefix: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    #[serde(default)]
    pub header: String,
    #[serde(default)]
    pub claim: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    #[serde(default)]
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub jwks: Option<String>,
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    #[serde(default)]
    pub from_params: Vec<String>,
    #[serde(default)]
    pub from_cookies: Vec<String>,
    #[serde(default)]
    pub output_payload_to_header: Option<String>,
    #[serde(default)]
    pub forward_original_token: bool,
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub space_delimited_claims: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub target_ref: Option<serde_yaml::Value>,
    #[serde(default)]
    pub target_refs: Option<serde_yaml::Value>,
    #[serde(default)]
    pub jwt_rules: Vec<JwtRule>,
}

/// Whether a policy in `ns` with `selector` applies to a workload in `workload_ns` with `labels`
/// (istiod's `PolicyMatcherForProxy`: the root namespace's policies apply mesh-wide, others in
/// their namespace; a selector narrows them to the workloads whose labels it matches).
pub fn applies(ns: &str, selector: Option<&WorkloadSelector>, workload_ns: &str, labels: &Labels) -> bool {
    (ns == ROOT_NAMESPACE || ns == workload_ns) && selector.is_none_or(|s| s.matches(labels))
}

/// What the `when` keys the demo turns into RBAC matchers are (xds/authz.rs).
pub const WHEN_KEYS: &str = "request.headers[NAME], source.namespace, source.principal, \
    source.serviceAccount, request.auth.principal, request.auth.audiences, request.auth.presenter, \
    request.auth.claims[NAME], destination.port, connection.sni";

const IP_REASON: &str = "IP-based matching is not supported by the demo control plane: its pods have \
    loopback addresses (127.x.B.N, renumbered on every run), not the Kubernetes pod IPs a policy names";

/// istiod's validation of a value with a wildcard: `*` alone, or one `*` at the start or the end.
fn check_wildcard(v: &str) -> Result<(), String> {
    let stars = v.matches('*').count();
    if v.is_empty() {
        Err("empty value".into())
    } else if v == "*" || stars == 0 || (stars == 1 && (v.starts_with('*') || v.ends_with('*'))) {
        Ok(())
    } else {
        Err(format!("'{v}': a wildcard '*' may only be the whole value, its start or its end"))
    }
}

/// A source principal: `TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT` (istiod adds `spiffe://`),
/// or a value with a wildcard.
fn check_principal(v: &str) -> Result<(), String> {
    check_wildcard(v)?;
    if v.starts_with("spiffe://") {
        return Err(format!(
            "'{v}': write principals without 'spiffe://' (istiod adds it): TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT"
        ));
    }
    if v.contains('*') {
        return Ok(());
    }
    let parts: Vec<&str> = v.split('/').collect();
    match parts.as_slice() {
        [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => Ok(()),
        _ => Err(format!(
            "'{v}' is not a workload identity: principals are TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT \
             (e.g. cluster.local/ns/default/sa/productpage), or use '*' wildcards"
        )),
    }
}

fn check_port(v: &str) -> Result<(), String> {
    match v.parse::<u32>() {
        Ok(p) if p <= 65535 => Ok(()),
        _ => Err(format!("'{v}' is not a port number")),
    }
}

fn check_path(v: &str) -> Result<(), String> {
    if v.contains('{') || v.contains('}') {
        return Err(format!(
            "'{v}': path templates ({{*}}, {{**}}) become RBAC uri_template permissions, which remora refuses"
        ));
    }
    check_wildcard(v)
}

/// Extracts `NAME` from `[NAME]`; nested `[a][b]` for claims.
pub fn bracketed(rest: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut s = rest;
    while !s.is_empty() {
        let inner = s.strip_prefix('[')?;
        let end = inner.find(']')?;
        let name = &inner[..end];
        if name.is_empty() || name.contains('[') {
            return None;
        }
        out.push(name.to_string());
        s = &inner[end + 1..];
    }
    (!out.is_empty()).then_some(out)
}

/// Refuses what cannot be honoured in one AuthorizationPolicy.
pub fn check_authorization_policy(p: &Resource<AuthorizationPolicySpec>) -> Result<(), ManifestError> {
    let at = format!("AuthorizationPolicy {}", p.meta.name);
    let fail =
        |field: String, reason: String| ManifestError { file: p.file.clone(), field: format!("{at}: {field}"), reason };
    let s = &p.spec;
    match s.action.as_deref() {
        None | Some("ALLOW") | Some("DENY") => {}
        Some("AUDIT") => {
            return Err(fail(
                "spec.action".into(),
                "AUDIT is not supported: it only marks requests for an audit log provider (Stackdriver) in the \
                 mesh config, which the demo has none of"
                    .into(),
            ));
        }
        Some("CUSTOM") => {
            return Err(fail(
                "spec.action".into(),
                "CUSTOM is not supported: it delegates to an ext_authz extension provider of the mesh config, and \
                 remora has no ext_authz filter"
                    .into(),
            ));
        }
        Some(other) => return Err(fail("spec.action".into(), format!("unknown action '{other}' (ALLOW or DENY)"))),
    }
    if s.provider.is_some() {
        return Err(fail(
            "spec.provider".into(),
            "a provider is only for action CUSTOM, which is not supported".into(),
        ));
    }
    for (f, v) in [("spec.targetRef", &s.target_ref), ("spec.targetRefs", &s.target_refs)] {
        if v.is_some() {
            return Err(fail(
                f.into(),
                "not supported: the demo has no waypoints or Gateway API gateways to attach to (use selector)".into(),
            ));
        }
    }
    for (i, r) in s.rules.iter().enumerate() {
        for (j, from) in r.from.iter().enumerate() {
            let f = |n: &str| format!("spec.rules[{i}].from[{j}].source.{n}");
            let Some(src) = &from.source else {
                return Err(fail(format!("spec.rules[{i}].from[{j}].source"), "missing".into()));
            };
            let lists = [
                ("principals", &src.principals),
                ("notPrincipals", &src.not_principals),
                ("requestPrincipals", &src.request_principals),
                ("notRequestPrincipals", &src.not_request_principals),
                ("namespaces", &src.namespaces),
                ("notNamespaces", &src.not_namespaces),
                ("serviceAccounts", &src.service_accounts),
                ("notServiceAccounts", &src.not_service_accounts),
            ];
            if lists.iter().all(|(_, l)| l.is_empty())
                && src.ip_blocks.is_empty()
                && src.not_ip_blocks.is_empty()
                && src.remote_ip_blocks.is_empty()
                && src.not_remote_ip_blocks.is_empty()
            {
                return Err(fail(format!("spec.rules[{i}].from[{j}].source"), "must not be empty".into()));
            }
            for (n, l) in [
                ("ipBlocks", &src.ip_blocks),
                ("notIpBlocks", &src.not_ip_blocks),
                ("remoteIpBlocks", &src.remote_ip_blocks),
                ("notRemoteIpBlocks", &src.not_remote_ip_blocks),
            ] {
                if !l.is_empty() {
                    return Err(fail(f(n), IP_REASON.into()));
                }
            }
            for (n, l) in lists {
                for v in l.iter() {
                    let ok = match n {
                        "principals" | "notPrincipals" => check_principal(v),
                        "serviceAccounts" | "notServiceAccounts" => {
                            if v.contains('*') {
                                Err(format!("'{v}': service accounts take no wildcards"))
                            } else if v.split('/').count() > 2 || v.is_empty() {
                                Err(format!("'{v}': a service account is NAME or NAMESPACE/NAME"))
                            } else {
                                Ok(())
                            }
                        }
                        _ => check_wildcard(v),
                    };
                    ok.map_err(|why| fail(f(n), why))?;
                }
            }
        }
        for (j, to) in r.to.iter().enumerate() {
            let f = |n: &str| format!("spec.rules[{i}].to[{j}].operation.{n}");
            let Some(op) = &to.operation else {
                return Err(fail(format!("spec.rules[{i}].to[{j}].operation"), "missing".into()));
            };
            let lists = [
                ("hosts", &op.hosts),
                ("notHosts", &op.not_hosts),
                ("ports", &op.ports),
                ("notPorts", &op.not_ports),
                ("methods", &op.methods),
                ("notMethods", &op.not_methods),
                ("paths", &op.paths),
                ("notPaths", &op.not_paths),
            ];
            if lists.iter().all(|(_, l)| l.is_empty()) {
                return Err(fail(format!("spec.rules[{i}].to[{j}].operation"), "must not be empty".into()));
            }
            for (n, l) in lists {
                for v in l.iter() {
                    let ok = match n {
                        "ports" | "notPorts" => check_port(v),
                        "paths" | "notPaths" => check_path(v),
                        _ => check_wildcard(v),
                    };
                    ok.map_err(|why| fail(f(n), why))?;
                }
            }
        }
        for (j, c) in r.when.iter().enumerate() {
            let f = |n: &str| format!("spec.rules[{i}].when[{j}].{n}");
            if c.values.is_empty() && c.not_values.is_empty() {
                return Err(fail(f("values"), "values or notValues is required".into()));
            }
            let k = c.key.as_str();
            let known = if let Some(rest) = k.strip_prefix("request.headers") {
                bracketed(rest).is_some_and(|v| v.len() == 1)
            } else if let Some(rest) = k.strip_prefix("request.auth.claims") {
                bracketed(rest).is_some()
            } else {
                match k {
                    "source.namespace"
                    | "source.principal"
                    | "source.serviceAccount"
                    | "request.auth.principal"
                    | "request.auth.audiences"
                    | "request.auth.presenter"
                    | "connection.sni" => true,
                    "destination.port" => {
                        for v in c.values.iter().chain(&c.not_values) {
                            check_port(v).map_err(|why| fail(f("values"), why))?;
                        }
                        true
                    }
                    "source.ip" | "remote.ip" | "destination.ip" => {
                        return Err(fail(f("key"), format!("'{k}': {IP_REASON}")));
                    }
                    "" => return Err(fail(f("key"), "missing".into())),
                    _ => false,
                }
            };
            if !known {
                return Err(fail(
                    f("key"),
                    format!("'{k}' is not supported by the demo control plane (supported: {WHEN_KEYS})"),
                ));
            }
            for v in c.values.iter().chain(&c.not_values) {
                let ok = if k == "source.principal" { check_principal(v) } else { check_wildcard(v) };
                ok.map_err(|why| fail(f("values"), why))?;
            }
        }
    }
    Ok(())
}

/// Refuses what cannot be honoured in one RequestAuthentication.
pub fn check_request_authentication(p: &Resource<RequestAuthenticationSpec>) -> Result<(), ManifestError> {
    let at = format!("RequestAuthentication {}", p.meta.name);
    let fail =
        |field: String, reason: String| ManifestError { file: p.file.clone(), field: format!("{at}: {field}"), reason };
    let s = &p.spec;
    for (f, v) in [("spec.targetRef", &s.target_ref), ("spec.targetRefs", &s.target_refs)] {
        if v.is_some() {
            return Err(fail(
                f.into(),
                "not supported: the demo has no waypoints or Gateway API gateways to attach to (use selector)".into(),
            ));
        }
    }
    for (i, r) in s.jwt_rules.iter().enumerate() {
        let f = |n: &str| format!("spec.jwtRules[{i}].{n}");
        if r.issuer.is_empty() {
            return Err(fail(f("issuer"), "missing".into()));
        }
        if r.jwks_uri.is_some() {
            return Err(fail(
                f("jwksUri"),
                "not supported: istiod would have Envoy fetch the keys (remote_jwks), which remora refuses; give the \
                 key set inline in jwks"
                    .into(),
            ));
        }
        let Some(jwks) = &r.jwks else {
            return Err(fail(
                f("jwks"),
                "missing: without it istiod fetches the issuer's OpenID discovery document and keys, which the demo \
                 does not; give the key set inline"
                    .into(),
            ));
        };
        let keys = serde_json::from_str::<serde_json::Value>(jwks).ok().and_then(|v| v.get("keys").cloned());
        if keys.is_none_or(|k| k.as_array().is_none_or(|a| a.is_empty())) {
            return Err(fail(f("jwks"), "not a JSON Web Key Set (a JSON object with a non-empty 'keys' list)".into()));
        }
        for (j, h) in r.from_headers.iter().enumerate() {
            if h.name.is_empty() {
                return Err(fail(f(&format!("fromHeaders[{j}].name")), "missing".into()));
            }
        }
        for (j, c) in r.output_claim_to_headers.iter().enumerate() {
            if c.header.is_empty() || c.claim.is_empty() {
                return Err(fail(f(&format!("outputClaimToHeaders[{j}]")), "header and claim are required".into()));
            }
        }
        if let Some(t) = &r.timeout
            && parse_duration(t).is_none()
        {
            return Err(fail(f("timeout"), format!("bad duration '{t}'")));
        }
    }
    Ok(())
}
