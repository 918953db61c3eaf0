//! VirtualService and DestinationRule features of the seed meshes, on the mesh of
//! tests/data/routes/routes.yaml: the generated routes and clusters are istiod's (per-subset and
//! port-level policies merged as istiod merges them, the pool on inbound clusters, LEAST_REQUEST, mirrors, rewrites, redirects,
//! header operations, sourceLabels); bad input is refused with file, document, field and reason;
//! and end to end through `remora-demo` a client sees cookie, header and query A/B routing, the
//! mirror target receive every request (100 %) or about one in ten (10 %), rewrites, redirects,
//! a direct response, header set/add/remove as the app sees them, and sourceLabels routing; the
//! same run with Envoy as every proxy (`remora demo --envoy`) is the oracle.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Demo, envoy_bin, stat};
use mesh::xds::{self, Proxy};
use serde_json::{Value, json};

/// The folder of the test mesh.
fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/routes")
}

fn data() -> PathBuf {
    data_dir().join("routes.yaml")
}

/// A folder holding tests/data/routes/routes.yaml with `edit` applied.
fn mesh_dir(edit: impl Fn(String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text = edit(std::fs::read_to_string(data()).unwrap());
    std::fs::write(dir.path().join("routes.yaml"), text).unwrap();
    dir
}

fn load() -> mesh::model::Mesh {
    let d = mesh_dir(|t| t);
    mesh::runner::load(d.path()).unwrap()
}

fn cluster<'a>(cs: &'a [Value], name: &str) -> &'a Value {
    cs.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no cluster {name}"))
}

const MAX: u64 = 4294967295;

#[test]
fn subset_and_port_policies_merge_as_istiod_merges_them() {
    let mesh = load();
    let pod = mesh.pods.iter().find(|p| p.name == "front-0").unwrap();
    let cs = xds::clusters(&mesh, &Proxy::Sidecar(pod));
    let thresholds = |c: &Value| c["circuit_breakers"]["thresholds"][0].clone();
    // The rule's policy: LEAST_REQUEST, its pool, its outlier detection.
    for name in ["outbound|9080||shop.default.svc.cluster.local", "outbound|9080|v2|shop.default.svc.cluster.local"] {
        let c = cluster(&cs, name);
        assert_eq!(c["lb_policy"], "LEAST_REQUEST", "{name}");
        let t = thresholds(c);
        assert_eq!(
            (&t["max_connections"], &t["max_requests"], &t["max_pending_requests"]),
            (&json!(100), &json!(1000), &json!(64))
        );
        assert_eq!(c["outlier_detection"]["consecutive_5xx"], 5);
        assert_eq!(c["outlier_detection"]["consecutive_gateway_failure"], 3);
        assert_eq!(c["outlier_detection"]["interval"], "10s");
        assert_eq!(c["outlier_detection"]["base_ejection_time"], "30s");
        assert_eq!(c["outlier_detection"]["max_ejection_percent"], 50);
        assert!(c.get("typed_extension_protocol_options").is_none(), "{name}");
    }
    // Subset v1's policy replaces the load balancer and the whole connection pool (so the
    // rule's limits are gone) and keeps the rule's outlier detection.
    let v1 = cluster(&cs, "outbound|9080|v1|shop.default.svc.cluster.local");
    assert_eq!(v1["lb_policy"], "ROUND_ROBIN");
    let t = thresholds(v1);
    assert_eq!((&t["max_connections"], &t["max_requests"]), (&json!(MAX), &json!(MAX)));
    assert_eq!(v1["outlier_detection"]["consecutive_5xx"], 5);
    let o = &v1["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    assert_eq!(o["common_http_protocol_options"], json!({"idle_timeout": "30s", "max_requests_per_connection": 10}));
    assert_eq!(o["explicit_http_config"], json!({"http_protocol_options": {}}));
    // A port-level setting replaces the rule's policy for that port: RANDOM, default limits.
    for subset in ["", "v1", "v2"] {
        let c = cluster(&cs, &format!("outbound|9081|{subset}|ratings.default.svc.cluster.local"));
        assert_eq!(c["lb_policy"], "RANDOM");
        assert_eq!(thresholds(c)["max_connections"], MAX);
    }
    // Server side, the served service's pool (for the service port) limits the inbound cluster.
    let inbound = |pod: &str, name: &str| {
        let pod = mesh.pods.iter().find(|p| p.name == pod).unwrap();
        thresholds(cluster(&xds::clusters(&mesh, &Proxy::Sidecar(pod)), name))
    };
    let t = inbound("shop-v2-0", "inbound|9080||");
    assert_eq!((&t["max_connections"], &t["max_requests"]), (&json!(100), &json!(1000)));
    assert_eq!(inbound("ratings-v1-0", "inbound|9081||")["max_connections"], MAX);
    // No DestinationRule policy: istiod's default LEAST_REQUEST.
    assert_eq!(cluster(&cs, "outbound|9082|v1|catalog.default.svc.cluster.local")["lb_policy"], "LEAST_REQUEST");
}

fn routes_of<'a>(configs: &'a [Value], config: &str, vhost: &str) -> &'a Vec<Value> {
    let c = configs.iter().find(|c| c["name"] == config).unwrap_or_else(|| panic!("no route config {config}"));
    let vh = c["virtual_hosts"].as_array().unwrap().iter().find(|v| v["name"] == vhost).unwrap();
    vh["routes"].as_array().unwrap()
}

