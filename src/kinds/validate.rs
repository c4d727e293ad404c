//! `validate`: the real-data and quality gate. Reads the lake parts its inputs list (through
//! DataFusion), checks each dataset (one source x symbol x interval), and lets through only what
//! passes.
//!
//! ```yaml
//! validate:
//!   kind: validate
//!   needs: [collect]
//!   with:
//!     allow_synthetic: false     # simulated data is refused unless this says otherwise
//!     on_failure: quarantine     # or fail: stop the pipeline when any dataset fails
//!     min_symbols: 1             # stop the pipeline when fewer symbols pass
//!     max_missing: 0.05          # share of the expected grid
//!     max_gap: 3d                # the longest run of missing candles
//!     max_filled: 0.01           # share of filled-looking bars (no trades, no volume, O=H=L=C)
//!     max_stale_run: 24          # identical closes in a row
//!     outlier_z: 10              # robust z-score (median/MAD) of a return that counts as an outlier
//!     max_outliers: 0.001        # share of returns
//!     min_history: 30d
//!     max_lag: 3d                # ends this long before the newest dataset of its interval
//!     source_tolerance: 0.01     # closes of one symbol from two sources agree within this
//!                                # (|a - b| / min(a, b)); both datasets fail when they do not
//! ```
//!
//! Outputs: `lake.json` (the passing datasets' parts, same format as `collect`'s),
//! `validation_report.json` (every check's figure, limit and verdict, per dataset),
//! `validation_table.txt` (the table printed at the end of the stage).
//!
//! The quality score of a dataset is the weighted mean of its checks' scores. A passing check
//! scores 1. A failing zero-tolerance check scores 0; a failing check with a tolerance scores
//! `0.5 * limit / figure` (history: `0.5 * span / min_history`), so a near miss counts for more
//! than a wild one. Weights: integrity (parts, schema, provenance, rows, order, grid, close
//! times, OHLC, values, future candles) 2; coverage (missing, longest gap, ends early, history)
//! 1.5; plausibility (filled bars, stale closes, outliers, source agreement) 1. A clean dataset
//! scores 1.0.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use object_store::memory::InMemory;
use serde::{Deserialize, Serialize};

use crate::diagnostic::location::YamlPath;
use crate::diagnostic::params::{ParamError, parse_params};
use crate::engine::stage::{
    BoxFuture, PrepareContext, PreparedStage, StageContext, StageError, StageKind,
};
use crate::kinds::write_json;
use crate::market::lake::{Footer, LISTING_FILE, LakeListing, PartEntry};
use crate::market::model::Interval;

pub struct Validate;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    #[default]
    Quarantine,
    Fail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default)]
    allow_synthetic: bool,
    #[serde(default)]
    on_failure: OnFailure,
    #[serde(default = "one")]
    min_symbols: usize,
    #[serde(default = "default_max_missing")]
    max_missing: f64,
    #[serde(default = "default_max_gap")]
    max_gap: String,
    #[serde(default = "default_max_filled")]
    max_filled: f64,
    #[serde(default = "default_max_stale_run")]
    max_stale_run: u64,
    #[serde(default = "default_outlier_z")]
    outlier_z: f64,
    #[serde(default = "default_max_outliers")]
    max_outliers: f64,
    #[serde(default = "default_min_history")]
    min_history: String,
    #[serde(default = "default_max_lag")]
    max_lag: String,
    #[serde(default = "default_source_tolerance")]
    source_tolerance: f64,
}

fn one() -> usize {
    1
}
fn default_max_missing() -> f64 {
    0.05
}
fn default_max_gap() -> String {
    "3d".into()
}
fn default_max_filled() -> f64 {
    0.01
}
fn default_max_stale_run() -> u64 {
    24
}
fn default_outlier_z() -> f64 {
    10.0
}
fn default_max_outliers() -> f64 {
    0.001
}
fn default_min_history() -> String {
    "30d".into()
}
fn default_max_lag() -> String {
    "3d".into()
}
fn default_source_tolerance() -> f64 {
    0.01
}

#[derive(Debug)]
struct Prepared {
    params: Params,
    max_gap: Duration,
    min_history: Duration,
    max_lag: Duration,
}

