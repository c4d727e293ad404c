//! Talking to Binance-compatible futures exchanges: the vocabulary (`model`), typed sources,
//! the weight limiter, the HTTP client, and Binance public-dump files.

pub mod client;
pub mod connections;
pub mod dump;
pub mod limiter;
pub mod source;
