//! Joins against a collected table of unique keys, without copying the rows that stream
//! through.
//!
//! DataFusion's `HashJoinExec` builds each output batch by gathering every column of both
//! sides through index arrays, so a join that only looks a few columns up for each streamed
//! row still copies all of that row's columns. The features join five keyed tables (funding,
//! basis, premium, the 4h and 1d bars) and the per-bar market table into rows forty columns
//! wide: most of those joins' time went to the copies.
//!
//! [`LookupJoins`] replaces a hash join that collects its left (build) side whole
//! (`CollectLeft`), right or inner, with no filter and no limit, on keys whose equality is
//! plain value equality (integers, strings, dates, timestamps, booleans; nulls match nothing),
//! by a [`LookupJoinExec`]. The left side is collected once and indexed by its keys in an
//! open-addressing table over DataFusion's vectorised key hashes; each streamed (right) batch
//! keeps its own columns as they are (an inner join drops its unmatched rows), and only the
//! left columns the output needs are gathered, one index per row. When the left side has a
//! key twice, a streamed row could match twice: the original `HashJoinExec` then runs over
//! the rows already collected (the left side runs once), so the results are always the hash
//! join's. Only local sessions use it: a cluster's nodes plan with the stock join, which
//! their codecs know.
//!
//! A join reads no streamed row before its table is built, and the streamed side of one
//! join is often the next join (the features bring five tables beside the bars that way):
//! built on demand, the tables would be built one after another, each ending in a step on
//! one core (concatenating the rows, indexing them) while the other cores wait. So the first
//! `execute` of a lookup join starts the build of its table and of every lookup join's table
//! below it, each on a task of its own, and they run beside each other and beside the
//! streamed side's own work.

use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, DynComparator, Int64Array, RecordBatch, StringArray,
    UInt32Array, make_comparator,
};
use arrow::compute::{SortOptions, concat_batches, filter_record_batch, take};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::common::{
    DataFusionError, JoinType, NullEquality, Result, internal_datafusion_err,
};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use futures::{FutureExt, StreamExt, TryStreamExt};

/// The physical optimizer rule: every hash join [`LookupJoinExec`] can run becomes one.
#[derive(Debug, Default)]
pub struct LookupJoins;

replacing_rule!(LookupJoins, "lookup_joins", HashJoinExec, |join, node| {
    let replaced: Arc<dyn ExecutionPlan> = Arc::new(LookupJoinExec::new(Arc::clone(node)));
    LookupJoinExec::applies(join).then_some(replaced)
});

/// A right or inner join of streamed rows against a collected table of unique keys (see the
/// module).
#[derive(Debug)]
pub struct LookupJoinExec {
    /// The `HashJoinExec` replaced: its plan properties, and its execution when the left side
    /// has a key twice.
    inner: Arc<dyn ExecutionPlan>,
    /// The collected left side, indexed, and the task building it: built once, on a task of
    /// its own started by the first `execute` of the outermost lookup join (see
    /// [`LookupJoinExec::start`]). The task is stopped once the plan and every partition's
    /// stream have let go of it. A stream holds it until its table is built: a `Shared`
    /// future's waiter can depend on the task that is polling it being polled again, so the
    /// task must not stop while anyone waits (the plan itself is often dropped as soon as it
    /// has been executed).
    build: std::sync::Mutex<Option<(SharedTable, Arc<AbortOnDrop>)>>,
    metrics: ExecutionPlanMetricsSet,
}

/// A task stopped when its handle is dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The table's build, awaited by every partition (an error is shared as it is).
type SharedTable = futures::future::Shared<
    futures::future::BoxFuture<'static, std::result::Result<Arc<Table>, Arc<DataFusionError>>>,
>;

impl LookupJoinExec {
    fn applies(join: &HashJoinExec) -> bool {
        let left = join.left().schema();
        let right = join.right().schema();
        let keys_fit =
            join.on()
                .iter()
                .all(|(l, r)| match (l.data_type(&left), r.data_type(&right)) {
                    (Ok(l), Ok(r)) => l == r && plain_equality(&l),
                    _ => false,
                });
        *join.partition_mode() == PartitionMode::CollectLeft
            && matches!(join.join_type(), JoinType::Right | JoinType::Inner)
            && join.filter().is_none()
            && join.fetch().is_none()
            && !join.null_aware
            && join.null_equality() == NullEquality::NullEqualsNothing
            && !join.on().is_empty()
            && keys_fit
    }