impl StageKind for Validate {
    fn name(&self) -> &'static str {
        "validate"
    }

    fn code_version(&self) -> u32 {
        1
    }

    fn prepare(
        &self,
        params: &yaml_serde::Value,
        _context: &PrepareContext<'_>,
    ) -> Result<Box<dyn PreparedStage>, ParamError> {
        let params: Params = parse_params(params)?;
        let root = YamlPath::root();
        let duration = |field: &str, text: &str| {
            crate::util::time::parse_duration(text)
                .map_err(|message| ParamError::new(root.clone().key(field), message))
        };
        let max_gap = duration("max_gap", &params.max_gap)?;
        let min_history = duration("min_history", &params.min_history)?;
        let max_lag = duration("max_lag", &params.max_lag)?;
        for (field, value) in [
            ("max_missing", params.max_missing),
            ("max_filled", params.max_filled),
            ("max_outliers", params.max_outliers),
            ("source_tolerance", params.source_tolerance),
        ] {
            if !(0.0..1.0).contains(&value) {
                return Err(ParamError::new(
                    root.clone().key(field),
                    format!("`{field}` is a share in [0, 1): got {value}"),
                ));
            }
        }
        if params.outlier_z.is_nan() || params.outlier_z <= 0.0 {
            return Err(ParamError::new(
                root.clone().key("outlier_z"),
                "outlier_z must be above 0",
            ));
        }
        if params.max_stale_run < 2 {
            return Err(ParamError::new(
                root.key("max_stale_run"),
                "max_stale_run must be at least 2",
            ));
        }
        Ok(Box::new(Prepared {
            params,
            max_gap,
            min_history,
            max_lag,
        }))
    }
}

/// One check of one dataset.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub figure: f64,
    pub limit: f64,
    pub passed: bool,
    pub score: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip)]
    weight: f64,
}

/// The verdict on one dataset.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetReport {
    pub source: String,
    pub symbol: String,
    pub interval: String,
    pub rows: u64,
    pub first_open_ms: Option<i64>,
    pub last_open_ms: Option<i64>,
    pub provenance: Vec<String>,
    pub passed: bool,
    pub score: f64,
    pub failures: Vec<String>,
    pub checks: Vec<Check>,
}

/// The key of a dataset.
type DatasetKey = (String, String, String);

impl PreparedStage for Prepared {
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }

    fn run<'a>(&'a self, context: &'a StageContext) -> BoxFuture<'a, Result<(), StageError>> {
        Box::pin(self.validate(context))
    }

    fn output_shape<'a>(
        &'a self,
        stage_id: &'a str,
        _inputs: &'a [(String, crate::engine::stage::OutputShape)],
    ) -> BoxFuture<'a, Result<crate::engine::stage::OutputShape, crate::engine::stage::ShapeError>>
    {
        Box::pin(async move { Ok(crate::kinds::listing_shape(stage_id)) })
    }
}

fn failed(message: impl std::fmt::Display) -> StageError {
    StageError::Failed(message.to_string())
}

