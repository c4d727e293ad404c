//! Filters that keep long runs of rows pass them on as slices, not copies.
//!
//! DataFusion's `FilterExec` copies every kept row of every column into new arrays, however
//! the kept rows lie. The features drop each symbol's warm-up bars last, after every window:
//! a filter that keeps 98% of each batch, a prefix cut off, over fifty columns; its copy was
//! 8% of the stage's compute. [`RunFilters`] replaces each `FilterExec` without a row limit by
//! a [`RunFilterExec`], which evaluates the same predicate and, where the kept rows are at
//! least half of a batch and lie in a few long runs, gives each run as a zero-copy slice of
//! the batch. Other batches are filtered and coalesced as `FilterExec` does. The rows and
//! their order are the filter's; only where batches begin and end may differ.
//!
//! A slice keeps its whole batch's buffers alive, hence the half: a few kept rows of a large
//! batch are copied, so that they do not hold the rest in memory downstream.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{BatchCoalescer, prep_null_mask_filter};
use arrow::datatypes::SchemaRef;
use datafusion::common::{Result, internal_datafusion_err};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use futures::{Stream, StreamExt};

/// A run at least this long is given as a slice of its batch (shorter ones are copied into
/// the coalescer's batches); a batch whose runs are shorter on average is filtered.
const LONG_RUN: usize = 1024;

/// The physical optimizer rule: every `FilterExec` without a fetch (row limit) becomes a
/// [`RunFilterExec`].
#[derive(Debug, Default)]
pub struct RunFilters;

replacing_rule!(RunFilters, "run_filters", FilterExec, |filter, node| {
    let replaced: Arc<dyn ExecutionPlan> = Arc::new(RunFilterExec::new(Arc::clone(node)));
    filter.fetch().is_none().then_some(replaced)
});

/// A `FilterExec` whose long runs of kept rows are given as slices (see the module). The
/// wrapped plan supplies everything the planner asks; only the execution differs.
#[derive(Debug)]
pub struct RunFilterExec {
    inner: Arc<dyn ExecutionPlan>,
    metrics: ExecutionPlanMetricsSet,
}

impl RunFilterExec {
    fn new(inner: Arc<dyn ExecutionPlan>) -> Self {
        Self {
            inner,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    fn filter(&self) -> Result<&FilterExec> {
        super::stock(&self.inner)
    }
}

impl DisplayAs for RunFilterExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match self.filter() {
            Ok(filter) => write!(f, "RunFilterExec: {}", filter.predicate()),
            Err(_) => write!(f, "RunFilterExec"),
        }
    }
}

impl ExecutionPlan for RunFilterExec {
    planned_as_inner!(FilterExec);

    fn name(&self) -> &str {
        "RunFilterExec"
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let filter = self.filter()?;
        let input = filter.input().execute(partition, context)?;
        let schema = self.schema();
        // As `FilterExec` coalesces: batches of its size, a batch over half of it passed on.
        let batch_size = filter.batch_size();
        let coalescer = BatchCoalescer::new(Arc::clone(&schema), batch_size)
            .with_biggest_coalesce_batch_size(Some(batch_size / 2));
        Ok(Box::pin(RunFilterStream {
            schema,
            input: Some(input),
            predicate: Arc::clone(filter.predicate()),
            projection: filter.projection().as_ref().map(|p| p.to_vec()),
            coalescer,
            ready: VecDeque::new(),
            metrics: BaselineMetrics::new(&self.metrics, partition),
        }))
    }
}

struct RunFilterStream {
    schema: SchemaRef,
    /// `None` once the input has ended.
    input: Option<SendableRecordBatchStream>,
    predicate: Arc<dyn PhysicalExpr>,
    projection: Option<Vec<usize>>,
    coalescer: BatchCoalescer,
    /// Output batches in order, ahead of the coalescer's (long runs, and what was buffered
    /// before each).
    ready: VecDeque<RecordBatch>,
    metrics: BaselineMetrics,
}

