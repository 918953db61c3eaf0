//! hyper glue shared by the request path: body types, the worker-local executor, local replies.

pub mod body;
pub mod exec;
pub mod headers;
pub mod local_reply;
pub mod path;
pub mod stream_timer;
pub mod xfcc;

/// The protocol as access logs and Envoy's `%PROTOCOL%` write it.
pub fn protocol_name(v: ::http::Version) -> &'static str {
    match v {
        ::http::Version::HTTP_10 => "HTTP/1.0",
        ::http::Version::HTTP_2 => "HTTP/2",
        ::http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}
