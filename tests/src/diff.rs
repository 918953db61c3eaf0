//! The differential harness: one bootstrap template, a list of request cases, run against the
//! reference Envoy and against remora, compared on what a client (and the upstream) observes.
//!
//! A `Suite` starts each proxy once (with its own fresh group of echo upstreams, so per-key
//! attempt counters never mix) and sends every case through it:
//! - the reference Envoy;
//! - a second Envoy (the self-check, on by default, off with `REMORA_DIFF_SELF_CHECK=0`): it must
//!   match the reference exactly, which proves the comparisons are deterministic;
//! - remora, when its binary is present (`REMORA_BIN`, else `<target>/debug/remora`). Without it
//!   the comparison is skipped with a loud notice, unless `REMORA_DIFF_REQUIRE=1` (set by
//!   `scripts/test`), which makes a missing binary a failure.
//!
//! Each `Case` may also carry expectations (status, upstream, path, headers, body, attempts) that
//! every run must meet, the reference included: they pin the matrix to Envoy's documented
//! behaviour, so a harness that compared nothing would fail.
//!
//! Compared, after normalisation (generated UUIDs, dates, service times and OS-chosen ports
//! become placeholders; known ports become their template names):
//! status (or curl's exit code when no response came), which upstream served, the method, path,
//! authority, protocol version and headers the upstream saw, the response headers, the body when
//! it is not the echo JSON (local replies), and how many attempts the upstreams saw for the case.
//! Distribution cases compare shares within a tolerance; hash cases compare stickiness.
//!
//! A case marked `known_diff(reason)` that differs on remora is reported, not failed; one that
//! unexpectedly matches fails, so the marker is removed once the difference is fixed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;

use crate::client::{Proto, Request, Response, curl, curl_repeat};
use crate::process::{self, Kind, Options, Proxy, Vars};
use crate::upstream::Upstreams;

/// How a case's outcome is compared.
#[derive(Clone, Debug)]
pub enum Check {
    /// One request, compared field by field.
    Exact,
    /// `n` requests; the share of each outcome (upstream name, or `status:N` for replies that
    /// no upstream served) compared within `tolerance` (absolute share).
    Distribution { n: usize, tolerance: f64 },
    /// `keys` distinct hash keys (the `{}` in `value` of header `header` is replaced by the key
    /// number; no header: one key, the request as is), `per_key` requests each: every key must
    /// stick to one upstream. With `exact`, the key -> upstream mapping itself must match.
    Hash { header: Option<(String, String)>, keys: usize, per_key: usize, exact: bool },
}

/// One expectation every run must meet.
#[derive(Clone, Debug)]
enum Expect {
    Status(u16),
    Upstream(Option<String>),
    Served,
    Path(String),
    Authority(String),
    Version(String),
    SeenHeader(String, Option<String>),
    RespHeader(String, Option<String>),
    Body(String),
    BodyContains(String),
    Attempts(u32),
    Share(String, f64),
    SpreadAtLeast(usize),
    NoResponse,
}

/// One request (or request pattern) of the matrix.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub req: Request,
    pub check: Check,
    /// The listener (`{{port:NAME}}`) to send to; `listener` by default.
    pub listener: String,
    expects: Vec<Expect>,
    known_diff: Option<String>,
    ignore_headers: Vec<String>,
    keyed: bool,
    any_upstream: bool,
}

