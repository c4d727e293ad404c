//! `asterflow status`: per stage, cached or stale and why, its age and last run.

use crate::engine::error::Error;
use crate::engine::exit_code;
use crate::engine::runner::Paths;
use crate::util::time::{human, now_ms};

pub async fn status(pipeline_file: &std::path::Path, paths: &Paths) -> Result<i32, Error> {
    let pipeline = crate::engine::runner::load(pipeline_file, paths, &crate::kinds::BUILTIN)?;
    let (plan, cache, _) = crate::engine::runner::make_plan(
        &pipeline,
        &crate::engine::dag::Selection::default(),
        paths,
        None,
    )
    .await?;
    let width = pipeline.id_width().max(5);
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
