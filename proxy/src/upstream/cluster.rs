//! Clusters: translation of `envoy.config.cluster.v3.Cluster` (STATIC, STRICT_DNS, LOGICAL_DNS,
//! EDS) and the runtime object routes forward to: settings, the current host set (swapped
//! atomically on DNS refresh, EDS update or a host's health change), circuit breakers, the
//! outlier detector and stats.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::cluster::v3::{Cluster as ClusterProto, cluster};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};

use super::circuit_breaker::CircuitBreakers;
use super::health::HealthChecker;
use super::host::{Endpoint, Host, HostSet};
use super::lb::{LbConfig, LbPolicy};
use super::outlier::{Detector, OutlierConfig, OutlierStats};
use crate::config::{BuildCtx, ConfigError, duration};
use crate::stats::{CodeStats, Counter, Gauge, Histogram, Store};

mod membership;
mod protocol;

pub use protocol::H2_WINDOWS;
use protocol::{protocol_options, upstream_h2_windows, upstream_protocol};

static NEXT_CLUSTER_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryType {
    Static,
    StrictDns,
    LogicalDns,
    Eds,
    OriginalDst,
}

/// Which HTTP version to speak upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
    /// `use_downstream_protocol_config`
    Downstream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsFamily {
    Auto,
    V4Only,
    V6Only,
    V4Preferred,
    All,
}

/// One DNS name to resolve (STRICT_DNS / LOGICAL_DNS).
#[derive(Debug, Clone)]
pub struct DnsTarget {
    pub host: String,
    pub port: u16,
    /// What each resolved address's host carries: weight, priority, the endpoint's metadata
    /// (Istio's `tlsMode` for transport socket matches), locality, EDS health and
    /// `health_check_config`.
    pub template: Endpoint,
}

#[derive(Debug)]
pub struct ClusterStats {
    pub upstream_rq_total: Counter,
    pub upstream_rq_active: Gauge,
    pub upstream_rq_completed: Counter,
    pub upstream_rq: CodeStats,
    pub external_upstream_rq: CodeStats,
    pub internal_upstream_rq: CodeStats,
    pub external_upstream_rq_completed: Counter,
    pub internal_upstream_rq_completed: Counter,
    pub lb_healthy_panic: Counter,
    pub default_total_match_count: Counter,
    pub warming_state: Gauge,
    pub membership_degraded: Gauge,
    pub membership_excluded: Gauge,
    pub upstream_rq_time: Histogram,
    pub upstream_rq_timeout: Counter,
    pub upstream_rq_per_try_timeout: Counter,
    pub upstream_rq_per_try_idle_timeout: Counter,
    pub upstream_rq_retry: Counter,
    pub upstream_rq_retry_success: Counter,
    pub upstream_rq_retry_overflow: Counter,
    pub upstream_rq_retry_limit_exceeded: Counter,
    pub upstream_rq_pending_overflow: Counter,
    pub upstream_rq_active_overflow: Counter,
    pub upstream_rq_pending_total: Counter,
    pub upstream_rq_pending_active: Gauge,
    pub upstream_rq_pending_failure_eject: Counter,
    pub upstream_cx_overflow: Counter,
    pub upstream_cx_total: Counter,
    pub upstream_cx_active: Gauge,
    pub upstream_cx_http1_total: Counter,
    pub upstream_cx_http2_total: Counter,
    pub upstream_cx_connect_fail: Counter,
    pub upstream_cx_connect_timeout: Counter,
    pub upstream_cx_destroy: Counter,
    pub upstream_cx_none_healthy: Counter,
    pub upstream_cx_max_requests: Counter,
    pub upstream_rq_rx_reset: Counter,
    pub ssl_handshake: Counter,
    pub ssl_connection_error: Counter,
    pub upstream_cx_rx_bytes_total: Counter,
    pub upstream_cx_tx_bytes_total: Counter,
    pub membership_total: Gauge,
    pub membership_healthy: Gauge,
    pub membership_change: Counter,
    pub update_attempt: Counter,
    pub update_success: Counter,
    pub update_failure: Counter,
}

