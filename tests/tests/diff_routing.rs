//! Differential suite "routing" (tests/configs/diff_routing.yaml): virtual-host domain
//! precedence, every route matcher, route actions (cluster, weighted_clusters, cluster_header,
//! rewrites, host rewrites, timeouts, retries), redirects, direct responses and local replies,
//! over HTTP/1.1 and h2c.

use std::time::Duration;

use tests::diff::{Case, Suite};
use tests::{Proto, Request};

fn get(path: &str) -> Request {
    Request::get(path)
}

fn domains(s: &mut Suite) {
    for (name, host, vhost) in [
        ("exact", "www.example.com", "exact"),
        ("exact-uppercase", "WWW.Example.COM", "exact"),
        ("suffix", "foo.example.com", "suffix"),
        ("suffix-longest-wins", "x.api.example.com", "suffix-longer"),
        ("suffix-beats-prefix", "www.other.example.com", "suffix"),
        ("prefix", "www.other.org", "prefix"),
        ("prefix-longest-wins", "www.example.org", "prefix-longer"),
        ("prefix-longer", "www.example.net", "prefix-longer"),
        ("exact-with-port", "ported.test:8080", "port"),
        ("host-with-port-falls-through", "www.example.com:8080", "prefix-longer"),
        ("wildcard", "other.test", "default"),
    ] {
        s.add_both(
            Case::new(&format!("domain/{name}"), get("/").host(host))
                .expect_status(200)
                .expect_seen("x-vhost", Some(vhost)),
        );
    }
    s.add_both(
        Case::new("domain/no-route-in-vhost", get("/other").host("noroute.test")).expect_status(404).expect_local(),
    );
    s.add_both(
        Case::new("domain/route-in-vhost", get("/only").host("noroute.test")).expect_status(200).expect_upstream("a"),
    );
}

fn path_matchers(s: &mut Suite) {
    let cases: &[(&str, &str, &str)] = &[
        ("path/exact", "/exact/path", "path"),
        ("path/exact-with-query", "/exact/path?a=b", "path"),
        ("path/exact-longer-misses", "/exact/path/x", "catch-all"),
        ("path/exact-case-differs", "/Exact/Path", "catch-all"),
        ("path/case-insensitive", "/caseless", "path-ci"),
        ("path/case-insensitive-upper", "/CASELESS", "path-ci"),
        ("prefix/case-insensitive", "/prefix/ci/more", "prefix-ci"),
        ("psp/exact", "/psp", "psp"),
        ("psp/segment", "/psp/more", "psp"),
        ("psp/query", "/psp?x=1", "psp"),
        ("psp/not-a-segment", "/pspx", "catch-all"),
        ("regex/full-match", "/re/123", "regex"),
        ("regex/with-query", "/re/123?z=1", "regex"),
        ("regex/partial-misses", "/re/12a", "catch-all"),
        ("regex/prefix-only-misses", "/re/", "catch-all"),
        ("catch-all", "/anything/else", "catch-all"),
    ];
    for (name, path, route) in cases {
        s.add_both(Case::new(name, get(path)).expect_status(200).expect_seen("x-route", Some(route)));
    }
}

