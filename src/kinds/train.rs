//! `train`: fits a classifier on features joined to labels, scores it out of sample by
//! walk-forward folds with a purge, beside the majority-class baseline, and keeps a model.
//!
//! ```yaml
//! train:
//!   kind: train
//!   needs: [features, labels]
//!   with:
//!     model: mlp            # logistic (L-BFGS, CPU) | softmax | mlp (CPU or GPU)
//!                           # | gbdt (boosted trees) | forest (random forest)
//!     device: auto          # auto | cpu | gpu
//!     hidden: 64
//!     epochs: 10
//!     folds: 4
//! ```
//!
//! Outputs: `model.json` (weights or trees, scaler, feature list, classes, importances, format
//! version), `model.onnx` (the same model for ONNX Runtime: inputs named by feature, output
//! `probabilities` in `classes` order),
//! `predictions.parquet` (each fold's test block: class probabilities per symbol and bar, for
//! the backtest), `metrics.json` and `metrics.txt` (per fold and overall, model beside baseline,
//! with a verdict), `provenance.json`; `train_report.json` (device, timings) is a report.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Float32Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::TableReference;
use serde::{Deserialize, Serialize};

use crate::diagnostic::location::YamlPath;
use crate::diagnostic::params::{ParamError, contained_relative_path, parse_params};
use crate::engine::stage::{
    BoxFuture, FileRef, OutputShape, PrepareContext, PreparedStage, ShapeError, ShapeTable,
    StageContext, StageError, StageKind,
};
use crate::sql;
use crate::train::split::{SplitSpec, Window};
use crate::train::{
    Balance, Dataset, Device, DeviceChoice, Ending, LogisticSolver, ModelKind, Outcome,
    TrainConfig, TrainEvent,
};

pub struct Train;

/// The model artefact's format; bump when `model.json` changes shape.
pub const MODEL_FORMAT_VERSION: u32 = 1;
pub const PREDICTIONS_FILE: &str = "predictions.parquet";
/// `model.onnx`: the kept model as one ONNX graph (`train::onnx`).
pub const ONNX_FILE: &str = "model.onnx";
const REPORT_FILE: &str = "train_report.json";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default = "default_model")]
    model: ModelKind,
    #[serde(default = "default_device")]
    device: DeviceChoice,
    #[serde(default = "default_features_table")]
    features_table: String,
    #[serde(default = "default_labels_table")]
    labels_table: String,
    #[serde(default)]
    features: Option<Vec<String>>,
    #[serde(default = "default_exclude")]
    exclude: Vec<String>,
    #[serde(default = "default_classes")]
    classes: Vec<String>,
    #[serde(default = "default_folds")]
    folds: usize,
    #[serde(default = "default_window")]
    window: Window,
    #[serde(default)]
    train_blocks: Option<usize>,
    #[serde(default)]
    embargo: Option<String>,
    #[serde(default = "default_balance")]
    balance: Balance,
    #[serde(default = "default_seed")]
    seed: u64,
    #[serde(default)]
    hidden: Option<usize>,
    #[serde(default)]
    epochs: Option<usize>,
    #[serde(default)]
    batch_size: Option<usize>,
    #[serde(default)]
    learning_rate: Option<f32>,
    #[serde(default)]
    solver: Option<LogisticSolver>,
    #[serde(default)]
    alpha: Option<f64>,
    #[serde(default)]
    max_iterations: Option<u64>,
    #[serde(default)]
    tolerance: Option<f64>,
    #[serde(default)]
    kernels: Option<String>,
    // Trees.
    #[serde(default)]
    iterations: Option<usize>,
    #[serde(default)]
    max_depth: Option<usize>,
    #[serde(default)]
    min_leaf: Option<f64>,
    #[serde(default)]
    l2: Option<f64>,
    #[serde(default)]
    early_stopping: Option<usize>,
    #[serde(default)]
    validation: Option<f64>,
    #[serde(default)]
    trees: Option<usize>,
    #[serde(default)]
    max_features: Option<crate::train::trees::MaxFeatures>,
    #[serde(default)]
    bootstrap: Option<bool>,
}

fn default_model() -> ModelKind {
    ModelKind::Mlp
}
fn default_device() -> DeviceChoice {
    DeviceChoice::Auto
}
fn default_features_table() -> String {
    "features".into()
}
fn default_labels_table() -> String {
    "labels".into()
}
/// A raw price level is not a stationary feature; the features stage keeps it for the backtest.
fn default_exclude() -> Vec<String> {
    vec!["close".into()]
}
fn default_classes() -> Vec<String> {
    ["BUY", "HOLD", "SELL"].map(String::from).to_vec()
}
fn default_folds() -> usize {
    4
}
fn default_window() -> Window {
    Window::Expanding
}
fn default_balance() -> Balance {
    Balance::Auto
}
fn default_seed() -> u64 {
    42
}

