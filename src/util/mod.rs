//! Leaves every layer may use: time and durations, the seeded generator, atomic file writes,
//! object stores by URL.

pub mod duration;
pub mod fsx;
pub mod parallel;
pub mod rng;
pub mod store;
pub mod time;
