//! Header names the request path uses, built once at compile time: looking a header up by
//! `&str` parses the name on every call, which showed up in profiles.

use http::HeaderName;

pub const X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
pub const X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
pub const X_ENVOY_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");
pub const X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
pub const X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName = HeaderName::from_static("x-envoy-upstream-service-time");
pub const X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
pub const X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");
pub const X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms");
pub const X_ENVOY_RETRY_ON: HeaderName = HeaderName::from_static("x-envoy-retry-on");
pub const X_ENVOY_MAX_RETRIES: HeaderName = HeaderName::from_static("x-envoy-max-retries");
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
pub const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// True when some header name starts with `x-envoy-` (most requests have none, and then
/// nothing needs removing).
pub fn has_envoy_headers(h: &http::HeaderMap) -> bool {
    h.keys().any(|k| k.as_str().starts_with("x-envoy-"))
}

/// A header value for a number: values below 1,024 (attempt counts, service times in ms) come
/// from a table built once, without the allocation `HeaderValue::from(u64)` makes each time.
pub fn number(n: u64) -> http::HeaderValue {
    use std::sync::LazyLock;
    const SMALL: usize = 1024;
    static DIGITS: LazyLock<String> = LazyLock::new(|| (0..SMALL).map(|i| i.to_string()).collect());
    static VALUES: LazyLock<Vec<http::HeaderValue>> = LazyLock::new(|| {
        let digits: &'static str = DIGITS.as_str();
        let mut at = 0;
        (0..SMALL)
            .map(|i| {
                let len = i.to_string().len();
                let v = http::HeaderValue::from_static(&digits[at..at + len]);
                at += len;
                v
            })
            .collect()
    });
    if let Some(v) = usize::try_from(n).ok().and_then(|i| VALUES.get(i)) {
        return v.clone();
    }
    // Larger values are nearly always the route's timeout (x-envoy-expected-rq-timeout-ms,
    // 15000 by default), the same on every request: the worker keeps the last one it made, and
    // a clone shares its bytes.
    thread_local! {
        static LAST_LARGE: std::cell::RefCell<Option<(u64, http::HeaderValue)>> = const { std::cell::RefCell::new(None) };
    }
    LAST_LARGE.with_borrow_mut(|last| match last {
        Some((m, v)) if *m == n => v.clone(),
        _ => {
            let v = http::HeaderValue::from(n);
            *last = Some((n, v.clone()));
            v
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_as_header_values() {
        // Repeats and alternations exercise the cache of the last large value.
        for n in [0, 1, 9, 10, 99, 100, 1023, 1024, 15000, 15000, 30000, 15000, 15000, u64::MAX, 1024] {
            assert_eq!(super::number(n).to_str().unwrap(), n.to_string());
        }
    }
}