const DEFAULT_KERNELS: &str = "stages/kernels/mlp.cu";

/// The params with every default resolved: what the fingerprint covers.
#[derive(Debug, Serialize)]
struct Resolved {
    model: ModelKind,
    device: DeviceChoice,
    features_table: String,
    labels_table: String,
    features: Option<Vec<String>>,
    exclude: Vec<String>,
    classes: Vec<String>,
    folds: usize,
    window: Window,
    train_blocks: Option<usize>,
    /// Milliseconds; `None` = the longest label window in the data.
    embargo_ms: Option<i64>,
    config: TrainConfig,
    kernels: Option<PathBuf>,
}

#[derive(Debug)]
struct Prepared {
    resolved: Resolved,
    kernels_source: Option<String>,
}

impl StageKind for Train {
    fn name(&self) -> &'static str {
        "train"
    }

    fn code_version(&self) -> u32 {
        // 2: model.json and metrics.json gain the feature importances.
        2
    }

    fn prepare(
        &self,
        params: &yaml_serde::Value,
        context: &PrepareContext<'_>,
    ) -> Result<Box<dyn PreparedStage>, ParamError> {
        let params: Params = parse_params(params)?;
        let root = YamlPath::root();
        let error = |key: &str, message: String| ParamError::new(root.clone().key(key), message);
        let network = params.model.is_network();
        check_model_params(&params)?;
        let embargo_ms = check_split(&params)?;
        let config = train_config(&params)?;
        let (kernels, kernels_source) = if network {
            let path = params.kernels.as_deref().unwrap_or(DEFAULT_KERNELS);
            let relative =
                contained_relative_path(path).map_err(|message| error("kernels", message))?;
            // A missing file is reported by the engine, located, like any file a stage reads.
            let source = std::fs::read_to_string(context.project_root.join(&relative)).ok();
            (Some(relative), source)
        } else {
            (None, None)
        };
        Ok(Box::new(Prepared {
            resolved: Resolved {
                model: params.model,
                device: if network {
                    params.device
                } else {
                    DeviceChoice::Cpu
                },
                features_table: params.features_table,
                labels_table: params.labels_table,
                features: params.features,
                exclude: params.exclude,
                classes: params.classes,
                folds: params.folds,
                window: params.window,
                train_blocks: match params.window {
                    Window::Rolling => Some(params.train_blocks.unwrap_or(2)),
                    Window::Expanding => None,
                },
                embargo_ms,
                config,
                kernels,
            },
            kernels_source,
        }))
    }
}

fn param_error(key: &str, message: String) -> ParamError {
    ParamError::new(YamlPath::root().key(key), message)
}

/// Params that belong to another model are mistakes, not silently ignored; and the choices
/// that exclude each other (logistic on a GPU, linfa with sample weights).
fn check_model_params(params: &Params) -> Result<(), ParamError> {
    let root = YamlPath::root();
    let error = param_error;
    let network = params.model.is_network();
    let (gbdt, forest) = (
        params.model == ModelKind::Gbdt,
        params.model == ModelKind::Forest,
    );
    let logistic = params.model == ModelKind::Logistic;
    let model_name = serde_json::to_value(params.model).unwrap_or_default();
    let model_name = model_name.as_str().unwrap_or("");
    // Params that belong to another model are mistakes, not silently ignored.
    let misplaced: &[(&str, bool)] = &[
        (
            "hidden",
            params.hidden.is_some() && params.model != ModelKind::Mlp,
        ),
        ("epochs", params.epochs.is_some() && !network),
        ("batch_size", params.batch_size.is_some() && !network),
        (
            "learning_rate",
            params.learning_rate.is_some() && !network && !gbdt,
        ),
        ("kernels", params.kernels.is_some() && !network),
        ("solver", params.solver.is_some() && !logistic),
        ("alpha", params.alpha.is_some() && !logistic),
        (
            "max_iterations",
            params.max_iterations.is_some() && !logistic,
        ),
        ("tolerance", params.tolerance.is_some() && !logistic),
        ("iterations", params.iterations.is_some() && !gbdt),
        ("l2", params.l2.is_some() && !gbdt),
        ("early_stopping", params.early_stopping.is_some() && !gbdt),
        ("validation", params.validation.is_some() && !gbdt),
        ("max_depth", params.max_depth.is_some() && !gbdt && !forest),
        ("min_leaf", params.min_leaf.is_some() && !gbdt && !forest),
        ("trees", params.trees.is_some() && !forest),
        ("max_features", params.max_features.is_some() && !forest),
        ("bootstrap", params.bootstrap.is_some() && !forest),
    ];
    if let Some((key, _)) = misplaced.iter().find(|(_, wrong)| *wrong) {
        let owner = match *key {
            "hidden" => "mlp",
            "epochs" | "batch_size" | "kernels" => "mlp and softmax",
            "learning_rate" => "mlp, softmax and gbdt",
            "iterations" | "l2" | "early_stopping" | "validation" => "gbdt",
            "max_depth" | "min_leaf" => "gbdt and forest",
            "trees" | "max_features" | "bootstrap" => "forest",
            _ => "logistic",
        };
        return Err(ParamError::new(
            root.clone().key(*key),
            format!("`{key}` applies to model {owner}, not {model_name}"),
        )
        .with_help("remove it, or change `model`"));
    }
    if !network && params.device == DeviceChoice::Gpu {
        return Err(error(
            "device",
            format!(
                "model {model_name} trains on the CPU; `device: gpu` applies to mlp and softmax"
            ),
        ));
    }
    let solver = params.solver.unwrap_or(LogisticSolver::Native);
    if solver == LogisticSolver::Linfa && params.balance == Balance::Weights {
        return Err(error(
    "balance",
    "linfa's logistic regression takes no sample weights".into(),
    )
    .with_help(
    "use `balance: undersample` (what `auto` picks with `solver: linfa`), or the native solver",
    ));
    }
    Ok(())
}

