//! Carries out a plan with tokio: independent stages run concurrently up to `--jobs`; after a
//! failure no new stage starts and running ones finish; on cancellation running stages are
//! told to stop. Outputs are committed to the cache by the executor, never by the stage.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::engine::cache::{Cache, Manifest};
use crate::engine::datastore::DataStore;
use crate::engine::events::{Progress, RunEvent};
use crate::engine::pipeline::Pipeline;
use crate::engine::plan::{Decision, Plan, StagePlan, decide};
use crate::engine::run_record::StageStatus;
use crate::engine::stage::{Resources, StageContext, StageError, StageInput};
use crate::util::time::now_ms;

/// Settings of one execution.
#[derive(Debug, Clone)]
pub struct ExecuteOptions {
    pub run_id: String,
    pub jobs: usize,
    /// The data directory stages see: the local one, or the mirror of `data_store`.
    pub data_dir: PathBuf,
    /// The data directory on an object store, when it is one.
    pub data_store: Option<Arc<DataStore>>,
    pub logs_dir: PathBuf,
}

/// What happened to one stage.
#[derive(Debug, Clone)]
pub struct StageOutcome {
    pub status: StageStatus,
    pub reason: String,
    pub duration: Duration,
    /// When the stage started or was decided (ms since the epoch).
    pub started_at_ms: u64,
    pub manifest: Option<Manifest>,
    pub error: Option<String>,
    pub log: Option<PathBuf>,
}

impl StageOutcome {
    fn without_work(status: StageStatus, reason: String, manifest: Option<Manifest>) -> Self {
        Self {
            status,
            reason,
            duration: Duration::ZERO,
            started_at_ms: now_ms(),
            manifest,
            error: None,
            log: None,
        }
    }
}

/// What happened to every stage, by stage index.
#[derive(Debug)]
pub struct RunOutcome {
    pub stages: Vec<StageOutcome>,
    pub interrupted: bool,
}

impl RunOutcome {
    pub fn failed(&self) -> bool {
        self.stages
            .iter()
            .any(|stage| stage.status == StageStatus::Failed)
    }
}

enum State {
    Waiting,
    Running,
    Finished,
}

