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
//!     on_failure: quarantine     # or fail: stop the pipeline at the first failing dataset
//!     min_symbols: 1             # stop the pipeline when fewer symbols pass
//!     max_missing: 0.05          # share of the expected grid
//!     max_gap: 3d                # the longest run of missing candles
//!     max_filled: 0.01           # share of filled-looking bars (no trades, no volume, O=H=L=C)
//!     max_stale_run: 24          # identical closes in a row
//!     outlier_z: 10              # robust z-score (median/MAD) of a return that counts as an outlier
//!     max_outliers: 0.001        # share of returns
//!     min_history: 30d
//!     source_tolerance: 0.01     # closes of one symbol from two sources agree within this
//! ```
//!
//! Outputs: `lake.json` (the passing datasets' parts, same format as `collect`'s),
//! `validation_report.json` (every check's figure, limit and verdict, per dataset),
//! `validation_table.txt` (the table printed at the end of the stage).
//!
//! The quality score of a dataset is the weighted mean of its checks' scores. A check with a
//! tolerance scores `1 - min(1, figure / limit)` while it passes and 0 when it fails; a
//! zero-tolerance check scores 1 or 0. Weights: integrity checks (parts intact, schema, order,
//! grid, close times, OHLC, values, future candles, provenance) 2; coverage (gaps, history) 1.5;
//! plausibility (filled bars, stale closes, outliers, source agreement) 1. A clean dataset
//! scores 1.0.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::exchange::model::Interval;
use crate::lake::{Footer, LISTING_FILE, LakeListing, PartEntry};
use crate::location::YamlPath;
use crate::stage::{
    BoxFuture, ParamError, PrepareContext, PreparedStage, StageContext, StageError, StageKind,
    parse_params,
};
use crate::stages::write_json;

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
fn default_source_tolerance() -> f64 {
    0.01
}

