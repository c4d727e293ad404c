//! `sql`: runs a SQL file in DataFusion over the inputs' outputs and writes the result as Parquet.
//!
//! ```yaml
//! features:
//!   kind: sql
//!   needs: [validate]
//!   with:
//!     query: stages/features/core.sql
//!     params: {interval: 1h, warmup: 300}   # $interval, $warmup in the SQL: typed values
//!     output: features.parquet              # default: <stage id>.parquet
//!     lookahead_check: true                 # the look-ahead guard (below)
//! ```
//!
//! Tables: an input with `lake.json` is `klines` (and the input's id) over the listed parts; an
//! input's `NAME.parquet` is `NAME` (and the input's id when it is the only one).
//! Functions beyond DataFusion's: `ema(x, n)`, `wilder(x, n)` (see `sql::udwf`).
//!
//! Tables: an input with `lake.json` provides `klines` (also the input's id), `funding`,
//! `mark_klines`, `index_klines` and `premium_klines` (empty when not collected).
//!
//! The look-ahead guard re-runs the query on inputs truncated at `cuts` points in time and
//! fails, naming the columns, if any output row in the days just before a cut changes, appears
//! or disappears: a `LEAD`, a `FOLLOWING` frame, a whole-column statistic, or a join to a bar
//! that had not closed becomes a pipeline error. A cut falls on an odd UTC hour inside the
//! output's span, so inside every 2h, 4h, 8h, 12h and 1d bar; every input row that had not
//! closed by it is removed (by `close_time`; funding by `funding_time`; other tables by the
//! time column). The rows compared are those whose own bar closed by the cut (the output's
//! time plus its bar, the smallest step between its times). Rows are matched by symbol and
//! time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use datafusion::common::{ScalarValue, TableReference};
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::{SessionContext, col, lit};
use serde::{Deserialize, Serialize};

use crate::diagnostic::location::YamlPath;
use crate::diagnostic::params::{ParamError, contained_relative_path, parse_params};
use crate::engine::stage::{
    BoxFuture, FileRef, OutputShape, PrepareContext, PreparedStage, ShapeTable, StageContext,
    StageError, StageKind,
};
use crate::sql::cluster::{Cluster, Engine};
use crate::sql::{self, InputTable};

pub struct Sql;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    query: String,
    #[serde(default)]
    params: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    output: Option<String>,
    #[serde(default)]
    lookahead_check: bool,
    #[serde(default = "default_cuts")]
    cuts: usize,
    #[serde(default = "default_time_column")]
    time_column: String,
    /// Where the queries run. Not part of the fingerprint: every engine gives the same output.
    #[serde(default, skip_serializing)]
    engine: Option<EngineParam>,
}

/// `engine: {ballista: df://HOST:PORT}` (or `standalone`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EngineParam {
    ballista: String,
}

fn default_cuts() -> usize {
    3
}

fn default_time_column() -> String {
    "open_time".into()
}

#[derive(Debug)]
struct Prepared {
    params: Params,
    query_file: PathBuf,
    query: String,
    output: String,
    values: HashMap<String, ScalarValue>,
    requirements: Vec<sql::SymbolRequirement>,
}

