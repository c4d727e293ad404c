//! `collect`: the perpetuals' data for every symbol (x interval) into the lake, incrementally.
//!
//! ```yaml
//! collect:
//!   kind: collect
//!   needs: [discover, rate_limits]   # the universe, and the budget to obey
//!   with:
//!     source: aster                  # an exchange, or a binance-dump source to import
//!     datasets: [klines, funding]    # default; also mark_klines, index_klines, premium_klines
//!     intervals: [1h, 4h, 1d]        # default (for the kline-shaped datasets)
//!     history: 180d                  # default: the window back from now
//!     # start: 2024-01-01            # or an absolute start
//!     # symbols: [BTCUSDT]           # instead of a universe input
//!     # page_size: 499 / concurrency: 4   # override the recommendation (funding pages: 1000,
//!     #                                   # or page_size when it says less)
//! ```
//!
//! A partition is one dataset x symbol (x interval). For each it fetches only rows after the
//! last stored one (and before the first, when the window grows), paginating with the page size
//! that fetches the most rows per weight, drops any candle that has not closed (and any funding
//! not yet settled), and writes new append-only part files (flushed every 50,000 rows or 20 s,
//! and on interruption: a rerun resumes where this one stopped). Funding rows also record the
//! symbol's interval, cap and floor from `fundingInfo` (8 hours when it does not list the
//! symbol). A dataset the source does not serve (HTTP 404, as Aster answers
//! `premiumIndexKlines`; a dump without its files) is skipped with one warning naming it. The
//! output lists every part of the collected partitions with its blake3 (`lake.json`), so
//! consumers re-run exactly when the data changed; plus `collection_report.json` and
//! `collection_summary.csv`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::diagnostic::location::YamlPath;
use crate::diagnostic::params::{ParamError, parse_params};
use crate::engine::stage::{
    BoxFuture, FileRef, PrepareContext, PreparedStage, StageContext, StageError, StageKind,
};
use crate::kinds::discover::{
    UNIVERSE_FILE, params_with_source, printable, read_universe, source_files,
};
use crate::kinds::rate_limits::{RECOMMENDATION_FILE, Recommendation};
use crate::kinds::write_json;
use crate::market::exchange::client::{ExchangeClient, ExchangeError};
use crate::market::exchange::connections::Connections;
use crate::market::exchange::source::{Source, SourceKind};
use crate::market::lake::{self, LISTING_FILE, LakeListing, Provenance};
use crate::market::model::{
    DEFAULT_FUNDING_HOURS, Dataset, Funding, Interval, Kline, MAX_PAGE, weight_optimal_page,
};

pub struct Collect;

const FLUSH_ROWS: usize = 50_000;
const FLUSH_EVERY: Duration = Duration::from_secs(20);
/// A candle counts as closed only this long after its close time: the server clock is known to
/// within a round trip, and a candle stored while still open would be wrong for good.
const CLOSE_MARGIN_MS: u64 = 5_000;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    source: String,
    #[serde(default = "default_datasets")]
    datasets: Vec<Dataset>,
    #[serde(default = "default_intervals")]
    intervals: Vec<Interval>,
    #[serde(default = "default_history")]
    history: String,
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    symbols: Option<Vec<String>>,
    #[serde(default)]
    page_size: Option<u32>,
    #[serde(default)]
    concurrency: Option<u32>,
}

fn default_intervals() -> Vec<Interval> {
    ["1h", "4h", "1d"]
        .iter()
        .map(|name| Interval::parse(name).expect("known interval"))
        .collect()
}

fn default_datasets() -> Vec<Dataset> {
    vec![Dataset::Klines, Dataset::Funding]
}

fn default_history() -> String {
    "180d".into()
}

#[derive(Debug)]
struct Prepared {
    params: Params,
    source: Arc<Source>,
    history: Duration,
    start_ms: Option<u64>,
}

