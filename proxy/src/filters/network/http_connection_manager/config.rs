//! The HTTP connection manager's config: translated once per listener update, shared by every
//! connection it serves.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager as HcmProto, http_connection_manager,
};
use http::HeaderValue;

use super::h1_scan::ScanLimits;
use crate::config::{BuildCtx, ConfigError, duration};
use crate::filters::http::FilterChain;
use crate::router::RouteTable;
use crate::stats::{CodeStats, Counter, Gauge, Histogram};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Auto,
    Http1,
    Http2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerHeader {
    Overwrite,
    AppendIfAbsent,
    PassThrough,
}

/// Where the route table comes from.
pub enum RouteSource {
    Static(Arc<RouteTable>),
    /// RDS: filled in (and swapped) by the xDS layer; empty until the first update.
    Rds {
        name: String,
        table: Arc<ArcSwapOption<RouteTable>>,
        /// File-based RDS (`config_source.path_config_source`): the file it comes from.
        file: Option<std::path::PathBuf>,
    },
}

pub struct HcmStats {
    pub downstream_rq_total: Counter,
    pub downstream_cx_protocol_error: Counter,
    pub downstream_rq_header_timeout: Counter,
    pub downstream_cx_max_requests_reached: Counter,
    pub downstream_cx_max_duration_reached: Counter,
    pub downstream_cx_idle_timeout: Counter,
    pub downstream_rq_idle_timeout: Counter,
    pub downstream_rq_timeout: Counter,
    pub downstream_rq_max_duration_reached: Counter,
    /// Envoy's codec stats (`http1.*`, `http2.*`), shared by every HCM.
    pub codec: CodecStats,
    pub downstream_rq_active: Gauge,
    pub downstream_rq_http1_total: Counter,
    pub downstream_rq_http2_total: Counter,
    pub downstream_rq: CodeStats,
    pub downstream_rq_completed: Counter,
    pub downstream_rq_time: Histogram,
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_http1_total: Counter,
    pub downstream_cx_http2_total: Counter,
    pub downstream_cx_destroy: Counter,
    /// `listener.<address>.http.<prefix>.downstream_rq_<N>xx` and `_completed`.
    pub listener_rq: Option<(CodeStats, Counter)>,
}

impl HcmStats {
    pub(super) fn new(cx: &BuildCtx, prefix: &str) -> Self {
        let p = format!("http.{prefix}.");
        let c = |n: &str| cx.stats.counter(&format!("{p}{n}"));
        let g = |n: &str| cx.stats.gauge(&format!("{p}{n}"));
        HcmStats {
            downstream_rq_total: c("downstream_rq_total"),
            downstream_cx_protocol_error: c("downstream_cx_protocol_error"),
            downstream_rq_header_timeout: c("downstream_rq_header_timeout"),
            downstream_cx_max_requests_reached: c("downstream_cx_max_requests_reached"),
            downstream_cx_max_duration_reached: c("downstream_cx_max_duration_reached"),
            downstream_cx_idle_timeout: c("downstream_cx_idle_timeout"),
            downstream_rq_idle_timeout: c("downstream_rq_idle_timeout"),
            downstream_rq_timeout: c("downstream_rq_timeout"),
            downstream_rq_max_duration_reached: c("downstream_rq_max_duration_reached"),
            codec: CodecStats {
                http1_dropped_underscores: cx.stats.counter("http1.dropped_headers_with_underscores"),
                http1_rejected_underscores: cx.stats.counter("http1.requests_rejected_with_underscores_in_headers"),
                http2_dropped_underscores: cx.stats.counter("http2.dropped_headers_with_underscores"),
                http2_rejected_underscores: cx.stats.counter("http2.requests_rejected_with_underscores_in_headers"),
                http2_header_overflow: cx.stats.counter("http2.header_overflow"),
            },
            downstream_rq_active: g("downstream_rq_active"),
            downstream_rq_http1_total: c("downstream_rq_http1_total"),
            downstream_rq_http2_total: c("downstream_rq_http2_total"),
            downstream_rq: CodeStats::new(&cx.stats, &format!("{p}downstream_rq")),
            downstream_rq_completed: c("downstream_rq_completed"),
            downstream_rq_time: cx.stats.histogram(&format!("{p}downstream_rq_time")),
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: g("downstream_cx_active"),
            downstream_cx_http1_total: c("downstream_cx_http1_total"),
            downstream_cx_http2_total: c("downstream_cx_http2_total"),
            downstream_cx_destroy: c("downstream_cx_destroy"),
            listener_rq: cx.listener_stat_name.as_ref().map(|l| {
                let lp = format!("listener.{l}.http.{prefix}.");
                (
                    CodeStats::new(&cx.stats, &format!("{lp}downstream_rq")),
                    cx.stats.counter(&format!("{lp}downstream_rq_completed")),
                )
            }),
        }
    }
}

