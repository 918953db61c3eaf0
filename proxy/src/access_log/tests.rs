//! Unit tests of access logs: config translation, filters and formatting.

use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLogFilter, ComparisonFilter, ResponseFlagFilter, StatusCodeFilter, access_log_filter::FilterSpecifier,
};
use envoy_types::pb::envoy::config::core::v3::RuntimeUInt32;

use super::*;
use crate::formatter::LogFacts;

fn file_log(path: &std::path::Path, fmt: Option<file_access_log::AccessLogFormat>) -> AccessLogProto {
    let c = FileAccessLog { path: path.display().to_string(), access_log_format: fmt };
    AccessLogProto {
        name: "envoy.access_loggers.file".into(),
        filter: None,
        config_type: Some(access_log::ConfigType::TypedConfig(xds_client::any::pack(&c))),
    }
}

fn entry_cx<'a>(facts: &'a LogFacts<'a>, h: &'a http::HeaderMap) -> FormatContext<'a> {
    FormatContext {
        method: Some("GET"),
        path: Some("/p"),
        authority: Some("host"),
        protocol: Some("HTTP/1.1"),
        response_code: Some(503),
        request_headers: Some(h),
        log: Some(facts),
        ..Default::default()
    }
}

#[test]
fn config_errors() {
    let bad_type = AccessLogProto {
        name: "x".into(),
        filter: None,
        config_type: Some(access_log::ConfigType::TypedConfig(xds_client::any::pack(
            &envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors {},
        ))),
    };
    assert!(AccessLog::from_proto(&bad_type, "access_log[0]", &BuildCtx::default()).is_err());
    let e = AccessLog::from_proto(
        &file_log(std::path::Path::new("/nonexistent/dir/x.log"), None),
        "a",
        &BuildCtx::default(),
    )
    .err()
    .unwrap();
    assert!(e.reason.contains("unable to open file '/nonexistent/dir/x.log'"), "{e}");
    let mut p = file_log(std::path::Path::new("/dev/null"), None);
    p.filter = Some(AccessLogFilter {
        filter_specifier: Some(FilterSpecifier::ResponseFlagFilter(ResponseFlagFilter { flags: vec!["XX".into()] })),
    });
    assert!(AccessLog::from_proto(&p, "a", &BuildCtx::default()).is_err(), "unknown flag");
}

#[test]
fn default_line_and_filters() {
    let dir = std::env::temp_dir().join(format!("remora-al-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("a.log");
    let mut p = file_log(&path, None);
    p.filter = Some(AccessLogFilter {
        filter_specifier: Some(FilterSpecifier::StatusCodeFilter(StatusCodeFilter {
            comparison: Some(ComparisonFilter {
                op: 1, // GE
                value: Some(RuntimeUInt32 { default_value: 500, runtime_key: String::new() }),
            }),
        })),
    });
    let log = AccessLog::from_proto(&p, "a", &BuildCtx::default()).unwrap();
    let mut h = http::HeaderMap::new();
    h.insert("user-agent", "curl/8".parse().unwrap());
    h.insert("x-request-id", "rid".parse().unwrap());
    let facts = LogFacts {
        response_flags: ResponseFlags::from_short("UH").unwrap(),
        bytes_sent: 19,
        duration: Some(std::time::Duration::from_millis(3)),
        start_time: Some(std::time::UNIX_EPOCH),
        ..Default::default()
    };
    let cx = entry_cx(&facts, &h);
    log.log(&Entry { cx, facts: &facts, health_check: false });
    let ok = FormatContext { response_code: Some(200), ..cx };
    log.log(&Entry { cx: ok, facts: &facts, health_check: false });
    log.sink.flush();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        "[1970-01-01T00:00:00.000Z] \"GET /p HTTP/1.1\" 503 UH 0 19 3 - \"-\" \"curl/8\" \"rid\" \"host\" \"-\"\n"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn json_keeps_types() {
    let mut s = Struct::default();
    let sv = |v: &str| PbValue { kind: Some(Kind::StringValue(v.into())) };
    s.fields.insert("code".into(), sv("%RESPONSE_CODE%"));
    s.fields.insert("path".into(), sv("%REQ(:PATH)%"));
    s.fields.insert("up".into(), sv("%UPSTREAM_HOST%"));
    s.fields.insert("mixed".into(), sv("%REQ(:METHOD)% %UPSTREAM_HOST%"));
    let nodes = json_object(&s, "f").unwrap();
    let facts = LogFacts::default();
    let h = http::HeaderMap::new();
    let v = render_json(&nodes, &entry_cx(&facts, &h), false);
    assert_eq!(v, serde_json::json!({"code": 503, "path": "/p", "up": null, "mixed": "GET -"}));
}

#[test]
fn telemetry_loggers_are_skipped() {
    let otel = AccessLogProto {
        name: "envoy.access_loggers.open_telemetry".into(),
        filter: None,
        config_type: Some(access_log::ConfigType::TypedConfig(envoy_types::pb::google::protobuf::Any {
            type_url:
                "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig"
                    .into(),
            value: Vec::new(),
        })),
    };
    let logs = AccessLog::list_from_proto(
        &[otel, file_log(std::path::Path::new("/dev/null"), None)],
        "a",
        &BuildCtx::default(),
    )
    .unwrap();
    assert_eq!(logs.len(), 1);
}
