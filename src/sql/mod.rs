//! The DataFusion side of asterflow: one way to make a session (with the window functions SQL
//! lacks), register stage outputs as tables, bind params as typed values, and turn SQL errors
//! into `file:line:column` diagnostics.

/// A physical optimizer rule `$rule` named `$name` that replaces, from the leaves up, every
/// node of type `$stock` for which `$replace` (given the node as a `$stock` and as a plan)
/// returns a replacement: each of [`window`], [`lookup`], [`filter`] and [`merge`] has one.
macro_rules! replacing_rule {
    ($rule:ty, $name:literal, $stock:ty, $replace:expr) => {
        impl datafusion::physical_optimizer::PhysicalOptimizerRule for $rule {
            fn optimize(
                &self,
                plan: std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>,
                _config: &datafusion::config::ConfigOptions,
            ) -> datafusion::common::Result<
                std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>,
            > {
                use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
                let replace: fn(
                    &$stock,
                    &std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>,
                ) -> Option<
                    std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>,
                > = $replace;
                plan.transform_up(|node| {
                    let replaced = node
                        .downcast_ref::<$stock>()
                        .and_then(|stock| replace(stock, &node));
                    Ok(match replaced {
                        Some(replaced) => Transformed::yes(replaced),
                        None => Transformed::no(node),
                    })
                })
                .data()
            }

            fn name(&self) -> &str {
                $name
            }

            fn schema_check(&self) -> bool {
                true
            }
        }
    };
}

/// The `ExecutionPlan` methods of a plan that runs in place of another, `self.inner`, whose
/// answers to the planner it gives (properties, children, expressions, input order and
/// distribution, statistics, cardinality), with its own `self.metrics`: [`window`], [`lookup`],
/// [`filter`] and [`merge`] only execute differently. Given the stock plan's type, also its
/// `with_new_children`.
macro_rules! planned_as_inner {
    () => {
        fn properties(&self) -> &std::sync::Arc<datafusion::physical_plan::PlanProperties> {
            self.inner.properties()
        }

        fn children(&self) -> Vec<&std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
            self.inner.children()
        }

        fn apply_expressions(
            &self,
            f: &mut dyn FnMut(
                &std::sync::Arc<dyn datafusion::physical_expr::PhysicalExpr>,
            ) -> datafusion::common::Result<
                datafusion::common::tree_node::TreeNodeRecursion,
            >,
        ) -> datafusion::common::Result<datafusion::common::tree_node::TreeNodeRecursion> {
            self.inner.apply_expressions(f)
        }

        fn maintains_input_order(&self) -> Vec<bool> {
            self.inner.maintains_input_order()
        }

        fn input_distribution_requirements(
            &self,
        ) -> datafusion::physical_plan::InputDistributionRequirements {
            self.inner.input_distribution_requirements()
        }

        fn metrics(&self) -> Option<datafusion::physical_plan::metrics::MetricsSet> {
            Some(self.metrics.clone_inner())
        }

        fn child_stats_requests(
            &self,
            partition: Option<usize>,
        ) -> Vec<datafusion::physical_plan::ChildStats> {
            self.inner.child_stats_requests(partition)
        }

        fn statistics_from_inputs(
            &self,
            input_stats: &[std::sync::Arc<datafusion::common::Statistics>],
            args: &datafusion::physical_plan::StatisticsArgs,
        ) -> datafusion::common::Result<std::sync::Arc<datafusion::common::Statistics>> {
            self.inner.statistics_from_inputs(input_stats, args)
        }

        fn cardinality_effect(
            &self,
        ) -> datafusion::physical_plan::execution_plan::CardinalityEffect {
            self.inner.cardinality_effect()
        }
    };
    // With `inner` an `Arc<dyn ExecutionPlan>` holding a `$stock`, and `Self::new(inner)`.
    ($stock:ty) => {
        planned_as_inner!();

        fn with_new_children(
            self: std::sync::Arc<Self>,
            children: Vec<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
        ) -> datafusion::common::Result<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>
        {
            let inner = $crate::sql::stock_with_children::<$stock>(&self.inner, children)?;
            Ok(std::sync::Arc::new(Self::new(inner)))
        }
    };
}

