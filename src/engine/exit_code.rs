//! Exit codes, named, and the one mapping from error to code.

use crate::engine::cache::CacheError;
use crate::engine::error::Error;
use crate::engine::lock::LockError;
use crate::engine::pipeline::PipelineError;
use crate::engine::plan::PlanError;
use crate::engine::remote::RemoteError;

/// Everything asked for succeeded.
pub const OK: i32 = 0;
/// A stage failed (the run is recorded; the next run resumes).
pub const STAGE_FAILED: i32 = 1;
/// The pipeline file or the command line is invalid; nothing ran.
pub const INVALID: i32 = 2;
/// `--validate-only --exit-code`: at least one stage would run.
pub const WOULD_RUN: i32 = 10;
/// `doctor`: no GPU passed every check (training will use the CPU).
pub const NO_GPU: i32 = 11;
/// Another run holds the run root's lock (EX_TEMPFAIL: try again later).
pub const LOCKED: i32 = 75;
/// Interrupted by Ctrl-C or SIGTERM.
pub const INTERRUPTED: i32 = 130;

/// The exit code for an error that stopped the command before or around a run.
pub fn for_error(error: &Error) -> i32 {
    match error {
        Error::Pipeline(
            PipelineError::Invalid(_) | PipelineError::Read { .. } | PipelineError::Override(_),
        )
        | Error::Usage(_)
        | Error::Plan(PlanError::MissingInput { .. } | PlanError::DamagedInput { .. })
        // Refused credentials: a setting to fix, like a pipeline mistake.
        | Error::Remote(RemoteError::Credentials { .. })
        | Error::Plan(PlanError::Cache(CacheError::Remote(RemoteError::Credentials { .. })))
        | Error::Cache(CacheError::Remote(RemoteError::Credentials { .. })) => INVALID,
        Error::Lock(LockError::Held { .. }) => LOCKED,
        Error::Interrupted => INTERRUPTED,
        _ => STAGE_FAILED,
    }
}