impl Case {
    pub fn new(name: &str, req: Request) -> Case {
        Case {
            name: name.into(),
            req,
            check: Check::Exact,
            listener: "listener".into(),
            expects: Vec::new(),
            known_diff: None,
            ignore_headers: Vec::new(),
            keyed: true,
            any_upstream: false,
        }
    }
    pub fn listener(mut self, name: &str) -> Case {
        self.listener = name.into();
        self
    }
    pub fn distribution(mut self, n: usize, tolerance: f64) -> Case {
        self.check = Check::Distribution { n, tolerance };
        self
    }
    /// Every one of `keys` header values (`{}` replaced by the key number) sticks to one upstream.
    pub fn hash_on(mut self, header: &str, value: &str, keys: usize, per_key: usize) -> Case {
        self.check = Check::Hash { header: Some((header.into(), value.into())), keys, per_key, exact: false };
        self
    }
    /// `n` identical requests stick to one upstream (source-IP hashing).
    pub fn sticky(mut self, n: usize) -> Case {
        self.check = Check::Hash { header: None, keys: 1, per_key: n, exact: false };
        self
    }
    /// Hash cases: the key -> upstream mapping must be the same on every proxy.
    pub fn exact_mapping(mut self) -> Case {
        if let Check::Hash { exact, .. } = &mut self.check {
            *exact = true;
        }
        self
    }
    pub fn expect_status(mut self, s: u16) -> Case {
        self.expects.push(Expect::Status(s));
        self
    }
    pub fn expect_upstream(mut self, u: &str) -> Case {
        self.expects.push(Expect::Upstream(Some(u.into())));
        self
    }
    /// Some upstream (whichever) served the request.
    pub fn expect_upstream_any(mut self) -> Case {
        self.expects.push(Expect::Served);
        self
    }
    /// No upstream served the request (a local reply).
    pub fn expect_local(mut self) -> Case {
        self.expects.push(Expect::Upstream(None));
        self
    }
    pub fn expect_path(mut self, p: &str) -> Case {
        self.expects.push(Expect::Path(p.into()));
        self
    }
    pub fn expect_authority(mut self, a: &str) -> Case {
        self.expects.push(Expect::Authority(a.into()));
        self
    }
    /// The protocol the upstream saw: `HTTP/1.1` or `HTTP/2`.
    pub fn expect_version(mut self, v: &str) -> Case {
        self.expects.push(Expect::Version(v.into()));
        self
    }
    /// The upstream saw header `name` with exactly this value (all values joined with `,` when
    /// repeated), or (None) did not see it.
    pub fn expect_seen(mut self, name: &str, value: Option<&str>) -> Case {
        self.expects.push(Expect::SeenHeader(name.into(), value.map(Into::into)));
        self
    }
    /// The client got response header `name` with this (normalised) value, or none (None).
    pub fn expect_resp(mut self, name: &str, value: Option<&str>) -> Case {
        self.expects.push(Expect::RespHeader(name.into(), value.map(Into::into)));
        self
    }
    pub fn expect_body(mut self, b: &str) -> Case {
        self.expects.push(Expect::Body(b.into()));
        self
    }
    pub fn expect_body_contains(mut self, b: &str) -> Case {
        self.expects.push(Expect::BodyContains(b.into()));
        self
    }
    /// Attempts the upstreams saw for this case's key (retries).
    pub fn expect_attempts(mut self, n: u32) -> Case {
        self.expects.push(Expect::Attempts(n));
        self
    }
    /// Distribution cases: the share of outcome `label` (upstream name or `status:N`).
    pub fn expect_share(mut self, label: &str, share: f64) -> Case {
        self.expects.push(Expect::Share(label.into(), share));
        self
    }
    /// Hash cases: the keys spread over at least `n` upstreams.
    pub fn expect_spread(mut self, n: usize) -> Case {
        self.expects.push(Expect::SpreadAtLeast(n));
        self
    }
    /// The client got no response at all (reset / closed).
    pub fn expect_no_response(mut self) -> Case {
        self.expects.push(Expect::NoResponse);
        self
    }
    /// Remora is known to differ here, for `reason`: reported, not failed.
    pub fn known_diff(mut self, reason: &str) -> Case {
        self.known_diff = Some(reason.into());
        self
    }
    /// Leave response header `name` out of the comparison (say why in the case).
    pub fn ignore_header(mut self, name: &str) -> Case {
        self.ignore_headers.push(name.to_ascii_lowercase());
        self
    }
    /// Which upstream served is legitimately random here (for instance a hash of an OS-chosen
    /// address): compare only that one did.
    pub fn any_upstream(mut self) -> Case {
        self.any_upstream = true;
        self
    }
    /// Do not add `x-echo-key` (the upstream then keys attempts by `x-request-id`).
    pub fn key_by_request_id(mut self) -> Case {
        self.keyed = false;
        self
    }
}

/// What the upstream saw, normalised.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    method: String,
    path: String,
    authority: String,
    version: String,
    headers: BTreeMap<String, Vec<String>>,
    body_len: u64,
}

/// A normalised exact outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Exact {
    status: u16,
    curl_exit: i32,
    upstream: Option<String>,
    seen: Option<Seen>,
    resp_headers: BTreeMap<String, Vec<String>>,
    body: Option<String>,
    attempts: u32,
}