pub mod cluster;
pub mod filter;
pub mod lookup;
pub mod merge;
pub mod output;
pub mod udwf;
pub mod window;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::common::{ScalarValue, TableReference};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::execution::{FunctionRegistry, SessionState, SessionStateBuilder};
use datafusion::prelude::{SessionConfig, SessionContext, col};

use crate::market::lake::{LISTING_FILE, LakeListing};
use crate::market::model::Dataset;

/// `plan` as the stock plan `T` a replacing plan runs in its own way.
pub(crate) fn stock<T: datafusion::physical_plan::ExecutionPlan + 'static>(
    plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
) -> Result<&T, DataFusionError> {
    plan.downcast_ref::<T>().ok_or_else(|| {
        datafusion::common::internal_datafusion_err!(
            "a replacing plan wraps a {}",
            std::any::type_name::<T>()
        )
    })
}

/// The stock plan `inner` (a `T`) with new children, still a `T`: a replacing plan's
/// `with_new_children`.
pub(crate) fn stock_with_children<T: datafusion::physical_plan::ExecutionPlan + 'static>(
    inner: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    children: Vec<Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>, DataFusionError> {
    #[allow(deprecated)]
    let inner = Arc::clone(inner).with_new_children(children)?;
    stock::<T>(&inner)?;
    Ok(inner)
}

/// The table every lake listing is also registered as.
pub const KLINES_TABLE: &str = "klines";

/// How much of a Parquet file's end is read to find its footer.
pub const FOOTER_READ: usize = 64 * 1024;

/// A session with asterflow's functions, spans collected for error locations.
pub fn session(target_partitions: usize) -> SessionContext {
    SessionContext::new_with_state(state(config(target_partitions)))
}

/// The settings every asterflow session runs with, local or on a cluster.
pub fn config(target_partitions: usize) -> SessionConfig {
    let mut config = SessionConfig::new()
        .with_target_partitions(target_partitions.max(1))
        .with_batch_size(8192);
    config.options_mut().sql_parser.collect_spans = true;
    // A join keeps its left input whole in memory and streams the right one through, instead of
    // repartitioning both by the join key: a repartition would lose the per-symbol order the
    // windows after the join need, and sort every row again. Write the smaller table first (in
    // the features, the per-bar market table before the per-symbol rows).
    config.options_mut().optimizer.repartition_joins = false;
    // Keep an order the input already has (merging sorted streams) rather than sort again:
    // lake tables arrive sorted by symbol and open time.
    config.options_mut().optimizer.prefer_existing_sort = true;
    // Planning reads every input file's footer (for the statistics that show the lake's parts
    // do not overlap). DataFusion reads the last 512 KiB of a file for it, in one go: for a
    // lake part of 0.3 to 1 MB, most of the file, to find 4 KB of metadata (the features
    // benchmark's 600 parts: 200 MB read before the query starts). 64 KiB holds a part's footer
    // many times over; a larger footer takes a second read. It reaches files read through the
    // session and the input tables [`register_located`] makes alike.
    config.options_mut().execution.parquet.metadata_size_hint = Some(FOOTER_READ);
    config
}

/// A local session's state over `config`: [`state_with_runtime`]'s, with joins against a
/// table of unique keys run as lookups ([`lookup`]), and filters and merges that pass long
/// runs of rows on as slices ([`filter`], [`merge`]), which a cluster's codecs do not know.
pub fn state(config: SessionConfig) -> SessionState {
    finish(
        builder(config, None)
            .with_physical_optimizer_rule(Arc::new(lookup::LookupJoins))
            .with_physical_optimizer_rule(Arc::new(filter::RunFilters))
            .with_physical_optimizer_rule(Arc::new(merge::RunMerges)),
    )
}

