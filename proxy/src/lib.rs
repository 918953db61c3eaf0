//! Remora: an Envoy-compatible sidecar proxy.
//!
//! Follow a request: `worker` accepts on a `listener`, whose filter chain hands the connection to
//! `filters::network::http_connection_manager`; it finds the route in `router`, runs the HTTP
//! filters and lets `filters::http::router` forward to a `upstream::cluster` through the
//! worker's `upstream::pool`. Config arrives through `bootstrap` (and xDS), is compiled by the
//! `from_proto` functions and published as one `config::Snapshot`.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
// Envoy still accepts its deprecated fields, so remora translates them too.
#![allow(deprecated)]

pub mod access_log;
pub mod admin;
pub mod bootstrap;
pub mod ca_client;
pub mod cli;
pub mod config;
pub mod filters;
pub mod formatter;
pub mod http;
pub mod lifecycle;
pub mod listener;
pub mod logging;
pub mod manager;
pub mod matcher;
pub mod router;
pub mod runtime;
pub mod server;
pub mod stats;
pub mod stream_info;
pub mod tls;
pub mod transport_socket;
pub mod upstream;
pub mod worker;
pub mod xds;

pub use server::run;

/// A hash map for keys looked up per request (cluster names, pool keys, status codes):
/// foldhash instead of SipHash, whose DoS resistance these keys (from config, not from
/// clients) do not need.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
