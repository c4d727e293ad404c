//! Measuring a dataset: its parts verified against the listing, read through DataFusion from
//! the verified bytes, and every figure the checks need taken in one pass over the Arrow arrays.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use object_store::memory::InMemory;

use super::funding::FundingFigures;
use super::judge::{DatasetKey, Limits};
use super::ticks::{Bar, TickRules};
use crate::market::lake::{Footer, PartEntry};
use crate::market::model::{Dataset, Interval};

/// Figures measured in one pass over a dataset.
#[derive(Debug, Default, Clone)]
pub struct Measured {
    pub interval: Option<Interval>,
    /// Parts whose bytes no longer match the listing, that are gone, or that cannot be read.
    pub damaged: Vec<String>,
    /// Column problems, one line each.
    pub schema: Vec<String>,
    /// Provenance kinds as the part files themselves record them (`unknown` when they do not).
    pub provenance: Vec<String>,
    pub rows: u64,
    pub first: Option<i64>,
    pub last: Option<i64>,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub off_grid: u64,
    pub bad_close_time: u64,
    pub bad_ohlc: u64,
    pub bad_values: u64,
    pub future: u64,
    pub filled: u64,
    /// Distinct on-grid open times, not counting future candles.
    pub distinct_on_grid: u64,
    /// First and last on-grid open time that is not in the future.
    pub grid_first: Option<i64>,
    pub grid_last: Option<i64>,
    pub longest_gap_bars: u64,
    pub longest_stale_run: u64,
    /// Where the longest run of identical closes starts.
    pub stale_from: Option<i64>,
    /// The first open time that appears twice.
    pub first_duplicate: Option<i64>,
    pub returns: u64,
    /// The largest robust |z| of a one-bar return (|r - median| / 1.4826 MAD): shown, not
    /// judged (fat tails are not bad data; `bad_ticks` are).
    pub largest_z: f64,
    /// Prices inconsistent with their neighbours, worst first.
    pub bad_ticks: Vec<super::ticks::Flag>,
    /// Every row's prices in stored order: for the bad-tick rule and cross-source comparison.
    pub bars: Vec<Bar>,
    /// A funding series' own figures (`None` for kline-shaped tables).
    pub funding: Option<FundingFigures>,
}

pub const COLUMNS: [(&str, DataType); 12] = [
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

/// A primitive column of a scanned batch by name, `None` when it is missing or of another type.
pub(super) fn column<'a, T: arrow::datatypes::ArrowPrimitiveType>(
    batch: &'a RecordBatch,
    name: &str,
) -> Option<&'a arrow::array::PrimitiveArray<T>> {
    batch
        .column_by_name(name)
        .and_then(|column| column.as_primitive_opt::<T>())
}

/// The object store DataFusion reads verified part bytes from: what was checked is exactly
/// what is read, even if the file changes meanwhile.
pub const MEMORY_URL: &str = "memory://";

/// Verifies the parts, then reads them one at a time, in listing order, through DataFusion
/// (from memory, the bytes just verified) and measures everything.
pub async fn scan_dataset(
    session: &SessionContext,
    store: &Arc<InMemory>,
    data_dir: &Path,
    key: &DatasetKey,
    parts: &[PartEntry],
    now_ms: i64,
    limits: &Limits,
) -> Measured {
    if key.table == Dataset::Funding {
        return scan_funding(session, store, data_dir, parts, now_ms, limits).await;
    }
    let interval = Interval::parse(&key.interval).ok();
    let mut measured = Measured {
        interval,
        ..Measured::default()
    };
    let Some(interval) = interval else {
        measured
            .schema
            .push(format!("`{}` is not a known interval", key.interval));
        return measured;
    };
    let mut measurer = Measurer::new(key.table, interval, now_ms, limits.ticks);
    read_parts(
        session,
        store,
        data_dir,
        parts,
        &COLUMNS,
        &mut measured,
        |batch| measurer.feed(batch),
    )
    .await;
    measurer.finish(&mut measured);
    measured
}

