//! Access log filters (`envoy.config.accesslog.v3.AccessLogFilter`): status code, duration,
//! health check, traceable, runtime sampling, headers, response flags, gRPC status, and/or.
//! Filter types remora cannot evaluate are config errors, never silently true.

use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLogFilter, ComparisonFilter, access_log_filter::FilterSpecifier, comparison_filter,
};

use super::flags::ResponseFlags;
use crate::config::ConfigError;
use crate::config::Percent;
use crate::formatter::FormatContext;
use crate::matcher::{HeaderMatcher, RequestHeaders};

#[derive(Debug, Clone, Copy)]
pub enum Op {
    Eq,
    Ge,
    Le,
    Ne,
}

impl Op {
    fn test(self, v: u64, bound: u64) -> bool {
        match self {
            Op::Eq => v == bound,
            Op::Ge => v >= bound,
            Op::Le => v <= bound,
            Op::Ne => v != bound,
        }
    }
}

/// A compiled access log filter.
#[derive(Debug)]
pub enum Filter {
    StatusCode(Op, u64),
    Duration(Op, u64),
    NotHealthCheck,
    Traceable,
    Runtime {
        percent: Percent,
        independent: bool,
    },
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Header(HeaderMatcher),
    /// Empty means "any flag set".
    ResponseFlag(ResponseFlags),
    GrpcStatus {
        statuses: Vec<u64>,
        exclude: bool,
    },
}

/// What a filter looks at for one finished request.
pub struct Entry<'a> {
    pub cx: FormatContext<'a>,
    pub facts: &'a crate::formatter::LogFacts<'a>,
    /// True when the request was a health check (answered by a health check filter).
    pub health_check: bool,
}

fn comparison(c: Option<&ComparisonFilter>, field: &str) -> Result<(Op, u64), ConfigError> {
    let Some(c) = c else {
        return Err(ConfigError::new(format!("{field}.comparison"), "value is required"));
    };
    let op = match comparison_filter::Op::try_from(c.op) {
        Ok(comparison_filter::Op::Eq) => Op::Eq,
        Ok(comparison_filter::Op::Ge) => Op::Ge,
        Ok(comparison_filter::Op::Le) => Op::Le,
        Ok(comparison_filter::Op::Ne) => Op::Ne,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{field}.comparison.op"),
                "value must be one of the defined enum values",
            ));
        }
    };
    let Some(v) = &c.value else {
        return Err(ConfigError::new(format!("{field}.comparison.value"), "value is required"));
    };
    Ok((op, u64::from(v.default_value)))
}

