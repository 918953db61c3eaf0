//! Differential test of RBAC: one bootstrap, served by Envoy and by remora, the same requests
//! sent with curl; status, body (or how the connection ended) and every `rbac` stat must be the
//! same.
//!
//! The bootstrap has an HTTP listener whose `envoy.filters.http.rbac` allows some methods, paths,
//! headers and source addresses (direct peer, x-forwarded-for, destination port) and denies the
//! rest, with shadow rules, rule/shadow stat prefixes, per-rule stats, a LOG filter and per-route
//! overrides; two HTTP listeners with `envoy.filters.network.rbac` (an allow list and Istio's
//! deny-all `rules: {}`); and two tcp_proxy listeners behind network RBAC (allowed and denied).
//!
//! Needs curl and Envoy (`$ENVOY_BIN`, `/tmp/envoyvenv/bin/envoy` or `envoy` on the PATH);
//! skipped without Envoy. Run: `cargo test -p remora --test rbac_differential -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, tcp_echo};

fn envoy_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("ENVOY_BIN") {
        return Some(p.into());
    }
    let venv = PathBuf::from("/tmp/envoyvenv/bin/envoy");
    if venv.exists() {
        return Some(venv);
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join("envoy")).find(|p| p.exists())
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Ports {
    admin: u16,
    http: u16,
    net_allow: u16,
    net_deny: u16,
    tcp_allow: u16,
    tcp_deny: u16,
    /// The upstreams of the tcp_proxy listeners: an echo server that speaks first, one that
    /// does not (what a denied client could see differs from Envoy for a server-first upstream:
    /// Envoy connects upstream before judging).
    echo: u16,
    echo_silent: u16,
}