/// The classes and the walk-forward split: folds, window, embargo (`None`: auto).
fn check_split(params: &Params) -> Result<Option<i64>, ParamError> {
    let error = param_error;
    let mut seen = HashSet::new();
    if !(2..=64).contains(&params.classes.len())
        || params
            .classes
            .iter()
            .any(|class| class.is_empty() || !seen.insert(class))
    {
        return Err(error(
            "classes",
            "classes must be 2 to 64 distinct, non-empty labels".into(),
        ));
    }
    if !(1..=50).contains(&params.folds) {
        return Err(error("folds", "folds must be between 1 and 50".into()));
    }
    match (params.window, params.train_blocks) {
        (Window::Expanding, Some(_)) => {
            return Err(error(
                "train_blocks",
                "train_blocks applies to `window: rolling` only".into(),
            ));
        }
        (Window::Rolling, Some(0)) => {
            return Err(error(
                "train_blocks",
                "train_blocks must be at least 1".into(),
            ));
        }
        _ => {}
    }
    let embargo_ms = match params.embargo.as_deref() {
        None | Some("auto") => None,
        Some(text) => Some(
            // Zero is a real choice here (no embargo), so zero is accepted.
            crate::util::duration::HumanDuration::parse(text)
                .map_err(|cause| {
                    error(
                        "embargo",
                        format!("embargo must be `auto` or a duration such as 4h: {cause}"),
                    )
                })?
                .get()
                .as_millis() as i64,
        ),
    };
    Ok(embargo_ms)
}

/// The fit's numbers, checked, with what does not apply to the model zeroed (so it stays out
/// of the fingerprint's meaning).
fn train_config(params: &Params) -> Result<TrainConfig, ParamError> {
    let error = param_error;
    let network = params.model.is_network();
    let logistic = params.model == ModelKind::Logistic;
    let hidden = params.hidden.unwrap_or(64);
    let epochs = params.epochs.unwrap_or(10);
    let batch_size = params.batch_size.unwrap_or(1024);
    let learning_rate = params.learning_rate.unwrap_or(1e-3);
    if !(1..=4096).contains(&hidden) {
        return Err(error("hidden", "hidden must be between 1 and 4096".into()));
    }
    if !(1..=10_000).contains(&epochs) {
        return Err(error("epochs", "epochs must be between 1 and 10000".into()));
    }
    if !(1..=1 << 20).contains(&batch_size) {
        return Err(error(
            "batch_size",
            "batch_size must be between 1 and 1048576".into(),
        ));
    }
    if !(learning_rate.is_finite() && learning_rate > 0.0 && learning_rate < 1.0) {
        return Err(error(
            "learning_rate",
            "learning_rate must be above 0 and below 1".into(),
        ));
    }
    let alpha = params.alpha.unwrap_or(1.0);
    let tolerance = params.tolerance.unwrap_or(1e-4);
    if !(alpha.is_finite() && alpha >= 0.0) {
        return Err(error("alpha", "alpha must be 0 or more".into()));
    }
    if !(tolerance.is_finite() && tolerance > 0.0) {
        return Err(error("tolerance", "tolerance must be above 0".into()));
    }
    if params.max_iterations == Some(0) {
        return Err(error(
            "max_iterations",
            "max_iterations must be at least 1".into(),
        ));
    }
    let solver = params.solver.unwrap_or(LogisticSolver::Native);
    let (boost, forest) = tree_config(params)?;
    let config = TrainConfig {
        model: params.model,
        solver: logistic.then_some(solver),
        hidden: if params.model == ModelKind::Mlp {
            hidden
        } else {
            0
        },
        epochs: if network { epochs } else { 0 },
        batch_size: if network { batch_size } else { 0 },
        learning_rate: if network { learning_rate } else { 0.0 },
        balance: params.balance,
        seed: params.seed,
        alpha: if logistic { alpha } else { 0.0 },
        max_iterations: if logistic {
            params.max_iterations.unwrap_or(100)
        } else {
            0
        },
        tolerance: if logistic { tolerance } else { 0.0 },
        boost,
        forest,
    };
    Ok(TrainConfig {
        balance: config.balance(),
        ..config
    })
}

