//! Differential suite "filter_toggle" (tests/configs/diff_filter_toggle.yaml): an HTTP filter
//! with `disabled: true` runs only where a route's `typed_per_filter_config` turns it on, and a
//! route's `FilterConfig { disabled: true }` turns a filter off there, whichever filter it is.

use tests::Request;
use tests::diff::{Case, Suite};

#[test]
fn diff_filter_toggle() {
    let mut s = Suite::new("filter_toggle", "diff_filter_toggle.yaml").upstreams(&["a"]);
    s.add_both(Case::new("disabled-by-default", Request::get("/plain")).expect_status(200).expect_upstream("a"));
    s.add_both(Case::new("enabled-on-route", Request::get("/enabled")).expect_status(418).expect_local());
    s.add_both(
        Case::new("compressed", Request::get("/plain").header("accept-encoding", "gzip"))
            .expect_status(200)
            .expect_resp("content-encoding", Some("gzip")),
    );
    s.add_both(
        Case::new("compressor-off-on-route", Request::get("/no-compress").header("accept-encoding", "gzip"))
            .expect_status(200)
            .expect_resp("content-encoding", None),
    );
    s.run();
}
