//! Window evaluation one partition at a time.
//!
//! DataFusion runs window functions that need a whole partition at once (`evaluate_all`: the
//! functions in [`super::udwf`], and LAG or ROW_NUMBER beside them) in `WindowAggExec`, which
//! buffers its entire input, copies it into one batch, and emits the result as that one batch.
//! Over a feature set that is every row several times over, held at full width.
//!
//! The input of a `WindowAggExec` is always sorted on its partition keys (it requires that
//! ordering, and the planner sorts to provide it), so a partition is complete as soon as a row
//! of the next one arrives. [`PartitionStreaming`] replaces each `WindowAggExec` with a
//! [`PartitionWindowExec`] that evaluates the same window expressions over each complete
//! partition as it closes: the same results, computed the same way, holding one partition
//! instead of the whole input. A window without PARTITION BY is one partition and is buffered
//! whole, as before.

use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arrow::array::{ArrayRef, RecordBatch, make_comparator};
use arrow::compute::{SortOptions, concat, concat_batches};
use arrow::datatypes::SchemaRef;
use datafusion::common::{Result, internal_datafusion_err};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalSortExpr;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet};
use datafusion::physical_plan::windows::WindowAggExec;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, WindowExpr};
use futures::{Stream, StreamExt};

/// The physical optimizer rule: every `WindowAggExec` becomes a [`PartitionWindowExec`].
#[derive(Debug, Default)]
pub struct PartitionStreaming;

replacing_rule!(
    PartitionStreaming,
    "partition_streaming_windows",
    WindowAggExec,
    |window, _| Some(Arc::new(PartitionWindowExec::new(Arc::new(window.clone()))))
);

/// A `WindowAggExec` evaluated partition by partition. The wrapped plan supplies everything
/// the planner asks (schema, ordering and distribution requirements, output properties): only
/// the execution differs.
#[derive(Debug, Clone)]
pub struct PartitionWindowExec {
    inner: Arc<WindowAggExec>,
    metrics: ExecutionPlanMetricsSet,
}

impl PartitionWindowExec {
    pub fn new(inner: Arc<WindowAggExec>) -> Self {
        Self {
            inner,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// The window plan it evaluates.
    pub fn inner(&self) -> &Arc<WindowAggExec> {
        &self.inner
    }
}

impl DisplayAs for PartitionWindowExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let names: Vec<String> = self
            .inner
            .window_expr()
            .iter()
            .map(|expr| expr.name().to_owned())
            .collect();
        write!(f, "PartitionWindowExec: wdw=[{}]", names.join(", "))
    }
}

impl ExecutionPlan for PartitionWindowExec {
    planned_as_inner!();

    fn name(&self) -> &str {
        "PartitionWindowExec"
    }

    fn required_input_ordering(
        &self,
    ) -> Vec<Option<datafusion::physical_expr::OrderingRequirements>> {
        self.inner.required_input_ordering()
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let inner = Arc::clone(&self.inner).with_new_children(children)?;
        let inner = inner
            .downcast_ref::<WindowAggExec>()
            .ok_or_else(|| {
                internal_datafusion_err!("a window plan's new children changed its kind")
            })?
            .clone();
        Ok(Arc::new(Self::new(Arc::new(inner))))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.inner.input().execute(partition, context)?;
        Ok(Box::pin(PartitionWindowStream {
            schema: self.schema(),
            input_schema: self.inner.input().schema(),
            input: Some(input),
            window_expr: self.inner.window_expr().to_vec(),
            partition_by: self.inner.partition_by_sort_keys()?,
            pending: Vec::new(),
            pending_last: Vec::new(),
            metrics: BaselineMetrics::new(&self.metrics, partition),
        }))
    }
}

/// The stream: rows of the partition still open are held in `pending`; each input batch that
/// starts a new partition releases everything before it.
struct PartitionWindowStream {
    schema: SchemaRef,
    input_schema: SchemaRef,
    /// `None` once the input has ended.
    input: Option<SendableRecordBatchStream>,
    window_expr: Vec<Arc<dyn WindowExpr>>,
    partition_by: Vec<PhysicalSortExpr>,
    /// Rows of the partition not yet known to be complete (all one partition).
    pending: Vec<RecordBatch>,
    /// The partition key of the last pending row, as one-row arrays.
    pending_last: Vec<ArrayRef>,
    metrics: BaselineMetrics,
}

