#![allow(clippy::expect_used, clippy::unwrap_used)]
//! Build script: finds the descriptor set that ships inside the `envoy-types` crate and compiles
//! the few extra protos this repository carries (types istiod and pilot-agent send that
//! envoy-types does not have), so the proto3 JSON loader can resolve every `@type`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set"));

    // envoy-types' prost-build output includes the FileDescriptorSet it was generated from.
    let envoy_types_dir = envoy_types_dir(&manifest_dir);
    let types_bin = envoy_types_dir.join("src/generated/types.bin");
    // Without source_code_info (the comments and spans of every .proto, ~80% of the set): the
    // JSON loader needs none of it, and decoding it made the startup heap peak ~40 MB higher.
    // Stripped at the wire level: decoding with prost_types would drop the options' extensions
    // (the `validate.rules` annotations remora checks configs against).
    let raw = std::fs::read(&types_bin).unwrap_or_else(|e| panic!("reading {}: {e}", types_bin.display()));
    let stripped = strip_source_code_info(&raw).unwrap_or_else(|| panic!("malformed {}", types_bin.display()));
    std::fs::write(out.join("envoy_types.bin"), stripped).expect("writing envoy_types.bin");
    println!("cargo:rerun-if-changed={}", types_bin.display());

    // Our extra protos import well-known types only.
    let proto_dir = manifest_dir.join("proto");
    let files: Vec<PathBuf> =
        walk(&proto_dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "proto")).collect();
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&proto_dir]).expect("compiling extra protos");
    let bytes = prost::Message::encode_to_vec(&fds);
    std::fs::write(out.join("extra.bin"), bytes).expect("writing extra.bin");
}

/// A FileDescriptorSet (files in field 1) without each file's `source_code_info` (field 9),
/// every other byte kept as it is.
fn strip_source_code_info(set: &[u8]) -> Option<Vec<u8>> {
    fn varint(buf: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = buf.split_first()?;
            *buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }
    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    /// A field: its number, its whole encoding, and the payload of a length-delimited one.
    type Field<'a> = (u64, &'a [u8], &'a [u8]);
    fn fields(mut buf: &[u8]) -> Option<Vec<Field<'_>>> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let start = buf;
            let tag = varint(&mut buf)?;
            let payload: &[u8] = match tag & 7 {
                0 => {
                    varint(&mut buf)?;
                    &[]
                }
                1 => {
                    buf = buf.get(8..)?;
                    &[]
                }
                2 => {
                    let len = usize::try_from(varint(&mut buf)?).ok()?;
                    let p = buf.get(..len)?;
                    buf = &buf[len..];
                    p
                }
                5 => {
                    buf = buf.get(4..)?;
                    &[]
                }
                _ => return None,
            };
            let whole = &start[..start.len() - buf.len()];
            out.push((tag >> 3, whole, payload));
        }
        Some(out)
    }
    let mut out = Vec::with_capacity(set.len());
    for (n, whole, payload) in fields(set)? {
        if n != 1 {
            out.extend_from_slice(whole);
            continue;
        }
        let mut file = Vec::with_capacity(payload.len());
        for (fnum, fwhole, _) in fields(payload)? {
            if fnum != 9 {
                file.extend_from_slice(fwhole);
            }
        }
        put_varint(&mut out, (1 << 3) | 2);
        put_varint(&mut out, file.len() as u64);
        out.extend_from_slice(&file);
    }
    Some(out)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                v.extend(walk(&p));
            } else {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

/// Locates the envoy-types package source through `cargo metadata` (works for registry,
/// vendored and git sources alike).
fn envoy_types_dir(manifest_dir: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = std::env::var("TARGET").unwrap_or_default();
    // Offline first (a build must not need the network); a partial build on a fresh machine may
    // not have downloaded every package `cargo metadata` reads, so then let it fetch them.
    let run = |offline: bool| {
        let mut args = vec!["metadata", "--format-version", "1", "--filter-platform", &target];
        if offline {
            args.push("--offline");
        }
        Command::new(&cargo).args(args).current_dir(manifest_dir).output().expect("running cargo metadata")
    };
    let mut out = run(true);
    if !out.status.success() {
        out = run(false);
    }
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata json");
    let pkgs = meta["packages"].as_array().expect("packages array");
    for p in pkgs {
        if p["name"] == "envoy-types" {
            let manifest = p["manifest_path"].as_str().expect("manifest_path");
            return Path::new(manifest).parent().expect("parent dir").to_path_buf();
        }
    }
    panic!("envoy-types not found in cargo metadata");
}
