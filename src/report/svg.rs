//! Inline SVG charts for the HTML report: a time-series chart (lines, optionally filled down to
//! zero) and a stage timeline. Hand-written SVG keeps the report one self-contained file that
//! renders the same in any browser, with no plotting dependency or font files to embed.

use std::fmt::Write;

/// One series of a chart.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub x: &'a [i64],
    pub y: &'a [f64],
    pub dashed: bool,
    /// Fill between the line and zero (a drawdown).
    pub filled: bool,
    /// Drawn thin and pale behind the others, and left out of the legend (a sweep's members).
    pub faint: bool,
}

/// Escapes text for HTML and SVG content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 24.0;
const BOTTOM: f64 = 28.0;

/// A time-series chart `width` x `height` pixels; `format` labels the y axis.
pub fn time_chart(
    title: &str,
    width: f64,
    height: f64,
    series: &[Series<'_>],
    format: &dyn Fn(f64) -> String,
) -> String {
    let finite = |v: &&f64| v.is_finite();
    let xs = series.iter().flat_map(|s| s.x.iter().copied());
    let (x_min, x_max) = xs.fold((i64::MAX, i64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let ys = series
        .iter()
        .flat_map(|s| s.y.iter().filter(finite).copied());
    let (mut y_min, mut y_max) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
        (lo.min(y), hi.max(y))
    });
    if series.iter().any(|s| s.filled) {
        y_max = y_max.max(0.0);
        y_min = y_min.min(0.0);
    }
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{title}">"#,
        title = escape(title)
    );
    let _ = write!(
        svg,
        r##"<text x="{LEFT}" y="15" class="title">{}</text>"##,
        escape(title)
    );
    if x_min > x_max || !y_min.is_finite() {
        svg.push_str(r#"<text x="50%" y="50%" text-anchor="middle">no data</text></svg>"#);
        return svg;
    }
    if y_max - y_min < 1e-12 {
        y_max += 1.0;
        y_min -= 1.0;
    }
    let plot_w = width - LEFT - RIGHT;
    let plot_h = height - TOP - BOTTOM;
    let span = (x_max - x_min).max(1) as f64;
    let px = |x: i64| LEFT + (x - x_min) as f64 / span * plot_w;
    let py = |y: f64| TOP + (y_max - y) / (y_max - y_min) * plot_h;
    // Grid and y labels: five levels.
    for step in 0..=4 {
        let value = y_min + (y_max - y_min) * f64::from(step) / 4.0;
        let y = py(value);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" class="grid"/><text x="{:.1}" y="{:.1}" text-anchor="end" class="axis">{}</text>"##,
            width - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            escape(&format(value))
        );
    }
    // X labels: the first, middle and last dates.
    for (fraction, anchor) in [(0.0, "start"), (0.5, "middle"), (1.0, "end")] {
        let x = x_min + ((x_max - x_min) as f64 * fraction) as i64;
        let date = crate::util::time::rfc3339(x.max(0) as u64);
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="{anchor}" class="axis">{}</text>"##,
            px(x),
            height - 8.0,
            &date[..10]
        );
    }
    if y_min < 0.0 && y_max > 0.0 {
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" class="zero"/>"##,
            width - RIGHT,
            y = py(0.0)
        );
    }
    for line in series {
        let mut path = String::new();
        for (&x, &y) in line.x.iter().zip(line.y) {
            if y.is_finite() {
                let _ = write!(path, "{:.1},{:.1} ", px(x), py(y));
            }
        }
        if line.filled
            && let (Some(&first), Some(&last)) = (line.x.first(), line.x.last())
        {
            let _ = write!(
                svg,
                r##"<polygon points="{:.1},{zero:.1} {path}{:.1},{zero:.1}" fill="{color}" fill-opacity="0.25" stroke="none"/>"##,
                px(first),
                px(last),
                zero = py(0.0),
                color = line.color
            );
        }
        let dash = if line.dashed {
            r#" stroke-dasharray="5 4""#
        } else {
            ""
        };
        let (width, opacity) = if line.faint { (1.0, 0.25) } else { (1.5, 1.0) };
        let _ = write!(
            svg,
            r##"<polyline points="{path}" fill="none" stroke="{}" stroke-width="{width}" stroke-opacity="{opacity}"{dash}><title>{}</title></polyline>"##,
            line.color,
            escape(line.name)
        );
    }
    // Legend, top right.
    let mut x = width - RIGHT;
    for line in series.iter().rev().filter(|line| !line.faint) {
        let label_width = 7.0 * line.name.chars().count() as f64 + 26.0;
        x -= label_width;
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" x2="{:.1}" y1="11" y2="11" stroke="{}" stroke-width="3"/><text x="{:.1}" y="15" class="legend">{}</text>"##,
            x + 16.0,
            line.color,
            x + 20.0,
            escape(line.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A histogram `width` x `height` pixels: one bar per `(low, high, count)` bin, the bins'
/// edges labelled with `format`.
pub fn histogram(
    title: &str,
    width: f64,
    height: f64,
    bins: &[(f64, f64, usize)],
    color: &str,
    format: &dyn Fn(f64) -> String,
) -> String {
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{title}"><text x="{LEFT}" y="15" class="title">{title}</text>"#,
        title = escape(title)
    );
    let most = bins.iter().map(|bin| bin.2).max().unwrap_or(0);
    if bins.is_empty() || most == 0 {
        svg.push_str(r#"<text x="50%" y="50%" text-anchor="middle">no data</text></svg>"#);
        return svg;
    }
    let plot_w = width - LEFT - RIGHT;
    let plot_h = height - TOP - BOTTOM;
    let bar_w = plot_w / bins.len() as f64;
    for (index, &(low, high, count)) in bins.iter().enumerate() {
        let bar_h = count as f64 / most as f64 * plot_h;
        let _ = write!(
            svg,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{bar_h:.1}" fill="{color}" fill-opacity="0.7"><title>{} to {}: {count}</title></rect>"##,
            LEFT + index as f64 * bar_w + 1.0,
            TOP + plot_h - bar_h,
            (bar_w - 2.0).max(1.0),
            escape(&format(low)),
            escape(&format(high))
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="end" class="axis">{most}</text>"##,
        LEFT - 6.0,
        TOP + 4.0
    );
    let first = bins.first().map_or(0.0, |bin| bin.0);
    let last = bins.last().map_or(0.0, |bin| bin.1);
    for (x, value, anchor) in [(LEFT, first, "start"), (width - RIGHT, last, "end")] {
        let _ = write!(
            svg,
            r##"<text x="{x:.1}" y="{:.1}" text-anchor="{anchor}" class="axis">{}</text>"##,
            height - 8.0,
            escape(&format(value))
        );
    }
    svg.push_str("</svg>");
    svg
}

/// One bar of the timeline.
pub struct Span<'a> {
    pub label: &'a str,
    pub start_ms: u64,
    pub duration_ms: u64,
    pub color: &'a str,
    pub note: String,
}

/// The stages as bars on a time axis from the run's start to its end.
pub fn timeline(spans: &[Span<'_>], total_ms: u64, width: f64) -> String {
    let row = 22.0;
    let label_width = 140.0;
    let height = TOP + row * spans.len() as f64 + BOTTOM;
    let plot_w = width - label_width - RIGHT;
    let total = total_ms.max(1) as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="stage timeline">"#
    );
    for (index, span) in spans.iter().enumerate() {
        let y = TOP + row * index as f64;
        let x = label_width + span.start_ms as f64 / total * plot_w;
        // Cached stages take no time: still draw a sliver so every stage is visible.
        let w = (span.duration_ms as f64 / total * plot_w).max(2.0);
        // The note goes after the bar, or inside its end when the bar reaches the right edge.
        let (note_x, anchor, fill) = if x + w + 120.0 <= width {
            (x + w + 6.0, "start", "#59636e")
        } else {
            (x + w - 6.0, "end", "#ffffff")
        };
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" class="axis">{}</text><rect x="{x:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="{}"><title>{}</title></rect><text x="{note_x:.1}" y="{:.1}" text-anchor="{anchor}" style="font-size:11px;fill:{fill}">{}</text>"##,
            label_width - 8.0,
            y + 15.0,
            escape(span.label),
            y + 4.0,
            row - 8.0,
            span.color,
            escape(&span.note),
            y + 15.0,
            escape(&span.note)
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{label_width}" y="{:.1}" class="axis">0</text><text x="{:.1}" y="{:.1}" text-anchor="end" class="axis">{}</text></svg>"##,
        height - 8.0,
        width - RIGHT,
        height - 8.0,
        crate::util::time::human(std::time::Duration::from_millis(total_ms))
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_everywhere_it_lands() {
        assert_eq!(
            escape(r#"<b>"x" & 'y'"#),
            "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;"
        );
        let chart = time_chart(
            "<script>",
            400.0,
            200.0,
            &[Series {
                name: "a</title><script>",
                color: "#000",
                x: &[0, 3_600_000],
                y: &[1.0, 2.0],
                dashed: false,
                filled: false,
                faint: false,
            }],
            &|v| format!("{v:.0}"),
        );
        assert!(!chart.contains("<script>"), "{chart}");
        assert!(chart.contains("<polyline points=\""));
    }

    #[test]
    fn a_chart_maps_the_extremes_to_the_plot_edges() {
        let chart = time_chart(
            "t",
            200.0,
            100.0,
            &[Series {
                name: "s",
                color: "#000",
                x: &[0, 10],
                y: &[0.0, 1.0],
                dashed: false,
                filled: false,
                faint: false,
            }],
            &|v| format!("{v}"),
        );
        // x: 64 .. 184; y: 24 (top, the max) .. 72 (bottom, the min).
        assert!(
            chart.contains(r#"points="64.0,72.0 184.0,24.0 ""#),
            "{chart}"
        );
    }
}
