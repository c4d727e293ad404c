//! Source locations of every node of a YAML document, keyed by its path (`stages.train.needs[1]`).
//!
//! serde gives typed values but forgets where they came from; errors found after parsing (a
//! missing stage, a cycle, a rejected param) still have to point at the line and column. This
//! module walks the parser's event stream once and remembers, for every mapping key and value
//! and every sequence item, where it starts.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser};

/// One step of a path into the document.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A path from the document root, such as `stages` / `train` / `needs` / `1`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct YamlPath(pub Vec<Segment>);

impl YamlPath {
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// Builds a path from dotted keys; numeric parts become sequence indices.
    pub fn of(parts: &[&str]) -> Self {
        Self(
            parts
                .iter()
                .map(|part| match part.parse::<usize>() {
                    Ok(index) => Segment::Index(index),
                    Err(_) => Segment::Key((*part).to_owned()),
                })
                .collect(),
        )
    }

    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.0.push(Segment::Key(key.into()));
        self
    }

    pub fn index(mut self, index: usize) -> Self {
        self.0.push(Segment::Index(index));
        self
    }

    pub fn join(mut self, other: &YamlPath) -> Self {
        self.0.extend(other.0.iter().cloned());
        self
    }

    fn parent(&self) -> Option<YamlPath> {
        if self.0.is_empty() {
            None
        } else {
            Some(Self(self.0[..self.0.len() - 1].to_vec()))
        }
    }
}

impl std::fmt::Display for YamlPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (position, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if position == 0 => write!(f, "{key}")?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, Copy)]
struct NodeSpan {
    /// Where the mapping key naming this node starts (for map entries).
    key: Option<Position>,
    /// Where the node's value starts.
    value: Position,
    /// The length in characters of a scalar value (for the caret underline).
    width: usize,
}

/// Which part of a map entry a diagnostic points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    Key,
    Value,
}

/// Locations of the nodes of one YAML document.
#[derive(Debug, Default)]
pub struct LocationIndex {
    nodes: HashMap<YamlPath, NodeSpan>,
}

enum Frame {
    Mapping {
        path: YamlPath,
        pending_key: Option<(String, Position)>,
    },
    Sequence {
        path: YamlPath,
        next: usize,
    },
}