impl Filter {
    pub fn from_proto(p: &AccessLogFilter, field: &str) -> Result<Self, ConfigError> {
        let list = |fs: &[AccessLogFilter], f: &str| -> Result<Vec<Filter>, ConfigError> {
            if fs.len() < 2 {
                return Err(ConfigError::new(format!("{field}.{f}.filters"), "value must contain at least 2 item(s)"));
            }
            fs.iter().enumerate().map(|(i, x)| Filter::from_proto(x, &format!("{field}.{f}.filters[{i}]"))).collect()
        };
        Ok(match &p.filter_specifier {
            Some(FilterSpecifier::StatusCodeFilter(s)) => {
                let (op, v) = comparison(s.comparison.as_ref(), &format!("{field}.status_code_filter"))?;
                Filter::StatusCode(op, v)
            }
            Some(FilterSpecifier::DurationFilter(d)) => {
                let (op, v) = comparison(d.comparison.as_ref(), &format!("{field}.duration_filter"))?;
                Filter::Duration(op, v)
            }
            Some(FilterSpecifier::NotHealthCheckFilter(_)) => Filter::NotHealthCheck,
            Some(FilterSpecifier::TraceableFilter(_)) => Filter::Traceable,
            Some(FilterSpecifier::RuntimeFilter(r)) => Filter::Runtime {
                percent: r.percent_sampled.as_ref().map(Percent::from_proto).unwrap_or(Percent::NEVER),
                independent: r.use_independent_randomness,
            },
            Some(FilterSpecifier::AndFilter(a)) => Filter::And(list(&a.filters, "and_filter")?),
            Some(FilterSpecifier::OrFilter(o)) => Filter::Or(list(&o.filters, "or_filter")?),
            Some(FilterSpecifier::HeaderFilter(h)) => {
                let Some(m) = &h.header else {
                    return Err(ConfigError::new(format!("{field}.header_filter.header"), "value is required"));
                };
                Filter::Header(HeaderMatcher::from_proto(m, &format!("{field}.header_filter.header"))?)
            }
            Some(FilterSpecifier::ResponseFlagFilter(r)) => {
                let mut flags = ResponseFlags::NONE;
                for (i, f) in r.flags.iter().enumerate() {
                    match ResponseFlags::from_short(f) {
                        Some(x) => flags |= x,
                        None => {
                            return Err(ConfigError::new(
                                format!("{field}.response_flag_filter.flags[{i}]"),
                                format!("value must be in the list of Envoy's response flags: {f:?}"),
                            ));
                        }
                    }
                }
                Filter::ResponseFlag(flags)
            }
            Some(FilterSpecifier::GrpcStatusFilter(g)) => Filter::GrpcStatus {
                statuses: g.statuses.iter().map(|s| (*s).max(0) as u64).collect(),
                exclude: g.exclude,
            },
            Some(FilterSpecifier::ExtensionFilter(e)) => {
                return Err(ConfigError::new(
                    format!("{field}.extension_filter"),
                    format!("access log extension filter {} is not supported", e.name),
                ));
            }
            Some(FilterSpecifier::MetadataFilter(_)) => {
                return Err(ConfigError::new(format!("{field}.metadata_filter"), "metadata filters are not supported"));
            }
            Some(FilterSpecifier::LogTypeFilter(_)) => {
                return Err(ConfigError::new(format!("{field}.log_type_filter"), "log type filters are not supported"));
            }
            None => return Err(ConfigError::new(field, "filter_specifier is required")),
        })
    }

    pub fn matches(&self, e: &Entry<'_>) -> bool {
        match self {
            Filter::StatusCode(op, v) => op.test(u64::from(e.cx.response_code.unwrap_or(0)), *v),
            Filter::Duration(op, v) => e.facts.duration.is_some_and(|d| op.test(d.as_millis() as u64, *v)),
            Filter::NotHealthCheck => !e.health_check,
            // Remora does no tracing, so no request is traceable.
            Filter::Traceable => false,
            Filter::Runtime { percent, independent } => {
                let rid = e.cx.request_headers.and_then(|h| h.get("x-request-id")).map(|v| v.as_bytes());
                match (independent, rid) {
                    (false, Some(id)) => percent.contains(xxhash_rust::xxh64::xxh64(id, 0) % 1_000_000),
                    _ => percent.sample(),
                }
            }
            Filter::And(fs) => fs.iter().all(|f| f.matches(e)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(e)),
            Filter::Header(m) => {
                let empty = http::HeaderMap::new();
                let view = RequestHeaders {
                    method: e.cx.method.unwrap_or(""),
                    path: e.cx.path.unwrap_or(""),
                    authority: e.cx.authority.unwrap_or(""),
                    scheme: e.cx.scheme.unwrap_or(""),
                    headers: e.cx.request_headers.unwrap_or(&empty),
                };
                m.matches(&view)
            }
            Filter::ResponseFlag(want) => {
                let got = e.facts.response_flags;
                if want.is_empty() { !got.is_empty() } else { got.intersects(*want) }
            }
            Filter::GrpcStatus { statuses, exclude } => {
                let status = grpc_status(e);
                let found = status.is_some_and(|s| statuses.contains(&s));
                found != *exclude
            }
        }
    }
}

/// The gRPC status of a response: `grpc-status` in trailers or headers, else mapped from the
/// HTTP status for gRPC responses (Envoy's rule), else none.
fn grpc_status(e: &Entry<'_>) -> Option<u64> {
    let from = |h: Option<&http::HeaderMap>| {
        h.and_then(|h| h.get("grpc-status")).and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok())
    };
    from(e.facts.response_trailers).or_else(|| from(e.cx.response_headers)).or_else(|| {
        let code = e.cx.response_code?;
        Some(match code {
            200 => return None,
            400 => 13,
            401 => 16,
            403 => 7,
            404 => 12,
            429 | 502 | 503 | 504 => 14,
            _ => 2,
        })
    })
}
