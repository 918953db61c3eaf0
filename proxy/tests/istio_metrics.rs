//! Istio's standard metrics checked by a real Prometheus: two remora sidecars in the shape istiod
//! generates (client `productpage-v1`: OUTBOUND HTTP and TCP listeners with `istio.stats` and the
//! peer metadata filter, clusters carrying `istio.services` metadata; server `reviews-v1`: INBOUND
//! listeners likewise) each expose `/stats/prometheus` on a 15090-style listener routed to the
//! admin cluster, as istiod's bootstrap does. Known traffic goes through (HTTP requests with known
//! statuses and sizes, one TCP connection with known bytes), Prometheus (Debian's package) scrapes
//! both every second, and the queries of Istio's standard dashboards are answered through its
//! HTTP API. `promtool check metrics` runs on each scrape.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Remora, free_port, tcp_echo};

fn which(cmd: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {cmd}")]).output().is_ok_and(|o| o.status.success())
}

const PEER_FILTER: &str = r#"- name: istio.metadata_exchange
            typed_config:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/io.istio.http.peer_metadata.Config
              value: {DIR_discovery: [{istio_headers: {}}], DIR_propagation: [{istio_headers: {}}]}"#;

fn node(workload: &str, app: &str) -> String {
    format!(
        r#"node:
  id: sidecar~127.0.0.1~{workload}-1.default~default.svc.cluster.local
  cluster: {app}.default
  metadata:
    NAMESPACE: default
    WORKLOAD_NAME: {workload}
    CLUSTER_ID: Kubernetes
    LABELS: {{app: {app}, version: v1, service.istio.io/canonical-name: {app}, service.istio.io/canonical-revision: v1}}
"#
    )
}

