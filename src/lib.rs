//! asterflow: runs YAML-declared DAGs of market-data research stages with cached, resumable outputs.
//!
//! The crate is layered, and imports run one way (checked by `tests/it/architecture.rs`):
//! - leaves: `util` (time, durations, the generator, atomic writes), `diagnostic` (located
//!   errors and param helpers), `provenance` (what marks simulated data);
//! - `engine`: pipelines, the DAG, plans, the cache and the executor; it names no kind and no
//!   domain module;
//! - domain libraries: `market` (model, lake, exchange, replay), `quality`, `sql`, `train`,
//!   `backtest`, `paper`, `sweep`, `report`; they never import the engine's stage traits;
//! - `kinds`: one thin adapter per built-in stage kind, and the catalog of them;
//! - `cli`: the commands, wiring the catalog into the engine. `main.rs` is a thin shell.

pub mod backtest;
pub mod cli;
pub mod diagnostic;
pub mod engine;
pub mod kinds;
pub mod market;
pub mod paper;
pub mod provenance;
pub mod quality;
pub mod report;
pub mod serve;
pub mod sql;
pub mod sweep;
pub mod train;
pub mod util;
