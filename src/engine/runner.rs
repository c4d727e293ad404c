//! `asterflow run`: load, select, plan, and then either print the plan (`--validate-only`) or
//! take the run-root lock, execute, and record the run. Everything before the lock writes nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::engine::cache::{Cache, Manifest};
use crate::engine::dag::Selection;
use crate::engine::datastore::DataStore;
use crate::engine::error::Error;
use crate::engine::events::RunEvent;
use crate::engine::executor::{ExecuteOptions, RunOutcome, execute};
use crate::engine::exit_code;
use crate::engine::fingerprint::FileDigests;
use crate::engine::pipeline::Pipeline;
use crate::engine::pipeline::RemoteSettings;
use crate::engine::plan::{Decision, Plan, plan};
use crate::engine::remote::{Pushed, Remote, RemoteError};
use crate::engine::reporter::{Mode, report};
use crate::engine::run_record::{
    RECORD_FORMAT, RunRecord, RunStatus, StageRecord, StageStatus, new_run_id, run_dir,
};
use crate::engine::stage::{Catalog, Closing, ClosingContext};
use crate::engine::store::Store;
use crate::util::time::{human, now_ms, rfc3339};

/// Where things live, resolved from the command line and the environment.
#[derive(Debug, Clone)]
pub struct Paths {
    pub project_root: PathBuf,
    pub run_root: PathBuf,
    /// The data directory stages see: the local one, or the local mirror of `data_store`.
    pub data_dir: PathBuf,
    /// `--data-dir s3://bucket/prefix` (or `file:///dir`): the data directory on an object store.
    pub data_store: Option<String>,
}

impl Paths {
    /// Paths for `--data-dir DATA_DIR`: a directory (relative to the project root), or an object
    /// store URL, mirrored under the run root (one mirror per URL).
    pub fn new(project_root: PathBuf, run_root: PathBuf, data_dir: &str) -> Self {
        let run_root = project_root.join(run_root);
        if data_dir.contains("://") {
            let url = data_dir.trim_end_matches('/');
            let name = blake3::hash(url.as_bytes()).to_hex()[..16].to_owned();
            Self {
                data_dir: run_root.join("data-mirror").join(name),
                data_store: Some(url.to_owned()),
                run_root,
                project_root,
            }
        } else {
            Self {
                data_dir: project_root.join(data_dir),
                data_store: None,
                run_root,
                project_root,
            }
        }
    }

    pub fn digest_memo(&self) -> PathBuf {
        self.run_root.join("cache").join("file-digests.json")
    }
}

/// Stage names from the selection flags, before they are checked against the pipeline.
#[derive(Debug, Clone, Default)]
pub struct SelectionArgs {
    pub start_from: Option<String>,
    pub stop_at: Option<String>,
    pub only: Vec<String>,
    pub force: bool,
}

/// Everything `asterflow run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub pipeline_file: PathBuf,
    /// The stage kinds the pipeline may name.
    pub catalog: &'static dyn Catalog,
    /// `--set STAGE.with.PATH=VALUE`, in order.
    pub overrides: Vec<String>,
    pub paths: Paths,
    pub selection: SelectionArgs,
    pub validate_only: bool,
    pub exit_code_when_stale: bool,
    pub jobs: usize,
    pub wait: bool,
    pub json: bool,
    pub mode: Mode,
    pub verbose: bool,
    /// `--no-remote`: leave the remote cache alone for this run.
    pub no_remote: bool,
}

/// The JSON printed by `--json`: the run's outcome, or with `--validate-only` the plan.
#[derive(Debug, Serialize)]
pub struct JsonSummary {
    pub run_id: Option<String>,
    pub status: String,
    pub stages: Vec<JsonStage>,
    /// The remote cache, when one is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<JsonRemote>,
}

#[derive(Debug, Serialize)]
pub struct JsonRemote {
    pub url: String,
    /// Whether it answered (`--validate-only` asks it; a run says whether it stayed up).
    pub reachable: bool,
}

