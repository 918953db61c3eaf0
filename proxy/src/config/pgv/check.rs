//! Checking one value against its rule, as PGV words the failures.

use super::*;

/// A wrapper or duration value's rules, read from its encoding.
pub(super) fn check_message_value(rule: &Rule, type_name: &str, b: &[u8]) -> Result<(), String> {
    match rule {
        Rule::Duration { gt, gte, lt, lte, .. } => {
            let (secs, nanos) = duration_parts(b);
            let d = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
            let show = |n: i128| format_duration(n);
            if let Some(g) = gt
                && d <= *g
            {
                return Err(format!("value must be greater than {}", show(*g)));
            }
            if let Some(g) = gte
                && d < *g
            {
                return Err(format!("value must be greater than or equal to {}", show(*g)));
            }
            if let Some(l) = lt
                && d >= *l
            {
                return Err(format!("value must be less than {}", show(*l)));
            }
            if let Some(l) = lte
                && d > *l
            {
                return Err(format!("value must be less than or equal to {}", show(*l)));
            }
            Ok(())
        }
        Rule::Message { .. } | Rule::Any { .. } => Ok(()),
        scalar if WRAPPERS.contains(&type_name) => {
            let ty = match type_name {
                "google.protobuf.DoubleValue" => Scalar::Double,
                "google.protobuf.FloatValue" => Scalar::Float,
                "google.protobuf.Int64Value" => Scalar::Int64,
                "google.protobuf.UInt64Value" => Scalar::Uint64,
                "google.protobuf.Int32Value" => Scalar::Int32,
                "google.protobuf.UInt32Value" => Scalar::Uint32,
                "google.protobuf.BoolValue" => Scalar::Bool,
                "google.protobuf.StringValue" => Scalar::String,
                _ => Scalar::Bytes,
            };
            let mut r = Reader { buf: b };
            let mut v = match ty {
                Scalar::String | Scalar::Bytes => Value::Bytes(&[]),
                Scalar::Double => Value::Fixed64(0),
                Scalar::Float => Value::Fixed32(0),
                _ => Value::Int(0),
            };
            while let Some((n, x)) = r.next_field() {
                if n == 1 {
                    v = x;
                }
            }
            check_scalar(scalar, &Ty::Scalar(ty), &v)
        }
        _ => Ok(()),
    }
}

/// A `google.protobuf.Duration`'s (seconds, nanos) from its encoding.
fn duration_parts(b: &[u8]) -> (i64, i32) {
    let mut r = Reader { buf: b };
    let (mut secs, mut nanos) = (0i64, 0i32);
    while let Some((n, v)) = r.next_field() {
        match (n, v) {
            (1, Value::Int(x)) => secs = x as i64,
            (2, Value::Int(x)) => nanos = x as i32,
            _ => {}
        }
    }
    (secs, nanos)
}

/// Envoy refuses a negative duration, and one beyond protobuf's range, wherever it is
/// (`MessageUtil::validateDurationFields`).
pub(super) fn check_duration_range(b: &[u8]) -> Result<(), String> {
    let (secs, nanos) = duration_parts(b);
    if secs < 0 || nanos < 0 {
        return Err(format!("Invalid duration: Expected positive duration: seconds: {secs} nanos: {nanos}"));
    }
    if secs > 315_576_000_000 || nanos > 999_999_999 {
        return Err(format!("Duration out-of-range: seconds: {secs} nanos: {nanos}"));
    }
    Ok(())
}

pub(super) fn format_duration(n: i128) -> String {
    let secs = n / 1_000_000_000;
    let nanos = n % 1_000_000_000;
    if nanos == 0 { format!("{secs}s") } else { format!("{}s", n as f64 / 1e9) }
}

