//! Differential tests of the application-log line format against the reference Envoy: the same
//! flags and bootstrap on both, and every line each writes must have the shape the format asks
//! for (the messages themselves differ between the two programs). Covers Envoy's default format,
//! pilot-agent's `--log-format`, the bootstrap's `application_log_config` (text and JSON),
//! `--log-path`, no colour codes, and the refusals (`--log-format` together with the bootstrap's
//! format; `%v` in a JSON format).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use regex::Regex;
use tests::{Kind, Options, Proxy, Vars};

const BOOTSTRAP: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: {{port:admin}}}}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: {{port:listener}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: logs
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /}
                direct_response: {status: 200, body: {inline_string: ok}}
{{extra}}
"#;

const JSON_FORMAT: &str = r#"
application_log_config:
  log_format:
    json_format:
      time: "%Y-%m-%dT%T.%e%z"
      thread: "%t"
      level: "%l"
      logger: "%n"
      source: "%g:%#"
      message: "%j"
"#;

fn bins() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let envoy = tests::envoy_bin();
    let remora = tests::remora_bin().ok().flatten();
    match (envoy, remora) {
        (Some(e), Some(r)) => Some((e, r)),
        _ if std::env::var("REMORA_DIFF_REQUIRE").as_deref() == Ok("1") => {
            panic!("the log-format differential needs ENVOY_BIN and REMORA_BIN")
        }
        _ => None,
    }
}

/// Starts `kind`, sends one request so both write request-time lines too, stops it and returns
/// its log (stdout and stderr).
fn run(kind: Kind, extra: &str, args: &[&str]) -> (String, Proxy) {
    let mut vars = Vars::new();
    vars.set("extra", extra);
    let opts = Options { extra_args: args.iter().map(|s| s.to_string()).collect(), ..Options::default() };
    let p = Proxy::start(kind, BOOTSTRAP, vars, &opts).unwrap_or_else(|e| panic!("{}: {e:#}", kind.name()));
    let (status, body) = tests::process::http_get(p.port("listener"), "/").unwrap();
    assert_eq!((status, body.as_str()), (200, "ok"));
    (p.log(), p)
}

/// Every line is non-empty, matches `shape`, and carries no ANSI escape.
fn assert_lines(who: &str, log: &str, shape: &Regex) -> usize {
    let lines: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty(), "{who} wrote no log line");
    for l in &lines {
        assert!(!l.contains('\u{1b}'), "{who}: colour codes in {l:?}");
        assert!(shape.is_match(l), "{who}: line does not have the format's shape: {l:?}");
    }
    lines.len()
}

const LEVELS: &str = "(trace|debug|info|warning|error|critical)";

/// Envoy's default line shape: lines written before the bootstrap's format is read have it.
fn default_shape() -> Regex {
    Regex::new(&format!(
        r"^\[\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{{3}}\]\[\d+\]\[{LEVELS}\]\[[a-z_0-9]+\] \[[^\]]+:\d+\] "
    ))
    .unwrap()
}

/// The lines after the first one in the bootstrap's format: each has that format's shape.
fn after_switch<'a>(who: &str, log: &'a str, is_new: impl Fn(&str) -> bool) -> Vec<&'a str> {
    let lines: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    let first = lines
        .iter()
        .position(|l| is_new(l))
        .unwrap_or_else(|| panic!("{who}: no line in the bootstrap's format:\n{log}"));
    let dflt = default_shape();
    assert!(lines[..first].iter().all(|l| dflt.is_match(l)), "{who}: early lines in neither format:\n{log}");
    lines[first..].to_vec()
}

#[test]
fn default_format_is_envoys() {
    let Some(_) = bins() else { return };
    let shape = default_shape();
    for kind in [Kind::Envoy, Kind::Remora] {
        let (log, _p) = run(kind, "", &[]);
        assert_lines(kind.name(), &log, &shape);
    }
}

#[test]
fn pilot_agent_format() {
    let Some(_) = bins() else { return };
    // pilot-agent's default `--log-format` (istio pkg/envoy/proxy.go).
    let fmt = "%Y-%m-%dT%T.%fZ\t%l\tenvoy %n %g:%#\t%v\tthread=%t";
    let shape = Regex::new(&format!(
        r"^\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{6}}Z\t{LEVELS}\tenvoy [a-z_0-9]+ \S+:\d+\t.*\tthread=\d+$"
    ))
    .unwrap();
    for kind in [Kind::Envoy, Kind::Remora] {
        let (log, _p) = run(kind, "", &["--log-format", fmt]);
        assert_lines(kind.name(), &log, &shape);
    }
}

