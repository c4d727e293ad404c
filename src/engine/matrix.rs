//! Matrix stages: one stage written once, run once per member of the Cartesian product of its
//! lists (less `exclude`, plus `include`). A member's values reach its params through
//! `${matrix.NAME}` and its id (`train@model=mlp,hidden=32`, or a `name:` template), and flow to
//! the stages downstream of it, which fan out the same way unless they gather.
//!
//! ```yaml
//! matrix:
//!   model: [logistic, mlp]
//!   hidden: [32, 64]
//!   exclude: [{model: logistic, hidden: 64}]
//!   include: [{model: softmax, hidden: 0}]
//!   name: "{model}-{hidden}"          # optional: ids become train@mlp-32
//! ```

use indexmap::IndexMap;
use yaml_serde::Value;

use crate::diagnostic::location::YamlPath;

/// One member's values, in the order the axes were declared (inherited ones first).
pub type Values = IndexMap<String, Value>;

/// A stage's `matrix:` block, checked.
#[derive(Debug, Clone, Default)]
pub struct MatrixSpec {
    pub axes: Vec<(String, Vec<Value>)>,
    pub exclude: Vec<Values>,
    pub include: Vec<Values>,
    pub name: Option<String>,
}

/// A problem in a matrix, located relative to the document root.
#[derive(Debug, Clone)]
pub struct MatrixError {
    pub path: YamlPath,
    pub message: String,
}

fn error(path: YamlPath, message: impl Into<String>) -> MatrixError {
    MatrixError {
        path,
        message: message.into(),
    }
}

/// Reads `value`, the `matrix:` of the stage at `at` (`stages.<id>`).
pub fn parse(value: &Value, at: &YamlPath) -> Result<MatrixSpec, MatrixError> {
    let at = at.clone().key("matrix");
    let Value::Mapping(mapping) = value else {
        return Err(error(at, "`matrix` maps param names to lists of values"));
    };
    let mut spec = MatrixSpec::default();
    for (key, value) in mapping {
        let Some(key) = key.as_str() else {
            return Err(error(at, "matrix keys are names"));
        };
        let here = at.clone().key(key);
        match key {
            "exclude" | "include" => {
                let Value::Sequence(items) = value else {
                    return Err(error(
                        here,
                        format!("`{key}` is a list of {{name: value}} mappings"),
                    ));
                };
                let mut list = Vec::new();
                for (index, item) in items.iter().enumerate() {
                    let Value::Mapping(entry) = item else {
                        return Err(error(
                            here.clone().index(index),
                            format!("each `{key}` entry is a mapping such as {{model: mlp}}"),
                        ));
                    };
                    let mut values = Values::new();
                    for (name, value) in entry {
                        let Some(name) = name.as_str() else {
                            return Err(error(here.clone().index(index), "matrix keys are names"));
                        };
                        if !is_scalar(value) {
                            return Err(error(
                                here.clone().index(index).key(name),
                                "matrix values are numbers, strings or booleans",
                            ));
                        }
                        values.insert(name.to_owned(), value.clone());
                    }
                    list.push(values);
                }
                if key == "exclude" {
                    spec.exclude = list;
                } else {
                    spec.include = list;
                }
            }
            "name" => match value.as_str() {
                Some(template) => spec.name = Some(template.to_owned()),
                None => {
                    return Err(error(
                        here,
                        "`name` is a template such as \"{model}-{hidden}\"",
                    ));
                }
            },
            _ => {
                if !valid_axis(key) {
                    return Err(error(
                        here,
                        format!("invalid matrix name `{key}`: use letters, digits and `_`"),
                    ));
                }
                let Value::Sequence(values) = value else {
                    return Err(error(here, format!("`{key}` takes a list of values")));
                };
                if values.is_empty() {
                    return Err(error(
                        here,
                        format!("`{key}` has no values: the matrix would be empty"),
                    ));
                }
                for (index, value) in values.iter().enumerate() {
                    if !is_scalar(value) {
                        return Err(error(
                            here.clone().index(index),
                            "matrix values are numbers, strings or booleans",
                        ));
                    }
                }
                spec.axes.push((key.to_owned(), values.clone()));
            }
        }
    }
    if spec.axes.is_empty() && spec.include.is_empty() {
        return Err(error(at, "the matrix names no param to vary"));
    }
    for (list, entries) in [("exclude", &spec.exclude), ("include", &spec.include)] {
        for (index, entry) in entries.iter().enumerate() {
            for name in entry.keys() {
                if list == "exclude" && !spec.axes.iter().any(|(axis, _)| axis == name) {
                    return Err(error(
                        at.clone().key(list).index(index).key(name.as_str()),
                        format!("`{name}` is not a list of this matrix"),
                    ));
                }
            }
        }
    }
    Ok(spec)
}

