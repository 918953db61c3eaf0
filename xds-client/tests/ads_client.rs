//! The ADS/SDS client against a scripted server over real sockets: Delta and SotW ACK/NACK,
//! subscriptions, removals, reconnects, node on the first message, unix sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ads_common;

use std::collections::HashMap;
use std::time::Duration;

use ads_common::*;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse, Resource as PbResource,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use xds_client::ads::{self, AdsClient, ApiType, Target};

const NODE_ID: &str = "sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local";
const QUIET: Duration = Duration::from_millis(300);

fn delta_resource(name: &str, version: &str, body: Any) -> PbResource {
    PbResource { name: name.into(), version: version.into(), resource: Some(body), ..Default::default() }
}

fn delta_response(type_url: &str, nonce: &str, resources: Vec<PbResource>, removed: &[&str]) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: format!("sys-{nonce}"),
        type_url: type_url.into(),
        nonce: nonce.into(),
        resources,
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn sotw_response(type_url: &str, version: &str, nonce: &str, resources: Vec<Any>) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        type_url: type_url.into(),
        nonce: nonce.into(),
        resources,
        ..Default::default()
    }
}

fn versions(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test]
async fn delta_ack_nack_subscriptions_and_removals() {
    let (addr, mut server) = serve_tcp("127.0.0.1:0".parse().unwrap()).await;
    let (rec, handle) = start_ads(config(Target::Tcp(addr.to_string()), ApiType::Delta));
    let mut s = server.next_delta().await;
    assert_eq!(s.method, "DeltaAggregatedResources");
    assert_eq!(s.authority.as_deref(), Some("xds-grpc"));

    // CDS first, wildcard (empty subscribe list), with the node.
    let r = s.recv().await;
    assert_eq!(r.type_url, ads::CLUSTER);
    assert_eq!(r.node.as_ref().map(|n| n.id.as_str()), Some(NODE_ID));
    assert!(r.resource_names_subscribe.is_empty() && r.initial_resource_versions.is_empty());
    assert!(r.response_nonce.is_empty());
    // LDS waits for the first CDS response.
    s.expect_silence(QUIET).await;
    assert_eq!(rec.states(1).await, vec![true]);
    assert!(handle.is_connected());

    s.send(delta_response(
        ads::CLUSTER,
        "n1",
        vec![delta_resource("c1", "1", cluster("c1")), delta_resource("c2", "1", cluster("c2"))],
        &[],
    ));
    let u = rec.update(1).await;
    assert_eq!((u.type_url.as_str(), u.version.as_str(), u.full_state), (ads::CLUSTER, "sys-n1", false));
    assert_eq!(resource_names(&u), ["c1", "c2"]);
    assert_eq!(u.resources[0].version, "1");
    // ACK by nonce, no node, then EDS for the clusters (set by the handler), then LDS.
    let ack = s.recv().await;
    assert_eq!((ack.type_url.as_str(), ack.response_nonce.as_str()), (ads::CLUSTER, "n1"));
    assert!(ack.error_detail.is_none() && ack.node.is_none());
    let eds = s.recv().await;
    assert_eq!(eds.type_url, ads::ENDPOINT);
    assert_eq!(eds.resource_names_subscribe, ["c1", "c2"]);
    assert!(eds.node.is_none() && eds.response_nonce.is_empty());
    let lds = s.recv().await;
    assert_eq!(lds.type_url, ads::LISTENER);
    assert!(lds.resource_names_subscribe.is_empty() && lds.node.is_none());

    // A rejected update: NACK with the nonce and error_detail (INVALID_ARGUMENT).
    s.send(delta_response(ads::LISTENER, "n2", vec![delta_resource("bad-l", "1", listener("bad-l"))], &[]));
    let nack = s.recv().await;
    assert_eq!((nack.type_url.as_str(), nack.response_nonce.as_str()), (ads::LISTENER, "n2"));
    let detail = nack.error_detail.expect("NACK carries error_detail");
    assert_eq!(detail.code, 3);
    assert_eq!(detail.message, "resource bad-l is invalid");

    // A type URL mismatch is NACKed without reaching the handler.
    let before = rec.update_count();
    s.send(delta_response(ads::LISTENER, "n3", vec![delta_resource("l1", "1", cluster("l1"))], &[]));
    let nack = s.recv().await;
    assert_eq!(nack.response_nonce, "n3");
    assert!(nack.error_detail.expect("mismatch NACK").message.contains("does not match"));
    assert_eq!(rec.update_count(), before);

    // removed_resources reach the handler; the handler narrows EDS: an unsubscribe goes out.
    s.send(delta_response(ads::CLUSTER, "n4", vec![], &["c2"]));
    let u = rec.update(before + 1).await;
    assert_eq!(u.removed, ["c2"]);
    assert!(u.resources.is_empty());
    let ack = s.recv().await;
    assert_eq!((ack.response_nonce.as_str(), ack.error_detail.is_none()), ("n4", true));
    let unsub = s.recv().await;
    assert_eq!(unsub.type_url, ads::ENDPOINT);
    assert!(unsub.resource_names_subscribe.is_empty());
    assert_eq!(unsub.resource_names_unsubscribe, ["c2"]);

    // The same set again is a no-op; a new set sends just the difference.
    handle.set_interest(ads::ENDPOINT, names(["c1"]));
    s.expect_silence(QUIET).await;
    handle.set_interest(ads::ENDPOINT, names(["c1", "c3"]));
    let sub = s.recv().await;
    assert_eq!(sub.resource_names_subscribe, ["c3"]);
    assert!(sub.resource_names_unsubscribe.is_empty());

    // A new non-wildcard type: the first request for it subscribes the full set.
    handle.set_interest(ads::ROUTE, names(["80", "8080"]));
    let rds = s.recv().await;
    assert_eq!(rds.type_url, ads::ROUTE);
    assert_eq!(rds.resource_names_subscribe, ["80", "8080"]);

    handle.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.requests.recv()).await;
    server.stop().await;
}

