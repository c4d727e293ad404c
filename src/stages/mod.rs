//! Built-in stage kinds, one module each; registered in [`crate::stage::KINDS`].

pub mod backtest;
pub mod collect;
pub mod command;
pub mod discover;
pub mod rate_limits;
pub mod report;
pub mod sql;
pub mod train;
pub mod validate;

use std::path::Path;

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
    let properties = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
        .build();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(properties))
        .map_err(failed)?;
    writer.write(batch).map_err(failed)?;
    writer.close().map_err(failed)?;
    Ok(())
}
