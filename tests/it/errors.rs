//! One test per user-facing pipeline error: its message, its file:line:column, exit code 2,
//! and nothing written to `runs/`.

use crate::common::Project;

/// Writes `text` as `pipelines/p.yaml`, validates and runs it, and checks both fail with
/// `expected` as the first line of the error and write nothing.
fn assert_error(text: &str, expected: &str) {
    let project = Project::new();
    project.write("pipelines/p.yaml", text);
    for args in [
        &["run", "pipelines/p.yaml", "--validate-only"][..],
        &["run", "pipelines/p.yaml"][..],
    ] {
        let run = project.run(args);
        assert_eq!(run.code, 2, "exit code for {args:?}\n{}", run.stderr);
        let first_line = run.stderr.lines().next().unwrap_or_default();
        assert!(
            first_line.starts_with(&format!("error: {expected}")),
            "expected `error: {expected}`, got:\n{}",
            run.stderr
        );
        assert!(
            !project.path().join("runs").exists(),
            "an invalid pipeline writes nothing"
        );
    }
}

#[test]
fn yaml_syntax() {
    assert_error(
        "name: t\nstages:\n  a: [unclosed\n",
        "pipelines/p.yaml:4:1: invalid YAML: ",
    );
}

#[test]
fn unknown_key() {
    assert_error(
        "name: t\nstages:\n  a:\n    kind: command\n    neeeds: [b]\n",
        "pipelines/p.yaml:5:5: stages.a: unknown field `neeeds`, expected one of `kind`, `description`, `needs`, `with`, `cache`, `version`",
    );
}

#[test]
fn wrong_type() {
    assert_error(
        "name: t\nstages:\n  a:\n    kind: command\n    needs: 5\n",
        "pipelines/p.yaml:5:12: stages.a.needs: invalid type: integer `5`, expected a sequence",
    );
}

#[test]
fn unknown_stage_kind() {
    assert_error(
        "name: t\nstages:\n  a:\n    kind: comand\n    with: {run: 'true'}\n",
        "pipelines/p.yaml:4:11: unknown stage kind `comand`",
    );
}

#[test]
fn needs_names_a_missing_stage() {
    assert_error(
        "name: t\nstages:\n  a:\n    kind: command\n    with: {run: 'true'}\n  b:\n    kind: command\n    needs: [a, featurs]\n    with: {run: 'true'}\n",
        "pipelines/p.yaml:8:16: stage `b` needs `featurs`, which is not a stage of this pipeline",
    );
}

#[test]
fn cycle_is_printed_whole() {
    assert_error(
        "name: t\nstages:\n  features:\n    kind: command\n    needs: [train]\n    with: {run: 'true'}\n  train:\n    kind: command\n    needs: [features]\n    with: {run: 'true'}\n",
        "pipelines/p.yaml:5:13: stage `features` is in a cycle: features -> train -> features",
    );
}

#[test]
fn bad_duration() {
    assert_error(
        "name: t\nstages:\n  a:\n    kind: command\n    cache: {ttl: 1x}\n    with: {run: 'true'}\n",
        "pipelines/p.yaml:5:18: invalid duration `1x`: unknown time unit \"x\"",
    );
}

#[test]
fn missing_referenced_file() {
    assert_error(
        "name: t\nstages:\n  a:\n    kind: command\n    with:\n      run: 'true'\n      files: [stages/missing.sql]\n",
        "pipelines/p.yaml:7:15: stage `a` references `stages/missing.sql`, which does not exist",
    );
}

#[test]
fn param_rejected_by_its_kind() {
    assert_error(
        "name: t\nstages:\n  a:\n    kind: command\n    with:\n      run: 'true'\n      output: [x]\n",
        "pipelines/p.yaml:7:7: stage `a` (command): unknown field `output`, expected one of `run`, `outputs`, `files`, `env`",
    );
    assert_error(
        "name: t\nstages:\n  a:\n    kind: command\n    with: {outputs: [x]}\n",
        "pipelines/p.yaml:5:11: stage `a` (command): missing field `run`",
    );
}

#[test]
fn output_path_escaping_the_project() {
    assert_error(
        "name: t\nstages:\n  a:\n    kind: command\n    with:\n      run: 'true'\n      outputs: [ok.txt, ../../etc/passwd]\n",
        "pipelines/p.yaml:7:25: stage `a` (command): path `../../etc/passwd` escapes the project",
    );
}