/// Executes `plan`, sending progress to `events`, until done, failed or `cancel`led.
pub async fn execute(
    pipeline: Arc<Pipeline>,
    plan: Plan,
    cache: Cache,
    options: ExecuteOptions,
    events: UnboundedSender<RunEvent>,
    cancel: CancellationToken,
) -> RunOutcome {
    let count = pipeline.stages.len();
    let mut states: Vec<State> = (0..count).map(|_| State::Finished).collect();
    let mut outcomes: Vec<Option<StageOutcome>> = vec![None; count];
    // In dependency order, so that waiting passes down the whole chain.
    for &index in &plan.order {
        let stage_plan = &plan.stages[index];
        // A cached stage over one that still has work (a download, which may fail and run its
        // stage, writing other bytes) waits for it and is decided again then.
        let over_work = pipeline.stages[index]
            .needs
            .iter()
            .any(|&input| matches!(states[input], State::Waiting));
        let status = match stage_plan.decision {
            Decision::Run | Decision::Remote => {
                states[index] = State::Waiting;
                continue;
            }
            Decision::Cached if over_work => {
                states[index] = State::Waiting;
                continue;
            }
            Decision::Cached => StageStatus::Cached,
            Decision::Reuse => StageStatus::Reused,
            Decision::Skip => StageStatus::Skipped,
        };
        if let (StageStatus::Cached, Some(manifest)) = (status, &stage_plan.manifest)
            && let Err(error) = cache.set_latest(manifest).await
        {
            // Only the `latest` pointer is affected; the cached output itself is sound.
            Progress::new(index, events.clone())
                .message(format!("could not record the latest output: {error}"));
        }
        let _ = events.send(RunEvent::StageFinished {
            stage: index,
            status,
            reason: stage_plan.reason.clone(),
            duration: Duration::ZERO,
        });
        outcomes[index] = Some(StageOutcome::without_work(
            status,
            stage_plan.reason.clone(),
            stage_plan.manifest.clone(),
        ));
    }

    let mut running: JoinSet<StageOutcome> = JoinSet::new();
    let mut task_stage: std::collections::HashMap<tokio::task::Id, usize> =
        std::collections::HashMap::new();
    let mut stop_reason: Option<String> = None;
    let mut interrupted = false;
    // Shared values (exchange clients, in-process replay exchanges) live as long as the run.
    let resources = Arc::new(Resources::default());
    loop {
        if stop_reason.is_none() {
            for &index in &plan.order {
                if running.len() >= options.jobs.max(1) {
                    break;
                }
                if !matches!(states[index], State::Waiting) {
                    continue;
                }
                let inputs: Option<Vec<Manifest>> = pipeline.stages[index]
                    .needs
                    .iter()
                    .map(|&input| {
                        outcomes[input]
                            .as_ref()
                            .and_then(|outcome| outcome.manifest.clone())
                    })
                    .collect();
                let Some(inputs) = inputs else { continue };
                states[index] = State::Running;
                let _ = events.send(RunEvent::StageStarted { stage: index });
                let task = StageTask {
                    pipeline: Arc::clone(&pipeline),
                    index,
                    plan: plan.stages[index].clone(),
                    inputs,
                    cache: cache.clone(),
                    options: options.clone(),
                    progress: Progress::new(index, events.clone()),
                    cancel: cancel.child_token(),
                    resources: Arc::clone(&resources),
                };
                let handle = running.spawn(task.run());
                task_stage.insert(handle.id(), index);
            }
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            // Cancellation first: a stage stopped by it must count as interrupted, not failed.
            biased;
            () = cancel.cancelled(), if !interrupted => {
                interrupted = true;
                stop_reason.get_or_insert_with(|| "the run was interrupted".to_owned());
            }
            joined = running.join_next_with_id() => {
                let Some(joined) = joined else { break };
                let (index, outcome) = match joined {
                    Ok((id, outcome)) => (task_stage[&id], outcome),
                    // A panicking stage fails like any other: the run must not report success.
                    Err(error) => (
                        task_stage[&error.id()],
                        StageOutcome {
                            error: Some(format!("stage task panicked: {error}")),
                            ..StageOutcome::without_work(StageStatus::Failed, "panicked".to_owned(), None)
                        },
                    ),
                };
                if outcome.status == StageStatus::Failed && stop_reason.is_none() {
                    stop_reason = Some(format!("stage `{}` failed", pipeline.stages[index].id));
                }
                let _ = events.send(RunEvent::StageFinished {
                    stage: index,
                    status: outcome.status,
                    reason: outcome.error.clone().unwrap_or_else(|| outcome.reason.clone()),
                    duration: outcome.duration,
                });
                states[index] = State::Finished;
                outcomes[index] = Some(outcome);
            }
        }
    }

    // The last stage may have been stopped and joined in the same turn the token fired.
    if cancel.is_cancelled() && !interrupted {
        interrupted = true;
        stop_reason = Some("the run was interrupted".to_owned());
    }
    let stop_reason = stop_reason.unwrap_or_else(|| "an input did not finish".to_owned());
    let stages = outcomes
        .into_iter()
        .enumerate()
        .map(|(index, outcome)| {
            outcome.unwrap_or_else(|| {
                let reason = format!("not started: {stop_reason}");
                let _ = events.send(RunEvent::StageFinished {
                    stage: index,
                    status: StageStatus::Skipped,
                    reason: reason.clone(),
                    duration: Duration::ZERO,
                });
                StageOutcome::without_work(StageStatus::Skipped, reason, None)
            })
        })
        .collect();
    RunOutcome {
        stages,
        interrupted,
    }
}

struct StageTask {
    pipeline: Arc<Pipeline>,
    index: usize,
    plan: StagePlan,
    inputs: Vec<Manifest>,
    cache: Cache,
    options: ExecuteOptions,
    progress: Progress,
    resources: Arc<Resources>,
    cancel: CancellationToken,
}