/// A session state over `config` with asterflow's window functions and physical rule, on a
/// given runtime (a cluster node's, with its object stores): what a cluster's nodes plan and
/// run with ([`cluster`]).
pub fn state_with_runtime(
    config: SessionConfig,
    runtime: Option<Arc<datafusion::execution::runtime_env::RuntimeEnv>>,
) -> SessionState {
    finish(builder(config, runtime))
}

fn builder(
    config: SessionConfig,
    runtime: Option<Arc<datafusion::execution::runtime_env::RuntimeEnv>>,
) -> SessionStateBuilder {
    let mut builder = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_physical_optimizer_rule(Arc::new(window::PartitionStreaming));
    if let Some(runtime) = runtime {
        builder = builder.with_runtime_env(runtime);
    }
    builder
}

/// The state `builder` builds, with asterflow's window functions.
fn finish(builder: SessionStateBuilder) -> SessionState {
    let mut state = builder.build();
    for function in udwf::functions() {
        // Replacing a function of the same name is what registering means here.
        let _ = state.register_udwf(Arc::new(function));
    }
    state
}

/// A table an input provides: its name and the files behind it.
#[derive(Debug, Clone)]
pub struct InputTable {
    pub names: Vec<String>,
    pub files: Vec<PathBuf>,
    /// Lake parts have the table's known schema (and none may be listed: an empty table);
    /// other Parquet files are read for theirs.
    pub lake: Option<Dataset>,
}

/// The tables of a lake listing: each lake table (`klines`, `funding`, `mark_klines`,
/// `index_klines`, `premium_klines`) over its listed parts, empty when none are listed, so a
/// query may name a table the collection did not fill; `klines` is also `<stage>`.
pub fn lake_tables(stage_id: &str, listing: &LakeListing, data_dir: &Path) -> Vec<InputTable> {
    Dataset::ALL
        .into_iter()
        .map(|dataset| {
            let mut names = vec![dataset.table().to_owned()];
            if dataset == Dataset::Klines {
                names.push(stage_id.to_owned());
            }
            InputTable {
                names,
                files: listing
                    .parts
                    .iter()
                    .filter(|part| part.table == dataset.table())
                    .map(|part| data_dir.join(&part.path))
                    .collect(),
                lake: Some(dataset),
            }
        })
        .collect()
}

/// The tables an input stage's output directory provides: a `lake.json` becomes the lake's
/// tables ([`lake_tables`]); each `NAME.parquet` becomes `NAME`, and the only one also
/// `<stage>`.
pub fn input_tables(
    stage_id: &str,
    dir: &Path,
    data_dir: &Path,
) -> Result<Vec<InputTable>, String> {
    let mut tables = Vec::new();
    let listing = dir.join(LISTING_FILE);
    let mut parquet: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|error| format!("cannot list {}: {error}", dir.display()))?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "parquet"))
        .collect();
    parquet.sort();
    if listing.is_file() {
        let listing = LakeListing::read(&listing)?;
        tables.extend(lake_tables(stage_id, &listing, data_dir));
    }
    let only = parquet.len() == 1 && !listing.is_file();
    for file in parquet {
        let stem = file
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut names = vec![stem.clone()];
        if only && stem != stage_id {
            names.push(stage_id.to_owned());
        }
        tables.push(InputTable {
            names,
            files: vec![file],
            lake: None,
        });
    }
    Ok(tables)
}

/// Every table a running stage's inputs provide, refusing duplicate names.
pub fn stage_tables<'a>(
    inputs: impl IntoIterator<Item = (&'a str, &'a Path)>,
    data_dir: &Path,
) -> Result<Vec<InputTable>, String> {
    let mut tables = Vec::new();
    for (id, dir) in inputs {
        for table in input_tables(id, dir, data_dir)? {
            tables.push((id.to_owned(), table));
        }
    }
    check_unique_names(&tables)?;
    Ok(tables.into_iter().map(|(_, table)| table).collect())
}

/// Registers `table` under each of its names.
pub async fn register(context: &SessionContext, table: &InputTable) -> Result<(), DataFusionError> {
    register_located(context, table, |file| file.to_string_lossy().into_owned()).await
}

