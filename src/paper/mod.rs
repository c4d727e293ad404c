//! The paper book: each bar's signals, and the ledger that prices them from the lake as a
//! trader would have filled them (next-open entries, horizon-close exits, fees, slippage and the
//! funding settled while held).
//! The `signals` stage appends the book and writes the ledger; the report reads the summary.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::backtest::{FLAT, LONG};

pub mod portfolio;

/// One symbol's signal at a bar.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    pub symbol: String,
    pub open_time: i64,
    pub side: i8,
    pub probabilities: Vec<f64>,
}

/// A signal's paper trade, once its prices are known.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub symbol: String,
    /// The signalled bar; the trade enters at the next bar's open.
    pub open_time: i64,
    pub side: i8,
    pub status: Status,
    pub entry_price: Option<f64>,
    pub exit_price: Option<f64>,
    /// `side x (close[t+H] / open[t+1] - 1)`: the move, before costs.
    pub gross_return: Option<f64>,
    /// With slippage against the trade on both fills, the fee on both, and funding.
    pub net_return: Option<f64>,
    /// Funding paid while held (received when negative), as a share of the entry notional:
    /// `side x rate x open / entry` summed over the settlements in the bars after the entry
    /// bar up to the exit bar (the backtest's rule: a position entered at a bar's open pays
    /// from the next settlement on).
    pub funding: Option<f64>,
}

/// Each symbol's settled funding rates by the open time of the bar they settled in, oldest
/// first.
pub type FundingByBar = HashMap<String, Vec<(i64, f64)>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Its horizon has not passed yet.
    Open,
    Closed,
    /// The horizon passed, but the entry or exit bar is missing from the lake.
    NoPrice,
}

impl Status {
    pub fn word(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Closed => "closed",
            Status::NoPrice => "no_price",
        }
    }
}

/// Rules of the paper fills.
#[derive(Debug, Clone, Copy)]
pub struct Fills {
    pub bar_ms: i64,
    pub horizon: u32,
    pub fee: f64,
    pub slippage: f64,
}

/// Prices the non-flat `signals`: entry at the open of bar t+1, exit at the close of bar t+H.
/// `prices` maps (symbol, open time) to (open, close); `newest` is the newest bar in the lake.
/// An entry `closed` in the previous ledger whose prices are gone now (its symbol left the
/// universe, or the lake) stays as it closed instead of turning into `no_price`.
pub fn ledger(
    signals: &[Signal],
    previous: &HashMap<(String, i64), Entry>,
    prices: &HashMap<(String, i64), (f64, f64)>,
    funding: &FundingByBar,
    newest: i64,
    fills: Fills,
) -> Vec<Entry> {
    signals
        .iter()
        .filter(|signal| signal.side != FLAT)
        .map(|signal| {
            let fresh = price(signal, prices, funding, newest, fills);
            if fresh.status != Status::NoPrice {
                return fresh;
            }
            // Prices gone (the symbol left the universe or the lake): keep the trade as it closed.
            previous
                .get(&(signal.symbol.clone(), signal.open_time))
                .filter(|entry| entry.status == Status::Closed && entry.side == signal.side)
                .cloned()
                .unwrap_or(fresh)
        })
        .collect()
}

/// One signal's paper trade from the lake's prices.
fn price(
    signal: &Signal,
    prices: &HashMap<(String, i64), (f64, f64)>,
    funding: &FundingByBar,
    newest: i64,
    fills: Fills,
) -> Entry {
    let entry_time = signal.open_time + fills.bar_ms;
    let exit_time = signal.open_time + i64::from(fills.horizon) * fills.bar_ms;
    let open = prices
        .get(&(signal.symbol.clone(), entry_time))
        .map(|p| p.0);
    let close = prices.get(&(signal.symbol.clone(), exit_time)).map(|p| p.1);
    let mut entry = Entry {
        symbol: signal.symbol.clone(),
        open_time: signal.open_time,
        side: signal.side,
        status: Status::Open,
        entry_price: open,
        exit_price: None,
        gross_return: None,
        net_return: None,
        funding: None,
    };
    if exit_time > newest {
        return entry;
    }
    let (Some(open), Some(close)) = (open, close) else {
        entry.status = Status::NoPrice;
        return entry;
    };
    let side = f64::from(signal.side);
    let filled_in = open * (1.0 + side * fills.slippage);
    let filled_out = close * (1.0 - side * fills.slippage);
    entry.status = Status::Closed;
    entry.exit_price = Some(close);
    let paid: f64 = funding
        .get(&signal.symbol)
        .map(|rates| {
            let from = rates.partition_point(|(bar, _)| *bar <= entry_time);
            rates[from..]
                .iter()
                .take_while(|(bar, _)| *bar <= exit_time)
                .map(|(bar, rate)| {
                    // The notional at the settlement: the bar's open, else the entry's.
                    let at = prices
                        .get(&(signal.symbol.clone(), *bar))
                        .map_or(open, |p| p.0);
                    side * rate * at / open
                })
                .sum()
        })
        .unwrap_or(0.0);
    entry.status = Status::Closed;
    entry.exit_price = Some(close);
    entry.gross_return = Some(side * (close / open - 1.0));
    entry.funding = Some(paid);
    entry.net_return = Some(side * (filled_out / filled_in - 1.0) - 2.0 * fills.fee - paid);
    entry
}

/// The book's figures for the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BookSummary {
    /// Paper trades (long or short signals) in the book.
    pub signals: usize,
    pub open: usize,
    pub closed: usize,
    pub no_price: usize,
    pub mean_gross_return: Option<f64>,
    pub mean_net_return: Option<f64>,
    /// The share of closed trades with a positive net return.
    pub hit_rate: Option<f64>,
}

/// `summary.json`: this run's signals and the book, for people and for the `report` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalsSummary {
    pub bar: String,
    pub model_trained_to: String,
    pub symbols: usize,
    pub long: usize,
    pub short: usize,
    pub flat: usize,
    pub stale_symbols: Vec<String>,
    pub incomplete_symbols: Vec<String>,
    pub warming_up_symbols: Vec<String>,
    pub book: String,
    pub appended: bool,
    pub ledger: BookSummary,
    /// The book traded as one account under the `portfolio:` rules, when they are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portfolio: Option<portfolio::PortfolioSummary>,
    pub synthetic: bool,
}

pub fn book_summary(entries: &[Entry]) -> BookSummary {
    let closed: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.status == Status::Closed)
        .collect();
    let mean = |values: Vec<f64>| {
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    BookSummary {
        signals: entries.len(),
        open: entries.iter().filter(|e| e.status == Status::Open).count(),
        closed: closed.len(),
        no_price: entries
            .iter()
            .filter(|e| e.status == Status::NoPrice)
            .count(),
        mean_gross_return: mean(closed.iter().filter_map(|e| e.gross_return).collect()),
        mean_net_return: mean(closed.iter().filter_map(|e| e.net_return).collect()),
        hit_rate: mean(
            closed
                .iter()
                .filter_map(|e| e.net_return)
                .map(|r| if r > 0.0 { 1.0 } else { 0.0 })
                .collect(),
        ),
    }
}

pub fn side_word(side: i8) -> &'static str {
    match side {
        LONG => "long",
        FLAT => "flat",
        _ => "short",
    }
}

pub fn side_of(word: &str) -> i8 {
    match word {
        "long" => LONG,
        "short" => crate::backtest::SHORT,
        _ => FLAT,
    }
}
