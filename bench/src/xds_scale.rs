//! Config scale over xDS (`bench xds-scale`, started by `run` pinned to the load CPU): the
//! control-plane harness of xds-client (feature `server`) runs in this process, the proxy under
//! test (remora or Envoy, same bootstrap) on the proxy CPU. Two kinds of run:
//! - **scale**: the proxy starts against an empty control plane; once it has ACKed the empty
//!   CDS and LDS, N EDS clusters and their N ClusterLoadAssignments are pushed at once over
//!   Delta ADS; measured from the push until the proxy has ACKed them (the harness records
//!   ACKs) and until `/stats` shows `cluster_manager.active_clusters` up by N with no warming
//!   cluster; then RSS.
//! - **dump**: an istiod config dump is replayed (every resource with its dump version; the
//!   redacted SDS secrets replaced by dev-CA ones, as proxy/tests/istio_dump_ads.rs does); the
//!   proxy starts, answers every type, then sits idle for a moment: idle RSS.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use serde::{Deserialize, Serialize};
use xds_client::ads::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use xds_client::server::ControlPlane;

use crate::procs::{self, Guard};

/// What `bench xds-scale` is asked to do.
#[derive(Debug, Clone)]
pub struct Args {
    pub target: String,
    pub bin: PathBuf,
    pub proxy_cpu: String,
    pub dir: PathBuf,
    pub clusters: u32,
    pub endpoints: u32,
    /// Replay this config dump instead (idle RSS).
    pub dump: Option<PathBuf>,
    /// Remove the filters only Istio's Envoy build has (see [`ISTIO_ONLY_FILTERS`]).
    pub strip_istio_filters: bool,
    pub timeout: Duration,
}

/// Filters of the Istio 1.18.2 dump that stock Envoy 1.40 does not have (it rejects every
/// cluster and listener naming one): Istio's metadata exchange (network, upstream and the
/// Wasm-based HTTP one), its stats plugin, istio.alpn and istio_authn.
pub const ISTIO_ONLY_FILTERS: [&str; 4] = ["istio.metadata_exchange", "istio.stats", "istio.alpn", "istio_authn"];

/// Drops `ISTIO_ONLY_FILTERS` entries from every `filters` / `http_filters` list; returns how
/// many it removed.
fn strip_filters(v: &mut serde_json::Value) -> usize {
    let mut removed = 0;
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if (k == "filters" || k == "http_filters")
                    && let serde_json::Value::Array(list) = child
                {
                    let before = list.len();
                    list.retain(|f| !f["name"].as_str().is_some_and(|n| ISTIO_ONLY_FILTERS.contains(&n)));
                    removed += before - list.len();
                }
                removed += strip_filters(child);
            }
        }
        serde_json::Value::Array(list) => removed += list.iter_mut().map(strip_filters).sum::<usize>(),
        _ => {}
    }
    removed
}

/// What one run measured (printed as JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScaleRun {
    pub target: String,
    pub clusters: u32,
    pub endpoints: u32,
    /// Seconds from the push (scale) or the proxy's start (dump) until the last ACK of it.
    pub ack_secs: f64,
    /// Seconds until `/stats` showed the clusters active and none warming.
    pub settled_secs: f64,
    /// Proxy CPU seconds from the push until settled.
    pub cpu_secs: f64,
    /// VmRSS after settling (dump: after a short idle period).
    pub rss_mib: f64,
    pub hwm_mib: f64,
    pub active_clusters: i64,
    pub warming_clusters: i64,
    /// Dump runs: `listener_manager.total_listeners_active`.
    pub active_listeners: Option<i64>,
    /// Served counts (dump runs): clusters, listeners, routes, endpoint sets, secrets.
    pub served: Option<[usize; 5]>,
    pub nacks: u64,
    pub first_nack: Option<String>,
    /// Dump runs: types the proxy never answered (it rejected what would have asked for them).
    #[serde(default)]
    pub unanswered: Vec<String>,
    /// Dump runs: Istio-only filters removed before serving.
    #[serde(default)]
    pub stripped_filters: usize,
}

fn duration(secs: i64) -> Option<PbDuration> {
    Some(PbDuration { seconds: secs, nanos: 0 })
}

