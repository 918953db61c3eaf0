//! Network filters: the terminal filter of a filter chain decides what a connection becomes.

pub mod http_connection_manager;
pub mod tcp_proxy;
