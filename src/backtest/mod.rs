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

pub use engine::{
    ExitReason, FLAT, Instrument, LONG, Rules, SHORT, Signals, Simulation, Skipped, Trade,
    buy_and_hold, round_to_step, simulate,
};
pub use market::Market;
pub use metrics::{
    BeforeFees, Performance, TradeStats, before_fees, performance, periods_per_year, trade_stats,
};
