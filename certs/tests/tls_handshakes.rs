//! Real rustls handshakes over loopback TCP between `ServerTlsConfig` and `ClientTlsConfig`,
//! built from Istio-shaped Envoy protos, with certificates from the dev CA.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use certs::dev_ca::{KeyType, Validity, WorkloadOptions};
use certs::test_util::{
    file, inline, install, istio_inbound_context, istio_outbound_context, new_root, sds, string_matcher,
    tls_certificate, workload,
};
use certs::tls::{CertificateSecret, Readiness};
use certs::{
    ClientTlsConfig, DEFAULT_CERT_SECRET, PeerIdentity, ROOT_CA_SECRET, SecretStore, ServerTlsConfig, SpiffeId,
    TlsError,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SubjectAltNameMatcher, TlsParameters,
    UpstreamTlsContext, common_tls_context::ValidationContextType, subject_alt_name_matcher,
    tls_parameters::TlsProtocol,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/server";
const T: Duration = Duration::from_secs(10);

fn day() -> Validity {
    Validity::for_duration(Duration::from_secs(86400))
}

/// What the server saw on an accepted connection.
#[derive(Debug)]
struct Accepted {
    peer: Option<PeerIdentity>,
    alpn: Option<Vec<u8>>,
    sni: Option<String>,
    version: Option<rustls::ProtocolVersion>,
    suite: Option<rustls::CipherSuite>,
}

/// Accepts `n` connections one after the other; each: handshake, read a line, answer "pong".
async fn serve(server: Arc<ServerTlsConfig>, n: usize) -> (SocketAddr, JoinHandle<Vec<Result<Accepted, String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut out = Vec::new();
        for _ in 0..n {
            let (tcp, _) = listener.accept().await.unwrap();
            let r = tokio::time::timeout(T, async {
                let mut tls = server.accept(tcp).await.map_err(|e| e.to_string())?;
                let (_, conn) = tls.get_ref();
                let acc = Accepted {
                    peer: PeerIdentity::from_connection(conn),
                    alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                    sni: conn.server_name().map(str::to_string),
                    version: conn.protocol_version(),
                    suite: conn.negotiated_cipher_suite().map(|s| s.suite()),
                };
                let mut line = String::new();
                BufReader::new(&mut tls).read_line(&mut line).await.map_err(|e| e.to_string())?;
                tls.write_all(b"pong\n").await.map_err(|e| e.to_string())?;
                tls.shutdown().await.map_err(|e| e.to_string())?;
                Ok(acc)
            })
            .await
            .unwrap_or_else(|_| Err("server timed out".into()));
            out.push(r);
        }
        out
    });
    (addr, task)
}

/// Handshake, send "ping", expect "pong"; returns the server's identity and the ALPN.
async fn exchange(
    client: &ClientTlsConfig,
    addr: SocketAddr,
) -> Result<(Option<PeerIdentity>, Option<Vec<u8>>), String> {
    tokio::time::timeout(T, async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut tls = client.connect(None, tcp).await.map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        let peer = PeerIdentity::from_connection(conn);
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        tls.write_all(b"ping\n").await.map_err(|e| e.to_string())?;
        let mut buf = String::new();
        tls.read_to_string(&mut buf).await.map_err(|e| e.to_string())?;
        if buf != "pong\n" {
            return Err(format!("unexpected answer {buf:?}"));
        }
        Ok((peer, alpn))
    })
    .await
    .unwrap_or_else(|_| Err("client timed out".into()))
}

struct Mesh {
    ca: certs::dev_ca::DevCa,
    server_store: SecretStore,
    client_store: SecretStore,
    server: Arc<ServerTlsConfig>,
    client: ClientTlsConfig,
}

/// An Istio-shaped pair: inbound requires spiffe://cluster.local/*, outbound expects SERVER_ID.
fn mesh() -> Mesh {
    let ca = new_root();
    let server_store = SecretStore::new();
    let client_store = SecretStore::new();
    install(&server_store, &workload(&ca, SERVER_ID, day())).unwrap();
    install(&client_store, &workload(&ca, CLIENT_ID, day())).unwrap();
    let server = ServerTlsConfig::from_proto(
        &istio_inbound_context("cluster.local", &["istio-peer-exchange", "istio", "h2"]),
        &server_store,
    )
    .unwrap();
    let client = ClientTlsConfig::from_proto(
        &istio_outbound_context(SERVER_ID, "outbound_.8080_._.server.default.svc.cluster.local"),
        &client_store,
    )
    .unwrap();
    Mesh { ca, server_store, client_store, server: Arc::new(server), client }
}

