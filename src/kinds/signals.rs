//! `signals`: the current model on the newest closed bar of every symbol, appended to a paper
//! book under `data/paper/`, with a paper-trading ledger: a hypothetical fill at the next open,
//! and each signal's return once its horizon has passed.
//!
//! ```yaml
//! signals:
//!   kind: signals
//!   needs: [train, features, validate]   # model.json, the features table, the validated klines
//!   with:
//!     interval: 1h
//!     entry: {long_above: 0.5, short: false}   # as backtest's
//!     horizon: 4                                # bars held, as the labels'
//!     fee: 0.00075                              # per fill (taker)
//!     slippage: 0.0002
//! ```
//!
//! The book, `data/paper/<pipeline>/<stage>/`:
//! - `bars/bar=<open time ms>.parquet`: every symbol's probabilities and side at one bar,
//!   written once (atomically) and never rewritten: a published signal is history, so a later
//!   run at the same bar (say, with a new model) keeps the first;
//! - `ledger.parquet`: derived from those files and the lake on every run (atomically replaced).
//!
//! Outputs: `signals.parquet` (this bar), `ledger.parquet` (the book's ledger as of this run),
//! `summary.json`, `signals.txt`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int8Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use serde::{Deserialize, Serialize};

use crate::backtest::inputs::{EntryParams, text_column};
use crate::backtest::params::RuleParams;
use crate::backtest::{FLAT, LONG};
use crate::diagnostic::location::YamlPath;
use crate::diagnostic::params::{ParamError, parse_params};
use crate::engine::stage::{
    BoxFuture, Closing, ClosingContext, OutputShape, PrepareContext, PreparedStage, ShapeError,
    StageContext, StageError, StageKind,
};
use crate::market::model::Interval;
use crate::paper::portfolio::{self, PortfolioSummary};
use crate::paper::{
    Entry, Fills, Signal, SignalsSummary, Status, book_summary, ledger, side_of, side_word,
};
use crate::sql::{has_table, query, quoted};
use crate::train::saved::{ModelFile, check_model};

pub struct Signals;

pub const SIGNALS_FILE: &str = "signals.parquet";
pub const LEDGER_FILE: &str = "ledger.parquet";
pub const SUMMARY_FILE: &str = "summary.json";
/// The paper portfolio's trades (with `portfolio:`), closed and open.
pub const PORTFOLIO_FILE: &str = "portfolio.parquet";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default = "default_interval")]
    interval: String,
    #[serde(default = "default_features_table")]
    features_table: String,
    #[serde(default)]
    entry: EntryParams,
    #[serde(default = "default_horizon")]
    horizon: u32,
    #[serde(default = "default_fee")]
    fee: f64,
    #[serde(default = "default_slippage")]
    slippage: f64,
    /// The book traded as one account under the backtest's rules (its keys are `backtest`'s:
    /// `exit`, `capital`, `max_positions`, `daily_loss_limit`, `correlation`, `sizing`, ...);
    /// none by default.
    #[serde(default)]
    portfolio: Option<RuleParams>,
}

fn default_interval() -> String {
    "1h".into()
}
fn default_features_table() -> String {
    "features".into()
}
fn default_horizon() -> u32 {
    4
}
fn default_fee() -> f64 {
    crate::backtest::DEFAULT_TAKER_FEE
}
fn default_slippage() -> f64 {
    crate::backtest::DEFAULT_SLIPPAGE
}

#[derive(Debug)]
struct Prepared {
    params: Params,
    bar_ms: i64,
}

impl StageKind for Signals {
    fn name(&self) -> &'static str {
        "signals"
    }

    fn code_version(&self) -> u32 {
        // 3: the paper portfolio (`portfolio:`).
        3
    }

    fn prepare(
        &self,
        params: &yaml_serde::Value,
        _context: &PrepareContext<'_>,
    ) -> Result<Box<dyn PreparedStage>, ParamError> {
        let params: Params = parse_params(params)?;
        let root = YamlPath::root();
        let interval = Interval::parse(&params.interval)
            .map_err(|message| ParamError::new(root.clone().key("interval"), message))?;
        params.entry.check(root.clone().key("entry"))?;
        if !(1..=10_000).contains(&params.horizon) {
            return Err(ParamError::new(
                root.clone().key("horizon"),
                "horizon is in bars: between 1 and 10000",
            ));
        }
        for (key, value) in [("fee", params.fee), ("slippage", params.slippage)] {
            crate::diagnostic::params::check_range(root.clone().key(key), value, 0.0, 0.1, key)?;
        }
        if let Some(rules) = &params.portfolio {
            rules.check(&root.clone().key("portfolio"))?;
        }
        Ok(Box::new(Prepared {
            bar_ms: interval.millis() as i64,
            params,
        }))
    }
}