impl StageTask {
    async fn run(self) -> StageOutcome {
        let started = Instant::now();
        let started_at_ms = now_ms();
        let stage = &self.pipeline.stages[self.index];
        let log_path = self.options.logs_dir.join(format!("{}.log", stage.id));
        let failed = |reason: String, error: String| StageOutcome {
            status: StageStatus::Failed,
            reason,
            duration: started.elapsed(),
            started_at_ms,
            manifest: None,
            error: Some(error),
            log: Some(log_path.clone()),
        };
        // The plan's decision holds while the inputs are the outputs it assumed; a stage
        // planned while an input still had to run, or over an input whose bytes turned out
        // otherwise, is decided now.
        let inputs: BTreeMap<String, String> = self
            .inputs
            .iter()
            .map(|manifest| (manifest.stage.clone(), manifest.digest.clone()))
            .collect();
        let as_planned = self
            .plan
            .key
            .as_ref()
            .is_some_and(|key| key.inputs == inputs);
        let decided = if as_planned {
            self.plan.clone()
        } else {
            match decide(
                &self.cache,
                stage,
                self.plan.files.clone(),
                inputs,
                self.plan.forced,
                now_ms(),
            )
            .await
            {
                Ok(decided) => StagePlan {
                    reason: match decided.decision {
                        Decision::Cached | Decision::Reuse | Decision::Remote => {
                            format!("inputs re-ran; {}", decided.reason)
                        }
                        _ => decided.reason,
                    },
                    ..decided
                },
                Err(error) => return failed("cache lookup failed".into(), error_chain(&error)),
            }
        };
        let Some(key) = decided.key.clone() else {
            return failed("no fingerprint".into(), "internal: no key".into());
        };
        let mut reason = decided.reason.clone();
        match (decided.decision, decided.manifest) {
            (status @ (Decision::Cached | Decision::Reuse), manifest) => {
                if status == Decision::Cached
                    && let Some(manifest) = &manifest
                {
                    let _ = self.cache.set_latest(manifest).await;
                }
                return StageOutcome {
                    status: if status == Decision::Cached {
                        StageStatus::Cached
                    } else {
                        StageStatus::Reused
                    },
                    reason,
                    duration: started.elapsed(),
                    started_at_ms,
                    manifest,
                    error: None,
                    log: None,
                };
            }
            (Decision::Remote, Some(manifest)) => match self
                .cache
                .download(
                    key.clone(),
                    &manifest,
                    &self.options.run_id,
                    stage.prepared.reports(),
                    &self.options.data_dir,
                )
                .await
            {
                Ok(manifest) => {
                    // The parts it names go to the data store like those of a stage that ran.
                    if let Some(data) = &self.options.data_store
                        && let Err(error) = data.publish(&manifest.attachments).await
                    {
                        return failed(reason, error);
                    }
                    return StageOutcome {
                        status: StageStatus::Downloaded,
                        reason,
                        duration: started.elapsed(),
                        started_at_ms,
                        manifest: Some(manifest),
                        error: None,
                        log: None,
                    };
                }
                Err(why) => {
                    let remote = self.cache.remote().map_or("", |remote| remote.url());
                    eprintln!(
                        "warning: stage `{}`: the entry in remote cache {remote} is not usable: {why}; running the stage",
                        stage.id
                    );
                    reason = format!("remote entry not usable ({why}); running it");
                }
            },
            _ => {}
        }

        let output_dir = self.cache.staging_dir(&self.options.run_id, &stage.id);
        if let Err(error) = prepare_dirs(
            &output_dir,
            &log_path,
            &stage.id,
            stage.kind.name(),
            &reason,
        ) {
            return failed(reason, error.to_string());
        }
        let context = StageContext {
            stage_id: stage.id.clone(),
            pipeline: self.pipeline.name.clone(),
            run_id: self.options.run_id.clone(),
            project_root: self.pipeline.project_root.clone(),
            data_dir: self.options.data_dir.clone(),
            data_url: self
                .options
                .data_store
                .as_ref()
                .map(|store| store.url().to_owned()),
            output_dir,
            log_path: log_path.clone(),
            inputs: self
                .inputs
                .iter()
                .zip(&stage.needs)
                .map(|(manifest, &input)| StageInput {
                    id: manifest.stage.clone(),
                    dir: self.cache.entry_dir(manifest),
                    digest: manifest.digest.clone(),
                    matrix: self.pipeline.stages[input]
                        .matrix
                        .iter()
                        .map(|(name, value)| (name.clone(), crate::engine::matrix::display(value)))
                        .collect(),
                })
                .collect(),
            progress: self.progress.clone(),
            cancel: self.cancel.clone(),
            resources: std::sync::Arc::clone(&self.resources),
        };
        if let Some(data) = &self.options.data_store
            && let Err(error) = self.mirror_inputs(data).await
        {
            append_log(&log_path, &format!("# failed: {error}"));
            return failed(reason, error);
        }
        if let Err(error) = stage.prepared.run(&context).await {
            let message = match &error {
                StageError::Cancelled => "interrupted".to_owned(),
                other => error_chain(other),
            };
            append_log(&log_path, &format!("# failed: {message}"));
            return failed(reason, message);
        }
        let attachments = match stage.prepared.attachments(&context.output_dir) {
            Ok(attachments) => attachments,
            Err(error) => {
                append_log(&log_path, &format!("# failed: {error}"));
                return failed(reason, error);
            }
        };
        // What the output names goes to the data store before the output is committed: an
        // entry never names a part the store lacks.
        if let Some(data) = &self.options.data_store {
            match data.publish(&attachments).await {
                Ok(bytes) if bytes > 0 => append_log(
                    &log_path,
                    &format!("# stored {bytes} bytes of parts in {}", data.url()),
                ),
                Ok(_) => {}
                Err(error) => {
                    append_log(&log_path, &format!("# failed: {error}"));
                    return failed(reason, error);
                }
            }
        }
        match self
            .cache
            .commit(
                &stage.id,
                key,
                &self.options.run_id,
                now_ms(),
                stage.prepared.reports(),
                attachments,
            )
            .await
        {
            Ok(manifest) => {
                append_log(
                    &log_path,
                    &format!("# committed {} file(s)", manifest.files.len()),
                );
                StageOutcome {
                    status: StageStatus::Ran,
                    reason,
                    duration: started.elapsed(),
                    started_at_ms,
                    manifest: Some(manifest),
                    error: None,
                    log: Some(log_path),
                }
            }
            Err(error) => failed(
                reason,
                format!("failed to commit the output: {}", error_chain(&error)),
            ),
        }
    }
}

