//! xDS protocol semantics of the control-plane harness, checked with a raw gRPC client: Delta
//! versions, removals and reconnects with `initial_resource_versions`, SotW wildcard and named
//! subscriptions, SDS (`default` and `ROOTCA`), and ACK/NACK records.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use xds_client::ads::{CLUSTER, ENDPOINT, SECRET};
use xds_client::any::pack;
use xds_client::server::ControlPlane;

const T: Duration = Duration::from_secs(5);

fn node() -> Option<Node> {
    Some(Node { id: "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local".into(), ..Default::default() })
}

fn cluster(name: &str, ms: u64) -> Any {
    let c = Cluster {
        name: name.into(),
        connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 0,
            nanos: (ms * 1_000_000) as i32,
        }),
        ..Default::default()
    };
    pack(&c)
}

async fn start() -> (ControlPlane, SocketAddr) {
    let cp = ControlPlane::new();
    let addr = cp.serve_tcp("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (cp, addr)
}

struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    async fn open(addr: SocketAddr, first: DeltaDiscoveryRequest) -> Delta {
        let mut c = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await.unwrap();
        let (tx, rx) = mpsc::channel(8);
        tx.send(first).await.unwrap();
        let rx = c.delta_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
        Delta { tx, rx }
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(T, self.rx.message()).await.expect("response in time").unwrap().unwrap()
    }

    async fn nothing(&mut self) {
        let r = tokio::time::timeout(Duration::from_millis(300), self.rx.message()).await;
        assert!(r.is_err(), "unexpected response {r:?}");
    }

    async fn ack(&self, r: &DeltaDiscoveryResponse) {
        let req = DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        };
        self.tx.send(req).await.unwrap();
    }
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|x| x.name.as_str()).collect()
}

#[tokio::test]
async fn delta_wildcard_updates_removals_and_reconnect() {
    let (cp, addr) = start().await;
    cp.set(CLUSTER, "a", cluster("a", 100));
    cp.set(CLUSTER, "b", cluster("b", 100));
    let mut d =
        Delta::open(addr, DeltaDiscoveryRequest { node: node(), type_url: CLUSTER.into(), ..Default::default() }).await;
    let r = d.recv().await;
    assert_eq!(names(&r), ["a", "b"]);
    d.ack(&r).await;
    assert!(cp.wait_for(|cp| cp.acks().len() == 1, T).await);
    let ack = &cp.acks()[0];
    assert_eq!((ack.type_url.as_str(), ack.nonce.as_str(), ack.delta), (CLUSTER, r.nonce.as_str(), true));
    assert_eq!(ack.version_info, r.system_version_info);
    assert_eq!(ack.node_id, "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local");
    assert!(cp.subscribed(CLUSTER).unwrap().wildcard);

    // Only the changed resource travels; a removal is announced.
    cp.set(CLUSTER, "a", cluster("a", 200));
    let r2 = d.recv().await;
    assert_eq!(names(&r2), ["a"]);
    assert_ne!(r2.nonce, r.nonce);
    assert!(r2.resources[0].version != r.resources[0].version);
    d.ack(&r2).await;
    assert!(cp.remove(CLUSTER, "b"));
    let r3 = d.recv().await;
    assert!(r3.resources.is_empty());
    assert_eq!(r3.removed_resources, ["b"]);

    // NACK: recorded with the error detail.
    cp.set(CLUSTER, "c", cluster("c", 1));
    let r4 = d.recv().await;
    let nack = DeltaDiscoveryRequest {
        type_url: CLUSTER.into(),
        response_nonce: r4.nonce.clone(),
        error_detail: Some(RpcStatus { code: 3, message: "bad c".into(), details: vec![] }),
        ..Default::default()
    };
    d.tx.send(nack).await.unwrap();
    assert!(cp.wait_for(|cp| !cp.nacks().is_empty(), T).await);
    let n = &cp.nacks()[0];
    assert_eq!((n.error_detail.as_deref(), n.nonce.as_str()), (Some("bad c"), r4.nonce.as_str()));

    // Reconnect with what the client holds: only what differs is sent, and what the server no
    // longer has is removed.
    let versions: HashMap<String, String> = [
        ("a".to_string(), cp.get(CLUSTER, "a").unwrap().version),
        ("c".to_string(), "stale".to_string()),
        ("gone".to_string(), "1".to_string()),
    ]
    .into();
    drop(d);
    let first = DeltaDiscoveryRequest {
        node: node(),
        type_url: CLUSTER.into(),
        initial_resource_versions: versions,
        ..Default::default()
    };
    let mut d = Delta::open(addr, first).await;
    let r = d.recv().await;
    assert_eq!(names(&r), ["c"]);
    assert_eq!(r.removed_resources, ["gone"]);
    d.ack(&r).await;
    d.nothing().await;
    cp.stop();
}

