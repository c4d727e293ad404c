//! Model training with honest evaluation: the dataset (features joined to labels by symbol and
//! bar), walk-forward folds with a purge ([`split`]), standardisation fitted on each training
//! span only, the models ([`logistic`]: L-BFGS on the CPU, by default on our own objective, or
//! through linfa-logistic; [`network`]: `softmax` and `mlp` on the CPU or through the CUDA
//! kernels of [`crate::train::gpu`]) and the metrics beside a baseline ([`metrics`]).
//! The `train` stage (`stages::train`) wires this to the engine; everything here is synchronous
//! and runs on a blocking thread.

pub mod gpu;
pub mod logistic;
pub mod metrics;
pub mod network;
pub mod onnx;
pub mod saved;
pub mod split;
pub mod synthetic;
pub mod trees;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, Schema};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

pub use self::logistic::{Ending, SolverReport};
use self::metrics::Metrics;
use self::network::{AdamConfig, CpuTrainer, Network, Trainer, TrainingSet};
use self::split::{Fold, SplitSpec};
use crate::sql::quoted;

/// The model a `train` stage fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Multinomial logistic regression by L-BFGS, on the CPU ([`LogisticSolver`]).
    Logistic,
    /// The same linear model trained by minibatch Adam (CPU or GPU).
    Softmax,
    /// One ReLU hidden layer, minibatch Adam (CPU or GPU).
    Mlp,
    /// Gradient-boosted trees, softmax multiclass ([`trees::fit_boosted`]).
    Gbdt,
    /// A random forest ([`trees::fit_forest`]).
    Forest,
}

impl ModelKind {
    /// A network trained by epochs (`softmax`, `mlp`).
    pub fn is_network(self) -> bool {
        matches!(self, ModelKind::Softmax | ModelKind::Mlp)
    }

    pub fn is_trees(self) -> bool {
        matches!(self, ModelKind::Gbdt | ModelKind::Forest)
    }
}

/// A fitted model of any kind.
#[derive(Debug, Clone)]
pub enum Model {
    /// `logistic`, `softmax`, `mlp`.
    Network(Network),
    /// `gbdt`, `forest`.
    Trees(trees::Ensemble),
}

impl Model {
    /// Class probabilities for `rows` standardised rows of `x`.
    pub fn predict(&self, x: &[f32], rows: usize) -> Vec<f32> {
        match self {
            Model::Network(network) => network.predict(x, rows),
            Model::Trees(ensemble) => ensemble.predict(x, rows),
        }
    }

    /// Each feature's share of the model's importance: the split gain for trees; for a
    /// network, the weights' magnitudes on the standardised inputs (a linear model's
    /// `sum over classes |W|`; an mlp's `sum over hidden units |W1| x sum over classes |W2|`).
    pub fn importance(&self) -> Vec<f64> {
        match self {
            Model::Trees(ensemble) => ensemble.importance.clone(),
            Model::Network(network) => {
                let layout = network.layout();
                let (inputs, classes) = (network.inputs, network.classes);
                let w2 = &network.params[layout.w2.clone()];
                let mut importance = vec![0f64; inputs];
                if network.hidden == 0 {
                    for (input, value) in importance.iter_mut().enumerate() {
                        *value = w2[input * classes..(input + 1) * classes]
                            .iter()
                            .map(|w| f64::from(w.abs()))
                            .sum();
                    }
                } else {
                    let hidden = network.hidden;
                    let w1 = &network.params[layout.w1.clone()];
                    let out: Vec<f64> = (0..hidden)
                        .map(|unit| {
                            w2[unit * classes..(unit + 1) * classes]
                                .iter()
                                .map(|w| f64::from(w.abs()))
                                .sum()
                        })
                        .collect();
                    for (input, value) in importance.iter_mut().enumerate() {
                        *value = (0..hidden)
                            .map(|unit| f64::from(w1[input * hidden + unit].abs()) * out[unit])
                            .sum();
                    }
                }
                let total: f64 = importance.iter().sum();
                if total > 0.0 {
                    importance.iter_mut().for_each(|v| *v /= total);
                }
                importance
            }
        }
    }
}

/// What evaluates the `logistic` objective for argmin's L-BFGS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogisticSolver {
    /// [`logistic::Objective`]: per-row log-sum-exp, cost and gradient in one pass over the
    /// cores, row weights.
    Native,
    /// linfa-logistic 0.8: no row weights, and its log-sum-exp loses rows whose logits sit
    /// far below the largest in the data (see [`logistic`]).
    Linfa,
}

/// Where a network trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    /// A GPU that passes every check, else the CPU with the reason printed.
    Auto,
    Cpu,
    /// A GPU or a failed stage, with the reason.
    Gpu,
}

/// What to do about unequal class counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// `weights`, except `undersample` for `logistic` with `solver: linfa` (no row weights).
    Auto,
    None,
    /// Loss weights `rows / (classes x class rows)`, from the training span.
    Weights,
    /// Keep an equal number of training rows of each class (a seeded draw, time order kept).
    Undersample,
}

