//! `ClientConfig` from pilot-agent's rendered bootstraps (ads_config on the `xds-grpc` pipe,
//! SDS on `sds-grpc`), the error cases, and a client started from a bootstrap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ads_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType as PbApiType;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, GoogleGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::{
    Address, ApiConfigSource, BackoffStrategy, GrpcService, RetryPolicy, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use xds_client::ads::{self, ApiType, ClientConfig, Target};
use xds_client::bootstrap::{BootstrapSource, load};

/// `REMORA_TESTDATA`, else the first `shared/testdata` above the crate.
fn testdata() -> PathBuf {
    if let Some(dir) = std::env::var_os("REMORA_TESTDATA") {
        return PathBuf::from(dir);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .map(|a| a.join("shared/testdata"))
        .find(|p| p.is_dir())
        .expect("shared test data not found (set REMORA_TESTDATA)")
}

fn golden(name: &str) -> Bootstrap {
    let path = testdata().join("istio/bootstrap").join(name);
    load(&BootstrapSource { path: Some(path.clone()), config_yaml: None, allow_unknown_fields: true })
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const GOLDENS: [&str; 4] =
    ["all_golden.json", "default_golden.json", "secure_metrics_golden.json", "xdsproxy_golden.json"];

fn grpc_source(api_type: PbApiType, target: TargetSpecifier) -> ApiConfigSource {
    ApiConfigSource {
        api_type: api_type as i32,
        grpc_services: vec![GrpcService { target_specifier: Some(target), ..Default::default() }],
        ..Default::default()
    }
}

fn envoy_grpc(cluster: &str) -> TargetSpecifier {
    TargetSpecifier::EnvoyGrpc(EnvoyGrpc { cluster_name: cluster.into(), ..Default::default() })
}

fn set_ads(b: &mut Bootstrap, src: ApiConfigSource) {
    b.dynamic_resources.as_mut().unwrap().ads_config = Some(src);
}

/// Points the first endpoint of the static cluster `name` at `addr`.
fn set_endpoint(b: &mut Bootstrap, name: &str, addr: address::Address) {
    let cluster = b.static_resources.as_mut().unwrap().clusters.iter_mut().find(|c| c.name == name).unwrap();
    let lb = &mut cluster.load_assignment.as_mut().unwrap().endpoints[0].lb_endpoints[0];
    match lb.host_identifier.as_mut() {
        Some(HostIdentifier::Endpoint(e)) => e.address = Some(Address { address: Some(addr) }),
        other => panic!("unexpected endpoint {other:?}"),
    }
}

#[test]
fn istio_goldens_use_delta_on_the_xds_pipe() {
    for name in GOLDENS {
        let b = golden(name);
        let c = ClientConfig::from_bootstrap(&b).unwrap().unwrap_or_else(|| panic!("{name}: no ads_config"));
        assert_eq!(c.target, Target::Unix(PathBuf::from("/tmp/XDS")), "{name}");
        assert_eq!(c.api_type, ApiType::Delta, "{name}");
        assert_eq!(c.authority, "xds-grpc", "{name}");
        let node = b.node.as_ref().unwrap();
        assert!(node.id.starts_with("sidecar~"), "{name}: {}", node.id);
        assert_eq!(&c.node, node, "{name}: node is sent verbatim");
        assert!(c.tls.is_none());
        assert_eq!((c.initial_backoff, c.max_backoff), (Duration::from_millis(500), Duration::from_secs(30)));

        // Istio's listeners name SDS as an api_config_source on the sds-grpc cluster, SotW.
        let sds = grpc_source(PbApiType::Grpc, envoy_grpc("sds-grpc"));
        let c = ClientConfig::from_api_config_source(&sds, &b).unwrap();
        assert_eq!(c.target, Target::Unix(PathBuf::from("./var/run/secrets/workload-spiffe-uds/test.sock")));
        assert_eq!((c.api_type, c.authority.as_str()), (ApiType::Sotw, "sds-grpc"));
    }
}

#[test]
fn errors_name_the_field() {
    let base = golden("default_golden.json");

    let mut b = base.clone();
    b.dynamic_resources = None;
    assert!(ClientConfig::from_bootstrap(&b).unwrap().is_none());

    let mut b = base.clone();
    set_ads(&mut b, grpc_source(PbApiType::Rest, envoy_grpc("xds-grpc")));
    let e = ClientConfig::from_bootstrap(&b).unwrap_err();
    assert!(e.starts_with("dynamic_resources.ads_config.api_type:") && e.contains("REST"), "{e}");

    let mut b = base.clone();
    set_ads(&mut b, grpc_source(PbApiType::AggregatedGrpc, envoy_grpc("xds-grpc")));
    assert!(ClientConfig::from_bootstrap(&b).unwrap_err().contains("api_type"));

    let mut b = base.clone();
    set_ads(&mut b, grpc_source(PbApiType::DeltaGrpc, envoy_grpc("nope")));
    let e = ClientConfig::from_bootstrap(&b).unwrap_err();
    assert!(e.contains("envoy_grpc.cluster_name") && e.contains("'nope'"), "{e}");

    let mut b = base.clone();
    set_ads(&mut b, ApiConfigSource { api_type: PbApiType::Grpc as i32, ..Default::default() });
    assert!(ClientConfig::from_bootstrap(&b).unwrap_err().contains("grpc_services"));

    let sds = grpc_source(PbApiType::Rest, envoy_grpc("sds-grpc"));
    assert!(ClientConfig::from_api_config_source(&sds, &base).unwrap_err().contains("api_type"));
}

#[test]
fn socket_addresses_google_grpc_and_retry_policy() {
    let mut b = golden("default_golden.json");
    let sock = |addr: &str, port: u32| {
        address::Address::SocketAddress(SocketAddress {
            address: addr.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })
    };
    set_endpoint(&mut b, "xds-grpc", sock("istiod.istio-system.svc", 15012));
    let c = ClientConfig::from_bootstrap(&b).unwrap().unwrap();
    assert_eq!(c.target, Target::Tcp("istiod.istio-system.svc:15012".into()));
    set_endpoint(&mut b, "xds-grpc", sock("::1", 15010));
    assert_eq!(ClientConfig::from_bootstrap(&b).unwrap().unwrap().target, Target::Tcp("[::1]:15010".into()));

    let google = |uri: &str| {
        grpc_source(
            PbApiType::Grpc,
            TargetSpecifier::GoogleGrpc(GoogleGrpc { target_uri: uri.into(), ..Default::default() }),
        )
    };
    set_ads(&mut b, google("unix:/var/run/xds.sock"));
    let c = ClientConfig::from_bootstrap(&b).unwrap().unwrap();
    assert_eq!((c.target, c.api_type), (Target::Unix("/var/run/xds.sock".into()), ApiType::Sotw));
    set_ads(&mut b, google("istiod:15010"));
    assert_eq!(ClientConfig::from_bootstrap(&b).unwrap().unwrap().target, Target::Tcp("istiod:15010".into()));

    // envoy_grpc.authority and the stream retry backoff are honoured.
    let pb_ms = |ms: i64| envoy_types::pb::google::protobuf::Duration {
        seconds: ms / 1000,
        nanos: (ms % 1000) as i32 * 1_000_000,
    };
    let src = grpc_source(
        PbApiType::DeltaGrpc,
        TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
            cluster_name: "sds-grpc".into(),
            authority: "sds.local".into(),
            retry_policy: Some(RetryPolicy {
                retry_back_off: Some(BackoffStrategy {
                    base_interval: Some(pb_ms(100)),
                    max_interval: Some(pb_ms(2500)),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    );
    let c = ClientConfig::from_api_config_source(&src, &b).unwrap();
    assert_eq!((c.authority.as_str(), c.api_type), ("sds.local", ApiType::Delta));
    assert_eq!((c.initial_backoff, c.max_backoff), (Duration::from_millis(100), Duration::from_millis(2500)));
}

#[tokio::test]
async fn client_from_a_golden_bootstrap() {
    let path = ads_common::socket_path("bootstrap");
    let mut b = golden("all_golden.json");
    set_endpoint(
        &mut b,
        "xds-grpc",
        address::Address::Pipe(envoy_types::pb::envoy::config::core::v3::Pipe {
            path: path.display().to_string(),
            ..Default::default()
        }),
    );
    let config = ClientConfig::from_bootstrap(&b).unwrap().unwrap();
    let mut server = ads_common::serve_unix(&path);
    let (_rec, handle) = ads_common::start_ads(config);
    let mut s = server.next_delta().await;
    assert_eq!(s.authority.as_deref(), Some("xds-grpc"));
    let r = s.recv().await;
    assert_eq!(r.type_url, ads::CLUSTER);
    assert_eq!(r.node, b.node, "the bootstrap node, verbatim, on the first message");
    handle.shutdown();
    let _ = std::fs::remove_file(&path);
}
