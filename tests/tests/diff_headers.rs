//! Differential suite "headers" (tests/configs/diff_headers.yaml): request/response header
//! manipulation at route, virtual host and route-config level with every append_action,
//! removal, `%...%` substitutions, x-forwarded-for / x-forwarded-proto, x-request-id,
//! x-envoy-upstream-service-time, internal vs external requests, over HTTP/1.1 and h2c.

use tests::Request;
use tests::diff::{Case, Suite};

fn get(path: &str) -> Request {
    Request::get(path)
}

fn append_actions(s: &mut Suite) {
    // Request headers: each append_action with and without the client sending the header.
    s.add_both(
        Case::new("req/actions/absent", get("/actions"))
            .expect_seen("x-aa", Some("added"))
            .expect_seen("x-aia", Some("added"))
            .expect_seen("x-ow", Some("added"))
            .expect_seen("x-oie", None)
            .expect_seen("x-default", Some("added"))
            .expect_seen("x-empty", None)
            .expect_seen("x-empty-kept", Some("")),
    );
    s.add_both(
        Case::new(
            "req/actions/present",
            get("/actions")
                .header("x-aa", "client")
                .header("x-aia", "client")
                .header("x-ow", "client")
                .header("x-oie", "client")
                .header("x-default", "client"),
        )
        .expect_seen("x-aa", Some("client,added"))
        .expect_seen("x-aia", Some("client"))
        .expect_seen("x-ow", Some("added"))
        .expect_seen("x-oie", Some("added"))
        .expect_seen("x-default", Some("client,added")),
    );
    s.add_both(
        Case::new("req/actions/repeated-client-header", get("/actions").header("x-ow", "one").header("x-ow", "two"))
            .expect_seen("x-ow", Some("added")),
    );
    // Response headers: the upstream sends them (x-echo-header), the route adds.
    s.add_both(
        Case::new("resp/actions/absent", get("/actions"))
            .expect_resp("x-r-aa", Some("added"))
            .expect_resp("x-r-aia", Some("added"))
            .expect_resp("x-r-ow", Some("added"))
            .expect_resp("x-r-oie", None),
    );
    let mut r = get("/actions");
    for h in ["x-r-aa", "x-r-aia", "x-r-ow", "x-r-oie"] {
        r = r.header("x-echo-header", &format!("{h}: upstream"));
    }
    s.add_both(
        Case::new("resp/actions/present", r)
            .expect_resp("x-r-aa", Some("upstream,added"))
            .expect_resp("x-r-aia", Some("upstream"))
            .expect_resp("x-r-ow", Some("added"))
            .expect_resp("x-r-oie", Some("added")),
    );
}

fn levels(s: &mut Suite) {
    s.add_both(
        Case::new("levels/request", get("/levels").header("x-level", "client").header("x-append", "client"))
            .expect_seen("x-level", Some("route-config"))
            .expect_seen("x-append", Some("client,route,vhost,route-config"))
            .expect_seen("x-rc-only", Some("rc"))
            .expect_seen("x-vh-only", Some("vh")),
    );
    s.add_both(
        Case::new(
            "levels/request-remove",
            get("/levels")
                .header("x-remove-rc", "1")
                .header("x-remove-vh", "1")
                .header("x-remove-route", "1")
                .header("x-keep", "1"),
        )
        .expect_seen("x-remove-rc", None)
        .expect_seen("x-remove-vh", None)
        .expect_seen("x-remove-route", None)
        .expect_seen("x-keep", Some("1")),
    );
    s.add_both(
        Case::new("levels/response", get("/levels").header("x-echo-header", "x-resp-append: upstream"))
            .expect_resp("x-resp-level", Some("route-config"))
            .expect_resp("x-resp-append", Some("upstream,route,vhost,route-config")),
    );
    s.add_both(
        Case::new(
            "levels/response-remove",
            get("/levels")
                .header("x-echo-header", "x-secret-rc: 1")
                .header("x-echo-header", "x-secret-vh: 1")
                .header("x-echo-header", "x-secret-route: 1")
                .header("x-echo-header", "x-public: 1"),
        )
        .expect_resp("x-secret-rc", None)
        .expect_resp("x-secret-vh", None)
        .expect_resp("x-secret-route", None)
        .expect_resp("x-public", Some("1")),
    );
    s.add_both(
        Case::new("levels/other-route-gets-outer-levels", get("/other"))
            .expect_seen("x-level", Some("route-config"))
            .expect_seen("x-append", Some("vhost,route-config")),
    );
    s.add_both(
        Case::new("levels/weighted-cluster", get("/weighted"))
            .expect_upstream("a")
            .expect_seen("x-wc", Some("a"))
            .expect_resp("x-wc-resp", Some("a")),
    );
    s.add_both(
        Case::new("levels/direct-response", get("/direct"))
            .expect_status(200)
            .expect_body("direct")
            .expect_resp("x-direct", Some("yes"))
            .expect_resp("x-resp-level", Some("route-config")),
    );
}

