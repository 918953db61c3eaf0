//! Differential tests of distributed tracing with Envoy's Zipkin tracer: the same bootstrap
//! (Istio's shape: the tracer in the bootstrap, the HCM's `tracing` block with sampling and
//! custom tags, a `zipkin` cluster pointing at a collector this test runs) through the reference
//! Envoy and remora. Compared: the B3 headers the upstream sees (lengths, trace/parent relations,
//! the sampled flag, the trace reason in x-request-id) for fresh requests, forced traces,
//! incoming B3 contexts (multi and single header), malformed contexts, random sampling 0 and
//! 100; and the spans the collector receives (name, kind, tag names and the stable tag values,
//! id relations, local endpoint), random and timing values by shape only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tests::{Kind, Options, Proxy, Request, Upstreams, Vars, curl};

const BOOTSTRAP: &str = r#"
node: {id: trace-node, cluster: trace-cluster}
admin: {address: {socket_address: {address: 127.0.0.1, port_value: {{port:admin}}}}}
tracing:
  http:
    name: envoy.tracers.zipkin
    typed_config:
      "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
      collector_cluster: zipkin
      collector_endpoint: /api/v2/spans
      collector_endpoint_version: HTTP_JSON
      trace_id_128bit: true
      shared_span_context: {{shared}}
static_resources:
  listeners:
  - name: egress
    traffic_direction: OUTBOUND
    address: {socket_address: {address: 127.0.0.1, port_value: {{port:egress}}}}
    filter_chains: [{filters: [{{hcm}}]}]
  - name: plain
    address: {socket_address: {address: 127.0.0.1, port_value: {{port:plain}}}}
    filter_chains: [{filters: [{{hcm}}]}]
  - name: ingress
    traffic_direction: INBOUND
    address: {socket_address: {address: 127.0.0.1, port_value: {{port:ingress}}}}
    filter_chains: [{filters: [{{hcm}}]}]
  clusters:
  - name: a
    connect_timeout: 1s
    load_assignment:
      cluster_name: a
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{upstream:a}}}}}}]}]
  - name: zipkin
    connect_timeout: 1s
    load_assignment:
      cluster_name: zipkin
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{collector}}}}}}]}]
"#;

const HCM: &str = r#"{name: envoy.filters.network.http_connection_manager, typed_config: {
  "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager,
  stat_prefix: t, use_remote_address: true,
  internal_address_config: {cidr_ranges: [{address_prefix: 127.0.0.1, prefix_len: 32}]},
  tracing: {client_sampling: {value: 100}, random_sampling: {value: {{random}}}, overall_sampling: {value: 100},
    max_path_tag_length: 20,
    custom_tags: [
      {tag: lit, literal: {value: v1}},
      {tag: env, environment: {name: REMORA_TRACE_TEST_UNSET, default_value: dflt}},
      {tag: hdr, request_header: {name: x-tag, default_value: none}},
      {tag: md, metadata: {kind: {request: {}}, metadata_key: {key: envoy.filters.http.rbac, path: [{key: k}]}}}]},
  http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}],
  route_config: {virtual_hosts: [{name: v, domains: ["*"], routes: [
    {match: {prefix: /decorated}, route: {cluster: a}, decorator: {operation: my-operation}},
    {match: {prefix: /direct}, direct_response: {status: 503}},
    {match: {prefix: /}, route: {cluster: a}}]}]}}}"#;

/// A Zipkin collector: records every POSTed JSON array of spans.
struct Collector {
    port: u16,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Collector {
    fn start() -> Collector {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let rt = tests::upstream::runtime();
        let l = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = l.local_addr().unwrap().port();
        let s = spans.clone();
        rt.spawn(async move {
            loop {
                let Ok((io, _)) = l.accept().await else { return };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move {
                            let ok = req.method() == http::Method::POST && req.uri().path() == "/api/v2/spans";
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            if let (true, Ok(Value::Array(v))) = (ok, serde_json::from_slice::<Value>(&body)) {
                                s.lock().unwrap().extend(v);
                            }
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder().status(202).body(Full::new(bytes::Bytes::new())).unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                        .await;
                });
            }
        });
        Collector { port, spans }
    }

