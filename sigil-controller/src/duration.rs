//! The TTL fields of the CRDs: a Go duration string, as upstream (`metav1.Duration`), or an
//! integer number of seconds.
//!
//! Upstream's schema has `type: string` and its controller parses the string with Go's
//! `time.ParseDuration`. Seed 002 writes `ttl: 3600`, which upstream rejects although its meaning
//! is plain, so Sigil's schema says `x-kubernetes-int-or-string` and an integer means seconds.
//! A string is parsed exactly as Go does ([`parse_go_duration`]), so everything upstream accepts
//! means the same here and everything it refuses is refused.

use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Nanoseconds per unit, as Go's `time.unitMap`.
const NANOSECOND: u64 = 1;
const MICROSECOND: u64 = 1_000 * NANOSECOND;
const MILLISECOND: u64 = 1_000 * MICROSECOND;
const SECOND: u64 = 1_000 * MILLISECOND;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;

/// Go's `time.Duration` is an `int64` of nanoseconds; its parser works on magnitudes up to 2^63.
const LIMIT: u64 = 1 << 63;

/// Why a TTL value is not a duration. The messages are Go's (`time: invalid duration "x"`), so
/// a user who knows upstream's error recognises it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("time: invalid duration {0:?}")]
    Invalid(String),
    #[error("time: missing unit in duration {0:?}")]
    MissingUnit(String),
    #[error("time: unknown unit {unit:?} in duration {input:?}")]
    UnknownUnit { unit: String, input: String },
    /// An integer TTL whose nanoseconds do not fit Go's `int64`.
    #[error("duration of {0} seconds is out of range")]
    SecondsOutOfRange(i128),
}

/// How the value was written, kept so that a round trip writes back what the user wrote
/// (`3600` stays `3600`, `"1h"` stays `"1h"`): the controller must never rewrite a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Written {
    Seconds(i64),
    Text(String),
}

/// A TTL: Go duration string or integer seconds. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duration {
    nanos: i64,
    written: Written,
}

impl Duration {
    /// Integer seconds, as an integer TTL in a manifest.
    pub fn from_secs(secs: i64) -> Result<Self, DurationError> {
        let nanos = i128::from(secs) * i128::from(SECOND);
        let nanos =
            i64::try_from(nanos).map_err(|_| DurationError::SecondsOutOfRange(secs.into()))?;
        Ok(Self {
            nanos,
            written: Written::Seconds(secs),
        })
    }

    /// A Go duration string, parsed as `time.ParseDuration` does.
    pub fn parse(s: &str) -> Result<Self, DurationError> {
        Ok(Self {
            nanos: parse_go_duration(s)?,
            written: Written::Text(s.to_string()),
        })
    }

    /// The signed length in nanoseconds (Go's `time.Duration`).
    pub fn as_nanos(&self) -> i64 {
        self.nanos
    }

    /// Whole seconds, truncated toward zero like Go's `int64(d.Seconds())`.
    pub fn as_secs(&self) -> i64 {
        self.nanos / SECOND as i64
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.written {
            Written::Seconds(s) => write!(f, "{s}"),
            Written::Text(t) => f.write_str(t),
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.written {
            Written::Seconds(s) => serializer.serialize_i64(*s),
            Written::Text(t) => serializer.serialize_str(t),
        }
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Go duration string such as \"1h\" or an integer number of seconds")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                Duration::from_secs(v).map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                let secs = i64::try_from(v)
                    .map_err(|_| E::custom(DurationError::SecondsOutOfRange(v.into())))?;
                Duration::from_secs(secs).map_err(E::custom)
            }

            // JSON has one number type: `3600.0` is the integer 3600 to the API server's
            // schema check, so it is here too; `1.5` is not an integer and is refused there.
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
                if v.fract() == 0.0 && v.abs() < 9.3e18 {
                    #[allow(clippy::cast_possible_truncation)]
                    // integral and in i64 range: checked
                    return Duration::from_secs(v as i64).map_err(E::custom);
                }
                Err(E::invalid_type(de::Unexpected::Float(v), &self))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    /// Int-or-string the way controller-gen writes it for `intstr.IntOrString`: the extension is
    /// what the API server enforces, the `anyOf` lets plain JSON-schema validators (and
    /// `kubectl explain`) see the two types. The string is not constrained by a pattern because
    /// upstream's is not: a bad string is refused when the controller reads the object.
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [{ "type": "integer" }, { "type": "string" }],
            "x-kubernetes-int-or-string": true
        })
    }
}

