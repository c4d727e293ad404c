//! Leaves every layer may use: time and durations, the seeded generator, atomic file writes.

pub mod duration;
pub mod fsx;
pub mod rng;
pub mod time;