/// A funding series: order, duplicates and settlements in the future as for klines, then the
/// schedule, the gaps and the bounds ([`super::funding`]).
async fn scan_funding(
    session: &SessionContext,
    store: &Arc<InMemory>,
    data_dir: &Path,
    parts: &[PartEntry],
    now_ms: i64,
    limits: &Limits,
) -> Measured {
    let mut measured = Measured::default();
    let mut series = Vec::new();
    let mut bad_values = 0;
    let columns = super::funding::COLUMNS;
    read_parts(
        session,
        store,
        data_dir,
        parts,
        &columns,
        &mut measured,
        |batch| series.extend(super::funding::settlements(batch, &mut bad_values)),
    )
    .await;
    let m = &mut measured;
    m.rows = series.len() as u64;
    m.bad_values = bad_values;
    m.out_of_order = series
        .windows(2)
        .filter(|pair| pair[1].time < pair[0].time)
        .count() as u64;
    m.future = series.iter().filter(|s| s.time > now_ms).count() as u64;
    series.sort_by_key(|settlement| settlement.time);
    let total = series.len();
    m.first_duplicate = series
        .windows(2)
        .find(|pair| pair[0].time == pair[1].time)
        .map(|pair| pair[0].time);
    series.dedup_by_key(|settlement| settlement.time);
    m.duplicates = (total - series.len()) as u64;
    m.out_of_order = m.out_of_order.saturating_sub(m.duplicates);
    m.first = series.first().map(|s| s.time);
    m.last = series.last().map(|s| s.time);
    m.grid_first = m.first;
    m.grid_last = m.last;
    m.funding = Some(super::funding::measure(&series, limits.funding_cap));
    measured
}

/// Verifies each part against the listing and feeds its batches (the `columns`, checked for
/// their types) to `feed`; damage and column problems are noted in `measured`.
async fn read_parts(
    session: &SessionContext,
    store: &Arc<InMemory>,
    data_dir: &Path,
    parts: &[PartEntry],
    expected_columns: &[(&str, DataType)],
    measured: &mut Measured,
    mut feed: impl FnMut(&RecordBatch),
) {
    let columns: Vec<&str> = expected_columns
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
        for (name, expected) in expected_columns {
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
            Ok(batches) => batches.iter().for_each(&mut feed),
            Err(error) => measured
                .damaged
                .push(format!("{}: unreadable: {error}", part.path)),
        }
    }
}

/// Walks the rows of one dataset in stored order, across batches and parts.
struct Measurer {
    dataset: Dataset,
    interval: Interval,
    step: i64,
    now_ms: i64,
    counts: Measured,
    max_open: Option<i64>,
    previous_open: Option<i64>,
    previous_close: Option<f64>,
    stale_run: u64,
    /// Where the current run of identical closes started.
    stale_start: Option<i64>,
    returns: Vec<f64>,
    opens: Vec<i64>,
    rules: TickRules,
}

impl Measurer {
    fn new(dataset: Dataset, interval: Interval, now_ms: i64, rules: TickRules) -> Self {
        Self {
            dataset,
            interval,
            step: interval.millis() as i64,
            now_ms,
            counts: Measured::default(),
            max_open: None,
            previous_open: None,
            previous_close: None,
            stale_run: 1,
            stale_start: None,
            returns: Vec::new(),
            opens: Vec::new(),
            rules,
        }
    }