fn ads_source() -> Option<ConfigSource> {
    Some(ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    })
}

/// Resources by name, as `ControlPlane::set_all` takes them.
pub type Named = Vec<(String, Any)>;

fn cluster_name(i: u32) -> String {
    format!("svc-{i:05}.bench.svc.cluster.local")
}

/// `n` EDS clusters and their assignments of `m` endpoints each (distinct, never dialled:
/// nothing sends traffic and there are no health checks).
pub fn resources(n: u32, m: u32) -> (Named, Named) {
    let mut clusters = Vec::with_capacity(n as usize);
    let mut assignments = Vec::with_capacity(n as usize);
    for i in 0..n {
        let name = cluster_name(i);
        let c = Cluster {
            name: name.clone(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            connect_timeout: duration(1),
            eds_cluster_config: Some(EdsClusterConfig { eds_config: ads_source(), service_name: String::new() }),
            ..Default::default()
        };
        clusters.push((name.clone(), xds_client::any::pack(&c)));
        let lb_endpoints = (0..m)
            .map(|j| {
                let ip = format!("10.{}.{}.{}", (i >> 8) & 0xff, i & 0xff, j % 250 + 1);
                let port = 8000 + j / 250;
                LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(Address {
                            address: Some(AddressKind::SocketAddress(SocketAddress {
                                address: ip,
                                port_specifier: Some(PortSpecifier::PortValue(port)),
                                ..Default::default()
                            })),
                        }),
                        ..Default::default()
                    })),
                    ..Default::default()
                }
            })
            .collect();
        let cla = ClusterLoadAssignment {
            cluster_name: name.clone(),
            endpoints: vec![LocalityLbEndpoints { lb_endpoints, ..Default::default() }],
            ..Default::default()
        };
        assignments.push((name, xds_client::any::pack(&cla)));
    }
    (clusters, assignments)
}

fn static_cluster(name: &str, port: u16) -> String {
    format!(
        r#"  - name: {name}
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]
"#
    )
}

/// Delta ADS to the harness, as istiod drives a sidecar; the dump run also gets an `sds-grpc`
/// cluster (the same harness serves SDS), which the dump's listeners and clusters name.
fn bootstrap(admin: u16, xds: u16, istio: bool) -> String {
    let node = if istio {
        "node:\n  id: sidecar~10.0.0.1~replay-1.default~default.svc.cluster.local\n  cluster: replay.default\n  metadata: {NAMESPACE: default, SERVICE_ACCOUNT: default, ISTIO_VERSION: \"1.18.2\"}\n"
    } else {
        "node: {id: bench-scale, cluster: bench}\n"
    };
    let mut clusters = static_cluster("xds-grpc", xds);
    if istio {
        clusters.push_str(&static_cluster("sds-grpc", xds));
    }
    format!(
        r#"{node}admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
dynamic_resources:
  ads_config:
    api_type: DELTA_GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{{envoy_grpc: {{cluster_name: xds-grpc}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
{clusters}"#
    )
}

/// Envoy's `/config_dump` redacts private keys, so each dump secret keeps its name and version
/// but gets a dev-CA certificate and key (or the dev root for a validation context).
fn replace_redacted_secrets(cp: &ControlPlane) -> Result<()> {
    use certs::dev_ca::{CaOptions, DevCa, WorkloadOptions};
    use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, TlsCertificate, secret};
    use prost::Message;
    let names = cp.names(SECRET);
    if names.is_empty() {
        return Ok(());
    }
    let ca = DevCa::new_root(&CaOptions::default())?;
    let id = certs::SpiffeId::parse("spiffe://cluster.local/ns/default/sa/default")?;
    let leaf = ca.issue(&WorkloadOptions::spiffe(id))?;
    let inline = |pem: &str| {
        Some(DataSource { specifier: Some(Specifier::InlineString(pem.to_string())), ..Default::default() })
    };
    for name in names {
        let Some(served) = cp.get(SECRET, &name) else { continue };
        let mut s = Secret::decode(served.resource.value.as_slice()).with_context(|| format!("secret {name}"))?;
        match &mut s.r#type {
            Some(secret::Type::TlsCertificate(c)) => {
                *c = TlsCertificate {
                    certificate_chain: inline(&leaf.chain_pem),
                    private_key: inline(&leaf.key_pem),
                    ..Default::default()
                }
            }
            Some(secret::Type::ValidationContext(v)) => v.trusted_ca = inline(&leaf.root_pem),
            _ => {}
        }
        cp.set_with_version(SECRET, &name, &served.version, xds_client::any::pack(&s));
    }
    Ok(())
}

fn admin_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Gauges from `/stats?filter=...` as name -> value.
fn gauges(admin: u16, filter: &str) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    if let Ok((200, body)) = procs::http_get_text(admin_addr(admin), &format!("/stats?filter={filter}")) {
        for (k, v) in body.lines().filter_map(|l| l.split_once(": ")) {
            if let Ok(v) = v.trim().parse() {
                out.insert(k.trim().to_string(), v);
            }
        }
    }
    out
}

