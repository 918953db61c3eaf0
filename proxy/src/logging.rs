//! Logging with Envoy's levels (`-l`, `--component-log-level`, `/logging`), changeable at runtime,
//! in Envoy's line format (`--log-format`, `--log-format-escaped`, `--log-path`, the bootstrap's
//! `application_log_config`). No colour codes: the lines go to files and container logs.

mod format;

use std::io::Write as _;
use std::sync::{Arc, RwLock};

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

pub use format::{DEFAULT_PATTERN, LineFormat};

/// Envoy's component names and the modules they cover.
const COMPONENTS: &[(&str, &str)] = &[
    ("admin", "remora::admin"),
    ("config", "remora::config"),
    ("config", "remora::manager"),
    ("config", "remora::xds"),
    ("rbac", "remora::filters::common::rbac"),
    ("upstream", "remora::upstream"),
    ("router", "remora::filters::http::router"),
    ("http", "remora::filters::network::http_connection_manager"),
    ("connection", "remora::listener"),
    ("main", "remora::server"),
    ("pool", "remora::upstream::pool"),
    ("xds", "xds_client"),
];

/// Maps Envoy's level names to tracing's.
pub fn level(name: &str) -> Option<&'static str> {
    Some(match name {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "critical" => "error",
        "off" => "off",
        _ => return None,
    })
}

/// The runtime log controls (`/logging`, the format once the bootstrap is read).
pub struct LogControl {
    handle: reload::Handle<EnvFilter, tracing_subscriber::Registry>,
    state: std::sync::Mutex<(String, Vec<(String, String)>)>,
    format: Arc<RwLock<Arc<LineFormat>>>,
}

impl LogControl {
    fn directives(global: &str, comps: &[(String, String)]) -> String {
        let mut d = format!("{global},h2=warn,hyper=warn,tower=warn,tonic=warn");
        for (c, l) in comps {
            for (_, m) in COMPONENTS.iter().filter(|(n, _)| n == c) {
                d.push_str(&format!(",{m}={l}"));
            }
        }
        d
    }

    fn apply(&self) -> Result<(), String> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let f = EnvFilter::try_new(Self::directives(&s.0, &s.1)).map_err(|e| e.to_string())?;
        self.handle.reload(f).map_err(|e| e.to_string())
    }

    /// Sets every logger's level.
    pub fn set_all(&self, lvl: &str) -> Result<(), String> {
        let l = level(lvl).ok_or_else(|| format!("unknown level {lvl}"))?;
        {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.0 = l.to_string();
            s.1.clear();
        }
        self.apply()
    }

    /// Sets one component's level.
    pub fn set_component(&self, comp: &str, lvl: &str) -> Result<(), String> {
        let l = level(lvl).ok_or_else(|| format!("unknown level {lvl}"))?;
        if !COMPONENTS.iter().any(|(n, _)| *n == comp) {
            return Err(format!("unknown logger {comp}"));
        }
        {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.1.retain(|(c, _)| c != comp);
            s.1.push((comp.to_string(), l.to_string()));
        }
        self.apply()
    }

    /// Replaces the line format (the bootstrap's `application_log_config`).
    pub fn set_format(&self, f: LineFormat) {
        *self.format.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(f);
    }

    /// `component: level` lines, as Envoy's `/logging` lists them.
    pub fn listing(&self) -> String {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::from("active loggers:\n");
        for (i, (c, _)) in COMPONENTS.iter().enumerate() {
            if COMPONENTS[..i].iter().any(|(n, _)| n == c) {
                continue;
            }
            let l = s.1.iter().find(|(n, _)| n == c).map(|(_, l)| l.as_str()).unwrap_or(&s.0);
            out.push_str(&format!("  {c}: {l}\n"));
        }
        out
    }
}

/// Where the lines go.
pub enum Sink {
    Stderr,
    File(std::fs::File),
}

impl Sink {
    /// `--log-path`: appended to, created if missing.
    pub fn open(path: Option<&std::path::Path>) -> Result<Sink, String> {
        match path {
            None => Ok(Sink::Stderr),
            Some(p) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map(Sink::File)
                .map_err(|e| format!("cannot open log path {}: {e}", p.display())),
        }
    }