fn valid_axis(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_scalar(value: &Value) -> bool {
    matches!(value, Value::Number(_) | Value::String(_) | Value::Bool(_))
}

/// A value as it reads in an id or in text: `4`, `mlp`, `true`.
pub fn display(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        other => format!("{other:?}"),
    }
}

/// The members: the product of the lists in declaration order, less every member matching an
/// `exclude` entry, plus each `include` entry; a member given twice is an error.
pub fn members(spec: &MatrixSpec, at: &YamlPath) -> Result<Vec<Values>, MatrixError> {
    let at = at.clone().key("matrix");
    let mut members: Vec<Values> = vec![Values::new()];
    for (name, values) in &spec.axes {
        members = members
            .into_iter()
            .flat_map(|member| {
                values.iter().map(move |value| {
                    let mut next = member.clone();
                    next.insert(name.clone(), value.clone());
                    next
                })
            })
            .collect();
    }
    if spec.axes.is_empty() {
        members.clear();
    }
    members.retain(|member| {
        !spec.exclude.iter().any(|entry| {
            entry
                .iter()
                .all(|(name, value)| member.get(name) == Some(value))
        })
    });
    for (index, entry) in spec.include.iter().enumerate() {
        if members.iter().any(|member| same(member, entry)) {
            return Err(error(
                at.clone().key("include").index(index),
                format!("this member is already in the matrix: {}", describe(entry)),
            ));
        }
        members.push(entry.clone());
    }
    if members.is_empty() {
        return Err(error(at, "`exclude` leaves the matrix empty"));
    }
    Ok(members)
}

fn same(a: &Values, b: &Values) -> bool {
    a.len() == b.len() && a.iter().all(|(name, value)| b.get(name) == Some(value))
}

/// `model=mlp,hidden=32`.
pub fn describe(values: &Values) -> String {
    values
        .iter()
        .map(|(name, value)| format!("{name}={}", display(value)))
        .collect::<Vec<_>>()
        .join(",")
}

/// The member's id: `stage@model=mlp,hidden=32`, or `stage@` and the `name` template filled
/// in; the template's own id when there are no values.
pub fn member_id(stage: &str, values: &Values, name: Option<&str>) -> Result<String, String> {
    if values.is_empty() {
        return Ok(stage.to_owned());
    }
    let suffix = match name {
        None => describe(values),
        Some(template) => fill(template, values)?,
    };
    Ok(format!("{stage}@{suffix}"))
}

/// `{model}-{hidden}` with the values in; an unknown name is an error naming it.
fn fill(template: &str, values: &Values) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            return Err(format!("`{template}` has an unclosed `{{`"));
        };
        let key = &rest[start + 1..start + end];
        let value = values.get(key).ok_or_else(|| {
            format!("`{{{key}}}` in the name template is not a matrix value here")
        })?;
        out.push_str(&display(value));
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `value` with every `${matrix.NAME}` replaced: a string that is exactly one reference takes
/// the value's own type (`horizon: ${matrix.horizon}` is the number 4); inside a longer string
/// the value's text is spliced in. An unknown name is an error at its place (relative to `at`).
pub fn substitute(value: &Value, values: &Values, at: &YamlPath) -> Result<Value, MatrixError> {
    Ok(match value {
        Value::String(text) => substitute_text(text, values, at)?,
        Value::Sequence(items) => Value::Sequence(
            items
                .iter()
                .enumerate()
                .map(|(index, item)| substitute(item, values, &at.clone().index(index)))
                .collect::<Result<_, _>>()?,
        ),
        Value::Mapping(mapping) => {
            let mut out = yaml_serde::Mapping::new();
            for (key, item) in mapping {
                let here = match key.as_str() {
                    Some(name) => at.clone().key(name),
                    None => at.clone(),
                };
                out.insert(key.clone(), substitute(item, values, &here)?);
            }
            Value::Mapping(out)
        }
        other => other.clone(),
    })
}

const OPEN: &str = "${matrix.";

