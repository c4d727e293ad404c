//! Built-in stage kinds, one module each; registered in [`crate::stage::KINDS`].

pub mod backtest;
pub mod collect;
pub mod command;
pub mod discover;
pub mod rate_limits;
pub mod report;
pub mod signals;
pub mod sql;
pub mod train;
pub mod validate;

use std::path::Path;

use arrow::array::AsArray;

use crate::stage::StageError;

/// Writes pretty JSON into a stage's output directory.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), StageError> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|error| StageError::Failed(format!("serialising {}: {error}", path.display())))?;
    text.push('\n');
    std::fs::write(path, text).map_err(|source| StageError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    })
}

/// Writes `batch` as a ZSTD-compressed Parquet file into a stage's output directory.
pub fn write_parquet(path: &Path, batch: &arrow::array::RecordBatch) -> Result<(), StageError> {
    let failed = |error: parquet::errors::ParquetError| {
        StageError::Failed(format!("writing {}: {error}", path.display()))
    };
    let file = std::fs::File::create(path).map_err(|source| StageError::Io {
        action: "create",
        path: path.to_owned(),
        source,
    })?;
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(parquet_properties()))
            .map_err(failed)?;
    writer.write(batch).map_err(failed)?;
    writer.close().map_err(failed)?;
    Ok(())
}

/// Writes `batch` to `path` through a temp file in the same directory and a rename: readers
/// (and a crash) see the old file or the new one, never a torn one.
pub fn write_parquet_atomic(
    path: &Path,
    batch: &arrow::array::RecordBatch,
) -> Result<(), StageError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|source| StageError::Io {
        action: "create",
        path: parent.to_owned(),
        source,
    })?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let temp = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    write_parquet(&temp, batch)?;
    std::fs::File::open(&temp)
        .and_then(|file| file.sync_all())
        .map_err(|source| StageError::Io {
            action: "sync",
            path: temp.clone(),
            source,
        })?;
    std::fs::rename(&temp, path).map_err(|source| {
        let _ = std::fs::remove_file(&temp);
        StageError::Io {
            action: "rename into",
            path: path.to_owned(),
            source,
        }
    })?;
    // The rename itself survives a crash once its directory is synced.
    if let Ok(handle) = std::fs::File::open(parent) {
        let _ = handle.sync_all();
    }
    Ok(())
}

/// Every batch of a Parquet file.
pub fn read_parquet(path: &Path) -> Result<Vec<arrow::array::RecordBatch>, StageError> {
    let file = std::fs::File::open(path).map_err(|source| StageError::Io {
        action: "open",
        path: path.to_owned(),
        source,
    })?;
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
    let text = std::fs::read_to_string(path).map_err(|source| StageError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
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