fn header_matchers(s: &mut Suite) {
    type HeaderCase<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[HeaderCase] = &[
        ("hdr/exact", "GET", &[("x-h", "v")], "hdr-exact"),
        ("hdr/exact-case-sensitive", "GET", &[("x-h", "V")], "hdr-fallback"),
        ("hdr/prefix", "GET", &[("x-h", "prefixed")], "hdr-prefix"),
        ("hdr/suffix", "GET", &[("x-h", "the-suf")], "hdr-suffix"),
        ("hdr/contains", "GET", &[("x-h", "amidst")], "hdr-contains"),
        ("hdr/regex", "GET", &[("x-h", "r42")], "hdr-regex"),
        ("hdr/regex-full-match-only", "GET", &[("x-h", "r42x")], "hdr-fallback"),
        ("hdr/ignore-case", "GET", &[("x-h", "iGnOrEcAsE")], "hdr-ignore-case"),
        ("hdr/present", "GET", &[("x-present", "")], "hdr-present"),
        ("hdr/present-with-value", "GET", &[("x-present", "1")], "hdr-present"),
        ("hdr/all-must-match", "GET", &[("x-h", "two"), ("x-h2", "two")], "hdr-both"),
        ("hdr/one-of-two", "GET", &[("x-h", "two")], "hdr-fallback"),
        ("hdr/none", "GET", &[], "hdr-fallback"),
        ("hdr/absent", "GET", &[], "absent"),
        ("hdr/absent-but-present", "GET", &[("x-absent", "1")], "absent-fallback"),
        ("hdr/invert-other-value", "GET", &[("x-inv", "yes")], "invert"),
        ("hdr/invert-same-value", "GET", &[("x-inv", "no")], "invert-fallback"),
        // A missing header does not match, inverted or not.
        ("hdr/invert-missing", "GET", &[], "invert-fallback"),
        ("hdr/method-post", "POST", &[], "method-post"),
        ("hdr/method-get", "GET", &[], "method-other"),
        ("hdr/method-put", "PUT", &[], "method-other"),
    ];
    for (name, method, headers, route) in cases {
        let path = match *name {
            n if n.starts_with("hdr/absent") => "/absent",
            n if n.starts_with("hdr/invert") => "/invert",
            n if n.starts_with("hdr/method") => "/method",
            _ => "/hdr",
        };
        let mut req = get(path).method(method);
        for (k, v) in *headers {
            req = req.header(k, v);
        }
        s.add_both(Case::new(name, req).expect_status(200).expect_seen("x-route", Some(route)));
    }
    s.add_both(
        Case::new("hdr/pseudo-authority", get("/pseudo").host("auth.test"))
            .expect_status(200)
            .expect_seen("x-route", Some("pseudo-authority")),
    );
    s.add_both(
        Case::new("hdr/pseudo-path", get("/pseudo?x=1")).expect_status(200).expect_seen("x-route", Some("pseudo-path")),
    );
    s.add_both(
        Case::new("hdr/pseudo-none", get("/pseudo?x=2"))
            .expect_status(200)
            .expect_seen("x-route", Some("pseudo-fallback")),
    );
}

fn query_and_runtime(s: &mut Suite) {
    for (name, path, route) in [
        ("query/exact", "/query?q=1", "query-exact"),
        ("query/exact-among-others", "/query?a=b&q=1&c", "query-exact"),
        ("query/exact-other-value", "/query?q=2", "query-fallback"),
        ("query/present", "/query?p", "query-present"),
        ("query/present-with-value", "/query?p=anything", "query-present"),
        ("query/regex", "/query?r=abc", "query-regex"),
        ("query/regex-no-full-match", "/query?r=abc1", "query-fallback"),
        ("query/none", "/query", "query-fallback"),
        ("runtime/zero-never-100-always", "/rt", "rt-100"),
    ] {
        s.add_both(Case::new(name, get(path)).expect_status(200).expect_seen("x-route", Some(route)));
    }
    s.add(
        Case::new("runtime/half", get("/half")).distribution(400, 0.11).expect_share("a", 0.5).expect_share("b", 0.5),
    );
}

