//! The engine's behaviour, through the real binary on fixture pipelines: caching, selection,
//! TTL, invalidation, resume after failure, kill -9, the run-root lock, dry runs, Ctrl-C, gc.

use std::time::Duration;

use crate::common::{Project, pipeline, stage, wait_for};

/// a -> b -> c, plus d beside them reading a.
fn chain_project() -> Project {
    let project = Project::new();
    project.write(
        "pipelines/p.yaml",
        &pipeline(&[
            stage("a", &[], "echo a > out.txt"),
            stage(
                "b",
                &["a"],
                "cat \"$ASTERFLOW_INPUT_A/out.txt\" > out.txt; echo b >> out.txt",
            ),
            stage(
                "c",
                &["b"],
                "cat \"$ASTERFLOW_INPUT_B/out.txt\" > out.txt; echo c >> out.txt",
            ),
            stage("d", &["a"], "echo d > out.txt"),
        ]),
    );
    project
}

const RUN: &[&str] = &["run", "pipelines/p.yaml", "--json"];

fn run_with(project: &Project, extra: &[&str]) -> crate::common::Run {
    let mut args = RUN.to_vec();
    args.extend_from_slice(extra);
    project.run(&args)
}

#[test]
fn first_run_executes_everything_and_a_rerun_is_all_cache_hits() {
    let project = chain_project();
    let first = run_with(&project, &[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.json()["status"], "succeeded");
    let mut executed = project.executed();
    executed.sort();
    assert_eq!(executed, ["a", "b", "c", "d"]);
    project.clear_executed();

    let second = run_with(&project, &[]);
    assert_eq!(second.code, 0);
    assert!(
        second
            .statuses()
            .iter()
            .all(|(_, status)| status == "cached"),
        "{:?}",
        second.statuses()
    );
    assert!(
        project.executed().is_empty(),
        "a fully cached run executes nothing"
    );
    // Outputs flow through: c saw a and b.
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(project.path().join(format!(
            "runs/{}/run.json",
            second.json()["run_id"].as_str().unwrap()
        )))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["stages"].as_array().unwrap().len(), 4);
}