impl StageKind for Collect {
    fn name(&self) -> &'static str {
        "collect"
    }

    fn code_version(&self) -> u32 {
        // 2: lake.json entries carry their source and provenance.
        // 3: datasets beyond klines; lake.json entries name their table.
        3
    }

    fn prepare(
        &self,
        params: &yaml_serde::Value,
        context: &PrepareContext<'_>,
    ) -> Result<Box<dyn PreparedStage>, ParamError> {
        let params: Params = parse_params(params)?;
        let source = context.source::<Source>(&params.source, YamlPath::root().key("source"))?;
        let root = YamlPath::root();
        if params.intervals.is_empty() {
            return Err(ParamError::new(
                root.key("intervals"),
                "no intervals to collect",
            ));
        }
        if params.datasets.is_empty() {
            return Err(ParamError::new(
                root.key("datasets"),
                "no datasets to collect",
            ));
        }
        for (index, dataset) in params.datasets.iter().enumerate() {
            if params.datasets[..index].contains(dataset) {
                return Err(ParamError::new(
                    root.clone().key("datasets").index(index),
                    format!("{dataset} is listed twice"),
                ));
            }
        }
        let history = crate::util::time::parse_duration(&params.history)
            .map_err(|message| ParamError::new(root.clone().key("history"), message))?;
        let start_ms = params
            .start
            .as_deref()
            .map(crate::market::replay::parse_time)
            .transpose()
            .map_err(|message| ParamError::new(root.clone().key("start"), message))?;
        if let Some(symbols) = &params.symbols {
            for (index, symbol) in symbols.iter().enumerate() {
                if symbols[..index].contains(symbol) {
                    return Err(ParamError::new(
                        root.clone().key("symbols").index(index),
                        format!("{symbol} is listed twice"),
                    ));
                }
                if !source.accepts_symbol(symbol) {
                    return Err(ParamError::new(
                        root.clone().key("symbols").index(index),
                        format!(
                            "symbol {} is outside the source's pattern `{}`",
                            printable(symbol),
                            source.symbol_pattern.as_str()
                        ),
                    ));
                }
            }
        }
        if let Some(page) = params.page_size
            && !(1..=MAX_PAGE).contains(&page)
        {
            return Err(ParamError::new(
                root.clone().key("page_size"),
                format!("page_size must be between 1 and {MAX_PAGE}"),
            ));
        }
        if params.concurrency == Some(0) {
            return Err(ParamError::new(
                root.key("concurrency"),
                "concurrency must be at least 1",
            ));
        }
        Ok(Box::new(Prepared {
            params,
            source,
            history,
            start_ms,
        }))
    }
}

/// One dataset x symbol (x interval, for kline-shaped datasets) of the collection.
#[derive(Debug, Clone)]
struct Partition {
    dataset: Dataset,
    symbol: String,
    interval: Option<Interval>,
    onboard_ms: Option<u64>,
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.dataset, self.symbol)?;
        if let Some(interval) = self.interval {
            write!(f, " {interval}")?;
        }
        Ok(())
    }
}

/// What happened to one partition: a row of the report.
#[derive(Debug, Clone, Default, Serialize)]
struct PartitionReport {
    table: String,
    symbol: String,
    /// Empty for funding.
    interval: String,
    new_rows: u64,
    rows: u64,
    first_open_ms: Option<i64>,
    last_open_ms: Option<i64>,
    requests: u64,
    retries: u64,
    rate_limited: u64,
    parts_written: u64,
}

/// Which dump files hold one partition's rows.
type DumpKey = (Dataset, String, Option<Interval>);

impl PartitionReport {
    /// Counts one call's attempts, retries and 429s.
    fn count(&mut self, stats: &crate::market::exchange::client::CallStats) {
        self.requests += u64::from(stats.attempts);
        self.retries += u64::from(stats.retries);
        self.rate_limited += u64::from(stats.rate_limited);
    }
}

/// Where candles come from during one collection.
enum Feed<'a> {
    Exchange(&'a ExchangeClient),
    Dump {
        store: Arc<dyn object_store::ObjectStore>,
        files: BTreeMap<DumpKey, Vec<object_store::path::Path>>,
    },
}

struct Collector<'a> {
    context: &'a StageContext,
    /// Fired by the first partition that fails, so the others stop too (the stage's own
    /// cancellation fires it as well).
    stop: tokio_util::sync::CancellationToken,
    feed: Feed<'a>,
    source: &'a Source,
    provenance: Provenance,
    page_size: u32,
    /// Rows per funding request: the endpoint's largest (its weight does not grow with it),
    /// unless `page_size` says less.
    funding_page: u32,
    start_ms: u64,
    done: AtomicU64,
    total: u64,
    /// Each symbol's funding schedule from `fundingInfo`: (interval hours, cap, floor).
    schedules: BTreeMap<String, (i64, Option<f64>, Option<f64>)>,
    /// Datasets the source answered 404 for: skipped, with one warning each.
    unserved: std::sync::Mutex<std::collections::BTreeSet<Dataset>>,
}

impl PreparedStage for Prepared {
    fn params(&self) -> serde_json::Value {
        params_with_source(&self.params, &self.source)
    }

    fn files(&self) -> Vec<FileRef> {
        source_files(&self.source)
    }

    fn output_shape<'a>(
        &'a self,
        stage_id: &'a str,
        _inputs: &'a [(String, crate::engine::stage::OutputShape)],
    ) -> BoxFuture<'a, Result<crate::engine::stage::OutputShape, crate::engine::stage::ShapeError>>
    {
        Box::pin(async move { Ok(crate::kinds::listing_shape(stage_id)) })
    }

    fn reports(&self) -> &'static [&'static str] {
        &["collection_report.json", "collection_summary.csv"]
    }

    fn attachments(
        &self,
        output_dir: &std::path::Path,
    ) -> Result<Vec<crate::engine::cache::OutputFile>, String> {
        crate::kinds::lake_attachments(output_dir)
    }

    /// The source's partitions of every dataset it collects: they are extended, not rewritten.
    fn data_prefixes(&self) -> Vec<String> {
        self.params
            .datasets
            .iter()
            .map(|dataset| format!("lake/{}/source={}/", dataset.table(), self.source.name))
            .collect()
    }

    fn run<'a>(&'a self, context: &'a StageContext) -> BoxFuture<'a, Result<(), StageError>> {
        Box::pin(self.collect(context))
    }
}

