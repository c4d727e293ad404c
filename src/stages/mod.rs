//! Built-in stage kinds, one module each; registered in [`crate::stage::KINDS`].

pub mod collect;
pub mod command;
pub mod discover;
pub mod rate_limits;
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
