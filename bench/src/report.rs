//! Results: the data model, the markdown table (ratios to Envoy and to direct), JSON, and the
//! SVG chart.

use std::fmt::Write as _;

use serde::Serialize;

use crate::scenarios::Plan;

/// A measurement over rounds: median and spread.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub values: Vec<f64>,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut v: Vec<f64> = values.to_vec();
        v.sort_by(f64::total_cmp);
        let median = match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Spread {
            median,
            min: v.first().copied().unwrap_or(0.0),
            max: v.last().copied().unwrap_or(0.0),
            values: values.to_vec(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_ms: Spread,
    pub p90_ms: Spread,
    pub p99_ms: Spread,
    pub p999_ms: Spread,
    pub achieved_rps: Spread,
    pub cpu_s_per_1k: Option<Spread>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    pub target: String,
    pub throughput_rps: Option<Spread>,
    pub throughput_cpu_s_per_1k: Option<Spread>,
    pub latency: Option<Latency>,
    /// Highest VmRSS sampled during the fixed-rate run (summed over the target's processes).
    pub rss_mib_under_load: Option<f64>,
    /// VmHWM at the end of the scenario.
    pub peak_rss_mib: Option<f64>,
    pub errors: u64,
    /// Why the target did not run.
    pub error: Option<String>,
}

impl TargetResult {
    pub fn failed(target: &str, why: String) -> TargetResult {
        TargetResult {
            target: target.to_string(),
            throughput_rps: None,
            throughput_cpu_s_per_1k: None,
            latency: None,
            rss_mib_under_load: None,
            peak_rss_mib: None,
            errors: 0,
            error: Some(why),
        }
    }
}

/// Config scale: one case (N clusters, or a replayed dump) for one target, over its runs.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleResult {
    pub target: String,
    pub case: String,
    /// A replayed config dump (idle RSS) rather than a push of N clusters.
    pub dump: bool,
    pub runs: Vec<crate::xds_scale::ScaleRun>,
    pub error: Option<String>,
}

impl ScaleResult {
    fn median(&self, f: fn(&crate::xds_scale::ScaleRun) -> f64) -> Option<Spread> {
        (!self.runs.is_empty()).then(|| Spread::of(&self.runs.iter().map(f).collect::<Vec<_>>()))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub loadavg_before: String,
    pub loadavg_after: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generated_unix: u64,
    pub plan: Plan,
    pub proxy_cpu: String,
    pub load_cpu: String,
    pub machine: Machine,
    pub tools: Vec<(String, String)>,
    pub hop: Vec<TargetResult>,
    pub pair: Vec<TargetResult>,
    pub handshakes: Vec<TargetResult>,
    pub config_scale: Vec<ScaleResult>,
    pub notes: Vec<String>,
    pub elapsed_secs: f64,
}

fn find<'a>(rows: &'a [TargetResult], name: &str) -> Option<&'a TargetResult> {
    rows.iter().find(|r| r.target == name && r.error.is_none())
}

fn ratio(v: Option<f64>, base: Option<f64>) -> String {
    match (v, base) {
        (Some(v), Some(b)) if b > 0.0 && v.is_finite() => format!("{:.2}x", v / b),
        _ => "–".into(),
    }
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.digits$}"))
}

fn tput(r: &TargetResult) -> Option<f64> {
    r.throughput_rps.as_ref().map(|s| s.median)
}

fn tput_cpu(r: &TargetResult) -> Option<f64> {
    r.throughput_cpu_s_per_1k.as_ref().map(|s| s.median)
}

fn pct(r: &TargetResult, f: fn(&Latency) -> &Spread) -> Option<f64> {
    r.latency.as_ref().map(|l| f(l).median)
}

fn lat_cpu(r: &TargetResult) -> Option<f64> {
    r.latency.as_ref().and_then(|l| l.cpu_s_per_1k.as_ref()).map(|s| s.median)
}

fn added(r: &TargetResult, direct: Option<&TargetResult>, f: fn(&Latency) -> &Spread) -> Option<f64> {
    if r.target == "direct" {
        return None;
    }
    Some(pct(r, f)? - pct(direct?, f)?)
}

fn p50(l: &Latency) -> &Spread {
    &l.p50_ms
}
fn p90(l: &Latency) -> &Spread {
    &l.p90_ms
}
fn p99(l: &Latency) -> &Spread {
    &l.p99_ms
}