impl StageKind for Sql {
    fn name(&self) -> &'static str {
        "sql"
    }

    fn code_version(&self) -> u32 {
        // 2: the lake's perpetual tables; the guard cuts inside higher-timeframe bars.
        2
    }

    fn prepare(
        &self,
        params: &yaml_serde::Value,
        context: &PrepareContext<'_>,
    ) -> Result<Box<dyn PreparedStage>, ParamError> {
        let params: Params = parse_params(params)?;
        let root = YamlPath::root();
        let query_file = contained_relative_path(&params.query)
            .map_err(|message| ParamError::new(root.clone().key("query"), message))?;
        let absolute = context.project_root.join(&query_file);
        let query = std::fs::read_to_string(&absolute).map_err(|error| {
            ParamError::new(
                root.clone().key("query"),
                format!("cannot read `{}`: {error}", query_file.display()),
            )
        })?;
        if let Err(error) = datafusion::sql::parser::DFParser::parse_sql(&query) {
            return Err(ParamError::new(
                root.clone().key("query"),
                format!("`{}` is not valid SQL", query_file.display()),
            )
            .nested(sql_diagnostic(&query_file, &query, &error)));
        }
        let output = params
            .output
            .clone()
            .unwrap_or_else(|| format!("{}.parquet", context.stage_id));
        if !output.ends_with(".parquet") || output.contains('/') || output.starts_with('.') {
            return Err(ParamError::new(
                root.clone().key("output"),
                format!("output `{output}` must be a plain file name ending in .parquet"),
            ));
        }
        let values = sql::scalars(&params.params).map_err(|(name, message)| {
            ParamError::new(root.clone().key("params").key(name), message)
        })?;
        let requirements = sql::symbol_requirements(&query).map_err(|(line, message)| {
            ParamError::new(
                root.clone().key("query"),
                format!("`{}` line {line}: {message}", query_file.display()),
            )
        })?;
        for requirement in &requirements {
            for name in &requirement.params {
                if !params
                    .params
                    .get(name)
                    .is_some_and(|value| value.is_string())
                {
                    return Err(ParamError::new(
                        root.clone().key("params"),
                        format!(
                            "`{}` line {} requires `${name}` to name a symbol: add `{name}: SYMBOL` here",
                            query_file.display(),
                            requirement.line
                        ),
                    ));
                }
            }
        }
        if let Some(engine) = &params.engine {
            Engine::parse(&engine.ballista).map_err(|message| {
                ParamError::new(root.clone().key("engine").key("ballista"), message)
            })?;
        }
        if params.lookahead_check && !(1..=20).contains(&params.cuts) {
            return Err(ParamError::new(
                root.key("cuts"),
                "cuts must be between 1 and 20",
            ));
        }
        Ok(Box::new(Prepared {
            params,
            query_file,
            query,
            output,
            values,
            requirements,
        }))
    }
}

/// Why validate left `symbol` out, from a `validation_report.json` among the inputs: its
/// datasets' first failures.
fn quarantined(context: &StageContext, symbol: &str) -> Result<Option<String>, StageError> {
    let Some(report) = context.read_input_json::<serde_json::Value>("validation_report.json")?
    else {
        return Ok(None);
    };
    let reasons: Vec<String> = report["datasets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|dataset| dataset["symbol"] == symbol && dataset["passed"] == false)
        .map(|dataset| {
            format!(
                "{} {} {}: {}",
                symbol,
                dataset["table"].as_str().unwrap_or("klines"),
                dataset["interval"].as_str().unwrap_or("?"),
                dataset["failures"][0].as_str().unwrap_or("failed")
            )
        })
        .collect();
    Ok((!reasons.is_empty()).then(|| reasons.join("; ")))
}

/// A SQL error as a diagnostic in the SQL file.
fn sql_diagnostic(
    file: &std::path::Path,
    text: &str,
    error: &datafusion::error::DataFusionError,
) -> crate::diagnostic::Diagnostic {
    let message = sql::error_message(error);
    let position = sql::error_position(error)
        .or_else(|| {
            // "found: EOF" has no position: the problem is at the end of the file.
            message.contains("EOF").then(|| {
                let lines: Vec<&str> = text.trim_end().lines().collect();
                (
                    lines.len().max(1),
                    lines.last().map_or(1, |line| line.len() + 1),
                )
            })
        })
        .map(|(line, column)| crate::diagnostic::location::Position { line, column });
    crate::diagnostic::Diagnostic::at(file, text, position, 1, message)
}

impl PreparedStage for Prepared {
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }

    fn files(&self) -> Vec<FileRef> {
        vec![FileRef {
            param: YamlPath::root().key("query"),
            path: self.query_file.clone(),
        }]
    }

    fn run<'a>(&'a self, context: &'a StageContext) -> BoxFuture<'a, Result<(), StageError>> {
        Box::pin(self.execute(context))
    }

    /// On a cluster the executors read the lake's parts from the store by URL.
    fn reads_data_remotely(&self) -> bool {
        !matches!(self.engine(), Ok(Engine::Embedded))
    }

    /// Plans the query against empty tables of the inputs' schemas: unknown columns, type
    /// errors and bad params surface before anything runs.
    fn output_shape<'a>(
        &'a self,
        stage_id: &'a str,
        inputs: &'a [(String, OutputShape)],
    ) -> BoxFuture<'a, Result<OutputShape, crate::engine::stage::ShapeError>> {
        Box::pin(async move {
            // The cluster first: a stage whose inputs' shapes are unknown runs there too.
            self.check_engine()
                .await
                .map_err(crate::engine::stage::ShapeError::Param)?;
            let session = sql::session(1);
            for (_, shape) in inputs {
                let OutputShape::Tables(tables) = shape else {
                    return Ok(OutputShape::Unknown);
                };
                for table in tables {
                    let empty = datafusion::datasource::MemTable::try_new(
                        table.schema.clone(),
                        vec![vec![]],
                    )
                    .map_err(|error| {
                        Box::new(sql_diagnostic(&self.query_file, &self.query, &error))
                    })?;
                    let empty = std::sync::Arc::new(empty);
                    for name in &table.names {
                        let _ = session
                            .register_table(TableReference::bare(name.as_str()), empty.clone());
                    }
                }
            }
            let frame = session
                .sql(&self.query)
                .await
                .and_then(|frame| frame.with_param_values(self.values.clone()))
                .map_err(|error| Box::new(sql_diagnostic(&self.query_file, &self.query, &error)))?;
            let schema = std::sync::Arc::new(frame.schema().as_arrow().clone());
            let stem = self.output.trim_end_matches(".parquet").to_owned();
            let mut names = vec![stem.clone()];
            if stem != stage_id {
                names.push(stage_id.to_owned());
            }
            Ok(OutputShape::Tables(vec![ShapeTable { names, schema }]))
        })
    }
}

