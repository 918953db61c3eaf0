//! Access logs: Envoy's `access_log` entries (file, stdout, stderr) with their filters and
//! formats, written without blocking a worker.

pub mod flags;

pub use flags::ResponseFlags;