/// [`register`], each file at the location `locate` gives it (a path, or an object-store URL
/// for a cluster's executors).
pub async fn register_located(
    context: &SessionContext,
    table: &InputTable,
    locate: impl Fn(&Path) -> String,
) -> Result<(), DataFusionError> {
    let provider: Arc<dyn datafusion::catalog::TableProvider> = match table.lake {
        Some(dataset) if table.files.is_empty() => {
            Arc::new(datafusion::datasource::MemTable::try_new(
                crate::market::lake::schema_of(dataset),
                vec![vec![]],
            )?)
        }
        _ => {
            let urls = table
                .files
                .iter()
                .map(|file| ListingTableUrl::parse(locate(file)))
                .collect::<Result<Vec<_>, _>>()?;
            // The format takes the session's Parquet settings ([`config`]'s footer read among
            // them): `ParquetFormat::default()` would carry DataFusion's own.
            let format = ParquetFormat::default()
                .with_options(context.state().default_table_options().parquet);
            let mut options = ListingOptions::new(Arc::new(format)).with_file_extension(".parquet");
            if let Some(dataset) = table.lake {
                // A lake part holds one symbol (and interval), its rows strictly increasing in
                // time (`lake::write_part` refuses anything else). DataFusion keeps this order
                // across the parts of a scan only where their statistics show they do not
                // overlap, and then a window over `PARTITION BY symbol ORDER BY open_time`
                // needs no sort.
                let order = if dataset.is_kline_shaped() {
                    vec![
                        col("interval").sort(true, false),
                        col("symbol").sort(true, false),
                        col("open_time").sort(true, false),
                    ]
                } else {
                    vec![
                        col("symbol").sort(true, false),
                        col("funding_time").sort(true, false),
                    ]
                };
                options = options.with_file_sort_order(vec![order]);
            }
            let config =
                ListingTableConfig::new_with_multi_paths(urls).with_listing_options(options);
            let config = match table.lake {
                Some(dataset) => config.with_schema(crate::market::lake::schema_of(dataset)),
                None => config.infer_schema(&context.state()).await?,
            };
            // The session's statistics cache: without it every scan of the table (the
            // features read `klines` four times, and the symbol requirements twice more)
            // works out each file's statistics from its footer again.
            Arc::new(
                ListingTable::try_new(config)?.with_cache(
                    context
                        .runtime_env()
                        .cache_manager
                        .get_file_statistic_cache(),
                ),
            )
        }
    };
    for name in &table.names {
        // Bare: a name is used exactly as written (no lower-casing, no schema.table split).
        context.register_table(TableReference::bare(name.as_str()), provider.clone())?;
    }
    Ok(())
}

/// A session with every table a running stage's inputs provide registered.
pub async fn input_session<'a>(
    inputs: impl IntoIterator<Item = (&'a str, &'a Path)>,
    data_dir: &Path,
) -> Result<SessionContext, String> {
    let tables = stage_tables(inputs, data_dir)?;
    let context = session(std::thread::available_parallelism().map_or(2, usize::from));
    for table in &tables {
        register(&context, table)
            .await
            .map_err(|error| format!("registering `{}`: {error}", table.names.join("`, `")))?;
    }
    Ok(context)
}