fn actions(s: &mut Suite) {
    s.add(
        Case::new("weighted/80-20", get("/weighted"))
            .distribution(400, 0.09)
            .expect_share("a", 0.8)
            .expect_share("b", 0.2),
    );
    s.add(
        Case::new("weighted/80-20/h2c", get("/weighted").h2c())
            .distribution(400, 0.09)
            .expect_share("a", 0.8)
            .expect_share("b", 0.2),
    );
    s.add_both(Case::new("cluster-header/b", get("/cluster-header").header("x-cluster", "b")).expect_upstream("b"));
    s.add_both(Case::new("cluster-header/c", get("/cluster-header").header("x-cluster", "c")).expect_upstream("c"));
    s.add_both(Case::new("cluster-header/missing", get("/cluster-header")).expect_local());
    s.add_both(Case::new("cluster-header/unknown", get("/cluster-header").header("x-cluster", "nope")).expect_local());
    s.add_both(Case::new("prefix-rewrite", get("/prefix-rewrite/x/y?q=1")).expect_path("/rewritten/x/y?q=1"));
    s.add_both(Case::new("prefix-rewrite/strip", get("/strip-prefix/rest")).expect_path("//rest"));
    s.add_both(Case::new("regex-rewrite", get("/regex-rewrite/one/two/three?q")).expect_path("/two/three/one?q"));
    s.add_both(
        Case::new("host-rewrite-literal", get("/host-literal").host("orig.test"))
            .expect_authority("rewritten.example")
            .expect_seen("x-envoy-original-host", Some("orig.test"))
            .expect_seen("x-forwarded-host", None),
    );
    s.add_both(
        Case::new("auto-host-rewrite", get("/auto-host").host("orig.test"))
            .expect_upstream("c")
            .expect_authority("localhost"),
    );
    s.add_both(
        Case::new("auto-host-rewrite/off", get("/no-auto-host").host("orig.test"))
            .expect_upstream("c")
            .expect_authority("orig.test"),
    );
    s.add_both(
        Case::new("timeout/504", get("/timeout").header("x-echo-delay-ms", "1500"))
            .expect_status(504)
            .expect_body("upstream request timeout")
            .expect_resp("content-type", Some("text/plain")),
    );
    s.add_both(Case::new("timeout/in-time", get("/timeout").header("x-echo-delay-ms", "20")).expect_status(200));
    s.add_both(
        Case::new("timeout/expected-header", get("/timeout"))
            .expect_seen("x-envoy-expected-rq-timeout-ms", Some("300")),
    );
    s.add_both(
        Case::new("timeout/default-15s", get("/default")).expect_seen("x-envoy-expected-rq-timeout-ms", Some("15000")),
    );
    s.add_both(Case::new("timeout/disabled", get("/no-timeout")).expect_seen("x-envoy-expected-rq-timeout-ms", None));
    // gRPC timeouts. The deprecated max_grpc_timeout / grpc_timeout_offset (what istiod sets):
    // a gRPC request's grpc-timeout, shortened by the offset then capped, is the timeout, and is
    // sent upstream rewritten in milliseconds. A route with max_stream_duration uses Envoy's
    // "new timeouts": the route timeout no longer applies (no x-envoy-expected-rq-timeout-ms),
    // the stream is bounded by grpc-timeout (capped by grpc_timeout_header_max, then shortened)
    // or by max_stream_duration.
    let grpc = |path: &str, timeout: Option<&str>| {
        let r = get(path).header("content-type", "application/grpc");
        match timeout {
            Some(t) => r.header("grpc-timeout", t),
            None => r,
        }
    };
    for (name, req, want, grpc_seen) in [
        ("grpc/legacy-fields", grpc("/grpc-legacy", Some("700m")), Some("500"), Some("500m")),
        ("grpc/legacy-cap", grpc("/grpc-legacy", Some("3S")), Some("1000"), Some("1000m")),
        ("grpc/legacy-no-header-is-max", grpc("/grpc-legacy", None), Some("1000"), Some("1000m")),
        ("grpc/legacy-not-grpc", get("/grpc-legacy").header("grpc-timeout", "700m"), Some("15000"), Some("700m")),
        ("grpc/legacy-istio-zero", grpc("/grpc-istio", Some("2S")), Some("2000"), Some("2000m")),
        ("grpc/legacy-istio-zero-no-header", grpc("/grpc-istio", None), None, None),
        ("grpc/new-under-max", grpc("/grpc-max", Some("500m")), None, Some("500m")),
        ("grpc/new-capped", grpc("/grpc-max", Some("10S")), None, Some("2000m")),
        ("grpc/new-no-header-no-limit", grpc("/grpc-max", None), None, None),
        ("grpc/new-not-grpc", get("/grpc-max").header("grpc-timeout", "500m"), None, Some("500m")),
        ("grpc/new-no-cap", grpc("/grpc-nocap", Some("7S")), None, Some("7000m")),
        ("grpc/new-offset", grpc("/grpc-offset", Some("700m")), None, Some("600m")),
    ] {
        s.add_both(
            Case::new(name, req)
                .expect_status(200)
                .expect_seen("x-envoy-expected-rq-timeout-ms", want)
                .expect_seen("grpc-timeout", grpc_seen),
        );
    }
    s.add_both(
        Case::new("stream-duration/exceeded", get("/stream-max").header("x-echo-delay-ms", "1500"))
            .expect_status(504)
            .expect_body("downstream duration timeout"),
    );
    s.add_both(
        Case::new("stream-duration/in-time", get("/stream-max").header("x-echo-delay-ms", "20"))
            .expect_status(200)
            .expect_seen("x-envoy-expected-rq-timeout-ms", None),
    );
    s.add_both(
        // An external request's x-envoy-* control headers are stripped and not honoured.
        Case::new("timeout/client-header-external", get("/default").header("x-envoy-upstream-rq-timeout-ms", "1234"))
            .expect_seen("x-envoy-expected-rq-timeout-ms", Some("15000"))
            .expect_seen("x-envoy-upstream-rq-timeout-ms", None),
    );
}

