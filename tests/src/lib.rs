//! Support for the end-to-end tests: processes, ports, upstreams, clients.
