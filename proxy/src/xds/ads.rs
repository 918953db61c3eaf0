//! ADS and SDS streams to the management server (istiod through pilot-agent, or any xDS server):
//! the proxy's side of `xds_client::ads`. Updates go through the same `apply` as file-based
//! xDS; the names the config references (EDS, RDS, SDS) drive the subscriptions.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::core::v3::{ConfigSource, config_source};
use envoy_types::pb::google::protobuf::Any;
use xds_client::ads::{AdsClient, AdsHandle, ClientConfig, Update, XdsHandler};

use crate::config::NodeInfo;
use crate::manager::ConfigManager;
use crate::stats::{Counter, Gauge};

/// Applies what the stream delivers to the config manager.
struct ProxyHandler {
    manager: Arc<ConfigManager>,
    connected: Gauge,
}

impl XdsHandler for ProxyHandler {
    fn on_update(&self, u: Update) -> Result<(), String> {
        let mut errors = Vec::new();
        if u.full_state {
            let anys: Vec<Any> = u.resources.into_iter().map(|r| r.resource).collect();
            if let Err(e) = super::apply(&self.manager, &u.type_url, &u.version, &anys, &u.removed, true) {
                errors.extend(e);
            }
        } else {
            // Delta: every resource has its own version (what /config_dump shows); apply runs of
            // equal versions together, removals with the first.
            let mut removed = u.removed;
            let mut runs: Vec<(String, Vec<Any>)> = Vec::new();
            for r in u.resources {
                match runs.last_mut() {
                    Some((v, batch)) if *v == r.version => batch.push(r.resource),
                    _ => runs.push((r.version, vec![r.resource])),
                }
            }
            if runs.is_empty() {
                runs.push((u.version, Vec::new()));
            }
            for (version, batch) in runs {
                let gone = std::mem::take(&mut removed);
                if let Err(e) = super::apply(&self.manager, &u.type_url, &version, &batch, &gone, false) {
                    errors.extend(e);
                }
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(super::error_detail(&errors)) }
    }

    fn on_connection_state(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }
}

fn is_ads(c: Option<&ConfigSource>) -> bool {
    matches!(c.and_then(|c| c.config_source_specifier.as_ref()), Some(config_source::ConfigSourceSpecifier::Ads(_)))
}

/// The running xDS streams; dropping it does not stop them (they live as long as the runtime).
pub struct Streams {
    pub ads: Option<AdsHandle>,
    pub sds: Option<AdsHandle>,
    /// Counters whose first increment ends the initial fetch (CDS, LDS over ADS).
    pub initial: Vec<Counter>,
    /// How long the server waits for them (`initial_fetch_timeout`, 15 s by default).
    pub initial_fetch_timeout: Duration,
}

/// Starts ADS (when the bootstrap has `ads_config`) and SDS (over the `sds-grpc` cluster as
/// pilot-agent's bootstrap names it, otherwise over ADS). `secrets_from_ca`: the workload
/// certificate comes from remora's own CA client, so no SDS is subscribed.
pub fn start(
    b: &Bootstrap,
    node: &NodeInfo,
    manager: &Arc<ConfigManager>,
    secrets_from_ca: bool,
) -> Result<Streams, String> {
    let stats = &manager.build_ctx().stats;
    let connected = stats.gauge("control_plane.connected_state");
    let handler: Arc<dyn XdsHandler> = Arc::new(ProxyHandler { manager: manager.clone(), connected });
    let dynamic = b.dynamic_resources.clone().unwrap_or_default();
    let mut streams =
        Streams { ads: None, sds: None, initial: Vec::new(), initial_fetch_timeout: Duration::from_secs(15) };

    if let Some(mut cfg) = ClientConfig::from_bootstrap(b).map_err(|e| format!("dynamic_resources.ads_config: {e}"))? {
        cfg.node = wire_node(b, node);
        cfg.tls = grpc_cluster_tls(b, &cfg.authority, manager)?;
        for (src, counter) in [
            (dynamic.cds_config.as_ref(), &manager.cds.update_attempt),
            (dynamic.lds_config.as_ref(), &manager.lds.update_attempt),
        ] {
            if is_ads(src) {
                streams.initial.push(counter.clone());
                if let Some(t) = src.and_then(|s| s.initial_fetch_timeout) {
                    let d = Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
                    // 0 disables the timeout: the server waits for the first update.
                    streams.initial_fetch_timeout = if d.is_zero() { Duration::from_secs(365 * 86400) } else { d };
                }
            }
        }
        streams.ads = Some(AdsClient::start(cfg, handler.clone()));
    }
    let sds_cluster = b.static_resources.as_ref().and_then(|s| s.clusters.iter().find(|c| c.name == "sds-grpc"));
    if let Some(sds) = sds_cluster.filter(|_| !secrets_from_ca) {
        let api = envoy_types::pb::envoy::config::core::v3::ApiConfigSource {
            api_type: envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType::Grpc as i32,
            grpc_services: vec![envoy_types::pb::envoy::config::core::v3::GrpcService {
                target_specifier: Some(
                    envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier::EnvoyGrpc(
                        envoy_types::pb::envoy::config::core::v3::grpc_service::EnvoyGrpc {
                            cluster_name: sds.name.clone(),
                            ..Default::default()
                        },
                    ),
                ),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut cfg = ClientConfig::from_api_config_source(&api, b).map_err(|e| format!("cluster sds-grpc: {e}"))?;
        cfg.node = wire_node(b, node);
        cfg.tls = grpc_cluster_tls(b, &cfg.authority, manager)?;
        streams.sds = Some(AdsClient::start_sds(cfg, handler));
    }
    follow_interest(manager, streams.ads.clone(), streams.sds.clone(), !secrets_from_ca);
    Ok(streams)
}

/// The node as sent to the server: the bootstrap's, with the command-line overrides, and the
/// user agent a control plane uses to tell proxies apart.
fn wire_node(b: &Bootstrap, node: &NodeInfo) -> envoy_types::pb::envoy::config::core::v3::Node {
    let mut n = b.node.clone().unwrap_or_default();
    n.id = node.id.clone();
    n.cluster = node.cluster.clone();
    if !node.zone.is_empty() {
        n.locality.get_or_insert_with(Default::default).zone = node.zone.clone();
    }
    n.user_agent_name = "envoy".into();
    n.user_agent_version_type = Some(
        envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType::UserAgentVersion("1.40.0-remora".into()),
    );
    n
}

/// TLS to the xDS server when its static cluster has a TLS transport socket; other transport
/// sockets are refused rather than silently connecting in plaintext.
fn grpc_cluster_tls(
    b: &Bootstrap,
    name: &str,
    manager: &Arc<ConfigManager>,
) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    let Some(proto) = b.static_resources.as_ref().and_then(|s| s.clusters.iter().find(|c| c.name == name)) else {
        return Ok(None);
    };
    if proto.transport_socket.is_none() {
        return Ok(None);
    }
    let cluster = crate::upstream::cluster::Cluster::from_proto(proto, manager.build_ctx())
        .map_err(|e| format!("cluster {name}: {e}"))?;
    match &cluster.tls {
        Some(tls) => tls.config().map(Some).map_err(|e| format!("cluster {name}: TLS for xDS: {e}")),
        None => Ok(None),
    }
}

/// Keeps the subscriptions equal to the names the config references.
fn follow_interest(manager: &Arc<ConfigManager>, ads: Option<AdsHandle>, sds: Option<AdsHandle>, secrets: bool) {
    if ads.is_none() && sds.is_none() {
        return;
    }
    let mut rx = manager.interest();
    tokio::spawn(async move {
        let mut ads_secrets = false;
        loop {
            let want = rx.borrow_and_update().clone();
            if let Some(a) = &ads {
                a.set_interest(xds_client::ads::ENDPOINT, want.eds.clone());
                a.set_interest(xds_client::ads::ROUTE, want.rds.clone());
            }
            // As Envoy: a secret whose config source is `ads` is fetched on the ADS stream (istiod
            // serves a Gateway's credentialName so); the others on the SDS cluster's stream, or on
            // ADS when there is none. With the CA client (`secrets` false) only the former are
            // fetched: the CA stands in for pilot-agent's SDS server.
            let (on_ads, on_sds) = match (&ads, &sds) {
                (Some(_), Some(_)) => (want.sds_ads.clone(), want.sds.difference(&want.sds_ads).cloned().collect()),
                (Some(_), None) if secrets => (want.sds.clone(), Default::default()),
                (Some(_), None) => (want.sds_ads.clone(), Default::default()),
                (None, _) => (Default::default(), want.sds.clone()),
            };
            // No SECRET subscription on ADS until a name needs one (an empty SotW request
            // would read as a wildcard one).
            if let Some(a) = &ads
                && (ads_secrets || !on_ads.is_empty())
            {
                ads_secrets = true;
                a.set_interest(xds_client::ads::SECRET, on_ads);
            }
            if let Some(s) = &sds {
                s.set_interest(xds_client::ads::SECRET, on_sds);
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
    });
}