impl PartitionWindowStream {
    /// Takes `batch` in; returns the rows whose partitions are now complete, if any.
    fn push(&mut self, batch: RecordBatch) -> Result<Option<RecordBatch>> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(None);
        }
        if self.partition_by.is_empty() {
            self.pending.push(batch);
            return Ok(None);
        }
        let keys = self
            .partition_by
            .iter()
            .map(|key| key.expr.evaluate(&batch)?.into_array(rows))
            .collect::<Result<Vec<_>>>()?;
        // A partition starts at the batch's first row if its key is not the last pending row's.
        let continues = self.pending_last.is_empty() || same_key(&self.pending_last, 0, &keys, 0)?;
        let ranges = key_ranges(rows, &keys)?;
        // Where the batch's last partition starts.
        let last_start = ranges.last().map_or(0, |range| range.start);
        self.pending_last = keys.iter().map(|key| key.slice(rows - 1, 1)).collect();
        let starts_new = ranges.len() > 1 || !continues;
        if !starts_new {
            self.pending.push(batch);
            return Ok(None);
        }
        let mut complete = std::mem::take(&mut self.pending);
        if last_start > 0 {
            complete.push(batch.slice(0, last_start));
        }
        self.pending
            .push(batch.slice(last_start, rows - last_start));
        self.evaluate(&complete)
    }

    /// The window columns over `batches`, which hold whole partitions only.
    fn evaluate(&self, batches: &[RecordBatch]) -> Result<Option<RecordBatch>> {
        let batch = concat_batches(&self.input_schema, batches)?;
        if batch.num_rows() == 0 {
            return Ok(None);
        }
        let keys = self
            .partition_by
            .iter()
            .map(|key| key.expr.evaluate(&batch)?.into_array(batch.num_rows()))
            .collect::<Result<Vec<_>>>()?;
        let ranges = key_ranges(batch.num_rows(), &keys)?;
        let mut results: Vec<Vec<ArrayRef>> =
            vec![Vec::with_capacity(ranges.len()); self.window_expr.len()];
        for range in ranges {
            let part = batch.slice(range.start, range.end - range.start);
            for (expr, column) in self.window_expr.iter().zip(results.iter_mut()) {
                column.push(expr.evaluate(&part)?);
            }
        }
        let mut columns = batch.columns().to_vec();
        for parts in results {
            columns.push(if parts.len() == 1 {
                parts.into_iter().next().expect("one part")
            } else {
                concat(&parts.iter().map(AsRef::as_ref).collect::<Vec<_>>())?
            });
        }
        Ok(Some(RecordBatch::try_new(
            Arc::clone(&self.schema),
            columns,
        )?))
    }
}

