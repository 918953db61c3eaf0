//! A cluster's upstream HTTP protocol: `typed_extension_protocol_options` (under the
//! extension's name or the HCM's legacy key), the protocol it selects and the HTTP/2 windows.

use envoy_types::pb::envoy::config::cluster::v3::{Cluster as ClusterProto, cluster};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{HttpProtocolOptions, http_protocol_options};

use super::UpstreamProtocol;
use crate::config::ConfigError;

pub(super) fn protocol_options(p: &ClusterProto) -> Result<Option<HttpProtocolOptions>, ConfigError> {
    // Under the extension's name, or the HCM's (the name Envoy registered these options under
    // before they had their own).
    const KEYS: [&str; 2] =
        ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions", "envoy.filters.network.http_connection_manager"];
    match KEYS.iter().find_map(|k| p.typed_extension_protocol_options.get(*k).map(|a| (k, a))) {
        Some((key, any)) => xds_client::any::unpack::<HttpProtocolOptions>(any)
            .map(Some)
            .map_err(|e| ConfigError::new(format!("typed_extension_protocol_options[{key}]"), e.to_string())),
        None => Ok(None),
    }
}

/// Remora's HTTP/2 windows when none is configured (1 MiB per stream, 16 MiB per connection:
/// smaller than Envoy's 256 MiB defaults, which bound a slow reader's buffering less).
pub const H2_WINDOWS: (u32, u32) = (1 << 20, 16 << 20);

/// The upstream HTTP/2 options' windows, wherever the cluster sets them. An upstream
/// `max_concurrent_streams` (Envoy opens another connection past N streams) is refused unless it
/// is too large to matter: istiod sets 2^30 on every HTTP/2 cluster.
pub(super) fn upstream_h2_windows(p: &ClusterProto) -> Result<(u32, u32), ConfigError> {
    use http_protocol_options::UpstreamProtocolOptions as U;
    use http_protocol_options::explicit_http_config::ProtocolConfig as P;
    let opts = protocol_options(p)?;
    #[allow(deprecated)]
    let h2 = match opts.as_ref().and_then(|o| o.upstream_protocol_options.as_ref()) {
        Some(U::ExplicitHttpConfig(e)) => match &e.protocol_config {
            Some(P::Http2ProtocolOptions(o)) => Some(o.clone()),
            _ => None,
        },
        Some(U::UseDownstreamProtocolConfig(d)) => d.http2_protocol_options.clone(),
        Some(U::AutoConfig(a)) => a.http2_protocol_options.clone(),
        None => p.http2_protocol_options.clone(),
    };
    let Some(h2) = h2 else { return Ok(H2_WINDOWS) };
    if h2.max_concurrent_streams.is_some_and(|v| v.value < 1 << 30) {
        return Err(ConfigError::new(
            "typed_extension_protocol_options.http2_protocol_options.max_concurrent_streams",
            "an upstream stream limit per connection is not supported by remora",
        ));
    }
    Ok((
        h2.initial_stream_window_size.map_or(H2_WINDOWS.0, |v| v.value),
        h2.initial_connection_window_size.map_or(H2_WINDOWS.1, |v| v.value),
    ))
}

pub(super) fn upstream_protocol(p: &ClusterProto) -> Result<UpstreamProtocol, ConfigError> {
    for k in p.typed_extension_protocol_options.keys() {
        if k != "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
            && k != "envoy.filters.network.http_connection_manager"
        {
            return Err(ConfigError::new(
                format!("typed_extension_protocol_options[{k}]"),
                "unsupported protocol options extension",
            ));
        }
    }
    if let Some(opts) = protocol_options(p)? {
        use http_protocol_options::UpstreamProtocolOptions as U;
        return Ok(match opts.upstream_protocol_options {
            Some(U::ExplicitHttpConfig(e)) => match e.protocol_config {
                Some(http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(_)) => {
                    UpstreamProtocol::Http2
                }
                Some(http_protocol_options::explicit_http_config::ProtocolConfig::Http3ProtocolOptions(_)) => {
                    return Err(ConfigError::new(
                        "typed_extension_protocol_options",
                        "HTTP/3 upstreams are not supported",
                    ));
                }
                _ => UpstreamProtocol::Http1,
            },
            Some(U::UseDownstreamProtocolConfig(_)) => UpstreamProtocol::Downstream,
            // ALPN-based auto: Envoy refuses it without a TLS transport socket ("ALPN configured for
            // cluster which has a non-ALPN transport socket") and picks HTTP/2 by ALPN over TLS,
            // which remora does not do: refused either way.
            Some(U::AutoConfig(_)) => {
                return Err(ConfigError::new(
                    "typed_extension_protocol_options.auto_config",
                    if p.transport_socket.is_some() || !p.transport_socket_matches.is_empty() {
                        "auto_config over TLS (HTTP/2 chosen by ALPN) is not supported by remora; use explicit_http_config"
                    } else {
                        "ALPN configured for a cluster which has a non-ALPN transport socket"
                    },
                ));
            }
            None => UpstreamProtocol::Http1,
        });
    }
    #[allow(deprecated)]
    if p.http2_protocol_options.is_some() {
        return Ok(UpstreamProtocol::Http2);
    }
    #[allow(deprecated)]
    if cluster::ClusterProtocolSelection::try_from(p.protocol_selection)
        == Ok(cluster::ClusterProtocolSelection::UseDownstreamProtocol)
    {
        return Ok(UpstreamProtocol::Downstream);
    }
    Ok(UpstreamProtocol::Http1)
}
