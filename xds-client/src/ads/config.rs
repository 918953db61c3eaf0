//! [`ClientConfig`] from the bootstrap: the `ads_config` (or any `api_config_source`, such as
//! SDS's `sds-grpc`) resolved to the static cluster's first endpoint, as Envoy's gRPC client does.

use std::path::PathBuf;
use std::time::Duration;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType as PbApiType;
use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, ApiConfigSource, RetryPolicy, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;

use super::{ApiType, ClientConfig, Target};

/// Envoy's gRPC stream retry defaults (`base_interval` 500 ms, `max_interval` 30 s).
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(500);
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);

impl ClientConfig {
    /// A plaintext config with Envoy's default backoff; `authority` is the `:authority` sent.
    pub fn new(target: Target, api_type: ApiType, authority: impl Into<String>) -> Self {
        ClientConfig {
            target,
            api_type,
            node: Default::default(),
            tls: None,
            tls_server_name: None,
            authority: authority.into(),
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
        }
    }

    /// From the bootstrap's `dynamic_resources.ads_config`; `Ok(None)` when there is none.
    pub fn from_bootstrap(b: &Bootstrap) -> Result<Option<ClientConfig>, String> {
        let Some(src) = b.dynamic_resources.as_ref().and_then(|d| d.ads_config.as_ref()) else {
            return Ok(None);
        };
        from_source(src, b, "dynamic_resources.ads_config").map(Some)
    }

    /// From an `api_config_source` (e.g. an `sds_config` naming Istio's `sds-grpc` cluster).
    pub fn from_api_config_source(src: &ApiConfigSource, b: &Bootstrap) -> Result<ClientConfig, String> {
        from_source(src, b, "api_config_source")
    }
}

fn from_source(src: &ApiConfigSource, b: &Bootstrap, field: &str) -> Result<ClientConfig, String> {
    let api_type = match PbApiType::try_from(src.api_type) {
        Ok(PbApiType::Grpc) => ApiType::Sotw,
        Ok(PbApiType::DeltaGrpc) => ApiType::Delta,
        Ok(other) => {
            return Err(format!("{field}.api_type: {} is not supported (GRPC or DELTA_GRPC)", other.as_str_name()));
        }
        Err(_) => return Err(format!("{field}.api_type: unknown value {}", src.api_type)),
    };
    let Some(service) = src.grpc_services.first() else {
        return Err(format!("{field}.grpc_services: an API config source of type gRPC needs one gRPC service"));
    };
    let mut retry = service.retry_policy.as_ref();
    let (target, authority) = match &service.target_specifier {
        Some(TargetSpecifier::EnvoyGrpc(g)) => {
            let prefix = format!("{field}.grpc_services[0].envoy_grpc");
            if g.cluster_name.is_empty() {
                return Err(format!("{prefix}.cluster_name: must not be empty"));
            }
            retry = g.retry_policy.as_ref().or(retry);
            let target = cluster_target(b, &g.cluster_name, &prefix)?;
            let authority = if g.authority.is_empty() { g.cluster_name.clone() } else { g.authority.clone() };
            (target, authority)
        }
        Some(TargetSpecifier::GoogleGrpc(g)) => {
            let uri = g.target_uri.as_str();
            if let Some(path) = uri.strip_prefix("unix://").or_else(|| uri.strip_prefix("unix:")) {
                (Target::Unix(PathBuf::from(path)), "localhost".to_string())
            } else if uri.is_empty() {
                return Err(format!("{field}.grpc_services[0].google_grpc.target_uri: must not be empty"));
            } else {
                // gRPC target URIs may carry a resolver scheme ("dns:///host:port").
                let hostport = uri.strip_prefix("dns:///").or_else(|| uri.strip_prefix("dns:")).unwrap_or(uri);
                (Target::Tcp(hostport.to_string()), hostport.to_string())
            }
        }
        None => return Err(format!("{field}.grpc_services[0]: neither envoy_grpc nor google_grpc is set")),
    };
    let (initial_backoff, max_backoff) = backoff(retry);
    Ok(ClientConfig {
        target,
        api_type,
        node: b.node.clone().unwrap_or_default(),
        tls: None,
        tls_server_name: None,
        authority,
        initial_backoff,
        max_backoff,
    })
}

/// The first endpoint of the static cluster `name`.
fn cluster_target(b: &Bootstrap, name: &str, prefix: &str) -> Result<Target, String> {
    let clusters = b.static_resources.as_ref().map(|s| s.clusters.as_slice()).unwrap_or_default();
    let Some(cluster) = clusters.iter().find(|c| c.name == name) else {
        return Err(format!("{prefix}.cluster_name: unknown static cluster '{name}'"));
    };
    let address = cluster
        .load_assignment
        .iter()
        .flat_map(|la| la.endpoints.iter())
        .flat_map(|le| le.lb_endpoints.iter())
        .find_map(|lb| match &lb.host_identifier {
            Some(HostIdentifier::Endpoint(e)) => e.address.as_ref(),
            _ => None,
        });
    let Some(address) = address else {
        return Err(format!("{prefix}.cluster_name: static cluster '{name}' has no endpoint"));
    };
    address_target(address).map_err(|e| format!("{prefix}.cluster_name: static cluster '{name}': {e}"))
}

fn address_target(a: &Address) -> Result<Target, String> {
    match &a.address {
        Some(address::Address::Pipe(p)) if !p.path.is_empty() => Ok(Target::Unix(PathBuf::from(&p.path))),
        Some(address::Address::SocketAddress(s)) => {
            let port = match &s.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => *p,
                Some(socket_address::PortSpecifier::NamedPort(n)) => {
                    return Err(format!("named port '{n}' is not supported"));
                }
                None => return Err("socket_address has no port".into()),
            };
            if s.address.is_empty() {
                return Err("socket_address has no address".into());
            }
            if s.address.contains(':') && !s.address.starts_with('[') {
                Ok(Target::Tcp(format!("[{}]:{port}", s.address)))
            } else {
                Ok(Target::Tcp(format!("{}:{port}", s.address)))
            }
        }
        Some(address::Address::Pipe(_)) => Err("pipe has an empty path".into()),
        Some(address::Address::EnvoyInternalAddress(_)) => Err("internal addresses are not supported".into()),
        None => Err("endpoint has no address".into()),
    }
}

fn backoff(retry: Option<&RetryPolicy>) -> (Duration, Duration) {
    let strategy = retry.and_then(|r| r.retry_back_off.as_ref());
    let to_duration = |d: &envoy_types::pb::google::protobuf::Duration| {
        let secs = u64::try_from(d.seconds).unwrap_or(0);
        let nanos = u32::try_from(d.nanos).unwrap_or(0);
        Duration::new(secs, nanos.min(999_999_999))
    };
    let base = strategy
        .and_then(|s| s.base_interval.as_ref())
        .map(to_duration)
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_INITIAL_BACKOFF);
    // Envoy: max_interval defaults to 10x the base interval when a strategy is given.
    let max = match strategy {
        Some(s) => s.max_interval.as_ref().map(to_duration).filter(|d| !d.is_zero()).unwrap_or(base * 10),
        None => DEFAULT_MAX_BACKOFF,
    };
    (base, max.max(base))
}
