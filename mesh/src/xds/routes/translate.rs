//! One VirtualService `http` rule as the Envoy routes istiod's `TranslateRoute`
//! (pilot/pkg/networking/core/route/route.go) writes: one route per match (skipping matches whose
//! `sourceLabels` the proxy does not carry, stopping after a catch-all), the match
//! (`TranslateRouteMatch`), the action (a route to clusters with rewrites, mirrors, retries and a
//! timeout; or a redirect; or a direct response), header operations, the fault filter's
//! per-route config and the decorator.

use serde_json::{Value, json};

use super::retry_policy;
use crate::manifest::{
    Destination, DirectResponse, HeaderOperations, Headers, HttpMatch, HttpRoute, Labels, Percent, Redirect, Resource,
    StringMatch, VirtualServiceSpec, parse_duration,
};
use crate::model::{Mesh, fqdn};
use crate::xds::{dur, outbound_name};

/// The routes of a VirtualService for a proxy with `labels`, on `listen_port`
/// (`BuildHTTPRoutesForVirtualService`). Empty when no rule applies to this proxy.
pub(in crate::xds) fn vs_routes(
    mesh: &Mesh,
    vs: &Resource<VirtualServiceSpec>,
    listen_port: u16,
    labels: &Labels,
) -> Vec<Value> {
    let mut out = Vec::new();
    for r in &vs.spec.http {
        let mut catchall = false;
        if r.matches.is_empty() {
            out.push(translate(mesh, vs, r, None, listen_port));
            catchall = true;
        } else {
            for m in &r.matches {
                // sourceMatchHTTP: every source label must be on the proxy.
                if !m.source_labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                    continue;
                }
                let route = translate(mesh, vs, r, Some(m), listen_port);
                let all = is_catch_all(&route);
                out.push(route);
                if all {
                    catchall = true;
                    break;
                }
            }
        }
        if catchall {
            break;
        }
    }
    out
}

/// `IsCatchAllRoute`: prefix `/` or regex `.*`, no header or query parameter matchers.
fn is_catch_all(r: &Value) -> bool {
    let m = &r["match"];
    (m["prefix"] == "/" || m["safe_regex"]["regex"] == ".*")
        && m.get("headers").is_none()
        && m.get("query_parameters").is_none()
}

/// `outbound|PORT|SUBSET|HOST` for a destination (`GetDestinationCluster`): its port, else the
/// service's only port, else the listener's port.
fn cluster_of(mesh: &Mesh, ns: &str, d: &Destination, listen_port: u16) -> String {
    let host = fqdn(&d.host, ns);
    let port = d
        .port
        .as_ref()
        .map(|p| p.number)
        .or_else(|| mesh.service(&host).and_then(|s| (s.ports.len() == 1).then(|| s.ports[0].port)))
        .unwrap_or(listen_port);
    outbound_name(port, d.subset.as_deref().unwrap_or(""), &host)
}

fn translate(mesh: &Mesh, vs: &Resource<VirtualServiceSpec>, r: &HttpRoute, m: Option<&HttpMatch>, port: u16) -> Value {
    let mut name = r.name.clone().unwrap_or_default();
    if let Some(n) = m.and_then(|m| m.name.as_deref()).filter(|n| !n.is_empty()) {
        name = format!("{name}.{n}");
    }
    let mut out = json!({"match": route_match(m)});
    if !name.is_empty() {
        out["name"] = json!(name);
    }
    let mut authority = None;
    if let Some(h) = &r.headers {
        authority = apply_headers(&mut out, h);
    }
    if let Some(rd) = &r.redirect {
        out["redirect"] = redirect(rd, port);
    } else if let Some(d) = &r.direct_response {
        out["direct_response"] = direct_response(d);
    } else {
        out["route"] = route_action(mesh, &vs.namespace, r, &mut out, authority, port);
    }
    out["decorator"] = json!({"operation": operation(&out, &vs.meta.name, port)});
    if let Some(f) = &r.fault {
        let pct = |p: &Option<Percent>| {
            let v = p.as_ref().map(|p| p.value).unwrap_or(100.0);
            json!({"numerator": (v * 10000.0).round() as u64, "denominator": "MILLION"})
        };
        let mut fault = json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"});
        if let Some(d) = &f.delay {
            fault["delay"] = json!({"fixed_delay": dur(parse_duration(&d.fixed_delay).unwrap_or(0.0)), "percentage": pct(&d.percentage)});
        }
        if let Some(a) = &f.abort {
            fault["abort"] = json!({"http_status": a.http_status, "percentage": pct(&a.percentage)});
        }
        out["typed_per_filter_config"] = json!({"envoy.filters.http.fault": fault});
    }
    out
}

