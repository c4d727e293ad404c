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

/// The UTC calendar year and month (1 to 12) of `ms` since the epoch (may be negative).
pub fn year_month(ms: i64) -> (i32, u32) {
    // Howard Hinnant's civil-from-days, on days since 1970-01-01.
    let days = ms.div_euclid(86_400_000) + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year as i32, month as u32)
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
    crate::util::duration::HumanDuration::parse_positive(text).map(|parsed| parsed.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn year_month_agrees_with_rfc3339_around_month_and_leap_boundaries() {
        for ms in [
            0u64,
            951_782_399_000,   // 2000-02-28T23:59:59Z
            951_868_800_000,   // 2000-03-01
            1_769_904_000_000, // 2026-02-01
            1_772_323_199_999, // 2026-02-28T23:59:59.999Z
            4_107_542_400_000, // 2100-03-01
        ] {
            let stamp = rfc3339(ms);
            let (year, month) = year_month(ms as i64);
            assert_eq!(format!("{year:04}-{month:02}"), stamp[..7], "{stamp}");
        }
        assert_eq!(year_month(-1), (1969, 12));
    }

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
