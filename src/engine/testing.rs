//! A stand-in stage kind and catalog for the engine's own tests, so `plan`, `executor` and
//! `pipeline` are tested in process without any product kind or domain module.
//!
//! The kind is registered as `command` (the pipeline tests' YAML names it) and takes any
//! params: it writes them, with its inputs' `out.json` files, to `out.json`. `fail: true` fails
//! the stage; `sleep_ms: N` sleeps first (cancellation stops it).

use std::path::Path;
use std::time::Duration;

use crate::diagnostic::params::ParamError;
use crate::engine::cache::Cache;
use crate::engine::dag::Selection;
use crate::engine::events::RunEvent;
use crate::engine::executor::{ExecuteOptions, RunOutcome, execute};
use crate::engine::fingerprint::FileDigests;
use crate::engine::pipeline::Pipeline;
use crate::engine::plan::{Plan, plan};
use crate::engine::stage::{
    BoxFuture, Catalog, PrepareContext, PreparedStage, SourceValue, StageContext, StageError,
    StageKind,
};
use crate::engine::store::Store;

pub struct Echo;

#[derive(Debug)]
struct Prepared {
    params: serde_json::Value,
}

impl StageKind for Echo {
    fn name(&self) -> &'static str {
        "command"
    }

    fn code_version(&self) -> u32 {
        1
    }

    fn prepare(
        &self,
        params: &yaml_serde::Value,
        _context: &PrepareContext<'_>,
    ) -> Result<Box<dyn PreparedStage>, ParamError> {
        let params: serde_json::Value = crate::diagnostic::params::parse_params(params)?;
        Ok(Box::new(Prepared { params }))
    }
}

impl PreparedStage for Prepared {
    fn params(&self) -> serde_json::Value {
        self.params.clone()
    }

    fn run<'a>(&'a self, context: &'a StageContext) -> BoxFuture<'a, Result<(), StageError>> {
        Box::pin(async move {
            if let Some(ms) = self.params.get("sleep_ms").and_then(|v| v.as_u64()) {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    () = context.cancel.cancelled() => return Err(StageError::Cancelled),
                }
            }
            if self.params.get("fail").and_then(|v| v.as_bool()) == Some(true) {
                return Err(StageError::failed("asked to fail"));
            }
            let mut inputs = serde_json::Map::new();
            for input in &context.inputs {
                let text = fs_err::read_to_string(input.dir.join("out.json"))?;
                let value: serde_json::Value =
                    serde_json::from_str(&text).map_err(StageError::failed)?;
                inputs.insert(input.id.clone(), value);
            }
            let out = serde_json::json!({"params": self.params, "inputs": inputs});
            fs_err::write(context.output_dir.join("out.json"), out.to_string())?;
            Ok(())
        })
    }
}

/// A catalog of the one stand-in kind; sources are kept as their YAML.
pub struct Fake;

pub static FAKE: Fake = Fake;

impl Catalog for Fake {
    fn kinds(&self) -> &[&'static dyn StageKind] {
        &[&Echo]
    }

    fn check_source(
        &self,
        _name: &str,
        value: &yaml_serde::Value,
        _project_root: &Path,
    ) -> Result<SourceValue, ParamError> {
        Ok(std::sync::Arc::new(value.clone()))
    }
}

/// A project directory with a run root, for planning and executing pipelines in process.
pub struct Bench {
    pub dir: tempfile::TempDir,
}

impl Default for Bench {
    fn default() -> Self {
        Self::new()
    }
}

impl Bench {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn pipeline(&self, text: &str) -> Pipeline {
        Pipeline::parse(Path::new("p.yaml"), text, self.dir.path(), &FAKE)
            .unwrap_or_else(|error| panic!("{error}"))
    }

    pub fn cache(&self, pipeline: &Pipeline) -> Cache {
        Cache::new(
            Store::create(&self.dir.path().join("runs")).expect("run root"),
            &pipeline.name,
        )
    }

    pub async fn plan(&self, pipeline: &Pipeline, selection: &Selection) -> Plan {
        let mut digests = FileDigests::load(self.dir.path().join("runs/digests.json"));
        plan(
            pipeline,
            selection,
            &self.cache(pipeline),
            &mut digests,
            crate::util::time::now_ms(),
        )
        .await
        .expect("plan")
    }

    /// Plans and executes `pipeline` with `selection`: the plan, and what happened.
    pub async fn run(
        &self,
        pipeline: Pipeline,
        selection: &Selection,
        jobs: usize,
    ) -> (Plan, RunOutcome) {
        let plan = self.plan(&pipeline, selection).await;
        let run_id = crate::engine::run_record::new_run_id(crate::util::time::now_ms());
        let options = ExecuteOptions {
            run_id: run_id.clone(),
            jobs,
            data_dir: self.dir.path().join("data"),
            data_store: None,
            logs_dir: self.dir.path().join("runs").join(&run_id).join("logs"),
        };
        fs_err::create_dir_all(&options.logs_dir).expect("logs dir");
        let cache = self.cache(&pipeline);
        let (events, mut receiver) = tokio::sync::mpsc::unbounded_channel::<RunEvent>();
        let drain = tokio::spawn(async move { while receiver.recv().await.is_some() {} });
        let outcome = execute(
            std::sync::Arc::new(pipeline),
            plan.clone(),
            cache,
            options,
            events,
            tokio_util::sync::CancellationToken::new(),
        )
        .await;
        let _ = drain.await;
        (plan, outcome)
    }
}
