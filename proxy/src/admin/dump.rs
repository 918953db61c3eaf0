//! Admin views of the running config: `/config_dump` in Envoy's ConfigDump shape, `/clusters`
//! and `/listeners` in Envoy's text and JSON formats.

use bytes::Bytes;
use http::{Response, header};
use http_body_util::Full;

use crate::admin::AdminState;

fn timestamp(t: std::time::SystemTime) -> serde_json::Value {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    // RFC 3339 in UTC, as protobuf's Timestamp JSON.
    let days = secs / 86400;
    let rem = secs % 86400;
    let (y, m, dd) = civil_from_days(days as i64);
    serde_json::Value::String(format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    ))
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Renders one resource; a resource whose typed configs cannot be rendered (a type missing from
/// the descriptor pool) becomes its name and the reason instead of failing the whole dump.
fn render<T: prost::Message + prost::Name>(pool: &prost_reflect::DescriptorPool, msg: &T) -> serde_json::Value {
    match xds_client::json::message_to_json(pool, msg) {
        Ok(mut v) => {
            if let serde_json::Value::Object(m) = &mut v {
                m.insert("@type".into(), serde_json::Value::String(T::type_url()));
            }
            v
        }
        Err(e) => serde_json::json!({ "@type": T::type_url(), "error": e.to_string() }),
    }
}

fn section(type_name: &str, mut fields: serde_json::Map<String, serde_json::Value>) -> serde_json::Value {
    fields.insert("@type".into(), serde_json::Value::String(format!("type.googleapis.com/{type_name}")));
    serde_json::Value::Object(fields)
}

/// Builds Envoy's `/config_dump` JSON: bootstrap, clusters, (endpoints), listeners, routes.
pub fn config_dump(
    st: &AdminState,
    resource: Option<&str>,
    name_regex: Option<&str>,
    include_eds: bool,
) -> Result<serde_json::Value, String> {
    use serde_json::{Map, Value, json};
    let re = match name_regex {
        Some(r) if !r.is_empty() => Some(regex::Regex::new(r).map_err(|e| e.to_string())?),
        _ => None,
    };
    let keep = |n: &str| re.as_ref().is_none_or(|r| r.is_match(n));
    let view = st.control.manager.dump();
    let now = timestamp(std::time::SystemTime::now());
    let pool = xds_client::descriptors::pool();
    let result = (|| {
        let mut boot = Map::new();
        boot.insert("bootstrap".into(), render(&pool, &st.bootstrap));
        boot.insert("last_updated".into(), now.clone());

        let static_clusters: Vec<Value> = view
            .static_clusters
            .iter()
            .filter(|c| keep(&c.name))
            .map(|c| json!({"cluster": render(&pool, c), "last_updated": now}))
            .collect();
        let active: Vec<Value> = view
            .clusters
            .iter()
            .filter(|(_, c, w)| !w && keep(&c.name))
            .map(|(v, c, _)| json!({"version_info": v, "cluster": render(&pool, c), "last_updated": now}))
            .collect();
        let warming: Vec<Value> = view
            .clusters
            .iter()
            .filter(|(_, c, w)| *w && keep(&c.name))
            .map(|(v, c, _)| json!({"version_info": v, "cluster": render(&pool, c), "last_updated": now}))
            .collect();
        let mut clusters = Map::new();
        if !view.cds_version.is_empty() {
            clusters.insert("version_info".into(), json!(view.cds_version));
        }
        clusters.insert("static_clusters".into(), json!(static_clusters));
        clusters.insert("dynamic_active_clusters".into(), json!(active));
        clusters.insert("dynamic_warming_clusters".into(), json!(warming));

        let static_listeners: Vec<Value> = view
            .static_listeners
            .iter()
            .filter(|l| keep(&l.name))
            .map(|l| json!({"listener": render(&pool, l), "last_updated": now}))
            .collect();
        let dynamic_listeners: Vec<Value> = view
            .listeners
            .iter()
            .filter(|(_, l, _)| keep(&l.name))
            .map(|(v, l, w)| {
                let state = json!({"version_info": v, "listener": render(&pool, l), "last_updated": now});
                if *w {
                    json!({"name": l.name, "warming_state": state})
                } else {
                    json!({"name": l.name, "active_state": state})
                }
            })
            .collect();
        let mut listeners = Map::new();
        if !view.lds_version.is_empty() {
            listeners.insert("version_info".into(), json!(view.lds_version));
        }
        listeners.insert("static_listeners".into(), json!(static_listeners));
        listeners.insert("dynamic_listeners".into(), json!(dynamic_listeners));

        let routes: Vec<Value> = view
            .routes
            .iter()
            .filter(|(_, r, _)| keep(&r.name))
            .map(
                |(v, r, t)| json!({"version_info": v, "route_config": render(&pool, r), "last_updated": timestamp(*t)}),
            )
            .collect();
        let mut route_section = Map::new();
        route_section.insert("dynamic_route_configs".into(), json!(routes));

        let mut configs = vec![
            section("envoy.admin.v3.BootstrapConfigDump", boot),
            section("envoy.admin.v3.ClustersConfigDump", clusters.clone()),
        ];
        if include_eds {
            let eps: Vec<Value> = view
                .endpoints
                .iter()
                .filter(|(_, c)| keep(&c.cluster_name))
                .map(|(v, c)| json!({"version_info": v, "endpoint_config": render(&pool, c), "last_updated": now}))
                .collect();
            let mut m = Map::new();
            m.insert("dynamic_endpoint_configs".into(), json!(eps));
            configs.push(section("envoy.admin.v3.EndpointsConfigDump", m));
        }
        configs.push(section("envoy.admin.v3.ListenersConfigDump", listeners.clone()));
        configs.push(section("envoy.admin.v3.RoutesConfigDump", route_section.clone()));
        if let Some(r) = resource.filter(|r| !r.is_empty()) {
            // `?resource=dynamic_active_clusters` etc.: that field's entries, flattened.
            let found = [&clusters, &listeners, &route_section].into_iter().find_map(|m| m.get(r).cloned());
            return match found {
                Some(Value::Array(items)) => Ok(json!({ "configs": items })),
                _ => Err(format!("{r} not found in config dump")),
            };
        }
        Ok(json!({ "configs": configs }))
    })();
    drop(pool);
    xds_client::descriptors::release_memory();
    result
}

fn reply(body: String, json: bool) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    let ct = if json { "application/json" } else { "text/plain; charset=UTF-8" };
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(ct));
    r
}