pub struct CodecStats {
    pub http1_dropped_underscores: Counter,
    pub http1_rejected_underscores: Counter,
    pub http2_dropped_underscores: Counter,
    pub http2_rejected_underscores: Counter,
    pub http2_header_overflow: Counter,
}

/// `common_http_protocol_options.headers_with_underscores_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underscores {
    Allow,
    RejectRequest,
    DropHeader,
}

/// The HCM's request limits, compiled once: `max_request_headers_kb`,
/// `common_http_protocol_options.max_headers_count` and `headers_with_underscores_action`,
/// `request_headers_timeout`, `http_protocol_options.allow_chunked_length`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The HTTP/1 codec checks (`h1_scan`); `max_bytes`/`max_count` also bound HTTP/2 requests.
    pub scan: ScanLimits,
    pub underscores: Underscores,
    pub request_headers_timeout: Option<Duration>,
    /// `common_http_protocol_options.max_requests_per_connection` (0: none).
    pub max_requests_per_connection: Option<u32>,
    /// `common_http_protocol_options.max_connection_duration` (0: none).
    pub max_connection_duration: Option<Duration>,
}

impl Limits {
    fn from_proto(p: &HcmProto, codec: Codec) -> Result<Limits, ConfigError> {
        use envoy_types::pb::envoy::config::core::v3::http_protocol_options::HeadersWithUnderscoresAction as A;
        let kb = p.max_request_headers_kb.map(|v| v.value).unwrap_or(60);
        if kb == 0 || kb > 8192 {
            return Err(ConfigError::new(
                "max_request_headers_kb",
                "value must be greater than 0 and less than or equal to 8192",
            ));
        }
        let common = p.common_http_protocol_options.as_ref();
        let count = common.and_then(|c| c.max_headers_count).map(|v| v.value).unwrap_or(100);
        if count == 0 {
            return Err(ConfigError::new(
                "common_http_protocol_options.max_headers_count",
                "value must be greater than or equal to 1",
            ));
        }
        let underscores = match common.map(|c| A::try_from(c.headers_with_underscores_action)) {
            None | Some(Ok(A::Allow)) => Underscores::Allow,
            Some(Ok(A::RejectRequest)) => Underscores::RejectRequest,
            Some(Ok(A::DropHeader)) => Underscores::DropHeader,
            Some(Err(_)) => {
                return Err(ConfigError::new(
                    "common_http_protocol_options.headers_with_underscores_action",
                    "value must be one of the defined enum values",
                ));
            }
        };
        Ok(Limits {
            scan: ScanLimits {
                max_bytes: kb * 1024,
                max_count: count,
                allow_chunked_length: p.http_protocol_options.as_ref().is_some_and(|o| o.allow_chunked_length),
                h2_preface: codec == Codec::Auto,
            },
            underscores,
            request_headers_timeout: p.request_headers_timeout.as_ref().map(duration).filter(|d| !d.is_zero()),
            max_requests_per_connection: common
                .and_then(|c| c.max_requests_per_connection)
                .map(|v| v.value)
                .filter(|v| *v > 0),
            max_connection_duration: common
                .and_then(|c| c.max_connection_duration.as_ref())
                .map(duration)
                .filter(|d| !d.is_zero()),
        })
    }
}

