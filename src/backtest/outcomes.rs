//! The distribution of outcomes a strategy's history allows: a stationary block bootstrap of its
//! per-bar portfolio returns (Politis and Romano, 1994), and value at risk.
//!
//! A path has as many bars as the history. It starts at a uniformly drawn bar; after each bar it
//! goes on to the next one (wrapping from the last to the first) with probability `1 - 1/block`
//! and jumps to a new uniformly drawn bar otherwise, so blocks have a geometric length of mean
//! `block` and the resampled series is stationary. Blocks keep the returns' short-range
//! dependence (volatility clusters, a trade's consecutive bars); `block: 1` is the plain i.i.d.
//! bootstrap, which destroys it.
//!
//! Each path draws from its own generator, seeded from `seed` and the path's number, so the
//! figures are the same for any number of threads. Percentiles interpolate linearly between
//! order statistics (numpy's default). Value at risk and expected shortfall are over 1-day
//! returns, as positive losses: VaR(95%) is minus the 5th percentile of daily returns, ES(95%)
//! minus the mean of the returns at or below it. Historical figures compound the history's bars
//! by UTC day; bootstrap figures pool the paths' consecutive 1-day stretches.

use serde::{Deserialize, Serialize};

use crate::util::rng::{Rng, mix};

/// `monte_carlo:` settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonteCarlo {
    /// Resampled paths.
    pub paths: usize,
    /// The mean block length, in bars.
    pub block: f64,
    pub seed: u64,
}

impl Default for MonteCarlo {
    fn default() -> Self {
        Self {
            paths: 2000,
            block: 24.0,
            seed: 1,
        }
    }
}

/// The 5th, 50th and 95th percentiles of a figure over the paths.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p5: f64,
    pub p50: f64,
    pub p95: f64,
}

/// 1-day value at risk and expected shortfall at 95% and 99%, as positive fractions lost.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Risk {
    pub days: usize,
    pub var_95: Option<f64>,
    pub es_95: Option<f64>,
    pub var_99: Option<f64>,
    pub es_99: Option<f64>,
}

/// What the bootstrap says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcomes {
    pub settings: MonteCarlo,
    pub bars: usize,
    pub total_return: Percentiles,
    /// Negative fractions, like the backtest's.
    pub max_drawdown: Percentiles,
    /// Annualised, from each path's per-bar returns; paths with flat returns left out.
    pub sharpe: Option<Percentiles>,
    /// The share of paths whose deepest drawdown is worse than each level (10%, 20%, 30%, 50%).
    pub drawdown_worse_than: Vec<(f64, f64)>,
    /// The share of paths that end below their start.
    pub ending_below_start: f64,
    pub historical: Risk,
    pub bootstrap: Risk,
    /// The fan chart: at evenly spaced bars, the 5th, 25th, 50th, 75th and 95th percentiles of
    /// equity over the paths, as multiples of the start.
    pub fan: Vec<(usize, [f64; 5])>,
    /// The histogram of the paths' deepest drawdowns: (lower edge, upper edge, paths).
    pub drawdown_histogram: Vec<(f64, f64, usize)>,
}

/// Drawdown levels whose probabilities are reported.
pub const DRAWDOWN_LEVELS: [f64; 4] = [0.1, 0.2, 0.3, 0.5];
/// Points on the fan chart.
const FAN_POINTS: usize = 100;
const HISTOGRAM_BINS: usize = 20;

/// The bar indices of one stationary-bootstrap path over `bars` bars.
pub struct StationaryPath {
    rng: Rng,
    bars: usize,
    stay: f64,
    at: usize,
    started: bool,
}

impl StationaryPath {
    pub fn new(bars: usize, block: f64, seed: u64, path: u64) -> Self {
        Self {
            rng: Rng::new(mix(seed ^ mix(path.wrapping_add(0x9e37_79b9_7f4a_7c15)))),
            bars,
            stay: 1.0 - 1.0 / block.max(1.0),
            at: 0,
            started: false,
        }
    }

    fn draw(&mut self) -> usize {
        ((self.rng.next_u64() >> 11) as usize) % self.bars
    }
}

impl Iterator for StationaryPath {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.bars == 0 {
            return None;
        }
        self.at = if self.started && self.rng.uniform() < self.stay {
            (self.at + 1) % self.bars
        } else {
            self.draw()
        };
        self.started = true;
        Some(self.at)
    }
}

/// One path's figures.
struct PathFigures {
    total_return: f64,
    max_drawdown: f64,
    sharpe: Option<f64>,
    fan: Vec<f64>,
    daily: Vec<f64>,
}