/// `applyHTTPRouteDestination`.
fn route_action(
    mesh: &Mesh,
    ns: &str,
    r: &HttpRoute,
    out: &mut Value,
    mut authority: Option<String>,
    port: u16,
) -> Value {
    let timeout = r.timeout.as_deref().and_then(parse_duration).map(dur).unwrap_or_else(|| "0s".into());
    let mut action = json!({"timeout": timeout, "max_grpc_timeout": timeout});
    if let Some(rw) = &r.rewrite {
        if let Some(re) = &rw.uri_regex_rewrite {
            action["regex_rewrite"] = json!({"pattern": {"regex": re.pattern}, "substitution": re.rewrite});
        } else if let Some(uri) = rw.uri.as_deref().filter(|u| !u.is_empty()) {
            action["prefix_rewrite"] = json!(uri);
        }
        if let Some(a) = rw.authority.as_deref().filter(|a| !a.is_empty()) {
            authority = Some(a.to_string());
        }
    }
    let mut mirrors = Vec::new();
    if let Some(d) = &r.mirror {
        // MirrorPercent: 100 % unless mirrorPercentage says otherwise; 0 turns the mirror off.
        let fraction = match &r.mirror_percentage {
            Some(p) if p.value > 0.0 => Some(percent(p)),
            Some(_) => None,
            None => Some(json!({"numerator": 100, "denominator": "HUNDRED"})),
        };
        if let Some(f) = fraction {
            mirrors.push(mirror_policy(cluster_of(mesh, ns, d, port), f));
        }
    }
    for mp in &r.mirrors {
        let fraction = match &mp.percentage {
            Some(p) if p.value > 0.0 => Some(percent(p)),
            Some(_) => None,
            None => Some(json!({"numerator": 100, "denominator": "HUNDRED"})),
        };
        if let Some(f) = fraction {
            mirrors.push(mirror_policy(cluster_of(mesh, ns, &mp.destination, port), f));
        }
    }
    if !mirrors.is_empty() {
        action["request_mirror_policies"] = json!(mirrors);
    }
    if r.route.len() == 1 {
        let d = &r.route[0];
        action["cluster"] = json!(cluster_of(mesh, ns, &d.destination, port));
        if let Some(h) = &d.headers {
            // processDestination: appended to the rule's operations; its authority only when
            // the rule sets none.
            let a = apply_headers(out, h);
            if authority.is_none() {
                authority = a;
            }
        }
    } else {
        let clusters: Vec<Value> = r
            .route
            .iter()
            .filter(|d| d.weight.unwrap_or(0) > 0)
            .map(|d| {
                let mut c =
                    json!({"name": cluster_of(mesh, ns, &d.destination, port), "weight": d.weight.unwrap_or(0)});
                if let Some(h) = &d.headers
                    && let Some(a) = apply_headers(&mut c, h)
                {
                    c["host_rewrite_literal"] = json!(a);
                }
                c
            })
            .collect();
        action["weighted_clusters"] = json!({"clusters": clusters});
    }
    if let Some(a) = authority {
        action["host_rewrite_literal"] = json!(a);
    }
    match &r.retries {
        Some(rt) if rt.attempts == 0 => {}
        Some(rt) => {
            let mut p = retry_policy(
                rt.attempts,
                rt.retry_on.as_deref(),
                rt.per_try_timeout.as_deref().and_then(parse_duration),
            );
            if rt.retry_remote_localities == Some(true) {
                p["retry_priority"] = json!({"name": "envoy.retry_priorities.previous_priorities", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
                    "update_frequency": 2}});
            }
            action["retry_policy"] = p;
        }
        None => action["retry_policy"] = retry_policy(2, None, None),
    }
    action
}