#[test]
fn errors_show_the_line_with_a_caret_and_help() {
    let project = Project::new();
    project.write(
        "pipelines/p.yaml",
        "name: t\nstages:\n  a:\n    kind: comand\n",
    );
    let run = project.run(&["run", "pipelines/p.yaml", "--validate-only"]);
    assert!(
        run.stderr
            .contains("4 |     kind: comand\n  |           ^^^^^^"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("= help: did you mean `command`?"),
        "{}",
        run.stderr
    );
}

#[test]
fn several_errors_are_reported_together() {
    let project = Project::new();
    project.write(
        "pipelines/p.yaml",
        "name: t\nstages:\n  a:\n    kind: nope\n  b:\n    kind: command\n    needs: [zzz]\n    with: {run: 'true'}\n",
    );
    let run = project.run(&["run", "pipelines/p.yaml", "--validate-only"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("p.yaml:4:11: unknown stage kind `nope`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("p.yaml:7:13: stage `b` needs `zzz`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("2 errors in this pipeline"),
        "{}",
        run.stderr
    );
}

#[test]
fn unknown_stage_in_a_selection_flag() {
    let project = Project::new();
    project.write(
        "pipelines/p.yaml",
        "name: t\nstages:\n  a:\n    kind: command\n    with: {run: 'true'}\n",
    );
    let run = project.run(&["run", "pipelines/p.yaml", "--start-from", "b"]);
    assert_eq!(run.code, 2);
    assert_eq!(
        run.stderr.trim(),
        "error: --start-from names stage `b`, which is not in pipeline `t`; stages: a"
    );
    let run = project.run(&["run", "pipelines/missing.yaml"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .starts_with("error: failed to read pipeline pipelines/missing.yaml"),
        "{}",
        run.stderr
    );
}

#[test]
fn stage_ids_that_name_the_same_input_variable() {
    assert_error(
        "name: t\nstages:\n  feat-v2:\n    kind: command\n    with: {run: 'true'}\n  feat_v2:\n    kind: command\n    with: {run: 'true'}\n",
        "pipelines/p.yaml:6:3: stage ids `feat-v2` and `feat_v2` both name ASTERFLOW_INPUT_FEAT_V2",
    );
}

#[test]
fn duplicate_stage_ids() {
    assert_error(
        "name: t\nstages:\n  a:\n    kind: command\n    with: {run: 'true'}\n  a:\n    kind: command\n    with: {run: 'false'}\n",
        "pipelines/p.yaml:6:3: invalid YAML: duplicate key `a` (first given on line 3)",
    );
}

#[test]
fn duplicate_sources() {
    assert_error(
        "name: t\nsources:\n  ex: {api: binance-futures, base_url: 'https://a.example'}\n  ex: {api: binance-futures, base_url: 'https://b.example'}\nstages:\n  a:\n    kind: command\n    with: {run: 'true'}\n",
        "pipelines/p.yaml:4:3: invalid YAML: duplicate key `ex` (first given on line 3)",
    );
}

#[test]
fn duplicate_defaults() {
    assert_error(
        "name: t\ndefaults:\n  with:\n    command: {env: {A: '1'}}\n    command: {env: {A: '2'}}\nstages:\n  a:\n    kind: command\n    with: {run: 'true'}\n",
        "pipelines/p.yaml:5:5: invalid YAML: duplicate key `command` (first given on line 4)",
    );
}

#[test]
fn duplicate_keys_in_a_scenario_file() {
    let project = Project::new();
    project.write(
        "data/scenarios/s.yaml",
        "seed: 1\nseed: 2\nmarket:\n  simulate:\n    genesis: 2024-01-01\n    assets:\n      - {base: BTC, price: 42000, beta: 1.0, vol: 0.12}\n",
    );
    project.write(
        "pipelines/p.yaml",
        "name: t\nsources:\n  ex: {api: binance-futures, replay: {scenario: data/scenarios/s.yaml}}\nstages:\n  a:\n    kind: discover\n    with: {source: ex}\n",
    );
    let run = project.run(&["run", "pipelines/p.yaml", "--validate-only"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "data/scenarios/s.yaml:2:1: invalid YAML: duplicate key `seed` (first given on line 1)"
        ),
        "{}",
        run.stderr
    );
    assert!(!project.path().join("runs").exists());
}