impl ClusterStats {
    pub fn new(store: &Arc<Store>, stat_name: &str) -> Self {
        let p = format!("cluster.{stat_name}.");
        let c = |n: &str| store.counter(&format!("{p}{n}"));
        let g = |n: &str| store.gauge(&format!("{p}{n}"));
        ClusterStats {
            upstream_rq_total: c("upstream_rq_total"),
            upstream_rq_active: g("upstream_rq_active"),
            upstream_rq_completed: c("upstream_rq_completed"),
            upstream_rq: CodeStats::new(store, &format!("{p}upstream_rq")),
            external_upstream_rq: CodeStats::new(store, &format!("{p}external.upstream_rq")),
            internal_upstream_rq: CodeStats::new(store, &format!("{p}internal.upstream_rq")),
            external_upstream_rq_completed: c("external.upstream_rq_completed"),
            internal_upstream_rq_completed: c("internal.upstream_rq_completed"),
            lb_healthy_panic: c("lb_healthy_panic"),
            default_total_match_count: c("default.total_match_count"),
            warming_state: {
                let g = g("warming_state");
                g.set(0);
                g
            },
            membership_degraded: {
                let g = g("membership_degraded");
                g.set(0);
                g
            },
            membership_excluded: {
                let g = g("membership_excluded");
                g.set(0);
                g
            },
            upstream_rq_time: store.histogram(&format!("{p}upstream_rq_time")),
            upstream_rq_timeout: c("upstream_rq_timeout"),
            upstream_rq_per_try_timeout: c("upstream_rq_per_try_timeout"),
            upstream_rq_per_try_idle_timeout: c("upstream_rq_per_try_idle_timeout"),
            upstream_rq_retry: c("upstream_rq_retry"),
            upstream_rq_retry_success: c("upstream_rq_retry_success"),
            upstream_rq_retry_overflow: c("upstream_rq_retry_overflow"),
            upstream_rq_retry_limit_exceeded: c("upstream_rq_retry_limit_exceeded"),
            upstream_rq_pending_overflow: c("upstream_rq_pending_overflow"),
            upstream_rq_pending_total: c("upstream_rq_pending_total"),
            upstream_rq_active_overflow: c("upstream_rq_active_overflow"),
            upstream_rq_pending_active: {
                let g = g("upstream_rq_pending_active");
                g.set(0);
                g
            },
            upstream_rq_pending_failure_eject: c("upstream_rq_pending_failure_eject"),
            upstream_cx_overflow: c("upstream_cx_overflow"),
            upstream_cx_total: c("upstream_cx_total"),
            upstream_cx_active: g("upstream_cx_active"),
            upstream_cx_http1_total: c("upstream_cx_http1_total"),
            upstream_cx_http2_total: c("upstream_cx_http2_total"),
            upstream_cx_connect_fail: c("upstream_cx_connect_fail"),
            upstream_cx_connect_timeout: c("upstream_cx_connect_timeout"),
            upstream_cx_destroy: c("upstream_cx_destroy"),
            upstream_cx_none_healthy: c("upstream_cx_none_healthy"),
            upstream_cx_max_requests: c("upstream_cx_max_requests"),
            upstream_rq_rx_reset: c("upstream_rq_rx_reset"),
            ssl_handshake: c("ssl.handshake"),
            ssl_connection_error: c("ssl.connection_error"),
            upstream_cx_rx_bytes_total: c("upstream_cx_rx_bytes_total"),
            upstream_cx_tx_bytes_total: c("upstream_cx_tx_bytes_total"),
            membership_total: g("membership_total"),
            membership_healthy: g("membership_healthy"),
            membership_change: c("membership_change"),
            update_attempt: c("update_attempt"),
            update_success: c("update_success"),
            update_failure: c("update_failure"),
        }
    }
}

/// `upstream_connection_options.tcp_keepalive`: set on every upstream socket (unset fields
/// keep the system's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpKeepalive {
    pub probes: Option<u32>,
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
}

