//! A scripted management server for the ADS client tests: a real tonic server (TCP or unix
//! socket) that hands each accepted stream to the test, which reads the client's requests and
//! writes responses itself. Also a recording [`XdsHandler`].
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use xds_client::ads::{self, AdsHandle, ApiType, ClientConfig, Target, Update, XdsHandler};

pub const WAIT: Duration = Duration::from_secs(10);

/// One stream the server accepted: the client's requests in, the test's responses out.
pub struct Stream<Req, Resp> {
    pub method: &'static str,
    pub authority: Option<String>,
    pub requests: mpsc::UnboundedReceiver<Req>,
    pub responses: mpsc::UnboundedSender<Result<Resp, Status>>,
}

impl<Req: std::fmt::Debug, Resp> Stream<Req, Resp> {
    pub async fn recv(&mut self) -> Req {
        tokio::time::timeout(WAIT, self.requests.recv())
            .await
            .expect("timed out waiting for a request")
            .expect("request stream ended")
    }

    /// Asserts nothing arrives for a while.
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Ok(Some(r)) = tokio::time::timeout(d, self.requests.recv()).await {
            panic!("unexpected request: {r:?}");
        }
    }

    pub fn send(&self, r: Resp) {
        assert!(self.responses.send(Ok(r)).is_ok(), "client stream gone");
    }
}

pub type Sotw = Stream<DiscoveryRequest, DiscoveryResponse>;
pub type Delta = Stream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;

pub enum Accepted {
    Sotw(Sotw),
    Delta(Delta),
}

#[derive(Clone)]
struct Svc {
    accepted: mpsc::UnboundedSender<Accepted>,
}

#[derive(Clone)]
struct Authority(Option<String>);

fn pipe<Req: Send + 'static, Resp: Send + 'static>(
    method: &'static str,
    request: Request<Streaming<Req>>,
) -> (Stream<Req, Resp>, UnboundedReceiverStream<Result<Resp, Status>>) {
    let authority = request.extensions().get::<Authority>().and_then(|a| a.0.clone());
    let mut incoming = request.into_inner();
    let (req_tx, req_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(r)) = incoming.message().await {
            if req_tx.send(r).is_err() {
                break;
            }
        }
    });
    let (resp_tx, resp_rx) = mpsc::unbounded_channel();
    (Stream { method, authority, requests: req_rx, responses: resp_tx }, UnboundedReceiverStream::new(resp_rx))
}

type Out<T> = UnboundedReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Svc {
    type StreamAggregatedResourcesStream = Out<DiscoveryResponse>;
    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (s, out) = pipe("StreamAggregatedResources", request);
        let _ = self.accepted.send(Accepted::Sotw(s));
        Ok(Response::new(out))
    }
    type DeltaAggregatedResourcesStream = Out<DeltaDiscoveryResponse>;
    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (s, out) = pipe("DeltaAggregatedResources", request);
        let _ = self.accepted.send(Accepted::Delta(s));
        Ok(Response::new(out))
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for Svc {
    type DeltaSecretsStream = Out<DeltaDiscoveryResponse>;
    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        let (s, out) = pipe("DeltaSecrets", request);
        let _ = self.accepted.send(Accepted::Delta(s));
        Ok(Response::new(out))
    }
    type StreamSecretsStream = Out<DiscoveryResponse>;
    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let (s, out) = pipe("StreamSecrets", request);
        let _ = self.accepted.send(Accepted::Sotw(s));
        Ok(Response::new(out))
    }
    async fn fetch_secrets(&self, _: Request<DiscoveryRequest>) -> Result<Response<DiscoveryResponse>, Status> {
        Err(Status::unimplemented("fetch_secrets"))
    }
}

/// Puts the request's `:authority` where the service can read it.
#[derive(Clone)]
struct RecordAuthority<S>(S);

impl<S, B> tower::Service<http::Request<B>> for RecordAuthority<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, mut req: http::Request<B>) -> S::Future {
        let authority = req.uri().authority().map(|a| a.to_string());
        req.extensions_mut().insert(Authority(authority));
        self.0.call(req)
    }
}

/// A running server; [`Server::stop`] closes the listener (streams end when the test drops them).
pub struct Server {
    pub accepted: mpsc::UnboundedReceiver<Accepted>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub async fn next(&mut self) -> Accepted {
        tokio::time::timeout(WAIT, self.accepted.recv()).await.expect("no stream accepted").expect("server gone")
    }
    pub async fn next_delta(&mut self) -> Delta {
        match self.next().await {
            Accepted::Delta(d) => d,
            Accepted::Sotw(s) => panic!("expected a Delta stream, got {}", s.method),
        }
    }
    pub async fn next_sotw(&mut self) -> Sotw {
        match self.next().await {
            Accepted::Sotw(s) => s,
            Accepted::Delta(d) => panic!("expected a SotW stream, got {}", d.method),
        }
    }
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(WAIT, task).await.expect("server did not stop");
        }
    }
}

fn start<IO, E, I>(incoming: I) -> Server
where
    I: futures_util::Stream<Item = Result<IO, E>> + Send + 'static,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (tx, accepted) = mpsc::unbounded_channel();
    let svc = Svc { accepted: tx };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .layer(tower::layer::layer_fn(RecordAuthority))
            .add_service(AggregatedDiscoveryServiceServer::new(svc.clone()))
            .add_service(SecretDiscoveryServiceServer::new(svc))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
    });
    Server { accepted, stop: Some(stop), task: Some(task) }
}

