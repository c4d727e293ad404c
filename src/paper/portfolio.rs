//! The paper portfolio: the book's signals traded as one account under the backtest's rules
//! (`backtest::simulate`: sizing, the cap on positions, the daily loss limit, the correlation
//! cap, stops, targets, fees, slippage and funding), re-derived from the book and the lake on
//! every run like the ledger.
//!
//! Where the ledger prices every signal on its own, the portfolio says which of them an
//! account with these rules would have taken, at what size, and what it would have made. The
//! grid starts early enough before the first signal for the trailing windows (correlation,
//! volatility) to be full at it: those prices were known when the signal was published.

use serde::{Deserialize, Serialize};

use super::Signal;
use crate::backtest::{ExitReason, FLAT, Market, Rules, SHORT, Signals, Simulation, Skipped};

/// The portfolio's figures in `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortfolioSummary {
    /// The rules that are on, in words.
    pub rules: String,
    pub capital: f64,
    /// Equity at the newest close, open positions marked to it less their exit's costs.
    pub equity: f64,
    pub total_return: f64,
    pub max_drawdown: f64,
    /// Round trips closed by a stop, a target, the horizon or a reversal.
    pub closed: usize,
    /// Positions still open at the newest bar.
    pub open: usize,
    /// Signals on the newest bar, waiting for the next open.
    pub pending: u64,
    /// The share of closed trades with a positive P&L.
    pub hit_rate: Option<f64>,
    pub fees: f64,
    pub funding: f64,
    /// Signals the rules did not take, by rule.
    pub skipped: Skipped,
}

/// The book's signals on a grid of `market`: the side each asked for, ranked by the chosen
/// class's probability, with the opposite class's probability for Kelly sizing. `long` and
/// `short` index `Signal::probabilities`; `short` is `None` when the model has no down class
/// (everything but the long class then counts against a long).
pub fn grid_signals(
    market: &Market,
    signals: &[Signal],
    long: usize,
    short: Option<usize>,
) -> Signals {
    let mut grid = Signals::flat(market.cells());
    for signal in signals.iter().filter(|s| s.side != FLAT) {
        let Ok(symbol) = market
            .symbols
            .binary_search_by(|name| name.as_str().cmp(&signal.symbol))
        else {
            continue;
        };
        let Some(cell) = market.cell_at(symbol, signal.open_time) else {
            continue;
        };
        let p = |index: usize| {
            signal
                .probabilities
                .get(index)
                .copied()
                .filter(|v| v.is_finite())
                .unwrap_or(0.0)
        };
        let p_long = p(long);
        let p_short = short.map_or(1.0 - p_long, p);
        let (score, against) = if signal.side == SHORT {
            (p_short, p_long)
        } else {
            (p_long, p_short)
        };
        grid.side[cell] = signal.side;
        grid.score[cell] = score as f32;
        grid.against[cell] = against as f32;
    }
    grid
}

/// Bars of price history the rules read before a signal: the longest trailing window.
pub fn lookback(rules: &Rules) -> usize {
    let correlation = rules.portfolio.correlation.map_or(0, |cap| cap.window);
    let volatility = match rules.portfolio.sizing {
        crate::backtest::Sizing::Volatility { window, .. } => window,
        _ => 0,
    };
    correlation.max(volatility) + 1
}

/// The figures of a simulation over the book, with positions still open at the newest bar
/// (closed there by the simulation with reason `end`) counted as open.
pub fn summarise(simulation: &Simulation, rules: &Rules, described: String) -> PortfolioSummary {
    let closed: Vec<_> = simulation
        .trades
        .iter()
        .filter(|t| t.exit_reason != ExitReason::End)
        .collect();
    let equity = simulation.equity.last().copied().unwrap_or(rules.capital);
    let drawdown = crate::backtest::metrics::drawdown_curve(&simulation.equity, rules.capital);
    let mut skipped = simulation.skipped;
    let pending = std::mem::take(&mut skipped.last_bar);
    PortfolioSummary {
        rules: described,
        capital: rules.capital,
        equity,
        total_return: equity / rules.capital - 1.0,
        max_drawdown: drawdown.iter().copied().fold(0.0, f64::min),
        closed: closed.len(),
        open: simulation.trades.len() - closed.len(),
        pending,
        hit_rate: (!closed.is_empty())
            .then(|| closed.iter().filter(|t| t.pnl > 0.0).count() as f64 / closed.len() as f64),
        fees: simulation.fees,
        funding: simulation.funding,
        skipped,
    }
}