/// A cluster as traffic sees it.
#[derive(Debug)]
pub struct Cluster {
    /// Unique per cluster object: a changed cluster gets new pools.
    pub id: u64,
    pub name: Arc<str>,
    pub discovery: DiscoveryType,
    pub lb: LbPolicy,
    /// The policy with `common_lb_config` (panic threshold, locality weighting).
    pub lb_config: LbConfig,
    /// `common_lb_config.update_merge_window` (default 1 s; 0 delivers every change at once).
    pub lb_config_merge_window: Duration,
    pub connect_timeout: Duration,
    pub protocol: UpstreamProtocol,
    /// HTTP/2 flow-control windows for upstream connections: (stream, connection).
    pub h2_windows: (u32, u32),
    pub max_requests_per_connection: Option<u32>,
    pub idle_timeout: Option<Duration>,
    pub circuit_breakers: CircuitBreakers,
    /// `outlier_detection`; its task is started by the config manager.
    pub outlier: Option<Detector>,
    /// `health_checks`; its task is started by the config manager.
    pub health: Option<HealthChecker>,
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// The cluster's `transport_socket` (None: plaintext).
    pub tls: Option<Arc<crate::tls::ClientTls>>,
    /// `transport_socket_matches`: endpoint metadata match → transport (None: plaintext).
    pub tls_matches: Vec<(envoy_types::pb::google::protobuf::Struct, Option<Arc<crate::tls::ClientTls>>)>,
    /// `upstream_bind_config`: the local IPs upstream connections come from, the
    /// `source_address` first, then `additional_source_addresses` (one per IP family, as Istio
    /// sends 127.0.0.6 and ::6 for dual stack).
    pub upstream_bind: Vec<std::net::IpAddr>,
    /// The cluster's upstream network `filters`, compiled by their extensions (Istio's TCP
    /// metadata exchange is the one remora has); the extension that reads one downcasts it.
    pub upstream_filters: Vec<crate::config::ExtensionConfig>,
    pub hosts: ArcSwap<HostSet>,
    /// Serialises the writers of `hosts` (EDS/DNS updates and health changes, all on the main
    /// runtime) and holds when health changes were last published (`update_merge_window`);
    /// readers never take it.
    hosts_write: std::sync::Mutex<membership::HealthUpdates>,
    pub dns_targets: Vec<DnsTarget>,
    pub dns_refresh: Duration,
    pub dns_family: DnsFamily,
    pub eds_service_name: Option<String>,
    /// File-based EDS (`eds_config.path_config_source`): the file the endpoints come from.
    pub eds_file: Option<std::path::PathBuf>,
    pub stats: ClusterStats,
    /// ORIGINAL_DST hosts by address, reused while connections to them come and go.
    original_dst_hosts: std::sync::Mutex<std::collections::HashMap<SocketAddr, Arc<Host>>>,
    /// The cluster's `metadata`, shared with the responses it serves (Istio's stats read it).
    pub metadata: Option<Arc<envoy_types::pb::envoy::config::core::v3::Metadata>>,
    /// The proto it was built from (for `/config_dump` and change detection).
    pub proto: ClusterProto,
}

