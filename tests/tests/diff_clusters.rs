//! Differential suite "clusters" (tests/configs/diff_clusters.yaml): STATIC / STRICT_DNS /
//! LOGICAL_DNS clusters, load balancing policies compared as distributions, hash policies
//! (header, cookie, source IP) compared as stickiness (and as exact key -> host mappings when
//! hosts carry an `envoy.lb` `hash_key`), and the upstream protocol each cluster config selects,
//! over HTTP/1.1 and h2c clients.

use tests::Request;
use tests::diff::{Case, Suite};

fn get(path: &str) -> Request {
    Request::get(path)
}

fn load_balancing(s: &mut Suite) {
    let third = 1.0 / 3.0;
    s.add(
        Case::new("lb/least-request/h1", get("/least"))
            .distribution(300, 0.12)
            .expect_share("a", third)
            .expect_share("b", third)
            .expect_share("c", third),
    );
    // Over h2c the requests of a distribution run as concurrent streams, and least-request then
    // depends on timing; round robin and random do not.
    for (name, path, tol) in [("rr", "/rr", 0.02), ("random", "/random", 0.12)] {
        s.add(
            Case::new(&format!("lb/{name}/h1"), get(path))
                .distribution(300, tol)
                .expect_share("a", third)
                .expect_share("b", third)
                .expect_share("c", third),
        );
        s.add(
            Case::new(&format!("lb/{name}/h2c"), get(path).h2c())
                .distribution(300, tol)
                .expect_share("a", third)
                .expect_share("b", third)
                .expect_share("c", third),
        );
    }
    s.add_both(
        Case::new("lb/rr-endpoint-weights", get("/rr-weighted"))
            .distribution(400, 0.06)
            .expect_share("a", 0.75)
            .expect_share("b", 0.25),
    );
}

fn hashing(s: &mut Suite) {
    for (name, path) in [("ring", "/ring-header"), ("maglev", "/maglev-header")] {
        s.add_both(
            Case::new(&format!("hash/{name}/header"), get(path)).hash_on("x-user", "user-{}", 12, 4).expect_spread(2),
        );
    }
    s.add_both(
        Case::new("hash/ring/cookie", get("/ring-cookie")).hash_on("cookie", "session=s{}", 12, 4).expect_spread(2),
    );
    s.add_both(Case::new("hash/ring/source-ip", get("/ring-source")).sticky(12));
    s.add_both(Case::new("hash/maglev/source-ip", get("/maglev-source")).sticky(12));
    // With `envoy.lb` hash_key metadata the ring does not depend on the (random) upstream
    // ports, so the key -> host mapping itself is Envoy's and must be reproduced.
    for (name, path) in [("ring", "/ring-keyed"), ("maglev", "/maglev-keyed")] {
        s.add_both(
            Case::new(&format!("hash/{name}/hash-key-mapping"), get(path))
                .hash_on("x-user", "user-{}", 16, 2)
                .exact_mapping()
                .expect_spread(2),
        );
    }
    // No hash key in the request: Envoy falls back to a random pick.
    s.add(Case::new("hash/ring/no-key", get("/ring-no-key")).distribution(300, 0.12).expect_share("a", 1.0 / 3.0));
    // A cookie policy with a ttl and no cookie: Envoy sets one.
    s.add_both(
        Case::new("hash/ring/cookie-generated", get("/ring-cookie-gen"))
            .any_upstream()
            .expect_upstream_any()
            .expect_resp("set-cookie", Some("gen-session=<hash>; Max-Age=60; Path=/; HttpOnly")),
    );
}

fn discovery_and_protocols(s: &mut Suite) {
    s.add_both(Case::new("dns/strict-localhost", get("/strict-dns")).expect_upstream("a").expect_version("HTTP/1.1"));
    for i in 0..4 {
        s.add_both(
            Case::new(&format!("dns/strict-unhealthy-endpoint-skipped-{i}"), get("/strict-dns-health"))
                .expect_upstream("a"),
        );
    }
    s.add_both(Case::new("dns/logical-localhost", get("/logical-dns")).expect_upstream("b"));
    for (name, path, h1, h2) in [
        ("explicit-h2", "/h2-explicit", "HTTP/2", "HTTP/2"),
        ("explicit-h1", "/h1-explicit", "HTTP/1.1", "HTTP/1.1"),
        ("use-downstream", "/h2-downstream", "HTTP/1.1", "HTTP/2"),
    ] {
        s.add(Case::new(&format!("proto/{name}/h1"), get(path)).expect_upstream("a").expect_version(h1));
        s.add(Case::new(&format!("proto/{name}/h2c"), get(path).h2c()).expect_upstream("a").expect_version(h2));
    }
    s.add_both(
        Case::new("proto/explicit-h2/post-body", get("/h2-explicit").method("POST").body(vec![b'q'; 70000]))
            .expect_version("HTTP/2")
            .expect_seen("content-length", Some("70000")),
    );
    s.add_both(
        Case::new("proto/explicit-h2/large-response", get("/h2-explicit").header("x-echo-body-size", "300000"))
            .expect_resp("content-length", Some("300000")),
    );
}

#[test]
fn diff_clusters() {
    let mut s = Suite::new("clusters", "diff_clusters.yaml").upstreams(&["a", "b", "c"]);
    load_balancing(&mut s);
    hashing(&mut s);
    discovery_and_protocols(&mut s);
    s.run();
}