#[derive(Debug)]
struct Prepared {
    params: Params,
    max_gap: Duration,
    min_history: Duration,
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
            crate::time::parse_duration(text)
                .map_err(|message| ParamError::new(root.clone().key(field), message))
        };
        let max_gap = duration("max_gap", &params.max_gap)?;
        let min_history = duration("min_history", &params.min_history)?;
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
        if parts.is_empty()
            && !context
                .inputs
                .iter()
                .any(|i| i.dir.join(LISTING_FILE).is_file())
        {
            return Err(failed(
                "validate reads the lake through a `lake.json` input: add `needs: [collect]`",
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
        let now_ms = crate::time::now_ms() as i64;
        let total = datasets.len() as u64;
        let parallel = std::thread::available_parallelism().map_or(2, usize::from);
        let tasks: Vec<_> = datasets
            .into_iter()
            .map(|(key, parts)| {
                let session = session.clone();
                let data_dir = context.data_dir.clone();
                async move {
                    let scan = scan_dataset(&session, &data_dir, &parts).await;
                    (key, parts, scan)
                }
            })
            .collect();
        let scans = futures::stream::iter(tasks).buffer_unordered(parallel);
        futures::pin_mut!(scans);
        let mut results: Vec<(DatasetKey, Vec<PartEntry>, Measured)> = Vec::new();
        let mut done = 0;
        while let Some((key, parts, scan)) = scans.next().await {
            if context.cancel.is_cancelled() {
                return Err(StageError::Cancelled);
            }
            let measured = scan?;
            done += 1;
            context
                .progress
                .update(done, total, format!("{} {} {}", key.0, key.1, key.2));
            results.push((key, parts, measured));
        }
        results.sort_by(|a, b| a.0.cmp(&b.0));
        let agreement = source_agreement(&results);
        let mut reports = Vec::new();
        let mut passing_parts = Vec::new();
        for (key, parts, measured) in &results {
            let report = self.judge(key, measured, agreement.get(key), now_ms);
            if report.passed {
                passing_parts.extend(parts.iter().cloned());
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
                "banner": synthetic.then_some(SYNTHETIC_BANNER),
                "validated_at_ms": now_ms,
                "params": self.params,
                "datasets_passed": reports.iter().filter(|r| r.passed).count(),
                "datasets_quarantined": reports.iter().filter(|r| !r.passed).count(),
                "symbols_passed": passed_symbols.len(),
                "datasets": reports,
            }),
        )?;
        std::fs::write(context.output_dir.join("validation_table.txt"), &table).map_err(
            |source| StageError::Io {
                action: "write",
                path: context.output_dir.join("validation_table.txt"),
                source,
            },
        )?;
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

/// Shown wherever synthetic data flows on.
pub const SYNTHETIC_BANNER: &str = "SYNTHETIC DATA: simulated market data was allowed through (allow_synthetic: true); results say nothing about real markets";

/// Figures measured in one pass over a dataset.
#[derive(Debug, Default, Clone)]
struct Measured {
    interval: Option<Interval>,
    /// Parts whose bytes no longer match the listing, or that are gone.
    damaged: Vec<String>,
    /// Column problems, one line each.
    schema: Vec<String>,
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
    distinct_on_grid: u64,
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

/// Verifies the parts, then reads them (in order) through DataFusion and measures everything.
async fn scan_dataset(
    session: &SessionContext,
    data_dir: &Path,
    parts: &[PartEntry],
) -> Result<Measured, StageError> {
    let mut measured = Measured {
        interval: parts
            .first()
            .and_then(|p| Interval::parse(&p.interval).ok()),
        ..Measured::default()
    };
    let mut readable: Vec<PathBuf> = Vec::new();
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
        let footer = match Footer::from_bytes(&path, bytes::Bytes::from(bytes)) {
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
        let kind = footer
            .provenance
            .map(|p| p.kind)
            .unwrap_or_else(|| part.provenance.clone());
        if !measured.provenance.contains(&kind) {
            measured.provenance.push(kind);
        }
        if fits {
            readable.push(path);
        }
    }
    if readable.is_empty() {
        return Ok(measured);
    }
    let paths: Vec<String> = readable
        .iter()
        .map(|path| path.to_string_lossy().into_owned())
        .collect();
    let columns: Vec<&str> = COLUMNS
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| *name != "provenance")
        .collect();
    let frame = session
        .read_parquet(paths, ParquetReadOptions::default())
        .await
        .and_then(|frame| frame.select_columns(&columns))
        .map_err(|error| failed(format!("reading the lake: {error}")))?;
    let batches = frame
        .collect()
        .await
        .map_err(|error| failed(format!("reading the lake: {error}")))?;
    measure(&mut measured, &batches);
    Ok(measured)
}

/// One pass over the rows in stored order.
fn measure(measured: &mut Measured, batches: &[RecordBatch]) {
    let Some(interval) = measured.interval else {
        return;
    };
    let step = interval.millis() as i64;
    let now = crate::time::now_ms() as i64;
    let mut previous_open: Option<i64> = None;
    let mut previous_close: Option<f64> = None;
    let mut stale_run = 1u64;
    let mut returns = Vec::new();
    let mut opens = Vec::new();
    for batch in batches {
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
            continue;
        };
        let (Some(open), Some(high), Some(low), Some(close)) =
            (float("open"), float("high"), float("low"), float("close"))
        else {
            continue;
        };
        let (Some(volume), Some(quote_volume), Some(taker)) = (
            float("volume"),
            float("quote_volume"),
            float("taker_buy_base"),
        ) else {
            continue;
        };
        for i in 0..batch.num_rows() {
            if open_time.is_null(i) || close.is_null(i) {
                measured.bad_values += 1;
                continue;
            }
            let t = open_time.value(i);
            let (o, h, l, c) = (open.value(i), high.value(i), low.value(i), close.value(i));
            let (v, q, tb) = (volume.value(i), quote_volume.value(i), taker.value(i));
            measured.rows += 1;
            measured.first = Some(measured.first.map_or(t, |f| f.min(t)));
            measured.last = Some(measured.last.map_or(t, |f| f.max(t)));
            if interval.floor(t.max(0) as u64) as i64 != t {
                measured.off_grid += 1;
            }
            if close_time.value(i) != t + step - 1 {
                measured.bad_close_time += 1;
            }
            if !(l <= o.min(c) && o.max(c) <= h) {
                measured.bad_ohlc += 1;
            }
            let finite = [o, h, l, c, v, q, tb].iter().all(|x| x.is_finite());
            if !finite
                || o <= 0.0
                || h <= 0.0
                || l <= 0.0
                || c <= 0.0
                || v < 0.0
                || q < 0.0
                || tb < 0.0
                || tb > v * (1.0 + 1e-9) + 1e-12
                || trades.value(i) < 0
            {
                measured.bad_values += 1;
            }
            if close_time.value(i) >= now {
                measured.future += 1;
            }
            if trades.value(i) == 0 && v == 0.0 && o == h && h == l && l == c {
                measured.filled += 1;
            }
            match previous_open {
                Some(p) if t == p => measured.duplicates += 1,
                Some(p) if t < p => measured.out_of_order += 1,
                _ => {}
            }
            if let Some(pc) = previous_close {
                if c == pc {
                    stale_run += 1;
                    measured.longest_stale_run = measured.longest_stale_run.max(stale_run);
                } else {
                    stale_run = 1;
                }
                // One-bar returns only: a return across a gap is not comparable.
                if pc > 0.0 && previous_open.is_some_and(|p| t - p == step) {
                    returns.push(c / pc - 1.0);
                }
            }
            previous_open = Some(previous_open.map_or(t, |p| p.max(t)));
            previous_close = Some(c);
            opens.push(t);
            measured.closes.push((t, c));
        }
    }
    // The grid: distinct aligned open times, and the longest run of missing ones.
    opens.sort_unstable();
    opens.dedup();
    measured.distinct_on_grid = opens
        .iter()
        .filter(|&&t| interval.floor(t.max(0) as u64) as i64 == t)
        .count() as u64;
    measured.longest_gap_bars = opens
        .windows(2)
        .map(|pair| ((pair[1] - pair[0]) / step - 1).max(0) as u64)
        .max()
        .unwrap_or(0);
    if measured.rows > 0 {
        measured.longest_stale_run = measured.longest_stale_run.max(1);
    }
    // Return outliers by robust z-score: |r - median| / (1.4826 * MAD). With no spread at all
    // (MAD 0) the check says nothing; the stale-closes check speaks for such data.
    measured.returns = returns.len() as u64;
    if returns.len() >= 10 {
        let median = median_of(&mut returns.clone());
        let mut deviations: Vec<f64> = returns.iter().map(|r| (r - median).abs()).collect();
        let mad = median_of(&mut deviations) * 1.4826;
        if mad > 0.0 {
            let mut z: Vec<f64> = returns.iter().map(|r| (r - median).abs() / mad).collect();
            z.sort_by(|a, b| b.total_cmp(a));
            measured.z_sorted = z;
        }
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
                    (*other > 0.0).then(|| (close / other - 1.0).abs())
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
        _now_ms: i64,
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
        let refused: Vec<&str> = m
            .provenance
            .iter()
            .map(String::as_str)
            .filter(|kind| (*kind == "simulated" && !p.allow_synthetic) || *kind == "unknown")
            .collect();
        exact(
            &mut checks,
            "provenance",
            refused.len() as u64,
            2.0,
            if refused.contains(&"unknown") {
                "no provenance recorded: the data's origin is unknown".to_owned()
            } else {
                "simulated data (set allow_synthetic: true to let it through, labelled synthetic)"
                    .to_owned()
            },
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
                "{} candle(s) with a non-positive price, a negative volume, or taker volume above volume",
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
        let span_ms = match (m.first, m.last) {
            (Some(first), Some(last)) => (last - first) as f64 + step,
            _ => 0.0,
        };
        let min_history_ms = self.min_history.as_millis() as f64;
        let long_enough = span_ms >= min_history_ms;
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
                    crate::time::human(Duration::from_millis(span_ms as u64)),
                    crate::time::human(self.min_history)
                )
            }),
            weight: 1.5,
        });
        let expected = if span_ms > 0.0 { span_ms / step } else { 0.0 };
        let missing = if expected > 0.0 {
            ((expected - m.distinct_on_grid as f64) / expected).max(0.0)
        } else {
            0.0
        };
        let gap = Duration::from_millis((m.longest_gap_bars as f64 * step) as u64);
        let covered = missing <= p.max_missing && gap <= self.max_gap;
        checks.push(Check {
            name: "gaps",
            figure: missing,
            limit: p.max_missing,
            passed: covered,
            score: if covered {
                1.0
            } else {
                0.5 * (p.max_missing / missing.max(f64::MIN_POSITIVE)).min(1.0)
            },
            reason: (!covered).then(|| {
                format!(
                    "missing candles: {} of the expected grid (limit {}), longest gap {} bar(s) = {} (limit {})",
                    percent(missing),
                    percent(p.max_missing),
                    m.longest_gap_bars,
                    crate::time::human(gap),
                    crate::time::human(self.max_gap)
                )
            }),
            weight: 1.5,
        });
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
        out.push_str(&format!("*** {SYNTHETIC_BANNER} ***\n"));
    }
    let passed = reports.iter().filter(|r| r.passed).count();
    out.push_str(&format!(
        "validation: {passed} of {} datasets passed, {} quarantined\n",
        reports.len(),
        reports.len() - passed
    ));
    let date = |ms: Option<i64>| {
        ms.map(|ms| crate::time::rfc3339(ms.max(0) as u64)[..10].to_owned())
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
