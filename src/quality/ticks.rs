//! Bad ticks: prices inconsistent with their neighbours, told apart from big moves that are
//! real. Real crypto returns have fat tails and volatility that clusters, so a large return on
//! its own says nothing about the data. What bad data looks like instead:
//!
//! - a **spike**: the close jumps by a factor and comes back (at least 80% of the way) within
//!   [`MAX_EXCURSION`] bars, both moves beyond the threshold and the price flat (next to the
//!   jump) while away: a bar at 10x or 0.1x, a mis-scaled print;
//! - a **wick** far outside its own body *and* the neighbouring bars' ranges: a near-zero low,
//!   a fat-finger high.
//!
//! The threshold adapts to the series: `z` times a local robust scale (1.4826 x the median
//! absolute one-bar log return in blocks of [`BLOCK`] bars, so calm and stormy regimes are each
//! judged by their own standard), and never below an absolute floor (`min_move`), so a calm
//! series does not flag an ordinary move. Only bars one interval apart are compared.

use serde::Serialize;

/// Bars a spike may stay away before it must have come back.
pub const MAX_EXCURSION: usize = 3;
/// Bars per block of the local scale.
pub const BLOCK: usize = 96;
/// The share of a spike's jump that must be undone for it to count as coming back.
const COME_BACK: f64 = 0.8;

/// How far a price must stray to be a bad tick (the `validate` params).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TickRules {
    /// A spike's jump and its return, in local robust scales.
    pub tick_z: f64,
    /// ... and at least this relative move (0.25 = 25%).
    pub min_tick_move: f64,
    /// A wick beyond its body and the neighbours' ranges, in local robust scales.
    pub wick_z: f64,
    /// ... and at least this far beyond (0.5 = 50%).
    pub min_wick: f64,
}

impl Default for TickRules {
    fn default() -> Self {
        Self {
            tick_z: 12.0,
            min_tick_move: 0.25,
            wick_z: 16.0,
            min_wick: 0.5,
        }
    }
}

/// One bar in stored order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bar {
    pub open_time: i64,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
}

/// A bar the gate judged bad, and why: shown in the report and the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flag {
    pub open_time: i64,
    pub time: String,
    /// The offending price.
    pub value: f64,
    pub why: String,
    /// How far it strayed, in log units: the worst come first.
    #[serde(skip)]
    pub severity: f64,
}

/// The bad ticks of `bars` (stored order, `step` ms apart when consecutive), worst first.
pub fn find(bars: &[Bar], step: i64, rules: &TickRules) -> Vec<Flag> {
    let n = bars.len();
    let usable = |bar: &Bar| {
        [bar.open, bar.high, bar.low, bar.close]
            .iter()
            .all(|x| x.is_finite() && *x > 0.0)
    };
    let consecutive = |i: usize| {
        i > 0
            && bars[i].open_time - bars[i - 1].open_time == step
            && usable(&bars[i])
            && usable(&bars[i - 1])
    };
    // One-bar log returns (NaN where bars are not consecutive) and the local scale.
    let returns: Vec<f64> = (0..n)
        .map(|i| {
            if consecutive(i) {
                (bars[i].close / bars[i - 1].close).ln()
            } else {
                f64::NAN
            }
        })
        .collect();
    let scales = local_scales(&returns);
    // A block's scale, or its neighbours' where they are wilder: a burst of volatility that
    // starts at the end of a block is judged by the block it runs into.
    let scale = |i: usize| {
        let block = i / BLOCK;
        let next = scales.get(block + 1).copied().unwrap_or(0.0);
        let previous = block.checked_sub(1).map_or(0.0, |b| scales[b]);
        scales[block].max(next).max(previous)
    };
    let spike_floor = (1.0 + rules.min_tick_move).ln();
    let wick_floor = (1.0 + rules.min_wick).ln();

    let mut flags = Vec::new();
    let mut flagged = vec![false; n];
    let mut i = 1;
    while i < n {
        let jump = returns[i];
        let threshold = (rules.tick_z * scale(i)).max(spike_floor);
        // NaN (no consecutive pair) is not a jump either.
        if jump.is_nan() || jump.abs() <= threshold {
            i += 1;
            continue;
        }
        let mut back_at = None;
        for j in i + 1..n.min(i + 1 + MAX_EXCURSION) {
            let step_back = returns[j];
            if step_back.is_nan() {
                break;
            }
            let net = (bars[j].close / bars[i - 1].close).ln();
            if step_back.abs() > threshold
                && step_back.signum() != jump.signum()
                && net.abs() <= (1.0 - COME_BACK) * jump.abs()
            {
                back_at = Some(j);
                break;
            }
            // While away, a mis-scaled price moves like the market, which is small next to the
            // jump: a series that drifts back (or on) over several bars is a real move.
            if step_back.abs() > threshold
                || (bars[j].close / bars[i].close).ln().abs() > (1.0 - COME_BACK) * jump.abs()
            {
                break;
            }
        }
        let Some(j) = back_at else {
            i += 1;
            continue;
        };
        for k in i..j {
            flagged[k] = true;
            flags.push(Flag {
                open_time: bars[k].open_time,
                time: crate::util::time::rfc3339(bars[k].open_time.max(0) as u64),
                value: bars[k].close,
                why: format!(
                    "close {} is {:.2}x the close before the spike ({}) and back within {} bar(s)",
                    bars[k].close,
                    bars[k].close / bars[i - 1].close,
                    bars[i - 1].close,
                    j - i
                ),
                severity: (bars[k].close / bars[i - 1].close).ln().abs(),
            });
        }
        i = j + 1;
    }

    for (i, bar) in bars.iter().enumerate() {
        if flagged[i] || !usable(bar) {
            continue;
        }
        let threshold = (rules.wick_z * scale(i)).max(wick_floor);
        let neighbours = [
            i.checked_sub(1).filter(|_| consecutive(i)),
            (i + 1 < n && consecutive(i + 1)).then_some(i + 1),
        ];
        let mut floor = bar.open.min(bar.close);
        let mut ceiling = bar.open.max(bar.close);
        for k in neighbours.into_iter().flatten() {
            floor = floor.min(bars[k].low);
            ceiling = ceiling.max(bars[k].high);
        }
        let below = (floor / bar.low).ln();
        let above = (bar.high / ceiling).ln();
        let (excess, value, side, reference) = if below >= above {
            (below, bar.low, "low", floor)
        } else {
            (above, bar.high, "high", ceiling)
        };
        if excess > threshold {
            flags.push(Flag {
                open_time: bar.open_time,
                time: crate::util::time::rfc3339(bar.open_time.max(0) as u64),
                value,
                why: format!(
                    "{side} {value} is {:.1}% beyond its body and the neighbouring bars' ranges ({reference})",
                    ((excess.exp() - 1.0) * 100.0)
                ),
                severity: excess,
            });
        }
    }
    flags.sort_by(|a, b| {
        b.severity
            .total_cmp(&a.severity)
            .then(a.open_time.cmp(&b.open_time))
    });
    flags
}