/// `frame`'s rows as a frame of a local session: a cluster's result streamed back once, so
/// local writers (`write_parquet`) write it exactly as they write a local query's.
pub async fn local_frame(
    frame: datafusion::dataframe::DataFrame,
) -> Result<datafusion::dataframe::DataFrame, DataFusionError> {
    use datafusion::physical_plan::SendableRecordBatchStream;
    use datafusion::physical_plan::streaming::PartitionStream;

    struct Once {
        schema: arrow::datatypes::SchemaRef,
        stream: std::sync::Mutex<Option<SendableRecordBatchStream>>,
    }
    impl std::fmt::Debug for Once {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Once")
        }
    }
    impl PartitionStream for Once {
        fn schema(&self) -> &arrow::datatypes::SchemaRef {
            &self.schema
        }
        fn execute(&self, _: Arc<datafusion::execution::TaskContext>) -> SendableRecordBatchStream {
            let taken = self.stream.lock().unwrap_or_else(|e| e.into_inner()).take();
            taken.unwrap_or_else(|| {
                Box::pin(
                    datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                        self.schema.clone(),
                        futures::stream::once(async {
                            Err(DataFusionError::Internal(
                                "a streamed result can be read once".into(),
                            ))
                        }),
                    ),
                )
            })
        }
    }
    let schema = Arc::new(frame.schema().as_arrow().clone());
    let stream = frame.execute_stream().await?;
    let table = datafusion::catalog::streaming::StreamingTable::try_new(
        schema.clone(),
        vec![Arc::new(Once {
            schema,
            stream: std::sync::Mutex::new(Some(stream)),
        })],
    )?;
    SessionContext::new().read_table(Arc::new(table))
}

/// Whether `name` is a table in `context`.
pub fn has_table(context: &SessionContext, name: &str) -> bool {
    context
        .table_exist(TableReference::bare(name))
        .unwrap_or(false)
}

/// `name` as a quoted SQL identifier: used exactly as written.
pub fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Runs `query` and collects its batches; `what` names the data in an error.
pub async fn query(
    context: &SessionContext,
    query: &str,
    what: &str,
) -> Result<Vec<arrow::array::RecordBatch>, String> {
    context
        .sql(query)
        .await
        .map_err(|error| format!("reading {what}: {}", error_message(&error)))?
        .collect()
        .await
        .map_err(|error| format!("reading {what}: {}", error_message(&error)))
}

/// Refuses two inputs that would give the same table name (two lake inputs both being
/// `klines`, or a `klines.parquet` beside a lake), naming both.
pub fn check_unique_names(tables: &[(String, InputTable)]) -> Result<(), String> {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (input, table) in tables {
        for name in &table.names {
            if let Some(first) = seen.insert(name.as_str(), input.as_str()) {
                return Err(format!(
                    "inputs `{first}` and `{input}` both provide a table named `{name}`; an sql stage needs each table name once (split the stage, or rename an output)"
                ));
            }
        }
    }
    Ok(())
}

/// A param value from YAML, bound as a typed SQL value (never spliced into the text).
pub fn scalar(value: &serde_json::Value) -> Result<ScalarValue, String> {
    Ok(match value {
        serde_json::Value::Bool(flag) => ScalarValue::Boolean(Some(*flag)),
        serde_json::Value::Number(number) => match number.as_i64() {
            Some(integer) => ScalarValue::Int64(Some(integer)),
            None => ScalarValue::Float64(number.as_f64()),
        },
        serde_json::Value::String(text) => ScalarValue::Utf8(Some(text.clone())),
        serde_json::Value::Null => ScalarValue::Null,
        other => {
            return Err(format!(
                "params are numbers, strings or booleans; got {other}"
            ));
        }
    })
}

/// All params, keyed by name (used as `$name` in SQL).
pub fn scalars(
    params: &BTreeMap<String, serde_json::Value>,
) -> Result<HashMap<String, ScalarValue>, (String, String)> {
    params
        .iter()
        .map(|(name, value)| {
            scalar(value)
                .map(|scalar| (name.clone(), scalar))
                .map_err(|message| (name.clone(), message))
        })
        .collect()
}

/// Where in the SQL text an error points, when DataFusion says: (line, column), 1-based.
pub fn error_position(error: &DataFusionError) -> Option<(usize, usize)> {
    if let Some(span) = error.diagnostic().and_then(|diagnostic| diagnostic.span)
        && span.start.line > 0
    {
        return Some((span.start.line as usize, span.start.column as usize));
    }
    // sqlparser puts the position in its message: "... at Line: 3, Column: 14".
    let text = error.to_string();
    let at = text.rfind("Line: ")?;
    let rest = &text[at + 6..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.trim().parse().ok()?, column.parse().ok()?))
}

