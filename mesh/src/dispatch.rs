//! One ADS port for every proxy of the compose mesh, as istiod has: a stream is relayed to the
//! harness (`xds_client::server::ControlPlane`, on loopback) of the proxy named by the node id of
//! its first request. A node id the mesh does not know is refused with NOT_FOUND.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Node id -> the loopback address of that proxy's harness.
#[derive(Clone)]
struct Dispatch(Arc<BTreeMap<String, SocketAddr>>);

impl Dispatch {
    async fn client(
        &self,
        node: Option<&Node>,
    ) -> Result<AggregatedDiscoveryServiceClient<tonic::transport::Channel>, Status> {
        let id = node.map(|n| n.id.as_str()).unwrap_or_default();
        let Some(addr) = self.0.get(id) else {
            eprintln!("remora-demo: refused an xDS stream from unknown node id '{id}'");
            return Err(Status::not_found(format!("no proxy with node id '{id}' in this mesh")));
        };
        AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .map_err(|e| Status::unavailable(format!("the harness of '{id}': {e}")))
    }
}

/// The rest of a request stream after its first message (ends at the client's end or error).
fn rest<T: Send + 'static>(s: Streaming<T>) -> impl Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(s, |mut s| async move {
        match s.message().await {
            Ok(Some(m)) => Some((m, s)),
            Ok(None) | Err(_) => None,
        }
    })
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Dispatch {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut reqs = request.into_inner();
        let first = reqs.message().await?.ok_or_else(|| Status::invalid_argument("empty stream"))?;
        let mut client = self.client(first.node.as_ref()).await?;
        let out = futures_util::stream::iter([first]).chain(rest(reqs));
        let resp = client.stream_aggregated_resources(out).await?;
        Ok(Response::new(Box::pin(resp.into_inner())))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut reqs = request.into_inner();
        let first = reqs.message().await?.ok_or_else(|| Status::invalid_argument("empty stream"))?;
        let mut client = self.client(first.node.as_ref()).await?;
        let out = futures_util::stream::iter([first]).chain(rest(reqs));
        let resp = client.delta_aggregated_resources(out).await?;
        Ok(Response::new(Box::pin(resp.into_inner())))
    }
}

/// Serves ADS on `listen`, relaying each stream by node id; returns the bound address.
pub async fn serve(listen: SocketAddr, harnesses: BTreeMap<String, SocketAddr>) -> Result<SocketAddr, String> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("binding {listen}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let incoming = futures_util::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((r, l))
    });
    let router = tonic::transport::Server::builder()
        .add_service(AggregatedDiscoveryServiceServer::new(Dispatch(Arc::new(harnesses))));
    tokio::spawn(async move {
        if let Err(e) = router.serve_with_incoming(incoming).await {
            eprintln!("remora-demo: xDS on {bound}: {e}");
        }
    });
    Ok(bound)
}

/// A plain TCP relay from `listen` to `to` (the Istio CA binds loopback only).
pub async fn relay(listen: SocketAddr, to: SocketAddr) -> Result<SocketAddr, String> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("binding {listen}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        loop {
            let mut down = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    eprintln!("remora-demo: accepting on {bound}: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            tokio::spawn(async move {
                if let Ok(mut up) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    });
    Ok(bound)
}
