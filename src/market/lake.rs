//! The market-data lake under the data directory: append-only Parquet part files, partitioned
//! Hive-style by source, interval and symbol, each row carrying its provenance.
//!
//! ```text
//! data/lake/klines/source=aster/interval=1h/symbol=BTCUSDT/part-<first open ms>-<last open ms>.parquet
//! data/lake/mark_klines/source=aster/interval=1h/symbol=BTCUSDT/part-...   (also index_klines, premium_klines)
//! data/lake/funding/source=aster/symbol=BTCUSDT/part-<first funding ms>-<last funding ms>.parquet
//! ```
//!
//! Mark, index and premium klines have the klines' columns; funding has its own
//! ([`funding_schema`]).
//!
//! A collection writes new parts holding only candles after the last stored one (or before the
//! first, when the history window grows) and never rewrites a part, so a stage output that lists
//! parts and their digests stays valid. Parts are written to a temporary name, fsynced, made
//! read-only and hard-linked into place ([`publish`]): a part either exists whole or not at all,
//! and an existing one is never replaced.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::market::model::{Dataset, Funding, Interval, Kline};

/// The klines table, relative to the data directory.
pub const KLINES: &str = "lake/klines";

#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("failed to {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{}: {message}", path.display())]
    Schema { path: PathBuf, message: String },
    #[error("refusing `{0:?}` as a lake path component: only letters, digits, `_` and `-`")]
    Unsafe(String),
    #[error("another collection is writing to {}; try again when it is done", .0.display())]
    Busy(PathBuf),
    #[error("{} already exists; parts are never overwritten", .0.display())]
    Exists(PathBuf),
}

/// A name that may become one directory level: letters, digits, `_`, `-`; no dots, no slashes.
pub fn is_safe_component(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

fn component(name: &str) -> Result<&str, LakeError> {
    if is_safe_component(name) {
        Ok(name)
    } else {
        Err(LakeError::Unsafe(name.to_owned()))
    }
}

/// Held while a stage writes one source's part of the lake: one writer at a time per source,
/// whatever the run root.
#[derive(Debug)]
pub struct LakeLock {
    _file: File,
}

/// Takes the writer lock of `source` in the lake (an OS file lock on
/// `<data>/lake/klines/source=<source>/.lock`, freed however the holder dies).
pub fn lock(data_dir: &Path, source: &str) -> Result<LakeLock, LakeError> {
    let dir = data_dir
        .join(KLINES)
        .join(format!("source={}", component(source)?));
    let path = dir.join(".lock");
    let io = |source| LakeError::Io {
        action: "lock",
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(LakeLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(LakeError::Busy(dir)),
        Err(std::fs::TryLockError::Error(source)) => Err(io(source)),
    }
}

/// Where one source's candles of one symbol and interval live.
pub fn partition_dir(
    data_dir: &Path,
    source: &str,
    interval: Interval,
    symbol: &str,
) -> Result<PathBuf, LakeError> {
    table_partition_dir(data_dir, Dataset::Klines, source, Some(interval), symbol)
}

/// Where one source's rows of one table, symbol and (for kline-shaped tables) interval live.
pub fn table_partition_dir(
    data_dir: &Path,
    dataset: Dataset,
    source: &str,
    interval: Option<Interval>,
    symbol: &str,
) -> Result<PathBuf, LakeError> {
    let mut dir = data_dir
        .join("lake")
        .join(dataset.table())
        .join(format!("source={}", component(source)?));
    if let Some(interval) = interval {
        dir = dir.join(format!("interval={}", interval.name()));
    }
    Ok(dir.join(format!("symbol={}", component(symbol)?)))
}

/// Where the data came from; stored in every row and in the file's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The pipeline's source name.
    pub source: String,
    pub base_url: String,
    pub fetched_at_ms: i64,
    /// `exchange` (live), `recorded` (real data replayed), `binance-dump`, or `simulated`.
    pub kind: String,
}

/// A stored part file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub path: PathBuf,
    pub first_open_ms: i64,
    pub last_open_ms: i64,
}

fn part_name(first: i64, last: i64) -> String {
    format!("part-{first:013}-{last:013}.parquet")
}