impl Prepared {
    async fn validate(&self, context: &StageContext) -> Result<(), StageError> {
        let mut parts: Vec<PartEntry> = Vec::new();
        for input in &context.inputs {
            let path = input.dir.join(LISTING_FILE);
            if path.is_file() {
                parts.extend(LakeListing::read(&path).map_err(failed)?.parts);
            }
        }
        if !context
            .inputs
            .iter()
            .any(|i| i.dir.join(LISTING_FILE).is_file())
        {
            return Err(failed(
                "validate reads the lake through a `lake.json` input: add `needs: [collect]`",
            ));
        }
        if parts.is_empty() {
            return Err(failed(
                "the input lake.json lists no parts: nothing was collected",
            ));
        }
        let mut datasets: BTreeMap<DatasetKey, Vec<PartEntry>> = BTreeMap::new();
        for part in parts {
            datasets
                .entry((
                    part.source.clone(),
                    part.symbol.clone(),
                    part.interval.clone(),
                ))
                .or_default()
                .push(part);
        }
        for parts in datasets.values_mut() {
            parts.sort_by_key(|part| part.first_open_ms);
            parts.dedup_by(|a, b| a.path == b.path);
        }
        let session = SessionContext::new_with_config(
            SessionConfig::new()
                .with_target_partitions(1)
                .with_batch_size(65_536),
        );
        let store = Arc::new(InMemory::new());
        let url = reqwest::Url::parse(MEMORY_URL).expect("a valid URL");
        session.register_object_store(
            &url,
            Arc::clone(&store) as Arc<dyn object_store::ObjectStore>,
        );
        let now_ms = crate::util::time::now_ms() as i64;
        let total = datasets.len() as u64;
        let parallel = std::thread::available_parallelism().map_or(2, usize::from);
        let tasks: Vec<_> = datasets
            .into_iter()
            .map(|(key, parts)| {
                let session = session.clone();
                let store = Arc::clone(&store);
                let data_dir = context.data_dir.clone();
                async move {
                    let measured =
                        scan_dataset(&session, &store, &data_dir, &key, &parts, now_ms).await;
                    (key, parts, measured)
                }
            })
            .collect();
        let scans = futures::stream::iter(tasks).buffer_unordered(parallel);
        futures::pin_mut!(scans);
        let mut results: Vec<(DatasetKey, Vec<PartEntry>, Measured)> = Vec::new();
        let mut done = 0;
        while let Some((key, parts, measured)) = scans.next().await {
            if context.cancel.is_cancelled() {
                return Err(StageError::Cancelled);
            }
            done += 1;
            context
                .progress
                .update(done, total, format!("{} {} {}", key.0, key.1, key.2));
            results.push((key, parts, measured));
        }
        results.sort_by(|a, b| a.0.cmp(&b.0));
        let agreement = source_agreement(&results);
        // Each interval's newest candle: a dataset ending well before it has stopped updating.
        let mut newest: BTreeMap<&str, i64> = BTreeMap::new();
        for (key, _, measured) in &results {
            if let Some(last) = measured.grid_last {
                let entry = newest.entry(key.2.as_str()).or_insert(last);
                *entry = (*entry).max(last);
            }
        }
        let mut reports = Vec::new();
        let mut passing_parts = Vec::new();
        for (key, parts, measured) in &results {
            let report = self.judge(
                key,
                measured,
                agreement.get(key),
                newest.get(key.2.as_str()).copied(),
            );
            if report.passed {
                // The provenance that flows on is the one the files record.
                let kind = measured.provenance.first().cloned().unwrap_or_default();
                passing_parts.extend(parts.iter().cloned().map(|mut part| {
                    part.provenance = kind.clone();
                    part
                }));
            }
            reports.push(report);
        }
        let synthetic = passing_parts
            .iter()
            .any(|part| part.provenance == "simulated");
        let listing = LakeListing::new(passing_parts);
        let passed_symbols: std::collections::BTreeSet<&str> = reports
            .iter()
            .filter(|r| r.passed)
            .map(|r| r.symbol.as_str())
            .collect();
        let table = render_table(&reports, synthetic);
        write_json(&context.output_dir.join(LISTING_FILE), &listing)?;
        write_json(
            &context.output_dir.join("validation_report.json"),
            &serde_json::json!({
                "synthetic": synthetic,
                "banner": synthetic.then_some(crate::provenance::SYNTHETIC_BANNER),
                "validated_at_ms": now_ms,
                "params": self.params,
                "datasets_passed": reports.iter().filter(|r| r.passed).count(),
                "datasets_quarantined": reports.iter().filter(|r| !r.passed).count(),
                "symbols_passed": passed_symbols.len(),
                "datasets": reports,
            }),
        )?;
        fs_err::write(context.output_dir.join("validation_table.txt"), &table)?;
        context.log(&table);
        context.progress.report(table);
        let failing: Vec<&DatasetReport> = reports.iter().filter(|r| !r.passed).collect();
        if self.params.on_failure == OnFailure::Fail
            && let Some(first) = failing.first()
        {
            return Err(failed(format!(
                "{} of {} datasets failed validation (on_failure: fail); first: {} {} {}: {}",
                failing.len(),
                reports.len(),
                first.source,
                first.symbol,
                first.interval,
                first.failures.join("; ")
            )));
        }
        if passed_symbols.len() < self.params.min_symbols {
            return Err(failed(format!(
                "only {} symbol(s) passed validation; min_symbols is {} ({} dataset(s) quarantined: see validation_report.json)",
                passed_symbols.len(),
                self.params.min_symbols,
                failing.len()
            )));
        }
        if !failing.is_empty() {
            context.warn(&format!(
                "quarantined {} of {} datasets",
                failing.len(),
                reports.len()
            ));
        }
        Ok(())
    }
}

/// Figures measured in one pass over a dataset.
#[derive(Debug, Default, Clone)]
struct Measured {
    interval: Option<Interval>,
    /// Parts whose bytes no longer match the listing, that are gone, or that cannot be read.
    damaged: Vec<String>,
    /// Column problems, one line each.
    schema: Vec<String>,
    /// Provenance kinds as the part files themselves record them (`unknown` when they do not).
    provenance: Vec<String>,
    rows: u64,
    first: Option<i64>,
    last: Option<i64>,
    duplicates: u64,
    out_of_order: u64,
    off_grid: u64,
    bad_close_time: u64,
    bad_ohlc: u64,
    bad_values: u64,
    future: u64,
    filled: u64,
    /// Distinct on-grid open times, not counting future candles.
    distinct_on_grid: u64,
    /// First and last on-grid open time that is not in the future.
    grid_first: Option<i64>,
    grid_last: Option<i64>,
    longest_gap_bars: u64,
    longest_stale_run: u64,
    returns: u64,
    /// Robust |z| of every return, largest first.
    z_sorted: Vec<f64>,
    /// (open time, close) for cross-source comparison.
    closes: Vec<(i64, f64)>,
}