/// The message of a DataFusion error without its boilerplate prefixes.
pub fn error_message(error: &DataFusionError) -> String {
    if let Some(diagnostic) = error.diagnostic() {
        return diagnostic.message.clone();
    }
    let text = error.to_string();
    let mut text = text
        .trim_start_matches("SQL error: ")
        .trim_start_matches("Error during planning: ")
        .trim_start_matches("Schema error: ")
        .trim_start_matches("ParserError(\"")
        .trim_start_matches("TokenizerError(\"")
        .to_owned();
    if let Some(position) = text.rfind(" at Line: ") {
        text.truncate(position);
    }
    text.trim_end_matches("\")").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_table_name_per_input() {
        let lake = |input: &str| {
            (
                input.to_owned(),
                InputTable {
                    names: vec![KLINES_TABLE.to_owned(), input.to_owned()],
                    files: Vec::new(),
                    lake: Some(Dataset::Klines),
                },
            )
        };
        assert!(check_unique_names(&[lake("validate")]).is_ok());
        let error = check_unique_names(&[lake("aster"), lake("binance")]).unwrap_err();
        assert!(
            error.contains("`aster` and `binance` both provide a table named `klines`"),
            "{error}"
        );
    }

    /// A footer larger than the part of the file read to find it (a feature file's long
    /// provenance, say) takes a second read, and the file reads as written.
    #[tokio::test]
    async fn a_footer_larger_than_the_first_read_is_read_whole() {
        use arrow::array::{Float64Array, Int64Array, RecordBatch};
        use arrow::datatypes::{DataType, Field, Schema};
        use parquet::file::metadata::KeyValue;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wide.parquet");
        let schema = Arc::new(Schema::new(vec![
            Field::new("open_time", DataType::Int64, false),
            Field::new("x", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from_iter_values(0..1000)),
                Arc::new(Float64Array::from_iter_values((0..1000).map(f64::from))),
            ],
        )
        .unwrap();
        let note = "n".repeat(3 * FOOTER_READ);
        let properties = parquet::file::properties::WriterProperties::builder()
            .set_key_value_metadata(Some(vec![KeyValue::new("note".into(), note)]))
            .build();
        let mut writer = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            schema,
            Some(properties),
        )
        .unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let footer =
            u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap());
        assert!(footer as usize > FOOTER_READ, "footer of {footer} bytes");

        let context = session(2);
        let table = InputTable {
            names: vec!["wide".into()],
            files: vec![path],
            lake: None,
        };
        register(&context, &table).await.unwrap();
        // The table reads the footer with the short first read, so the second one is taken.
        let provider = context.table_provider("wide").await.unwrap();
        let listing = provider.as_ref().downcast_ref::<ListingTable>().unwrap();
        let format = listing
            .options()
            .format
            .as_ref()
            .downcast_ref::<ParquetFormat>()
            .unwrap();
        assert_eq!(format.metadata_size_hint(), Some(FOOTER_READ));
        let rows = context
            .sql("SELECT COUNT(*), SUM(x), MAX(open_time) FROM wide WHERE open_time >= 10")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let shown = arrow::util::pretty::pretty_format_batches(&rows)
            .unwrap()
            .to_string();
        assert!(
            shown.contains("| 990 ") && shown.contains("| 499455.0 ") && shown.contains("| 999 "),
            "{shown}"
        );
    }

    #[test]
    fn params_become_typed_values() {
        assert_eq!(
            scalar(&serde_json::json!(4)).unwrap(),
            ScalarValue::Int64(Some(4))
        );
        assert_eq!(
            scalar(&serde_json::json!(0.02)).unwrap(),
            ScalarValue::Float64(Some(0.02))
        );
        assert_eq!(
            scalar(&serde_json::json!("1h")).unwrap(),
            ScalarValue::Utf8(Some("1h".into()))
        );
        assert!(scalar(&serde_json::json!([1, 2])).is_err());
    }
}

