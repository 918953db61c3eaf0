//! Bad input: each refused folder names the file, the field and the reason; `--check` exits 1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

fn demo_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo")
}

/// A copy of examples/demo with `file` set to `text`.
fn with_file(file: &str, text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(demo_dir()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    std::fs::write(dir.path().join(file), text).unwrap();
    dir
}

fn refused(dir: &Path) -> String {
    mesh::runner::load(dir).expect_err("must be refused").to_string()
}

#[test]
fn examples_demo_is_accepted() {
    let m = mesh::runner::load(&demo_dir()).unwrap();
    assert_eq!(m.services.len(), 3);
    assert_eq!(m.pods.len(), 5);
    assert!(m.is_strict("default"));
}

#[test]
fn malformed_yaml_names_the_file_and_line() {
    let d = with_file("bad.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: x\n");
    let e = refused(d.path());
    assert!(e.contains("bad.yaml") && e.contains("document at line 1"), "{e}");
}

#[test]
fn unknown_kind_is_refused() {
    let d = with_file(
        "bad.yaml",
        "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: ext}\nspec: {configPatches: []}\n",
    );
    let e = refused(d.path());
    assert!(
        e.contains("bad.yaml") && e.contains("EnvoyFilter ext") && e.contains("kind 'EnvoyFilter' is not supported"),
        "{e}"
    );
}

#[test]
fn dangling_subset_is_refused() {
    let text = std::fs::read_to_string(demo_dir().join("routing.yaml")).unwrap().replace("subset: v2", "subset: v3");
    let d = with_file("routing.yaml", &text);
    let e = refused(d.path());
    assert!(e.contains("routing.yaml"), "{e}");
    assert!(e.contains("VirtualService reviews") && e.contains("spec.http[0].route[1].destination.subset"), "{e}");
    assert!(e.contains("no DestinationRule for 'reviews.default.svc.cluster.local' defines subset 'v3'"), "{e}");
}

#[test]
fn dangling_host_is_refused() {
    let text =
        std::fs::read_to_string(demo_dir().join("routing.yaml")).unwrap().replace("host: frontend,", "host: nowhere,");
    let d = with_file("routing.yaml", &text);
    let e = refused(d.path());
    assert!(
        e.contains("route[0].destination.host") && e.contains("no Service 'nowhere.default.svc.cluster.local'"),
        "{e}"
    );
}

#[test]
fn unsupported_field_names_its_path() {
    let text = std::fs::read_to_string(demo_dir().join("routing.yaml"))
        .unwrap()
        .replace("    timeout: 10s\n", "    timeout: 10s\n    mirrorr: {host: ratings}\n");
    let d = with_file("routing.yaml", &text);
    let e = refused(d.path());
    assert!(e.contains("routing.yaml") && e.contains("spec.http[0]") && e.contains("unknown field `mirrorr`"), "{e}");
}

#[test]
fn check_flag_reports_and_fails() {
    let d = with_file("bad.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {}\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_remora-demo"))
        .args(["--check", "--mesh"])
        .arg(d.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml") && err.contains("kind 'Pod' is not supported"), "{err}");
}

#[test]
fn port_clash_in_a_pod_is_refused() {
    let text = std::fs::read_to_string(demo_dir().join("workloads.yaml"))
        .unwrap()
        .replace("ports: [{containerPort: 9081}]", "ports: [{containerPort: 9081}, {containerPort: 9081}]");
    let d = with_file("workloads.yaml", &text);
    let e = refused(d.path());
    assert!(
        e.contains("workloads.yaml")
            && e.contains("Deployment ratings")
            && e.contains("container port 9081 is declared twice"),
        "{e}"
    );
}

#[test]
fn busy_gateway_port_is_a_clear_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let work = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_remora-demo"))
        .arg("--mesh")
        .arg(demo_dir())
        .args(["--gateway-port", &port.to_string(), "--remora", "/nonexistent/remora", "--app", "/nonexistent/app"])
        .arg("--work-dir")
        .arg(work.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("127.0.0.1:{port}, which is not free")) && err.contains("--gateway-port"), "{err}");
}
