//! The harness runs end to end in its tiny `--smoke` mode: no timed assertions, only that each
//! target that ran has a row with a nonzero rate. Skips (with the reason) when the upstream or
//! the load generator is not installed: this test never installs anything.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn rps(row: &serde_json::Value) -> f64 {
    row["throughput_rps"]["median"].as_f64().unwrap_or(0.0)
}

#[test]
fn smoke_run_writes_a_row_per_target() {
    for tool in ["nginx", "wrk", "taskset"] {
        if which(tool).is_none() {
            println!(
                "skipping the bench smoke test: {tool} is not installed (`cargo run --release -p bench -- run` installs it)"
            );
            return;
        }
    }
    let out = tempfile::tempdir().unwrap();
    let run =
        Command::new(env!("CARGO_BIN_EXE_bench")).args(["run", "--smoke", "--out"]).arg(out.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "bench run --smoke failed: {}\n{stderr}", run.status);
    for f in ["results.md", "results.json", "results.svg"] {
        assert!(Path::new(&out.path().join(f)).is_file(), "{f} missing");
    }
    let md = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap()).unwrap();
    let svg = std::fs::read_to_string(out.path().join("results.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));

    let hop = json["hop"].as_array().unwrap();
    let ran: Vec<&serde_json::Value> = hop.iter().filter(|r| r["error"].is_null()).collect();
    assert!(ran.iter().any(|r| r["target"] == "direct"), "no direct row: {json}");
    for row in &ran {
        let target = row["target"].as_str().unwrap();
        assert!(rps(row) > 0.0, "{target}: zero rps in {row}");
        assert!(row["latency"]["achieved_rps"]["median"].as_f64().unwrap_or(0.0) > 0.0, "{target}: no latency");
        assert!(md.contains(&format!("| {target} |")), "{target}: no row in\n{md}");
    }
    for row in json["pair"].as_array().unwrap().iter().filter(|r| r["error"].is_null()) {
        let target = row["target"].as_str().unwrap();
        assert!(rps(row) > 0.0, "pair {target}: zero rps in {row}");
    }
    for row in json["handshakes"].as_array().unwrap().iter().filter(|r| r["error"].is_null()) {
        let target = row["target"].as_str().unwrap();
        assert!(rps(row) > 0.0, "handshakes {target}: zero handshakes/s in {row}");
    }
    for row in json["config_scale"].as_array().unwrap().iter().filter(|r| r["error"].is_null()) {
        let target = row["target"].as_str().unwrap();
        let runs = row["runs"].as_array().unwrap();
        assert!(!runs.is_empty(), "config-scale {target}: no run in {row}");
        assert!(runs.iter().all(|r| r["active_clusters"].as_i64().unwrap_or(0) > 0), "config-scale {target}: {row}");
    }
    let names: Vec<&str> = ran.iter().filter_map(|r| r["target"].as_str()).collect();
    println!("bench smoke: ran {names:?}\n{stderr}");
}
