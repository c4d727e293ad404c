//! The validated pipeline: the raw spec checked, kinds resolved, params prepared by their kinds,
//! referenced files found, and the stage graph built. Every user mistake becomes a
//! [`Diagnostic`] with the file, line and column; all of them are reported at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;

use crate::diagnostic::Diagnostic;
use crate::diagnostic::location::{Anchor, LocationIndex, Position, YamlPath};
use crate::diagnostic::params::strip_yaml_location;
use crate::engine::dag::Dag;
use crate::engine::spec::{PipelineSpec, StageSpec};
use crate::engine::stage::{
    self, Catalog, FileRef, PrepareContext, PreparedStage, SourceValue, StageKind,
};

/// A checked stage, ready to plan and run.
#[derive(Debug)]
pub struct Stage {
    pub id: String,
    pub kind: &'static dyn StageKind,
    pub prepared: Box<dyn PreparedStage>,
    /// Indices of the stages this one reads, in `needs` order.
    pub needs: Vec<usize>,
    pub ttl: Option<Duration>,
    pub reuse_for: Option<Duration>,
    pub version: u32,
    pub files: Vec<FileRef>,
}

/// A pipeline that passed every check.
#[derive(Debug)]
pub struct Pipeline {
    pub name: String,
    pub description: Option<String>,
    /// The pipeline file as the user named it.
    pub file: PathBuf,
    pub project_root: PathBuf,
    pub stages: Vec<Stage>,
    pub dag: Dag,
    pub sources: IndexMap<String, SourceValue>,
}

/// Why a pipeline could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("failed to read pipeline {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

fn render(diagnostics: &[Diagnostic]) -> String {
    let body: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    let mut text = body.join("\n\n");
    if diagnostics.len() > 1 {
        text.push_str(&format!(
            "\n\n{} errors in this pipeline",
            diagnostics.len()
        ));
    }
    text
}

/// A stage id names directories and environment variables: keep it plain.
fn valid_stage_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !id.starts_with('-')
}

impl Pipeline {
    /// Reads and validates `file`; project-relative paths resolve against `project_root`.
    pub fn load(
        file: &Path,
        project_root: &Path,
        catalog: &dyn Catalog,
    ) -> Result<Self, PipelineError> {
        let text = fs_err::read_to_string(file).map_err(|source| PipelineError::Read {
            path: file.to_owned(),
            source,
        })?;
        Self::parse(file, &text, project_root, catalog)
    }

    /// Validates pipeline `text`, reporting errors against `file`.
    pub fn parse(
        file: &Path,
        text: &str,
        project_root: &Path,
        catalog: &dyn Catalog,
    ) -> Result<Self, PipelineError> {
        // Syntax first, so a broken file is reported as such rather than as a type mismatch.
        let index = LocationIndex::build(text).map_err(|(position, message)| {
            PipelineError::Invalid(vec![Diagnostic::at(
                file,
                text,
                Some(position),
                1,
                format!("invalid YAML: {message}"),
            )])
        })?;
        let spec: PipelineSpec = yaml_serde::from_str(text).map_err(|error| {
            let position = error.location().map(|location| Position {
                line: location.line(),
                column: location.column(),
            });
            let message = error.to_string();
            PipelineError::Invalid(vec![Diagnostic::at(
                file,
                text,
                position,
                1,
                strip_yaml_location(&message),
            )])
        })?;
        Checker {
            file,
            text,
            index,
            project_root,
            catalog,
            diagnostics: Vec::new(),
        }
        .check(spec)
    }

    /// Works out each stage's output shape in order, so SQL is planned against its inputs'
    /// schemas before anything runs; every problem is reported, located in its file.
    pub async fn check_shapes(&self) -> Result<(), PipelineError> {
        let mut shapes: Vec<stage::OutputShape> =
            vec![stage::OutputShape::Unknown; self.stages.len()];
        let mut diagnostics = Vec::new();
        for &index in self.dag.topological_order() {
            let stage = &self.stages[index];
            let inputs: Vec<(String, stage::OutputShape)> = stage
                .needs
                .iter()
                .map(|&input| (self.stages[input].id.clone(), shapes[input].clone()))
                .collect();
            match stage.prepared.output_shape(&stage.id, &inputs).await {
                Ok(shape) => shapes[index] = shape,
                Err(stage::ShapeError::Located(diagnostic)) => diagnostics.push(*diagnostic),
                Err(stage::ShapeError::Param(error)) => {
                    // Located in the pipeline file, as prepare's errors are.
                    let text = std::fs::read_to_string(&self.file).unwrap_or_default();
                    let path = YamlPath::of(&["stages"])
                        .key(stage.id.clone())
                        .key("with")
                        .join(&error.path);
                    let message = format!(
                        "stage `{}` ({}): {}",
                        stage.id,
                        stage.kind.name(),
                        error.message
                    );
                    let mut diagnostic = match LocationIndex::build(&text) {
                        Ok(index) => Diagnostic::at_path(
                            &self.file,
                            &text,
                            &index,
                            &path,
                            error.anchor,
                            message,
                        ),
                        Err(_) => Diagnostic::at(&self.file, &text, None, 1, message),
                    };
                    diagnostic.help = error.help;
                    diagnostics.push(diagnostic);
                }
            }
        }
        if diagnostics.is_empty() {
            Ok(())
        } else {
            Err(PipelineError::Invalid(diagnostics))
        }
    }

