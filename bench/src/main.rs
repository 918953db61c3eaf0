//! `bench run`: remora side by side with Envoy, HAProxy, nginx and a direct connection, pinned
//! to CPUs, in interleaved rounds; writes a markdown table, JSON and an SVG chart.
//! See bench/README.md for the method.

mod configs;
mod handshake;
mod loadgen;
mod procs;
mod progress;
mod report;
mod scenarios;
mod targets;
mod tools;
mod xds_scale;

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::report::{Machine, Report};
use crate::scenarios::{Ctx, Plan};
use crate::targets::{Env, Target};
use crate::tools::{Setup, Tools};

#[derive(Parser)]
#[command(name = "bench", about = "Load harness: remora vs Envoy, HAProxy, nginx and direct")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Set everything up, run the scenarios, write the results.
    Run(RunArgs),
    /// The open-loop generator (started by `run`, pinned to the load CPU); prints JSON.
    #[command(hide = true)]
    Openloop {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        connections: u32,
        /// Measured seconds.
        #[arg(long)]
        duration: f64,
        /// Seconds at the rate before measuring.
        #[arg(long, default_value_t = 0.0)]
        warmup: f64,
    },
    /// The handshake generator (started by `run`, pinned to the load CPU): closed loop, one new
    /// TLS connection (full handshake) per request; prints JSON.
    #[command(hide = true)]
    Handshakes {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        connections: u32,
        /// Seconds.
        #[arg(long)]
        duration: f64,
    },
    /// Writes the one-hop configs the `throughput` scenario uses into --dir: `nginx.conf` (the
    /// upstream on --upstream-port, its files under --dir) and `remora.yaml` (the Envoy bootstrap
    /// remora and Envoy run, listening on --port); for scripts/profile-callgrind.
    #[command(hide = true)]
    HopConfigs {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        upstream_port: u16,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        admin_port: u16,
        /// Add the circuit breakers, outlier detection, locality weighting and keepalive istiod
        /// puts on an outbound cluster with a DestinationRule.
        #[arg(long)]
        resilience: bool,
    },
    /// Writes the sidecar pair's configs into --dir, as the `pair` scenario runs them:
    /// `nginx.conf` (the upstream), `certs/` (made with --remora's `certs` command),
    /// `outbound.yaml` (plaintext in on --port, mTLS HTTP/2 out to --inbound-port) and
    /// `inbound.yaml` (mTLS in, HTTP/1.1 out to --upstream-port); for scripts/profile-load.
    #[command(hide = true)]
    PairConfigs {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        remora: PathBuf,
        #[arg(long)]
        upstream_port: u16,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        inbound_port: u16,
        #[arg(long)]
        admin_port: u16,
        #[arg(long)]
        inbound_admin_port: u16,
    },
    /// One config-scale measurement (started by `run`, pinned to the load CPU): the xDS harness
    /// in this process, the proxy on --proxy-cpu; prints JSON.
    #[command(hide = true)]
    XdsScale {
        #[arg(long)]
        target: String,
        #[arg(long)]
        bin: PathBuf,
        #[arg(long)]
        proxy_cpu: String,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 0)]
        clusters: u32,
        /// Endpoints per cluster.
        #[arg(long, default_value_t = 0)]
        endpoints: u32,
        /// Replay this config dump instead (idle RSS).
        #[arg(long)]
        dump: Option<PathBuf>,
        /// Remove the Istio-only filters from the dump (what stock Envoy can load).
        #[arg(long)]
        strip_istio_filters: bool,
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// At most 3 minutes: 3 short rounds.
    #[arg(long, conflicts_with = "smoke")]
    quick: bool,
    /// A few seconds per target, for the test suite: installs and builds nothing, skips
    /// targets whose binaries are missing.
    #[arg(long)]
    smoke: bool,
    /// Output directory (default bench/results/<UTC timestamp>/).
    #[arg(long)]
    out: Option<PathBuf>,
    /// CPU list for the proxies under test (taskset -c).
    #[arg(long, default_value = "1")]
    proxy_cpu: String,
    /// CPU list for the load generator and the upstream.
    #[arg(long, default_value = "0")]
    load_cpu: String,
    /// Targets, comma separated (direct is always included as the baseline).
    #[arg(long, value_delimiter = ',', default_value = "direct,remora,envoy,haproxy,nginx")]
    targets: Vec<String>,
    /// Scenarios, comma separated: throughput (a), latency (b), pair (c), handshakes (d),
    /// config-scale (e).
    #[arg(long, value_delimiter = ',', default_value = "throughput,latency,pair,handshakes,config-scale")]
    scenarios: Vec<String>,
    /// Rounds (overrides the mode's).
    #[arg(long)]
    rounds: Option<u32>,
    /// Install nothing (apt-get, Envoy venv); fail or skip instead.
    #[arg(long)]
    no_install: bool,
    /// Do not build remora; use --remora or what is in target/.
    #[arg(long)]
    no_build: bool,
    /// The remora binary to test (or $REMORA_BIN).
    #[arg(long)]
    remora: Option<PathBuf>,
    /// The Envoy binary (or $ENVOY_BIN; default: the test venv's,
    /// $HOME/.cache/remora/envoy-venv/bin/envoy).
    #[arg(long)]
    envoy: Option<PathBuf>,
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Run(args) => run(args),
        Cmd::Openloop { addr, rate, connections, duration, warmup } => {
            scenarios::openloop_main(addr, rate, connections, duration, warmup)
        }
        Cmd::Handshakes { addr, connections, duration } => scenarios::handshakes_main(addr, connections, duration),
        Cmd::HopConfigs { dir, upstream_port, port, admin_port, resilience } => {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let nginx = configs::upstream_nginx(&dir.display().to_string(), upstream_port);
            fs::write(dir.join("nginx.conf"), nginx).context("writing nginx.conf")?;
            let extra = if resilience { configs::RESILIENCE } else { "" };
            let bootstrap = configs::envoy_hop_with(admin_port, port, upstream_port, extra);
            fs::write(dir.join("remora.yaml"), bootstrap).context("writing remora.yaml")?;
            Ok(())
        }
        Cmd::PairConfigs { dir, remora, upstream_port, port, inbound_port, admin_port, inbound_admin_port } => {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let nginx = configs::upstream_nginx(&dir.display().to_string(), upstream_port);
            fs::write(dir.join("nginx.conf"), nginx).context("writing nginx.conf")?;
            let certs = targets::make_certs(&remora, &dir.join("certs"))?;
            let outbound = configs::envoy_outbound(admin_port, port, inbound_port, &certs);
            fs::write(dir.join("outbound.yaml"), outbound).context("writing outbound.yaml")?;
            let inbound = configs::envoy_inbound(inbound_admin_port, inbound_port, upstream_port, &certs);
            fs::write(dir.join("inbound.yaml"), inbound).context("writing inbound.yaml")?;
            Ok(())
        }
        Cmd::XdsScale { target, bin, proxy_cpu, dir, clusters, endpoints, dump, strip_istio_filters, timeout_secs } => {
            let out = xds_scale::run(&xds_scale::Args {
                target,
                bin,
                proxy_cpu,
                dir,
                clusters,
                endpoints,
                dump,
                strip_istio_filters,
                timeout: Duration::from_secs(timeout_secs),
            })?;
            println!("{}", serde_json::to_string(&out)?);
            Ok(())
        }
    }
}

