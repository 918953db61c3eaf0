//! Envoy's command line, flag for flag, so pilot-agent (or a person used to Envoy) can launch
//! remora unchanged. Flags Envoy accepts that have no effect here are accepted and ignored.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Load the config and serve traffic.
    Serve,
    /// Check the config and exit: `configuration '<path>' OK` or the error.
    Validate,
    /// Initialise everything, then exit.
    #[value(name = "init_only")]
    InitOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DrainStrategy {
    Gradual,
    Immediate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IpVersion {
    V4,
    V6,
}

/// Envoy's flags. Long names and short names match Envoy 1.40's `--help`.
#[derive(Debug, Clone, Parser)]
#[command(name = "remora", disable_version_flag = true, about = "An Envoy-compatible sidecar proxy")]
pub struct Options {
    /// Path to the bootstrap (JSON, YAML or binary proto by extension).
    #[arg(short = 'c', long = "config-path")]
    pub config_path: Option<PathBuf>,
    /// Inline YAML bootstrap, merged over the file's.
    #[arg(long = "config-yaml")]
    pub config_yaml: Option<String>,
    #[arg(long, value_enum, default_value = "serve")]
    pub mode: Mode,
    /// Worker threads (default: the number of CPUs, as Envoy).
    #[arg(long)]
    pub concurrency: Option<usize>,
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    pub log_level: String,
    /// `component:level,...`
    #[arg(long = "component-log-level")]
    pub component_log_level: Option<String>,
    #[arg(long = "log-format")]
    pub log_format: Option<String>,
    #[arg(long = "log-path")]
    pub log_path: Option<PathBuf>,
    #[arg(long = "log-format-escaped")]
    pub log_format_escaped: bool,
    #[arg(long = "drain-time-s", default_value_t = 600)]
    pub drain_time_s: u64,
    #[arg(long = "drain-strategy", value_enum, default_value = "gradual")]
    pub drain_strategy: DrainStrategy,
    #[arg(long = "parent-shutdown-time-s", default_value_t = 900)]
    pub parent_shutdown_time_s: u64,
    #[arg(long = "local-address-ip-version", value_enum, default_value = "v4")]
    pub local_address_ip_version: IpVersion,
    #[arg(long = "file-flush-interval-msec", default_value_t = 10000)]
    pub file_flush_interval_msec: u64,
    #[arg(long = "disable-hot-restart")]
    pub disable_hot_restart: bool,
    #[arg(long = "allow-unknown-static-fields")]
    pub allow_unknown_static_fields: bool,
    #[arg(long = "reject-unknown-dynamic-fields")]
    pub reject_unknown_dynamic_fields: bool,
    #[arg(long = "ignore-unknown-dynamic-fields")]
    pub ignore_unknown_dynamic_fields: bool,
    #[arg(long = "service-cluster")]
    pub service_cluster: Option<String>,
    #[arg(long = "service-node")]
    pub service_node: Option<String>,
    #[arg(long = "service-zone")]
    pub service_zone: Option<String>,
    #[arg(long = "base-id", default_value_t = 0)]
    pub base_id: u32,
    #[arg(long = "use-dynamic-base-id")]
    pub use_dynamic_base_id: bool,
    #[arg(long = "base-id-path")]
    pub base_id_path: Option<PathBuf>,
    #[arg(long = "restart-epoch", default_value_t = 0)]
    pub restart_epoch: u32,
    #[arg(long = "hot-restart-version")]
    pub hot_restart_version: bool,
    #[arg(long = "enable-core-dump")]
    pub enable_core_dump: bool,
    #[arg(long = "cpuset-threads")]
    pub cpuset_threads: bool,
    #[arg(long = "disable-extensions")]
    pub disable_extensions: Option<String>,
    #[arg(long = "socket-path")]
    pub socket_path: Option<String>,
    #[arg(long = "socket-mode")]
    pub socket_mode: Option<String>,
    #[arg(long = "stats-tag")]
    pub stats_tag: Vec<String>,
    /// Print the version and exit.
    #[arg(long)]
    pub version: bool,
    /// Remora only: get the workload certificate from an Istio CA (`host:port`, e.g.
    /// `istiod.istio-system.svc:15012`) and serve it as the SDS secrets `default` and `ROOTCA`,
    /// so no pilot-agent is needed.
    #[arg(long = "ca-address")]
    pub ca_address: Option<String>,
    /// PEM root(s) that sign the CA's own serving certificate.
    #[arg(long = "ca-root-cert", requires = "ca_address")]
    pub ca_root_cert: Option<PathBuf>,
    /// The name to verify in the CA's certificate (default: the host of --ca-address).
    #[arg(long = "ca-server-name", requires = "ca_address")]
    pub ca_server_name: Option<String>,
    /// File with the bearer token sent to the CA (a projected service-account token).
    #[arg(long = "ca-token-file", requires = "ca_address")]
    pub ca_token_file: Option<PathBuf>,
    /// The SPIFFE ID to request; default `spiffe://<--ca-trust-domain>/ns/<NAMESPACE>/sa/<SERVICE_ACCOUNT>`
    /// from the node metadata.
    #[arg(long = "ca-identity", requires = "ca_address")]
    pub ca_identity: Option<String>,
    #[arg(long = "ca-trust-domain", default_value = "cluster.local")]
    pub ca_trust_domain: String,
    /// Sent to the CA as the `ClusterID` header.
    #[arg(long = "ca-cluster-id", default_value = "Kubernetes")]
    pub ca_cluster_id: String,
    /// Requested certificate lifetime (e.g. `24h`, `10m`).
    #[arg(long = "ca-cert-ttl", default_value = "24h")]
    pub ca_cert_ttl: String,
}

impl Options {
    /// The worker count: `--concurrency`, else the number of CPUs.
    pub fn workers(&self) -> usize {
        match self.concurrency {
            Some(0) | None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            Some(n) => n,
        }
    }
}

/// `remora explain [--admin HOST:PORT] key=value ...`: asks a running remora's admin API which
/// listener, filter chain, virtual host, route, cluster and endpoints a request would take
/// (`/explain`; the keys are its query parameters, e.g. `listener=virtualOutbound
/// dst=10.96.0.5:9080 host=reviews:9080 path=/api header=x-user:jason`).
pub fn explain_command(args: &[std::ffi::OsString]) -> std::process::ExitCode {
    use std::io::{Read, Write};
    use std::process::ExitCode;
    let mut admin = "127.0.0.1:15000".to_string();
    let mut query = form_urlencoded::Serializer::new(String::new());
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = it.next() {
        if a == "--admin" {
            match it.next() {
                Some(v) => admin = v,
                None => {
                    eprintln!("remora explain: --admin needs HOST:PORT");
                    return ExitCode::from(1);
                }
            }
        } else if a == "-h" || a == "--help" {
            println!(
                "usage: remora explain [--admin HOST:PORT] key=value ...\n\
                 keys: listener | port, dst, src, sni, alpn, transport, protocol, host, path, method, scheme,\n\
                 header (name:value, repeatable), random. The admin address defaults to 127.0.0.1:15000."
            );
            return ExitCode::SUCCESS;
        } else if let Some((k, v)) = a.split_once('=') {
            query.append_pair(k, v);
        } else {
            eprintln!("remora explain: '{a}' is not key=value (see --help)");
            return ExitCode::from(1);
        }
    }
    let path = format!("/explain?{}", query.finish());
    let reply = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(&admin)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {admin}\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    })();
    match reply {
        Ok(r) => {
            let (head, body) = r.split_once("\r\n\r\n").unwrap_or((&r, ""));
            print!("{body}");
            if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("remora explain: cannot reach the admin API at {admin}: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pilot_agent_command_line() {
        let o = Options::try_parse_from([
            "envoy",
            "-c",
            "etc/istio/proxy/envoy-rev.json",
            "--drain-time-s",
            "45",
            "--drain-strategy",
            "immediate",
            "--local-address-ip-version",
            "v4",
            "--file-flush-interval-msec",
            "1000",
            "--disable-hot-restart",
            "--allow-unknown-static-fields",
            "-l",
            "warning",
            "--component-log-level",
            "misc:error",
            "--concurrency",
            "2",
        ])
        .unwrap();
        assert_eq!(o.drain_time_s, 45);
        assert_eq!(o.drain_strategy, DrainStrategy::Immediate);
        assert_eq!(o.workers(), 2);
        assert!(o.allow_unknown_static_fields);
        assert_eq!(o.mode, Mode::Serve);
    }

    #[test]
    fn unknown_flag_is_a_usage_error() {
        assert!(Options::try_parse_from(["remora", "--no-such-flag"]).is_err());
        let o = Options::try_parse_from(["remora", "--mode", "init_only", "--config-yaml", "{}"]).unwrap();
        assert_eq!(o.mode, Mode::InitOnly);
    }
}
