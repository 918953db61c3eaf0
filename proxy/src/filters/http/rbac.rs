//! `envoy.filters.http.rbac`: allows or denies each request with the shared RBAC engine
//! (`filters::common::rbac`). Denied requests get Envoy's local reply, `403` with the body
//! `RBAC: access denied`. Shadow rules are evaluated and counted but never enforced.
//! `RBACPerRoute` on a route, virtual host or route table overrides the engines (or, with no
//! `rbac`, turns the filter off there).
//!
//! Stats: `http.<hcm prefix>.rbac.[<rules_stat_prefix>.]allowed|denied`,
//! `http.<hcm prefix>.rbac.[<shadow_rules_stat_prefix>.]shadow_allowed|shadow_denied`, and with
//! `track_per_rule_stats` (of the filter, or of the per-route override that decided) the
//! `...policy.<name>.<result>` counters. Dynamic metadata (namespace
//! `envoy.filters.http.rbac`): `<rules_stat_prefix>enforced_effective_policy_id`,
//! `<rules_stat_prefix>enforced_engine_result`, `<shadow_rules_stat_prefix>shadow_effective_policy_id`,
//! `<shadow_rules_stat_prefix>shadow_engine_result`; a LOG engine sets `envoy.common`
//! `access_log_hint`.

use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::{
    Rbac as RbacProto, RbacPerRoute as RbacPerRouteProto,
};
use envoy_types::pb::google::protobuf::Any;
use http::StatusCode;
use http::request::Parts;

use crate::config::{BuildCtx, ConfigError};
use crate::filters::common::DynamicMetadata;
use crate::filters::common::rbac::{Context, Decision, Engine, Input, RbacStats};
use crate::filters::http::{FilterAction, HttpFilter, RequestCtx};
use crate::http::local_reply::LocalReply;
use crate::matcher::RequestHeaders;
use crate::stats::Store;

pub const NAME: &str = "envoy.filters.http.rbac";
pub const TYPE: &str = "envoy.extensions.filters.http.rbac.v3.RBAC";
pub const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.rbac.v3.RBACPerRoute";
/// The dynamic metadata namespace the filter writes.
pub const METADATA_NAMESPACE: &str = "envoy.filters.http.rbac";
const COMMON_NAMESPACE: &str = "envoy.common";
pub const DENIED_BODY: &str = "RBAC: access denied";

/// The enforced and shadow engines of a filter or of a per-route override.
#[derive(Debug, Clone, Default)]
pub struct RbacEngines {
    pub enforced: Option<Arc<Engine>>,
    pub shadow: Option<Arc<Engine>>,
    /// `track_per_rule_stats` of the config these engines come from (a per-route override
    /// decides for itself; the counters keep the filter's stat prefixes).
    pub per_rule_stats: bool,
}

impl RbacEngines {
    pub fn from_proto(p: &RbacProto, field: &str) -> Result<Self, ConfigError> {
        let f = |n: &str| if field.is_empty() { n.to_string() } else { format!("{field}.{n}") };
        Ok(RbacEngines {
            enforced: Engine::from_either(
                p.rules.as_ref(),
                p.matcher.as_ref(),
                Context::Http,
                &f("rules"),
                &f("matcher"),
            )?,
            shadow: Engine::from_either(
                p.shadow_rules.as_ref(),
                p.shadow_matcher.as_ref(),
                Context::Http,
                &f("shadow_rules"),
                &f("shadow_matcher"),
            )?,
            per_rule_stats: p.track_per_rule_stats,
        })
    }
}

/// A compiled `RBACPerRoute`: `None` turns the filter off for the route.
#[derive(Debug)]
pub struct RbacPerRoute(pub Option<RbacEngines>);

impl RbacPerRoute {
    pub fn from_proto(p: &RbacPerRouteProto) -> Result<Self, ConfigError> {
        match &p.rbac {
            None => Ok(RbacPerRoute(None)),
            Some(r) => Ok(RbacPerRoute(Some(RbacEngines::from_proto(r, "rbac")?))),
        }
    }
}

/// The `typed_per_filter_config` factory.
pub fn per_route_factory(any: &Any, _cx: &BuildCtx) -> Result<Arc<dyn std::any::Any + Send + Sync>, ConfigError> {
    let p: RbacPerRouteProto = xds_client::any::unpack(any).map_err(|e| ConfigError::new("", e.to_string()))?;
    Ok(Arc::new(RbacPerRoute::from_proto(&p)?))
}

/// The HTTP filter factory.
pub fn factory(name: &str, any: &Any, cx: &BuildCtx) -> Result<Arc<dyn HttpFilter>, ConfigError> {
    let p: RbacProto = xds_client::any::unpack(any).map_err(|e| ConfigError::new("typed_config", e.to_string()))?;
    Ok(Arc::new(RbacFilter::from_proto(name, &p, cx).map_err(|e| e.within("typed_config"))?))
}

/// Dynamic metadata keys, with the stat prefixes prepended as Envoy does.
#[derive(Debug)]
struct MetadataKeys {
    enforced_policy: String,
    enforced_result: String,
    shadow_policy: String,
    shadow_result: String,
}