/// A host's `health_status` in `/clusters?format=json`: Envoy's `HostHealthStatus`, only the
/// flags that are set.
fn health_status_json(h: &crate::upstream::host::Host) -> serde_json::Value {
    use crate::upstream::host::flag;
    let f = h.flags();
    let eds = if f & flag::FAILED_EDS_HEALTH != 0 {
        "UNHEALTHY"
    } else if f & flag::EDS_STATUS_DRAINING != 0 {
        "DRAINING"
    } else if f & flag::DEGRADED_EDS_HEALTH != 0 {
        "DEGRADED"
    } else {
        "HEALTHY"
    };
    let mut m = serde_json::Map::new();
    for (bit, name, on) in [
        (flag::FAILED_ACTIVE_HC, "failed_active_health_check", false),
        (flag::FAILED_OUTLIER_CHECK, "failed_outlier_check", h.ejected()),
        (flag::DEGRADED_ACTIVE_HC, "failed_active_degraded_check", false),
        (flag::PENDING_DYNAMIC_REMOVAL, "pending_dynamic_removal", false),
        (flag::PENDING_ACTIVE_HC, "pending_active_hc", false),
        (flag::EXCLUDED_VIA_IMMEDIATE_HC_FAIL, "excluded_via_immediate_hc_fail", false),
        (flag::ACTIVE_HC_TIMEOUT, "active_hc_timeout", false),
    ] {
        if on || f & bit != 0 {
            m.insert(name.into(), true.into());
        }
    }
    m.insert("eds_health_status".into(), eds.into());
    serde_json::Value::Object(m)
}

