//! Performance figures of an equity curve and of a list of trades (DOMAIN.md section 5).
//!
//! Returns are per bar, `equity[i] / equity[i-1] - 1` with the initial capital before the first
//! bar. Crypto trades around the clock, so a year is `365 days / bar` periods (8760 for 1h).
//! Sharpe and Sortino use no risk-free rate; Sortino's downside deviation is the root mean
//! square of the negative returns over all periods. A figure that is undefined (no trades, no
//! losses, a flat curve) is `None`, written as `null`, never a made-up number.

use serde::{Deserialize, Serialize};

use super::engine::Trade;

const YEAR_MS: f64 = 365.0 * 24.0 * 3_600_000.0;

/// Periods in a year of bars `bar_ms` long (8760 for 1h, 2190 for 4h, 365 for 1d).
pub fn periods_per_year(bar_ms: i64) -> f64 {
    YEAR_MS / bar_ms as f64
}

/// What an equity curve says.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Performance {
    pub initial: f64,
    pub final_equity: f64,
    pub total_return: f64,
    pub cagr: Option<f64>,
    /// Annualised standard deviation of the returns.
    pub volatility: Option<f64>,
    pub sharpe: Option<f64>,
    pub sortino: Option<f64>,
    pub calmar: Option<f64>,
    /// The deepest fall from a running peak, as a negative fraction (0 when none).
    pub max_drawdown: f64,
    /// The longest time spent below a previous peak, in bars.
    pub max_drawdown_bars: usize,
    pub max_drawdown_ms: i64,
}

/// The figures of `equity` (one value per bar close) starting from `initial`.
pub fn performance(equity: &[f64], initial: f64, bar_ms: i64) -> Performance {
    let periods = periods_per_year(bar_ms);
    let count = equity.len();
    let final_equity = equity.last().copied().unwrap_or(initial);
    let total_return = final_equity / initial - 1.0;
    let mut previous = initial;
    let (mut sum, mut sum_squares, mut downside) = (0.0, 0.0, 0.0);
    let mut peak = initial;
    let (mut max_drawdown, mut below_since, mut longest) = (0.0f64, None, 0usize);
    for (bar, &value) in equity.iter().enumerate() {
        let ret = value / previous - 1.0;
        previous = value;
        sum += ret;
        sum_squares += ret * ret;
        downside += ret.min(0.0).powi(2);
        if value >= peak {
            peak = value;
            if let Some(start) = below_since.take() {
                longest = longest.max(bar - start);
            }
        } else {
            max_drawdown = max_drawdown.min(value / peak - 1.0);
            // Underwater from the bar before this one (the peak) on.
            below_since.get_or_insert(bar);
        }
    }
    if let Some(start) = below_since {
        longest = longest.max(count - start);
    }
    let n = count as f64;
    let mean = if count > 0 { sum / n } else { 0.0 };
    let std = (count > 1).then(|| {
        ((sum_squares - n * mean * mean) / (n - 1.0))
            .max(0.0)
            .sqrt()
    });
    let positive = |value: f64| (value > 0.0 && value.is_finite()).then_some(value);
    let sharpe = std
        .and_then(positive)
        .map(|std| mean / std * periods.sqrt());
    let downside_deviation = (count > 0).then(|| (downside / n).sqrt());
    let sortino = downside_deviation
        .and_then(positive)
        .map(|deviation| mean / deviation * periods.sqrt());
    let cagr = (count > 0 && final_equity > 0.0)
        .then(|| (final_equity / initial).powf(periods / n) - 1.0)
        .filter(|value| value.is_finite());
    let calmar = cagr
        .filter(|_| max_drawdown < 0.0)
        .map(|cagr| cagr / -max_drawdown);
    Performance {
        initial,
        final_equity,
        total_return,
        cagr,
        volatility: std.map(|std| std * periods.sqrt()),
        sharpe,
        sortino,
        calmar,
        max_drawdown,
        max_drawdown_bars: longest,
        max_drawdown_ms: longest as i64 * bar_ms,
    }
}

/// What the trades say.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TradeStats {
    pub trades: usize,
    pub wins: usize,
    pub win_rate: Option<f64>,
    pub gross_profit: f64,
    pub gross_loss: f64,
    /// Gross profit over gross loss; `None` without a losing trade.
    pub profit_factor: Option<f64>,
    /// The mean profit per trade, in account currency.
    pub expectancy: Option<f64>,
    /// The mean bars from entry to exit.
    pub average_bars: Option<f64>,
    pub fees: f64,
    pub funding: f64,
    pub long: usize,
    pub short: usize,
}

/// The trades' P&L with their fees added back: is there an edge before costs, and is it more
/// than chance? `t_stat` is the mean over its standard error (`None` below two trades).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BeforeFees {
    pub pnl: f64,
    pub mean: Option<f64>,
    pub t_stat: Option<f64>,
}