impl Prepared {
    fn tables(&self, context: &StageContext) -> Result<Vec<InputTable>, StageError> {
        sql::stage_tables(context.input_dirs(), &context.data_dir).map_err(StageError::failed)
    }

    /// The engine the stage's queries run on: its own `engine`, else the run's.
    fn engine(&self) -> Result<Engine, String> {
        Engine::resolve(
            self.params
                .engine
                .as_ref()
                .map(|engine| engine.ballista.as_str()),
        )
    }

    /// Before anything runs: a remote cluster answers, runs this asterflow and knows its
    /// functions (each scheduler checked once per process).
    async fn check_engine(&self) -> Result<(), ParamError> {
        let at = || {
            if self.params.engine.is_some() {
                YamlPath::root().key("engine").key("ballista")
            } else {
                YamlPath::root()
            }
        };
        let engine = self
            .engine()
            .map_err(|message| ParamError::new(at(), message))?;
        let Engine::Remote(url) = &engine else {
            return Ok(());
        };
        static CHECKED: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());
        if CHECKED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(url)
        {
            return Ok(());
        }
        let cluster = Cluster::start(&engine, 1)
            .await
            .map_err(|message| ParamError::new(at(), message))?
            .ok_or_else(|| ParamError::new(at(), "no cluster"))?;
        sql::cluster::check(&cluster, std::time::Duration::from_secs(30))
            .await
            .map_err(|message| ParamError::new(at(), message))?;
        CHECKED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(url.clone());
        Ok(())
    }

    /// A session on the stage's engine.
    async fn session(
        cluster: Option<&Cluster>,
        parallel: usize,
    ) -> Result<SessionContext, StageError> {
        match cluster {
            None => Ok(sql::session(parallel)),
            Some(cluster) => cluster.session(parallel).await.map_err(StageError::failed),
        }
    }

    /// Registers `table` in `session`: on a cluster, lake parts by their object-store URL
    /// when the lake is on one (executors read the bucket, not this machine's mirror).
    async fn register(
        context: &StageContext,
        cluster: Option<&Cluster>,
        session: &SessionContext,
        table: &InputTable,
    ) -> Result<(), StageError> {
        let store = cluster.and(context.data_url.as_deref());
        sql::register_located(session, table, |file| match store {
            Some(url) => match file.strip_prefix(&context.data_dir) {
                Ok(relative) => format!(
                    "{}/{}",
                    url.trim_end_matches('/'),
                    relative.to_string_lossy()
                ),
                Err(_) => file.to_string_lossy().into_owned(),
            },
            None => file.to_string_lossy().into_owned(),
        })
        .await
        .map_err(StageError::failed)
    }

    /// Plans the query in `session` with the params bound.
    async fn frame(
        &self,
        session: &SessionContext,
    ) -> Result<datafusion::dataframe::DataFrame, StageError> {
        let located = |error: datafusion::error::DataFusionError| {
            StageError::failed(sql_diagnostic(&self.query_file, &self.query, &error))
        };
        session
            .sql(&self.query)
            .await
            .and_then(|frame| frame.with_param_values(self.values.clone()))
            .map_err(located)
    }

    async fn execute(&self, context: &StageContext) -> Result<(), StageError> {
        let parallel = std::thread::available_parallelism().map_or(2, usize::from);
        let tables = self.tables(context)?;
        mark_provenance(context)?;
        let engine = self.engine().map_err(StageError::failed)?;
        let cluster = Cluster::start(&engine, parallel)
            .await
            .map_err(StageError::failed)?;
        if cluster.is_some() {
            context.log(&format!("engine: {}", engine.describe()));
            if let Some(url) = &context.data_url {
                context.log(&format!(
                    "lake parts read from {url} by the cluster's executors"
                ));
            }
        }
        let session = Self::session(cluster.as_ref(), parallel).await?;
        for table in &tables {
            Self::register(context, cluster.as_ref(), &session, table).await?;
        }
        self.check_requirements(context, &session).await?;
        context.progress.message(format!(
            "running {}{}",
            self.query_file.display(),
            match &cluster {
                Some(cluster) => format!(" on Ballista at {}", cluster.url()),
                None => String::new(),
            }
        ));
        let frame = self.frame(&session).await?;
        let output = context.output_dir.join(&self.output);
        // Feature columns are floats that neither dictionaries nor compression shrink much:
        // lz4 costs a fraction of zstd's time to write and to read back (zstd: 360 MB at 16%
        // of the stage's time). Splitting each float's bytes into streams first gained 3% of
        // the size (465 MB against 479 MB for the benchmark's 1.75M rows) for 7% of the
        // stage's CPU, and is not done. No dictionaries. Row groups of 128K rows keep what the
        // writer holds small and give readers units to skip.
        let mut writer = datafusion::config::TableParquetOptions::default();
        writer.global.compression = Some("lz4_raw".into());
        writer.global.dictionary_enabled = Some(false);
        writer.global.max_row_group_size = 131_072;
        // A cluster's rows stream back here and are written by the same local writer.
        let frame = match &cluster {
            None => frame,
            Some(_) => sql::local_frame(frame).await.map_err(StageError::failed)?,
        };
        // Written straight to the disk and hashed on the way (`sql::output`).
        let target = sql::output::register(&frame, &context.output_dir, &self.output)
            .map_err(StageError::failed)?;
        frame
            .write_parquet(
                &target,
                DataFrameWriteOptions::new().with_single_file_output(true),
                Some(writer),
            )
            .await
            .map_err(|error| {
                StageError::failed(format!(
                    "{}{}: {error}",
                    self.query_file.display(),
                    match &cluster {
                        Some(cluster) => format!(" on Ballista at {}", cluster.url()),
                        None => String::new(),
                    }
                ))
            })?;
        let empty = sql::empty_columns(&output).map_err(StageError::failed)?;
        if !empty.is_empty() {
            context.warn(&format!(
                "{}: {} null or non-finite in every row: `{}`",
                self.output,
                if empty.len() == 1 {
                    "this column is"
                } else {
                    "these columns are"
                },
                empty.join("`, `")
            ));
        }
        if self.params.lookahead_check {
            self.guard(context, cluster.as_ref(), &tables, &output, parallel)
                .await?;
        }
        Ok(())
    }

    /// Each `-- asterflow: require symbol` of the query: the symbols its params name are in
    /// the input, or the stage fails naming the param, the symbol and why it is missing.
    async fn check_requirements(
        &self,
        context: &StageContext,
        session: &SessionContext,
    ) -> Result<(), StageError> {
        for requirement in &self.requirements {
            let condition = requirement
                .condition
                .as_ref()
                .map(|condition| format!(" AND ({condition})"))
                .unwrap_or_default();
            for name in &requirement.params {
                let symbol = self.params.params[name].as_str().unwrap_or_default();
                let query = format!(
                    "SELECT COUNT(*) AS n FROM {} WHERE symbol = ${name}{condition}",
                    sql::quoted(&requirement.table)
                );
                let count = session
                    .sql(&query)
                    .await
                    .and_then(|frame| frame.with_param_values(self.values.clone()))
                    .map_err(|error| {
                        StageError::failed(format!(
                            "{} line {}: {}",
                            self.query_file.display(),
                            requirement.line,
                            sql::error_message(&error)
                        ))
                    })?
                    .collect()
                    .await
                    .map_err(|error| StageError::failed(sql::error_message(&error)))?
                    .first()
                    .and_then(|batch| {
                        batch
                            .column(0)
                            .as_primitive_opt::<arrow::datatypes::Int64Type>()
                            .map(|counts| counts.value(0))
                    })
                    .unwrap_or(0);
                if count == 0 {
                    let why = quarantined(context, symbol)?.map_or_else(
                        || "it was never collected, or not for this interval".to_owned(),
                        |reason| format!("validate quarantined it ({reason})"),
                    );
                    return Err(StageError::failed(format!(
                        "`params.{name}` names `{symbol}`, which the `{}` input does not hold{} ({} line {}): {why}; pick another symbol for `{name}`, or relax the gate that left it out",
                        requirement.table,
                        requirement
                            .condition
                            .as_ref()
                            .map(|condition| format!(" where {condition}"))
                            .unwrap_or_default(),
                        self.query_file.display(),
                        requirement.line
                    )));
                }
            }
        }
        Ok(())
    }

    /// The look-ahead guard.
    async fn guard(
        &self,
        context: &StageContext,
        cluster: Option<&Cluster>,
        tables: &[InputTable],
        output: &std::path::Path,
        parallel: usize,
    ) -> Result<(), StageError> {
        let time = self.params.time_column.as_str();
        let session = sql::session(parallel);
        let full = session
            .read_parquet(output.to_string_lossy().as_ref(), Default::default())
            .await
            .map_err(StageError::failed)?;
        if full.schema().field_with_unqualified_name(time).is_err() {
            return Err(StageError::failed(format!(
                "lookahead_check: the output has no `{time}` column to compare rows by; keep it in the SELECT"
            )));
        }
        // Cuts fall inside the output's own span (after any warm-up).
        let span = full
            .clone()
            .aggregate(
                vec![],
                vec![
                    datafusion::functions_aggregate::expr_fn::min(col(time)),
                    datafusion::functions_aggregate::expr_fn::max(col(time)),
                ],
            )
            .map_err(StageError::failed)?
            .collect()
            .await
            .map_err(StageError::failed)?;
        let span = span.first().and_then(|batch| {
            let low = ScalarValue::try_from_array(batch.column(0), 0).ok()?;
            let high = ScalarValue::try_from_array(batch.column(1), 0).ok()?;
            Some((as_i64(&low)?, as_i64(&high)?))
        });
        let Some((first, last)) = span else {
            return Err(StageError::failed(
                "lookahead_check: the output has no rows, so nothing can be checked",
            ));
        };
        const DAY: i64 = 86_400_000;
        const HOUR: i64 = 3_600_000;
        let step = output_step(&full, time).await?;
        let cuts = self.params.cuts;
        let mut rng = crate::util::rng::Rng::new(0xC075 ^ cuts as u64);
        for k in 1..=cuts {
            let raw =
                first as i128 + (last as i128 - first as i128) * k as i128 / (cuts as i128 + 1);
            // An odd hour of that day: inside every 2h, 4h, 8h, 12h and 1d bar.
            let odd_hour = 2 * ((rng.uniform() * 12.0) as i64).min(11) + 1;
            let cut = ((raw as i64).div_euclid(DAY) * DAY + odd_hour * HOUR).max(first + step);
            // Rows in the band just before the cut are the first to change under look-ahead;
            // only rows whose bar closed by the cut are compared.
            let band_end = cut - step;
            let band_start = band_end - ((cut - first) / 10).max(DAY);
            context.progress.update(
                k as u64,
                cuts as u64,
                format!("look-ahead guard: cut {k} of {cuts}"),
            );
            let truncated = Self::session(cluster, parallel).await?;
            for table in tables {
                let raw_names: Vec<String> = table
                    .names
                    .iter()
                    .map(|name| format!("__raw_{name}"))
                    .collect();
                let raw = InputTable {
                    names: raw_names.clone(),
                    files: table.files.clone(),
                    lake: table.lake,
                };
                Self::register(context, cluster, &truncated, &raw).await?;
                for (name, raw_name) in table.names.iter().zip(&raw_names) {
                    let frame = truncated
                        .table(TableReference::bare(raw_name.as_str()))
                        .await
                        .map_err(StageError::failed)?;
                    // What had happened by the cut: bars closed, funding settled.
                    let has =
                        |column: &str| frame.schema().field_with_unqualified_name(column).is_ok();
                    let known = ["close_time", "funding_time", time]
                        .into_iter()
                        .find(|column| has(column));
                    let frame = match known {
                        Some(column) => frame
                            .filter(col(column).lt(lit(cut)))
                            .map_err(StageError::failed)?,
                        None => frame,
                    };
                    truncated
                        .register_table(TableReference::bare(name.as_str()), frame.into_view())
                        .map_err(StageError::failed)?;
                }
            }
            let band = |frame: datafusion::dataframe::DataFrame| {
                frame.filter(
                    col(time)
                        .gt_eq(lit(band_start))
                        .and(col(time).lt_eq(lit(band_end))),
                )
            };
            let cut_rows = band(self.frame(&truncated).await?)
                .map_err(StageError::failed)?
                .collect()
                .await
                .map_err(StageError::failed)?;
            let full_rows = band(full.clone())
                .map_err(StageError::failed)?
                .collect()
                .await
                .map_err(StageError::failed)?;
            if full_rows.iter().map(RecordBatch::num_rows).sum::<usize>() == 0 {
                return Err(StageError::failed(format!(
                    "lookahead_check: no output row falls in the day before cut {k} ({}); the guard would check nothing. Use fewer cuts or more data",
                    crate::util::time::rfc3339(cut.max(0) as u64)
                )));
            }
            if let Some(report) = compare(&full_rows, &cut_rows, time)? {
                return Err(StageError::failed(format!(
                    "look-ahead in {}: {report} when the inputs stop at {} ({time} = {cut}). A feature may use only rows at or before its own: no LEAD, no FOLLOWING frame, no statistic over a whole column",
                    self.query_file.display(),
                    crate::util::time::rfc3339(cut.max(0) as u64),
                )));
            }
        }
        Ok(())
    }
}

