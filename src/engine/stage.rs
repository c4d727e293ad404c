//! The contract between the engine and a stage kind.
//!
//! A kind validates its params without side effects (`prepare`, which is all `--validate-only`
//! calls), names the files its fingerprint must cover, and runs against a [`StageContext`] that
//! gives it its inputs' outputs, a directory to write into (committed by the engine, never by
//! the stage), a progress handle and a cancellation token. The engine names no kind: the caller
//! hands it a [`Catalog`] (the built-ins are `kinds::BUILTIN`).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use indexmap::IndexMap;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::diagnostic::location::YamlPath;
use crate::diagnostic::params::ParamError;
use crate::engine::cache::OutputFile;
use crate::engine::events::Progress;
use crate::engine::run_record::RunRecord;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A checked `sources:` entry, typed by the catalog that checked it.
pub type SourceValue = Arc<dyn Any + Send + Sync>;

/// The stage kinds a pipeline may name and how its `sources:` entries are checked: supplied by
/// the caller, so the engine never names a kind.
pub trait Catalog: Sync {
    /// Every kind, in the order `help` lists them.
    fn kinds(&self) -> &[&'static dyn StageKind];
    /// Types one `sources:` entry; an error is located relative to `sources.<name>`.
    fn check_source(
        &self,
        name: &str,
        value: &yaml_serde::Value,
        project_root: &Path,
    ) -> Result<SourceValue, ParamError>;

    /// The kind registered under `name`.
    fn kind(&self, name: &str) -> Option<&'static dyn StageKind> {
        self.kinds()
            .iter()
            .copied()
            .find(|kind| kind.name() == name)
    }
}

impl std::fmt::Debug for dyn Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.kinds().iter().map(|kind| kind.name()).collect();
        write!(f, "Catalog{names:?}")
    }
}

/// What a kind may look at while validating its params.
pub struct PrepareContext<'a> {
    pub stage_id: &'a str,
    pub project_root: &'a Path,
    pub sources: &'a IndexMap<String, SourceValue>,
}

impl PrepareContext<'_> {
    /// The source declared as `name`, as the catalog typed it; an unknown name is an error at
    /// `at` that lists the declared ones.
    pub fn source<T: Any + Send + Sync>(
        &self,
        name: &str,
        at: YamlPath,
    ) -> Result<Arc<T>, ParamError> {
        let found = self.sources.get(name).ok_or_else(|| {
            let declared: Vec<&str> = self.sources.keys().map(String::as_str).collect();
            let help = if declared.is_empty() {
                "declare it under `sources:` at the top of the pipeline".to_owned()
            } else {
                format!("declared sources: {}", declared.join(", "))
            };
            ParamError::new(at.clone(), format!("unknown source `{name}`")).with_help(help)
        })?;
        Arc::clone(found).downcast::<T>().map_err(|_| {
            ParamError::new(
                at,
                format!("source `{name}` is not of the kind this stage reads"),
            )
        })
    }
}

/// Values shared by every stage of one run, made on first use and dropped when the run ends
/// (exchange connections, in-process servers): one per type.
#[derive(Default)]
pub struct Resources {
    values: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl Resources {
    /// The run's `T`, made with `T::default()` the first time a stage asks.
    pub fn get<T: Any + Default + Send + Sync>(&self) -> Arc<T> {
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        let value = values
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()));
        Arc::clone(value)
            .downcast::<T>()
            .expect("resources are keyed by their type id")
    }
}

impl std::fmt::Debug for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.values.lock().map(|values| values.len()).unwrap_or(0);
        write!(f, "Resources({count})")
    }
}

/// What a finished stage adds to the end of a run: key figures (printed first), other lines,
/// and files to point the user at (`label: path`).
#[derive(Debug, Default)]
pub struct Closing {
    pub figures: Vec<String>,
    pub lines: Vec<String>,
    pub files: Vec<(&'static str, PathBuf)>,
}

/// What [`PreparedStage::closing`] may look at: the stage's committed output and the run.
pub struct ClosingContext<'a> {
    pub output_dir: &'a Path,
    pub record: &'a RunRecord,
    /// `runs/<run-id>/`, where a stage may draw files about the run (the report).
    pub run_dir: &'a Path,
}