#[derive(Debug, Serialize)]
pub struct JsonStage {
    pub id: String,
    pub status: String,
    pub reason: String,
    pub duration_ms: u64,
    pub fingerprint: Option<String>,
    /// The committed output directory, once there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// Loads a pipeline, with project-relative paths resolved against `paths.project_root`.
pub fn load(pipeline_file: &Path, paths: &Paths, catalog: &dyn Catalog) -> Result<Pipeline, Error> {
    load_with(pipeline_file, paths, catalog, &[])
}

/// [`load`] with `--set` overrides.
pub fn load_with(
    pipeline_file: &Path,
    paths: &Paths,
    catalog: &dyn Catalog,
    overrides: &[String],
) -> Result<Pipeline, Error> {
    Ok(Pipeline::load_with(
        pipeline_file,
        &paths.project_root,
        catalog,
        overrides,
    )?)
}

/// Resolves selection flags to stage indices, refusing unknown names with the list of stages.
/// A name is a stage id, a stage as written (all its matrix members), or a glob over ids
/// (`train@*`, `*model=mlp*`).
pub fn resolve_selection(pipeline: &Pipeline, args: &SelectionArgs) -> Result<Selection, Error> {
    let find = |flag: &str, name: &str| -> Result<Vec<usize>, Error> {
        let matches: Vec<usize> = pipeline
            .stages
            .iter()
            .enumerate()
            .filter(|(_, stage)| {
                stage.id == name
                    || stage.template == name
                    || crate::engine::matrix::glob_match(name, &stage.id)
            })
            .map(|(index, _)| index)
            .collect();
        if matches.is_empty() {
            return Err(Error::Usage(format!(
                "{flag} names stage `{name}`, which is not in pipeline `{}`; stages: {}",
                pipeline.name,
                pipeline.stage_ids()
            )));
        }
        Ok(matches)
    };
    let many = |flag: &str, names: &[String]| -> Result<Vec<usize>, Error> {
        let mut out = Vec::new();
        for name in names {
            for index in find(flag, name)? {
                if !out.contains(&index) {
                    out.push(index);
                }
            }
        }
        Ok(out)
    };
    let selection = Selection {
        start_from: many("--start-from", args.start_from.as_slice())?,
        stop_at: many("--stop-at", args.stop_at.as_slice())?,
        only: many("--only", &args.only)?,
        force: args.force,
    };
    if !pipeline.dag.select(&selection).contains(&true) {
        return Err(Error::Usage(
            "the selection is empty: --stop-at is upstream of --start-from, or --only names stages outside them".into(),
        ));
    }
    Ok(selection)
}

/// The variable that names a remote cache for every run, in place of the pipeline's.
pub const REMOTE_VARIABLE: &str = "ASTERFLOW_REMOTE_CACHE";

/// The remote cache a run uses: `ASTERFLOW_REMOTE_CACHE`, else the pipeline's `cache.remote`;
/// none with `--no-remote`. Opening it makes no request.
pub fn open_remote(pipeline: &Pipeline, no_remote: bool) -> Result<Option<Arc<Remote>>, Error> {
    if no_remote {
        return Ok(None);
    }
    let settings = match std::env::var(REMOTE_VARIABLE) {
        Ok(url) if !url.is_empty() => {
            crate::engine::pipeline::check_remote_url(&url)
                .map_err(|message| Error::Usage(format!("{REMOTE_VARIABLE}: {message}")))?;
            RemoteSettings {
                url,
                endpoint: pipeline
                    .remote
                    .as_ref()
                    .and_then(|settings| settings.endpoint.clone()),
            }
        }
        _ => match &pipeline.remote {
            Some(settings) => settings.clone(),
            None => return Ok(None),
        },
    };
    Remote::open(&settings.url, settings.endpoint.as_deref())
        .map(|remote| Some(Arc::new(remote)))
        .map_err(Error::Usage)
}

/// Plans the run against the cache as it is now (and the remote cache, if there is one).
pub async fn make_plan(
    pipeline: &Pipeline,
    selection: &Selection,
    paths: &Paths,
    remote: Option<Arc<Remote>>,
) -> Result<(Plan, Cache, FileDigests), Error> {
    let cache = Cache::new(Store::open(&paths.run_root)?, &pipeline.name).with_remote(remote);
    let mut digests = FileDigests::load(paths.digest_memo());
    let plan = plan(pipeline, selection, &cache, &mut digests, now_ms()).await?;
    Ok((plan, cache, digests))
}

/// `asterflow run`: returns the exit code.
pub async fn run(request: RunRequest) -> Result<i32, Error> {
    let pipeline = load_with(
        &request.pipeline_file,
        &request.paths,
        request.catalog,
        &request.overrides,
    )?;
    pipeline.check_shapes().await?;
    let selection = resolve_selection(&pipeline, &request.selection)?;
    let remote = open_remote(&pipeline, request.no_remote)?;
    let data_store = match &request.paths.data_store {
        Some(url) => Some(Arc::new(
            DataStore::open(url, request.paths.data_dir.clone())
                .map_err(|error| Error::Usage(format!("--data-dir: {error}")))?,
        )),
        None => None,
    };
    if request.validate_only {
        // Ask the remote first: an unreachable one is given up before the plan looks in it.
        let reachable = match &remote {
            Some(remote) => Some(remote.check().await?),
            None => None,
        };
        let (plan, _, _) = make_plan(&pipeline, &selection, &request.paths, remote.clone()).await?;
        let remote = remote.zip(reachable).map(|(remote, reachable)| JsonRemote {
            url: remote.url().to_owned(),
            reachable,
        });
        print_plan(&pipeline, &plan, &request, remote);
        let would_run = plan.count(Decision::Run) > 0;
        return Ok(if request.exit_code_when_stale && would_run {
            exit_code::WOULD_RUN
        } else {
            exit_code::OK
        });
    }

    let run_root = request.paths.run_root.clone();
    let mode = request.mode;
    let _lock = tokio::task::spawn_blocking(move || {
        crate::engine::lock::acquire(&run_root, request.wait, |holder| {
            if mode != Mode::Quiet {
                eprintln!("waiting for the run root lock, held by {holder}");
            }
        })
    })
    .await
    .map_err(std::io::Error::other)??;

    // Planned under the lock, so no other run changes the cache between plan and execution.
    let (plan, cache, mut digests) =
        make_plan(&pipeline, &selection, &request.paths, remote.clone()).await?;
    if request.verbose {
        for (index, stage_plan) in plan.stages.iter().enumerate() {
            if let Some(key) = &stage_plan.key {
                eprintln!(
                    "key {}: {}",
                    pipeline.stages[index].id,
                    serde_json::to_string(key).unwrap_or_default()
                );
            }
        }
    }
    let started_at_ms = now_ms();
    let run_id = new_run_id(started_at_ms);
    let mut record = RunRecord {
        format: RECORD_FORMAT,
        run_id: run_id.clone(),
        pipeline: pipeline.name.clone(),
        pipeline_file: pipeline.file.display().to_string(),
        status: RunStatus::Running,
        started_at: rfc3339(started_at_ms),
        started_at_ms,
        finished_at: None,
        duration_ms: None,
        pid: std::process::id(),
        argv: std::env::args().collect(),
        stages: Vec::new(),
        figures: Vec::new(),
    };
    // From here on a Ctrl-C is recorded as an interruption rather than killing the process.
    let signals = Signals::install();
    record.write(&request.paths.run_root)?;

    let cancel = CancellationToken::new();
    let signals = tokio::spawn(signals.watch(cancel.clone()));
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let names: Vec<String> = pipeline
        .stages
        .iter()
        .map(|stage| stage.id.clone())
        .collect();
    // Every event also goes to `runs/<run-id>/events.jsonl`, for whoever watches the run
    // (`asterflow serve`): the plan first, then each stage as it starts, progresses and ends.
    let events_file = run_dir(&request.paths.run_root, &run_id).join(EVENTS_FILE);
    let mut journal = EventJournal::create(&events_file, &pipeline, &plan);
    let (forward, reporter_events) = tokio::sync::mpsc::unbounded_channel();
    let journal_names = names.clone();
    let journal_task = tokio::spawn(async move {
        let mut receiver = receiver;
        while let Some(event) = receiver.recv().await {
            journal.record(&event, &journal_names);
            if forward.send(event).is_err() {
                break;
            }
        }
        journal
    });
    let reporter = tokio::spawn(report(
        reporter_events,
        request.mode,
        names,
        plan.count(Decision::Run),
    ));
    let options = ExecuteOptions {
        run_id: run_id.clone(),
        jobs: request.jobs,
        data_dir: request.paths.data_dir.clone(),
        data_store: data_store.clone(),
        logs_dir: run_dir(&request.paths.run_root, &run_id).join("logs"),
    };
    let pipeline = Arc::new(pipeline);
    let outcome = execute(
        Arc::clone(&pipeline),
        plan.clone(),
        cache.clone(),
        options,
        sender,
        cancel,
    )
    .await;
    let journal = journal_task.await.ok();
    let _ = reporter.await;
    signals.abort();

    let status = if outcome.interrupted {
        RunStatus::Interrupted
    } else if outcome.failed() {
        RunStatus::Failed
    } else {
        RunStatus::Succeeded
    };
    record.stages = stage_records(
        &pipeline,
        &plan,
        &outcome,
        &cache,
        &request.paths.project_root,
    );
    record.finish(status);
    record.write(&request.paths.run_root)?;
    if let Some(mut journal) = journal {
        journal.end(&record);
    }
    // The memo only speeds up later runs; failing to save it loses nothing.
    let _ = digests.save();
    crate::engine::store::remove_empty_dirs(&request.paths.run_root.join("tmp").join(&run_id));

    // What this run committed or used goes to the remote, unless the run was interrupted (a
    // Ctrl-C means stop). An entry the remote already holds costs one request, once.
    let mut refused = None;
    if let Some(remote) = &remote
        && !outcome.interrupted
    {
        let started = std::time::Instant::now();
        let manifests = outcome
            .stages
            .iter()
            .filter_map(|stage| stage.manifest.as_ref());
        match push(&cache, remote, manifests, &request.paths.data_dir).await {
            Ok(summary) => {
                if summary.stored > 0 && request.mode != Mode::Quiet {
                    eprintln!(
                        "remote cache {}: stored {} {} ({:.1} MiB) in {}",
                        remote.url(),
                        summary.stored,
                        if summary.stored == 1 {
                            "entry"
                        } else {
                            "entries"
                        },
                        summary.bytes as f64 / (1024.0 * 1024.0),
                        human(started.elapsed())
                    );
                }
            }
            Err(error) => refused = Some(error),
        }
    }
    let closing = closings(&pipeline, &outcome, &cache, &record, &request);
    record.figures = closing
        .iter()
        .flat_map(|closing| closing.figures.iter().cloned())
        .collect();
    if !record.figures.is_empty() {
        // Best effort: the record written above stands without them.
        let _ = record.write(&request.paths.run_root);
    }
    print_outcome(&record, &request, remote.as_deref());
    if let Some(error) = refused {
        eprintln!("error: {error}");
        return Ok(exit_code::INVALID);
    }
    if status == RunStatus::Succeeded && request.mode != Mode::Quiet && !request.json {
        print_final_outputs(&pipeline, &outcome, &cache, &request.paths.project_root);
        for line in closing.iter().flat_map(|closing| &closing.figures) {
            println!("{line}");
        }
        for line in closing.iter().flat_map(|closing| &closing.lines) {
            println!("{line}");
        }
        for (label, path) in closing.iter().flat_map(|closing| &closing.files) {
            let shown = path
                .strip_prefix(&request.paths.project_root)
                .unwrap_or(path);
            println!("{label}: {}", shown.display());
        }
    }
    Ok(match status {
        RunStatus::Succeeded | RunStatus::Running => exit_code::OK,
        RunStatus::Failed => exit_code::STAGE_FAILED,
        RunStatus::Interrupted => exit_code::INTERRUPTED,
    })
}

/// What each stage with a committed output adds to the end of the run, in pipeline order. A
/// stage that cannot say is a warning: the outputs stand.
fn closings(
    pipeline: &Pipeline,
    outcome: &RunOutcome,
    cache: &Cache,
    record: &RunRecord,
    request: &RunRequest,
) -> Vec<Closing> {
    let run_dir = run_dir(&request.paths.run_root, &record.run_id);
    pipeline
        .stages
        .iter()
        .zip(&outcome.stages)
        .filter_map(|(stage, result)| Some((stage, result.manifest.as_ref()?)))
        .filter_map(|(stage, manifest)| {
            let output_dir = cache.entry_dir(manifest);
            let context = ClosingContext {
                output_dir: &output_dir,
                record,
                run_dir: &run_dir,
            };
            stage
                .prepared
                .closing(&context)
                .map_err(|error| eprintln!("warning: stage `{}`: {error}", stage.id))
                .ok()
        })
        .collect()
}

/// SIGINT and SIGTERM listeners. Created before anything runs: a signal stream is registered
/// when it is created, so a Ctrl-C during the first milliseconds is caught, not fatal.
struct Signals {
    interrupt: Option<Signal>,
    terminate: Option<Signal>,
}

impl Signals {
    fn install() -> Self {
        Self {
            interrupt: signal(SignalKind::interrupt()).ok(),
            terminate: signal(SignalKind::terminate()).ok(),
        }
    }

