//! Differential tests of the HTTP filters and access logs: the same bootstrap runs through the
//! real Envoy and remora against the same upstream, and what curl sees must match.
//! Skipped (with a message) when no Envoy binary is installed.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::io::Read;
use std::time::{Duration, Instant};

use support::{bootstrap, curl, same, start_pair, upstream};

const ROUTE_ALL: &str = r#"              - match: {prefix: "/"}
                route: {cluster: backend}"#;

#[test]
fn cors_matches_envoy() {
    let vhost = r#"              typed_per_filter_config:
                envoy.filters.http.cors:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                  allow_origin_string_match:
                  - safe_regex: {regex: \*}
                  allow_methods: "GET"
                  allow_headers: "x-a,x-b"
                  expose_headers: "x-exp"
                  max_age: "600""#;
    let routes = r#"              - match: {prefix: "/cors/disabled"}
                route: {cluster: backend}
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    filter_enabled: {default_value: {numerator: 0, denominator: HUNDRED}}
              - match: {prefix: "/cors/restricted"}
                route: {cluster: backend}
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    allow_origin_string_match:
                    - safe_regex: {regex: .*\.envoyproxy\.io}
                    allow_methods: "*"
                    allow_headers: "*"
                    allow_credentials: true
                    allow_private_network_access: true
              - match: {prefix: "/cors/shadow"}
                route: {cluster: backend}
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    filter_enabled: {default_value: {numerator: 0, denominator: HUNDRED}}
                    shadow_enabled: {default_value: {numerator: 100, denominator: HUNDRED}}
              - match: {prefix: "/cors/fwd"}
                route: {cluster: backend}
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    allow_origin_string_match: [{exact: "https://a.com"}]
                    forward_not_matching_preflights: false
              - match: {prefix: "/direct"}
                direct_response: {status: 200, body: {inline_string: "direct"}}
"#
    .to_string()
        + ROUTE_ALL;
    let filters = r#"          - name: envoy.filters.http.cors
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"#;
    let up = upstream();
    let Some(pair) = start_pair("cors", &bootstrap("", vhost, &routes, filters), up) else { return };
    let pre = |origin: &'static str| -> Vec<&'static str> {
        vec!["-X", "OPTIONS", "-H", origin, "-H", "access-control-request-method: PUT"]
    };
    let r = same("preflight, any origin", &pair, "/cors/open", &pre("origin: https://x.com"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://x.com"));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET"));
    let mut args = pre("origin: https://x.envoyproxy.io");
    args.extend(["-H", "access-control-request-headers: x-y", "-H", "access-control-request-private-network: true"]);
    let r = same("preflight, restricted, allowed", &pair, "/cors/restricted", &args);
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-allow-methods"), Some("PUT"));
    assert_eq!(r.header("access-control-allow-private-network"), Some("true"));
    let r = same("preflight, restricted, not allowed", &pair, "/cors/restricted", &pre("origin: https://x.com"));
    assert!(r.header("access-control-allow-origin").is_none(), "forwarded upstream");
    let r = same("simple, allowed", &pair, "/cors/restricted", &["-H", "origin: https://a.envoyproxy.io"]);
    assert_eq!(r.header("access-control-expose-headers"), Some("x-exp"));
    same("simple, any", &pair, "/cors/open", &["-H", "origin: https://x.com"]);
    same("simple, no origin", &pair, "/cors/open", &[]);
    same("disabled", &pair, "/cors/disabled", &pre("origin: https://x.com"));
    same("shadow", &pair, "/cors/shadow", &["-H", "origin: https://x.com"]);
    let r = same("preflight, not forwarded", &pair, "/cors/fwd", &pre("origin: https://b.com"));
    assert_eq!(r.header("content-length"), Some("0"));
    same("direct response untouched", &pair, "/direct", &pre("origin: https://b.com"));
    assert_eq!(pair.0.stat("http.ingress_http.cors.origin_valid"), pair.1.stat("http.ingress_http.cors.origin_valid"));
}

#[test]
fn fault_matches_envoy() {
    let routes = r#"              - match: {prefix: "/route-abort"}
                route: {cluster: backend}
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    abort: {http_status: 418, percentage: {numerator: 100}}
              - match: {prefix: "/other-cluster"}
                route: {cluster: backend}
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    upstream_cluster: nope
                    abort: {http_status: 500, percentage: {numerator: 100}}
              - match: {prefix: "/delay"}
                route: {cluster: backend}
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    delay: {fixed_delay: 0.3s, percentage: {numerator: 100}}
              - match: {prefix: "/grpc"}
                route: {cluster: backend}
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    abort: {grpc_status: 5, percentage: {numerator: 100}}
              - match: {prefix: "/throttle"}
                route: {cluster: backend}
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    response_rate_limit: {fixed_limit: {limit_kbps: 8}, percentage: {numerator: 100}}
"#
    .to_string()
        + ROUTE_ALL;
    let filters = r#"          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              abort: {header_abort: {}, percentage: {numerator: 100}}
              headers: [{name: x-fault, present_match: true}]"#;
    let up = upstream();
    let Some(pair) = start_pair("fault", &bootstrap("", "", &routes, filters), up) else { return };
    let r = same("no header: no fault", &pair, "/x", &[]);
    assert_eq!(r.status, 200);
    same("header matcher without abort header", &pair, "/x", &["-H", "x-fault: 1"]);
    let r = same("header abort", &pair, "/x", &["-H", "x-fault: 1", "-H", "x-envoy-fault-abort-request: 503"]);
    assert_eq!((r.status, &r.body[..]), (503, &b"fault filter abort"[..]));
    same(
        "header abort, 0%",
        &pair,
        "/x",
        &[
            "-H",
            "x-fault: 1",
            "-H",
            "x-envoy-fault-abort-request: 503",
            "-H",
            "x-envoy-fault-abort-request-percentage: 0",
        ],
    );
    let r = same("route abort", &pair, "/route-abort", &[]);
    assert_eq!(r.status, 418);
    same("upstream_cluster mismatch", &pair, "/other-cluster", &[]);
    let r = same("grpc abort", &pair, "/grpc", &["-H", "content-type: application/grpc"]);
    assert_eq!(r.header("grpc-status"), Some("5"));
    same("grpc abort to a plain request", &pair, "/grpc", &[]);
    for p in [&pair.0, &pair.1] {
        let t = Instant::now();
        let r = curl(&[p.url("/delay").as_str()]);
        assert_eq!(r.status, 200);
        assert!(t.elapsed() >= Duration::from_millis(280), "{}: delay {:?}", p.name, t.elapsed());
    }
    for p in [&pair.0, &pair.1] {
        // 4 KiB at 8 KiB/s: about half a second.
        let t = Instant::now();
        let r = curl(&[p.url("/throttle?n=4096").as_str()]);
        assert_eq!(r.body.len(), 4096);
        let e = t.elapsed();
        assert!(e >= Duration::from_millis(350) && e < Duration::from_secs(3), "{}: throttled {e:?}", p.name);
    }
    for stat in ["aborts_injected", "delays_injected", "response_rl_injected", "active_faults"] {
        let name = format!("http.ingress_http.fault.{stat}");
        assert_eq!(pair.0.stat(&name), pair.1.stat(&name), "{name}");
    }
    assert_eq!(pair.1.stat("http.ingress_http.fault.aborts_injected"), Some(4));
}

#[test]
fn local_ratelimit_matches_envoy() {
    let routes = r#"              - match: {prefix: "/route"}
                route: {cluster: backend}
                typed_per_filter_config:
                  envoy.filters.http.local_ratelimit:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                    stat_prefix: route_rl
                    status: {code: 302}
                    enable_x_ratelimit_headers: DRAFT_VERSION_03
                    token_bucket: {max_tokens: 1, tokens_per_fill: 1, fill_interval: 60s}
                    filter_enabled: {default_value: {numerator: 100, denominator: HUNDRED}}
                    filter_enforced: {default_value: {numerator: 100, denominator: HUNDRED}}
                    response_headers_to_add: [{header: {key: x-rl, value: "yes"}}]
              - match: {prefix: "/shadow"}
                route: {cluster: backend}
                typed_per_filter_config:
                  envoy.filters.http.local_ratelimit:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                    stat_prefix: shadow_rl
                    token_bucket: {max_tokens: 1, tokens_per_fill: 1, fill_interval: 60s}
                    filter_enabled: {default_value: {numerator: 100, denominator: HUNDRED}}
                    request_headers_to_add_when_not_enforced: [{header: {key: x-limited, value: "1"}}]
"#
    .to_string()
        + ROUTE_ALL;
    let filters = r#"          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: http_local_rate_limiter
              token_bucket: {max_tokens: 2, tokens_per_fill: 2, fill_interval: 60s}
              filter_enabled: {runtime_key: e, default_value: {numerator: 100, denominator: HUNDRED}}
              filter_enforced: {runtime_key: f, default_value: {numerator: 100, denominator: HUNDRED}}
              response_headers_to_add:
              - append_action: OVERWRITE_IF_EXISTS_OR_ADD
                header: {key: x-local-rate-limit, value: 'true'}"#;
    let up = upstream();
    let Some(pair) = start_pair("lrl", &bootstrap("", "", &routes, filters), up) else { return };
    same("first", &pair, "/x", &[]);
    same("second", &pair, "/x", &[]);
    let r = same("third: limited", &pair, "/x", &[]);
    assert_eq!((r.status, &r.body[..]), (429, &b"local_rate_limited"[..]));
    assert_eq!(r.header("x-local-rate-limit"), Some("true"));
    let r = same("route: allowed with x-ratelimit", &pair, "/route", &[]);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    let r = same("route: limited", &pair, "/route", &[]);
    assert_eq!(r.status, 429);
    let r = same("route: grpc", &pair, "/route", &["-H", "content-type: application/grpc"]);
    assert_eq!(r.header("grpc-status"), Some("14"));
    same("shadow: first", &pair, "/shadow?echo=x-limited", &[]);
    let r = same("shadow: not enforced", &pair, "/shadow?echo=x-limited", &[]);
    assert_eq!((r.status, r.header("x-echo")), (200, Some("1")));
    for s in [
        "http_local_rate_limiter.http_local_rate_limit.enabled",
        "http_local_rate_limiter.http_local_rate_limit.enforced",
        "http_local_rate_limiter.http_local_rate_limit.rate_limited",
        "http_local_rate_limiter.http_local_rate_limit.ok",
        "route_rl.http_local_rate_limit.rate_limited",
        "shadow_rl.http_local_rate_limit.rate_limited",
        "shadow_rl.http_local_rate_limit.enforced",
    ] {
        assert_eq!(pair.0.stat(s), pair.1.stat(s), "{s}");
    }
}

fn decode(encoding: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        Some("gzip") => {
            flate2::read::GzDecoder::new(body).read_to_end(&mut out).expect("gzip");
        }
        Some("br") => {
            brotli::Decompressor::new(body, 4096).read_to_end(&mut out).expect("brotli");
        }
        Some("zstd") => out = zstd::stream::decode_all(body).expect("zstd"),
        _ => out = body.to_vec(),
    }
    out
}

#[test]
fn compressor_matches_envoy() {
    let lib = |name: &str, ty: &str, extra: &str| {
        format!(
            r#"          - name: envoy.filters.http.compressor.{name}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              compressor_library:
                name: text_optimized_{name}
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.compression.{ty}
{extra}"#
        )
    };
    let filters = [
        lib("brotli", "brotli.compressor.v3.Brotli", ""),
        lib("zstd", "zstd.compressor.v3.Zstd", ""),
        lib(
            "gzip",
            "gzip.compressor.v3.Gzip",
            "              response_direction_config:\n                disable_on_etag_header: true",
        ),
    ]
    .join("\n");
    let up = upstream();
    let Some(pair) = start_pair("compressor", &bootstrap("", "", ROUTE_ALL, &filters), up) else { return };
    let cases: &[(&str, &str, &[&str])] = &[
        ("gzip", "/?n=500", &["-H", "accept-encoding: gzip"]),
        ("br preferred by q", "/?n=500", &["-H", "accept-encoding: gzip;q=0.5, br;q=0.9"]),
        ("first of equals", "/?n=500", &["-H", "accept-encoding: zstd, gzip, br"]),
        ("wildcard", "/?n=500", &["-H", "accept-encoding: *"]),
        ("wildcard minus br", "/?n=500", &["-H", "accept-encoding: br;q=0, *"]),
        ("identity", "/?n=500", &["-H", "accept-encoding: identity"]),
        ("unknown", "/?n=500", &["-H", "accept-encoding: deflate"]),
        ("no accept-encoding", "/?n=500", &[]),
        ("too small", "/?n=20", &["-H", "accept-encoding: gzip"]),
        ("not compressible type", "/?n=500&ct=image/png", &["-H", "accept-encoding: gzip"]),
        ("json", "/?n=500&ct=application/json;charset=utf-8", &["-H", "accept-encoding: gzip"]),
        ("chunked", "/?n=5000&chunked=1", &["-H", "accept-encoding: gzip"]),
        ("already encoded", "/?n=500&h=content-encoding:foo", &["-H", "accept-encoding: gzip"]),
        ("no-transform", "/?n=500&h=cache-control:no-transform", &["-H", "accept-encoding: gzip"]),
        ("strong etag removed", "/?n=500&h=etag:%22abc%22", &["-H", "accept-encoding: br"]),
        ("weak etag kept", "/?n=500&h=etag:W/%22abc%22", &["-H", "accept-encoding: br"]),
        ("etag disables gzip", "/?n=500&h=etag:%22abc%22", &["-H", "accept-encoding: gzip"]),
        ("vary merged", "/?n=500&h=vary:origin", &["-H", "accept-encoding: gzip"]),
        ("HEAD", "/?n=500", &["-I", "-H", "accept-encoding: gzip"]),
        ("204", "/?n=0&s=204", &["-H", "accept-encoding: gzip"]),
        ("h2 br", "/?n=5000&chunked=1", &["--http2-prior-knowledge", "-H", "accept-encoding: br"]),
        ("h2 zstd", "/?n=700", &["--http2-prior-knowledge", "-H", "accept-encoding: zstd"]),
    ];
    for (what, path, args) in cases {
        let e = curl(&[*args, &[pair.0.url(path).as_str()]].concat());
        let r = curl(&[*args, &[pair.1.url(path).as_str()]].concat());
        assert_eq!(e.status, r.status, "{what}: status");
        assert_eq!(e.stable_headers(), r.stable_headers(), "{what}: headers");
        if args.contains(&"-I") {
            // curl writes the headers into the body file for HEAD.
            continue;
        }
        let (de, dr) = (decode(e.header("content-encoding"), &e.body), decode(r.header("content-encoding"), &r.body));
        assert_eq!(de, dr, "{what}: decoded body");
    }
    for stat in ["compressed", "not_compressed", "header_compressor_used", "header_wildcard", "no_accept_header"] {
        let name = format!("http.ingress_http.compressor.text_optimized_gzip.gzip.{stat}");
        let name = if stat.contains("compressed") {
            format!("http.ingress_http.compressor.text_optimized_gzip.gzip.response.{stat}")
        } else {
            name
        };
        assert_eq!(pair.0.stat(&name), pair.1.stat(&name), "{name}");
    }
}

/// Replaces the timing fields of Envoy's default line (`[START_TIME]`, duration, service time).
fn normalize_default_line(l: &str) -> String {
    let l = l.split_once("] ").map(|(_, rest)| rest).unwrap_or(l);
    let mut fields: Vec<&str> = l.split(' ').collect();
    // "METHOD PATH PROTOCOL" CODE FLAGS RX TX DURATION SERVICE_TIME ...
    if fields.len() > 8 {
        fields[7] = "D";
        if fields[8] != "-" {
            fields[8] = "S";
        }
    }
    fields.join(" ")
}

#[test]
fn access_log_matches_envoy() {
    let hcm = r#"          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {DIR}/default.log
          - name: envoy.access_loggers.file
            filter:
              or_filter:
                filters:
                - status_code_filter: {comparison: {op: GE, value: {default_value: 400, runtime_key: k}}}
                - response_flag_filter: {flags: [NR]}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {DIR}/errors.log
              log_format:
                text_format_source:
                  inline_string: "%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %BYTES_SENT% %UPSTREAM_CLUSTER% %ROUTE_NAME% %REQ(X-REQUEST-ID)%\n"
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {DIR}/json.log
              log_format:
                json_format:
                  code: "%RESPONSE_CODE%"
                  flags: "%RESPONSE_FLAGS%"
                  up: "%UPSTREAM_HOST%"
                  cluster: "%UPSTREAM_CLUSTER%"
                  details: "%RESPONSE_CODE_DETAILS%"
                  sent: "%BYTES_SENT%"
                  received: "%BYTES_RECEIVED%"
                  req: "%REQ(:METHOD)% %REQ(:PATH)%"
                  ua: "%REQ(USER-AGENT)%"
                  nested: {authority: "%REQ(:AUTHORITY)%", proto: "%PROTOCOL%"}"#;
    let routes = r#"              - match: {prefix: "/direct"}
                name: direct_route
                direct_response: {status: 200, body: {inline_string: "made"}}
              - match: {prefix: "/limited"}
                route: {cluster: backend}
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    abort: {http_status: 503, percentage: {numerator: 100}}
              - match: {prefix: "/up"}
                name: upstream_route
                route: {cluster: backend}
"#;
    let filters = r#"          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"#;
    let up = upstream();
    let Some(pair) = start_pair("access_log", &bootstrap(hcm, "", routes, filters), up) else { return };
    let requests: &[(&str, &[&str])] = &[
        ("/up/a?n=10", &["-H", "x-request-id: r1", "-H", "user-agent: t1"]),
        ("/up/b?s=404", &["-H", "x-request-id: r2", "-H", "user-agent: t2", "-H", "x-forwarded-for: 1.2.3.4"]),
        ("/direct", &["-H", "x-request-id: r3", "-H", "user-agent: t3"]),
        ("/limited", &["-H", "x-request-id: r4", "-H", "user-agent: t4"]),
        ("/nothing", &["-H", "x-request-id: r5", "-H", "user-agent: t5"]),
        ("/up/post", &["-H", "x-request-id: r6", "-H", "user-agent: t6", "-d", "0123456789"]),
        ("/up/h2?n=3000", &["--http2-prior-knowledge", "-H", "x-request-id: r7", "-H", "user-agent: t7"]),
    ];
    for (path, args) in requests {
        same(path, &pair, path, args);
    }
    std::thread::sleep(Duration::from_millis(400));
    let read = |p: &support::Proxy, f: &str| std::fs::read_to_string(p.file(f)).unwrap_or_default();
    let lines = |p: &support::Proxy| -> Vec<String> {
        read(p, "default.log").lines().map(|l| normalize_default_line(l).replace(&p.port.to_string(), "PORT")).collect()
    };
    let (e, r) = (lines(&pair.0), lines(&pair.1));
    assert_eq!(e.len(), requests.len(), "envoy default log: {e:?}");
    assert_eq!(e, r, "default format");
    assert_eq!(read(&pair.0, "errors.log"), read(&pair.1, "errors.log"), "filtered text format");
    assert_eq!(read(&pair.1, "errors.log").lines().count(), 3, "404, 503 and NR");
    let json = |p: &support::Proxy| read(p, "json.log").replace(&p.port.to_string(), "PORT");
    assert_eq!(json(&pair.0), json(&pair.1), "json format");
}

#[test]
fn legacy_cors_and_descriptors_match_envoy() {
    // The deprecated `cors` field on the virtual host and route, and a descriptor bucket
    // selected by the filter's own `rate_limits`.
    let vhost = r#"              cors:
                allow_origin_string_match: [{prefix: "https://good"}]
                allow_methods: "GET,POST"
                expose_headers: "x-vh""#;
    let routes = r#"              - match: {prefix: "/route-cors"}
                route:
                  cluster: backend
                  cors:
                    allow_origin_string_match: [{exact: "https://route.com"}]
                    max_age: "30"
"#
    .to_string()
        + ROUTE_ALL;
    let filters = r#"          - name: envoy.filters.http.cors
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: desc
              token_bucket: {max_tokens: 100, tokens_per_fill: 100, fill_interval: 60s}
              filter_enabled: {default_value: {numerator: 100, denominator: HUNDRED}}
              filter_enforced: {default_value: {numerator: 100, denominator: HUNDRED}}
              enable_x_ratelimit_headers: DRAFT_VERSION_03
              rate_limits:
              - actions:
                - request_headers: {header_name: x-client, descriptor_key: client}
              descriptors:
              - entries: [{key: client, value: slow}]
                token_bucket: {max_tokens: 1, tokens_per_fill: 1, fill_interval: 60s}"#;
    let up = upstream();
    let Some(pair) = start_pair("legacy", &bootstrap("", vhost, &routes, filters), up) else { return };
    let pre = ["-X", "OPTIONS", "-H", "access-control-request-method: PUT"];
    same("vhost cors preflight", &pair, "/x", &[&pre[..], &["-H", "origin: https://good.com"]].concat());
    same("vhost cors simple", &pair, "/x", &["-H", "origin: https://good.com"]);
    same("vhost cors rejected", &pair, "/x", &["-H", "origin: https://bad.com"]);
    let r =
        same("route cors preflight", &pair, "/route-cors", &[&pre[..], &["-H", "origin: https://route.com"]].concat());
    assert_eq!(r.header("access-control-max-age"), Some("30"));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET,POST"), "falls back to the vhost");
    same("descriptor: first", &pair, "/x", &["-H", "x-client: slow"]);
    let r = same("descriptor: limited", &pair, "/x", &["-H", "x-client: slow"]);
    assert_eq!(r.status, 429);
    let r = same("other client: default bucket", &pair, "/x", &["-H", "x-client: fast"]);
    assert_eq!(r.status, 200);
    same("no descriptor", &pair, "/x", &[]);
}

/// An ORIGINAL_DST cluster behind a listener that restored no destination (no iptables
/// redirect, no original_dst filter): Envoy picks no host (503 `no healthy upstream`) rather
/// than connecting back to the listener's own address.
#[test]
fn original_dst_cluster_without_a_restored_destination_matches_envoy() {
    let routes = r#"              - match: {prefix: "/pt"}
                route: {cluster: passthrough}
              - match: {prefix: "/"}
                route: {cluster: backend}"#;
    let cfg = bootstrap("", "", routes, "")
        + "  - name: passthrough\n    type: ORIGINAL_DST\n    lb_policy: CLUSTER_PROVIDED\n    connect_timeout: 1s\n";
    let up = upstream();
    let Some(pair) = start_pair("original_dst_unrestored", &cfg, up) else { return };
    let r = same("ORIGINAL_DST, nothing restored", &pair, "/pt", &[]);
    assert_eq!((r.status, String::from_utf8_lossy(&r.body).as_ref()), (503, "no healthy upstream"));
    assert_eq!(same("other routes unaffected", &pair, "/x", &[]).status, 200);
}

/// Hop-by-hop headers (RFC 9110 7.6.1): what reaches the upstream and what reaches the client,
/// including headers the `Connection` header names, and `te: trailers`, which survives.
#[test]
fn hop_by_hop_headers_match_envoy() {
    let up = upstream();
    let Some(pair) = start_pair("hop_by_hop", &bootstrap("", "", ROUTE_ALL, ""), up) else { return };
    let request = [
        "-H",
        "Connection: keep-alive, X-Nominated",
        "-H",
        "x-nominated: 1",
        "-H",
        "keep-alive: timeout=5",
        "-H",
        "proxy-connection: keep-alive",
        "-H",
        "x-kept: 1",
    ];
    let mut seen = Vec::new();
    for name in ["x-nominated", "keep-alive", "proxy-connection", "connection", "x-kept"] {
        let r = same(&format!("request {name}"), &pair, &format!("/?echo={name}"), &request);
        seen.push((name, r.header("x-echo").map(str::to_string)));
    }
    assert_eq!(seen.last(), Some(&("x-kept", Some("1".to_string()))), "{seen:?}");
    assert!(seen.iter().take(4).all(|(_, v)| v.is_none()), "hop-by-hop headers reached the upstream: {seen:?}");
    for te in ["trailers", "gzip"] {
        same(&format!("te: {te}"), &pair, "/?echo=te", &["-H", &format!("te: {te}")]);
    }
    // Response side: the upstream names a header in its Connection header.
    let r = same("response", &pair, "/?h=connection:x-up&h=x-up:1&h=keep-alive:timeout%3D5&h=x-other:1", &[]);
    assert_eq!(r.header("x-other"), Some("1"), "{r:?}");
}
