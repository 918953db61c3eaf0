//! A real Prometheus for `remora demo`: the `prometheus` binary (Debian's package) when it is on
//! PATH, scraping every proxy's `/stats/prometheus` on its admin port every second, each target
//! labelled with its `pod` and `namespace` as Istio's Prometheus add-on labels them. Its data and
//! log go to the demo's work dir; it stops with the demo.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

/// A scrape target: the pod name (`gateway` for the ingress gateway), its namespace, and the
/// proxy's admin port.
#[derive(Debug, Clone)]
pub struct Target {
    pub pod: String,
    pub namespace: String,
    pub admin: u16,
}

/// `prometheus` on PATH.
pub fn find() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("prometheus")).find(|p| p.is_file())
}

/// The scrape configuration: one job, `envoy-stats`, a static target per proxy.
pub fn config(targets: &[Target]) -> String {
    let mut out = String::from(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n- job_name: envoy-stats\n  \
         metrics_path: /stats/prometheus\n  static_configs:\n",
    );
    for t in targets {
        out.push_str(&format!(
            "  - targets: ['127.0.0.1:{}']\n    labels: {{pod: '{}', namespace: '{}'}}\n",
            t.admin, t.pod, t.namespace
        ));
    }
    out
}

/// Starts Prometheus listening on 127.0.0.1:`port`, its files under `dir/prometheus`.
pub fn start(bin: &Path, dir: &Path, port: u16, targets: &[Target]) -> Result<Child, String> {
    let dir = dir.join("prometheus");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let cfg = dir.join("prometheus.yml");
    std::fs::write(&cfg, config(targets)).map_err(|e| format!("{}: {e}", cfg.display()))?;
    let log = dir.join("prometheus.log");
    let log = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    Command::new(bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))
}