/// `gbdt`'s and `forest`'s params, checked, with their defaults (LightGBM's for the booster
/// but 200 rounds of depth 6; scikit-learn's for the forest but depth 10, the replaced
/// system's).
fn tree_config(
    params: &Params,
) -> Result<
    (
        Option<crate::train::BoostConfig>,
        Option<crate::train::trees::ForestParams>,
    ),
    ParamError,
> {
    let error = param_error;
    let max_depth = params.max_depth.unwrap_or(match params.model {
        ModelKind::Forest => 10,
        _ => 6,
    });
    if !(1..=32).contains(&max_depth) {
        return Err(error(
            "max_depth",
            "max_depth must be between 1 and 32".into(),
        ));
    }
    let min_leaf = params.min_leaf.unwrap_or(match params.model {
        ModelKind::Forest => 1.0,
        _ => 20.0,
    });
    if !(min_leaf.is_finite() && min_leaf > 0.0) {
        return Err(error(
            "min_leaf",
            "min_leaf (the least row weight in a leaf) must be above 0".into(),
        ));
    }
    match params.model {
        ModelKind::Gbdt => {
            let iterations = params.iterations.unwrap_or(200);
            if !(1..=100_000).contains(&iterations) {
                return Err(error(
                    "iterations",
                    "iterations must be between 1 and 100000".into(),
                ));
            }
            let learning_rate = f64::from(params.learning_rate.unwrap_or(0.1));
            if !(learning_rate > 0.0 && learning_rate <= 1.0) {
                return Err(error(
                    "learning_rate",
                    "learning_rate must be above 0 and at most 1".into(),
                ));
            }
            let l2 = params.l2.unwrap_or(0.0);
            if !(l2.is_finite() && l2 >= 0.0) {
                return Err(error("l2", "l2 must be 0 or more".into()));
            }
            let validation = params.validation.unwrap_or(0.1);
            if !(0.0..0.9).contains(&validation) {
                return Err(error(
                    "validation",
                    "validation is the share of each training span kept back to stop on: at least 0 and below 0.9".into(),
                ));
            }
            let early_stopping = params.early_stopping.unwrap_or(20);
            Ok((
                Some(crate::train::BoostConfig {
                    params: crate::train::trees::BoostParams {
                        iterations,
                        learning_rate,
                        max_depth,
                        min_leaf,
                        l2,
                        early_stopping: if validation > 0.0 { early_stopping } else { 0 },
                    },
                    validation,
                }),
                None,
            ))
        }
        ModelKind::Forest => {
            let trees = params.trees.unwrap_or(100);
            if !(1..=100_000).contains(&trees) {
                return Err(error("trees", "trees must be between 1 and 100000".into()));
            }
            if params.max_features == Some(crate::train::trees::MaxFeatures::Count(0)) {
                return Err(error(
                    "max_features",
                    "max_features must be at least 1 (or sqrt, log2, all)".into(),
                ));
            }
            Ok((
                None,
                Some(crate::train::trees::ForestParams {
                    trees,
                    max_depth,
                    min_leaf,
                    max_features: params.max_features.unwrap_or(
                        crate::train::trees::MaxFeatures::Rule(
                            crate::train::trees::FeatureRule::Sqrt,
                        ),
                    ),
                    bootstrap: params.bootstrap.unwrap_or(true),
                    seed: params.seed,
                }),
            ))
        }
        _ => Ok((None, None)),
    }
}

/// The predictions table's schema for `classes`.
fn predictions_schema(classes: &[String]) -> SchemaRef {
    let mut fields = vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("open_time", DataType::Int64, false),
        Field::new("fold", DataType::Int32, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("predicted", DataType::Utf8, false),
    ];
    fields.extend(
        classes
            .iter()
            .map(|class| Field::new(format!("p_{class}"), DataType::Float32, false)),
    );
    Arc::new(Schema::new(fields))
}

