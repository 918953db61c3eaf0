//! Checks of the VirtualService rule and DestinationRule policy fields beyond plain routing:
//! every field is either translated as istiod does (xds/routes/translate.rs, xds/policy.rs) or
//! refused here with the file, the document, the field and the reason.

use super::{Mesh, fail, fqdn};
use crate::manifest::{
    Destination, Headers, HttpMatch, HttpRoute, ManifestError, Resource, StringMatch, TrafficPolicy,
    VirtualServiceSpec, parse_duration,
};
use crate::manifest::{DestinationRuleSpec, LoadBalancer};

/// One refusal: the field path under the rule and the reason.
type Refusal = (String, String);

fn refuse(field: impl Into<String>, reason: impl Into<String>) -> Result<(), Refusal> {
    Err((field.into(), reason.into()))
}

impl Mesh {
    /// `spec.http[i]` of `vs`: what it does (a route to destinations, a redirect or a direct
    /// response, never two), its matches, mirrors, rewrite, redirect, direct response and header
    /// operations. Route destinations are checked by the caller.
    pub(super) fn check_http_rule(
        &self,
        vs: &Resource<VirtualServiceSpec>,
        i: usize,
        r: &HttpRoute,
    ) -> Result<(), ManifestError> {
        self.http_rule(&vs.namespace, r).map_err(|(f, reason)| {
            fail(&vs.file, format!("VirtualService {}: spec.http[{i}].{f}", vs.meta.name), reason)
        })
    }

    fn http_rule(&self, ns: &str, r: &HttpRoute) -> Result<(), Refusal> {
        if r.cors_policy.is_some() {
            refuse("corsPolicy", "not supported by the demo control plane (its listeners have no CORS filter)")?;
        }
        if r.mirror_percent.is_some() {
            refuse("mirrorPercent", "deprecated in Istio and not supported: use mirrorPercentage")?;
        }
        if r.delegate.is_some() {
            refuse("delegate", "delegate VirtualServices are not supported by the demo control plane")?;
        }
        match (r.route.is_empty(), &r.redirect, &r.direct_response) {
            (true, None, None) => {
                refuse("route", "at least one destination is needed (or a redirect or directResponse)")?
            }
            (false, Some(_), _) => refuse("redirect", "a rule cannot have both route and redirect")?,
            (false, _, Some(_)) => refuse("directResponse", "a rule cannot have both route and directResponse")?,
            (_, Some(_), Some(_)) => refuse("directResponse", "a rule cannot have both redirect and directResponse")?,
            _ => {}
        }
        if r.route.is_empty() {
            // istiod only applies these to a route to destinations: refuse rather than drop them.
            let what = if r.redirect.is_some() { "redirect" } else { "directResponse" };
            for (set, f) in [
                (r.rewrite.is_some(), "rewrite"),
                (r.mirror.is_some(), "mirror"),
                (!r.mirrors.is_empty(), "mirrors"),
                (r.retries.is_some(), "retries"),
                (r.timeout.is_some(), "timeout"),
            ] {
                if set {
                    refuse(f, format!("has no effect on a {what} rule"))?;
                }
            }
        }
        for (j, m) in r.matches.iter().enumerate() {
            check_match(m).map_err(|(f, reason)| (format!("match[{j}].{f}"), reason))?;
        }
        if let Some(d) = &r.mirror {
            self.destination(ns, d).map_err(|(f, reason)| (format!("mirror.{f}"), reason))?;
        } else if r.mirror_percentage.is_some() {
            refuse("mirrorPercentage", "set without a mirror")?;
        }
        check_percent(r.mirror_percentage.as_ref().map(|p| p.value), "mirrorPercentage.value")?;
        for (j, m) in r.mirrors.iter().enumerate() {
            self.destination(ns, &m.destination)
                .map_err(|(f, reason)| (format!("mirrors[{j}].destination.{f}"), reason))?;
            check_percent(m.percentage.as_ref().map(|p| p.value), &format!("mirrors[{j}].percentage.value"))?;
        }
        if let Some(rw) = &r.rewrite
            && rw.uri.is_some()
            && rw.uri_regex_rewrite.is_some()
        {
            refuse("rewrite", "give uri or uriRegexRewrite, not both")?;
        }
        if let Some(rd) = &r.redirect {
            if let Some(c) = rd.redirect_code
                && ![301, 302, 303, 307, 308].contains(&c)
            {
                refuse(
                    "redirect.redirectCode",
                    format!("{c} is not a redirect code Istio supports (301, 302, 303, 307, 308)"),
                )?;
            }
            if rd.port.is_some() && rd.derive_port.is_some() {
                refuse("redirect", "give port or derivePort, not both")?;
            }
            if let Some(d) = rd.derive_port.as_deref()
                && !["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"].contains(&d)
            {
                refuse("redirect.derivePort", format!("{d} is not FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT"))?;
            }
            if let Some(s) = rd.scheme.as_deref()
                && !["http", "https"].contains(&s)
            {
                refuse("redirect.scheme", format!("'{s}' is not http or https"))?;
            }
            if rd.port.is_some_and(|p| p == 0 || p > 65535) {
                refuse("redirect.port", "not a port number")?;
            }
        }
        if let Some(d) = &r.direct_response {
            if !(200..=599).contains(&d.status) {
                refuse("directResponse.status", format!("{} is not an HTTP status (200-599)", d.status))?;
            }
            if let Some(b) = &d.body {
                match (&b.string, &b.bytes) {
                    (Some(_), Some(_)) => refuse("directResponse.body", "give string or bytes, not both")?,
                    (None, Some(bytes)) if !is_base64(bytes) => {
                        refuse("directResponse.body.bytes", "not base64")?;
                    }
                    _ => {}
                }
            }
        }
        if let Some(h) = &r.headers {
            check_headers(h).map_err(|(f, reason)| (format!("headers.{f}"), reason))?;
        }
        for (j, d) in r.route.iter().enumerate() {
            if let Some(h) = &d.headers {
                check_headers(h).map_err(|(f, reason)| (format!("route[{j}].headers.{f}"), reason))?;
            }
        }
        if let Some(rt) = &r.retries
            && rt.per_try_timeout.as_deref().is_some_and(|t| parse_duration(t).is_none())
        {
            refuse("retries.perTryTimeout", "bad duration")?;
        }
        Ok(())
    }

