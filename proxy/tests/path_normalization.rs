//! Differential test of the HCM's path normalisation (`normalize_path`, `merge_slashes`,
//! `path_with_escaped_slashes_action`): what a route (and so RBAC) sees must be Envoy's
//! canonical path, or prefix rules can be bypassed with `..`, `%61` or `//`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::*;

fn routes() -> &'static str {
    r#"              - match: {prefix: "/admin"}
                direct_response: {status: 403, body: {inline_string: "admin is protected"}}
              - match: {prefix: "/a/b"}
                direct_response: {status: 200, body: {inline_string: "a-slash-b"}}
              - match: {prefix: "/"}
                direct_response: {status: 200, body: {inline_string: "public"}}"#
}

fn check(hcm_extra: &str, paths: &[&str]) {
    let up = upstream();
    let b = bootstrap(hcm_extra, "", routes(), "");
    let Some(pair) = start_pair("path_normalization", &b, up) else { return };
    for p in paths {
        same(&format!("{hcm_extra} {p}"), &pair, p, &["--path-as-is"]);
    }
}

#[test]
fn normalize_path_and_merge_slashes_match_envoy() {
    let paths = [
        "/admin",
        "/public/../admin",
        "/%61dmin",
        "/public/%2e%2e/admin",
        "/public/./x",
        "//admin",
        "/a//b",
        "/x/%2Fadmin",
        "/a%2Fb",
        "/a%5Cb",
        "/ok?q=/../admin",
    ];
    check("          normalize_path: true\n          merge_slashes: true", &paths);
    check("          normalize_path: true", &paths);
    check("          normalize_path: true\n          path_with_escaped_slashes_action: REJECT_REQUEST", &paths);
    check("          normalize_path: true\n          path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD", &paths);
    check("          path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT", &paths);
}