#[derive(Clone, Debug)]
enum Outcome {
    Exact(Exact),
    Distribution { n: usize, counts: BTreeMap<String, usize> },
    Hash { mapping: Vec<BTreeSet<String>> },
    Error(String),
}

/// A differential suite: one bootstrap template, one group of upstreams, many cases.
pub struct Suite {
    name: String,
    template: String,
    upstreams: Vec<String>,
    cases: Vec<Case>,
    opts: Options,
    known: Vec<(String, String)>,
    /// Extra `{{NAME}}` values for the template (keys, tokens made by the test).
    values: Vec<(String, String)>,
}

/// `pattern` with `*` matching any run of characters.
fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || !name[first.len()..].ends_with(last) || name.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

impl Suite {
    /// `config` is a file in `tests/configs/`.
    pub fn new(name: &str, config: &str) -> Suite {
        let path = process::crate_dir().join("configs").join(config);
        let template = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Suite {
            name: name.into(),
            template,
            upstreams: Vec::new(),
            cases: Vec::new(),
            opts: Options::default(),
            known: Vec::new(),
            values: Vec::new(),
        }
    }
    /// Echo upstreams to start for each run (`{{upstream:NAME}}` in the template is the port).
    pub fn upstreams(mut self, names: &[&str]) -> Suite {
        self.upstreams = names.iter().map(|s| s.to_string()).collect();
        self
    }
    /// A value for `{{name}}` in the template, the same for every run.
    pub fn value(mut self, name: &str, v: impl ToString) -> Suite {
        self.values.push((name.into(), v.to_string()));
        self
    }
    pub fn options(mut self, opts: Options) -> Suite {
        self.opts = opts;
        self
    }
    /// Remora is known to differ from Envoy on the cases whose names match `pattern` (`*` is a
    /// wildcard), for `reason`: their differences are reported, not failed, and a matching case
    /// that stops differing fails until the entry is removed. Keep the list at the top of the
    /// suite, where it is the to-do list of remora's gaps.
    pub fn known_diff(mut self, pattern: &str, reason: &str) -> Suite {
        self.known.push((pattern.into(), reason.into()));
        self
    }

    fn known_reason(&self, case: &Case) -> Option<String> {
        case.known_diff.clone().or_else(|| self.known.iter().find(|(p, _)| glob(p, &case.name)).map(|(_, r)| r.clone()))
    }

    pub fn add(&mut self, case: Case) {
        assert!(!self.cases.iter().any(|c| c.name == case.name), "duplicate case name {:?}", case.name);
        self.cases.push(case);
    }
    /// Adds the case twice: over HTTP/1.1 (`name/h1`) and over h2c (`name/h2c`).
    pub fn add_both(&mut self, case: Case) {
        for p in [Proto::H1, Proto::H2c] {
            let mut c = case.clone();
            c.name = format!("{}/{}", case.name, p.name());
            c.req.proto = p;
            self.add(c);
        }
    }

    /// Runs the suite; panics with a readable report if anything differs or an expectation fails.
    pub fn run(self) {
        let report = self.run_report();
        // The test harness captures eprintln! output of passing tests; the summary (with every
        // known difference) goes straight to stderr so it is seen on every run.
        let summary: String = report
            .text
            .lines()
            .filter(|l| l.starts_with("==") || l.starts_with("KNOWN DIFF") || l.starts_with("NOTICE"))
            .map(|l| format!("{l}\n"))
            .collect();
        let _ = std::io::Write::write_all(&mut std::io::stderr(), summary.as_bytes());
        eprintln!("{}", report.text);
        assert!(report.failures == 0, "suite {}: {} failure(s); see the report above", self.name, report.failures);
    }