/// Everything a fit needs besides the data.
#[derive(Debug, Clone, Serialize)]
pub struct TrainConfig {
    pub model: ModelKind,
    /// The logistic fit's solver (`native` when `None`); `None` for the networks, and left out
    /// of the serialised config then, so their cache keys do not depend on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub solver: Option<LogisticSolver>,
    pub hidden: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f32,
    pub balance: Balance,
    pub seed: u64,
    /// L2 strength of the logistic fit.
    pub alpha: f64,
    pub max_iterations: u64,
    /// Logistic stopping rule: gradient norm of the mean loss.
    pub tolerance: f64,
    /// `gbdt`'s params; left out of the serialised config for other models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boost: Option<BoostConfig>,
    /// `forest`'s params; left out of the serialised config for other models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forest: Option<trees::ForestParams>,
}

/// `gbdt`: the booster's params and the share of each training span kept back (its last rows,
/// purged like a test block) to stop on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BoostConfig {
    #[serde(flatten)]
    pub params: trees::BoostParams,
    pub validation: f64,
}

impl TrainConfig {
    /// `auto` resolved for this model.
    pub fn balance(&self) -> Balance {
        match (self.balance, self.model) {
            (Balance::Auto, ModelKind::Logistic) if self.solver == Some(LogisticSolver::Linfa) => {
                Balance::Undersample
            }
            (Balance::Auto, _) => Balance::Weights,
            (other, _) => other,
        }
    }
}

/// Features and labels joined on (symbol, open time), in time order.
#[derive(Debug, Default)]
pub struct Dataset {
    pub features: Vec<String>,
    pub classes: Vec<String>,
    /// `rows x features`, row-major.
    pub x: Vec<f32>,
    pub y: Vec<u8>,
    pub time: Vec<i64>,
    pub label_end: Vec<i64>,
    pub symbol: Vec<u32>,
    pub symbols: Vec<String>,
    /// Joined rows dropped because a feature was null, NaN or infinite, by the first such column.
    pub dropped: BTreeMap<String, usize>,
    /// Joined (labelled) rows read, kept or dropped.
    pub joined: usize,
    /// Per feature, the joined rows where it is null, NaN or infinite (every column counted).
    pub non_finite: BTreeMap<String, usize>,
}

impl Dataset {
    pub fn rows(&self) -> usize {
        self.y.len()
    }

    /// Why no row survived: the features null or non-finite in every joined row, and the rows
    /// each dropped (by the first bad column of a row).
    pub fn why_empty(&self) -> String {
        let never: Vec<&str> = self
            .non_finite
            .iter()
            .filter(|(_, count)| **count == self.joined && self.joined > 0)
            .map(|(column, _)| column.as_str())
            .collect();
        let mut dropped: Vec<(&String, &usize)> = self.dropped.iter().collect();
        dropped.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let dropped: Vec<String> = dropped
            .iter()
            .map(|(column, count)| format!("`{column}` {count}"))
            .collect();
        if self.joined == 0 {
            return "no labelled row matches a feature row".to_owned();
        }
        let mut text = String::new();
        if !never.is_empty() {
            text.push_str(&format!(
                "{} null or non-finite in every one of the {} joined rows: `{}`; ",
                if never.len() == 1 {
                    "this feature is"
                } else {
                    "these features are"
                },
                self.joined,
                never.join("`, `")
            ));
        }
        text.push_str(&format!(
            "rows dropped, by the first bad feature: {}",
            dropped.join(", ")
        ));
        if !never.is_empty() {
            text.push_str(
                "; leave them out (`exclude:`), or fix what feeds them (a leader symbol missing from the lake leaves its columns empty)",
            );
        }
        text
    }

    pub fn dim(&self) -> usize {
        self.features.len()
    }

    /// The longest label window: the default embargo.
    pub fn label_span_ms(&self) -> i64 {
        self.time
            .iter()
            .zip(&self.label_end)
            .map(|(time, end)| end - time)
            .max()
            .unwrap_or(0)
            .max(0)
    }
}

/// The columns a labels table must have, besides `symbol` and `open_time`.
pub const LABEL_COLUMN: &str = "label";
pub const LABEL_END_COLUMN: &str = "label_end_time";
const KEYS: [&str; 2] = ["symbol", "open_time"];