fn spread_text(s: Option<&Spread>, digits: usize) -> String {
    s.map_or_else(|| "–".into(), |s| format!("{:.digits$}–{:.digits$}", s.min, s.max))
}

pub fn markdown(rep: &Report) -> String {
    let p = &rep.plan;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Mode `{}`, {} interleaved rounds; proxies pinned to CPU {}, load generator and upstream to CPU {}; \
         {} CPU(s), {}; load average before/after: {} / {}.\n",
        p.mode,
        p.rounds,
        rep.proxy_cpu,
        rep.load_cpu,
        rep.machine.nproc,
        rep.machine.cpu_model,
        rep.machine.loadavg_before,
        rep.machine.loadavg_after
    );
    let direct = find(&rep.hop, "direct");
    let envoy = find(&rep.hop, "envoy");
    if rep.hop.iter().any(|r| r.throughput_rps.is_some()) {
        let _ = writeln!(
            md,
            "### One plaintext HTTP/1.1 hop, keep-alive, closed loop (wrk, {} connections, {} s per round)\n",
            p.tput_conns, p.tput_secs
        );
        md.push_str(
            "| target | rps (median) | min–max | vs direct | vs Envoy | proxy CPU s / 1k req | CPU vs Envoy |\n",
        );
        md.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
        for r in rep.hop.iter().filter(|r| r.error.is_none()) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.target,
                num(tput(r), 0),
                spread_text(r.throughput_rps.as_ref(), 0),
                ratio(tput(r), direct.and_then(tput)),
                ratio(tput(r), envoy.and_then(tput)),
                num(tput_cpu(r), 4),
                ratio(tput_cpu(r), envoy.and_then(tput_cpu)),
            );
        }
        md.push('\n');
    }
    if rep.hop.iter().any(|r| r.latency.is_some()) {
        let _ = writeln!(
            md,
            "### Istio's conditions: {} rps open loop, {} connections, 1 KiB ({} s per round, latency corrected for coordinated omission)\n",
            p.rate, p.lat_conns, p.lat_secs
        );
        md.push_str("| target | p50 ms | p90 ms | p99 ms | p99 min–max | added p50 | added p90 | added p99 | added p99 vs Envoy | CPU s / 1k req | CPU vs Envoy | RSS MiB at load | peak RSS MiB | RSS vs Envoy |\n");
        md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in rep.hop.iter().filter(|r| r.latency.is_some()) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.target,
                num(pct(r, p50), 3),
                num(pct(r, p90), 3),
                num(pct(r, p99), 3),
                spread_text(r.latency.as_ref().map(|l| &l.p99_ms), 3),
                num(added(r, direct, p50), 3),
                num(added(r, direct, p90), 3),
                num(added(r, direct, p99), 3),
                ratio(added(r, direct, p99), envoy.and_then(|e| added(e, direct, p99))),
                num(lat_cpu(r), 4),
                ratio(lat_cpu(r), envoy.and_then(lat_cpu)),
                num(r.rss_mib_under_load, 1),
                num(r.peak_rss_mib, 1),
                ratio(r.rss_mib_under_load, envoy.and_then(|e| e.rss_mib_under_load)),
            );
        }
        md.push('\n');
    }
    if !rep.pair.is_empty() {
        let penvoy = find(&rep.pair, "envoy");
        let _ = writeln!(
            md,
            "### Sidecar pair: client -> outbound (plaintext in, mTLS out) -> inbound (mTLS in) -> upstream, closed loop (wrk, {} connections, {} s per round)\n",
            p.pair_conns, p.pair_secs
        );
        md.push_str("| target | rps (median) | min–max | vs direct | vs Envoy | CPU s / 1k req (both) | CPU vs Envoy | peak RSS MiB (both) | RSS vs Envoy |\n");
        md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in rep.pair.iter().filter(|r| r.error.is_none()) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.target,
                num(tput(r), 0),
                spread_text(r.throughput_rps.as_ref(), 0),
                ratio(tput(r), direct.and_then(tput)),
                ratio(tput(r), penvoy.and_then(tput)),
                num(tput_cpu(r), 4),
                ratio(tput_cpu(r), penvoy.and_then(tput_cpu)),
                num(r.peak_rss_mib, 1),
                ratio(r.peak_rss_mib, penvoy.and_then(|e| e.peak_rss_mib)),
            );
        }
        md.push('\n');
    }
    if !rep.handshakes.is_empty() {
        let henvoy = find(&rep.handshakes, "envoy");
        let _ = writeln!(
            md,
            "### New TLS connections: one full handshake (TLS 1.3, ECDSA P-256, no resumption) and one request per connection, closed loop ({} connections, {} s per round)\n",
            p.hs_conns, p.hs_secs
        );
        md.push_str("| target | handshakes/s (median) | min–max | vs Envoy | proxy CPU s / 1k handshakes | CPU vs Envoy | peak RSS MiB |\n");
        md.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
        for r in rep.handshakes.iter().filter(|r| r.error.is_none()) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.target,
                num(tput(r), 0),
                spread_text(r.throughput_rps.as_ref(), 0),
                ratio(tput(r), henvoy.and_then(tput)),
                num(tput_cpu(r), 4),
                ratio(tput_cpu(r), henvoy.and_then(tput_cpu)),
                num(r.peak_rss_mib, 1),
            );
        }
        md.push('\n');
    }
    scale_markdown(&mut md, rep);
    let errors: Vec<String> = rep
        .hop
        .iter()
        .chain(&rep.pair)
        .chain(&rep.handshakes)
        .filter(|r| r.errors > 0)
        .map(|r| format!("{}: {} failed requests", r.target, r.errors))
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(md, "Errors: {}.\n", errors.join("; "));
    }
    if !rep.notes.is_empty() {
        md.push_str("Notes:\n");
        for n in &rep.notes {
            let _ = writeln!(md, "- {n}");
        }
        md.push('\n');
    }
    let tools: Vec<String> = rep.tools.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let _ = writeln!(md, "Tools: {}.", tools.join("; "));
    md
}