    fn new(inner: Arc<dyn ExecutionPlan>) -> Self {
        Self {
            inner,
            build: std::sync::Mutex::new(None),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// The table's build, shared by every partition.
    fn table(inner: Arc<dyn ExecutionPlan>, context: Arc<TaskContext>) -> SharedTable {
        async move {
            // A panic becomes an error: a panicking `Shared` future would leave the other
            // partitions only a panic without its message.
            match std::panic::AssertUnwindSafe(Table::build(&inner, context))
                .catch_unwind()
                .await
            {
                Ok(built) => built.map_err(Arc::new),
                Err(panic) => Err(Arc::new(internal_datafusion_err!(
                    "building a lookup join's table panicked: {}",
                    panic
                        .downcast_ref::<&str>()
                        .map(|text| text.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default()
                ))),
            }
        }
        .boxed()
        .shared()
    }

    /// Starts building this join's table, and those of every lookup join below it, each on a
    /// task of its own: a join builds its table before it reads a streamed row, so the tables
    /// of nested joins would otherwise be built one after another, each ending on one core.
    /// Returns the table and its building task, for a stream to hold while it waits.
    fn start(&self, context: &Arc<TaskContext>) -> (SharedTable, Arc<AbortOnDrop>) {
        let mut build = self
            .build
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((table, task)) = build.as_ref() {
            return (table.clone(), Arc::clone(task));
        }
        let table = Self::table(Arc::clone(&self.inner), Arc::clone(context));
        let building = table.clone();
        let task = Arc::new(AbortOnDrop(tokio::spawn(async move {
            // The error reaches the partitions through the shared future.
            let _ = building.await;
        })));
        *build = Some((table.clone(), Arc::clone(&task)));
        drop(build);
        let mut below: Vec<Arc<dyn ExecutionPlan>> =
            self.inner.children().into_iter().cloned().collect();
        while let Some(plan) = below.pop() {
            if let Some(join) = plan.downcast_ref::<LookupJoinExec>() {
                // Its build runs on its own task; its streams take the table when they run.
                let _started = join.start(context);
            } else {
                below.extend(plan.children().into_iter().cloned());
            }
        }
        (table, task)
    }
}

/// Key types whose SQL equality is the equality of their values as arrow orders them (no
/// floats: -0 and NaN).
fn plain_equality(data_type: &DataType) -> bool {
    data_type.is_integer()
        || matches!(
            data_type,
            DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Boolean
                | DataType::Date32
                | DataType::Date64
                | DataType::Timestamp(..)
        )
}

/// The hash join a lookup join was made from.
fn hash_join(plan: &Arc<dyn ExecutionPlan>) -> Result<&HashJoinExec> {
    super::stock(plan)
}

impl DisplayAs for LookupJoinExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let Ok(join) = hash_join(&self.inner) else {
            return write!(f, "LookupJoinExec");
        };
        let on: Vec<String> = join
            .on()
            .iter()
            .map(|(left, right)| format!("({left}, {right})"))
            .collect();
        write!(
            f,
            "LookupJoinExec: join_type={}, on=[{}]",
            join.join_type(),
            on.join(", ")
        )
    }
}

impl ExecutionPlan for LookupJoinExec {
    planned_as_inner!(HashJoinExec);

    fn name(&self) -> &str {
        "LookupJoinExec"
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let schema = self.schema();
        let inner = Arc::clone(&self.inner);
        let (table, building) = self.start(&context);
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let stream = futures::stream::once(async move {
            // Held until the table is built (see `build`).
            let _building = building;
            let join = hash_join(&inner)?;
            let built = table.await.map_err(DataFusionError::Shared)?;
            if let Some(fallback) = &built.fallback {
                // A key twice on the left: the hash join does it, over the rows collected.
                return fallback.execute(partition, context);
            }
            let probe = join.right().execute(partition, context)?;
            let step = Step {
                right_keys: join.on().iter().map(|(_, r)| Arc::clone(r)).collect(),
                projection: match &join.projection {
                    Some(projection) => projection.to_vec(),
                    None => (0..join.schema().fields().len()).collect(),
                },
                left_width: join.left().schema().fields().len(),
                inner_join: *join.join_type() == JoinType::Inner,
                schema: Arc::clone(&schema),
            };
            // The left row the last streamed row matched, carried from batch to batch.
            let mut last = None;
            let joined = probe.map(move |batch| {
                let batch = batch?;
                let timer = metrics.elapsed_compute().timer();
                let out = built.join(&batch, &step, &mut last);
                timer.done();
                if let Ok(out) = &out {
                    metrics.record_output(out.num_rows());
                }
                out
            });
            // An inner join that kept no row of a batch gives nothing, as the hash join.
            let joined = joined.filter(|out| {
                futures::future::ready(!matches!(out, Ok(out) if out.num_rows() == 0))
            });
            let joined: SendableRecordBatchStream =
                Box::pin(RecordBatchStreamAdapter::new(schema, joined));
            Ok(joined)
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            stream,
        )))
    }
}

