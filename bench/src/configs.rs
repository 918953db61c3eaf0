//! Equivalent configs for each target: one Envoy bootstrap that both Envoy and remora run, and
//! the closest HAProxy and nginx equivalents. Everything listens on 127.0.0.1.

/// The upstream's response body: 1 KiB, as in Istio's published benchmark conditions.
pub const BODY_LEN: usize = 1024;

/// Certificate paths for the sidecar pair (dev CA from `remora certs`).
pub struct PairCerts {
    pub root: String,
    /// Client side (the outbound proxy's workload identity).
    pub client_chain: String,
    pub client_key: String,
    /// cert + key in one file, as HAProxy's `crt` wants.
    pub client_pem: String,
    /// Server side (the inbound proxy's workload identity).
    pub server_chain: String,
    pub server_key: String,
    pub server_pem: String,
}

pub const CLIENT_SPIFFE: &str = "spiffe://cluster.local/ns/bench/sa/client";
pub const SERVER_SPIFFE: &str = "spiffe://cluster.local/ns/bench/sa/server";

/// The upstream: nginx, one worker, answering every request with 1 KiB.
pub fn upstream_nginx(dir: &str, port: u16) -> String {
    let body = "a".repeat(BODY_LEN);
    format!(
        r#"daemon off;
master_process on;
worker_processes 1;
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    location / {{
      default_type text/plain;
      return 200 "{body}";
    }}
  }}
}}
"#
    )
}

fn hcm(stat_prefix: &str, cluster: &str, codec: &str) -> String {
    format!(
        r#"      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {stat_prefix}
          codec_type: {codec}
          route_config:
            name: local_route
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: {cluster}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
    )
}

fn static_cluster(name: &str, port: u16, extra: &str) -> String {
    format!(
        r#"  - name: {name}
    type: STATIC
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
{extra}    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"#
    )
}

fn admin(port: u16) -> String {
    format!("admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}\n")
}

/// What istiod puts on an outbound cluster with a DestinationRule's connection pool and outlier
/// detection: circuit breakers with remaining gauges, locality weighting, outlier detection,
/// TCP keepalive (for measuring their cost beside the plain hop).
pub const RESILIENCE: &str = r#"    circuit_breakers:
      thresholds:
      - {max_connections: 4294967295, max_pending_requests: 4294967295, max_requests: 4294967295, max_retries: 4294967295, track_remaining: true}
    common_lb_config: {locality_weighted_lb_config: {}}
    outlier_detection: {consecutive_5xx: 5, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 50}
    upstream_connection_options: {tcp_keepalive: {keepalive_time: 300}}
"#;

/// One plaintext HTTP/1.1 hop: listener `port` -> static cluster on `upstream`.
pub fn envoy_hop(admin_port: u16, port: u16, upstream: u16) -> String {
    envoy_hop_with(admin_port, port, upstream, "")
}

/// [`envoy_hop`] with `extra` cluster fields (for instance [`RESILIENCE`]).
pub fn envoy_hop_with(admin_port: u16, port: u16, upstream: u16, extra: &str) -> String {
    format!(
        r#"{admin}static_resources:
  listeners:
  - name: hop
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
{hcm}  clusters:
{cluster}"#,
        admin = admin(admin_port),
        hcm = hcm("hop", "upstream", "AUTO"),
        cluster = static_cluster("upstream", upstream, extra),
    )
}

fn tls_certificates(indent: &str, chain: &str, key: &str) -> String {
    format!(
        "{indent}tls_certificates:\n{indent}- certificate_chain: {{filename: {chain}}}\n{indent}  private_key: {{filename: {key}}}\n"
    )
}

fn validation(indent: &str, root: &str, san: &str) -> String {
    format!(
        "{indent}validation_context:\n{indent}  trusted_ca: {{filename: {root}}}\n{indent}  match_typed_subject_alt_names:\n{indent}  - san_type: URI\n{indent}    matcher: {{exact: \"{san}\"}}\n"
    )
}

/// The outbound sidecar: plaintext HTTP/1.1 in on `port`, mTLS + HTTP/2 out to `inbound`.
pub fn envoy_outbound(admin_port: u16, port: u16, inbound: u16, certs: &PairCerts) -> String {
    let ind = "          ";
    let tls = format!(
        r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: inbound.bench
        common_tls_context:
          alpn_protocols: [h2]
{certs}{valid}"#,
        certs = tls_certificates(ind, &certs.client_chain, &certs.client_key),
        valid = validation(ind, &certs.root, SERVER_SPIFFE),
    );
    format!(
        r#"{admin}static_resources:
  listeners:
  - name: outbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
{hcm}  clusters:
{cluster}"#,
        admin = admin(admin_port),
        hcm = hcm("outbound", "inbound", "AUTO"),
        cluster = static_cluster("inbound", inbound, &tls),
    )
}

/// The inbound sidecar: mTLS in on `port` (client certificate required, HTTP/2 or HTTP/1.1),
/// plaintext HTTP/1.1 out to `upstream`.
pub fn envoy_inbound(admin_port: u16, port: u16, upstream: u16, certs: &PairCerts) -> String {
    let ind = "            ";
    format!(
        r#"{admin}static_resources:
  listeners:
  - name: inbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
{certs}{valid}      filters:
{hcm}  clusters:
{cluster}"#,
        admin = admin(admin_port),
        certs = tls_certificates(ind, &certs.server_chain, &certs.server_key),
        valid = validation(ind, &certs.root, CLIENT_SPIFFE),
        hcm = hcm("inbound", "upstream", "AUTO"),
        cluster = static_cluster("upstream", upstream, ""),
    )
}

