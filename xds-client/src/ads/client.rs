//! The stream task: connect, run one stream until it fails, back off (jittered, exponential) and
//! reconnect, forever; subscription changes are applied whether or not a stream is up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use super::state::{Response, State, Tx};
use super::transport::{connect, describe};
use super::{ApiType, CLUSTER, ClientConfig, Names, XdsHandler};

/// Which gRPC service the stream uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    Ads,
    /// `SecretDiscoveryService`, for an SDS `api_config_source` of its own.
    Sds,
}

pub(crate) enum Command {
    Interest(String, Names),
}

/// State visible to handles.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) stopped: AtomicBool,
    pub(crate) connected: AtomicBool,
}

enum Inbound {
    Sotw(Streaming<DiscoveryResponse>),
    Delta(Streaming<DeltaDiscoveryResponse>),
}

impl Inbound {
    async fn next(&mut self) -> Result<Option<Response>, tonic::Status> {
        Ok(match self {
            Inbound::Sotw(s) => s.message().await?.map(Response::Sotw),
            Inbound::Delta(s) => s.message().await?.map(Response::Delta),
        })
    }
}

/// Envoy's `JitteredExponentialBackOffStrategy`: a random delay below `min(base * 2^n, max)`.
struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt).unwrap_or(u32::MAX);
        let ceiling = self.base.saturating_mul(factor).min(self.max).max(Duration::from_millis(1));
        self.attempt = self.attempt.saturating_add(1).min(31);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..millis))
    }
}

pub(crate) struct Task {
    pub(crate) config: ClientConfig,
    pub(crate) service: Service,
    pub(crate) handler: Arc<dyn XdsHandler>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) commands: UnboundedReceiver<Command>,
    pub(crate) state: State,
}

impl Task {
    pub(crate) async fn run(mut self) {
        let mut backoff = Backoff { base: self.config.initial_backoff, max: self.config.max_backoff, attempt: 0 };
        let target = describe(&self.config.target);
        loop {
            let responded = self.one_stream(&target).await;
            self.state.end_stream();
            if self.shared.stopped.load(Ordering::Acquire) {
                return;
            }
            if self.shared.connected.swap(false, Ordering::AcqRel) {
                self.handler.on_connection_state(false);
            }
            if responded {
                backoff.attempt = 0;
            }
            let delay = backoff.next();
            tracing::debug!(%target, ?delay, "xDS stream reconnect scheduled");
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    Some(cmd) = self.commands.recv() => self.apply(cmd),
                }
            }
        }
    }

    fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::Interest(type_url, names) => self.state.set_interest(&type_url, names),
        }
    }

    fn drain_commands(&mut self) {
        while let Ok(cmd) = self.commands.try_recv() {
            self.apply(cmd);
        }
    }

    /// Runs one stream; true if it delivered at least one response (which resets the backoff).
    async fn one_stream(&mut self, target: &str) -> bool {
        let channel = match connect(&self.config).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(target, error = %e, "xDS connection failed");
                return false;
            }
        };
        // Interest that arrived while connecting goes into the initial requests.
        self.drain_commands();
        let mut inbound = match self.open(channel).await {
            Ok(i) => i,
            Err(status) => {
                tracing::warn!(target, code = ?status.code(), message = status.message(), "xDS stream failed to open");
                return false;
            }
        };
        if self.shared.stopped.load(Ordering::Acquire) {
            return false;
        }
        tracing::info!(target, "xDS stream established");
        self.shared.connected.store(true, Ordering::Release);
        self.handler.on_connection_state(true);
        let mut responded = false;
        loop {
            tokio::select! {
                biased;
                Some(cmd) = self.commands.recv() => self.apply(cmd),
                msg = inbound.next() => match msg {
                    Ok(Some(response)) => {
                        responded = true;
                        if self.shared.stopped.load(Ordering::Acquire) {
                            return responded;
                        }
                        let cds = matches!(&response, Response::Sotw(r) if r.type_url == CLUSTER)
                            || matches!(&response, Response::Delta(r) if r.type_url == CLUSTER);
                        self.state.handle(response, self.handler.as_ref());
                        // Subscriptions the handler made (EDS for new clusters) go out right
                        // after its ACK, then LDS after the first CDS response: CDS, EDS, LDS.
                        self.drain_commands();
                        if cds {
                            self.state.start_deferred();
                        }
                    }
                    Ok(None) => {
                        tracing::warn!(target, "xDS stream closed by the server");
                        return responded;
                    }
                    Err(status) => {
                        tracing::warn!(target, code = ?status.code(), message = status.message(), "xDS stream lost");
                        return responded;
                    }
                },
            }
        }
    }

    /// Queues the initial requests, then opens the call: a server may hold its response headers
    /// until the first request arrives (grpc-go does).
    async fn open(&mut self, channel: Channel) -> Result<Inbound, tonic::Status> {
        match self.state.api() {
            ApiType::Sotw => {
                let (tx, rx) = mpsc::unbounded_channel::<DiscoveryRequest>();
                self.state.start_stream(Tx::Sotw(tx));
                let requests = UnboundedReceiverStream::new(rx);
                let response = match self.service {
                    Service::Ads => ads_client(channel).stream_aggregated_resources(requests).await?,
                    Service::Sds => sds_client(channel).stream_secrets(requests).await?,
                };
                Ok(Inbound::Sotw(response.into_inner()))
            }
            ApiType::Delta => {
                let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
                self.state.start_stream(Tx::Delta(tx));
                let requests = UnboundedReceiverStream::new(rx);
                let response = match self.service {
                    Service::Ads => ads_client(channel).delta_aggregated_resources(requests).await?,
                    Service::Sds => sds_client(channel).delta_secrets(requests).await?,
                };
                Ok(Inbound::Delta(response.into_inner()))
            }
        }
    }
}

// istiod's CDS/LDS for a large mesh exceed gRPC's 4 MiB default; Envoy sets no limit either.
fn ads_client(channel: Channel) -> AggregatedDiscoveryServiceClient<Channel> {
    AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX)
}

fn sds_client(channel: Channel) -> SecretDiscoveryServiceClient<Channel> {
    SecretDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let mut b = Backoff { base: Duration::from_millis(100), max: Duration::from_secs(1), attempt: 0 };
        let mut ceilings = Vec::new();
        for _ in 0..40 {
            let d = b.next();
            assert!(d < Duration::from_secs(1));
            ceilings.push(d);
        }
        assert_eq!(b.attempt, 31);
        assert!(b.next() < Duration::from_secs(1));
    }
}