/// What each streamed batch is joined with, besides the table.
struct Step {
    right_keys: Vec<Arc<dyn PhysicalExpr>>,
    /// The output's columns, as positions in (left columns, right columns).
    projection: Vec<usize>,
    left_width: usize,
    /// Inner: unmatched streamed rows are dropped; right: kept, with null left columns.
    inner_join: bool,
    schema: SchemaRef,
}

/// How many rows ahead the index's slots are prefetched.
const PREFETCH_AHEAD: usize = 16;

/// A hint that `slots[at]` will be read soon (a no-op off x86-64 or out of range).
#[inline(always)]
fn prefetch(slots: &[u32], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(slot) = slots.get(at) {
        // SAFETY: a prefetch only hints the cache; the address is of a live element.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                std::ptr::from_ref(slot).cast::<i8>(),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (slots, at);
}

/// The hash of every key (DataFusion's, over all key columns): fixed, so a table and its
/// probes agree.
const HASHES: RandomState = RandomState::with_seed(0x0061_7374_6572);

/// The collected left side: its rows, their keys and key hashes, and an open-addressing index
/// from a key's hash to its row (`slots` holds row + 1, 0 for an empty slot).
#[derive(Debug)]
struct Table {
    batch: RecordBatch,
    keys: Vec<ArrayRef>,
    hashes: Vec<u64>,
    slots: Vec<u32>,
    mask: usize,
    /// Some key column has a null (such rows are not in the index).
    left_nulls: bool,
    /// A key seen twice, so a streamed row may match twice: the lookup does not apply, and
    /// this hash join over the collected rows runs instead.
    fallback: Option<Arc<dyn ExecutionPlan>>,
}

impl Table {
    async fn build(
        inner: &Arc<dyn ExecutionPlan>,
        context: Arc<TaskContext>,
    ) -> Result<Arc<Table>> {
        let join = hash_join(inner)?;
        let left = Arc::clone(join.left());
        let batches = datafusion::physical_plan::collect(Arc::clone(&left), context).await?;
        let batch = concat_batches(&left.schema(), &batches)?;
        let keys = key_columns(join.on().iter().map(|(left, _)| left), &batch)?;
        let rows = batch.num_rows();
        if rows >= u32::MAX as usize {
            return Err(internal_datafusion_err!(
                "a lookup join's table holds fewer than 2^32 rows"
            ));
        }
        let mut hashes = vec![0u64; rows];
        create_hashes(&keys, &HASHES, &mut hashes)?;
        let capacity = (rows * 2).next_power_of_two().max(16);
        let mask = capacity - 1;
        let mut slots = vec![0u32; capacity];
        let same = SameKey::new(&keys, &keys)?;
        let mut repeated = false;
        'rows: for (row, &hash) in hashes.iter().enumerate() {
            // The slots are read in the hashes' random order: ask for the slot a later row
            // lands in now, so that it is in cache by the time that row gets there (for the
            // lake's tables of millions of rows this loop otherwise waits on memory).
            if let Some(&ahead) = hashes.get(row + PREFETCH_AHEAD) {
                prefetch(&slots, ahead as usize & mask);
            }
            if has_null(&keys, row) {
                continue;
            }
            let mut slot = hash as usize & mask;
            loop {
                let held = slots[slot];
                if held == 0 {
                    slots[slot] = row as u32 + 1;
                    break;
                }
                let other = held as usize - 1;
                if hashes[other] == hash && same.equal(other, row) {
                    repeated = true;
                    break 'rows;
                }
                slot = (slot + 1) & mask;
            }
        }
        // The left side is not run twice (a repartition in it could not be).
        let fallback = if repeated {
            let collected =
                MemorySourceConfig::try_new_exec(&[vec![batch.clone()]], left.schema(), None)?;
            #[allow(deprecated)]
            let join =
                Arc::clone(inner).with_new_children(vec![collected, Arc::clone(join.right())])?;
            Some(join)
        } else {
            None
        };
        let left_nulls = keys.iter().any(|column| column.null_count() > 0);
        Ok(Arc::new(Table {
            batch,
            keys,
            hashes,
            slots,
            mask,
            left_nulls,
            fallback,
        }))
    }

    /// The row holding the key whose hash is `hash` and that `equal` accepts, if any.
    fn find(&self, hash: u64, equal: impl Fn(usize) -> bool) -> Option<usize> {
        let mut slot = hash as usize & self.mask;
        loop {
            let held = self.slots[slot];
            if held == 0 {
                return None;
            }
            let at = held as usize - 1;
            if self.hashes[at] == hash && equal(at) {
                return Some(at);
            }
            slot = (slot + 1) & self.mask;
        }
    }

    /// `probe` joined: its own columns as they are (an inner join's matched rows only), the
    /// left columns of each row's match (null where none), in the output's order.
    fn join(
        &self,
        probe: &RecordBatch,
        step: &Step,
        last: &mut Option<usize>,
    ) -> Result<RecordBatch> {
        let columns = key_columns(step.right_keys.iter(), probe)?;
        let same = SameKey::new(&self.keys, &columns)?;
        let equal = |at: usize, row: usize| same.equal(at, row);
        let nulls = columns.iter().any(|column| column.null_count() > 0);
        // The streamed rows' key hashes, computed for the whole batch at its first row that
        // the shortcut below misses.
        let mut hashes: Option<Vec<u64>> = None;
        let mut matches: Vec<Option<u32>> = Vec::with_capacity(probe.num_rows());
        // An empty table (a dataset the source does not serve) matches nothing: no hashing.
        let empty = self.batch.num_rows() == 0;
        for row in 0..probe.num_rows() {
            if empty || (nulls && has_null(&columns, row)) {
                matches.push(None);
                continue;
            }
            // Keyed tables and streamed rows often come in the same order (the lake's: by
            // symbol, then time): a row's match is then the previous row's match or the one
            // after it, tried before the index.
            let near = last.and_then(|at| {
                [at, at + 1].into_iter().find(|&at| {
                    at < self.batch.num_rows()
                        && !(self.left_nulls && has_null(&self.keys, at))
                        && equal(at, row)
                })
            });
            let found = match near {
                Some(at) => Some(at),
                None => {
                    if hashes.is_none() {
                        let mut all = vec![0u64; probe.num_rows()];
                        create_hashes(&columns, &HASHES, &mut all)?;
                        hashes = Some(all);
                    }
                    let all = hashes.as_deref().unwrap_or_default();
                    // Rows that miss often miss in a run (a sparse table's): the slots of
                    // the rows ahead are fetched while this one is looked up.
                    if let Some(&ahead) = all.get(row + PREFETCH_AHEAD) {
                        prefetch(&self.slots, ahead as usize & self.mask);
                    }
                    let hash = all.get(row).copied().unwrap_or_default();
                    self.find(hash, |at| equal(at, row))
                }
            };
            if found.is_some() {
                *last = found;
            }
            matches.push(found.map(|at| at as u32));
        }
        let (probe, indices) = if step.inner_join && matches.iter().any(Option::is_none) {
            let kept = BooleanArray::from_iter(matches.iter().map(|m| Some(m.is_some())));
            let probe = filter_record_batch(probe, &kept)?;
            let indices: UInt32Array = matches.into_iter().flatten().map(Some).collect();
            (std::borrow::Cow::Owned(probe), indices)
        } else {
            (
                std::borrow::Cow::Borrowed(probe),
                UInt32Array::from(matches),
            )
        };
        let out = step
            .projection
            .iter()
            .map(|&column| {
                if column < step.left_width {
                    Ok(take(self.batch.column(column), &indices, None)?)
                } else {
                    Ok(Arc::clone(probe.column(column - step.left_width)))
                }
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(indices.len()));
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&step.schema),
            out,
            &options,
        )?)
    }
}

