//! `DownstreamTlsContext` / `UpstreamTlsContext` -> the certs crate's server / client configs,
//! plus what the proxy needs around them: config errors in the enclosing field path, the SDS
//! names and files the config manager subscribes to and watches, and Envoy's node check.
//!
//! The certs configs read SDS secrets from the store at handshake time, so a rotated secret
//! applies to the next handshake with nothing rebuilt here.

use std::path::PathBuf;
use std::sync::Arc;

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{DownstreamTlsContext, UpstreamTlsContext};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::handshake::{HandshakeError, HandshakeFailure};
use super::secrets::{SdsSources, SecretStore};
use crate::config::{ConfigError, NodeInfo};

/// A compiled TLS context with its SDS wiring: [`ServerTls`] for a listener filter chain,
/// [`ClientTls`] for a cluster (or one of its `transport_socket_matches`).
#[derive(Debug)]
pub struct Tls<C> {
    config: C,
    /// The SDS secrets it reads, present or not (fixed at config time).
    secret_names: Vec<String>,
    sds: SdsSources,
}

/// A listener filter chain's TLS.
pub type ServerTls = Tls<certs::ServerTlsConfig>;

/// A cluster's TLS (or one `transport_socket_matches` entry's): client config, SNI and ALPN.
pub type ClientTls = Tls<certs::ClientTlsConfig>;

impl<C> Tls<C> {
    /// The SDS secrets this context needs (the listener or cluster warms until they arrive).
    pub fn secret_names(&self) -> Vec<String> {
        self.secret_names.clone()
    }

    /// The SDS secrets among [`Self::secret_names`] whose config source is `ads`.
    pub fn ads_secret_names(&self) -> &[String] {
        &self.sds.ads
    }

    /// Files of file-based SDS this context reads its secrets from.
    pub fn secret_files(&self) -> &[PathBuf] {
        &self.sds.files
    }

    /// Envoy refuses secrets from a config source when the node has no id or cluster.
    pub fn check_node(&self, node: &NodeInfo, field: &str) -> Result<(), ConfigError> {
        self.sds.check_node(node, field)
    }

    /// The certs config, for what this wrapper does not expose.
    pub fn certs(&self) -> &C {
        &self.config
    }
}

// === downstream ===

impl ServerTls {
    /// Compiles `p`; `field` is its path for errors (`transport_socket.typed_config`).
    pub fn from_proto(p: &DownstreamTlsContext, store: Arc<SecretStore>, field: &str) -> Result<Self, ConfigError> {
        let config = certs::ServerTlsConfig::from_proto(p, &store).map_err(|e| ConfigError::from(e).within(field))?;
        let secret_names = config.secret_names();
        Ok(Tls { config, secret_names, sds: SdsSources::of(p.common_tls_context.as_ref()) })
    }

    pub fn ready(&self) -> bool {
        self.config.is_ready()
    }

    /// The server handshake (no timeout: the caller's). ALPN follows Envoy: without a common
    /// protocol the handshake goes on without ALPN. While the secrets have not arrived the
    /// connection is refused before the handshake, as a warming Envoy listener would not
    /// accept it.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> Result<tokio_rustls::server::TlsStream<TcpStream>, HandshakeError> {
        if !self.config.is_ready() {
            let missing = match self.config.readiness() {
                certs::Readiness::Warming { missing } => missing.join(", "),
                certs::Readiness::Ready => String::new(),
            };
            let e = std::io::Error::other(format!("TLS not ready: waiting for secrets {missing}"));
            return Err(HandshakeError { failure: HandshakeFailure::NotReady, error: e });
        }
        self.config.accept(stream).await.map_err(HandshakeError::new)
    }

    /// Our own URI SANs (for `%DOWNSTREAM_LOCAL_URI_SAN%`, XFCC `By`, Istio telemetry).
    pub fn local_uri_sans(&self) -> Vec<String> {
        self.config.certificate().map(|c| c.identity().uri_sans.clone()).unwrap_or_default()
    }
}

// === upstream ===

impl ClientTls {
    /// Compiles `p`; `field` is its path for errors (`clusters[0].transport_socket.typed_config`).
    pub fn from_proto(p: &UpstreamTlsContext, store: Arc<SecretStore>, field: &str) -> Result<Self, ConfigError> {
        let config = certs::ClientTlsConfig::from_proto(p, &store).map_err(|e| ConfigError::from(e).within(field))?;
        let secret_names = config.secret_names();
        Ok(Tls { config, secret_names, sds: SdsSources::of(p.common_tls_context.as_ref()) })
    }

    pub fn ready(&self) -> bool {
        self.config.is_ready()
    }

    /// The ALPN protocols offered, in preference order.
    pub fn alpn(&self) -> &[Vec<u8>] {
        self.config.alpn_protocols()
    }

    /// The config for the next handshake; an error while its secrets have not arrived (the
    /// connection is not attempted without its client certificate or trust bundle).
    pub fn config(&self) -> Result<Arc<ClientConfig>, String> {
        self.check_ready()?;
        Ok(self.config.client_config().clone())
    }

    /// The config offering `alpn` instead (Istio's ALPN override).
    pub fn config_with_alpn(&self, alpn: &[Vec<u8>]) -> Result<Arc<ClientConfig>, String> {
        self.check_ready()?;
        Ok(self.config.client_config_with_alpn(alpn))
    }

    fn check_ready(&self) -> Result<(), String> {
        match self.config.is_ready() {
            true => Ok(()),
            false => match self.config.readiness() {
                certs::Readiness::Warming { missing } => {
                    Err(format!("secrets not received yet: {}", missing.join(", ")))
                }
                certs::Readiness::Ready => Ok(()),
            },
        }
    }

