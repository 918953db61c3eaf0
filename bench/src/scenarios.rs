//! The scenarios: targets started side by side, then loaded in interleaved rounds.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::configs::PairCerts;
use crate::handshake::{Handshakes, ServerCert};
use crate::loadgen::{self, OpenLoop};
use crate::procs;
use crate::progress;
use crate::report::{Latency, ScaleResult, Spread, TargetResult};
use crate::targets::{self, Env, Running, Target};
use crate::tools::Tools;
use crate::xds_scale::ScaleRun;

/// Durations and loads for one run mode.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub mode: String,
    pub rounds: u32,
    pub warmup_secs: u32,
    pub tput_secs: u32,
    pub tput_conns: u32,
    pub rate: f64,
    pub lat_conns: u32,
    pub lat_secs: f64,
    pub lat_warmup_secs: f64,
    pub pair_secs: u32,
    pub pair_conns: u32,
    /// Handshake scenario: seconds per round and concurrent connections.
    pub hs_secs: f64,
    pub hs_conns: u32,
    /// Config scale: (clusters, endpoints per cluster, rounds) per case.
    pub scale_cases: Vec<(u32, u32, u32)>,
    /// Whether config scale also replays the Istio 1.18.2 dump for idle RSS.
    pub scale_dump: bool,
    pub cap_secs: u64,
}

impl Plan {
    pub fn smoke() -> Plan {
        Plan {
            mode: "smoke".into(),
            rounds: 1,
            warmup_secs: 0,
            tput_secs: 1,
            tput_conns: 8,
            rate: 200.0,
            lat_conns: 4,
            lat_secs: 1.0,
            lat_warmup_secs: 0.2,
            pair_secs: 1,
            pair_conns: 8,
            hs_secs: 0.5,
            hs_conns: 4,
            scale_cases: vec![(100, 2, 1)],
            scale_dump: false,
            cap_secs: 50,
        }
    }

    pub fn quick() -> Plan {
        Plan {
            mode: "quick".into(),
            rounds: 3,
            warmup_secs: 1,
            tput_secs: 3,
            tput_conns: 32,
            rate: 1000.0,
            lat_conns: 16,
            lat_secs: 3.0,
            lat_warmup_secs: 0.5,
            pair_secs: 2,
            pair_conns: 32,
            hs_secs: 2.0,
            hs_conns: 32,
            scale_cases: vec![(1000, 10, 1)],
            scale_dump: true,
            cap_secs: 180,
        }
    }

    pub fn full() -> Plan {
        Plan {
            mode: "full".into(),
            rounds: 5,
            warmup_secs: 2,
            tput_secs: 8,
            tput_conns: 32,
            rate: 1000.0,
            lat_conns: 16,
            lat_secs: 12.0,
            lat_warmup_secs: 1.0,
            pair_secs: 8,
            pair_conns: 32,
            hs_secs: 6.0,
            hs_conns: 32,
            scale_cases: vec![(1000, 10, 3), (10_000, 10, 1)],
            scale_dump: true,
            cap_secs: 19 * 60,
        }
    }
}

/// What every scenario needs.
pub struct Ctx<'a> {
    pub env: &'a Env,
    pub tools: &'a Tools,
    pub plan: &'a Plan,
    pub start: Instant,
    pub deadline: Instant,
    pub notes: Vec<String>,
}

impl Ctx<'_> {
    fn wrk(&self) -> Result<PathBuf> {
        self.tools.wrk.clone().context("wrk not found")
    }

    fn note(&mut self, what: String) {
        progress::note(&what);
        self.notes.push(what);
    }
}

#[derive(Default)]
struct Acc {
    rps: Vec<f64>,
    tput_cpu: Vec<f64>,
    lat: Vec<OpenLoop>,
    lat_cpu: Vec<f64>,
    rss_load: f64,
    errors: u64,
    first_error: Option<String>,
    /// Handshakes: the generator's CPU use per wall second, per round.
    load_busy: Vec<f64>,
}

fn ms(us: f64) -> f64 {
    us / 1000.0
}

