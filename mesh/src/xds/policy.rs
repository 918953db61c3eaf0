//! The DestinationRule traffic policy that applies to one outbound cluster, resolved as istiod
//! does (pilot/pkg/networking/util `GetPortLevelTrafficPolicy`, `MergeSubsetTrafficPolicy`;
//! pilot/pkg/model `MergeTrafficPolicy`): a `portLevelSettings` entry for the cluster's port
//! replaces the whole policy (nothing inherited); a subset's policy (itself resolved for the port)
//! replaces the top-level one part by part (connection pool, outlier detection, load balancer,
//! TLS), or wholesale when it has settings for the port. Then the cluster fields
//! cluster_traffic_policy.go writes from it: the load-balancing policy and the HTTP protocol
//! options of the connection pool.

use serde_json::{Value, json};

use crate::manifest::{DestinationRuleSpec, TrafficPolicy, parse_duration};
use crate::model::{Mesh, Pod};
use crate::xds::dur;

/// `GetPortLevelTrafficPolicy`: the policy for `port`, and whether a port-level entry gave it.
fn for_port(tp: &TrafficPolicy, port: u16) -> (TrafficPolicy, bool) {
    match tp.port_level_settings.iter().find(|p| p.port.number == port) {
        Some(p) => (
            TrafficPolicy {
                load_balancer: p.load_balancer.clone(),
                connection_pool: p.connection_pool.clone(),
                outlier_detection: p.outlier_detection.clone(),
                tls: p.tls.clone(),
                port_level_settings: Vec::new(),
            },
            true,
        ),
        None => (tp.clone(), false),
    }
}

/// The policy of the cluster `outbound|port|subset|host` under `dr` (empty subset: the
/// service's own cluster).
pub fn effective(dr: Option<&DestinationRuleSpec>, subset: &str, port: u16) -> TrafficPolicy {
    let Some(dr) = dr else { return TrafficPolicy::default() };
    let top = dr.traffic_policy.as_ref().map(|tp| for_port(tp, port).0);
    let sub =
        dr.subsets.iter().find(|s| !subset.is_empty() && s.name == subset).and_then(|s| s.traffic_policy.as_ref());
    let Some(sub) = sub else { return top.unwrap_or_default() };
    let (sub, port_level) = for_port(sub, port);
    let Some(mut merged) = top else { return sub };
    if sub.connection_pool.is_some() || port_level {
        merged.connection_pool = sub.connection_pool;
    }
    if sub.outlier_detection.is_some() || port_level {
        merged.outlier_detection = sub.outlier_detection;
    }
    if sub.load_balancer.is_some() || port_level {
        merged.load_balancer = sub.load_balancer;
    }
    if sub.tls.is_some() || port_level {
        merged.tls = sub.tls;
    }
    merged
}

/// The policy of a sidecar's `inbound|PORT||` cluster: the rule of the service the pod serves on
/// that target port, resolved for the service port (`buildInboundClusters`); only its connection
/// pool applies there, so the server side has the capacity the clients are allowed.
pub fn inbound(mesh: &Mesh, pod: &Pod, target: u16) -> TrafficPolicy {
    let found = mesh.services.iter().find_map(|svc| {
        let serves = mesh.pods_of(svc, &Default::default()).any(|p| p.name == pod.name);
        let port = svc.ports.iter().find(|p| p.target == target)?;
        serves.then_some((svc, port.port))
    });
    let Some((svc, port)) = found else { return TrafficPolicy::default() };
    let tp = mesh.destination_rule(&svc.fqdn()).and_then(|dr| dr.spec.traffic_policy.as_ref());
    tp.map(|tp| for_port(tp, port).0).unwrap_or_default()
}

/// `applyConnectionPool`: the connect timeout (10 s unless `tcp.connectTimeout`), the circuit
/// breaker thresholds (unlimited unless a positive limit is given) and the HTTP protocol options.
pub fn apply_connection_pool(c: &mut Value, tp: &TrafficPolicy, h2: bool) {
    let tcp = tp.connection_pool.as_ref().and_then(|p| p.tcp.as_ref());
    let http = tp.connection_pool.as_ref().and_then(|p| p.http.as_ref());
    let limit = |v: Option<u32>| v.filter(|n| *n > 0).unwrap_or(u32::MAX);
    let connect = tcp.and_then(|t| t.connect_timeout.as_deref()).and_then(parse_duration).unwrap_or(10.0);
    c["connect_timeout"] = json!(dur(connect));
    c["circuit_breakers"] = json!({"thresholds": [{
        "max_connections": limit(tcp.and_then(|t| t.max_connections)),
        "max_pending_requests": limit(http.and_then(|h| h.http1_max_pending_requests)),
        "max_requests": limit(http.and_then(|h| h.http2_max_requests)),
        "max_retries": limit(http.and_then(|h| h.max_retries)),
        "track_remaining": true}]});
    if let Some(o) = http_protocol_options(tp, h2) {
        c["typed_extension_protocol_options"] = o;
    }
}

/// `applyLoadBalancer` for the simple policies the demo supports (Mesh::check refuses the
/// others): LEAST_REQUEST (also LEAST_CONN, and the default), RANDOM, ROUND_ROBIN.
pub fn lb_policy(tp: &TrafficPolicy) -> &'static str {
    match tp.load_balancer.as_ref().and_then(|l| l.simple.as_deref()) {
        Some("ROUND_ROBIN") => "ROUND_ROBIN",
        Some("RANDOM") => "RANDOM",
        _ => "LEAST_REQUEST",
    }
}

/// The cluster's `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`, if any: HTTP/2 for an
/// `http2` port, and `applyConnectionPool`'s common options (idle timeout, max requests per
/// connection); `clusterWrapper.build` fills in HTTP/1.1 when the options exist without a
/// protocol.
fn http_protocol_options(tp: &TrafficPolicy, h2: bool) -> Option<Value> {
    let http = tp.connection_pool.as_ref().and_then(|p| p.http.as_ref());
    let mut common = json!({});
    if let Some(t) = http.and_then(|h| h.idle_timeout.as_deref()).and_then(parse_duration) {
        common["idle_timeout"] = json!(dur(t));
    }
    if let Some(n) = http.and_then(|h| h.max_requests_per_connection).filter(|n| *n > 0) {
        common["max_requests_per_connection"] = json!(n);
    }
    let has_common = common.as_object().is_some_and(|o| !o.is_empty());
    if !h2 && !has_common {
        return None;
    }
    let mut o = json!({"@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"});
    o["explicit_http_config"] =
        if h2 { json!({"http2_protocol_options": {}}) } else { json!({"http_protocol_options": {}}) };
    if has_common {
        o["common_http_protocol_options"] = common;
    }
    Some(json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": o}))
}