impl PreparedStage for Prepared {
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }

    /// The newest bar's signals and the paper book: `signals.txt` without the banner.
    fn closing(&self, context: &ClosingContext<'_>) -> Result<Closing, String> {
        let Ok(text) = std::fs::read_to_string(context.output_dir.join("signals.txt")) else {
            return Ok(Closing::default());
        };
        let lines = text
            .lines()
            .filter(|line| !line.starts_with(crate::provenance::SYNTHETIC_BANNER))
            .map(str::to_owned)
            .collect();
        Ok(Closing {
            lines,
            ..Closing::default()
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

fn signals_batch(
    signals: &[Signal],
    classes: &[String],
    bar_ms: i64,
    model_to: &str,
) -> Result<RecordBatch, StageError> {
    let mut fields = vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("open_time", DataType::Int64, false),
        Field::new("signal_time", DataType::Int64, false),
        Field::new("side", DataType::Utf8, false),
        Field::new("model_trained_to", DataType::Utf8, false),
    ];
    fields.extend(
        classes
            .iter()
            .map(|class| Field::new(format!("p_{class}"), DataType::Float64, false)),
    );
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            signals.iter().map(|s| s.symbol.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(
            signals.iter().map(|s| s.open_time),
        )),
        Arc::new(Int64Array::from_iter_values(
            signals.iter().map(|s| s.open_time + bar_ms),
        )),
        Arc::new(StringArray::from_iter_values(
            signals.iter().map(|s| side_word(s.side)),
        )),
        Arc::new(StringArray::from_iter_values(
            signals.iter().map(|_| model_to),
        )),
    ];
    for class in 0..classes.len() {
        columns.push(Arc::new(Float64Array::from_iter_values(
            signals.iter().map(|s| s.probabilities[class]),
        )));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(StageError::failed)
}

fn ledger_batch(entries: &[Entry]) -> Result<RecordBatch, StageError> {
    let float = |name: &str| Field::new(name, DataType::Float64, true);
    let schema = Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("open_time", DataType::Int64, false),
        Field::new("side", DataType::Utf8, false),
        Field::new("direction", DataType::Int8, false),
        Field::new("status", DataType::Utf8, false),
        float("entry_price"),
        float("exit_price"),
        float("gross_return"),
        float("net_return"),
        float("funding"),
    ]);
    let option = |pick: fn(&Entry) -> Option<f64>| -> ArrayRef {
        Arc::new(Float64Array::from(
            entries.iter().map(pick).collect::<Vec<_>>(),
        ))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            entries.iter().map(|e| e.symbol.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(
            entries.iter().map(|e| e.open_time),
        )),
        Arc::new(StringArray::from_iter_values(
            entries.iter().map(|e| side_word(e.side)),
        )),
        Arc::new(Int8Array::from_iter_values(entries.iter().map(|e| e.side))),
        Arc::new(StringArray::from_iter_values(
            entries.iter().map(|e| e.status.word()),
        )),
        option(|e| e.entry_price),
        option(|e| e.exit_price),
        option(|e| e.gross_return),
        option(|e| e.net_return),
        option(|e| e.funding),
    ];
    RecordBatch::try_new(Arc::new(schema), columns).map_err(StageError::failed)
}

/// Every signal in the book's `bars/` directory, in time order.
/// The book's signals, oldest first, with their probabilities of `classes` (NaN where a bar's
/// file lacks a class).
fn read_book(dir: &Path, classes: &[String]) -> Result<Vec<Signal>, StageError> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("bar=") && n.ends_with(".parquet"))
            })
            .collect(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => {
            return Err(StageError::failed(format!(
                "cannot list {}: {error}",
                dir.display()
            )));
        }
    };
    files.sort();
    let mut signals = Vec::new();
    for file in files {
        for batch in crate::kinds::read_parquet(&file)? {
            let symbol = crate::kinds::text_column(&batch, "symbol", &file)?;
            let time = crate::kinds::number_column::<Int64Type>(&batch, "open_time", &file)?;
            let side = crate::kinds::text_column(&batch, "side", &file)?;
            let probabilities: Vec<Option<&arrow::array::Float64Array>> = classes
                .iter()
                .map(|class| {
                    batch
                        .column_by_name(&format!("p_{class}"))
                        .and_then(|column| column.as_primitive_opt::<Float64Type>())
                })
                .collect();
            for row in 0..batch.num_rows() {
                signals.push(Signal {
                    symbol: symbol.value(row).to_owned(),
                    open_time: time.value(row),
                    side: side_of(side.value(row)),
                    probabilities: probabilities
                        .iter()
                        .map(|column| {
                            column
                                .filter(|c| !c.is_null(row))
                                .map_or(f64::NAN, |c| c.value(row))
                        })
                        .collect(),
                });
            }
        }
    }
    signals.sort_by(|a, b| (a.open_time, &a.symbol).cmp(&(b.open_time, &b.symbol)));
    Ok(signals)
}