fn med(s: Option<Spread>) -> Option<f64> {
    s.map(|s| s.median)
}

fn scale_markdown(md: &mut String, rep: &Report) {
    let pushes: Vec<&ScaleResult> = rep.config_scale.iter().filter(|r| !r.dump).collect();
    let dumps: Vec<&ScaleResult> = rep.config_scale.iter().filter(|r| r.dump).collect();
    let envoy_of =
        |case: &str| rep.config_scale.iter().find(|r| r.case == case && r.target == "envoy" && !r.runs.is_empty());
    if !pushes.is_empty() {
        md.push_str("### Config scale: N EDS clusters pushed at once over Delta ADS (same harness and bootstrap), from the push\n\n");
        md.push_str("| target | clusters | endpoints | runs | all ACKed s | settled s (stats) | min–max | vs Envoy | proxy CPU s | RSS MiB after | RSS vs Envoy | peak RSS MiB |\n");
        md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in &pushes {
            if let Some(e) = &r.error
                && r.runs.is_empty()
            {
                let _ = writeln!(
                    md,
                    "| {} | {} | – | 0 | failed: {} |||||||| ",
                    r.target,
                    r.case,
                    e.lines().next().unwrap_or("")
                );
                continue;
            }
            let envoy = envoy_of(&r.case);
            let settled = r.median(|x| x.settled_secs);
            let rss = r.median(|x| x.rss_mib);
            let first = r.runs.first();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.target,
                first.map_or(0, |x| x.clusters),
                first.map_or(0, |x| x.endpoints),
                r.runs.len(),
                num(med(r.median(|x| x.ack_secs)), 2),
                num(settled.as_ref().map(|s| s.median), 2),
                spread_text(settled.as_ref(), 2),
                ratio(settled.as_ref().map(|s| s.median), envoy.and_then(|e| med(e.median(|x| x.settled_secs)))),
                num(med(r.median(|x| x.cpu_secs)), 2),
                num(rss.as_ref().map(|s| s.median), 1),
                ratio(rss.as_ref().map(|s| s.median), envoy.and_then(|e| med(e.median(|x| x.rss_mib)))),
                num(med(r.median(|x| x.hwm_mib)), 1),
            );
        }
        md.push('\n');
    }
    if !dumps.is_empty() {
        md.push_str("### Idle RSS with an istiod config dump loaded over Delta ADS (redacted secrets replaced by dev-CA ones)\n\n");
        md.push_str("| target | dump | served (CDS/LDS/RDS/EDS/SDS) | active clusters | active listeners | NACKs | loaded s | CPU s to load | idle RSS MiB | RSS vs Envoy |\n");
        md.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in &dumps {
            let Some(x) = r.runs.first() else {
                let _ = writeln!(
                    md,
                    "| {} | {} | failed: {} |||||||| ",
                    r.target,
                    r.case,
                    r.error.as_deref().unwrap_or("").lines().next().unwrap_or("")
                );
                continue;
            };
            let envoy = envoy_of(&r.case).and_then(|e| e.runs.first());
            let served =
                x.served.map_or_else(|| "–".into(), |s| format!("{}/{}/{}/{}/{}", s[0], s[1], s[2], s[3], s[4]));
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.1} | {} |",
                r.target,
                r.case,
                served,
                x.active_clusters,
                x.active_listeners.map_or_else(|| "–".into(), |l| l.to_string()),
                x.nacks,
                x.ack_secs,
                x.cpu_secs,
                x.rss_mib,
                ratio(Some(x.rss_mib), envoy.map(|e| e.rss_mib)),
            );
        }
        md.push('\n');
        for r in &dumps {
            if let Some(n) = r.runs.first().and_then(|x| x.first_nack.as_ref()) {
                let _ = writeln!(md, "- {} first NACK: {}", r.target, n.replace('\n', " "));
            }
        }
        md.push('\n');
    }
}