fn parse_part_name(name: &str) -> Option<(i64, i64)> {
    let stem = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let (first, last) = stem.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// The parts in a partition, oldest first. Temporary files are ignored.
pub fn parts(dir: &Path) -> Result<Vec<Part>, LakeError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LakeError::Io {
                action: "list",
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut parts = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| LakeError::Io {
            action: "list",
            path: dir.to_owned(),
            source,
        })?;
        if let Some((first, last)) = entry.file_name().to_str().and_then(parse_part_name) {
            parts.push(Part {
                path: entry.path(),
                first_open_ms: first,
                last_open_ms: last,
            });
        }
    }
    parts.sort_by_key(|part| part.first_open_ms);
    Ok(parts)
}

pub fn klines_schema() -> SchemaRef {
    let float = |name: &str| Field::new(name, DataType::Float64, false);
    let int = |name: &str| Field::new(name, DataType::Int64, false);
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        text("symbol"),
        text("interval"),
        int("open_time"),
        float("open"),
        float("high"),
        float("low"),
        float("close"),
        float("volume"),
        int("close_time"),
        float("quote_volume"),
        int("trades"),
        float("taker_buy_base"),
        float("taker_buy_quote"),
        text("source"),
        text("base_url"),
        int("fetched_at"),
        text("provenance"),
    ]))
}

/// Writes `rows` (sorted, non-empty) as a new part; atomic and read-only once there.
pub fn write_part(
    dir: &Path,
    symbol: &str,
    interval: Interval,
    rows: &[Kline],
    provenance: &Provenance,
) -> Result<Part, LakeError> {
    // Readers rely on it: the SQL stages declare every part sorted by open time.
    let (first, last) = check_part_times(dir, rows.iter().map(|k| k.open_time), "open")?;
    let name = part_name(first, last);
    let path = dir.join(&name);
    let batch = klines_batch(symbol, interval, rows, provenance);
    if !publish(&path, &batch, part_properties(provenance))? {
        return Err(LakeError::Exists(path));
    }
    Ok(Part {
        path,
        first_open_ms: first,
        last_open_ms: last,
    })
}

/// The first and last of a part's `times` (`what`: open, funding), refusing an empty part and
/// times that are not strictly increasing.
fn check_part_times(
    dir: &Path,
    times: impl Iterator<Item = i64>,
    what: &str,
) -> Result<(i64, i64), LakeError> {
    let mut span: Option<(i64, i64)> = None;
    for time in times {
        span = match span {
            Some((_, previous)) if time <= previous => {
                return Err(LakeError::Schema {
                    path: dir.to_owned(),
                    message: format!(
                        "refusing to write a part whose {what} times are not strictly increasing ({previous} then {time})"
                    ),
                });
            }
            Some((first, _)) => Some((first, time)),
            None => Some((time, time)),
        };
    }
    span.ok_or_else(|| LakeError::Schema {
        path: dir.to_owned(),
        message: "refusing to write an empty part".into(),
    })
}

/// zstd, with the provenance in the file's metadata.
fn part_properties(provenance: &Provenance) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
            "asterflow.provenance".to_owned(),
            serde_json::to_string(provenance).unwrap_or_default(),
        )]))
        .build()
}

/// Writes `batch` to `path` once: a synced, read-only temp file in the same directory, hard-
/// linked into place, so the name appears complete or not at all, and an existing file is never
/// replaced (`Ok(false)`: it was there already).
pub fn publish(
    path: &Path,
    batch: &arrow::array::RecordBatch,
    properties: WriterProperties,
) -> Result<bool, LakeError> {
    // The hard link decides; this only skips encoding a file that is surely there.
    if path.exists() {
        return Ok(false);
    }
    crate::util::fsx::write_with(path, crate::util::fsx::Place::Publish, |file| {
        let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(properties))?;
        writer.write(batch)?;
        writer.close()?;
        Ok(())
    })
    .map_err(|source| LakeError::Io {
        action: "publish",
        path: path.to_owned(),
        source,
    })
}

