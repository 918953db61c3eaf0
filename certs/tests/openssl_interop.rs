//! Interop with the real OpenSSL CLI (`/usr/bin/openssl`), both directions:
//! `openssl s_client` against `ServerTlsConfig`, and `ClientTlsConfig` against
//! `openssl s_server`, with accepted and refused cases. Also checks `PeerIdentity` against
//! what `openssl x509` prints.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use certs::dev_ca::{CaOptions, DevCa, IssuedCert, Validity};
use certs::test_util::{install, istio_inbound_context, istio_outbound_context, new_root, sds, workload};
use certs::{ClientTlsConfig, PeerIdentity, SecretStore, ServerTlsConfig};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{CommonTlsContext, DownstreamTlsContext};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/server";
const T: Duration = Duration::from_secs(15);

fn day() -> Validity {
    Validity::for_duration(Duration::from_secs(86400))
}

/// Writes an issued certificate as cert-chain.pem / key.pem / root-cert.pem in a new subdir.
fn write(dir: &Path, name: &str, issued: &IssuedCert) -> PathBuf {
    let d = dir.join(name);
    issued.write(&d).unwrap();
    d
}

// === openssl s_client -> remora server ===

/// Serves one connection: handshake, read a line, answer "pong <client spiffe>".
async fn remora_server(
    server: Arc<ServerTlsConfig>,
) -> (SocketAddr, tokio::task::JoinHandle<Result<Option<PeerIdentity>, String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        tokio::time::timeout(T, async {
            let mut tls = server.accept(tcp).await.map_err(|e| e.to_string())?;
            let peer = PeerIdentity::from_connection(tls.get_ref().1);
            let mut line = String::new();
            BufReader::new(&mut tls).read_line(&mut line).await.map_err(|e| e.to_string())?;
            let who = peer.as_ref().and_then(|p| p.spiffe.as_ref()).map_or("-".to_string(), |s| s.to_string());
            tls.write_all(format!("pong {who}\n").as_bytes()).await.map_err(|e| e.to_string())?;
            tls.shutdown().await.map_err(|e| e.to_string())?;
            Ok(peer)
        })
        .await
        .unwrap_or_else(|_| Err("server timed out".into()))
    });
    (addr, task)
}

/// Runs `openssl s_client` against `addr`, sends "ping", returns its stdout.
async fn s_client(addr: SocketAddr, args: &[String]) -> String {
    let mut child = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-quiet")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"ping\n").await.unwrap();
    // -quiet implies -ign_eof: s_client exits when the server closes the connection.
    let out = tokio::time::timeout(T, child.wait_with_output()).await.expect("s_client did not exit").unwrap();
    drop(stdin);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn client_args(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "-cert".into(),
        dir.join("cert-chain.pem").display().to_string(),
        "-key".into(),
        dir.join("key.pem").display().to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    ca: DevCa,
    server: Arc<ServerTlsConfig>,
}

/// A remora server configured as an Istio inbound listener, trusting `ca`.
fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let ca = new_root();
    let store = SecretStore::new();
    install(&store, &workload(&ca, SERVER_ID, day())).unwrap();
    let server =
        ServerTlsConfig::from_proto(&istio_inbound_context("cluster.local", &["istio-peer-exchange", "istio"]), &store)
            .unwrap();
    Setup { _tmp: tmp, dir, ca, server: Arc::new(server) }
}

#[tokio::test]
async fn s_client_with_valid_spiffe_certificate_is_accepted() {
    let s = setup();
    let d = write(&s.dir, "client", &workload(&s.ca, CLIENT_ID, day()));
    let root = d.join("root-cert.pem").display().to_string();
    for version in ["-tls1_2", "-tls1_3"] {
        let (addr, task) = remora_server(s.server.clone()).await;
        let out =
            s_client(addr, &client_args(&d, &[version, "-CAfile", &root, "-verify_return_error", "-alpn", "istio"]))
                .await;
        assert_eq!(out, format!("pong {CLIENT_ID}\n"), "{version}");
        let peer = task.await.unwrap().unwrap().unwrap();
        assert_eq!(peer.spiffe.unwrap().as_str(), CLIENT_ID);
    }
}

