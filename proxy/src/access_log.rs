//! Access logs: Envoy's `access_log` entries (`envoy.access_loggers.file`, `.stdout`, `.stderr`)
//! with their filters and formats (text, JSON, Envoy's default line).
//!
//! Invariants: formats and filters are compiled at config time; a worker only formats a line and
//! hands it to a channel. One background thread per destination buffers lines and writes them
//! when 64 KiB are pending or every `--file-flush-interval-msec` (and at shutdown), so a slow
//! disk never blocks a worker. Loggers naming the same path share one destination.

pub mod filter;
pub mod flags;
pub mod request;
pub mod sink;

use std::sync::Arc;

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog as AccessLogProto, access_log};
use envoy_types::pb::envoy::config::core::v3::{SubstitutionFormatString, data_source, substitution_format_string};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{FileAccessLog, file_access_log};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{StderrAccessLog, StdoutAccessLog};
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};

pub use filter::{Entry, Filter};
pub use flags::ResponseFlags;
pub use sink::{Destination, Sink, flush_all};

use crate::config::{BuildCtx, ConfigError};
use crate::formatter::{FormatContext, Formatter};

/// Envoy's default access log line.
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" \
%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \
\"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

const FILE: &str = "envoy.extensions.access_loggers.file.v3.FileAccessLog";
const STDOUT: &str = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const STDERR: &str = "envoy.extensions.access_loggers.stream.v3.StderrAccessLog";

/// Access loggers that send telemetry to a collector; remora skips them.
const TELEMETRY_ONLY: &[&str] = &[
    "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
    "envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig",
    "envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
    "envoy.extensions.access_loggers.wasm.v3.WasmAccessLog",
];

fn warn_skipped(name: &str, type_name: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(target: "remora::access_log", "skipping telemetry-only access logger {name} ({type_name})");
    });
}

/// A JSON log template: keys in order, each a formatted string, a literal or a nested object.
#[derive(Debug, Clone)]
enum JsonNode {
    Format(Formatter),
    Literal(serde_json::Value),
    Object(Vec<(String, JsonNode)>),
    List(Vec<JsonNode>),
}

#[derive(Debug, Clone)]
enum Format {
    Text(Formatter),
    Json(Vec<(String, JsonNode)>),
}

/// One configured access log.
pub struct AccessLog {
    pub name: String,
    filter: Option<Filter>,
    format: Format,
    omit_empty: bool,
    sink: Arc<Sink>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").field("name", &self.name).finish()
    }
}