#[tokio::test]
async fn istio_mtls_handshake_exchanges_identities() {
    let m = mesh();
    assert_eq!(m.server.readiness(), Readiness::Ready);
    assert_eq!(m.client.readiness(), Readiness::Ready);
    let (addr, server) = serve(m.server.clone(), 1).await;
    let (server_peer, alpn) = exchange(&m.client, addr).await.unwrap();
    let accepted = server.await.unwrap().pop().unwrap().unwrap();

    // Each side sees the other's SPIFFE identity from the verified chain.
    let client_seen = accepted.peer.unwrap();
    assert_eq!(client_seen.spiffe.unwrap().as_str(), CLIENT_ID);
    assert_eq!(client_seen.uri_sans, vec![CLIENT_ID.to_string()]);
    let client_cert = m.client_store.tls_certificate(DEFAULT_CERT_SECRET).unwrap();
    assert_eq!(client_seen.sha256, client_cert.identity().sha256);
    let server_seen = server_peer.unwrap();
    assert_eq!(server_seen.spiffe.unwrap().as_str(), SERVER_ID);

    assert_eq!(alpn.as_deref(), Some(&b"istio-peer-exchange"[..]));
    assert_eq!(accepted.alpn.as_deref(), Some(&b"istio-peer-exchange"[..]));
    assert_eq!(accepted.sni.as_deref(), Some("outbound_.8080_._.server.default.svc.cluster.local"));
    // Envoy's client default maximum is TLS 1.2.
    assert_eq!(accepted.version, Some(rustls::ProtocolVersion::TLSv1_2));
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let m = mesh();
    let mut ctx = istio_outbound_context(SERVER_ID, "");
    ctx.common_tls_context.as_mut().unwrap().tls_certificate_sds_secret_configs.clear();
    let client = ClientTlsConfig::from_proto(&ctx, &m.client_store).unwrap();
    let (addr, server) = serve(m.server.clone(), 1).await;
    assert!(exchange(&client, addr).await.is_err());
    let err = server.await.unwrap().pop().unwrap().unwrap_err();
    assert!(err.contains("peer sent no certificates"), "{err}");
}

#[tokio::test]
async fn client_rejects_server_with_wrong_spiffe_id() {
    let m = mesh();
    let ctx = istio_outbound_context("spiffe://cluster.local/ns/default/sa/someone-else", "");
    let client = ClientTlsConfig::from_proto(&ctx, &m.client_store).unwrap();
    let (addr, server) = serve(m.server.clone(), 1).await;
    let err = exchange(&client, addr).await.unwrap_err();
    assert!(err.contains("match no configured SAN matcher"), "{err}");
    assert!(err.contains(SERVER_ID), "{err}");
    assert!(server.await.unwrap().pop().unwrap().is_err());
}

