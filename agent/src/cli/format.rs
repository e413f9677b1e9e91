//! Go's formatting of durations and times, as SPIRE's CLI prints them, and the parsing of Go
//! durations for `-timeout`.

use std::time::Duration;

// === formatting ===

/// Go's `time.Duration.String()`: `1.234567ms`, `2.5s`, `1m30s`.
pub fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    fn frac(v: u128, unit: u128, digits: usize) -> String {
        let (int, rem) = (v / unit, v % unit);
        if rem == 0 {
            int.to_string()
        } else {
            let s = format!("{int}.{rem:0digits$}");
            s.trim_end_matches('0').to_string()
        }
    }
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{}µs", frac(ns, 1_000, 3))
    } else if ns < 1_000_000_000 {
        format!("{}ms", frac(ns, 1_000_000, 6))
    } else {
        let h = ns / 3_600_000_000_000;
        let m = (ns / 60_000_000_000) % 60;
        let s = ns % 60_000_000_000;
        let mut out = String::new();
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if h > 0 || m > 0 {
            out.push_str(&format!("{m}m"));
        }
        out.push_str(&format!("{}s", frac(s, 1_000_000_000, 9)));
        out
    }
}

/// Parses Go durations with sub-second units too (`500ms`, `1.5s`, `2m`).
pub(super) fn parse_go_duration(s: &str) -> Result<Duration, String> {
    if let Some(ms) = s.strip_suffix("ms") {
        return ms
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(|v| Duration::from_secs_f64(v / 1000.0))
            .ok_or_else(|| format!("invalid duration {s:?}"));
    }
    if let Some(secs) = s.strip_suffix('s')
        && let Ok(v) = secs.parse::<f64>()
        && v.is_finite()
        && v >= 0.0
    {
        return Ok(Duration::from_secs_f64(v));
    }
    sigil_flags::parse_duration_secs(s).map(Duration::from_secs)
}

/// Go's default `time.Time` formatting in UTC: `2018-01-10 19:37:24 +0000 UTC`. A time
/// outside what `time` represents (years beyond ±9999) is printed as its Unix seconds.
pub fn go_time(unix: i64) -> String {
    const GO_UTC: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second] +0000 UTC"
    );
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(GO_UTC).ok())
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_nanos(500)), "500ns");
        assert_eq!(go_duration(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(go_duration(Duration::from_nanos(8_374_291)), "8.374291ms");
        assert_eq!(go_duration(Duration::from_nanos(1_200)), "1.2µs");
        assert_eq!(go_duration(Duration::from_millis(2500)), "2.5s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(
            parse_go_duration("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            parse_go_duration("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_go_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_go_duration("soon").is_err());
    }

    #[test]
    fn go_times() {
        assert_eq!(go_time(0), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(go_time(1_515_613_044), "2018-01-10 19:37:24 +0000 UTC");
        assert_eq!(go_time(951_782_400), "2000-02-29 00:00:00 +0000 UTC");
    }
}
