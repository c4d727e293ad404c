//! `report`: gathers what the run's other stages found (validation, features, model, backtest)
//! into `report.json`; when the run ends, the runner draws it with the run's stages and timings
//! as `runs/<run-id>/report.html` and `report.md` and prints the key figures.
//!
//! ```yaml
//! report:
//!   kind: report
//!   needs: [validate, features, train, backtest]   # any of them; a section per input found
//! ```
//!
//! Inputs are recognised by the files they hold: `validation_report.json` (validate),
//! `predictions.parquet` with `metrics.json` (train), `trades.parquet` with `metrics.json` and
//! `equity.parquet` (backtest), and the `features_table` among the inputs' tables.

use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use serde::{Deserialize, Serialize};

use crate::diagnostic::location::YamlPath;
use crate::diagnostic::params::{ParamError, parse_params};
use crate::engine::stage::{
    BoxFuture, Closing, ClosingContext, OutputShape, PrepareContext, PreparedStage, ShapeError,
    StageContext, StageError, StageInput, StageKind,
};
use crate::report::data::{
    Backtest, ColumnSummary, Curve, Features, LatestSignal, Model, Month, Paper, ReportData,
    Validation, thin,
};
use crate::report::{REPORT_DATA_FILE, REPORT_FORMAT_VERSION};
use crate::sql::{query, quoted};

pub struct Report;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default = "default_features_table")]
    features_table: String,
    /// The most points an equity chart draws.
    #[serde(default = "default_max_points")]
    max_points: usize,
}

fn default_features_table() -> String {
    "features".into()
}
fn default_max_points() -> usize {
    2000
}

#[derive(Debug)]
struct Prepared {
    params: Params,
}

impl StageKind for Report {
    fn name(&self) -> &'static str {
        "report"
    }

    fn code_version(&self) -> u32 {
        // 3: a sweep section from a compare input.
        3
    }

    /// After a sweep, one report over every member (it prefers the `compare` winner's).
    fn gathers(&self) -> bool {
        true
    }

    fn prepare(
        &self,
        params: &yaml_serde::Value,
        _context: &PrepareContext<'_>,
    ) -> Result<Box<dyn PreparedStage>, ParamError> {
        let params: Params = parse_params(params)?;
        if !(10..=100_000).contains(&params.max_points) {
            return Err(ParamError::new(
                YamlPath::root().key("max_points"),
                "max_points must be between 10 and 100000",
            ));
        }
        Ok(Box::new(Prepared { params }))
    }
}

fn field<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
    pointer: &str,
    path: &Path,
) -> Result<T, StageError> {
    let found = value.pointer(pointer).cloned().unwrap_or_default();
    serde_json::from_value(found)
        .map_err(|error| StageError::failed(format!("{} at `{pointer}`: {error}", path.display())))
}

impl Prepared {
    async fn execute(&self, context: &StageContext) -> Result<(), StageError> {
        let synthetic = crate::kinds::sql::mark_provenance(context)?;
        let validation: Option<Validation> = context.read_input_json("validation_report.json")?;
        let inputs = chosen_inputs(context)?;
        let input_with = |file: &str| {
            inputs
                .iter()
                .copied()
                .find(|input| input.dir.join(file).is_file())
        };
        let model = match input_with(crate::kinds::train::PREDICTIONS_FILE) {
            Some(input) => Some(model(&input.dir.join("metrics.json"))?),
            None => None,
        };
        let backtest = match input_with(crate::kinds::backtest::TRADES_FILE) {
            Some(input) => Some(self.backtest(&input.dir)?),
            None => None,
        };
        let paper = match input_with(crate::kinds::signals::SIGNALS_FILE) {
            Some(input) => Some(paper(&input.dir)?),
            None => None,
        };
        let session = crate::sql::input_session(
            inputs
                .iter()
                .map(|input| (input.id.as_str(), input.dir.as_path())),
            &context.data_dir,
        )
        .await
        .map_err(StageError::failed)?;
        let features = if crate::sql::has_table(&session, &self.params.features_table) {
            context.progress.message("summarising the features");
            Some(
                features(&session, &self.params.features_table)
                    .await
                    .map_err(StageError::failed)?,
            )
        } else {
            None
        };
        let sweep = match input_with(crate::kinds::compare::SUMMARY_FILE) {
            Some(input) => Some(sweep(&input.dir)?),
            None => None,
        };
        if validation.is_none()
            && features.is_none()
            && model.is_none()
            && backtest.is_none()
            && paper.is_none()
            && sweep.is_none()
        {
            return Err(StageError::failed(
                "no input holds anything to report: add validate, features, train, backtest or signals stages to `needs`",
            ));
        }
        let data = ReportData {
            format_version: REPORT_FORMAT_VERSION,
            synthetic,
            validation,
            features,
            model,
            backtest,
            paper,
            sweep,
        };
        crate::kinds::write_json(&context.output_dir.join(REPORT_DATA_FILE), &data)
    }

