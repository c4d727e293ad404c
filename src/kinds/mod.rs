//! Built-in stage kinds: one thin adapter each between the engine's stage contract and a domain
//! library, and [`BUILTIN`], the catalog the commands hand the engine. Adding a kind is a module
//! here and a line in [`KINDS`].

pub mod backtest;
pub mod collect;
pub mod command;
pub mod compare;
pub mod discover;
pub mod rate_limits;
pub mod report;
pub mod signals;
pub mod sql;
pub mod train;
pub mod validate;

use std::path::Path;

use arrow::array::AsArray;

use crate::diagnostic::params::ParamError;
use crate::engine::stage::{Catalog, SourceValue, StageError, StageKind};

/// Every built-in stage kind. One line per kind.
pub static KINDS: &[&dyn StageKind] = &[
    &command::Command,
    &discover::Discover,
    &rate_limits::RateLimits,
    &collect::Collect,
    &validate::Validate,
    &sql::Sql,
    &train::Train,
    &backtest::Backtest,
    &compare::Compare,
    &report::Report,
    &signals::Signals,
];

/// The built-in kinds, and `sources:` entries typed as exchange sources.
pub struct Builtin;

/// The catalog `asterflow` runs pipelines with.
pub static BUILTIN: Builtin = Builtin;

impl Catalog for Builtin {
    fn kinds(&self) -> &[&'static dyn StageKind] {
        KINDS
    }

    fn check_source(
        &self,
        name: &str,
        value: &yaml_serde::Value,
        project_root: &Path,
    ) -> Result<SourceValue, ParamError> {
        crate::market::exchange::source::check_source(name, value, project_root)
            .map(|source| std::sync::Arc::new(source) as SourceValue)
    }
}

/// The shape of an output holding a `lake.json`: every lake table (`klines`, also the stage's
/// id; `funding`, `mark_klines`, ...), as the sql stages will see them.
pub fn listing_shape(stage_id: &str) -> crate::engine::stage::OutputShape {
    let empty = crate::market::lake::LakeListing::new(Vec::new());
    crate::engine::stage::OutputShape::Tables(
        crate::sql::lake_tables(stage_id, &empty, std::path::Path::new(""))
            .into_iter()
            .map(|table| crate::engine::stage::ShapeTable {
                names: table.names,
                schema: crate::market::lake::schema_of(table.lake.expect("a lake table")),
            })
            .collect(),
    )
}

impl From<crate::market::exchange::client::ExchangeError> for StageError {
    fn from(error: crate::market::exchange::client::ExchangeError) -> Self {
        match error {
            crate::market::exchange::client::ExchangeError::Cancelled => Self::Cancelled,
            other => Self::Failed(other.to_string()),
        }
    }
}

/// Writes pretty JSON into a stage's output directory.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), StageError> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|error| StageError::Failed(format!("serialising {}: {error}", path.display())))?;
    text.push('\n');
    Ok(fs_err::write(path, text)?)
}

/// Writes `batch` as a Parquet file into a stage's output directory.
pub fn write_parquet(path: &Path, batch: &arrow::array::RecordBatch) -> Result<(), StageError> {
    let mut file = fs_err::File::create(path)?;
    encode_parquet(&mut file, batch)
        .map_err(|error| StageError::Failed(format!("writing {}: {error}", path.display())))
}

/// Writes `batch` to `path` atomically (`util::fsx`): readers, and a crash, see the old file
/// or the new one, never a torn one.
pub fn write_parquet_atomic(
    path: &Path,
    batch: &arrow::array::RecordBatch,
) -> Result<(), StageError> {
    crate::util::fsx::write_with(path, crate::util::fsx::Place::Replace, |file| {
        encode_parquet(file, batch).map_err(std::io::Error::other)
    })
    .map_err(|error| StageError::Failed(format!("writing {}: {error}", path.display())))?;
    Ok(())
}

fn encode_parquet(
    file: &mut fs_err::File,
    batch: &arrow::array::RecordBatch,
) -> Result<(), parquet::errors::ParquetError> {
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(parquet_properties()))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(())
}

/// Every batch of a Parquet file.
pub fn read_parquet(path: &Path) -> Result<Vec<arrow::array::RecordBatch>, StageError> {
    let file = fs_err::File::open(path)?.into_file();
    let failed = |error: &dyn std::fmt::Display| {
        StageError::Failed(format!("reading {}: {error}", path.display()))
    };
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|builder| builder.build())
        .map_err(|error| failed(&error))?
        .map(|batch| batch.map_err(|error| failed(&error)))
        .collect()
}

/// A JSON file a stage reads.
pub fn read_json(path: &Path) -> Result<serde_json::Value, StageError> {
    let text = fs_err::read_to_string(path)?;
    serde_json::from_str(&text)
        .map_err(|error| StageError::Failed(format!("{}: {error}", path.display())))
}

fn column<'b>(
    batch: &'b arrow::array::RecordBatch,
    name: &str,
    file: &Path,
) -> Result<&'b arrow::array::ArrayRef, StageError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| StageError::Failed(format!("{}: no column `{name}`", file.display())))
}

/// Column `name` of a batch read from `file`, as Utf8 (whatever string type it was stored as).
pub fn text_column(
    batch: &arrow::array::RecordBatch,
    name: &str,
    file: &Path,
) -> Result<arrow::array::StringArray, StageError> {
    arrow::compute::cast(
        column(batch, name, file)?,
        &arrow::datatypes::DataType::Utf8,
    )
    .ok()
    .and_then(|array| array.as_string_opt::<i32>().cloned())
    .ok_or_else(|| StageError::Failed(format!("{}: column `{name}` is not text", file.display())))
}

/// Column `name` of a batch read from `file`, cast to `T`.
pub fn number_column<T: arrow::datatypes::ArrowPrimitiveType>(
    batch: &arrow::array::RecordBatch,
    name: &str,
    file: &Path,
) -> Result<arrow::array::PrimitiveArray<T>, StageError> {
    arrow::compute::cast(column(batch, name, file)?, &T::DATA_TYPE)
        .ok()
        .and_then(|array| array.as_primitive_opt::<T>().cloned())
        .ok_or_else(|| {
            StageError::Failed(format!(
                "{}: column `{name}` is not {}",
                file.display(),
                T::DATA_TYPE
            ))
        })
}

/// How stages write Parquet: zstd at its default level.
pub fn parquet_properties() -> parquet::file::properties::WriterProperties {
    parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
        .build()
}

/// The lake parts an output's `lake.json` lists, as attachments of its cache entry (a remote
/// cache stores them with it); none when the output has no listing.
pub fn lake_attachments(
    output_dir: &std::path::Path,
) -> Result<Vec<crate::engine::cache::OutputFile>, String> {
    let listing = output_dir.join(crate::market::lake::LISTING_FILE);
    if !listing.is_file() {
        return Ok(Vec::new());
    }
    Ok(crate::market::lake::LakeListing::read(&listing)?
        .parts
        .into_iter()
        .map(|part| crate::engine::cache::OutputFile {
            path: part.path,
            size: part.bytes,
            blake3: part.blake3,
        })
        .collect())
}