pub(super) fn scalar_number(s: Scalar, v: &Value<'_>) -> Option<f64> {
    Some(match (s, v) {
        (Scalar::Int32 | Scalar::Enum, Value::Int(x)) => f64::from(*x as i32),
        (Scalar::Int64, Value::Int(x)) => *x as i64 as f64,
        (Scalar::Uint32, Value::Int(x)) => f64::from(*x as u32),
        (Scalar::Uint64, Value::Int(x)) => *x as f64,
        (Scalar::Sint32 | Scalar::Sint64, Value::Int(x)) => ((*x >> 1) as i64 ^ -((*x & 1) as i64)) as f64,
        (Scalar::Fixed32, Value::Fixed32(x)) => f64::from(*x),
        (Scalar::Sfixed32, Value::Fixed32(x)) => f64::from(*x as i32),
        (Scalar::Float, Value::Fixed32(x)) => f64::from(f32::from_bits(*x)),
        (Scalar::Fixed64, Value::Fixed64(x)) => *x as f64,
        (Scalar::Sfixed64, Value::Fixed64(x)) => *x as i64 as f64,
        (Scalar::Double, Value::Fixed64(x)) => f64::from_bits(*x),
        (Scalar::Float | Scalar::Double, Value::Int(0)) => 0.0,
        _ => return None,
    })
}

pub(super) fn show(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 { format!("{}", x as i64) } else { format!("{x}") }
}