fn bootstrap(p: &Ports) -> String {
    let rbac_log = r#"
          - name: rbac-log
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: LOG
                policies:
                  log-api: {permissions: [{url_path: {path: {prefix: /api}}}], principals: [{any: true}]}"#;
    let direct = |body: &str| format!("direct_response: {{status: 200, body: {{inline_string: {body}}}}}");
    format!(
        r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: http
    address: {{socket_address: {{address: 127.0.0.1, port_value: {http}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ing
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /open}}
                {open}
                typed_per_filter_config:
                  envoy.filters.http.rbac:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute
              - match: {{prefix: /override}}
                {override}
                typed_per_filter_config:
                  envoy.filters.http.rbac:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute
                    rbac:
                      track_per_rule_stats: true
                      rules:
                        action: DENY
                        policies:
                          no-put: {{permissions: [{{header: {{name: ":method", exact_match: PUT}}}}], principals: [{{any: true}}]}}
                      shadow_rules:
                        policies:
                          shadow-get: {{permissions: [{{header: {{name: ":method", exact_match: GET}}}}], principals: [{{any: true}}]}}
              - match: {{prefix: /}}
                {ok}
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules_stat_prefix: rsp_
              shadow_rules_stat_prefix: ssp_
              track_per_rule_stats: true
              rules:
                action: ALLOW
                policies:
                  public-read:
                    permissions:
                    - and_rules:
                        rules:
                        - or_rules: {{rules: [{{header: {{name: ":method", exact_match: GET}}}}, {{header: {{name: ":method", exact_match: HEAD}}}}]}}
                        - url_path: {{path: {{prefix: /public}}}}
                    principals: [{{any: true}}]
                  admin:
                    permissions: [{{url_path: {{path: {{prefix: /admin}}}}}}]
                    principals:
                    - and_ids:
                        ids:
                        - header: {{name: x-role, string_match: {{exact: ADMIN, ignore_case: true}}}}
                        - direct_remote_ip: {{address_prefix: 127.0.0.1, prefix_len: 32}}
                  api-writers:
                    permissions:
                    - and_rules:
                        rules:
                        - header: {{name: ":method", exact_match: POST}}
                        - url_path: {{path: {{exact: /api/items}}}}
                        - header: {{name: content-type, prefix_match: application/json}}
                    principals: [{{not_id: {{header: {{name: x-banned, present_match: true}}}}}}]
                  lan:
                    permissions: [{{url_path: {{path: {{prefix: /lan}}}}}}]
                    principals: [{{remote_ip: {{address_prefix: 10.0.0.0, prefix_len: 8}}}}]
                  second-loopback:
                    permissions:
                    - and_rules:
                        rules:
                        - url_path: {{path: {{prefix: /src2}}}}
                        - destination_port_range: {{start: {http}, end: {http_end}}}
                        - destination_ip: {{address_prefix: 127.0.0.0, prefix_len: 8}}
                    principals: [{{source_ip: {{address_prefix: 127.0.0.2, prefix_len: 32}}}}]
                  token:
                    permissions: [{{header: {{name: ":path", safe_regex_match: {{regex: "/q\\?(.*&)?token=ok(&.*)?"}}}}}}]
                    principals: [{{any: true}}]
                  plaintext:
                    permissions:
                    - and_rules:
                        rules:
                        - url_path: {{path: {{exact: /nosni}}}}
                        - requested_server_name: {{exact: ""}}
                        - destination_port: {http}
                    principals: [{{not_id: {{authenticated: {{}}}}}}]
              shadow_rules:
                action: DENY
                policies:
                  shadow-no-delete: {{permissions: [{{header: {{name: ":method", exact_match: DELETE}}}}], principals: [{{any: true}}]}}
                  shadow-admin: {{permissions: [{{url_path: {{path: {{prefix: /admin}}}}}}], principals: [{{any: true}}]}}
{rbac_log}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: net-allow
    address: {{socket_address: {{address: 127.0.0.1, port_value: {net_allow}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: tcp.
          shadow_rules_stat_prefix: istio_dry_run_allow_
          rules:
            policies:
              loopback-1:
                permissions: [{{destination_port: {net_allow}}}]
                principals: [{{direct_remote_ip: {{address_prefix: 127.0.0.1, prefix_len: 32}}}}]
          shadow_rules:
            action: DENY
            policies:
              shadow-2: {{permissions: [{{any: true}}], principals: [{{source_ip: {{address_prefix: 127.0.0.2, prefix_len: 32}}}}]}}
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ing2
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                {ok}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: net-deny
    address: {{socket_address: {{address: 127.0.0.1, port_value: {net_deny}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          rules: {{}}
          stat_prefix: tcp3
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ing3
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                {ok}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: tcp-allow
    address: {{socket_address: {{address: 127.0.0.1, port_value: {tcp_allow}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: tcp4.
          rules: {{policies: {{lo: {{permissions: [{{destination_ip: {{address_prefix: 127.0.0.1, prefix_len: 32}}}}], principals: [{{any: true}}]}}}}}}
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: echo4
          cluster: echo
  - name: tcp-deny
    address: {{socket_address: {{address: 127.0.0.1, port_value: {tcp_deny}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: tcp5.
          rules: {{action: DENY, policies: {{lo: {{permissions: [{{any: true}}], principals: [{{direct_remote_ip: {{address_prefix: 127.0.0.0, prefix_len: 8}}}}]}}}}}}
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: echo5
          cluster: echo_silent
  clusters:
  - name: echo
    connect_timeout: 1s
    load_assignment: {{cluster_name: echo, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {echo}}}}}}}}}]}}]}}
  - name: echo_silent
    connect_timeout: 1s
    load_assignment: {{cluster_name: echo_silent, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {echo_silent}}}}}}}}}]}}]}}
"#,
        admin = p.admin,
        http = p.http,
        http_end = u32::from(p.http) + 1,
        net_allow = p.net_allow,
        net_deny = p.net_deny,
        tcp_allow = p.tcp_allow,
        tcp_deny = p.tcp_deny,
        echo = p.echo,
        echo_silent = p.echo_silent,
        open = direct("open"),
        override = direct("override"),
        ok = direct("ok"),
    )
}

/// One request: (name, curl arguments after the URL's port is filled in).
struct Case {
    name: &'static str,
    port: fn(&Ports) -> u16,
    method: &'static str,
    path: &'static str,
    headers: &'static [&'static str],
    source: &'static str,
    h2: bool,
}