/// The closed entries of the book's previous ledger, if there is one.
fn previous_closed(path: &Path) -> Result<HashMap<(String, i64), Entry>, StageError> {
    let mut closed = HashMap::new();
    if !path.exists() {
        return Ok(closed);
    }
    for batch in crate::kinds::read_parquet(path)? {
        let symbol = crate::kinds::text_column(&batch, "symbol", path)?;
        let time = crate::kinds::number_column::<Int64Type>(&batch, "open_time", path)?;
        let direction =
            crate::kinds::number_column::<arrow::datatypes::Int8Type>(&batch, "direction", path)?;
        let status = crate::kinds::text_column(&batch, "status", path)?;
        let float = |name: &str| crate::kinds::number_column::<Float64Type>(&batch, name, path);
        let (entry, exit, gross, net) = (
            float("entry_price")?,
            float("exit_price")?,
            float("gross_return")?,
            float("net_return")?,
        );
        let get = |array: &Float64Array, row: usize| array.is_valid(row).then(|| array.value(row));
        // Ledgers written before funding was charged have no such column.
        let funding = batch
            .column_by_name("funding")
            .and_then(|column| column.as_primitive_opt::<Float64Type>());
        for row in 0..batch.num_rows() {
            if status.value(row) != Status::Closed.word() {
                continue;
            }
            let key = (symbol.value(row).to_owned(), time.value(row));
            closed.insert(
                key.clone(),
                Entry {
                    symbol: key.0,
                    open_time: key.1,
                    side: direction.value(row),
                    status: Status::Closed,
                    entry_price: get(&entry, row),
                    exit_price: get(&exit, row),
                    gross_return: get(&gross, row),
                    net_return: get(&net, row),
                    funding: funding.and_then(|funding| get(funding, row)),
                },
            );
        }
    }
    Ok(closed)
}

/// `model.json` from the train input, checked: the format this build reads, and shapes that
/// fit (a damaged file is an error naming it, never a panic).
fn load_model(context: &StageContext) -> Result<ModelFile, StageError> {
    let model_path = context
        .input_with("model.json")
        .map(|input| input.dir.join("model.json"))
        .ok_or_else(|| {
            StageError::failed("no input holds a model.json: add a train stage to `needs`")
        })?;
    let model: ModelFile = context
        .read_input_json("model.json")?
        .ok_or_else(|| StageError::failed("no input holds a model.json"))?;
    if model.format_version != crate::kinds::train::MODEL_FORMAT_VERSION {
        return Err(StageError::failed(format!(
            "{}: model format {} (this build reads {}): re-run train",
            model_path.display(),
            model.format_version,
            crate::kinds::train::MODEL_FORMAT_VERSION
        )));
    }
    check_model(&model).map_err(|problem| {
        StageError::failed(format!(
            "{}: {problem}: the file is damaged or was not written by train; re-run train",
            model_path.display()
        ))
    })?;
    Ok(model)
}