pub(super) fn check_scalar(rule: &Rule, ty: &Ty, v: &Value<'_>) -> Result<(), String> {
    let Ty::Scalar(s) = ty else { return Ok(()) };
    match rule {
        Rule::Num(r) => {
            let Some(x) = scalar_number(*s, v) else { return Ok(()) };
            if let Some(c) = r.konst
                && x != c
            {
                return Err(format!("value must equal {}", show(c)));
            }
            // PGV words a two-sided bound as a range.
            let lower = r.gt.map(|g| (g, false)).or(r.gte.map(|g| (g, true)));
            let upper = r.lt.map(|l| (l, false)).or(r.lte.map(|l| (l, true)));
            let below = lower.is_some_and(|(g, inc)| if inc { x < g } else { x <= g });
            let above = upper.is_some_and(|(l, inc)| if inc { x > l } else { x >= l });
            if below || above {
                return Err(match (lower, upper) {
                    (Some((g, gi)), Some((l, li))) => format!(
                        "value must be inside range {}{}, {}{}",
                        if gi { "[" } else { "(" },
                        show(g),
                        show(l),
                        if li { "]" } else { ")" }
                    ),
                    (Some((g, true)), None) => format!("value must be greater than or equal to {}", show(g)),
                    (Some((g, false)), None) => format!("value must be greater than {}", show(g)),
                    (None, Some((l, true))) => format!("value must be less than or equal to {}", show(l)),
                    (None, Some((l, false))) => format!("value must be less than {}", show(l)),
                    (None, None) => String::new(),
                });
            }
            if !r.r#in.is_empty() && !r.r#in.contains(&x) {
                return Err(format!("value must be in list {:?}", r.r#in));
            }
            if r.not_in.contains(&x) {
                return Err(format!("value must not be in list {:?}", r.not_in));
            }
            Ok(())
        }
        Rule::Bool(Some(c)) => match v {
            Value::Int(x) if (*x != 0) != *c => Err(format!("value must equal {c}")),
            _ => Ok(()),
        },
        Rule::Bool(None) => Ok(()),
        Rule::Enum { defined_only, defined, konst, r#in, not_in } => {
            let Value::Int(x) = v else { return Ok(()) };
            let x = *x as i32;
            if let Some(c) = konst
                && x != *c
            {
                return Err(format!("value must equal {c}"));
            }
            if *defined_only && !defined.contains(&x) {
                return Err("value must be one of the defined enum values".into());
            }
            if !r#in.is_empty() && !r#in.contains(&x) {
                return Err(format!("value must be in list {in:?}", in = r#in));
            }
            if not_in.contains(&x) {
                return Err(format!("value must not be in list {not_in:?}"));
            }
            Ok(())
        }
        Rule::Str(r) => {
            let Value::Bytes(b) = v else { return Ok(()) };
            if r.ignore_empty && b.is_empty() {
                return Ok(());
            }
            check_string(r, *s, b)
        }
        _ => Ok(()),
    }
}

pub(super) fn check_string(r: &StrRule, s: Scalar, b: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(b);
    let chars = text.chars().count() as u64;
    let bytes = b.len() as u64;
    let is_str = s == Scalar::String;
    let (len_word, n) = if is_str { ("characters", chars) } else { ("bytes", bytes) };
    if let Some(l) = r.len
        && n != l
    {
        return Err(format!("value length must be {l} {len_word}"));
    }
    if let Some(m) = r.min_len
        && n < m
    {
        return Err(format!("value length must be at least {m} {len_word}"));
    }
    if let Some(m) = r.max_len
        && n > m
    {
        return Err(format!("value length must be at most {m} {len_word}"));
    }
    if let Some(m) = r.min_bytes
        && bytes < m
    {
        return Err(format!("value length must be at least {m} bytes"));
    }
    if let Some(m) = r.max_bytes
        && bytes > m
    {
        return Err(format!("value length must be at most {m} bytes"));
    }
    if let Some(c) = &r.konst
        && *text != **c
    {
        return Err(format!("value must equal {c}"));
    }
    if let Some(p) = &r.prefix
        && !text.starts_with(p.as_str())
    {
        return Err(format!("value does not have prefix {p:?}"));
    }
    if let Some(p) = &r.suffix
        && !text.ends_with(p.as_str())
    {
        return Err(format!("value does not have suffix {p:?}"));
    }
    if let Some(p) = &r.contains
        && !text.contains(p.as_str())
    {
        return Err(format!("value does not contain substring {p:?}"));
    }
    if let Some(p) = &r.not_contains
        && text.contains(p.as_str())
    {
        return Err(format!("value contains substring {p:?}"));
    }
    if !r.r#in.is_empty() && !r.r#in.iter().any(|x| *x == *text) {
        return Err(format!("value must be in list {:?}", r.r#in));
    }
    if r.not_in.iter().any(|x| *x == *text) {
        return Err(format!("value must not be in list {:?}", r.not_in));
    }
    if let Some(p) = &r.pattern
        && !p.is_match(&text)
    {
        return Err(format!("value does not match regex pattern {:?}", p.as_str()));
    }
    if let Some(w) = r.well_known {
        let ok = match w {
            WellKnown::HeaderName { strict: true } => {
                let t = text.strip_prefix(':').unwrap_or(&text);
                !t.is_empty() && t.bytes().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_|~`".contains(&c))
            }
            WellKnown::HeaderValue { strict: true } => {
                !b.iter().any(|&c| c < 0x09 || (0x0a..0x20).contains(&c) || c == 0x7f)
            }
            WellKnown::HeaderName { strict: false } | WellKnown::HeaderValue { strict: false } => {
                !b.iter().any(|&c| c == 0 || c == b'\n' || c == b'\r')
            }
            WellKnown::Hostname => is_hostname(&text),
            WellKnown::Ip => text.parse::<std::net::IpAddr>().is_ok(),
            WellKnown::Ipv4 => text.parse::<std::net::Ipv4Addr>().is_ok(),
            WellKnown::Ipv6 => text.parse::<std::net::Ipv6Addr>().is_ok(),
            WellKnown::Address => text.parse::<std::net::IpAddr>().is_ok() || is_hostname(&text),
            WellKnown::Uri => text.contains(':') && http::Uri::try_from(text.as_ref()).is_ok(),
        };
        if !ok {
            return Err(match w {
                WellKnown::HeaderName { .. } => "value does not match regex pattern for a valid HTTP header name",
                WellKnown::HeaderValue { .. } => "value does not match regex pattern for a valid HTTP header value",
                WellKnown::Hostname => "value must be a valid hostname",
                WellKnown::Ip => "value must be a valid IP address",
                WellKnown::Ipv4 => "value must be a valid IPv4 address",
                WellKnown::Ipv6 => "value must be a valid IPv6 address",
                WellKnown::Address => "value must be a valid hostname, or ip address",
                WellKnown::Uri => "value must be a valid URI",
            }
            .into());
        }
    }
    Ok(())
}

pub(super) fn is_hostname(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}