/// `[{feature, importance}]`, most important first (ties by name).
fn importance_ranked(columns: &[String], importance: &[f64]) -> serde_json::Value {
    let mut ranked: Vec<(&String, f64)> = columns.iter().zip(importance.iter().copied()).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    serde_json::Value::Array(
        ranked
            .into_iter()
            .map(|(feature, importance)| {
                serde_json::json!({"feature": feature, "importance": importance})
            })
            .collect(),
    )
}

impl PreparedStage for Prepared {
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.resolved).unwrap_or_default()
    }

    fn files(&self) -> Vec<FileRef> {
        self.resolved
            .kernels
            .iter()
            .map(|path| FileRef {
                param: YamlPath::root().key("kernels"),
                path: path.clone(),
            })
            .collect()
    }

    fn reports(&self) -> &'static [&'static str] {
        &[REPORT_FILE]
    }

    /// Checks the feature and label tables against the inputs' schemas before anything runs.
    fn output_shape<'a>(
        &'a self,
        stage_id: &'a str,
        inputs: &'a [(String, OutputShape)],
    ) -> BoxFuture<'a, Result<OutputShape, ShapeError>> {
        Box::pin(async move {
            let (tables, unknown) = crate::engine::stage::known_tables(inputs);
            if unknown {
                return Ok(OutputShape::Unknown);
            }
            let find = |name: &str, key: &str| {
                tables
                    .iter()
                    .find(|table| table.names.iter().any(|candidate| candidate == name))
                    .ok_or_else(|| {
                        let known: Vec<String> = tables
                            .iter()
                            .flat_map(|table| table.names.iter().map(|name| format!("`{name}`")))
                            .collect();
                        ShapeError::Param(ParamError::new(
                            YamlPath::root().key(key),
                            format!(
                                "no input provides a table `{name}`; the inputs provide {}",
                                if known.is_empty() {
                                    "none".to_owned()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        ))
                    })
            };
            let resolved = &self.resolved;
            let features = find(&resolved.features_table, "features_table")?;
            let labels = find(&resolved.labels_table, "labels_table")?;
            self.columns(&features.schema).map_err(ShapeError::Param)?;
            crate::train::check_labels(&labels.schema, &resolved.labels_table).map_err(
                |message| {
                    ShapeError::Param(ParamError::new(
                        YamlPath::root().key("labels_table"),
                        message,
                    ))
                },
            )?;
            let mut names = vec!["predictions".to_owned()];
            if stage_id != "predictions" {
                names.push(stage_id.to_owned());
            }
            Ok(OutputShape::Tables(vec![ShapeTable {
                names,
                schema: predictions_schema(&resolved.classes),
            }]))
        })
    }

    fn run<'a>(&'a self, context: &'a StageContext) -> BoxFuture<'a, Result<(), StageError>> {
        Box::pin(self.execute(context))
    }
}

/// Leaves out (with a warning) feature columns with no finite value in any row (data that was
/// not collected, such as a premium index the exchange does not serve): kept, they would drop
/// every row. Only for the features taken by default, not those `features:` names. Read from
/// the features file's footer ([`sql::empty_columns`], the check the `sql` stage warns with):
/// no data is scanned. A table that is not one input's `<name>.parquet` is left as it is.
fn drop_empty_columns(
    context: &StageContext,
    table: &str,
    columns: Vec<String>,
) -> Result<Vec<String>, StageError> {
    let file = format!("{table}.parquet");
    let Some(input) = context.input_with(&file) else {
        return Ok(columns);
    };
    let empty = sql::empty_columns(&input.dir.join(&file)).map_err(StageError::failed)?;
    let (left_out, kept): (Vec<String>, Vec<String>) = columns
        .into_iter()
        .partition(|column| empty.contains(column));
    if !left_out.is_empty() {
        context.warn(&format!(
            "left out {} feature column(s) with no value in any row: `{}` (not collected?)",
            left_out.len(),
            left_out.join("`, `")
        ));
    }
    Ok(kept)
}

impl Prepared {
    /// The feature columns for a features table of `schema`, or the located problem.
    fn columns(&self, schema: &Schema) -> Result<Vec<String>, ParamError> {
        let resolved = &self.resolved;
        crate::train::feature_columns(
            schema,
            &resolved.features_table,
            resolved.features.as_deref(),
            &resolved.exclude,
        )
        .map_err(|(index, message)| {
            let path = match index {
                Some(index) => YamlPath::root().key("features").index(index),
                None => YamlPath::root().key("features_table"),
            };
            ParamError::new(path, message)
        })
    }

