//! Workload certificates straight from an Istio CA (`--ca-address`): remora requests its SPIFFE
//! certificate with the certs crate's CA client, serves it as the SDS secrets `default` and
//! `ROOTCA` (the names pilot-agent's SDS server uses) and renews it at half its lifetime. The
//! secrets go through the same path as SDS, so listeners and clusters warm until they arrive and
//! rotate without a restart.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certs::SpiffeId;
use certs::ca::{CaClient, CaClientConfig, IssuedWorkloadCert};
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};

use crate::cli::Options;
use crate::config::NodeInfo;
use crate::manager::ConfigManager;

/// Starts the CA client when `--ca-address` is given.
pub fn start(opts: &Options, node: &NodeInfo, manager: &Arc<ConfigManager>) -> Result<bool, String> {
    let Some(address) = &opts.ca_address else { return Ok(false) };
    let root = match &opts.ca_root_cert {
        Some(p) => std::fs::read(p).map_err(|e| format!("--ca-root-cert {}: {e}", p.display()))?,
        None => return Err("--ca-address needs --ca-root-cert (the CA's serving root)".into()),
    };
    let identity = match &opts.ca_identity {
        Some(id) => SpiffeId::parse(id).map_err(|e| format!("--ca-identity {id}: {e}"))?,
        None => {
            let meta = |k: &str| {
                node.metadata.as_ref().and_then(|m| m.fields.get(k)).and_then(|v| match &v.kind {
                    Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
            };
            let (Some(ns), Some(sa)) = (meta("NAMESPACE"), meta("SERVICE_ACCOUNT")) else {
                return Err("--ca-address: give --ca-identity or node metadata NAMESPACE and SERVICE_ACCOUNT".into());
            };
            SpiffeId::istio(&opts.ca_trust_domain, &ns, &sa).map_err(|e| format!("--ca-identity: {e}"))?
        }
    };
    let mut cfg = CaClientConfig::new(address.clone(), root, identity);
    cfg.token_path = opts.ca_token_file.clone();
    cfg.tls_server_name = opts.ca_server_name.clone();
    cfg.cluster_id = opts.ca_cluster_id.clone();
    cfg.validity = certs::dev_ca::parse_duration(&opts.ca_cert_ttl).map_err(|e| format!("--ca-cert-ttl: {e}"))?;
    let client = CaClient::new(cfg).map_err(|e| format!("--ca-address: {e}"))?;
    tokio::spawn(renew_forever(client, manager.clone()));
    Ok(true)
}

async fn renew_forever(client: CaClient, manager: Arc<ConfigManager>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let wait = match client.request().await {
            Ok(issued) => {
                backoff = Duration::from_secs(1);
                match manager.apply_secrets("istio-ca", secrets(&issued), &[]) {
                    Ok(()) => tracing::info!(target: "remora::tls", "workload certificate from the CA installed"),
                    Err(e) => {
                        tracing::warn!(target: "remora::tls", "CA certificate rejected: {}", crate::xds::error_detail(&e))
                    }
                }
                let at = issued.renew_at(0.5);
                at.duration_since(SystemTime::now()).unwrap_or_default().max(Duration::from_secs(1))
            }
            Err(e) => {
                tracing::warn!(target: "remora::tls", "CA request failed: {e}; retrying in {backoff:?}");
                let w = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(60));
                w
            }
        };
        tokio::time::sleep(wait).await;
    }
}

fn inline(s: &str) -> Option<DataSource> {
    Some(DataSource { specifier: Some(data_source::Specifier::InlineString(s.to_string())), ..Default::default() })
}

/// `default` (chain and key) and `ROOTCA` (the CA's root), as pilot-agent serves them.
fn secrets(issued: &IssuedWorkloadCert) -> Vec<Secret> {
    vec![
        Secret {
            name: certs::ROOT_CA_SECRET.into(),
            r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
                trusted_ca: inline(&issued.root_pem),
                ..Default::default()
            })),
        },
        Secret {
            name: certs::DEFAULT_CERT_SECRET.into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline(&issued.chain_pem),
                private_key: inline(&issued.key_pem),
                ..Default::default()
            })),
        },
    ]
}
