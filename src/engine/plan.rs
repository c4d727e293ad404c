//! The plan: for each stage, `run`, `cached`, `remote`, `reuse` or `skip`, with the reason and the
//! fingerprint. `--validate-only` stops here; the executor carries the plan out, deciding again
//! for stages whose inputs had to run first (identical outputs make them cache hits).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::engine::cache::{Cache, CacheError, Manifest};
use crate::engine::dag::Selection;
use crate::engine::fingerprint::{FileDigests, Fingerprint, FingerprintKey, KEY_FORMAT};
use crate::engine::pipeline::{Pipeline, Stage};
use crate::util::time::human;

/// What happens to a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Execute it.
    Run,
    /// Its output for this exact fingerprint is in the cache.
    Cached,
    /// Its output for this exact fingerprint is in the remote cache: download it (and run the
    /// stage if the download fails verification).
    Remote,
    /// Use its latest output although the fingerprint differs (outside the selection, or
    /// within `cache.reuse_for`).
    Reuse,
    /// Not part of this run.
    Skip,
}

impl Decision {
    pub fn word(self) -> &'static str {
        match self {
            Self::Run => "run",
            Self::Cached => "cached",
            Self::Remote => "remote",
            Self::Reuse => "reuse",
            Self::Skip => "skip",
        }
    }
}

/// The decision for one stage.
#[derive(Debug, Clone)]
pub struct StagePlan {
    pub decision: Decision,
    pub reason: String,
    /// Why the stage runs regardless of the cache (`--force`, `--start-from`), if it does.
    pub forced: Option<&'static str>,
    /// The fingerprint key; `None` while an input still has to run.
    pub key: Option<FingerprintKey>,
    /// The output the stage provides when it does not run.
    pub manifest: Option<Manifest>,
    /// Digests of the project files the stage references.
    pub files: BTreeMap<String, String>,
}

impl StagePlan {
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        match &self.manifest {
            Some(manifest) if self.decision != Decision::Run => Some(manifest.fingerprint.clone()),
            _ => self.key.as_ref().map(FingerprintKey::fingerprint),
        }
    }
}

/// Decisions for every stage, by stage index, with the order to consider them in.
#[derive(Debug, Clone)]
pub struct Plan {
    pub stages: Vec<StagePlan>,
    pub order: Vec<usize>,
}

impl Plan {
    /// How many stages have each decision.
    pub fn count(&self, decision: Decision) -> usize {
        self.stages
            .iter()
            .filter(|stage| stage.decision == decision)
            .count()
    }
}

/// Why no plan could be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "stage `{stage}` is needed by `{consumer}` but is outside the selection and has no successful output yet; run it first (for example without --start-from/--only)"
    )]
    MissingInput { stage: String, consumer: String },
    #[error(
        "stage `{stage}` is outside the selection and its latest output is damaged ({damage}); run it again (for example with --start-from {stage})"
    )]
    DamagedInput { stage: String, damage: String },
    #[error("failed to hash {path}, which stage `{stage}` references")]
    Hash {
        stage: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// Plans `selection` of `pipeline` against `cache` at time `now_ms`.
pub async fn plan(
    pipeline: &Pipeline,
    selection: &Selection,
    cache: &Cache,
    digests: &mut FileDigests,
    now_ms: u64,
) -> Result<Plan, PlanError> {
    let dag = &pipeline.dag;
    let selected = dag.select(selection);
    let mut needed = vec![false; dag.len()];
    for (index, stage) in pipeline.stages.iter().enumerate() {
        if selected[index] {
            for &input in &stage.needs {
                needed[input] = true;
            }
        }
    }
    let mut stages: Vec<Option<StagePlan>> = vec![None; dag.len()];
    for &index in dag.topological_order() {
        let stage = &pipeline.stages[index];
        let entry = if !selected[index] && !needed[index] {
            StagePlan {
                decision: Decision::Skip,
                reason: "not selected".to_owned(),
                forced: None,
                key: None,
                manifest: None,
                files: BTreeMap::new(),
            }
        } else if !selected[index] {
            let Some(manifest) = cache.latest(&stage.id).await? else {
                let consumer = pipeline
                    .stages
                    .iter()
                    .enumerate()
                    .find(|(consumer, other)| selected[*consumer] && other.needs.contains(&index))
                    .map(|(_, other)| other.id.clone())
                    .unwrap_or_default();
                return Err(PlanError::MissingInput {
                    stage: stage.id.clone(),
                    consumer,
                });
            };
            if let Some(damage) = cache.damage(&manifest) {
                return Err(PlanError::DamagedInput {
                    stage: stage.id.clone(),
                    damage,
                });
            }
            let age = age(&manifest, now_ms);
            StagePlan {
                decision: Decision::Reuse,
                reason: format!("outside the selection: latest output, {} old", human(age)),
                forced: None,
                key: None,
                manifest: Some(manifest),
                files: BTreeMap::new(),
            }
        } else {
            let files = file_digests(pipeline, stage, digests)?;
            let forced = if selection.force {
                Some("forced (--force)")
            } else if selection.start_from.contains(&index) {
                Some("forced (--start-from)")
            } else {
                None
            };
            let pending: Vec<&str> = stage
                .needs
                .iter()
                .filter(|&&input| {
                    stages[input]
                        .as_ref()
                        .is_some_and(|plan| plan.decision == Decision::Run)
                })
                .map(|&input| pipeline.stages[input].id.as_str())
                .collect();
            if pending.is_empty() {
                let inputs = stage
                    .needs
                    .iter()
                    .filter_map(|&input| stages[input].as_ref()?.manifest.as_ref())
                    .map(|manifest| (manifest.stage.clone(), manifest.digest.clone()))
                    .collect();
                decide(cache, stage, files, inputs, forced, now_ms).await?
            } else {
                let names: Vec<String> = pending.iter().map(|id| format!("`{id}`")).collect();
                StagePlan {
                    decision: Decision::Run,
                    reason: forced
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("input {} will run first", names.join(", "))),
                    forced,
                    key: None,
                    manifest: None,
                    files,
                }
            }
        };
        stages[index] = Some(entry);
    }
    Ok(Plan {
        stages: stages
            .into_iter()
            .map(|stage| stage.expect("every stage planned"))
            .collect(),
        order: dag.topological_order().to_vec(),
    })
}