fn named<'a>(routes: &'a [Value], name: &str) -> &'a Value {
    routes.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no route {name}"))
}

#[test]
fn gateway_routes_are_istiods() {
    let mesh = load();
    let gw = xds::gateway_route_configs(&mesh);
    let routes = routes_of(&gw, "http.80", "shop.example.com:80");
    let names: Vec<&str> = routes.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["premium-cookie", "tier", "variant", "moved", "secure", "gone", "api", "items", "decorate.echo", "default"]
    );
    let cookie = named(routes, "premium-cookie");
    assert_eq!(
        cookie["match"],
        json!({"prefix": "/", "case_sensitive": true, "headers": [{"name": "cookie",
            "string_match": {"safe_regex": {"regex": "^(.*?;)?(user=premium)(;.*)?$"}}}]})
    );
    assert_eq!(cookie["route"]["cluster"], "outbound|9080|v2|shop.default.svc.cluster.local");
    assert_eq!(
        named(routes, "variant")["match"]["query_parameters"],
        json!([{"name": "variant", "string_match": {"exact": "b"}}])
    );
    assert_eq!(
        named(routes, "moved")["redirect"],
        json!({"host_redirect": "new.example.com", "path_redirect": "/new", "response_code": "FOUND"})
    );
    assert_eq!(
        named(routes, "secure")["redirect"],
        json!({"scheme_redirect": "https", "response_code": "MOVED_PERMANENTLY"})
    );
    assert_eq!(named(routes, "moved")["decorator"]["operation"], "shop-edge:80/old*");
    assert_eq!(
        named(routes, "gone")["direct_response"],
        json!({"status": 410, "body": {"inline_string": "gone for good"}})
    );
    let api = &named(routes, "api")["route"];
    assert_eq!((&api["prefix_rewrite"], &api["host_rewrite_literal"]), (&json!("/headers/"), &json!("shop.internal")));
    assert_eq!(
        named(routes, "items")["route"]["regex_rewrite"],
        json!({"pattern": {"regex": "^/items/([0-9]+)$"}, "substitution": "/headers/item-\\1"})
    );
    let deco = named(routes, "decorate.echo");
    assert_eq!(deco["match"]["case_sensitive"], false);
    assert_eq!(deco["match"]["headers"], json!([{"name": "x-plain", "present_match": true, "invert_match": true}]));
    assert_eq!(
        deco["request_headers_to_add"],
        json!([{"header": {"key": "x-added", "value": "yes"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
               {"header": {"key": "x-tag", "value": "demo"}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}])
    );
    assert_eq!(deco["request_headers_to_remove"], json!(["x-secret"]));
    assert_eq!(deco["response_headers_to_remove"], json!(["content-type"]));
    let default = &named(routes, "default")["route"];
    assert_eq!(default["timeout"], "0s");
    assert_eq!(
        default["request_mirror_policies"],
        json!([{"cluster": "outbound|9080|v2|shop.default.svc.cluster.local",
            "runtime_fraction": {"default_value": {"numerator": 1000000, "denominator": "MILLION"}}, "trace_sampled": false}])
    );
    assert_eq!(named(routes, "default")["decorator"]["operation"], "shop.default.svc.cluster.local:9080/*");
    let catalog = &routes_of(&gw, "http.80", "catalog.example.com:80")[0]["route"];
    assert_eq!(
        catalog["request_mirror_policies"][0]["runtime_fraction"]["default_value"],
        json!({"numerator": 100000, "denominator": "MILLION"})
    );
}

#[test]
fn source_labels_pick_the_sidecars_that_get_a_rule() {
    let mesh = load();
    let pod = |n: &str| mesh.pods.iter().find(|p| p.name == n).unwrap();
    let front = xds::sidecar_route_configs(&mesh, "default", &pod("front-0").labels);
    let routes = routes_of(&front, "9081", "ratings.default.svc.cluster.local:9081");
    assert_eq!(routes[0]["name"], "from-front");
    assert_eq!(routes[0]["route"]["cluster"], "outbound|9081|v2|ratings.default.svc.cluster.local");
    // A catch-all match ends the route list, as istiod stops there.
    assert_eq!(routes.len(), 1);
    let shop = xds::sidecar_route_configs(&mesh, "default", &pod("shop-v1-0").labels);
    let routes = routes_of(&shop, "9081", "ratings.default.svc.cluster.local:9081");
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0]["name"], "everyone");
    let retry = &routes[0]["route"]["retry_policy"];
    assert_eq!(retry["retry_priority"]["name"], "envoy.retry_priorities.previous_priorities");
    assert_eq!(retry["retry_priority"]["typed_config"]["update_frequency"], 2);
    assert_eq!(retry["num_retries"], 2);
    assert_eq!(retry["retry_on"], "5xx");
    // Every resource of both proxies encodes as Envoy's types.
    mesh::resources(&mesh, &Proxy::Sidecar(pod("front-0"))).unwrap();
    mesh::resources(&mesh, &Proxy::Gateway { bind: &[(80, 18080)] }).unwrap();
}