#[tokio::test]
async fn delta_reconnect_sends_accepted_versions() {
    let (addr, mut server) = serve_tcp("127.0.0.1:0".parse().unwrap()).await;
    let (rec, handle) = start_ads(config(Target::Tcp(addr.to_string()), ApiType::Delta));
    let mut s = server.next_delta().await;
    let _cds = s.recv().await;
    s.send(delta_response(
        ads::CLUSTER,
        "a",
        vec![delta_resource("c1", "v1", cluster("c1")), delta_resource("c2", "v1", cluster("c2"))],
        &[],
    ));
    let _ack = s.recv().await;
    let _eds = s.recv().await;
    let _lds = s.recv().await;
    // c2 accepted at v2, then a rejected batch (c1 at v9 + bad): versions stay as accepted.
    s.send(delta_response(ads::CLUSTER, "b", vec![delta_resource("c2", "v2", cluster("c2"))], &[]));
    assert!(s.recv().await.error_detail.is_none());
    s.send(delta_response(
        ads::CLUSTER,
        "c",
        vec![delta_resource("c1", "v9", cluster("c1")), delta_resource("bad", "v9", cluster("bad"))],
        &[],
    ));
    assert!(s.recv().await.error_detail.is_some());
    s.send(delta_response(ads::ENDPOINT, "d", vec![delta_resource("c1", "e7", cla("c1"))], &[]));
    assert!(s.recv().await.error_detail.is_none());
    s.send(delta_response(ads::LISTENER, "e", vec![delta_resource("l1", "L1", listener("l1"))], &[]));
    assert!(s.recv().await.error_detail.is_none());
    // A removed listener is not offered back.
    s.send(delta_response(ads::LISTENER, "f", vec![delta_resource("l2", "L2", listener("l2"))], &["l1"]));
    assert!(s.recv().await.error_detail.is_none());

    // The server goes away; the client keeps retrying while the port is closed.
    drop(s);
    server.stop().await;
    assert_eq!(rec.states(2).await, vec![true, false]);
    assert!(!handle.is_connected());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Interest changes while disconnected go into the next stream's requests.
    handle.set_interest(ads::ROUTE, names(["r1"]));
    let (_, mut server) = serve_tcp(addr).await;
    let mut s = server.next_delta().await;

    let mut by_type = HashMap::new();
    for i in 0..4 {
        let r = s.recv().await;
        assert_eq!(r.node.is_some(), i == 0, "node on the first message only: {r:?}");
        assert!(r.response_nonce.is_empty());
        by_type.insert(r.type_url.clone(), r);
    }
    let cds = &by_type[ads::CLUSTER];
    assert!(cds.resource_names_subscribe.is_empty());
    assert_eq!(cds.initial_resource_versions, versions(&[("c1", "v1"), ("c2", "v2")]));
    let eds = &by_type[ads::ENDPOINT];
    assert_eq!(eds.resource_names_subscribe, ["c1", "c2"]);
    assert_eq!(eds.initial_resource_versions, versions(&[("c1", "e7")]));
    let lds = &by_type[ads::LISTENER];
    assert_eq!(lds.initial_resource_versions, versions(&[("l2", "L2")]));
    let rds = &by_type[ads::ROUTE];
    assert_eq!(rds.resource_names_subscribe, ["r1"]);
    assert!(rds.initial_resource_versions.is_empty());
    assert_eq!(rec.states(3).await, vec![true, false, true]);
    s.expect_silence(QUIET).await;
    handle.shutdown();
}