/// `x-echo-fail-first: n` + knobs: the first n attempts fail that way.
fn failing(path: &str, n: u32, knobs: &[(&str, &str)]) -> Request {
    let mut r = get(path).header("x-echo-fail-first", &n.to_string());
    for (k, v) in knobs {
        r = r.header(k, v);
    }
    r
}

fn retries(s: &mut Suite) {
    let s503 = [("x-echo-status", "503")];
    let s500 = [("x-echo-status", "500")];
    let s502 = [("x-echo-status", "502")];
    let reset = [("x-echo-reset", "1")];
    s.add_both(Case::new("retry/5xx/recovers", failing("/retry/5xx", 2, &s503)).expect_status(200).expect_attempts(3));
    s.add_both(Case::new("retry/5xx/exhausted", failing("/retry/5xx", 5, &s503)).expect_status(503).expect_attempts(3));
    s.add_both(Case::new("retry/5xx/500", failing("/retry/5xx", 1, &s500)).expect_status(200).expect_attempts(2));
    s.add_both(Case::new("retry/5xx/reset", failing("/retry/5xx", 1, &reset)).expect_status(200).expect_attempts(2));
    // retry_priority previous_priorities: the retry leaves the tried priority 0 for priority 1.
    s.add_both(
        Case::new("retry/previous-priorities", failing("/retry/prio", 1, &s503))
            .expect_status(200)
            .expect_attempts(2)
            .expect_upstream("b"),
    );
    s.add_both(
        Case::new("retry/same-priority-without-it", failing("/retry/prio-none", 1, &s503))
            .expect_status(200)
            .expect_attempts(2)
            .expect_upstream("a"),
    );
    // retriable_request_headers: only a request that matches is retried.
    s.add_both(
        Case::new("retry/request-headers/match", failing("/retry/only-get", 1, &s503))
            .expect_status(200)
            .expect_attempts(2),
    );
    s.add_both(
        Case::new("retry/request-headers/no-match", failing("/retry/only-get", 1, &s503).method("POST"))
            .expect_status(503)
            .expect_attempts(1),
    );
    s.add_both(
        Case::new("retry/gateway-error/502", failing("/retry/gateway-error", 1, &s502))
            .expect_status(200)
            .expect_attempts(2),
    );
    s.add_both(
        Case::new("retry/gateway-error/500-not-retried", failing("/retry/gateway-error", 1, &s500))
            .expect_status(500)
            .expect_attempts(1),
    );
    s.add_both(
        Case::new("retry/reset/recovers", failing("/retry/reset", 2, &reset)).expect_status(200).expect_attempts(3),
    );
    s.add_both(
        Case::new("retry/reset/503-not-retried", failing("/retry/reset", 1, &s503))
            .expect_status(503)
            .expect_attempts(1),
    );
    s.add(
        Case::new("retry/connect-failure/recovers", get("/retry/connect-failure"))
            .distribution(20, 0.0)
            .expect_share("b", 1.0),
    );
    s.add_both(
        Case::new("retry/retriable-4xx/409", failing("/retry/retriable-4xx", 1, &[("x-echo-status", "409")]))
            .expect_status(200)
            .expect_attempts(2),
    );
    s.add_both(
        Case::new(
            "retry/retriable-4xx/404-not-retried",
            failing("/retry/retriable-4xx", 1, &[("x-echo-status", "404")]),
        )
        .expect_status(404)
        .expect_attempts(1),
    );
    s.add_both(
        Case::new("retry/status-codes/418", failing("/retry/status-codes", 2, &[("x-echo-status", "418")]))
            .expect_status(200)
            .expect_attempts(3),
    );
    s.add_both(
        Case::new("retry/status-codes/429-exhausted", failing("/retry/status-codes", 9, &[("x-echo-status", "429")]))
            .expect_status(429)
            .expect_attempts(4),
    );
    s.add_both(
        Case::new("retry/status-codes/503-not-listed", failing("/retry/status-codes", 1, &s503))
            .expect_status(503)
            .expect_attempts(1),
    );
    s.add_both(
        Case::new("retry/headers/match", failing("/retry/headers", 1, &[("x-echo-header", "x-retry-me: yes")]))
            .expect_status(200)
            .expect_attempts(2),
    );
    s.add_both(
        Case::new("retry/headers/no-match", failing("/retry/headers", 1, &[("x-echo-header", "x-retry-me: no")]))
            .expect_status(200)
            .expect_attempts(1)
            .expect_resp("x-retry-me", Some("no")),
    );
    s.add_both(
        Case::new("retry/per-try-timeout/recovers", failing("/retry/per-try", 1, &[("x-echo-delay-ms", "1500")]))
            .expect_status(200)
            .expect_attempts(2),
    );
    s.add_both(
        Case::new("retry/per-try-timeout/exhausted", failing("/retry/per-try", 9, &[("x-echo-delay-ms", "1500")]))
            .expect_status(504)
            .expect_body("upstream request timeout")
            .expect_attempts(3),
    );
    s.add_both(Case::new("retry/none/503", failing("/retry/none", 1, &s503)).expect_status(503).expect_attempts(1));
    s.add_both(
        Case::new("retry/keyed-by-request-id", failing("/retry/5xx", 1, &s503).header("x-request-id", "fixed-id-1"))
            .key_by_request_id()
            .expect_status(200)
            .expect_seen("x-request-id", Some("fixed-id-1")),
    );
    s.add_both(
        Case::new("retry/client-header-external", failing("/retry/none", 1, &s503).header("x-envoy-retry-on", "5xx"))
            .expect_status(503)
            .expect_attempts(1)
            .expect_seen("x-envoy-retry-on", None),
    );
}