pub fn before_fees(trades: &[Trade]) -> BeforeFees {
    let n = trades.len();
    let values = trades.iter().map(|trade| trade.pnl + trade.fees);
    let pnl: f64 = values.clone().sum();
    if n == 0 {
        return BeforeFees::default();
    }
    let mean = pnl / n as f64;
    let t_stat = (n >= 2)
        .then(|| {
            let variance = values.map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            (variance > 0.0).then(|| mean / (variance / n as f64).sqrt())
        })
        .flatten();
    BeforeFees {
        pnl,
        mean: Some(mean),
        t_stat,
    }
}

pub fn trade_stats(trades: &[Trade]) -> TradeStats {
    let count = trades.len();
    let wins = trades.iter().filter(|trade| trade.pnl > 0.0).count();
    let gross_profit: f64 = trades.iter().map(|t| t.pnl.max(0.0)).sum();
    let gross_loss: f64 = trades.iter().map(|t| (-t.pnl).max(0.0)).sum();
    let total: f64 = trades.iter().map(|t| t.pnl).sum();
    let bars: usize = trades.iter().map(|t| t.exit_bar - t.entry_bar).sum();
    let mean = |value: f64| (count > 0).then(|| value / count as f64);
    TradeStats {
        trades: count,
        wins,
        win_rate: mean(wins as f64),
        gross_profit,
        gross_loss,
        profit_factor: (gross_loss > 0.0).then(|| gross_profit / gross_loss),
        expectancy: mean(total),
        average_bars: mean(bars as f64),
        fees: trades.iter().map(|t| t.fees).sum(),
        funding: trades.iter().map(|t| t.funding).sum(),
        long: trades.iter().filter(|t| t.side > 0).count(),
        short: trades.iter().filter(|t| t.side < 0).count(),
    }
}

/// The share of bars with at least one position open.
pub fn exposure(positions: &[u32]) -> f64 {
    if positions.is_empty() {
        return 0.0;
    }
    positions.iter().filter(|&&open| open > 0).count() as f64 / positions.len() as f64
}

/// Drawdown at each point of `equity` (0 at a new peak, negative below one).
pub fn drawdown_curve(equity: &[f64], initial: f64) -> Vec<f64> {
    let mut peak = initial;
    equity
        .iter()
        .map(|&value| {
            peak = peak.max(value);
            value / peak - 1.0
        })
        .collect()
}

