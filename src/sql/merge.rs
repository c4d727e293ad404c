//! Merging sorted partitions into one stream, passing long runs on as slices.
//!
//! DataFusion's `SortPreservingMergeExec` gathers every output row from its input batches
//! through an index (`interleave`), one batch of 8192 rows at a time, however the partitions
//! interleave. The features end with such a merge of per-symbol rows fifty columns wide, where
//! each symbol's rows are a single run of one partition: the gather copied every row, 5% of
//! the stage's compute. [`RunMerges`] replaces each merge without a row limit by a
//! [`RunMergeExec`]: it finds each run of rows one partition contributes before another's
//! next row (galloping over the batch's sort keys in arrow's row format), gives a run of at
//! least [`LONG_RUN`] rows as a zero-copy slice of its batch, and gathers shorter runs as the
//! stock merge does. The rows come in the same order; rows with equal keys come from the
//! lower partition first.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arrow::array::RecordBatch;
use arrow::compute::interleave_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::{Result, internal_err};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalSortExpr;
use datafusion::physical_plan::common::spawn_buffered;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet};
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties,
};
use futures::{Stream, StreamExt};

/// A run at least this long is given as a slice of its batch; shorter ones are gathered.
pub const LONG_RUN: usize = 1024;

/// The physical optimizer rule: every `SortPreservingMergeExec` without a fetch (row limit)
/// becomes a [`RunMergeExec`].
#[derive(Debug, Default)]
pub struct RunMerges;

replacing_rule!(
    RunMerges,
    "run_merges",
    SortPreservingMergeExec,
    |merge, node| {
        let replaced: Arc<dyn ExecutionPlan> = Arc::new(RunMergeExec::new(Arc::clone(node)));
        merge.fetch().is_none().then_some(replaced)
    }
);

/// A `SortPreservingMergeExec` whose long runs are given as slices (see the module). The
/// wrapped plan supplies everything the planner asks; only the execution differs.
#[derive(Debug)]
pub struct RunMergeExec {
    inner: Arc<dyn ExecutionPlan>,
    metrics: ExecutionPlanMetricsSet,
}

impl RunMergeExec {
    fn new(inner: Arc<dyn ExecutionPlan>) -> Self {
        Self {
            inner,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    fn merge(&self) -> Result<&SortPreservingMergeExec> {
        super::stock(&self.inner)
    }
}

impl DisplayAs for RunMergeExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match self.merge() {
            Ok(merge) => write!(f, "RunMergeExec: [{}]", merge.expr()),
            Err(_) => write!(f, "RunMergeExec"),
        }
    }
}

impl ExecutionPlan for RunMergeExec {
    planned_as_inner!(SortPreservingMergeExec);

    fn name(&self) -> &str {
        "RunMergeExec"
    }

