//! Seeds 000 and 001, KubeStock, on remora: examples/kubestock through `remora demo`. Six services
//! in kubestock-staging behind STRICT mesh-wide mTLS with ISTIO_MUTUAL destination rules and the
//! seed's route policy (30 s timeout, 3 retries of 10 s each). Checked as the seed's authors
//! check it (service to service works, only over mTLS, each side knows the other's identity) and
//! what the policy promises: a broken instance is hidden by retries, both replicas serve, the timeout
//! (a scaled-down copy: 1 s), then the seed's "next steps" pushed live: the circuit breaker
//! (which, as the seed writes it, ejects nothing from two replicas, as on Envoy; with
//! maxEjectionPercent 50 it ejects the broken one), the 90/10 canary, the AuthorizationPolicy
//! (only ms-product may call ms-inventory), a policy with a malformed principal and a typo, both
//! refused while the mesh keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{Demo, envoy_bin, eventually, example, get, get_json, stat};

const NS: &str = "kubestock-staging";
const SERVICES: [(&str, u16); 5] = [
    ("ms-identity", 3006),
    ("ms-inventory", 3001),
    ("ms-product", 3003),
    ("ms-supplier", 3004),
    ("ms-order-management", 3002),
];

/// The stat suffix of the frontend sidecar's outbound cluster for `svc`.
fn cluster_stat(svc: &str, port: u16, name: &str) -> String {
    format!("outbound|{port}||{svc}.{NS}.svc.cluster.local.{name}")
}

#[test]
fn kubestock_on_remora() {
    kubestock(None);
}

/// The same scenario with Envoy as every sidecar: the oracle for what the test expects.
#[test]
fn kubestock_on_envoy() {
    if let Some(envoy) = envoy_bin() {
        kubestock(Some(&envoy));
    }
}