/// The dump's kline files, grouped by symbol and interval.
async fn dump_feed(url: &str, endpoint: Option<&str>) -> Result<Feed<'static>, StageError> {
    let (store, objects) = crate::market::exchange::dump::list_kline_objects(url, endpoint)
        .await
        .map_err(StageError::failed)?;
    let mut files: BTreeMap<DumpKey, Vec<object_store::path::Path>> = BTreeMap::new();
    for object in objects {
        files
            .entry((object.dataset, object.symbol, object.interval))
            .or_default()
            .push(object.location);
    }
    Ok(Feed::Dump { store, files })
}

impl Collector<'_> {
    /// Every partition, `concurrency` at a time; the first error stops the others and is the
    /// stage's (an interruption stays an interruption). Reports in symbol, interval order.
    async fn run(
        &self,
        partitions: &[Partition],
        concurrency: usize,
    ) -> Result<Vec<PartitionReport>, StageError> {
        let tasks: Vec<_> = partitions
            .iter()
            .map(|partition| self.partition(partition))
            .collect();
        let results: Vec<Result<Option<PartitionReport>, StageError>> =
            futures::stream::iter(tasks)
                .buffer_unordered(concurrency)
                .collect()
                .await;
        let mut reports = Vec::new();
        let mut first_error = None;
        for result in results {
            match result {
                Ok(Some(report)) => reports.push(report),
                Ok(None) => {}
                Err(error) => {
                    if first_error.is_none() || matches!(first_error, Some(StageError::Cancelled)) {
                        first_error = Some(error);
                    }
                }
            }
        }
        if let Some(error) = first_error {
            return Err(if self.context.cancel.is_cancelled() {
                StageError::Cancelled
            } else {
                error
            });
        }
        reports.sort_by(|a, b| {
            (&a.table, &a.symbol, &a.interval).cmp(&(&b.table, &b.symbol, &b.interval))
        });
        Ok(reports)
    }
}

impl Prepared {
    /// Spends the budget `rate_limits` measured, if it was measured for this source and the
    /// exchange still declares the same window; otherwise says why not.
    fn apply_recommendation(
        &self,
        context: &StageContext,
        connection: &crate::market::exchange::connections::Connection,
        rec: &Recommendation,
    ) {
        let declared =
            crate::market::exchange::client::tightest_weight_limit(&connection.info.rate_limits)
                .and_then(|limit| limit.window_ms());
        if rec.source != self.source.name {
            context.warn(&format!(
                "ignoring the rate-limit recommendation measured for source `{}`; this stage collects from `{}`",
                rec.source, self.source.name
            ));
        } else if declared != Some(rec.window_ms) {
            context.warn(&format!(
                "ignoring the rate-limit recommendation: it is for a {} ms window, the exchange now declares {:?} ms",
                rec.window_ms, declared
            ));
        } else {
            connection
                .client
                .limiter
                .configure(rec.window_ms, rec.weight_budget);
        }
    }