#[tokio::test]
async fn delta_named_subscriptions() {
    let (cp, addr) = start().await;
    let cla = |n: &str| pack(&ClusterLoadAssignment { cluster_name: n.into(), ..Default::default() });
    cp.set(ENDPOINT, "x", cla("x"));
    cp.set(ENDPOINT, "y", cla("y"));
    let first = DeltaDiscoveryRequest {
        node: node(),
        type_url: ENDPOINT.into(),
        resource_names_subscribe: vec!["x".into(), "missing".into()],
        ..Default::default()
    };
    let mut d = Delta::open(addr, first).await;
    let r = d.recv().await;
    assert_eq!(names(&r), ["x"]);
    d.ack(&r).await;
    // An unsubscribed resource's change is not sent; a subscribed one is, when it appears.
    cp.set(ENDPOINT, "y", cla("y"));
    d.nothing().await;
    cp.set(ENDPOINT, "missing", cla("missing"));
    let r = d.recv().await;
    assert_eq!(names(&r), ["missing"]);
    d.ack(&r).await;
    // Subscribe y, unsubscribe x: y arrives; resubscribing x later sends it again.
    let sub = |s: Vec<&str>, u: Vec<&str>| DeltaDiscoveryRequest {
        type_url: ENDPOINT.into(),
        resource_names_subscribe: s.into_iter().map(String::from).collect(),
        resource_names_unsubscribe: u.into_iter().map(String::from).collect(),
        ..Default::default()
    };
    d.tx.send(sub(vec!["y"], vec!["x"])).await.unwrap();
    let r = d.recv().await;
    assert_eq!(names(&r), ["y"]);
    let s = cp.subscribed(ENDPOINT).unwrap();
    assert!(!s.wildcard);
    assert_eq!(s.names.iter().map(String::as_str).collect::<Vec<_>>(), ["missing", "y"]);
    d.tx.send(sub(vec!["x"], vec![])).await.unwrap();
    assert_eq!(names(&d.recv().await), ["x"]);
    cp.stop();
}

struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(T, self.rx.message()).await.expect("response in time").unwrap().unwrap()
    }

    async fn ack(&self, r: &DiscoveryResponse, names: &[&str]) {
        let req = DiscoveryRequest {
            type_url: r.type_url.clone(),
            version_info: r.version_info.clone(),
            response_nonce: r.nonce.clone(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        self.tx.send(req).await.unwrap();
    }
}

#[tokio::test]
async fn sotw_wildcard_and_set_all() {
    let (cp, addr) = start().await;
    cp.set(CLUSTER, "a", cluster("a", 100));
    let mut c = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(DiscoveryRequest { node: node(), type_url: CLUSTER.into(), ..Default::default() }).await.unwrap();
    let rx = c.stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let mut s = Sotw { tx, rx };
    let r = s.recv().await;
    assert_eq!(r.resources.len(), 1);
    s.ack(&r, &[]).await;
    // set_all replaces the whole state; the client gets all of it at once.
    cp.set_all(CLUSTER, vec![("b".into(), cluster("b", 1)), ("c".into(), cluster("c", 1))]);
    let r2 = s.recv().await;
    assert_eq!(r2.resources.len(), 2);
    assert_ne!(r2.version_info, r.version_info);
    s.ack(&r2, &[]).await;
    assert!(cp.wait_for(|cp| cp.acks().len() == 2, T).await);
    assert_eq!(cp.acks()[1].version_info, r2.version_info);
    assert!(!cp.acks()[1].delta);
    assert_eq!(cp.names(CLUSTER), ["b", "c"]);
    cp.stop();
}

#[tokio::test]
async fn sds_serves_default_and_rootca() {
    let (cp, addr) = start().await;
    for n in ["default", "ROOTCA", "other"] {
        cp.set(SECRET, n, pack(&Secret { name: n.into(), ..Default::default() }));
    }
    let mut c = SecretDiscoveryServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let (tx, rx) = mpsc::channel(8);
    let first = DiscoveryRequest {
        node: node(),
        type_url: SECRET.into(),
        resource_names: vec!["default".into()],
        ..Default::default()
    };
    tx.send(first).await.unwrap();
    let rx = c.stream_secrets(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let mut s = Sotw { tx, rx };
    let r = s.recv().await;
    assert_eq!(r.resources.len(), 1);
    // Envoy opens ROOTCA on the same stream: the response carries both.
    s.ack(&r, &["default", "ROOTCA"]).await;
    let r = s.recv().await;
    let got: Vec<String> = r.resources.iter().map(|a| xds_client::any::unpack::<Secret>(a).unwrap().name).collect();
    assert_eq!(got, ["ROOTCA", "default"]);
    s.ack(&r, &["default", "ROOTCA"]).await;
    assert!(cp.wait_for(|cp| cp.acks().len() == 2, T).await);

    // Rotation pushes at once.
    cp.set(SECRET, "default", pack(&Secret { name: "default".into(), ..Default::default() }));
    assert_eq!(s.recv().await.resources.len(), 2);

    // DeltaSecrets with an empty type URL defaults to Secret.
    let (tx, rx) = mpsc::channel(8);
    let first =
        DeltaDiscoveryRequest { node: node(), resource_names_subscribe: vec!["ROOTCA".into()], ..Default::default() };
    tx.send(first).await.unwrap();
    let mut rx = c.delta_secrets(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let r = tokio::time::timeout(T, rx.message()).await.unwrap().unwrap().unwrap();
    assert_eq!((r.type_url.as_str(), names(&r)), (SECRET, vec!["ROOTCA"]));
    cp.stop();
}