impl StageTask {
    /// Brings into the data store's mirror what the stage will read: the files its inputs name
    /// and the prefixes it reads beyond them.
    async fn mirror_inputs(&self, data: &DataStore) -> Result<(), String> {
        let stage = &self.pipeline.stages[self.index];
        let named: Vec<_> = if stage.prepared.reads_data_remotely() {
            Vec::new()
        } else {
            self.inputs
                .iter()
                .flat_map(|manifest| manifest.attachments.iter().cloned())
                .collect()
        };
        let prefixes = stage.prepared.data_prefixes();
        if !named.is_empty() || !prefixes.is_empty() {
            self.progress
                .message(format!("reading the data directory {}", data.url()));
        }
        let mut bytes = data.hydrate(&named).await?;
        for prefix in prefixes {
            bytes += data.hydrate_prefix(&prefix).await?;
        }
        if bytes > 0 {
            append_log(
                &self.options.logs_dir.join(format!("{}.log", stage.id)),
                &format!("# mirrored {bytes} bytes from {}", data.url()),
            );
        }
        Ok(())
    }
}

/// Every message in an error's source chain, joined with `: `.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn prepare_dirs(
    output_dir: &std::path::Path,
    log_path: &std::path::Path,
    stage: &str,
    kind: &str,
    reason: &str,
) -> std::io::Result<()> {
    if output_dir.exists() {
        fs_err::remove_dir_all(output_dir)?;
    }
    fs_err::create_dir_all(output_dir)?;
    if let Some(parent) = log_path.parent() {
        fs_err::create_dir_all(parent)?;
    }
    fs_err::write(
        log_path,
        format!(
            "# stage {stage} ({kind}) started {}: {reason}\n",
            crate::util::time::rfc3339(now_ms())
        ),
    )
}