    async fn collect(&self, context: &StageContext) -> Result<(), StageError> {
        let started = Instant::now();
        let started_ms = crate::util::time::now_ms();
        let recommendation: Option<Recommendation> =
            context.read_input_json(RECOMMENDATION_FILE)?;
        let connection;
        let (feed, base_url, kind, now_ms) = match &self.source.kind {
            SourceKind::Exchange { .. } => {
                connection = context
                    .resources
                    .get::<Connections>()
                    .connect(&self.source, &context.cancel)
                    .await?;
                let client = &connection.client;
                if let Some(rec) = &recommendation {
                    self.apply_recommendation(context, &connection, rec);
                }
                (
                    Feed::Exchange(client),
                    client.base_url().to_owned(),
                    client.provenance(),
                    client.limiter.server_now_ms(),
                )
            }
            SourceKind::Dump {
                url,
                display,
                endpoint,
            } => (
                dump_feed(url, endpoint.as_deref()).await?,
                display.clone(),
                "binance-dump".to_owned(),
                crate::util::time::now_ms(),
            ),
        };
        let concurrency = self
            .params
            .concurrency
            .or(recommendation.as_ref().map(|rec| rec.concurrency))
            .unwrap_or(4)
            .max(1) as usize;
        let page_size = self
            .params
            .page_size
            .or(recommendation.as_ref().map(|rec| rec.page_size))
            .unwrap_or_else(weight_optimal_page);
        let symbols = self.symbols(context, &feed)?;
        let mut partitions: Vec<Partition> = Vec::new();
        for &dataset in &self.params.datasets {
            let intervals: Vec<Option<Interval>> = if dataset.is_kline_shaped() {
                self.params.intervals.iter().copied().map(Some).collect()
            } else {
                vec![None]
            };
            for (symbol, onboard) in &symbols {
                for &interval in &intervals {
                    partitions.push(Partition {
                        dataset,
                        symbol: symbol.clone(),
                        interval,
                        onboard_ms: *onboard,
                    });
                }
            }
        }
        let schedules = match &feed {
            Feed::Exchange(client) if self.params.datasets.contains(&Dataset::Funding) => {
                funding_schedules(context, client).await?
            }
            _ => BTreeMap::new(),
        };
        let unserved = match &feed {
            // A dump serves what it has files for.
            Feed::Dump { files, .. } => self
                .params
                .datasets
                .iter()
                .copied()
                .filter(|dataset| !files.keys().any(|(held, _, _)| held == dataset))
                .inspect(|dataset| {
                    context.warn(&format!(
                        "skipping {dataset}: the dump holds no {dataset} files"
                    ))
                })
                .collect(),
            Feed::Exchange(_) => Default::default(),
        };
        let start_ms = self
            .start_ms
            .unwrap_or_else(|| now_ms.saturating_sub(self.history.as_millis() as u64));
        let _lake_lock =
            lake::lock(&context.data_dir, &self.source.name).map_err(StageError::failed)?;
        let collector = Collector {
            context,
            stop: context.cancel.child_token(),
            feed,
            source: &self.source,
            provenance: Provenance {
                source: self.source.name.clone(),
                base_url,
                fetched_at_ms: started_ms as i64,
                kind,
            },
            page_size,
            funding_page: self
                .params
                .page_size
                .unwrap_or(u32::MAX)
                .min(crate::market::model::MAX_FUNDING_PAGE),
            start_ms,
            done: AtomicU64::new(0),
            total: partitions.len() as u64,
            schedules,
            unserved: std::sync::Mutex::new(unserved),
        };
        context.log(&format!(
            "collecting {} partitions from {} ({}), page {page_size}, concurrency {concurrency}, from {}",
            partitions.len(),
            self.source.name,
            collector.provenance.base_url,
            crate::util::time::rfc3339(start_ms)
        ));
        let reports = collector.run(&partitions, concurrency).await?;
        let listing = self.listing(context, &partitions)?;
        write_json(&context.output_dir.join(LISTING_FILE), &listing)?;
        let (requests, retries, rate_limited, weight) = match &collector.feed {
            Feed::Exchange(client) => (
                client.counters.requests.load(Ordering::Relaxed),
                client.counters.retries.load(Ordering::Relaxed),
                client.counters.rate_limited.load(Ordering::Relaxed),
                client.counters.weight.load(Ordering::Relaxed),
            ),
            Feed::Dump { .. } => (0, 0, 0, 0),
        };
        let new_rows: u64 = reports.iter().map(|r| r.new_rows).sum();
        write_json(
            &context.output_dir.join("collection_report.json"),
            &serde_json::json!({
                "source": self.source.name,
                "base_url": collector.provenance.base_url,
                "provenance": collector.provenance.kind,
                "started_at": crate::util::time::rfc3339(started_ms),
                "elapsed_ms": started.elapsed().as_millis() as u64,
                "window_start_ms": start_ms,
                "page_size": page_size,
                "concurrency": concurrency,
                "budget": recommendation.as_ref().map(|rec| serde_json::json!({
                    "window_ms": rec.window_ms, "weight": rec.weight_budget, "declared_limit": rec.declared_limit
                })),
                "new_rows": new_rows,
                "requests": requests,
                "retries": retries,
                "rate_limited": rate_limited,
                "weight": weight,
                "partitions": reports,
            }),
        )?;
        write_summary(&context.output_dir.join("collection_summary.csv"), &reports)?;
        context.progress.message(format!(
            "{new_rows} new rows in {} partitions, {requests} requests, {rate_limited} x 429",
            reports.len()
        ));
        Ok(())
    }

