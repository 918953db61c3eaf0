//! The pods' apps and a gRPC client, each on a thread inside a pod's namespace.
//! - `http_app`: HTTP/1.1 and h2c (hyper's auto server), on IPv4 and IPv6. A plain request is answered with
//!   `<app> <version> xfcc=<x-forwarded-client-cert>`; a gRPC request (`application/grpc`) with
//!   one message, the same text, and trailers `grpc-status: 0`.
//! - `tcp_app`: server-first: sends `<app>\n`, then echoes.
//! - `grpc_call`: one unary gRPC call over h2c prior knowledge: (grpc-status, message).

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::{in_ns, spawn_in_ns};

type Body = BoxBody<Bytes, Infallible>;

/// A gRPC length-prefixed message.
pub fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

async fn answer(app: &'static str, req: hyper::Request<Incoming>) -> Result<hyper::Response<Body>, Infallible> {
    let version = format!("{:?}", req.version());
    let xfcc = req.headers().get("x-forwarded-client-cert").and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
    let grpc = req.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let _ = req.into_body().collect().await;
    let text = format!("{app} {version} xfcc={xfcc}");
    if grpc {
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
        let frames = vec![Ok(Frame::data(grpc_frame(text.as_bytes()))), Ok(Frame::trailers(trailers))];
        let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
        let resp = hyper::Response::builder().header("content-type", "application/grpc").body(body);
        return Ok(resp.unwrap_or_default());
    }
    Ok(hyper::Response::new(Full::new(Bytes::from(text)).boxed()))
}

/// Serves the HTTP app on `0.0.0.0:port` inside `ns`; returns once it listens.
pub fn http_app(ns: &str, app: &'static str, port: u16) {
    let (tx, rx) = std::sync::mpsc::channel();
    spawn_in_ns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            // [::] takes IPv4 too (dual stack).
            let l = tokio::net::TcpListener::bind(("::", port)).await.unwrap();
            tx.send(()).unwrap();
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| answer(app, req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

/// Serves the server-first TCP app on `0.0.0.0:port` inside `ns`; returns once it listens.
pub fn tcp_app(ns: &str, app: &'static str, port: u16) {
    let (tx, rx) = std::sync::mpsc::channel();
    spawn_in_ns(ns, move || {
        let l = std::net::TcpListener::bind(("::", port)).unwrap();
        tx.send(()).unwrap();
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                if s.write_all(format!("{app}\n").as_bytes()).is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

/// From inside `ns`: connect to `addr`, read the greeting line, send `ping\n`, read the echo.
/// With `client_first` the ping goes out before anything is read (a plaintext client of a
/// PERMISSIVE port must speak first: the inspectors wait for its bytes, in Envoy too).
/// Returns (greeting, echo), or the error.
pub fn tcp_ping(ns: &str, addr: SocketAddr, client_first: bool) -> Result<(String, String), String> {
    in_ns(ns, move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        if client_first {
            s.write_all(b"ping\n").map_err(|e| e.to_string())?;
        }
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while !line.ends_with(b"\n") {
            match s.read(&mut b) {
                Ok(0) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&line))),
                Ok(_) => line.push(b[0]),
                Err(e) => return Err(e.to_string()),
            }
        }
        if !client_first {
            s.write_all(b"ping\n").map_err(|e| e.to_string())?;
        }
        let mut echo = [0u8; 5];
        s.read_exact(&mut echo).map_err(|e| e.to_string())?;
        Ok((String::from_utf8_lossy(&line).into_owned(), String::from_utf8_lossy(&echo).into_owned()))
    })
}

/// From inside `ns`: a unary gRPC call `POST /mesh.Echo/Say` to `authority` at `addr`.
/// Returns (grpc-status, the reply message).
pub fn grpc_call(ns: &str, addr: SocketAddr, authority: &'static str) -> Result<(String, String), String> {
    in_ns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let req = hyper::Request::post(format!("http://{authority}/mesh.Echo/Say"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Full::new(grpc_frame(b"hello")))
                .map_err(|e| e.to_string())?;
            let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| e.to_string())?;
            let headers_status = resp.headers().get("grpc-status").and_then(|v| v.to_str().ok()).map(String::from);
            let collected = resp.into_body().collect().await.map_err(|e| e.to_string())?;
            let status = collected
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .and_then(|v| v.to_str().ok())
                .map(String::from)
                .or(headers_status)
                .unwrap_or_else(|| "none".into());
            let bytes = collected.to_bytes();
            let msg = if bytes.len() >= 5 { String::from_utf8_lossy(&bytes[5..]).into_owned() } else { String::new() };
            Ok((status, msg))
        })
    })
}