/// `rows` of one symbol and interval as a batch in the lake's schema.
pub fn klines_batch(
    symbol: &str,
    interval: Interval,
    rows: &[Kline],
    provenance: &Provenance,
) -> RecordBatch {
    let n = rows.len();
    let repeat = |value: &str| Arc::new(StringArray::from(vec![value; n])) as ArrayRef;
    let floats = |f: fn(&Kline) -> f64| {
        Arc::new(Float64Array::from_iter_values(rows.iter().map(f))) as ArrayRef
    };
    let ints = |f: fn(&Kline) -> i64| {
        Arc::new(Int64Array::from_iter_values(rows.iter().map(f))) as ArrayRef
    };
    let columns = vec![
        repeat(symbol),
        repeat(interval.name()),
        ints(|k| k.open_time),
        floats(|k| k.open),
        floats(|k| k.high),
        floats(|k| k.low),
        floats(|k| k.close),
        floats(|k| k.volume),
        ints(|k| k.close_time),
        floats(|k| k.quote_volume),
        ints(|k| k.trades),
        floats(|k| k.taker_buy_base),
        floats(|k| k.taker_buy_quote),
        repeat(&provenance.source),
        repeat(&provenance.base_url),
        Arc::new(Int64Array::from(vec![provenance.fetched_at_ms; n])) as ArrayRef,
        repeat(&provenance.kind),
    ];
    RecordBatch::try_new(klines_schema(), columns).expect("columns match the schema")
}

/// The funding table: one settled rate per row, with the schedule known when it was stored.
pub fn funding_schema() -> SchemaRef {
    let float = |name: &str, nullable| Field::new(name, DataType::Float64, nullable);
    let int = |name: &str| Field::new(name, DataType::Int64, false);
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        text("symbol"),
        int("funding_time"),
        float("funding_rate", false),
        int("funding_interval_hours"),
        float("rate_cap", true),
        float("rate_floor", true),
        text("source"),
        text("base_url"),
        int("fetched_at"),
        text("provenance"),
    ]))
}

/// The schema of a lake table.
pub fn schema_of(dataset: Dataset) -> SchemaRef {
    if dataset.is_kline_shaped() {
        klines_schema()
    } else {
        funding_schema()
    }
}

/// Writes funding `rows` (strictly increasing in time, non-empty) as a new part.
pub fn write_funding_part(
    dir: &Path,
    symbol: &str,
    rows: &[Funding],
    provenance: &Provenance,
) -> Result<Part, LakeError> {
    let (first, last) = check_part_times(dir, rows.iter().map(|r| r.funding_time), "funding")?;
    let path = dir.join(part_name(first, last));
    let n = rows.len();
    let repeat = |value: &str| Arc::new(StringArray::from(vec![value; n])) as ArrayRef;
    let columns = vec![
        repeat(symbol),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.funding_time),
        )) as ArrayRef,
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.funding_rate),
        )) as ArrayRef,
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.interval_hours),
        )) as ArrayRef,
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.rate_cap))) as ArrayRef,
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.rate_floor))) as ArrayRef,
        repeat(&provenance.source),
        repeat(&provenance.base_url),
        Arc::new(Int64Array::from(vec![provenance.fetched_at_ms; n])) as ArrayRef,
        repeat(&provenance.kind),
    ];
    let batch = RecordBatch::try_new(funding_schema(), columns).expect("columns match the schema");
    if !publish(&path, &batch, part_properties(provenance))? {
        return Err(LakeError::Exists(path));
    }
    Ok(Part {
        path,
        first_open_ms: first,
        last_open_ms: last,
    })
}