impl RunFilterStream {
    /// Filters `batch` into the coalescer.
    fn push(&mut self, batch: RecordBatch) -> Result<()> {
        let mask = self
            .predicate
            .evaluate(&batch)?
            .into_array(batch.num_rows())?;
        let mask = mask
            .as_boolean_opt()
            .ok_or_else(|| internal_datafusion_err!("a filter's predicate is not boolean"))?;
        let batch = match &self.projection {
            Some(projection) => batch.project(projection)?,
            None => batch,
        };
        // Null is not true: a null row is dropped.
        let kept: std::borrow::Cow<'_, BooleanArray> = match mask.null_count() {
            0 => std::borrow::Cow::Borrowed(mask),
            _ => std::borrow::Cow::Owned(prep_null_mask_filter(mask)),
        };
        let kept = kept.values();
        let count = kept.count_set_bits();
        let runs = kept.set_slices().count();
        if count * 2 < batch.num_rows() || runs * LONG_RUN > count {
            self.coalescer
                .push_batch_with_filter(batch, &BooleanArray::new(kept.clone(), None))?;
            return Ok(());
        }
        for (start, end) in kept.set_slices() {
            let run = batch.slice(start, end - start);
            if run.num_rows() < LONG_RUN {
                self.coalescer.push_batch(run)?;
                continue;
            }
            // What is buffered goes first, then the run as it is.
            self.coalescer.finish_buffered_batch()?;
            while let Some(earlier) = self.coalescer.next_completed_batch() {
                self.ready.push_back(earlier);
            }
            self.ready.push_back(run);
        }
        Ok(())
    }
}

impl Stream for RunFilterStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            // Whatever the coalescer holds came after what is ready.
            if let Some(batch) = self
                .ready
                .pop_front()
                .or_else(|| self.coalescer.next_completed_batch())
            {
                let poll = Poll::Ready(Some(Ok(batch)));
                return self.metrics.record_poll(poll);
            }
            let Some(input) = self.input.as_mut() else {
                return Poll::Ready(None);
            };
            match futures::ready!(input.poll_next_unpin(cx)) {
                Some(Ok(batch)) => {
                    let elapsed = self.metrics.elapsed_compute().clone();
                    let timer = elapsed.timer();
                    let pushed = self.push(batch);
                    timer.done();
                    if let Err(error) = pushed {
                        self.input = None;
                        return Poll::Ready(Some(Err(error)));
                    }
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => {
                    self.input = None;
                    self.coalescer.finish_buffered_batch()?;
                }
            }
        }
    }
}

impl RecordBatchStream for RunFilterStream {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::config::ConfigOptions;
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_optimizer::PhysicalOptimizerRule;
    use datafusion::prelude::SessionContext;