    fn write(&self, line: &str) {
        // One write per line (O_APPEND for files) keeps lines whole across threads.
        let _ = match self {
            Sink::Stderr => std::io::stderr().lock().write_all(line.as_bytes()),
            Sink::File(f) => (&*f).write_all(line.as_bytes()),
        };
    }
}

/// The layer writing each event as one line in the current format.
struct EnvoyLines {
    format: Arc<RwLock<Arc<LineFormat>>>,
    sink: Sink,
}

/// Collects an event's message and its other fields (`key=value` after the message).
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            use std::fmt::Write as _;
            let _ = write!(self.0, " {}={}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?}"));
        } else {
            let _ = write!(self.0, " {}={:?}", field.name(), value);
        }
    }
}

thread_local! {
    /// The kernel's thread id, as Envoy's `%t` prints it (read once per thread, without unsafe:
    /// `/proc/thread-self` links to `<pid>/task/<tid>`).
    static THREAD_ID: u64 = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse().ok()))
        .unwrap_or(0);
}

/// Envoy's logger for a module path: the component owning it, else "misc".
fn logger_of(target: &str) -> &'static str {
    COMPONENTS
        .iter()
        .filter(|(_, m)| target == *m || target.strip_prefix(m).is_some_and(|r| r.starts_with("::")))
        .max_by_key(|(_, m)| m.len())
        .map(|(n, _)| *n)
        .unwrap_or("misc")
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for EnvoyLines {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        let mut msg = Message::default();
        event.record(&mut msg);
        let level = match *meta.level() {
            tracing::Level::TRACE => "trace",
            tracing::Level::DEBUG => "debug",
            tracing::Level::INFO => "info",
            tracing::Level::WARN => "warning",
            tracing::Level::ERROR => "error",
        };
        let record = format::Record {
            time: std::time::SystemTime::now(),
            level,
            logger: logger_of(meta.target()),
            file: meta.file().unwrap_or("?"),
            line: meta.line().unwrap_or(0),
            function: meta.module_path().unwrap_or(meta.target()),
            thread: THREAD_ID.with(|t| *t),
            message: &msg.0,
        };
        let f = self.format.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut line = String::with_capacity(160);
        f.render(&record, &mut line);
        self.sink.write(&line);
    }
}

/// Installs the global subscriber. `component_levels` is Envoy's `comp:level,comp:level`;
/// `format` the line format (`--log-format`), `sink` where lines go (`--log-path`).
pub fn init(
    global: &str,
    component_levels: Option<&str>,
    format: LineFormat,
    sink: Sink,
) -> Result<LogControl, String> {
    let g = level(global).ok_or_else(|| format!("invalid log level: {global}"))?;
    let mut comps = Vec::new();
    if let Some(cl) = component_levels {
        for item in cl.split(',').filter(|s| !s.is_empty()) {
            let (c, l) =
                item.split_once(':').ok_or_else(|| format!("component log level not correctly specified '{item}'"))?;
            let l = level(l).ok_or_else(|| format!("invalid log level: {l}"))?;
            comps.push((c.to_string(), l.to_string()));
        }
    }
    let filter = EnvFilter::try_new(LogControl::directives(g, &comps)).map_err(|e| e.to_string())?;
    let (layer, handle) = reload::Layer::new(filter);
    let format = Arc::new(RwLock::new(Arc::new(format)));
    let lines = EnvoyLines { format: format.clone(), sink };
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(layer).with(lines).try_init();
    Ok(LogControl { handle, state: std::sync::Mutex::new((g.to_string(), comps)), format })
}

#[cfg(test)]
mod tests {
    use super::logger_of;

    #[test]
    fn loggers_by_module() {
        assert_eq!(logger_of("remora::upstream::pool"), "pool");
        assert_eq!(logger_of("remora::upstream::lb"), "upstream");
        assert_eq!(logger_of("remora::upstreamx"), "misc");
        assert_eq!(logger_of("xds_client::ads"), "xds");
        assert_eq!(logger_of("remora::manager::listeners"), "config");
        assert_eq!(logger_of("remora::worker"), "misc");
    }
}
