//! `remora-demo` (what `remora demo` runs): a whole mesh from a folder of manifests.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "remora demo",
    about = "Run a local mesh (control plane, apps, remora sidecars, ingress gateway) from Kubernetes and Istio manifests"
)]
struct Args {
    /// The folder of manifests.
    #[arg(long, default_value = "examples/demo")]
    mesh: PathBuf,
    /// Where the gateway's HTTP port is published on 127.0.0.1.
    #[arg(long, default_value_t = 8080)]
    gateway_port: u16,
    /// The remora binary (default: $REMORA_BIN, else next to this one, else `remora` on PATH).
    #[arg(long)]
    remora: Option<PathBuf>,
    /// The demo app binary (default: next to this one).
    #[arg(long)]
    app: Option<PathBuf>,
    /// Logs, bootstraps and the CA root (default: a new folder under the temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Write a JSON summary (admin ports, gateway address) here once everything is started.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Only check the folder: print what is refused, or OK.
    #[arg(long)]
    check: bool,
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.check {
        return match mesh::runner::load(&args.mesh) {
            Ok(m) => {
                println!("{}: OK ({} services, {} pods)", args.mesh.display(), m.services.len(), m.pods.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("refused: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let work_dir =
        args.work_dir.unwrap_or_else(|| std::env::temp_dir().join(format!("remora-demo-{}", std::process::id())));
    let opts = mesh::runner::Options {
        mesh: args.mesh,
        gateway_port: args.gateway_port,
        remora: args
            .remora
            .or_else(|| std::env::var_os("REMORA_BIN").map(PathBuf::from))
            .unwrap_or_else(|| sibling("remora")),
        app: args.app.unwrap_or_else(|| sibling("demo-app")),
        work_dir,
        ready_file: args.ready_file,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("remora demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(mesh::runner::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remora demo: {e}");
            ExitCode::FAILURE
        }
    }
}
