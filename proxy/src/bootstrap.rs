//! From a loaded `Bootstrap` to the server's compiled config: node identity, admin address,
//! stats settings, static clusters and listeners. Also Envoy's start-up checks that `--mode
//! validate` must reproduce (files and runtime directories that must exist).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;

use crate::cli::Options;
use crate::config::field_guard::FieldGuard;
use crate::config::{BuildCtx, ConfigError, NodeInfo};
use crate::listener::Listener;
use crate::stats::Store;
use crate::stats::tags::TagExtractors;
use crate::upstream::cluster::{Cluster, socket_address_of};

/// The compiled bootstrap.
pub struct ServerConfig {
    pub node: Arc<NodeInfo>,
    pub admin: Option<SocketAddr>,
    pub stats: Arc<Store>,
    pub clusters: Vec<Arc<Cluster>>,
    pub listeners: Vec<Arc<Listener>>,
    pub cx: BuildCtx,
    pub bootstrap: Bootstrap,
    /// The overload manager's `global_downstream_max_connections`, if configured.
    pub max_downstream_connections: Option<u64>,
    /// The line format `application_log_config` sets, if it does.
    pub log_format: Option<crate::logging::LineFormat>,
}

/// CDS and LDS come over ADS (`ads: {}`) or from files (`path_config_source`): a source of its
/// own per type (`api_config_source`) would fetch nothing in remora, so it is refused.
fn check_dynamic_sources(b: &Bootstrap) -> Result<(), ConfigError> {
    use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier as S;
    let Some(d) = &b.dynamic_resources else { return Ok(()) };
    for (name, src) in [("cds_config", &d.cds_config), ("lds_config", &d.lds_config)] {
        match src.as_ref().and_then(|c| c.config_source_specifier.as_ref()) {
            Some(S::ApiConfigSource(_)) => {
                return Err(ConfigError::new(
                    format!("dynamic_resources.{name}.api_config_source"),
                    "a separate xDS stream per resource type is not supported by remora: use ads_config and ads: {}",
                ));
            }
            Some(S::Self_(_)) => {
                return Err(ConfigError::new(
                    format!("dynamic_resources.{name}.self"),
                    "not supported by remora: use ads_config and ads: {}",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// `application_log_config.log_format`: a text pattern or a JSON object of patterns. Setting it
/// and `--log-format` both is an error, as in Envoy.
fn application_log_format(b: &Bootstrap, opts: &Options) -> Result<Option<crate::logging::LineFormat>, ConfigError> {
    use envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::application_log_config::log_format::LogFormat;
    let Some(f) =
        b.application_log_config.as_ref().and_then(|c| c.log_format.as_ref()).and_then(|f| f.log_format.as_ref())
    else {
        return Ok(None);
    };
    if opts.log_format.is_some() {
        return Err(ConfigError::new(
            "application_log_config.log_format",
            "only one of ApplicationLogConfig.log_format or CLI option --log-format can be specified",
        ));
    }
    Ok(Some(match f {
        LogFormat::TextFormat(t) => crate::logging::LineFormat::text(t, opts.log_format_escaped),
        LogFormat::JsonFormat(st) => match xds_client::json::struct_to_json(st) {
            serde_json::Value::Object(m) => crate::logging::LineFormat::json(&m, opts.log_format_escaped)
                .map_err(|e| ConfigError::new("application_log_config.log_format.json_format", e))?,
            _ => return Err(ConfigError::new("application_log_config.log_format.json_format", "not an object")),
        },
    }))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

pub fn build(b: &Bootstrap, opts: &Options) -> Result<ServerConfig, ConfigError> {
    let mut node = NodeInfo { hostname: hostname(), ..Default::default() };
    if let Some(n) = &b.node {
        node.id = n.id.clone();
        node.cluster = n.cluster.clone();
        node.zone = n.locality.as_ref().map(|l| l.zone.clone()).unwrap_or_default();
        node.metadata = n.metadata.clone();
    }
    if let Some(c) = &opts.service_cluster {
        node.cluster = c.clone();
    }
    if let Some(n) = &opts.service_node {
        node.id = n.clone();
    }
    if let Some(z) = &opts.service_zone {
        node.zone = z.clone();
    }
    let node = Arc::new(node);

    // Stats: tag extractors from the bootstrap (custom first, then Envoy's defaults).
    let (use_defaults, custom) = match &b.stats_config {
        Some(sc) => {
            let mut custom = Vec::new();
            for (i, t) in sc.stats_tags.iter().enumerate() {
                use envoy_types::pb::envoy::config::metrics::v3::tag_specifier::TagValue;
                match &t.tag_value {
                    Some(TagValue::Regex(r)) => custom.push((t.tag_name.clone(), r.clone())),
                    Some(TagValue::FixedValue(_)) => {}
                    None => {
                        return Err(ConfigError::new(
                            format!("stats_config.stats_tags[{i}]"),
                            "needs a regex or fixed_value",
                        ));
                    }
                }
            }
            (sc.use_all_default_tags.map(|b| b.value).unwrap_or(true), custom)
        }
        None => (true, Vec::new()),
    };
    let tags = TagExtractors::new(use_defaults, &custom).map_err(|e| ConfigError::new("stats_config.stats_tags", e))?;
    let matcher = match b.stats_config.as_ref().and_then(|s| s.stats_matcher.as_ref()) {
        Some(m) => crate::stats::StatsMatcher::from_proto(m)?,
        None => crate::stats::StatsMatcher::All,
    };
    let stats = Arc::new(Store::with_matcher(tags, matcher));

    // Honour or refuse: every field set in the bootstrap is implemented, a stated no-op or
    // telemetry-only (accepted loudly); anything else stops the start with its path.
    let guard = Arc::new(FieldGuard::load().map_err(|e| ConfigError::new("", e))?);
    guard.admit(b, &stats).map_err(|f| ConfigError::unsupported(&f))?;
    check_runtime(b)?;
    check_bootstrap_extensions(b)?;
    let max_downstream_connections = overload_manager(b)?;
    let log_format = application_log_format(b, opts)?;
    check_dynamic_sources(b)?;

    let admin = match &b.admin {
        Some(a) if a.address.is_some() => Some(socket_address_of(a.address.as_ref(), "admin.address")?),
        _ => None,
    };

    let sr = b.static_resources.clone().unwrap_or_default();
    // Static secrets first: clusters and listeners may name them.
    let secrets = Arc::new(crate::tls::SecretStore::default());
    let mut static_secrets = Vec::new();
    for (i, s) in sr.secrets.iter().enumerate() {
        let f = format!("static_resources.secrets[{i}]");
        static_secrets.push((s.name.clone(), crate::tls::secrets::Secret::from_proto(s, &f)?));
    }
    secrets.set(static_secrets);
    let mut cluster_names = HashSet::new();
    for (i, c) in sr.clusters.iter().enumerate() {
        if !cluster_names.insert(c.name.clone()) {
            return Err(ConfigError::new(
                format!("static_resources.clusters[{i}].name"),
                format!("cluster manager: duplicate cluster '{}'", c.name),
            ));
        }
    }
    // The bootstrap's tracer, for HCMs whose `tracing` names no provider.
    let tracer = match b.tracing.as_ref().and_then(|t| t.http.as_ref()) {
        Some(h) => Some(crate::trace::provider_from_proto(h).map_err(|e| e.within("tracing.http"))?
            as crate::config::ExtensionConfig),
        None => None,
    };
    let cx = BuildCtx {
        tracer,
        stats: stats.clone(),
        cluster_names: Arc::new(cluster_names),
        node: node.clone(),
        secrets: secrets.clone(),
        listener_stat_name: None,
        http_stat_prefix: None,
        inbound: false,
        outbound: false,
        file_flush_interval: Some(std::time::Duration::from_millis(opts.file_flush_interval_msec)),
        guard: Some(guard),
        extensions: crate::filters::EXTENSIONS,
    };
    let mut clusters = Vec::new();
    for (i, c) in sr.clusters.iter().enumerate() {
        let cl = Cluster::from_proto(c, &cx).map_err(|e| e.within(&format!("static_resources.clusters[{i}]")))?;
        clusters.push(Arc::new(cl));
    }
    let mut listeners = Vec::new();
    let mut names = HashSet::new();
    for (i, l) in sr.listeners.iter().enumerate() {
        let field = format!("static_resources.listeners[{i}]");
        if !l.name.is_empty() && !names.insert(l.name.clone()) {
            return Err(ConfigError::new(field, format!("error adding listener named '{}': duplicate", l.name)));
        }
        listeners.push(Arc::new(Listener::from_proto(l, &cx).map_err(|e| e.within(&field))?));
    }

    Ok(ServerConfig {
        node,
        admin,
        stats,
        clusters,
        listeners,
        cx,
        bootstrap: b.clone(),
        max_downstream_connections,
        log_format,
    })
}

/// Envoy watches disk runtime layers at start-up and fails if they cannot be watched.
fn check_runtime(b: &Bootstrap) -> Result<(), ConfigError> {
    use envoy_types::pb::envoy::config::bootstrap::v3::runtime_layer::LayerSpecifier;
    let Some(rt) = &b.layered_runtime else {
        return Ok(());
    };
    for (i, l) in rt.layers.iter().enumerate() {
        if let Some(LayerSpecifier::DiskLayer(d)) = &l.layer_specifier {
            let p = std::path::Path::new(&d.symlink_root);
            if !d.symlink_root.is_empty() && std::fs::symlink_metadata(p).is_err() {
                return Err(ConfigError::new(
                    format!("layered_runtime.layers[{i}].disk_layer.symlink_root"),
                    format!("unable to add filesystem watch for file {}: No such file or directory", d.symlink_root),
                ));
            }
        }
    }
    Ok(())
}

/// `bootstrap_extensions`: Istio's `envoy.bootstrap.internal_listener` registers internal
/// listeners, which remora refuses where a listener asks for one, so the registry itself changes
/// nothing; any other bootstrap extension is refused by name.
fn check_bootstrap_extensions(b: &Bootstrap) -> Result<(), ConfigError> {
    const INTERNAL_LISTENER: &str = "envoy.extensions.bootstrap.internal_listener.v3.InternalListener";
    for (i, e) in b.bootstrap_extensions.iter().enumerate() {
        let t = e.typed_config.as_ref().map(xds_client::any::effective_type_name).unwrap_or_default();
        if t != INTERNAL_LISTENER {
            return Err(ConfigError::new(
                format!("bootstrap_extensions[{i}]"),
                format!("bootstrap extension {} ({t}) is not supported by remora", e.name),
            ));
        }
    }
    Ok(())
}

/// The overload manager: remora implements the global downstream connection limit
/// (`envoy.resource_monitors.global_downstream_max_connections`, what Istio's bootstrap sets);
/// other resource monitors are refused by name, and overload actions by the field guard.
fn overload_manager(b: &Bootstrap) -> Result<Option<u64>, ConfigError> {
    use envoy_types::pb::envoy::extensions::resource_monitors::downstream_connections::v3::DownstreamConnectionsConfig;
    const TYPE: &str = "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig";
    let Some(om) = &b.overload_manager else { return Ok(None) };
    let mut max = None;
    for (i, m) in om.resource_monitors.iter().enumerate() {
        let field = format!("overload_manager.resource_monitors[{i}]");
        let Some(envoy_types::pb::envoy::config::overload::v3::resource_monitor::ConfigType::TypedConfig(any)) =
            &m.config_type
        else {
            return Err(ConfigError::new(field, format!("resource monitor {} needs a typed_config", m.name)));
        };
        if xds_client::any::effective_type_name(any) != TYPE {
            return Err(ConfigError::new(field, format!("resource monitor {} is not supported by remora", m.name)));
        }
        let c: DownstreamConnectionsConfig =
            xds_client::any::unpack(any).map_err(|e| ConfigError::new(&field, e.to_string()))?;
        if c.max_active_downstream_connections <= 0 {
            return Err(ConfigError::new(
                format!("{field}.typed_config.max_active_downstream_connections"),
                "value must be greater than 0",
            ));
        }
        max = Some(c.max_active_downstream_connections as u64);
    }
    Ok(max)
}
