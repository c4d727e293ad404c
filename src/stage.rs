//! The contract between the engine and a stage kind, and the registry of built-in kinds.
//!
//! A kind validates its params without side effects (`prepare`, which is all `--validate-only`
//! calls), names the files its fingerprint must cover, and runs against a [`StageContext`] that
//! gives it its inputs' outputs, a directory to write into (committed by the engine, never by
//! the stage), a progress handle and a cancellation token. Adding a kind is one module in
//! `stages/` and one line in [`KINDS`].

use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;

use indexmap::IndexMap;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::events::Progress;
use crate::location::{Anchor, Segment, YamlPath};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Every built-in stage kind. One line per kind.
pub static KINDS: &[&dyn StageKind] = &[
    &crate::stages::command::Command,
    &crate::stages::discover::Discover,
    &crate::stages::rate_limits::RateLimits,
    &crate::stages::collect::Collect,
    &crate::stages::validate::Validate,
    &crate::stages::sql::Sql,
    &crate::stages::train::Train,
    &crate::stages::backtest::Backtest,
    &crate::stages::report::Report,
    &crate::stages::signals::Signals,
];

/// The kind registered under `name`.
pub fn kind(name: &str) -> Option<&'static dyn StageKind> {
    KINDS.iter().copied().find(|kind| kind.name() == name)
}

/// What a kind may look at while validating its params.
pub struct PrepareContext<'a> {
    pub stage_id: &'a str,
    pub project_root: &'a Path,
    pub sources: &'a IndexMap<String, std::sync::Arc<crate::exchange::source::Source>>,
}

/// A stage kind: validates params and builds a runnable stage.
pub trait StageKind: Sync {
    fn name(&self) -> &'static str;
    /// Bump when the kind's implementation changes what it writes: part of every fingerprint.
    fn code_version(&self) -> u32;
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
}

/// One input of a running stage: another stage's committed output.
#[derive(Debug, Clone)]
pub struct StageInput {
    pub id: String,
    pub dir: PathBuf,
    pub digest: String,
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
    /// Where the stage writes its output; the engine commits it to the cache afterwards.
    pub output_dir: PathBuf,
    /// The stage's log file in the run record.
    pub log_path: PathBuf,
    pub inputs: Vec<StageInput>,
    pub progress: Progress,
    pub cancel: CancellationToken,
    /// The run's exchange connections, shared by every stage naming the same source.
    pub exchanges: std::sync::Arc<crate::exchange::connections::Connections>,
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

    /// The input whose output directory holds `file`, if any.
    pub fn input_with(&self, file: &str) -> Option<&StageInput> {
        self.inputs
            .iter()
            .find(|input| input.dir.join(file).is_file())
    }
}

/// Why a stage failed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{0}")]
    Failed(String),
    #[error("interrupted")]
    Cancelled,
    #[error("failed to {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A param a kind rejects, located relative to the stage's `with`.
#[derive(Debug, Clone)]
pub struct ParamError {
    pub path: YamlPath,
    pub anchor: Anchor,
    pub message: String,
    pub help: Option<String>,
    /// A problem inside a file the param names (a SQL file), located in that file.
    pub nested: Option<Box<crate::diagnostic::Diagnostic>>,
}

impl ParamError {
    pub fn new(path: YamlPath, message: impl Into<String>) -> Self {
        Self {
            path,
            anchor: Anchor::Value,
            message: message.into(),
            help: None,
            nested: None,
        }
    }

    /// Adds the located problem inside the referenced file.
    pub fn nested(mut self, diagnostic: crate::diagnostic::Diagnostic) -> Self {
        self.nested = Some(Box::new(diagnostic));
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// A number param in `[low, high)`; otherwise an error at `at` naming `what` and the bounds.
pub fn check_range(
    at: YamlPath,
    value: f64,
    low: f64,
    high: f64,
    what: &str,
) -> Result<(), ParamError> {
    if value.is_finite() && value >= low && value < high {
        Ok(())
    } else {
        Err(ParamError::new(
            at,
            format!("{what} must be at least {low} and below {high}, not {value}"),
        ))
    }
}

/// Deserialises a kind's params, keeping the path of whatever is wrong.
pub fn parse_params<T: DeserializeOwned>(params: &yaml_serde::Value) -> Result<T, ParamError> {
    serde_path_to_error::deserialize(params.clone()).map_err(|error| {
        let mut path = YamlPath(
            error
                .path()
                .iter()
                .filter_map(|segment| match segment {
                    serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
                    serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
                    _ => None,
                })
                .collect(),
        );
        let message = error.inner().to_string();
        let message = strip_yaml_location(&message).to_owned();
        // Point at the offending key itself when serde names one.
        let mut anchor = Anchor::Value;
        if let Some(rest) = message.strip_prefix("unknown field `")
            && let Some(end) = rest.find('`')
        {
            let field = &rest[..end];
            if path.0.last() != Some(&Segment::Key(field.to_owned())) {
                path = path.key(field);
            }
            anchor = Anchor::Key;
        }
        ParamError {
            path,
            anchor,
            message,
            help: None,
            nested: None,
        }
    })
}

/// yaml_serde appends ` at line L column C`; diagnostics carry the location themselves.
pub fn strip_yaml_location(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(position) => &message[..position],
        None => message,
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

/// A relative path that stays inside its root: no absolute paths, no `..` climbing out.
pub fn contained_relative_path(text: &str) -> Result<PathBuf, String> {
    if text.trim().is_empty() {
        return Err("path is empty".to_owned());
    }
    let path = Path::new(text);
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => normal.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !normal.pop() {
                    return Err(format!("path `{text}` escapes the project"));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "path `{text}` is absolute; paths are relative to the project"
                ));
            }
        }
    }
    if normal.as_os_str().is_empty() {
        return Err(format!(
            "path `{text}` names the directory itself, not a file in it"
        ));
    }
    Ok(normal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_variables_are_shell_safe() {
        assert_eq!(input_variable("features-v2"), "ASTERFLOW_INPUT_FEATURES_V2");
    }

    #[test]
    fn relative_paths_must_stay_inside() {
        assert_eq!(
            contained_relative_path("a/./b.txt").unwrap(),
            PathBuf::from("a/b.txt")
        );
        assert_eq!(
            contained_relative_path("a/../b.txt").unwrap(),
            PathBuf::from("b.txt")
        );
        assert!(
            contained_relative_path("../x")
                .unwrap_err()
                .contains("escapes")
        );
        assert!(
            contained_relative_path("a/../../x")
                .unwrap_err()
                .contains("escapes")
        );
        assert!(
            contained_relative_path("/etc/passwd")
                .unwrap_err()
                .contains("absolute")
        );
        assert!(contained_relative_path(".").is_err());
    }

    #[test]
    fn param_errors_keep_their_path() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Params {
            outputs: Vec<u32>,
        }
        let value: yaml_serde::Value = yaml_serde::from_str("outputs: [1, x]").unwrap();
        let error = parse_params::<Params>(&value).unwrap_err();
        assert_eq!(error.path.to_string(), "outputs[1]");
        let value: yaml_serde::Value = yaml_serde::from_str("outputs: []\nextra: 1").unwrap();
        let error = parse_params::<Params>(&value).unwrap_err();
        assert_eq!(error.path.to_string(), "extra");
        assert_eq!(error.anchor, Anchor::Key);
    }
}