/// Returns by calendar month (UTC): `(year, month, return)`, from each month's last close to
/// the next's, the first month from `initial`.
pub fn monthly_returns(times: &[i64], equity: &[f64], initial: f64) -> Vec<(i32, u32, f64)> {
    let mut months: Vec<(i32, u32, f64)> = Vec::new();
    let mut start = initial;
    let mut last: Option<(i32, u32, f64)> = None;
    for (&time, &value) in times.iter().zip(equity) {
        let (year, month) = crate::util::time::year_month(time);
        match last {
            Some((y, m, end)) if (y, m) != (year, month) => {
                months.push((y, m, end / start - 1.0));
                start = end;
            }
            _ => {}
        }
        last = Some((year, month, value));
    }
    if let Some((year, month, end)) = last {
        months.push((year, month, end / start - 1.0));
    }
    months
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backtest::engine::ExitReason;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn periods_per_year_follow_a_24_7_market() {
        assert_eq!(periods_per_year(HOUR), 8760.0);
        assert_eq!(periods_per_year(4 * HOUR), 2190.0);
        assert_eq!(periods_per_year(24 * HOUR), 365.0);
    }

    #[test]
    fn a_constructed_curve_has_the_figures_worked_out_by_hand() {
        // Returns +2%, -1%, +2%, -1% from 100 (hourly):
        //   equity 102, 100.98, 103.0, 101.97
        //   mean 0.005; deviations +-0.015, sample variance 4 * 0.000225 / 3 = 0.0003
        //   Sharpe = 0.005 / 0.0173205 * sqrt(8760) = 27.0185
        //   downside deviation = sqrt(2 * 0.0001 / 4) = 0.0070711; Sortino = 0.005 / that *
        //   sqrt(8760) = 66.1816
        //   drawdown: -1% twice (102 -> 100.98, 102.9996 -> 101.97), each one bar long
        let equity = [102.0, 100.98, 102.9996, 101.969604];
        let performance = performance(&equity, 100.0, HOUR);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-3 * b.abs().max(1.0);
        assert!(
            close(performance.sharpe.unwrap(), 27.0185),
            "{performance:?}"
        );
        assert!(
            close(performance.sortino.unwrap(), 66.1816),
            "{performance:?}"
        );
        assert!(
            (performance.max_drawdown + 0.01).abs() < 1e-9,
            "{performance:?}"
        );
        assert_eq!(performance.max_drawdown_bars, 1);
        assert_eq!(performance.max_drawdown_ms, HOUR);
        assert!((performance.total_return - 0.01969604).abs() < 1e-9);
        // CAGR: 1.01969604 ^ (8760 / 4) - 1, and Calmar is CAGR over 1%.
        let cagr = 1.01969604f64.powf(2190.0) - 1.0;
        assert!(close(performance.cagr.unwrap(), cagr));
        assert!(close(performance.calmar.unwrap(), cagr / 0.01));
    }

    #[test]
    fn drawdown_duration_counts_bars_under_water_until_recovery_or_the_end() {
        // Peak 110 at bar 0; under water at bars 1, 2, 3; recovered at bar 4 (3 bars).
        // Then a new dip from bar 5 to the end (2 bars): the longest stays 3.
        let equity = [110.0, 100.0, 88.0, 105.0, 111.0, 109.0, 108.0];
        let performance = performance(&equity, 100.0, HOUR);
        assert_eq!(performance.max_drawdown_bars, 3);
        assert!((performance.max_drawdown - (88.0 / 110.0 - 1.0)).abs() < 1e-12);
        let curve = drawdown_curve(&equity, 100.0);
        assert_eq!(curve[0], 0.0);
        assert!((curve[2] + 0.2).abs() < 1e-12);
        assert_eq!(curve[4], 0.0);
    }

    #[test]
    fn a_flat_curve_has_no_ratios_rather_than_invented_ones() {
        let performance = performance(&[100.0, 100.0, 100.0], 100.0, HOUR);
        assert_eq!(performance.sharpe, None);
        assert_eq!(performance.sortino, None);
        assert_eq!(performance.calmar, None);
        assert_eq!(performance.max_drawdown, 0.0);
        assert_eq!(performance.total_return, 0.0);
    }

    fn trade(pnl: f64, bars: usize) -> Trade {
        Trade {
            symbol: 0,
            side: 1,
            entry_bar: 10,
            exit_bar: 10 + bars,
            entry_price: 1.0,
            exit_price: 1.0,
            units: 1.0,
            fees: 0.5,
            funding: 0.0,
            pnl,
            exit_reason: ExitReason::Horizon,
        }
    }

    #[test]
    fn profit_factor_win_rate_and_expectancy_of_known_trades() {
        let stats = trade_stats(&[
            trade(30.0, 2),
            trade(-10.0, 4),
            trade(20.0, 3),
            trade(-15.0, 1),
        ]);
        assert_eq!(stats.trades, 4);
        assert_eq!(stats.win_rate, Some(0.5));
        assert_eq!(stats.profit_factor, Some(2.0));
        assert_eq!(stats.expectancy, Some(6.25));
        assert_eq!(stats.average_bars, Some(2.5));
        assert_eq!(stats.fees, 2.0);
        let none = trade_stats(&[trade(5.0, 1)]);
        assert_eq!(none.profit_factor, None, "no losing trade: undefined");
        assert_eq!(trade_stats(&[]).win_rate, None);
    }

    #[test]
    fn before_fees_adds_the_fees_back_and_scores_the_mean_against_chance() {
        // P&L before fees 30.5, -9.5, 20.5, -14.5: mean 6.75, sample variance 1468.75 / 3,
        // standard error sqrt(489.583 / 4) = 11.0633, t = 0.61013.
        let before = before_fees(&[
            trade(30.0, 2),
            trade(-10.0, 4),
            trade(20.0, 3),
            trade(-15.0, 1),
        ]);
        assert_eq!(before.pnl, 27.0);
        assert_eq!(before.mean, Some(6.75));
        assert!(
            (before.t_stat.unwrap() - 0.610_13).abs() < 1e-5,
            "{before:?}"
        );
        assert_eq!(before_fees(&[trade(1.0, 1)]).t_stat, None);
        assert_eq!(before_fees(&[]), BeforeFees::default());
    }

    #[test]
    fn monthly_returns_chain_month_end_to_month_end() {
        // 2026-01-31T23:00Z, 2026-02-01T00:00Z, 2026-02-28T23:00Z, 2026-03-01T00:00Z
        let times = [
            1_769_900_400_000,
            1_769_904_000_000,
            1_772_319_600_000,
            1_772_323_200_000,
        ];
        let equity = [110.0, 99.0, 121.0, 121.0];
        let months = monthly_returns(&times, &equity, 100.0);
        assert_eq!(months.len(), 3);
        assert_eq!((months[0].0, months[0].1), (2026, 1));
        assert!((months[0].2 - 0.10).abs() < 1e-12);
        assert!((months[1].2 - 0.10).abs() < 1e-12, "{months:?}");
        assert_eq!(months[2].2, 0.0);
    }
}
