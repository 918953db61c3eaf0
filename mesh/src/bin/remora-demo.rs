//! `remora-demo` (what `remora demo` runs): a whole mesh from a folder of manifests.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "remora demo",
    about = "Run a local mesh (control plane, apps, remora sidecars, ingress gateway) from Kubernetes and Istio manifests",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Sub>,
    /// The folder of manifests.
    #[arg(long, default_value = "examples/demo")]
    mesh: PathBuf,
    /// Where the gateway's HTTP port is published on 127.0.0.1.
    #[arg(long, default_value_t = 8080)]
    gateway_port: u16,
    /// The remora binary (default: $REMORA_BIN, else next to this one, else `remora` on PATH).
    #[arg(long)]
    remora: Option<PathBuf>,
    /// Run this Envoy binary as every sidecar and the gateway instead of remora (the oracle on
    /// the same control-plane output; Envoy gets its certificates over SDS from the control plane).
    #[arg(long)]
    envoy: Option<PathBuf>,
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
    /// Where Prometheus (started when `prometheus` is on PATH) listens on 127.0.0.1 (taken: any
    /// free port).
    #[arg(long, default_value_t = 9090)]
    prometheus_port: u16,
    /// Do not start Prometheus.
    #[arg(long)]
    no_prometheus: bool,
}

/// The docker-compose mesh (docker/compose.yaml).
#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Only the control plane (compose mesh): ADS for every proxy on one port by node id, the
    /// Istio CA, pods at their compose addresses; watches the folder and pushes changes.
    ControlPlane {
        #[arg(long, default_value = "examples/demo")]
        mesh: PathBuf,
        #[arg(long, default_value = "0.0.0.0:15010")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = "0.0.0.0:15012")]
        ca_listen: std::net::SocketAddr,
        /// `ca-root.pem` goes here (a volume the proxies mount).
        #[arg(long, default_value = "/var/run/remora-mesh")]
        out: PathBuf,
    },
    /// Write compose.yaml and bootstrap.json for a folder of manifests.
    Compose {
        #[arg(long, default_value = "examples/demo")]
        mesh: PathBuf,
        #[arg(long, default_value = "docker")]
        out: PathBuf,
        /// The proxies' image (sidecars, gateway).
        #[arg(long, default_value = "remora:dev")]
        image: String,
        /// The control plane's and the apps' image.
        #[arg(long, default_value = "remora-demo:dev")]
        demo_image: String,
    },
    /// Exit 0 if FILE exists (the control plane's container health check; the image has no shell).
    Probe { file: PathBuf },
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| {
        eprintln!("remora demo: {e}");
        ExitCode::FAILURE
    })
}

fn sub(cmd: Sub) -> ExitCode {
    let result = match cmd {
        Sub::Probe { file } => return if file.exists() { ExitCode::SUCCESS } else { ExitCode::FAILURE },
        Sub::Compose { mesh, out, image, demo_image } => mesh::compose::files(&mesh, &out, &image, &demo_image)
            .map(|()| println!("wrote {0}/compose.yaml and {0}/bootstrap.json", out.display())),
        Sub::ControlPlane { mesh, listen, ca_listen, out } => match runtime() {
            Ok(rt) => rt.block_on(mesh::compose::control_plane(mesh::compose::ControlPlaneOptions {
                mesh,
                listen,
                ca_listen,
                out,
            })),
            Err(code) => return code,
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remora demo: {e}");
            ExitCode::FAILURE
        }
    }
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
    if let Some(cmd) = args.cmd {
        return sub(cmd);
    }
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
        envoy: args.envoy,
        app: args.app.unwrap_or_else(|| sibling("demo-app")),
        work_dir,
        ready_file: args.ready_file,
        prometheus: (!args.no_prometheus).then_some(args.prometheus_port),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(mesh::runner::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remora demo: {e}");
            ExitCode::FAILURE
        }
    }
}