fn file_digests(
    pipeline: &Pipeline,
    stage: &Stage,
    digests: &mut FileDigests,
) -> Result<BTreeMap<String, String>, PlanError> {
    stage
        .files
        .iter()
        .map(|file| {
            let absolute = pipeline.project_root.join(&file.path);
            let name = file.path.to_string_lossy().into_owned();
            digests
                .digest(&absolute)
                .map(|digest| (name.clone(), digest))
                .map_err(|source| PlanError::Hash {
                    stage: stage.id.clone(),
                    path: name,
                    source,
                })
        })
        .collect()
}

/// The key of `stage` given its file digests and its inputs' output digests.
pub fn key_for(
    stage: &Stage,
    files: BTreeMap<String, String>,
    inputs: BTreeMap<String, String>,
) -> FingerprintKey {
    FingerprintKey {
        format: KEY_FORMAT,
        kind: stage.kind.name().to_owned(),
        kind_version: stage.kind.code_version(),
        params: stage.prepared.params(),
        files,
        version: stage.version,
        inputs,
    }
}

fn age(manifest: &Manifest, now_ms: u64) -> Duration {
    Duration::from_millis(now_ms.saturating_sub(manifest.created_at_ms))
}

/// Decides a selected stage whose inputs' outputs are all known.
pub async fn decide(
    cache: &Cache,
    stage: &Stage,
    files: BTreeMap<String, String>,
    inputs: BTreeMap<String, String>,
    forced: Option<&'static str>,
    now_ms: u64,
) -> Result<StagePlan, CacheError> {
    let key = key_for(stage, files.clone(), inputs);
    let run = |reason: String, key: FingerprintKey| StagePlan {
        decision: Decision::Run,
        reason,
        forced,
        key: Some(key),
        manifest: None,
        files: files.clone(),
    };
    if let Some(why) = forced {
        return Ok(run(why.to_owned(), key));
    }
    let fingerprint = key.fingerprint();
    let expired = |manifest: &Manifest| {
        let age = age(manifest, now_ms);
        stage
            .ttl
            .filter(|&ttl| age > ttl)
            .map(|ttl| format!("ttl expired {} ago", human(age - ttl)))
    };
    let mut unusable = None;
    if let Some(manifest) = cache.lookup(&stage.id, &fingerprint).await? {
        if let Some(damage) = cache.damage(&manifest) {
            unusable = Some(format!("cached output damaged: {damage}"));
        } else if let Some(expired) = expired(&manifest) {
            return Ok(run(expired, key));
        } else {
            return Ok(StagePlan {
                decision: Decision::Cached,
                reason: format!("output from {} ago", human(age(&manifest, now_ms))),
                forced,
                key: Some(key),
                manifest: Some(manifest),
                files,
            });
        }
    }
    if let Some(remote) = cache.remote()
        && let Some(manifest) = remote
            .lookup(cache.pipeline(), &stage.id, &fingerprint.0)
            .await?
        && expired(&manifest).is_none()
    {
        return Ok(StagePlan {
            decision: Decision::Remote,
            reason: format!(
                "in the remote cache: output from {} ago",
                human(age(&manifest, now_ms))
            ),
            forced,
            key: Some(key),
            manifest: Some(manifest),
            files,
        });
    }
    if let Some(unusable) = unusable {
        return Ok(run(unusable, key));
    }
    let latest = cache.latest(&stage.id).await?;
    let change = match &latest {
        Some(latest) => key.describe_change(&latest.key),
        None => "never ran".to_owned(),
    };
    // reuse_for tolerates changed inputs only: a params, file, version or code change re-runs.
    if let (Some(reuse_for), Some(latest)) = (stage.reuse_for, latest) {
        let age = age(&latest, now_ms);
        let only_inputs_changed = FingerprintKey {
            inputs: latest.key.inputs.clone(),
            ..key.clone()
        } == latest.key;
        if age <= reuse_for && only_inputs_changed && cache.damage(&latest).is_none() {
            return Ok(StagePlan {
                decision: Decision::Reuse,
                reason: format!(
                    "reuse_for {}: keeping the output from {} ago although {change}",
                    human(reuse_for),
                    human(age)
                ),
                forced,
                key: Some(key),
                manifest: Some(latest),
                files,
            });
        }
    }
    Ok(run(change, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::Bench;

    const CHAIN: &str = "name: t\nstages:\n  a:\n    kind: command\n    with: {x: 1}\n  b:\n    kind: command\n    needs: [a]\n    with: {x: 2}\n  c:\n    kind: command\n    with: {x: 3}\n";

    fn decisions(plan: &Plan) -> Vec<(Decision, String)> {
        plan.stages
            .iter()
            .map(|stage| (stage.decision, stage.reason.clone()))
            .collect()
    }

    #[tokio::test]
    async fn a_new_pipeline_runs_everything_and_then_nothing() {
        let bench = Bench::new();
        let pipeline = bench.pipeline(CHAIN);
        let first = bench.plan(&pipeline, &Selection::default()).await;
        assert_eq!(first.count(Decision::Run), 3);
        assert_eq!(first.stages[0].reason, "never ran");
        // `b` cannot be fingerprinted before `a` has an output.
        assert!(first.stages[1].key.is_none());
        assert!(
            first.stages[1].reason.contains("`a`"),
            "{}",
            first.stages[1].reason
        );
        let (_, outcome) = bench
            .run(bench.pipeline(CHAIN), &Selection::default(), 2)
            .await;
        assert!(!outcome.failed());
        let again = bench.plan(&pipeline, &Selection::default()).await;
        assert_eq!(again.count(Decision::Cached), 3, "{:?}", decisions(&again));
    }

    #[tokio::test]
    async fn a_changed_param_reruns_the_stage_and_its_consumers_only() {
        let bench = Bench::new();
        bench
            .run(bench.pipeline(CHAIN), &Selection::default(), 2)
            .await;
        let changed = bench.pipeline(&CHAIN.replace("{x: 1}", "{x: 9}"));
        let plan = bench.plan(&changed, &Selection::default()).await;
        let decisions = decisions(&plan);
        assert_eq!(
            decisions[0],
            (Decision::Run, "params changed: with.x".to_owned())
        );
        assert_eq!(decisions[1].0, Decision::Run, "{decisions:?}");
        assert_eq!(decisions[2].0, Decision::Cached, "{decisions:?}");
    }

    #[tokio::test]
    async fn selection_skips_reuses_and_forces() {
        let bench = Bench::new();
        let pipeline = bench.pipeline(CHAIN);
        // Nothing ran yet: `--only b` needs `a`'s latest output, which does not exist.
        let only_b = Selection {
            only: vec![1],
            ..Selection::default()
        };
        let mut digests = FileDigests::load(bench.dir.path().join("runs/digests.json"));
        let error = plan(&pipeline, &only_b, &bench.cache(&pipeline), &mut digests, 0)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("`a`"), "{error}");
        bench
            .run(bench.pipeline(CHAIN), &Selection::default(), 2)
            .await;
        let plan = bench.plan(&pipeline, &only_b).await;
        assert_eq!(plan.stages[0].decision, Decision::Reuse);
        assert_eq!(plan.stages[1].decision, Decision::Cached);
        assert_eq!(plan.stages[2].decision, Decision::Skip);
        let forced = Selection {
            start_from: vec![0],
            ..Selection::default()
        };
        let plan = bench.plan(&pipeline, &forced).await;
        assert_eq!(plan.stages[0].decision, Decision::Run);
        assert!(plan.stages[0].forced.is_some());
        // `a` re-runs with the same bytes, so `b` stays cached once it is decided again.
        assert_eq!(plan.stages[2].decision, Decision::Skip);
    }
}
