//! The demo app: one per Deployment replica. HTTP/1.1 and h2c on every address in `LISTEN`
//! (comma-separated `ip:port`). `/` answers `{"service","version","pod"}`; `/status/<code>` answers
//! that status; `/delay/<ms>` answers after a delay; `/headers` (and `/headers/...`) echoes the
//! request as the app received it (`path` with the query; `headers`, name -> value, repeated
//! names joined with `, `: what the sidecar forwarded, XFCC, tracing headers, header operations);
//! `/fail-on/<pod>/<code>` answers `<code>` on that pod and 200 on every other (one broken
//! instance, for retries and outlier detection); `/call/<host[:port]>/<path>` calls another
//! service through the sidecar's outbound listener (`OUTBOUND` address, the port from the host or
//! 80) and returns its answer inside its own.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Clone)]
struct App {
    service: String,
    version: String,
    pod: String,
    outbound: String,
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

impl App {
    fn me(&self) -> serde_json::Value {
        serde_json::json!({"service": self.service, "version": self.version, "pod": self.pod})
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let mut me = self.me();
        if let Some(code) = path.strip_prefix("/status/") {
            let status =
                code.parse::<u16>().ok().and_then(|c| StatusCode::from_u16(c).ok()).unwrap_or(StatusCode::BAD_REQUEST);
            return json(status, me);
        }
        if let Some(rest) = path.strip_prefix("/fail-on/") {
            let (pod, code) = rest.split_once('/').unwrap_or((rest, "503"));
            let status = match pod == self.pod {
                true => code.parse::<u16>().ok().and_then(|c| StatusCode::from_u16(c).ok()),
                false => Some(StatusCode::OK),
            };
            return json(status.unwrap_or(StatusCode::BAD_REQUEST), me);
        }
        if let Some(ms) = path.strip_prefix("/delay/") {
            let ms = ms.parse::<u64>().unwrap_or(0).min(60_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            return json(StatusCode::OK, me);
        }
        if path == "/headers" || path.starts_with("/headers/") {
            let mut headers = serde_json::Map::new();
            for (name, value) in req.headers() {
                let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
                let joined = match headers.get(name.as_str()).and_then(|x| x.as_str()) {
                    Some(prev) => format!("{prev}, {v}"),
                    None => v,
                };
                headers.insert(name.as_str().to_string(), joined.into());
            }
            me["path"] = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").into();
            me["headers"] = headers.into();
            return json(StatusCode::OK, me);
        }
        if let Some(rest) = path.strip_prefix("/call/") {
            let (host, tail) = rest.split_once('/').unwrap_or((rest, ""));
            return match self.call(host, &format!("/{tail}")).await {
                Ok((status, body)) => {
                    me["upstream"] =
                        serde_json::from_slice(&body).unwrap_or_else(|_| String::from_utf8_lossy(&body).into());
                    me["upstream_status"] = status.as_u16().into();
                    json(StatusCode::OK, me)
                }
                Err(e) => {
                    me["error"] = e.into();
                    json(StatusCode::BAD_GATEWAY, me)
                }
            };
        }
        json(StatusCode::OK, me)
    }

    async fn call(&self, host: &str, path: &str) -> Result<(StatusCode, Bytes), String> {
        let (name, port) = match host.rsplit_once(':') {
            Some((n, p)) => (n, p.parse::<u16>().map_err(|_| format!("bad port in {host}"))?),
            None => (host, 80),
        };
        let stream = tokio::net::TcpStream::connect((self.outbound.as_str(), port))
            .await
            .map_err(|e| format!("connect {}:{port}: {e}", self.outbound))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(http::header::HOST, name)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, body))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let app = App {
        service: var("SERVICE", "demo"),
        version: var("VERSION", "v1"),
        pod: var("POD", "demo-0"),
        outbound: var("OUTBOUND", "127.0.0.1"),
    };
    let listen = var("LISTEN", "127.0.0.1:9080");
    let mut tasks = Vec::new();
    for a in listen.split(',').filter(|s| !s.is_empty()) {
        let addr: SocketAddr = a.parse().map_err(|e| format!("LISTEN {a}: {e}"))?;
        let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("bind {addr}: {e}"))?;
        eprintln!("demo-app {} {} listening on {addr}", app.service, app.version);
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { continue };
                let app = app.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let app = app.clone();
                        async move { Ok::<_, Infallible>(app.handle(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
