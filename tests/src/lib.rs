//! Support for the end-to-end tests: processes, ports, upstreams, clients, and the differential
//! harness that runs the same bootstrap through Envoy and remora and compares what clients see.
//!
//! - `upstream`: named echo servers (HTTP/1.1 + h2c) with knobs for status, delays, resets and
//!   fail-the-first-N-attempts.
//! - `process`: start Envoy or remora on a rendered bootstrap template, wait for `/ready`.
//! - `client`: curl over HTTP/1.1 and h2c.
//! - `diff`: the differential harness.
//!
//! Running: `scripts/test` (everything), or `cargo test -p tests` with
//! - `ENVOY_BIN`: the reference Envoy (else `envoy` on PATH, the venv of
//!   `scripts/install-test-deps`, or /tmp/envoyvenv/bin/envoy);
//! - `REMORA_BIN`: the remora binary (else `<target>/debug/remora`; the diff suites compare
//!   Envoy with itself only when it is missing, unless `REMORA_DIFF_REQUIRE=1`);
//! - `REMORA_TESTDATA`: the shared test data (default `<workspace>/../shared/testdata`);
//! - `REMORA_DIFF_SELF_CHECK=0`: skip the second Envoy run; `REMORA_DIFF_DUMP=1`: print every
//!   reference outcome; `REMORA_KEEP_LOGS=1`: keep proxy logs under $TMPDIR/remora-tests;
//!   `REMORA_TEST_LOG_LEVEL`: the proxies' `-l` (default info).

pub mod client;
pub mod diff;
pub mod process;
pub mod upstream;

pub use client::{Proto, Request, Response, curl, curl_repeat};
pub use process::{Kind, Options, Proxy, Vars, envoy_bin, remora_bin, remora_bin_or_build, workspace_dir};
pub use upstream::{Upstream, Upstreams};
