//! Envoy itself accepts what the control plane generates for examples/demo plus Istio's telemetry
//! (a mesh config with a Zipkin provider, a Telemetry with 100 % tracing and the `envoy` access
//! log): a sidecar's and the gateway's resources are served over Delta ADS to Envoy (`ENVOY_BIN`,
//! installed by scripts/install-test-deps), which must ACK clusters, endpoints, listeners and
//! routes and NACK nothing. Upstream Envoy lacks Istio's own extensions (`istio.alpn`,
//! `istio.metadata_exchange`, `istio.stats`): they are dropped from what Envoy is sent, with the
//! `istio-peer-exchange` ALPN, as proxy/tests/mesh does; everything else is sent as generated. The SDS secrets `default` and `ROOTCA` (pilot-agent's job; remora gets them with
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

/// The resources for upstream Envoy: Istio's own filters (`istio.*`) dropped from listener, HTTP
/// and cluster filter lists, and the `istio-peer-exchange` ALPN with them.
fn envoy_compatible(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("alpn_protocols", Value::Array(a)) => Value::Array(
                            a.iter().filter(|p| p.as_str() != Some("istio-peer-exchange")).cloned().collect(),
                        ),
                        ("filters" | "http_filters", Value::Array(a)) => Value::Array(
                            a.iter()
                                .filter(|f| !f["name"].as_str().is_some_and(|n| n.starts_with("istio.")))
                                .map(envoy_compatible)
                                .collect(),
                        ),
                        _ => envoy_compatible(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(envoy_compatible).collect()),
        other => other.clone(),
    }
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
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn envoy_accepts_the_generated_config() {
    let Some(envoy) = envoy() else {
        eprintln!("skipped: no Envoy (set ENVOY_BIN or run scripts/install-test-deps)");
        return;
    };
    let folder = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), folder.path().join(e.file_name())).unwrap();
    }
    std::fs::write(folder.path().join("telemetry.yaml"), TELEMETRY).unwrap();
    let mut mesh = mesh::runner::load(folder.path()).unwrap();
    mesh.renumber((std::process::id() % 250 + 1) as u8);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pod = mesh.pods.iter().find(|p| p.name == "frontend-0").unwrap().clone();
    let bind = [(8080u16, free_port())];
    for (label, proxy, node) in [
        ("sidecar", Proxy::Sidecar(&pod), pod.node_id()),
        ("gateway", Proxy::Gateway { bind: &bind }, xds::gateway_node_id()),
    ] {
        let cp = ControlPlane::new();
        // What Envoy is sent: the generated resources without Istio's own extensions.
        let mut istio_filters = 0;
        for (ty, values) in [
            (ads::CLUSTER, xds::clusters(&mesh, &proxy)),
            (ads::ENDPOINT, xds::endpoints(&mesh)),
            (ads::LISTENER, xds::listeners(&mesh, &proxy)),
            (
                ads::ROUTE,
                match &proxy {
                    Proxy::Sidecar(p) => xds::sidecar_route_configs(&mesh, &p.namespace),
                    Proxy::Gateway { .. } => xds::gateway_route_configs(&mesh),
                },
            ),
        ] {
            let mut res = Vec::new();
            for v in values {
                istio_filters += v.to_string().matches("\"istio.").count();
                let (_, name, any) =
                    xds_client::server::resource_from_json(&envoy_compatible(&v), "generated").unwrap();
                res.push((name, any));
            }
            cp.set_all(ty, res);
        }
        assert!(istio_filters > 0, "{label}: no Istio filter generated");
        let listeners = serde_json::to_string(&xds::listeners(&mesh, &proxy)).unwrap();
        for want in ["envoy.tracers.zipkin", "envoy.access_loggers.file", "istio.stats", "istio.metadata_exchange"] {
            assert!(listeners.contains(want), "{label}: no {want} in {listeners}");
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