    fn backtest(&self, dir: &Path) -> Result<Backtest, StageError> {
        let metrics = dir.join(crate::kinds::backtest::METRICS_FILE);
        let summary: crate::backtest::Summary =
            field(&crate::kinds::read_json(&metrics)?, "", &metrics)?;
        let equity = dir.join(crate::kinds::backtest::EQUITY_FILE);
        let full = read_curve(&equity)?;
        let initial = summary.strategy.initial;
        let strategy = crate::backtest::metrics::monthly_returns(&full.time, &full.equity, initial);
        let benchmark =
            crate::backtest::metrics::monthly_returns(&full.time, &full.buy_and_hold, initial);
        let monthly = strategy
            .iter()
            .zip(&benchmark)
            .map(|(ours, theirs)| Month {
                year: ours.0,
                month: ours.1,
                strategy: ours.2,
                buy_and_hold: theirs.2,
            })
            .collect();
        Ok(Backtest {
            summary,
            curve: thin(&full, self.params.max_points),
            monthly,
        })
    }
}

/// A `signals` stage's summary and its newest bar's signals.
fn paper(dir: &Path) -> Result<Paper, StageError> {
    let path = dir.join(crate::kinds::signals::SUMMARY_FILE);
    let summary = serde_json::from_value(crate::kinds::read_json(&path)?)
        .map_err(|error| StageError::failed(format!("{}: {error}", path.display())))?;
    let path = dir.join(crate::kinds::signals::SIGNALS_FILE);
    let mut classes = Vec::new();
    let mut latest = Vec::new();
    for batch in crate::kinds::read_parquet(&path)? {
        classes = batch
            .schema()
            .fields()
            .iter()
            .filter_map(|field| field.name().strip_prefix("p_").map(str::to_owned))
            .collect();
        let symbol = crate::kinds::text_column(&batch, "symbol", &path)?;
        let side = crate::kinds::text_column(&batch, "side", &path)?;
        let probabilities = classes
            .iter()
            .map(|class| {
                crate::kinds::number_column::<Float64Type>(&batch, &format!("p_{class}"), &path)
            })
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            latest.push(LatestSignal {
                symbol: symbol.value(row).to_owned(),
                side: side.value(row).to_owned(),
                probabilities: probabilities.iter().map(|p| p.value(row)).collect(),
            });
        }
    }
    Ok(Paper {
        summary,
        classes,
        latest,
    })
}

