//! Provenance: where market data came from, and the banner that follows simulated data through
//! every stage after the gate that let it in. A leaf: everything that marks or reads provenance
//! uses these names.

/// Data served by a simulated market (the replay exchange's simulate mode).
pub const SIMULATED: &str = "simulated";

/// The provenance kinds of real data: a live exchange, recorded exchange files, Binance dumps.
pub const REAL: [&str; 3] = ["exchange", "recorded", "binance-dump"];

/// The line every output carries once simulated data was let through (`allow_synthetic: true`).
pub const SYNTHETIC_BANNER: &str = "SYNTHETIC DATA: simulated market data was allowed through (allow_synthetic: true); results say nothing about real markets";