fn append_log(path: &std::path::Path, line: &str) {
    use std::io::Write;
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
    {
        let _ = writeln!(file, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use crate::engine::dag::Selection;
    use crate::engine::run_record::StageStatus;
    use crate::engine::testing::Bench;

    fn statuses(outcome: &super::RunOutcome) -> Vec<StageStatus> {
        outcome.stages.iter().map(|stage| stage.status).collect()
    }

    #[tokio::test]
    async fn inputs_reach_their_consumers_through_the_cache() {
        let bench = Bench::new();
        let text = "name: t\nstages:\n  a:\n    kind: command\n    with: {x: 1}\n  b:\n    kind: command\n    needs: [a]\n    with: {x: 2}\n";
        let (_, outcome) = bench
            .run(bench.pipeline(text), &Selection::default(), 4)
            .await;
        assert_eq!(statuses(&outcome), [StageStatus::Ran, StageStatus::Ran]);
        let pipeline = bench.pipeline(text);
        let cache = bench.cache(&pipeline);
        let manifest = outcome.stages[1].manifest.as_ref().unwrap();
        let out: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(cache.entry_dir(manifest).join("out.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(out["inputs"]["a"]["params"]["x"], 1);
        // The committed files are read-only: nothing rewrites a cache entry.
        let file = cache.entry_dir(manifest).join("out.json");
        assert!(std::fs::metadata(file).unwrap().permissions().readonly());
        let (_, again) = bench.run(pipeline, &Selection::default(), 4).await;
        assert_eq!(statuses(&again), [StageStatus::Cached, StageStatus::Cached]);
    }

    #[tokio::test]
    async fn a_failure_stops_new_starts_and_keeps_what_finished() {
        let bench = Bench::new();
        let text = "name: t\nstages:\n  ok:\n    kind: command\n    with: {x: 1}\n  bad:\n    kind: command\n    needs: [ok]\n    with: {fail: true}\n  after:\n    kind: command\n    needs: [bad]\n    with: {x: 3}\n";
        let (_, outcome) = bench
            .run(bench.pipeline(text), &Selection::default(), 1)
            .await;
        assert_eq!(
            statuses(&outcome),
            [StageStatus::Ran, StageStatus::Failed, StageStatus::Skipped]
        );
        assert!(outcome.failed());
        assert!(outcome.stages[1].manifest.is_none());
        assert!(
            outcome.stages[2].reason.contains("stage `bad` failed"),
            "{}",
            outcome.stages[2].reason
        );
        // The next run resumes: `ok` is cached, `bad` runs again.
        let (plan, _) = bench
            .run(bench.pipeline(text), &Selection::default(), 1)
            .await;
        assert_eq!(
            plan.stages[0].decision,
            crate::engine::plan::Decision::Cached
        );
        assert_eq!(plan.stages[1].decision, crate::engine::plan::Decision::Run);
    }

    #[tokio::test]
    async fn independent_stages_run_concurrently_up_to_jobs() {
        let text = "name: t\nstages:\n  a:\n    kind: command\n    with: {sleep_ms: 400}\n  b:\n    kind: command\n    with: {sleep_ms: 400, y: 1}\n";
        let bench = Bench::new();
        let started = Instant::now();
        let (_, outcome) = bench
            .run(bench.pipeline(text), &Selection::default(), 2)
            .await;
        let parallel = started.elapsed();
        assert!(!outcome.failed());
        let bench = Bench::new();
        let started = Instant::now();
        bench
            .run(bench.pipeline(text), &Selection::default(), 1)
            .await;
        let serial = started.elapsed();
        assert!(parallel.as_millis() < 750, "jobs 2 took {parallel:?}");
        assert!(serial.as_millis() >= 800, "jobs 1 took {serial:?}");
    }
}