/// `/clusters`: Envoy's `name::key::value` lines, or JSON.
pub fn clusters(st: &AdminState, json: bool) -> Response<Full<Bytes>> {
    let snap = st.control.shared.clusters.load_full();
    let mut names: Vec<_> = snap.clusters.keys().cloned().collect();
    names.sort();
    if json {
        let mut statuses = Vec::new();
        for n in &names {
            let Some(c) = snap.clusters.get(n) else {
                continue;
            };
            let hosts = c.hosts.load();
            let hs: Vec<_> = hosts
                .all
                .iter()
                .map(|h| {
                    serde_json::json!({
                        "address": {"socket_address": {"address": h.address.ip().to_string(), "port_value": h.address.port()}},
                        "hostname": &*h.hostname,
                        "weight": h.weight,
                        "priority": h.priority,
                        "health_status": health_status_json(h),
                    })
                })
                .collect();
            statuses.push(serde_json::json!({"name": &**n, "added_via_api": false, "host_statuses": hs}));
        }
        let body = serde_json::to_string_pretty(&serde_json::json!({"cluster_statuses": statuses})).unwrap_or_default();
        return reply(body, true);
    }
    let mut out = String::new();
    for n in &names {
        let Some(c) = snap.clusters.get(n) else {
            continue;
        };
        out.push_str(&format!("{n}::observability_name::{n}\n"));
        if let Some(d) = &c.outlier {
            for (local, prefix) in [(false, ""), (true, "local_origin_")] {
                let (avg, threshold) = d.success_rate_numbers(local);
                out.push_str(&format!("{n}::outlier::{prefix}success_rate_average::{}\n", format_g(avg)));
                out.push_str(&format!(
                    "{n}::outlier::{prefix}success_rate_ejection_threshold::{}\n",
                    format_g(threshold)
                ));
            }
        }
        for (prio, l) in [("default", &c.circuit_breakers.default), ("high", &c.circuit_breakers.high)] {
            out.push_str(&format!("{n}::{prio}_priority::max_connections::{}\n", l.connections.max()));
            out.push_str(&format!("{n}::{prio}_priority::max_pending_requests::{}\n", l.pending.max()));
            out.push_str(&format!("{n}::{prio}_priority::max_requests::{}\n", l.requests.max()));
            out.push_str(&format!("{n}::{prio}_priority::max_retries::{}\n", l.max_retries()));
        }
        out.push_str(&format!("{n}::added_via_api::false\n"));
        for h in c.hosts.load().all.iter() {
            let a = h.address;
            out.push_str(&format!(
                "{n}::{a}::rq_active::{}\n",
                h.active_requests.load(std::sync::atomic::Ordering::Relaxed)
            ));
            out.push_str(&format!("{n}::{a}::hostname::{}\n", h.hostname));
            out.push_str(&format!("{n}::{a}::health_flags::{}\n", h.health_flags()));
            out.push_str(&format!("{n}::{a}::weight::{}\n", h.weight));
            let l = h.locality.as_deref();
            out.push_str(&format!("{n}::{a}::region::{}\n", l.map_or("", |l| &l.region)));
            out.push_str(&format!("{n}::{a}::zone::{}\n", l.map_or("", |l| &l.zone)));
            out.push_str(&format!("{n}::{a}::sub_zone::{}\n", l.map_or("", |l| &l.sub_zone)));
            out.push_str(&format!("{n}::{a}::priority::{}\n", h.priority));
            let rate = |local| h.outlier.as_deref().map_or(-1.0, |m| m.success_rate(local));
            out.push_str(&format!("{n}::{a}::success_rate::{}\n", rate(false)));
            out.push_str(&format!("{n}::{a}::local_origin_success_rate::{}\n", rate(true)));
        }
    }
    reply(out, false)
}

/// A number as C's `%g` prints it (6 significant digits, no trailing zeros), as Envoy's
/// `/clusters` does for the outlier lines.
fn format_g(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let decimals = (5 - v.abs().log10().floor() as i32).clamp(0, 17) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

/// `/listeners`: `name::address` lines, or JSON.
pub fn listeners(st: &AdminState, json: bool) -> Response<Full<Bytes>> {
    let snap = st.control.manager.active_listeners();
    if json {
        let v: Vec<_> = snap
            .iter()
            .map(|l| {
                serde_json::json!({"name": l.name, "local_address": {"socket_address": {"address": l.address.ip().to_string(), "port_value": l.address.port()}}})
            })
            .collect();
        return reply(
            serde_json::to_string_pretty(&serde_json::json!({"listener_statuses": v})).unwrap_or_default(),
            true,
        );
    }
    let mut out = String::new();
    for l in snap.iter() {
        out.push_str(&format!("{}::{}\n", l.name, l.address));
    }
    reply(out, false)
}