impl Cluster {
    /// The upstream network filter of type `T`, if the cluster has one.
    pub fn upstream_filter<T: 'static>(&self) -> Option<&T> {
        self.upstream_filters.iter().find_map(|f| f.downcast_ref::<T>())
    }

    pub fn from_proto(p: &ClusterProto, cx: &BuildCtx) -> Result<Self, ConfigError> {
        if p.name.is_empty() {
            return Err(ConfigError::new("name", "cluster name must not be empty"));
        }
        use cluster::{ClusterDiscoveryType as CDT, DiscoveryType as DT};
        let discovery = match &p.cluster_discovery_type {
            None => DiscoveryType::Static,
            Some(CDT::Type(t)) => match DT::try_from(*t) {
                Ok(DT::Static) => DiscoveryType::Static,
                Ok(DT::StrictDns) => DiscoveryType::StrictDns,
                Ok(DT::LogicalDns) => DiscoveryType::LogicalDns,
                Ok(DT::Eds) => DiscoveryType::Eds,
                Ok(DT::OriginalDst) => DiscoveryType::OriginalDst,
                Err(_) => return Err(ConfigError::new("type", "unknown discovery type")),
            },
            Some(CDT::ClusterType(ct)) => {
                return Err(ConfigError::new(
                    "cluster_type",
                    format!("custom cluster type {} is not supported", ct.name),
                ));
            }
        };
        let lb = LbPolicy::from_proto(p, "")?;
        let tls = match &p.transport_socket {
            Some(ts) => crate::transport_socket::upstream(ts, cx, "transport_socket")?,
            None => None,
        };
        let mut tls_matches = Vec::new();
        for (i, m) in p.transport_socket_matches.iter().enumerate() {
            let f = format!("transport_socket_matches[{i}]");
            let t = match &m.transport_socket {
                Some(ts) => crate::transport_socket::upstream(ts, cx, &format!("{f}.transport_socket"))?,
                None => None,
            };
            tls_matches.push((m.r#match.clone().unwrap_or_default(), t));
        }
        let protocol = upstream_protocol(p)?;
        let h2_windows = upstream_h2_windows(p)?;
        let mut max_requests_per_connection = p.max_requests_per_connection.map(|v| v.value).filter(|v| *v > 0);
        let mut idle_timeout = Some(Duration::from_secs(3600));
        let mut common = p.common_http_protocol_options;
        if let Some(opts) = protocol_options(p)?
            && opts.common_http_protocol_options.is_some()
        {
            common = opts.common_http_protocol_options;
        }
        if let Some(c) = &common {
            // Read by the HTTP connection manager only: on a cluster (upstream responses) they
            // are not implemented.
            if c.max_headers_count.is_some() {
                return Err(unsupported_upstream("common_http_protocol_options.max_headers_count"));
            }
            if c.max_connection_duration.as_ref().is_some_and(|d| !duration(d).is_zero()) {
                return Err(unsupported_upstream("common_http_protocol_options.max_connection_duration"));
            }
            if c.max_stream_duration.as_ref().is_some_and(|d| !duration(d).is_zero()) {
                return Err(unsupported_upstream("common_http_protocol_options.max_stream_duration"));
            }
            if c.headers_with_underscores_action != 0 {
                return Err(unsupported_upstream("common_http_protocol_options.headers_with_underscores_action"));
            }
            if let Some(t) = &c.idle_timeout {
                let d = duration(t);
                idle_timeout = (!d.is_zero()).then_some(d);
            }
            if let Some(m) = c.max_requests_per_connection {
                max_requests_per_connection = Some(m.value).filter(|v| *v > 0);
            }
        }
        let dns_family = match cluster::DnsLookupFamily::try_from(p.dns_lookup_family) {
            Ok(cluster::DnsLookupFamily::Auto) => DnsFamily::Auto,
            Ok(cluster::DnsLookupFamily::V4Only) => DnsFamily::V4Only,
            Ok(cluster::DnsLookupFamily::V6Only) => DnsFamily::V6Only,
            Ok(cluster::DnsLookupFamily::V4Preferred) => DnsFamily::V4Preferred,
            Ok(cluster::DnsLookupFamily::All) => DnsFamily::All,
            Err(_) => DnsFamily::Auto,
        };
        let stat_name = if p.alt_stat_name.is_empty() { p.name.as_str() } else { p.alt_stat_name.as_str() };
        let lb_config = lb_config(p, lb, discovery)?;
        let tcp_keepalive = tcp_keepalive(p);
        let outlier = match &p.outlier_detection {
            Some(od) => Some(Detector::new(OutlierConfig::from_proto(od)?, OutlierStats::new(&cx.stats, stat_name))),
            None => None,
        };
        let health = HealthChecker::from_cluster(p, &cx.stats, stat_name)?;
        if health.is_some() && discovery == DiscoveryType::OriginalDst {
            return Err(ConfigError::new("health_checks", "not supported by remora on ORIGINAL_DST clusters"));
        }
        if health.as_ref().is_some_and(|h| matches!(h.config.kind, super::health::Kind::Grpc(_)))
            && protocol == UpstreamProtocol::Http1
        {
            return Err(ConfigError::new(
                "health_checks[0].grpc_health_check",
                format!("{} cluster must support HTTP/2 for gRPC healthchecking", p.name),
            ));
        }
        let circuit_breakers = CircuitBreakers::from_proto(p.circuit_breakers.as_ref(), &cx.stats, stat_name)?;
        let stats = ClusterStats::new(&cx.stats, stat_name);
        let mut c = Cluster {
            id: NEXT_CLUSTER_ID.fetch_add(1, Ordering::Relaxed),
            name: p.name.as_str().into(),
            discovery,
            lb,
            lb_config,
            lb_config_merge_window: p
                .common_lb_config
                .as_ref()
                .and_then(|c| c.update_merge_window.as_ref())
                .map_or(Duration::from_secs(1), duration),
            connect_timeout: p.connect_timeout.as_ref().map(duration).unwrap_or(Duration::from_secs(5)),
            protocol,
            h2_windows,
            max_requests_per_connection,
            idle_timeout,
            circuit_breakers,
            outlier,
            health,
            tcp_keepalive,
            tls,
            tls_matches,
            upstream_bind: upstream_bind(p)?,
            upstream_filters: (cx.extensions.upstream_filters)(&p.filters, cx)?,
            hosts: ArcSwap::from_pointee(HostSet::default()),
            hosts_write: std::sync::Mutex::new(membership::HealthUpdates::default()),
            dns_targets: Vec::new(),
            dns_refresh: p
                .dns_refresh_rate
                .as_ref()
                .map(duration)
                .filter(|d| !d.is_zero())
                .unwrap_or(Duration::from_secs(5)),
            dns_family,
            eds_service_name: None,
            eds_file: None,
            stats,
            original_dst_hosts: Default::default(),
            metadata: p.metadata.clone().map(Arc::new),
            proto: p.clone(),
        };
        match discovery {
            DiscoveryType::Static => {
                let cla = p.load_assignment.clone().unwrap_or_default();
                c.set_load_assignment(&cla).map_err(|e| e.within("load_assignment"))?;
            }
            DiscoveryType::StrictDns | DiscoveryType::LogicalDns => {
                let cla = p.load_assignment.clone().unwrap_or_default();
                c.dns_targets = dns_targets(&cla).map_err(|e| e.within("load_assignment"))?;
                if discovery == DiscoveryType::LogicalDns && c.dns_targets.len() != 1 {
                    return Err(ConfigError::new(
                        "load_assignment",
                        "LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single lb_endpoint",
                    ));
                }
                // Literal IPs need no resolution.
                let literal: Option<Vec<(SocketAddr, &DnsTarget)>> = c
                    .dns_targets
                    .iter()
                    .map(|t| t.host.parse::<std::net::IpAddr>().ok().map(|ip| (SocketAddr::new(ip, t.port), t)))
                    .collect();
                if let Some(l) = literal {
                    let hosts = l.into_iter().map(|(a, t)| Endpoint { address: a, ..t.template.clone() }).collect();
                    c.set_hosts(hosts);
                }
            }
            DiscoveryType::Eds => {
                c.eds_file = p
                    .eds_cluster_config
                    .as_ref()
                    .and_then(|e| e.eds_config.as_ref())
                    .and_then(crate::config::file_source);
                let name = p
                    .eds_cluster_config
                    .as_ref()
                    .map(|e| e.service_name.clone())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| p.name.clone());
                c.eds_service_name = Some(name);
            }
            DiscoveryType::OriginalDst => {
                // Hosts are made per connection from its original destination.
            }
        }
        Ok(c)
    }

    /// The host for an ORIGINAL_DST connection to `addr` (cached so pools can be reused; hosts
    /// nobody uses are dropped as the cache grows).
    pub fn original_dst_host(&self, addr: SocketAddr) -> Arc<Host> {
        let mut m = self.original_dst_hosts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = m.get(&addr) {
            return h.clone();
        }
        if m.len() >= 1024 {
            m.retain(|_, h| Arc::strong_count(h) > 1);
        }
        let h = Arc::new(Host::new(addr, "", 1, 0, None));
        m.insert(addr, h.clone());
        h
    }

    /// The TLS context for connections to `host`: the first `transport_socket_matches` entry
    /// whose match is a subset of the endpoint's `envoy.transport_socket_match` metadata, else
    /// the cluster's transport socket.
    pub fn tls_for(&self, host: &Host) -> Option<&Arc<crate::tls::ClientTls>> {
        if !self.tls_matches.is_empty() {
            let md = host.metadata.as_ref().and_then(|m| m.filter_metadata.get("envoy.transport_socket_match"));
            for (want, t) in &self.tls_matches {
                let ok = want.fields.iter().all(|(k, v)| md.and_then(|m| m.fields.get(k)) == Some(v));
                if ok {
                    return t.as_ref();
                }
            }
        }
        self.tls.as_ref()
    }

    /// SDS secret names this cluster's TLS contexts need.
    pub fn secret_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tls.iter().flat_map(|t| t.secret_names()).collect();
        for t in self.tls_matches.iter().filter_map(|(_, t)| t.as_ref()) {
            v.extend(t.secret_names());
        }
        v.sort();
        v.dedup();
        v
    }

    /// The SDS secrets among [`Self::secret_names`] whose config source is `ads`.
    pub fn ads_secret_names(&self) -> Vec<String> {
        let tls = self.tls.iter().chain(self.tls_matches.iter().filter_map(|(_, t)| t.as_ref()));
        tls.flat_map(|t| t.ads_secret_names().iter().cloned()).collect()
    }

    /// Files of file-based SDS this cluster's TLS contexts read.
    pub fn secret_files(&self) -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = self.tls.iter().flat_map(|t| t.secret_files().iter().cloned()).collect();
        for t in self.tls_matches.iter().filter_map(|(_, t)| t.as_ref()) {
            v.extend(t.secret_files().iter().cloned());
        }
        v
    }

    /// Whether every actively checked host had its first health check (Envoy's cluster
    /// initialisation waits for that); true without health checks.
    pub fn initial_health_checks_done(&self) -> bool {
        self.health.is_none()
            || self.hosts.load().all.iter().all(|h| h.hc.disabled || h.has(super::host::flag::HC_CHECKED))
    }

    pub fn needs_dns(&self) -> bool {
        matches!(self.discovery, DiscoveryType::StrictDns | DiscoveryType::LogicalDns)
            && self.dns_targets.iter().any(|t| t.host.parse::<std::net::IpAddr>().is_err())
    }
}