/// Istio's 15090 listener: `/stats/prometheus` routed to the admin port.
fn prometheus_listener(port: u16) -> String {
    format!(
        r#"  - name: prometheus
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: stats
          route_config:
            virtual_hosts: [{{name: backend, domains: ["*"], routes: [{{match: {{prefix: /stats/prometheus}}, route: {{cluster: prometheus_stats}}}}]}}]
          http_filters:
          - {{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}
"#
    )
}

/// Istio's fault filter before `istio.stats` (as istiod orders them): requests with `x-abort`
/// get a 503 from the fault filter, which Istio's stats still count (flag `FI`).
const FAULT: &str = r#"
          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              abort: {http_status: 503, percentage: {numerator: 100}}
              headers: [{name: x-abort, present_match: true}]"#;

fn http_listener(name: &str, port: u16, inbound: bool, cluster: &str, stats: &str) -> String {
    let fault = if inbound { FAULT } else { "" };
    let (direction, dir) = if inbound { ("INBOUND", "downstream") } else { ("OUTBOUND", "upstream") };
    let peer = PEER_FILTER.replace("DIR", dir);
    format!(
        r#"  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    traffic_direction: {direction}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts: [{{name: v, domains: ["*"], routes: [{{name: default, match: {{prefix: "/"}}, route: {{cluster: "{cluster}"}}}}]}}]
          http_filters:
          {peer}{fault}
          - name: istio.stats
            typed_config: {{"@type": type.googleapis.com/stats.PluginConfig{stats}}}
          - {{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}
"#
    )
}

fn tcp_listener(name: &str, port: u16, inbound: bool, cluster: &str) -> String {
    let direction = if inbound { "INBOUND" } else { "OUTBOUND" };
    format!(
        r#"  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    traffic_direction: {direction}
    filter_chains:
    - filters:
      - name: istio.stats
        typed_config: {{"@type": type.googleapis.com/stats.PluginConfig, disable_host_header_fallback: true}}
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {name}
          cluster: "{cluster}"
"#
    )
}

fn cluster(name: &str, port: u16, service: Option<&str>) -> String {
    let metadata = match service {
        Some(s) => format!(
            "\n    metadata: {{filter_metadata: {{istio: {{services: [{{host: {s}.default.svc.cluster.local, name: {s}, namespace: default}}]}}}}}}"
        ),
        None => String::new(),
    };
    format!(
        r#"  - name: "{name}"
    connect_timeout: 1s{metadata}
    load_assignment: {{cluster_name: "{name}", endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]}}
"#
    )
}

struct Sidecar {
    remora: Remora,
    prom: u16,
}

fn sidecar(node: &str, listeners: &[String], clusters: &[String]) -> Sidecar {
    let (admin, prom) = (free_port(), free_port());
    let yaml = format!(
        "{node}admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}\nstatic_resources:\n  listeners:\n{}{}  clusters:\n{}{}",
        listeners.concat(),
        prometheus_listener(prom),
        clusters.concat(),
        cluster("prometheus_stats", admin, None),
    );
    Sidecar { remora: Remora::start(&yaml, admin), prom }
}

/// A Prometheus server on a temp dir, killed and cleaned up on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(targets: &[u16]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let targets: Vec<String> = targets.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
        let cfg = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n- job_name: sidecars\n  metrics_path: /stats/prometheus\n  static_configs: [{{targets: [{}]}}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), cfg).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus");
        Prometheus { child, port, _dir: dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: the result vector as (labels, value).
    fn query(&self, q: &str) -> Vec<(serde_json::Value, f64)> {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", "--data-urlencode", &format!("query={q}")])
            .arg(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        v["data"]["result"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        (r["metric"].clone(), r["value"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A single-valued query's value, once it satisfies `ok` (Prometheus scrapes every second).
    fn wait_for(&self, q: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.query(q);
            if let Some((_, v)) = r.first()
                && r.len() == 1
                && ok(*v)
            {
                return *v;
            }
            assert!(Instant::now() < deadline, "{q}: {r:?}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn curl_status(url: &str) -> u16 {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

fn scrape(port: u16) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}/stats/prometheus"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `promtool check metrics`: the scrape parses, and the only findings are lint rules real Envoy's
/// own exposition trips as well (no `# HELP` lines; Envoy's stat names, e.g. counters without
/// `_total`; Istio's `_milliseconds` unit); the Istio families have no other finding.
fn promtool_check(text: &str) {
    let mut c = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let code = out.status.code();
    assert!(code == Some(0) || code == Some(3), "promtool failed ({code:?}): {report}");
    for line in report.lines().filter(|l| !l.trim().is_empty()) {
        // Envoy's stat names (`envoy_*`) trip naming rules in Envoy's own output too.
        // Istio's own duration family is named in milliseconds.
        let lint = line.ends_with(" no help text")
            || line.starts_with("envoy_")
            || line == "istio_request_duration_milliseconds use base unit \"seconds\" instead of \"milliseconds\"";
        assert!(lint, "promtool: {line}");
    }
}

fn one_tcp_connection(port: u16, greeting: &str, payload: &[u8]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(payload).unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while got.len() < greeting.len() + payload.len() {
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "closed early: {got:?}");
        got.extend_from_slice(&b[..n]);
    }
    assert_eq!(&got[..greeting.len()], greeting.as_bytes());
    assert_eq!(&got[greeting.len()..], payload);
}

#[test]
fn istio_standard_metrics_through_prometheus() {
    if !which("prometheus") || !which("promtool") {
        assert!(
            std::env::var_os("REMORA_DIFF_REQUIRE").is_none(),
            "prometheus/promtool missing: scripts/install-test-deps"
        );
        eprintln!("skipping: prometheus or promtool missing (scripts/install-test-deps)");
        return;
    }
    const GREETING: &str = "hello from ratings\n";
    let app = support::upstream();
    let echo = tcp_echo(GREETING);
    let (b_http, b_tcp, a_http, a_tcp) = (free_port(), free_port(), free_port(), free_port());
    let server = sidecar(
        &node("reviews-v1", "reviews"),
        &[
            http_listener("inbound_http", b_http, true, "inbound|9080||", ""),
            tcp_listener("inbound_tcp", b_tcp, true, "inbound|9000||"),
        ],
        &[cluster("inbound|9080||", app, None), cluster("inbound|9000||", echo, None)],
    );
    let client = sidecar(
        &node("productpage-v1", "productpage"),
        &[
            // A Telemetry API tag override: the request's host as an extra label.
            http_listener(
                "outbound_http",
                a_http,
                false,
                "outbound|9080||reviews.default.svc.cluster.local",
                r#", metrics: [{dimensions: {request_host: "request.host"}}]"#,
            ),
            tcp_listener("outbound_tcp", a_tcp, false, "outbound|9000||ratings.default.svc.cluster.local"),
        ],
        &[
            cluster("outbound|9080||reviews.default.svc.cluster.local", b_http, Some("reviews")),
            cluster("outbound|9000||ratings.default.svc.cluster.local", b_tcp, Some("ratings")),
        ],
    );
    let url = |q: &str| format!("http://127.0.0.1:{a_http}/?{q}");

    // One request of each kind first, so every series exists before Prometheus's first sample
    // (a series' first sample counts as no increase for rate()).
    assert_eq!(curl_status(&url("s=200&n=100")), 200);
    assert_eq!(curl_status(&url("s=503&n=10")), 503);
    // A fault abort on the server: answered before its istio.stats filter, counted all the same.
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "x-abort: 1", &url("s=200")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "503");
    let prom = Prometheus::start(&[client.prom, server.prom]);
    prom.wait_for("count(up == 1)", |v| v == 2.0);
    prom.wait_for("sum(istio_requests_total)", |v| v == 6.0);

    // The known traffic: 6 x 200 (100-byte bodies), 2 x 503, one TCP connection.
    for _ in 0..6 {
        assert_eq!(curl_status(&url("s=200&n=100")), 200);
    }
    for _ in 0..2 {
        assert_eq!(curl_status(&url("s=503&n=10")), 503);
    }
    let payload = vec![b'x'; 1234];
    one_tcp_connection(a_tcp, GREETING, &payload);

    // Totals, both reporters.
    for reporter in ["source", "destination"] {
        prom.wait_for(&format!("sum(istio_requests_total{{reporter=\"{reporter}\"}})"), |v| v == 11.0);
        let ok = prom
            .wait_for(&format!("sum(istio_requests_total{{reporter=\"{reporter}\",response_code=\"200\"}})"), |v| {
                v == 7.0
            });
        assert_eq!(ok, 7.0);
        prom.wait_for(&format!("sum(istio_tcp_connections_closed_total{{reporter=\"{reporter}\"}})"), |v| v == 1.0);
        prom.wait_for(&format!("sum(istio_tcp_connections_opened_total{{reporter=\"{reporter}\"}})"), |v| v == 1.0);
        // TCP bytes as sent: what the client wrote, and the greeting plus the echo back.
        prom.wait_for(&format!("sum(istio_tcp_received_bytes_total{{reporter=\"{reporter}\"}})"), |v| v == 1234.0);
        prom.wait_for(&format!("sum(istio_tcp_sent_bytes_total{{reporter=\"{reporter}\"}})"), |v| {
            v == (GREETING.len() + 1234) as f64
        });
    }

    // Request rate by destination_workload (Istio's service dashboard).
    let r = prom.query("sum(rate(istio_requests_total{reporter=\"destination\"}[1m])) by (destination_workload)");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].0["destination_workload"], "reviews-v1", "{r:?}");
    assert!(r[0].1 > 0.0, "{r:?}");
    let r = prom
        .query("sum(rate(istio_requests_total{reporter=\"source\"}[1m])) by (source_workload, destination_service)");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].0["source_workload"], "productpage-v1", "{r:?}");
    assert_eq!(r[0].0["destination_service"], "reviews.default.svc.cluster.local", "{r:?}");

    // Success rate (non-5xx over all): the increase after the first sample is 6 of 8.
    let q = "sum(rate(istio_requests_total{reporter=\"destination\",response_code!~\"5.*\"}[1m])) / \
             sum(rate(istio_requests_total{reporter=\"destination\"}[1m]))";
    let rate = prom.wait_for(q, |v| (v - 0.75).abs() < 1e-6);
    assert!((rate - 0.75).abs() < 1e-6, "{rate}");

    // p99 latency over loopback: above zero, well under a second.
    let p99 = prom.wait_for(
        "histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{reporter=\"destination\"}[1m])) by (le))",
        |v| v.is_finite(),
    );
    assert!(p99 > 0.0 && p99 <= 1000.0, "p99 {p99} ms");

    // Sizes: every request counted once per histogram; responses at least their bodies.
    let n = prom.wait_for("sum(istio_response_bytes_count{reporter=\"destination\"})", |v| v == 11.0);
    assert_eq!(n, 11.0);
    let body_bytes = (7 * 100 + 3 * 10) as f64;
    let sum = prom.wait_for("sum(istio_response_bytes_sum{reporter=\"destination\"})", |v| v.is_finite());
    assert!(sum > body_bytes && sum < body_bytes + 10.0 * 1024.0, "response bytes {sum}");
    prom.wait_for("sum(istio_request_bytes_count{reporter=\"source\"})", |v| v == 11.0);

    // The fault abort: flag FI at the destination; the source saw a plain 503 from upstream.
    let fi = prom.query("istio_requests_total{reporter=\"destination\",response_flags=\"FI\"}");
    assert_eq!(fi.len(), 1, "{fi:?}");
    assert_eq!((fi[0].0["response_code"].as_str(), fi[0].1), (Some("503"), 1.0), "{fi:?}");
    assert_eq!(prom.query("istio_requests_total{reporter=\"source\",response_flags=\"FI\"}").len(), 0);

    // The labels of one destination series, Istio's standard set.
    let r = prom.query("istio_requests_total{reporter=\"destination\",response_code=\"503\",response_flags=\"-\"}");
    assert_eq!(r.len(), 1, "{r:?}");
    let m = &r[0].0;
    for (k, v) in [
        ("source_workload", "productpage-v1"),
        ("source_canonical_service", "productpage"),
        ("source_workload_namespace", "default"),
        ("source_app", "productpage"),
        ("source_cluster", "Kubernetes"),
        ("destination_workload", "reviews-v1"),
        ("destination_canonical_revision", "v1"),
        ("destination_service_namespace", "default"),
        ("request_protocol", "http"),
        ("response_flags", "-"),
        ("connection_security_policy", "none"),
    ] {
        assert_eq!(m[k], v, "{k}: {m}");
    }

    // At the source: the upstream peer from its response headers, the service from the cluster.
    let r = prom.query("istio_requests_total{reporter=\"source\",response_code=\"200\"}");
    assert_eq!(r.len(), 1, "{r:?}");
    let m = &r[0].0;
    for (k, v) in [
        ("source_workload", "productpage-v1"),
        ("destination_workload", "reviews-v1"),
        ("destination_app", "reviews"),
        ("destination_service_name", "reviews"),
        ("destination_workload_namespace", "default"),
        ("connection_security_policy", "unknown"),
    ] {
        assert_eq!(m[k], v, "{k}: {m}");
    }
    assert_eq!(m["request_host"], format!("127.0.0.1:{a_http}"), "{m}");
    let r = prom.query("istio_tcp_sent_bytes_total{reporter=\"source\"}");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].0["destination_service"], "ratings.default.svc.cluster.local", "{r:?}");
    assert_eq!(r[0].0["request_protocol"], "tcp", "{r:?}");

    for p in [client.prom, server.prom] {
        let text = scrape(p);
        assert!(text.contains("# TYPE istio_request_duration_milliseconds histogram"), "{text}");
        promtool_check(&text);
    }
    drop(prom);
    drop(client.remora);
    drop(server.remora);
}