fn redirects(s: &mut Suite) {
    let cases: &[(&str, &str, u16, &str)] = &[
        ("redirect/https", "/redirect/https?q=1", 301, "https://r.test/redirect/https?q=1"),
        ("redirect/scheme", "/redirect/scheme", 301, "ftp://r.test/redirect/scheme"),
        ("redirect/host", "/redirect/host/x", 301, "http://other.example/redirect/host/x"),
        ("redirect/port", "/redirect/port", 301, "http://r.test:8443/redirect/port"),
        ("redirect/host-port", "/redirect/hp", 301, "http://other.example:9000/redirect/hp"),
        ("redirect/path", "/redirect/path?keep=1", 301, "http://r.test/new/path?keep=1"),
        ("redirect/path-with-query", "/redirect/pq?keep=1", 301, "http://r.test/new/path?fixed=1"),
        ("redirect/prefix", "/redirect/prefix/a/b?q", 301, "http://r.test/moved/a/b?q"),
        ("redirect/regex", "/redirect/regex/a/b", 301, "http://r.test/r/a/b"),
        ("redirect/301", "/redirect/code-301", 301, "http://r.test/c"),
        ("redirect/302", "/redirect/code-302", 302, "http://r.test/c"),
        ("redirect/303", "/redirect/code-303", 303, "http://r.test/c"),
        ("redirect/307", "/redirect/code-307", 307, "http://r.test/c"),
        ("redirect/308", "/redirect/code-308", 308, "http://r.test/c"),
        ("redirect/strip-query", "/redirect/strip-query?a=1", 301, "http://r.test/sq"),
        ("redirect/all-fields", "/redirect/all/rest?a=1", 307, "https://all.example:8443/all/rest"),
    ];
    for (name, path, code, location) in cases {
        s.add_both(
            Case::new(name, get(path).host("r.test"))
                .expect_status(*code)
                .expect_local()
                .expect_resp("location", Some(location)),
        );
    }
    // require_tls: a 301 to https for plain requests; x-forwarded-proto https passes.
    for (name, host) in [("require-tls/all", "tls-all.test"), ("require-tls/external-only", "tls-ext.test")] {
        s.add_both(
            Case::new(name, get("/p?q=1").host(host))
                .expect_status(301)
                .expect_local()
                .expect_resp("location", Some(&format!("https://{host}/p?q=1"))),
        );
        s.add_both(
            Case::new(&format!("{name}/forwarded-https"), get("/p").host(host).header("x-forwarded-proto", "https"))
                .expect_status(200)
                .expect_upstream("a"),
        );
    }
    s.add_both(
        // A client cannot claim to be internal: the connection manager strips x-envoy-internal.
        Case::new(
            "require-tls/external-only/claims-internal",
            get("/p").host("tls-ext.test").header("x-envoy-internal", "true"),
        )
        .expect_status(301)
        .expect_local(),
    );
    s.add_both(
        // host_redirect drops the port the client sent.
        Case::new("redirect/port-from-host", get("/redirect/host").host("r.test:1234"))
            .expect_status(301)
            .expect_resp("location", Some("http://other.example/redirect/host")),
    );
}