    /// Cancels on the first Ctrl-C or SIGTERM; a second one exits at once.
    async fn watch(mut self, cancel: CancellationToken) {
        tokio::select! {
            () = next(&mut self.interrupt) => {}
            () = next(&mut self.terminate) => {}
        }
        eprintln!("interrupted: stopping running stages (press Ctrl-C again to exit at once)");
        cancel.cancel();
        tokio::select! {
            () = next(&mut self.interrupt) => {}
            () = next(&mut self.terminate) => {}
        }
        std::process::exit(exit_code::INTERRUPTED);
    }
}

async fn next(stream: &mut Option<Signal>) {
    match stream {
        Some(stream) => {
            stream.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

fn stage_records(
    pipeline: &Pipeline,
    plan: &Plan,
    outcome: &RunOutcome,
    cache: &Cache,
    project_root: &Path,
) -> Vec<StageRecord> {
    plan.order
        .iter()
        .map(|&index| {
            let stage = &pipeline.stages[index];
            let result = &outcome.stages[index];
            let fingerprint = result
                .manifest
                .as_ref()
                .map(|manifest| manifest.fingerprint.0.clone())
                .or_else(|| {
                    plan.stages[index]
                        .fingerprint()
                        .map(|fingerprint| fingerprint.0)
                });
            StageRecord {
                id: stage.id.clone(),
                kind: stage.kind.name().to_owned(),
                status: result.status,
                reason: result.reason.clone(),
                duration_ms: result.duration.as_millis() as u64,
                started_at_ms: Some(result.started_at_ms),
                fingerprint,
                output_digest: result
                    .manifest
                    .as_ref()
                    .map(|manifest| manifest.digest.clone()),
                error: result.error.clone(),
                output: result.manifest.as_ref().map(|manifest| {
                    let dir = cache.entry_dir(manifest);
                    dir.strip_prefix(project_root)
                        .unwrap_or(&dir)
                        .display()
                        .to_string()
                }),
                log: result.log.as_ref().map(|log| {
                    log.strip_prefix(project_root)
                        .unwrap_or(log)
                        .display()
                        .to_string()
                }),
                needs: stage_needs(pipeline, index),
                params: Some(stage.prepared.params()),
            }
        })
        .collect()
}

/// The ids of the stages stage `index` needs.
pub fn stage_needs(pipeline: &Pipeline, index: usize) -> Vec<String> {
    pipeline.stages[index]
        .needs
        .iter()
        .map(|&need| pipeline.stages[need].id.clone())
        .collect()
}

/// Where the outputs of the pipeline's final stages (those nothing reads) are.
fn print_final_outputs(
    pipeline: &Pipeline,
    outcome: &RunOutcome,
    cache: &Cache,
    project_root: &Path,
) {
    for (index, stage) in pipeline.stages.iter().enumerate() {
        let consumed = pipeline
            .stages
            .iter()
            .any(|other| other.needs.contains(&index));
        if let (false, Some(manifest)) = (consumed, &outcome.stages[index].manifest) {
            let dir = cache.entry_dir(manifest);
            let dir = dir.strip_prefix(project_root).unwrap_or(&dir);
            println!("  {} -> {}/", stage.id, dir.display());
        }
    }
}

fn print_plan(pipeline: &Pipeline, plan: &Plan, request: &RunRequest, remote: Option<JsonRemote>) {
    if request.json {
        let summary = JsonSummary {
            run_id: None,
            status: "valid".to_owned(),
            remote,
            stages: plan
                .order
                .iter()
                .map(|&index| {
                    let stage_plan = &plan.stages[index];
                    JsonStage {
                        id: pipeline.stages[index].id.clone(),
                        status: stage_plan.decision.word().to_owned(),
                        reason: stage_plan.reason.clone(),
                        duration_ms: 0,
                        fingerprint: stage_plan.fingerprint().map(|fingerprint| fingerprint.0),
                        output: None,
                    }
                })
                .collect(),
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
        return;
    }
    if request.mode == Mode::Quiet {
        return;
    }
    let width = pipeline.id_width();
    println!(
        "pipeline `{}` ({}) is valid: {} stages",
        pipeline.name,
        pipeline.file.display(),
        pipeline.stages.len()
    );
    println!(
        "plan: {} to run, {} cached, {} reused, {} skipped{}",
        plan.count(Decision::Run),
        plan.count(Decision::Cached),
        plan.count(Decision::Reuse),
        plan.count(Decision::Skip),
        match &remote {
            Some(_) => format!(", {} from the remote cache", plan.count(Decision::Remote)),
            None => String::new(),
        }
    );
    if let Some(remote) = &remote {
        if remote.reachable {
            println!("remote cache {}: reachable", remote.url);
        } else {
            println!(
                "remote cache {}: unreachable, a run would go on without it",
                remote.url
            );
        }
    }
    for &index in &plan.order {
        let stage_plan = &plan.stages[index];
        let fingerprint = stage_plan
            .fingerprint()
            .map(|fingerprint| format!("  [{}]", fingerprint.short()))
            .unwrap_or_default();
        println!(
            "  {:<6}  {:<width$}  {}{}",
            stage_plan.decision.word(),
            pipeline.stages[index].id,
            stage_plan.reason,
            fingerprint,
        );
    }
}

fn print_outcome(record: &RunRecord, request: &RunRequest, remote: Option<&Remote>) {
    if request.json {
        let summary = JsonSummary {
            run_id: Some(record.run_id.clone()),
            remote: remote.map(|remote| JsonRemote {
                url: remote.url().to_owned(),
                reachable: remote.down().is_none(),
            }),
            status: match record.status {
                RunStatus::Succeeded | RunStatus::Running => "succeeded",
                RunStatus::Failed | RunStatus::Interrupted => "failed",
            }
            .to_owned(),
            stages: record
                .stages
                .iter()
                .map(|stage| JsonStage {
                    id: stage.id.clone(),
                    status: stage.status.word().to_owned(),
                    reason: stage.error.clone().unwrap_or_else(|| stage.reason.clone()),
                    duration_ms: stage.duration_ms,
                    fingerprint: stage.fingerprint.clone(),
                    output: stage.output.clone(),
                })
                .collect(),
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
    }
    let duration = human(std::time::Duration::from_millis(
        record.duration_ms.unwrap_or(0),
    ));
    let record_path = run_dir(&request.paths.run_root, &record.run_id).join("run.json");
    let record_path = record_path
        .strip_prefix(&request.paths.project_root)
        .unwrap_or(&record_path);
    let counts = record.counts();
    match record.status {
        RunStatus::Succeeded | RunStatus::Running => {
            if request.mode != Mode::Quiet && !request.json {
                println!(
                    "run {} succeeded in {duration}: {counts} ({})",
                    record.run_id,
                    record_path.display()
                );
            }
        }
        RunStatus::Failed | RunStatus::Interrupted => {
            // Failures reach stderr even with --quiet: cron mails it.
            let word = if record.status == RunStatus::Failed {
                "failed"
            } else {
                "was interrupted"
            };
            eprintln!(
                "run {} {word} after {duration}: {counts} ({})",
                record.run_id,
                record_path.display()
            );
            for stage in record
                .stages
                .iter()
                .filter(|stage| stage.status == StageStatus::Failed)
            {
                let log = stage
                    .log
                    .as_deref()
                    .map(|log| format!(" (log: {log})"))
                    .unwrap_or_default();
                eprintln!(
                    "error: stage `{}` failed: {}{log}",
                    stage.id,
                    stage.error.as_deref().unwrap_or("unknown error")
                );
            }
            if record.status == RunStatus::Failed {
                eprintln!("finished stages are cached: fix the cause and run again to resume");
            }
        }
    }
}

/// What a push stored.
#[derive(Debug, Default)]
pub struct PushSummary {
    /// Entries stored now.
    pub stored: usize,
    pub bytes: u64,
}

/// Stores `manifests`' entries in `remote`, four at a time, skipping those known to be there;
/// refused credentials stop it.
pub async fn push<'a>(
    cache: &Cache,
    remote: &Remote,
    manifests: impl Iterator<Item = &'a Manifest>,
    data_dir: &Path,
) -> Result<PushSummary, RemoteError> {
    use futures::StreamExt;
    let mut pending = Vec::new();
    for manifest in manifests {
        if !cache.is_pushed(manifest, remote.url()).await {
            pending.push(manifest);
        }
    }
    let results: Vec<(&Manifest, Result<Pushed, RemoteError>)> = futures::stream::iter(pending)
        .map(|manifest| async move {
            let entry_dir = cache.entry_dir(manifest);
            (manifest, remote.push(manifest, &entry_dir, data_dir).await)
        })
        .buffer_unordered(4)
        .collect()
        .await;
    let mut summary = PushSummary::default();
    for (manifest, result) in results {
        match result? {
            Pushed::Stored { bytes } => {
                summary.stored += 1;
                summary.bytes += bytes;
            }
            Pushed::AlreadyThere => {}
            // Left local (the remote went down, or a file changed): no marker.
            Pushed::Skipped => continue,
        }
        // The marker only saves a request next time; failing to write it loses nothing.
        let _ = cache.mark_pushed(manifest, remote.url()).await;
    }
    Ok(summary)
}

/// The events of a run, one JSON object a line, next to its `run.json`.
pub const EVENTS_FILE: &str = "events.jsonl";

/// Appends a run's events to its events file. Best effort: a file that cannot be written
/// costs the watchers their live view, never the run.
struct EventJournal {
    file: Option<std::fs::File>,
}

impl EventJournal {
    fn create(path: &Path, pipeline: &Pipeline, plan: &Plan) -> Self {
        let file = std::fs::File::create(path).ok();
        let mut journal = Self { file };
        let stages: Vec<serde_json::Value> = plan
            .order
            .iter()
            .map(|&index| {
                serde_json::json!({
                    "id": pipeline.stages[index].id,
                    "kind": pipeline.stages[index].kind.name(),
                    "decision": plan.stages[index].decision.word(),
                    "reason": plan.stages[index].reason,
                    "needs": stage_needs(pipeline, index),
                })
            })
            .collect();
        journal.write(serde_json::json!({"event": "plan", "stages": stages}));
        journal
    }

    fn write(&mut self, value: serde_json::Value) {
        use std::io::Write;
        if let Some(file) = &mut self.file {
            let _ = writeln!(file, "{value}");
        }
    }

    fn record(&mut self, event: &RunEvent, names: &[String]) {
        let name = |stage: &usize| names.get(*stage).cloned().unwrap_or_default();
        let value = match event {
            RunEvent::StageStarted { stage } => {
                serde_json::json!({"event": "started", "stage": name(stage), "at_ms": now_ms()})
            }
            RunEvent::StageProgress {
                stage,
                message,
                done,
                total,
            } => serde_json::json!({
                "event": "progress", "stage": name(stage), "message": message, "done": done, "total": total,
            }),
            RunEvent::StageWarning { stage, message } => {
                serde_json::json!({"event": "warning", "stage": name(stage), "message": message})
            }
            RunEvent::StageReport { .. } => return,
            RunEvent::StageFinished {
                stage,
                status,
                reason,
                duration,
            } => serde_json::json!({
                "event": "finished", "stage": name(stage), "status": status.word(),
                "reason": reason, "duration_ms": duration.as_millis() as u64,
            }),
        };
        self.write(value);
    }

    fn end(&mut self, record: &RunRecord) {
        let status = match record.status {
            RunStatus::Succeeded | RunStatus::Running => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        };
        self.write(
            serde_json::json!({"event": "end", "status": status, "counts": record.counts()}),
        );
    }
}