const SCENARIOS: [&str; 5] = ["throughput", "latency", "pair", "handshakes", "config-scale"];

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `YYYYmmdd-HHMMSS` in UTC (days-to-civil, proleptic Gregorian).
fn timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}

fn read_trim(path: &str) -> String {
    fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

fn cpu_model() -> String {
    read_trim("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into())
}

fn loadavg() -> String {
    read_trim("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn run(mut args: RunArgs) -> Result<()> {
    let started = Instant::now();
    args.remora = args.remora.or_else(|| std::env::var_os("REMORA_BIN").map(PathBuf::from));
    args.envoy = args.envoy.or_else(|| std::env::var_os("ENVOY_BIN").map(PathBuf::from));
    let mut plan = if args.smoke {
        Plan::smoke()
    } else if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    if let Some(r) = args.rounds {
        plan.rounds = r.max(1);
    }
    let mut targets = vec![Target::Direct];
    for t in &args.targets {
        let t = Target::parse(t.trim())?;
        if !targets.contains(&t) {
            targets.push(t);
        }
    }
    let want = |s: &str| args.scenarios.iter().any(|x| x.trim() == s);
    for s in &args.scenarios {
        if !SCENARIOS.contains(&s.trim()) {
            bail!("unknown scenario {s:?} ({})", SCENARIOS.join(", "));
        }
    }
    let out = args.out.clone().unwrap_or_else(|| tools::repo_root().join("bench/results").join(timestamp(unix_now())));
    let work = out.join("work");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    if tools::which("taskset").is_none() {
        bail!("taskset (util-linux) not found");
    }

    let setup = Setup {
        install: !args.smoke && !args.no_install,
        build_remora: !args.smoke && !args.no_build && args.remora.is_none(),
        remora: args.remora.clone(),
        envoy: args.envoy.clone(),
    };
    let tools = Tools::setup(&setup)?;
    for (name, path) in tools.describe() {
        progress::note(&format!("{name}: {path}"));
    }
    let Some(nginx) = tools.nginx.clone() else {
        bail!("nginx not found: it is the upstream (run without --smoke/--no-install to install it)");
    };
    let env = Env { work: work.clone(), proxy_cpu: args.proxy_cpu.clone(), load_cpu: args.load_cpu.clone() };
    let loadavg_before = loadavg();
    let measure_start = Instant::now();
    let mut ctx = Ctx {
        env: &env,
        tools: &tools,
        plan: &plan,
        start: started,
        deadline: measure_start + Duration::from_secs(plan.cap_secs),
        notes: Vec::new(),
    };
    let mut runnable = Vec::new();
    for &t in &targets {
        match t.binary(&tools) {
            Ok(_) => runnable.push(t),
            Err(why) => {
                let msg = format!("{} skipped: {why}", t.name());
                progress::note(&msg);
                ctx.notes.push(msg);
            }
        }
    }

    let (upstream, upstream_port) = targets::start_upstream(&env, &nginx)?;
    let hop = if want("throughput") || want("latency") {
        scenarios::hop(&mut ctx, &runnable, upstream_port, want("throughput"), want("latency"))
    } else {
        Vec::new()
    };
    let pair = match (&tools.remora, want("pair")) {
        (Some(remora), true) => match targets::make_certs(remora, &work.join("certs")) {
            Ok(certs) => scenarios::pair(&mut ctx, &runnable, upstream_port, &certs),
            Err(e) => {
                ctx.notes.push(format!("pair not run: certificates: {e:#}"));
                Vec::new()
            }
        },
        (None, true) => {
            ctx.notes.push("pair not run: remora (for `remora certs`) not found".into());
            Vec::new()
        }
        _ => Vec::new(),
    };
    let handshakes = if want("handshakes") {
        match handshake::make_cert(&work.join("certs-handshake")) {
            Ok(cert) => scenarios::handshakes(&mut ctx, &runnable, upstream_port, &cert),
            Err(e) => {
                ctx.notes.push(format!("handshakes not run: certificate: {e:#}"));
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    drop(upstream);
    let config_scale = if want("config-scale") { scenarios::config_scale(&mut ctx, &runnable) } else { Vec::new() };

    let mut versions = Vec::new();
    for (name, path, flag) in [
        ("remora", &tools.remora, "--version"),
        ("envoy", &tools.envoy, "--version"),
        ("haproxy", &tools.haproxy, "-v"),
        ("nginx", &tools.nginx, "-v"),
        ("wrk", &tools.wrk, "-v"),
    ] {
        if let Some(p) = path {
            let v = tools::version(p, flag);
            let at = p.display().to_string();
            versions.push((name.to_string(), if v.contains(&at) { v } else { format!("{v} ({at})") }));
        }
    }
    versions.push(("open-loop generator".into(), "built in (bench openloop)".into()));
    versions.push((
        "handshake generator".into(),
        "built in (bench handshakes: tokio-rustls, TLS 1.3, no resumption)".into(),
    ));
    let notes = std::mem::take(&mut ctx.notes);
    let rep = Report {
        generated_unix: unix_now(),
        plan: plan.clone(),
        proxy_cpu: args.proxy_cpu,
        load_cpu: args.load_cpu,
        machine: Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpu_model(),
            kernel: read_trim("/proc/sys/kernel/osrelease"),
            loadavg_before,
            loadavg_after: loadavg(),
        },
        tools: versions,
        hop,
        pair,
        handshakes,
        config_scale,
        notes,
        elapsed_secs: started.elapsed().as_secs_f64(),
    };
    let md = report::markdown(&rep);
    fs::write(out.join("results.md"), &md)?;
    fs::write(out.join("results.json"), serde_json::to_string_pretty(&rep)?)?;
    fs::write(out.join("results.svg"), report::svg(&rep))?;
    progress::note(&format!("done in {:.0} s: {}/results.{{md,json,svg}}", rep.elapsed_secs, out.display()));
    println!("{md}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::timestamp;

    #[test]
    fn utc_timestamp() {
        assert_eq!(timestamp(0), "19700101-000000");
        assert_eq!(timestamp(1_709_210_096), "20240229-123456");
    }
}