/// The output's bar: the smallest step between its distinct times (an hour when it has one
/// time only).
async fn output_step(
    full: &datafusion::dataframe::DataFrame,
    time: &str,
) -> Result<i64, StageError> {
    let batches = full
        .clone()
        .aggregate(vec![col(time)], vec![])
        .map_err(StageError::failed)?
        .collect()
        .await
        .map_err(StageError::failed)?;
    let mut times: Vec<i64> = Vec::new();
    for batch in &batches {
        for row in 0..batch.num_rows() {
            if let Ok(value) = ScalarValue::try_from_array(batch.column(0), row)
                && let Some(value) = as_i64(&value)
            {
                times.push(value);
            }
        }
    }
    times.sort_unstable();
    Ok(times
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .filter(|step| *step > 0)
        .min()
        .unwrap_or(3_600_000))
}

/// Written beside every sql output: whether it derives from synthetic (simulated) data.
pub const PROVENANCE_FILE: &str = "provenance.json";

/// Simulated data that validate let through keeps its banner on everything after it: writes
/// `provenance.json` (whether any input derives from synthetic data) into the output, warns
/// with the banner when one does, and returns whether.
pub fn mark_provenance(context: &StageContext) -> Result<bool, StageError> {
    let synthetic = context
        .inputs
        .iter()
        .any(|input| derived_from_synthetic(&input.dir));
    if synthetic {
        context.warn(crate::provenance::SYNTHETIC_BANNER);
    }
    crate::kinds::write_json(
        &context.output_dir.join(PROVENANCE_FILE),
        &serde_json::json!({
            "synthetic": synthetic,
            "banner": synthetic.then_some(crate::provenance::SYNTHETIC_BANNER),
        }),
    )?;
    Ok(synthetic)
}

