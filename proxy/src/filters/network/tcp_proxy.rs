//! `envoy.filters.network.tcp_proxy`: connects each downstream connection to a host of the
//! configured cluster (or weighted clusters) and copies bytes both ways until either side closes
//! or the idle timeout passes. ORIGINAL_DST clusters connect to the connection's original
//! destination.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy as TcpProxyProto, tcp_proxy};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::istio_stats::{TcpFacts, TcpStats};
use super::metadata_exchange::MetadataExchange;
use crate::access_log::ResponseFlags;
use crate::config::{BuildCtx, ConfigError, duration};
use crate::runtime::WorkerCtx;
use crate::stats::{Counter, Gauge, GaugeGuard};
use crate::stream_info::{ConnInfo, ResetReason};
use crate::upstream::cluster::DiscoveryType;
use crate::upstream::connect::UpstreamIo;
use crate::upstream::host::ActiveRequest;
use crate::upstream::outlier::Outcome;

pub const TYPE: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

#[derive(Debug, Clone)]
enum Target {
    Cluster(Arc<str>),
    Weighted(Vec<(Arc<str>, u32)>, u64),
}

pub struct TcpProxyStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_no_route: Counter,
    pub downstream_cx_rx_bytes_total: Counter,
    pub downstream_cx_tx_bytes_total: Counter,
    pub idle_timeout: Counter,
    pub upstream_flush_active: Gauge,
}

/// A compiled tcp_proxy.
pub struct TcpProxy {
    pub stat_prefix: String,
    target: Target,
    idle_timeout: Option<Duration>,
    max_connect_attempts: u32,
    stats: TcpProxyStats,
}

impl TcpProxy {
    pub fn from_proto(p: &TcpProxyProto, cx: &BuildCtx) -> Result<Self, ConfigError> {
        if p.stat_prefix.is_empty() {
            return Err(ConfigError::new("stat_prefix", "value length must be at least 1 characters"));
        }
        let target = match &p.cluster_specifier {
            Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => Target::Cluster(c.as_str().into()),
            Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
                let v: Vec<(Arc<str>, u32)> = w.clusters.iter().map(|c| (c.name.as_str().into(), c.weight)).collect();
                let total: u64 = v.iter().map(|(_, w)| *w as u64).sum();
                if total == 0 {
                    return Err(ConfigError::new("weighted_clusters", "weights must sum to more than 0"));
                }
                Target::Weighted(v, total)
            }
            None => return Err(ConfigError::new("cluster_specifier", "a cluster or weighted_clusters is required")),
        };
        if p.tunneling_config.is_some() {
            return Err(ConfigError::new("tunneling_config", "tunneling over HTTP is not supported"));
        }
        let pre = format!("tcp.{}.", p.stat_prefix);
        let c = |n: &str| cx.stats.counter(&format!("{pre}{n}"));
        Ok(TcpProxy {
            stat_prefix: p.stat_prefix.clone(),
            target,
            idle_timeout: match &p.idle_timeout {
                None => Some(Duration::from_secs(3600)),
                Some(d) => Some(duration(d)).filter(|d| !d.is_zero()),
            },
            max_connect_attempts: p.max_connect_attempts.map(|v| v.value).unwrap_or(1).max(1),
            stats: TcpProxyStats {
                downstream_cx_total: c("downstream_cx_total"),
                downstream_cx_no_route: c("downstream_cx_no_route"),
                downstream_cx_rx_bytes_total: c("downstream_cx_rx_bytes_total"),
                downstream_cx_tx_bytes_total: c("downstream_cx_tx_bytes_total"),
                idle_timeout: c("idle_timeout"),
                upstream_flush_active: cx.stats.gauge(&format!("{pre}upstream_flush_active")),
            },
        })
    }

    /// The cluster names this proxy may use (for validation and dumps).
    pub fn clusters(&self) -> Vec<Arc<str>> {
        match &self.target {
            Target::Cluster(c) => vec![c.clone()],
            Target::Weighted(v, _) => v.iter().map(|(c, _)| c.clone()).collect(),
        }
    }

    /// Proxies one connection. `original_dst` is the pre-redirect destination, if known; Istio's
    /// network stats filters of the chain (`istio`) get the connection reported.
    pub async fn serve<D>(
        &self,
        mut downstream: D,
        worker: Rc<WorkerCtx>,
        original_dst: Option<SocketAddr>,
        conn: &ConnInfo,
        istio: &[Arc<TcpStats>],
    ) where
        D: AsyncRead + AsyncWrite + Unpin,
    {
        let flag = |s: &str| ResponseFlags::from_short(s).unwrap_or_default();
        let failed = |cluster: Option<&crate::upstream::cluster::Cluster>, flags: ResponseFlags| {
            for s in istio {
                s.failed(&TcpFacts {
                    conn,
                    upstream_peer: None,
                    cluster: cluster.map(|c| &*c.name),
                    cluster_metadata: cluster.and_then(|c| c.metadata.as_deref()),
                    flags,
                });
            }
        };
        self.stats.downstream_cx_total.inc();
        let name = match &self.target {
            Target::Cluster(c) => c.clone(),
            Target::Weighted(v, total) => {
                let mut x = fastrand::u64(..*total);
                let mut pick = v[0].0.clone();
                for (c, w) in v {
                    if x < *w as u64 {
                        pick = c.clone();
                        break;
                    }
                    x -= *w as u64;
                }
                pick
            }
        };
        let Some(cluster) = worker.shared.clusters.load().cluster(&name).cloned() else {
            self.stats.downstream_cx_no_route.inc();
            failed(None, flag("NC"));
            return;
        };
        let mut attempts = 0;
        let (upstream, _active) = loop {
            attempts += 1;
            let host = if cluster.discovery == DiscoveryType::OriginalDst {
                original_dst.map(|a| cluster.original_dst_host(a))
            } else {
                cluster.choose_host(None, &[])
            };
            let Some(host) = host else {
                cluster.stats.upstream_cx_none_healthy.inc();
                failed(Some(&cluster), flag("UH"));
                return;
            };
            let active = ActiveRequest::new(&host);
            // The cluster's max_connections, as Envoy's tcp_proxy applies it (refused, not queued).
            let Some(cx) = crate::upstream::circuit_breaker::tcp_connection(&cluster, &host) else {
                failed(Some(&cluster), flag("UO"));
                return;
            };
            let result = crate::upstream::connect::connect(&cluster, &host).await;
            if let Some(d) = &cluster.outlier {
                let outcome = match &result {
                    Ok(_) => Outcome::LocalOriginConnectSuccessFinal,
                    Err(ResetReason::ConnectTimeout) => Outcome::LocalOriginTimeout,
                    Err(_) => Outcome::LocalOriginConnectFailed,
                };
                d.put_result(&host, outcome, None);
            }
            match result {
                Ok(io) => break (io.into_inner(), (active, cx)),
                Err(_) if attempts < self.max_connect_attempts => continue,
                Err(_) => {
                    failed(Some(&cluster), flag("UF"));
                    return;
                }
            }
        };
        let _cx_active = GaugeGuard::new(&cluster.stats.upstream_cx_active);
        let mut upstream = upstream;
        let mut upstream_peer = None;
        let mut early = 0u64;
        if let Some(mx) = cluster.upstream_filter::<MetadataExchange>().filter(|m| m.negotiated(upstream.alpn())) {
            match mx.exchange(&mut upstream).await {
                Ok((peer, rest)) => {
                    upstream_peer = peer;
                    // Payload bytes the server sent after its header go straight downstream.
                    if !rest.is_empty() {
                        if downstream.write_all(&rest).await.is_err() {
                            return;
                        }
                        early = rest.len() as u64;
                    }
                }
                Err(e) => {
                    tracing::debug!(target: "remora::tcp_proxy", "cluster {}: metadata exchange: {e}", cluster.name);
                    cluster.stats.upstream_cx_destroy.inc();
                    failed(Some(&cluster), flag("UC"));
                    return;
                }
            }
        }
        let facts = TcpFacts {
            conn,
            upstream_peer: upstream_peer.as_ref(),
            cluster: Some(&cluster.name),
            cluster_metadata: cluster.metadata.as_deref(),
            flags: ResponseFlags::NONE,
        };
        let mut reports: Vec<_> = istio.iter().map(|s| s.open(&facts)).collect();
        let every = istio.iter().map(|s| s.reporting_interval()).min();
        let mut progress = |rx: u64, tx: u64| reports.iter_mut().for_each(|r| r.bytes(rx, tx + early));
        let (rx, tx) =
            pump(&mut downstream, upstream, self.idle_timeout, &self.stats.idle_timeout, every, &mut progress).await;
        for r in reports {
            r.close(rx, tx + early);
        }
        self.stats.downstream_cx_rx_bytes_total.add(rx);
        self.stats.downstream_cx_tx_bytes_total.add(tx);
        cluster.stats.upstream_cx_tx_bytes_total.add(rx);
        cluster.stats.upstream_cx_rx_bytes_total.add(tx);
        cluster.stats.upstream_cx_destroy.inc();
    }
}

