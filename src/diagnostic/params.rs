//! Param helpers every layer shares: a kind's params parsed with their YAML path kept, range
//! checks, contained relative paths. A leaf: it knows YAML paths and diagnostics, nothing else.

use std::path::{Component, Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::diagnostic::location::{Anchor, Segment, YamlPath};

/// A param a kind rejects, located relative to the stage's `with`.
#[derive(Debug, Clone)]
pub struct ParamError {
    pub path: YamlPath,
    pub anchor: Anchor,
    pub message: String,
    pub help: Option<String>,
    /// A problem inside a file the param names (a SQL file), located in that file.
    pub nested: Option<Box<crate::diagnostic::Diagnostic>>,
}

impl ParamError {
    pub fn new(path: YamlPath, message: impl Into<String>) -> Self {
        Self {
            path,
            anchor: Anchor::Value,
            message: message.into(),
            help: None,
            nested: None,
        }
    }

    /// Adds the located problem inside the referenced file.
    pub fn nested(mut self, diagnostic: crate::diagnostic::Diagnostic) -> Self {
        self.nested = Some(Box::new(diagnostic));
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// A number param in `[low, high)`; otherwise an error at `at` naming `what` and the bounds.
pub fn check_range(
    at: YamlPath,
    value: f64,
    low: f64,
    high: f64,
    what: &str,
) -> Result<(), ParamError> {
    if value.is_finite() && value >= low && value < high {
        Ok(())
    } else {
        Err(ParamError::new(
            at,
            format!("{what} must be at least {low} and below {high}, not {value}"),
        ))
    }
}

/// Deserialises a kind's params, keeping the path of whatever is wrong.
pub fn parse_params<T: DeserializeOwned>(params: &yaml_serde::Value) -> Result<T, ParamError> {
    serde_path_to_error::deserialize(params.clone()).map_err(|error| {
        let mut path = YamlPath(
            error
                .path()
                .iter()
                .filter_map(|segment| match segment {
                    serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
                    serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
                    _ => None,
                })
                .collect(),
        );
        let message = error.inner().to_string();
        let message = strip_yaml_location(&message).to_owned();
        // Point at the offending key itself when serde names one.
        let mut anchor = Anchor::Value;
        if let Some(rest) = message.strip_prefix("unknown field `")
            && let Some(end) = rest.find('`')
        {
            let field = &rest[..end];
            if path.0.last() != Some(&Segment::Key(field.to_owned())) {
                path = path.key(field);
            }
            anchor = Anchor::Key;
        }
        ParamError {
            path,
            anchor,
            message,
            help: None,
            nested: None,
        }
    })
}

/// yaml_serde appends ` at line L column C`; diagnostics carry the location themselves.
pub fn strip_yaml_location(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(position) => &message[..position],
        None => message,
    }
}

/// A relative path that stays inside its root: no absolute paths, no `..` climbing out.
pub fn contained_relative_path(text: &str) -> Result<PathBuf, String> {
    if text.trim().is_empty() {
        return Err("path is empty".to_owned());
    }
    let path = Path::new(text);
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => normal.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !normal.pop() {
                    return Err(format!("path `{text}` escapes the project"));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "path `{text}` is absolute; paths are relative to the project"
                ));
            }
        }
    }
    if normal.as_os_str().is_empty() {
        return Err(format!(
            "path `{text}` names the directory itself, not a file in it"
        ));
    }
    Ok(normal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_must_stay_inside() {
        assert_eq!(
            contained_relative_path("a/./b.txt").unwrap(),
            PathBuf::from("a/b.txt")
        );
        assert_eq!(
            contained_relative_path("a/../b.txt").unwrap(),
            PathBuf::from("b.txt")
        );
        assert!(
            contained_relative_path("../x")
                .unwrap_err()
                .contains("escapes")
        );
        assert!(
            contained_relative_path("a/../../x")
                .unwrap_err()
                .contains("escapes")
        );
        assert!(
            contained_relative_path("/etc/passwd")
                .unwrap_err()
                .contains("absolute")
        );
        assert!(contained_relative_path(".").is_err());
    }

    #[test]
    fn param_errors_keep_their_path() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Params {
            outputs: Vec<u32>,
        }
        let value: yaml_serde::Value = yaml_serde::from_str("outputs: [1, x]").unwrap();
        let error = parse_params::<Params>(&value).unwrap_err();
        assert_eq!(error.path.to_string(), "outputs[1]");
        let value: yaml_serde::Value = yaml_serde::from_str("outputs: []\nextra: 1").unwrap();
        let error = parse_params::<Params>(&value).unwrap_err();
        assert_eq!(error.path.to_string(), "extra");
        assert_eq!(error.anchor, Anchor::Key);
    }
}
