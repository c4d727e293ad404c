//! User-facing errors in a pipeline file: `file:line:column`, a one-line cause, the offending line
//! with a caret under it, and what to do about it.

pub mod location;
pub mod params;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::diagnostic::location::{Anchor, LocationIndex, Position, YamlPath};

/// One error in a pipeline file, with where it is and how to fix it.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub position: Option<Position>,
    /// Characters to underline from `position`.
    pub width: usize,
    pub message: String,
    pub help: Option<String>,
    /// The source line at `position`, for the snippet.
    pub line_text: Option<String>,
}

/// Parses a whole YAML document into `T` (unknown keys refused where `T` says so), turning the
/// first problem into a located diagnostic: syntax errors first, then type and key errors.
pub fn parse_yaml_file<T: serde::de::DeserializeOwned>(
    file: &Path,
    text: &str,
) -> Result<T, Box<Diagnostic>> {
    let index = LocationIndex::build(text).map_err(|(position, message)| {
        Diagnostic::at(
            file,
            text,
            Some(position),
            1,
            format!("invalid YAML: {message}"),
        )
    })?;
    let value: yaml_serde::Value = yaml_serde::from_str(text).map_err(|error| {
        let position = error.location().map(|location| Position {
            line: location.line(),
            column: location.column(),
        });
        let message = error.to_string();
        Box::new(Diagnostic::at(
            file,
            text,
            position,
            1,
            crate::diagnostic::params::strip_yaml_location(&message),
        ))
    })?;
    crate::diagnostic::params::parse_params(&value).map_err(|error| {
        let mut diagnostic =
            Diagnostic::at_path(file, text, &index, &error.path, error.anchor, error.message);
        diagnostic.help = error.help;
        Box::new(diagnostic)
    })
}

impl Diagnostic {
    /// A diagnostic at a known position in `text`.
    pub fn at(
        file: &Path,
        text: &str,
        position: Option<Position>,
        width: usize,
        message: impl Into<String>,
    ) -> Self {
        let line_text = position
            .and_then(|position| text.lines().nth(position.line.saturating_sub(1)))
            .map(str::to_owned);
        Self {
            file: file.to_owned(),
            position,
            width: width.max(1),
            message: message.into(),
            help: None,
            line_text,
        }
    }

    /// A diagnostic at the node `path` of the document.
    pub fn at_path(
        file: &Path,
        text: &str,
        index: &LocationIndex,
        path: &YamlPath,
        anchor: Anchor,
        message: impl Into<String>,
    ) -> Self {
        let (position, width) = match index.locate(path, anchor) {
            Some((position, width)) => (Some(position), width),
            None => (None, 1),
        };
        Self::at(file, text, position, width, message)
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// `file:line:column`, or the file alone when the position is unknown.
    pub fn location(&self) -> String {
        match self.position {
            Some(position) => {
                format!(
                    "{}:{}:{}",
                    self.file.display(),
                    position.line,
                    position.column
                )
            }
            None => self.file.display().to_string(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location(), self.message)?;
        if let (Some(position), Some(line_text)) = (self.position, &self.line_text) {
            let gutter = position.line.to_string().len();
            let indent: String = line_text
                .chars()
                .take(position.column.saturating_sub(1))
                .map(|character| if character == '\t' { '\t' } else { ' ' })
                .collect();
            write!(
                f,
                "\n{:gutter$} |\n{} | {}\n{:gutter$} | {}{}",
                "",
                position.line,
                line_text,
                "",
                indent,
                "^".repeat(self.width.min(80)),
            )?;
        }
        if let Some(help) = &self.help {
            write!(f, "\n  = help: {help}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_location_snippet_and_help() {
        let text = "stages:\n  a:\n    kind: comand\n";
        let diagnostic = Diagnostic::at(
            Path::new("p.yaml"),
            text,
            Some(Position {
                line: 3,
                column: 11,
            }),
            6,
            "unknown stage kind `comand`",
        )
        .with_help("known kinds: command");
        assert_eq!(
            diagnostic.to_string(),
            "p.yaml:3:11: unknown stage kind `comand`\n  |\n3 |     kind: comand\n  |           ^^^^^^\n  = help: known kinds: command"
        );
    }
}
