//! Envoy itself accepts what the control plane generates for examples/demo and for the mesh of
//! tests/data/routes (mirrors, rewrites, redirects, direct responses, header operations,
//! query/header/cookie matches, per-subset and port-level policies), and for examples/demo with
//! Istio's telemetry (a mesh config with a Zipkin provider, a Telemetry with 100 % tracing,
//! custom tags and the `envoy` access log): a sidecar's and the gateway's resources are served
//! over Delta ADS to Envoy (`ENVOY_BIN`, installed by scripts/install-test-deps), which must ACK
//! clusters, endpoints, listeners and routes and NACK nothing. Upstream Envoy lacks Istio's own
//! extensions (`istio.alpn`, `istio.metadata_exchange`, `istio.stats`): they are dropped from
//! what it is sent (`mesh::resources_for_envoy`), as proxy/tests/mesh does; everything else is
//! sent as generated. The SDS secrets `default` and `ROOTCA` (pilot-agent's job; remora gets them with
//! `--ca-address`) come from the same harness, signed by a dev CA. Skipped when Envoy is not
//! installed. (remora's acceptance is checked by the demo test.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mesh::xds::{self, Proxy};
use xds_client::ads;
use xds_client::server::ControlPlane;

fn envoy() -> Option<PathBuf> {
    let p = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/remora/envoy-venv/bin/envoy")))?;
    p.exists().then_some(p)
}

/// Istio's telemetry for the demo: the mesh config with a Zipkin provider (a selector-less
/// Service and its Endpoints), a mesh-wide Telemetry with 100 % tracing and access logs.
const TELEMETRY: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: zipkin
      zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
---
apiVersion: v1
kind: Service
metadata: {name: zipkin, namespace: istio-system}
spec:
  ports: [{name: http-zipkin, port: 9411}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: zipkin, namespace: istio-system}
subsets: [{addresses: [{ip: 127.0.0.1}], ports: [{name: http-zipkin, port: 9411}]}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - providers: [{name: zipkin}]
    randomSamplingPercentage: 100
    customTags:
      env: {literal: {value: demo}}
      client: {header: {name: x-client, defaultValue: unknown}}
      host: {environment: {name: HOSTNAME, defaultValue: unknown}}
  accessLogging: [{providers: [{name: envoy}]}]
  metrics:
  - overrides:
    - match: {metric: REQUEST_COUNT, mode: CLIENT}
      tagOverrides: {request_method: {value: request.method}}
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn envoy_accepts_the_generated_config() {
    envoy_acks(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo"), "frontend-0", 8080, 0);
}

#[test]
fn envoy_accepts_the_telemetry() {
    let folder = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), folder.path().join(e.file_name())).unwrap();
    }
    std::fs::write(folder.path().join("telemetry.yaml"), TELEMETRY).unwrap();
    // What remora gets carries Istio's filters, tracing and access logs; Envoy gets the same
    // minus Istio's own filters.
    let mesh = mesh::runner::load(folder.path()).unwrap();
    let pod = mesh.pods.iter().find(|p| p.name == "frontend-0").unwrap();
    let bind = [(8080u16, 18080u16)];
    for proxy in [Proxy::Sidecar(pod), Proxy::Gateway { bind: &bind }] {
        let listeners = serde_json::to_string(&xds::listeners(&mesh, &proxy)).unwrap();
        for want in
            ["envoy.tracers.zipkin", "envoy.access_loggers.file", "\"istio.stats\"", "\"istio.metadata_exchange\""]
        {
            assert!(listeners.contains(want), "no {want} in {listeners}");
        }
        let stripped =
            serde_json::to_string(&xds::telemetry::for_upstream_envoy(&serde_json::from_str(&listeners).unwrap()))
                .unwrap();
        assert!(!stripped.contains("\"name\":\"istio.") && stripped.contains("envoy.tracers.zipkin"), "{stripped}");
    }
    envoy_acks(folder.path(), "frontend-0", 8080, 3);
}

#[test]
fn envoy_accepts_the_routing_features() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/routes");
    // front-0's sidecar gets the sourceLabels rule, shop-v1-0's the retryRemoteLocalities one;
    // the gateway gets every edge feature.
    envoy_acks(&dir, "front-0", 80, 1);
    envoy_acks(&dir, "shop-v1-0", 80, 2);
}

