//! The replay exchange: the Binance-compatible futures endpoints on 127.0.0.1, with the real
//! response shapes, weights and headers, a per-window weight limit enforced with 429 and then
//! 418, fault injection, and markets that are either simulated (seeded, deterministic, labelled
//! `simulated`) or read from Binance-format kline files (served as-is, labelled `recorded`).
//!
//! Started by `asterflow replay-exchange`, or in-process for a run when a source says
//! `replay: {scenario: ...}`.

mod market;
mod scenario;
mod server;

pub use market::Market;
pub use scenario::{Scenario, parse_time};
pub use server::{ReplayExchange, ReplayStats};
