//! Leaves every layer may use: time and durations, the seeded generator, atomic file writes
//! (and large ones straight to the disk), object stores by URL, searching sorted runs.

pub mod direct;
pub mod duration;
pub mod fsx;
pub mod parallel;
pub mod rng;
pub mod search;
pub mod store;
pub mod time;
