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
use crate::engine::spec::{PipelineCacheSpec, PipelineSpec, StageSpec};
use crate::engine::stage::{
    self, Catalog, FileRef, PrepareContext, PreparedStage, SourceValue, StageKind,
};

/// A checked stage, ready to plan and run.
#[derive(Debug)]
pub struct Stage {
    /// The stage's id; a matrix member's is `template@name=value,...`.
    pub id: String,
    /// The stage as written in the file (its own id outside a sweep).
    pub template: String,
    /// The member's matrix values, inherited ones first; empty outside a sweep.
    pub matrix: crate::engine::matrix::Values,
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
    /// The pipeline's remote cache, as written (`ASTERFLOW_REMOTE_CACHE` may replace it).
    pub remote: Option<RemoteSettings>,
}

/// Where a remote cache is: its URL and, for S3-compatible servers, an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSettings {
    pub url: String,
    pub endpoint: Option<String>,
}

/// Refuses a remote cache URL asterflow cannot open, saying which it can.
pub fn check_remote_url(url: &str) -> Result<(), String> {
    match url.split_once("://") {
        Some(("s3" | "s3a" | "file", rest)) if !rest.is_empty() => Ok(()),
        _ => Err(format!(
            "remote cache `{url}` is not an s3:// or file:// URL"
        )),
    }
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
    /// A `--set` that names no stage or param path.
    #[error("--set {0}")]
    Override(String),
}