/// Reads the rates of a funding part (or Parquet bytes with its columns).
pub fn read_funding_part(path: &Path) -> Result<Vec<Funding>, LakeError> {
    let file = File::open(path).map_err(|source| LakeError::Io {
        action: "open",
        path: path.to_owned(),
        source,
    })?;
    let mut rows = Vec::new();
    for batch in part_batches(path, file)? {
        let batch = batch?;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| LakeError::Schema {
                    path: path.to_owned(),
                    message: format!("no column `{name}`"),
                })
        };
        let (times, rates, hours, caps, floors) = (
            column("funding_time")?,
            column("funding_rate")?,
            column("funding_interval_hours")?,
            column("rate_cap")?,
            column("rate_floor")?,
        );
        let mismatch = || LakeError::Schema {
            path: path.to_owned(),
            message: "funding columns of unexpected types".into(),
        };
        let times = times.as_primitive_opt::<Int64Type>().ok_or_else(mismatch)?;
        let hours = hours.as_primitive_opt::<Int64Type>().ok_or_else(mismatch)?;
        let rates = rates
            .as_primitive_opt::<Float64Type>()
            .ok_or_else(mismatch)?;
        let caps = caps
            .as_primitive_opt::<Float64Type>()
            .ok_or_else(mismatch)?;
        let floors = floors
            .as_primitive_opt::<Float64Type>()
            .ok_or_else(mismatch)?;
        let optional = |array: &Float64Array, i: usize| (!array.is_null(i)).then(|| array.value(i));
        for i in 0..batch.num_rows() {
            rows.push(Funding {
                funding_time: times.value(i),
                funding_rate: rates.value(i),
                interval_hours: hours.value(i),
                rate_cap: optional(caps, i),
                rate_floor: optional(floors, i),
            });
        }
    }
    Ok(rows)
}

/// Reads the candles of a lake part (or any Parquet file with the lake's kline columns).
pub fn read_part(path: &Path) -> Result<Vec<Kline>, LakeError> {
    let file = File::open(path).map_err(|source| LakeError::Io {
        action: "open",
        path: path.to_owned(),
        source,
    })?;
    read_klines(path, file)
}

/// Reads the candles of Parquet bytes (an object fetched from a store); `label` names it in
/// errors.
pub fn read_part_bytes(label: &Path, bytes: bytes::Bytes) -> Result<Vec<Kline>, LakeError> {
    read_klines(label, bytes)
}

/// The record batches of a part (`path` names it in errors).
fn part_batches<R: parquet::file::reader::ChunkReader + 'static>(
    path: &Path,
    source: R,
) -> Result<impl Iterator<Item = Result<RecordBatch, LakeError>>, LakeError> {
    let parquet_error = |source| LakeError::Parquet {
        path: path.to_owned(),
        source,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(source)
        .map_err(parquet_error)?
        .build()
        .map_err(parquet_error)?;
    let path = path.to_owned();
    Ok(reader.map(move |batch| {
        batch.map_err(|error| LakeError::Schema {
            path: path.clone(),
            message: error.to_string(),
        })
    }))
}

fn read_klines<R: parquet::file::reader::ChunkReader + 'static>(
    path: &Path,
    source: R,
) -> Result<Vec<Kline>, LakeError> {
    let mut rows = Vec::new();
    for batch in part_batches(path, source)? {
        let batch = batch?;
        let column = |name: &str| {
            batch.column_by_name(name).ok_or_else(|| LakeError::Schema {
                path: path.to_owned(),
                message: format!("no column `{name}`"),
            })
        };
        let int = |name: &str| -> Result<Int64Array, LakeError> {
            column(name)?
                .as_primitive_opt::<Int64Type>()
                .cloned()
                .ok_or_else(|| LakeError::Schema {
                    path: path.to_owned(),
                    message: format!("column `{name}` is not Int64"),
                })
        };
        let float = |name: &str| -> Result<Float64Array, LakeError> {
            column(name)?
                .as_primitive_opt::<Float64Type>()
                .cloned()
                .ok_or_else(|| LakeError::Schema {
                    path: path.to_owned(),
                    message: format!("column `{name}` is not Float64"),
                })
        };
        let (open_time, close_time, trades) =
            (int("open_time")?, int("close_time")?, int("trades")?);
        let (open, high, low, close) = (
            float("open")?,
            float("high")?,
            float("low")?,
            float("close")?,
        );
        let (volume, quote_volume) = (float("volume")?, float("quote_volume")?);
        let (taker_base, taker_quote) = (float("taker_buy_base")?, float("taker_buy_quote")?);
        for i in 0..batch.num_rows() {
            rows.push(Kline {
                open_time: open_time.value(i),
                open: open.value(i),
                high: high.value(i),
                low: low.value(i),
                close: close.value(i),
                volume: volume.value(i),
                close_time: close_time.value(i),
                quote_volume: quote_volume.value(i),
                trades: trades.value(i),
                taker_buy_base: taker_base.value(i),
                taker_buy_quote: taker_quote.value(i),
            });
        }
    }
    Ok(rows)
}