#[tokio::test]
async fn server_rejects_client_from_other_trust_domain() {
    let m = mesh();
    let server = ServerTlsConfig::from_proto(&istio_inbound_context("other.domain", &[]), &m.server_store).unwrap();
    let (addr, server) = serve(Arc::new(server), 1).await;
    assert!(exchange(&m.client, addr).await.is_err());
    let err = server.await.unwrap().pop().unwrap().unwrap_err();
    assert!(err.contains("match no configured SAN matcher"), "{err}");
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_refused() {
    let m = mesh();
    let ca = new_root();
    // Both sides trust `ca`; the client's certificate is expired.
    install(&m.server_store, &workload(&ca, SERVER_ID, day())).unwrap();
    install(&m.client_store, &workload(&ca, CLIENT_ID, Validity::expired())).unwrap();
    let (addr, server) = serve(m.server.clone(), 1).await;
    assert!(exchange(&m.client, addr).await.is_err());
    let err = server.await.unwrap().pop().unwrap().unwrap_err();
    assert!(err.contains("expired"), "{err}");

    // Now the server's certificate is not yet valid: the client refuses it.
    install(&m.client_store, &workload(&ca, CLIENT_ID, day())).unwrap();
    install(&m.server_store, &workload(&ca, SERVER_ID, Validity::not_yet_valid())).unwrap();
    let (addr, _server) = serve(m.server.clone(), 1).await;
    let err = exchange(&m.client, addr).await.unwrap_err();
    assert!(err.contains("not valid yet"), "{err}");
}

#[tokio::test]
async fn certificates_from_an_untrusted_ca_are_refused() {
    let m = mesh();
    let rogue = certs::dev_ca::DevCa::new_root(&certs::dev_ca::CaOptions {
        common_name: "Rogue CA".into(),
        ..Default::default()
    })
    .unwrap();
    let rogue_client = workload(&rogue, CLIENT_ID, day());
    // The client presents a certificate from another CA (it still trusts the real root).
    m.client_store
        .set_tls_certificate_pem(
            DEFAULT_CERT_SECRET,
            rogue_client.chain_pem.as_bytes(),
            rogue_client.key_pem.as_bytes(),
        )
        .unwrap();
    let (addr, server) = serve(m.server.clone(), 1).await;
    assert!(exchange(&m.client, addr).await.is_err());
    let err = server.await.unwrap().pop().unwrap().unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn warming_until_secrets_arrive() {
    let store = SecretStore::new();
    let server = Arc::new(ServerTlsConfig::from_proto(&istio_inbound_context("cluster.local", &[]), &store).unwrap());
    assert_eq!(
        server.readiness(),
        Readiness::Warming { missing: vec![DEFAULT_CERT_SECRET.into(), ROOT_CA_SECRET.into()] }
    );
    let client_store = SecretStore::new();
    let ca = new_root();
    install(&client_store, &workload(&ca, CLIENT_ID, day())).unwrap();
    let client = ClientTlsConfig::from_proto(&istio_outbound_context(SERVER_ID, ""), &client_store).unwrap();

    // A handshake while warming fails cleanly (no certificate to present).
    let (addr, task) = serve(server.clone(), 1).await;
    assert!(exchange(&client, addr).await.is_err());
    assert!(task.await.unwrap().pop().unwrap().is_err());

    // Secrets arrive; whoever waits on `ready()` wakes up, and handshakes work.
    let waiter = {
        let server = server.clone();
        tokio::spawn(async move { server.ready().await })
    };
    install(&store, &workload(&ca, SERVER_ID, day())).unwrap();
    tokio::time::timeout(T, waiter).await.unwrap().unwrap();
    assert_eq!(server.readiness(), Readiness::Ready);
    let (addr, task) = serve(server.clone(), 1).await;
    exchange(&client, addr).await.unwrap();
    task.await.unwrap().pop().unwrap().unwrap();

    // Removing a secret sends the config back to warming.
    store.remove(&[ROOT_CA_SECRET]);
    assert_eq!(server.readiness(), Readiness::Warming { missing: vec![ROOT_CA_SECRET.into()] });
}

#[tokio::test]
async fn rotation_applies_to_next_handshake_and_open_connections_survive() {
    let m = mesh();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = m.server.clone();
    // Echo server handling connections concurrently.
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let server = server.clone();
            tokio::spawn(async move {
                let Ok(tls) = server.accept(tcp).await else {
                    return;
                };
                let (r, mut w) = tokio::io::split(tls);
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if w.write_all(format!("{l}\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    async fn open(client: &ClientTlsConfig, addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        client.connect(None, tcp).await.unwrap()
    }
    async fn echo(tls: &mut tokio_rustls::client::TlsStream<TcpStream>, msg: &str) -> String {
        tls.write_all(format!("{msg}\n").as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len() + 1];
        tls.read_exact(&mut buf).await.unwrap();
        String::from_utf8(buf).unwrap()
    }
    fn server_sha(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> String {
        PeerIdentity::from_connection(tls.get_ref().1).unwrap().sha256
    }

    let mut first = open(&m.client, addr).await;
    assert_eq!(echo(&mut first, "one").await, "one\n");
    let old_sha = server_sha(&first);
    // Without a secret change, the next connection resumes the session.
    let resumed = open(&m.client, addr).await;
    assert_eq!(resumed.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    assert_eq!(server_sha(&resumed), old_sha);
    assert_eq!(old_sha, m.server_store.tls_certificate(DEFAULT_CERT_SECRET).unwrap().identity().sha256);

    // Rotate the server's certificate (same CA, new key and serial).
    let gen_before = m.server_store.generation();
    let rotated = workload(&m.ca, SERVER_ID, day());
    install(&m.server_store, &rotated).unwrap();
    assert!(m.server_store.generation() > gen_before);

    // The same client config (with its session cache) does a full handshake after the
    // rotation: resumption state is dropped on secret changes, as Envoy's context rebuild does.
    let mut second = open(&m.client, addr).await;
    assert_eq!(second.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Full));
    assert_eq!(echo(&mut second, "two").await, "two\n");
    let new_sha = server_sha(&second);
    assert_ne!(new_sha, old_sha);
    let rotated_der: rustls_pki_types::CertificateDer<'static> =
        rustls_pki_types::pem::PemObject::from_pem_slice(rotated.cert_pem.as_bytes()).unwrap();
    assert_eq!(new_sha, PeerIdentity::from_der(&rotated_der).unwrap().sha256);

    // The connection opened before the rotation still works.
    assert_eq!(echo(&mut first, "still here").await, "still here\n");
    assert_eq!(server_sha(&first), old_sha);
}

#[tokio::test]
async fn trust_bundle_rotation_refuses_old_peers_on_next_handshake() {
    let m = mesh();
    let new_ca = new_root();
    // The server now trusts only the new root (and serves a certificate from it).
    install(&m.server_store, &workload(&new_ca, SERVER_ID, day())).unwrap();
    let (addr, server) = serve(m.server.clone(), 1).await;
    // The client still has the old certificate and root: refused both ways.
    assert!(exchange(&m.client, addr).await.is_err());
    assert!(server.await.unwrap().pop().unwrap().is_err());
    // The client gets its new certificate and bundle: accepted.
    install(&m.client_store, &workload(&new_ca, CLIENT_ID, day())).unwrap();
    let (addr, server) = serve(m.server.clone(), 1).await;
    exchange(&m.client, addr).await.unwrap();
    server.await.unwrap().pop().unwrap().unwrap();
}

#[tokio::test]
async fn upstream_without_validation_context_accepts_any_server_certificate() {
    // Envoy: no validation context, no verification. The server's CA is unknown to the client.
    let m = mesh();
    let ctx = UpstreamTlsContext { common_tls_context: Some(CommonTlsContext::default()), ..Default::default() };
    let client = ClientTlsConfig::from_proto(&ctx, &SecretStore::new()).unwrap();
    // The server does not ask for a client certificate here.
    let server_ctx = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(DEFAULT_CERT_SECRET)],
            ..Default::default()
        }),
        ..Default::default()
    };
    let server = ServerTlsConfig::from_proto(&server_ctx, &m.server_store).unwrap();
    let (addr, task) = serve(Arc::new(server), 1).await;
    let (peer, _) = exchange(&client, addr).await.unwrap();
    assert_eq!(peer.unwrap().spiffe.unwrap().as_str(), SERVER_ID);
    let acc = task.await.unwrap().pop().unwrap().unwrap();
    assert!(acc.peer.is_none(), "no client certificate was requested");
    // No SNI configured: none is sent.
    assert_eq!(acc.sni, None);
}

#[tokio::test]
async fn alpn_mismatch_continues_without_alpn_like_envoy() {
    let m = mesh();
    let server =
        ServerTlsConfig::from_proto(&istio_inbound_context("cluster.local", &["h2", "http/1.1"]), &m.server_store)
            .unwrap();
    let (addr, task) = serve(Arc::new(server), 1).await;
    // The client offers istio-peer-exchange, istio only.
    let (_, alpn) = exchange(&m.client, addr).await.unwrap();
    assert_eq!(alpn, None);
    assert_eq!(task.await.unwrap().pop().unwrap().unwrap().alpn, None);
}

#[tokio::test]
async fn static_files_typed_san_matchers_and_tls_params() {
    let ca = new_root();
    let dir = tempfile::tempdir().unwrap();
    let server_cert = ca
        .issue(&WorkloadOptions {
            spiffe: None,
            dns_names: vec!["api.example.com".into()],
            ips: vec!["127.0.0.1".parse().unwrap()],
            common_name: Some("api".into()),
            validity: day(),
            key_type: KeyType::EcdsaP384,
        })
        .unwrap();
    server_cert.write(dir.path()).unwrap();
    let client_cert = workload(&ca, CLIENT_ID, day());

    // Server: static files, typed URI matcher with a regex, TLS 1.2 only with one suite.
    let server_ctx = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificates: vec![envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::TlsCertificate {
                certificate_chain: Some(file(&dir.path().join("cert-chain.pem"))),
                private_key: Some(file(&dir.path().join("key.pem"))),
                ..Default::default()
            }],
            validation_context_type: Some(ValidationContextType::ValidationContext(CertificateValidationContext {
                trusted_ca: Some(file(&dir.path().join("root-cert.pem"))),
                match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                    san_type: subject_alt_name_matcher::SanType::Uri as i32,
                    matcher: Some(string_matcher(MatchPattern::SafeRegex(
                        envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                            regex: "spiffe://cluster\\.local/ns/default/sa/[a-z]+".into(),
                            ..Default::default()
                        },
                    ))),
                    oid: String::new(),
                }],
                ..Default::default()
            })),
            tls_params: Some(TlsParameters {
                tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
                tls_maximum_protocol_version: TlsProtocol::TlSv12 as i32,
                cipher_suites: vec!["[ECDHE-ECDSA-CHACHA20-POLY1305|AES128-SHA]".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let server = ServerTlsConfig::from_proto(&server_ctx, &SecretStore::new()).unwrap();
    assert_eq!(server.warnings().len(), 1, "{:?}", server.warnings());

    // Client: static inline cert, typed DNS matcher (exact, case-insensitive DNS) + IP matcher.
    let client_ctx = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificates: vec![tls_certificate(&client_cert)],
            validation_context_type: Some(ValidationContextType::ValidationContext(CertificateValidationContext {
                trusted_ca: Some(inline(ca.cert_pem())),
                match_typed_subject_alt_names: vec![
                    SubjectAltNameMatcher {
                        san_type: subject_alt_name_matcher::SanType::IpAddress as i32,
                        matcher: Some(string_matcher(MatchPattern::Exact("10.9.9.9".into()))),
                        oid: String::new(),
                    },
                    SubjectAltNameMatcher {
                        san_type: subject_alt_name_matcher::SanType::Dns as i32,
                        matcher: Some(string_matcher(MatchPattern::Exact("API.example.com".into()))),
                        oid: String::new(),
                    },
                ],
                ..Default::default()
            })),
            ..Default::default()
        }),
        sni: "api.example.com".into(),
        ..Default::default()
    };
    let client = ClientTlsConfig::from_proto(&client_ctx, &SecretStore::new()).unwrap();
    let (addr, task) = serve(Arc::new(server), 1).await;
    let (peer, _) = exchange(&client, addr).await.unwrap();
    let peer = peer.unwrap();
    assert_eq!(peer.dns_sans, vec!["api.example.com".to_string()]);
    assert_eq!(peer.ip_sans, vec!["127.0.0.1".to_string()]);
    assert_eq!(peer.subject, "CN=api");
    let acc = task.await.unwrap().pop().unwrap().unwrap();
    assert_eq!(acc.version, Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(acc.suite, Some(rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256));
    assert_eq!(acc.peer.unwrap().spiffe.unwrap().as_str(), CLIENT_ID);
}