#[tokio::test]
async fn sotw_over_unix_socket() {
    let path = socket_path("sotw");
    let mut server = serve_unix(&path);
    let (rec, handle) = start_ads(config(Target::Unix(path.clone()), ApiType::Sotw));
    let mut s = server.next_sotw().await;
    assert_eq!(s.method, "StreamAggregatedResources");
    assert_eq!(s.authority.as_deref(), Some("xds-grpc"));

    let r = s.recv().await;
    assert_eq!(r.type_url, ads::CLUSTER);
    assert_eq!(r.node.as_ref().map(|n| n.id.as_str()), Some(NODE_ID));
    assert!(r.version_info.is_empty() && r.response_nonce.is_empty() && r.resource_names.is_empty());
    s.expect_silence(QUIET).await;

    s.send(sotw_response(ads::CLUSTER, "v1", "a", vec![cluster("c1"), cluster("c2")]));
    let u = rec.update(1).await;
    assert!(u.full_state);
    assert_eq!((u.version.as_str(), resource_names(&u)), ("v1", vec!["c1".to_string(), "c2".to_string()]));
    assert_eq!(u.resources[1].version, "v1");
    // ACK: the response's version and nonce, same (empty: wildcard) names.
    let ack = s.recv().await;
    assert_eq!(
        (ack.type_url.as_str(), ack.version_info.as_str(), ack.response_nonce.as_str()),
        (ads::CLUSTER, "v1", "a")
    );
    assert!(ack.error_detail.is_none() && ack.node.is_none() && ack.resource_names.is_empty());
    let eds = s.recv().await;
    assert_eq!(
        (eds.type_url.as_str(), eds.version_info.as_str(), eds.response_nonce.as_str()),
        (ads::ENDPOINT, "", "")
    );
    assert_eq!(eds.resource_names, ["c1", "c2"]);
    let lds = s.recv().await;
    assert_eq!((lds.type_url.as_str(), lds.version_info.as_str()), (ads::LISTENER, ""));
    assert!(lds.resource_names.is_empty());

    // NACK: the previously accepted version, the rejected nonce, error_detail.
    s.send(sotw_response(ads::CLUSTER, "v2", "b", vec![cluster("c1"), cluster("bad-c")]));
    let nack = s.recv().await;
    assert_eq!((nack.version_info.as_str(), nack.response_nonce.as_str()), ("v1", "b"));
    let detail = nack.error_detail.expect("error_detail");
    assert_eq!((detail.code, detail.message.as_str()), (3, "resource bad-c is invalid"));

    // EDS: ACK repeats the subscribed names; full_state is false for a named type.
    s.send(sotw_response(ads::ENDPOINT, "e1", "c", vec![cla("c1"), cla("c2")]));
    let u = rec.update(3).await;
    assert!(!u.full_state);
    assert_eq!(resource_names(&u), ["c1", "c2"]);
    let ack = s.recv().await;
    assert_eq!((ack.version_info.as_str(), ack.response_nonce.as_str()), ("e1", "c"));
    assert_eq!(ack.resource_names, ["c1", "c2"]);

    // Subscription change: the full list with the last accepted version and last nonce.
    handle.set_interest(ads::ENDPOINT, names(["c1"]));
    let r = s.recv().await;
    assert_eq!((r.type_url.as_str(), r.version_info.as_str(), r.response_nonce.as_str()), (ads::ENDPOINT, "e1", "c"));
    assert_eq!(r.resource_names, ["c1"]);
    handle.set_interest(ads::ENDPOINT, names(["c1"]));
    s.expect_silence(QUIET).await;
    // Unsubscribing everything sends an empty list.
    handle.set_interest(ads::ENDPOINT, names([]));
    let r = s.recv().await;
    assert!(r.resource_names.is_empty());
    assert_eq!(r.type_url, ads::ENDPOINT);

    // Resources wrapped in envoy.service.discovery.v3.Resource are unwrapped.
    let wrapped =
        PbResource { name: "l1".into(), version: "x".into(), resource: Some(listener("l1")), ..Default::default() };
    let wrapped = Any {
        type_url: "type.googleapis.com/envoy.service.discovery.v3.Resource".into(),
        value: wrapped.encode_to_vec(),
    };
    s.send(sotw_response(ads::LISTENER, "L1", "d", vec![wrapped]));
    let u = rec.update(4).await;
    assert_eq!((u.type_url.as_str(), resource_names(&u)), (ads::LISTENER, vec!["l1".to_string()]));
    assert_eq!(u.resources[0].resource.type_url, ads::LISTENER);
    assert_eq!(s.recv().await.version_info, "L1");

    // Undecodable data is NACKed, never a panic.
    let garbage = Any { type_url: ads::LISTENER.into(), value: vec![0x0a, 0xff, 0xff] };
    s.send(sotw_response(ads::LISTENER, "L2", "e", vec![garbage]));
    let nack = s.recv().await;
    assert_eq!((nack.version_info.as_str(), nack.response_nonce.as_str()), ("L1", "e"));
    assert!(nack.error_detail.is_some());

    // Stream ends: the new stream repeats the accepted versions, no nonce, node first only.
    drop(s);
    let mut s = server.next_sotw().await;
    let cds = s.recv().await;
    assert_eq!(
        (cds.type_url.as_str(), cds.version_info.as_str(), cds.response_nonce.as_str()),
        (ads::CLUSTER, "v1", "")
    );
    assert!(cds.node.is_some());
    let lds = s.recv().await;
    assert_eq!((lds.type_url.as_str(), lds.version_info.as_str()), (ads::LISTENER, "L1"));
    assert!(lds.node.is_none());
    // EDS has no names now: not requested.
    s.expect_silence(QUIET).await;
    assert_eq!(rec.states(3).await, vec![true, false, true]);
    handle.shutdown();
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn sds_streams_by_name() {
    for api in [ApiType::Sotw, ApiType::Delta] {
        let path = socket_path(&format!("sds-{api:?}"));
        let mut server = serve_unix(&path);
        let rec = std::sync::Arc::new(Recorder::default());
        let mut cfg = config(Target::Unix(path.clone()), api);
        cfg.authority = "sds-grpc".into();
        let handle = AdsClient::start_sds(cfg, rec.clone());
        handle.set_interest(ads::SECRET, names(["default", "ROOTCA"]));
        match server.next().await {
            Accepted::Sotw(mut s) => {
                assert_eq!(s.method, "StreamSecrets");
                assert_eq!(s.authority.as_deref(), Some("sds-grpc"));
                let r = s.recv().await;
                assert_eq!(r.type_url, ads::SECRET);
                assert_eq!(r.resource_names, ["ROOTCA", "default"]);
                assert!(r.node.is_some());
                s.send(sotw_response(ads::SECRET, "s1", "n", vec![secret("default"), secret("ROOTCA")]));
                let u = rec.update(1).await;
                assert_eq!(sorted(resource_names(&u)), ["ROOTCA", "default"]);
                assert!(!u.full_state);
                let ack = s.recv().await;
                assert_eq!((ack.version_info.as_str(), ack.response_nonce.as_str()), ("s1", "n"));
                assert_eq!(ack.resource_names, ["ROOTCA", "default"]);
                s.expect_silence(QUIET).await;
            }
            Accepted::Delta(mut s) => {
                assert_eq!(s.method, "DeltaSecrets");
                let r = s.recv().await;
                assert_eq!(r.type_url, ads::SECRET);
                assert_eq!(r.resource_names_subscribe, ["ROOTCA", "default"]);
                assert!(r.node.is_some());
                s.send(delta_response(ads::SECRET, "n", vec![delta_resource("default", "1", secret("default"))], &[]));
                assert_eq!(resource_names(&rec.update(1).await), ["default"]);
                assert_eq!(s.recv().await.response_nonce, "n");
                handle.set_interest(ads::SECRET, names(["default"]));
                assert_eq!(s.recv().await.resource_names_unsubscribe, ["ROOTCA"]);
                s.expect_silence(QUIET).await;
            }
        }
        handle.shutdown();
        let _ = std::fs::remove_file(&path);
    }
}

#[tokio::test]
async fn connects_once_the_server_appears() {
    let path = socket_path("late");
    let _ = std::fs::remove_file(&path);
    let (rec, handle) = start_ads(config(Target::Unix(path.clone()), ApiType::Delta));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(rec.states.lock().unwrap().is_empty(), "no stream, no connected state");
    let mut server = serve_unix(&path);
    let mut s = server.next_delta().await;
    assert_eq!(s.recv().await.type_url, ads::CLUSTER);
    assert_eq!(rec.states(1).await, vec![true]);
    // A stream that fails with an error status is retried as well.
    s.responses.send(Err(tonic::Status::unavailable("restarting"))).unwrap();
    let mut s = server.next_delta().await;
    let r = s.recv().await;
    assert!(r.node.is_some());
    assert_eq!(rec.states(3).await, vec![true, false, true]);
    handle.shutdown();
    let _ = std::fs::remove_file(&path);
}

/// A self-signed certificate for `name` made by the openssl CLI: (cert PEM, key PEM).
fn self_signed(name: &str) -> (Vec<u8>, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!("remora-ads-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-subj", &format!("/CN={name}"), "-addext", &format!("subjectAltName=DNS:{name}")])
        // webpki rejects a CA certificate as the end entity.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is needed for the TLS test");
    assert!(status.success());
    (std::fs::read(cert).unwrap(), std::fs::read(key).unwrap())
}

