//! The top-level error: each subsystem's error, mapped to an exit code in [`crate::engine::exit_code`].

use crate::engine::cache::CacheError;
use crate::engine::lock::LockError;
use crate::engine::pipeline::PipelineError;
use crate::engine::plan::PlanError;
use crate::engine::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Remote(#[from] crate::engine::remote::RemoteError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("interrupted")]
    Interrupted,
}