fn kubestock(envoy: Option<&Path>) {
    let src = example("kubestock");
    // The canary workload is deployed from the start at zero traffic (the demo does not add
    // Deployments while running); its VirtualService is pushed later.
    let demo = Demo::start(&src, &["next-steps/ms-product-canary.yaml"], envoy);
    let fe = demo.app("frontend-0", 3000);
    let fe_admin = demo.admin("frontend-0");

    // Service to service over mTLS, each side's SPIFFE identity in the XFCC header the server's
    // sidecar adds (By = the server, URI = the calling workload).
    for (svc, port) in SERVICES {
        let v = get_json(&fe, &format!("/call/{svc}:{port}/headers"));
        assert_eq!(v["upstream_status"], 200, "{v}");
        assert_eq!(v["upstream"]["service"], svc, "{v}");
        let xfcc = v["upstream"]["headers"]["x-forwarded-client-cert"].as_str().unwrap_or_default();
        assert!(xfcc.contains(&format!("By=spiffe://cluster.local/ns/{NS}/sa/{svc}")), "{svc}: XFCC {xfcc:?}");
        assert!(xfcc.contains(&format!("URI=spiffe://cluster.local/ns/{NS}/sa/frontend")), "{svc}: XFCC {xfcc:?}");
        assert!(stat(fe_admin, &cluster_stat(svc, port, "ssl.handshake")) > 0, "{svc}: no TLS handshake");
    }
    // STRICT: plaintext straight to a sidecar's inbound port is not served.
    let plain = get(&format!("{}:3006", demo.pod_ip("ms-identity-0")), "/");
    assert!(!matches!(plain, Ok((200, _))), "plaintext was served under STRICT: {plain:?}");

    // Both of ms-inventory's replicas serve. The seed says "round robin by default"; istiod's
    // default without a loadBalancer is LEAST_REQUEST (two random choices), which spreads
    // sequential requests about evenly too.
    let n = 40;
    let on_0 =
        (0..n).filter(|_| get_json(&fe, "/call/ms-inventory:3001/")["upstream"]["pod"] == "ms-inventory-0").count();
    assert!((8..=32).contains(&on_0), "ms-inventory-0 got {on_0}/{n}");

    // A broken instance: ms-inventory-0 answers 503; the route's retries (Istio's default retry
    // on 503, to another host) hide it from the caller.
    let retries_before = stat(fe_admin, &cluster_stat("ms-inventory", 3001, "upstream_rq_retry"));
    for _ in 0..20 {
        let v = get_json(&fe, "/call/ms-inventory:3001/fail-on/ms-inventory-0/503");
        assert_eq!(v["upstream_status"], 200, "a retry should have hidden the broken instance: {v}");
        assert_eq!(v["upstream"]["pod"], "ms-inventory-1", "{v}");
    }
    let retries = stat(fe_admin, &cluster_stat("ms-inventory", 3001, "upstream_rq_retry")) - retries_before;
    // The load balancer picks the broken instance for about half the first tries (at random).
    assert!(retries >= 1, "no retry for 20 requests, about half of them to the broken instance");

    // The 30 s timeout does not cut a 2 s answer; a scaled-down copy of the route (1 s) does.
    let v = get_json(&fe, "/call/ms-identity:3006/delay/2000");
    assert_eq!(v["upstream_status"], 200, "{v}");
    let vs = std::fs::read_to_string(src.join("ms-identity-istio-virtualservice.yaml")).unwrap();
    assert!(vs.contains("timeout: 30s"));
    demo.push("ms-identity-istio-virtualservice.yaml", &vs.replace("timeout: 30s", "timeout: 1s"));
    eventually(30, "the 1 s timeout", || {
        let v = get_json(&fe, "/call/ms-identity:3006/delay/2000");
        v["upstream_status"] == 504 && v["upstream"] == "upstream request timeout"
    });
    assert!(stat(fe_admin, &cluster_stat("ms-identity", 3006, "upstream_rq_timeout")) > 0);
    demo.push("ms-identity-istio-virtualservice.yaml", &vs);

    // Next step 3, the circuit breaker, as the seed writes it: five consecutive 5xx would eject
    // ms-inventory-0, but Envoy's default max_ejection_percent (10 %, which istiod leaves alone
    // when maxEjectionPercent is unset) forbids ejecting one host of two: the detector counts an
    // overflow instead, exactly as Envoy does, and the retries keep hiding the broken instance.
    let dr_src = src.join("next-steps/ms-inventory-istio-destinationrule.yaml");
    demo.push_file(&dr_src);
    eventually(30, "outlier detection in frontend's ms-inventory cluster", || {
        let (_, dump) = get(&format!("127.0.0.1:{fe_admin}"), "/config_dump").unwrap();
        dump.contains("consecutive_5xx")
    });
    let od = |name: &str| stat(fe_admin, &cluster_stat("ms-inventory", 3001, &format!("outlier_detection.{name}")));
    for _ in 0..20 {
        let v = get_json(&fe, "/call/ms-inventory:3001/fail-on/ms-inventory-0/503");
        assert_eq!(v["upstream_status"], 200, "{v}");
    }
    assert_eq!(od("ejections_enforced_total"), 0, "one host of two ejected despite max_ejection_percent 10");
    assert!(od("ejections_overflow") >= 1, "no ejection overflow counted");
    // With maxEjectionPercent 50 the broken instance is ejected and gets no more requests, so no
    // more retries are needed.
    let dr = std::fs::read_to_string(&dr_src).unwrap();
    let dr50 = dr.replace("consecutive5xxErrors: 5", "consecutive5xxErrors: 5\n      maxEjectionPercent: 50");
    demo.push("ms-inventory-istio-destinationrule.yaml", &dr50);
    eventually(30, "max_ejection_percent 50 in frontend's ms-inventory cluster", || {
        let (_, dump) = get(&format!("127.0.0.1:{fe_admin}"), "/config_dump").unwrap();
        dump.contains("max_ejection_percent")
    });
    for _ in 0..20 {
        let v = get_json(&fe, "/call/ms-inventory:3001/fail-on/ms-inventory-0/503");
        assert_eq!(v["upstream_status"], 200, "{v}");
    }
    assert!(od("ejections_enforced_total") >= 1, "ms-inventory-0 was not ejected after 5 consecutive 503s");
    let retries_before = stat(fe_admin, &cluster_stat("ms-inventory", 3001, "upstream_rq_retry"));
    for _ in 0..10 {
        let v = get_json(&fe, "/call/ms-inventory:3001/fail-on/ms-inventory-0/503");
        assert_eq!(v["upstream"]["pod"], "ms-inventory-1", "{v}");
    }
    assert_eq!(
        stat(fe_admin, &cluster_stat("ms-inventory", 3001, "upstream_rq_retry")),
        retries_before,
        "an ejected instance still received requests"
    );

    // Next step 5, the canary: 90/10 between ms-product and ms-product-canary.
    assert!((0..20).all(|_| get_json(&fe, "/call/ms-product:3003/")["upstream"]["service"] == "ms-product"));
    demo.push_file(&src.join("next-steps/ms-product-istio-virtualservice.yaml"));
    eventually(30, "the canary's first request", || {
        get_json(&fe, "/call/ms-product:3003/")["upstream"]["service"] == "ms-product-canary"
    });
    let n = 200;
    let canary = (0..n)
        .filter(|_| get_json(&fe, "/call/ms-product:3003/")["upstream"]["service"] == "ms-product-canary")
        .count();
    assert!((6..=40).contains(&canary), "canary got {canary}/{n}, expected about 10%");

    // Next step 1, the AuthorizationPolicy: only ms-product may call ms-inventory. The frontend
    // gets Envoy's 403; ms-product (its own identity over mTLS) gets through.
    let product = demo.app("ms-product-0", 3003);
    assert_eq!(get_json(&fe, "/call/ms-inventory:3001/")["upstream_status"], 200);
    let policy = src.join("next-steps/allow-product-to-inventory.yaml");
    demo.push_file(&policy);
    // Both replicas' sidecars take it: eight calls in a row are refused, whichever serves.
    let pushed = std::time::Instant::now();
    eventually(30, "the policy on ms-inventory's sidecars", || {
        (0..8).all(|_| get_json(&fe, "/call/ms-inventory:3001/")["upstream_status"] == 403)
    });
    eprintln!("policy enforced on both replicas {:?} after the push", pushed.elapsed());
    for _ in 0..4 {
        let v = get_json(&fe, "/call/ms-inventory:3001/");
        assert_eq!((&v["upstream_status"], &v["upstream"]), (&403.into(), &"RBAC: access denied".into()), "{v}");
        assert_eq!(get_json(&product, "/call/ms-inventory:3001/")["upstream_status"], 200);
    }
    // A policy naming a principal in a format Istio does not use (a SPIFFE URI) is refused with
    // the file and field; the policy in force stays.
    let text = std::fs::read_to_string(&policy).unwrap();
    demo.push("allow-product-to-inventory.yaml", &text.replace("\"cluster.local/ns/", "\"spiffe://cluster.local/ns/"));
    demo.wait_log(&["allow-product-to-inventory.yaml", "principals"]);
    assert_eq!(get_json(&fe, "/call/ms-inventory:3001/")["upstream_status"], 403);
    assert_eq!(get_json(&product, "/call/ms-inventory:3001/")["upstream_status"], 200);
    demo.push("allow-product-to-inventory.yaml", &text);

    // Bad input: a typo in one resource is refused with the file and the field; the mesh keeps
    // serving the last good config.
    let bad = vs.replace("perTryTimeout", "perTryTimout");
    demo.push("ms-identity-istio-virtualservice.yaml", &bad);
    demo.wait_log(&["ms-identity-istio-virtualservice.yaml", "perTryTimout"]);
    for (svc, port) in SERVICES {
        let want = if svc == "ms-inventory" { 403 } else { 200 };
        assert_eq!(get_json(&fe, &format!("/call/{svc}:{port}/"))["upstream_status"], want, "{svc}");
    }
    demo.stop();
}