/// A configured `envoy.filters.http.rbac`.
pub struct RbacFilter {
    name: String,
    engines: RbacEngines,
    rules_stat_prefix: String,
    shadow_rules_stat_prefix: String,
    keys: MetadataKeys,
    store: Arc<Store>,
    /// Made with the filter when the owning HCM's stat prefix is known at build time (always,
    /// inside an HCM), else on the first request.
    stats: OnceLock<RbacStats>,
}

impl RbacFilter {
    pub fn from_proto(name: &str, p: &RbacProto, cx: &BuildCtx) -> Result<Self, ConfigError> {
        let rp = &p.rules_stat_prefix;
        let sp = &p.shadow_rules_stat_prefix;
        let stats = match &cx.http_stat_prefix {
            Some(hcm) => OnceLock::from(RbacStats::new(&cx.stats, &format!("http.{hcm}."), rp, sp)),
            None => OnceLock::new(),
        };
        Ok(RbacFilter {
            name: name.to_string(),
            engines: RbacEngines::from_proto(p, "")?,
            rules_stat_prefix: rp.clone(),
            shadow_rules_stat_prefix: sp.clone(),
            keys: MetadataKeys {
                enforced_policy: format!("{rp}enforced_effective_policy_id"),
                enforced_result: format!("{rp}enforced_engine_result"),
                shadow_policy: format!("{sp}shadow_effective_policy_id"),
                shadow_result: format!("{sp}shadow_engine_result"),
            },
            store: cx.stats.clone(),
            stats,
        })
    }

    /// The counters under `http.<hcm_prefix>.`, created once (a filter belongs to one HCM).
    pub fn stats(&self, hcm_prefix: &str) -> &RbacStats {
        self.stats.get_or_init(|| {
            RbacStats::new(
                &self.store,
                &format!("http.{hcm_prefix}."),
                &self.rules_stat_prefix,
                &self.shadow_rules_stat_prefix,
            )
        })
    }

    /// Evaluates the engines for a request: `(shadow, enforced)` decisions.
    pub fn decide(engines: &RbacEngines, input: &Input<'_>) -> (Option<Decision>, Option<Decision>) {
        (engines.shadow.as_ref().map(|e| e.evaluate(input)), engines.enforced.as_ref().map(|e| e.evaluate(input)))
    }
}

fn result_str(allowed: bool) -> &'static str {
    if allowed { "allowed" } else { "denied" }
}

impl HttpFilter for RbacFilter {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(&self, cx: &mut RequestCtx<'_>, req: &mut Parts) -> FilterAction {
        if cx.disabled(&self.name) {
            return FilterAction::Continue;
        }
        let engines = match cx.per_route::<RbacPerRoute>(&self.name) {
            Some(RbacPerRoute(None)) => return FilterAction::Continue,
            Some(RbacPerRoute(Some(e))) => e.clone(),
            None => self.engines.clone(),
        };
        if engines.enforced.is_none() && engines.shadow.is_none() {
            return FilterAction::Continue;
        }
        let (shadow, enforced) = {
            let authority = match req.uri.authority() {
                Some(a) => a.as_str(),
                None => req.headers.get(http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or(""),
            };
            let scheme = req.uri.scheme_str().unwrap_or(if cx.conn.tls_version.is_some() { "https" } else { "http" });
            let headers = RequestHeaders {
                method: req.method.as_str(),
                path: req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                authority,
                scheme,
                headers: &req.headers,
            };
            let input = Input {
                local: cx.local,
                direct_remote: cx.direct_remote,
                remote: cx.remote,
                conn: cx.conn,
                headers: Some(&headers),
                metadata: cx.state.get::<DynamicMetadata>(),
            };
            RbacFilter::decide(&engines, &input)
        };
        let stats = self.stats(cx.stat_prefix);
        let md = crate::filters::common::metadata_mut(&mut cx.state);
        if let Some(d) = &shadow {
            tracing::debug!(target: "remora::rbac", "shadow {}", result_str(d.allowed));
            stats.record(d, true, engines.per_rule_stats);
            if let Some(p) = &d.policy {
                md.set_string(METADATA_NAMESPACE, self.keys.shadow_policy.as_str(), p.as_ref());
            }
            md.set_string(METADATA_NAMESPACE, self.keys.shadow_result.as_str(), result_str(d.allowed));
        }
        let Some(d) = enforced else {
            return FilterAction::Continue;
        };
        if let Some(log) = d.log {
            md.set_bool(COMMON_NAMESPACE, "access_log_hint", log);
        }
        if let Some(p) = &d.policy {
            md.set_string(METADATA_NAMESPACE, self.keys.enforced_policy.as_str(), p.as_ref());
        }
        md.set_string(METADATA_NAMESPACE, self.keys.enforced_result.as_str(), result_str(d.allowed));
        stats.record(&d, false, engines.per_rule_stats);
        if d.allowed {
            tracing::debug!(target: "remora::rbac", "enforced allowed");
            FilterAction::Continue
        } else {
            tracing::debug!(target: "remora::rbac", "enforced denied ({})", d.denied_details);
            FilterAction::Respond(LocalReply::new(StatusCode::FORBIDDEN, DENIED_BODY, "", d.denied_details))
        }
    }
}

#[cfg(test)]
mod tests;