fn case(name: &'static str, method: &'static str, path: &'static str) -> Case {
    Case { name, port: |p| p.http, method, path, headers: &[], source: "127.0.0.1", h2: false }
}

fn cases() -> Vec<Case> {
    vec![
        case("public GET", "GET", "/public/a"),
        case("public POST", "POST", "/public/a"),
        Case { h2: true, ..case("public GET h2", "GET", "/public/b") },
        Case { h2: true, ..case("public POST h2", "POST", "/public/b") },
        case("public DELETE (shadow deny)", "DELETE", "/public/a"),
        Case { headers: &["x-role: Admin"], ..case("admin from .1", "GET", "/admin/x") },
        Case { headers: &["x-role: admin"], source: "127.0.0.2", ..case("admin from .2", "GET", "/admin/x") },
        case("admin without role", "GET", "/admin/x"),
        Case { headers: &["content-type: application/json"], ..case("api json", "POST", "/api/items") },
        Case {
            headers: &["content-type: application/json", "x-banned: 1"],
            ..case("api banned", "POST", "/api/items")
        },
        Case { headers: &["content-type: text/plain"], ..case("api text", "POST", "/api/items") },
        case("api GET (log only)", "GET", "/api/items"),
        Case { headers: &["x-forwarded-for: 10.1.2.3"], ..case("lan via xff", "GET", "/lan/x") },
        Case { headers: &["x-forwarded-for: 10.9.9.9, 192.168.1.1"], ..case("wan via xff", "GET", "/lan/x") },
        case("lan without xff", "GET", "/lan/x"),
        Case { source: "127.0.0.2", ..case("src2 from .2", "GET", "/src2") },
        case("src2 from .1", "GET", "/src2"),
        case("token ok", "GET", "/q?a=1&token=ok"),
        case("token bad", "GET", "/q?token=bad"),
        case("plaintext", "GET", "/nosni"),
        case("disabled per route", "POST", "/open/x"),
        case("override allows", "GET", "/override"),
        case("override denies", "PUT", "/override"),
        Case {
            h2: true,
            headers: &["content-type: application/grpc", "te: trailers"],
            ..case("grpc denied", "POST", "/public/g")
        },
        Case { port: |p| p.net_allow, ..case("net allow .1", "GET", "/") },
        Case { port: |p| p.net_allow, source: "127.0.0.2", ..case("net deny .2", "GET", "/") },
        Case { port: |p| p.net_deny, ..case("net deny all", "GET", "/") },
    ]
}

/// curl's exit code, the status and the body.
fn send(c: &Case, ports: &Ports) -> (i32, String, String) {
    let url = format!("http://127.0.0.1:{}{}", (c.port)(ports), c.path);
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-m",
        "5",
        "-X",
        c.method,
        "--interface",
        c.source,
        "-w",
        "\n%{http_code} %header{grpc-status} %header{grpc-message}",
    ]);
    if c.h2 {
        cmd.arg("--http2-prior-knowledge");
    }
    for h in c.headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(&url).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (out.status.code().unwrap_or(-1), status.to_string(), body.to_string())
}

