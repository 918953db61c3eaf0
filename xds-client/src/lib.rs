//! Loading Envoy configuration: proto3 JSON/YAML into `envoy-types` messages, the bootstrap file
//! with Envoy's command-line overrides, typed `Any` unpacking, and the xDS client.

pub mod ads;
pub mod any;
pub mod bootstrap;
pub mod descriptors;
pub mod json;
#[cfg(feature = "server")]
pub mod server;

pub use envoy_types::pb;