/// Go's `time.ParseDuration`, rule for rule (go/src/time/format.go): an optional sign, then one
/// or more `[0-9]*(\.[0-9]*)?unit` with units `ns`, `us`, `µs` (U+00B5), `μs` (U+03BC), `ms`, `s`,
/// `m`, `h`; a lone `0` needs no unit; overflow of int64 nanoseconds is an error. Returns
/// nanoseconds.
pub fn parse_go_duration(input: &str) -> Result<i64, DurationError> {
    let invalid = || DurationError::Invalid(input.to_string());
    let mut s = input;
    let mut neg = false;
    if let Some(rest) = s.strip_prefix('-') {
        neg = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        let first = s.as_bytes()[0];
        if !(first == b'.' || first.is_ascii_digit()) {
            return Err(invalid());
        }
        // [0-9]*
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let mut v: u64 = 0;
        for d in s[..int_len].bytes() {
            if v > LIMIT / 10 {
                return Err(invalid());
            }
            v = v * 10 + u64::from(d - b'0');
            if v > LIMIT {
                return Err(invalid());
            }
        }
        let pre = int_len > 0;
        s = &s[int_len..];
        // (\.[0-9]*)? — digits past what int64 can hold are dropped, as Go's leadingFraction.
        let mut f: u64 = 0;
        let mut scale: f64 = 1.0;
        let mut post = false;
        if let Some(rest) = s.strip_prefix('.') {
            s = rest;
            let frac_len = s.bytes().take_while(u8::is_ascii_digit).count();
            post = frac_len > 0;
            let mut overflow = false;
            for d in s[..frac_len].bytes() {
                if overflow {
                    continue;
                }
                if f > (LIMIT - 1) / 10 {
                    overflow = true;
                    continue;
                }
                let y = f * 10 + u64::from(d - b'0');
                if y > LIMIT {
                    overflow = true;
                    continue;
                }
                f = y;
                scale *= 10.0;
            }
            s = &s[frac_len..];
        }
        if !pre && !post {
            return Err(invalid());
        }
        // The unit runs to the next '.' or digit.
        let unit_len = s
            .bytes()
            .position(|c| c == b'.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(DurationError::MissingUnit(input.to_string()));
        }
        let (unit, rest) = s.split_at(unit_len);
        s = rest;
        let unit = match unit {
            "ns" => NANOSECOND,
            "us" | "\u{00b5}s" | "\u{03bc}s" => MICROSECOND,
            "ms" => MILLISECOND,
            "s" => SECOND,
            "m" => MINUTE,
            "h" => HOUR,
            _ => {
                return Err(DurationError::UnknownUnit {
                    unit: unit.to_string(),
                    input: input.to_string(),
                });
            }
        };
        if v > LIMIT / unit {
            return Err(invalid());
        }
        v *= unit;
        if f > 0 {
            // Go: v += uint64(float64(f) * (float64(unit) / scale))
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let frac = (f as f64 * (unit as f64 / scale)) as u64;
            v = v.checked_add(frac).ok_or_else(invalid)?;
            if v > LIMIT {
                return Err(invalid());
            }
        }
        total = total.checked_add(v).ok_or_else(invalid)?;
        if total > LIMIT {
            return Err(invalid());
        }
    }
    if neg {
        // total ≤ 2^63, so its negation fits i64 (−2^63 is Go's minimum).
        return Ok((total as i128).wrapping_neg() as i64);
    }
    i64::try_from(total).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go's own table (time_test.go, parseDurationTests / parseDurationErrorTests).
    #[test]
    fn go_parse_duration_table() {
        let ok: &[(&str, i64)] = &[
            ("0", 0),
            ("5s", 5 * SECOND as i64),
            ("30s", 30 * SECOND as i64),
            ("1478s", 1478 * SECOND as i64),
            ("-5s", -5 * SECOND as i64),
            ("+5s", 5 * SECOND as i64),
            ("-0", 0),
            ("+0", 0),
            ("5.0s", 5 * SECOND as i64),
            ("5.6s", 5 * SECOND as i64 + 600 * MILLISECOND as i64),
            ("5.s", 5 * SECOND as i64),
            (".5s", 500 * MILLISECOND as i64),
            ("1.0s", SECOND as i64),
            ("1.00s", SECOND as i64),
            ("1.004s", SECOND as i64 + 4 * MILLISECOND as i64),
            ("1.0040s", SECOND as i64 + 4 * MILLISECOND as i64),
            ("100.00100s", 100 * SECOND as i64 + MILLISECOND as i64),
            ("10ns", 10),
            ("11us", 11 * MICROSECOND as i64),
            ("12µs", 12 * MICROSECOND as i64),
            ("12μs", 12 * MICROSECOND as i64),
            ("13ms", 13 * MILLISECOND as i64),
            ("14s", 14 * SECOND as i64),
            ("15m", 15 * MINUTE as i64),
            ("16h", 16 * HOUR as i64),
            ("3h30m", (3 * HOUR + 30 * MINUTE) as i64),
            (
                "10.5s4m",
                (4 * MINUTE + 10 * SECOND + 500 * MILLISECOND) as i64,
            ),
            (
                "-2m3.4s",
                -((2 * MINUTE + 3 * SECOND + 400 * MILLISECOND) as i64),
            ),
            (
                "1h2m3s4ms5us6ns",
                (HOUR + 2 * MINUTE + 3 * SECOND + 4 * MILLISECOND + 5 * MICROSECOND + 6) as i64,
            ),
            (
                "39h9m14.425s",
                (39 * HOUR + 9 * MINUTE + 14 * SECOND + 425 * MILLISECOND) as i64,
            ),
            ("52763797000ns", 52763797000),
            ("0.3333333333333333333h", 20 * MINUTE as i64),
            ("9007199254740993ns", (1 << 53) + 1),
            ("9223372036854775807ns", i64::MAX),
            ("9223372036854775.807us", i64::MAX),
            ("9223372036s854ms775us807ns", i64::MAX),
            ("-9223372036854775808ns", i64::MIN),
            ("-9223372036854775.808us", i64::MIN),
            ("-9223372036s854ms775us808ns", i64::MIN),
            ("-2562047h47m16.854775808s", i64::MIN),
            ("0.100000000000000000000h", 6 * MINUTE as i64),
            (
                "0.830103483285477580700h",
                (49 * MINUTE + 48 * SECOND + 372539827) as i64,
            ),
        ];
        for (input, want) in ok {
            assert_eq!(parse_go_duration(input), Ok(*want), "{input}");
        }
        let bad = [
            "",
            "3",
            "-",
            "s",
            ".",
            "-.",
            ".s",
            "+.s",
            "1d",
            "\u{85}\u{85}",
            "\u{fffd}",
            "9223372036854775810ns",
            "9223372036854775808ns",
            "9223372036854775.808us",
            "-9223372036854775809ns",
            "3000000h",
            "9223372036854ms775us808ns",
            "1hr",
            "1 h",
            " 1h",
            "1h ",
        ];
        for input in bad {
            assert!(
                parse_go_duration(input).is_err(),
                "{input:?} should be refused"
            );
        }
    }

    #[test]
    fn go_error_messages() {
        assert_eq!(
            parse_go_duration("").unwrap_err().to_string(),
            r#"time: invalid duration """#
        );
        assert_eq!(
            parse_go_duration("3").unwrap_err().to_string(),
            r#"time: missing unit in duration "3""#
        );
        assert_eq!(
            parse_go_duration("1d").unwrap_err().to_string(),
            r#"time: unknown unit "d" in duration "1d""#
        );
    }

    #[test]
    fn serde_keeps_the_written_form() {
        for (json, secs) in [
            ("3600", 3600),
            ("\"1h\"", 3600),
            ("\"90s\"", 90),
            ("3600.0", 3600),
            ("-5", -5),
        ] {
            let d: Duration = serde_json::from_str(json).unwrap();
            assert_eq!(d.as_secs(), secs, "{json}");
            let back = serde_json::to_string(&d).unwrap();
            if json != "3600.0" {
                assert_eq!(back, json);
            }
        }
        for json in [
            "1.5",
            "\"1d\"",
            "\"3600\"",
            "true",
            "null",
            "[]",
            "9223372037",
        ] {
            assert!(
                serde_json::from_str::<Duration>(json).is_err(),
                "{json} should be refused"
            );
        }
    }
}
