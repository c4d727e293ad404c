//! `asterflow run`: the flags turned into a run request for the engine, with the built-in kinds.

use super::RunArgs;
use crate::engine::error::Error;
use crate::engine::reporter::Mode;
use crate::engine::runner::{Paths, RunRequest, SelectionArgs};

pub async fn run(args: RunArgs, paths: Paths, quiet: bool, verbose: bool) -> Result<i32, Error> {
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from))
        .max(1);
    let mode = if args.json && quiet {
        Mode::Quiet
    } else {
        Mode::detect(quiet)
    };
    crate::engine::runner::run(RunRequest {
        catalog: &crate::kinds::BUILTIN,
        overrides: args.overrides,
        pipeline_file: args.pipeline,
        paths,
        selection: SelectionArgs {
            start_from: args.start_from,
            stop_at: args.stop_at,
            only: args.only,
            force: args.force,
        },
        validate_only: args.validate_only,
        exit_code_when_stale: args.exit_code,
        jobs,
        wait: args.wait,
        json: args.json,
        mode,
        verbose,
        no_remote: args.no_remote,
    })
    .await
}