fn substitutions(s: &mut Suite) {
    s.add(
        Case::new("subst/h1", get("/subst").header("x-src", "source-value"))
            .expect_seen("x-downstream-remote", Some("127.0.0.1:<port>"))
            .expect_seen("x-downstream-remote-ip", Some("127.0.0.1"))
            .expect_seen("x-downstream-local", Some("127.0.0.1:<port:listener>"))
            .expect_seen("x-protocol", Some("HTTP/1.1"))
            .expect_seen("x-req", Some("source-value"))
            .expect_seen("x-req-truncated", Some("sou"))
            .expect_seen("x-mixed", Some("proto=HTTP/1.1 src=source-value"))
            .expect_seen("x-literal-percent", Some("100%"))
            .expect_resp("x-upstream-remote", Some("127.0.0.1:<upstream:a>"))
            .expect_resp("x-resp-protocol", Some("HTTP/1.1"))
            .expect_resp("x-resp-req", Some("source-value")),
    );
    s.add(
        Case::new("subst/h2c", get("/subst").header("x-src", "source-value").h2c())
            .expect_seen("x-protocol", Some("HTTP/2"))
            .expect_resp("x-resp-protocol", Some("HTTP/2")),
    );
    s.add_both(
        Case::new("subst/missing-req", get("/subst")).expect_seen("x-req", None).expect_resp("x-resp-req", None),
    );
}