/// `signals.txt`: the newest bar's signals and the paper book, as the run prints them.
fn signals_text(summary: &SignalsSummary) -> String {
    let percent = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{:+.3}%", v * 100.0));
    let mut text = String::new();
    if summary.synthetic {
        text.push_str(crate::provenance::SYNTHETIC_BANNER);
        text.push('\n');
    }
    text.push_str(&format!(
        "signals at {} (model trained to {}): {} long, {} short, {} flat",
        summary.bar, summary.model_trained_to, summary.long, summary.short, summary.flat
    ));
    for (what, symbols) in [
        ("no bar at this time", &summary.stale_symbols),
        ("incomplete features", &summary.incomplete_symbols),
        ("still warming up", &summary.warming_up_symbols),
    ] {
        if !symbols.is_empty() {
            text.push_str(&format!("; {what}: {}", symbols.join(", ")));
        }
    }
    text.push('\n');
    let book = &summary.ledger;
    text.push_str(&format!(
        "paper book {}: {} paper trades, {} closed (mean {} net, {} gross, hit rate {}), {} open, {} without prices\n",
        summary.book,
        book.signals,
        book.closed,
        percent(book.mean_net_return),
        percent(book.mean_gross_return),
        book.hit_rate
            .map_or("n/a".to_owned(), |v| format!("{:.1}%", v * 100.0)),
        book.open,
        book.no_price
    ));
    if let Some(portfolio) = &summary.portfolio {
        text.push_str(&format!(
            "paper portfolio ({}): {} closed (hit rate {}), {} open, {} pending; equity {:.2} ({:+.2}%, max drawdown {:.2}%), fees {:.2}, funding {:.2}; {}\n",
            portfolio.rules,
            portfolio.closed,
            portfolio
                .hit_rate
                .map_or("n/a".to_owned(), |v| format!("{:.1}%", v * 100.0)),
            portfolio.open,
            portfolio.pending,
            portfolio.equity,
            portfolio.total_return * 100.0,
            portfolio.max_drawdown * 100.0,
            portfolio.fees,
            portfolio.funding,
            portfolio::skipped_words(&portfolio.skipped),
        ));
    }
    text
}

impl Prepared {
    async fn execute(&self, context: &StageContext) -> Result<(), StageError> {
        let params = &self.params;
        let synthetic = crate::kinds::sql::mark_provenance(context)?;
        let model = load_model(context)?;
        let class_index = |class: &str, key: &str| {
            model
                .classes
                .iter()
                .position(|c| c == class)
                .ok_or_else(|| {
                    StageError::failed(format!(
                        "entry.{key}: the model has no class `{class}` (it has {})",
                        model.classes.join(", ")
                    ))
                })
        };
        let long = class_index(&params.entry.long_class, "long_class")?;
        let short = if params.entry.short {
            Some(class_index(&params.entry.short_class, "short_class")?)
        } else {
            None
        };

        let session = crate::sql::input_session(context.input_dirs(), &context.data_dir)
            .await
            .map_err(StageError::failed)?;
        self.check_features(&session, &model).await?;
        let table = &params.features_table;
        let (newest, rows, stale, incomplete) = self.newest_rows(&session, &model).await?;
        let newest = newest.ok_or_else(|| StageError::failed(format!("`{table}` has no rows")))?;

        // The model on the newest bar.
        let signals = self.predict(&model, &rows, newest, long, short);
        let batch = signals_batch(&signals, &model.classes, self.bar_ms, &model.trained_on.to)?;
        crate::kinds::write_parquet(&context.output_dir.join(SIGNALS_FILE), &batch)?;

        // Append to the book, once per bar.
        let book = context
            .data_dir
            .join("paper")
            .join(&context.pipeline)
            .join(&context.stage_id);
        let bar_file = book.join("bars").join(format!("bar={newest}.parquet"));
        let appended =
            crate::market::lake::publish(&bar_file, &batch, crate::kinds::parquet_properties())
                .map_err(StageError::failed)?;
        if !appended {
            context.warn(&format!(
                "{} already holds signals for this bar: kept them (a published signal is not rewritten)",
                bar_file.display()
            ));
        }

        // The ledger of the whole book, priced from the lake.
        let book_signals = read_book(&book.join("bars"), &model.classes)?;
        let first = book_signals
            .iter()
            .map(|s| s.open_time)
            .min()
            .unwrap_or(newest)
            .min(newest);
        let (prices, lake_newest) = self.prices(&session, first).await?;
        let funding = self.funding(&session, first).await?;
        // Symbols with a candle at this bar but no feature row: still inside the warm-up.
        let featured: std::collections::HashSet<&str> = signals
            .iter()
            .map(|s| s.symbol.as_str())
            .chain(stale.iter().map(String::as_str))
            .chain(incomplete.iter().map(String::as_str))
            .collect();
        let mut warming_up: Vec<String> = prices
            .keys()
            .filter(|(symbol, time)| *time == newest && !featured.contains(symbol.as_str()))
            .map(|(symbol, _)| symbol.clone())
            .collect();
        warming_up.sort();
        let previous = previous_closed(&book.join(LEDGER_FILE))?;
        let fills = Fills {
            bar_ms: self.bar_ms,
            horizon: params.horizon,
            fee: params.fee,
            slippage: params.slippage,
        };
        let entries = ledger(
            &book_signals,
            &previous,
            &prices,
            &funding,
            lake_newest.max(newest),
            fills,
        );
        let ledger = ledger_batch(&entries)?;
        crate::kinds::write_parquet_atomic(&book.join(LEDGER_FILE), &ledger)?;
        crate::kinds::write_parquet(&context.output_dir.join(LEDGER_FILE), &ledger)?;
        let portfolio = match &params.portfolio {
            Some(rules) => {
                let down = model
                    .classes
                    .iter()
                    .position(|c| *c == params.entry.short_class);
                let (summary, trades) = self
                    .portfolio(
                        &session,
                        &book_signals,
                        rules,
                        (long, down),
                        lake_newest.max(newest),
                    )
                    .await?;
                crate::kinds::write_parquet_atomic(&book.join(PORTFOLIO_FILE), &trades)?;
                crate::kinds::write_parquet(&context.output_dir.join(PORTFOLIO_FILE), &trades)?;
                Some(summary)
            }
            None => None,
        };

        let shown = book
            .strip_prefix(&context.project_root)
            .unwrap_or(&book)
            .display()
            .to_string();
        let count = |side: i8| signals.iter().filter(|s| s.side == side).count();
        let summary = SignalsSummary {
            bar: crate::util::time::rfc3339(newest.max(0) as u64),
            model_trained_to: model.trained_on.to.clone(),
            symbols: signals.len(),
            long: count(LONG),
            short: count(crate::backtest::SHORT),
            flat: count(FLAT),
            stale_symbols: stale,
            incomplete_symbols: incomplete,
            warming_up_symbols: warming_up,
            book: shown,
            appended,
            ledger: book_summary(&entries),
            portfolio,
            synthetic,
        };
        crate::kinds::write_json(&context.output_dir.join(SUMMARY_FILE), &summary)?;
        let text = signals_text(&summary);
        fs_err::write(context.output_dir.join("signals.txt"), &text)?;
        context.progress.report(text);
        Ok(())
    }