#[tokio::test]
async fn s_client_refusals() {
    let s = setup();
    let root = {
        let d = write(&s.dir, "ok", &workload(&s.ca, CLIENT_ID, day()));
        d.join("root-cert.pem").display().to_string()
    };
    let rogue = DevCa::new_root(&CaOptions { common_name: "Rogue CA".into(), ..Default::default() }).unwrap();
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        ("no client certificate", vec![], "peer sent no certificates"),
        (
            "wrong trust domain",
            client_args(
                &write(&s.dir, "wrong-td", &workload(&s.ca, "spiffe://evil.example/ns/default/sa/client", day())),
                &[],
            ),
            "match no configured SAN matcher",
        ),
        (
            "expired",
            client_args(&write(&s.dir, "expired", &workload(&s.ca, CLIENT_ID, Validity::expired())), &[]),
            "certificate expired",
        ),
        (
            "untrusted CA",
            client_args(&write(&s.dir, "rogue", &workload(&rogue, CLIENT_ID, day())), &[]),
            "UnknownIssuer",
        ),
    ];
    for (name, mut args, want) in cases {
        args.extend(["-CAfile".to_string(), root.clone()]);
        let (addr, task) = remora_server(s.server.clone()).await;
        let out = s_client(addr, &args).await;
        assert!(!out.contains("pong"), "{name}: s_client got {out:?}");
        let err = task.await.unwrap().unwrap_err();
        assert!(err.contains(want), "{name}: server error {err:?}, want {want:?}");
    }
}

// === remora client -> openssl s_server ===

/// `openssl s_server -rev` (echoes lines reversed) for one connection.
struct SServer {
    child: tokio::process::Child,
    addr: SocketAddr,
}

async fn s_server(args: &[String]) -> SServer {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = Command::new("openssl")
        .args(["s_server", "-accept", &addr.to_string(), "-naccept", "1", "-rev"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    tokio::time::timeout(T, async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.contains("ACCEPT") {
                return;
            }
        }
        panic!("s_server exited before ACCEPT");
    })
    .await
    .expect("s_server did not start");
    // Keep draining stdout so s_server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    SServer { child, addr }
}

fn server_args(dir: &Path, require_client_cert: bool) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "-cert".into(),
        dir.join("cert-chain.pem").display().to_string(),
        "-key".into(),
        dir.join("key.pem").display().to_string(),
        "-alpn".into(),
        "istio-peer-exchange,istio".into(),
    ];
    if require_client_cert {
        v.extend([
            "-CAfile".into(),
            dir.join("root-cert.pem").display().to_string(),
            "-Verify".into(),
            "1".into(),
            "-verify_return_error".into(),
        ]);
    }
    v
}

/// Connects, sends "abc", expects "cba"; returns the server identity and ALPN.
async fn remora_client(client: &ClientTlsConfig, addr: SocketAddr) -> Result<(PeerIdentity, Option<Vec<u8>>), String> {
    tokio::time::timeout(T, async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut tls = client.connect(None, tcp).await.map_err(|e| e.to_string())?;
        let peer = PeerIdentity::from_connection(tls.get_ref().1).ok_or("no peer cert")?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        tls.write_all(b"abc\n").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        if &buf != b"cba\n" {
            return Err(format!("unexpected answer {buf:?}"));
        }
        Ok((peer, alpn))
    })
    .await
    .unwrap_or_else(|_| Err("client timed out".into()))
}

/// A remora client configured as an Istio outbound cluster expecting `peer`, with a client
/// certificate from `ca`.
fn client_for(ca: &DevCa, peer: &str) -> ClientTlsConfig {
    let store = SecretStore::new();
    install(&store, &workload(ca, CLIENT_ID, day())).unwrap();
    ClientTlsConfig::from_proto(&istio_outbound_context(peer, "server.default.svc"), &store).unwrap()
}

