//! `asterflow push` and `asterflow pull`: move a pipeline's entries to and from its remote
//! cache explicitly (a run does both on its own: it downloads what the remote has and stores
//! what it made).

use std::sync::Arc;

use crate::engine::error::Error;
use crate::engine::exit_code;
use crate::engine::pipeline::Pipeline;
use crate::engine::plan::Decision;
use crate::engine::remote::{Pushed, Remote};
use crate::engine::runner::{Paths, REMOTE_VARIABLE, load, make_plan, open_remote};

/// The pipeline and its remote cache, which it must have.
fn with_remote(
    pipeline_file: &std::path::Path,
    paths: &Paths,
) -> Result<(Pipeline, Arc<Remote>), Error> {
    let pipeline = load(pipeline_file, paths, &crate::kinds::BUILTIN)?;
    let remote = open_remote(&pipeline, false)?.ok_or_else(|| {
        Error::Usage(format!(
            "pipeline `{}` names no remote cache: add `cache: {{remote: s3://BUCKET/PREFIX}}` to it or set {REMOTE_VARIABLE}",
            pipeline.name
        ))
    })?;
    Ok((pipeline, remote))
}

/// Stores the latest output of every stage of the pipeline in its remote cache, asking the
/// remote about each (markers of earlier pushes are not trusted here).
pub async fn push(
    pipeline_file: &std::path::Path,
    paths: &Paths,
    quiet: bool,
) -> Result<i32, Error> {
    let (pipeline, remote) = with_remote(pipeline_file, paths)?;
    let cache = crate::engine::cache::Cache::new(
        crate::engine::store::Store::open(&paths.run_root)?,
        &pipeline.name,
    );
    let (mut stored, mut bytes, mut missing) = (0, 0u64, 0);
    let width = pipeline.id_width();
    for stage in &pipeline.stages {
        let Some(manifest) = cache.latest(&stage.id).await? else {
            missing += 1;
            if !quiet {
                println!("  {:<10}  {:<width$}  no output yet", "-", stage.id);
            }
            continue;
        };
        let word = match remote
            .push(&manifest, &cache.entry_dir(&manifest), &paths.data_dir)
            .await?
        {
            Pushed::Stored { bytes: sent } => {
                stored += 1;
                bytes += sent;
                "stored"
            }
            Pushed::AlreadyThere => "present",
            Pushed::Skipped => "not stored",
        };
        if word != "not stored" {
            let _ = cache.mark_pushed(&manifest, remote.url()).await;
        }
        if !quiet {
            println!(
                "  {word:<10}  {}  [{}]",
                stage.id,
                manifest.fingerprint.short()
            );
        }
    }
    if let Some(reason) = remote.down() {
        eprintln!("error: {reason}");
        return Ok(exit_code::STAGE_FAILED);
    }
    if !quiet {
        println!(
            "remote cache {}: stored {stored} entries ({:.1} MiB){}",
            remote.url(),
            bytes as f64 / (1024.0 * 1024.0),
            if missing > 0 {
                format!("; {missing} stages have no output to store")
            } else {
                String::new()
            }
        );
    }
    Ok(exit_code::OK)
}

/// Downloads every entry the remote holds for the pipeline as it stands (what `run` would
/// download), running nothing.
pub async fn pull(
    pipeline_file: &std::path::Path,
    paths: &Paths,
    quiet: bool,
) -> Result<i32, Error> {
    let (pipeline, remote) = with_remote(pipeline_file, paths)?;
    let run_root = paths.run_root.clone();
    let _lock = tokio::task::spawn_blocking(move || {
        crate::engine::lock::acquire(&run_root, true, |holder| {
            eprintln!("waiting for the run root lock, held by {holder}");
        })
    })
    .await
    .map_err(std::io::Error::other)??;
    let (plan, cache, _) = make_plan(
        &pipeline,
        &crate::engine::dag::Selection::default(),
        paths,
        Some(remote.clone()),
    )
    .await?;
    if let Some(reason) = remote.down() {
        eprintln!("error: {reason}");
        return Ok(exit_code::STAGE_FAILED);
    }
    let pull_id = format!(
        "pull-{}",
        crate::engine::run_record::new_run_id(crate::util::time::now_ms())
    );
    let mut failed = 0;
    for &index in &plan.order {
        let (stage, stage_plan) = (&pipeline.stages[index], &plan.stages[index]);
        let (Decision::Remote, Some(manifest), Some(key)) =
            (stage_plan.decision, &stage_plan.manifest, &stage_plan.key)
        else {
            if !quiet {
                println!(
                    "  {:<10}  {}  {}",
                    stage_plan.decision.word(),
                    stage.id,
                    stage_plan.reason
                );
            }
            continue;
        };
        match cache
            .download(
                key.clone(),
                manifest,
                &pull_id,
                stage.prepared.reports(),
                &paths.data_dir,
            )
            .await
        {
            Ok(_) if !quiet => println!("  {:<10}  {}", "downloaded", stage.id),
            Ok(_) => {}
            Err(why) => {
                failed += 1;
                eprintln!("warning: stage `{}`: {why}", stage.id);
            }
        }
    }
    crate::engine::store::remove_empty_dirs(&paths.run_root.join("tmp").join(&pull_id));
    Ok(if failed > 0 {
        exit_code::STAGE_FAILED
    } else {
        exit_code::OK
    })
}
