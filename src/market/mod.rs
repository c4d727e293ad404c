//! Market data: the vocabulary (`model`: intervals, klines, `exchangeInfo`), the Parquet
//! `lake`, the `exchange` client and sources, and the `replay` exchange.

pub mod exchange;
pub mod lake;
pub mod model;
pub mod replay;
