//! The compose mesh without docker: docker/compose.yaml and docker/bootstrap.json are what
//! `remora-demo compose` generates for examples/demo; pods are placed at their compose
//! addresses; the one ADS port relays each stream to the harness of its node id and refuses an
//! unknown node. (docker/test runs the mesh itself.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use mesh::compose;
use mesh::xds::{self, Proxy};
use serde_json::json;
use xds_client::ads;
use xds_client::server::ControlPlane;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn docker_files_are_generated() {
    let mesh = compose::load_placed(&root().join("examples/demo")).unwrap();
    let yaml = compose::compose_yaml(&mesh, "../examples/demo", "remora:dev", "remora-demo:dev").unwrap();
    let boot = serde_json::to_string_pretty(&compose::bootstrap()).unwrap() + "\n";
    let hint = "stale: run `remora-demo compose --mesh examples/demo --out docker`";
    assert_eq!(
        std::fs::read_to_string(root().join("docker/compose.yaml")).unwrap(),
        yaml,
        "docker/compose.yaml {hint}"
    );
    assert_eq!(
        std::fs::read_to_string(root().join("docker/bootstrap.json")).unwrap(),
        boot,
        "docker/bootstrap.json {hint}"
    );
    // The generated file names each pod once, with its sidecar in its network namespace.
    let doc: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    for p in &mesh.pods {
        let sidecar = &doc["services"][format!("{}-sidecar", p.name).as_str()];
        assert_eq!(sidecar["network_mode"].as_str(), Some(format!("service:{}", p.name).as_str()));
        assert_eq!(
            doc["services"][p.name.as_str()]["networks"]["mesh"]["ipv4_address"].as_str(),
            Some(p.ip.to_string().as_str())
        );
    }
}

#[test]
fn pods_are_placed_on_the_compose_network() {
    let mesh = compose::load_placed(&root().join("examples/demo")).unwrap();
    let ips: Vec<String> = mesh.pods.iter().map(|p| p.ip.to_string()).collect();
    assert_eq!(ips, ["10.213.89.11", "10.213.89.12", "10.213.89.13", "10.213.89.14", "10.213.89.15"]);
    let pod = &mesh.pods[1];
    let listeners = xds::listeners(&mesh, &Proxy::Sidecar(pod));
    let addr = |name: &str| {
        let l = listeners.iter().find(|l| l["name"] == name).unwrap_or_else(|| panic!("{name} in {listeners:?}"));
        l["address"]["socket_address"]["address"].as_str().unwrap().to_string()
    };
    assert_eq!(addr("10.213.89.12_9080"), "10.213.89.12");
    assert_eq!(addr("127.0.0.2_9081"), "127.0.0.2");
    let inbound = xds::clusters(&mesh, &Proxy::Sidecar(pod));
    let c = inbound.iter().find(|c| c["name"] == "inbound|9080||").unwrap();
    assert_eq!(
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"],
        "127.0.0.1"
    );
    let bind = [(8080u16, 8080u16)];
    let gw = xds::listeners(&mesh, &Proxy::Gateway { bind: &bind });
    assert_eq!(gw[0]["address"]["socket_address"], json!({"address": "0.0.0.0", "port_value": 8080}));
}

async fn first_names(addr: std::net::SocketAddr, node: &str) -> Result<Vec<String>, tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let req = DeltaDiscoveryRequest {
        node: Some(Node { id: node.to_string(), ..Default::default() }),
        type_url: ads::CLUSTER.to_string(),
        ..Default::default()
    };
    // The request stream stays open while the response is read.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(req).await.unwrap();
    let reqs = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut resp = client.delta_aggregated_resources(reqs).await?.into_inner();
    let first =
        tokio::time::timeout(Duration::from_secs(10), resp.message()).await.expect("a response")?.expect("a message");
    drop(tx);
    let mut names: Vec<String> = first.resources.iter().map(|r| r.name.clone()).collect();
    names.sort();
    Ok(names)
}

#[tokio::test]
async fn one_ads_port_serves_each_node_its_own_config() {
    let mut harnesses = BTreeMap::new();
    let mut cps = Vec::new();
    for (node, cluster) in [("sidecar~a", "only-for-a"), ("sidecar~b", "only-for-b")] {
        let cp = ControlPlane::new();
        let v = json!({"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": cluster,
            "type": "STATIC", "connect_timeout": "1s"});
        let (_, name, any) = xds_client::server::resource_from_json(&v, "test").unwrap();
        cp.set(ads::CLUSTER, &name, any);
        harnesses.insert(node.to_string(), cp.serve_tcp(([127, 0, 0, 1], 0).into()).await.unwrap());
        cps.push(cp);
    }
    let addr = mesh::dispatch::serve(([127, 0, 0, 1], 0).into(), harnesses).await.unwrap();
    assert_eq!(first_names(addr, "sidecar~a").await.unwrap(), ["only-for-a"]);
    assert_eq!(first_names(addr, "sidecar~b").await.unwrap(), ["only-for-b"]);
    let err = first_names(addr, "sidecar~stranger").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(err.message().contains("sidecar~stranger"), "{err:?}");
    // Each harness saw its own node's subscription.
    assert!(cps.iter().all(|cp| cp.subscribed(ads::CLUSTER).is_some()));
}