fn percent(p: &Percent) -> Value {
    json!({"numerator": (p.value * 10000.0) as u64, "denominator": "MILLION"})
}

/// `TranslateRequestMirrorPolicy`.
fn mirror_policy(cluster: String, fraction: Value) -> Value {
    json!({"cluster": cluster, "runtime_fraction": {"default_value": fraction}, "trace_sampled": false})
}

/// `TranslateHeadersOperations`: request and response `set` (overwrite) then `add` (append),
/// each sorted by name, `remove` lists; pseudo-headers and `host` are not touched, and an
/// `:authority`/`host` value (set wins over add) becomes the host rewrite, returned. Appends to
/// what `target` (a route or a weighted cluster) already has.
fn apply_headers(target: &mut Value, h: &Headers) -> Option<String> {
    let mut authority = None;
    for (ops, add_key, remove_key) in [
        (h.request.as_ref(), "request_headers_to_add", "request_headers_to_remove"),
        (h.response.as_ref(), "response_headers_to_add", "response_headers_to_remove"),
    ] {
        let Some(ops) = ops else { continue };
        let (mut add, set_auth) = header_values(&ops.set, "OVERWRITE_IF_EXISTS_OR_ADD");
        let (more, add_auth) = header_values(&ops.add, "APPEND_IF_EXISTS_OR_ADD");
        add.extend(more);
        if add_key.starts_with("request") {
            authority = set_auth.or(add_auth);
        }
        let remove: Vec<Value> = remove_list(ops);
        if !add.is_empty() {
            let list = target[add_key].as_array().cloned().unwrap_or_default();
            target[add_key] = json!(list.into_iter().chain(add).collect::<Vec<_>>());
        }
        if !remove.is_empty() {
            let list = target[remove_key].as_array().cloned().unwrap_or_default();
            target[remove_key] = json!(list.into_iter().chain(remove).collect::<Vec<_>>());
        }
    }
    authority
}

