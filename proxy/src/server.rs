//! The server: command line, bootstrap, the main runtime (admin, DNS, signals), the workers and
//! the lifecycle (initialising, live, draining, shutdown), as Envoy runs them.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use clap::Parser;
use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::bootstrap::{self, ServerConfig};
use crate::cli::{Mode, Options};
use crate::lifecycle::{Control, state};
use crate::manager::ConfigManager;
use crate::runtime::Shared;
use crate::worker;

pub use crate::lifecycle::VERSION;

mod code_pages;

/// Entry point of the binary.
pub fn run(args: Vec<std::ffi::OsString>) -> ExitCode {
    if args.get(1).is_some_and(|a| a == "certs") {
        return certs_command(&args[1..]);
    }
    if args.get(1).is_some_and(|a| a == "demo") {
        return demo_command(&args[2..]);
    }
    if args.get(1).is_some_and(|a| a == "explain") {
        return crate::cli::explain_command(&args[2..]);
    }
    let opts = match Options::try_parse_from(&args) {
        Ok(o) => o,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp => ExitCode::SUCCESS,
                _ => ExitCode::from(1),
            };
        }
    };
    if opts.version {
        // Envoy's format (`<argv0>  version: <sha>/<x.y.z[-label]>/<Clean|Modified>/<RELEASE|DEBUG>/<ssl>`),
        // which tools parse when the binary is installed as `envoy`; no source SHA is recorded.
        let argv0 = args.first().map(|a| a.to_string_lossy().into_owned()).unwrap_or_else(|| "remora".into());
        let build = if cfg!(debug_assertions) { "DEBUG" } else { "RELEASE" };
        println!("\n{argv0}  version: {}/1.40.0-remora-{VERSION}/Clean/{build}/rustls", "0".repeat(40));
        return ExitCode::SUCCESS;
    }
    let format = crate::logging::LineFormat::text(
        opts.log_format.as_deref().unwrap_or(crate::logging::DEFAULT_PATTERN),
        opts.log_format_escaped,
    );
    let logs = match crate::logging::Sink::open(opts.log_path.as_deref())
        .and_then(|sink| crate::logging::init(&opts.log_level, opts.component_log_level.as_deref(), format, sink))
    {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let shown =
        opts.config_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "--config-yaml".to_string());
    let src = xds_client::bootstrap::BootstrapSource {
        path: opts.config_path.clone(),
        config_yaml: opts.config_yaml.clone(),
        allow_unknown_fields: opts.allow_unknown_static_fields,
    };
    // Loading the bootstrap and compiling the field guard both use the descriptor pool: hold it
    // across both so it is decoded once, then give its memory back.
    let pool = xds_client::descriptors::pool();
    let config = xds_client::bootstrap::load(&src)
        .map_err(|e| e.to_string())
        .and_then(|b| bootstrap::build(&b, &opts).map_err(|e| e.to_string()));
    drop(pool);
    xds_client::descriptors::release_memory();
    let config = match config {
        Ok(mut c) => {
            if let Some(f) = c.log_format.take() {
                logs.set_format(f);
            }
            c
        }
        Err(e) => {
            eprintln!("error initializing configuration '{shown}': {e}");
            return ExitCode::from(1);
        }
    };
    match opts.mode {
        Mode::Validate => {
            println!("configuration '{shown}' OK");
            ExitCode::SUCCESS
        }
        Mode::InitOnly | Mode::Serve => serve(opts, config, logs),
    }
}

fn serve(opts: Options, config: ServerConfig, logs: crate::logging::LogControl) -> ExitCode {
    let rt =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("main").enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("cannot start the main runtime: {e}");
                return ExitCode::from(1);
            }
        };
    rt.block_on(async move { serve_async(opts, config, logs).await })
}