impl LocationIndex {
    /// Indexes `text`, or returns the first syntax error with its position. A key given twice
    /// in one mapping is an error at its second occurrence: a later definition silently
    /// replacing an earlier one loses the user's work.
    pub fn build(text: &str) -> Result<Self, (Position, String)> {
        let mut nodes = HashMap::new();
        let mut duplicate: Option<(Position, String)> = None;
        let mut stack: Vec<Frame> = Vec::new();
        for item in Parser::new_from_str(text) {
            let (event, span) = item.map_err(|error| {
                let marker = error.marker();
                (
                    Position {
                        line: marker.line(),
                        column: marker.col() + 1,
                    },
                    error.info().to_owned(),
                )
            })?;
            let start = Position {
                line: span.start.line(),
                column: span.start.col() + 1,
            };
            let width = span.end.index().saturating_sub(span.start.index()).max(1);
            match event {
                Event::Scalar(value, ..) => {
                    if let Some(Frame::Mapping { pending_key, .. }) = stack.last_mut()
                        && pending_key.is_none()
                    {
                        *pending_key = Some((value.into_owned(), start));
                        continue;
                    }
                    Self::child_path(&mut stack, &mut nodes, start, width, &mut duplicate);
                }
                Event::Alias(_) => {
                    Self::child_path(&mut stack, &mut nodes, start, width, &mut duplicate);
                }
                Event::MappingStart(..) => {
                    let path = Self::child_path(&mut stack, &mut nodes, start, 1, &mut duplicate)
                        .unwrap_or_default();
                    stack.push(Frame::Mapping {
                        path,
                        pending_key: None,
                    });
                }
                Event::SequenceStart(..) => {
                    let path = Self::child_path(&mut stack, &mut nodes, start, 1, &mut duplicate)
                        .unwrap_or_default();
                    stack.push(Frame::Sequence { path, next: 0 });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                _ => {}
            }
            if let Some(found) = duplicate {
                return Err(found);
            }
        }
        Ok(Self { nodes })
    }

    /// Records a value node under the current container and returns its path.
    fn child_path(
        stack: &mut [Frame],
        nodes: &mut HashMap<YamlPath, NodeSpan>,
        value: Position,
        width: usize,
        duplicate: &mut Option<(Position, String)>,
    ) -> Option<YamlPath> {
        let (path, key) = match stack.last_mut() {
            None => (YamlPath::root(), None),
            Some(Frame::Mapping { path, pending_key }) => {
                let (key, key_position) = pending_key.take()?;
                (path.clone().key(key), Some(key_position))
            }
            Some(Frame::Sequence { path, next }) => {
                *next += 1;
                (path.clone().index(*next - 1), None)
            }
        };
        if let (Some(at), Some(first)) = (key, nodes.get(&path)) {
            let line = first.key.unwrap_or(first.value).line;
            let name = match path.0.last() {
                Some(Segment::Key(name)) => name.as_str(),
                _ => "",
            };
            *duplicate = Some((
                at,
                format!(
                    "duplicate key `{name}` (first given on line {line}): keys in a mapping must be unique"
                ),
            ));
        }
        nodes.insert(path.clone(), NodeSpan { key, value, width });
        Some(path)
    }

    /// The position of `path` (its key or its value), or of its nearest indexed ancestor.
    pub fn locate(&self, path: &YamlPath, anchor: Anchor) -> Option<(Position, usize)> {
        let mut current = Some(path.clone());
        while let Some(candidate) = current {
            if let Some(span) = self.nodes.get(&candidate) {
                return Some(match (anchor, span.key) {
                    (Anchor::Key, Some(key)) => {
                        let width = match candidate.0.last() {
                            Some(Segment::Key(name)) => name.chars().count().max(1),
                            _ => 1,
                        };
                        (key, width)
                    }
                    _ => (span.value, span.width),
                });
            }
            current = candidate.parent();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_given_twice_is_an_error_at_the_second() {
        let (at, message) =
            LocationIndex::build("stages:\n  a: {kind: x}\n  b: 1\n  a:\n    kind: y\n")
                .unwrap_err();
        assert_eq!(at, Position { line: 4, column: 3 });
        assert!(
            message.contains("duplicate key `a` (first given on line 2)"),
            "{message}"
        );
        let (at, _) = LocationIndex::build("a: {x: 1, x: 2}\n").unwrap_err();
        assert_eq!(
            at,
            Position {
                line: 1,
                column: 11
            }
        );
        // The same key in two mappings, or in two items of a list, is fine.
        LocationIndex::build("a: {x: 1}\nb: {x: 1}\nc: [{x: 1}, {x: 2}]\n").unwrap();
    }

    const DOC: &str = "name: demo\nstages:\n  a:\n    kind: command\n    needs: [b, c]\n  b:\n    needs:\n      - a\n";

    #[test]
    fn locates_keys_values_and_sequence_items() {
        let index = LocationIndex::build(DOC).unwrap();
        let at = |path: &[&str], anchor| index.locate(&YamlPath::of(path), anchor).unwrap().0;
        assert_eq!(
            at(&["name"], Anchor::Value),
            Position { line: 1, column: 7 }
        );
        assert_eq!(
            at(&["stages", "a", "kind"], Anchor::Key),
            Position { line: 4, column: 5 }
        );
        assert_eq!(
            at(&["stages", "a", "kind"], Anchor::Value),
            Position {
                line: 4,
                column: 11
            }
        );
        assert_eq!(
            at(&["stages", "a", "needs", "1"], Anchor::Value),
            Position {
                line: 5,
                column: 16
            }
        );
        assert_eq!(
            at(&["stages", "b", "needs", "0"], Anchor::Value),
            Position { line: 8, column: 9 }
        );
    }

    #[test]
    fn falls_back_to_the_nearest_ancestor() {
        let index = LocationIndex::build(DOC).unwrap();
        let (position, _) = index
            .locate(&YamlPath::of(&["stages", "a", "with", "x"]), Anchor::Value)
            .unwrap();
        assert_eq!(position, Position { line: 4, column: 5 });
    }

    #[test]
    fn reports_syntax_errors_with_position() {
        let (position, message) = LocationIndex::build("a: [1, 2\n").unwrap_err();
        assert_eq!(position.line, 2);
        assert!(message.contains("flow sequence"), "{message}");
    }

    #[test]
    fn paths_print_like_the_yaml_they_name() {
        assert_eq!(
            YamlPath::of(&["stages", "a", "needs", "1"]).to_string(),
            "stages.a.needs[1]"
        );
    }
}
