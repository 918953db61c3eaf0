//! Istio's legacy `istio_authn` HTTP filter (istio <= 1.9,
//! `istio.envoy.config.filter.http.authn.v2alpha1.FilterConfig`). Peer mTLS is enforced by the
//! listener's filter chains istiod generates (STRICT has no plaintext chain), so the filter adds
//! nothing there; end-user JWT authentication (`origins`, or a `jwt` peer method) is refused:
//! remora does not validate JWTs and must not pretend to.

use crate::config::ConfigError;

pub const TYPE: &str = "istio.envoy.config.filter.http.authn.v2alpha1.FilterConfig";

/// The fields of the config that decide whether remora can honour it (Istio's field numbers).
#[derive(Clone, PartialEq, prost::Message)]
struct FilterConfig {
    #[prost(message, optional, tag = "1")]
    policy: Option<Policy>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Policy {
    #[prost(message, repeated, tag = "2")]
    peers: Vec<PeerMethod>,
    /// `OriginAuthenticationMethod`s: end-user JWTs.
    #[prost(bytes = "vec", repeated, tag = "4")]
    origins: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PeerMethod {
    #[prost(bytes = "vec", optional, tag = "1")]
    mtls: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    jwt: Option<Vec<u8>>,
}

impl prost::Name for FilterConfig {
    const NAME: &'static str = "FilterConfig";
    const PACKAGE: &'static str = "istio.envoy.config.filter.http.authn.v2alpha1";
}

/// Accepts the config when it asks only for peer mTLS.
pub fn check(any: &envoy_types::pb::google::protobuf::Any, field: &str) -> Result<(), ConfigError> {
    let c: FilterConfig =
        xds_client::any::unpack(any).map_err(|e| ConfigError::new(format!("{field}.typed_config"), e.to_string()))?;
    let Some(p) = c.policy else { return Ok(()) };
    if !p.origins.is_empty() {
        return Err(ConfigError::new(
            format!("{field}.typed_config.policy.origins"),
            "istio_authn: end-user JWT authentication is not supported",
        ));
    }
    if p.peers.iter().any(|m| m.jwt.is_some()) {
        return Err(ConfigError::new(
            format!("{field}.typed_config.policy.peers"),
            "istio_authn: JWT peer authentication is not supported",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn any(p: Policy) -> envoy_types::pb::google::protobuf::Any {
        envoy_types::pb::google::protobuf::Any {
            type_url: format!("type.googleapis.com/{TYPE}"),
            value: FilterConfig { policy: Some(p) }.encode_to_vec(),
        }
    }

    #[test]
    fn mtls_only_is_accepted_jwt_is_refused() {
        let mtls = PeerMethod { mtls: Some(vec![0x10, 0x01]), jwt: None };
        assert!(check(&any(Policy { peers: vec![mtls.clone()], origins: vec![] }), "f").is_ok());
        let e = check(&any(Policy { peers: vec![mtls], origins: vec![vec![0x0a, 0x00]] }), "f").unwrap_err();
        assert!(e.to_string().contains("policy.origins"), "{e}");
        let jwt = PeerMethod { mtls: None, jwt: Some(vec![]) };
        assert!(check(&any(Policy { peers: vec![jwt], origins: vec![] }), "f").is_err());
    }
}