async fn serve_async(opts: Options, config: ServerConfig, logs: crate::logging::LogControl) -> ExitCode {
    let ServerConfig { node, admin, stats, clusters, listeners, cx, bootstrap, max_downstream_connections, .. } =
        config;
    let bootstrap_dynamic = bootstrap.dynamic_resources.clone().unwrap_or_default();
    let server_state = stats.gauge("server.state");
    server_state.set(state::INITIALIZING);
    stats.gauge("server.live").set(0);
    stats.gauge("server.concurrency").set(opts.workers() as i64);
    stats.gauge("server.version").set(0);
    let workers_started = stats.gauge("listener_manager.workers_started");
    workers_started.set(0);
    let (drain_tx, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        clusters: ArcSwap::from_pointee(crate::upstream::cluster_manager::ClusterSet::default()),
        stats: stats.clone(),
        hostname: node.hostname.clone(),
        local_address: local_address(opts.local_address_ip_version),
        drain: drain_tx,
        connections: AtomicUsize::new(0),
        limited_connections: AtomicUsize::new(0),
        max_connections: max_downstream_connections.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX)),
        drain_time: Duration::from_secs(opts.drain_time_s),
    });
    let n = opts.workers();
    let active: Arc<crate::listener::ActiveListeners> = Arc::new(ArcSwap::from_pointee(Vec::new()));
    let workers = match worker::start(n, shared.clone(), active.clone()) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("cannot start workers: {e}");
            return ExitCode::from(1);
        }
    };
    let manager = ConfigManager::new(shared.clone(), active, cx, workers.iter().map(|w| w.tx.clone()).collect());

    // DNS clusters resolve once before serving (Envoy's cluster initialisation).
    let mut initial = Vec::new();
    for c in clusters.iter().filter(|c| c.needs_dns()) {
        let c = c.clone();
        initial.push(tokio::spawn(async move { crate::upstream::cluster::resolve_dns(&c).await }));
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), futures_util::future::join_all(initial)).await;

    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let control = Arc::new(Control {
        shared: shared.clone(),
        manager: manager.clone(),
        state: server_state.clone(),
        shutdown: shutdown_tx,
        drain_time: Duration::from_secs(opts.drain_time_s),
        started: Instant::now(),
    });

    // Admin first, so readiness can be probed while initialising.
    if let Some(addr) = admin {
        let st = Arc::new(AdminState {
            control: control.clone(),
            node: node.clone(),
            bootstrap: bootstrap.clone(),
            options: opts.clone(),
            logs,
        });
        match admin::bind(addr).await {
            Ok(l) => {
                tokio::spawn(admin::serve(l, st));
            }
            Err(e) => {
                eprintln!("error initializing configuration: cannot bind admin address {addr}: {e}");
                return ExitCode::from(1);
            }
        }
    }

    if let Err(e) = manager.install_static(clusters, listeners) {
        eprintln!("{e}");
        return ExitCode::from(1);
    }
    tokio::spawn(flush_server_stats(stats.clone(), shared.clone(), control.started));
    // The Zipkin reporter: spans reach the collector through a host of its cluster.
    let sh = shared.clone();
    let resolve: crate::trace::zipkin::Resolver = Arc::new(move |name: &str| {
        let set = sh.clusters.load();
        let hosts = set.cluster(name)?.hosts.load();
        hosts.all.iter().find(|h| h.available()).or(hosts.all.first()).map(|h| h.address)
    });
    crate::trace::zipkin::start(&stats, shared.local_address, resolve);
    // Dynamic resources: the server goes LIVE and reports its workers started once the first
    // CDS and LDS were applied (or their initial fetch timed out), as Envoy's init manager does;
    // pilot-agent's readiness probe waits for exactly that.
    let mut initial = start_dynamic(&bootstrap_dynamic, &manager, opts.reject_unknown_dynamic_fields);
    let mut initial_timeout = Duration::from_secs(15);
    let secrets_from_ca = match crate::ca_client::start(&opts, &node, &manager) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error initializing configuration: {e}");
            return ExitCode::from(1);
        }
    };
    let streams = match crate::xds::ads::start(&bootstrap, &node, &manager, secrets_from_ca) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error initializing configuration: {e}");
            return ExitCode::from(1);
        }
    };
    initial.extend(streams.initial.iter().cloned());
    if !streams.initial.is_empty() {
        initial_timeout = streams.initial_fetch_timeout;
    }
    if !initial.is_empty() {
        let deadline = Instant::now() + initial_timeout;
        while Instant::now() < deadline && !initial.iter().all(|c| c.value() > 0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // As Envoy's cluster initialisation: clusters with active health checks are ready once each
    // host had its first check (each ends within the check's timeout).
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && !shared.clusters.load().clusters.values().all(|c| c.initial_health_checks_done())
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    workers_started.set(1);
    server_state.set(state::LIVE);
    stats.gauge("server.live").set(1);
    tracing::info!(target: "remora::server", "all listeners started; {n} workers");
    let released = code_pages::release_startup_code();
    tracing::debug!(target: "remora::server", "released {released} KiB of resident code pages only startup used");
    if opts.mode == Mode::InitOnly {
        crate::access_log::flush_all();
        return ExitCode::SUCCESS;
    }

    // Wait for SIGTERM / SIGINT / quitquitquit.
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot install SIGTERM handler: {e}");
            return ExitCode::from(1);
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::warn!(target: "remora::server", "caught SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::warn!(target: "remora::server", "caught SIGINT"),
        _ = async { while shutdown_rx.changed().await.is_ok() { if *shutdown_rx.borrow() { break } } } => {
            tracing::warn!(target: "remora::server", "shutdown requested");
        }
    }
    control.begin_shutdown();
    // Stop accepting, ask connections to finish, wait for them (bounded by --drain-time-s).
    let listeners = manager.all_listeners();
    for l in &listeners {
        l.shut();
    }
    manager.release_listen_sockets(&listeners.iter().map(|l| l.name.clone()).collect::<Vec<_>>());
    let _ = shared.drain.send(true);
    let deadline = Instant::now() + control.drain_time;
    while shared.connections.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(workers);
    crate::access_log::flush_all();
    tracing::info!(target: "remora::server", "exiting");
    ExitCode::SUCCESS
}

/// Refreshes the server-wide gauges Envoy keeps (uptime, memory, connections) every stats flush
/// interval (5 s, Envoy's default).
async fn flush_server_stats(stats: Arc<crate::stats::Store>, shared: Arc<Shared>, started: Instant) {
    let uptime = stats.gauge("server.uptime");
    let allocated = stats.gauge("server.memory_allocated");
    let heap = stats.gauge("server.memory_heap_size");
    let physical = stats.gauge("server.memory_physical_size");
    let connections = stats.gauge("server.total_connections");
    let parent = stats.gauge("server.parent_connections");
    for (name, v) in [
        ("server.hot_restart_epoch", 0),
        ("server.hot_restart_generation", 1),
        ("server.static_unknown_fields", 0),
        ("server.dynamic_unknown_fields", 0),
        ("runtime.num_layers", 0),
        ("runtime.num_keys", 0),
    ] {
        stats.gauge(name).set(v);
    }
    stats.counter("runtime.load_success").inc();
    loop {
        let (rss, vsz) = crate::admin::memory();
        uptime.set(started.elapsed().as_secs() as i64);
        allocated.set(rss as i64);
        heap.set(vsz as i64);
        physical.set(rss as i64);
        connections.set(shared.connections.load(Ordering::Relaxed) as i64);
        parent.set(0);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Starts the bootstrap's dynamic sources; returns the counters whose first increment means
/// the initial fetch is done (CDS, LDS).
fn start_dynamic(
    d: &envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::DynamicResources,
    manager: &Arc<ConfigManager>,
    reject_unknown: bool,
) -> Vec<crate::stats::Counter> {
    let mut waits = Vec::new();
    crate::xds::follow_files(manager.clone(), reject_unknown);
    if let Some(p) = d.cds_config.as_ref().and_then(crate::config::file_source) {
        crate::xds::watch_file(manager.clone(), p, crate::xds::CLUSTER, reject_unknown);
        waits.push(manager.cds.update_attempt.clone());
    }
    if let Some(p) = d.lds_config.as_ref().and_then(crate::config::file_source) {
        crate::xds::watch_file(manager.clone(), p, crate::xds::LISTENER, reject_unknown);
        waits.push(manager.lds.update_attempt.clone());
    }
    waits
}

/// The host's primary address (the source of its default route), for the IP version asked.
fn local_address(v: crate::cli::IpVersion) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
    let (bind, probe, fallback): (&str, &str, IpAddr) = match v {
        crate::cli::IpVersion::V4 => ("0.0.0.0:0", "192.0.2.1:53", IpAddr::V4(Ipv4Addr::LOCALHOST)),
        crate::cli::IpVersion::V6 => ("[::]:0", "[2001:db8::1]:53", IpAddr::V6(Ipv6Addr::LOCALHOST)),
    };
    // connect() on UDP sends nothing; it only picks the route and so the source address.
    UdpSocket::bind(bind)
        .and_then(|s| s.connect(probe).map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .unwrap_or(fallback)
}

/// `remora demo [--mesh DIR] ...`: execs the mesh crate's runner, `remora-demo` (`$REMORA_DEMO_BIN`,
/// else next to this binary, else on PATH), with this binary as the sidecars' proxy; the runner
/// lives in its own binary so the sidecar does not grow.
fn demo_command(args: &[std::ffi::OsString]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let me = std::env::current_exe().ok();
    let runner = std::env::var_os("REMORA_DEMO_BIN")
        .map(std::path::PathBuf::from)
        .or_else(|| me.as_ref().and_then(|m| m.parent()).map(|d| d.join("remora-demo")).filter(|p| p.exists()))
        .unwrap_or_else(|| "remora-demo".into());
    let mut cmd = std::process::Command::new(&runner);
    if let Some(me) = &me {
        cmd.env("REMORA_BIN", me);
    }
    let err = cmd.args(args).exec();
    eprintln!(
        "remora demo: cannot run {}: {err} (build it with `cargo build -p mesh`, or set REMORA_DEMO_BIN)",
        runner.display()
    );
    ExitCode::from(1)
}

/// `remora certs ...`: the dev CA (root and SPIFFE workload certificates for demos and tests).
fn certs_command(args: &[std::ffi::OsString]) -> ExitCode {
    #[derive(Parser)]
    #[command(name = "remora certs", about = "Create a dev root CA and SPIFFE workload certificates")]
    struct Cmd {
        #[command(flatten)]
        args: certs::dev_ca::CertsArgs,
    }
    let cmd = match Cmd::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.kind() == clap::error::ErrorKind::DisplayHelp { ExitCode::SUCCESS } else { ExitCode::from(1) };
        }
    };
    match certs::dev_ca::run(&cmd.args) {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("remora certs: {e}");
            ExitCode::from(1)
        }
    }
}