/// A compiled HTTP connection manager.
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    pub codec: Codec,
    pub routes: RouteSource,
    pub filters: FilterChain,
    pub server_name: HeaderValue,
    pub server_header: ServerHeader,
    pub use_remote_address: bool,
    pub xff_num_trusted_hops: u32,
    pub skip_xff_append: bool,
    pub via: Option<HeaderValue>,
    pub generate_request_id: bool,
    pub preserve_external_request_id: bool,
    pub always_set_request_id_in_response: bool,
    pub accept_http_10: bool,
    pub limits: Limits,
    /// The stream timers every stream opens with: `stream_idle_timeout` (5 min by default),
    /// `request_timeout`, `common_http_protocol_options.max_stream_duration` (0: none).
    pub stream_limits: crate::http::stream_timer::StreamLimits,
    pub idle_timeout: Option<Duration>,
    pub max_concurrent_streams: Option<u32>,
    /// HTTP/2 flow-control windows: (stream, connection).
    pub h2_windows: (u32, u32),
    pub strip_any_host_port: bool,
    pub normalize_path: bool,
    pub merge_slashes: bool,
    pub escaped_slashes: crate::http::path::EscapedSlashes,
    /// `internal_address_config` CIDRs (Envoy 1.40's default: none are internal).
    pub internal_addresses: Vec<crate::matcher::Cidr>,
    /// Enabled `upgrade_configs` types, lowercased (`websocket`, ...).
    pub upgrades: Vec<String>,
    /// `forward_client_cert_details` / `set_current_client_cert_details`.
    pub xfcc: crate::http::xfcc::Xfcc,
    pub stats: HcmStats,
    /// `access_log`: written when each request ends (see `access_log::request`).
    pub access_logs: Arc<[crate::access_log::AccessLog]>,
    /// `tracing` with a tracer (its provider or the bootstrap's); None: no spans, no B3.
    pub tracing: Option<Arc<crate::trace::Tracing>>,
}