    /// The index of the stage called `id`.
    pub fn stage_index(&self, id: &str) -> Option<usize> {
        self.stages.iter().position(|stage| stage.id == id)
    }

    /// Stage ids, for messages.
    pub fn stage_ids(&self) -> String {
        self.stages
            .iter()
            .map(|stage| stage.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

struct Checker<'a> {
    file: &'a Path,
    text: &'a str,
    index: LocationIndex,
    project_root: &'a Path,
    catalog: &'a dyn Catalog,
    diagnostics: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(
        &mut self,
        path: YamlPath,
        anchor: Anchor,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        let diagnostic =
            Diagnostic::at_path(self.file, self.text, &self.index, &path, anchor, message);
        self.diagnostics.push(diagnostic);
        self.diagnostics.last_mut().expect("just pushed")
    }

    fn check(mut self, spec: PipelineSpec) -> Result<Pipeline, PipelineError> {
        let ids: Vec<&String> = spec.stages.keys().collect();
        let all_ids = ids
            .iter()
            .map(|id| id.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        if !valid_stage_id(&spec.name) {
            self.error(YamlPath::of(&["name"]), Anchor::Value, format!("invalid pipeline name `{}`", spec.name))
                .help = Some("it names the pipeline's cache directory: use letters, digits, `_` and `-` (at most 64)".to_owned());
        }
        if spec.stages.is_empty() {
            self.error(
                YamlPath::of(&["stages"]),
                Anchor::Key,
                "the pipeline has no stages",
            );
        }
        for kind in spec.defaults.with.keys() {
            if self.catalog.kind(kind).is_none() {
                self.error(
                    YamlPath::of(&["defaults", "with"]).key(kind.clone()),
                    Anchor::Key,
                    format!("unknown stage kind `{kind}` in defaults"),
                )
                .help = Some(known_kinds(self.catalog));
            }
        }
        // Stage ids name environment variables; two ids must not map to the same one.
        let mut variables: std::collections::HashMap<String, &str> =
            std::collections::HashMap::new();
        for id in spec.stages.keys() {
            if let Some(first) = variables.insert(stage::input_variable(id), id) {
                self.error(
                    YamlPath::of(&["stages"]).key(id.clone()),
                    Anchor::Key,
                    format!(
                        "stage ids `{first}` and `{id}` both name {}",
                        stage::input_variable(id)
                    ),
                )
                .help =
                    Some("rename one: ids differing only in case, `-` or `_` collide".to_owned());
            }
        }
        let sources = self.check_sources(&spec);
        let mut stages = Vec::new();
        let mut edges = Vec::new();
        for (position, (id, stage_spec)) in spec.stages.iter().enumerate() {
            let base = YamlPath::of(&["stages"]).key(id.clone());
            if !valid_stage_id(id) {
                self.error(
                    base.clone(),
                    Anchor::Key,
                    format!("invalid stage id `{id}`"),
                )
                .help = Some("use letters, digits, `_` and `-` (at most 64)".to_owned());
            }
            let mut needs = Vec::new();
            for (need_position, need) in stage_spec.needs.iter().enumerate() {
                match spec.stages.get_index_of(need) {
                    Some(input) => {
                        if !needs.contains(&input) {
                            needs.push(input);
                            edges.push((input, position));
                        }
                    }
                    None => {
                        let suggestion = closest(need, ids.iter().map(|id| id.as_str()));
                        self.error(
                            base.clone().key("needs").index(need_position),
                            Anchor::Value,
                            format!(
                                "stage `{id}` needs `{need}`, which is not a stage of this pipeline"
                            ),
                        )
                        .help = Some(match suggestion {
                            Some(name) => format!("did you mean `{name}`? stages: {all_ids}"),
                            None => format!("stages: {all_ids}"),
                        });
                    }
                }
            }
            if let Some(stage) = self.check_stage(id, stage_spec, &base, &spec, &sources, needs) {
                stages.push(stage);
            }
        }
        let dag = match Dag::build(spec.stages.len(), &edges) {
            Ok(dag) => Some(dag),
            Err(cycle) => {
                let names: Vec<&str> = cycle.iter().map(|&index| ids[index].as_str()).collect();
                // Point at the `needs` entry that closes the loop.
                let (last, first) = (cycle[cycle.len() - 2], cycle[0]);
                let need_position = spec.stages[first]
                    .needs
                    .iter()
                    .position(|need| need == ids[last])
                    .unwrap_or(0);
                self.error(
                    YamlPath::of(&["stages"])
                        .key(ids[first].clone())
                        .key("needs")
                        .index(need_position),
                    Anchor::Value,
                    format!("stage `{}` is in a cycle: {}", names[0], names.join(" -> ")),
                )
                .help = Some(
                    "a stage cannot depend on its own output; remove one of these needs".into(),
                );
                None
            }
        };
        match dag {
            Some(dag) if self.diagnostics.is_empty() && stages.len() == spec.stages.len() => {
                Ok(Pipeline {
                    name: spec.name,
                    description: spec.description,
                    file: self.file.to_owned(),
                    project_root: self.project_root.to_owned(),
                    stages,
                    dag,
                    sources,
                })
            }
            _ => Err(PipelineError::Invalid(self.diagnostics)),
        }
    }

    fn check_stage(
        &mut self,
        id: &str,
        stage_spec: &StageSpec,
        base: &YamlPath,
        spec: &PipelineSpec,
        sources: &IndexMap<String, SourceValue>,
        needs: Vec<usize>,
    ) -> Option<Stage> {
        let cache = stage_spec
            .cache
            .clone()
            .or_else(|| spec.defaults.cache.clone())
            .unwrap_or_default();
        let cache_path = if stage_spec.cache.is_some() {
            base.clone().key("cache")
        } else {
            YamlPath::of(&["defaults", "cache"])
        };
        let ttl = self.duration(cache.ttl.as_deref(), cache_path.clone().key("ttl"));
        let reuse_for = self.duration(cache.reuse_for.as_deref(), cache_path.key("reuse_for"));
        let Some(kind) = self.catalog.kind(&stage_spec.kind) else {
            let suggestion = closest(
                &stage_spec.kind,
                self.catalog.kinds().iter().map(|kind| kind.name()),
            );
            let help = match suggestion {
                Some(name) => format!("did you mean `{name}`? {}", known_kinds(self.catalog)),
                None => known_kinds(self.catalog),
            };
            self.error(
                base.clone().key("kind"),
                Anchor::Value,
                format!("unknown stage kind `{}`", stage_spec.kind),
            )
            .help = Some(help);
            return None;
        };
        let params = match merged_params(stage_spec, spec.defaults.with.get(kind.name())) {
            Ok(params) => params,
            Err(message) => {
                self.error(base.clone().key("with"), Anchor::Value, message);
                return None;
            }
        };
        let context = PrepareContext {
            stage_id: id,
            project_root: self.project_root,
            sources,
        };
        let prepared = match kind.prepare(&params, &context) {
            Ok(prepared) => prepared,
            Err(error) => {
                let path = base.clone().key("with").join(&error.path);
                let message = format!("stage `{id}` ({}): {}", kind.name(), error.message);
                self.error(path, error.anchor, message).help = error.help;
                if let Some(nested) = error.nested {
                    self.diagnostics.push(*nested);
                }
                return None;
            }
        };
        let files = prepared.files();
        for file in &files {
            let absolute = self.project_root.join(&file.path);
            if !absolute.is_file() {
                self.error(
                    base.clone().key("with").join(&file.param),
                    Anchor::Value,
                    format!(
                        "stage `{id}` references `{}`, which does not exist",
                        file.path.display()
                    ),
                )
                .help = Some(format!("looked for {}", absolute.display()));
            }
        }
        let (ttl, reuse_for) = (ttl.ok()?, reuse_for.ok()?);
        Some(Stage {
            id: id.to_owned(),
            kind,
            prepared,
            needs,
            ttl,
            reuse_for,
            version: stage_spec.version.unwrap_or(0),
            files,
        })
    }

    /// Types every `sources:` entry; a broken one is reported and left out.
    fn check_sources(&mut self, spec: &PipelineSpec) -> IndexMap<String, SourceValue> {
        let mut sources = IndexMap::new();
        for (name, value) in &spec.sources {
            match self.catalog.check_source(name, value, self.project_root) {
                Ok(source) => {
                    sources.insert(name.clone(), source);
                }
                Err(error) => {
                    let path = YamlPath::of(&["sources"])
                        .key(name.clone())
                        .join(&error.path);
                    self.error(path, error.anchor, error.message).help = error.help;
                    if let Some(nested) = error.nested {
                        self.diagnostics.push(*nested);
                    }
                }
            }
        }
        sources
    }

    fn duration(&mut self, text: Option<&str>, path: YamlPath) -> Result<Option<Duration>, ()> {
        let Some(text) = text else { return Ok(None) };
        crate::util::time::parse_duration(text)
            .map(Some)
            .map_err(|message| {
                self.error(path, Anchor::Value, message).help =
                    Some("use a number and a unit: 90s, 30m, 1h, 7d".to_owned());
            })
    }
}

/// The stage's `with`, over the kind's defaults from `defaults.with.<kind>`.
fn merged_params(
    stage_spec: &StageSpec,
    defaults: Option<&yaml_serde::Mapping>,
) -> Result<yaml_serde::Value, String> {
    let mut merged = defaults.cloned().unwrap_or_default();
    match &stage_spec.params {
        None | Some(yaml_serde::Value::Null) => {}
        Some(yaml_serde::Value::Mapping(own)) => {
            for (key, value) in own {
                merged.insert(key.clone(), value.clone());
            }
        }
        Some(_) => return Err("`with` must be a mapping of params".to_owned()),
    }
    Ok(yaml_serde::Value::Mapping(merged))
}

fn known_kinds(catalog: &dyn Catalog) -> String {
    let names: Vec<&str> = catalog.kinds().iter().map(|kind| kind.name()).collect();
    format!("known kinds: {}", names.join(", "))
}

/// The candidate within edit distance 2 of `word`, if any.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|candidate| (edit_distance(word, candidate), candidate))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = if ca == *cb {
                previous
            } else {
                1 + previous.min(row[j]).min(row[j + 1])
            };
            previous = current;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> String {
        match Pipeline::parse(
            Path::new("p.yaml"),
            text,
            Path::new("."),
            &crate::engine::testing::FAKE,
        ) {
            Ok(_) => panic!("expected an error"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn unknown_need_points_at_the_entry() {
        let text = "name: t\nstages:\n  a:\n    kind: command\n    with: {run: 'true'}\n  b:\n    kind: command\n    needs: [a, c]\n    with: {run: 'true'}\n";
        let message = errors(text);
        assert!(
            message.starts_with("p.yaml:8:16: stage `b` needs `c`, which is not a stage"),
            "{message}"
        );
    }

    #[test]
    fn cycles_are_printed_whole() {
        let text = "name: t\nstages:\n  a:\n    kind: command\n    needs: [c]\n    with: {run: 'true'}\n  b:\n    kind: command\n    needs: [a]\n    with: {run: 'true'}\n  c:\n    kind: command\n    needs: [b]\n    with: {run: 'true'}\n";
        let message = errors(text);
        assert!(
            message.starts_with("p.yaml:5:13: stage `a` is in a cycle: a -> b -> c -> a"),
            "{message}"
        );
    }

    #[test]
    fn suggests_the_closest_kind() {
        let text = "name: t\nstages:\n  a:\n    kind: comand\n    with: {run: 'true'}\n";
        let message = errors(text);
        assert!(
            message.starts_with("p.yaml:4:11: unknown stage kind `comand`"),
            "{message}"
        );
        assert!(message.contains("did you mean `command`?"), "{message}");
    }

    #[test]
    fn defaults_merge_under_stage_params() {
        let text = "name: t\ndefaults:\n  with:\n    command: {env: {A: '1'}}\n  cache: {ttl: 1h}\nstages:\n  a:\n    kind: command\n    with: {run: 'true'}\n";
        let pipeline = Pipeline::parse(
            Path::new("p.yaml"),
            text,
            Path::new("."),
            &crate::engine::testing::FAKE,
        )
        .unwrap();
        assert_eq!(pipeline.stages[0].prepared.params()["env"]["A"], "1");
        assert_eq!(pipeline.stages[0].ttl, Some(Duration::from_secs(3600)));
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("comand", "command"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