const COLUMNS: [(&str, DataType); 12] = [
    ("open_time", DataType::Int64),
    ("open", DataType::Float64),
    ("high", DataType::Float64),
    ("low", DataType::Float64),
    ("close", DataType::Float64),
    ("volume", DataType::Float64),
    ("close_time", DataType::Int64),
    ("quote_volume", DataType::Float64),
    ("trades", DataType::Int64),
    ("taker_buy_base", DataType::Float64),
    ("taker_buy_quote", DataType::Float64),
    ("provenance", DataType::Utf8),
];

/// The object store DataFusion reads verified part bytes from: what was checked is exactly
/// what is read, even if the file changes meanwhile.
const MEMORY_URL: &str = "memory://";

/// Verifies the parts, then reads them one at a time, in listing order, through DataFusion
/// (from memory, the bytes just verified) and measures everything.
async fn scan_dataset(
    session: &SessionContext,
    store: &Arc<InMemory>,
    data_dir: &Path,
    key: &DatasetKey,
    parts: &[PartEntry],
    now_ms: i64,
) -> Measured {
    let interval = Interval::parse(&key.2).ok();
    let mut measured = Measured {
        interval,
        ..Measured::default()
    };
    if interval.is_none() {
        measured
            .schema
            .push(format!("`{}` is not a known interval", key.2));
        return measured;
    }
    let mut measurer = Measurer::new(interval.expect("checked"), now_ms);
    let columns: Vec<&str> = COLUMNS
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| *name != "provenance")
        .collect();
    for part in parts {
        let path = data_dir.join(&part.path);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) => {
                measured.damaged.push(format!("{}: {error}", part.path));
                continue;
            }
        };
        if blake3::hash(&bytes).to_hex().as_str() != part.blake3 {
            measured
                .damaged
                .push(format!("{} changed since it was listed", part.path));
            continue;
        }
        let bytes = bytes::Bytes::from(bytes);
        let footer = match Footer::from_bytes(&path, bytes.clone()) {
            Ok(footer) => footer,
            Err(error) => {
                measured.damaged.push(error.to_string());
                continue;
            }
        };
        let mut fits = true;
        for (name, expected) in &COLUMNS {
            match footer.columns.iter().find(|(column, _)| column == name) {
                None => {
                    measured
                        .schema
                        .push(format!("{}: no column `{name}`", part.path));
                    fits = false;
                }
                Some((_, found)) if found != expected => {
                    measured.schema.push(format!(
                        "{}: column `{name}` is {found}, expected {expected}",
                        part.path
                    ));
                    fits = false;
                }
                Some(_) => {}
            }
        }
        // Only the file speaks for its provenance; a listing cannot vouch for it.
        let kind = footer
            .provenance
            .map(|p| p.kind)
            .unwrap_or_else(|| "unknown".to_owned());
        if !measured.provenance.contains(&kind) {
            measured.provenance.push(kind);
        }
        if !fits {
            continue;
        }
        static SCAN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let scan = SCAN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let location = object_store::path::Path::from(format!("scan-{scan}.parquet"));
        let read = async {
            use object_store::ObjectStoreExt;
            store
                .put(&location, bytes.into())
                .await
                .map_err(|error| error.to_string())?;
            session
                .read_parquet(
                    format!("{MEMORY_URL}/{location}"),
                    ParquetReadOptions::default(),
                )
                .await
                .and_then(|frame| frame.select_columns(&columns))
                .map_err(|error| error.to_string())?
                .collect()
                .await
                .map_err(|error| error.to_string())
        };
        let batches: Result<Vec<RecordBatch>, String> = read.await;
        {
            use object_store::ObjectStoreExt;
            let _ = store.delete(&location).await;
        }
        match batches {
            Ok(batches) => batches.iter().for_each(|batch| measurer.feed(batch)),
            Err(error) => measured
                .damaged
                .push(format!("{}: unreadable: {error}", part.path)),
        }
    }
    measurer.finish(&mut measured);
    measured
}

/// Walks the rows of one dataset in stored order, across batches and parts.
struct Measurer {
    interval: Interval,
    step: i64,
    now_ms: i64,
    counts: Measured,
    max_open: Option<i64>,
    previous_open: Option<i64>,
    previous_close: Option<f64>,
    stale_run: u64,
    returns: Vec<f64>,
    opens: Vec<i64>,
}