fn substitute_text(text: &str, values: &Values, at: &YamlPath) -> Result<Value, MatrixError> {
    if !text.contains(OPEN) {
        return Ok(Value::String(text.to_owned()));
    }
    let lookup = |name: &str| {
        values.get(name).ok_or_else(|| {
            let known: Vec<&str> = values.keys().map(String::as_str).collect();
            error(
                at.clone(),
                if known.is_empty() {
                    format!("`${{matrix.{name}}}`: this stage has no matrix values")
                } else {
                    format!(
                        "`${{matrix.{name}}}` is not a matrix value of this stage; it has: {}",
                        known.join(", ")
                    )
                },
            )
        })
    };
    if let Some(name) = text
        .strip_prefix(OPEN)
        .and_then(|rest| rest.strip_suffix('}'))
        .filter(|name| !name.contains('}'))
    {
        return lookup(name).cloned();
    }
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        out.push_str(&rest[..start]);
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after.find('}') else {
            return Err(error(
                at.clone(),
                format!("`{text}` has an unclosed `${{matrix.`"),
            ));
        };
        out.push_str(&display(lookup(&after[..end])?));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

/// Whether `member` agrees with `other` on every name they share.
pub fn consistent(member: &Values, other: &Values) -> bool {
    other
        .iter()
        .all(|(name, value)| member.get(name).is_none_or(|mine| mine == value))
}

/// `*` any run of characters, `?` one: `train@*`, `labels@horizon=1?`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(at) = star {
            pi = at + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<MatrixSpec, MatrixError> {
        let value: Value = yaml_serde::from_str(text).unwrap();
        parse(&value, &YamlPath::of(&["stages", "train"]))
    }

    fn ids(text: &str) -> Vec<String> {
        let spec = spec(text).unwrap();
        members(&spec, &YamlPath::root())
            .unwrap()
            .iter()
            .map(|values| member_id("train", values, spec.name.as_deref()).unwrap())
            .collect()
    }

    #[test]
    fn products_less_exclude_plus_include() {
        assert_eq!(
            ids(
                "model: [logistic, mlp]\nhidden: [32, 64]\nexclude: [{model: logistic, hidden: 64}]\ninclude: [{model: softmax, hidden: 0}]\n"
            ),
            [
                "train@model=logistic,hidden=32",
                "train@model=mlp,hidden=32",
                "train@model=mlp,hidden=64",
                "train@model=softmax,hidden=0",
            ]
        );
        assert_eq!(
            ids("model: [a, b]\nname: \"{model}-x\"\n"),
            ["train@a-x", "train@b-x"]
        );
    }

    #[test]
    fn mistakes_are_located() {
        let empty = spec("horizon: []\n").unwrap_err();
        assert_eq!(empty.path.to_string(), "stages.train.matrix.horizon");
        assert!(empty.message.contains("no values"), "{}", empty.message);
        let unknown = spec("model: [a]\nexclude: [{hidden: 1}]\n").unwrap_err();
        assert_eq!(
            unknown.path.to_string(),
            "stages.train.matrix.exclude[0].hidden"
        );
        let parsed = spec("model: [a, b]\ninclude: [{model: a}]\n").unwrap();
        let duplicate = members(&parsed, &YamlPath::of(&["stages", "train"])).unwrap_err();
        assert_eq!(duplicate.path.to_string(), "stages.train.matrix.include[0]");
        let all_gone = spec("model: [a]\nexclude: [{model: a}]\n").unwrap();
        assert!(members(&all_gone, &YamlPath::root()).is_err());
    }

    #[test]
    fn substitution_keeps_types_and_splices_text() {
        let values: Values = [
            ("horizon".to_owned(), Value::from(4)),
            ("model".to_owned(), Value::from("mlp")),
        ]
        .into_iter()
        .collect();
        let with: Value = yaml_serde::from_str(
            "params: {horizon: \"${matrix.horizon}\"}\nmodel: ${matrix.model}\nnote: h${matrix.horizon}-${matrix.model}\nlist: [\"${matrix.horizon}\"]\n",
        )
        .unwrap();
        let out = substitute(&with, &values, &YamlPath::root()).unwrap();
        assert_eq!(out["params"]["horizon"], Value::from(4));
        assert_eq!(out["model"], Value::from("mlp"));
        assert_eq!(out["note"], Value::from("h4-mlp"));
        assert_eq!(out["list"][0], Value::from(4));
        let bad: Value = yaml_serde::from_str("params: {x: \"${matrix.nope}\"}\n").unwrap();
        let error = substitute(&bad, &values, &YamlPath::of(&["stages", "t", "with"])).unwrap_err();
        assert_eq!(error.path.to_string(), "stages.t.with.params.x");
        assert!(
            error.message.contains("it has: horizon, model"),
            "{}",
            error.message
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match("train@*", "train@model=mlp"));
        assert!(glob_match(
            "*model=mlp*",
            "train@horizon=4,model=mlp,hidden=32"
        ));
        assert!(glob_match("labels@horizon=1?", "labels@horizon=12"));
        assert!(!glob_match("train@*", "training"));
        assert!(glob_match("train", "train"));
    }
}