    /// The symbols to collect: the explicit list, else the universe input, else (for dumps)
    /// every symbol present in the files.
    fn symbols(
        &self,
        context: &StageContext,
        feed: &Feed<'_>,
    ) -> Result<Vec<(String, Option<u64>)>, StageError> {
        let listed: Vec<(String, Option<u64>)> = if let Some(symbols) = &self.params.symbols {
            symbols.iter().map(|s| (s.clone(), None)).collect()
        } else if let Some(input) = context.input_with(UNIVERSE_FILE) {
            read_universe(&input.dir.join(UNIVERSE_FILE))
                .map_err(StageError::failed)?
                .into_iter()
                .map(|(symbol, onboard)| (symbol, onboard.map(|ms| ms.max(0) as u64)))
                .collect()
        } else if let Feed::Dump { files, .. } = feed {
            let symbols: std::collections::BTreeSet<&String> =
                files.keys().map(|(_, symbol, _)| symbol).collect();
            symbols.into_iter().map(|s| (s.clone(), None)).collect()
        } else {
            return Err(StageError::failed(
                "collect has no symbols: add `needs: [discover]` (a stage writing universe.parquet) or list `symbols:`",
            ));
        };
        let mut accepted: Vec<(String, Option<u64>)> = Vec::new();
        for (symbol, onboard) in listed {
            if accepted.iter().any(|(seen, _)| *seen == symbol) {
                context.warn(&format!("{symbol} is listed twice; collecting it once"));
                continue;
            }
            if self.source.accepts_symbol(&symbol) {
                accepted.push((symbol, onboard));
            } else {
                context.warn(&format!(
                    "refused symbol {}: outside the source's pattern",
                    printable(&symbol)
                ));
            }
        }
        Ok(accepted)
    }

    /// Every part of the collected partitions, with digests, sorted by path.
    fn listing(
        &self,
        context: &StageContext,
        partitions: &[Partition],
    ) -> Result<LakeListing, StageError> {
        let mut parts = Vec::new();
        for partition in partitions {
            parts.extend(
                lake::describe_table_partition(
                    &context.data_dir,
                    partition.dataset,
                    &self.source.name,
                    partition.interval,
                    &partition.symbol,
                )
                .map_err(StageError::failed)?,
            );
        }
        Ok(LakeListing::new(parts))
    }
}

/// New rows of one partition, in the dataset's shape.
enum Rows {
    Klines(Vec<Kline>),
    Funding(Vec<Funding>),
}

impl Rows {
    fn len(&self) -> usize {
        match self {
            Rows::Klines(rows) => rows.len(),
            Rows::Funding(rows) => rows.len(),
        }
    }
}

/// Buffered new rows of one partition, flushed to part files.
struct Pending<'a> {
    dir: PathBuf,
    partition: &'a Partition,
    rows: Rows,
    last_flush: Instant,
    report: PartitionReport,
}

impl Pending<'_> {
    fn flush(&mut self, provenance: &Provenance) -> Result<(), StageError> {
        let written = self.rows.len();
        if written == 0 {
            return Ok(());
        }
        let symbol = &self.partition.symbol;
        match &mut self.rows {
            Rows::Klines(rows) => {
                rows.sort_by_key(|row| row.open_time);
                let interval = self
                    .partition
                    .interval
                    .expect("kline-shaped partitions have one");
                lake::write_part(&self.dir, symbol, interval, rows, provenance)
                    .map_err(StageError::failed)?;
                rows.clear();
            }
            Rows::Funding(rows) => {
                rows.sort_by_key(|row| row.funding_time);
                lake::write_funding_part(&self.dir, symbol, rows, provenance)
                    .map_err(StageError::failed)?;
                rows.clear();
            }
        }
        self.report.new_rows += written as u64;
        self.report.parts_written += 1;
        self.last_flush = Instant::now();
        Ok(())
    }

    fn due(&self) -> bool {
        self.rows.len() >= FLUSH_ROWS || self.last_flush.elapsed() >= FLUSH_EVERY
    }

    fn klines(&mut self) -> &mut Vec<Kline> {
        match &mut self.rows {
            Rows::Klines(rows) => rows,
            Rows::Funding(_) => unreachable!("a kline partition buffers klines"),
        }
    }

    fn funding(&mut self) -> &mut Vec<Funding> {
        match &mut self.rows {
            Rows::Funding(rows) => rows,
            Rows::Klines(_) => unreachable!("a funding partition buffers funding"),
        }
    }
}

/// Each symbol's funding schedule from `fundingInfo` (one call); an exchange that does not
/// serve it leaves every symbol on the default interval, with a warning.
async fn funding_schedules(
    context: &StageContext,
    client: &ExchangeClient,
) -> Result<BTreeMap<String, (i64, Option<f64>, Option<f64>)>, StageError> {
    match client.funding_info(&context.cancel).await {
        Ok(rows) => Ok(rows
            .into_iter()
            .map(|row| {
                (
                    row.symbol,
                    (
                        row.funding_interval_hours
                            .filter(|hours| *hours > 0)
                            .unwrap_or(DEFAULT_FUNDING_HOURS),
                        row.adjusted_funding_rate_cap.map(|cap| cap.0),
                        row.adjusted_funding_rate_floor.map(|floor| floor.0),
                    ),
                )
            })
            .collect()),
        Err(ExchangeError::Api { status: 404, .. }) => {
            context.warn(&format!(
                "the source does not serve fundingInfo: funding intervals are recorded as the default {DEFAULT_FUNDING_HOURS} hours"
            ));
            Ok(BTreeMap::new())
        }
        Err(error) => Err(error.into()),
    }
}

