//! Envoy's network and HTTP filters, one module per extension (its config translation beside its
//! behaviour).

pub mod common;
pub mod http;
pub mod network;
