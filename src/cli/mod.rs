//! The command line: clap definitions, the dispatch to each subcommand, and the error rendering.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::engine::error::Error;
use crate::engine::exit_code;
use crate::engine::reporter::Mode;
use crate::engine::run_record::{RunStatus, list_runs};
use crate::engine::runner::{Paths, RunRequest, SelectionArgs};
use crate::util::time::{human, now_ms};

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
    /// The market-data lake.
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
struct RunArgs {
    /// The pipeline file, e.g. pipelines/aster.yaml.
    pipeline: PathBuf,
    /// Run this stage (even if cached) and whatever downstream of it is out of date.
    #[arg(long, value_name = "STAGE")]
    start_from: Option<String>,
    /// Run only this stage and what it needs.
    #[arg(long, value_name = "STAGE")]
    stop_at: Option<String>,
    /// Run just this stage, reading its inputs' latest outputs (repeatable).
    #[arg(long, value_name = "STAGE")]
    only: Vec<String>,
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
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
    let paths = Paths {
        run_root: project_root.join(&cli.run_root),
        data_dir: project_root.join(&cli.data_dir),
        project_root,
    };
    match cli.command {
        Command::Run(args) => {
            let jobs = args
                .jobs
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from))
                .max(1);
            let mode = if args.json && cli.quiet {
                Mode::Quiet
            } else {
                Mode::detect(cli.quiet)
            };
            crate::engine::runner::run(RunRequest {
                catalog: &crate::kinds::BUILTIN,
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
                verbose: cli.verbose,
            })
            .await
        }
        Command::Status { pipeline } => status(&pipeline, &paths).await,
        Command::Runs { limit, json } => runs(&paths, limit, json),
        Command::Gc { keep, dry_run } => gc(&paths, keep, dry_run, cli.quiet).await,
        Command::ReplayExchange { scenario, port } => replay_exchange(&scenario, port).await,
        Command::Doctor { json } => Ok(doctor(json)),
    }
}

/// `asterflow doctor`: the same examination `train` runs before it trusts a GPU, step by step.
fn doctor(json: bool) -> i32 {
    let examination = crate::train::gpu::examine();
    let verdict = match &examination.outcome {
        Ok(gpu) => format!("GPU usable: {}", gpu.describe()),
        Err(unavailable) => format!("{unavailable}; `device: auto` trains on the CPU"),
    };
    if json {
        let checks: Vec<serde_json::Value> = examination
            .checks
            .iter()
            .map(|check| serde_json::json!({"check": check.name, "ok": check.ok, "detail": check.detail}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "usable": examination.outcome.is_ok(),
                "checks": checks,
                "verdict": verdict,
            })
        );
    } else {
        let width = examination
            .checks
            .iter()
            .map(|check| check.name.len())
            .max()
            .unwrap_or(0);
        for check in &examination.checks {
            let mark = if check.ok { "ok  " } else { "FAIL" };
            println!("{mark} {:<width$}  {}", check.name, check.detail);
        }
        println!("{verdict}");
    }
    if examination.outcome.is_ok() {
        exit_code::OK
    } else {
        exit_code::NO_GPU
    }
}