/// `common_lb_config`: the healthy panic threshold and locality weighting are honoured, the
/// rest is refused when set (it would change where traffic goes).
fn lb_config(p: &ClusterProto, policy: LbPolicy, discovery: DiscoveryType) -> Result<LbConfig, ConfigError> {
    use cluster::common_lb_config::LocalityConfigSpecifier as L;
    let mut c = LbConfig { policy, ..LbConfig::default() };
    let Some(lb) = &p.common_lb_config else { return Ok(c) };
    let f = |n: &str| format!("common_lb_config.{n}");
    if let Some(t) = &lb.healthy_panic_threshold {
        if !(0.0..=100.0).contains(&t.value) {
            return Err(ConfigError::new(f("healthy_panic_threshold.value"), "value must be inside range [0, 100]"));
        }
        c.panic_threshold = t.value.round() as u32;
    }
    match &lb.locality_config_specifier {
        None => {}
        Some(L::LocalityWeightedLbConfig(_)) => c.locality_weighted = true,
        Some(L::ZoneAwareLbConfig(_)) => {
            return Err(ConfigError::new(f("zone_aware_lb_config"), "not supported by remora"));
        }
    }
    if let Some(ch) = &lb.consistent_hashing_lb_config {
        if ch.use_hostname_for_hashing {
            if matches!(discovery, DiscoveryType::Static) {
                return Err(ConfigError::new(
                    f("consistent_hashing_lb_config.use_hostname_for_hashing"),
                    "Cannot use hostname for consistent hashing loadbalancing for cluster of type: 'envoy.cluster.static'",
                ));
            }
            return Err(ConfigError::new(
                f("consistent_hashing_lb_config.use_hostname_for_hashing"),
                "not supported by remora",
            ));
        }
        if ch.hash_balance_factor.is_some() {
            return Err(ConfigError::new(
                f("consistent_hashing_lb_config.hash_balance_factor"),
                "not supported by remora",
            ));
        }
    }
    if lb.override_host_status.is_some() {
        return Err(ConfigError::new(f("override_host_status"), "not supported by remora"));
    }
    if lb.close_connections_on_host_set_change {
        return Err(ConfigError::new(f("close_connections_on_host_set_change"), "not supported by remora"));
    }
    if lb.ignore_new_hosts_until_first_hc {
        return Err(ConfigError::new(f("ignore_new_hosts_until_first_hc"), "not supported by remora"));
    }
    if lb.update_merge_window.as_ref().is_some_and(|d| d.seconds < 0 || d.nanos < 0) {
        return Err(ConfigError::new(f("update_merge_window"), "Invalid duration: Expected positive duration"));
    }
    Ok(c)
}