pub async fn serve_tcp(addr: SocketAddr) -> (SocketAddr, Server) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let local = listener.local_addr().unwrap();
    let incoming = futures_util::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    });
    (local, start(incoming))
}

pub fn serve_unix(path: &Path) -> Server {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let incoming = futures_util::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    });
    start(incoming)
}

/// TLS over TCP for the TLS test; tonic needs `Connected` on the accepted stream.
pub struct TlsConn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A TLS server (h2 ALPN) on an ephemeral port; failed handshakes are skipped.
pub async fn serve_tls(config: Arc<rustls::ServerConfig>) -> (SocketAddr, Server) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let incoming = futures_util::stream::unfold((listener, acceptor), |(l, acceptor)| async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else { continue };
            if let Ok(tls) = acceptor.accept(tcp).await {
                return Some((Ok::<_, std::io::Error>(TlsConn(tls)), (l, acceptor)));
            }
        }
    });
    (local, start(incoming))
}

/// A fresh path for a unix socket.
pub fn socket_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("remora-ads-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("xds.sock")
}

/// Records updates and connection states; rejects resources whose name starts with "bad", and
/// subscribes EDS to the clusters it accepts (as the proxy will).
#[derive(Default)]
pub struct Recorder {
    pub updates: Mutex<Vec<Update>>,
    pub states: Mutex<Vec<bool>>,
    pub handle: OnceLock<AdsHandle>,
    pub clusters: Mutex<ads::Names>,
    notify: tokio::sync::Notify,
}

impl XdsHandler for Recorder {
    fn on_update(&self, update: Update) -> Result<(), String> {
        let bad = update.resources.iter().find(|r| r.name.starts_with("bad")).map(|r| r.name.clone());
        self.updates.lock().unwrap().push(update.clone());
        self.notify.notify_waiters();
        if let Some(name) = bad {
            return Err(format!("resource {name} is invalid"));
        }
        if update.type_url == ads::CLUSTER {
            let mut clusters = self.clusters.lock().unwrap();
            if update.full_state {
                clusters.clear();
            }
            for r in &update.removed {
                clusters.remove(r);
            }
            clusters.extend(update.resources.iter().map(|r| r.name.clone()));
            if let Some(h) = self.handle.get() {
                h.set_interest(ads::ENDPOINT, clusters.clone());
            }
        }
        Ok(())
    }
    fn on_connection_state(&self, connected: bool) {
        self.states.lock().unwrap().push(connected);
        self.notify.notify_waiters();
    }
}

impl Recorder {
    /// Waits until `n` updates were seen and returns the n-th (1-based).
    pub async fn update(&self, n: usize) -> Update {
        tokio::time::timeout(WAIT, async {
            loop {
                let notified = self.notify.notified();
                if let Some(u) = self.updates.lock().unwrap().get(n - 1) {
                    return u.clone();
                }
                notified.await;
            }
        })
        .await
        .expect("timed out waiting for an update")
    }

    pub async fn states(&self, n: usize) -> Vec<bool> {
        tokio::time::timeout(WAIT, async {
            loop {
                let notified = self.notify.notified();
                {
                    let s = self.states.lock().unwrap();
                    if s.len() >= n {
                        return s.clone();
                    }
                }
                notified.await;
            }
        })
        .await
        .expect("timed out waiting for connection states")
    }

    pub fn update_count(&self) -> usize {
        self.updates.lock().unwrap().len()
    }
}

pub fn node(id: &str) -> envoy_types::pb::envoy::config::core::v3::Node {
    envoy_types::pb::envoy::config::core::v3::Node { id: id.into(), cluster: "c.ns".into(), ..Default::default() }
}

pub fn config(target: Target, api: ApiType) -> ClientConfig {
    let mut c = ClientConfig::new(target, api, "xds-grpc");
    c.node = node("sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local");
    c.initial_backoff = Duration::from_millis(20);
    c.max_backoff = Duration::from_millis(200);
    c
}

fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any { type_url: type_url.into(), value: m.encode_to_vec() }
}

pub fn cluster(name: &str) -> Any {
    any(ads::CLUSTER, &Cluster { name: name.into(), ..Default::default() })
}
pub fn listener(name: &str) -> Any {
    any(ads::LISTENER, &Listener { name: name.into(), ..Default::default() })
}
pub fn cla(name: &str) -> Any {
    any(ads::ENDPOINT, &ClusterLoadAssignment { cluster_name: name.into(), ..Default::default() })
}
pub fn secret(name: &str) -> Any {
    any(ads::SECRET, &Secret { name: name.into(), ..Default::default() })
}

pub fn names<const N: usize>(n: [&str; N]) -> ads::Names {
    n.iter().map(|s| s.to_string()).collect()
}

pub fn resource_names(u: &Update) -> Vec<String> {
    u.resources.iter().map(|r| r.name.clone()).collect()
}

pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Starts a client with a [`Recorder`] whose handle is set.
pub fn start_ads(config: ClientConfig) -> (Arc<Recorder>, AdsHandle) {
    let rec = Arc::new(Recorder::default());
    let handle = ads::AdsClient::start(config, rec.clone());
    let _ = rec.handle.set(handle.clone());
    (rec, handle)
}