impl Measurer {
    fn new(interval: Interval, now_ms: i64) -> Self {
        Self {
            interval,
            step: interval.millis() as i64,
            now_ms,
            counts: Measured::default(),
            max_open: None,
            previous_open: None,
            previous_close: None,
            stale_run: 1,
            returns: Vec::new(),
            opens: Vec::new(),
        }
    }

    fn feed(&mut self, batch: &RecordBatch) {
        let int = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_primitive_opt::<Int64Type>())
        };
        let float = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_primitive_opt::<Float64Type>())
        };
        let (Some(open_time), Some(close_time), Some(trades)) =
            (int("open_time"), int("close_time"), int("trades"))
        else {
            return;
        };
        let floats = [
            "open",
            "high",
            "low",
            "close",
            "volume",
            "quote_volume",
            "taker_buy_base",
            "taker_buy_quote",
        ]
        .map(float);
        let [
            Some(open),
            Some(high),
            Some(low),
            Some(close),
            Some(volume),
            Some(quote_volume),
            Some(taker),
            Some(taker_quote),
        ] = floats
        else {
            return;
        };
        let m = &mut self.counts;
        for i in 0..batch.num_rows() {
            let any_null = open_time.is_null(i)
                || close_time.is_null(i)
                || trades.is_null(i)
                || floats.iter().flatten().any(|column| column.is_null(i));
            if any_null {
                m.bad_values += 1;
                continue;
            }
            let t = open_time.value(i);
            let (o, h, l, c) = (open.value(i), high.value(i), low.value(i), close.value(i));
            let (v, q, tb, tq) = (
                volume.value(i),
                quote_volume.value(i),
                taker.value(i),
                taker_quote.value(i),
            );
            m.rows += 1;
            m.first = Some(m.first.map_or(t, |f| f.min(t)));
            m.last = Some(m.last.map_or(t, |f| f.max(t)));
            let on_grid = t >= 0 && self.interval.floor(t as u64) as i64 == t;
            if !on_grid {
                m.off_grid += 1;
            }
            if close_time.value(i) != t + self.step - 1 {
                m.bad_close_time += 1;
            }
            if !(l <= o.min(c) && o.max(c) <= h) {
                m.bad_ohlc += 1;
            }
            let finite = [o, h, l, c, v, q, tb, tq].iter().all(|x| x.is_finite());
            let positive_prices = o > 0.0 && h > 0.0 && l > 0.0 && c > 0.0;
            let volumes = v >= 0.0 && q >= 0.0 && tb >= 0.0 && tq >= 0.0 && trades.value(i) >= 0;
            let taker_within = tb <= v * (1.0 + 1e-9) + 1e-12;
            if !(finite && positive_prices && volumes && taker_within) {
                m.bad_values += 1;
            }
            let in_future = close_time.value(i) >= self.now_ms;
            if in_future {
                m.future += 1;
            }
            if trades.value(i) == 0 && v == 0.0 && o == h && h == l && l == c {
                m.filled += 1;
            }
            match self.max_open {
                Some(max) if t < max => m.out_of_order += 1,
                _ => {}
            }
            if let Some(pc) = self.previous_close {
                if c == pc {
                    self.stale_run += 1;
                    m.longest_stale_run = m.longest_stale_run.max(self.stale_run);
                } else {
                    self.stale_run = 1;
                }
                // One-bar returns only: a return across a gap is not comparable.
                let r = c / pc - 1.0;
                if self.previous_open.is_some_and(|p| t - p == self.step) && r.is_finite() {
                    self.returns.push(r);
                }
            }
            self.max_open = Some(self.max_open.map_or(t, |max| max.max(t)));
            self.previous_open = Some(t);
            self.previous_close = Some(c);
            if on_grid && !in_future {
                self.opens.push(t);
            }
            m.closes.push((t, c));
        }
    }

    fn finish(mut self, measured: &mut Measured) {
        let mut m = std::mem::take(&mut self.counts);
        if m.rows > 0 {
            m.longest_stale_run = m.longest_stale_run.max(1);
        }
        // The grid: distinct aligned open times (future candles aside), the repeats among all
        // open times, and the longest run of missing ones.
        let mut all: Vec<i64> = m.closes.iter().map(|(t, _)| *t).collect();
        all.sort_unstable();
        let total = all.len();
        all.dedup();
        m.duplicates = (total - all.len()) as u64;
        // An out-of-order row that repeats an earlier time is a duplicate, not both.
        m.out_of_order = m.out_of_order.saturating_sub(m.duplicates);
        self.opens.sort_unstable();
        self.opens.dedup();
        m.distinct_on_grid = self.opens.len() as u64;
        m.grid_first = self.opens.first().copied();
        m.grid_last = self.opens.last().copied();
        m.longest_gap_bars = self
            .opens
            .windows(2)
            .map(|pair| ((pair[1] - pair[0]) / self.step - 1).max(0) as u64)
            .max()
            .unwrap_or(0);
        // Return outliers by robust z-score: |r - median| / (1.4826 MAD), falling back to
        // 1.2533 x the mean absolute deviation when more than half the returns are equal.
        m.returns = self.returns.len() as u64;
        if self.returns.len() >= 10 {
            let median = median_of(&mut self.returns.clone());
            let mut deviations: Vec<f64> =
                self.returns.iter().map(|r| (r - median).abs()).collect();
            let mut scale = median_of(&mut deviations) * 1.4826;
            if scale <= 0.0 {
                scale = 1.2533 * deviations.iter().sum::<f64>() / deviations.len() as f64;
            }
            if scale > 0.0 {
                let mut z: Vec<f64> = self
                    .returns
                    .iter()
                    .map(|r| (r - median).abs() / scale)
                    .collect();
                z.sort_by(|a, b| b.total_cmp(a));
                m.z_sorted = z;
            }
        }
        m.interval = measured.interval;
        m.damaged = std::mem::take(&mut measured.damaged);
        m.schema = std::mem::take(&mut measured.schema);
        m.provenance = std::mem::take(&mut measured.provenance);
        *measured = m;
    }
}