impl Acc {
    fn finish(self, r: &Running) -> TargetResult {
        let has_proc = !r.pids().is_empty();
        let peak = procs::memory_mib(&r.pids(), "VmHWM");
        let lat = (!self.lat.is_empty()).then(|| {
            let of = |f: fn(&OpenLoop) -> f64| Spread::of(&self.lat.iter().map(f).collect::<Vec<_>>());
            Latency {
                p50_ms: of(|l| ms(l.p50_us)),
                p90_ms: of(|l| ms(l.p90_us)),
                p99_ms: of(|l| ms(l.p99_us)),
                p999_ms: of(|l| ms(l.p999_us)),
                achieved_rps: of(|l| l.achieved_rps),
                cpu_s_per_1k: has_proc.then(|| Spread::of(&self.lat_cpu)),
            }
        });
        TargetResult {
            target: r.target.name().to_string(),
            throughput_rps: (!self.rps.is_empty()).then(|| Spread::of(&self.rps)),
            throughput_cpu_s_per_1k: (has_proc && !self.tput_cpu.is_empty()).then(|| Spread::of(&self.tput_cpu)),
            latency: lat,
            rss_mib_under_load: (has_proc && self.rss_load > 0.0).then_some(self.rss_load),
            peak_rss_mib: (has_proc && peak > 0.0).then_some(peak),
            errors: self.errors,
            error: None,
        }
    }
}

/// CPU seconds per 1,000 requests over a window.
fn per_1k(cpu: f64, requests: u64) -> f64 {
    if requests == 0 { 0.0 } else { cpu * 1000.0 / requests as f64 }
}

fn closed_loop(ctx: &Ctx, r: &Running, secs: u32, conns: u32, acc: &mut Acc) -> Result<()> {
    let pids = r.pids();
    let cpu0 = procs::cpu_seconds(&pids);
    let out = loadgen::wrk(&ctx.wrk()?, &ctx.env.load_cpu, r.addr, conns, secs)?;
    let cpu = procs::cpu_seconds(&pids) - cpu0;
    acc.rps.push(out.rps);
    acc.tput_cpu.push(per_1k(cpu, out.requests));
    acc.errors += out.errors;
    Ok(())
}

/// Runs `bench openloop` pinned to the load CPU, sampling the target's RSS meanwhile.
fn open_loop(ctx: &Ctx, r: &Running, acc: &mut Acc) -> Result<()> {
    let exe = std::env::current_exe()?;
    let plan = ctx.plan;
    let pids = r.pids();
    let cpu0 = procs::cpu_seconds(&pids);
    let mut child = Command::new("taskset")
        .arg("-c")
        .arg(&ctx.env.load_cpu)
        .arg(exe)
        .arg("openloop")
        .args(["--addr", &r.addr.to_string()])
        .args(["--rate", &plan.rate.to_string()])
        .args(["--connections", &plan.lat_conns.to_string()])
        .args(["--duration", &plan.lat_secs.to_string()])
        .args(["--warmup", &plan.lat_warmup_secs.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the open-loop generator")?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        acc.rss_load = acc.rss_load.max(procs::memory_mib(&pids, "VmRSS"));
        sleep(Duration::from_millis(100));
    };
    let cpu = procs::cpu_seconds(&pids) - cpu0;
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        s.read_to_string(&mut out)?;
    }
    if let Some(mut s) = child.stderr.take() {
        s.read_to_string(&mut err)?;
    }
    if !status.success() {
        bail!("open-loop generator failed ({status}): {err}");
    }
    let result: OpenLoop = serde_json::from_str(&out).context("parsing open-loop output")?;
    acc.lat_cpu.push(per_1k(cpu, result.completed));
    acc.errors += result.errors;
    acc.lat.push(result);
    Ok(())
}

/// Starts every target with `start`; a target that fails is reported, not fatal.
fn start_all(
    ctx: &mut Ctx,
    targets: &[Target],
    scenario: &str,
    start: impl Fn(&Ctx, Target) -> Result<Running>,
) -> (Vec<Running>, Vec<TargetResult>) {
    let mut running = Vec::new();
    let mut failed = Vec::new();
    for &t in targets {
        progress::status(ctx.start, &format!("{scenario}: starting {}", t.name()));
        match start(ctx, t) {
            Ok(r) => running.push(r),
            Err(e) => {
                ctx.note(format!("{scenario}: {} not run: {e:#}", t.name()));
                failed.push(TargetResult::failed(t.name(), format!("{e:#}")));
            }
        }
    }
    (running, failed)
}