    async fn execute(&self, context: &StageContext) -> Result<(), StageError> {
        let resolved = &self.resolved;
        let started = std::time::Instant::now();
        let synthetic = crate::kinds::sql::mark_provenance(context)?;

        // The inputs as tables, exactly as a sql stage sees them.
        let session = sql::input_session(context.input_dirs(), &context.data_dir)
            .await
            .map_err(StageError::failed)?;
        let schema_of = |name: &str| {
            let session = &session;
            let name = name.to_owned();
            async move {
                session
                    .table(TableReference::bare(name.as_str()))
                    .await
                    .map(|frame| frame.schema().as_arrow().clone())
                    .map_err(|_| StageError::failed(format!("no input provides a table `{name}`")))
            }
        };
        let features_schema = schema_of(&resolved.features_table).await?;
        let labels_schema = schema_of(&resolved.labels_table).await?;
        let columns = self
            .columns(&features_schema)
            .map_err(|error| StageError::failed(error.message))?;
        // Columns named in `features:` were asked for: an empty one is an error below.
        let columns = if resolved.features.is_none() {
            drop_empty_columns(context, &resolved.features_table, columns)?
        } else {
            columns
        };
        crate::train::check_labels(&labels_schema, &resolved.labels_table)
            .map_err(StageError::failed)?;
        context.progress.message("reading features and labels");
        let data = crate::train::load(
            &session,
            &resolved.features_table,
            &resolved.labels_table,
            &columns,
            &resolved.classes,
        )
        .await
        .map_err(StageError::failed)?;
        let loaded = started.elapsed();
        if data.rows() == 0 {
            return Err(StageError::failed(format!(
                "`{}` and `{}` share no (symbol, open_time) row with finite features: {}",
                resolved.features_table,
                resolved.labels_table,
                data.why_empty()
            )));
        }
        let dropped: usize = data.dropped.values().sum();
        if dropped > 0 {
            let worst = data
                .dropped
                .iter()
                .max_by_key(|(_, count)| **count)
                .map(|(column, count)| format!("`{column}` ({count})"))
                .unwrap_or_default();
            context.log(&format!(
                "{dropped} labelled rows dropped for a null or non-finite feature; most often {worst}"
            ));
        }
        context.log(&format!(
            "{} rows x {} features, {} symbols",
            data.rows(),
            data.dim(),
            data.symbols.len()
        ));

        let split = SplitSpec {
            folds: resolved.folds,
            window: resolved.window,
            train_blocks: resolved.train_blocks.unwrap_or(0),
            embargo_ms: resolved.embargo_ms.unwrap_or_else(|| data.label_span_ms()),
        };
        let outcome = self.fit(context, Arc::new(data), split).await?;
        let (data, outcome, device_note) = outcome;
        let trained = started.elapsed();
        self.write_outputs(context, &data, &outcome, &columns, &split, synthetic)?;
        crate::kinds::write_json(
            &context.output_dir.join(REPORT_FILE),
            &serde_json::json!({
                "device": outcome.device.describe(),
                "device_note": device_note,
                "rows": data.rows(),
                "features": data.dim(),
                "dropped_rows": dropped,
                "load_seconds": loaded.as_secs_f64(),
                "train_seconds": (trained - loaded).as_secs_f64(),
            }),
        )?;
        Ok(())
    }