#[test]
fn start_from_forces_the_stage_and_runs_only_stale_descendants() {
    let project = chain_project();
    assert_eq!(run_with(&project, &[]).code, 0);
    project.clear_executed();
    let run = run_with(&project, &["--start-from", "b"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.status_of("a"), "reused");
    assert_eq!(run.status_of("b"), "ran");
    assert_eq!(
        run.status_of("c"),
        "cached",
        "b's output is identical, so c is a cache hit"
    );
    assert_eq!(run.status_of("d"), "skipped");
    assert_eq!(project.executed(), ["b"]);
}

#[test]
fn start_from_needs_outputs_of_stages_outside_the_selection() {
    let project = chain_project();
    let run = run_with(&project, &["--start-from", "b"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("stage `a` is needed by `b` but is outside the selection and has no successful output yet"),
        "{}",
        run.stderr
    );
    assert!(project.executed().is_empty());
}

#[test]
fn stop_at_only_force_and_combinations() {
    let project = chain_project();
    let run = run_with(&project, &["--stop-at", "b"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(project.executed(), ["a", "b"]);
    assert_eq!(run.status_of("c"), "skipped");
    assert_eq!(run.status_of("d"), "skipped");
    project.clear_executed();

    let run = run_with(&project, &["--only", "d"]);
    assert_eq!(run.code, 0);
    assert_eq!(project.executed(), ["d"]);
    assert_eq!(run.status_of("a"), "reused");
    project.clear_executed();

    let run = run_with(
        &project,
        &["--start-from", "a", "--stop-at", "b", "--force"],
    );
    assert_eq!(run.code, 0);
    assert_eq!(project.executed(), ["a", "b"]);
    assert_eq!(run.reason_of("b"), "forced (--force)");
    project.clear_executed();

    let run = run_with(&project, &["--only", "c", "--only", "b"]);
    assert_eq!(run.code, 0);
    let mut executed = project.executed();
    executed.sort();
    assert_eq!(executed, ["c"], "b is cached; c never ran");
    assert_eq!(run.status_of("b"), "cached");

    let run = run_with(&project, &["--start-from", "c", "--stop-at", "a"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("the selection is empty"),
        "{}",
        run.stderr
    );
}

#[test]
fn ttl_expiry_reruns_the_stage() {
    let project = Project::new();
    project.write(
        "pipelines/p.yaml",
        "name: t\nstages:\n  fetch:\n    kind: command\n    cache: {ttl: 1s}\n    with:\n      run: echo fetch >> \"$ASTERFLOW_PROJECT_ROOT/executed.log\"; echo x > out.txt\n  use:\n    kind: command\n    needs: [fetch]\n    with:\n      run: echo use >> \"$ASTERFLOW_PROJECT_ROOT/executed.log\"; cp \"$ASTERFLOW_INPUT_FETCH/out.txt\" .\n",
    );
    assert_eq!(run_with(&project, &[]).code, 0);
    assert_eq!(run_with(&project, &[]).status_of("fetch"), "cached");
    std::thread::sleep(Duration::from_millis(1300));
    project.clear_executed();
    let run = run_with(&project, &[]);
    assert_eq!(run.status_of("fetch"), "ran");
    assert!(
        run.reason_of("fetch").starts_with("ttl expired"),
        "{}",
        run.reason_of("fetch")
    );
    assert_eq!(
        run.status_of("use"),
        "cached",
        "same content fetched again: consumers stay cached"
    );
    assert_eq!(project.executed(), ["fetch"]);
}

#[test]
fn editing_a_stage_invalidates_exactly_its_descendants() {
    let project = chain_project();
    assert_eq!(run_with(&project, &[]).code, 0);
    project.clear_executed();
    let text = std::fs::read_to_string(project.path().join("pipelines/p.yaml")).unwrap();
    project.write(
        "pipelines/p.yaml",
        &text.replace("echo b >> out.txt", "echo B >> out.txt"),
    );
    let plan = project.run(&["run", "pipelines/p.yaml", "--validate-only", "--json"]);
    assert_eq!(plan.status_of("b"), "run");
    assert_eq!(plan.reason_of("b"), "params changed: with.run");
    let run = run_with(&project, &[]);
    assert_eq!(run.code, 0);
    assert_eq!(project.executed(), ["b", "c"]);
    assert_eq!(run.status_of("a"), "cached");
    assert_eq!(run.status_of("d"), "cached");
    assert_eq!(run.reason_of("c"), "input b changed");
}

#[test]
fn editing_a_referenced_file_reruns_its_stage() {
    let project = Project::new();
    project.write("stages/q.sql", "select 1");
    project.write(
        "pipelines/p.yaml",
        "name: t\nstages:\n  q:\n    kind: command\n    with:\n      run: cp \"$ASTERFLOW_PROJECT_ROOT/stages/q.sql\" out.sql\n      files: [stages/q.sql]\n      outputs: [out.sql]\n",
    );
    assert_eq!(run_with(&project, &[]).code, 0);
    assert_eq!(run_with(&project, &[]).status_of("q"), "cached");
    project.write("stages/q.sql", "select 2");
    let run = run_with(&project, &[]);
    assert_eq!(run.status_of("q"), "ran");
    assert_eq!(run.reason_of("q"), "file changed: stages/q.sql");
}

#[test]
fn a_failed_run_resumes_from_the_cache() {
    let project = Project::new();
    project.write(
        "pipelines/p.yaml",
        &pipeline(&[
            stage("a", &[], "echo a > out.txt"),
            stage("b", &["a"], "test -f \"$ASTERFLOW_PROJECT_ROOT/fixed\" || { echo 'no fix yet' >&2; exit 3; }; echo b > out.txt"),
            stage("c", &["b"], "echo c > out.txt"),
        ]),
    );
    let failed = run_with(&project, &[]);
    assert_eq!(failed.code, 1);
    assert_eq!(failed.json()["status"], "failed");
    assert_eq!(failed.status_of("a"), "ran");
    assert_eq!(failed.status_of("b"), "failed");
    assert!(
        failed
            .reason_of("b")
            .contains("command exited with 3: no fix yet"),
        "{}",
        failed.reason_of("b")
    );
    assert_eq!(failed.status_of("c"), "skipped");
    assert!(
        failed
            .stderr
            .contains("error: stage `b` failed: command exited with 3"),
        "{}",
        failed.stderr
    );
    assert!(failed.stderr.contains("logs/b.log"), "{}", failed.stderr);

    project.write("fixed", "");
    project.clear_executed();
    let resumed = run_with(&project, &[]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert_eq!(resumed.status_of("a"), "cached");
    assert_eq!(project.executed(), ["b", "c"]);
}

#[test]
fn a_missing_declared_output_fails_the_stage_and_caches_nothing() {
    let project = Project::new();
    project.write(
        "pipelines/p.yaml",
        "name: t\nstages:\n  a:\n    kind: command\n    with:\n      run: echo partial > other.txt\n      outputs: [result.parquet]\n",
    );
    let run = run_with(&project, &[]);
    assert_eq!(run.code, 1);
    assert_eq!(
        run.reason_of("a"),
        "declared output `result.parquet` was not written by the command"
    );
    let plan = project.run(&["run", "pipelines/p.yaml", "--validate-only", "--json"]);
    assert_eq!(
        plan.status_of("a"),
        "run",
        "a failed stage leaves no cache entry"
    );
}

fn output_digests(run: &crate::common::Run, project: &Project) -> Vec<(String, String)> {
    let id = run.json()["run_id"].as_str().unwrap().to_owned();
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(project.path().join(format!("runs/{id}/run.json"))).unwrap(),
    )
    .unwrap();
    record["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|stage| {
            (
                stage["id"].as_str().unwrap().to_owned(),
                stage["output_digest"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

#[test]
fn kill_9_mid_run_then_a_rerun_gives_identical_outputs() {
    let slow_pipeline = pipeline(&[
        stage("a", &[], "seq 1 1000 > out.txt"),
        stage(
            "b",
            &["a"],
            "touch \"$ASTERFLOW_PROJECT_ROOT/b-started\"; sort -r \"$ASTERFLOW_INPUT_A/out.txt\" > out.txt; sleep 2; echo done >> out.txt",
        ),
        stage(
            "c",
            &["b"],
            "wc -l < \"$ASTERFLOW_INPUT_B/out.txt\" > out.txt",
        ),
    ]);
    let clean = Project::new();
    clean.write("pipelines/p.yaml", &slow_pipeline);
    let reference = run_with(&clean, &[]);
    assert_eq!(reference.code, 0);

    let project = Project::new();
    project.write("pipelines/p.yaml", &slow_pipeline);
    let mut child = project.spawn(RUN);
    assert!(
        wait_for(Duration::from_secs(20), || project
            .path()
            .join("b-started")
            .exists()),
        "b never started"
    );
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    let _ = child.wait();

    let rerun = run_with(&project, &["--wait"]);
    assert_eq!(rerun.code, 0, "{}", rerun.stderr);
    assert_eq!(rerun.status_of("a"), "cached");
    assert_eq!(rerun.status_of("b"), "ran");
    assert_eq!(
        output_digests(&rerun, &project),
        output_digests(&reference, &clean)
    );
}

#[test]
fn a_second_concurrent_run_exits_75_or_waits() {
    let project = Project::new();
    project.write(
        "pipelines/p.yaml",
        &pipeline(&[stage(
            "slow",
            &[],
            "touch \"$ASTERFLOW_PROJECT_ROOT/started\"; sleep 1.5; echo x > out.txt",
        )]),
    );
    let mut first = project.spawn(RUN);
    assert!(wait_for(Duration::from_secs(20), || project
        .path()
        .join("started")
        .exists()));
    let second = run_with(&project, &[]);
    assert_eq!(second.code, 75, "{}", second.stderr);
    assert!(
        second
            .stderr
            .contains(&format!("in use by pid {}", first.id())),
        "{}",
        second.stderr
    );
    assert!(second.stderr.contains("--wait"), "{}", second.stderr);

    let waited = run_with(&project, &["--wait"]);
    assert_eq!(waited.code, 0, "{}", waited.stderr);
    assert_eq!(
        waited.status_of("slow"),
        "cached",
        "the waiting run sees the first run's output"
    );
    assert!(first.wait().unwrap().success());
}

#[test]
fn validate_only_writes_nothing_and_reports_staleness() {
    let project = chain_project();
    let plan = project.run(&[
        "run",
        "pipelines/p.yaml",
        "--validate-only",
        "--json",
        "--exit-code",
    ]);
    assert_eq!(plan.code, 10, "{}", plan.stderr);
    assert_eq!(plan.json()["status"], "valid");
    assert!(plan.json()["run_id"].is_null());
    assert_eq!(plan.status_of("a"), "run");
    assert_eq!(plan.reason_of("a"), "never ran");
    assert_eq!(plan.reason_of("b"), "input `a` will run first");
    assert!(
        !project.path().join("runs").exists(),
        "a dry run creates nothing"
    );
    assert!(project.executed().is_empty());

    assert_eq!(run_with(&project, &[]).code, 0);
    let before = project.snapshot_runs();
    let text = project.run(&["run", "pipelines/p.yaml", "--dry-run", "--exit-code"]);
    assert_eq!(text.code, 0, "everything is cached: nothing would run");
    assert!(
        text.stdout
            .contains("plan: 0 to run, 4 cached, 0 reused, 0 skipped"),
        "{}",
        text.stdout
    );
    assert_eq!(
        project.snapshot_runs(),
        before,
        "validate-only changed files under runs/"
    );
}

#[test]
fn json_output_has_the_documented_shape() {
    let project = chain_project();
    let run = run_with(&project, &["--stop-at", "a"]);
    let json = run.json();
    assert!(json["run_id"].as_str().unwrap().len() > 16);
    assert_eq!(json["status"], "succeeded");
    let stage = &json["stages"][0];
    for field in ["id", "status", "reason", "duration_ms", "fingerprint"] {
        assert!(stage.get(field).is_some(), "missing {field}: {stage}");
    }
    assert_eq!(stage["fingerprint"].as_str().unwrap().len(), 64);
}

#[test]
fn ctrl_c_stops_running_stages_and_exits_130() {
    let project = Project::new();
    project.write(
        "pipelines/p.yaml",
        &pipeline(&[stage(
            "long",
            &[],
            "touch \"$ASTERFLOW_PROJECT_ROOT/started\"; sleep 30; echo x > out.txt",
        )]),
    );
    let mut child = project.spawn(RUN);
    assert!(wait_for(Duration::from_secs(20), || project
        .path()
        .join("started")
        .exists()));
    let started = std::time::Instant::now();
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the sleeping command was not stopped"
    );
    let records = project.run(&["runs", "--json"]).json();
    assert_eq!(records[0]["status"], "interrupted");
    assert_eq!(records[0]["stages"][0]["status"], "failed");
    assert_eq!(records[0]["stages"][0]["error"], "interrupted");
}

#[test]
fn gc_keeps_what_recent_runs_need() {
    let project = Project::new();
    project.write(
        "pipelines/p.yaml",
        &pipeline(&[stage("a", &[], "echo v1 > out.txt")]),
    );
    assert_eq!(run_with(&project, &[]).code, 0);
    project.write(
        "pipelines/p.yaml",
        &pipeline(&[stage("a", &[], "echo v2 > out.txt")]),
    );
    assert_eq!(run_with(&project, &[]).code, 0);
    let entries = || {
        std::fs::read_dir(project.path().join("runs/cache/t/a"))
            .unwrap()
            .flatten()
            .filter(|entry| entry.path().is_dir())
            .count()
    };
    assert_eq!(entries(), 2);
    let gc = project.run(&["gc", "--keep", "1"]);
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    assert!(
        gc.stdout.starts_with("removed 1 cache entries"),
        "{}",
        gc.stdout
    );
    assert_eq!(entries(), 1);
    assert_eq!(
        run_with(&project, &[]).status_of("a"),
        "cached",
        "the latest output survives gc"
    );
}

#[test]
fn status_and_runs_describe_the_run_root() {
    let project = chain_project();
    assert_eq!(run_with(&project, &["--stop-at", "b"]).code, 0);
    let status = project.run(&["status", "pipelines/p.yaml"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    let line = |id: &str| {
        status
            .stdout
            .lines()
            .find(|line| line.starts_with(&format!("{id} ")))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line("a").contains("cached"), "{}", status.stdout);
    assert!(
        line("c").contains("stale") && line("c").contains("never"),
        "{}",
        status.stdout
    );
    let runs = project.run(&["runs"]);
    assert!(runs.stdout.contains("succeeded"), "{}", runs.stdout);
    assert!(runs.stdout.contains("2 ran, 0 cached"), "{}", runs.stdout);
}

#[test]
fn reuse_for_keeps_the_last_output_despite_changed_inputs() {
    let project = Project::new();
    let write = |features: &str| {
        project.write(
            "pipelines/p.yaml",
            &format!(
                "name: t\nstages:\n{}  train:\n    kind: command\n    needs: [features]\n    cache: {{reuse_for: 7d}}\n    with:\n      run: echo train >> \"$ASTERFLOW_PROJECT_ROOT/executed.log\"; cp \"$ASTERFLOW_INPUT_FEATURES/out.txt\" model.txt\n",
                stage("features", &[], &format!("echo {features} > out.txt"))
            ),
        )
    };
    write("v1");
    assert_eq!(run_with(&project, &[]).code, 0);
    write("v2");
    project.clear_executed();
    let plan = project.run(&["run", "pipelines/p.yaml", "--validate-only", "--json"]);
    assert_eq!(plan.status_of("train"), "run", "its input has to run first");
    let run = run_with(&project, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.status_of("features"), "ran");
    assert_eq!(run.status_of("train"), "reused");
    assert!(
        run.reason_of("train")
            .contains("reuse_for 7d: keeping the output from"),
        "{}",
        run.reason_of("train")
    );
    assert!(
        run.reason_of("train")
            .contains("although input features changed"),
        "{}",
        run.reason_of("train")
    );
    assert_eq!(project.executed(), ["features"]);
    let plan = project.run(&["run", "pipelines/p.yaml", "--validate-only", "--json"]);
    assert_eq!(plan.status_of("train"), "reuse");
    // --force overrides the reuse window.
    project.clear_executed();
    assert_eq!(
        run_with(&project, &["--only", "train", "--force"]).status_of("train"),
        "ran"
    );
}

/// Two stages that each wait for the other to have started: they finish only when run together.
#[test]
fn independent_stages_run_concurrently_up_to_jobs() {
    let project = Project::new();
    let waits_for = |me: &str, other: &str| {
        format!(
            "touch \"$ASTERFLOW_PROJECT_ROOT/{me}.started\"; i=0; while [ ! -f \"$ASTERFLOW_PROJECT_ROOT/{other}.started\" ] && [ $i -lt 40 ]; do sleep 0.05; i=$((i+1)); done; test -f \"$ASTERFLOW_PROJECT_ROOT/{other}.started\" && echo ok > out.txt"
        )
    };
    project.write(
        "pipelines/p.yaml",
        &pipeline(&[
            stage("x", &[], &waits_for("x", "y")),
            stage("y", &[], &waits_for("y", "x")),
        ]),
    );
    let serial = run_with(&project, &["--jobs", "1"]);
    assert_eq!(serial.code, 1, "with one job the first stage waits in vain");
    for marker in ["x.started", "y.started"] {
        let _ = std::fs::remove_file(project.path().join(marker));
    }
    let parallel = run_with(&project, &["--jobs", "2"]);
    assert_eq!(parallel.code, 0, "{}", parallel.stderr);
    assert_eq!(parallel.status_of("x"), "ran");
    assert_eq!(parallel.status_of("y"), "ran");
}

#[test]
fn pipelines_sharing_a_stage_name_keep_their_own_latest_outputs() {
    let project = Project::new();
    let write = |name: &str, word: &str| {
        project.write(
            &format!("pipelines/{name}.yaml"),
            &format!(
                "name: {name}\nstages:\n{}{}",
                stage("a", &[], &format!("echo {word} > out.txt")),
                stage("b", &["a"], "cp \"$ASTERFLOW_INPUT_A/out.txt\" \"$ASTERFLOW_PROJECT_ROOT/seen.txt\"; cp \"$ASTERFLOW_INPUT_A/out.txt\" out.txt")
            ),
        )
    };
    write("one", "one");
    write("two", "two");
    assert_eq!(project.run(&["run", "pipelines/two.yaml"]).code, 0);
    assert_eq!(project.run(&["run", "pipelines/one.yaml"]).code, 0);
    let run = project.run(&["run", "pipelines/two.yaml", "--only", "b", "--force"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(project.path().join("seen.txt")).unwrap(),
        "two\n"
    );
}

#[test]
fn a_failing_command_inside_a_pipe_fails_the_stage() {
    let project = Project::new();
    project.write(
        "pipelines/p.yaml",
        "name: t\nstages:\n  a:\n    kind: command\n    with:\n      run: (echo partial; exit 4) | cat > out.txt\n      outputs: [out.txt]\n",
    );
    let run = run_with(&project, &[]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(run.reason_of("a"), "command exited with 4");
}