fn simulate(
    returns: &[f64],
    settings: &MonteCarlo,
    path: u64,
    periods_per_year: f64,
    bars_per_day: usize,
    fan_at: &[usize],
) -> PathFigures {
    let n = returns.len();
    let (mut equity, mut peak, mut max_drawdown) = (1.0f64, 1.0f64, 0.0f64);
    // Welford's running mean and sum of squared deviations: exact zero for flat returns.
    let (mut mean, mut deviations) = (0.0f64, 0.0f64);
    let mut fan = Vec::with_capacity(fan_at.len());
    let mut next_fan = 0;
    let mut daily = Vec::with_capacity(n / bars_per_day.max(1));
    let mut day_start = 1.0;
    for (bar, index) in StationaryPath::new(n, settings.block, settings.seed, path)
        .take(n)
        .enumerate()
    {
        let ret = returns[index];
        let delta = ret - mean;
        mean += delta / (bar + 1) as f64;
        deviations += delta * (ret - mean);
        equity *= 1.0 + ret;
        peak = peak.max(equity);
        max_drawdown = max_drawdown.min(equity / peak - 1.0);
        if next_fan < fan_at.len() && fan_at[next_fan] == bar {
            fan.push(equity);
            next_fan += 1;
        }
        if bars_per_day > 0 && (bar + 1) % bars_per_day == 0 {
            daily.push(equity / day_start - 1.0);
            day_start = equity;
        }
    }
    let variance = deviations / (n as f64 - 1.0).max(1.0);
    let sharpe = (variance > 0.0 && variance.is_finite())
        .then(|| mean / variance.sqrt() * periods_per_year.sqrt());
    PathFigures {
        total_return: equity - 1.0,
        max_drawdown,
        sharpe,
        fan,
        daily,
    }
}

/// Per-bar returns of an equity curve that starts from `initial`.
pub fn bar_returns(equity: &[f64], initial: f64) -> Vec<f64> {
    let mut previous = initial;
    equity
        .iter()
        .map(|&value| {
            let ret = value / previous - 1.0;
            previous = value;
            ret
        })
        .collect()
}

/// The linearly interpolated `q`-quantile (0 to 1) of `sorted`.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let position = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (low, high) = (position.floor() as usize, position.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (position - low as f64)
}