    fn required_input_ordering(
        &self,
    ) -> Vec<Option<datafusion::physical_expr::OrderingRequirements>> {
        self.inner.required_input_ordering()
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("a merge has one partition, not {partition}");
        }
        let merge = self.merge()?;
        let input = merge.input();
        let partitions = input.output_partitioning().partition_count();
        if partitions == 1 {
            return input.execute(0, context);
        }
        // Each partition runs on a task of its own, one batch ahead, as the stock merge's.
        let inputs = (0..partitions)
            .map(|partition| {
                Ok(spawn_buffered(
                    input.execute(partition, Arc::clone(&context))?,
                    1,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let keys: Vec<PhysicalSortExpr> = merge.expr().iter().cloned().collect();
        let schema = input.schema();
        let fields = keys
            .iter()
            .map(|key| {
                Ok(SortField::new_with_options(
                    key.expr.data_type(&schema)?,
                    key.options,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::pin(RunMergeStream {
            schema: self.schema(),
            heads: (0..partitions).map(|_| None).collect(),
            ended: vec![false; partitions],
            inputs,
            keys,
            converter: RowConverter::new(fields)?,
            held: Vec::new(),
            gathered: Vec::new(),
            ready: VecDeque::new(),
            batch_size: context.session_config().batch_size(),
            metrics: BaselineMetrics::new(&self.metrics, partition),
        }))
    }
}

/// A partition's current batch, its sort keys as rows, the next row not yet merged, and the
/// batch's place in [`RunMergeStream::held`].
struct Head {
    batch: RecordBatch,
    rows: Rows,
    at: usize,
    held: usize,
}

struct RunMergeStream {
    schema: SchemaRef,
    inputs: Vec<SendableRecordBatchStream>,
    /// Each partition's current batch; `None` when one is needed (or it has ended).
    heads: Vec<Option<Head>>,
    ended: Vec<bool>,
    keys: Vec<PhysicalSortExpr>,
    converter: RowConverter,
    /// The batches the gathered rows come from.
    held: Vec<RecordBatch>,
    /// Rows of short runs, as (batch in `held`, row), in output order.
    gathered: Vec<(usize, usize)>,
    /// Output batches in order.
    ready: VecDeque<RecordBatch>,
    batch_size: usize,
    metrics: BaselineMetrics,
}

impl RunMergeStream {
    /// Polls every partition without a current batch; `Pending` if any has none ready.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let mut waiting = false;
        for partition in 0..self.inputs.len() {
            while self.heads[partition].is_none() && !self.ended[partition] {
                match self.inputs[partition].poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(batch))) if batch.num_rows() == 0 => {}
                    Poll::Ready(Some(Ok(batch))) => {
                        let columns = self
                            .keys
                            .iter()
                            .map(|key| key.expr.evaluate(&batch)?.into_array(batch.num_rows()))
                            .collect::<Result<Vec<_>>>()?;
                        let rows = self.converter.convert_columns(&columns)?;
                        self.held.push(batch.clone());
                        self.heads[partition] = Some(Head {
                            batch,
                            rows,
                            at: 0,
                            held: self.held.len() - 1,
                        });
                    }
                    Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(error)),
                    Poll::Ready(None) => self.ended[partition] = true,
                    Poll::Pending => {
                        waiting = true;
                        break;
                    }
                }
            }
        }
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    /// The gathered rows as one batch, queued; the held batches other than the current
    /// ones are let go.
    fn flush(&mut self) -> Result<()> {
        if !self.gathered.is_empty() {
            let held: Vec<&RecordBatch> = self.held.iter().collect();
            self.ready
                .push_back(interleave_record_batch(&held, &self.gathered)?);
            self.gathered.clear();
        }
        self.held.clear();
        for head in self.heads.iter_mut().flatten() {
            self.held.push(head.batch.clone());
            head.held = self.held.len() - 1;
        }
        Ok(())
    }

    /// Merges the current batches until one of them is used up (or every input has ended).
    fn step(&mut self) -> Result<()> {
        // The partition whose next row comes first: the lowest key, the lowest partition
        // among equal ones.
        let mut first: Option<usize> = None;
        for (partition, head) in self.heads.iter().enumerate() {
            let Some(head) = head else { continue };
            let better = first.is_none_or(|best| {
                let best = self.heads[best].as_ref().map(|h| h.rows.row(h.at));
                best.is_some_and(|best| head.rows.row(head.at) < best)
            });
            if better {
                first = Some(partition);
            }
        }
        let Some(chosen) = first else {
            return self.flush();
        };
        let head = self.heads[chosen].as_ref().expect("chosen among the heads");
        // The run ends before the first row that must wait for another partition's next
        // row: a greater one, or an equal one where that partition is lower.
        let mut end = head.batch.num_rows();
        for (partition, other) in self.heads.iter().enumerate() {
            let Some(other) = other.as_ref().filter(|_| partition != chosen) else {
                continue;
            };
            let next = other.rows.row(other.at);
            let waits = |row: usize| {
                let row = head.rows.row(row);
                row > next || (row == next && partition < chosen)
            };
            end = end.min(crate::util::search::run_end(head.at, end, waits));
        }
        let (start, length) = (head.at, end - head.at);
        if length >= LONG_RUN {
            let slice = head.batch.slice(start, length);
            self.flush()?;
            self.ready.push_back(slice);
        } else {
            let held = head.held;
            self.gathered.extend((start..end).map(|row| (held, row)));
            if self.gathered.len() >= self.batch_size {
                self.flush()?;
            }
        }
        let head = self.heads[chosen].as_mut().expect("chosen among the heads");
        head.at = end;
        if head.at == head.batch.num_rows() {
            self.heads[chosen] = None;
        }
        Ok(())
    }
}

impl Stream for RunMergeStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(batch) = self.ready.pop_front() {
                return self.metrics.record_poll(Poll::Ready(Some(Ok(batch))));
            }
            if self.ended.iter().all(|ended| *ended) && self.heads.iter().all(Option::is_none) {
                if self.gathered.is_empty() {
                    return Poll::Ready(None);
                }
                if let Err(error) = self.flush() {
                    return Poll::Ready(Some(Err(error)));
                }
                continue;
            }
            if let Err(error) = futures::ready!(self.fill(cx)) {
                return Poll::Ready(Some(Err(error)));
            }
            let elapsed = self.metrics.elapsed_compute().clone();
            let timer = elapsed.timer();
            let stepped = self.step();
            timer.done();
            if let Err(error) = stepped {
                return Poll::Ready(Some(Err(error)));
            }
        }
    }
}

