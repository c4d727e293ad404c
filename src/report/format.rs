//! Number formats shared by the HTML and Markdown reports and the run's closing lines.

/// `+1.23%`; `n/a` when undefined.
pub fn signed_percent(value: Option<f64>) -> String {
    value
        .filter(|v| v.is_finite())
        .map_or("n/a".to_owned(), |v| format!("{:+.2}%", v * 100.0))
}

/// `45.6%`; `n/a` when undefined.
pub fn share(value: Option<f64>) -> String {
    value
        .filter(|v| v.is_finite())
        .map_or("n/a".to_owned(), |v| format!("{:.1}%", v * 100.0))
}

/// `1.23`; `n/a` when undefined.
pub fn ratio(value: Option<f64>) -> String {
    value
        .filter(|v| v.is_finite())
        .map_or("n/a".to_owned(), |v| format!("{v:.2}"))
}

/// A plain figure with as many decimals as its size deserves: `12,345.7`, `0.0123`.
pub fn figure(value: Option<f64>) -> String {
    let Some(v) = value.filter(|v| v.is_finite()) else {
        return "n/a".to_owned();
    };
    let magnitude = v.abs();
    let text = if magnitude >= 1000.0 {
        format!("{v:.0}")
    } else if magnitude >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    };
    group_thousands(&text)
}

fn group_thousands(text: &str) -> String {
    let (sign, rest) = text
        .strip_prefix('-')
        .map_or(("", text), |rest| ("-", rest));
    let (whole, fraction) = rest
        .split_once('.')
        .map_or((rest, None), |(w, f)| (w, Some(f)));
    let mut grouped = String::new();
    for (index, digit) in whole.chars().enumerate() {
        if index > 0 && (whole.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    match fraction {
        Some(fraction) => format!("{sign}{grouped}.{fraction}"),
        None => format!("{sign}{grouped}"),
    }
}

/// A duration in ms, humanly.
pub fn duration_ms(ms: u64) -> String {
    crate::util::time::human(std::time::Duration::from_millis(ms))
}

pub const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_grouped_and_undefined_ones_say_so() {
        assert_eq!(figure(Some(12_345.67)), "12,346");
        assert_eq!(figure(Some(-1_234_567.0)), "-1,234,567");
        assert_eq!(figure(Some(4.56789)), "4.57");
        assert_eq!(figure(Some(0.012345)), "0.0123");
        assert_eq!(figure(None), "n/a");
        assert_eq!(signed_percent(Some(0.0123)), "+1.23%");
        assert_eq!(share(Some(f64::NAN)), "n/a");
    }
}