/// `upstream_connection_options.tcp_keepalive` (seconds; 0 leaves the system's value, as a 0
/// would be refused by the kernel).
fn tcp_keepalive(p: &ClusterProto) -> Option<TcpKeepalive> {
    let k = p.upstream_connection_options.as_ref()?.tcp_keepalive.as_ref()?;
    let secs = |v: Option<u32>| v.filter(|v| *v > 0).map(|v| Duration::from_secs(u64::from(v)));
    Some(TcpKeepalive {
        probes: k.keepalive_probes.map(|v| v.value).filter(|v| *v > 0),
        time: secs(k.keepalive_time.map(|v| v.value)),
        interval: secs(k.keepalive_interval.map(|v| v.value)),
    })
}

fn dns_targets(cla: &ClusterLoadAssignment) -> Result<Vec<DnsTarget>, ConfigError> {
    let mut out = Vec::new();
    for (i, lle) in cla.endpoints.iter().enumerate() {
        for (j, le) in lle.lb_endpoints.iter().enumerate() {
            let f = format!("endpoints[{i}].lb_endpoints[{j}].endpoint.address");
            let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &le.host_identifier else {
                return Err(ConfigError::new(f, "named endpoints are not supported"));
            };
            let (host, port) = socket_address_parts(ep.address.as_ref(), &f)?;
            let mut template = Endpoint::ip(
                SocketAddr::from(([0, 0, 0, 0], port)),
                host.clone(),
                le.load_balancing_weight.map(|w| w.value).unwrap_or(1),
                lle.priority,
                le.metadata.clone(),
            );
            template.eds_flags = super::host::flag::from_eds(le.health_status);
            template.hc = membership::endpoint_health_check(
                ep.health_check_config.as_ref(),
                &format!("endpoints[{i}].lb_endpoints[{j}]"),
            )?;
            template.locality = lle.locality.as_ref().map(|l| {
                Arc::new(super::host::Locality {
                    region: l.region.clone(),
                    zone: l.zone.clone(),
                    sub_zone: l.sub_zone.clone(),
                })
            });
            template.locality_weight = lle.load_balancing_weight.map_or(0, |w| w.value);
            out.push(DnsTarget { host, port, template });
        }
    }
    Ok(out)
}

