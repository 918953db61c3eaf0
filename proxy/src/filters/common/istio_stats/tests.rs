use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::{Any, Struct};
use prost::Message;

use super::*;
use crate::config::{BuildCtx, NodeInfo};

fn json_struct(v: serde_json::Value) -> Struct {
    let serde_json::Value::Object(m) = v else { panic!("not an object") };
    Struct { fields: m.into_iter().map(|(k, v)| (k, json_value(v))).collect() }
}

fn json_value(v: serde_json::Value) -> envoy_types::pb::google::protobuf::Value {
    use envoy_types::pb::google::protobuf::{ListValue, Value, value::Kind};
    let kind = match v {
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue { values: a.into_iter().map(json_value).collect() }),
        o @ serde_json::Value::Object(_) => Kind::StructValue(json_struct(o)),
        serde_json::Value::Null => Kind::NullValue(0),
    };
    Value { kind: Some(kind) }
}

fn cx(inbound: bool) -> BuildCtx {
    let node = NodeInfo {
        metadata: Some(json_struct(serde_json::json!({
            "WORKLOAD_NAME": "reviews-v1", "NAMESPACE": "default", "CLUSTER_ID": "Kubernetes",
            "LABELS": {"app": "reviews", "version": "v1",
                       "service.istio.io/canonical-name": "reviews", "service.istio.io/canonical-revision": "v1"},
        }))),
        ..Default::default()
    };
    BuildCtx { node: Arc::new(node), inbound, ..Default::default() }
}

fn any(c: &PluginConfig) -> Any {
    Any { type_url: format!("type.googleapis.com/{TYPE}"), value: c.encode_to_vec() }
}

fn peer() -> Workload {
    Workload::from_metadata(Some(&json_struct(serde_json::json!({
        "WORKLOAD_NAME": "productpage-v1", "NAMESPACE": "default", "CLUSTER_ID": "Kubernetes",
        "LABELS": {"app": "productpage", "version": "v1"},
    }))))
}

fn key(peer: Workload) -> Facts {
    Facts {
        peer,
        peer_san: "spiffe://cluster.local/ns/default/sa/bookinfo-productpage".into(),
        local_san: "spiffe://cluster.local/ns/default/sa/bookinfo-reviews".into(),
        service_host: "reviews.default.svc.cluster.local".into(),
        service_name: "reviews".into(),
        protocol: Protocol::Http,
        response_code: 200,
        grpc_status: None,
        flags: ResponseFlags::NONE,
    }
}

