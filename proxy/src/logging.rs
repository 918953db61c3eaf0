//! Logging with Envoy's levels (`-l`, `--component-log-level`, `/logging`), changeable at runtime.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

/// Envoy's component names and the modules they cover.
const COMPONENTS: &[(&str, &str)] = &[
    ("admin", "remora::admin"),
    ("config", "remora::config"),
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

/// The runtime log controls (`/logging`).
pub struct LogControl {
    handle: reload::Handle<EnvFilter, tracing_subscriber::Registry>,
    state: std::sync::Mutex<(String, Vec<(String, String)>)>,
}

impl LogControl {
    fn directives(global: &str, comps: &[(String, String)]) -> String {
        let mut d = format!("{global},h2=warn,hyper=warn,tower=warn,tonic=warn");
        for (c, l) in comps {
            if let Some(m) = COMPONENTS.iter().find(|(n, _)| n == c).map(|(_, m)| *m) {
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

    /// `component: level` lines, as Envoy's `/logging` lists them.
    pub fn listing(&self) -> String {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::from("active loggers:\n");
        for (c, _) in COMPONENTS {
            let l = s.1.iter().find(|(n, _)| n == c).map(|(_, l)| l.as_str()).unwrap_or(&s.0);
            out.push_str(&format!("  {c}: {l}\n"));
        }
        out
    }
}

/// Installs the global subscriber. `component_levels` is Envoy's `comp:level,comp:level`.
pub fn init(global: &str, component_levels: Option<&str>) -> Result<LogControl, String> {
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
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_thread_names(true);
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(layer).with(fmt).try_init();
    Ok(LogControl { handle, state: std::sync::Mutex::new((g.to_string(), comps)) })
}