fn socket_address_parts(
    a: Option<&envoy_types::pb::envoy::config::core::v3::Address>,
    field: &str,
) -> Result<(String, u16), ConfigError> {
    match a.and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(sa)) => {
            let port = match sa.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => {
                    u16::try_from(p).map_err(|_| ConfigError::new(field, format!("invalid port {p}")))?
                }
                Some(socket_address::PortSpecifier::NamedPort(_)) => {
                    return Err(ConfigError::new(field, "named ports are not supported"));
                }
                None => 0,
            };
            Ok((sa.address.clone(), port))
        }
        Some(address::Address::Pipe(_)) => {
            Err(ConfigError::new(field, "unix pipe upstream addresses are not supported yet"))
        }
        Some(_) => Err(ConfigError::new(field, "unsupported address type")),
        None => Err(ConfigError::new(field, "address is required")),
    }
}

/// Parses an IP socket address (no DNS).
fn upstream_bind(p: &ClusterProto) -> Result<Vec<std::net::IpAddr>, ConfigError> {
    let Some(b) = p.upstream_bind_config.as_ref() else { return Ok(Vec::new()) };
    let ip = |a: &str, f: String| a.parse().map_err(|_| ConfigError::new(f, format!("malformed IP address: {a}")));
    let mut out = Vec::new();
    if let Some(sa) = &b.source_address {
        out.push(ip(&sa.address, "upstream_bind_config.source_address".into())?);
    }
    #[allow(deprecated)]
    for (i, sa) in b.additional_source_addresses.iter().enumerate() {
        out.push(ip(&sa.address, format!("upstream_bind_config.additional_source_addresses[{i}].address"))?);
    }
    #[allow(deprecated)]
    for (i, e) in b.extra_source_addresses.iter().enumerate() {
        if let Some(sa) = &e.address {
            out.push(ip(&sa.address, format!("upstream_bind_config.extra_source_addresses[{i}].address"))?);
        }
    }
    Ok(out)
}

