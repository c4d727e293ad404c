//! Two runs side by side (`/compare?a=RUN&b=RUN`): which stages differ and why (params, files,
//! inputs, code), and how the figures moved; and what a stage's output says in figures, for
//! that page and for a sweep's leaderboard.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use super::{Site, duration, escape, status_word};
use crate::engine::run_record::{RunRecord, StageRecord};

/// The committed output directory of `stage`, resolved, if it lies inside the run root.
pub fn output_dir(site: &Site, stage: &StageRecord) -> Option<PathBuf> {
    let output = stage.output.as_deref()?;
    let path = site.project_root.join(output);
    let resolved = path.canonicalize().ok()?;
    (resolved.starts_with(&site.run_root) && resolved.is_dir()).then_some(resolved)
}

/// A JSON file of the output, parsed.
fn output_json(site: &Site, stage: &StageRecord, file: &str) -> Option<Value> {
    let dir = output_dir(site, stage)?;
    let path = dir.join(file).canonicalize().ok()?;
    if !path.starts_with(&site.run_root) {
        return None;
    }
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// A figure: its label and value.
pub struct Figure {
    pub label: String,
    pub value: f64,
    /// How to show it.
    pub format: Format,
}

#[derive(Clone, Copy)]
pub enum Format {
    Percent,
    Ratio,
    Count,
}

impl Format {
    fn show(self, value: f64) -> String {
        match self {
            Format::Percent => format!("{:+.2}%", value * 100.0),
            Format::Ratio => format!("{value:.3}"),
            Format::Count => format!("{value:.0}"),
        }
    }

    fn change(self, change: f64) -> String {
        match self {
            Format::Percent => format!("{:+.2} pts", change * 100.0),
            Format::Ratio => format!("{change:+.3}"),
            Format::Count => format!("{change:+.0}"),
        }
    }
}

/// The figures a stage's output holds, by its kind: the model against its baseline, the
/// backtest, the sweep's selection correction, the paper book.
pub fn stage_figures(site: &Site, stage: &StageRecord) -> Vec<Figure> {
    let (file, wanted): (&str, &[(&str, &str, Format)]) = match stage.kind.as_str() {
        "train" => (
            "metrics.json",
            &[
                (
                    "balanced accuracy",
                    "/overall/model/balanced_accuracy",
                    Format::Ratio,
                ),
                (
                    "baseline balanced accuracy",
                    "/overall/baseline/balanced_accuracy",
                    Format::Ratio,
                ),
                ("log loss", "/overall/model/log_loss", Format::Ratio),
            ],
        ),
        "backtest" => (
            "metrics.json",
            &[
                ("return", "/strategy/total_return", Format::Percent),
                ("Sharpe", "/strategy/sharpe", Format::Ratio),
                ("max drawdown", "/strategy/max_drawdown", Format::Percent),
                ("trades", "/trades/trades", Format::Count),
                (
                    "buy-and-hold return",
                    "/buy_and_hold/total_return",
                    Format::Percent,
                ),
            ],
        ),
        "compare" => (
            "compare.json",
            &[
                ("deflated Sharpe ratio", "/deflated/dsr", Format::Ratio),
                ("PBO", "/overfitting/pbo", Format::Ratio),
                ("members", "/members", Format::Count),
            ],
        ),
        "signals" => (
            "summary.json",
            &[
                ("paper trades closed", "/ledger/closed", Format::Count),
                ("paper hit rate", "/ledger/hit_rate", Format::Ratio),
                (
                    "paper portfolio return",
                    "/portfolio/total_return",
                    Format::Percent,
                ),
            ],
        ),
        _ => return Vec::new(),
    };
    let Some(json) = output_json(site, stage, file) else {
        return Vec::new();
    };
    wanted
        .iter()
        .filter_map(|(label, pointer, format)| {
            Some(Figure {
                label: (*label).to_owned(),
                value: json.pointer(pointer)?.as_f64()?,
                format: *format,
            })
        })
        .collect()
}

/// `a.b.c` -> value for every leaf of a JSON value.
fn leaves(value: &Value, prefix: &str, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(value, &path, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

/// What differs between two records of one stage, in words.
fn stage_difference(site: &Site, a: &StageRecord, b: &StageRecord) -> Vec<String> {
    if a.fingerprint.is_some() && a.fingerprint == b.fingerprint {
        return vec!["same".to_owned()];
    }
    let mut differences = Vec::new();
    if a.kind != b.kind {
        differences.push(format!("kind {} -> {}", a.kind, b.kind));
    }
    match (&a.params, &b.params) {
        (Some(left), Some(right)) if left != right => {
            let (mut before, mut after) = (BTreeMap::new(), BTreeMap::new());
            leaves(left, "", &mut before);
            leaves(right, "", &mut after);
            let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let (old, new) = (before.get(key), after.get(key));
                if old != new {
                    let none = "(none)".to_owned();
                    differences.push(format!(
                        "with.{key}: {} -> {}",
                        old.unwrap_or(&none),
                        new.unwrap_or(&none)
                    ));
                }
            }
        }
        (None, _) | (_, None) => {}
        _ => {}
    }
    // The fingerprint's other parts, from the cache entries' manifests when both are there.
    let key = |stage: &StageRecord| -> Option<Value> {
        let dir = output_dir(site, stage)?;
        let manifest = dir.parent()?.join("manifest.json");
        let json: Value = serde_json::from_slice(&std::fs::read(manifest).ok()?).ok()?;
        json.get("key").cloned()
    };
    if let (Some(left), Some(right)) = (key(a), key(b)) {
        for (part, what) in [("files", "file"), ("inputs", "input")] {
            let (before, after) = (&left[part], &right[part]);
            let mut names: Vec<&String> = before
                .as_object()
                .into_iter()
                .chain(after.as_object())
                .flat_map(|map| map.keys())
                .collect();
            names.sort();
            names.dedup();
            for name in names {
                if before.get(name) != after.get(name) {
                    differences.push(format!("{what} {name} changed"));
                }
            }
        }
        for (part, what) in [
            ("kind_version", "the kind's code"),
            ("version", "the stage's version"),
        ] {
            if left[part] != right[part] {
                differences.push(format!("{what}: {} -> {}", left[part], right[part]));
            }
        }
    }
    if differences.is_empty() {
        differences.push(if a.fingerprint.is_none() || b.fingerprint.is_none() {
            "not fingerprinted in both (failed or skipped before its inputs were known)".to_owned()
        } else {
            "its inputs' outputs differ".to_owned()
        });
    }
    differences
}

/// The comparison page's body.
pub fn compare_body(site: &Site, a: &RunRecord, b: &RunRecord) -> String {
    let mut body = String::from(
        "<table><tr><th></th><th>run</th><th>pipeline</th><th>started</th><th>duration</th><th>status</th><th>stages</th></tr>",
    );
    for (side, record) in [("A", a), ("B", b)] {
        body.push_str(&format!(
            "<tr><td>{side}</td><td><a href=\"/runs/{id}\">{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td class=\"{word}\">{word}</td><td>{}</td></tr>",
            escape(&record.pipeline),
            escape(&record.started_at),
            duration(record.duration_ms),
            escape(&record.counts()),
            id = escape(&record.run_id),
            word = status_word(record),
        ));
    }
    body.push_str("</table>");

    // Stages, in A's order then B's new ones.
    let mut ids: Vec<&str> = a.stages.iter().map(|s| s.id.as_str()).collect();
    for stage in &b.stages {
        if !ids.contains(&stage.id.as_str()) {
            ids.push(&stage.id);
        }
    }
    let find = |record: &'_ RunRecord, id: &str| -> Option<StageRecord> {
        record.stages.iter().find(|s| s.id == id).cloned()
    };
    let cell = |stage: &Option<StageRecord>| match stage {
        Some(stage) => format!(
            "<td class=\"{word}\">{word}</td><td><code>{}</code></td>",
            escape(
                stage
                    .fingerprint
                    .as_deref()
                    .map_or("", |f| &f[..f.len().min(12)])
            ),
            word = stage.status.word(),
        ),
        None => "<td>-</td><td></td>".to_owned(),
    };
    body.push_str("<h2>Stages</h2><table><tr><th>stage</th><th>A</th><th>fingerprint</th><th>B</th><th>fingerprint</th><th>what differs</th></tr>");
    let mut changed = 0;
    for id in &ids {
        let (left, right) = (find(a, id), find(b, id));
        let difference = match (&left, &right) {
            (Some(left), Some(right)) => stage_difference(site, left, right),
            (Some(_), None) => vec!["only in A".to_owned()],
            (None, Some(_)) => vec!["only in B".to_owned()],
            (None, None) => Vec::new(),
        };
        let same = difference == ["same"];
        if !same {
            changed += 1;
        }
        body.push_str(&format!(
            "<tr id=\"diff-{}\" class=\"{}\"><td>{}</td>{}{}<td>{}</td></tr>",
            escape(id),
            if same { "same" } else { "differs" },
            escape(id),
            cell(&left),
            cell(&right),
            difference
                .iter()
                .map(|line| escape(line))
                .collect::<Vec<_>>()
                .join("<br>")
        ));
    }
    body.push_str("</table>");
    body.push_str(&format!("<p>{changed} of {} stages differ.</p>", ids.len()));

    // The figures, where both runs have them.
    let figures = |record: &RunRecord| -> Vec<(String, Figure)> {
        record
            .stages
            .iter()
            .flat_map(|stage| {
                stage_figures(site, stage)
                    .into_iter()
                    .map(|figure| (stage.id.clone(), figure))
            })
            .collect()
    };
    let (left, right) = (figures(a), figures(b));
    let mut rows = String::new();
    for (stage, figure) in &left {
        let Some((_, other)) = right
            .iter()
            .find(|(id, f)| id == stage && f.label == figure.label)
        else {
            continue;
        };
        let change = other.value - figure.value;
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            escape(stage),
            escape(&figure.label),
            figure.format.show(figure.value),
            other.format.show(other.value),
            if change == 0.0 { "cached" } else { "run" },
            figure.format.change(change),
        ));
    }
    if rows.is_empty() {
        body.push_str("<p>No figures in both runs (a model, a backtest, a sweep or a paper book) to compare.</p>");
    } else {
        body.push_str("<h2>How the figures moved</h2><table><tr><th>stage</th><th>figure</th><th>A</th><th>B</th><th>B - A</th></tr>");
        body.push_str(&rows);
        body.push_str("</table>");
    }
    body
}

/// The sweep leaderboards of the record's `compare` stages with an output, if it has any.
pub fn leaderboards(site: &Site, record: &RunRecord) -> Option<String> {
    let sections: String = record
        .stages
        .iter()
        .filter(|stage| stage.kind == "compare")
        .filter_map(|stage| leaderboard(site, record, stage))
        .collect();
    (!sections.is_empty()).then_some(sections)
}

/// One `compare` stage's leaderboard, with its verdict and selection correction.
fn leaderboard(site: &Site, record: &RunRecord, stage: &StageRecord) -> Option<String> {
    let json = output_json(site, stage, crate::kinds::compare::SUMMARY_FILE)?;
    let summary: crate::sweep::Summary = serde_json::from_value(json).ok()?;
    let mut section = format!(
        "<h2>Sweep leaderboard ({}, run <a href=\"/runs/{id}\">{id}</a>)</h2><p><b>{}</b></p>",
        escape(&stage.id),
        escape(&summary.verdict),
        id = escape(&record.run_id),
    );
    crate::report::html::selection_paragraphs(&mut section, &summary);
    crate::report::html::leaderboard_table(&mut section, &summary);
    Some(section)
}