#[tokio::test]
async fn version_mismatch_fails() {
    let m = mesh();
    let mut ctx = istio_inbound_context("cluster.local", &[]);
    ctx.common_tls_context.as_mut().unwrap().tls_params =
        Some(TlsParameters { tls_minimum_protocol_version: TlsProtocol::TlSv13 as i32, ..Default::default() });
    let server = ServerTlsConfig::from_proto(&ctx, &m.server_store).unwrap();
    let (addr, task) = serve(Arc::new(server), 1).await;
    // The client defaults to TLS 1.2 at most (Envoy's client default).
    let err = exchange(&m.client, addr).await.unwrap_err();
    assert!(err.contains("ProtocolVersion") || err.contains("version"), "{err}");
    assert!(task.await.unwrap().pop().unwrap().is_err());
}

#[tokio::test]
async fn auto_sni_san_validation_checks_the_sni() {
    let m = mesh();
    let ca = new_root();
    let server_cert = ca
        .issue(&WorkloadOptions {
            spiffe: None,
            dns_names: vec!["*.example.com".into()],
            ips: vec![],
            common_name: None,
            validity: day(),
            key_type: KeyType::EcdsaP256,
        })
        .unwrap();
    let store = SecretStore::new();
    install(&store, &server_cert).unwrap();
    let server_ctx = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(DEFAULT_CERT_SECRET)],
            ..Default::default()
        }),
        ..Default::default()
    };
    let server = Arc::new(ServerTlsConfig::from_proto(&server_ctx, &store).unwrap());
    let ctx = |auto_host_sni| UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            validation_context_type: Some(ValidationContextType::ValidationContext(CertificateValidationContext {
                trusted_ca: Some(inline(ca.cert_pem())),
                ..Default::default()
            })),
            ..Default::default()
        }),
        sni: "other.test".into(),
        auto_host_sni,
        auto_sni_san_validation: true,
        ..Default::default()
    };
    // SNI "other.test" does not match *.example.com.
    let client = ClientTlsConfig::from_proto(&ctx(false), &m.client_store).unwrap();
    let (addr, _t) = serve(server.clone(), 1).await;
    let err = exchange(&client, addr).await.unwrap_err();
    assert!(err.contains("match no configured SAN matcher"), "{err}");
    // auto_host_sni with the host's name "api.example.com" matches the wildcard.
    let client = ClientTlsConfig::from_proto(&ctx(true), &m.client_store).unwrap();
    let (addr, t) = serve(server.clone(), 1).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = client.connect(Some("api.example.com"), tcp).await.unwrap();
    tls.write_all(b"ping\n").await.unwrap();
    let mut s = String::new();
    tls.read_to_string(&mut s).await.unwrap();
    assert_eq!(s, "pong\n");
    let acc = t.await.unwrap().pop().unwrap().unwrap();
    assert_eq!(acc.sni.as_deref(), Some("api.example.com"));
}