fn direct_and_local(s: &mut Suite) {
    s.add_both(
        Case::new("direct/teapot", get("/direct/teapot"))
            .expect_status(418)
            .expect_body("short and stout")
            .expect_resp("content-type", Some("text/plain")),
    );
    s.add_both(Case::new("direct/empty-204", get("/direct/empty")).expect_status(204).expect_body(""));
    s.add(
        Case::new("direct/503-post/h1", get("/direct/503").method("POST").body("ignored"))
            .expect_status(503)
            .expect_body("down for maintenance\n"),
    );
    // Over h2, Envoy answers before reading the request body and resets the stream; whether
    // curl 7.88 shows the response or a framing error (exit 92) is a race, so h1 only.
    s.add_both(Case::new("local/404-no-route", get("/x").host("noroute.test")).expect_status(404).expect_body(""));
    s.add_both(
        Case::new("local/503-no-healthy-upstream", get("/local/no-healthy"))
            .expect_status(503)
            .expect_body("no healthy upstream"),
    );
    s.add_both(
        Case::new("local/503-connect-failure", get("/local/connect-failure")).expect_status(503).expect_body_contains(
            "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure",
        ),
    );
    s.add_both(
        Case::new("local/503-reset-before-headers", get("/local/reset").header("x-echo-reset", "1"))
            .expect_status(503)
            .expect_body_contains("upstream connect error or disconnect/reset before headers. reset reason: "),
    );
    s.add_both(
        Case::new("local/upstream-status-passthrough", get("/plain").header("x-echo-status", "503"))
            .expect_status(503)
            .expect_upstream("a"),
    );
}

fn misc(s: &mut Suite) {
    s.add_both(
        Case::new("body/post", get("/post").method("POST").body(vec![b'z'; 3000]))
            .expect_status(200)
            .expect_seen("content-length", Some("3000")),
    );
    s.add_both(
        Case::new("body/large-response", get("/big").header("x-echo-body-size", "200000"))
            .expect_status(200)
            .expect_resp("content-length", Some("200000")),
    );
    s.add_both(Case::new("method/delete", get("/del").method("DELETE")).expect_status(200));
    s.add(
        Case::new("client/h2c-timeout-option", get("/plain").proto(Proto::H2c).timeout(Duration::from_secs(5)))
            .expect_status(200)
            .expect_version("HTTP/1.1"),
    );
}

#[test]
fn diff_routing() {
    let mut s = Suite::new("routing", "diff_routing.yaml").upstreams(&["a", "b", "c"]);
    domains(&mut s);
    path_matchers(&mut s);
    header_matchers(&mut s);
    query_and_runtime(&mut s);
    actions(&mut s);
    retries(&mut s);
    redirects(&mut s);
    direct_and_local(&mut s);
    misc(&mut s);
    s.run();
}
