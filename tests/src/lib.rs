//! Support for the end-to-end tests: processes, ports, upstreams, clients, and the differential
//! harness that runs the same bootstrap through Envoy and remora and compares what clients see.
//!
//! - `upstream`: named echo servers (HTTP/1.1 + h2c) with knobs for status, delays, resets and
//!   fail-the-first-N-attempts.
//! - `process`: start Envoy or remora on a rendered bootstrap template, wait for `/ready`.
//! - `client`: curl over HTTP/1.1 and h2c.
//! - `diff`: the differential harness.

pub mod client;
pub mod diff;
pub mod process;
pub mod upstream;

pub use client::{Proto, Request, Response, curl, curl_repeat};
pub use process::{Kind, Options, Proxy, Vars, envoy_bin, remora_bin, remora_bin_or_build, workspace_dir};
pub use upstream::{Upstream, Upstreams};