#[tokio::test]
async fn require_sni_refuses_clients_without_sni() {
    let m = mesh();
    let mut ctx = istio_inbound_context("cluster.local", &[]);
    ctx.require_sni = Some(envoy_types::pb::google::protobuf::BoolValue { value: true });
    let server = Arc::new(ServerTlsConfig::from_proto(&ctx, &m.server_store).unwrap());
    let (addr, task) = serve(server.clone(), 1).await;
    // m.client sends no SNI here (empty sni).
    let client = ClientTlsConfig::from_proto(&istio_outbound_context(SERVER_ID, ""), &m.client_store).unwrap();
    assert!(exchange(&client, addr).await.is_err());
    assert!(task.await.unwrap().pop().unwrap().is_err());
    let (addr, task) = serve(server, 1).await;
    exchange(&m.client, addr).await.unwrap();
    task.await.unwrap().pop().unwrap().unwrap();
}

#[tokio::test]
async fn rsa_and_ed25519_server_keys() {
    let ca = new_root();
    let dir = tempfile::tempdir().unwrap();
    let rsa_key = dir.path().join("rsa.pem");
    let st = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&rsa_key)
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    let rsa_pem = std::fs::read_to_string(&rsa_key).unwrap();
    let mut opts = WorkloadOptions::spiffe(SpiffeId::parse(SERVER_ID).unwrap());
    opts.validity = day();
    let rsa = ca.issue_with_key_pem(&opts, &rsa_pem).unwrap();
    opts.key_type = KeyType::Ed25519;
    let ed = ca.issue(&opts).unwrap();
    for issued in [rsa, ed] {
        let store = SecretStore::new();
        install(&store, &issued).unwrap();
        let server_ctx = DownstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![sds(DEFAULT_CERT_SECRET)],
                ..Default::default()
            }),
            ..Default::default()
        };
        let server = Arc::new(ServerTlsConfig::from_proto(&server_ctx, &store).unwrap());
        let client_ctx = UpstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                validation_context_type: Some(ValidationContextType::ValidationContext(CertificateValidationContext {
                    trusted_ca: Some(inline(ca.cert_pem())),
                    ..Default::default()
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let client = ClientTlsConfig::from_proto(&client_ctx, &SecretStore::new()).unwrap();
        let (addr, task) = serve(server, 1).await;
        let (peer, _) = exchange(&client, addr).await.unwrap();
        assert_eq!(peer.unwrap().spiffe.unwrap().as_str(), SERVER_ID);
        task.await.unwrap().pop().unwrap().unwrap();
    }
}

// === configuration errors ===

fn err_of<T: std::fmt::Debug>(r: Result<T, TlsError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn unsupported_security_settings_are_errors() {
    let store = SecretStore::new();
    let base = || istio_inbound_context("cluster.local", &[]);
    let with_vc = |vc: CertificateValidationContext| {
        let mut c = base();
        c.common_tls_context.as_mut().unwrap().validation_context_type =
            Some(ValidationContextType::ValidationContext(vc));
        c
    };
    let ca = new_root();
    let trusted = || CertificateValidationContext { trusted_ca: Some(inline(ca.cert_pem())), ..Default::default() };
    let cases: Vec<(DownstreamTlsContext, &str)> = vec![
        (
            with_vc(CertificateValidationContext { verify_certificate_spki: vec!["abc".into()], ..trusted() }),
            "common_tls_context.validation_context.verify_certificate_spki: not supported",
        ),
        (
            with_vc(CertificateValidationContext { verify_certificate_hash: vec!["abc".into()], ..trusted() }),
            "common_tls_context.validation_context.verify_certificate_hash: not supported",
        ),
        (
            with_vc(CertificateValidationContext { crl: Some(inline("x")), ..trusted() }),
            "common_tls_context.validation_context.crl: not supported",
        ),
        (
            with_vc(CertificateValidationContext { trust_chain_verification: 1, ..trusted() }),
            "common_tls_context.validation_context.trust_chain_verification: not supported",
        ),
        (
            with_vc(CertificateValidationContext { allow_expired_certificate: true, ..trusted() }),
            "common_tls_context.validation_context.allow_expired_certificate: not supported",
        ),
        (
            with_vc(CertificateValidationContext {
                custom_validator_config: Some(envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig {
                    name: "envoy.tls.cert_validator.spiffe".into(),
                    typed_config: None,
                }),
                ..trusted()
            }),
            "common_tls_context.validation_context.custom_validator_config: not supported",
        ),
        (
            with_vc(CertificateValidationContext {
                match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                    san_type: subject_alt_name_matcher::SanType::Uri as i32,
                    matcher: Some(string_matcher(MatchPattern::Exact(CLIENT_ID.into()))),
                    oid: String::new(),
                }],
                ..Default::default()
            }),
            "common_tls_context.validation_context: SAN-based verification of peer certificates without trusted CA is insecure and not allowed",
        ),
    ];
    for (ctx, want) in cases {
        let e = err_of(ServerTlsConfig::from_proto(&ctx, &store));
        assert!(e.starts_with(want), "got {e:?}, want prefix {want:?}");
    }

    // A downstream context without any certificate.
    let e = err_of(ServerTlsConfig::from_proto(&DownstreamTlsContext::default(), &store));
    assert!(e == "common_tls_context: No TLS certificates found for server context", "{e}");

    // auto_sni_san_validation without a CA.
    let ctx = UpstreamTlsContext { auto_sni_san_validation: true, ..Default::default() };
    let e = err_of(ClientTlsConfig::from_proto(&ctx, &store));
    assert!(e.contains("without configuring a trusted CA"), "{e}");

    // A bad key file names the field and the file.
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificates: vec![envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::TlsCertificate {
                certificate_chain: Some(inline(ca.cert_pem())),
                private_key: Some(file(std::path::Path::new("/nonexistent/key.pem"))),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let e = err_of(ClientTlsConfig::from_proto(&ctx, &store));
    assert!(
        e.starts_with("common_tls_context.tls_certificates[0].private_key.filename: reading /nonexistent/key.pem"),
        "{e}"
    );
}

#[test]
fn mismatched_key_and_bad_sds_secrets_are_rejected() {
    let ca = new_root();
    let a = workload(&ca, CLIENT_ID, day());
    let b = workload(&ca, SERVER_ID, day());
    let store = SecretStore::new();
    let e = err_of(store.set_tls_certificate_pem(DEFAULT_CERT_SECRET, a.chain_pem.as_bytes(), b.key_pem.as_bytes()));
    assert!(e.contains("private key does not match"), "{e}");
    assert!(store.tls_certificate(DEFAULT_CERT_SECRET).is_none());
    let e = err_of(store.set_trusted_ca_pem(ROOT_CA_SECRET, b"garbage"));
    assert!(e.starts_with("secret \"ROOTCA\".validation_context.trusted_ca: no PEM certificate"), "{e}");
    // SDS Secret proto path.
    let secret = envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret {
        name: "default".into(),
        r#type: Some(envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type::TlsCertificate(
            tls_certificate(&a),
        )),
    };
    store.apply(&secret).unwrap();
    let got: Arc<CertificateSecret> = store.tls_certificate("default").unwrap();
    assert_eq!(got.identity().spiffe.as_ref().unwrap().as_str(), CLIENT_ID);
}