fn haproxy_global() -> &'static str {
    r#"global
  nbthread 1
  maxconn 4096
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
"#
}

/// HAProxy one hop.
pub fn haproxy_hop(port: u16, upstream: u16) -> String {
    format!(
        "{}frontend hop\n  bind 127.0.0.1:{port}\n  default_backend upstream\nbackend upstream\n  server s1 127.0.0.1:{upstream}\n",
        haproxy_global()
    )
}

/// HAProxy outbound sidecar: plaintext in, mTLS + HTTP/2 out (SAN checking is by DNS name
/// only in HAProxy, so it verifies the chain against the root and not the SPIFFE URI).
pub fn haproxy_outbound(port: u16, inbound: u16, c: &PairCerts) -> String {
    format!(
        "{}frontend outbound\n  bind 127.0.0.1:{port}\n  default_backend inbound\nbackend inbound\n  server s1 127.0.0.1:{inbound} ssl crt {} ca-file {} verify required sni str(inbound.bench) alpn h2\n",
        haproxy_global(),
        c.client_pem,
        c.root
    )
}

/// HAProxy inbound sidecar: mTLS in (client certificate required), plaintext HTTP/1.1 out.
pub fn haproxy_inbound(port: u16, upstream: u16, c: &PairCerts) -> String {
    format!(
        "{}frontend inbound\n  bind 127.0.0.1:{port} ssl crt {} ca-file {} verify required alpn h2,http/1.1\n  default_backend upstream\nbackend upstream\n  server s1 127.0.0.1:{upstream}\n",
        haproxy_global(),
        c.server_pem,
        c.root
    )
}

fn nginx_proxy(dir: &str, server: &str, upstream: &str) -> String {
    format!(
        r#"daemon off;
master_process on;
worker_processes 1;
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  upstream backend {{
{upstream}    keepalive 64;
    keepalive_requests 1000000;
  }}
  server {{
{server}    location / {{
      proxy_pass {{scheme}}://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
    }}
  }}
}}
"#
    )
}

/// nginx one hop.
pub fn nginx_hop(dir: &str, port: u16, upstream: u16) -> String {
    nginx_proxy(
        dir,
        &format!("    listen 127.0.0.1:{port} backlog=4096;\n"),
        &format!("    server 127.0.0.1:{upstream};\n"),
    )
    .replace("{scheme}", "http")
}

/// nginx outbound sidecar: plaintext in, mTLS out (nginx proxies over HTTP/1.1 only).
pub fn nginx_outbound(dir: &str, port: u16, inbound: u16, c: &PairCerts) -> String {
    let conf = nginx_proxy(
        dir,
        &format!("    listen 127.0.0.1:{port} backlog=4096;\n"),
        &format!("    server 127.0.0.1:{inbound};\n"),
    )
    .replace("{scheme}", "https");
    conf.replace(
        "      proxy_http_version 1.1;\n",
        &format!(
            "      proxy_http_version 1.1;\n      proxy_ssl_certificate {};\n      proxy_ssl_certificate_key {};\n      proxy_ssl_trusted_certificate {};\n      proxy_ssl_verify on;\n      proxy_ssl_server_name on;\n      proxy_ssl_name inbound.bench;\n      proxy_ssl_session_reuse on;\n",
            c.client_chain, c.client_key, c.root
        ),
    )
}

/// nginx inbound sidecar: mTLS in (client certificate required), plaintext out.
pub fn nginx_inbound(dir: &str, port: u16, upstream: u16, c: &PairCerts) -> String {
    nginx_proxy(
        dir,
        &format!(
            "    listen 127.0.0.1:{port} ssl http2 backlog=4096;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_client_certificate {};\n    ssl_verify_client on;\n",
            c.server_chain, c.server_key, c.root
        ),
        &format!("    server 127.0.0.1:{upstream};\n"),
    )
    .replace("{scheme}", "http")
}

/// One hop terminating TLS (the handshake scenario): TLS in on `port` with the ECDSA P-256
/// certificate, plaintext HTTP/1.1 out to `upstream`, pooled.
pub fn envoy_tls_hop(admin_port: u16, port: u16, upstream: u16, cert: &str, key: &str) -> String {
    let ind = "            ";
    format!(
        r#"{admin}static_resources:
  listeners:
  - name: tls
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
{certs}      filters:
{hcm}  clusters:
{cluster}"#,
        admin = admin(admin_port),
        certs = tls_certificates(ind, cert, key),
        hcm = hcm("tls", "upstream", "AUTO"),
        cluster = static_cluster("upstream", upstream, ""),
    )
}

/// HAProxy terminating TLS, plaintext out.
pub fn haproxy_tls_hop(port: u16, upstream: u16, combined: &str) -> String {
    format!(
        "{}frontend tls\n  bind 127.0.0.1:{port} ssl crt {combined}\n  default_backend upstream\nbackend upstream\n  server s1 127.0.0.1:{upstream}\n",
        haproxy_global()
    )
}

/// nginx terminating TLS, plaintext out (1.22's default `ssl_protocols` lacks TLS 1.3).
pub fn nginx_tls_hop(dir: &str, port: u16, upstream: u16, cert: &str, key: &str) -> String {
    nginx_proxy(
        dir,
        &format!(
            "    listen 127.0.0.1:{port} ssl backlog=4096;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n"
        ),
        &format!("    server 127.0.0.1:{upstream};\n"),
    )
    .replace("{scheme}", "http")
}