    fn feed(&mut self, batch: &RecordBatch) {
        let int = |name: &str| column::<Int64Type>(batch, name);
        let float = |name: &str| column::<Float64Type>(batch, name);
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
            // The premium index is a signed fraction, not a price.
            let positive_prices =
                !self.dataset.is_price() || (o > 0.0 && h > 0.0 && l > 0.0 && c > 0.0);
            let volumes = v >= 0.0 && q >= 0.0 && tb >= 0.0 && tq >= 0.0 && trades.value(i) >= 0;
            let taker_within = tb <= v * (1.0 + 1e-9) + 1e-12;
            if !(finite && positive_prices && volumes && taker_within) {
                m.bad_values += 1;
            }
            let in_future = close_time.value(i) >= self.now_ms;
            if in_future {
                m.future += 1;
            }
            // Mark, index and premium bars have no volume: nothing to tell a filled bar by.
            if self.dataset.has_volume()
                && trades.value(i) == 0
                && v == 0.0
                && o == h
                && h == l
                && l == c
            {
                m.filled += 1;
            }
            match self.max_open {
                Some(max) if t < max => m.out_of_order += 1,
                _ => {}
            }
            if let Some(pc) = self.previous_close {
                if c == pc {
                    self.stale_run += 1;
                    if self.stale_run > m.longest_stale_run {
                        m.longest_stale_run = self.stale_run;
                        m.stale_from = self.stale_start;
                    }
                } else {
                    self.stale_start = Some(t);
                    self.stale_run = 1;
                }
                // One-bar returns only: a return across a gap is not comparable.
                let r = c / pc - 1.0;
                if self.previous_open.is_some_and(|p| t - p == self.step) && r.is_finite() {
                    self.returns.push(r);
                }
            } else {
                self.stale_start = Some(t);
            }
            self.max_open = Some(self.max_open.map_or(t, |max| max.max(t)));
            self.previous_open = Some(t);
            self.previous_close = Some(c);
            if on_grid && !in_future {
                self.opens.push(t);
            }
            m.bars.push(Bar {
                open_time: t,
                open: o,
                high: h,
                low: l,
                close: c,
            });
        }
    }

    fn finish(mut self, measured: &mut Measured) {
        let mut m = std::mem::take(&mut self.counts);
        if m.rows > 0 && m.longest_stale_run <= 1 {
            m.longest_stale_run = 1;
            m.stale_from = m.first;
        }
        // The grid: distinct aligned open times (future candles aside), the repeats among all
        // open times, and the longest run of missing ones.
        let mut all: Vec<i64> = m.bars.iter().map(|bar| bar.open_time).collect();
        all.sort_unstable();
        m.first_duplicate = all
            .windows(2)
            .find(|pair| pair[0] == pair[1])
            .map(|pair| pair[0]);
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
        // The largest return by robust z-score: |r - median| / (1.4826 MAD), falling back to
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
                m.largest_z = deviations.iter().fold(0.0f64, |max, d| max.max(d / scale));
            }
        }
        if self.dataset.is_price() {
            m.bad_ticks = super::ticks::find(&m.bars, self.step, &self.rules);
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
pub fn source_agreement(
    results: &[(DatasetKey, Vec<PartEntry>, Measured)],
) -> BTreeMap<DatasetKey, (f64, String)> {
    let mut out: BTreeMap<DatasetKey, (f64, String)> = BTreeMap::new();
    for (a, (key_a, _, measured_a)) in results.iter().enumerate() {
        for (key_b, _, measured_b) in &results[a + 1..] {
            let same_data = key_a.table == key_b.table
                && key_a.symbol == key_b.symbol
                && key_a.interval == key_b.interval;
            if !same_data || key_a.source == key_b.source || key_a.table == Dataset::Funding {
                continue;
            }
            let closes_b: BTreeMap<i64, f64> = measured_b
                .bars
                .iter()
                .map(|bar| (bar.open_time, bar.close))
                .collect();
            let worst = measured_a
                .bars
                .iter()
                .map(|bar| (bar.open_time, bar.close))
                .filter_map(|(time, close)| {
                    let other = closes_b.get(&time)?;
                    (*other > 0.0 && close > 0.0).then(|| (close - other).abs() / close.min(*other))
                })
                .fold(0.0f64, f64::max);
            for (key, other) in [(key_a, &key_b.source), (key_b, &key_a.source)] {
                let entry = out.entry(key.clone()).or_insert((0.0, other.clone()));
                if worst >= entry.0 {
                    *entry = (worst, other.clone());
                }
            }
        }
    }
    out
}