#[tokio::test]
async fn downstream_client_certificate_requirements_follow_envoy() {
    let m = mesh();
    let no_cert_client = {
        let mut ctx = istio_outbound_context(SERVER_ID, "");
        ctx.common_tls_context.as_mut().unwrap().tls_certificate_sds_secret_configs.clear();
        ClientTlsConfig::from_proto(&ctx, &m.client_store).unwrap()
    };
    let server_with = |vc: CertificateValidationContext| {
        let ctx = DownstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![sds(DEFAULT_CERT_SECRET)],
                validation_context_type: Some(ValidationContextType::ValidationContext(vc)),
                ..Default::default()
            }),
            ..Default::default()
        };
        Arc::new(ServerTlsConfig::from_proto(&ctx, &m.server_store).unwrap())
    };
    let ca_only = CertificateValidationContext { trusted_ca: Some(inline(m.ca.cert_pem())), ..Default::default() };

    // Trusted CA only, no require_client_certificate: a certificate is optional...
    let server = server_with(ca_only.clone());
    let (addr, task) = serve(server.clone(), 2).await;
    exchange(&no_cert_client, addr).await.unwrap();
    // ...but verified when presented.
    exchange(&m.client, addr).await.unwrap();
    let mut results = task.await.unwrap();
    let with_cert = results.pop().unwrap().unwrap();
    let without = results.pop().unwrap().unwrap();
    assert!(without.peer.is_none());
    assert_eq!(with_cert.peer.unwrap().spiffe.unwrap().as_str(), CLIENT_ID);

    // SAN matchers make the certificate mandatory even without require_client_certificate.
    #[allow(deprecated)]
    let server = server_with(CertificateValidationContext {
        match_subject_alt_names: vec![string_matcher(MatchPattern::Prefix("spiffe://cluster.local/".into()))],
        ..ca_only
    });
    let (addr, task) = serve(server, 1).await;
    assert!(exchange(&no_cert_client, addr).await.is_err());
    let err = task.await.unwrap().pop().unwrap().unwrap_err();
    assert!(err.contains("peer sent no certificates"), "{err}");
}