struct Bar {
    label: String,
    value: f64,
    spread: Option<(f64, f64)>,
}

struct Panel {
    title: String,
    bars: Vec<Bar>,
}

fn color(target: &str) -> &'static str {
    match target {
        "direct" => "#9e9e9e",
        "remora" => "#e8590c",
        "envoy" => "#7048e8",
        "haproxy" => "#1c7ed6",
        "nginx" => "#2f9e44",
        _ => "#495057",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn panel_svg(svg: &mut String, p: &Panel, x0: f64, y0: f64, w: f64, h: f64) {
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" font-size="14" font-weight="bold">{}</text>"##,
        x0 + 10.0,
        y0 + 20.0,
        esc(&p.title)
    );
    let max =
        p.bars.iter().map(|b| b.spread.map_or(b.value, |(_, hi)| hi.max(b.value))).fold(0.0f64, f64::max).max(1e-9);
    let left = x0 + 80.0;
    let width = w - 150.0;
    let row = ((h - 40.0) / p.bars.len().max(1) as f64).min(34.0);
    for (i, b) in p.bars.iter().enumerate() {
        let y = y0 + 34.0 + row * i as f64;
        let bw = (b.value.max(0.0) / max) * width;
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">{}</text>"##,
            left - 6.0,
            y + row * 0.6,
            esc(&b.label)
        );
        let _ = writeln!(
            svg,
            r##"<rect x="{left:.1}" y="{:.1}" width="{bw:.1}" height="{:.1}" fill="{}"/>"##,
            y + row * 0.15,
            row * 0.7,
            color(&b.label)
        );
        if let Some((lo, hi)) = b.spread {
            let (xl, xh) = (left + lo.max(0.0) / max * width, left + hi.max(0.0) / max * width);
            let ym = y + row * 0.5;
            let _ = writeln!(
                svg,
                r##"<path d="M{xl:.1} {ym:.1}H{xh:.1}M{xl:.1} {:.1}V{:.1}M{xh:.1} {:.1}V{:.1}" stroke="#212529" stroke-width="1.2" fill="none"/>"##,
                ym - 5.0,
                ym + 5.0,
                ym - 5.0,
                ym + 5.0
            );
        }
        let text = if b.value.abs() >= 100.0 {
            format!("{:.0}", b.value)
        } else if b.value.abs() >= 1.0 {
            format!("{:.2}", b.value)
        } else {
            format!("{:.4}", b.value)
        };
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" font-size="11">{text}</text>"##,
            left + bw.max(b.spread.map_or(0.0, |(_, hi)| hi / max * width)) + 6.0,
            y + row * 0.6
        );
    }
}

fn bars<F>(rows: &[TargetResult], f: F) -> Vec<Bar>
where
    F: Fn(&TargetResult) -> Option<(f64, Option<(f64, f64)>)>,
{
    rows.iter()
        .filter(|r| r.error.is_none())
        .filter_map(|r| {
            let (value, spread) = f(r)?;
            Some(Bar { label: r.target.clone(), value, spread })
        })
        .collect()
}

fn with_spread(s: &Spread) -> (f64, Option<(f64, f64)>) {
    (s.median, Some((s.min, s.max)))
}