fn wait_ready(admin: u16, http: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let ready = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://127.0.0.1:{admin}/ready")])
            .output()
            .map(|o| o.stdout == b"200")
            .unwrap_or(false);
        if ready && std::net::TcpStream::connect(("127.0.0.1", http)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Every stat with `rbac` in its name, and the connection counts of the HCMs behind the network
/// filters (Envoy counts connections the network filter closed).
fn rbac_stats(admin: u16) -> BTreeMap<String, String> {
    let out = Command::new("curl").args(["-s", &format!("http://127.0.0.1:{admin}/stats")]).output().expect("curl");
    let hcm = [
        "http.ing2.downstream_cx_total",
        "http.ing3.downstream_cx_total",
        "http.ing3.downstream_rq_total",
        "tcp.echo4.downstream_cx_total",
    ];
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.contains("rbac") || hcm.contains(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A raw TCP exchange: connect, send `ping\n`, read until EOF or a second of silence.
fn tcp_exchange(port: u16) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return "connect failed".into() };
    s.set_read_timeout(Some(Duration::from_millis(1000))).unwrap();
    let _ = s.write_all(b"ping\n");
    let mut out = Vec::new();
    let mut b = [0u8; 256];
    loop {
        match s.read(&mut b) {
            Ok(0) => {
                out.extend_from_slice(b"<eof>");
                break;
            }
            Ok(n) => out.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                out.extend_from_slice(b"<reset>");
                break;
            }
            Err(_) => break,
        }
        if out.ends_with(b"ping\n") {
            break;
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

struct Run {
    answers: Vec<(i32, String, String)>,
    tcp: Vec<String>,
    stats: BTreeMap<String, String>,
}

fn run(bin: &Path, extra: &[&str], dir: &Path, label: &str, echo: (u16, u16)) -> Run {
    let ports = Ports {
        admin: free_port(),
        http: free_port(),
        net_allow: free_port(),
        net_deny: free_port(),
        tcp_allow: free_port(),
        tcp_deny: free_port(),
        echo: echo.0,
        echo_silent: echo.1,
    };
    let cfg = dir.join(format!("{label}.yaml"));
    std::fs::write(&cfg, bootstrap(&ports)).expect("write bootstrap");
    let log = std::fs::File::create(dir.join(format!("{label}.log"))).expect("log file");
    let child = Command::new(bin)
        .arg("-c")
        .arg(&cfg)
        .args(["--concurrency", "1", "-l", "warning"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start proxy");
    let _proc = Proc(child);
    assert!(wait_ready(ports.admin, ports.http), "{label} did not become ready (see {})", dir.display());
    let answers = cases().iter().map(|c| send(c, &ports)).collect();
    let tcp = vec![tcp_exchange(ports.tcp_allow), tcp_exchange(ports.tcp_deny)];
    std::thread::sleep(Duration::from_millis(200));
    Run { answers, tcp, stats: rbac_stats(ports.admin) }
}

#[test]
fn rbac_matches_envoy() {
    let Some(envoy) = envoy_bin() else {
        eprintln!("envoy not found (set ENVOY_BIN): skipping the RBAC differential test");
        return;
    };
    let remora = PathBuf::from(env!("CARGO_BIN_EXE_remora"));
    let echo = (tcp_echo("hello\n"), tcp_echo(""));
    let dir = std::env::temp_dir().join(format!("remora-rbac-diff-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let e = run(&envoy, &["--disable-hot-restart"], &dir, "envoy", echo);
    let r = run(&remora, &["--disable-hot-restart"], &dir, "remora", echo);
    let mut diffs = Vec::new();
    for (c, (a, b)) in cases().iter().zip(e.answers.iter().zip(&r.answers)) {
        eprintln!("{:<28} envoy {:?}  remora {:?}", c.name, a, b);
        if a != b {
            diffs.push(format!("{}: envoy {a:?} remora {b:?}", c.name));
        }
    }
    for (name, (a, b)) in ["tcp allowed", "tcp denied"].iter().zip(e.tcp.iter().zip(&r.tcp)) {
        eprintln!("{name:<28} envoy {a:?}  remora {b:?}");
        if a != b {
            diffs.push(format!("{name}: envoy {a:?} remora {b:?}"));
        }
    }
    assert_eq!(e.tcp[0], "hello\nping\n");
    // Sanity: the config really allows and denies.
    assert_eq!(e.answers[0].1.trim(), "200");
    assert_eq!(e.answers[1], (0, "403  ".into(), "RBAC: access denied".into()));
    for k in e.stats.keys().chain(r.stats.keys()) {
        let (a, b) = (e.stats.get(k), r.stats.get(k));
        if a != b {
            diffs.push(format!("stat {k}: envoy {a:?} remora {b:?}"));
        }
    }
    eprintln!("rbac stats (envoy): {:#?}", e.stats);
    assert!(diffs.is_empty(), "remora differs from Envoy:\n{}", diffs.join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
}
