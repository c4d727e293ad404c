//! The command line: clap definitions, the dispatch to each subcommand (one module each), and
//! the error rendering. The only place that hands the built-in kinds (`kinds::BUILTIN`) to the
//! engine.

mod cluster;
mod doctor;
mod gc;
mod remote;
mod replay;
mod run;
mod runs;
mod serve;
mod status;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::engine::error::Error;
use crate::engine::exit_code;
use crate::engine::runner::Paths;

/// Reproducible market-data research pipelines: YAML DAGs of stages, cached and resumable.
#[derive(Debug, Parser)]
#[command(
    name = "asterflow",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Change to DIR before doing anything (the project root).
    #[arg(short = 'C', long = "directory", global = true, value_name = "DIR")]
    directory: Option<PathBuf>,
    /// Run records and the stage cache.
    #[arg(
        long,
        global = true,
        env = "ASTERFLOW_RUN_ROOT",
        default_value = "runs",
        value_name = "DIR"
    )]
    run_root: PathBuf,
    /// The market-data lake: a directory, or an object store URL (s3://bucket/prefix,
    /// file:///dir) mirrored locally under the run root.
    #[arg(
        long,
        global = true,
        env = "ASTERFLOW_DATA_DIR",
        default_value = "data",
        value_name = "DIR"
    )]
    data_dir: PathBuf,
    /// Print nothing but errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Print more: each stage's fingerprint key.
    #[arg(short, long, global = true)]
    verbose: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline (or, with --validate-only, check it and print the plan).
    Run(RunArgs),
    /// Show each stage of a pipeline: cached or not, age of its latest output, last run.
    Status {
        /// The pipeline file.
        pipeline: PathBuf,
    },
    /// Store the latest output of every stage in the pipeline's remote cache.
    Push {
        /// The pipeline file.
        pipeline: PathBuf,
    },
    /// Download what the pipeline's remote cache holds for it as it stands; run nothing.
    Pull {
        /// The pipeline file.
        pipeline: PathBuf,
    },
    /// List recent runs, newest first.
    Runs {
        /// How many runs to show.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
        /// Print the run records as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Serve a replay exchange on 127.0.0.1 (the Binance-compatible futures endpoints) until Ctrl-C.
    ReplayExchange {
        /// The scenario file, e.g. data/scenarios/demo.yaml.
        #[arg(long, value_name = "FILE")]
        scenario: PathBuf,
        /// The port to listen on (0: any free port; the URL is printed).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// The runs in a browser, read-only: each run's stages, logs and report.
    Serve {
        /// Where to listen; an address beyond loopback needs --token.
        #[arg(long, default_value = "127.0.0.1:8321", value_name = "ADDR:PORT")]
        bind: String,
        /// A token every request must carry (Authorization: Bearer TOKEN, or ?token=TOKEN).
        #[arg(long, env = "ASTERFLOW_SERVE_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// A node of a Ballista cluster for `sql` stages (`engine: {ballista: df://HOST:PORT}`).
    Cluster {
        #[command(subcommand)]
        node: cluster::Node,
    },
    /// Check the GPU path: driver, device, NVRTC, smoke kernel. Exits 11 when training would use the CPU.
    Doctor {
        /// Print the checks as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Remove cache entries that no recent run needs.
    Gc {
        /// Keep the entries used by this many most recent runs (and every stage's latest output).
        #[arg(long, default_value_t = 10)]
        keep: usize,
        /// Say what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The pipeline file, e.g. pipelines/aster.yaml.
    pipeline: PathBuf,
    /// Run this stage (even if cached) and whatever downstream of it is out of date. A stage
    /// id, a matrix stage as written (all its members) or a glob: 'labels@horizon=12', 'train@*'.
    #[arg(long, value_name = "STAGE")]
    start_from: Option<String>,
    /// Run only this stage (or these members) and what it needs.
    #[arg(long, value_name = "STAGE")]
    stop_at: Option<String>,
    /// Run just this stage, reading its inputs' latest outputs (repeatable; globs match members).
    #[arg(long, value_name = "STAGE")]
    only: Vec<String>,
    /// Override a param for this run: STAGE.with.PARAM=VALUE (repeatable; VALUE is YAML). It
    /// is part of the fingerprint, so the variant caches like any other.
    #[arg(long = "set", value_name = "STAGE.with.PATH=VALUE")]
    overrides: Vec<String>,
    /// Ignore the cache for every selected stage.
    #[arg(long)]
    force: bool,
    /// Check everything and print the plan; execute nothing, write nothing.
    #[arg(long, alias = "dry-run")]
    validate_only: bool,
    /// With --validate-only: exit 10 when any stage would run.
    #[arg(long, requires = "validate_only")]
    exit_code: bool,
    /// How many stages may run at once [default: number of CPUs].
    #[arg(short, long, value_name = "N")]
    jobs: Option<usize>,
    /// Wait for another run on the same run root instead of exiting with 75.
    #[arg(long)]
    wait: bool,
    /// Print one JSON object on stdout at the end (the plan, with --validate-only).
    #[arg(long)]
    json: bool,
    /// Leave the remote cache (the pipeline's `cache.remote`, ASTERFLOW_REMOTE_CACHE) alone
    /// for this run: no lookups, no uploads.
    #[arg(long)]
    no_remote: bool,
}

/// Runs the command line `args`; returns the process exit code.
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                exit_code::INVALID
            } else {
                exit_code::OK
            };
        }
    };
    // Plans travel to a Ballista cluster as protobuf, encoded and decoded by recursion as deep
    // as the plan: the feature set's plan needs more than the 2 MiB a worker thread gets by
    // default (address space only; pages are touched as used).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(64 << 20)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: failed to start the async runtime: {error}");
            return exit_code::STAGE_FAILED;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", crate::engine::executor::error_chain(&error));
            exit_code::for_error(&error)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<i32, Error> {
    if let Some(directory) = &cli.directory {
        std::env::set_current_dir(directory).map_err(|source| {
            Error::Usage(format!(
                "cannot change to directory {}: {source}",
                directory.display()
            ))
        })?;
    }
    let project_root = std::env::current_dir()?;
    let paths = Paths::new(
        project_root,
        cli.run_root.clone(),
        &cli.data_dir.to_string_lossy(),
    );
    match cli.command {
        Command::Run(args) => run::run(args, paths, cli.quiet, cli.verbose).await,
        Command::Status { pipeline } => status::status(&pipeline, &paths).await,
        Command::Push { pipeline } => remote::push(&pipeline, &paths, cli.quiet).await,
        Command::Pull { pipeline } => remote::pull(&pipeline, &paths, cli.quiet).await,
        Command::Runs { limit, json } => runs::runs(&paths, limit, json),
        Command::Gc { keep, dry_run } => gc::gc(&paths, keep, dry_run, cli.quiet).await,
        Command::ReplayExchange { scenario, port } => {
            replay::replay_exchange(&scenario, port).await
        }
        Command::Serve { bind, token } => serve::serve(&paths, &bind, token).await,
        Command::Doctor { json } => Ok(doctor::doctor(json)),
        Command::Cluster { node } => cluster::cluster(node).await,
    }
}
