//! asterflow: runs YAML-declared DAGs of market-data research stages with cached, resumable outputs.
//!
//! Data flows one way: `spec` (raw YAML) -> `pipeline` (validated, with its `dag`) -> `plan`
//! (run / cached / reuse / skip per stage) -> `executor` (tokio) -> `events` -> `reporter` and
//! `run_record`. The binary in `main.rs` is a thin shell over [`cli::main`].

pub mod backtest;
pub mod cache;
pub mod cli;
pub mod dag;
pub mod diagnostic;
pub mod error;
pub mod events;
pub mod exchange;
pub mod executor;
pub mod exit_code;
pub mod fingerprint;
pub mod gc;
pub mod gpu;
pub mod lake;
pub mod location;
pub mod lock;
pub mod pipeline;
pub mod plan;
pub mod replay;
pub mod report;
pub mod reporter;
pub mod rng;
pub mod run_record;
pub mod runner;
pub mod spec;
pub mod sql;
pub mod stage;
pub mod stages;
pub mod store;
pub mod time;
pub mod train;