/// Which feature columns to use: `requested`, or every numeric column but the keys and
/// `exclude`. The error names the column (and its index in `requested`).
pub fn feature_columns(
    schema: &Schema,
    table: &str,
    requested: Option<&[String]>,
    exclude: &[String],
) -> Result<Vec<String>, (Option<usize>, String)> {
    for key in KEYS {
        if schema.field_with_name(key).is_err() {
            return Err((
                None,
                format!("table `{table}` has no `{key}` column to join labels on"),
            ));
        }
    }
    match requested {
        Some(names) => {
            for (index, name) in names.iter().enumerate() {
                let field = schema.field_with_name(name).map_err(|_| {
                    (
                        Some(index),
                        format!(
                            "table `{table}` has no column `{name}`; it has {}",
                            column_list(schema)
                        ),
                    )
                })?;
                if !field.data_type().is_numeric() || KEYS.contains(&name.as_str()) {
                    return Err((
                        Some(index),
                        format!(
                            "column `{name}` of `{table}` is {} and cannot be a feature",
                            field.data_type()
                        ),
                    ));
                }
            }
            Ok(names.to_vec())
        }
        None => {
            let columns: Vec<String> = schema
                .fields()
                .iter()
                .filter(|field| field.data_type().is_numeric())
                .map(|field| field.name().clone())
                .filter(|name| !KEYS.contains(&name.as_str()) && !exclude.contains(name))
                .collect();
            if columns.is_empty() {
                return Err((None, format!("table `{table}` has no numeric columns")));
            }
            Ok(columns)
        }
    }
}

/// Checks a labels table has what `train` reads.
pub fn check_labels(schema: &Schema, table: &str) -> Result<(), String> {
    for key in KEYS {
        schema
            .field_with_name(key)
            .map_err(|_| format!("table `{table}` has no `{key}` column"))?;
    }
    let label = schema.field_with_name(LABEL_COLUMN).map_err(|_| {
        format!(
            "table `{table}` has no `{LABEL_COLUMN}` column; it has {}",
            column_list(schema)
        )
    })?;
    if !matches!(
        label.data_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        return Err(format!(
            "column `{LABEL_COLUMN}` of `{table}` is {}, not text",
            label.data_type()
        ));
    }
    let end = schema.field_with_name(LABEL_END_COLUMN).map_err(|_| {
        format!(
            "table `{table}` has no `{LABEL_END_COLUMN}` column (the open time of the last bar each label reads, for the purge); stages/labels/labels.sql shows how"
        )
    })?;
    if !end.data_type().is_integer() {
        return Err(format!(
            "column `{LABEL_END_COLUMN}` of `{table}` is {}, not an integer time in ms",
            end.data_type()
        ));
    }
    Ok(())
}

fn column_list(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|field| format!("`{}`", field.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads the join of `features_table` and `labels_table` (registered in `session`), in (time,
/// symbol) order. Rows whose label is not in `classes` are an error; rows with a non-finite
/// feature are dropped and counted.
pub async fn load(
    session: &datafusion::prelude::SessionContext,
    features_table: &str,
    labels_table: &str,
    features: &[String],
    classes: &[String],
) -> Result<Dataset, String> {
    let columns: String = features
        .iter()
        .map(|name| format!(", CAST(f.{} AS DOUBLE)", quoted(name)))
        .collect();
    let query = format!(
        "SELECT CAST(f.symbol AS VARCHAR), CAST(f.open_time AS BIGINT), CAST(l.{LABEL_COLUMN} AS VARCHAR), \
         CAST(l.{LABEL_END_COLUMN} AS BIGINT){columns} \
         FROM {} AS f JOIN {} AS l ON f.symbol = l.symbol AND f.open_time = l.open_time \
         ORDER BY 2, 1",
        quoted(features_table),
        quoted(labels_table)
    );
    let frame = session
        .sql(&query)
        .await
        .map_err(|error| format!("joining `{features_table}` and `{labels_table}`: {error}"))?;
    let mut stream = frame
        .execute_stream()
        .await
        .map_err(|error| format!("reading `{features_table}` and `{labels_table}`: {error}"))?;
    let mut data = Dataset {
        features: features.to_vec(),
        classes: classes.to_vec(),
        ..Dataset::default()
    };
    let mut symbol_ids: BTreeMap<String, u32> = BTreeMap::new();
    let mut row_values = vec![0f32; features.len()];
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|error| format!("reading the training rows: {error}"))?;
        append(
            &mut data,
            &batch,
            &mut symbol_ids,
            &mut row_values,
            labels_table,
        )?;
    }
    Ok(data)
}

fn append(
    data: &mut Dataset,
    batch: &RecordBatch,
    symbol_ids: &mut BTreeMap<String, u32>,
    row_values: &mut [f32],
    labels_table: &str,
) -> Result<(), String> {
    let as_text = |index: usize| {
        arrow::compute::cast(batch.column(index), &DataType::Utf8)
            .map_err(|error| format!("reading column {index}: {error}"))
    };
    let symbols = as_text(0)?;
    let symbols = symbols.as_string::<i32>();
    let times = batch.column(1).as_primitive::<Int64Type>();
    let labels = as_text(2)?;
    let labels = labels.as_string::<i32>();
    let ends = batch.column(3).as_primitive::<Int64Type>();
    let values: Vec<&arrow::array::PrimitiveArray<Float64Type>> = (4..batch.num_columns())
        .map(|index| batch.column(index).as_primitive::<Float64Type>())
        .collect();
    'rows: for row in 0..batch.num_rows() {
        if symbols.is_null(row) || times.is_null(row) || labels.is_null(row) || ends.is_null(row) {
            continue;
        }
        data.joined += 1;
        let bad = |array: &arrow::array::PrimitiveArray<Float64Type>| {
            array.is_null(row) || !(array.value(row) as f32).is_finite()
        };
        for (column, array) in values.iter().enumerate() {
            if bad(array) {
                *data
                    .dropped
                    .entry(data.features[column].clone())
                    .or_default() += 1;
                // The rest of the row, so a column that is never finite can be named.
                for (later, array) in values.iter().enumerate().skip(column) {
                    if bad(array) {
                        *data
                            .non_finite
                            .entry(data.features[later].clone())
                            .or_default() += 1;
                    }
                }
                continue 'rows;
            }
            row_values[column] = array.value(row) as f32;
        }
        let label = labels.value(row);
        let Some(class) = data.classes.iter().position(|class| class == label) else {
            return Err(format!(
                "`{labels_table}` labels {} at open time {} as `{label}`, which is not one of the classes [{}]; set `classes:` to the labels the table uses",
                symbols.value(row),
                times.value(row),
                data.classes.join(", ")
            ));
        };
        let symbol = symbols.value(row);
        let next = symbol_ids.len() as u32;
        let id = *symbol_ids.entry(symbol.to_owned()).or_insert_with(|| {
            data.symbols.push(symbol.to_owned());
            next
        });
        data.x.extend_from_slice(row_values);
        data.y.push(class as u8);
        data.time.push(times.value(row));
        data.label_end.push(ends.value(row));
        data.symbol.push(id);
    }
    Ok(())
}