impl Cluster {
    /// The source IP for a connection to `dst`: the bind address of the same IP family (the
    /// first configured one when none matches, which then fails as in Envoy).
    pub fn bind_for(&self, dst: SocketAddr) -> Option<std::net::IpAddr> {
        self.upstream_bind.iter().find(|ip| ip.is_ipv4() == dst.is_ipv4()).or(self.upstream_bind.first()).copied()
    }
}

pub fn socket_address_of(
    a: Option<&envoy_types::pb::envoy::config::core::v3::Address>,
    field: &str,
) -> Result<SocketAddr, ConfigError> {
    let (host, port) = socket_address_parts(a, field)?;
    let ip: std::net::IpAddr =
        host.parse().map_err(|_| ConfigError::new(field, format!("malformed IP address: {host}")))?;
    Ok(SocketAddr::new(ip, port))
}

/// Resolves a DNS cluster's targets once and publishes the hosts. Returns false if nothing
/// resolved (the previous hosts stay).
pub async fn resolve_dns(c: &Cluster) -> bool {
    let mut hosts = Vec::new();
    let mut any = false;
    for t in &c.dns_targets {
        let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((t.host.as_str(), t.port)).await {
            Ok(a) => a.collect(),
            Err(e) => {
                tracing::debug!(cluster = %c.name, host = %t.host, "DNS resolution failed: {e}");
                continue;
            }
        };
        let picked = pick_family(addrs, c.dns_family);
        if picked.is_empty() {
            continue;
        }
        any = true;
        let picked =
            if c.discovery == DiscoveryType::LogicalDns { picked.into_iter().take(1).collect() } else { picked };
        for a in picked {
            hosts.push(Endpoint { address: a, ..t.template.clone() });
        }
    }
    c.stats.update_attempt.inc();
    if any {
        c.stats.update_success.inc();
        c.set_hosts(hosts);
    } else {
        c.stats.update_failure.inc();
    }
    any
}

fn pick_family(addrs: Vec<SocketAddr>, f: DnsFamily) -> Vec<SocketAddr> {
    let v4: Vec<SocketAddr> = addrs.iter().copied().filter(SocketAddr::is_ipv4).collect();
    let v6: Vec<SocketAddr> = addrs.iter().copied().filter(SocketAddr::is_ipv6).collect();
    let mut out = match f {
        DnsFamily::V4Only => v4,
        DnsFamily::V6Only => v6,
        DnsFamily::Auto => {
            if v6.is_empty() {
                v4
            } else {
                v6
            }
        }
        DnsFamily::V4Preferred => {
            if v4.is_empty() {
                v6
            } else {
                v4
            }
        }
        DnsFamily::All => addrs,
    };
    out.dedup();
    out
}

/// A field the guard admits for the HTTP connection manager that clusters do not implement.
fn unsupported_upstream(path: &str) -> ConfigError {
    ConfigError::new(path, "not supported by remora on a cluster (upstream)")
}