/// A stage kind: validates params and builds a runnable stage.
pub trait StageKind: Sync {
    fn name(&self) -> &'static str;
    /// Bump when the kind's implementation changes what it writes: part of every fingerprint.
    fn code_version(&self) -> u32;
    /// A gathering kind (`compare`, `report`) downstream of a matrix stage runs once and gets
    /// every member as an input; any other kind runs once per member.
    fn gathers(&self) -> bool {
        false
    }
    /// Checks `params` (the stage's `with`, defaults merged) without side effects.
    fn prepare(
        &self,
        params: &yaml_serde::Value,
        context: &PrepareContext<'_>,
    ) -> Result<Box<dyn PreparedStage>, ParamError>;
}

impl std::fmt::Debug for dyn StageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A project file a stage reads, named by the param that references it.
#[derive(Debug, Clone)]
pub struct FileRef {
    /// Where the reference is, relative to the stage's `with`.
    pub param: YamlPath,
    /// Project-relative path.
    pub path: PathBuf,
}

/// A table a stage's output will hold, as its consumers will see it.
#[derive(Debug, Clone)]
pub struct ShapeTable {
    /// The names a consumer's SQL can use for it.
    pub names: Vec<String>,
    pub schema: arrow::datatypes::SchemaRef,
}

/// What a stage's output will hold, where its kind can say without running anything.
#[derive(Debug, Clone, Default)]
pub enum OutputShape {
    /// The kind cannot say (a `command`): consumers cannot be planned ahead.
    #[default]
    Unknown,
    Tables(Vec<ShapeTable>),
}

/// The tables the inputs' shapes name, and whether some input (a `command`) could not say.
pub fn known_tables(inputs: &[(String, OutputShape)]) -> (Vec<&ShapeTable>, bool) {
    let mut tables = Vec::new();
    let mut unknown = false;
    for (_, shape) in inputs {
        match shape {
            OutputShape::Unknown => unknown = true,
            OutputShape::Tables(list) => tables.extend(list.iter()),
        }
    }
    (tables, unknown)
}

/// Why a stage's output cannot be planned from its inputs' shapes.
#[derive(Debug)]
pub enum ShapeError {
    /// A problem located inside a file the stage reads (a SQL file's line and column).
    Located(Box<crate::diagnostic::Diagnostic>),
    /// A param that does not fit the inputs (a feature column the input lacks), located in the
    /// pipeline file relative to the stage's `with`.
    Param(ParamError),
}

impl From<Box<crate::diagnostic::Diagnostic>> for ShapeError {
    fn from(diagnostic: Box<crate::diagnostic::Diagnostic>) -> Self {
        Self::Located(diagnostic)
    }
}

/// A stage whose params have been checked.
pub trait PreparedStage: Send + Sync + std::fmt::Debug {
    /// The canonical params that go into the fingerprint (defaults filled in).
    fn params(&self) -> serde_json::Value;
    /// Project files whose content the fingerprint covers.
    fn files(&self) -> Vec<FileRef> {
        Vec::new()
    }
    /// Output files that describe the run rather than the data (timings, request counts): kept
    /// in the cache but left out of the content digest, so consumers do not re-run for them.
    fn reports(&self) -> &'static [&'static str] {
        &[]
    }
    /// Files outside the output that it names, relative to the data directory, with their
    /// sizes and blake3 (the lake parts a `lake.json` lists), read from the finished output in
    /// `output_dir`: a remote cache stores and fetches them with the entry. None by default.
    fn attachments(&self, _output_dir: &Path) -> Result<Vec<OutputFile>, String> {
        Ok(Vec::new())
    }
    /// Prefixes of the data directory (`/`-separated) the stage reads beyond what its inputs
    /// name, such as the partitions a collection extends: with the data directory on an object
    /// store, everything under them is brought into the local mirror before the stage runs.
    fn data_prefixes(&self) -> Vec<String> {
        Vec::new()
    }
    /// Whether the stage reads the data files its inputs list straight from the data store
    /// (a cluster's executors do): the engine then leaves them out of the local mirror.
    fn reads_data_remotely(&self) -> bool {
        false
    }
    /// The tables the output will hold, given the inputs' shapes (by input stage id). Called
    /// before anything runs, so `--validate-only` can plan SQL without data; an error is a
    /// located problem (a SQL file's line and column).
    fn output_shape<'a>(
        &'a self,
        _stage_id: &'a str,
        _inputs: &'a [(String, OutputShape)],
    ) -> BoxFuture<'a, Result<OutputShape, ShapeError>> {
        Box::pin(async { Ok(OutputShape::Unknown) })
    }
    /// Does the work, writing into `context.output_dir`.
    fn run<'a>(&'a self, context: &'a StageContext) -> BoxFuture<'a, Result<(), StageError>>;
    /// What to print at the end of a run whose stage has a committed output (ran or cached),
    /// and any files to draw about the run. Called after `run.json` is written; an error is a
    /// warning, the outputs stand.
    fn closing(&self, _context: &ClosingContext<'_>) -> Result<Closing, String> {
        Ok(Closing::default())
    }
}

