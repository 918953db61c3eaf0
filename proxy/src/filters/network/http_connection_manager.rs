//! `envoy.filters.network.http_connection_manager`: turns a connection into HTTP requests and
//! runs each through Envoy's stages, one file each:
//! - `config`: the HCM's translation (codec, routes from a static table or RDS, the HTTP filter
//!   chain, Envoy's header settings, stats, access logs);
//! - `h1_scan`, `h1_guard`: Envoy's HTTP/1 codec checks on the raw bytes before hyper parses
//!   them (header size and count, framing, methods, the request-headers timer) and its local
//!   replies to what they refuse;
//! - `connection`: the codec and the connection loop (HTTP/1.1 and h2c, AUTO-detected; drain and
//!   shutdown), per-request stats and access logging, the `server` header;
//! - `header_rules`: Envoy's request-header rules (path normalisation, :authority,
//!   x-forwarded-for/-proto, internal vs external, x-envoy-* controls, x-request-id, XFCC, via);
//! - `filter_manager`: route selection, the HTTP filters in order on the request and in reverse
//!   on the response, and the hand-off to the router filter (`filters::http::router`), which
//!   forwards, answers direct responses and redirects, or answers 404.

mod config;
mod connection;
mod filter_manager;
mod h1_guard;
mod h1_scan;
mod header_rules;

pub use config::{Codec, HcmStats, HttpConnectionManager, RouteSource, ServerHeader};
pub use connection::serve;

pub const NAME: &str = "envoy.filters.network.http_connection_manager";
pub const TYPE: &str = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