/// Standardisation fitted on some rows only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Scaler {
    pub mean: Vec<f64>,
    /// Population standard deviation; 1 where a column is constant.
    pub scale: Vec<f64>,
}

impl Scaler {
    /// Fits on `rows` of `x` (`dim` columns).
    pub fn fit(x: &[f32], dim: usize, rows: &[usize]) -> Self {
        let n = rows.len().max(1) as f64;
        let mut mean = vec![0.0f64; dim];
        for &row in rows {
            for (sum, &value) in mean.iter_mut().zip(&x[row * dim..(row + 1) * dim]) {
                *sum += f64::from(value);
            }
        }
        mean.iter_mut().for_each(|sum| *sum /= n);
        let mut variance = vec![0.0f64; dim];
        for &row in rows {
            for ((sum, &value), m) in variance
                .iter_mut()
                .zip(&x[row * dim..(row + 1) * dim])
                .zip(&mean)
            {
                *sum += (f64::from(value) - m).powi(2);
            }
        }
        let scale = variance
            .iter()
            .map(|sum| {
                let sd = (sum / n).sqrt();
                if sd > 0.0 && sd.is_finite() { sd } else { 1.0 }
            })
            .collect();
        Self { mean, scale }
    }

    /// `rows` of `x`, standardised, as a contiguous matrix.
    pub fn apply(&self, x: &[f32], rows: &[usize]) -> Vec<f32> {
        let dim = self.mean.len();
        let mut out = Vec::with_capacity(rows.len() * dim);
        for &row in rows {
            for (column, &value) in x[row * dim..(row + 1) * dim].iter().enumerate() {
                out.push(self.standardise(column, value));
            }
        }
        out
    }

    /// One value of `column`, standardised in float: `(value - mean) / scale`, as the exported
    /// ONNX graph computes it, so the two agree to the bit.
    pub fn standardise(&self, column: usize, value: f32) -> f32 {
        (value - self.mean[column] as f32) / self.scale[column] as f32
    }
}

/// Where the networks actually trained.
#[derive(Debug, Clone)]
pub enum Device {
    Cpu,
    Gpu(Arc<crate::train::gpu::Gpu>),
}

impl Device {
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu => "cpu".to_owned(),
            Device::Gpu(gpu) => format!("gpu: {}", gpu.describe()),
        }
    }
}

/// Where a fit's networks train.
#[derive(Debug, Clone)]
pub struct Placement<'a> {
    pub device: Device,
    /// `device: auto`: a GPU failure mid-fit moves the fit to the CPU instead of failing it.
    pub fallback_allowed: bool,
    /// The CUDA source of the training kernels (`stages/kernels/mlp.cu`).
    pub kernels: &'a str,
}

/// Something a fit tells its caller while it runs.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    Epoch {
        /// 1-based fold; 0 for the final fit on all rows.
        fold: usize,
        epoch: usize,
        loss: f64,
    },
    /// A boosting round ended (`gbdt`): `loss` is the validation loss (the training loss
    /// without a validation tail).
    Round {
        fold: usize,
        round: usize,
        of: usize,
        loss: f64,
    },
    /// A forest's tree is grown.
    Tree { fold: usize, tree: usize, of: usize },
    /// The GPU failed mid-fit under `device: auto`; training goes on on the CPU.
    FellBack(String),
    /// A logistic fit ended (native solver).
    Solved {
        /// 1-based fold; 0 for the final fit on all rows.
        fold: usize,
        report: SolverReport,
    },
}