/// One input of a running stage: another stage's committed output.
#[derive(Debug, Clone)]
pub struct StageInput {
    pub id: String,
    pub dir: PathBuf,
    pub digest: String,
    /// The input's matrix values (`model` -> `mlp`), empty outside a sweep.
    pub matrix: Vec<(String, String)>,
}

/// Everything a running stage gets from the engine.
#[derive(Debug)]
pub struct StageContext {
    pub stage_id: String,
    /// The pipeline's `name`.
    pub pipeline: String,
    pub run_id: String,
    pub project_root: PathBuf,
    /// The market-data lake.
    pub data_dir: PathBuf,
    /// The lake's object-store URL when it lives on one (`data_dir` is then its local mirror).
    pub data_url: Option<String>,
    /// Where the stage writes its output; the engine commits it to the cache afterwards.
    pub output_dir: PathBuf,
    /// The stage's log file in the run record.
    pub log_path: PathBuf,
    pub inputs: Vec<StageInput>,
    pub progress: Progress,
    pub cancel: CancellationToken,
    /// Values shared by the run's stages (exchange connections), dropped when the run ends.
    pub resources: Arc<Resources>,
}

impl StageContext {
    /// Appends a line to the stage's log (best effort: the log is for people).
    pub fn log(&self, line: &str) {
        use std::io::Write;
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
        {
            let _ = writeln!(file, "{line}");
        }
    }

    /// A warning: in the log, and shown to the user.
    pub fn warn(&self, line: &str) {
        self.log(&format!("warning: {line}"));
        self.progress.warn(line);
    }

    /// Each input's stage id and committed output directory.
    pub fn input_dirs(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.inputs
            .iter()
            .map(|input| (input.id.as_str(), input.dir.as_path()))
    }

    /// The input whose output directory holds `file`, if any.
    pub fn input_with(&self, file: &str) -> Option<&StageInput> {
        self.inputs
            .iter()
            .find(|input| input.dir.join(file).is_file())
    }

    /// `file` from the input that has it, parsed as JSON: `None` when no input has it, an error
    /// naming the file when it cannot be read or does not parse.
    pub fn read_input_json<T: DeserializeOwned>(
        &self,
        file: &str,
    ) -> Result<Option<T>, StageError> {
        let Some(input) = self.input_with(file) else {
            return Ok(None);
        };
        let path = input.dir.join(file);
        let text = fs_err::read_to_string(&path)?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|error| StageError::Failed(format!("{}: {error}", path.display())))
    }
}

/// Why a stage failed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{0}")]
    Failed(String),
    #[error("interrupted")]
    Cancelled,
    /// An I/O error that names its file: `fs_err` calls give these through `?`.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl StageError {
    /// A failure with its message.
    pub fn failed(message: impl std::fmt::Display) -> Self {
        Self::Failed(message.to_string())
    }
}

/// The environment variable that names input `stage_id`'s output directory:
/// `features-v2` -> `ASTERFLOW_INPUT_FEATURES_V2`.
pub fn input_variable(stage_id: &str) -> String {
    let name: String = stage_id
        .chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() {
                character.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("ASTERFLOW_INPUT_{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_variables_are_shell_safe() {
        assert_eq!(input_variable("features-v2"), "ASTERFLOW_INPUT_FEATURES_V2");
    }
}