impl Collector<'_> {
    /// Collects one partition; `None` when the exchange no longer knows the symbol.
    async fn partition(
        &self,
        partition: &Partition,
    ) -> Result<Option<PartitionReport>, StageError> {
        match self.partition_inner(partition).await {
            Ok(report) => Ok(Some(report)),
            Err(PartitionError::UnknownSymbol(message)) => {
                self.context.warn(&format!(
                    "{partition}: the exchange does not know this symbol ({message}); skipped. Re-run discover if it was delisted"
                ));
                Ok(None)
            }
            Err(PartitionError::Unserved(message)) => {
                let first = self
                    .unserved
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(partition.dataset);
                if first {
                    self.context.warn(&format!(
                        "skipping {}: the source does not serve {} ({message})",
                        partition.dataset,
                        partition.dataset.endpoint()
                    ));
                }
                Ok(None)
            }
            Err(PartitionError::Stage(StageError::Cancelled)) => Err(StageError::Cancelled),
            Err(PartitionError::Stage(error)) => {
                self.stop.cancel();
                Err(StageError::Failed(format!(
                    "{partition}: {}",
                    crate::engine::executor::error_chain(&error)
                )))
            }
        }
    }

    async fn partition_inner(
        &self,
        partition: &Partition,
    ) -> Result<PartitionReport, PartitionError> {
        if self
            .unserved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&partition.dataset)
        {
            return Err(PartitionError::Unserved("answered before".into()));
        }
        let dir = lake::table_partition_dir(
            &self.context.data_dir,
            partition.dataset,
            &self.source.name,
            partition.interval,
            &partition.symbol,
        )
        .map_err(StageError::failed)?;
        let stored = lake::parts(&dir).map_err(StageError::failed)?;
        if let Some(newest) = stored.last()
            && let Ok(Some(provenance)) = lake::read_provenance(&newest.path)
            && provenance.kind != self.provenance.kind
        {
            return Err(StageError::failed(format!(
                "{} holds `{}` data from {}, and this source now serves `{}` data: refusing to mix them in one partition. Give the source a new name, or move that directory away",
                dir.display(),
                provenance.kind,
                provenance.base_url,
                self.provenance.kind
            ))
            .into());
        }
        let now = match &self.feed {
            Feed::Exchange(client) => client.limiter.server_now_ms(),
            Feed::Dump { .. } => crate::util::time::now_ms(),
        };
        // The newest candle closed (with a margin) by now; funding settled by then.
        let closed_before = now.saturating_sub(CLOSE_MARGIN_MS);
        let (ranges, rows) = match partition.interval {
            Some(interval) => {
                let step = interval.millis();
                let last_closed = interval.floor(closed_before.saturating_sub(step));
                let mut window_start = interval.floor(self.start_ms);
                if let Some(onboard) = partition.onboard_ms {
                    window_start = window_start.max(interval.floor(onboard));
                }
                (
                    missing_ranges(window_start, last_closed, step, &stored),
                    Rows::Klines(Vec::new()),
                )
            }
            None => {
                // Funding times are not on an exact grid: the stored span is covered to the
                // millisecond. Between and before stored parts, only a stretch that could hold
                // a settlement is worth a request; the stretch up to now always is.
                let window_start = self.start_ms.max(partition.onboard_ms.unwrap_or(0));
                let hours = self
                    .schedules
                    .get(&partition.symbol)
                    .map_or(DEFAULT_FUNDING_HOURS, |(hours, _, _)| *hours);
                let every = hours as u64 * 3_600_000;
                // Settlements run up to a minute late. Before the first stored one, a stretch
                // of an interval may hold one. Between stored parts (each run fetched its
                // range whole: a hole there is an interrupted backfill), only a stretch longer
                // than the default interval is refetched, so an older, longer schedule than
                // today's is not asked for again on every run.
                let late = crate::quality::funding::MAX_DELAY_MS as u64;
                let between = every.max(DEFAULT_FUNDING_HOURS as u64 * 3_600_000) + late;
                let mut ranges = missing_ranges(window_start, closed_before, 1, &stored);
                ranges.retain(|&(lo, hi)| {
                    let span = hi - lo + 1;
                    hi == closed_before
                        || (lo == window_start && span + late >= every)
                        || span > between
                });
                (ranges, Rows::Funding(Vec::new()))
            }
        };
        let mut pending = Pending {
            dir,
            partition,
            rows,
            last_flush: Instant::now(),
            report: PartitionReport {
                table: partition.dataset.table().to_owned(),
                symbol: partition.symbol.clone(),
                interval: partition
                    .interval
                    .map(|i| i.name().to_owned())
                    .unwrap_or_default(),
                ..PartitionReport::default()
            },
        };
        let mut outcome = Ok(());
        for (lo, hi) in ranges {
            outcome = match (&self.feed, partition.interval) {
                (Feed::Exchange(client), Some(_)) => {
                    self.fetch(client, &mut pending, lo, hi, closed_before)
                        .await
                }
                (Feed::Exchange(client), None) => {
                    self.fetch_funding(client, &mut pending, lo, hi).await
                }
                (Feed::Dump { store, files }, _) => self
                    .import(store.as_ref(), files, &mut pending, lo, hi)
                    .await
                    .map_err(Into::into),
            };
            // One part per range, so parts never overlap each other.
            pending.flush(&self.provenance)?;
            if outcome.is_err() {
                break;
            }
        }
        outcome?;
        let parts = lake::parts(&pending.dir).map_err(StageError::failed)?;
        pending.report.first_open_ms = parts.first().map(|p| p.first_open_ms);
        pending.report.last_open_ms = parts.iter().map(|p| p.last_open_ms).max();
        let mut rows = 0;
        for part in &parts {
            rows += lake::row_count(&part.path).map_err(StageError::failed)?;
        }
        pending.report.rows = rows;
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        self.context.progress.update(
            done,
            self.total,
            format!("{partition}: +{} rows", pending.report.new_rows),
        );
        Ok(pending.report)
    }

    /// Pages through the funding settled in `[lo, hi]` (ms), a full page at a time.
    async fn fetch_funding(
        &self,
        client: &ExchangeClient,
        pending: &mut Pending<'_>,
        lo: u64,
        hi: u64,
    ) -> Result<(), PartitionError> {
        let symbol = pending.partition.symbol.clone();
        let (hours, cap, floor) =
            self.schedules
                .get(&symbol)
                .copied()
                .unwrap_or((DEFAULT_FUNDING_HOURS, None, None));
        let limit = self.funding_page;
        let mut cursor = lo;
        while cursor <= hi {
            let (rows, stats) = client
                .funding_rates(&symbol, cursor, hi, limit, &self.stop)
                .await
                .map_err(|error| PartitionError::from_exchange(Dataset::Funding, error))?;
            pending.report.count(&stats);
            let received = rows.len();
            let mut last_kept = cursor as i64 - 1;
            for row in rows {
                if row.funding_time < cursor as i64
                    || row.funding_time > hi as i64
                    || row.funding_time <= last_kept
                    || !row.funding_rate.0.is_finite()
                {
                    continue;
                }
                last_kept = row.funding_time;
                pending.funding().push(Funding {
                    funding_time: row.funding_time,
                    funding_rate: row.funding_rate.0,
                    interval_hours: hours,
                    rate_cap: cap,
                    rate_floor: floor,
                });
            }
            if received < limit as usize || last_kept < cursor as i64 {
                break;
            }
            cursor = last_kept as u64 + 1;
            if pending.due() {
                pending.flush(&self.provenance)?;
            }
        }
        Ok(())
    }

    /// Pages through `[lo, hi]` (open times), asking each page for exactly what is left so the
    /// last page falls in the cheapest weight class.
    async fn fetch(
        &self,
        client: &ExchangeClient,
        pending: &mut Pending<'_>,
        lo: u64,
        hi: u64,
        closed_before: u64,
    ) -> Result<(), PartitionError> {
        let interval = pending
            .partition
            .interval
            .expect("kline-shaped partitions have one");
        let step = interval.millis();
        let mut cursor = lo;
        while cursor <= hi {
            let remaining = (hi - cursor) / step + 1;
            let limit = (self.page_size as u64).min(remaining) as u32;
            let (rows, stats) = client
                .kline_table(
                    pending.partition.dataset,
                    &pending.partition.symbol,
                    interval.name(),
                    cursor,
                    hi,
                    limit,
                    &self.stop,
                )
                .await
                .map_err(|error| PartitionError::from_exchange(pending.partition.dataset, error))?;
            pending.report.count(&stats);
            let received = rows.len();
            let mut last_kept = cursor as i64 - 1;
            for row in rows {
                // Only closed candles inside the asked range, strictly increasing: no duplicate
                // and no still-open candle ever reaches the lake.
                if row.open_time < cursor as i64
                    || row.open_time > hi as i64
                    || row.open_time <= last_kept
                {
                    continue;
                }
                if row.close_time >= closed_before as i64 {
                    continue;
                }
                last_kept = row.open_time;
                pending.klines().push(row);
            }
            if received < limit as usize || last_kept < cursor as i64 {
                break;
            }
            cursor = last_kept as u64 + step;
            if pending.due() {
                pending.flush(&self.provenance)?;
            }
        }
        Ok(())
    }

    /// Imports dump files' rows in `[lo, hi]` (open times, or funding times).
    async fn import(
        &self,
        store: &dyn object_store::ObjectStore,
        files: &BTreeMap<DumpKey, Vec<object_store::path::Path>>,
        pending: &mut Pending<'_>,
        lo: u64,
        hi: u64,
    ) -> Result<(), StageError> {
        let partition = pending.partition;
        let key = (
            partition.dataset,
            partition.symbol.clone(),
            partition.interval,
        );
        let locations = files.get(&key).map(Vec::as_slice).unwrap_or_default();
        let within = |time: i64| time >= lo as i64 && time <= hi as i64;
        for location in locations {
            if self.stop.is_cancelled() {
                return Err(StageError::Cancelled);
            }
            use crate::market::exchange::dump::{read_funding_object, read_kline_object};
            match &mut pending.rows {
                Rows::Klines(rows) => rows.extend(
                    read_kline_object(store, location)
                        .await
                        .map_err(StageError::failed)?
                        .into_iter()
                        .filter(|row| within(row.open_time)),
                ),
                Rows::Funding(rows) => rows.extend(
                    read_funding_object(store, location)
                        .await
                        .map_err(StageError::failed)?
                        .into_iter()
                        .filter(|row| within(row.funding_time)),
                ),
            }
        }
        match &mut pending.rows {
            Rows::Klines(rows) => {
                rows.sort_by_key(|row| row.open_time);
                rows.dedup_by_key(|row| row.open_time);
            }
            Rows::Funding(rows) => {
                rows.sort_by_key(|row| row.funding_time);
                rows.dedup_by_key(|row| row.funding_time);
            }
        }
        Ok(())
    }
}