/// The refusal for tests/data/routes/routes.yaml with `from` replaced by `to`.
fn refusal(from: &str, to: &str) -> String {
    let d = mesh_dir(|t| {
        assert!(t.contains(from), "{from} not in the test mesh");
        t.replacen(from, to, 1)
    });
    mesh::runner::load(d.path()).expect_err("must be refused").to_string()
}

#[test]
fn unsupported_or_wrong_fields_are_refused_with_file_document_field_and_reason() {
    let cases = [
        (
            "  - name: tier\n",
            "  - name: tier\n    corsPolicy: {allowOrigins: [{exact: a.example.com}]}\n",
            "VirtualService shop-edge: spec.http[1].corsPolicy",
            "CORS filter",
        ),
        (
            "    loadBalancer: {simple: LEAST_REQUEST}\n",
            "    loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n",
            "DestinationRule shop: spec.trafficPolicy.loadBalancer.consistentHash",
            "consistent hashing is not supported",
        ),
        (
            "loadBalancer: {simple: ROUND_ROBIN}",
            "loadBalancer: {simple: PASSTHROUGH}",
            "DestinationRule shop: spec.subsets[0].trafficPolicy.loadBalancer.simple",
            "original destination",
        ),
        (
            "      loadBalancer: {simple: RANDOM}",
            "      loadBalancer: {simple: FASTEST}",
            "DestinationRule ratings: spec.trafficPolicy.portLevelSettings[0].loadBalancer.simple",
            "FASTEST",
        ),
        (
            "mirror: {host: shop, subset: v2}",
            "mirror: {host: shop, subset: v9}",
            "VirtualService shop-edge: spec.http[9].mirror.subset",
            "no DestinationRule for 'shop.default.svc.cluster.local' defines subset 'v9'",
        ),
        ("redirectCode: 302", "redirectCode: 305", "spec.http[3].redirect.redirectCode", "305"),
        (
            "redirect: {scheme: https}",
            "redirect: {scheme: https}\n    route: [{destination: {host: shop}}]",
            "spec.http[4].redirect",
            "both route and redirect",
        ),
        (
            "directResponse: {status: 410, body: {string: \"gone for good\"}}",
            "directResponse: {status: 410}\n    timeout: 1s",
            "spec.http[5].timeout",
            "no effect on a directResponse rule",
        ),
        (
            "queryParams: {variant: {exact: b}}",
            "queryParams: {variant: {prefix: b}}",
            "spec.http[2].match[0].queryParams.variant",
            "prefix",
        ),
        (
            "set: {x-added: \"yes\"}",
            "set: {x-added: \"yes\", \":path\": /x}",
            "spec.http[8].headers.request.set.:path",
            "pseudo-headers",
        ),
        (
            "mirrorPercentage: {value: 100}",
            "mirrorPercentage: {value: 150}",
            "spec.http[9].mirrorPercentage.value",
            "150",
        ),
        (
            "mirrorPercentage: {value: 100}",
            "mirrorPercentag: {value: 100}",
            "spec.http[9]",
            "unknown field `mirrorPercentag`",
        ),
        (
            "http: {maxRequestsPerConnection: 10, idleTimeout: 30s}",
            "http: {maxRequestsPerConnection: 10, idleTimeout: soon}",
            "DestinationRule shop: spec.subsets[0].trafficPolicy.connectionPool.http.idleTimeout",
            "bad duration 'soon'",
        ),
    ];
    for (from, to, field, reason) in cases {
        let e = refusal(from, to);
        assert!(e.contains("routes.yaml"), "{e}");
        assert!(e.contains(field), "want {field}: {e}");
        assert!(e.contains(reason), "want {reason}: {e}");
    }
}