#[tokio::test]
async fn tls_with_server_name_and_h2() {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let (cert_pem, key_pem) = self_signed("istiod.istio-system.svc");
    let cert = CertificateDer::from_pem_slice(&cert_pem).unwrap();
    let key = PrivateKeyDer::from_pem_slice(&key_pem).unwrap();
    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    server_tls.alpn_protocols = vec![b"h2".to_vec()];
    let (addr, mut server) = serve_tls(std::sync::Arc::new(server_tls)).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The proxy's upstream context may carry Istio's ALPNs: the client must offer h2 only.
    client_tls.alpn_protocols = vec![b"istio".to_vec()];
    let client_tls = std::sync::Arc::new(client_tls);

    // The wrong name fails verification: no stream, no connected state.
    let mut cfg = config(Target::Tcp(addr.to_string()), ApiType::Delta);
    cfg.tls = Some(client_tls.clone());
    cfg.tls_server_name = Some("other.example".into());
    let (rec, handle) = start_ads(cfg.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(server.accepted.try_recv().is_err(), "a stream despite a bad certificate name");
    assert!(rec.states.lock().unwrap().is_empty());
    handle.shutdown();

    cfg.tls_server_name = Some("istiod.istio-system.svc".into());
    let (rec, handle) = start_ads(cfg);
    let mut s = server.next_delta().await;
    assert_eq!(s.authority.as_deref(), Some("xds-grpc"));
    assert_eq!(s.recv().await.type_url, ads::CLUSTER);
    s.send(delta_response(ads::CLUSTER, "t", vec![delta_resource("c1", "1", cluster("c1"))], &[]));
    assert_eq!(resource_names(&rec.update(1).await), ["c1"]);
    assert_eq!(s.recv().await.response_nonce, "t");
    handle.shutdown();
}