/// Why one partition stopped.
enum PartitionError {
    /// The exchange answered -1121 (invalid symbol): skip it, the others go on.
    UnknownSymbol(String),
    /// The exchange answered 404: it does not serve this dataset; skip every partition of it.
    Unserved(String),
    Stage(StageError),
}

impl PartitionError {
    fn from_exchange(dataset: Dataset, error: ExchangeError) -> Self {
        match error {
            ExchangeError::Api {
                code: Some(-1121),
                message,
                ..
            } => PartitionError::UnknownSymbol(message),
            // Only the optional datasets may be missing: a 404 for klines is a wrong base URL
            // or path prefix, and an error.
            ExchangeError::Api {
                status: 404,
                message,
                ..
            } if dataset != Dataset::Klines => PartitionError::Unserved(message),
            other => PartitionError::Stage(other.into()),
        }
    }
}

impl From<StageError> for PartitionError {
    fn from(error: StageError) -> Self {
        PartitionError::Stage(error)
    }
}

/// The stretches of `[start, end]` (open times, a grid of `step`) no stored part covers,
/// oldest first. A part covers its first to its last candle.
fn missing_ranges(start: u64, end: u64, step: u64, stored: &[lake::Part]) -> Vec<(u64, u64)> {
    let mut covered: Vec<(u64, u64)> = stored
        .iter()
        .map(|part| {
            (
                part.first_open_ms.max(0) as u64,
                part.last_open_ms.max(0) as u64,
            )
        })
        .collect();
    covered.sort_unstable();
    let mut ranges = Vec::new();
    let mut cursor = start;
    for (first, last) in covered {
        if first > cursor {
            let hi = (first - step).min(end);
            if cursor <= hi {
                ranges.push((cursor, hi));
            }
        }
        cursor = cursor.max(last + step);
    }
    if cursor <= end {
        ranges.push((cursor, end));
    }
    ranges
}