#[tokio::test]
async fn combined_context_without_any_ca_fails_handshakes_with_a_reason() {
    let m = mesh();
    // ROOTCA arrives without a trusted CA: the merged context would match SANs with nothing to
    // chain to, which Envoy forbids. The handshake fails and says why.
    #[allow(deprecated)]
    let no_ca = CertificateValidationContext {
        match_subject_alt_names: vec![string_matcher(MatchPattern::Exact(SERVER_ID.into()))],
        ..Default::default()
    };
    m.client_store.set_validation_context(ROOT_CA_SECRET, &no_ca).unwrap();
    let (addr, _task) = serve(m.server.clone(), 1).await;
    let err = exchange(&m.client, addr).await.unwrap_err();
    assert!(err.contains("SAN-based verification of peer certificates without trusted CA"), "{err}");
}

/// Captures the CA names a server sends in its `CertificateRequest`.
#[derive(Debug)]
struct CaNames {
    inner: Arc<dyn rustls::client::ResolvesClientCert>,
    seen: std::sync::Mutex<Option<Vec<Vec<u8>>>>,
}

impl rustls::client::ResolvesClientCert for CaNames {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        *self.seen.lock().unwrap() = Some(root_hint_subjects.iter().map(|s| s.to_vec()).collect());
        self.inner.resolve(root_hint_subjects, sigschemes)
    }

    fn has_certs(&self) -> bool {
        self.inner.has_certs()
    }
}

/// Handshakes with `client`'s config and returns the CA names the server asked for (None: no
/// certificate was requested).
async fn ca_names_sent(server: Arc<ServerTlsConfig>, client: &ClientTlsConfig) -> Option<Vec<Vec<u8>>> {
    let mut cfg = rustls::ClientConfig::clone(client.client_config());
    let capture = Arc::new(CaNames { inner: cfg.client_auth_cert_resolver.clone(), seen: Default::default() });
    cfg.client_auth_cert_resolver = capture.clone();
    let (addr, task) = serve(server, 1).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(client.server_name(None), tcp).await.unwrap();
    tls.write_all(b"ping\n").await.unwrap();
    let mut buf = String::new();
    tls.read_to_string(&mut buf).await.unwrap();
    task.await.unwrap().pop().unwrap().unwrap();
    capture.seen.lock().unwrap().take()
}

fn subject_der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    cert.subject().as_raw().to_vec()
}