/// Rounds over the running targets, rotating the order each round so that no target always
/// runs first (or right after a given other one). Stops early at the deadline.
fn rounds(
    ctx: &mut Ctx,
    running: &[Running],
    scenario: &str,
    step: impl Fn(&Ctx, &Running, &mut Acc) -> Result<()>,
) -> Vec<Acc> {
    let mut accs: Vec<Acc> = running.iter().map(|_| Acc::default()).collect();
    let mut broken = vec![false; running.len()];
    let n = running.len();
    let mut round_secs = 0.0f64;
    for round in 0..ctx.plan.rounds {
        let began = Instant::now();
        if round > 0 && began + Duration::from_secs_f64(round_secs) > ctx.deadline {
            ctx.note(format!("{scenario}: stopped after {round} of {} rounds (time cap)", ctx.plan.rounds));
            break;
        }
        for k in 0..n {
            let i = (k + round as usize) % n;
            if broken[i] {
                continue;
            }
            let r = &running[i];
            progress::status(
                ctx.start,
                &format!("{scenario}: round {}/{} {}", round + 1, ctx.plan.rounds, r.target.name()),
            );
            if let Err(e) = step(ctx, r, &mut accs[i]) {
                ctx.note(format!("{scenario}: {} failed: {e:#}", r.target.name()));
                broken[i] = true;
            }
        }
        round_secs = began.elapsed().as_secs_f64();
    }
    accs
}

fn warm(ctx: &Ctx, running: &[Running], conns: u32) {
    if ctx.plan.warmup_secs == 0 {
        return;
    }
    for r in running {
        progress::status(ctx.start, &format!("warming up {}", r.target.name()));
        if let Ok(wrk) = ctx.wrk() {
            let _ = loadgen::wrk(&wrk, &ctx.env.load_cpu, r.addr, conns, ctx.plan.warmup_secs);
        }
    }
}

/// Scenarios (a) and (b) on one plaintext hop: closed-loop throughput and open-loop latency,
/// CPU and memory at a fixed rate.
pub fn hop(ctx: &mut Ctx, targets: &[Target], upstream: u16, throughput: bool, latency: bool) -> Vec<TargetResult> {
    let (running, mut results) =
        start_all(ctx, targets, "hop", |ctx, t| targets::start_hop(ctx.env, ctx.tools, t, upstream));
    if throughput && ctx.wrk().is_err() {
        ctx.note("throughput not run: wrk not found".into());
    }
    let throughput = throughput && ctx.wrk().is_ok();
    warm(ctx, &running, ctx.plan.tput_conns);
    let accs = rounds(ctx, &running, "hop", |ctx, r, acc| {
        if throughput {
            closed_loop(ctx, r, ctx.plan.tput_secs, ctx.plan.tput_conns, acc)?;
        }
        if latency {
            open_loop(ctx, r, acc)?;
        }
        Ok(())
    });
    for (acc, r) in accs.into_iter().zip(&running) {
        results.push(acc.finish(r));
    }
    order(&mut results, targets);
    results
}

/// Scenario (c): the mTLS sidecar pair, closed-loop throughput.
pub fn pair(ctx: &mut Ctx, targets: &[Target], upstream: u16, certs: &PairCerts) -> Vec<TargetResult> {
    if ctx.wrk().is_err() {
        ctx.note("pair not run: wrk not found".into());
        return Vec::new();
    }
    let targets: Vec<Target> = targets.iter().copied().filter(|t| *t != Target::Direct).collect();
    let (running, mut results) =
        start_all(ctx, &targets, "pair", |ctx, t| targets::start_pair(ctx.env, ctx.tools, t, upstream, certs));
    warm(ctx, &running, ctx.plan.pair_conns);
    let accs =
        rounds(ctx, &running, "pair", |ctx, r, acc| closed_loop(ctx, r, ctx.plan.pair_secs, ctx.plan.pair_conns, acc));
    // Check the shape really is mTLS + HTTP/2 between the proxies, from the admin stats.
    for r in &running {
        let stats = r.stats("cluster.inbound.(upstream_cx_http[12]_total|ssl.handshake)");
        if !stats.is_empty() {
            let text: Vec<String> = stats.iter().map(|(k, v)| format!("{k} {v}")).collect();
            ctx.note(format!("pair {}: outbound to inbound: {}", r.target.name(), text.join(", ")));
        }
    }
    for (acc, r) in accs.into_iter().zip(&running) {
        results.push(acc.finish(r));
    }
    order(&mut results, &targets);
    results
}