/// One fold's results.
#[derive(Debug, Clone, Serialize)]
pub struct FoldResult {
    #[serde(flatten)]
    pub fold: Fold,
    /// Training rows actually fitted (after undersampling).
    pub fitted_rows: usize,
    /// The standardisation, fitted on this fold's training rows only.
    pub scaler: Scaler,
    /// Mean weighted training loss after each epoch (networks) or round (`gbdt`).
    pub loss_curve: Vec<f64>,
    /// `gbdt`: the validation loss after each round, and the round kept.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub validation_curve: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rounds: Option<usize>,
    /// How the L-BFGS fit ended (`logistic` with the native solver only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub solver: Option<SolverReport>,
    pub metrics: Metrics,
    pub baseline: Metrics,
    pub verdict: String,
}

/// Everything a fit produced.
#[derive(Debug)]
pub struct Outcome {
    pub folds: Vec<FoldResult>,
    pub overall: Metrics,
    pub overall_baseline: Metrics,
    pub verdict: String,
    /// Out-of-sample predictions: dataset row, fold, then `classes` probabilities.
    pub predicted_rows: Vec<(usize, usize)>,
    pub probabilities: Vec<f32>,
    /// The model to keep: fitted on every row after the folds are scored, with its scaler and
    /// loss curve. (The folds' models only score; none of them sees the last block.)
    pub model: (Model, Scaler, Vec<f64>),
    pub device: Device,
}

/// Runs the folds, then the final fit on every row. `on_event` hears about epochs; `cancelled`
/// is polled between epochs and folds.
pub fn fit(
    data: &Dataset,
    config: &TrainConfig,
    split: &SplitSpec,
    placement: Placement<'_>,
    on_event: &mut dyn FnMut(TrainEvent),
    cancelled: &dyn Fn() -> bool,
) -> Result<Outcome, String> {
    let Placement {
        mut device,
        fallback_allowed,
        kernels,
    } = placement;
    let folds = split::walk_forward(&data.time, &data.label_end, split)?;
    let k = data.classes.len();
    let mut results = Vec::with_capacity(folds.len());
    let mut predicted_rows = Vec::new();
    let mut probabilities = Vec::new();
    let mut baseline_probabilities = Vec::new();
    let mut truth = Vec::new();
    for fold in folds {
        let prior = metrics::class_frequencies(fold.train.iter().map(|&row| data.y[row]), k);
        let fitted = fit_rows(
            data,
            config,
            &fold.train,
            fold.number,
            &mut device,
            fallback_allowed,
            kernels,
            on_event,
            cancelled,
        )?;
        let test_x = fitted.scaler.apply(&data.x, &fold.test);
        let probs = fitted.model.predict(&test_x, fold.test.len());
        let fold_truth: Vec<u8> = fold.test.iter().map(|&row| data.y[row]).collect();
        let fold_baseline: Vec<f32> = fold.test.iter().flat_map(|_| prior.clone()).collect();
        let model_metrics = metrics::evaluate(&fold_truth, &probs, &data.classes);
        let baseline = metrics::evaluate(&fold_truth, &fold_baseline, &data.classes);
        let verdict = metrics::verdict(&model_metrics, &baseline);
        predicted_rows.extend(fold.test.iter().map(|&row| (row, fold.number)));
        probabilities.extend_from_slice(&probs);
        baseline_probabilities.extend_from_slice(&fold_baseline);
        truth.extend_from_slice(&fold_truth);
        results.push(FoldResult {
            fitted_rows: fitted.rows,
            scaler: fitted.scaler,
            loss_curve: fitted.loss_curve,
            validation_curve: fitted.validation_curve,
            rounds: fitted.rounds,
            solver: fitted.solver,
            metrics: model_metrics,
            baseline,
            verdict,
            fold,
        });
    }
    let overall = metrics::evaluate(&truth, &probabilities, &data.classes);
    let overall_baseline = metrics::evaluate(&truth, &baseline_probabilities, &data.classes);
    let verdict = metrics::verdict(&overall, &overall_baseline);
    let all: Vec<usize> = (0..data.rows()).collect();
    let fitted = fit_rows(
        data,
        config,
        &all,
        0,
        &mut device,
        fallback_allowed,
        kernels,
        on_event,
        cancelled,
    )?;
    let model = (fitted.model, fitted.scaler, fitted.loss_curve);
    Ok(Outcome {
        folds: results,
        overall,
        overall_baseline,
        verdict,
        predicted_rows,
        probabilities,
        model,
        device,
    })
}

struct Fitted {
    model: Model,
    scaler: Scaler,
    loss_curve: Vec<f64>,
    validation_curve: Vec<f64>,
    rounds: Option<usize>,
    solver: Option<SolverReport>,
    rows: usize,
}

