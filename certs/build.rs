//! Build script: compiles `proto/` (the Istio CA service) with protox, so no `protoc` is needed,
//! and generates the tonic client and server from the resulting descriptor set.

use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".to_string()));
    let proto_dir = manifest_dir.join("proto");
    let file = proto_dir.join("istio/v1/auth/ca.proto");
    println!("cargo:rerun-if-changed={}", file.display());

    let fds = match protox::compile([&file], [&proto_dir]) {
        Ok(fds) => fds,
        Err(e) => panic!("compiling {}: {e:?}", file.display()),
    };
    if let Err(e) = tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds) {
        panic!("generating code for {}: {e}", file.display());
    }
}