// ---- end to end ----

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {} {}", self.status, self.body))
    }
}

/// One HTTP/1.1 GET with a Host and extra headers.
fn get(addr: &str, host: &str, path: &str, extra: &[(&str, &str)]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.get(9..12)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    Reply { status, headers, body: body.to_string() }
}

/// The version of the shop pod that answered.
fn version(r: &Reply) -> String {
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["version"].as_str().unwrap().to_string()
}

/// Requests the sidecar at `admin` passed to its app (the inbound cluster's counter).
fn inbound_requests(admin: u64, port: u16) -> u64 {
    stat(admin, &format!("inbound|{port}||.upstream_rq_total"))
}

/// The counter once it stops moving (mirrored requests are sent after the response).
fn settled(f: impl Fn() -> u64) -> u64 {
    let mut last = f();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = f();
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

#[test]
fn a_client_sees_the_routing_features_on_remora() {
    client_view(None);
}

/// The same assertions with Envoy as every proxy on the same control-plane output: the oracle.
#[test]
fn a_client_sees_the_routing_features_on_envoy() {
    if let Some(envoy) = envoy_bin() {
        client_view(Some(&envoy));
    }
}

fn client_view(envoy: Option<&Path>) {
    let demo = Demo::start(&data_dir(), &[], envoy);
    let admin = |pod: &str| demo.admin(pod);
    let gw = demo.gateway();
    let shop = |path: &str, extra: &[(&str, &str)]| get(&gw, "shop.example.com", path, extra);

    // Mirror at 100 %: every request answered by v1 is also received by v2.
    let v2 = admin("shop-v2-0");
    let before = settled(|| inbound_requests(v2, 9080));
    for _ in 0..20 {
        assert_eq!(version(&shop("/", &[])), "v1");
    }
    let mirrored = settled(|| inbound_requests(v2, 9080)) - before;
    assert_eq!(mirrored, 20, "shop v2 received {mirrored} mirrored requests of 20");

    // A/B routing by cookie, by header, by query parameter.
    // The regex as users write it (Istio's docs): `user=premium` first, or right after a `;`.
    assert_eq!(version(&shop("/", &[("cookie", "session=abc;user=premium;theme=dark")])), "v2");
    assert_eq!(version(&shop("/", &[("cookie", "user=premium")])), "v2");
    assert_eq!(version(&shop("/", &[("cookie", "user=premiumx; a=b")])), "v1");
    assert_eq!(version(&shop("/", &[("x-user-tier", "premium")])), "v2");
    assert_eq!(version(&shop("/", &[("x-user-tier", "basic")])), "v1");
    assert_eq!(version(&shop("/?variant=b", &[])), "v2");
    assert_eq!(version(&shop("/?variant=a", &[])), "v1");

    // Redirects and a direct response, as the client sees them.
    let r = shop("/old/page", &[]);
    assert_eq!((r.status, r.header("location")), (302, Some("http://new.example.com/new")), "{:?}", r.headers);
    let r = shop("/login", &[]);
    assert_eq!((r.status, r.header("location")), (301, Some("https://shop.example.com/login")), "{:?}", r.headers);
    let r = shop("/gone/x", &[]);
    assert_eq!((r.status, r.body.as_str()), (410, "gone for good"));

    // Rewrites, as the app sees them.
    let r = shop("/api/orders?id=7", &[]).json();
    assert_eq!(r["path"], "/headers/orders?id=7");
    assert_eq!(r["headers"]["host"], "shop.internal");
    assert_eq!(shop("/items/42", &[]).json()["path"], "/headers/item-42");

    // Header set/add/remove: the app sees the request's, the client the response's.
    let r = shop("/headers", &[("x-secret", "s3"), ("x-tag", "client")]);
    assert_eq!(r.header("x-served-by"), Some("remora-demo"));
    assert_eq!(r.header("content-type"), None, "{:?}", r.headers);
    let h = &r.json()["headers"];
    assert_eq!(h["x-added"], "yes");
    assert_eq!(h["x-tag"], "client, demo");
    assert!(h.get("x-secret").is_none(), "{h}");
    // ignoreUriCase; withoutHeaders sends the request to the next rule.
    assert_eq!(shop("/HEADERS", &[]).header("x-served-by"), Some("remora-demo"));
    let r = shop("/headers", &[("x-plain", "1")]);
    assert_eq!(r.header("x-served-by"), None);
    assert!(r.json()["headers"].get("x-added").is_none());

    // Mirror at 10 %: catalog v2 receives about one request in ten.
    let c2 = admin("catalog-v2-0");
    let before = settled(|| inbound_requests(c2, 9082));
    let n = 300;
    for _ in 0..n {
        let r = get(&gw, "catalog.example.com", "/", &[]);
        assert_eq!(r.json()["version"], "v1");
    }
    let mirrored = settled(|| inbound_requests(c2, 9082)) - before;
    let who = if envoy.is_some() { "Envoy" } else { "remora" };
    eprintln!("10 % mirror ({who}): catalog v2 received {mirrored} of {n}");
    assert!((10..=60).contains(&mirrored), "catalog v2 received {mirrored} of {n} (10 % mirror)");

    // sourceLabels: front's sidecar routes ratings to v2, shop's to v1.
    let r = get(&gw, "front.example.com", "/call/ratings:9081/", &[]).json();
    assert_eq!((&r["service"], &r["upstream"]["version"]), (&json!("front"), &json!("v2")), "{r}");
    let r = shop("/call/ratings:9081/", &[]).json();
    assert_eq!((&r["version"], &r["upstream"]["version"]), (&json!("v1"), &json!("v1")), "{r}");
    demo.stop();
}