/// Fits one model on `rows` of the dataset.
#[allow(clippy::too_many_arguments)]
fn fit_rows(
    data: &Dataset,
    config: &TrainConfig,
    rows: &[usize],
    fold: usize,
    device: &mut Device,
    fallback_allowed: bool,
    kernels: &str,
    on_event: &mut dyn FnMut(TrainEvent),
    cancelled: &dyn Fn() -> bool,
) -> Result<Fitted, String> {
    let k = data.classes.len();
    let balance = config.balance();
    let chosen: Vec<usize> = if balance == Balance::Undersample {
        undersample(rows, &data.y, k, config.seed ^ fold as u64)
    } else {
        rows.to_vec()
    };
    let scaler = Scaler::fit(&data.x, data.dim(), &chosen);
    let y: Vec<u8> = chosen.iter().map(|&row| data.y[row]).collect();
    let set = TrainingSet {
        x: scaler.apply(&data.x, &chosen),
        weights: if balance == Balance::Weights {
            class_weights(&y, k)
        } else {
            vec![1.0; y.len()]
        },
        y,
        rows: chosen.len(),
        inputs: data.dim(),
    };
    if cancelled() {
        return Err("interrupted".into());
    }
    if config.model.is_trees() {
        let times: Vec<i64> = chosen.iter().map(|&row| data.time[row]).collect();
        let ends: Vec<i64> = chosen.iter().map(|&row| data.label_end[row]).collect();
        let (model, loss_curve, validation_curve, rounds) =
            fit_trees(&set, &times, &ends, k, config, fold, on_event, cancelled)?;
        return Ok(Fitted {
            model: Model::Trees(model),
            scaler,
            loss_curve,
            validation_curve,
            rounds,
            solver: None,
            rows: chosen.len(),
        });
    }
    let (network, loss_curve, solver) = match config.model {
        ModelKind::Logistic => {
            let (network, report) = fit_logistic(&set, k, config)?;
            if let Some(report) = &report {
                on_event(TrainEvent::Solved {
                    fold,
                    report: report.clone(),
                });
            }
            (network, Vec::new(), report)
        }
        ModelKind::Softmax | ModelKind::Mlp | ModelKind::Gbdt | ModelKind::Forest => {
            let hidden = if config.model == ModelKind::Mlp {
                config.hidden
            } else {
                0
            };
            let initial = Network::initialised(set.inputs, hidden, k, config.seed);
            let (network, loss_curve) = fit_network(
                initial,
                &set,
                config,
                fold,
                device,
                fallback_allowed,
                kernels,
                on_event,
                cancelled,
            )?;
            (network, loss_curve, None)
        }
    };
    Ok(Fitted {
        model: Model::Network(network),
        scaler,
        loss_curve,
        validation_curve: Vec::new(),
        rounds: None,
        solver,
        rows: chosen.len(),
    })
}

/// What a tree fit gives back: the ensemble, the training loss per round, the validation
/// loss per round, and the round kept (`gbdt`; the forest has none of these).
type TreeFit = (trees::Ensemble, Vec<f64>, Vec<f64>, Option<usize>);