#[tokio::test]
async fn remora_client_to_s_server_with_mtls() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = new_root();
    let d = write(tmp.path(), "server", &workload(&ca, SERVER_ID, day()));
    let mut srv = s_server(&server_args(&d, true)).await;
    let client = client_for(&ca, SERVER_ID);
    let (peer, alpn) = remora_client(&client, srv.addr).await.unwrap();
    assert_eq!(peer.spiffe.unwrap().as_str(), SERVER_ID);
    assert_eq!(alpn.as_deref(), Some(&b"istio-peer-exchange"[..]));
    let status = tokio::time::timeout(T, srv.child.wait()).await.unwrap().unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn remora_client_refusals_against_s_server() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = new_root();
    let rogue = DevCa::new_root(&CaOptions { common_name: "Rogue CA".into(), ..Default::default() }).unwrap();

    // The server presents an unexpected SPIFFE ID.
    let d = write(tmp.path(), "other", &workload(&ca, "spiffe://cluster.local/ns/x/sa/y", day()));
    let srv = s_server(&server_args(&d, false)).await;
    let err = remora_client(&client_for(&ca, SERVER_ID), srv.addr).await.unwrap_err();
    assert!(err.contains("match no configured SAN matcher"), "{err}");

    // The server's certificate is expired.
    let d = write(tmp.path(), "expired", &workload(&ca, SERVER_ID, Validity::expired()));
    let srv = s_server(&server_args(&d, false)).await;
    let err = remora_client(&client_for(&ca, SERVER_ID), srv.addr).await.unwrap_err();
    assert!(err.contains("certificate expired"), "{err}");

    // The server's certificate comes from a CA the client does not trust.
    let d = write(tmp.path(), "rogue", &workload(&rogue, SERVER_ID, day()));
    let srv = s_server(&server_args(&d, false)).await;
    let err = remora_client(&client_for(&ca, SERVER_ID), srv.addr).await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");

    // s_server requires a client certificate and the client has none.
    let d = write(tmp.path(), "strict", &workload(&ca, SERVER_ID, day()));
    let srv = s_server(&server_args(&d, true)).await;
    let mut ctx = istio_outbound_context(SERVER_ID, "");
    ctx.common_tls_context.as_mut().unwrap().tls_certificate_sds_secret_configs.clear();
    let store = SecretStore::new();
    install(&store, &workload(&ca, CLIENT_ID, day())).unwrap();
    let no_cert = ClientTlsConfig::from_proto(&ctx, &store).unwrap();
    let err = remora_client(&no_cert, srv.addr).await.unwrap_err();
    assert!(err.contains("received fatal alert"), "{err}");

    // s_server requires a client certificate from its CA; ours comes from the rogue CA.
    let srv = s_server(&server_args(&d, true)).await;
    let store = SecretStore::new();
    install(&store, &workload(&ca, CLIENT_ID, day())).unwrap();
    let rogue_cert = workload(&rogue, CLIENT_ID, day());
    store.set_tls_certificate_pem("default", rogue_cert.chain_pem.as_bytes(), rogue_cert.key_pem.as_bytes()).unwrap();
    let rogue_client = ClientTlsConfig::from_proto(&istio_outbound_context(SERVER_ID, ""), &store).unwrap();
    let err = remora_client(&rogue_client, srv.addr).await.unwrap_err();
    assert!(err.contains("received fatal alert"), "{err}");
}

// === identity fields match OpenSSL ===