    fn run_report(&self) -> Report {
        let self_check = std::env::var("REMORA_DIFF_SELF_CHECK").map(|v| v != "0").unwrap_or(true);
        let require = std::env::var("REMORA_DIFF_REQUIRE").map(|v| v == "1").unwrap_or(false);
        let mut text = String::new();
        let mut failures = 0usize;
        let remora = match process::remora_bin() {
            Ok(Some(p)) => Some(p),
            Ok(None) if require => {
                failures += 1;
                let _ = writeln!(text, "FAIL: REMORA_DIFF_REQUIRE=1 but the remora binary is not built");
                None
            }
            Ok(None) => {
                let _ = writeln!(
                    text,
                    "NOTICE [{}]: remora binary not found (REMORA_BIN or target/debug/remora): \
                     comparing Envoy with itself only",
                    self.name
                );
                None
            }
            Err(e) => {
                failures += 1;
                let _ = writeln!(text, "FAIL: {e}");
                None
            }
        };
        if process::envoy_bin().is_none() {
            failures += 1;
            let _ = writeln!(text, "FAIL: no reference Envoy (ENVOY_BIN; scripts/install-test-deps installs it)");
            return Report { text, failures };
        }

        let mut runs: Vec<(&str, Kind)> = vec![("envoy", Kind::Envoy)];
        if self_check {
            runs.push(("envoy-self-check", Kind::Envoy));
        }
        if remora.is_some() {
            runs.push(("remora", Kind::Remora));
        }
        let results: Vec<Result<Vec<Outcome>, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = runs.iter().map(|(_, kind)| s.spawn(move || self.run_one(*kind))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("run panicked".into()))).collect()
        });

        let reference = match &results[0] {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(text, "FAIL [{}] reference Envoy run failed: {e}", self.name);
                return Report { text, failures: failures + 1 };
            }
        };
        let _ = writeln!(text, "== suite {}: {} cases; runs: {:?}", self.name, self.cases.len(), runs);
        if std::env::var_os("REMORA_DIFF_DUMP").is_some() {
            for (case, out) in self.cases.iter().zip(reference) {
                let _ = writeln!(text, "-- {} ({}):\n   {out:?}", case.name, case.req.summary());
            }
        }
        // Expectations against the reference itself.
        for (case, out) in self.cases.iter().zip(reference) {
            let errs = check_expects(case, out);
            if !errs.is_empty() {
                failures += 1;
                let _ = writeln!(text, "FAIL [envoy] {} ({}): expectation not met:", case.name, case.req.summary());
                for e in errs {
                    let _ = writeln!(text, "    {e}");
                }
            }
        }
        let mut known = 0usize;
        for ((label, kind), res) in runs.iter().zip(&results).skip(1) {
            let outs = match res {
                Ok(o) => o,
                Err(e) => {
                    failures += 1;
                    let _ = writeln!(text, "FAIL [{label}] run failed: {e}");
                    continue;
                }
            };
            let mut matched = 0usize;
            for ((case, r), o) in self.cases.iter().zip(reference).zip(outs) {
                let mut errs = compare(case, r, o);
                errs.extend(check_expects(case, o).into_iter().map(|e| format!("expectation: {e}")));
                let known_reason = if *kind == Kind::Remora { self.known_reason(case) } else { None };
                match (errs.is_empty(), known_reason) {
                    (true, None) => matched += 1,
                    (true, Some(reason)) => {
                        failures += 1;
                        let _ = writeln!(
                            text,
                            "FAIL [{label}] {}: marked known_diff ({reason}) but now matches Envoy: remove the marker",
                            case.name
                        );
                    }
                    (false, Some(reason)) => {
                        known += 1;
                        let _ = writeln!(text, "KNOWN DIFF [{label}] {} ({}): {reason}", case.name, case.req.summary());
                        for e in errs {
                            let _ = writeln!(text, "    {e}");
                        }
                    }
                    (false, None) => {
                        failures += 1;
                        let _ = writeln!(text, "DIFF [{label}] {} ({}):", case.name, case.req.summary());
                        for e in errs {
                            let _ = writeln!(text, "    {e}");
                        }
                    }
                }
            }
            let _ = writeln!(text, "== [{label}] {matched}/{} cases match envoy", self.cases.len());
        }
        if known > 0 {
            let _ = writeln!(text, "== {known} known difference(s) reported above");
        }
        for (p, r) in &self.known {
            if !self.cases.iter().any(|c| glob(p, &c.name)) {
                failures += 1;
                let _ = writeln!(text, "FAIL: known_diff pattern {p:?} ({r}) matches no case");
            }
        }
        Report { text, failures }
    }

    /// Starts fresh upstreams and one proxy, runs every case, returns the outcomes.
    fn run_one(&self, kind: Kind) -> Result<Vec<Outcome>, String> {
        let names: Vec<&str> = self.upstreams.iter().map(String::as_str).collect();
        let ups = Upstreams::start(&names).map_err(|e| format!("starting upstreams: {e}"))?;
        let mut vars = Vars::new();
        for u in ups.iter() {
            vars.set(format!("upstream:{}", u.name()), u.port());
        }
        for (k, v) in &self.values {
            vars.set(k.clone(), v);
        }
        let proxy = Proxy::start(kind, &self.template, vars, &self.opts).map_err(|e| format!("{e:#}"))?;
        let norm = Normaliser::new(&proxy, &ups);
        let mut outs = Vec::with_capacity(self.cases.len());
        for case in &self.cases {
            outs.push(self.run_case(&proxy, &ups, &norm, case));
        }
        Ok(outs)
    }

    fn run_case(&self, proxy: &Proxy, ups: &Upstreams, norm: &Normaliser, case: &Case) -> Outcome {
        let Some(port) = proxy.vars().port(&case.listener) else {
            return Outcome::Error(format!("no {{{{port:{}}}}} in the template", case.listener));
        };
        let key = format!("{}::{}", self.name, case.name);
        let mut req = case.req.clone();
        if case.keyed && !req.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("x-echo-key")) {
            req.headers.push(("x-echo-key".into(), key.clone()));
        }
        match &case.check {
            Check::Exact => match curl(port, &req) {
                Ok(resp) => {
                    let mut x = norm.exact(&resp, ups.attempts(&key), &case.ignore_headers);
                    if case.any_upstream && x.upstream.is_some() {
                        x.upstream = Some("<any>".into());
                        x.resp_headers.insert("x-echo-upstream".into(), vec!["<any>".into()]);
                    }
                    Outcome::Exact(x)
                }
                Err(e) => Outcome::Error(format!("{e:#}")),
            },
            Check::Distribution { n, .. } => match curl_repeat(port, &req, *n) {
                Ok(v) => {
                    let mut counts = BTreeMap::new();
                    for r in &v {
                        *counts.entry(outcome_label(r)).or_insert(0) += 1;
                    }
                    Outcome::Distribution { n: *n, counts }
                }
                Err(e) => Outcome::Error(format!("{e:#}")),
            },
            Check::Hash { header, keys, per_key, .. } => {
                let mut mapping = Vec::new();
                for k in 0..*keys {
                    let mut r = req.clone();
                    if let Some((h, v)) = header {
                        r.headers.push((h.clone(), v.replace("{}", &k.to_string())));
                    }
                    match curl_repeat(port, &r, *per_key) {
                        Ok(v) => mapping.push(v.iter().map(outcome_label).collect()),
                        Err(e) => return Outcome::Error(format!("{e:#}")),
                    }
                }
                Outcome::Hash { mapping }
            }
        }
    }
}