/// The number of rows in a part, from its footer.
pub fn row_count(path: &Path) -> Result<u64, LakeError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = File::open(path).map_err(|source| LakeError::Io {
        action: "open",
        path: path.to_owned(),
        source,
    })?;
    let reader = SerializedFileReader::new(file).map_err(|source| LakeError::Parquet {
        path: path.to_owned(),
        source,
    })?;
    Ok(reader.metadata().file_metadata().num_rows().max(0) as u64)
}

/// The provenance stored in a part's metadata.
pub fn read_provenance(path: &Path) -> Result<Option<Provenance>, LakeError> {
    let file = File::open(path).map_err(|source| LakeError::Io {
        action: "open",
        path: path.to_owned(),
        source,
    })?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|source| LakeError::Parquet {
            path: path.to_owned(),
            source,
        })?;
    Ok(builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|pairs| pairs.iter().find(|pair| pair.key == "asterflow.provenance"))
        .and_then(|pair| pair.value.as_deref())
        .and_then(|value| serde_json::from_str(value).ok()))
}

/// The file a stage's output lists lake parts in (`collect` writes it, `validate` filters it).
pub const LISTING_FILE: &str = "lake.json";

/// One part file in a listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartEntry {
    /// Relative to the data directory.
    pub path: String,
    /// The lake table (`klines`, `funding`, `mark_klines`, ...); lake.json files written
    /// before there were several say nothing, and meant `klines`.
    #[serde(default = "klines_table")]
    pub table: String,
    pub source: String,
    pub symbol: String,
    /// Empty for funding.
    pub interval: String,
    pub rows: u64,
    /// The first and last open time (funding: funding time) in the part.
    pub first_open_ms: i64,
    pub last_open_ms: i64,
    pub bytes: u64,
    pub blake3: String,
    /// The provenance kind stored in the part (`exchange`, `simulated`, ...).
    pub provenance: String,
}

fn klines_table() -> String {
    Dataset::Klines.table().to_owned()
}

/// `lake.json`: the parts a consumer reads, with their digests. A consumer's fingerprint covers
/// this file, so it re-runs exactly when the parts it reads change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LakeListing {
    /// The tables the parts belong to.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Every provenance kind among the parts.
    pub provenance: Vec<String>,
    pub parts: Vec<PartEntry>,
}

impl LakeListing {
    /// A listing of `parts`, sorted by path.
    pub fn new(mut parts: Vec<PartEntry>) -> Self {
        parts.sort_by(|a, b| a.path.cmp(&b.path));
        let provenance: std::collections::BTreeSet<String> =
            parts.iter().map(|part| part.provenance.clone()).collect();
        let tables: std::collections::BTreeSet<String> =
            parts.iter().map(|part| part.table.clone()).collect();
        Self {
            tables: tables.into_iter().collect(),
            provenance: provenance.into_iter().collect(),
            parts,
        }
    }

    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        serde_json::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))
    }

    pub fn is_synthetic(&self) -> bool {
        self.provenance.iter().any(|kind| kind == "simulated")
    }
}

/// Describes every part of one klines partition.
pub fn describe_partition(
    data_dir: &Path,
    source: &str,
    interval: Interval,
    symbol: &str,
) -> Result<Vec<PartEntry>, LakeError> {
    describe_table_partition(data_dir, Dataset::Klines, source, Some(interval), symbol)
}

/// Describes every part of one partition of a table: rows, span, size, blake3 and provenance.
pub fn describe_table_partition(
    data_dir: &Path,
    dataset: Dataset,
    source: &str,
    interval: Option<Interval>,
    symbol: &str,
) -> Result<Vec<PartEntry>, LakeError> {
    let dir = table_partition_dir(data_dir, dataset, source, interval, symbol)?;
    let mut entries = Vec::new();
    for part in parts(&dir)? {
        let bytes = std::fs::read(&part.path).map_err(|source| LakeError::Io {
            action: "read",
            path: part.path.clone(),
            source,
        })?;
        let footer = Footer::from_bytes(&part.path, bytes::Bytes::from(bytes.clone()))?;
        entries.push(PartEntry {
            path: part
                .path
                .strip_prefix(data_dir)
                .unwrap_or(&part.path)
                .to_string_lossy()
                .into_owned(),
            table: dataset.table().to_owned(),
            source: source.to_owned(),
            symbol: symbol.to_owned(),
            interval: interval.map(|i| i.name().to_owned()).unwrap_or_default(),
            rows: footer.rows,
            first_open_ms: part.first_open_ms,
            last_open_ms: part.last_open_ms,
            bytes: bytes.len() as u64,
            blake3: blake3::hash(&bytes).to_hex().to_string(),
            provenance: footer
                .provenance
                .map(|provenance| provenance.kind)
                .unwrap_or_else(|| "unknown".into()),
        });
    }
    Ok(entries)
}