/// Whether row `l` of one side's keys and row `r` of the other's are the same key: the
/// columns compared last to first (a symbol and a time: the time tells rows apart sooner),
/// integers and strings directly, other types through arrow's comparator. Rows with a null
/// key are never compared.
struct SameKey(Vec<Column>);

enum Column {
    Int64(Int64Array, Int64Array),
    Utf8(StringArray, StringArray),
    Other(DynComparator),
}

impl SameKey {
    fn new(left: &[ArrayRef], right: &[ArrayRef]) -> Result<Self> {
        let columns = left
            .iter()
            .zip(right)
            .rev()
            .map(|(l, r)| {
                Ok(match (l.data_type(), r.data_type()) {
                    (DataType::Int64, DataType::Int64) => {
                        Column::Int64(l.as_primitive().clone(), r.as_primitive().clone())
                    }
                    (DataType::Utf8, DataType::Utf8) => {
                        Column::Utf8(l.as_string().clone(), r.as_string().clone())
                    }
                    _ => Column::Other(make_comparator(l, r, SortOptions::default())?),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self(columns))
    }

    fn equal(&self, l: usize, r: usize) -> bool {
        self.0.iter().all(|column| match column {
            Column::Int64(left, right) => left.value(l) == right.value(r),
            Column::Utf8(left, right) => left.value(l) == right.value(r),
            Column::Other(compare) => compare(l, r).is_eq(),
        })
    }
}

/// The join keys' values over `batch`.
fn key_columns<'e>(
    keys: impl Iterator<Item = &'e Arc<dyn PhysicalExpr>>,
    batch: &RecordBatch,
) -> Result<Vec<ArrayRef>> {
    keys.map(|key| key.evaluate(batch)?.into_array(batch.num_rows()))
        .collect()
}

fn has_null(columns: &[ArrayRef], row: usize) -> bool {
    columns.iter().any(|column| column.is_null(row))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use datafusion::config::ConfigOptions;
    use datafusion::physical_optimizer::PhysicalOptimizerRule;
    use datafusion::prelude::SessionContext;

    /// `c`: 40 streamed rows (symbols A and B, times 0..20, a null symbol at time 5); `f`: a
    /// keyed table with some of their keys, one of its own, and a null key at time 5; `f2`: `f` with a key
    /// twice; `m`: one row per time 0..20 but 13, keyed by time alone.
    async fn register(context: &SessionContext) {
        let streamed = Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, true),
            Field::new("t", DataType::Int64, false),
            Field::new("x", DataType::Float64, false),
        ]));
        let symbols: Vec<Option<&str>> = (0..40)
            .map(|i| match i {
                5 => None,
                i if i < 20 => Some("A"),
                _ => Some("B"),
            })
            .collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&streamed),
            vec![
                Arc::new(StringArray::from(symbols)),
                Arc::new(Int64Array::from_iter_values((0..40).map(|i| i % 20))),
                Arc::new(Float64Array::from_iter_values((0..40).map(f64::from))),
            ],
        )
        .unwrap();
        // Declared sorted by `x` (as it is), so the hash join keeps the streamed order too.
        let sorted = datafusion::datasource::MemTable::try_new(streamed, vec![vec![batch]])
            .unwrap()
            .with_sort_order(vec![vec![datafusion::prelude::col("x").sort(true, false)]]);
        context.register_table("c", Arc::new(sorted)).unwrap();
        let keyed = |repeat: bool| {
            let schema = Arc::new(Schema::new(vec![
                Field::new("symbol", DataType::Utf8, true),
                Field::new("t", DataType::Int64, false),
                Field::new("v", DataType::Float64, true),
            ]));
            let mut symbols = vec![Some("A"), Some("A"), Some("B"), Some("C"), None];
            let mut times = vec![3, 7, 19, 3, 5];
            let mut values = vec![Some(1.5), None, Some(2.5), Some(3.5), Some(4.5)];
            if repeat {
                symbols.push(Some("A"));
                times.push(3);
                values.push(Some(9.0));
            }
            RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(StringArray::from(symbols)),
                    Arc::new(Int64Array::from(times)),
                    Arc::new(Float64Array::from(values)),
                ],
            )
            .unwrap()
        };
        context.register_batch("f", keyed(false)).unwrap();
        context.register_batch("f2", keyed(true)).unwrap();
        let per_time = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("t", DataType::Int64, false),
                Field::new("w", DataType::Float64, false),
            ])),
            vec![
                Arc::new(Int64Array::from_iter_values((0..20).filter(|&t| t != 13))),
                Arc::new(Float64Array::from_iter_values(
                    (0..20).filter(|&t| t != 13).map(|t| t as f64 / 4.0),
                )),
            ],
        )
        .unwrap();
        context.register_batch("m", per_time).unwrap();
    }

    /// The rows of `sql` as printed lines (in the order they came), and the physical plan.
    async fn rows(context: &SessionContext, sql: &str) -> (Vec<String>, String) {
        let frame = context.sql(sql).await.unwrap();
        let plan = frame.clone().create_physical_plan().await.unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(true)
            .to_string();
        let batches = frame.collect().await.unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        (text.lines().map(str::to_owned).collect(), shown)
    }

    fn sorted(mut lines: Vec<String>) -> Vec<String> {
        lines.sort();
        lines
    }

    /// A local session (with the rule) and a node's (without), on `partitions`.
    async fn sessions(partitions: usize) -> (SessionContext, SessionContext) {
        let config = || crate::sql::config(partitions);
        let looked_up = SessionContext::new_with_state(crate::sql::state(config()));
        let stock = SessionContext::new_with_state(crate::sql::state_with_runtime(config(), None));
        register(&looked_up).await;
        register(&stock).await;
        (looked_up, stock)
    }

    #[tokio::test]
    async fn lookup_joins_give_the_hash_joins_rows_in_the_streamed_order() {
        let cases = [
            // (query, rows printed besides the 4 lines of the frame)
            (
                "SELECT c.symbol, c.t, c.x, k.v, k.t + 1 AS next FROM f AS k \
                 RIGHT JOIN c ON k.symbol = c.symbol AND k.t = c.t",
                40,
            ),
            (
                "SELECT c.symbol, c.t, c.x, k.v FROM f AS k \
                 JOIN c ON k.symbol = c.symbol AND k.t = c.t",
                3,
            ),
            ("SELECT c.*, m.w FROM m JOIN c ON m.t = c.t", 38),
            ("SELECT c.x, m.w FROM m RIGHT JOIN c ON m.t = c.t + 1", 40),
            // A left key made null by NULLIF keeps its value underneath: never matched, not
            // even by the next-row shortcut (after t = 2's match, t = 3's row is null).
            (
                "SELECT c.x, k.w FROM (SELECT NULLIF(t, 3) AS t, w FROM m) AS k \
                 RIGHT JOIN c ON k.t = c.t",
                40,
            ),
            // An empty table: every streamed row unmatched (right), no row and no batch
            // (inner).
            (
                "SELECT c.x, k.v FROM (SELECT * FROM f WHERE v > 100.0) AS k \
                 RIGHT JOIN c ON k.symbol = c.symbol AND k.t = c.t",
                40,
            ),
            (
                "SELECT c.x, k.v FROM (SELECT * FROM f WHERE v > 100.0) AS k \
                 JOIN c ON k.symbol = c.symbol AND k.t = c.t",
                0,
            ),
            // A key type compared through arrow's comparator.
            (
                "SELECT c.x, m.w FROM m JOIN c ON CAST(m.t AS INT) = CAST(c.t AS INT)",
                38,
            ),
        ];
        for partitions in [1, 2] {
            let (looked_up, stock) = sessions(partitions).await;
            for (sql, count) in cases {
                let (ours, plan) = rows(&looked_up, sql).await;
                let (theirs, stock_plan) = rows(&stock, sql).await;
                assert!(plan.contains("LookupJoinExec"), "{plan}");
                assert!(!stock_plan.contains("LookupJoinExec"), "{stock_plan}");
                // No batch at all prints as two lines; rows come between a header's three
                // and a closing line.
                let lines = if count == 0 { 2 } else { count + 4 };
                assert_eq!(ours.len(), lines, "{sql}: {}", ours.join("\n"));
                if partitions == 1 {
                    // One sorted stream: the same rows in the same order.
                    assert_eq!(ours, theirs, "{sql}");
                } else {
                    assert_eq!(sorted(ours), sorted(theirs), "{sql}");
                }
            }
        }
    }

    #[tokio::test]
    async fn a_key_twice_on_the_left_runs_the_hash_join() {
        let (looked_up, stock) = sessions(2).await;
        for (sql, count) in [
            // The A/3 row matches twice.
            (
                "SELECT c.symbol, c.t, c.x, k.v FROM f2 AS k \
                 RIGHT JOIN c ON k.symbol = c.symbol AND k.t = c.t",
                41,
            ),
            (
                "SELECT c.symbol, c.t, c.x, k.v FROM f2 AS k \
                 JOIN c ON k.symbol = c.symbol AND k.t = c.t",
                4,
            ),
            // A left side with an aggregate (a repartition, which runs once): keys 0 to 4,
            // four rows each but three for 3 (no time 13); the ten streamed rows at times 0
            // to 4 match 19 rows a symbol, the other 30 none.
            (
                "SELECT c.x, k.t, k.n FROM \
                 (SELECT t % 5 AS t, COUNT(*) AS n FROM m GROUP BY t % 5, w) AS k \
                 RIGHT JOIN c ON k.t = c.t",
                68,
            ),
        ] {
            let (ours, plan) = rows(&looked_up, sql).await;
            let (theirs, _) = rows(&stock, sql).await;
            assert!(plan.contains("LookupJoinExec"), "{plan}");
            assert_eq!(ours.len(), count + 4, "{sql}: {}", ours.join("\n"));
            assert_eq!(sorted(ours), sorted(theirs), "{sql}");
        }
    }

    #[tokio::test]
    async fn a_matched_row_carries_its_keys_values_and_null_keys_match_nothing() {
        let (looked_up, _) = sessions(2).await;
        let (lines, _) = rows(
            &looked_up,
            "SELECT c.symbol, c.t, k.v FROM f AS k \
             RIGHT JOIN c ON k.symbol = c.symbol AND k.t = c.t WHERE k.symbol IS NOT NULL \
             ORDER BY c.symbol, c.t",
        )
        .await;
        let body: Vec<String> = lines[3..lines.len() - 1]
            .iter()
            .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        // A/7's value is null but its key matched; the null-symbol row at t = 5 matched
        // nothing (not f's null-keyed row); C/3 has no streamed row.
        assert_eq!(
            body,
            ["| A | 3 | 1.5 |", "| A | 7 | |", "| B | 19 | 2.5 |"],
            "{}",
            lines.join("\n")
        );
    }

    #[tokio::test]
    async fn a_limit_on_the_join_is_kept() {
        let (looked_up, _) = sessions(1).await;
        for sql in [
            "SELECT c.x, m.w FROM m RIGHT JOIN c ON m.t = c.t LIMIT 5",
            "SELECT c.x, m.w FROM m JOIN c ON m.t = c.t LIMIT 5",
            "SELECT * FROM m JOIN c ON m.t = c.t LIMIT 5",
        ] {
            let (lines, _) = rows(&looked_up, sql).await;
            assert_eq!(lines.len(), 5 + 4, "{sql}: {}", lines.join("\n"));
        }
    }

    #[tokio::test]
    async fn float_keys_and_full_joins_keep_the_hash_join() {
        let (looked_up, _) = sessions(2).await;
        for sql in [
            "SELECT c.x, k.v FROM f AS k RIGHT JOIN c ON k.v = c.x",
            "SELECT c.x, k.v FROM f AS k FULL JOIN c ON k.symbol = c.symbol AND k.t = c.t",
            "SELECT c.x, k.v FROM f AS k RIGHT JOIN c ON k.symbol = c.symbol AND k.t < c.t",
        ] {
            let (_, plan) = rows(&looked_up, sql).await;
            assert!(!plan.contains("LookupJoinExec"), "{sql}: {plan}");
        }
    }

    /// One partition's batch, given out when `wait` is notified (at once without it); `open`
    /// is notified when the stream is first polled.
    #[derive(Debug)]
    struct Gated {
        batch: RecordBatch,
        wait: Option<Arc<tokio::sync::Notify>>,
        open: Option<Arc<tokio::sync::Notify>>,
    }

    impl datafusion::physical_plan::streaming::PartitionStream for Gated {
        fn schema(&self) -> &SchemaRef {
            self.batch.schema_ref()
        }

        fn execute(&self, _: Arc<TaskContext>) -> SendableRecordBatchStream {
            let (batch, wait, open) = (self.batch.clone(), self.wait.clone(), self.open.clone());
            let schema = batch.schema();
            let stream = futures::stream::once(async move {
                if let Some(open) = open {
                    // A permit is kept for a waiter that comes later.
                    open.notify_one();
                }
                if let Some(wait) = wait {
                    wait.notified().await;
                }
                Ok(batch)
            });
            Box::pin(RecordBatchStreamAdapter::new(schema, stream))
        }
    }

    #[tokio::test]
    async fn the_tables_of_nested_joins_are_built_beside_each_other() {
        // The outer join's table can only be read once the inner join's table has started
        // being built: built on demand (outer first, then the streamed side, whose first
        // step is the inner table), this plan would never finish.
        // (symbol, t, `value`) rows.
        let rows = |value: &str, symbols: Vec<&str>, times: Vec<i64>, values: Vec<f64>| {
            RecordBatch::try_new(
                Arc::new(Schema::new(vec![
                    Field::new("symbol", DataType::Utf8, false),
                    Field::new("t", DataType::Int64, false),
                    Field::new(value, DataType::Float64, false),
                ])),
                vec![
                    Arc::new(StringArray::from(symbols)),
                    Arc::new(Int64Array::from(times)),
                    Arc::new(Float64Array::from(values)),
                ],
            )
            .unwrap()
        };
        let keyed = |value: &str| {
            rows(
                value,
                vec!["A", "A", "B"],
                vec![1, 2, 1],
                vec![0.5, 1.5, 2.5],
            )
        };
        let streamed = rows(
            "x",
            vec!["A", "A", "A", "B"],
            vec![1, 2, 3, 1],
            vec![10.0, 20.0, 30.0, 40.0],
        );
        let inner_started = Arc::new(tokio::sync::Notify::new());
        let source = |batch: RecordBatch, wait, open| -> Arc<dyn ExecutionPlan> {
            let schema = batch.schema();
            let gated = Gated { batch, wait, open };
            Arc::new(
                datafusion::physical_plan::streaming::StreamingTableExec::try_new(
                    schema,
                    vec![Arc::new(gated)],
                    None,
                    vec![],
                    false,
                    None,
                )
                .unwrap(),
            )
        };
        let column = |name: &str, at: usize| -> Arc<dyn PhysicalExpr> {
            Arc::new(datafusion::physical_expr::expressions::Column::new(
                name, at,
            ))
        };
        let join = |left, right, right_at: usize| -> Arc<dyn ExecutionPlan> {
            Arc::new(
                HashJoinExec::try_new(
                    left,
                    right,
                    vec![
                        (column("symbol", 0), column("symbol", right_at)),
                        (column("t", 1), column("t", right_at + 1)),
                    ],
                    None,
                    &JoinType::Right,
                    None,
                    PartitionMode::CollectLeft,
                    NullEquality::NullEqualsNothing,
                    false,
                )
                .unwrap(),
            )
        };
        // Inner: w beside the streamed rows (symbol, t, w, symbol, t, x); outer: v beside those.
        let inner = join(
            source(keyed("w"), None, Some(Arc::clone(&inner_started))),
            source(streamed, None, None),
            0,
        );
        let outer = join(source(keyed("v"), Some(inner_started), None), inner, 3);
        let plan = LookupJoins
            .optimize(outer, &ConfigOptions::default())
            .unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(true)
            .to_string();
        assert_eq!(shown.matches("LookupJoinExec").count(), 2, "{shown}");
        let collected = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            datafusion::physical_plan::collect(plan, Arc::new(TaskContext::default())),
        )
        .await
        .expect("the outer table waited for a build that had not started")
        .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&collected)
            .unwrap()
            .to_string();
        let lines: Vec<&str> = text.lines().collect();
        // Four streamed rows; A at 3 has no match on either side.
        assert_eq!(lines.len(), 4 + 4, "{text}");
        assert!(
            lines.contains(&"| A      | 2 | 1.5 | A      | 2 | 1.5 | A      | 2 | 20.0 |"),
            "{text}"
        );
        assert!(
            lines.contains(&"|        |   |     |        |   |     | A      | 3 | 30.0 |"),
            "{text}"
        );
    }
}
