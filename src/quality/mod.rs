//! Data quality: what `validate` measures in a dataset of the lake (`measure`) and how it judges
//! it (`judge`, a table of checks with figures, limits and reasons).

pub mod funding;
pub mod judge;
pub mod measure;
pub mod synthetic;
pub mod ticks;

pub use judge::{Check, DatasetKey, DatasetReport, Limits, judge, render_table};
pub use measure::{Measured, scan_dataset, source_agreement};