/// Whether row `a` of `left` and row `b` of `right` have the same key (nulls equal nulls).
fn same_key(left: &[ArrayRef], a: usize, right: &[ArrayRef], b: usize) -> Result<bool> {
    for (left, right) in left.iter().zip(right) {
        if !make_comparator(left, right, SortOptions::default())?(a, b).is_eq() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The runs of equal keys over `rows` rows sorted on `keys` (so each key's rows are
/// contiguous), found by galloping from each run's first row: a few comparisons a partition,
/// where comparing every row with the next was 1.3% of the features' CPU.
fn key_ranges(rows: usize, keys: &[ArrayRef]) -> Result<Vec<Range<usize>>> {
    let compare = keys
        .iter()
        .map(|key| make_comparator(key, key, SortOptions::default()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut ranges = Vec::new();
    let mut start = 0;
    while start < rows {
        let end = crate::util::search::run_end(start + 1, rows, |row| {
            compare.iter().any(|compare| compare(start, row).is_ne())
        });
        ranges.push(start..end);
        start = end;
    }
    Ok(ranges)
}

impl PartitionWindowStream {
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<RecordBatch>>> {
        loop {
            let Some(input) = self.input.as_mut() else {
                return Poll::Ready(None);
            };
            let polled = match input.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(polled) => polled,
            };
            let compute = self.metrics.elapsed_compute().clone();
            let timer = compute.timer();
            let output = match polled {
                Some(Ok(batch)) => self.push(batch),
                Some(Err(error)) => Err(error),
                None => {
                    // The last partition is complete once the input ends.
                    self.input = None;
                    let rest = std::mem::take(&mut self.pending);
                    self.evaluate(&rest)
                }
            };
            timer.done();
            match output {
                Ok(Some(batch)) => return Poll::Ready(Some(Ok(batch))),
                Ok(None) => continue,
                Err(error) => {
                    self.input = None;
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
    }
}

impl Stream for PartitionWindowStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let poll = self.poll_inner(cx);
        self.metrics.record_poll(poll)
    }
}

impl RecordBatchStream for PartitionWindowStream {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::datasource::MemTable;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// A session with asterflow's functions, small batches (so partitions straddle them) and
    /// three partitions, with or without the rule.
    fn context(streaming: bool) -> SessionContext {
        let config = SessionConfig::new()
            .with_target_partitions(3)
            .with_batch_size(5);
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features();
        if streaming {
            state = state.with_physical_optimizer_rule(Arc::new(PartitionStreaming));
        }
        let context = SessionContext::new_with_state(state.build());
        for function in crate::sql::udwf::functions() {
            context.register_udwf(function);
        }
        context
    }

    /// Rows in a scrambled order: symbols of uneven lengths (one of a single row, one null),
    /// two groups each, values with holes, spread over several small input batches.
    fn table(rows: usize) -> Arc<MemTable> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("sym", DataType::Utf8, true),
            Field::new("grp", DataType::Int64, false),
            Field::new("t", DataType::Int64, false),
            Field::new("x", DataType::Float64, true),
        ]));
        let mut rng = crate::util::rng::Rng::new(7);
        let (mut sym, mut grp, mut t, mut x) = (vec![], vec![], vec![], vec![]);
        for i in 0..rows {
            let pick = rng.next_u64() % 7;
            sym.push(match pick {
                _ if i == 3 => Some("LONE".to_owned()),
                0 => None,
                6 => Some("A".to_owned()),
                k => Some(format!("S{}", k % 4)),
            });
            grp.push((rng.next_u64() % 2) as i64);
            t.push(i as i64);
            x.push((!rng.next_u64().is_multiple_of(9)).then(|| rng.normal() * 10.0 + 100.0));
        }
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(sym)),
                Arc::new(Int64Array::from(grp)),
                Arc::new(Int64Array::from(t)),
                Arc::new(Float64Array::from(x)),
            ],
        )
        .unwrap();
        let batches: Vec<RecordBatch> = (0..rows)
            .step_by(13)
            .map(|start| batch.slice(start, 13.min(rows - start)))
            .collect();
        let mut partitions: Vec<Vec<RecordBatch>> =
            batches.chunks(4).map(<[RecordBatch]>::to_vec).collect();
        if partitions.is_empty() {
            partitions.push(vec![]);
        }
        Arc::new(MemTable::try_new(schema, partitions).unwrap())
    }

    async fn run(streaming: bool, rows: usize, sql: &str) -> (String, String) {
        let context = context(streaming);
        context.register_table("data", table(rows)).unwrap();
        let frame = context.sql(sql).await.unwrap();
        let plan = frame.clone().create_physical_plan().await.unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string();
        let batches = frame.collect().await.unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        (shown, text)
    }

    #[tokio::test]
    async fn partition_by_partition_gives_the_same_rows_as_whole_input() {
        let queries = [
            // One key; asterflow functions with LAG, ROW_NUMBER and a sliding SUM beside them.
            "SELECT sym, t, ema(x, 3) OVER w AS e, rolling_std(x, 4) OVER w AS s, LAG(x) OVER w AS l, \
             ROW_NUMBER() OVER w AS r, SUM(x) OVER (PARTITION BY sym ORDER BY t ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS m \
             FROM data WINDOW w AS (PARTITION BY sym ORDER BY t) ORDER BY sym, t",
            // Two keys.
            "SELECT sym, grp, t, wilder(x, 2) OVER (PARTITION BY grp, sym ORDER BY t) AS w \
             FROM data ORDER BY sym, grp, t",
            // A whole-partition aggregate with many small partitions.
            "SELECT t, sym, AVG(x) OVER (PARTITION BY sym) AS a, forward_value(x, 2) OVER (PARTITION BY sym ORDER BY t) AS f \
             FROM data ORDER BY t",
            // No PARTITION BY: one partition, the whole input.
            "SELECT t, ema(x, 4) OVER (ORDER BY t) AS e FROM data ORDER BY t",
        ];
        for sql in queries {
            let (plain_plan, plain) = run(false, 200, sql).await;
            let (plan, streamed) = run(true, 200, sql).await;
            assert!(plain_plan.contains("WindowAggExec"), "{plain_plan}");
            assert!(plan.contains("PartitionWindowExec"), "{plan}");
            assert!(!plan.contains(" WindowAggExec"), "{plan}");
            assert_eq!(streamed, plain, "{sql}");
        }
        // The single-row partition and the null key are there, with their own values.
        let (_, streamed) = run(true, 200, queries[0]).await;
        assert!(streamed.contains("| LONE "), "{streamed}");
        let null_key = |line: &&str| line.split('|').nth(1).map(str::trim) == Some("");
        assert!(streamed.lines().filter(null_key).count() > 10, "{streamed}");
    }

    #[tokio::test]
    async fn partitions_leave_as_they_close() {
        // Five symbols in one input partition: the window emits before its input ends, a
        // batch per closed stretch, where WindowAggExec emits one batch at the end.
        let context = context(true);
        context.register_table("data", table(200)).unwrap();
        let frame = context
            .sql("SELECT sym, t, ema(x, 3) OVER (PARTITION BY sym ORDER BY t) AS e FROM data")
            .await
            .unwrap();
        let plan = frame.create_physical_plan().await.unwrap();
        datafusion::physical_plan::collect(Arc::clone(&plan), context.task_ctx())
            .await
            .unwrap();
        let mut found = Vec::new();
        plan.apply(|node| {
            if node.name() == "PartitionWindowExec" {
                let metrics = node.metrics().unwrap();
                found.push((
                    metrics.output_rows().unwrap(),
                    metrics
                        .sum(|metric| metric.value().name() == "output_batches")
                        .unwrap()
                        .as_usize(),
                ));
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        assert_eq!(found.len(), 1);
        let (rows, batches) = found[0];
        assert_eq!(rows, 200);
        assert!(batches >= 5, "{batches} batches");
    }

    #[tokio::test]
    async fn empty_and_single_row_inputs() {
        let sql = "SELECT sym, t, ema(x, 3) OVER (PARTITION BY sym ORDER BY t) AS e FROM data ORDER BY sym, t";
        for rows in [0, 1] {
            let (_, plain) = run(false, rows, sql).await;
            let (_, streamed) = run(true, rows, sql).await;
            assert_eq!(streamed, plain, "{rows} rows");
        }
    }
}