fn percentiles(mut values: Vec<f64>) -> Option<Percentiles> {
    values.retain(|value| value.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(Percentiles {
        p5: quantile(&values, 0.05),
        p50: quantile(&values, 0.5),
        p95: quantile(&values, 0.95),
    })
}

/// VaR and ES of `daily` returns at 95% and 99%.
pub fn value_at_risk(mut daily: Vec<f64>) -> Risk {
    daily.retain(|value| value.is_finite());
    daily.sort_by(f64::total_cmp);
    let at = |level: f64| {
        if daily.is_empty() {
            return (None, None);
        }
        let cut = quantile(&daily, 1.0 - level);
        let tail: Vec<f64> = daily.iter().copied().filter(|&r| r <= cut).collect();
        let shortfall = tail.iter().sum::<f64>() / tail.len().max(1) as f64;
        (Some(-cut), Some(-shortfall))
    };
    let (var_95, es_95) = at(0.95);
    let (var_99, es_99) = at(0.99);
    Risk {
        days: daily.len(),
        var_95,
        es_95,
        var_99,
        es_99,
    }
}

/// The history's 1-day returns: its bars compounded by the UTC day of their open time.
pub fn daily_returns(times: &[i64], returns: &[f64]) -> Vec<f64> {
    const DAY_MS: i64 = 86_400_000;
    let mut out = Vec::new();
    let mut current: Option<(i64, f64)> = None;
    for (&time, &ret) in times.iter().zip(returns) {
        let day = time.div_euclid(DAY_MS);
        match &mut current {
            Some((open_day, growth)) if *open_day == day => *growth *= 1.0 + ret,
            _ => {
                if let Some((_, growth)) = current.take() {
                    out.push(growth - 1.0);
                }
                current = Some((day, 1.0 + ret));
            }
        }
    }
    if let Some((_, growth)) = current {
        out.push(growth - 1.0);
    }
    out
}

/// The bootstrap of per-bar `returns` (bars opening at `times`, `bar_ms` long). `None` for a
/// history too short to resample (under two bars) or no paths.
pub fn bootstrap(
    times: &[i64],
    returns: &[f64],
    bar_ms: i64,
    settings: &MonteCarlo,
    threads: usize,
) -> Option<Outcomes> {
    let n = returns.len();
    if n < 2 || settings.paths == 0 {
        return None;
    }
    let periods_per_year = super::metrics::periods_per_year(bar_ms);
    let bars_per_day = (86_400_000 / bar_ms.max(1)).max(1) as usize;
    let points = FAN_POINTS.min(n);
    let fan_at: Vec<usize> = (1..=points).map(|k| k * n / points - 1).collect();
    let figures: Vec<PathFigures> = crate::util::parallel::map(settings.paths, threads, |path| {
        simulate(
            returns,
            settings,
            path as u64,
            periods_per_year,
            bars_per_day,
            &fan_at,
        )
    });
    let paths = figures.len() as f64;
    let drawdowns: Vec<f64> = figures.iter().map(|path| path.max_drawdown).collect();
    let deepest = drawdowns.iter().copied().fold(0.0f64, f64::min);
    let width = -deepest / HISTOGRAM_BINS as f64;
    let drawdown_histogram = if width > 0.0 {
        // Each path in the bin its drawdown falls in; the deepest edge and 0 inclusive.
        let mut counts = [0usize; HISTOGRAM_BINS];
        for &dd in &drawdowns {
            let bin = ((dd - deepest) / width).floor().max(0.0) as usize;
            counts[bin.min(HISTOGRAM_BINS - 1)] += 1;
        }
        counts
            .iter()
            .enumerate()
            .map(|(bin, &count)| {
                let low = deepest + bin as f64 * width;
                (low, low + width, count)
            })
            .collect()
    } else {
        vec![(0.0, 0.0, figures.len())]
    };
    let fan = fan_at
        .iter()
        .enumerate()
        .map(|(point, &bar)| {
            let mut values: Vec<f64> = figures.iter().map(|path| path.fan[point]).collect();
            values.sort_by(f64::total_cmp);
            (
                bar,
                [0.05, 0.25, 0.5, 0.75, 0.95].map(|q| quantile(&values, q)),
            )
        })
        .collect();
    Some(Outcomes {
        settings: *settings,
        bars: n,
        total_return: percentiles(figures.iter().map(|path| path.total_return).collect())?,
        max_drawdown: percentiles(drawdowns.clone())?,
        sharpe: percentiles(figures.iter().filter_map(|path| path.sharpe).collect()),
        drawdown_worse_than: DRAWDOWN_LEVELS
            .iter()
            .map(|&level| {
                let worse = drawdowns.iter().filter(|&&dd| dd < -level).count();
                (level, worse as f64 / paths)
            })
            .collect(),
        ending_below_start: figures
            .iter()
            .filter(|path| path.total_return < 0.0)
            .count() as f64
            / paths,
        historical: value_at_risk(daily_returns(times, returns)),
        bootstrap: value_at_risk(figures.into_iter().flat_map(|path| path.daily).collect()),
        fan,
        drawdown_histogram,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn hours(n: usize) -> Vec<i64> {
        (0..n as i64).map(|i| i * HOUR).collect()
    }

    fn normal_returns(n: usize, sigma: f64, seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| sigma * rng.normal()).collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_figures_for_any_thread_count() {
        let returns = normal_returns(2000, 0.01, 3);
        let settings = MonteCarlo {
            paths: 200,
            block: 24.0,
            seed: 7,
        };
        let one = bootstrap(&hours(2000), &returns, HOUR, &settings, 1).unwrap();
        let four = bootstrap(&hours(2000), &returns, HOUR, &settings, 4).unwrap();
        assert_eq!(one, four);
        let other = bootstrap(
            &hours(2000),
            &returns,
            HOUR,
            &MonteCarlo {
                seed: 8,
                ..settings
            },
            2,
        )
        .unwrap();
        assert_ne!(one.total_return, other.total_return);
    }

    #[test]
    fn on_iid_normal_returns_the_percentiles_match_the_analytic_distribution() {
        // With block 1 a path is n independent draws from the sample, so its log growth is
        // normal with n times the sample's mean and variance of log(1 + r).
        let n = 5000;
        let returns = normal_returns(n, 0.004, 11);
        let logs: Vec<f64> = returns.iter().map(|r| r.ln_1p()).collect();
        let mean = logs.iter().sum::<f64>() / n as f64;
        let sd = (logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        let (centre, spread) = (n as f64 * mean, (n as f64).sqrt() * sd);
        let outcomes = bootstrap(
            &hours(n),
            &returns,
            HOUR,
            &MonteCarlo {
                paths: 4000,
                block: 1.0,
                seed: 1,
            },
            2,
        )
        .unwrap();
        // A percentile of 4000 draws is off by about 0.03 spreads (0.05 at the tails).
        for (got, z) in [
            (outcomes.total_return.p5, -1.6449),
            (outcomes.total_return.p50, 0.0),
            (outcomes.total_return.p95, 1.6449),
        ] {
            let got_z = ((1.0 + got).ln() - centre) / spread;
            assert!((got_z - z).abs() < 0.12, "z {got_z} where {z} was expected");
        }
        // Half the paths end below the start when the sample's log drift is about zero.
        let below = outcomes.ending_below_start;
        let expected = 0.5 * (1.0 + erf(-centre / spread / std::f64::consts::SQRT_2));
        assert!((below - expected).abs() < 0.04, "{below} vs {expected}");
    }

    /// Abramowitz and Stegun 7.1.26 (|error| < 1.5e-7).
    fn erf(x: f64) -> f64 {
        let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
        let y = 1.0
            - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736)
                * t
                + 0.254_829_592)
                * t
                * (-x * x).exp();
        y.copysign(x)
    }

    fn lag_one_autocorrelation(values: &[f64]) -> f64 {
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let (mut numerator, mut denominator) = (0.0, 0.0);
        for pair in values.windows(2) {
            numerator += (pair[0] - mean) * (pair[1] - mean);
        }
        for value in values {
            denominator += (value - mean).powi(2);
        }
        numerator / denominator
    }

    #[test]
    fn blocks_keep_the_autocorrelation_that_single_draws_destroy() {
        // AR(1) with coefficient 0.5.
        let mut rng = Rng::new(5);
        let mut series = vec![0.0f64; 50_000];
        for i in 1..series.len() {
            series[i] = 0.5 * series[i - 1] + rng.normal();
        }
        let resampled = |block: f64| -> Vec<f64> {
            StationaryPath::new(series.len(), block, 9, 0)
                .take(series.len())
                .map(|i| series[i])
                .collect()
        };
        let original = lag_one_autocorrelation(&series);
        let blocks = lag_one_autocorrelation(&resampled(50.0));
        let single = lag_one_autocorrelation(&resampled(1.0));
        // A jump (probability 1/50) breaks the pair; a continued pair keeps its correlation.
        assert!(
            (blocks - original * (1.0 - 1.0 / 50.0)).abs() < 0.03,
            "{blocks} vs {original}"
        );
        assert!(single.abs() < 0.03, "{single}");
    }

    #[test]
    fn value_at_risk_and_shortfall_by_hand() {
        // Twenty daily returns: -10%, -5%, then eighteen of +1%.
        let mut daily = vec![-0.10, -0.05];
        daily.extend(std::iter::repeat_n(0.01, 18));
        let risk = value_at_risk(daily);
        // The 5th percentile sits at position 0.95 of 19 between -0.10 and -0.05: -0.0525.
        assert!((risk.var_95.unwrap() - 0.0525).abs() < 1e-12);
        // Only -0.10 is at or below it.
        assert!((risk.es_95.unwrap() - 0.10).abs() < 1e-12);
        // The 1st percentile: position 0.19, -0.10 + 0.19 * 0.05.
        assert!((risk.var_99.unwrap() - 0.0905).abs() < 1e-12);
        assert_eq!(risk.days, 20);
    }

    #[test]
    fn daily_returns_compound_the_bars_of_each_utc_day() {
        let times = [0, HOUR, 86_400_000, 86_400_000 + HOUR];
        let daily = daily_returns(&times, &[0.1, 0.1, -0.5, 0.0]);
        assert!((daily[0] - 0.21).abs() < 1e-12);
        assert!((daily[1] + 0.5).abs() < 1e-12);
    }

    #[test]
    fn a_steady_gain_never_draws_down_and_never_ends_below_the_start() {
        let returns = vec![0.001; 500];
        let outcomes = bootstrap(&hours(500), &returns, HOUR, &MonteCarlo::default(), 2).unwrap();
        assert_eq!(outcomes.max_drawdown.p5, 0.0);
        assert_eq!(outcomes.ending_below_start, 0.0);
        assert!((outcomes.total_return.p50 - (1.001f64.powi(500) - 1.0)).abs() < 1e-9);
        assert!(outcomes.sharpe.is_none(), "flat returns have no Sharpe");
        assert_eq!(outcomes.fan.len(), 100);
        assert_eq!(
            outcomes
                .drawdown_histogram
                .iter()
                .map(|bin| bin.2)
                .sum::<usize>(),
            2000,
            "every path in one bin"
        );
        assert_eq!(outcomes.fan.last().unwrap().0, 499);
    }
}