/// Whether a stage output derives from synthetic data: a lake listing with simulated parts, or
/// an output whose `provenance.json` says so.
pub fn derived_from_synthetic(dir: &std::path::Path) -> bool {
    let listed =
        crate::market::lake::LakeListing::read(&dir.join(crate::market::lake::LISTING_FILE))
            .is_ok_and(|listing| listing.is_synthetic());
    let marked = std::fs::read_to_string(dir.join(PROVENANCE_FILE))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .is_some_and(|value| value["synthetic"] == true);
    listed || marked
}

fn as_i64(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::Int64(Some(v)) => Some(*v),
        ScalarValue::Int32(Some(v)) => Some(i64::from(*v)),
        ScalarValue::UInt64(Some(v)) => i64::try_from(*v).ok(),
        ScalarValue::TimestampMillisecond(Some(v), _) => Some(*v),
        _ => None,
    }
}

/// Row identity for the comparison: the symbol (when there is one) and the time.
fn row_key(batch: &RecordBatch, row: usize, time: &str) -> String {
    let mut key = String::new();
    for name in ["symbol", time] {
        if let Some(column) = batch.column_by_name(name)
            && let Ok(value) = ScalarValue::try_from_array(column, row)
        {
            key.push_str(&value.to_string());
            key.push('\u{1f}');
        }
    }
    key
}

