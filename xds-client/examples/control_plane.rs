//! A standalone control plane: serves an Envoy `/config_dump` (and/or a directory of resource
//! files) over ADS and SDS, and logs every ACK and NACK.
//!
//! ```text
//! cargo run -p xds-client --features server --example control_plane -- \
//!     --dump config_dump.json [--resources DIR] --listen unix:/tmp/xds.sock --listen 127.0.0.1:15010
//! ```
//!
//! Resource files (`.json`, `.yaml`, `.yml`) hold one resource with its `@type`, or a list of them
//! (a YAML/JSON list, or `{resources: [...]}`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;
use xds_client::server::{ControlPlane, resource_from_json};

struct Args {
    dumps: Vec<PathBuf>,
    resources: Vec<PathBuf>,
    listen: Vec<String>,
}

const USAGE: &str = "usage: control_plane [--dump FILE]... [--resources DIR]... --listen unix:PATH|HOST:PORT...";

fn parse_args() -> Result<Args, String> {
    let mut a = Args { dumps: Vec::new(), resources: Vec::new(), listen: Vec::new() };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--dump" => a.dumps.push(value()?.into()),
            "--resources" => a.resources.push(value()?.into()),
            "--listen" => a.listen.push(value()?),
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if a.listen.is_empty() {
        return Err(format!("--listen is required\n{USAGE}"));
    }
    Ok(a)
}

fn load_dir(cp: &ControlPlane, dir: &Path) -> Result<usize, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json" || x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut n = 0;
    for f in files {
        let shown = f.display().to_string();
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{shown}: {e}"))?;
        let value = xds_client::json::yaml_to_json(&text).map_err(|e| format!("{shown}: {e}"))?;
        let items = match value {
            Value::Array(v) => v,
            Value::Object(mut o) if o.contains_key("resources") => match o.remove("resources") {
                Some(Value::Array(v)) => v,
                _ => return Err(format!("{shown}: resources: expected a list")),
            },
            other => vec![other],
        };
        for (i, item) in items.iter().enumerate() {
            let (type_url, name, any) =
                resource_from_json(item, &format!("{shown}[{i}]")).map_err(|e| e.to_string())?;
            cp.set(type_url, &name, any);
            n += 1;
        }
    }
    Ok(n)
}

async fn run(args: Args) -> Result<(), String> {
    let cp = ControlPlane::new();
    for d in &args.dumps {
        let text = std::fs::read_to_string(d).map_err(|e| format!("{}: {e}", d.display()))?;
        let c = cp.load_config_dump(&text).map_err(|e| format!("{}: {e}", d.display()))?;
        eprintln!(
            "loaded {}: {} clusters, {} endpoints, {} listeners, {} routes, {} secrets",
            d.display(),
            c.clusters,
            c.endpoints,
            c.listeners,
            c.routes,
            c.secrets
        );
    }
    for d in &args.resources {
        let n = load_dir(&cp, d)?;
        eprintln!("loaded {n} resources from {}", d.display());
    }
    for l in &args.listen {
        if let Some(path) = l.strip_prefix("unix:") {
            cp.serve_unix(path).await.map_err(|e| e.to_string())?;
            eprintln!("serving ADS/SDS on unix:{path}");
        } else {
            let addr = l.parse().map_err(|e| format!("--listen {l}: {e}"))?;
            let bound = cp.serve_tcp(addr).await.map_err(|e| e.to_string())?;
            eprintln!("serving ADS/SDS on {bound}");
        }
    }
    let (mut acks, mut nacks) = (0, 0);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = cp.wait_for(|cp| cp.acks().len() > acks || cp.nacks().len() > nacks, Duration::from_secs(3600)) => {}
        }
        for a in cp.acks().iter().skip(acks) {
            eprintln!("ACK  {} version={} nonce={} node={}", a.type_url, a.version_info, a.nonce, a.node_id);
        }
        for a in cp.nacks().iter().skip(nacks) {
            let detail = a.error_detail.as_deref().unwrap_or_default();
            eprintln!("NACK {} nonce={} node={}: {detail}", a.type_url, a.nonce, a.node_id);
        }
        acks = cp.acks().len();
        nacks = cp.nacks().len();
    }
    cp.stop();
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("control_plane: {e}");
            ExitCode::FAILURE
        }
    }
}
