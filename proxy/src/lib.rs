//! Remora: an Envoy-compatible sidecar proxy.
//!
//! The crate is built in layers (ARCHITECTURE.md has the full plan and the request and config
//! paths file by file). A module imports only from lower layers, its own layer, its ancestors and
//! its descendants; `scripts/check-layers` enforces it.
//!
//! - L0 toolkit: `config` (errors, build context, extension hooks), `stream_info`, `matcher`,
//!   `stats`, `formatter`, `access_log`, `http`, `tls`, `transport_socket`, `logging`.
//! - L1 core data plane: `router` (route tables), `upstream` (clusters, hosts, load balancers,
//!   pools, circuit breakers, outlier detection), `runtime` (the live state workers read).
//! - L2 extensions: `filters::{listener, network, http, common}`, one Envoy extension per module.
//! - L3 assembly: `listener`, `manager` (the config manager).
//! - L4 process: `worker`, `server`, `lifecycle`, `admin`, `xds`, `ca_client`, `cli`, `bootstrap`.
//!
//! Follow a request: `worker` accepts on a `listener`, whose filter chain hands the connection to
//! `filters::network::http_connection_manager`; its filter manager finds the route in `router`,
//! runs the HTTP filters and calls `filters::http::router`, which forwards to a cluster through
//! the worker's `upstream::pool`. Config arrives through `bootstrap` and `xds`, is translated by
//! the `from_proto` functions and published by `manager` into the cells `runtime` lists.
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
pub mod trace;
pub mod transport_socket;
pub mod upstream;
pub mod worker;
pub mod xds;

pub use server::run;

/// A hash map for keys looked up per request (cluster names, pool keys, status codes):
/// foldhash instead of SipHash, whose DoS resistance these keys (from config, not from
/// clients) do not need.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