fn write_summary(path: &Path, reports: &[PartitionReport]) -> Result<(), StageError> {
    let time = |ms: Option<i64>| {
        ms.map(|ms| crate::util::time::rfc3339(ms.max(0) as u64))
            .unwrap_or_default()
    };
    let mut text = String::from(
        "table,symbol,interval,new_rows,rows,first,last,requests,retries,rate_limited\n",
    );
    for r in reports {
        text.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{}\n",
            r.table,
            r.symbol,
            r.interval,
            r.new_rows,
            r.rows,
            time(r.first_open_ms),
            time(r.last_open_ms),
            r.requests,
            r.retries,
            r.rate_limited
        ));
    }
    Ok(fs_err::write(path, text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(first: i64, last: i64) -> lake::Part {
        lake::Part {
            path: PathBuf::from("x"),
            first_open_ms: first,
            last_open_ms: last,
        }
    }

    #[test]
    fn missing_ranges_fill_every_gap_once() {
        assert_eq!(missing_ranges(0, 10, 1, &[]), vec![(0, 10)]);
        // Stored 3..=5 and 8..=9: fetch 0..=2, 6..=7 and 10.
        assert_eq!(
            missing_ranges(0, 10, 1, &[part(8, 9), part(3, 5)]),
            vec![(0, 2), (6, 7), (10, 10)]
        );
        // The window starts inside stored data: nothing before it.
        assert_eq!(missing_ranges(4, 6, 1, &[part(3, 5)]), vec![(6, 6)]);
        // Everything stored.
        assert!(missing_ranges(3, 5, 1, &[part(0, 9)]).is_empty());
        // Grid steps.
        assert_eq!(
            missing_ranges(0, 100, 10, &[part(30, 50)]),
            vec![(0, 20), (60, 100)]
        );
    }
}