    /// A mirror's destination: a known service, port and subset.
    fn destination(&self, ns: &str, d: &Destination) -> Result<(), Refusal> {
        let host = fqdn(&d.host, ns);
        let Some(svc) = self.service(&host) else { return refuse("host", format!("no Service '{host}'")) };
        match &d.port {
            Some(p) if !svc.ports.iter().any(|sp| sp.port == p.number) => {
                refuse("port.number", format!("Service '{host}' has no port {}", p.number))?;
            }
            None if svc.ports.len() != 1 => refuse("port", format!("Service '{host}' has several ports: name one"))?,
            _ => {}
        }
        if let Some(subset) = &d.subset {
            let known =
                self.destination_rule(&host).is_some_and(|dr| dr.spec.subsets.iter().any(|s| &s.name == subset));
            if !known {
                refuse("subset", format!("no DestinationRule for '{host}' defines subset '{subset}'"))?;
            }
        }
        Ok(())
    }

    /// The DestinationRule's top-level policy, its port-level settings, and each subset's.
    pub(super) fn check_traffic_policies(&self, dr: &Resource<DestinationRuleSpec>) -> Result<(), ManifestError> {
        let at = format!("DestinationRule {}: spec.", dr.meta.name);
        let mut policies: Vec<(String, &TrafficPolicy)> = Vec::new();
        if let Some(tp) = &dr.spec.traffic_policy {
            policies.push(("trafficPolicy".into(), tp));
        }
        for (i, s) in dr.spec.subsets.iter().enumerate() {
            if let Some(tp) = &s.traffic_policy {
                policies.push((format!("subsets[{i}].trafficPolicy"), tp));
            }
        }
        for (path, tp) in policies {
            let err = |(f, reason): Refusal| fail(&dr.file, format!("{at}{path}.{f}"), reason);
            check_policy(tp.load_balancer.as_ref(), tp.tls.as_ref().map(|t| t.mode.as_str()), tp).map_err(err)?;
            for (j, p) in tp.port_level_settings.iter().enumerate() {
                let as_policy = TrafficPolicy {
                    load_balancer: p.load_balancer.clone(),
                    connection_pool: p.connection_pool.clone(),
                    outlier_detection: p.outlier_detection.clone(),
                    tls: p.tls.clone(),
                    port_level_settings: Vec::new(),
                };
                check_policy(p.load_balancer.as_ref(), p.tls.as_ref().map(|t| t.mode.as_str()), &as_policy)
                    .map_err(|(f, reason)| err((format!("portLevelSettings[{j}].{f}"), reason)))?;
                if tp.port_level_settings[..j].iter().any(|q| q.port.number == p.port.number) {
                    return Err(err((format!("portLevelSettings[{j}].port.number"), "port given twice".into())));
                }
            }
        }
        Ok(())
    }
}