struct Report {
    text: String,
    failures: usize,
}

/// The upstream that served a response, or `status:N` (`no-response` when none came).
fn outcome_label(r: &Response) -> String {
    if r.status == 0 {
        return "no-response".into();
    }
    match r.header("x-echo-upstream") {
        Some(u) => u.to_string(),
        None => format!("status:{}", r.status),
    }
}

/// Rewrites values that legitimately differ between runs.
struct Normaliser {
    ports: BTreeMap<u16, String>,
}

/// The host's first non-loopback IPv4 address: Envoy uses it in place of a loopback peer address
/// when `use_remote_address` is set (so it shows up in x-forwarded-for). None if there is none.
pub fn local_ipv4() -> Option<String> {
    static IP: OnceLock<Option<String>> = OnceLock::new();
    IP.get_or_init(|| {
        let out = std::process::Command::new("ip").args(["-o", "-4", "addr", "show"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let addr = l.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
            let ip = addr.split('/').next()?;
            (!ip.starts_with("127.")).then(|| ip.to_string())
        })
    })
    .clone()
}

/// Whether Envoy treats `ip` as an internal address (RFC 1918 or loopback).
pub fn is_internal_ipv4(ip: &str) -> bool {
    let o: Vec<u8> = ip.split('.').filter_map(|x| x.parse().ok()).collect();
    matches!(o.as_slice(), [10, ..] | [127, ..] | [192, 168, ..])
        || matches!(o.as_slice(), [172, b, ..] if (16..32).contains(b))
}

/// The lowest port the OS hands out for `bind(0)` / outgoing connections.
fn ephemeral_low() -> u16 {
    static LOW: OnceLock<u16> = OnceLock::new();
    *LOW.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(32768)
    })
}

fn re(cell: &'static OnceLock<Regex>, pat: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pat).unwrap_or_else(|e| panic!("bad regex {pat}: {e}")))
}