/// Fits `gbdt` or `forest` on a training set whose rows are in time order (`times`, with their
/// label ends). `gbdt` keeps the last `validation` share of the rows back to stop on, and
/// purges the rows before it whose labels reach into it, as the folds purge a test block.
#[allow(clippy::too_many_arguments)]
fn fit_trees(
    set: &TrainingSet,
    times: &[i64],
    ends: &[i64],
    k: usize,
    config: &TrainConfig,
    fold: usize,
    on_event: &mut dyn FnMut(TrainEvent),
    cancelled: &dyn Fn() -> bool,
) -> Result<TreeFit, String> {
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let n = set.rows;
    if let Some(forest) = &config.forest {
        let rows: Vec<usize> = (0..n).collect();
        let binned = trees::Binned::new(&set.x, set.inputs, &rows, &rows, threads);
        let grown = std::sync::atomic::AtomicUsize::new(0);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (sender, receiver) = std::sync::mpsc::channel::<usize>();
        let ensemble = std::thread::scope(|scope| {
            let fit = scope.spawn(|| {
                trees::fit_forest(
                    &binned,
                    &set.y,
                    &set.weights,
                    k,
                    forest,
                    threads,
                    &|_| {
                        let done = grown.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        let _ = sender.send(done);
                    },
                    &|| stop.load(std::sync::atomic::Ordering::Relaxed),
                )
            });
            // Relay progress from this thread (the event sink is not shareable), and a
            // cancellation to the trees not started yet.
            loop {
                if cancelled() {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                match receiver.recv_timeout(std::time::Duration::from_millis(100)) {
                    Ok(done) => on_event(TrainEvent::Tree {
                        fold,
                        tree: done,
                        of: forest.trees,
                    }),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        if fit.is_finished() {
                            break;
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            fit.join()
                .map_err(|_| "a training thread panicked".to_owned())?
        })?;
        return Ok((ensemble, Vec::new(), Vec::new(), None));
    }
    let boost = config
        .boost
        .as_ref()
        .ok_or_else(|| "gbdt without its params".to_owned())?;
    // The validation tail: the last rows by time, from the first bar they start at.
    let tail = ((n as f64 * boost.validation).ceil() as usize).min(n.saturating_sub(1));
    let (train, valid): (Vec<u32>, Vec<u32>) = if tail == 0 {
        ((0..n as u32).collect(), Vec::new())
    } else {
        let start = times[n - tail];
        let first = times.partition_point(|&time| time < start);
        let train = (0..first as u32)
            .filter(|&row| ends[row as usize] < start)
            .collect();
        (train, (first as u32..n as u32).collect())
    };
    if train.is_empty() {
        return Err(format!(
            "gbdt: no training rows are left before the validation tail ({} rows); lower `validation`",
            n - train.len()
        ));
    }
    let fit_rows: Vec<usize> = train.iter().map(|&row| row as usize).collect();
    let rows: Vec<usize> = (0..n).collect();
    let binned = trees::Binned::new(&set.x, set.inputs, &fit_rows, &rows, threads);
    let (mut train_curve, mut valid_curve) = (Vec::new(), Vec::new());
    let iterations = boost.params.iterations;
    let ensemble = trees::fit_boosted(
        &binned,
        &set.y,
        &set.weights,
        k,
        &train,
        &valid,
        &boost.params,
        threads,
        &mut |round| {
            train_curve.push(round.train_loss);
            if let Some(loss) = round.valid_loss {
                valid_curve.push(loss);
            }
            on_event(TrainEvent::Round {
                fold,
                round: round.round,
                of: iterations,
                loss: round.valid_loss.unwrap_or(round.train_loss),
            });
        },
        cancelled,
    )?;
    let rounds = Some(ensemble.rounds);
    Ok((ensemble, train_curve, valid_curve, rounds))
}

/// Trains `initial` for `config.epochs`, on the GPU when `device` is one; under `device: auto`
/// a GPU failure restarts the fit on the CPU (and the rest of the run stays there).
#[allow(clippy::too_many_arguments)]
fn fit_network(
    initial: Network,
    set: &TrainingSet,
    config: &TrainConfig,
    fold: usize,
    device: &mut Device,
    fallback_allowed: bool,
    kernels: &str,
    on_event: &mut dyn FnMut(TrainEvent),
    cancelled: &dyn Fn() -> bool,
) -> Result<(Network, Vec<f64>), String> {
    let adam = AdamConfig::new(config.learning_rate);
    if let Device::Gpu(gpu) = device.clone() {
        let attempt = crate::train::gpu::trainer::GpuTrainer::new(
            gpu,
            kernels,
            &initial,
            set,
            config.batch_size,
            adam,
        )
        .and_then(|mut trainer| epochs(&mut trainer, set, config, fold, on_event, cancelled));
        match attempt {
            Ok(done) => return Ok(done),
            Err(error) if error == "interrupted" => return Err(error),
            Err(error) if fallback_allowed => {
                on_event(TrainEvent::FellBack(error));
                *device = Device::Cpu;
            }
            Err(error) => return Err(error),
        }
    }
    let mut trainer = CpuTrainer::new(initial, set, config.batch_size, adam);
    epochs(&mut trainer, set, config, fold, on_event, cancelled)
}

/// The epoch loop every trainer shares.
pub fn epochs(
    trainer: &mut dyn Trainer,
    set: &TrainingSet,
    config: &TrainConfig,
    fold: usize,
    on_event: &mut dyn FnMut(TrainEvent),
    cancelled: &dyn Fn() -> bool,
) -> Result<(Network, Vec<f64>), String> {
    let mut curve = Vec::with_capacity(config.epochs);
    for epoch in 0..config.epochs {
        if cancelled() {
            return Err("interrupted".into());
        }
        let order = network::epoch_order(set.rows, config.seed, epoch);
        let loss = trainer.epoch(&order)?;
        if !loss.is_finite() {
            return Err(format!(
                "the training loss diverged at epoch {} (fold {fold}); lower learning_rate",
                epoch + 1
            ));
        }
        curve.push(loss);
        on_event(TrainEvent::Epoch {
            fold,
            epoch: epoch + 1,
            loss,
        });
    }
    Ok((trainer.network()?, curve))
}

/// `balance: weights`: each row weighs `rows / (classes x rows of its class)`, so every class
/// carries the same total weight.
pub fn class_weights(y: &[u8], classes: usize) -> Vec<f32> {
    let shares = metrics::class_frequencies(y.iter().copied(), classes);
    // A class present in `y` has a share above zero.
    y.iter()
        .map(|&class| 1.0 / (classes as f32 * shares[usize::from(class)]))
        .collect()
}

/// An equal number of rows of each present class, drawn with a seed, in their original order.
fn undersample(rows: &[usize], y: &[u8], classes: usize, seed: u64) -> Vec<usize> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for &row in rows {
        by_class[y[row] as usize].push(row);
    }
    let keep = by_class
        .iter()
        .filter(|rows| !rows.is_empty())
        .map(Vec::len)
        .min()
        .unwrap_or(0);
    let mut rng = crate::util::rng::Rng::new(crate::util::rng::mix(seed ^ 0x0075_6e64_6572));
    let mut chosen = Vec::with_capacity(keep * classes);
    for mut members in by_class {
        // A partial Fisher-Yates: the first `keep` become a uniform draw.
        let n = members.len();
        for i in 0..keep.min(n) {
            let j = i + (rng.next_u64() % (n - i) as u64) as usize;
            members.swap(i, j);
        }
        members.truncate(keep);
        chosen.extend(members);
    }
    chosen.sort_unstable();
    chosen
}

/// Multinomial logistic regression by L-BFGS, through `config.solver`. Classes absent from the
/// training rows get a very negative intercept (probability ~0). The report says how the
/// native solver ended (linfa does not say).
pub fn fit_logistic(
    set: &TrainingSet,
    classes: usize,
    config: &TrainConfig,
) -> Result<(Network, Option<SolverReport>), String> {
    let present: Vec<u8> = set
        .y
        .iter()
        .copied()
        .collect::<std::collections::BTreeSet<u8>>()
        .into_iter()
        .collect();
    if present.len() < 2 {
        return Err(format!(
            "the training rows hold {} class; logistic regression needs at least two",
            present.len()
        ));
    }
    // Fitted over the present classes, in `present` order.
    let (fitted_weights, fitted_intercept, report) =
        match config.solver.unwrap_or(LogisticSolver::Native) {
            LogisticSolver::Native => {
                let mut dense = [0u8; 256];
                for (index, &class) in present.iter().enumerate() {
                    dense[usize::from(class)] = index as u8;
                }
                let y: Vec<u8> = set
                    .y
                    .iter()
                    .map(|&class| dense[usize::from(class)])
                    .collect();
                let objective = logistic::Objective::new(
                    &set.x,
                    &y,
                    &set.weights,
                    set.inputs,
                    present.len(),
                    config.alpha,
                )?;
                let fit = logistic::minimise(objective, config.max_iterations, config.tolerance)?;
                (fit.weights, fit.intercept, Some(fit.report))
            }
            LogisticSolver::Linfa => {
                let (weights, intercept) = fit_linfa(set, config)?;
                (weights, intercept, None)
            }
        };
    let mut weights = ndarray::Array2::<f64>::zeros((set.inputs, classes));
    let mut intercept = ndarray::Array1::<f64>::from_elem(classes, -30.0);
    for (column, &class) in present.iter().enumerate() {
        let class = usize::from(class);
        weights
            .column_mut(class)
            .assign(&fitted_weights.column(column));
        intercept[class] = fitted_intercept[column];
    }
    Ok((network::linear(weights.view(), intercept.view()), report))
}

/// linfa-logistic's fit: weights and intercepts over the classes present, in label order.
fn fit_linfa(
    set: &TrainingSet,
    config: &TrainConfig,
) -> Result<(ndarray::Array2<f64>, ndarray::Array1<f64>), String> {
    use linfa::traits::Fit;
    let x = ndarray::Array2::from_shape_vec(
        (set.rows, set.inputs),
        set.x.iter().map(|&value| f64::from(value)).collect(),
    )
    .map_err(|error| error.to_string())?;
    let y = ndarray::Array1::from(
        set.y
            .iter()
            .map(|&class| class as usize)
            .collect::<Vec<_>>(),
    );
    let dataset = linfa::Dataset::new(x, y);
    // linfa minimises the summed loss: scale the tolerance with the rows so it means the same
    // for any training size.
    let fitted = linfa_logistic::MultiLogisticRegression::default()
        .alpha(config.alpha)
        .max_iterations(config.max_iterations)
        .gradient_tolerance(config.tolerance * set.rows as f64)
        .fit(&dataset)
        .map_err(|error| format!("logistic regression (linfa): {error}"))?;
    // linfa's classes are the distinct labels, sorted: the order `fit_logistic` expects.
    debug_assert!(fitted.classes().windows(2).all(|pair| pair[0] < pair[1]));
    Ok((fitted.params().clone(), fitted.intercept().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scaler_sees_only_the_rows_it_is_fitted_on() {
        // Column 0: 1, 2, 3 in the first three rows, then 1000 in the last.
        let x = [1.0f32, 2.0, 3.0, 1000.0];
        let scaler = Scaler::fit(&x, 1, &[0, 1, 2]);
        assert_eq!(scaler.mean, vec![2.0]);
        assert!((scaler.scale[0] - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
        let applied = scaler.apply(&x, &[3]);
        assert!((applied[0] as f64 - 998.0 / (2.0f64 / 3.0).sqrt()).abs() < 1e-2);
        // A constant column keeps scale 1 instead of dividing by zero.
        let constant = Scaler::fit(&[5.0, 5.0], 1, &[0, 1]);
        assert_eq!(constant.scale, vec![1.0]);
    }

    #[test]
    fn undersampling_keeps_equal_counts_in_time_order() {
        let y: Vec<u8> = (0..100).map(|i| if i % 10 == 0 { 0 } else { 1 }).collect();
        let rows: Vec<usize> = (0..100).collect();
        let chosen = undersample(&rows, &y, 3, 1);
        assert_eq!(chosen.len(), 20);
        assert_eq!(chosen.iter().filter(|&&row| y[row] == 0).count(), 10);
        assert!(chosen.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(chosen, undersample(&rows, &y, 3, 1));
    }
}