    /// Picks the device and runs the folds on a blocking thread, relaying epochs as progress.
    async fn fit(
        &self,
        context: &StageContext,
        data: Arc<Dataset>,
        split: SplitSpec,
    ) -> Result<(Arc<Dataset>, Outcome, Option<String>), StageError> {
        let resolved = &self.resolved;
        let config = resolved.config.clone();
        let choice = resolved.device;
        let kernels = self.kernels_source.clone().unwrap_or_default();
        let progress = context.progress.clone();
        let cancel = context.cancel.clone();
        let epochs = config.epochs as u64;
        let per_fit = match (&config.boost, &config.forest) {
            (Some(boost), _) => boost.params.iterations as u64,
            (_, Some(forest)) => forest.trees as u64,
            _ if config.model == ModelKind::Logistic => 1,
            _ => epochs,
        };
        let total = (resolved.folds as u64 + 1) * per_fit;
        let folds = resolved.folds;
        let task = tokio::task::spawn_blocking(move || {
            let (device, note) = match choice {
                DeviceChoice::Cpu => (Device::Cpu, None),
                DeviceChoice::Auto | DeviceChoice::Gpu => match crate::train::gpu::usable() {
                    Ok(gpu) => (Device::Gpu(gpu), None),
                    Err(reason) if choice == DeviceChoice::Auto => {
                        (Device::Cpu, Some(format!("training on the CPU: {reason}")))
                    }
                    Err(reason) => {
                        return Err(format!("`device: gpu`, but {reason}"));
                    }
                },
            };
            if let Some(note) = &note {
                progress.warn(note.clone());
            }
            let mut note = note;
            let mut done = 0u64;
            let fit_name = |fold: usize| {
                if fold == 0 {
                    "final fit".to_owned()
                } else {
                    format!("fold {fold}/{folds}")
                }
            };
            let mut on_event = |event: TrainEvent| match event {
                TrainEvent::Round {
                    fold,
                    round,
                    of,
                    loss,
                } => {
                    done += 1;
                    let stage = fit_name(fold);
                    progress.update(
                        done.min(total),
                        total,
                        format!("{stage}, round {round}/{of}, loss {loss:.4}"),
                    );
                }
                TrainEvent::Tree { fold, tree, of } => {
                    done += 1;
                    let stage = fit_name(fold);
                    progress.update(done.min(total), total, format!("{stage}, tree {tree}/{of}"));
                }
                TrainEvent::Epoch { fold, epoch, loss } => {
                    done += 1;
                    let stage = fit_name(fold);
                    progress.update(
                        done.min(total),
                        total,
                        format!("{stage}, epoch {epoch}/{epochs}, loss {loss:.4}"),
                    );
                }
                TrainEvent::FellBack(reason) => {
                    let line = format!("the GPU failed, training on the CPU instead: {reason}");
                    progress.warn(line.clone());
                    note = Some(line);
                }
                TrainEvent::Solved { fold, report } => {
                    done += 1;
                    let stage = fit_name(fold);
                    let line = format!(
                        "{stage}: L-BFGS stopped after {} iterations ({})",
                        report.iterations,
                        report.stopped.to_lowercase()
                    );
                    match report.ending {
                        Ending::Converged => progress.update(done.min(total), total, line),
                        Ending::OutOfIterations => progress.warn(format!(
                            "{line}; raise `max_iterations` or `tolerance` for a converged fit"
                        )),
                        Ending::Other => progress.warn(line),
                    }
                }
            };
            let outcome = crate::train::fit(
                &data,
                &config,
                &split,
                crate::train::Placement {
                    device,
                    fallback_allowed: choice == DeviceChoice::Auto,
                    kernels: &kernels,
                },
                &mut on_event,
                &|| cancel.is_cancelled(),
            )?;
            Ok((data, outcome, note))
        });
        match task.await {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(message)) if message == "interrupted" => Err(StageError::Cancelled),
            Ok(Err(message)) => Err(StageError::failed(message)),
            Err(join) => Err(StageError::failed(format!("training stopped: {join}"))),
        }
    }

    fn write_outputs(
        &self,
        context: &StageContext,
        data: &Dataset,
        outcome: &Outcome,
        columns: &[String],
        split: &SplitSpec,
        synthetic: bool,
    ) -> Result<(), StageError> {
        let resolved = &self.resolved;
        let classes = &data.classes;
        // Predictions: each fold's test block, in time order.
        let k = classes.len();
        let rows = outcome.predicted_rows.len();
        let mut symbol = StringBuilder::with_capacity(rows, rows * 8);
        let mut open_time = Int64Builder::with_capacity(rows);
        let mut fold = Int32Builder::with_capacity(rows);
        let mut label = StringBuilder::with_capacity(rows, rows * 4);
        let mut predicted = StringBuilder::with_capacity(rows, rows * 4);
        let mut probabilities: Vec<Float32Builder> = (0..k)
            .map(|_| Float32Builder::with_capacity(rows))
            .collect();
        for (index, &(row, number)) in outcome.predicted_rows.iter().enumerate() {
            let probs = &outcome.probabilities[index * k..(index + 1) * k];
            symbol.append_value(&data.symbols[data.symbol[row] as usize]);
            open_time.append_value(data.time[row]);
            fold.append_value(number as i32);
            label.append_value(&classes[data.y[row] as usize]);
            predicted.append_value(&classes[crate::train::metrics::argmax(probs)]);
            for (builder, &p) in probabilities.iter_mut().zip(probs) {
                builder.append_value(p);
            }
        }
        let mut arrays: Vec<arrow::array::ArrayRef> = vec![
            Arc::new(symbol.finish()),
            Arc::new(open_time.finish()),
            Arc::new(fold.finish()),
            Arc::new(label.finish()),
            Arc::new(predicted.finish()),
        ];
        arrays.extend(
            probabilities
                .iter_mut()
                .map(|builder| Arc::new(builder.finish()) as arrow::array::ArrayRef),
        );
        let batch = RecordBatch::try_new(predictions_schema(classes), arrays)
            .map_err(StageError::failed)?;
        crate::kinds::write_parquet(&context.output_dir.join(PREDICTIONS_FILE), &batch)?;

        // The model.
        let (model, scaler, loss_curve) = &outcome.model;
        let importance = model.importance();
        let first = data.time.iter().min().copied().unwrap_or(0);
        let last = data.time.iter().max().copied().unwrap_or(0);
        crate::kinds::write_json(
            &context.output_dir.join("model.json"),
            &serde_json::json!({
                "format_version": MODEL_FORMAT_VERSION,
                "model": resolved.model,
                "features": columns,
                "classes": classes,
                "scaler": scaler,
                "network": match model {
                    crate::train::Model::Network(network) => serde_json::json!({
                        "layout": "params = [W1 (inputs x hidden), b1 (hidden), W2 (fan_in x classes), b2 (classes)], row-major; fan_in = hidden, or inputs when hidden = 0 (then W1 and b1 are empty); hidden activation ReLU, output softmax",
                        "inputs": network.inputs,
                        "hidden": network.hidden,
                        "classes": network.classes,
                        "params": network.params,
                    }),
                    crate::train::Model::Trees(_) => serde_json::Value::Null,
                },
                "trees": match model {
                    crate::train::Model::Trees(ensemble) => serde_json::to_value(ensemble).map_err(StageError::failed)?,
                    crate::train::Model::Network(_) => serde_json::Value::Null,
                },
                "importance": importance,
                "trained_on": {
                    "rows": data.rows(),
                    "from": crate::util::time::rfc3339(first.max(0) as u64),
                    "to": crate::util::time::rfc3339(last.max(0) as u64),
                    "symbols": data.symbols,
                },
                "loss_curve": loss_curve,
                "synthetic": synthetic,
            }),
        )?;

        // The same model for ONNX Runtime: inputs named by feature, probabilities out.
        fs_err::write(
            context.output_dir.join(ONNX_FILE),
            crate::train::onnx::export(model, scaler, columns, classes.len()),
        )?;

        // Metrics.
        let folds_beating = outcome
            .folds
            .iter()
            .filter(|fold| fold.metrics.balanced_accuracy > fold.baseline.balanced_accuracy)
            .count();
        let verdict = format!(
            "{} (in {folds_beating} of {} folds)",
            outcome.verdict,
            outcome.folds.len()
        );
        let mut metrics = serde_json::json!({
            "model": resolved.model,
            "device": match outcome.device { Device::Cpu => "cpu", Device::Gpu(_) => "gpu" },
            "classes": classes,
            "features": columns,
            "rows": data.rows(),
            "dropped_rows": data.dropped,
            "split": {
                "folds": split.folds,
                "window": split.window,
                "train_blocks": resolved.train_blocks,
                "embargo_ms": split.embargo_ms,
                "purge": "training rows whose label_end_time reaches the test block",
            },
            "balance": resolved.config.balance,
            "overall": {
                "model": outcome.overall,
                "baseline": outcome.overall_baseline,
            },
            "verdict": verdict,
            "folds": outcome.folds,
            "importance": importance_ranked(columns, &importance),
            "synthetic": synthetic,
        });
        if resolved.model == ModelKind::Logistic {
            metrics["solver"] = serde_json::json!(resolved.config.solver);
        }
        crate::kinds::write_json(&context.output_dir.join("metrics.json"), &metrics)?;
        let mut text = String::new();
        if synthetic {
            text.push_str(crate::provenance::SYNTHETIC_BANNER);
            text.push('\n');
        }
        text.push_str(&format!(
            "{} on {} rows x {} features ({}), {} walk-forward folds\n",
            serde_json::to_value(resolved.model)
                .ok()
                .and_then(|value| value.as_str().map(str::to_owned))
                .unwrap_or_default(),
            data.rows(),
            data.dim(),
            outcome.device.describe(),
            outcome.folds.len()
        ));
        for fold in &outcome.folds {
            text.push_str(&format!(
                "  fold {}: train {} rows to {}, purged {}, embargoed {}; test {} rows from {}: {}\n",
                fold.fold.number,
                fold.fitted_rows,
                crate::util::time::rfc3339(fold.fold.train_span.1.max(0) as u64),
                fold.fold.purged,
                fold.fold.embargoed,
                fold.fold.test_rows,
                crate::util::time::rfc3339(fold.fold.test_span.0.max(0) as u64),
                fold.verdict
            ));
        }
        text.push_str(&crate::train::metrics::table(
            "out of sample, all folds",
            &outcome.overall,
            &outcome.overall_baseline,
        ));
        text.push_str(&format!("  over folds: {verdict}\n"));
        fs_err::write(context.output_dir.join("metrics.txt"), &text)?;
        context.progress.report(text);
        Ok(())
    }
}