impl Normaliser {
    fn new(proxy: &Proxy, ups: &Upstreams) -> Normaliser {
        let mut ports = BTreeMap::new();
        for (name, p) in proxy.vars().ports() {
            ports.insert(*p, format!("<port:{name}>"));
        }
        for (name, p) in proxy.vars().closed_ports() {
            ports.insert(p, format!("<closed_port:{name}>"));
        }
        for u in ups.iter() {
            ports.insert(u.port(), format!("<upstream:{}>", u.name()));
        }
        Normaliser { ports }
    }

    fn text(&self, s: &str) -> String {
        static UUID: OnceLock<Regex> = OnceLock::new();
        static PORT: OnceLock<Regex> = OnceLock::new();
        let local;
        let s = match local_ipv4() {
            Some(ip) => {
                local = s.replace(&ip, "<local-ip>");
                local.as_str()
            }
            None => s,
        };
        let s = re(&UUID, r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
            .replace_all(s, "<uuid>");
        re(&PORT, r":(\d{2,5})\b")
            .replace_all(&s, |c: &regex::Captures<'_>| {
                let n: u16 = c[1].parse().unwrap_or(0);
                match self.ports.get(&n) {
                    Some(label) => format!(":{label}"),
                    // An ephemeral port (the OS chose it, e.g. a client's source port).
                    None if n >= ephemeral_low() => ":<port>".to_string(),
                    None => c[0].to_string(),
                }
            })
            .into_owned()
    }

    fn header(&self, name: &str, value: &str) -> String {
        match name {
            "date" => "<date>".into(),
            "x-envoy-upstream-service-time" if value.chars().all(|c| c.is_ascii_digit()) => "<ms>".into(),
            // A generated hash-policy cookie: its value hashes OS-chosen addresses.
            "set-cookie" => {
                static COOKIE: OnceLock<Regex> = OnceLock::new();
                re(&COOKIE, r#"^([^=]+)="?[0-9a-fA-F]{8,}"?"#).replace(value, "$1=<hash>").into_owned()
            }
            _ => self.text(value),
        }
    }

    fn headers<'a>(
        &self,
        it: impl Iterator<Item = (&'a str, &'a str)>,
        ignore: &[String],
    ) -> BTreeMap<String, Vec<String>> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in it {
            let k = k.to_ascii_lowercase();
            if ignore.contains(&k) {
                continue;
            }
            let v = self.header(&k, v);
            m.entry(k).or_default().push(v);
        }
        m
    }

    fn exact(&self, r: &Response, attempts: u32, ignore: &[String]) -> Exact {
        let json = r.json().filter(|j| j.get("upstream").is_some() && r.header("x-echo-upstream").is_some());
        let seen = json.as_ref().map(|j| {
            let s = |k: &str| j.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            let pairs: Vec<(String, String)> = j
                .get("headers")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|p| Some((p.get(0)?.as_str()?.to_string(), p.get(1)?.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            let attempt = j.get("attempt").and_then(Value::as_u64).unwrap_or(1);
            let mut headers = self.headers(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())), &[]);
            if attempt > 1 {
                // A retry carries the time left of the global timeout, which depends on how long
                // the earlier attempts took: keep only its order of magnitude.
                if let Some(v) = headers.get_mut("x-envoy-expected-rq-timeout-ms") {
                    for x in v.iter_mut() {
                        if let Ok(ms @ 1000..) = x.parse::<u64>() {
                            *x = format!("<={}", ms.div_ceil(1000) * 1000);
                        }
                    }
                }
            }
            Seen {
                method: s("method"),
                path: self.text(&s("path")),
                authority: self.text(&s("authority")),
                version: s("version"),
                headers,
                body_len: j.get("body_len").and_then(Value::as_u64).unwrap_or(0),
            }
        });
        let mut resp_headers = self.headers(r.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())), ignore);
        if seen.is_some() {
            // The echo body's length follows from what the upstream saw, compared above.
            resp_headers.remove("content-length");
        }
        Exact {
            status: r.status,
            curl_exit: if r.status == 0 { r.curl_exit } else { 0 },
            upstream: r.header("x-echo-upstream").map(str::to_string),
            resp_headers,
            body: if seen.is_some() { None } else { Some(self.text(&r.body_str())) },
            seen,
            attempts,
        }
    }
}

fn show(v: Option<&Vec<String>>) -> String {
    match v {
        None => "(absent)".into(),
        Some(v) => v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", "),
    }
}