#[test]
fn application_log_config_text_and_json() {
    let Some(_) = bins() else { return };
    let text = "application_log_config: {log_format: {text_format: \"%L%m%d %T.%e %t remora-test %n] %v\"}}";
    let shape = Regex::new(r"^[TDIWEC]\d{4} \d\d:\d\d:\d\d\.\d{3} \d+ remora-test [a-z_0-9]+\] ").unwrap();
    for kind in [Kind::Envoy, Kind::Remora] {
        let (log, _p) = run(kind, text, &[]);
        let lines = after_switch(kind.name(), &log, |l| shape.is_match(l));
        assert_lines(kind.name(), &lines.join("\n"), &shape);
    }
    let time = Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$").unwrap();
    let level = Regex::new(&format!("^{LEVELS}$")).unwrap();
    for kind in [Kind::Envoy, Kind::Remora] {
        let (log, _p) = run(kind, JSON_FORMAT, &[]);
        let mut n = 0;
        for l in after_switch(kind.name(), &log, |l| l.starts_with('{')) {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {l:?}", kind.name()));
            let obj = v.as_object().unwrap();
            let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["level", "logger", "message", "source", "thread", "time"], "{}: {l}", kind.name());
            assert!(time.is_match(v["time"].as_str().unwrap()), "{}: time in {l}", kind.name());
            assert!(level.is_match(v["level"].as_str().unwrap()), "{}: level in {l}", kind.name());
            assert!(v["thread"].as_str().unwrap().parse::<u64>().is_ok(), "{}: thread in {l}", kind.name());
            n += 1;
        }
        assert!(n > 0, "{} wrote no JSON line", kind.name());
    }
}

#[test]
fn log_path_takes_the_lines() {
    let Some(_) = bins() else { return };
    let shape = Regex::new(&format!(r"^\[[^\]]+\]\[\d+\]\[{LEVELS}\]")).unwrap();
    for kind in [Kind::Envoy, Kind::Remora] {
        let dir = std::env::temp_dir().join(format!("remora-logpath-{}-{}", kind.name(), std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("proxy.log");
        let path_s = path.display().to_string();
        let (console, p) = run(kind, "", &["--log-path", &path_s]);
        drop(p);
        let file = std::fs::read_to_string(&path).unwrap();
        assert_lines(kind.name(), &file, &shape);
        assert!(
            !console.lines().any(|l| shape.is_match(l)),
            "{}: log lines still on the console with --log-path:\n{console}",
            kind.name()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Runs `bin` on `yaml` with `args`; returns (exit code, output) or None if it kept running.
fn exit_of(bin: &std::path::Path, yaml: &str, args: &[&str]) -> Option<(i32, String)> {
    let dir = std::env::temp_dir().join(format!("remora-logrefuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bootstrap.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let out = dir.join("out.log");
    let f = std::fs::File::create(&out).unwrap();
    let mut child = Command::new(bin)
        .arg("-c")
        .arg(&cfg)
        .args(["--disable-hot-restart", "--base-id", "77"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    status.map(|s| (s.code().unwrap_or(-1), text))
}

#[test]
fn conflicting_or_unsafe_formats_are_refused() {
    let Some((envoy, remora)) = bins() else { return };
    let admin = tests::process::free_port();
    let listener = tests::process::free_port();
    let render = |extra: &str| {
        BOOTSTRAP
            .replace("{{port:admin}}", &admin.to_string())
            .replace("{{port:listener}}", &listener.to_string())
            .replace("{{extra}}", extra)
    };
    // --log-format and application_log_config both set.
    let both = render(JSON_FORMAT);
    for (name, bin) in [("envoy", &envoy), ("remora", &remora)] {
        let (code, out) = exit_of(bin, &both, &["--log-format", "%v"]).unwrap_or_else(|| panic!("{name} kept running"));
        assert_ne!(code, 0, "{name}: {out}");
        assert!(
            out.to_lowercase().contains("only one of applicationlogconfig.log_format or cli option --log-format"),
            "{name}: {out}"
        );
    }
    // %v in a JSON format could break the JSON: refused by both.
    let v_in_json = render("application_log_config: {log_format: {json_format: {message: \"%v\"}}}");
    for (name, bin) in [("envoy", &envoy), ("remora", &remora)] {
        let (code, out) = exit_of(bin, &v_in_json, &[]).unwrap_or_else(|| panic!("{name} kept running"));
        assert_ne!(code, 0, "{name}: {out}");
        assert!(out.contains("%v"), "{name}: {out}");
    }
}