/// 1.4826 x the median absolute return of each block of [`BLOCK`] bars; a block with too few
/// returns (or a flat one) takes the whole series' scale.
fn local_scales(returns: &[f64]) -> Vec<f64> {
    let robust = |values: &mut Vec<f64>| {
        if values.len() < 10 {
            return f64::NAN;
        }
        let middle = values.len() / 2;
        let (_, median, _) = values.select_nth_unstable_by(middle, f64::total_cmp);
        1.4826 * *median
    };
    let mut all: Vec<f64> = returns
        .iter()
        .filter(|r| !r.is_nan())
        .map(|r| r.abs())
        .collect();
    let overall = robust(&mut all);
    let overall = if overall > 0.0 { overall } else { 0.0 };
    returns
        .chunks(BLOCK)
        .map(|block| {
            let mut values: Vec<f64> = block
                .iter()
                .filter(|r| !r.is_nan())
                .map(|r| r.abs())
                .collect();
            let local = robust(&mut values);
            if local > 0.0 { local } else { overall }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn walk(n: usize) -> Vec<Bar> {
        // A deterministic wiggle: 1% moves up and down around 100.
        (0..n)
            .map(|i| {
                let close = 100.0 * (1.0 + 0.01 * ((i as f64) * 0.7).sin());
                let open = if i == 0 {
                    100.0
                } else {
                    100.0 * (1.0 + 0.01 * (((i - 1) as f64) * 0.7).sin())
                };
                Bar {
                    open_time: i as i64 * HOUR,
                    open,
                    high: open.max(close) * 1.002,
                    low: open.min(close) * 0.998,
                    close,
                }
            })
            .collect()
    }

    #[test]
    fn a_clean_walk_has_none() {
        assert!(find(&walk(500), HOUR, &TickRules::default()).is_empty());
    }

    #[test]
    fn spikes_that_come_back_are_found_and_moves_that_stay_are_not() {
        for factor in [10.0, 0.1, 1.5] {
            let mut bars = walk(500);
            let bar = &mut bars[200];
            (bar.open, bar.high, bar.low, bar.close) = (
                bar.open * factor,
                bar.high * factor,
                bar.low * factor,
                bar.close * factor,
            );
            let flags = find(&bars, HOUR, &TickRules::default());
            assert_eq!(flags.len(), 1, "{factor}: {flags:?}");
            assert_eq!(flags[0].open_time, 200 * HOUR);
            assert!(
                flags[0].why.contains("back within 1 bar"),
                "{}",
                flags[0].why
            );
        }
        // Three bars away, then back.
        let mut bars = walk(500);
        for bar in &mut bars[300..303] {
            bar.close *= 3.0;
            bar.high *= 3.0;
            bar.open *= 3.0;
            bar.low *= 3.0;
        }
        let flags = find(&bars, HOUR, &TickRules::default());
        assert_eq!(
            flags.iter().map(|f| f.open_time / HOUR).collect::<Vec<_>>(),
            [300, 301, 302]
        );
        // A crash that persists is a real move.
        let mut bars = walk(500);
        for bar in &mut bars[250..] {
            bar.close *= 0.5;
            bar.high *= 0.5;
            bar.open *= 0.5;
            bar.low *= 0.5;
        }
        assert!(find(&bars, HOUR, &TickRules::default()).is_empty());
    }

    #[test]
    fn wicks_far_beyond_the_neighbours_are_found() {
        let mut bars = walk(500);
        bars[100].low *= 1e-4;
        bars[400].high *= 3.0;
        let flags = find(&bars, HOUR, &TickRules::default());
        let times: Vec<i64> = flags.iter().map(|f| f.open_time / HOUR).collect();
        assert_eq!(times, [100, 400], "worst first: {flags:?}");
        assert!(flags[0].why.starts_with("low "), "{}", flags[0].why);
        // Not across a gap: the neighbour a missing bar away is no neighbour.
        let mut gapped = walk(10);
        gapped[5].open_time += HOUR;
        assert!(find(&gapped, HOUR, &TickRules::default()).is_empty());
    }
}
