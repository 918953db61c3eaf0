//! The Istio CA client against the in-process test CA server (real gRPC over TLS on loopback).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use certs::ca::{CaClient, CaError};
use certs::test_util::{TestCaOptions, TestCaServer, istio_inbound_context, istio_outbound_context};
use certs::{
    ClientTlsConfig, DEFAULT_CERT_SECRET, PeerIdentity, ROOT_CA_SECRET, Readiness, SecretStore, ServerTlsConfig,
    SpiffeId,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ID: &str = "spiffe://cluster.local/ns/default/sa/productpage";

fn id() -> SpiffeId {
    SpiffeId::parse(ID).unwrap()
}

fn token_file(dir: &tempfile::TempDir, token: &str) -> std::path::PathBuf {
    let p = dir.path().join("istio-token");
    std::fs::write(&p, format!("{token}\n")).unwrap();
    p
}

#[tokio::test]
async fn issues_certificate_into_the_store_and_it_works_for_mtls() {
    let ca = TestCaServer::start(TestCaOptions {
        token: Some("secret-token".into()),
        identity: Some(id()),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ca.client_config(id());
    cfg.token_path = Some(token_file(&dir, "secret-token"));
    cfg.cluster_id = "cluster-east".into();
    cfg.validity = Duration::from_secs(3600);
    let client = CaClient::new(cfg).unwrap();

    let store = SecretStore::new();
    // Configs built before the certificate exists are warming.
    let server = ServerTlsConfig::from_proto(&istio_inbound_context("cluster.local", &[]), &store).unwrap();
    assert!(!server.readiness().is_ready());

    let issued = client.refresh(&store).await.unwrap();
    assert_eq!(ca.issued(), 1);
    assert_eq!(ca.cluster_ids(), vec!["cluster-east".to_string()]);
    assert_eq!(issued.root_pem.trim(), ca.root_pem().trim());
    let lifetime = issued.not_after - issued.not_before;
    assert!((3590..=3610).contains(&lifetime), "lifetime {lifetime}");

    let cert = store.tls_certificate(DEFAULT_CERT_SECRET).unwrap();
    assert_eq!(cert.identity().spiffe.as_ref().unwrap().as_str(), ID);
    assert_eq!(store.validation_context(ROOT_CA_SECRET).unwrap().trusted_ca_count(), 1);
    assert_eq!(server.readiness(), Readiness::Ready);

    // The issued certificate is usable for an Istio mTLS handshake with itself.
    let server = Arc::new(server);
    let client_tls = ClientTlsConfig::from_proto(&istio_outbound_context(ID, "outbound_.9080_._.pp"), &store).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = server.accept(tcp).await.unwrap();
        let peer = PeerIdentity::from_connection(tls.get_ref().1).unwrap();
        tls.write_all(b"hi").await.unwrap();
        tls.shutdown().await.unwrap();
        peer
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = client_tls.connect(None, tcp).await.unwrap();
    let mut s = String::new();
    tls.read_to_string(&mut s).await.unwrap();
    assert_eq!(s, "hi");
    assert_eq!(srv.await.unwrap().spiffe.unwrap().as_str(), ID);
}

#[tokio::test]
async fn wrong_token_and_wrong_identity_are_refused() {
    let ca =
        TestCaServer::start(TestCaOptions { token: Some("right".into()), identity: Some(id()), ..Default::default() })
            .await
            .unwrap();
    let dir = tempfile::tempdir().unwrap();

    let mut cfg = ca.client_config(id());
    cfg.token_path = Some(token_file(&dir, "wrong"));
    let err = CaClient::new(cfg).unwrap().request().await.unwrap_err();
    match err {
        CaError::Status(s) => assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s}"),
        e => panic!("unexpected error {e}"),
    }

    // No token file at all: a clear error naming the file.
    let mut cfg = ca.client_config(id());
    cfg.token_path = Some(dir.path().join("missing-token"));
    let err = CaClient::new(cfg).unwrap().request().await.unwrap_err();
    assert!(matches!(err, CaError::Token { .. }), "{err}");
    assert!(err.to_string().contains("missing-token"), "{err}");

    let mut cfg = ca.client_config(SpiffeId::parse("spiffe://cluster.local/ns/kube-system/sa/admin").unwrap());
    cfg.token_path = Some(token_file(&dir, "right"));
    let err = CaClient::new(cfg).unwrap().request().await.unwrap_err();
    match err {
        CaError::Status(s) => assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s}"),
        e => panic!("unexpected error {e}"),
    }
    assert_eq!(ca.issued(), 0);
}

#[tokio::test]
async fn untrusted_or_misnamed_ca_is_refused() {
    let ca = TestCaServer::start(TestCaOptions::default()).await.unwrap();
    let other = certs::test_util::new_root();

    let mut cfg = ca.client_config(id());
    cfg.ca_root_pem = other.cert_pem().as_bytes().to_vec();
    cfg.request_timeout = Duration::from_secs(5);
    let err = CaClient::new(cfg).unwrap().request().await.unwrap_err();
    assert!(matches!(err, CaError::Status(_)), "{err}");
    assert_eq!(ca.requests(), 0, "the request must not reach an unverified CA");

    // Right root, but the certificate is not for the name we verify.
    let mut cfg = ca.client_config(id());
    cfg.tls_server_name = Some("not-istiod.example".into());
    cfg.request_timeout = Duration::from_secs(5);
    let err = CaClient::new(cfg).unwrap().request().await.unwrap_err();
    assert!(matches!(err, CaError::Status(_)), "{err}");
    assert_eq!(ca.requests(), 0);
}

#[tokio::test]
async fn run_retries_with_backoff_then_renews_at_half_life() {
    let ca = TestCaServer::start(TestCaOptions {
        fail_first: 2,
        // Short-lived certificates: renewal at half of 4s.
        max_validity: Duration::from_secs(4),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut cfg = ca.client_config(id());
    cfg.retry_initial = Duration::from_millis(50);
    cfg.retry_max = Duration::from_millis(200);
    cfg.renew_fraction = 0.5;
    let client = CaClient::new(cfg).unwrap();
    let store = SecretStore::new();
    let mut changes = store.subscribe();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(client.run(store.clone(), async {
        let _ = stop_rx.await;
    }));

    // First issuance after two injected failures.
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            changes.changed().await.unwrap();
            if let Some(c) = store.tls_certificate(DEFAULT_CERT_SECRET) {
                return c;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(ca.requests(), 3);
    assert_eq!(ca.issued(), 1);
    let started = std::time::Instant::now();

    // Renewal: a different certificate about 2s later.
    let second = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            changes.changed().await.unwrap();
            if let Some(c) = store.tls_certificate(DEFAULT_CERT_SECRET)
                && c.identity().sha256 != first.identity().sha256
            {
                return c;
            }
        }
    })
    .await
    .unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1000) && waited <= Duration::from_secs(4), "renewed after {waited:?}");
    assert_eq!(second.identity().spiffe.as_ref().unwrap().as_str(), ID);
    assert_eq!(ca.issued(), 2);

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
}