/// A `compare` output: its summary and each member's equity curve, thinned for drawing.
fn sweep(dir: &Path) -> Result<crate::report::data::Sweep, StageError> {
    let path = dir.join(crate::kinds::compare::SUMMARY_FILE);
    let comparison: crate::sweep::Summary = serde_json::from_value(crate::kinds::read_json(&path)?)
        .map_err(|error| StageError::failed(format!("{}: {error}", path.display())))?;
    let mut curves: Vec<crate::report::data::MemberCurve> = Vec::new();
    for batch in crate::kinds::read_parquet(&dir.join(crate::kinds::compare::CURVES_FILE))? {
        let (Some(member), Some(time), Some(equity)) = (
            batch.column_by_name("member"),
            batch.column_by_name("open_time"),
            batch.column_by_name("equity"),
        ) else {
            return Err(StageError::failed(
                "curves.parquet lacks member, open_time or equity",
            ));
        };
        let member = member.as_string::<i32>();
        let time = time.as_primitive::<Int64Type>();
        let equity = equity.as_primitive::<arrow::datatypes::Float64Type>();
        for row in 0..batch.num_rows() {
            let name = member.value(row);
            if curves.last().is_none_or(|curve| curve.member != name) {
                curves.push(crate::report::data::MemberCurve {
                    member: name.to_owned(),
                    time: Vec::new(),
                    equity: Vec::new(),
                });
            }
            let curve = curves.last_mut().expect("pushed");
            curve.time.push(time.value(row));
            curve.equity.push(equity.value(row));
        }
    }
    for curve in &mut curves {
        let step = curve.time.len().div_ceil(400).max(1);
        curve.time = curve.time.iter().step_by(step).copied().collect();
        curve.equity = curve.equity.iter().step_by(step).copied().collect();
    }
    curves.sort_by_key(|curve| curve.member != comparison.winner);
    Ok(crate::report::data::Sweep { comparison, curves })
}

/// The inputs the report describes: outside a sweep, all of them; after one, of each stage's
/// members only the `compare` winner's (the member whose matrix values are all the winner's),
/// or the first when no `compare` says.
fn chosen_inputs(context: &StageContext) -> Result<Vec<&StageInput>, StageError> {
    let summary: Option<crate::sweep::Summary> =
        context.read_input_json(crate::kinds::compare::SUMMARY_FILE)?;
    let winner: Vec<(String, String)> = summary
        .and_then(|summary| {
            summary
                .leaderboard
                .into_iter()
                .find(|row| row.member == summary.winner)
                .map(|row| row.values)
        })
        .unwrap_or_default();
    let template = |id: &str| id.split('@').next().unwrap_or(id).to_owned();
    let mut chosen: Vec<&StageInput> = Vec::new();
    for input in &context.inputs {
        let agrees = input.matrix.iter().all(|pair| winner.contains(pair));
        match chosen
            .iter()
            .position(|other| template(&other.id) == template(&input.id))
        {
            None => chosen.push(input),
            Some(at) => {
                let current = chosen[at].matrix.iter().all(|pair| winner.contains(pair));
                if agrees && !current {
                    chosen[at] = input;
                }
            }
        }
    }
    Ok(chosen)
}

