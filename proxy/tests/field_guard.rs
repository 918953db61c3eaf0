//! The field-coverage guard over real config: every istiod dump and Envoy example bootstrap in
//! shared/testdata is either accepted or refused with the precise field path, and the list of
//! refusals is pinned here, so a change in what remora honours shows up as a diff.
//!
//! `REMORA_GUARD_OBSERVE=1` prints every (message, field) set anywhere in the test data, with
//! the guard's verdict: the input for growing `proxy/src/config/fields.txt`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, ReflectMessage, Value};
use remora::config::field_guard::FieldGuard;
use serde_json::Value as Json;

fn testdata() -> Option<PathBuf> {
    let dir = std::env::var_os("REMORA_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"));
    dir.is_dir().then_some(dir)
}

/// Every (type name, encoded resource, label) in the test data: dump resources and bootstraps.
fn inputs(dir: &std::path::Path) -> Vec<(String, Vec<u8>, String)> {
    use prost::Message;
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir.join("istio")).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    for path in files.iter().filter(|p| p.is_file()) {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".md") {
            continue;
        }
        let text = std::fs::read_to_string(path).unwrap();
        let root: Json = serde_json::from_str(&text)
            .unwrap_or_else(|_| xds_client::json::yaml_to_json(&text).expect("dump is JSON or YAML"));
        for cfg in root["configs"].as_array().into_iter().flatten() {
            for (section, field, inner) in [
                ("dynamic_active_clusters", "cluster", None),
                ("static_clusters", "cluster", None),
                ("dynamic_listeners", "listener", Some("active_state")),
                ("static_listeners", "listener", None),
                ("dynamic_route_configs", "route_config", None),
                ("static_route_configs", "route_config", None),
                ("dynamic_endpoint_configs", "endpoint_config", None),
            ] {
                for e in cfg[section].as_array().into_iter().flatten() {
                    let holder = match inner {
                        Some(p) => match e.get(p) {
                            Some(h) => h,
                            None => continue,
                        },
                        None => e,
                    };
                    let Some(res) = holder.get(field) else { continue };
                    let Ok((_, rname, any)) = xds_client::server::resource_from_json(res, section) else { continue };
                    let t = any.type_url.rsplit('/').next().unwrap().to_string();
                    out.push((t, any.value, format!("{name} {section} {rname}")));
                }
            }
        }
    }
    let mut boots: Vec<PathBuf> = std::fs::read_dir(dir.join("envoy-examples"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    boots.extend(
        std::fs::read_dir(dir.join("istio/bootstrap"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json")),
    );
    boots.sort();
    for path in boots {
        let src = xds_client::bootstrap::BootstrapSource {
            path: Some(path.clone()),
            config_yaml: None,
            allow_unknown_fields: true,
        };
        if let Ok(b) = xds_client::bootstrap::load(&src) {
            out.push((
                "envoy.config.bootstrap.v3.Bootstrap".into(),
                b.encode_to_vec(),
                path.file_name().unwrap().to_string_lossy().to_string(),
            ));
        }
    }
    out
}

/// Records every set field, descending into sub-messages and typed configs.
fn observe(pool: &DescriptorPool, msg: &DynamicMessage, seen: &mut BTreeMap<(String, String), usize>) {
    let desc: MessageDescriptor = msg.descriptor();
    for (f, v) in msg.fields() {
        *seen.entry((desc.full_name().to_string(), f.name().to_string())).or_default() += 1;
        observe_value(pool, v, seen);
    }
}

fn observe_value(pool: &DescriptorPool, v: &Value, seen: &mut BTreeMap<(String, String), usize>) {
    match v {
        Value::Message(m) if m.descriptor().full_name() == "google.protobuf.Any" => {
            let t = m.get_field_by_name("type_url").and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            let bytes = m.get_field_by_name("value").and_then(|v| v.as_bytes().cloned()).unwrap_or_default();
            let name = t.rsplit('/').next().unwrap_or_default();
            if let Some(d) = pool.get_message_by_name(name)
                && let Ok(inner) = DynamicMessage::decode(d, bytes.as_ref())
            {
                observe(pool, &inner, seen);
            }
        }
        Value::Message(m) => observe(pool, m, seen),
        Value::List(items) => items.iter().for_each(|i| observe_value(pool, i, seen)),
        Value::Map(map) => map.values().for_each(|i| observe_value(pool, i, seen)),
        _ => {}
    }
}

#[test]
fn testdata_is_accepted_or_refused_precisely() {
    let Some(dir) = testdata() else {
        eprintln!("skipping: no shared/testdata");
        return;
    };
    let guard = FieldGuard::load().expect("fields.txt compiles against the descriptors");
    let pool = xds_client::descriptors::pool();
    let mut refused: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen = BTreeMap::new();
    for (t, bytes, label) in inputs(&dir) {
        if let Err(f) = guard.check(&t, &bytes) {
            refused.entry(f.to_string()).or_default().push(label.clone());
        }
        if std::env::var_os("REMORA_GUARD_OBSERVE").is_some() {
            let d = pool.get_message_by_name(&t).unwrap();
            observe(&pool, &DynamicMessage::decode(d, bytes.as_slice()).unwrap(), &mut seen);
        }
    }
    if std::env::var_os("REMORA_GUARD_OBSERVE").is_some() {
        for ((m, f), n) in &seen {
            println!("OBSERVED {m} {f} {n}");
        }
    }
    let mut got = String::new();
    for (why, who) in &refused {
        got.push_str(&format!("{why}  <- {} resource(s), e.g. {}\n", who.len(), who[0]));
    }
    println!("{got}");
    let expected = include_str!("field_guard_refusals.txt");
    assert_eq!(got.trim(), expected.trim(), "the guard's refusals over testdata changed");
}

/// FIELDS.md is generated from `fields.txt` and the descriptors, so the documented lists cannot
/// drift from what the guard does. `REMORA_UPDATE_FIELDS=1` rewrites it.
#[test]
fn fields_md_is_generated_from_the_policy() {
    let pool = xds_client::descriptors::pool();
    let table = FieldGuard::markdown(&pool, remora::config::field_guard::POLICY).unwrap();
    let doc = format!(
        "# What remora does with each Envoy config field\n\n\
         Generated from `proxy/src/config/fields.txt` by the field-coverage guard \
         (`cargo test -p remora --test field_guard`, `REMORA_UPDATE_FIELDS=1` to rewrite). For every \
         message remora translates: the fields it refuses (a NACK naming the resource and the field \
         path, or a config error for static config), the fields it accepts without effect and why, \
         and the telemetry-only fields it accepts loudly (logged once, counted in \
         `config_guard.telemetry_only.<Message>.<field>`, listed on the admin API's `/config_guard`). \
         Every other field of these messages is implemented. Messages marked whole in the policy are \
         implemented in full and not listed.\n\n{table}"
    );
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../FIELDS.md");
    if std::env::var_os("REMORA_UPDATE_FIELDS").is_some() {
        std::fs::write(&path, &doc).unwrap();
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(current == doc, "FIELDS.md is stale: run with REMORA_UPDATE_FIELDS=1");
}