/// Copies both ways with half-close, until both directions end or nothing moved for `idle`.
/// Returns (downstream→upstream bytes, upstream→downstream bytes). Every `report` interval the
/// totals so far go to `progress` (Istio's periodic TCP reporting).
pub async fn pump<D>(
    down: &mut D,
    mut up: UpstreamIo,
    idle: Option<Duration>,
    idle_counter: &Counter,
    report: Option<Duration>,
    progress: &mut dyn FnMut(u64, u64),
) -> (u64, u64)
where
    D: AsyncRead + AsyncWrite + Unpin,
{
    let mut a = vec![0u8; 16 * 1024];
    let mut b = vec![0u8; 16 * 1024];
    let (mut down_open, mut up_open) = (true, true);
    let (mut sent, mut received) = (0u64, 0u64);
    let far = Duration::from_secs(365 * 24 * 3600);
    let every = report.unwrap_or(far);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    // Only data moving in either direction pushes the idle deadline back (not a report tick).
    let mut deadline = tokio::time::Instant::now() + idle.unwrap_or(far);
    loop {
        if !down_open && !up_open {
            break;
        }
        let sleep = tokio::time::sleep_until(deadline);
        tokio::select! {
            r = down.read(&mut a), if down_open => match r {
                Ok(0) | Err(_) => {
                    down_open = false;
                    let _ = up.shutdown().await;
                }
                Ok(n) => {
                    if up.write_all(&a[..n]).await.is_err() {
                        break;
                    }
                    sent += n as u64;
                    deadline = tokio::time::Instant::now() + idle.unwrap_or(far);
                }
            },
            r = up.read(&mut b), if up_open => match r {
                Ok(0) | Err(_) => {
                    up_open = false;
                    let _ = down.shutdown().await;
                }
                Ok(n) => {
                    if down.write_all(&b[..n]).await.is_err() {
                        break;
                    }
                    received += n as u64;
                    deadline = tokio::time::Instant::now() + idle.unwrap_or(far);
                }
            },
            _ = sleep => {
                idle_counter.inc();
                break;
            }
            _ = tick.tick(), if report.is_some() => progress(sent, received),
        }
    }
    (sent, received)
}