impl RecordBatchStream for RunMergeStream {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use datafusion::config::ConfigOptions;
    use datafusion::physical_optimizer::PhysicalOptimizerRule;
    use datafusion::prelude::{SessionContext, col};

    const ROWS: usize = 40_000;

    /// Rows 0 to 39999 (`i`), keyed by (`s`: a symbol every 5000 rows, `t`: the row within
    /// it) so that the key order is `i`'s, spread over three partitions by `partition(i)` and
    /// cut into batches of 3000 rows.
    fn partitions(partition: impl Fn(usize) -> usize) -> (SchemaRef, Vec<Vec<RecordBatch>>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("s", DataType::Utf8, false),
            Field::new("t", DataType::Int64, false),
            Field::new("i", DataType::Int64, false),
        ]));
        let mut rows: Vec<Vec<usize>> = vec![Vec::new(); 3];
        for i in 0..ROWS {
            rows[partition(i)].push(i);
        }
        let batch = |chunk: &[usize]| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        chunk.iter().map(|i| format!("S{}", i / 5000)),
                    )),
                    Arc::new(Int64Array::from_iter_values(
                        chunk.iter().map(|&i| (i % 5000) as i64),
                    )),
                    Arc::new(Int64Array::from_iter_values(
                        chunk.iter().map(|&i| i as i64),
                    )),
                ],
            )
            .unwrap()
        };
        let partitions = rows
            .iter()
            .map(|rows| rows.chunks(3000).map(batch).collect())
            .collect();
        (schema, partitions)
    }

    /// [`partitions`] as table `t`, each partition declared sorted by the key.
    fn table(partition: impl Fn(usize) -> usize) -> datafusion::datasource::MemTable {
        let (schema, partitions) = partitions(partition);
        datafusion::datasource::MemTable::try_new(schema, partitions)
            .unwrap()
            .with_sort_order(vec![vec![
                col("s").sort(true, false),
                col("t").sort(true, false),
            ]])
    }

    /// The batches and the physical plan of `sql` over `t`, in a local session (with the rule)
    /// or a node's (without).
    async fn run(
        local: bool,
        table: datafusion::datasource::MemTable,
        sql: &str,
    ) -> (Vec<RecordBatch>, String) {
        let config = crate::sql::config(3);
        let state = if local {
            crate::sql::state(config)
        } else {
            crate::sql::state_with_runtime(config, None)
        };
        let context = SessionContext::new_with_state(state);
        context.register_table("t", Arc::new(table)).unwrap();
        let frame = context.sql(sql).await.unwrap();
        let plan = frame.clone().create_physical_plan().await.unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(true)
            .to_string();
        (frame.collect().await.unwrap(), shown)
    }

    fn column(batches: &[RecordBatch], name: &str) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|batch| {
                let values = batch.column_by_name(name).unwrap();
                values.as_primitive::<Int64Type>().values().to_vec()
            })
            .collect()
    }

    /// A partition for each row such that runs of 1 to 2999 rows alternate at random.
    fn random_runs() -> impl Fn(usize) -> usize {
        let mut owner = vec![0; ROWS];
        let (mut state, mut at) = (0x2545_f491_4f6c_dd1du64, 0);
        while at < ROWS {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let length = 1 + (state % 2999) as usize;
            let partition = (state >> 32) as usize % 3;
            for slot in owner.iter_mut().skip(at).take(length) {
                *slot = partition;
            }
            at += length;
        }
        move |i| owner[i]
    }

    #[tokio::test]
    async fn run_merges_give_the_rows_in_key_order() {
        let sql = "SELECT s, t, i FROM t ORDER BY s, t";
        type Spread = Box<dyn Fn(usize) -> usize>;
        let cases: [(&str, Spread); 3] = [
            ("whole symbols", Box::new(|i| (i / 5000) % 3)),
            ("row by row", Box::new(|i| i % 3)),
            ("random runs", Box::new(random_runs())),
        ];
        for (name, partition) in cases {
            let (ours, plan) = run(true, table(&partition), sql).await;
            let (theirs, stock_plan) = run(false, table(&partition), sql).await;
            assert!(plan.contains("RunMergeExec"), "{name}: {plan}");
            assert!(
                stock_plan.contains("SortPreservingMergeExec"),
                "{stock_plan}"
            );
            let expected: Vec<i64> = (0..ROWS as i64).collect();
            assert_eq!(column(&ours, "i"), expected, "{name}");
            assert_eq!(column(&theirs, "i"), expected, "{name}");
            let schema = ours[0].schema();
            assert_eq!(
                arrow::compute::concat_batches(&schema, &ours).unwrap(),
                arrow::compute::concat_batches(&schema, &theirs).unwrap(),
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn equal_keys_come_from_the_lower_partition_first() {
        // Keyed by `t` alone: each t in 0..5000 is in eight symbols, spread over the
        // partitions.
        let sql = "SELECT t, i FROM t ORDER BY t";
        let partition = |i: usize| (i / 5000) % 3;
        let (ours, plan) = run(true, table(partition), sql).await;
        assert!(plan.contains("RunMergeExec"), "{plan}");
        let (t, i) = (column(&ours, "t"), column(&ours, "i"));
        assert_eq!(t.len(), ROWS);
        for at in 1..t.len() {
            assert!(t[at - 1] <= t[at], "row {at}");
            if t[at - 1] == t[at] {
                let (before, after) = (i[at - 1] as usize, i[at] as usize);
                assert!(partition(before) <= partition(after), "row {at}");
            }
        }
        let mut seen = i.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..ROWS as i64).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_merge_with_a_limit_stays_as_it_is() {
        let (got, plan) = run(
            true,
            table(|i| i % 3),
            "SELECT i FROM t ORDER BY s, t LIMIT 7",
        )
        .await;
        assert!(!plan.contains("RunMergeExec"), "{plan}");
        assert_eq!(column(&got, "i"), (0..7).collect::<Vec<_>>());
    }

    /// Where a batch's `i` values lie in memory.
    fn address(batch: &RecordBatch) -> usize {
        let values = batch.column_by_name("i").unwrap();
        values.as_primitive::<Int64Type>().values().as_ptr() as usize
    }

    #[tokio::test]
    async fn long_runs_are_slices_of_their_batches_and_short_ones_are_gathered() {
        let merged = |partition: fn(usize) -> usize| {
            let (schema, partitions) = partitions(partition);
            let source: Arc<dyn ExecutionPlan> =
                datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
                    &partitions,
                    Arc::clone(&schema),
                    None,
                )
                .unwrap();
            let key = |name: &str, at: usize| PhysicalSortExpr {
                expr: Arc::new(datafusion::physical_expr::expressions::Column::new(
                    name, at,
                )),
                options: arrow::compute::SortOptions::default(),
            };
            let ordering =
                datafusion::physical_expr::LexOrdering::new(vec![key("s", 0), key("t", 1)])
                    .unwrap();
            let merge: Arc<dyn ExecutionPlan> =
                Arc::new(SortPreservingMergeExec::new(ordering, source));
            let plan = RunMerges
                .optimize(merge, &ConfigOptions::default())
                .unwrap();
            (plan, partitions)
        };
        let collect =
            |plan| datafusion::physical_plan::collect(plan, Arc::new(TaskContext::default()));
        // Whole symbols: partition 0's first batch (rows 0 to 2999) is the first run, passed
        // on as it is; its second (rows 3000 to 4999, then 15000 to 15999) gives a slice of
        // its first 2000 rows.
        let (plan, partitions) = merged(|i| (i / 5000) % 3);
        let ours = collect(plan).await.unwrap();
        assert_eq!(ours[0].num_rows(), 3000);
        assert_eq!(address(&ours[0]), address(&partitions[0][0]));
        assert_eq!(ours[1].num_rows(), 2000);
        assert_eq!(address(&ours[1]), address(&partitions[0][1]));
        // Row by row: runs of one row, gathered into batches of 8192 rows of their own.
        let (plan, partitions) = merged(|i| i % 3);
        let ours = collect(plan).await.unwrap();
        assert_eq!(ours[0].num_rows(), 8192);
        let inputs = partitions.iter().flatten();
        for batch in inputs {
            let start = address(batch);
            assert!(!(start..start + batch.num_rows() * 8).contains(&address(&ours[0])));
        }
    }
}