fn median_of(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let middle = values.len() / 2;
    let (_, m, _) = values.select_nth_unstable_by(middle, f64::total_cmp);
    let upper = *m;
    if values.len() % 2 == 1 {
        upper
    } else {
        let lower = values[..middle]
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        (lower + upper) / 2.0
    }
}

/// For each dataset that shares its symbol and interval with another source's: the largest
/// relative difference of closes at equal open times, and the other source.
fn source_agreement(
    results: &[(DatasetKey, Vec<PartEntry>, Measured)],
) -> BTreeMap<DatasetKey, (f64, String)> {
    let mut out: BTreeMap<DatasetKey, (f64, String)> = BTreeMap::new();
    for (a, (key_a, _, measured_a)) in results.iter().enumerate() {
        for (key_b, _, measured_b) in &results[a + 1..] {
            if key_a.1 != key_b.1 || key_a.2 != key_b.2 || key_a.0 == key_b.0 {
                continue;
            }
            let closes_b: BTreeMap<i64, f64> = measured_b.closes.iter().copied().collect();
            let worst = measured_a
                .closes
                .iter()
                .filter_map(|(time, close)| {
                    let other = closes_b.get(time)?;
                    (*other > 0.0 && *close > 0.0)
                        .then(|| (close - other).abs() / close.min(*other))
                })
                .fold(0.0f64, f64::max);
            for (key, other) in [(key_a, &key_b.0), (key_b, &key_a.0)] {
                let entry = out.entry(key.clone()).or_insert((0.0, other.clone()));
                if worst >= entry.0 {
                    *entry = (worst, other.clone());
                }
            }
        }
    }
    out
}

fn percent(share: f64) -> String {
    format!("{:.2}%", share * 100.0)
}

