//! `asterflow serve`: the run root in a browser, read-only, until Ctrl-C.

use crate::engine::error::Error;
use crate::engine::exit_code;
use crate::engine::runner::Paths;

pub async fn serve(paths: &Paths, bind: &str, token: Option<String>) -> Result<i32, Error> {
    let bind: std::net::SocketAddr = bind.parse().map_err(|error| {
        Error::Usage(format!(
            "--bind {bind}: {error} (for example 127.0.0.1:8321)"
        ))
    })?;
    crate::serve::check_bind(&bind, token.as_deref()).map_err(Error::Usage)?;
    let planning = paths.clone();
    let planner: crate::serve::Planner = std::sync::Arc::new(move |file| {
        let paths = planning.clone();
        Box::pin(async move { plan(&file, &paths).await })
    });
    let site = crate::serve::Site {
        run_root: crate::serve::canonical_root(&paths.run_root).map_err(Error::Usage)?,
        project_root: paths.project_root.canonicalize().map_err(|error| {
            Error::Usage(format!(
                "the project {} cannot be read: {error}",
                paths.project_root.display()
            ))
        })?,
        pipelines: paths.project_root.join("pipelines").canonicalize().ok(),
        paper: paths.data_dir.join("paper"),
        planner,
        token,
    };
    let server = crate::serve::serve(site, bind, |local| {
        println!(
            "serving {} at http://{local}/ (Ctrl-C stops)",
            paths.run_root.display()
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
    });
    tokio::select! {
        result = server => result.map_err(Error::Usage)?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(exit_code::OK)
}

/// The plan of `file`, as `asterflow run --validate-only` would print it (no remote cache:
/// the page asks nothing of the network).
async fn plan(
    file: &std::path::Path,
    paths: &Paths,
) -> Result<Vec<crate::serve::PlannedStage>, String> {
    let pipeline = crate::engine::runner::load(file, paths, &crate::kinds::BUILTIN)
        .map_err(|error| crate::engine::executor::error_chain(&error))?;
    let (plan, _, _) = crate::engine::runner::make_plan(
        &pipeline,
        &crate::engine::dag::Selection::default(),
        paths,
        None,
    )
    .await
    .map_err(|error| crate::engine::executor::error_chain(&error))?;
    Ok(plan
        .order
        .iter()
        .map(|&index| {
            let (stage, decided) = (&pipeline.stages[index], &plan.stages[index]);
            crate::serve::PlannedStage {
                id: stage.id.clone(),
                kind: stage.kind.name().to_owned(),
                decision: decided.decision.word().to_owned(),
                reason: decided.reason.clone(),
                fingerprint: decided.fingerprint().map(|fingerprint| fingerprint.0),
                needs: crate::engine::runner::stage_needs(&pipeline, index),
            }
        })
        .collect())
}