/// A query file's statement that some params must name symbols its input holds:
///
/// ```sql
/// -- asterflow: require symbol $btc, $eth in klines where "interval" = $interval
/// ```
///
/// A leader that validate quarantined (or that was never collected) would otherwise leave its
/// columns null in every row without a word.
#[derive(Debug, Clone, PartialEq)]
pub struct SymbolRequirement {
    /// The params (without `$`) whose values must be symbols of `table`.
    pub params: Vec<String>,
    pub table: String,
    /// An extra SQL condition on `table`, params bound as in the query.
    pub condition: Option<String>,
    /// The directive's line in the file (1-based).
    pub line: usize,
}

const REQUIRE: &str = "-- asterflow: require symbol ";

/// The `-- asterflow: require symbol` lines of `query`; a malformed one is an error with its
/// line.
pub fn symbol_requirements(query: &str) -> Result<Vec<SymbolRequirement>, (usize, String)> {
    let mut found = Vec::new();
    for (index, line) in query.lines().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix(REQUIRE) else {
            continue;
        };
        let line = index + 1;
        let malformed = || {
            (
                line,
                format!("expected `{REQUIRE}$param[, $param] in TABLE [where CONDITION]`"),
            )
        };
        let (names, rest) = rest.split_once(" in ").ok_or_else(malformed)?;
        let (table, condition) = match rest.split_once(" where ") {
            Some((table, condition)) => (table.trim(), Some(condition.trim().to_owned())),
            None => (rest.trim(), None),
        };
        let params: Vec<String> = names
            .split(',')
            .map(|name| name.trim().strip_prefix('$').map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(malformed)?;
        if table.is_empty() || params.iter().any(String::is_empty) {
            return Err(malformed());
        }
        found.push(SymbolRequirement {
            params,
            table: table.to_owned(),
            condition,
            line,
        });
    }
    Ok(found)
}

/// The min and max statistics of a float column, as `f64`; `None` for other types.
fn float_bounds(
    statistics: &parquet::file::statistics::Statistics,
) -> Option<(Option<f64>, Option<f64>)> {
    use parquet::file::statistics::Statistics;
    match statistics {
        Statistics::Double(values) => Some((values.min_opt().copied(), values.max_opt().copied())),
        Statistics::Float(values) => Some((
            values.min_opt().map(|v| f64::from(*v)),
            values.max_opt().map(|v| f64::from(*v)),
        )),
        _ => None,
    }
}

/// The columns of a written Parquet file that hold no finite value in any row (null, NaN or
/// infinite everywhere), read from the footer's statistics: no data is scanned. A file with no
/// rows has none.
pub fn empty_columns(path: &Path) -> Result<Vec<String>, String> {
    use parquet::file::reader::FileReader;
    let file = std::fs::File::open(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let reader = parquet::file::reader::SerializedFileReader::new(file)
        .map_err(|error| format!("{}: {error}", path.display()))?;
    let metadata = reader.metadata();
    let schema = metadata.file_metadata().schema_descr();
    let mut empty = Vec::new();
    if metadata.file_metadata().num_rows() == 0 {
        return Ok(empty);
    }
    for column in 0..schema.num_columns() {
        let all_empty = metadata.row_groups().iter().all(|group| {
            let chunk = group.column(column);
            let rows = group.num_rows() as u64;
            match chunk.statistics() {
                None => false,
                Some(statistics) => {
                    let nulls = statistics.null_count_opt().unwrap_or(0);
                    nulls == rows
                        || float_bounds(statistics).is_some_and(|bounds| match bounds {
                            // Writers leave NaN out of min and max: none at all over non-null
                            // values means every one is NaN; only infinities are not finite.
                            (None, None) => true,
                            (Some(low), Some(high)) => {
                                low.is_infinite() && high.is_infinite() && low == high
                            }
                            _ => false,
                        })
                }
            }
        });
        if all_empty {
            empty.push(schema.column(column).name().to_owned());
        }
    }
    Ok(empty)
}