    /// The name for the handshake: the configured `sni`, else an address that makes rustls send
    /// no SNI (as Envoy sends none unless configured).
    pub fn server_name(&self) -> ServerName<'static> {
        self.config.server_name(None)
    }

    /// The name for a handshake with `host`: with `auto_host_sni`, the host's hostname (from
    /// DNS or the endpoint's `hostname`) when it has one, else [`server_name`](Self::server_name).
    pub fn server_name_for(&self, hostname: &str) -> ServerName<'static> {
        self.config.server_name((!hostname.is_empty()).then_some(hostname))
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::{ConfigSource, PathConfigSource, config_source};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SdsSecretConfig;

    use super::*;

    fn sds_file(name: &str, path: &str) -> SdsSecretConfig {
        SdsSecretConfig {
            name: name.into(),
            sds_config: Some(ConfigSource {
                config_source_specifier: Some(config_source::ConfigSourceSpecifier::PathConfigSource(
                    PathConfigSource { path: path.into(), ..Default::default() },
                )),
                ..Default::default()
            }),
        }
    }

    fn inbound() -> DownstreamTlsContext {
        let mut ctx = certs::test_util::istio_inbound_context("cluster.local", &["h2"]);
        if let Some(c) = ctx.common_tls_context.as_mut() {
            c.tls_certificate_sds_secret_configs = vec![sds_file("default", "/etc/sds/cert.yaml")];
        }
        ctx
    }

    #[test]
    fn errors_name_the_enclosing_field() {
        let store = Arc::new(SecretStore::new());
        let e = ServerTls::from_proto(&DownstreamTlsContext::default(), store.clone(), "transport_socket.typed_config")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "transport_socket.typed_config.common_tls_context: No TLS certificates found for server context");
        let mut ctx = inbound();
        if let Some(c) = ctx.common_tls_context.as_mut() {
            c.key_log = Some(Default::default());
        }
        let e = ServerTls::from_proto(&ctx, store.clone(), "t").unwrap_err().to_string();
        assert_eq!(e, "t.common_tls_context.key_log: not supported by remora: TLS key logging");
        let ctx = UpstreamTlsContext { sni: "bad\0name".into(), ..Default::default() };
        let e = ClientTls::from_proto(&ctx, store, "clusters[0].transport_socket").unwrap_err().to_string();
        assert!(e.starts_with("clusters[0].transport_socket.sni: "), "{e}");
    }

    #[test]
    fn sds_names_files_node_check_and_readiness() {
        let store = Arc::new(SecretStore::new());
        let tls = ServerTls::from_proto(&inbound(), store.clone(), "t").unwrap();
        assert_eq!(tls.secret_names(), ["default", "ROOTCA"]);
        assert_eq!(tls.secret_files(), [PathBuf::from("/etc/sds/cert.yaml")]);
        let e = tls.check_node(&NodeInfo::default(), "t").unwrap_err().to_string();
        assert!(e.starts_with("t: TlsCertificateSdsApi: node 'id' and 'cluster' are required"), "{e}");
        let node = NodeInfo { id: "sidecar~1".into(), cluster: "c".into(), ..Default::default() };
        tls.check_node(&node, "t").unwrap();
        assert!(!tls.ready());

        let client = ClientTls::from_proto(
            &certs::test_util::istio_outbound_context("spiffe://cluster.local/ns/a/sa/b", ""),
            store.clone(),
            "c",
        )
        .unwrap();
        // Static (config-source-less) SDS names need no node.
        client.check_node(&NodeInfo::default(), "c").unwrap();
        assert!(client.secret_files().is_empty());
        let e = client.config().unwrap_err();
        assert_eq!(e, "secrets not received yet: default, ROOTCA");

        let ca = certs::test_util::new_root();
        let issued = certs::test_util::workload(
            &ca,
            "spiffe://cluster.local/ns/a/sa/b",
            certs::dev_ca::Validity::for_duration(std::time::Duration::from_secs(3600)),
        );
        certs::test_util::install(&store, &issued).unwrap();
        assert!(tls.ready() && client.ready());
        assert_eq!(tls.local_uri_sans(), ["spiffe://cluster.local/ns/a/sa/b"]);
        let cfg = client.config().unwrap();
        assert_eq!(cfg.alpn_protocols, client.alpn());
        let h2 = client.config_with_alpn(&[b"h2".to_vec()]).unwrap();
        assert_eq!(h2.alpn_protocols, [b"h2".to_vec()]);
        // No SNI configured: rustls gets an address, for which it sends none.
        assert!(matches!(client.server_name(), ServerName::IpAddress(_)));
    }

    #[test]
    fn auto_host_sni_uses_the_host_name() {
        let store = Arc::new(SecretStore::new());
        let auto = UpstreamTlsContext { auto_host_sni: true, ..Default::default() };
        let client = ClientTls::from_proto(&auto, store.clone(), "c").unwrap();
        assert!(matches!(client.server_name_for("svc.example"), ServerName::DnsName(n) if n.as_ref() == "svc.example"));
        // A host without a name keeps the configured behaviour (no SNI).
        assert!(matches!(client.server_name_for(""), ServerName::IpAddress(_)));
        let plain = ClientTls::from_proto(&UpstreamTlsContext::default(), store, "c").unwrap();
        assert!(matches!(plain.server_name_for("svc.example"), ServerName::IpAddress(_)));
    }

    #[test]
    fn common_tls_context_is_optional_upstream() {
        let store = Arc::new(SecretStore::new());
        let client = ClientTls::from_proto(&UpstreamTlsContext::default(), store, "c").unwrap();
        assert!(client.ready());
        assert!(client.secret_names().is_empty());
    }
}
