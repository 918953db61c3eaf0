//! Echo upstreams: named HTTP/1.1 + h2c (auto-detected) servers on `127.0.0.1:0` that answer
//! with a one-line JSON description of the request they saw, so a test can tell which upstream
//! served a request and what the proxy sent it.
//!
//! Reply body (unless `x-echo-body-size` asks for filler):
//! `{"upstream":"a","method":"GET","path":"/p?q","authority":"host","version":"HTTP/1.1",
//!   "headers":[["name","value"],...],"body_len":0,"attempt":1}`; response headers
//! `x-echo-upstream: a` and `content-type: application/json`.
//!
//! Knobs (request headers, read by the upstream, so they travel through the proxy):
//! - `x-echo-status: N`: answer with status N.
//! - `x-echo-delay-ms: N`: wait N ms before answering.
//! - `x-echo-header: name: value` (repeatable): add a response header.
//! - `x-echo-body-size: N`: answer with N bytes of `x` instead of the JSON.
//! - `x-echo-close: 1`: answer with `connection: close` and close the connection (HTTP/1.1).
//! - `x-echo-reset: 1`: no response at all: drop the connection (HTTP/1.1) or reset the stream (h2).
//! - `x-echo-fail-first: N`: the knobs above (status, delay, header, close, reset) apply only to
//!   the first N attempts of the request's key; later attempts get a plain 200. The key is
//!   `x-echo-key` if present, else `x-request-id`; attempts are counted across every upstream of
//!   the group, so retries that move to another host still count.
//!
//! Every upstream counts the requests it received; the group counts attempts per key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The background runtime that serves every upstream of this test process, so that tests can
/// stay synchronous (they drive real curl processes).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("echo-upstream")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot build the upstream runtime: {e}"))
    })
}

#[derive(Default)]
struct GroupState {
    attempts: Mutex<HashMap<String, u32>>,
}

impl GroupState {
    fn attempt(&self, key: &str) -> u32 {
        let mut m = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(key.to_string()).or_insert(0);
        *n += 1;
        *n
    }
}

/// One named echo server.
pub struct Upstream {
    name: String,
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Upstream {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    /// Requests received so far (every attempt, including failed ones).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A group of named echo upstreams sharing the per-key attempt counters.
pub struct Upstreams {
    list: Vec<Upstream>,
    state: Arc<GroupState>,
}

impl Upstreams {
    /// Starts one echo server per name, each on its own `127.0.0.1:0` port.
    pub fn start(names: &[&str]) -> anyhow::Result<Upstreams> {
        let state = Arc::new(GroupState::default());
        let mut list = Vec::new();
        for name in names {
            list.push(start_one(name, state.clone())?);
        }
        Ok(Upstreams { list, state })
    }

    pub fn get(&self, name: &str) -> &Upstream {
        self.list.iter().find(|u| u.name == name).unwrap_or_else(|| panic!("no upstream named {name:?}"))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Upstream> {
        self.list.iter()
    }

    /// How many attempts the upstreams saw for `key` (see the module docs).
    pub fn attempts(&self, key: &str) -> u32 {
        let m = self.state.attempts.lock().unwrap_or_else(|e| e.into_inner());
        m.get(key).copied().unwrap_or(0)
    }

    /// Requests per upstream name.
    pub fn counts(&self) -> Vec<(String, u64)> {
        self.list.iter().map(|u| (u.name.clone(), u.requests())).collect()
    }
}

fn start_one(name: &str, state: Arc<GroupState>) -> anyhow::Result<Upstream> {
    let rt = runtime();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let requests = Arc::new(AtomicU64::new(0));
    let ctx = Arc::new(Ctx { name: name.to_string(), requests: requests.clone(), state });
    let task = rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let ctx = ctx.clone();
                    async move { ctx.handle(req).await }
                });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(Upstream { name: name.to_string(), addr, requests, task })
}

struct Ctx {
    name: String,
    requests: Arc<AtomicU64>,
    state: Arc<GroupState>,
}

/// Returned by the service to make hyper drop the connection / reset the stream.
#[derive(Debug)]
struct Abort;

impl std::fmt::Display for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("x-echo-reset")
    }
}
impl std::error::Error for Abort {}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

impl Ctx {
    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Abort> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let key = header(&req, "x-echo-key").or_else(|| header(&req, "x-request-id")).map(str::to_string);
        let attempt = key.as_deref().map(|k| self.state.attempt(k));
        let fail_first: Option<u32> = header(&req, "x-echo-fail-first").and_then(|v| v.trim().parse().ok());
        let knobs_apply = match (fail_first, attempt) {
            (Some(n), Some(a)) => a <= n,
            (Some(_), None) => true,
            (None, _) => true,
        };

        let version = match req.version() {
            http::Version::HTTP_09 => "HTTP/0.9",
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_11 => "HTTP/1.1",
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_3 => "HTTP/3",
            _ => "?",
        };
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| header(&req, "host").map(str::to_string))
            .unwrap_or_default();
        let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
        let method = req.method().as_str().to_string();
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let status = header(&req, "x-echo-status").and_then(|v| v.trim().parse::<u16>().ok());
        let delay = header(&req, "x-echo-delay-ms").and_then(|v| v.trim().parse::<u64>().ok());
        let body_size = header(&req, "x-echo-body-size").and_then(|v| v.trim().parse::<usize>().ok());
        let close = header(&req, "x-echo-close").is_some();
        let reset = header(&req, "x-echo-reset").is_some();
        let extra: Vec<(String, String)> = req
            .headers()
            .get_all("x-echo-header")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();

        let body_len = match req.into_body().collect().await {
            Ok(b) => b.to_bytes().len(),
            Err(_) => return Err(Abort),
        };

        if knobs_apply {
            if let Some(ms) = delay {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if reset {
                return Err(Abort);
            }
        }

        let body = match body_size {
            Some(n) => Bytes::from(vec![b'x'; n]),
            None => {
                let v = json!({
                    "upstream": self.name,
                    "method": method,
                    "path": path,
                    "authority": authority,
                    "version": version,
                    "headers": headers,
                    "body_len": body_len,
                    "attempt": attempt,
                });
                Bytes::from(v.to_string())
            }
        };
        let mut resp = Response::new(Full::new(body));
        let h = resp.headers_mut();
        h.insert(
            "content-type",
            HeaderValue::from_static(if body_size.is_some() { "text/plain" } else { "application/json" }),
        );
        if let Ok(v) = HeaderValue::from_str(&self.name) {
            h.insert("x-echo-upstream", v);
        }
        if knobs_apply {
            if let Some(s) = status.and_then(|s| StatusCode::from_u16(s).ok()) {
                *resp.status_mut() = s;
            }
            for (k, v) in extra {
                if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v)) {
                    resp.headers_mut().append(k, v);
                }
            }
            if close && version != "HTTP/2" {
                resp.headers_mut().insert("connection", HeaderValue::from_static("close"));
            }
        }
        Ok(resp)
    }
}
