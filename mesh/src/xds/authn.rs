//! RequestAuthentication as istiod turns it into `envoy.filters.http.jwt_authn`
//! (pilot/pkg/security/authn/policy_applier.go `convertToEnvoyJwtConfig`): the jwtRules of every
//! policy selecting the workload, sorted by issuer, become providers `origins-N` with the payload
//! in the metadata key `payload` (what the RBAC filter's request principals and claims read); a
//! request with no token passes (`allow_missing`), one with a token must carry a valid one. Current
//! istiod emits no `istio_authn` HTTP filter (older ones did): RBAC reads the jwt_authn metadata.

use serde_json::{Value, json};

use crate::manifest::Resource;
use crate::manifest::security::{JwtRule, RequestAuthenticationSpec};

/// `buildSpaceDelimitedClaims`: `permission` and `scope` always, plus the rule's, sorted.
fn space_delimited(r: &JwtRule) -> Vec<String> {
    let mut v: Vec<String> = r.space_delimited_claims.clone();
    v.extend(["permission".to_string(), "scope".to_string()]);
    v.sort();
    v.dedup();
    v
}

fn provider(r: &JwtRule, clear_route_cache: bool) -> Value {
    let mut p = json!({
        "issuer": r.issuer,
        "payload_in_metadata": "payload",
        "normalize_payload_in_metadata": {"space_delimited_claims": space_delimited(r)},
        // Security::build refused rules without inline keys.
        "local_jwks": {"inline_string": r.jwks.clone().unwrap_or_default()},
    });
    if !r.audiences.is_empty() {
        p["audiences"] = json!(r.audiences);
    }
    if r.forward_original_token {
        p["forward"] = json!(true);
    }
    if let Some(h) = r.output_payload_to_header.as_deref().filter(|h| !h.is_empty()) {
        p["forward_payload_header"] = json!(h);
    }
    if clear_route_cache {
        p["clear_route_cache"] = json!(true);
    }
    if !r.output_claim_to_headers.is_empty() {
        p["claim_to_headers"] =
            r.output_claim_to_headers.iter().map(|c| json!({"header_name": c.header, "claim_name": c.claim})).collect();
    }
    if !r.from_headers.is_empty() {
        p["from_headers"] = r
            .from_headers
            .iter()
            .map(|h| {
                let mut x = json!({"name": h.name});
                if !h.prefix.is_empty() {
                    x["value_prefix"] = json!(h.prefix);
                }
                x
            })
            .collect();
    }
    if !r.from_params.is_empty() {
        p["from_params"] = json!(r.from_params);
    }
    if !r.from_cookies.is_empty() {
        p["from_cookies"] = json!(r.from_cookies);
    }
    p
}

/// The jwt_authn filter for the RequestAuthentications selecting a workload (none without
/// rules). `clear_route_cache` is set for gateways, as istiod does for proxies other than
/// sidecars.
pub fn jwt_filter(policies: &[&Resource<RequestAuthenticationSpec>], gateway: bool) -> Option<Value> {
    let mut rules: Vec<&JwtRule> = policies.iter().flat_map(|p| p.spec.jwt_rules.iter()).collect();
    if rules.is_empty() {
        return None;
    }
    rules.sort_by(|a, b| a.issuer.cmp(&b.issuer));
    let mut providers = serde_json::Map::new();
    let mut inner_and = Vec::new();
    let mut outer_or = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let name = format!("origins-{i}");
        providers.insert(name.clone(), provider(r, gateway));
        inner_and.push(json!({"requires_any": {"requirements": [{"provider_name": name}, {"allow_missing": {}}]}}));
        outer_or.push(json!({"provider_name": name}));
    }
    let requires = if inner_and.len() == 1 {
        inner_and.remove(0)
    } else {
        outer_or.push(json!({"requires_all": {"requirements": inner_and}}));
        json!({"requires_any": {"requirements": outer_or}})
    };
    Some(json!({"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": providers,
        "rules": [{"match": {"prefix": "/"}, "requires": requires}],
        "bypass_cors_preflight": true,
    }}))
}
