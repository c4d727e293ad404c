//! The backtest: a costs-aware portfolio simulation of out-of-sample signals (`engine`) on a
//! dense bar grid (`market`), and its performance figures (`metrics`).

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