/// `signals skipped: daily loss limit 37, correlation cap 12` (the rules that skipped any).
pub fn skipped_words(skipped: &Skipped) -> String {
    let counts = [
        ("positions cap", skipped.capacity),
        ("daily loss limit", skipped.daily_loss_limit),
        ("correlation cap", skipped.correlation),
        ("sizing", skipped.sizing),
        ("below the minimum size", skipped.too_small),
        ("no bar to fill at", skipped.no_bar),
    ];
    let words: Vec<String> = counts
        .iter()
        .filter(|(_, count)| *count > 0)
        .map(|(rule, count)| format!("{rule} {count}"))
        .collect();
    if words.is_empty() {
        "none skipped".to_owned()
    } else {
        format!("signals skipped: {}", words.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backtest::params::RuleParams;
    use crate::backtest::{Instrument, LONG, simulate};

    const HOUR: i64 = 3_600_000;

    fn signal(symbol: &str, bar: i64, side: i8, p: [f64; 3]) -> Signal {
        Signal {
            symbol: symbol.into(),
            open_time: bar * HOUR,
            side,
            probabilities: p.to_vec(),
        }
    }

    /// Three symbols that move alike (A, B, C) and one that does not (D), 40 bars.
    fn market() -> Market {
        let symbols: Vec<String> = ["A", "B", "C", "D"].map(String::from).to_vec();
        let mut market = Market::new(symbols, 0, 39 * HOUR, HOUR).unwrap();
        for bar in 0..40i64 {
            let common = 100.0 * (1.0 + 0.01 * ((bar as f64) * 1.3).sin());
            let own = 100.0 * (1.0 + 0.01 * ((bar as f64) * 2.9).cos());
            for (symbol, base) in [(0, common), (1, common * 2.0), (2, common * 3.0), (3, own)] {
                market.set(symbol, bar * HOUR, [base, base * 1.001, base * 0.999, base]);
            }
        }
        market
    }

    #[test]
    fn the_book_goes_through_the_backtests_rules() {
        let market = market();
        // Classes [SELL, HOLD, BUY]: long on BUY at bar 30 for all four symbols.
        let book: Vec<Signal> = ["A", "B", "C", "D"]
            .iter()
            .map(|s| signal(s, 30, LONG, [0.1, 0.2, 0.7]))
            .collect();
        let grid = grid_signals(&market, &book, 2, Some(0));
        let cell = market.cell_at(0, 30 * HOUR).unwrap();
        assert_eq!(
            (grid.side[cell], grid.score[cell], grid.against[cell]),
            (LONG, 0.7, 0.1)
        );

        let rules: RuleParams = crate::diagnostic::params::parse_params(
            &yaml_serde::from_str(
                "{correlation: {window: 20, max: 0.8, max_correlated: 2}, exit: {stop: 0.5, target: null, horizon: 4}}",
            )
            .unwrap(),
        )
        .unwrap();
        let rules = rules.rules();
        assert_eq!(lookback(&rules), 21);
        let instruments = vec![Instrument::default(); 4];
        let simulation = simulate(&market, &grid, &instruments, None, &rules);
        let summary = summarise(&simulation, &rules, "cap".into());
        // A and B enter; C is the third alike and is skipped; D moves on its own and enters.
        assert_eq!(summary.skipped.correlation, 1, "{summary:?}");
        assert_eq!(summary.closed, 3, "{summary:?}");
        assert_eq!(summary.open, 0);
        assert_eq!(
            skipped_words(&summary.skipped),
            "signals skipped: correlation cap 1"
        );
    }

    #[test]
    fn open_positions_and_the_newest_bars_signals_are_not_counted_as_closed() {
        let market = market();
        let book = vec![
            signal("D", 36, LONG, [0.1, 0.2, 0.7]),
            signal("A", 39, LONG, [0.1, 0.2, 0.7]),
        ];
        let rules: RuleParams = crate::diagnostic::params::parse_params(
            &yaml_serde::from_str("{exit: {stop: 0.5, target: null, horizon: 4}}").unwrap(),
        )
        .unwrap();
        let rules = rules.rules();
        let simulation = simulate(
            &market,
            &grid_signals(&market, &book, 2, Some(0)),
            &[Instrument::default(); 4],
            None,
            &rules,
        );
        let summary = summarise(&simulation, &rules, String::new());
        // D entered at bar 37 and is held for 4 bars: still open at bar 39.
        assert_eq!((summary.closed, summary.open, summary.pending), (0, 1, 1));
        assert_eq!(summary.skipped.last_bar, 0);
        assert!(summary.hit_rate.is_none());
    }

    #[test]
    fn without_a_down_class_everything_but_the_long_class_counts_against() {
        let market = market();
        let book = vec![signal("A", 5, LONG, [0.25, 0.75, f64::NAN])];
        let grid = grid_signals(&market, &book, 1, None);
        let cell = market.cell_at(0, 5 * HOUR).unwrap();
        assert_eq!((grid.score[cell], grid.against[cell]), (0.75, 0.25));
    }
}