#[tokio::test]
async fn certificate_request_names_the_trusted_cas_like_envoy() {
    // BoringSSL (Envoy) sends the trusted CAs' names unless suppress_client_ca_list is set.
    let m = mesh();
    assert_eq!(ca_names_sent(m.server.clone(), &m.client).await, Some(vec![subject_der(m.ca.cert_pem())]));

    // The trust bundle comes from SDS: a rotated bundle is named from the next handshake on.
    let other = certs::dev_ca::DevCa::new_root(&certs::dev_ca::CaOptions {
        common_name: "Other Root".into(),
        ..Default::default()
    })
    .unwrap();
    let bundle = format!("{}{}", m.ca.cert_pem(), other.cert_pem());
    m.server_store.set_trusted_ca_pem(ROOT_CA_SECRET, bundle.as_bytes()).unwrap();
    let names = ca_names_sent(m.server.clone(), &m.client).await.unwrap();
    assert_eq!(names, vec![subject_der(m.ca.cert_pem()), subject_der(other.cert_pem())]);

    // suppress_client_ca_list: the certificate is still requested and verified, not advertised.
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(DEFAULT_CERT_SECRET)],
            validation_context_type: Some(ValidationContextType::ValidationContext(CertificateValidationContext {
                trusted_ca: Some(inline(m.ca.cert_pem())),
                suppress_client_ca_list: true,
                ..Default::default()
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let server = Arc::new(ServerTlsConfig::from_proto(&ctx, &m.server_store).unwrap());
    assert_eq!(ca_names_sent(server, &m.client).await, Some(vec![]));
}

#[test]
fn require_client_certificate_without_a_trusted_ca_is_refused() {
    // Envoy would accept this and then neither request nor check a certificate.
    let store = SecretStore::new();
    for vc in [None, Some(CertificateValidationContext::default())] {
        let ctx = DownstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![sds(DEFAULT_CERT_SECRET)],
                validation_context_type: vc.map(ValidationContextType::ValidationContext),
                ..Default::default()
            }),
            require_client_certificate: Some(envoy_types::pb::google::protobuf::BoolValue { value: true }),
            ..Default::default()
        };
        let e = err_of(ServerTlsConfig::from_proto(&ctx, &store));
        assert!(e.starts_with("require_client_certificate: needs a validation context"), "{e}");
    }
}

#[tokio::test]
async fn client_alpn_override_and_readiness() {
    let m = mesh();
    let server =
        ServerTlsConfig::from_proto(&istio_inbound_context("cluster.local", &["h2", "istio"]), &m.server_store)
            .unwrap();
    assert!(server.is_ready());
    assert_eq!(server.secret_names(), vec![DEFAULT_CERT_SECRET.to_string(), ROOT_CA_SECRET.to_string()]);
    assert_eq!(m.client.secret_names(), vec![DEFAULT_CERT_SECRET.to_string(), ROOT_CA_SECRET.to_string()]);
    let server = Arc::new(server);
    // The context offers istio-peer-exchange, istio; the override offers h2.
    let h2 = [b"h2".to_vec()];
    let cfg = m.client.client_config_with_alpn(&h2);
    assert!(Arc::ptr_eq(&cfg, &m.client.client_config_with_alpn(&h2)), "built once per list");
    assert_eq!(cfg.alpn_protocols, h2);
    assert_eq!(m.client.alpn_protocols(), [b"istio-peer-exchange".to_vec(), b"istio".to_vec()]);
    let (addr, task) = serve(server, 1).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg).connect(m.client.server_name(None), tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"ping\n").await.unwrap();
    let mut buf = String::new();
    tls.read_to_string(&mut buf).await.unwrap();
    assert_eq!(task.await.unwrap().pop().unwrap().unwrap().alpn, Some(b"h2".to_vec()));

    // Removing a secret makes both ends not ready.
    m.client_store.remove(&[DEFAULT_CERT_SECRET]);
    assert!(!m.client.is_ready());
    assert!(!m.client_store.contains(DEFAULT_CERT_SECRET));
    assert!(m.client_store.contains(ROOT_CA_SECRET));
}

#[test]
fn secrets_are_compiled_whole_then_stored_as_one_update() {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
    let ca = new_root();
    let issued = workload(&ca, SERVER_ID, day());
    let store = SecretStore::new();
    let good = Secret { name: "default".into(), r#type: Some(secret::Type::TlsCertificate(tls_certificate(&issued))) };
    let bad = Secret {
        name: "ROOTCA".into(),
        r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: Some(inline("garbage")),
            ..Default::default()
        })),
    };
    let e = certs::CompiledSecret::from_proto(&bad, "static_resources.secrets[1]").unwrap_err().to_string();
    assert!(e.starts_with("static_resources.secrets[1].validation_context.trusted_ca: no PEM certificate"), "{e}");
    let before = store.generation();
    let compiled = certs::CompiledSecret::from_proto(&good, "default").unwrap();
    let root = certs::CompiledSecret::from_proto(
        &Secret {
            name: "ROOTCA".into(),
            r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
                trusted_ca: Some(inline(ca.cert_pem())),
                ..Default::default()
            })),
        },
        "ROOTCA",
    )
    .unwrap();
    store.set(vec![("default".to_string(), compiled), ("ROOTCA".to_string(), root)]);
    assert_eq!(store.generation(), before + 1);
    assert!(store.contains("default") && store.contains("ROOTCA"));
    // Separate namespaces, as Envoy's SDS subscriptions by type: a certificate named ROOTCA
    // would not be the trust bundle.
    assert!(store.tls_certificate("ROOTCA").is_none());
    store.remove(&["default", "ROOTCA"]);
    assert_eq!(store.generation(), before + 2);
    assert!(!store.contains("default"));
}