fn cluster_gauges(admin: u16) -> (i64, i64) {
    let g = gauges(admin, "cluster_manager.(active|warming)_clusters");
    let get = |k: &str| g.get(k).copied().unwrap_or(-1);
    (get("cluster_manager.active_clusters"), get("cluster_manager.warming_clusters"))
}

/// ACKs and NACKs as they arrive, with their arrival time (a task on the harness's runtime).
#[derive(Default)]
struct Arrivals {
    /// (type URL, when, NACK detail)
    events: Vec<(String, Instant, Option<String>)>,
    /// When the EDS subscription first covered `want_eds` names.
    eds_subscribed: Option<Instant>,
}

fn spawn_monitor(rt: &tokio::runtime::Runtime, cp: &ControlPlane, want_eds: usize) -> Arc<Mutex<Arrivals>> {
    let out = Arc::new(Mutex::new(Arrivals::default()));
    let (cp, sink) = (cp.clone(), out.clone());
    rt.spawn(async move {
        let (mut acks, mut nacks) = (cp.acks().len(), cp.nacks().len());
        loop {
            let subscribed = sink.lock().map(|a| a.eds_subscribed.is_some()).unwrap_or(true);
            let changed = cp
                .wait_for(
                    |cp| {
                        cp.acks().len() != acks
                            || cp.nacks().len() != nacks
                            || (want_eds > 0 && !subscribed && eds_names(cp) >= want_eds)
                    },
                    Duration::from_secs(3600),
                )
                .await;
            let now = Instant::now();
            if !changed {
                continue;
            }
            let (a, n) = (cp.acks(), cp.nacks());
            let Ok(mut s) = sink.lock() else { return };
            for r in a.iter().skip(acks) {
                s.events.push((r.type_url.clone(), now, None));
            }
            for r in n.iter().skip(nacks) {
                s.events.push((r.type_url.clone(), now, Some(r.error_detail.clone().unwrap_or_default())));
            }
            if s.eds_subscribed.is_none() && want_eds > 0 && eds_names(&cp) >= want_eds {
                s.eds_subscribed = Some(now);
            }
            (acks, nacks) = (a.len(), n.len());
        }
    });
    out
}

fn eds_names(cp: &ControlPlane) -> usize {
    cp.subscribed(ENDPOINT).map_or(0, |s| if s.wildcard { usize::MAX } else { s.names.len() })
}

struct Proxy {
    guard: Guard,
    admin: u16,
}

fn start_proxy(args: &Args, xds: u16, istio: bool) -> Result<Proxy> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let admin = procs::free_port()?;
    let conf = args.dir.join("bootstrap.yaml");
    std::fs::write(&conf, bootstrap(admin, xds, istio)).with_context(|| format!("writing {}", conf.display()))?;
    let argv: Vec<String> = vec![
        "-c".into(),
        conf.display().to_string(),
        "--concurrency".into(),
        "1".into(),
        "--disable-hot-restart".into(),
        "-l".into(),
        "warning".into(),
    ];
    let log = args.dir.join("proxy.log");
    let guard = Guard::spawn_pinned(&args.target, &args.proxy_cpu, &args.bin, &argv, &log)?;
    Ok(Proxy { guard, admin })
}

/// Runs one measurement in this process and returns it.
pub fn run(args: &Args) -> Result<ScaleRun> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    match &args.dump {
        Some(dump) => run_dump(args, &rt, dump),
        None => run_scale(args, &rt),
    }
}

