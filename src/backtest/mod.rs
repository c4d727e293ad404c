//! The backtest: a costs-aware portfolio simulation of out-of-sample signals (`engine`) on a
//! dense bar grid (`market`), and its performance figures (`metrics`).

/// Default costs (DOMAIN.md section 5), one place for the backtest and the paper book so the
/// two price a trade alike: Aster's maker and taker fees per fill, and slippage per fill.
pub const DEFAULT_MAKER_FEE: f64 = 0.0005;
pub const DEFAULT_TAKER_FEE: f64 = 0.00075;
pub const DEFAULT_SLIPPAGE: f64 = 0.0002;

pub mod engine;
pub mod inputs;
pub mod market;
pub mod metrics;
pub mod outcomes;
pub mod params;

pub use engine::{
    CorrelationCap, ExitReason, FLAT, Instrument, LONG, Portfolio, Rules, SHORT, Signals,
    Simulation, Sizing, Skipped, Trade, buy_and_hold, round_to_step, simulate,
};
pub use market::Market;
pub use metrics::{
    BeforeFees, Performance, TradeStats, before_fees, performance, periods_per_year, trade_stats,
};

/// The figures of a backtest, as `metrics.json` holds them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub from: String,
    pub to: String,
    pub bars: usize,
    pub symbols: usize,
    pub periods_per_year: f64,
    pub strategy: crate::backtest::Performance,
    pub trades: crate::backtest::TradeStats,
    /// The share of bars with a position open.
    pub exposure: f64,
    pub fees_paid: f64,
    pub funding_paid: f64,
    /// The trades' P&L with fees added back, and its t-statistic.
    #[serde(default)]
    pub before_fees: crate::backtest::BeforeFees,
    pub exit_reasons: std::collections::BTreeMap<String, usize>,
    pub skipped: crate::backtest::Skipped,
    pub buy_and_hold: crate::backtest::Performance,
    pub verdict: String,
    /// The distribution of outcomes the history allows (`monte_carlo:`), when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcomes: Option<crate::backtest::outcomes::Outcomes>,
}