fn forwarding(s: &mut Suite) {
    // use_remote_address: false (the default): XFF is left as the client sent it, and a request is
    // internal when XFF holds one internal address.
    s.add_both(
        Case::new("xff/default/none", get("/"))
            .expect_seen("x-forwarded-for", None)
            .expect_seen("x-forwarded-proto", Some("http"))
            .expect_seen("x-envoy-internal", None),
    );
    s.add_both(
        Case::new("xff/default/client", get("/").header("x-forwarded-for", "1.2.3.4"))
            .expect_seen("x-forwarded-for", Some("1.2.3.4"))
            .expect_seen("x-envoy-internal", None),
    );
    s.add_both(
        Case::new("xff/default/internal-client", get("/").header("x-forwarded-for", "10.0.0.1"))
            .expect_seen("x-forwarded-for", Some("10.0.0.1")),
    );
    s.add_both(
        Case::new("xfp/default/client-https", get("/").header("x-forwarded-proto", "https"))
            .expect_seen("x-forwarded-proto", Some("https")),
    );
    s.add_both(Case::new(
        "internal-xff/timeout-header",
        get("/").header("x-forwarded-for", "10.0.0.1").header("x-envoy-upstream-rq-timeout-ms", "1234"),
    ));
    s.add_both(Case::new(
        "internal-xff/retry-on",
        get("/")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-envoy-retry-on", "5xx")
            .header("x-echo-fail-first", "1")
            .header("x-echo-status", "503"),
    ));
    // use_remote_address: true: the peer address is appended to XFF; Envoy uses the host's
    // first non-loopback address in place of a loopback peer, so whether the request counts as
    // internal depends on that address.
    let local = tests::diff::local_ipv4();
    let internal = local.as_deref().is_some_and(tests::diff::is_internal_ipv4);
    s.add_both(
        Case::new("xff/remote/none", get("/"))
            .listener("remote")
            .expect_seen("x-forwarded-for", Some(if local.is_some() { "<local-ip>" } else { "127.0.0.1" }))
            .expect_seen("x-envoy-internal", internal.then_some("true"))
            .expect_resp("server", Some("remora-test")),
    );
    s.add_both(
        Case::new("xff/remote/client", get("/").header("x-forwarded-for", "1.2.3.4")).listener("remote").expect_seen(
            "x-forwarded-for",
            Some(if local.is_some() { "1.2.3.4,<local-ip>" } else { "1.2.3.4,127.0.0.1" }),
        ),
    );
    s.add_both(
        Case::new("xfp/remote/client-https", get("/").header("x-forwarded-proto", "https"))
            .listener("remote")
            .expect_seen("x-forwarded-proto", Some("http")),
    );
    s.add_both(
        Case::new("remote/timeout-header", get("/").header("x-envoy-upstream-rq-timeout-ms", "1234"))
            .listener("remote")
            .expect_seen("x-envoy-upstream-rq-timeout-ms", None)
            .expect_seen("x-envoy-expected-rq-timeout-ms", Some(if internal { "1234" } else { "15000" })),
    );
    s.add_both(
        Case::new(
            "remote/retry-on",
            get("/retry")
                .header("x-envoy-retry-on", "5xx")
                .header("x-echo-fail-first", "1")
                .header("x-echo-status", "503"),
        )
        .listener("remote")
        .expect_status(if internal { 200 } else { 503 })
        .expect_attempts(if internal { 2 } else { 1 })
        .expect_seen("x-envoy-retry-on", None),
    );
    s.add_both(
        Case::new("xff/trusted-hops", get("/").header("x-forwarded-for", "8.8.8.8, 9.9.9.9"))
            .listener("preserve")
            .expect_seen("x-envoy-external-address", Some("9.9.9.9")),
    );
}

fn request_id(s: &mut Suite) {
    let internal = tests::diff::local_ipv4().as_deref().is_some_and(tests::diff::is_internal_ipv4);
    s.add_both(Case::new("request-id/generated", get("/")).expect_seen("x-request-id", Some("<uuid>")));
    s.add_both(
        Case::new("request-id/kept", get("/").header("x-request-id", "my-id"))
            .expect_seen("x-request-id", Some("my-id")),
    );
    s.add_both(
        Case::new("request-id/remote", get("/").header("x-request-id", "my-id"))
            .listener("remote")
            .expect_seen("x-request-id", Some(if internal { "my-id" } else { "<uuid>" })),
    );
    s.add_both(
        Case::new("request-id/remote-preserved", get("/").header("x-request-id", "my-id"))
            .listener("preserve")
            .expect_seen("x-request-id", Some("my-id")),
    );
}

fn response_basics(s: &mut Suite) {
    s.add_both(
        Case::new("resp/service-time", get("/"))
            .expect_resp("x-envoy-upstream-service-time", Some("<ms>"))
            .expect_resp("server", Some("envoy")),
    );
    s.add_both(
        Case::new("resp/upstream-server-header-replaced", get("/").header("x-echo-header", "server: upstream-server"))
            .expect_resp("server", Some("envoy")),
    );
    s.add_both(
        Case::new(
            "resp/hop-by-hop-request",
            get("/").header("connection", "keep-alive").header("keep-alive", "timeout=5"),
        )
        .expect_seen("keep-alive", None),
    );
    s.add(Case::new("resp/te-trailers-h1", get("/").header("te", "trailers")).expect_status(200));
}

#[test]
fn diff_headers() {
    let mut s = Suite::new("headers", "diff_headers.yaml").upstreams(&["a"]);
    append_actions(&mut s);
    levels(&mut s);
    substitutions(&mut s);
    forwarding(&mut s);
    request_id(&mut s);
    response_basics(&mut s);
    s.run();
}