async fn replay_exchange(file: &std::path::Path, port: u16) -> Result<i32, Error> {
    let text = fs_err::read_to_string(file)?;
    let scenario = crate::market::replay::Scenario::parse(file, &text)
        .map_err(|diagnostic| Error::Usage(diagnostic.to_string()))?;
    let prefixes = scenario.path_prefixes.join(", ");
    let exchange = crate::market::replay::ReplayExchange::start(
        std::sync::Arc::new(scenario),
        ([127, 0, 0, 1], port).into(),
    )
    .await
    .map_err(Error::Usage)?;
    let limit = exchange.declared_limit();
    println!(
        "replay exchange at {} (paths {prefixes}): {} symbols, {} data, weight limit {} per {} {}",
        exchange.url,
        exchange.market().symbols().len(),
        exchange.provenance(),
        limit.limit,
        limit.interval_num,
        limit.interval.to_lowercase()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = tokio::signal::ctrl_c().await;
    let stats = exchange.stats();
    eprintln!(
        "served {} requests ({} weight), {} x 429, {} x 418",
        stats.requests, stats.weight, stats.rate_limited, stats.banned
    );
    Ok(exit_code::OK)
}

async fn status(pipeline_file: &std::path::Path, paths: &Paths) -> Result<i32, Error> {
    let pipeline = crate::engine::runner::load(pipeline_file, paths, &crate::kinds::BUILTIN)?;
    let (plan, cache, _) = crate::engine::runner::make_plan(
        &pipeline,
        &crate::engine::dag::Selection::default(),
        paths,
    )
    .await?;
    let width = pipeline
        .stages
        .iter()
        .map(|stage| stage.id.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let kind_width = pipeline
        .stages
        .iter()
        .map(|stage| stage.kind.name().len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:<width$}  {:<kind_width$}  {:<6}  {:>9}  {:<22}  reason",
        "stage", "kind", "state", "age", "last run"
    );
    let now = now_ms();
    for &index in &plan.order {
        let stage = &pipeline.stages[index];
        let latest = cache.latest(&stage.id).await?;
        let (age, last_run) = match &latest {
            Some(manifest) => (
                human(std::time::Duration::from_millis(
                    now.saturating_sub(manifest.created_at_ms),
                )),
                manifest.run_id.clone(),
            ),
            None => ("-".to_owned(), "never".to_owned()),
        };
        let stage_plan = &plan.stages[index];
        let state = match stage_plan.decision.word() {
            "run" => "stale",
            other => other,
        };
        println!(
            "{:<width$}  {:<kind_width$}  {:<6}  {:>9}  {:<22}  {}",
            stage.id,
            stage.kind.name(),
            state,
            age,
            last_run,
            stage_plan.reason
        );
    }
    Ok(exit_code::OK)
}

fn runs(paths: &Paths, limit: usize, json: bool) -> Result<i32, Error> {
    let records: Vec<_> = list_runs(&paths.run_root).into_iter().take(limit).collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&records).map_err(std::io::Error::other)?
        );
        return Ok(exit_code::OK);
    }
    if records.is_empty() {
        println!("no runs yet in {}", paths.run_root.display());
        return Ok(exit_code::OK);
    }
    let lock_free = !crate::engine::lock::is_held(&paths.run_root);
    println!(
        "{:<22}  {:<11}  {:<16}  {:>8}  stages",
        "run", "status", "pipeline", "duration"
    );
    for record in records {
        let status = match record.status {
            RunStatus::Running if lock_free => "abandoned",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        };
        let duration = record
            .duration_ms
            .map(|ms| human(std::time::Duration::from_millis(ms)))
            .unwrap_or_else(|| "-".to_owned());
        println!(
            "{:<22}  {:<11}  {:<16}  {:>8}  {}",
            record.run_id,
            status,
            record.pipeline,
            duration,
            record.counts(),
        );
    }
    Ok(exit_code::OK)
}

async fn gc(paths: &Paths, keep: usize, dry_run: bool, quiet: bool) -> Result<i32, Error> {
    if !paths.run_root.is_dir() {
        println!(
            "nothing to collect: {} does not exist",
            paths.run_root.display()
        );
        return Ok(exit_code::OK);
    }
    let _lock = crate::engine::lock::acquire(&paths.run_root, false, |_| {})?;
    let store = crate::engine::store::Store::open(&paths.run_root)?;
    let report = crate::engine::gc::collect(&store, &paths.run_root, keep, dry_run).await?;
    if !quiet {
        let verb = if dry_run { "would remove" } else { "removed" };
        println!(
            "{verb} {} cache entries and leftovers ({:.1} MiB); kept {} entries",
            report.entries_removed,
            report.bytes_freed as f64 / (1024.0 * 1024.0),
            report.entries_kept
        );
    }
    Ok(exit_code::OK)
}