fn model(path: &Path) -> Result<Model, StageError> {
    let value = crate::kinds::read_json(path)?;
    let folds: Vec<serde_json::Value> = field(&value, "/folds", path)?;
    Ok(Model {
        model: field(&value, "/model", path)?,
        device: field(&value, "/device", path)?,
        classes: field(&value, "/classes", path)?,
        rows: field(&value, "/rows", path)?,
        folds: folds.len(),
        metrics: field(&value, "/overall/model", path)?,
        baseline: field(&value, "/overall/baseline", path)?,
        verdict: field(&value, "/verdict", path)?,
        importance: value
            .pointer("/importance")
            .and_then(serde_json::Value::as_array)
            .map(|rows| {
                rows.iter()
                    .filter_map(|row| {
                        Some((
                            row["feature"].as_str()?.to_owned(),
                            row["importance"].as_f64()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// The backtest's `equity.parquet`, whole.
fn read_curve(path: &Path) -> Result<Curve, StageError> {
    let reading =
        |error: &dyn std::fmt::Display| StageError::failed(format!("{}: {error}", path.display()));
    let mut curve = Curve::default();
    for batch in crate::kinds::read_parquet(path)? {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| reading(&format!("no column `{name}`")))
        };
        curve
            .time
            .extend(column("open_time")?.as_primitive::<Int64Type>().values());
        for (name, target) in [
            ("equity", &mut curve.equity),
            ("drawdown", &mut curve.drawdown),
            ("buy_and_hold", &mut curve.buy_and_hold),
            ("buy_and_hold_drawdown", &mut curve.buy_and_hold_drawdown),
        ] {
            target.extend(column(name)?.as_primitive::<Float64Type>().values());
        }
    }
    Ok(curve)
}

/// Rows, symbols, span and each numeric column's distribution, in one aggregate query.
async fn features(
    session: &datafusion::prelude::SessionContext,
    table: &str,
) -> Result<Features, String> {
    let frame = session
        .table(datafusion::common::TableReference::bare(table))
        .await
        .map_err(|error| format!("reading `{table}`: {error}"))?;
    let schema = frame.schema().as_arrow().clone();
    let has = |name: &str| schema.field_with_name(name).is_ok();
    let numeric: Vec<String> = schema
        .fields()
        .iter()
        .filter(|field| field.data_type().is_numeric() && field.name() != "open_time")
        .map(|field| field.name().clone())
        .collect();
    let mut select = vec!["COUNT(*)".to_owned()];
    select.push(if has("symbol") {
        "COUNT(DISTINCT symbol)".into()
    } else {
        "CAST(0 AS BIGINT)".into()
    });
    if has("open_time") {
        select.push("CAST(MIN(open_time) AS BIGINT)".into());
        select.push("CAST(MAX(open_time) AS BIGINT)".into());
    } else {
        select.push("CAST(NULL AS BIGINT)".into());
        select.push("CAST(NULL AS BIGINT)".into());
    }
    for name in &numeric {
        let column = format!("CAST({} AS DOUBLE)", quoted(name));
        select.push(format!("COUNT({column})"));
        select.push(format!("AVG({column})"));
        select.push(format!("STDDEV({column})"));
        select.push(format!("MIN({column})"));
        select.push(format!("MAX({column})"));
    }
    let batches = query(
        session,
        &format!("SELECT {} FROM {}", select.join(", "), quoted(table)),
        &format!("`{table}`"),
    )
    .await?;
    let batch = batches
        .first()
        .ok_or_else(|| format!("`{table}`: the summary returned nothing"))?;
    let integer = |index: usize| -> Option<i64> {
        let column = arrow::compute::cast(batch.column(index), &DataType::Int64).ok()?;
        let column = column.as_primitive::<Int64Type>();
        (!column.is_null(0)).then(|| column.value(0))
    };
    let float = |index: usize| -> Option<f64> {
        let column = arrow::compute::cast(batch.column(index), &DataType::Float64).ok()?;
        let column = column.as_primitive::<Float64Type>();
        (!column.is_null(0))
            .then(|| column.value(0))
            .filter(|v| v.is_finite())
    };
    let rows = integer(0).unwrap_or(0).max(0) as u64;
    let columns = numeric
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let at = 4 + index * 5;
            let values = integer(at).unwrap_or(0).max(0) as u64;
            ColumnSummary {
                name: name.clone(),
                values,
                nulls: rows.saturating_sub(values),
                mean: float(at + 1),
                std: float(at + 2),
                min: float(at + 3),
                max: float(at + 4),
            }
        })
        .collect();
    Ok(Features {
        table: table.to_owned(),
        rows,
        symbols: integer(1).unwrap_or(0).max(0) as u64,
        from_ms: integer(2),
        to_ms: integer(3),
        columns,
    })
}

impl PreparedStage for Prepared {
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }

    /// Draws `runs/<run-id>/report.html` and `.md` from the cached `report.json` and this run's
    /// record (only the runner knows the run's stages and timings), and gives the key figures.
    fn closing(&self, context: &ClosingContext<'_>) -> Result<Closing, String> {
        let report =
            crate::report::write_for_run(context.record, context.output_dir, context.run_dir)
                .map_err(|error| format!("could not write the run report: {error}"))?;
        Ok(Closing {
            figures: report.key_figures,
            lines: Vec::new(),
            files: vec![("report", report.html)],
        })
    }

    fn output_shape<'a>(
        &'a self,
        _stage_id: &'a str,
        _inputs: &'a [(String, OutputShape)],
    ) -> BoxFuture<'a, Result<OutputShape, ShapeError>> {
        Box::pin(async { Ok(OutputShape::Tables(Vec::new())) })
    }

    fn run<'a>(&'a self, context: &'a StageContext) -> BoxFuture<'a, Result<(), StageError>> {
        Box::pin(self.execute(context))
    }
}