impl Prepared {
    fn judge(
        &self,
        key: &DatasetKey,
        m: &Measured,
        agreement: Option<&(f64, String)>,
        newest: Option<i64>,
    ) -> DatasetReport {
        let p = &self.params;
        let mut checks = Vec::new();
        exact(
            &mut checks,
            "parts",
            m.damaged.len() as u64,
            2.0,
            format!("parts damaged or missing: {}", m.damaged.join("; ")),
        );
        exact(
            &mut checks,
            "schema",
            m.schema.len() as u64,
            2.0,
            format!("schema: {}", m.schema.join("; ")),
        );
        let simulated = m.provenance.iter().any(|kind| kind == "simulated");
        let unknown: Vec<&str> = m
            .provenance
            .iter()
            .map(String::as_str)
            .filter(|kind| !crate::provenance::REAL.contains(kind) && *kind != "simulated")
            .collect();
        let provenance_problem = if m.provenance.len() > 1 {
            Some(format!(
                "mixed provenance in one dataset: {}",
                m.provenance.join(", ")
            ))
        } else if !unknown.is_empty() {
            Some(format!(
                "provenance `{}` is not a known source of real data (exchange, recorded, binance-dump)",
                unknown.join(", ")
            ))
        } else if simulated && !p.allow_synthetic {
            Some(
                "simulated data (set allow_synthetic: true to let it through, labelled synthetic)"
                    .to_owned(),
            )
        } else {
            None
        };
        exact(
            &mut checks,
            "provenance",
            u64::from(provenance_problem.is_some()),
            2.0,
            provenance_problem.unwrap_or_default(),
        );
        // No rows at all, with no damaged part or schema problem to explain it.
        exact(
            &mut checks,
            "rows",
            u64::from(m.rows == 0 && m.damaged.is_empty() && m.schema.is_empty()),
            2.0,
            "no rows".to_owned(),
        );
        exact(
            &mut checks,
            "order",
            m.duplicates + m.out_of_order,
            2.0,
            format!(
                "open times not strictly increasing: {} duplicate(s), {} out of order",
                m.duplicates, m.out_of_order
            ),
        );
        exact(
            &mut checks,
            "grid",
            m.off_grid,
            2.0,
            format!("{} open time(s) off the {} grid", m.off_grid, key.2),
        );
        exact(
            &mut checks,
            "close_time",
            m.bad_close_time,
            2.0,
            format!(
                "{} candle(s) with closeTime != openTime + interval - 1 ms",
                m.bad_close_time
            ),
        );
        exact(
            &mut checks,
            "ohlc",
            m.bad_ohlc,
            2.0,
            format!(
                "{} candle(s) break low <= min(open, close) <= max(open, close) <= high",
                m.bad_ohlc
            ),
        );
        exact(
            &mut checks,
            "values",
            m.bad_values,
            2.0,
            format!(
                "{} candle(s) with a missing or non-finite value, a non-positive price, a negative volume, quote volume or trade count, or taker volume above volume",
                m.bad_values
            ),
        );
        exact(
            &mut checks,
            "future",
            m.future,
            2.0,
            format!("{} candle(s) closing in the future", m.future),
        );
        let step = m.interval.map_or(1, Interval::millis) as f64;
        let span_ms = match (m.grid_first, m.grid_last) {
            (Some(first), Some(last)) => (last - first) as f64 + step,
            _ => 0.0,
        };
        let min_history_ms = self.min_history.as_millis() as f64;
        let long_enough = m.rows == 0 || span_ms >= min_history_ms;
        checks.push(Check {
            name: "history",
            figure: span_ms / 86_400_000.0,
            limit: min_history_ms / 86_400_000.0,
            passed: long_enough,
            score: if long_enough {
                1.0
            } else {
                0.5 * (span_ms / min_history_ms).min(1.0)
            },
            reason: (!long_enough).then(|| {
                format!(
                    "too short: {} of history (minimum {})",
                    crate::util::time::human(Duration::from_millis(span_ms as u64)),
                    crate::util::time::human(self.min_history)
                )
            }),
            weight: 1.5,
        });
        // The expected grid runs from the first to the last on-grid candle that has closed.
        let expected = match (m.grid_first, m.grid_last) {
            (Some(first), Some(last)) => ((last - first) as f64 / step) + 1.0,
            _ => 0.0,
        };
        let missing = if expected > 0.0 {
            ((expected - m.distinct_on_grid as f64) / expected).max(0.0)
        } else {
            0.0
        };
        tolerant(
            &mut checks,
            "missing",
            missing,
            p.max_missing,
            1.5,
            format!(
                "missing candles: {} of the expected grid (limit {})",
                percent(missing),
                percent(p.max_missing)
            ),
        );
        // A gap limit shorter than one candle would refuse any gap at all on long intervals.
        let gap_limit = self.max_gap.max(Duration::from_millis(step as u64));
        let gap = Duration::from_millis((m.longest_gap_bars as f64 * step) as u64);
        tolerant(
            &mut checks,
            "longest_gap",
            gap.as_secs_f64() / 86_400.0,
            gap_limit.as_secs_f64() / 86_400.0,
            1.5,
            format!(
                "longest gap: {} candle(s) = {} (limit {})",
                m.longest_gap_bars,
                crate::util::time::human(gap),
                crate::util::time::human(gap_limit)
            ),
        );
        // A dataset that stopped well before the others of its interval is stale at the end.
        let lag = match (newest, m.grid_last) {
            (Some(newest), Some(last)) => Duration::from_millis((newest - last).max(0) as u64),
            _ => Duration::ZERO,
        };
        let lag_limit = self.max_lag.max(Duration::from_millis(step as u64));
        tolerant(
            &mut checks,
            "ends_early",
            lag.as_secs_f64() / 86_400.0,
            lag_limit.as_secs_f64() / 86_400.0,
            1.5,
            format!(
                "ends early: its last candle is {} behind the newest {} candle (limit {}; raise max_lag to keep delisted symbols)",
                crate::util::time::human(lag),
                key.2,
                crate::util::time::human(lag_limit)
            ),
        );
        let rows = m.rows.max(1) as f64;
        tolerant(
            &mut checks,
            "filled",
            m.filled as f64 / rows,
            p.max_filled,
            1.0,
            format!(
                "{} filled-looking bar(s) (no trades, no volume, O=H=L=C): {} (limit {})",
                m.filled,
                percent(m.filled as f64 / rows),
                percent(p.max_filled)
            ),
        );
        tolerant(
            &mut checks,
            "stale",
            m.longest_stale_run as f64,
            p.max_stale_run as f64,
            1.0,
            format!(
                "stale data: {} identical closes in a row (limit {})",
                m.longest_stale_run, p.max_stale_run
            ),
        );
        let outliers = m.z_sorted.iter().take_while(|z| **z > p.outlier_z).count();
        let outlier_share = outliers as f64 / m.returns.max(1) as f64;
        tolerant(
            &mut checks,
            "outliers",
            outlier_share,
            p.max_outliers,
            1.0,
            format!(
                "{outliers} return outlier(s) with robust |z| > {} (largest {:.1}): {} of returns (limit {})",
                p.outlier_z,
                m.z_sorted.first().copied().unwrap_or(0.0),
                percent(outlier_share),
                percent(p.max_outliers)
            ),
        );
        if let Some((difference, other)) = agreement {
            tolerant(
                &mut checks,
                "sources",
                *difference,
                p.source_tolerance,
                1.0,
                format!(
                    "closes differ from source `{other}` by up to {} (limit {})",
                    percent(*difference),
                    percent(p.source_tolerance)
                ),
            );
        }
        let total: f64 = checks.iter().map(|c| c.weight).sum();
        let score = checks.iter().map(|c| c.weight * c.score).sum::<f64>() / total;
        let failures: Vec<String> = checks.iter().filter_map(|c| c.reason.clone()).collect();
        DatasetReport {
            source: key.0.clone(),
            symbol: key.1.clone(),
            interval: key.2.clone(),
            rows: m.rows,
            first_open_ms: m.first,
            last_open_ms: m.last,
            provenance: m.provenance.clone(),
            passed: failures.is_empty(),
            score: (score * 10_000.0).round() / 10_000.0,
            failures,
            checks,
        }
    }
}