/// Which columns differ between the full run and the truncated one, over the same rows.
fn compare(
    full: &[RecordBatch],
    truncated: &[RecordBatch],
    time: &str,
) -> Result<Option<String>, StageError> {
    let index = |batches: &[RecordBatch]| -> Result<HashMap<String, (usize, usize)>, StageError> {
        let mut rows: HashMap<String, (usize, usize)> = HashMap::new();
        for (b, batch) in batches.iter().enumerate() {
            for row in 0..batch.num_rows() {
                let key = row_key(batch, row, time);
                if rows.insert(key.clone(), (b, row)).is_some() {
                    return Err(StageError::failed(format!(
                        "lookahead_check compares rows by symbol and `{time}`, and the output has several rows for {}; keep one row per symbol and time (filter on \"interval\")",
                        key.replace('\u{1f}', " ").trim()
                    )));
                }
            }
        }
        Ok(rows)
    };
    let (full_rows, cut_rows) = (index(full)?, index(truncated)?);
    let missing = full_rows
        .keys()
        .filter(|key| !cut_rows.contains_key(*key))
        .count();
    let extra = cut_rows
        .keys()
        .filter(|key| !full_rows.contains_key(*key))
        .count();
    if missing + extra > 0 {
        return Ok(Some(format!(
            "{missing} row(s) at or before the cut disappear and {extra} appear (the rows themselves depend on later data, e.g. a filter on a whole-column statistic)"
        )));
    }
    let mut differing: BTreeSet<String> = BTreeSet::new();
    let mut example: Option<String> = None;
    for (key, &(fb, fr)) in &full_rows {
        let (cb, cr) = cut_rows[key];
        let (a, b) = (&full[fb], &truncated[cb]);
        for (index, field) in a.schema().fields().iter().enumerate() {
            let Some(other) = b.column_by_name(field.name()) else {
                continue;
            };
            let left = a.column(index);
            let same = match field.data_type() {
                DataType::Float64 if other.data_type() == &DataType::Float64 => {
                    let (x, y) = (
                        left.as_primitive::<Float64Type>(),
                        other.as_primitive::<Float64Type>(),
                    );
                    match (x.is_null(fr), y.is_null(cr)) {
                        (true, true) => true,
                        (false, false) => {
                            let (p, q) = (x.value(fr), y.value(cr));
                            p == q
                                || (p.is_nan() && q.is_nan())
                                || (p - q).abs() <= 1e-9 * p.abs().max(q.abs())
                        }
                        _ => false,
                    }
                }
                // Compared by value, whatever the physical string or integer type.
                _ => {
                    let render = |array: &dyn Array, row: usize| {
                        ScalarValue::try_from_array(array, row)
                            .map(|value| value.to_string())
                            .ok()
                    };
                    render(left.as_ref(), fr) == render(other.as_ref(), cr)
                }
            };
            if !same && differing.insert(field.name().clone()) && example.is_none() {
                let shown = |array: &dyn Array, row: usize| {
                    ScalarValue::try_from_array(array, row)
                        .map(|value| value.to_string())
                        .unwrap_or_default()
                };
                let at = a
                    .column_by_name(time)
                    .map(|column| shown(column.as_ref(), fr))
                    .unwrap_or_default();
                let symbol = a
                    .column_by_name("symbol")
                    .map(|column| format!("{} ", shown(column.as_ref(), fr)))
                    .unwrap_or_default();
                example = Some(format!(
                    "{symbol}{time} {at}: `{}` is {} with all data, {} without the later rows",
                    field.name(),
                    shown(left.as_ref(), fr),
                    shown(other.as_ref(), cr)
                ));
            }
        }
    }
    if differing.is_empty() {
        return Ok(None);
    }
    Ok(Some(format!(
        "column(s) {} change (e.g. {})",
        differing
            .into_iter()
            .map(|name| format!("`{name}`"))
            .collect::<Vec<_>>()
            .join(", "),
        example.unwrap_or_default()
    )))
}