fn names(l: &[(&'static str, String)]) -> Vec<&'static str> {
    l.iter().map(|(k, _)| *k).collect()
}

fn get<'a>(l: &'a [(&'static str, String)], k: &str) -> &'a str {
    l.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str()).unwrap_or_else(|| panic!("no {k}"))
}

const HTTP_ORDER: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

#[test]
fn destination_labels_in_istios_order() {
    let s = Settings::from_any(&any(&PluginConfig::default()), &cx(true)).unwrap();
    let l = labels(&s, &key(peer()));
    assert_eq!(names(&l), HTTP_ORDER);
    assert_eq!(get(&l, "reporter"), "destination");
    assert_eq!(get(&l, "source_workload"), "productpage-v1");
    assert_eq!(get(&l, "source_canonical_service"), "productpage");
    assert_eq!(get(&l, "source_canonical_revision"), "v1");
    assert_eq!(get(&l, "source_principal"), "spiffe://cluster.local/ns/default/sa/bookinfo-productpage");
    assert_eq!(get(&l, "destination_workload"), "reviews-v1");
    assert_eq!(get(&l, "destination_principal"), "spiffe://cluster.local/ns/default/sa/bookinfo-reviews");
    assert_eq!(get(&l, "destination_service"), "reviews.default.svc.cluster.local");
    assert_eq!(get(&l, "destination_service_name"), "reviews");
    assert_eq!(get(&l, "destination_service_namespace"), "default");
    assert_eq!(get(&l, "response_code"), "200");
    assert_eq!(get(&l, "grpc_response_status"), "");
    assert_eq!(get(&l, "response_flags"), "-");
    assert_eq!(get(&l, "connection_security_policy"), "mutual_tls");
}

#[test]
fn source_labels_and_fallbacks() {
    let s = Settings::from_any(&any(&PluginConfig::default()), &cx(false)).unwrap();
    let mut k = key(Workload::default());
    k.peer_san.clear();
    k.local_san.clear();
    k.service_host.clear();
    k.service_name.clear();
    k.response_code = 503;
    k.flags = ResponseFlags::from_short("UH").unwrap();
    k.protocol = Protocol::Grpc;
    k.grpc_status = Some(14);
    let l = labels(&s, &k);
    assert_eq!(names(&l), HTTP_ORDER);
    assert_eq!(get(&l, "reporter"), "source");
    assert_eq!(get(&l, "source_workload"), "reviews-v1");
    assert_eq!(get(&l, "source_app"), "reviews");
    assert_eq!(get(&l, "destination_workload"), "unknown");
    assert_eq!(get(&l, "destination_canonical_revision"), "latest");
    assert_eq!(get(&l, "destination_service"), "unknown");
    assert_eq!(get(&l, "destination_service_name"), "unknown");
    assert_eq!(get(&l, "request_protocol"), "grpc");
    assert_eq!(get(&l, "grpc_response_status"), "14");
    assert_eq!(get(&l, "response_flags"), "UH");
    assert_eq!(get(&l, "connection_security_policy"), "unknown");
    // At the destination without a service the node's canonical service stands in; no peer
    // certificate means no mutual TLS.
    let d = Settings::from_any(&any(&PluginConfig::default()), &cx(true)).unwrap();
    let l = labels(&d, &k);
    assert_eq!(get(&l, "destination_service"), "reviews");
    assert_eq!(get(&l, "connection_security_policy"), "none");
    assert_eq!(get(&l, "source_workload"), "unknown");
}

#[test]
fn tcp_labels_have_no_response_code() {
    let s = Settings::from_any(&any(&PluginConfig::default()), &cx(true)).unwrap();
    let mut k = key(peer());
    k.protocol = Protocol::Tcp;
    let l = labels(&s, &k);
    assert_eq!(names(&l).len(), 23);
    assert_eq!(get(&l, "request_protocol"), "tcp");
    assert!(!names(&l).contains(&"response_code"));
}

#[test]
fn peer_namespace_from_the_principal_first() {
    let s = Settings::from_any(&any(&PluginConfig::default()), &cx(false)).unwrap();
    let mut k = key(peer());
    k.peer_san = "spiffe://cluster.local/ns/other/sa/x".into();
    let l = labels(&s, &k);
    assert_eq!(get(&l, "destination_workload_namespace"), "other");
    assert_eq!(get(&l, "destination_service_namespace"), "other");
}

#[test]
fn service_from_cluster_metadata_else_authority() {
    let md = Metadata {
        filter_metadata: [(
            "istio".to_string(),
            json_struct(serde_json::json!({"services": [{"host": "geo.hr2.svc.cluster.local", "name": "geo", "namespace": "hr2"}]})),
        )]
        .into(),
        ..Default::default()
    };
    let c = Some("outbound|8083||geo.hr2.svc.cluster.local");
    assert_eq!(service(None, c, Some(&md), Some("geo:8083"), true), ("geo.hr2.svc.cluster.local", "geo"));
    assert_eq!(service(None, c, None, Some("geo:8083"), true), ("geo:8083", "geo:8083"));
    assert_eq!(service(None, c, None, Some("geo:8083"), false), ("", ""));
    assert_eq!(service(None, Some("PassthroughCluster"), None, Some("x.com"), true), ("x.com", "PassthroughCluster"));
    assert_eq!(service(Some("block_all"), None, None, None, true), ("", "BlackHoleCluster"));
    // A service without a name: the host's first label.
    let md2 = Metadata {
        filter_metadata: [("istio".to_string(), json_struct(serde_json::json!({"services": [{"host": "a.b.svc"}]})))]
            .into(),
        ..Default::default()
    };
    assert_eq!(service(None, c, Some(&md2), None, false), ("a.b.svc", "a"));
}

#[test]
fn overrides_drop_and_remove_tags_and_refuse_what_is_not_done() {
    let c = PluginConfig {
        metrics: vec![
            MetricConfig { name: "request_bytes".into(), drop: true, ..Default::default() },
            MetricConfig { tags_to_remove: vec!["source_principal".into()], ..Default::default() },
        ],
        ..Default::default()
    };
    let s = Settings::from_any(&any(&c), &cx(true)).unwrap();
    let store = Store::default();
    let l = labels(&s, &key(peer()));
    assert!(s.histogram(&store, Metric::RequestBytes, &l, &[]).is_none());
    s.counter(&store, Metric::RequestsTotal, &l, &[]).unwrap().inc();
    let e = store.entries();
    let t = e[0].tagged.as_ref().unwrap();
    assert_eq!(t.tags.len(), 24);
    assert!(!t.tags.iter().any(|(k, _)| *k == "source_principal"));

    let refused = |c: PluginConfig| Settings::from_any(&any(&c), &cx(true)).unwrap_err().field;
    let dims = MetricConfig {
        dimensions: [("app".to_string(), "upstream_peer.labels['app'].value".to_string())].into(),
        ..Default::default()
    };
    assert_eq!(
        refused(PluginConfig { metrics: vec![MetricConfig::default(), dims], ..Default::default() }),
        "typed_config.metrics[1].dimensions[app]"
    );
    assert_eq!(
        refused(PluginConfig {
            metrics: vec![MetricConfig { name: "nope".into(), ..Default::default() }],
            ..Default::default()
        }),
        "typed_config.metrics[0].name"
    );
    assert_eq!(
        refused(PluginConfig { definitions: vec![MetricDefinition { name: "x".into() }], ..Default::default() }),
        "typed_config.definitions"
    );
    assert_eq!(refused(PluginConfig { reporter: 1, ..Default::default() }), "typed_config.reporter");
}

#[test]
fn handles_built_once_per_label_set_and_peers_interned_by_id() {
    let s = Settings::from_any(&any(&PluginConfig::default()), &cx(true)).unwrap();
    let m: Metrics<u32> = Metrics::new(Arc::new(Store::default()), s);
    let mut built = 0;
    let mut reads = 0;
    for code in [200, 200, 503, 200] {
        let p = m.peer(Some("sidecar~10.0.0.1~productpage-v1.default~default.svc.cluster.local"), || {
            reads += 1;
            peer()
        });
        let none = m.string("");
        let key = Key {
            peer: p,
            peer_san: m.string("spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
            local_san: none,
            service_host: m.string("reviews.default.svc.cluster.local"),
            service_name: m.string("reviews"),
            protocol: Protocol::Http,
            response_code: code,
            grpc_status: None,
            flags: ResponseFlags::NONE,
            dims: m.dims(|_| ""),
        };
        m.handles(key, |l| {
            let labels = &l.labels;
            assert_eq!(get(labels, "source_workload"), "productpage-v1");
            assert_eq!(get(labels, "source_principal"), "spiffe://cluster.local/ns/default/sa/bookinfo-productpage");
            assert_eq!(get(labels, "destination_service"), "reviews.default.svc.cluster.local");
            assert_eq!(get(labels, "connection_security_policy"), "none");
            built += 1;
            built
        });
    }
    assert_eq!((built, reads), (2, 1));
    assert_eq!(m.string("reviews"), m.string("reviews"));
    assert_ne!(m.string("reviews"), m.string("ratings"));
    // Peers without an id: by their labels; none at all: one entry.
    let a = m.peer(None, peer);
    assert_eq!(m.peer(None, peer), a);
    assert_eq!(m.peer(None, Workload::default), m.peer(None, Workload::default));
    assert_ne!(m.peer(None, Workload::default), a);
}

#[test]
fn dimensions_add_and_override_tags_from_request_attributes() {
    let c = PluginConfig {
        metrics: vec![
            MetricConfig {
                dimensions: [
                    ("request_host".to_string(), "request.host".to_string()),
                    ("user".to_string(), "request.headers['x-user']".to_string()),
                    ("source_app".to_string(), "'frontend'".to_string()),
                ]
                .into(),
                ..Default::default()
            },
            MetricConfig {
                name: "requests_total".into(),
                dimensions: [("code_again".to_string(), "response.code".to_string())].into(),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let s = Settings::from_any(&any(&c), &cx(true)).unwrap();
    assert_eq!(s.attrs.len(), 2);
    let m: Metrics<(Option<crate::stats::Counter>, Option<crate::stats::Histogram>)> =
        Metrics::new(Arc::new(Store::default()), s);
    let req = http::Request::builder()
        .uri("http://reviews:9080/x?y")
        .header("x-user", "jason")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let none = m.string("");
    let key = Key {
        peer: m.peer(None, peer),
        peer_san: none,
        local_san: none,
        service_host: none,
        service_name: none,
        protocol: Protocol::Http,
        response_code: 200,
        grpc_status: None,
        flags: ResponseFlags::NONE,
        dims: m.dims(|a| a.read(&req)),
    };
    let h = m.handles(key, |l| (l.counter(Metric::RequestsTotal), l.histogram(Metric::RequestBytes)));
    h.0.as_ref().unwrap().inc();
    h.1.as_ref().unwrap().record(1.0);
    let e = m.store.entries();
    let tags =
        |family: &str| e.iter().find_map(|x| x.tagged.as_ref().filter(|t| t.family == family)).unwrap().tags.clone();
    let total = tags("istio_requests_total");
    assert_eq!(get(&total, "request_host"), "reviews:9080");
    assert_eq!(get(&total, "user"), "jason");
    assert_eq!(get(&total, "source_app"), "frontend");
    assert_eq!(get(&total, "code_again"), "200");
    // Added tags follow the standard ones; the metric-specific one only on its metric.
    assert_eq!(total.len(), 25 + 3);
    let bytes = tags("istio_request_bytes");
    assert_eq!(bytes.len(), 25 + 2);
    assert_eq!(get(&bytes, "user"), "jason");
    // A request without the header: `unknown`, as Istio's failed evaluation.
    let req2 = http::Request::builder().uri("/").body(()).unwrap().into_parts().0;
    let dims = m.dims(|a| a.read(&req2));
    let h = m.handles(Key { dims, ..key }, |l| (l.counter(Metric::RequestsTotal), None));
    h.0.as_ref().unwrap().inc();
    let users: Vec<String> = m
        .store
        .entries()
        .iter()
        .filter_map(|x| x.tagged.as_ref().filter(|t| t.family == "istio_requests_total"))
        .map(|t| get(&t.tags, "user").to_string())
        .collect();
    assert_eq!(users.len(), 2);
    assert!(users.contains(&"unknown".to_string()) && users.contains(&"jason".to_string()), "{users:?}");
}
