//! The tonic services (ADS and SDS) and the TCP / unix listeners.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use futures_util::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::{Inner, ServerError, delta, sotw};
use crate::ads::SECRET;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Responses are queued through a small channel: a slow client applies back-pressure to its
/// own stream task only.
fn channel_stream<T: Send + 'static>() -> (mpsc::Sender<Result<T, Status>>, BoxStream<T>) {
    let (tx, rx) = mpsc::channel(16);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    (tx, Box::pin(stream))
}

#[derive(Clone)]
struct Service(Arc<Inner>);

#[tonic::async_trait]
impl AggregatedDiscoveryService for Service {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, stream) = channel_stream();
        tokio::spawn(sotw::run(self.0.clone(), request.into_inner(), tx, None));
        Ok(Response::new(stream))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, stream) = channel_stream();
        tokio::spawn(delta::run(self.0.clone(), request.into_inner(), tx, None));
        Ok(Response::new(stream))
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for Service {
    type DeltaSecretsStream = BoxStream<DeltaDiscoveryResponse>;
    type StreamSecretsStream = BoxStream<DiscoveryResponse>;

    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        let (tx, stream) = channel_stream();
        tokio::spawn(delta::run(self.0.clone(), request.into_inner(), tx, Some(SECRET)));
        Ok(Response::new(stream))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let (tx, stream) = channel_stream();
        tokio::spawn(sotw::run(self.0.clone(), request.into_inner(), tx, Some(SECRET)));
        Ok(Response::new(stream))
    }

    async fn fetch_secrets(&self, request: Request<DiscoveryRequest>) -> Result<Response<DiscoveryResponse>, Status> {
        Ok(Response::new(sotw::fetch(&self.0, &request.into_inner(), SECRET)))
    }
}

fn router(inner: &Arc<Inner>) -> tonic::transport::server::Router {
    let svc = Service(inner.clone());
    tonic::transport::Server::builder()
        .add_service(AggregatedDiscoveryServiceServer::new(svc.clone()))
        .add_service(SecretDiscoveryServiceServer::new(svc))
}

/// Resolves when `stop()` moves past the generation this listener was started in.
fn shutdown_signal(inner: &Arc<Inner>) -> impl Future<Output = ()> + Send + 'static {
    let mut rx = inner.generation.subscribe();
    rx.borrow_and_update();
    async move {
        let _ = rx.changed().await;
    }
}

pub(super) async fn serve_tcp(inner: Arc<Inner>, addr: SocketAddr) -> Result<SocketAddr, ServerError> {
    let bind_err = |source| ServerError::Bind { addr: addr.to_string(), source };
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
        .map_err(bind_err)?;
    // Restarting on the same port right after stop() must not hit TIME_WAIT.
    socket.set_reuseaddr(true).map_err(bind_err)?;
    socket.bind(addr).map_err(bind_err)?;
    let listener = socket.listen(128).map_err(bind_err)?;
    let bound = listener.local_addr().map_err(bind_err)?;
    let incoming = futures_util::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((r, l))
    });
    let shutdown = shutdown_signal(&inner);
    let router = router(&inner);
    tokio::spawn(async move {
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, shutdown).await {
            tracing::warn!("control plane on {bound}: {e}");
        }
    });
    Ok(bound)
}

pub(super) async fn serve_unix(inner: Arc<Inner>, path: &Path) -> Result<(), ServerError> {
    let bind_err = |source| ServerError::Bind { addr: path.display().to_string(), source };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(bind_err)?;
    let incoming = futures_util::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    });
    let shutdown = shutdown_signal(&inner);
    let router = router(&inner);
    let shown = path.display().to_string();
    tokio::spawn(async move {
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, shutdown).await {
            tracing::warn!("control plane on {shown}: {e}");
        }
    });
    Ok(())
}