fn diff_maps(what: &str, a: &BTreeMap<String, Vec<String>>, b: &BTreeMap<String, Vec<String>>, out: &mut Vec<String>) {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        if a.get(k) != b.get(k) {
            out.push(format!("{what} {k}: envoy {} | other {}", show(a.get(k)), show(b.get(k))));
        }
    }
}

/// Differences between the reference outcome `a` and outcome `b`.
fn compare(case: &Case, a: &Outcome, b: &Outcome) -> Vec<String> {
    let mut out = Vec::new();
    match (a, b) {
        (Outcome::Error(e), _) => out.push(format!("reference error: {e}")),
        (_, Outcome::Error(e)) => out.push(format!("error: {e}")),
        (Outcome::Exact(a), Outcome::Exact(b)) => {
            if a.status != b.status {
                out.push(format!("status: envoy {} | other {}", a.status, b.status));
            }
            if a.curl_exit != b.curl_exit {
                out.push(format!("curl exit (no response): envoy {} | other {}", a.curl_exit, b.curl_exit));
            }
            if a.upstream != b.upstream {
                out.push(format!("upstream: envoy {:?} | other {:?}", a.upstream, b.upstream));
            }
            if a.attempts != b.attempts {
                out.push(format!("attempts seen by upstreams: envoy {} | other {}", a.attempts, b.attempts));
            }
            match (&a.seen, &b.seen) {
                (Some(x), Some(y)) => {
                    for (f, p, q) in [
                        ("method", &x.method, &y.method),
                        ("path", &x.path, &y.path),
                        ("authority", &x.authority, &y.authority),
                        ("upstream version", &x.version, &y.version),
                    ] {
                        if p != q {
                            out.push(format!("{f}: envoy {p:?} | other {q:?}"));
                        }
                    }
                    if x.body_len != y.body_len {
                        out.push(format!("upstream body length: envoy {} | other {}", x.body_len, y.body_len));
                    }
                    diff_maps("upstream saw header", &x.headers, &y.headers, &mut out);
                }
                (None, None) => {}
                (x, y) => out.push(format!("reached an upstream: envoy {} | other {}", x.is_some(), y.is_some())),
            }
            diff_maps("response header", &a.resp_headers, &b.resp_headers, &mut out);
            if a.body != b.body {
                out.push(format!("body: envoy {:?} | other {:?}", a.body, b.body));
            }
        }
        (Outcome::Distribution { n: na, counts: ca }, Outcome::Distribution { n: nb, counts: cb }) => {
            let tol = match case.check {
                Check::Distribution { tolerance, .. } => tolerance,
                _ => 0.0,
            };
            let labels: BTreeSet<&String> = ca.keys().chain(cb.keys()).collect();
            for l in labels {
                let pa = *ca.get(l).unwrap_or(&0) as f64 / *na as f64;
                let pb = *cb.get(l).unwrap_or(&0) as f64 / *nb as f64;
                // Each share is also checked against the expected one within `tol`; two samples
                // differ by sqrt(2) times the spread of one.
                let tol = tol * std::f64::consts::SQRT_2;
                if (pa - pb).abs() > tol {
                    out.push(format!("share of {l}: envoy {pa:.3} | other {pb:.3} (tolerance {tol:.3})"));
                }
            }
        }
        (Outcome::Hash { mapping: ma }, Outcome::Hash { mapping: mb }) => {
            let exact = matches!(case.check, Check::Hash { exact: true, .. });
            if exact && ma != mb {
                out.push(format!("key -> upstream mapping: envoy {ma:?} | other {mb:?}"));
            }
            let spread = |m: &Vec<BTreeSet<String>>| m.iter().flatten().collect::<BTreeSet<_>>().len();
            if !exact && spread(ma) != spread(mb) && (spread(ma) == 1 || spread(mb) == 1) {
                out.push(format!("upstreams used: envoy {} | other {}", spread(ma), spread(mb)));
            }
        }
        _ => out.push("outcome kinds differ".into()),
    }
    out
}

fn joined(m: &BTreeMap<String, Vec<String>>, k: &str) -> Option<String> {
    m.get(k).map(|v| v.join(","))
}

