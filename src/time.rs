//! Wall-clock helpers: milliseconds since the epoch, RFC 3339 stamps, human durations ("2h 5m").

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// `2026-11-20T22:50:03Z`.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A compact, sortable stamp for run ids: `20261120T225003Z`.
pub fn compact_stamp(ms: u64) -> String {
    rfc3339(ms).replace(['-', ':'], "")
}

/// A short human duration: `850ms`, `12s`, `3m 20s`, `2h 5m`, `3d 4h`.
pub fn human(duration: Duration) -> String {
    let ms = duration.as_millis() as u64;
    let seconds = ms / 1000;
    match seconds {
        0 => format!("{ms}ms"),
        1..=59 if ms < 10_000 => format!("{:.1}s", ms as f64 / 1000.0),
        1..=59 => format!("{seconds}s"),
        60..=3599 => pair(seconds / 60, "m", seconds % 60, "s"),
        3600..=86_399 => pair(seconds / 3600, "h", seconds % 3600 / 60, "m"),
        _ => pair(seconds / 86_400, "d", seconds % 86_400 / 3600, "h"),
    }
}

/// `2h 5m`, or `2h` when the smaller unit is zero.
fn pair(large: u64, large_unit: &str, small: u64, small_unit: &str) -> String {
    if small == 0 {
        format!("{large}{large_unit}")
    } else {
        format!("{large}{large_unit} {small}{small_unit}")
    }
}

/// Parses a duration such as `90s`, `30m`, `1h`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        Ok(_) => Err(format!("duration `{text}` must be longer than zero")),
        Err(error) => Err(format!("invalid duration `{text}`: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        assert_eq!(human(Duration::from_millis(850)), "850ms");
        assert_eq!(human(Duration::from_millis(1250)), "1.2s");
        assert_eq!(human(Duration::from_secs(7500)), "2h 5m");
        assert_eq!(human(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(human(Duration::from_secs(120)), "2m");
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("0s").is_err());
        assert_eq!(compact_stamp(0), "19700101T000000Z");
    }
}