    /// Every feature the model uses is still in the features table (a model kept by
    /// `reuse_for` may predate an edit of the feature file).
    async fn check_features(
        &self,
        session: &datafusion::prelude::SessionContext,
        model: &ModelFile,
    ) -> Result<(), StageError> {
        let table = &self.params.features_table;
        if !has_table(session, table) {
            return Err(StageError::failed(format!(
                "no input provides a `{table}` table: add the features stage to `needs`"
            )));
        }
        let schema = session
            .table(datafusion::common::TableReference::bare(table.as_str()))
            .await
            .map_err(|error| StageError::failed(format!("reading `{table}`: {error}")))?
            .schema()
            .as_arrow()
            .clone();
        let missing: Vec<&str> = model
            .features
            .iter()
            .filter(|name| schema.field_with_name(name).is_err())
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(StageError::failed(format!(
                "the model (trained to {}) uses features `{table}` no longer has: `{}`; retrain it (`--start-from train`)",
                model.trained_on.to,
                missing.join("`, `")
            )));
        }
        Ok(())
    }

    /// Each symbol's signal at `newest` from the model's class probabilities.
    fn predict(
        &self,
        model: &ModelFile,
        rows: &[(String, Vec<f64>)],
        newest: i64,
        long: usize,
        short: Option<usize>,
    ) -> Vec<Signal> {
        let dim = model.features.len();
        let mut x = Vec::with_capacity(rows.len() * dim);
        for (_, values) in rows {
            for (column, value) in values.iter().enumerate() {
                x.push(model.scaler.standardise(column, *value as f32));
            }
        }
        let probabilities = model.predict(&x, rows.len());
        let k = model.classes.len();
        let rule = self.params.entry.rule();
        rows.iter()
            .enumerate()
            .map(|(row, (symbol, _))| {
                let p: Vec<f64> = probabilities[row * k..(row + 1) * k]
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect();
                let (side, _) = rule.decide(p[long], short.map_or(0.0, |s| p[s]));
                Signal {
                    symbol: symbol.clone(),
                    open_time: newest,
                    side,
                    probabilities: p,
                }
            })
            .collect()
    }

    /// Each symbol's newest feature row at the newest bar of the table: (newest bar, rows with
    /// every model feature, symbols whose newest row is older, symbols with a missing feature).
    #[allow(clippy::type_complexity)]
    async fn newest_rows(
        &self,
        session: &datafusion::prelude::SessionContext,
        model: &ModelFile,
    ) -> Result<
        (
            Option<i64>,
            Vec<(String, Vec<f64>)>,
            Vec<String>,
            Vec<String>,
        ),
        StageError,
    > {
        let table = quoted(&self.params.features_table);
        let columns: Vec<String> = model
            .features
            .iter()
            .map(|name| format!("CAST({} AS DOUBLE)", quoted(name)))
            .collect();
        // Each symbol's two newest rows: the newest to predict on, the gap between them to check
        // that the table is on `interval` bars.
        let sql = format!(
            "SELECT CAST(symbol AS VARCHAR), CAST(open_time AS BIGINT), newest_rank, {} FROM (\
               SELECT *, ROW_NUMBER() OVER (PARTITION BY symbol ORDER BY open_time DESC) AS newest_rank \
               FROM {table}) WHERE newest_rank <= 2 ORDER BY 1, 2 DESC",
            columns.join(", ")
        );
        let batches = query(session, &sql, &format!("the newest rows of {table}"))
            .await
            .map_err(StageError::failed)?;
        let mut newest_rows: Vec<(String, i64, Vec<Option<f64>>)> = Vec::new();
        let mut gaps = Vec::new();
        for batch in &batches {
            let symbol = text_column(batch, 0).map_err(StageError::failed)?;
            let symbol = symbol.as_string::<i32>();
            let time = batch.column(1).as_primitive::<Int64Type>();
            for row in 0..batch.num_rows() {
                let (name, at) = (symbol.value(row), time.value(row));
                match newest_rows.last() {
                    // The second newest row of the symbol just read.
                    Some((last, newer, _)) if last == name => {
                        gaps.push(newer - at);
                        continue;
                    }
                    _ => {}
                }
                let values: Vec<Option<f64>> = (0..model.features.len())
                    .map(|c| {
                        let column = batch.column(c + 3).as_primitive::<Float64Type>();
                        (column.is_valid(row) && column.value(row).is_finite())
                            .then(|| column.value(row))
                    })
                    .collect();
                newest_rows.push((name.to_owned(), at, values));
            }
        }
        // The most common gap between each symbol's two newest rows: one missing candle does
        // not decide it.
        let mut counts: HashMap<i64, usize> = HashMap::new();
        for gap in &gaps {
            *counts.entry(*gap).or_default() += 1;
        }
        let usual = counts
            .into_iter()
            .max_by_key(|&(gap, count)| (count, std::cmp::Reverse(gap)))
            .map(|(gap, _)| gap);
        if let Some(gap) = usual.filter(|&gap| gap != self.bar_ms) {
            let gap = gap.max(0) as u64;
            return Err(StageError::failed(format!(
                "interval: {} does not match `{}`, whose newest bars are {} apart: set `interval` to the features' interval",
                self.params.interval,
                self.params.features_table,
                crate::util::time::human(std::time::Duration::from_millis(gap))
            )));
        }
        let newest = newest_rows.iter().map(|(_, time, _)| *time).max();
        let (mut rows, mut stale, mut incomplete) = (Vec::new(), Vec::new(), Vec::new());
        for (symbol, time, values) in newest_rows {
            if Some(time) != newest {
                stale.push(symbol);
            } else if let Some(values) = values.into_iter().collect::<Option<Vec<f64>>>() {
                rows.push((symbol, values));
            } else {
                incomplete.push(symbol);
            }
        }
        Ok((newest, rows, stale, incomplete))
    }

    /// The funding settled from `from` on, by the bar it settled in; none without a `funding`
    /// table.
    async fn funding(
        &self,
        session: &datafusion::prelude::SessionContext,
        from: i64,
    ) -> Result<crate::paper::FundingByBar, StageError> {
        let mut funding = crate::paper::FundingByBar::new();
        if !has_table(session, "funding") {
            return Ok(funding);
        }
        let bar = self.bar_ms;
        let sql = format!(
            "SELECT CAST(symbol AS VARCHAR) AS s, CAST(funding_time AS BIGINT) AS t, CAST(funding_rate AS DOUBLE) AS r \
             FROM funding WHERE funding_time >= {from} ORDER BY s, t"
        );
        let batches = query(session, &sql, "the funding")
            .await
            .map_err(StageError::failed)?;
        for batch in &batches {
            let symbol = text_column(batch, 0).map_err(StageError::failed)?;
            let symbol = symbol.as_string::<i32>();
            let time = batch.column(1).as_primitive::<Int64Type>();
            let rate = batch.column(2).as_primitive::<Float64Type>();
            for row in 0..batch.num_rows() {
                let settled = time.value(row);
                funding
                    .entry(symbol.value(row).to_owned())
                    .or_default()
                    .push((settled - settled.rem_euclid(bar), rate.value(row)));
            }
        }
        Ok(funding)
    }

    /// The book traded under `rules` from the lake's prices: its figures and its trades. `classes`
    /// are the model's long and down classes.
    async fn portfolio(
        &self,
        session: &datafusion::prelude::SessionContext,
        book: &[Signal],
        rules: &RuleParams,
        (long, down): (usize, Option<usize>),
        newest: i64,
    ) -> Result<(PortfolioSummary, RecordBatch), StageError> {
        let described = rules.describe();
        let rules = rules.rules();
        let mut symbols: Vec<String> = book.iter().map(|s| s.symbol.clone()).collect();
        symbols.sort();
        symbols.dedup();
        let first = book.iter().map(|s| s.open_time).min().unwrap_or(newest);
        let lookback = portfolio::lookback(&rules) as i64 * self.bar_ms;
        let first = first - first.rem_euclid(self.bar_ms) - lookback;
        let mut market =
            crate::backtest::Market::new(symbols, first, newest.max(first), self.bar_ms)
                .map_err(StageError::failed)?;
        crate::backtest::inputs::fill_prices(session, &self.params.interval, &mut market)
            .await
            .map_err(StageError::failed)?;
        let instruments = if has_table(session, "universe") {
            crate::backtest::inputs::instruments(session, "universe", &market)
                .await
                .map_err(StageError::failed)?
                .0
        } else {
            vec![crate::backtest::Instrument::default(); market.symbols.len()]
        };
        let funding = if has_table(session, "funding") {
            Some(
                crate::backtest::inputs::funding(session, "funding", &market)
                    .await
                    .map_err(StageError::failed)?
                    .0,
            )
        } else {
            None
        };
        let signals = portfolio::grid_signals(&market, book, long, down);
        let simulation =
            crate::backtest::simulate(&market, &signals, &instruments, funding.as_deref(), &rules);
        let trades = crate::kinds::backtest::trades_batch(&market, &simulation.trades, "open")?;
        Ok((portfolio::summarise(&simulation, &rules, described), trades))
    }

    /// (open, close) of every validated bar of the interval from `from` on, and the newest bar.
    async fn prices(
        &self,
        session: &datafusion::prelude::SessionContext,
        from: i64,
    ) -> Result<(HashMap<(String, i64), (f64, f64)>, i64), StageError> {
        if !has_table(session, "klines") {
            return Err(StageError::failed(
                "no input provides the `klines` table: add the validate stage to `needs`",
            ));
        }
        let sql = format!(
            "SELECT CAST(symbol AS VARCHAR), CAST(open_time AS BIGINT), CAST(open AS DOUBLE), CAST(close AS DOUBLE) \
             FROM klines WHERE \"interval\" = '{}' AND open_time >= {from}",
            self.params.interval.replace('\'', "''")
        );
        let batches = query(session, &sql, "the klines")
            .await
            .map_err(StageError::failed)?;
        let mut prices = HashMap::new();
        let mut newest = i64::MIN;
        for batch in &batches {
            let symbol = text_column(batch, 0).map_err(StageError::failed)?;
            let symbol = symbol.as_string::<i32>();
            let time = batch.column(1).as_primitive::<Int64Type>();
            let open = batch.column(2).as_primitive::<Float64Type>();
            let close = batch.column(3).as_primitive::<Float64Type>();
            for row in 0..batch.num_rows() {
                newest = newest.max(time.value(row));
                prices.insert(
                    (symbol.value(row).to_owned(), time.value(row)),
                    (open.value(row), close.value(row)),
                );
            }
        }
        Ok((prices, newest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn signal(symbol: &str, bar: i64, side: i8) -> Signal {
        Signal {
            symbol: symbol.into(),
            open_time: bar * HOUR,
            side,
            probabilities: Vec::new(),
        }
    }

    #[test]
    fn paper_trades_pay_the_funding_settled_while_held() {
        // Bars 1..=3 of X: open 100, 101, 102. Settlements (a few ms late) in bars 1, 2 and 3.
        let mut prices = HashMap::new();
        for (bar, open, close) in [(1, 100.0, 101.0), (2, 101.0, 102.0), (3, 102.0, 99.0)] {
            prices.insert(("X".to_owned(), bar * HOUR), (open, close));
        }
        let funding: crate::paper::FundingByBar = HashMap::from([(
            "X".to_owned(),
            vec![(HOUR, 0.01), (2 * HOUR, 0.001), (3 * HOUR, -0.002)],
        )]);
        let fills = Fills {
            bar_ms: HOUR,
            horizon: 2,
            fee: 0.0,
            slippage: 0.0,
        };
        let signals = [signal("X", 0, LONG), signal("X", 1, crate::backtest::SHORT)];
        let entries = ledger(
            &signals,
            &HashMap::new(),
            &prices,
            &funding,
            3 * HOUR,
            fills,
        );
        // The long enters at bar 1's open: it pays bar 2's settlement (at 101 on a 100 entry),
        // not bar 1's (it entered at that open), and exits at bar 2's close.
        let long = &entries[0];
        assert!((long.funding.unwrap() - 0.001 * 101.0 / 100.0).abs() < 1e-15);
        assert!((long.net_return.unwrap() - (0.02 - 0.00101)).abs() < 1e-12);
        // The short enters at bar 2's open and holds through bar 3's settlement: a negative
        // rate is paid by shorts: -1 x -0.002 x 102 / 101.
        let short = &entries[1];
        assert!((short.funding.unwrap() - 0.002 * 102.0 / 101.0).abs() < 1e-15);
    }

    #[test]
    fn a_signal_fills_at_the_next_open_and_closes_at_the_horizons_close() {
        // Bars 1..=3 of X: open 100, 101, 102; close 101, 102, 99.
        let mut prices = HashMap::new();
        for (bar, open, close) in [(1, 100.0, 101.0), (2, 101.0, 102.0), (3, 102.0, 99.0)] {
            prices.insert(("X".to_owned(), bar * HOUR), (open, close));
        }
        let fills = Fills {
            bar_ms: HOUR,
            horizon: 2,
            fee: 0.001,
            slippage: 0.0005,
        };
        let signals = [
            signal("X", 0, LONG),
            signal("X", 1, crate::backtest::SHORT),
            signal("X", 2, LONG),
            signal("X", 0, FLAT),
            signal("Y", 0, LONG),
        ];
        let entries = ledger(
            &signals,
            &HashMap::new(),
            &prices,
            &HashMap::new(),
            3 * HOUR,
            fills,
        );
        assert_eq!(entries.len(), 4, "flat signals are not trades");
        // Long at bar 0: in at bar 1's open 100, out at bar 2's close 102.
        let long = &entries[0];
        assert_eq!(long.status, Status::Closed);
        assert_eq!(
            (long.entry_price, long.exit_price),
            (Some(100.0), Some(102.0))
        );
        assert!((long.gross_return.unwrap() - 0.02).abs() < 1e-12);
        // Net: 102 x 0.9995 / (100 x 1.0005) - 1 - 0.002 = 0.017961...
        let net = 102.0 * 0.9995 / (100.0 * 1.0005) - 1.0 - 0.002;
        assert!((long.net_return.unwrap() - net).abs() < 1e-12);
        // Short at bar 1: in at 101, out at bar 3's close 99: gross +1.98%.
        let short = &entries[1];
        assert!((short.gross_return.unwrap() - (1.0 - 99.0 / 101.0)).abs() < 1e-12);
        let net = -(99.0 * 1.0005 / (101.0 * 0.9995) - 1.0) - 0.002;
        assert!((short.net_return.unwrap() - net).abs() < 1e-12);
        // Bar 2's horizon (bar 4) has not passed: open, with its entry known.
        assert_eq!(entries[2].status, Status::Open);
        assert_eq!(entries[2].entry_price, Some(102.0));
        assert_eq!(entries[2].net_return, None);
        // Y has no bars: its horizon passed without prices.
        assert_eq!(entries[3].status, Status::NoPrice);
        let summary = book_summary(&entries);
        assert_eq!((summary.closed, summary.open, summary.no_price), (2, 1, 1));
        assert_eq!(summary.hit_rate, Some(1.0));

        // X later leaves the lake: its closed trades stay as the previous ledger had them, the
        // open one cannot be priced.
        let previous: HashMap<(String, i64), Entry> = entries
            .iter()
            .map(|e| ((e.symbol.clone(), e.open_time), e.clone()))
            .collect();
        let later = ledger(
            &signals,
            &previous,
            &HashMap::new(),
            &HashMap::new(),
            9 * HOUR,
            fills,
        );
        assert_eq!(later[..2], entries[..2]);
        assert_eq!(later[2].status, Status::NoPrice);
        // With its prices still there, a closed trade is priced afresh: a changed fee shows.
        let dearer = Fills {
            fee: 0.002,
            ..fills
        };
        let repriced = ledger(
            &signals,
            &previous,
            &prices,
            &HashMap::new(),
            3 * HOUR,
            dearer,
        );
        let net = 102.0 * 0.9995 / (100.0 * 1.0005) - 1.0 - 0.004;
        assert!((repriced[0].net_return.unwrap() - net).abs() < 1e-12);
    }
}