/// Bar charts (medians with min–max whiskers), two panels per row.
pub fn svg(rep: &Report) -> String {
    let direct = find(&rep.hop, "direct");
    let mut panels = vec![
        Panel {
            title: "One hop: throughput, rps (closed loop)".into(),
            bars: bars(&rep.hop, |r| r.throughput_rps.as_ref().map(with_spread)),
        },
        Panel {
            title: format!("Added p99 latency at {} rps, ms (vs direct)", rep.plan.rate),
            bars: bars(&rep.hop, |r| added(r, direct, p99).map(|v| (v, None))),
        },
        Panel {
            title: format!("Proxy CPU seconds per 1,000 requests at {} rps", rep.plan.rate),
            bars: bars(&rep.hop, |r| r.latency.as_ref()?.cpu_s_per_1k.as_ref().map(with_spread)),
        },
        Panel {
            title: format!("RSS under {} rps, MiB", rep.plan.rate),
            bars: bars(&rep.hop, |r| r.rss_mib_under_load.map(|v| (v, None))),
        },
    ];
    if !rep.pair.is_empty() {
        panels.push(Panel {
            title: "mTLS sidecar pair: throughput, rps".into(),
            bars: bars(&rep.pair, |r| r.throughput_rps.as_ref().map(with_spread)),
        });
        panels.push(Panel {
            title: "mTLS sidecar pair: CPU s per 1,000 requests".into(),
            bars: bars(&rep.pair, |r| r.throughput_cpu_s_per_1k.as_ref().map(with_spread)),
        });
    }
    if !rep.handshakes.is_empty() {
        panels.push(Panel {
            title: "TLS handshakes per second (new connection each)".into(),
            bars: bars(&rep.handshakes, |r| r.throughput_rps.as_ref().map(with_spread)),
        });
        panels.push(Panel {
            title: "Proxy CPU s per 1,000 TLS handshakes".into(),
            bars: bars(&rep.handshakes, |r| r.throughput_cpu_s_per_1k.as_ref().map(with_spread)),
        });
    }
    // Config scale: the largest push case.
    if let Some(big) =
        rep.config_scale.iter().filter(|r| !r.dump).filter_map(|r| r.runs.first()).map(|x| x.clusters).max()
    {
        let rows: Vec<&ScaleResult> =
            rep.config_scale.iter().filter(|r| !r.dump && r.runs.first().is_some_and(|x| x.clusters == big)).collect();
        let spread_bars = |f: fn(&crate::xds_scale::ScaleRun) -> f64| -> Vec<Bar> {
            rows.iter()
                .filter_map(|r| {
                    r.median(f).map(|s| Bar { label: r.target.clone(), value: s.median, spread: Some((s.min, s.max)) })
                })
                .collect()
        };
        panels.push(Panel {
            title: format!("{big} EDS clusters over ADS: seconds to settle"),
            bars: spread_bars(|x| x.settled_secs),
        });
        panels.push(Panel {
            title: format!("{big} EDS clusters over ADS: RSS after, MiB"),
            bars: spread_bars(|x| x.rss_mib),
        });
    }
    panels.retain(|p| !p.bars.is_empty());
    let (pw, ph) = (480.0, 220.0);
    let rows = panels.len().div_ceil(2).max(1);
    let (w, h) = (pw * 2.0 + 20.0, ph * rows as f64 + 60.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="10" y="24" font-size="16" font-weight="bold">remora bench ({} mode, {} rounds; bars: median, whiskers: min–max)</text>"##,
        esc(&rep.plan.mode),
        rep.plan.rounds
    );
    for (i, p) in panels.iter().enumerate() {
        let x = 10.0 + (i % 2) as f64 * pw;
        let y = 40.0 + (i / 2) as f64 * ph;
        let _ = writeln!(
            s,
            r##"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#dee2e6"/>"##,
            pw - 10.0,
            ph - 10.0
        );
        panel_svg(&mut s, p, x, y, pw - 10.0, ph - 10.0);
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = Spread::of(&[3.0, 1.0, 2.0, 10.0]);
        assert!((s.median - 2.5).abs() < 1e-9);
        assert!((s.min - 1.0).abs() < 1e-9);
        assert!((s.max - 10.0).abs() < 1e-9);
        assert!((Spread::of(&[5.0, 1.0, 9.0]).median - 5.0).abs() < 1e-9);
    }
}