/// A zero-tolerance check: passes when `figure` is 0.
fn exact(checks: &mut Vec<Check>, name: &'static str, figure: u64, weight: f64, reason: String) {
    let passed = figure == 0;
    checks.push(Check {
        name,
        figure: figure as f64,
        limit: 0.0,
        passed,
        score: if passed { 1.0 } else { 0.0 },
        reason: (!passed).then_some(reason),
        weight,
    });
}

/// A check with a tolerance: passes at or under `limit`; a failure scores half the ratio of
/// the limit to the figure.
fn tolerant(
    checks: &mut Vec<Check>,
    name: &'static str,
    figure: f64,
    limit: f64,
    weight: f64,
    reason: String,
) {
    let passed = figure <= limit;
    checks.push(Check {
        name,
        figure,
        limit,
        passed,
        score: if passed {
            1.0
        } else {
            0.5 * (limit / figure).min(1.0)
        },
        reason: (!passed).then_some(reason),
        weight,
    });
}

/// The table printed at the end of the stage.
fn render_table(reports: &[DatasetReport], synthetic: bool) -> String {
    let mut out = String::new();
    if synthetic {
        out.push_str(&format!(
            "*** {} ***\n",
            crate::provenance::SYNTHETIC_BANNER
        ));
    }
    let passed = reports.iter().filter(|r| r.passed).count();
    out.push_str(&format!(
        "validation: {passed} of {} datasets passed, {} quarantined\n",
        reports.len(),
        reports.len() - passed
    ));
    let date = |ms: Option<i64>| {
        ms.map(|ms| crate::util::time::rfc3339(ms.max(0) as u64)[..10].to_owned())
            .unwrap_or_else(|| "-".into())
    };
    let width = reports
        .iter()
        .map(|r| r.symbol.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let source_width = reports
        .iter()
        .map(|r| r.source.len())
        .max()
        .unwrap_or(6)
        .max(6);
    out.push_str(&format!(
        "{:<source_width$}  {:<width$}  {:<8}  {:>8}  {:<10}  {:<10}  {:>5}  verdict\n",
        "source", "symbol", "interval", "rows", "first", "last", "score"
    ));
    for r in reports {
        let verdict = if r.passed {
            "ok".to_owned()
        } else {
            format!("QUARANTINED: {}", r.failures.join("; "))
        };
        out.push_str(&format!(
            "{:<source_width$}  {:<width$}  {:<8}  {:>8}  {:<10}  {:<10}  {:>5.2}  {verdict}\n",
            r.source,
            r.symbol,
            r.interval,
            r.rows,
            date(r.first_open_ms),
            date(r.last_open_ms),
            r.score
        ));
    }
    out
}