/// Applies `STAGE.with.PATH=VALUE` (VALUE read as YAML: `4` is a number, `mlp` a string) to the
/// stage as written, so every member of a matrix stage gets it.
fn apply_override(spec: &mut PipelineSpec, text: &str) -> Result<(), String> {
    let usage = || format!("{text}: expected STAGE.with.PARAM[.KEY...]=VALUE");
    let (path, value) = text.split_once('=').ok_or_else(usage)?;
    let mut parts = path.split('.');
    let (Some(stage), Some("with")) = (parts.next(), parts.next()) else {
        return Err(usage());
    };
    let keys: Vec<&str> = parts.collect();
    if keys.is_empty() || keys.iter().any(|key| key.is_empty()) {
        return Err(usage());
    }
    let stages: Vec<String> = spec.stages.keys().cloned().collect();
    let stage_spec = spec.stages.get_mut(stage).ok_or_else(|| {
        format!(
            "{text}: `{stage}` is not a stage of this pipeline; stages: {}",
            stages.join(", ")
        )
    })?;
    let value: yaml_serde::Value = yaml_serde::from_str(value)
        .map_err(|error| format!("{text}: the value is not YAML: {error}"))?;
    let mut node = stage_spec
        .params
        .get_or_insert_with(|| yaml_serde::Value::Mapping(yaml_serde::Mapping::new()));
    for (depth, key) in keys.iter().enumerate() {
        if node.is_null() {
            *node = yaml_serde::Value::Mapping(yaml_serde::Mapping::new());
        }
        let yaml_serde::Value::Mapping(mapping) = node else {
            return Err(format!(
                "{text}: `{}` is not a mapping",
                keys[..depth].join(".")
            ));
        };
        let key = yaml_serde::Value::String((*key).to_owned());
        if depth + 1 == keys.len() {
            if let Some(old) = mapping.get(&key) {
                let varies =
                    yaml_serde::to_string(old).is_ok_and(|text| text.contains("${matrix."));
                if varies {
                    return Err(format!(
                        "{text}: `{}` is set by the stage's matrix; change the matrix's list instead",
                        keys.join(".")
                    ));
                }
            }
            mapping.insert(key, value);
            return Ok(());
        }
        node = mapping.entry(key).or_insert(yaml_serde::Value::Null);
    }
    Ok(())
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

    /// [`load`](Self::load) with `--set STAGE.with.PATH=VALUE` overrides applied to the stages'
    /// params before anything is checked (so they are part of the fingerprint).
    pub fn load_with(
        file: &Path,
        project_root: &Path,
        catalog: &dyn Catalog,
        overrides: &[String],
    ) -> Result<Self, PipelineError> {
        let text = fs_err::read_to_string(file).map_err(|source| PipelineError::Read {
            path: file.to_owned(),
            source,
        })?;
        Self::parse_with(file, &text, project_root, catalog, overrides)
    }

    /// Validates pipeline `text`, reporting errors against `file`.
    pub fn parse(
        file: &Path,
        text: &str,
        project_root: &Path,
        catalog: &dyn Catalog,
    ) -> Result<Self, PipelineError> {
        Self::parse_with(file, text, project_root, catalog, &[])
    }

    /// [`parse`](Self::parse) with `--set` overrides.
    pub fn parse_with(
        file: &Path,
        text: &str,
        project_root: &Path,
        catalog: &dyn Catalog,
        overrides: &[String],
    ) -> Result<Self, PipelineError> {
        // Syntax first, so a broken file is reported as such rather than as a type mismatch.
        let index = LocationIndex::build(text).map_err(|(position, message)| {
            let mut diagnostic = Diagnostic::at(
                file,
                text,
                Some(position),
                1,
                format!("invalid YAML: {message}"),
            );
            // `{model: ${matrix.model}}`: in a flow mapping `{` opens a mapping.
            let line = text
                .lines()
                .nth(position.line.saturating_sub(1))
                .unwrap_or("");
            if line.contains("${") {
                diagnostic.help = Some(
                    "inside `{ }` or `[ ]`, quote a matrix reference: \"${matrix.model}\""
                        .to_owned(),
                );
            }
            PipelineError::Invalid(vec![diagnostic])
        })?;
        let mut spec: PipelineSpec = yaml_serde::from_str(text).map_err(|error| {
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
        for text in overrides {
            apply_override(&mut spec, text).map_err(PipelineError::Override)?;
        }
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

    /// The longest stage id, for aligning tables of stages.
    pub fn id_width(&self) -> usize {
        self.stages
            .iter()
            .map(|stage| stage.id.len())
            .max()
            .unwrap_or(0)
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
                        .key(stage.template.clone())
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

/// A member being built: inherited values, the stage's own values, and its inputs as
/// (template, member number).
type Combo = (
    crate::engine::matrix::Values,
    crate::engine::matrix::Values,
    Vec<(usize, usize)>,
);

/// One member of a template, before its stage is prepared.
#[derive(Debug, Clone)]
struct Member {
    id: String,
    template: usize,
    values: crate::engine::matrix::Values,
    /// (template, member number) of each input.
    needs: Vec<(usize, usize)>,
}

fn ids_of(spec: &PipelineSpec) -> Vec<&String> {
    spec.stages.keys().collect()
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

    /// The pipeline's `cache.remote`, if it names one asterflow can open.
    fn check_remote(&mut self, cache: Option<&PipelineCacheSpec>) -> Option<RemoteSettings> {
        let cache = cache?;
        let url = cache.remote.clone()?;
        if let Err(message) = check_remote_url(&url) {
            self.error(YamlPath::of(&["cache", "remote"]), Anchor::Value, message)
                .help = Some("for example s3://bucket/asterflow-cache (credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) or file:///mnt/shared/asterflow-cache".to_owned());
            return None;
        }
        if let Some(endpoint) = &cache.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            self.error(
                YamlPath::of(&["cache", "endpoint"]),
                Anchor::Value,
                format!("endpoint `{endpoint}` is not an http:// or https:// URL"),
            );
            return None;
        }
        Some(RemoteSettings {
            url,
            endpoint: cache.endpoint.clone(),
        })
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
        let sources = self.check_sources(&spec);
        let remote = self.check_remote(spec.cache.as_ref());
        // The stages as written: ids, needs and cycles.
        let mut template_needs: Vec<Vec<usize>> = Vec::new();
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
            template_needs.push(needs);
        }
        let templates = match Dag::build(spec.stages.len(), &edges) {
            Ok(dag) => dag,
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
                return Err(PipelineError::Invalid(self.diagnostics));
            }
        };
        // The members: matrices expanded, fanned out downstream, gathered where a kind gathers.
        let Some(members) = self.expand(&spec, &templates, &template_needs) else {
            return Err(PipelineError::Invalid(self.diagnostics));
        };
        // Stage ids name environment variables; two ids must not map to the same one.
        let mut variables: std::collections::HashMap<String, &str> =
            std::collections::HashMap::new();
        for member in members.iter().flatten() {
            if let Some(first) = variables.insert(stage::input_variable(&member.id), &member.id) {
                self.error(
                    YamlPath::of(&["stages"]).key(ids[member.template].clone()),
                    Anchor::Key,
                    format!(
                        "stage ids `{first}` and `{}` both name {}",
                        member.id,
                        stage::input_variable(&member.id)
                    ),
                )
                .help =
                    Some("rename one: ids differing only in case, `-` or `_` collide".to_owned());
            }
        }
        // In file order, each template's members together.
        let mut index_of: Vec<Vec<usize>> = Vec::new();
        let mut count = 0;
        for list in &members {
            index_of.push((count..count + list.len()).collect());
            count += list.len();
        }
        let mut stages = Vec::new();
        let mut member_edges = Vec::new();
        for (template, list) in members.iter().enumerate() {
            let (id, stage_spec) = spec.stages.get_index(template).expect("a template");
            let base = YamlPath::of(&["stages"]).key(id.clone());
            for member in list {
                let needs: Vec<usize> = member
                    .needs
                    .iter()
                    .map(|&(input, number)| index_of[input][number])
                    .collect();
                let index = stages.len();
                member_edges.extend(needs.iter().map(|&input| (input, index)));
                let mut member_spec = stage_spec.clone();
                {
                    match member_spec
                        .params
                        .as_ref()
                        .map(|params| {
                            crate::engine::matrix::substitute(
                                params,
                                &member.values,
                                &base.clone().key("with"),
                            )
                        })
                        .transpose()
                    {
                        Ok(params) => member_spec.params = params,
                        Err(error) => {
                            self.error(
                                error.path,
                                Anchor::Value,
                                format!("stage `{}`: {}", member.id, error.message),
                            );
                            continue;
                        }
                    }
                }
                if let Some(mut stage) =
                    self.check_stage(&member.id, &member_spec, &base, &spec, &sources, needs)
                {
                    stage.template = id.clone();
                    stage.matrix = member.values.clone();
                    stages.push(stage);
                }
            }
        }
        match Dag::build(count, &member_edges) {
            Ok(dag) if self.diagnostics.is_empty() && stages.len() == count => Ok(Pipeline {
                name: spec.name,
                description: spec.description,
                file: self.file.to_owned(),
                project_root: self.project_root.to_owned(),
                stages,
                dag,
                sources,
                remote,
            }),
            _ => Err(PipelineError::Invalid(self.diagnostics)),
        }
    }

    /// Each template's members, in topological order of the templates: its own matrix's
    /// members crossed with the members of what it needs (agreeing on shared names), or, for a
    /// gathering kind, its own members with every agreeing member of each need.
    fn expand(
        &mut self,
        spec: &PipelineSpec,
        templates: &Dag,
        template_needs: &[Vec<usize>],
    ) -> Option<Vec<Vec<Member>>> {
        use crate::engine::matrix::{self, Values};
        let mut members: Vec<Vec<Member>> = vec![Vec::new(); spec.stages.len()];
        let mut failed = false;
        // Templates whose members could not be made: their consumers are not judged again.
        let mut broken = vec![false; spec.stages.len()];
        for &template in templates.topological_order() {
            let (id, stage_spec) = spec.stages.get_index(template).expect("a template");
            let base = YamlPath::of(&["stages"]).key(id.clone());
            if template_needs[template].iter().any(|&input| broken[input]) {
                broken[template] = true;
                continue;
            }
            let (own, name) = match &stage_spec.matrix {
                None => (vec![Values::new()], None),
                Some(value) => match matrix::parse(value, &base)
                    .and_then(|parsed| Ok((matrix::members(&parsed, &base)?, parsed.name)))
                {
                    Ok(found) => found,
                    Err(error) => {
                        self.error(error.path, Anchor::Value, error.message);
                        failed = true;
                        broken[template] = true;
                        continue;
                    }
                },
            };
            let gathers = self
                .catalog
                .kind(&stage_spec.kind)
                .is_some_and(|kind| kind.gathers());
            // (inherited values, own values, needs as (template, member number)); the inputs'
            // members vary slowest, the stage's own lists fastest.
            let mut combos: Vec<Combo> = if gathers {
                own.iter()
                    .map(|values| (Values::new(), values.clone(), Vec::new()))
                    .collect()
            } else {
                vec![(Values::new(), Values::new(), Vec::new())]
            };
            for &input in &template_needs[template] {
                let upstream = &members[input];
                if gathers {
                    for (_, own, needs) in &mut combos {
                        needs.extend(
                            upstream
                                .iter()
                                .enumerate()
                                .filter(|(_, member)| matrix::consistent(own, &member.values))
                                .map(|(number, _)| (input, number)),
                        );
                    }
                    continue;
                }
                let mut next = Vec::new();
                for (inherited, own, needs) in &combos {
                    for (number, member) in upstream.iter().enumerate() {
                        if !matrix::consistent(inherited, &member.values) {
                            continue;
                        }
                        let mut merged = inherited.clone();
                        for (name, value) in &member.values {
                            merged.entry(name.clone()).or_insert_with(|| value.clone());
                        }
                        let mut needs = needs.clone();
                        needs.push((input, number));
                        next.push((merged, own.clone(), needs));
                    }
                }
                if next.is_empty() {
                    let position = stage_spec
                        .needs
                        .iter()
                        .position(|need| need == ids_of(spec)[input])
                        .unwrap_or(0);
                    self.error(
                        base.clone().key("needs").index(position),
                        Anchor::Value,
                        format!(
                            "no member of `{}` agrees with the matrix values of `{id}`",
                            ids_of(spec)[input]
                        ),
                    );
                    failed = true;
                }
                combos = next;
            }
            if !gathers {
                combos = combos
                    .into_iter()
                    .flat_map(|(inherited, _, needs)| {
                        own.iter()
                            .filter(|values| matrix::consistent(&inherited, values))
                            .map(|values| (inherited.clone(), values.clone(), needs.clone()))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                if combos.is_empty() && !failed {
                    self.error(
                        base.clone().key("matrix"),
                        Anchor::Key,
                        format!("no member of `{id}` agrees with the matrix values of its inputs"),
                    );
                    failed = true;
                }
            }
            let mut seen: std::collections::HashMap<String, usize> =
                std::collections::HashMap::new();
            for (inherited, own, needs) in combos {
                let mut values = inherited;
                for (name, value) in own {
                    values.entry(name).or_insert(value);
                }
                let member_id = match matrix::member_id(id, &values, name.as_deref()) {
                    Ok(member_id) => member_id,
                    Err(message) => {
                        self.error(
                            base.clone().key("matrix").key("name"),
                            Anchor::Value,
                            message,
                        );
                        failed = true;
                        continue;
                    }
                };
                if let Some(bad) = member_id
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || "_.=,@+-".contains(*c)))
                {
                    self.error(
                        base.clone().key("matrix"),
                        Anchor::Key,
                        format!(
                            "member id `{member_id}` has `{bad}`: ids name directories and files, so they use letters, digits and _ . = , @ + -"
                        ),
                    )
                    .help = Some(
                        "give the matrix a `name:` template that leaves such values out (\"{model}-{hidden}\")".to_owned(),
                    );
                    failed = true;
                    broken[template] = true;
                    continue;
                }
                if member_id.len() > 200 {
                    self.error(
                        base.clone().key("matrix"),
                        Anchor::Key,
                        format!("member id `{member_id}` is longer than 200 characters"),
                    )
                    .help = Some("give the matrix a shorter `name:` template".to_owned());
                    failed = true;
                    continue;
                }
                if let Some(&first) = seen.get(&member_id) {
                    let other = &members[template][first];
                    self.error(
                        base.clone().key("matrix"),
                        Anchor::Key,
                        format!(
                            "two members of `{id}` are both `{member_id}` ({} and {})",
                            matrix::describe(&other.values),
                            matrix::describe(&values)
                        ),
                    )
                    .help =
                        Some("make the `name:` template use every value that varies".to_owned());
                    failed = true;
                    continue;
                }
                seen.insert(member_id.clone(), members[template].len());
                members[template].push(Member {
                    id: member_id,
                    template,
                    values,
                    needs,
                });
            }
        }
        (!failed).then_some(members)
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
            template: id.to_owned(),
            matrix: crate::engine::matrix::Values::new(),
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