fn is_internal(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

fn header_values(map: &std::collections::BTreeMap<String, String>, action: &str) -> (Vec<Value>, Option<String>) {
    let mut authority = None;
    let mut out = Vec::new();
    for (k, v) in map {
        if k.eq_ignore_ascii_case(":authority") || k.eq_ignore_ascii_case("host") {
            authority = Some(v.clone());
        }
        if is_internal(k) {
            continue;
        }
        out.push(json!({"header": {"key": k, "value": v}, "append_action": action}));
    }
    (out, authority)
}

fn remove_list(ops: &HeaderOperations) -> Vec<Value> {
    ops.remove.iter().filter(|k| !is_internal(k)).map(|k| json!(k)).collect()
}

/// `ApplyRedirect` (a plaintext listener: the default scheme is http).
fn redirect(rd: &Redirect, listen_port: u16) -> Value {
    let mut out = json!({});
    if let Some(a) = rd.authority.as_deref().filter(|a| !a.is_empty()) {
        out["host_redirect"] = json!(a);
    }
    if let Some(u) = rd.uri.as_deref().filter(|u| !u.is_empty()) {
        out["path_redirect"] = json!(u);
    }
    if let Some(s) = rd.scheme.as_deref().filter(|s| !s.is_empty()) {
        out["scheme_redirect"] = json!(s);
    }
    let port = match (rd.port, rd.derive_port.as_deref()) {
        (Some(p), _) => Some(p),
        (None, Some("FROM_REQUEST_PORT")) => Some(u32::from(listen_port)),
        (None, Some(_)) => Some(0),
        _ => None,
    };
    if let Some(mut p) = port {
        let scheme = rd.scheme.as_deref().filter(|s| !s.is_empty()).unwrap_or("http");
        if (p == 80 && scheme == "http") || (p == 443 && scheme == "https") {
            p = 0;
        }
        if p != 0 {
            out["port_redirect"] = json!(p);
        }
    }
    // Mesh::check refuses other codes.
    let code = match rd.redirect_code.unwrap_or(301) {
        302 => "FOUND",
        303 => "SEE_OTHER",
        307 => "TEMPORARY_REDIRECT",
        308 => "PERMANENT_REDIRECT",
        _ => "MOVED_PERMANENTLY",
    };
    out["response_code"] = json!(code);
    out
}

/// `ApplyDirectResponse`.
fn direct_response(d: &DirectResponse) -> Value {
    let mut out = json!({"status": d.status});
    if let Some(b) = &d.body {
        if let Some(s) = &b.string {
            out["body"] = json!({"inline_string": s});
        } else if let Some(bytes) = &b.bytes {
            out["body"] = json!({"inline_bytes": bytes});
        }
    }
    out
}

/// `GetRouteOperation`: `HOST:PORT/path` for a single cluster, `VS:LISTENPORT/path` otherwise.
fn operation(route: &Value, vs_name: &str, port: u16) -> String {
    let m = &route["match"];
    let path = if let Some(p) = m["prefix"].as_str() {
        format!("{p}*")
    } else if let Some(p) = m["path"].as_str() {
        p.to_string()
    } else if let Some(re) = m["safe_regex"]["regex"].as_str() {
        re.to_string()
    } else {
        "/*".to_string()
    };
    if let Some(c) = route["route"]["cluster"].as_str() {
        let parts: Vec<&str> = c.split('|').collect();
        if let [_, p, _, host] = parts[..] {
            return format!("{host}:{p}{path}");
        }
    }
    format!("{vs_name}:{port}{path}")
}

/// `TranslateRouteMatch`.
fn route_match(m: Option<&HttpMatch>) -> Value {
    let Some(m) = m else { return json!({"prefix": "/"}) };
    let mut out = match &m.uri {
        Some(StringMatch { exact: Some(e), .. }) => json!({"path": e}),
        Some(StringMatch { prefix: Some(p), .. }) => json!({"prefix": p}),
        Some(StringMatch { regex: Some(re), .. }) => json!({"safe_regex": {"regex": re}}),
        _ => json!({"prefix": "/"}),
    };
    let mut headers: Vec<Value> = m.headers.iter().map(|(h, sm)| header_matcher(h, sm)).collect();
    for (h, sm) in &m.without_headers {
        let mut hm = header_matcher(h, sm);
        hm["invert_match"] = json!(true);
        if !is_present_match(sm) {
            hm["treat_missing_header_as_empty"] = json!(true);
        }
        headers.push(hm);
    }
    headers.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    out["case_sensitive"] = json!(!m.ignore_uri_case);
    for (name, sm) in [(":method", &m.method), (":authority", &m.authority), (":scheme", &m.scheme)] {
        if let Some(sm) = sm {
            headers.push(header_matcher(name, sm));
        }
    }
    if !headers.is_empty() {
        out["headers"] = json!(headers);
    }
    let query: Vec<Value> = m
        .query_params
        .iter()
        .map(|(q, sm)| {
            if is_present_match(sm) {
                json!({"name": q, "present_match": true})
            } else {
                json!({"name": q, "string_match": string_match(sm)})
            }
        })
        .collect();
    if !query.is_empty() {
        out["query_parameters"] = json!(query);
    }
    out
}

/// `canBeConvertedToPresentMatch`: no match type, or the regex `*`.
fn is_present_match(sm: &StringMatch) -> bool {
    (sm.exact.is_none() && sm.prefix.is_none() && sm.regex.is_none()) || sm.regex.as_deref() == Some("*")
}

fn header_matcher(name: &str, sm: &StringMatch) -> Value {
    if is_present_match(sm) {
        json!({"name": name, "present_match": true})
    } else {
        json!({"name": name, "string_match": string_match(sm)})
    }
}

/// `ConvertToEnvoyMatch`.
pub(super) fn string_match(m: &StringMatch) -> Value {
    if let Some(e) = &m.exact {
        json!({"exact": e})
    } else if let Some(p) = &m.prefix {
        json!({"prefix": p})
    } else {
        json!({"safe_regex": {"regex": m.regex.clone().unwrap_or_default()}})
    }
}