fn nack_summary(events: &[(String, Instant, Option<String>)]) -> (u64, Option<String>) {
    let nacks: Vec<&String> = events.iter().filter_map(|(_, _, e)| e.as_ref()).collect();
    let first = nacks.first().map(|e| e.chars().take(300).collect::<String>());
    (nacks.len() as u64, first)
}

fn run_scale(args: &Args, rt: &tokio::runtime::Runtime) -> Result<ScaleRun> {
    let cp = ControlPlane::new();
    let xds = rt.block_on(cp.serve_tcp("127.0.0.1:0".parse()?))?;
    let mut p = start_proxy(args, xds.port(), false)?;
    procs::wait_http_ok(
        admin_addr(p.admin),
        "/ready",
        None,
        Duration::from_secs(30),
        std::slice::from_mut(&mut p.guard),
    )
    .with_context(|| format!("{} /ready against the empty control plane", args.target))?;
    let initial = rt.block_on(cp.wait_for(
        |cp| [CLUSTER, LISTENER].iter().all(|t| cp.acks().iter().any(|a| a.type_url == *t)),
        Duration::from_secs(30),
    ));
    if !initial {
        bail!("{}: the empty CDS/LDS were not ACKed", args.target);
    }
    let (base_active, _) = cluster_gauges(p.admin);
    if base_active < 0 {
        bail!("{}: no cluster_manager.active_clusters in /stats", args.target);
    }
    let (clusters, assignments) = resources(args.clusters, args.endpoints);
    let n = args.clusters as usize;
    let pids = [p.guard.pid()];
    let arrivals = spawn_monitor(rt, &cp, n);
    let cpu0 = procs::cpu_seconds(&pids);

    let pushed = Instant::now();
    cp.set_all(ENDPOINT, assignments);
    cp.set_all(CLUSTER, clusters);

    // ACKed: CDS after the push, and EDS after the subscription covered every cluster.
    let deadline = pushed + args.timeout;
    let acked = loop {
        p.guard.check_alive()?;
        let done = arrivals.lock().ok().is_some_and(|a| {
            let cds = a.events.iter().any(|(t, _, _)| t == CLUSTER);
            let eds = a.eds_subscribed.is_some_and(|s| a.events.iter().any(|(t, at, _)| t == ENDPOINT && *at >= s));
            cds && eds
        });
        if done {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Settled: every cluster active, none warming (polled only now: /stats walks every stat,
    // which costs the proxy's main thread with 10k clusters).
    let want = base_active + i64::from(args.clusters);
    let (mut active, mut warming);
    let settled = loop {
        (active, warming) = cluster_gauges(p.admin);
        if active >= want && warming == 0 {
            break Some(pushed.elapsed());
        }
        if Instant::now() > deadline {
            break None;
        }
        p.guard.check_alive()?;
        std::thread::sleep(Duration::from_millis(50));
    };
    let cpu_secs = procs::cpu_seconds(&pids) - cpu0;
    // Stragglers (a last ACK after the gauges moved) get a moment to arrive.
    std::thread::sleep(Duration::from_millis(500));
    let rss = procs::memory_mib(&pids, "VmRSS");
    let hwm = procs::memory_mib(&pids, "VmHWM");
    let events = arrivals.lock().map(|a| a.events.clone()).unwrap_or_default();
    let last_ack = events
        .iter()
        .filter(|(t, _, _)| t == CLUSTER || t == ENDPOINT)
        .map(|(_, at, _)| *at)
        .max()
        .map(|at| at.duration_since(pushed).as_secs_f64());
    let (nacks, first_nack) = nack_summary(&events);
    cp.stop();
    if !acked {
        bail!(
            "{}: CDS+EDS not ACKed within {:?} (EDS names subscribed: {}, events {}, first NACK {first_nack:?})",
            args.target,
            args.timeout,
            eds_names(&cp),
            events.len()
        );
    }
    let Some(settled) = settled else {
        bail!(
            "{}: not settled within {:?}: active {active} (want {want}), warming {warming}",
            args.target,
            args.timeout
        );
    };
    Ok(ScaleRun {
        target: args.target.clone(),
        clusters: args.clusters,
        endpoints: args.clusters * args.endpoints,
        ack_secs: last_ack.unwrap_or(0.0),
        settled_secs: settled.as_secs_f64(),
        cpu_secs,
        rss_mib: rss,
        hwm_mib: hwm,
        active_clusters: active,
        warming_clusters: warming,
        active_listeners: None,
        served: None,
        nacks,
        first_nack,
        unanswered: Vec::new(),
        stripped_filters: 0,
    })
}

fn run_dump(args: &Args, rt: &tokio::runtime::Runtime, dump: &Path) -> Result<ScaleRun> {
    let mut text = std::fs::read_to_string(dump).with_context(|| format!("reading {}", dump.display()))?;
    let mut stripped = 0;
    if args.strip_istio_filters {
        let mut v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", dump.display()))?;
        stripped = strip_filters(&mut v);
        text = serde_json::to_string(&v)?;
    }
    let cp = ControlPlane::from_config_dump(&text)?;
    replace_redacted_secrets(&cp)?;
    let served = [CLUSTER, LISTENER, ROUTE, ENDPOINT, SECRET].map(|t| cp.count(t));
    let types: Vec<&'static str> =
        [CLUSTER, LISTENER, ROUTE, ENDPOINT].into_iter().filter(|t| cp.count(t) > 0).collect();
    let xds = rt.block_on(cp.serve_tcp("127.0.0.1:0".parse()?))?;
    let arrivals = spawn_monitor(rt, &cp, 0);
    let started = Instant::now();
    let mut p = start_proxy(args, xds.port(), true)?;
    let pids = [p.guard.pid()];
    let want = types.clone();
    rt.block_on(cp.wait_for(
        move |cp| want.iter().all(|t| cp.acks().iter().chain(cp.nacks().iter()).any(|a| a.type_url == *t)),
        args.timeout,
    ));
    p.guard.check_alive()?;
    let answered: Vec<String> = cp.acks().iter().chain(cp.nacks().iter()).map(|a| a.type_url.clone()).collect();
    let unanswered: Vec<String> = types
        .iter()
        .filter(|t| !answered.iter().any(|a| a == *t))
        .map(|t| xds_client::any::type_name(t).to_string())
        .collect();
    if unanswered.len() == types.len() {
        bail!("{}: no type of the dump was answered within {:?}", args.target, args.timeout);
    }
    // Quiet: no new ACK/NACK for a second and no warming cluster (or 20 s).
    let quiet_deadline = Instant::now() + Duration::from_secs(20);
    let (mut active, mut warming);
    loop {
        (active, warming) = cluster_gauges(p.admin);
        let last = arrivals.lock().ok().and_then(|a| a.events.iter().map(|(_, at, _)| *at).max());
        let quiet = last.is_none_or(|at| at.elapsed() > Duration::from_secs(1));
        if (quiet && warming == 0) || Instant::now() > quiet_deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let settled = started.elapsed();
    let cpu_secs = procs::cpu_seconds(&pids);
    // Idle: nothing in flight; let allocators settle.
    std::thread::sleep(Duration::from_secs(2));
    let rss = procs::memory_mib(&pids, "VmRSS");
    let hwm = procs::memory_mib(&pids, "VmHWM");
    let listeners = gauges(p.admin, "listener_manager.total_listeners_active")
        .get("listener_manager.total_listeners_active")
        .copied();
    let events = arrivals.lock().map(|a| a.events.clone()).unwrap_or_default();
    let last_ack = events.iter().map(|(_, at, _)| *at).max().map(|at| at.duration_since(started).as_secs_f64());
    let (nacks, first_nack) = nack_summary(&events);
    cp.stop();
    Ok(ScaleRun {
        target: args.target.clone(),
        clusters: served[0] as u32,
        endpoints: 0,
        ack_secs: last_ack.unwrap_or(0.0),
        settled_secs: settled.as_secs_f64(),
        cpu_secs,
        rss_mib: rss,
        hwm_mib: hwm,
        active_clusters: active,
        warming_clusters: warming,
        active_listeners: listeners,
        served: Some(served),
        nacks,
        first_nack,
        unanswered,
        stripped_filters: stripped,
    })
}