    /// Waits (generously: Envoy flushes every 5 s) until `n` spans arrived.
    fn wait_for(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.spans.lock().unwrap().clone();
            if v.len() >= n || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn bins_present() -> bool {
    let ok = tests::envoy_bin().is_some() && tests::remora_bin().ok().flatten().is_some();
    if !ok && std::env::var("REMORA_DIFF_REQUIRE").as_deref() == Ok("1") {
        panic!("the tracing differential needs ENVOY_BIN and REMORA_BIN");
    }
    ok
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

const TRACE: &str = "463ac35c9f6413ad48485a3953bb6124";
const SPAN: &str = "a2fb4a1d1a96d312";

/// What the upstream saw of a request's trace context, by shape.
fn upstream_view(j: &Value) -> Value {
    let h: BTreeMap<String, String> = j["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_str().unwrap().to_string()))
        .collect();
    let get = |n: &str| h.get(n).cloned();
    let shape = |v: Option<String>| match v {
        None => json!(null),
        Some(v) if v == TRACE || v == SPAN => json!(format!("incoming:{v}")),
        Some(v) if is_hex(&v, 32) => json!("hex32"),
        Some(v) if is_hex(&v, 16) => json!("hex16"),
        Some(v) => json!(v),
    };
    let trace = get("x-b3-traceid");
    let span = get("x-b3-spanid");
    // The single header by shape: each dash-separated part.
    let b3 = get("b3").map(|v| v.split('-').map(|p| shape(Some(p.to_string()))).collect::<Vec<_>>());
    json!({
        "traceid": shape(trace.clone()),
        "spanid": shape(span.clone()),
        "parentspanid": shape(get("x-b3-parentspanid")),
        "sampled": get("x-b3-sampled"),
        "b3": b3,
        "trace_low_is_span": trace.zip(span).map(|(t, s)| t.ends_with(&s)),
        "request_id_reason": get("x-request-id").and_then(|r| r.chars().nth(14)).map(|c| c.to_string()),
        "decorator_operation": get("x-envoy-decorator-operation"),
    })
}

/// A span by shape: ids by length and relation, tags by name with the stable values.
fn span_view(s: &Value, upstream: Option<&Value>) -> Value {
    let port = regex::Regex::new(r"127\.0\.0\.1:\d+").unwrap();
    let unport = |v: &str| port.replace_all(v, "127.0.0.1:PORT").into_owned();
    let mut tags = BTreeMap::new();
    if let Some(t) = s["tags"].as_object() {
        for (k, v) in t {
            let v = v.as_str().unwrap_or("?");
            let shown = match k.as_str() {
                "guid:x-request-id" => format!("uuid-reason:{}", v.chars().nth(14).unwrap_or('?')),
                "peer.address" | "response_size" => "<value>".to_string(),
                "http.url" => unport(v),
                _ => v.to_string(),
            };
            tags.insert(k.clone(), shown);
        }
    }
    let ep = &s["localEndpoint"];
    let id = s["id"].as_str().unwrap_or("");
    let trace = s["traceId"].as_str().unwrap_or("");
    json!({
        "name": unport(s["name"].as_str().unwrap_or("")),
        "kind": s["kind"],
        "shared": s["shared"],
        "id": is_hex(id, 16),
        "traceId": if is_hex(trace, 32) { "hex32" } else if is_hex(trace, 16) { "hex16" } else { trace },
        "trace_low_is_id": trace.ends_with(id),
        "parentId": s["parentId"].as_str().map(|p| if p == SPAN { "incoming".to_string() } else { format!("hex{}", p.len()) }),
        "timestamp": s["timestamp"].is_u64(),
        "annotations": s["annotations"].as_array().map(|a| a.iter().map(|x| json!([x["value"], x["timestamp"].is_u64()])).collect::<Vec<_>>()),
        "duration": s["duration"].is_u64(),
        "localEndpoint": {"serviceName": ep["serviceName"], "keys": ep.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>())},
        "tags": tags,
        // The span is the one whose context went upstream.
        "matches_upstream": upstream.map(|u| {
            let h = |n: &str| u["headers"].as_array().unwrap().iter().find(|p| p[0] == n).map(|p| p[1].clone());
            let single = h("b3").and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            (h("x-b3-spanid") == Some(json!(id)) && h("x-b3-traceid") == Some(json!(trace)))
                || single.starts_with(&format!("{trace}-{id}-"))
        }),
    })
}

struct Case {
    name: &'static str,
    listener: &'static str,
    req: Request,
}

fn cases(random: u32) -> Vec<Case> {
    let c = |name, listener, req| Case { name, listener, req };
    let mut v = vec![
        c("fresh", "egress", Request::get("/fresh/a/long/path/beyond/twenty").header("x-tag", "tv")),
        c("fresh-ingress", "ingress", Request::get("/fresh-ingress").header("user-agent", "ua/1")),
        c("fresh-plain", "plain", Request::get("/fresh-plain")),
        c("decorated-egress", "egress", Request::get("/decorated-e")),
        c("decorated-ingress", "ingress", Request::get("/decorated-i")),
        c(
            "decorated-ingress-override",
            "ingress",
            Request::get("/decorated-o").header("x-envoy-decorator-operation", "from-caller"),
        ),
        c("b3-flag-only", "egress", Request::get("/b3-flag-only").header("b3", "1")),
        c(
            "egress-response-operation",
            "egress",
            Request::get("/egress-response-op").header("x-echo-header", "x-envoy-decorator-operation: from-upstream"),
        ),
        c("forced", "egress", Request::get("/forced").header("x-envoy-force-trace", "1")),
        c(
            "incoming-multi",
            "egress",
            Request::get("/incoming-multi")
                .header("x-b3-traceid", TRACE)
                .header("x-b3-spanid", SPAN)
                .header("x-b3-sampled", "1"),
        ),
        c(
            "incoming-multi-ingress",
            "ingress",
            Request::get("/incoming-multi-ingress").header("x-b3-traceid", TRACE).header("x-b3-spanid", SPAN),
        ),
        c("incoming-single", "egress", Request::get("/incoming-single").header("b3", &format!("{TRACE}-{SPAN}-1"))),
        c("incoming-unsampled", "egress", Request::get("/incoming-unsampled").header("x-b3-sampled", "0")),
        c("malformed", "egress", Request::get("/malformed").header("b3", "not-a-context")),
        c("post-h2", "egress", Request::get("/post-h2").method("POST").body("12345").h2c()),
        c("direct-503", "egress", Request::get("/direct")),
    ];
    if random == 0 {
        v.push(c("client-trace-id", "egress", Request::get("/client-trace-id").header("x-client-trace-id", "c1")));
    }
    v
}

struct Run {
    upstream: BTreeMap<&'static str, Value>,
    spans: BTreeMap<&'static str, Value>,
    stats: Vec<(String, Option<i64>)>,
}

fn run(kind: Kind, random: u32, shared: bool, collector_up: bool) -> Run {
    let ups = Upstreams::start(&["a"]).unwrap();
    let collector = Collector::start();
    let mut vars = Vars::new();
    vars.set("upstream:a", ups.get("a").port());
    // A collector that is down: a port nothing listens on.
    vars.set("collector", if collector_up { collector.port } else { tests::process::free_port() });
    vars.set("shared", shared);
    vars.set("random", random);
    let hcm = vars.render(HCM).unwrap();
    vars.set("hcm", hcm);
    let p =
        Proxy::start(kind, BOOTSTRAP, vars, &Options::default()).unwrap_or_else(|e| panic!("{}: {e:#}", kind.name()));
    let mut upstream = BTreeMap::new();
    let mut raw_upstream = BTreeMap::new();
    let mut paths = BTreeMap::new();
    for case in cases(random) {
        let r = curl(p.port(case.listener), &case.req).unwrap();
        let view = match r.json() {
            Some(j) => {
                raw_upstream.insert(case.name, j.clone());
                let mut v = upstream_view(&j);
                v["response_decorator_operation"] = json!(r.header("x-envoy-decorator-operation"));
                v
            }
            None => json!({"status": r.status, "decorator_operation": r.header("x-envoy-decorator-operation")}),
        };
        upstream.insert(case.name, view);
        paths.insert(case.name, case.req.path.clone());
    }
    // Sampled spans, expected from the reference: wait until the collector has them.
    let expected = if !collector_up {
        0
    } else if random == 100 {
        14
    } else {
        5
    };
    let got = collector.wait_for(expected);
    // Then a little longer for any extra (a span the other proxy would not send).
    std::thread::sleep(Duration::from_millis(500));
    let got = if got.len() > expected { got } else { collector.spans.lock().unwrap().clone() };
    if std::env::var("REMORA_DIFF_DUMP").as_deref() == Ok("1") {
        for s in &got {
            eprintln!("{} span: {s}", kind.name());
        }
    }
    let mut spans = BTreeMap::new();
    for (name, path) in &paths {
        let mine: Vec<&Value> = got
            .iter()
            .filter(|s| {
                let url = s["tags"]["http.url"].as_str().unwrap_or("");
                let p = url.split_once("://").map(|(_, r)| &r[r.find('/').unwrap_or(r.len())..]).unwrap_or("");
                !p.is_empty()
                    && path.starts_with(p)
                    && (p.len() == 20 || p == path.as_str())
                    && s["tags"]["http.protocol"].is_string()
            })
            .collect();
        let v: Vec<Value> = mine.iter().map(|s| span_view(s, raw_upstream.get(name))).collect();
        spans.insert(*name, json!(v));
    }
    if !collector_up {
        // Envoy flushes every 5 s: wait for the attempt to fail.
        let deadline = Instant::now() + Duration::from_secs(20);
        while p.stat("tracing.zipkin.reports_dropped").unwrap_or(0) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let stats = ["tracing.zipkin.reports_sent", "tracing.zipkin.spans_sent", "tracing.zipkin.reports_dropped"]
        .iter()
        .map(|s| (s.to_string(), p.stat(s).map(|v| v.min(1))))
        .collect();
    drop(p);
    Run { upstream, spans, stats }
}

fn compare(random: u32, shared: bool, collector_up: bool) {
    if !bins_present() {
        return;
    }
    let envoy = run(Kind::Envoy, random, shared, collector_up);
    let remora = run(Kind::Remora, random, shared, collector_up);
    let mut diffs = Vec::new();
    for (name, e) in &envoy.upstream {
        let r = &remora.upstream[name];
        if e != r {
            diffs.push(format!("{name}: upstream headers\n  envoy:  {e}\n  remora: {r}"));
        }
        let (es, rs) = (&envoy.spans[name], &remora.spans[name]);
        if es != rs {
            diffs.push(format!("{name}: spans\n  envoy:  {es}\n  remora: {rs}"));
        }
    }
    if envoy.stats != remora.stats {
        diffs.push(format!("stats: envoy {:?} remora {:?}", envoy.stats, remora.stats));
    }
    // The reference itself must show what the cases are about.
    assert_eq!(envoy.upstream["incoming-multi"]["parentspanid"], json!(format!("incoming:{SPAN}")));
    assert_eq!(envoy.upstream["fresh"]["traceid"], "hex32");
    if !collector_up {
        assert_eq!(envoy.stats[2], ("tracing.zipkin.reports_dropped".to_string(), Some(1)), "{:?}", envoy.stats);
    }
    let sampled = if random == 100 { "1" } else { "0" };
    assert_eq!(envoy.upstream["fresh"]["sampled"], sampled);
    assert!(diffs.is_empty(), "random_sampling {random}: {} differences:\n{}", diffs.len(), diffs.join("\n"));
}

#[test]
fn tracing_with_random_sampling_100_matches_envoy() {
    compare(100, false, true);
}

#[test]
fn tracing_with_random_sampling_0_matches_envoy() {
    compare(0, false, true);
}

/// Envoy's default: an INBOUND span joining an incoming context shares its span id.
#[test]
fn shared_span_context_matches_envoy() {
    compare(100, true, true);
}

/// The collector is down: every request is still answered, the reports are dropped and counted.
#[test]
fn collector_down_matches_envoy() {
    compare(100, false, false);
}

/// `--mode validate` reaches Envoy's verdict on the collector's cluster: unknown is an error once
/// an HCM traces with the tracer.
#[test]
fn unknown_collector_cluster_is_refused_as_envoy() {
    if !bins_present() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("remora-diff-tracing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (collector, ok) in [("zipkin", true), ("nope", false)] {
        let mut vars = Vars::new();
        vars.set("upstream:a", 1);
        vars.set("collector", 2);
        vars.set("random", 100);
        vars.set("shared", false);
        let hcm = vars.render(HCM).unwrap();
        vars.set("hcm", hcm);
        let yaml = vars
            .render(BOOTSTRAP)
            .unwrap()
            .replace("collector_cluster: zipkin", &format!("collector_cluster: {collector}"));
        let path = dir.join(format!("{collector}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        for bin in [tests::envoy_bin().unwrap(), tests::remora_bin().unwrap().unwrap()] {
            let out = std::process::Command::new(&bin).args(["--mode", "validate", "-c"]).arg(&path).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.success(), ok, "{} on {collector}: {text}", bin.display());
            if !ok {
                assert!(text.contains("envoy.tracers.zipkin: unknown cluster 'nope'"), "{text}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