/// Expectation failures of one outcome.
fn check_expects(case: &Case, o: &Outcome) -> Vec<String> {
    let mut errs = Vec::new();
    match o {
        Outcome::Error(e) => errs.push(format!("error: {e}")),
        Outcome::Exact(x) => {
            for e in &case.expects {
                match e {
                    Expect::Status(s) if x.status != *s => errs.push(format!("status {} (want {s})", x.status)),
                    Expect::Upstream(u) if &x.upstream != u => {
                        errs.push(format!("upstream {:?} (want {u:?})", x.upstream))
                    }
                    Expect::Served if x.upstream.is_none() => errs.push("no upstream served it".into()),
                    Expect::Path(p) => match &x.seen {
                        Some(s) if &s.path == p => {}
                        s => errs.push(format!("path {:?} (want {p:?})", s.as_ref().map(|s| &s.path))),
                    },
                    Expect::Authority(a) => match &x.seen {
                        Some(s) if &s.authority == a => {}
                        s => errs.push(format!("authority {:?} (want {a:?})", s.as_ref().map(|s| &s.authority))),
                    },
                    Expect::Version(v) => match &x.seen {
                        Some(s) if &s.version == v => {}
                        s => errs.push(format!("upstream version {:?} (want {v:?})", s.as_ref().map(|s| &s.version))),
                    },
                    Expect::SeenHeader(h, v) => {
                        let got = x.seen.as_ref().and_then(|s| joined(&s.headers, h));
                        if x.seen.is_none() {
                            errs.push(format!("upstream header {h}: no upstream saw the request"));
                        } else if &got != v {
                            errs.push(format!("upstream header {h} = {got:?} (want {v:?})"));
                        }
                    }
                    Expect::RespHeader(h, v) => {
                        let got = joined(&x.resp_headers, h);
                        if &got != v {
                            errs.push(format!("response header {h} = {got:?} (want {v:?})"));
                        }
                    }
                    Expect::Body(b) if x.body.as_deref() != Some(b.as_str()) => {
                        errs.push(format!("body {:?} (want {b:?})", x.body))
                    }
                    Expect::BodyContains(b) if !x.body.as_deref().unwrap_or("").contains(b.as_str()) => {
                        errs.push(format!("body {:?} (want it to contain {b:?})", x.body))
                    }
                    Expect::Attempts(n) if x.attempts != *n => errs.push(format!("attempts {} (want {n})", x.attempts)),
                    Expect::NoResponse if x.status != 0 => errs.push(format!("status {} (want no response)", x.status)),
                    _ => {}
                }
            }
        }
        Outcome::Distribution { n, counts } => {
            let tol = match case.check {
                Check::Distribution { tolerance, .. } => tolerance,
                _ => 0.0,
            };
            for e in &case.expects {
                if let Expect::Share(l, want) = e {
                    let got = *counts.get(l).unwrap_or(&0) as f64 / *n as f64;
                    if (got - want).abs() > tol {
                        errs.push(format!("share of {l} {got:.3} (want {want} ± {tol}); counts {counts:?}"));
                    }
                }
            }
        }
        Outcome::Hash { mapping } => {
            for (k, set) in mapping.iter().enumerate() {
                if set.len() != 1 {
                    errs.push(format!("key {k} went to {set:?}, not one upstream"));
                }
                if set.iter().any(|l| l.starts_with("status:") || l == "no-response") {
                    errs.push(format!("key {k} got replies not served by an upstream: {set:?}"));
                }
            }
            for e in &case.expects {
                if let Expect::SpreadAtLeast(n) = e {
                    let used: BTreeSet<&String> = mapping.iter().flatten().collect();
                    if used.len() < *n {
                        errs.push(format!("keys spread over {used:?} (want at least {n} upstreams)"));
                    }
                }
            }
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches() {
        assert!(glob("a/b", "a/b"));
        assert!(!glob("a/b", "a/bc"));
        assert!(glob("redirect/*/h2c", "redirect/301/h2c"));
        assert!(!glob("redirect/*/h2c", "redirect/301/h1"));
        assert!(glob("hdr/method-post/*", "hdr/method-post/h1"));
        assert!(glob("*x*", "axb"));
        assert!(!glob("ab*ba", "aba"));
    }

    #[test]
    fn internal_addresses() {
        assert!(is_internal_ipv4("10.1.2.3"));
        assert!(is_internal_ipv4("172.20.0.1"));
        assert!(!is_internal_ipv4("172.32.0.1"));
        assert!(is_internal_ipv4("192.168.1.1"));
        assert!(!is_internal_ipv4("192.0.2.2"));
    }
}