/// Runs `bench handshakes` pinned to the load CPU against a TLS-terminating target.
fn handshake_step(ctx: &Ctx, r: &Running, acc: &mut Acc) -> Result<()> {
    let exe = std::env::current_exe()?;
    let pids = r.pids();
    let cpu0 = procs::cpu_seconds(&pids);
    let out = Command::new("taskset")
        .arg("-c")
        .arg(&ctx.env.load_cpu)
        .arg(exe)
        .arg("handshakes")
        .args(["--addr", &r.addr.to_string()])
        .args(["--connections", &ctx.plan.hs_conns.to_string()])
        .args(["--duration", &ctx.plan.hs_secs.to_string()])
        .output()
        .context("running the handshake generator")?;
    let cpu = procs::cpu_seconds(&pids) - cpu0;
    if !out.status.success() {
        bail!("handshake generator failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let h: Handshakes = serde_json::from_slice(&out.stdout).context("parsing handshake generator output")?;
    if h.completed == 0 {
        bail!("no handshake completed: {}", h.first_error.unwrap_or_default());
    }
    acc.rps.push(h.per_sec);
    acc.tput_cpu.push(per_1k(cpu, h.completed));
    acc.load_busy.push(h.generator_cpu_secs / h.secs.max(1e-9));
    acc.errors += h.errors;
    if let Some(e) = h.first_error {
        acc.first_error.get_or_insert(e);
    }
    Ok(())
}

/// New TLS connections per second: every proxy terminates TLS (the same ECDSA P-256 certificate)
/// in front of the upstream; one full handshake and one request per connection.
pub fn handshakes(ctx: &mut Ctx, targets: &[Target], upstream: u16, cert: &ServerCert) -> Vec<TargetResult> {
    let targets: Vec<Target> = targets.iter().copied().filter(|t| *t != Target::Direct).collect();
    let (running, mut results) =
        start_all(ctx, &targets, "handshakes", |ctx, t| targets::start_tls_hop(ctx.env, ctx.tools, t, upstream, cert));
    let accs = rounds(ctx, &running, "handshakes", handshake_step);
    for (acc, r) in accs.into_iter().zip(&running) {
        if let Some(e) = &acc.first_error {
            ctx.note(format!("handshakes {}: {} failed connections, first: {e}", r.target.name(), acc.errors));
        }
        if !acc.load_busy.is_empty() {
            let busy = Spread::of(&acc.load_busy);
            ctx.note(format!(
                "handshakes {}: the generator used {:.0}% of a CPU (median over rounds; 100% = it, not the proxy, was the limit)",
                r.target.name(),
                busy.median * 100.0
            ));
        }
        results.push(acc.finish(r));
    }
    order(&mut results, &targets);
    results
}

fn order(results: &mut [TargetResult], targets: &[Target]) {
    results.sort_by_key(|r| targets.iter().position(|t| t.name() == r.target));
}

/// The open-loop generator's own entry point (`bench openloop`).
pub fn openloop_main(addr: SocketAddr, rate: f64, conns: u32, secs: f64, warmup: f64) -> Result<()> {
    let out = loadgen::run_open_loop(&loadgen::OpenLoopArgs {
        addr,
        rate,
        connections: conns,
        duration: Duration::from_secs_f64(secs),
        warmup: Duration::from_secs_f64(warmup),
    })?;
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// The handshake generator's own entry point (`bench handshakes`).
pub fn handshakes_main(addr: SocketAddr, connections: u32, secs: f64) -> Result<()> {
    let out = crate::handshake::run(addr, connections, secs)?;
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// The Istio 1.18.2 sidecar dump (138 clusters) in `$REMORA_TESTDATA/istio`, or in the shared
/// test data next to the workspace.
fn istio_dump() -> Option<PathBuf> {
    const FILE: &str = "sidecar_istio1.18.2_dsb-geo_with_eds.config_dump.json";
    let root = crate::tools::repo_root();
    std::env::var_os("REMORA_TESTDATA")
        .map(PathBuf::from)
        .into_iter()
        .chain([root.join("../shared/testdata"), root.join("../../shared/testdata")])
        .map(|d| d.join("istio").join(FILE))
        .find(|p| p.is_file())
}

/// One `bench xds-scale` run pinned to the load CPU.
fn scale_step(ctx: &Ctx, t: Target, case: &str, round: u32, what: &[String], timeout: u64) -> Result<ScaleRun> {
    let bin = t.binary(ctx.tools).map_err(anyhow::Error::msg)?.context("no binary")?;
    let slug: String = case.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect();
    let dir = ctx.env.work.join(format!("scale-{slug}-{}-{round}", t.name()));
    let out = Command::new("taskset")
        .arg("-c")
        .arg(&ctx.env.load_cpu)
        .arg(std::env::current_exe()?)
        .arg("xds-scale")
        .args(["--target", t.name()])
        .arg("--bin")
        .arg(&bin)
        .args(["--proxy-cpu", &ctx.env.proxy_cpu])
        .arg("--dir")
        .arg(&dir)
        .args(what)
        .args(["--timeout-secs", &timeout.to_string()])
        .output()
        .context("running bench xds-scale")?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout).context("parsing xds-scale output")
}

/// Scenario (e): time and memory to apply N EDS clusters over ADS (remora and Envoy, the same
/// harness and bootstrap), and idle RSS with the Istio 1.18.2 dump loaded.
pub fn config_scale(ctx: &mut Ctx, targets: &[Target]) -> Vec<ScaleResult> {
    let targets: Vec<Target> =
        targets.iter().copied().filter(|t| matches!(t, Target::Remora | Target::Envoy)).collect();
    struct Case {
        name: String,
        args: Vec<String>,
        rounds: u32,
        timeout: u64,
        targets: Vec<Target>,
    }
    let mut cases: Vec<Case> = ctx
        .plan
        .scale_cases
        .iter()
        .map(|&(n, m, rounds)| Case {
            name: if n % 1000 == 0 { format!("{}k", n / 1000) } else { n.to_string() },
            args: vec!["--clusters".into(), n.to_string(), "--endpoints".into(), m.to_string()],
            rounds,
            timeout: if n >= 5000 { 300 } else { 120 },
            targets: targets.clone(),
        })
        .collect();
    if ctx.plan.scale_dump {
        match istio_dump() {
            Some(p) => {
                let dump = vec!["--dump".to_string(), p.display().to_string()];
                // The dump as istiod sent it: stock Envoy rejects nearly all of it (it lacks
                // Istio's filters), so only remora loads it whole.
                cases.push(Case {
                    name: "istio-1.18.2".into(),
                    args: dump.clone(),
                    rounds: 1,
                    timeout: 60,
                    targets: targets.iter().copied().filter(|t| *t == Target::Remora).collect(),
                });
                // Without the Istio-only filters: the same config for both.
                let mut stripped = dump;
                stripped.push("--strip-istio-filters".into());
                cases.push(Case {
                    name: "istio-1.18.2 (stock-Envoy filters)".into(),
                    args: stripped,
                    rounds: 1,
                    timeout: 60,
                    targets: targets.clone(),
                });
            }
            None => ctx.note("config-scale: the Istio 1.18.2 dump not found (set REMORA_TESTDATA)".into()),
        }
    }
    let mut results: Vec<ScaleResult> = Vec::new();
    for c in &cases {
        let (case, args, rounds, timeout, targets) = (&c.name, &c.args, &c.rounds, &c.timeout, &c.targets);
        let mut rows: Vec<ScaleResult> = targets
            .iter()
            .map(|t| ScaleResult {
                target: t.name().into(),
                case: case.clone(),
                dump: args.first().is_some_and(|a| a == "--dump"),
                runs: Vec::new(),
                error: None,
            })
            .collect();
        let mut last = Duration::ZERO;
        'rounds: for round in 0..*rounds {
            for k in 0..targets.len() {
                let i = (k + round as usize) % targets.len();
                if rows[i].error.is_some() {
                    continue;
                }
                if Instant::now() + last > ctx.deadline {
                    ctx.note(format!("config-scale {case}: stopped in round {} of {rounds} (time cap)", round + 1));
                    break 'rounds;
                }
                let t = targets[i];
                progress::status(ctx.start, &format!("config-scale {case}: round {}/{rounds} {}", round + 1, t.name()));
                let began = Instant::now();
                match scale_step(ctx, t, case, round, args, *timeout) {
                    Ok(run) => rows[i].runs.push(run),
                    Err(e) => {
                        ctx.note(format!("config-scale {case}: {} failed: {e:#}", t.name()));
                        rows[i].error = Some(format!("{e:#}"));
                    }
                }
                last = last.max(began.elapsed());
            }
        }
        results.extend(rows);
    }
    results
}