/// Serves `pod`'s sidecar resources, then the gateway's (server port `gateway_port`), to Envoy.
/// `block` keeps the tests of one run on different loopback blocks (their listeners would clash).
fn envoy_acks(mesh_dir: &Path, pod: &str, gateway_port: u16, block: u32) {
    let Some(envoy) = envoy() else {
        eprintln!("skipped: no Envoy (set ENVOY_BIN or run scripts/install-test-deps)");
        return;
    };
    let mut mesh = mesh::runner::load(mesh_dir).unwrap();
    mesh.renumber(((std::process::id() + block) % 250 + 1) as u8);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pod = mesh.pods.iter().find(|p| p.name == pod).unwrap().clone();
    let bind = [(gateway_port, free_port())];
    for (label, proxy, node) in [
        ("sidecar", Proxy::Sidecar(&pod), pod.node_id()),
        ("gateway", Proxy::Gateway { bind: &bind }, xds::gateway_node_id()),
    ] {
        let cp = ControlPlane::new();
        for (ty, res) in mesh::resources_for_envoy(&mesh, &proxy).unwrap() {
            cp.set_all(ty, res);
        }
        let ca = certs::dev_ca::DevCa::new_root(&certs::dev_ca::CaOptions::default()).unwrap();
        let id = certs::SpiffeId::parse(&pod.spiffe()).unwrap();
        let leaf = ca.issue(&certs::dev_ca::WorkloadOptions::spiffe(id)).unwrap();
        for secret in [
            serde_json::json!({"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                "name": "default", "tls_certificate": {"certificate_chain": {"inline_string": leaf.chain_pem},
                "private_key": {"inline_string": leaf.key_pem}}}),
            serde_json::json!({"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                "name": "ROOTCA", "validation_context": {"trusted_ca": {"inline_string": leaf.root_pem}}}),
        ] {
            let (ty, name, any) = xds_client::server::resource_from_json(&secret, "secret").unwrap();
            cp.set(ty, &name, any);
        }
        let addr = rt.block_on(cp.serve_tcp(([127, 0, 0, 1], 0).into())).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("bootstrap.json");
        let metadata = xds::telemetry::node_metadata(match &proxy {
            Proxy::Sidecar(p) => Some(*p),
            Proxy::Gateway { .. } => None,
        });
        // sds-grpc: the harness (HTTP/2) instead of pilot-agent's socket.
        let boot = mesh::runner::bootstrap(&node, "demo", &metadata, free_port(), addr).replace(
            r#"{"pipe": {"path": "./var/run/secrets/workload-spiffe-uds/socket"}}"#,
            &format!(r#"{{"socket_address": {{"address": "127.0.0.1", "port_value": {}}}}}"#, addr.port()),
        );
        let boot = boot.replace(
            r#"{"name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s","#,
            r#"{"name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s",
              "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},"#,
        );
        assert_eq!(boot.matches(&format!("\"port_value\": {}", addr.port())).count(), 2, "{boot}");
        std::fs::write(&cfg, boot).unwrap();
        let mut child = Command::new(&envoy)
            .arg("-c")
            .arg(&cfg)
            .args(["--concurrency", "1", "-l", "warning", "--base-id", &free_port().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("envoy.log")).unwrap())
            .spawn()
            .unwrap();
        let done = rt.block_on(cp.wait_for(
            |cp| {
                let acks = cp.acks();
                !cp.nacks().is_empty()
                    || [ads::CLUSTER, ads::ENDPOINT, ads::LISTENER, ads::ROUTE]
                        .iter()
                        .all(|t| acks.iter().any(|a| a.type_url == *t))
            },
            Duration::from_secs(30),
        ));
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(dir.path().join("envoy.log")).unwrap_or_default();
        assert!(cp.nacks().is_empty(), "{label}: Envoy NACKed: {:#?}\n{log}", cp.nacks());
        assert!(done, "{label}: Envoy did not ACK every type: {:?}\n{log}", cp.acks());
    }
}