fn check_policy(lb: Option<&LoadBalancer>, tls: Option<&str>, tp: &TrafficPolicy) -> Result<(), Refusal> {
    if let Some(lb) = lb {
        match lb.simple.as_deref() {
            None | Some("ROUND_ROBIN" | "LEAST_REQUEST" | "LEAST_CONN" | "RANDOM" | "UNSPECIFIED") => {}
            Some("PASSTHROUGH") => refuse(
                "loadBalancer.simple",
                "PASSTHROUGH needs the original destination address, which the demo's plain-ports mode does not have",
            )?,
            Some(other) => refuse("loadBalancer.simple", format!("{other} is not a simple load balancer Istio knows"))?,
        }
        if lb.consistent_hash.is_some() {
            refuse("loadBalancer.consistentHash", "consistent hashing is not supported by the demo control plane yet")?;
        }
        if lb.locality_lb_setting.is_some() {
            refuse("loadBalancer.localityLbSetting", "the demo mesh has no localities")?;
        }
        if lb.warmup_duration_secs.is_some() || lb.warmup.is_some() {
            refuse("loadBalancer.warmup", "slow start is not supported by remora")?;
        }
    }
    if let Some(mode) = tls
        && mode != "ISTIO_MUTUAL"
    {
        refuse("tls.mode", format!("{mode} is not supported (only ISTIO_MUTUAL)"))?;
    }
    let tcp = tp.connection_pool.as_ref().and_then(|c| c.tcp.as_ref());
    let http = tp.connection_pool.as_ref().and_then(|c| c.http.as_ref());
    let od = tp.outlier_detection.as_ref();
    let durations = [
        ("connectionPool.tcp.connectTimeout", tcp.and_then(|t| t.connect_timeout.as_deref())),
        ("connectionPool.http.idleTimeout", http.and_then(|h| h.idle_timeout.as_deref())),
        ("outlierDetection.interval", od.and_then(|o| o.interval.as_deref())),
        ("outlierDetection.baseEjectionTime", od.and_then(|o| o.base_ejection_time.as_deref())),
    ];
    for (f, d) in durations {
        if let Some(d) = d
            && parse_duration(d).is_none()
        {
            refuse(f, format!("bad duration '{d}'"))?;
        }
    }
    if od.and_then(|o| o.max_ejection_percent).is_some_and(|p| p > 100) {
        refuse("outlierDetection.maxEjectionPercent", "more than 100")?;
    }
    Ok(())
}

fn check_percent(v: Option<f64>, field: &str) -> Result<(), Refusal> {
    match v {
        Some(v) if !(0.0..=100.0).contains(&v) => refuse(field, format!("{v} is not a percentage (0-100)")),
        _ => Ok(()),
    }
}

/// How many of exact, prefix and regex are set.
fn kinds(sm: &StringMatch) -> usize {
    [&sm.exact, &sm.prefix, &sm.regex].iter().filter(|o| o.is_some()).count()
}

fn check_match(m: &HttpMatch) -> Result<(), Refusal> {
    for (set, f, why) in [
        (
            m.gateways.is_some(),
            "gateways",
            "per-match gateways are not supported (bind the VirtualService with spec.gateways)",
        ),
        (m.port.is_some(), "port", "per-match ports are not supported by the demo control plane"),
        (m.source_namespace.is_some(), "sourceNamespace", "not supported by the demo control plane (use sourceLabels)"),
    ] {
        if set {
            refuse(f, why)?;
        }
    }
    let one = "give exactly one of exact, prefix, regex";
    for (f, sm) in [("uri", &m.uri), ("method", &m.method), ("authority", &m.authority), ("scheme", &m.scheme)] {
        if let Some(sm) = sm
            && kinds(sm) != 1
        {
            refuse(f, one)?;
        }
    }
    // An empty match (or the regex `*`) on a header is a presence match.
    for (what, map) in [("headers", &m.headers), ("withoutHeaders", &m.without_headers)] {
        for (h, sm) in map {
            if kinds(sm) > 1 {
                refuse(format!("{what}.{h}"), "give at most one of exact, prefix, regex")?;
            }
            if h.is_empty() || h.chars().any(|c| c.is_ascii_uppercase()) {
                refuse(format!("{what}.{h}"), "header names must be lowercase (Istio refuses others)")?;
            }
        }
    }
    for (q, sm) in &m.query_params {
        if sm.prefix.is_some() {
            refuse(format!("queryParams.{q}"), "prefix matching of query parameters is not supported by Istio")?;
        }
        if kinds(sm) > 1 {
            refuse(format!("queryParams.{q}"), "give exactly one of exact, regex")?;
        }
    }
    Ok(())
}

fn check_headers(h: &Headers) -> Result<(), Refusal> {
    for (side, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(ops) = ops else { continue };
        for (op, names) in [
            ("set", ops.set.keys().collect::<Vec<_>>()),
            ("add", ops.add.keys().collect()),
            ("remove", ops.remove.iter().collect()),
        ] {
            for name in names {
                let authority = name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host");
                // istiod turns a request :authority/host set or add into a host rewrite and drops
                // every other pseudo-header silently: refuse what it would drop.
                if (name.starts_with(':') || authority) && !(authority && side == "request" && op != "remove") {
                    refuse(format!("{side}.{op}.{name}"), "pseudo-headers and host cannot be changed here")?;
                }
                if name.is_empty() {
                    refuse(format!("{side}.{op}"), "empty header name")?;
                }
            }
        }
    }
    Ok(())
}

fn is_base64(s: &str) -> bool {
    s.len().is_multiple_of(4)
        && s.trim_end_matches('=').bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        && s.len() - s.trim_end_matches('=').len() <= 2
}