/// What a part's Parquet footer says: row count, provenance, and the column types.
#[derive(Debug, Clone)]
pub struct Footer {
    pub rows: u64,
    pub provenance: Option<Provenance>,
    pub columns: Vec<(String, DataType)>,
}

impl Footer {
    pub fn from_bytes(path: &Path, bytes: bytes::Bytes) -> Result<Self, LakeError> {
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|source| {
            LakeError::Parquet {
                path: path.to_owned(),
                source,
            }
        })?;
        let metadata = builder.metadata().file_metadata();
        let provenance = metadata
            .key_value_metadata()
            .and_then(|pairs| pairs.iter().find(|pair| pair.key == "asterflow.provenance"))
            .and_then(|pair| pair.value.as_deref())
            .and_then(|value| serde_json::from_str(value).ok());
        Ok(Self {
            rows: metadata.num_rows().max(0) as u64,
            provenance,
            columns: builder
                .schema()
                .fields()
                .iter()
                .map(|field| (field.name().clone(), field.data_type().clone()))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(open_time: i64) -> Kline {
        Kline {
            open_time,
            open: 1.0,
            high: 2.0,
            low: 0.5,
            close: 1.5,
            volume: 10.0,
            close_time: open_time + 3_599_999,
            quote_volume: 15.0,
            trades: 3,
            taker_buy_base: 4.0,
            taker_buy_quote: 6.0,
        }
    }

    #[test]
    fn parts_round_trip_and_refuse_unsafe_names() {
        let temp = tempfile::tempdir().unwrap();
        let hour = Interval::parse("1h").unwrap();
        let dir = partition_dir(temp.path(), "aster", hour, "BTCUSDT").unwrap();
        let provenance = Provenance {
            source: "aster".into(),
            base_url: "http://127.0.0.1:1".into(),
            fetched_at_ms: 5,
            kind: "simulated".into(),
        };
        let rows = vec![bar(0), bar(3_600_000)];
        let part = write_part(&dir, "BTCUSDT", hour, &rows, &provenance).unwrap();
        assert_eq!(read_part(&part.path).unwrap(), rows);
        assert_eq!(
            read_provenance(&part.path).unwrap(),
            Some(provenance.clone())
        );
        assert_eq!(parts(&dir).unwrap(), vec![part]);
        assert!(matches!(
            write_part(&dir, "BTCUSDT", hour, &rows, &provenance),
            Err(LakeError::Exists(_))
        ));
        // Readers rely on sorted parts: rows out of order or repeated are refused, nothing written.
        for unsorted in [
            vec![bar(7_200_000), bar(10_800_000), bar(10_800_000)],
            vec![bar(14_400_000), bar(7_200_000)],
        ] {
            let error = write_part(&dir, "BTCUSDT", hour, &unsorted, &provenance).unwrap_err();
            assert!(
                error.to_string().contains("not strictly increasing"),
                "{error}"
            );
        }
        assert_eq!(parts(&dir).unwrap().len(), 1);
        let _held = lock(temp.path(), "aster").unwrap();
        assert!(matches!(
            lock(temp.path(), "aster"),
            Err(LakeError::Busy(_))
        ));
        assert!(lock(temp.path(), "other").is_ok());
        for bad in ["../etc", "a/b", "", ".hidden", "BTC USDT", "ＢＴＣ"] {
            assert!(
                partition_dir(temp.path(), "aster", hour, bad).is_err(),
                "{bad}"
            );
        }
    }
}