async fn openssl_x509(pem: &str, args: &[&str]) -> String {
    let mut child =
        Command::new("openssl").arg("x509").args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(pem.as_bytes()).await.unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn subject_and_hash_match_openssl() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("k.pem");
    let cert = tmp.path().join("c.pem");
    // A subject with several RDNs and characters that need escaping.
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/C=US/ST=CA/O=Acme, Inc./OU=a+b/CN=svc;1 \"x\"",
            "-addext",
            "subjectAltName=URI:spiffe://cluster.local/ns/a/sa/b,DNS:svc.example.com,IP:10.1.2.3",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    let pem = std::fs::read_to_string(&cert).unwrap();
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let id = PeerIdentity::from_der(&der).unwrap();

    let subject = openssl_x509(&pem, &["-noout", "-subject", "-nameopt", "RFC2253"]).await;
    assert_eq!(format!("subject={}", id.subject), subject);
    let fp = openssl_x509(&pem, &["-noout", "-fingerprint", "-sha256"]).await;
    let hex = fp.split_once('=').unwrap().1.replace(':', "").to_ascii_lowercase();
    assert_eq!(id.sha256, hex);
    assert_eq!(id.spiffe.unwrap().as_str(), "spiffe://cluster.local/ns/a/sa/b");
    assert_eq!(id.dns_sans, vec!["svc.example.com".to_string()]);
    assert_eq!(id.ip_sans, vec!["10.1.2.3".to_string()]);

    // The dev CA's certificates too.
    let ca = new_root();
    let subject = openssl_x509(ca.cert_pem(), &["-noout", "-subject", "-nameopt", "RFC2253"]).await;
    let der = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap();
    assert_eq!(format!("subject={}", PeerIdentity::from_der(&der).unwrap().subject), subject);
}

/// An X.509 v1 certificate (no extensions), as Envoy's own examples ship, and its key.
const V1_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBLTCB1QIUToBRwf1o5IlQ6ndiQi3lSuB+PC8wCgYIKoZIzj0EAwIwGTEXMBUG
A1UEAwwOdjEuZXhhbXBsZS5jb20wIBcNMjYxMjA3MDUwODA4WhgPMjEyNjExMTMw
NTA4MDhaMBkxFzAVBgNVBAMMDnYxLmV4YW1wbGUuY29tMFkwEwYHKoZIzj0CAQYI
KoZIzj0DAQcDQgAE049+AXt4VWZ14tbd9mYSE8nlWwA6LqCGFya/SGQQxXpAGZgi
RDZDH5hDwOW0roHkj4IIXtZH/SJe7BAYICn40zAKBggqhkjOPQQDAgNHADBEAiBa
vVMzpUzVYiMyD2BBIYt1+1D5vUQxGj+ao42cYvmywQIgKfx1lT37Orr8zLLJOsjM
Zy3AoViZfSUhYu7C4K42esk=
-----END CERTIFICATE-----
";
const V1_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgpuPvArCR2n5/A3KN
xWZUQ/jf2ZSLM71PJ3JPHZXaeoChRANCAATTj34Be3hVZnXi1t32ZhITyeVbADou
oIYXJr9IZBDFekAZmCJENkMfmEPA5bSugeSPgghe1kf9Il7sEBggKfjT
-----END PRIVATE KEY-----
";

#[tokio::test]
async fn x509_v1_server_certificates_are_accepted_like_envoy() {
    let store = SecretStore::new();
    store.set_tls_certificate_pem("v1", V1_CERT.as_bytes(), V1_KEY.as_bytes()).unwrap();
    let id = store.tls_certificate("v1").unwrap().identity().clone();
    assert_eq!(id.subject, "CN=v1.example.com");
    // The key check still applies.
    let other = workload(&new_root(), SERVER_ID, day());
    let e = store.set_tls_certificate_pem("v1", V1_CERT.as_bytes(), other.key_pem.as_bytes()).unwrap_err().to_string();
    assert!(e.contains("private key does not match"), "{e}");

    let server_ctx = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds("v1")],
            ..Default::default()
        }),
        ..Default::default()
    };
    let server = Arc::new(ServerTlsConfig::from_proto(&server_ctx, &store).unwrap());
    // OpenSSL (like curl, and Envoy as a client) takes the v1 certificate; rustls as a client
    // does not (webpki refuses v1 end-entity certificates), so the peer here is s_client.
    let (addr, task) = remora_server(server).await;
    let out = s_client(addr, &["-servername".to_string(), "v1.example.com".to_string()]).await;
    assert_eq!(out, "pong -\n");
    assert!(task.await.unwrap().unwrap().is_none());
}