fn json_node(v: &PbValue, field: &str) -> Result<JsonNode, ConfigError> {
    Ok(match &v.kind {
        Some(Kind::StringValue(s)) => JsonNode::Format(Formatter::parse(s, field)?),
        Some(Kind::NumberValue(n)) => JsonNode::Literal(serde_json::json!(n)),
        Some(Kind::BoolValue(b)) => JsonNode::Literal(serde_json::Value::Bool(*b)),
        Some(Kind::NullValue(_)) | None => JsonNode::Literal(serde_json::Value::Null),
        Some(Kind::StructValue(s)) => JsonNode::Object(json_object(s, field)?),
        Some(Kind::ListValue(l)) => JsonNode::List(
            l.values
                .iter()
                .enumerate()
                .map(|(i, v)| json_node(v, &format!("{field}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn json_object(s: &Struct, field: &str) -> Result<Vec<(String, JsonNode)>, ConfigError> {
    s.fields.iter().map(|(k, v)| Ok((k.clone(), json_node(v, &format!("{field}.{k}"))?))).collect()
}

fn render_json(nodes: &[(String, JsonNode)], cx: &FormatContext<'_>, omit_empty: bool) -> serde_json::Value {
    fn node(n: &JsonNode, cx: &FormatContext<'_>, omit: bool) -> serde_json::Value {
        match n {
            JsonNode::Format(f) => f.format_json(cx, omit),
            JsonNode::Literal(v) => v.clone(),
            JsonNode::Object(o) => render_json(o, cx, omit),
            JsonNode::List(l) => serde_json::Value::Array(l.iter().map(|x| node(x, cx, omit)).collect()),
        }
    }
    let mut map = serde_json::Map::new();
    for (k, n) in nodes {
        let v = node(n, cx, omit_empty);
        if omit_empty && v.is_null() {
            continue;
        }
        map.insert(k.clone(), v);
    }
    serde_json::Value::Object(map)
}

/// `SubstitutionFormatString` (`log_format`).
fn format_from_proto(f: &SubstitutionFormatString, field: &str) -> Result<(Format, bool), ConfigError> {
    use substitution_format_string::Format as F;
    if !f.formatters.is_empty() {
        return Err(ConfigError::new(format!("{field}.formatters"), "formatter extensions are not supported"));
    }
    let fmt = match &f.format {
        Some(F::TextFormat(s)) => Format::Text(Formatter::parse(s, &format!("{field}.text_format"))?),
        Some(F::JsonFormat(s)) => Format::Json(json_object(s, &format!("{field}.json_format"))?),
        Some(F::TextFormatSource(ds)) => {
            let f2 = format!("{field}.text_format_source");
            let text = match &ds.specifier {
                Some(data_source::Specifier::InlineString(s)) => s.clone(),
                Some(data_source::Specifier::InlineBytes(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(data_source::Specifier::Filename(p)) => std::fs::read_to_string(p)
                    .map_err(|e| ConfigError::new(&f2, format!("unable to read file: {p}: {e}")))?,
                Some(data_source::Specifier::EnvironmentVariable(v)) => std::env::var(v)
                    .map_err(|_| ConfigError::new(&f2, format!("Environment variable doesn't exist: {v}")))?,
                None => return Err(ConfigError::new(f2, "a data source is required")),
            };
            Format::Text(Formatter::parse(&text, &f2)?)
        }
        None => return Err(ConfigError::new(field, "format is required")),
    };
    Ok((fmt, f.omit_empty_values))
}

fn default_format() -> Result<Format, ConfigError> {
    Ok(Format::Text(Formatter::parse(DEFAULT_FORMAT, "log_format")?))
}

impl AccessLog {
    pub fn from_proto(p: &AccessLogProto, field: &str, cx: &BuildCtx) -> Result<Self, ConfigError> {
        let filter = p.filter.as_ref().map(|f| Filter::from_proto(f, &format!("{field}.filter"))).transpose()?;
        let Some(access_log::ConfigType::TypedConfig(any)) = &p.config_type else {
            return Err(ConfigError::new(
                field,
                format!("Didn't find a registered implementation for '{}' with type URL: ''", p.name),
            ));
        };
        let tf = format!("{field}.typed_config");
        let unpack_err = |e: xds_client::any::AnyError| ConfigError::new(&tf, e.to_string());
        let t = xds_client::any::effective_type_name(any);
        let (format, omit_empty, dest) = match t.as_str() {
            FILE => {
                let c: FileAccessLog = xds_client::any::unpack(any).map_err(unpack_err)?;
                if c.path.is_empty() {
                    return Err(ConfigError::new(format!("{tf}.path"), "value length must be at least 1 characters"));
                }
                use file_access_log::AccessLogFormat as A;
                let (format, omit) = match &c.access_log_format {
                    None => (default_format()?, false),
                    Some(A::Format(s)) if s.is_empty() => (default_format()?, false),
                    Some(A::Format(s)) => (Format::Text(Formatter::parse(s, &format!("{tf}.format"))?), false),
                    Some(A::JsonFormat(s)) => (Format::Json(json_object(s, &format!("{tf}.json_format"))?), false),
                    Some(A::TypedJsonFormat(s)) => {
                        (Format::Json(json_object(s, &format!("{tf}.typed_json_format"))?), false)
                    }
                    Some(A::LogFormat(f)) => format_from_proto(f, &format!("{tf}.log_format"))?,
                };
                (format, omit, Destination::File(c.path.into()))
            }
            STDOUT | STDERR => {
                use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
                    stderr_access_log, stdout_access_log,
                };
                let log_format: Option<SubstitutionFormatString> = if t == STDOUT {
                    let c: StdoutAccessLog = xds_client::any::unpack(any).map_err(unpack_err)?;
                    c.access_log_format.map(|stdout_access_log::AccessLogFormat::LogFormat(f)| f)
                } else {
                    let c: StderrAccessLog = xds_client::any::unpack(any).map_err(unpack_err)?;
                    c.access_log_format.map(|stderr_access_log::AccessLogFormat::LogFormat(f)| f)
                };
                let (format, omit) = match log_format {
                    Some(f) => format_from_proto(&f, &format!("{tf}.log_format"))?,
                    None => (default_format()?, false),
                };
                (format, omit, if t == STDOUT { Destination::Stdout } else { Destination::Stderr })
            }
            other => {
                return Err(ConfigError::new(
                    tf,
                    format!("Didn't find a registered implementation for '{}' with type URL: '{other}'", p.name),
                ));
            }
        };
        let flush = cx.file_flush_interval.unwrap_or(sink::DEFAULT_FLUSH_INTERVAL);
        let sink = Sink::open(&dest, flush).map_err(|e| ConfigError::new(field, e))?;
        Ok(AccessLog { name: p.name.clone(), filter, format, omit_empty, sink })
    }

    /// Compiles a list of `access_log` entries. Loggers that only ship telemetry elsewhere
    /// (gRPC access log service, OpenTelemetry, Wasm) are skipped with a warning: they change
    /// nothing a client sees (DESIGN: telemetry-only extensions).
    pub fn list_from_proto(list: &[AccessLogProto], field: &str, cx: &BuildCtx) -> Result<Vec<AccessLog>, ConfigError> {
        let mut out = Vec::with_capacity(list.len());
        for (i, a) in list.iter().enumerate() {
            if let Some(access_log::ConfigType::TypedConfig(any)) = &a.config_type {
                let t = xds_client::any::effective_type_name(any);
                if TELEMETRY_ONLY.contains(&t.as_str()) {
                    warn_skipped(&a.name, &t);
                    continue;
                }
            }
            out.push(AccessLog::from_proto(a, &format!("{field}[{i}]"), cx)?);
        }
        Ok(out)
    }

    /// Formats and queues the line for one finished request, if the filter lets it through.
    pub fn log(&self, e: &Entry<'_>) {
        if self.filter.as_ref().is_some_and(|f| !f.matches(e)) {
            return;
        }
        let line = self.render(&e.cx);
        self.sink.write(line);
    }

    fn render(&self, cx: &FormatContext<'_>) -> Vec<u8> {
        match &self.format {
            Format::Text(f) => {
                let mut s = String::with_capacity(256);
                f.format_log(cx, self.omit_empty, &mut s);
                s.into_bytes()
            }
            Format::Json(nodes) => {
                let mut v = serde_json::to_vec(&render_json(nodes, cx, self.omit_empty)).unwrap_or_default();
                v.push(b'\n');
                v
            }
        }
    }
}

/// Logs a connection that ended without HTTP (a listener's `access_log`, e.g. no filter chain
/// matched: flag `NR`).
pub fn log_connection(
    logs: &[AccessLog],
    remote: std::net::SocketAddr,
    local: std::net::SocketAddr,
    server_name: Option<&str>,
    flags: ResponseFlags,
    accepted: (std::time::SystemTime, std::time::Instant),
) {
    if logs.is_empty() {
        return;
    }
    let facts = crate::formatter::LogFacts {
        start_time: Some(accepted.0),
        duration: Some(accepted.1.elapsed()),
        response_flags: flags,
        ..Default::default()
    };
    let cx = FormatContext {
        downstream_remote: Some(remote),
        downstream_direct_remote: Some(remote),
        downstream_local: Some(local),
        server_name,
        log: Some(&facts),
        ..Default::default()
    };
    let entry = Entry { cx, facts: &facts, health_check: false };
    for l in logs {
        l.log(&entry);
    }
}

/// What the router and filters report about a response, carried in its extensions to the
/// access log (only when the connection manager has access logs).
#[derive(Debug, Clone, Default)]
pub struct ResponseInfo {
    pub flags: ResponseFlags,
    pub details: Option<std::borrow::Cow<'static, str>>,
    pub upstream_host: Option<std::net::SocketAddr>,
    pub upstream_cluster: Option<Arc<str>>,
    /// The upstream cluster's `metadata` (Istio's stats read its `istio.services`).
    pub upstream_cluster_metadata: Option<Arc<envoy_types::pb::envoy::config::core::v3::Metadata>>,
    /// When the upstream's response headers arrived.
    pub first_upstream_byte: Option<std::time::Instant>,
}

impl ResponseInfo {
    /// Adds what a local reply knows (its flags, comma-separated, and details) to a response's
    /// extensions.
    pub fn mark_local_reply(ext: &mut http::Extensions, flag: &str, details: &'static str) {
        let info = match ext.get_mut::<ResponseInfo>() {
            Some(i) => i,
            None => {
                ext.insert(ResponseInfo::default());
                match ext.get_mut::<ResponseInfo>() {
                    Some(i) => i,
                    None => return,
                }
            }
        };
        for f in flag.split(',').filter_map(ResponseFlags::from_short) {
            info.flags |= f;
        }
        if info.details.is_none() && !details.is_empty() {
            info.details = Some(std::borrow::Cow::Borrowed(details));
        }
    }
}

#[cfg(test)]
mod tests;

/// What a request's end tells the tracer (computed once, with the access log's facts).
pub struct RequestEndFacts<'a> {
    pub status: u16,
    pub bytes_sent: u64,
    /// Envoy's short response flags (`-` when none).
    pub flags: String,
    pub upstream_cluster: Option<&'a str>,
    /// An upstream host was chosen.
    pub upstream_host: bool,
}

/// Work done when a request's response ends (the tracer's span).
pub trait RequestEnd: Send + Sync {
    fn finish(&self, facts: &RequestEndFacts<'_>);
}

/// A `RequestEnd` carried in the response's extensions to `request::wrap`.
#[derive(Clone)]
pub struct OnRequestEnd(pub Arc<dyn RequestEnd>);
