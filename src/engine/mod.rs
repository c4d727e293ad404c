//! The engine: pipelines in, cached stage outputs out. It knows the stage contract
//! ([`stage`]) and nothing of any kind or market: the caller hands it a [`stage::Catalog`].
//!
//! Data flows one way: `spec` (raw YAML) -> `pipeline` (validated, with its `dag`) -> `plan`
//! (run / cached / remote / reuse / skip per stage) -> `executor` (tokio) -> `events` -> `reporter` and
//! `run_record`; `runner` drives it for `asterflow run`.

pub mod cache;
pub mod dag;
pub mod datastore;
pub mod error;
pub mod events;
pub mod executor;
pub mod exit_code;
pub mod fingerprint;
pub mod gc;
pub mod lock;
pub mod matrix;
pub mod pipeline;
pub mod plan;
pub mod remote;
pub mod reporter;
pub mod run_record;
pub mod runner;
pub mod spec;
pub mod stage;
pub mod store;
#[cfg(test)]
pub mod testing;