impl HttpConnectionManager {
    pub fn from_proto(p: &HcmProto, cx: &BuildCtx) -> Result<Self, ConfigError> {
        use http_connection_manager::{CodecType, RouteSpecifier, ServerHeaderTransformation as SHT};
        if p.stat_prefix.is_empty() {
            return Err(ConfigError::new("stat_prefix", "value length must be at least 1 characters"));
        }
        let codec = match CodecType::try_from(p.codec_type) {
            Ok(CodecType::Auto) => Codec::Auto,
            Ok(CodecType::Http1) => Codec::Http1,
            Ok(CodecType::Http2) => Codec::Http2,
            Ok(CodecType::Http3) | Err(_) => {
                return Err(ConfigError::new("codec_type", "HTTP/3 is not supported"));
            }
        };
        let routes = match &p.route_specifier {
            Some(RouteSpecifier::RouteConfig(rc)) => RouteSource::Static(Arc::new(
                RouteTable::from_proto(rc, cx, true).map_err(|e| e.within("route_config"))?,
            )),
            Some(RouteSpecifier::Rds(rds)) => RouteSource::Rds {
                name: rds.route_config_name.clone(),
                table: Arc::new(ArcSwapOption::empty()),
                file: rds.config_source.as_ref().and_then(crate::config::file_source),
            },
            Some(RouteSpecifier::ScopedRoutes(_)) => {
                return Err(ConfigError::new("scoped_routes", "scoped routes are not supported"));
            }
            None => {
                return Err(ConfigError::new("route_specifier", "one of route_config or rds is required"));
            }
        };
        let fcx = BuildCtx { http_stat_prefix: Some(p.stat_prefix.as_str().into()), ..cx.clone() };
        let filters = FilterChain::from_proto(&p.http_filters, &fcx, "http_filters")?;
        let server_header = match SHT::try_from(p.server_header_transformation) {
            Ok(SHT::Overwrite) | Err(_) => ServerHeader::Overwrite,
            Ok(SHT::AppendIfAbsent) => ServerHeader::AppendIfAbsent,
            Ok(SHT::PassThrough) => ServerHeader::PassThrough,
        };
        if let Some(r) = &p.request_id_extension {
            crate::trace::check_request_id_extension(r).map_err(|e| e.within("request_id_extension"))?;
        }
        let server_name = if p.server_name.is_empty() { "envoy" } else { p.server_name.as_str() };
        let common = p.common_http_protocol_options.as_ref();
        let hcm = HttpConnectionManager {
            stat_prefix: p.stat_prefix.clone(),
            codec,
            routes,
            filters,
            server_name: HeaderValue::from_str(server_name)
                .map_err(|_| ConfigError::new("server_name", "invalid header value"))?,
            server_header,
            use_remote_address: p.use_remote_address.map(|b| b.value).unwrap_or(false),
            xff_num_trusted_hops: p.xff_num_trusted_hops,
            skip_xff_append: p.skip_xff_append,
            via: if p.via.is_empty() {
                None
            } else {
                Some(HeaderValue::from_str(&p.via).map_err(|_| ConfigError::new("via", "invalid header value"))?)
            },
            generate_request_id: p.generate_request_id.map(|b| b.value).unwrap_or(true),
            preserve_external_request_id: p.preserve_external_request_id,
            always_set_request_id_in_response: p.always_set_request_id_in_response,
            accept_http_10: p.http_protocol_options.as_ref().is_some_and(|o| o.accept_http_10),
            limits: Limits::from_proto(p, codec)?,
            stream_limits: crate::http::stream_timer::StreamLimits {
                idle: match &p.stream_idle_timeout {
                    None => Some(Duration::from_secs(300)),
                    Some(d) => Some(duration(d)).filter(|d| !d.is_zero()),
                },
                request: p.request_timeout.as_ref().map(duration).filter(|d| !d.is_zero()),
                duration: common.and_then(|c| c.max_stream_duration.as_ref()).map(duration).filter(|d| !d.is_zero()),
            },
            // Envoy's downstream default: 1 hour without a stream in flight; 0 disables it.
            idle_timeout: match common.and_then(|c| c.idle_timeout.as_ref()) {
                None => Some(Duration::from_secs(3600)),
                Some(d) => Some(duration(d)).filter(|d| !d.is_zero()),
            },
            max_concurrent_streams: p
                .http2_protocol_options
                .as_ref()
                .and_then(|o| o.max_concurrent_streams)
                .map(|v| v.value),
            h2_windows: {
                let d = crate::upstream::cluster::H2_WINDOWS;
                let o = p.http2_protocol_options.as_ref();
                (
                    o.and_then(|o| o.initial_stream_window_size).map_or(d.0, |v| v.value),
                    o.and_then(|o| o.initial_connection_window_size).map_or(d.1, |v| v.value),
                )
            },
            xfcc: crate::http::xfcc::Xfcc::from_proto(p),
            normalize_path: p.normalize_path.map(|b| b.value).unwrap_or(false),
            merge_slashes: p.merge_slashes,
            escaped_slashes: {
                use crate::http::path::EscapedSlashes as E;
                use http_connection_manager::PathWithEscapedSlashesAction as A;
                match A::try_from(p.path_with_escaped_slashes_action) {
                    Ok(A::RejectRequest) => E::Reject,
                    Ok(A::UnescapeAndRedirect) => E::UnescapeAndRedirect,
                    Ok(A::UnescapeAndForward) => E::UnescapeAndForward,
                    _ => E::Keep,
                }
            },
            strip_any_host_port: matches!(
                p.strip_port_mode,
                Some(http_connection_manager::StripPortMode::StripAnyHostPort(true))
            ),
            internal_addresses: match &p.internal_address_config {
                Some(c) => c
                    .cidr_ranges
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        crate::matcher::Cidr::from_proto(r, &format!("internal_address_config.cidr_ranges[{i}]"))
                    })
                    .collect::<Result<_, _>>()?,
                None => Vec::new(),
            },
            upgrades: p
                .upgrade_configs
                .iter()
                .filter(|u| u.enabled.map(|b| b.value).unwrap_or(true))
                .map(|u| u.upgrade_type.to_ascii_lowercase())
                .collect(),
            stats: HcmStats::new(cx, &p.stat_prefix),
            access_logs: crate::access_log::AccessLog::list_from_proto(&p.access_log, "access_log", cx)?.into(),
            tracing: match &p.tracing {
                Some(t) => crate::trace::Tracing::from_proto(t, cx).map_err(|e| e.within("tracing"))?,
                None => None,
            },
        };
        Ok(hcm)
    }

    /// The current route table (None while an RDS table has not arrived).
    pub fn route_table(&self) -> Option<Arc<RouteTable>> {
        match &self.routes {
            RouteSource::Static(t) => Some(t.clone()),
            RouteSource::Rds { table, .. } => table.load_full(),
        }
    }
}