    /// Batches of 3000, 20000, 500 and 9000 rows of (`i`: 0, 1, ... across them, `s`: a
    /// symbol changing every 7000 rows, `x`: null every 11th row).
    fn batches() -> Vec<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
            Field::new("x", DataType::Float64, true),
        ]));
        let mut start = 0i64;
        [3000i64, 20_000, 500, 9000]
            .into_iter()
            .map(|rows| {
                let i: Vec<i64> = (start..start + rows).collect();
                start += rows;
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(Int64Array::from(i.clone())),
                        Arc::new(StringArray::from_iter_values(
                            i.iter().map(|i| format!("S{}", i / 7000)),
                        )),
                        Arc::new(Float64Array::from_iter(
                            i.iter().map(|&i| (i % 11 != 0).then_some(i as f64 / 2.0)),
                        )),
                    ],
                )
                .unwrap()
            })
            .collect()
    }

    /// A local session (with the rule) and a node's (without), over one partition of
    /// [`batches`] as table `t`.
    fn sessions() -> (SessionContext, SessionContext) {
        let config = || crate::sql::config(1);
        let ours = SessionContext::new_with_state(crate::sql::state(config()));
        let stock = SessionContext::new_with_state(crate::sql::state_with_runtime(config(), None));
        for context in [&ours, &stock] {
            let batches = batches();
            let table =
                datafusion::datasource::MemTable::try_new(batches[0].schema(), vec![batches])
                    .unwrap();
            context.register_table("t", Arc::new(table)).unwrap();
        }
        (ours, stock)
    }

    async fn run(context: &SessionContext, sql: &str) -> (Vec<RecordBatch>, String) {
        let frame = context.sql(sql).await.unwrap();
        let plan = frame.clone().create_physical_plan().await.unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(true)
            .to_string();
        (frame.collect().await.unwrap(), shown)
    }

    #[tokio::test]
    async fn run_filters_give_the_filters_rows_in_order() {
        let (ours, stock) = sessions();
        for (sql, expected) in [
            // Each symbol's first 300 rows dropped (a warm-up), across batch boundaries.
            ("SELECT * FROM t WHERE i % 7000 >= 300", 32_500 - 5 * 300),
            // One range inside one batch, and one over three.
            ("SELECT i, x FROM t WHERE i BETWEEN 5000 AND 15000", 10_001),
            ("SELECT s FROM t WHERE i >= 2500 AND i < 24000", 21_500),
            // Short runs: every other row, then runs of ten.
            ("SELECT * FROM t WHERE i % 2 = 0", 16_250),
            ("SELECT * FROM t WHERE i % 20 < 10", 16_250),
            // Few rows kept, all, none; a predicate null for some rows (null is not true).
            ("SELECT * FROM t WHERE i % 1000 = 7", 33),
            ("SELECT * FROM t WHERE i >= 0", 32_500),
            ("SELECT * FROM t WHERE i < 0", 0),
            // x > 100 from i = 201 on, less the 2936 nulls among those rows.
            ("SELECT i FROM t WHERE x > 100.0", 32_299 - 2936),
        ] {
            let (got, plan) = run(&ours, sql).await;
            let (want, stock_plan) = run(&stock, sql).await;
            assert!(plan.contains("RunFilterExec"), "{sql}: {plan}");
            assert!(!stock_plan.contains("RunFilterExec"), "{stock_plan}");
            let rows: usize = got.iter().map(RecordBatch::num_rows).sum();
            assert_eq!(rows, expected, "{sql}");
            if let Some(first) = got.first() {
                let schema = first.schema();
                assert_eq!(
                    arrow::compute::concat_batches(&schema, &got).unwrap(),
                    arrow::compute::concat_batches(&schema, &want).unwrap(),
                    "{sql}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_filter_with_a_limit_stays_as_it_is() {
        let (ours, _) = sessions();
        let (got, plan) = run(&ours, "SELECT i FROM t WHERE i % 7000 >= 300 LIMIT 5").await;
        assert_eq!(got.iter().map(RecordBatch::num_rows).sum::<usize>(), 5);
        assert!(!plan.contains("RunFilterExec"), "{plan}");
    }

    /// Where `array`'s first value lies in memory.
    fn address(batch: &RecordBatch) -> usize {
        let values = batch
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>();
        values.values().as_ptr() as usize
    }

    #[tokio::test]
    async fn long_runs_are_slices_of_their_batch_and_few_rows_are_copied() {
        let input = batches();
        let source: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(std::slice::from_ref(&input), input[0].schema(), None)
                .unwrap();
        let plan = |predicate: &str| {
            let context = SessionContext::new();
            let schema = input[0].schema();
            let frame = datafusion::common::DFSchema::try_from(schema.as_ref().clone()).unwrap();
            let expression = context.parse_sql_expr(predicate, &frame).unwrap();
            let predicate = context.create_physical_expr(expression, &frame).unwrap();
            let filter: Arc<dyn ExecutionPlan> =
                Arc::new(FilterExec::try_new(predicate, Arc::clone(&source)).unwrap());
            RunFilters
                .optimize(filter, &ConfigOptions::default())
                .unwrap()
        };
        let collect =
            |plan| datafusion::physical_plan::collect(plan, Arc::new(TaskContext::default()));
        // The source gives batches of at most 8192 rows (slices of its own). The first with
        // a row kept is rows 3000 to 11191 (of the 20000-row batch): a slice of it from its
        // row 1000. Every run of 1024 rows or more lies inside an input batch.
        let got = collect(plan("i >= 4000")).await.unwrap();
        assert_eq!(
            got.iter().map(RecordBatch::num_rows).sum::<usize>(),
            32_500 - 4000
        );
        assert_eq!(got[0].num_rows(), 8192 - 1000);
        assert_eq!(address(&got[0]), address(&input[1]) + 1000 * 8);
        let inside = |batch: &RecordBatch| {
            input.iter().any(|source| {
                let start = address(source);
                (start..start + source.num_rows() * 8).contains(&address(batch))
            })
        };
        for batch in &got {
            assert_eq!(
                inside(batch),
                batch.num_rows() >= LONG_RUN,
                "{}",
                batch.num_rows()
            );
        }
        // Under half of each batch kept: copied, sharing nothing with the input.
        let got = collect(plan("i % 4 = 0")).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].num_rows(), 32_500 / 4);
        assert!(!inside(&got[0]));
    }
}
