//! The admin API on Envoy's paths (`/ready`, `/stats`, `/stats/prometheus`, `/config_dump`,
//! `/clusters`, `/listeners`, `/server_info`, `/logging`, `/quitquitquit`, `/drain_listeners`,
//! `/healthcheck/fail|ok`, `/memory`). It runs on the main runtime, never on a worker.

pub mod dump;
pub mod explain;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::cli::Options;
use crate::config::NodeInfo;
use crate::lifecycle::{Control, state};
use crate::logging::LogControl;
use crate::stats::render;

pub struct AdminState {
    pub control: Arc<Control>,
    pub node: Arc<NodeInfo>,
    pub bootstrap: envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap,
    pub options: Options,
    pub logs: LogControl,
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(listener: TcpListener, st: Arc<AdminState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let st = st.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let st = st.clone();
                async move { Ok::<_, Infallible>(handle(req, &st).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

type Resp = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<String>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=UTF-8"));
    r.headers_mut().insert("x-content-type-options", http::HeaderValue::from_static("nosniff"));
    r
}

fn json(body: serde_json::Value) -> Resp {
    let s = serde_json::to_string_pretty(&body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(s)));
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

fn query_params(q: Option<&str>) -> Vec<(String, String)> {
    q.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

async fn handle(req: Request<Incoming>, st: &AdminState) -> Resp {
    let path = req.uri().path().to_string();
    let params = query_params(req.uri().query());
    let has = |k: &str| params.iter().any(|(n, _)| n == k);
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let post_only = matches!(
        path.as_str(),
        "/quitquitquit" | "/drain_listeners" | "/healthcheck/fail" | "/healthcheck/ok" | "/logging" | "/reset_counters"
    );
    if post_only && req.method() != Method::POST && !(path == "/logging" && params.is_empty()) {
        return text(StatusCode::METHOD_NOT_ALLOWED, "This endpoint requires POST.\n");
    }
    let shared = &st.control.shared;
    match path.as_str() {
        "/ready" => {
            let s = st.control.state.value();
            let (code, name) = match s {
                state::LIVE => (StatusCode::OK, "LIVE"),
                state::DRAINING => (StatusCode::SERVICE_UNAVAILABLE, "DRAINING"),
                state::PRE_INITIALIZING => (StatusCode::SERVICE_UNAVAILABLE, "PRE_INITIALIZING"),
                _ => (StatusCode::SERVICE_UNAVAILABLE, "INITIALIZING"),
            };
            text(code, format!("{name}\n"))
        }
        "/stats" => {
            let regex = match get("filter").filter(|f| !f.is_empty()) {
                Some(f) => match regex::Regex::new(f) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        return text(StatusCode::BAD_REQUEST, format!("Invalid re2 regex: {e}\n"));
                    }
                },
                None => None,
            };
            let filter = render::Filter { used_only: has("usedonly"), regex };
            if get("format") == Some("prometheus") {
                return text(StatusCode::OK, render::prometheus(&shared.stats, has("usedonly")));
            }
            if get("format") == Some("json") {
                let stats: Vec<serde_json::Value> = shared
                    .stats
                    .entries()
                    .into_iter()
                    .filter(|e| !filter.used_only || e.used)
                    .filter(|e| filter.regex.as_ref().is_none_or(|r| r.is_match(&e.name)))
                    .filter_map(|e| match e.value {
                        crate::stats::Value::Counter(v) => Some(serde_json::json!({"name": &*e.name, "value": v})),
                        crate::stats::Value::Gauge(v) => Some(serde_json::json!({"name": &*e.name, "value": v as u64})),
                        crate::stats::Value::Histogram(_) => None,
                    })
                    .collect();
                return json(serde_json::json!({ "stats": stats }));
            }
            text(StatusCode::OK, render::text(&shared.stats, &filter))
        }
        "/stats/prometheus" => text(StatusCode::OK, render::prometheus(&shared.stats, has("usedonly"))),
        "/server_info" => json(serde_json::json!({
            "version": format!("remora/{}", crate::lifecycle::VERSION),
            "state": match st.control.state.value() { state::LIVE => "LIVE", state::DRAINING => "DRAINING", _ => "INITIALIZING" },
            "hot_restart_version": "disabled",
            "command_line_options": {
                "concurrency": st.options.workers(),
                "drain_time": format!("{}s", st.options.drain_time_s),
                "parent_shutdown_time": format!("{}s", st.options.parent_shutdown_time_s),
                "log_level": st.options.log_level,
                "service_cluster": st.node.cluster,
                "service_node": st.node.id,
                "service_zone": st.node.zone,
                "mode": format!("{:?}", st.options.mode),
            },
            "node": { "id": st.node.id, "cluster": st.node.cluster },
            "uptime_current_epoch": format!("{}s", st.control.started.elapsed().as_secs()),
            "uptime_all_epochs": format!("{}s", st.control.started.elapsed().as_secs()),
        })),
        "/config_dump" => match dump::config_dump(st, get("resource"), get("name_regex"), has("include_eds")) {
            Ok(v) => json(v),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
        "/clusters" => dump::clusters(st, get("format") == Some("json")),
        "/config_guard" => {
            // What is accepted without effect: telemetry-only fields remora does not act on.
            let mut out = String::from("# field (Message.field)\ttimes seen\twhy it has no effect\n");
            if let Some(g) = &st.control.manager.build_ctx().guard {
                for (field, why, n) in g.seen() {
                    out.push_str(&format!("{field}\t{n}\t{why}\n"));
                }
            }
            text(StatusCode::OK, out)
        }
        "/listeners" => dump::listeners(st, get("format") == Some("json")),
        "/explain" => {
            let clusters = shared.clusters.load_full();
            let find = |n: &str| clusters.clusters.get(n).cloned();
            let lookup = explain::ClusterLookup { find: &find };
            match explain::explain(&params, &st.control.manager.active_listeners(), &lookup) {
                Ok(t) => text(StatusCode::OK, t),
                Err(e) => text(StatusCode::BAD_REQUEST, format!("error: {e}\n")),
            }
        }
        "/logging" => {
            if params.is_empty() {
                return text(StatusCode::OK, st.logs.listing());
            }
            for (k, v) in &params {
                let r = if k == "level" { st.logs.set_all(v) } else { st.logs.set_component(k, v) };
                if let Err(e) = r {
                    return text(StatusCode::BAD_REQUEST, format!("error: {e}\n\n{}", st.logs.listing()));
                }
            }
            text(StatusCode::OK, st.logs.listing())
        }
        "/quitquitquit" => {
            st.control.begin_shutdown();
            text(StatusCode::OK, "OK\n")
        }
        "/drain_listeners" => {
            st.control.drain_listeners(has("inboundonly"), has("graceful"));
            text(StatusCode::OK, "OK\n")
        }
        "/healthcheck/fail" => {
            st.control.state.set(state::DRAINING);
            text(StatusCode::OK, "OK\n")
        }
        "/healthcheck/ok" => {
            if st.control.state.value() == state::DRAINING {
                st.control.state.set(state::LIVE);
            }
            text(StatusCode::OK, "OK\n")
        }
        "/memory" => {
            let (rss, vsz) = memory();
            json(serde_json::json!({
                "allocated": rss.to_string(),
                "heap_size": vsz.to_string(),
                "pageheap_unmapped": "0",
                "pageheap_free": "0",
                "total_thread_cache": "0",
                "total_physical_bytes": rss.to_string(),
            }))
        }
        "/runtime" => json(serde_json::json!({"layers": [], "entries": {}})),
        "/certs" => json(serde_json::json!({"certificates": []})),
        "/reset_counters" => text(StatusCode::OK, "OK\n"),
        "/" | "/help" => text(
            StatusCode::OK,
            "admin commands are:\n  /certs\n  /clusters\n  /config_dump\n  /drain_listeners\n  /explain\n  /healthcheck/fail\n  /healthcheck/ok\n  /help\n  /listeners\n  /logging\n  /memory\n  /quitquitquit\n  /ready\n  /runtime\n  /server_info\n  /stats\n  /stats/prometheus\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "invalid path. admin commands are:\n  /help\n"),
    }
}

/// Resident and virtual size in bytes, from /proc/self/statm.
pub fn memory() -> (u64, u64) {
    let page = 4096u64;
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let mut it = s.split_whitespace().filter_map(|x| x.parse::<u64>().ok());
    let vsz = it.next().unwrap_or(0) * page;
    let rss = it.next().unwrap_or(0) * page;
    (rss, vsz)
}
