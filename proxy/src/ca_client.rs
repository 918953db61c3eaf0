//! Workload certificates straight from an Istio CA (`--ca-address`): remora requests its SPIFFE
//! certificate with the certs crate's CA client, serves it as the SDS secrets `default` and
//! `ROOTCA` (the names pilot-agent's SDS server uses) and renews it at half its lifetime (the
//! renewal loop, backoff and jitter are the certs crate's). The secrets go through the same path
//! as SDS, so listeners and clusters warm until they arrive and rotate without a restart.

use std::sync::Arc;

use certs::SpiffeId;
use certs::ca::{CaClient, CaClientConfig};

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
    let manager = manager.clone();
    let install = move |issued: &certs::ca::IssuedWorkloadCert| {
        let secrets = issued.sds_secrets(certs::DEFAULT_CERT_SECRET, certs::ROOT_CA_SECRET);
        manager.apply_secrets("istio-ca", secrets, &[]).map_err(|e| crate::xds::error_detail(&e))
    };
    tokio::spawn(client.run_with(install, std::future::pending()));
    Ok(true)
}
