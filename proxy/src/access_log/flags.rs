//! Envoy's response flags (`UH`, `NR`, `FI`, ...): why a request ended the way it did, as the
//! access log prints them (`%RESPONSE_FLAGS%`) and `response_flag_filter` selects them.

/// A set of response flags, printed in Envoy's order, comma-separated, `-` when empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u32);

/// Envoy's flags in its printing order: (short name, long name). Envoy 1.40 prints them in the
/// order they were set; URX (retries exhausted) is always set before the flag of the final
/// failure (`URX,UT`), so it comes first here.
const FLAGS: &[(&str, &str)] = &[
    ("URX", "UpstreamRetryLimitExceeded"),
    ("LH", "FailedLocalHealthCheck"),
    ("UH", "NoHealthyUpstream"),
    ("UT", "UpstreamRequestTimeout"),
    ("LR", "LocalReset"),
    ("UR", "UpstreamRemoteReset"),
    ("UF", "UpstreamConnectionFailure"),
    ("UC", "UpstreamConnectionTermination"),
    ("UO", "UpstreamOverflow"),
    ("NR", "NoRouteFound"),
    ("DI", "DelayInjected"),
    ("FI", "FaultInjected"),
    ("RL", "RateLimited"),
    ("UAEX", "UnauthorizedExternalService"),
    ("RLSE", "RateLimitServiceError"),
    ("DC", "DownstreamConnectionTermination"),
    ("SI", "StreamIdleTimeout"),
    ("IH", "InvalidEnvoyRequestHeaders"),
    ("DPE", "DownstreamProtocolError"),
    ("UMSDR", "UpstreamMaxStreamDurationReached"),
    ("RFCF", "ResponseFromCacheFilter"),
    ("NFCF", "NoFilterConfigFound"),
    ("DT", "DurationTimeout"),
    ("UPE", "UpstreamProtocolError"),
    ("NC", "NoClusterFound"),
    ("OM", "OverloadManager"),
    ("DF", "DnsResolutionFailed"),
    ("DO", "DropOverload"),
    ("DR", "DownstreamRemoteReset"),
    ("UDO", "UnconditionalDropOverload"),
];

const fn bit(name: &str) -> u32 {
    let mut i = 0;
    while i < FLAGS.len() {
        if eq(FLAGS[i].0, name) {
            return 1 << i;
        }
        i += 1;
    }
    0
}

const fn eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

impl ResponseFlags {
    pub const NONE: ResponseFlags = ResponseFlags(0);
    pub const NO_ROUTE_FOUND: ResponseFlags = ResponseFlags(bit("NR"));
    pub const DELAY_INJECTED: ResponseFlags = ResponseFlags(bit("DI"));
    pub const FAULT_INJECTED: ResponseFlags = ResponseFlags(bit("FI"));
    pub const RATE_LIMITED: ResponseFlags = ResponseFlags(bit("RL"));
    pub const DOWNSTREAM_CONNECTION_TERMINATION: ResponseFlags = ResponseFlags(bit("DC"));

    /// The flag with Envoy's short name (`"UH"`), if it is one.
    pub fn from_short(name: &str) -> Option<Self> {
        FLAGS.iter().position(|(s, _)| *s == name).map(|i| ResponseFlags(1 << i))
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn intersects(self, other: ResponseFlags) -> bool {
        self.0 & other.0 != 0
    }

    /// `UH,UF` (Envoy's `%RESPONSE_FLAGS%`), or `-`.
    pub fn short_string(self) -> String {
        self.join(|(s, _)| s, ",")
    }

    /// `%RESPONSE_FLAGS_LONG%`: `NoHealthyUpstream,...`, or `-`.
    pub fn long_string(self) -> String {
        self.join(|(_, l)| l, ",")
    }

    fn join(self, pick: impl Fn(&(&'static str, &'static str)) -> &'static str, sep: &str) -> String {
        if self.0 == 0 {
            return "-".to_string();
        }
        let mut out = String::new();
        for (i, f) in FLAGS.iter().enumerate() {
            if self.0 & (1 << i) != 0 {
                if !out.is_empty() {
                    out.push_str(sep);
                }
                out.push_str(pick(f));
            }
        }
        out
    }
}

impl std::ops::BitOr for ResponseFlags {
    type Output = ResponseFlags;
    fn bitor(self, o: ResponseFlags) -> ResponseFlags {
        ResponseFlags(self.0 | o.0)
    }
}

impl std::ops::BitOrAssign for ResponseFlags {
    fn bitor_assign(&mut self, o: ResponseFlags) {
        self.0 |= o.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_order() {
        assert_eq!(ResponseFlags::NONE.short_string(), "-");
        let f = ResponseFlags::FAULT_INJECTED | ResponseFlags::DELAY_INJECTED;
        assert_eq!(f.short_string(), "DI,FI");
        assert_eq!(f.long_string(), "DelayInjected,FaultInjected");
        assert_eq!(ResponseFlags::from_short("NR"), Some(ResponseFlags::NO_ROUTE_FOUND));
        assert!(ResponseFlags::from_short("XX").is_none());
        assert_eq!(ResponseFlags::RATE_LIMITED.short_string(), "RL");
    }
}
