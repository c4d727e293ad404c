//! `sql` stages on Apache DataFusion Ballista (issue 22): the demo's features and labels through
//! Ballista's in-process standalone mode, and through a real cluster on 127.0.0.1 (a scheduler
//! and two executors, each an `asterflow cluster` process) reading the lake from an S3 server,
//! equal the embedded engine's, row for row; a cluster that cannot serve is a clear error.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use arrow::array::RecordBatch;

use crate::common::{Project, Run, free_port, newest_log, shipped_project, wait_for};
use crate::s3::Moto;

/// Every row of a Parquet file, as one batch.
fn rows(path: &Path) -> RecordBatch {
    let file =
        std::fs::File::open(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let builder =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let schema = builder.schema().clone();
    let reader = builder.build().unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    arrow::compute::concat_batches(&schema, &batches).unwrap()
}

/// Stage `id`'s output rows from a `--json` run.
fn output_rows(project: &Project, run: &Run, id: &str, file: &str) -> RecordBatch {
    rows(&run.output_of(project, id).join(file))
}

/// `asterflow run pipelines/demo.yaml --json ARGS` with `environment`, which must pass.
fn demo(project: &Project, environment: &[(&str, &str)], args: &[&str]) -> Run {
    let mut command = project.command(&[&["run", "pipelines/demo.yaml", "--json"], args].concat());
    command.envs(environment.iter().copied());
    let run = Run::from(command.output().unwrap());
    assert_eq!(run.code, 0, "{}", run.stderr);
    run
}

/// Runs `stage` again (cached or not) with `environment`; its output's rows.
fn rerun(project: &Project, environment: &[(&str, &str)], stage: &str) -> RecordBatch {
    let run = demo(
        project,
        environment,
        &["--start-from", stage, "--stop-at", stage],
    );
    assert_eq!(run.status_of(stage), "ran");
    output_rows(project, &run, stage, &format!("{stage}.parquet"))
}

/// How many runs have a features log.
fn features_logs(project: &Project) -> usize {
    std::fs::read_dir(project.path().join("runs"))
        .unwrap()
        .flatten()
        .filter(|entry| entry.path().join("logs/features.log").is_file())
        .count()
}

#[test]
fn the_demo_features_and_labels_on_standalone_ballista_equal_the_embedded_engines() {
    let project = shipped_project();
    let run = demo(&project, &[], &["--stop-at", "features"]);
    let features = output_rows(&project, &run, "features", "features.parquet");
    let run = demo(&project, &[], &["--stop-at", "labels"]);
    let labels = output_rows(&project, &run, "labels", "labels.parquet");
    assert!(features.num_rows() > 1000 && labels.num_rows() > 1000);

    // The engine is not part of the fingerprint: the same stages, forced to run again there.
    let standalone = [("ASTERFLOW_BALLISTA", "standalone")];
    for (stage, embedded) in [("features", &features), ("labels", &labels)] {
        let on_cluster = rerun(&project, &standalone, stage);
        assert!(
            newest_log(&project, stage).contains("engine: Ballista (standalone"),
            "{stage} ran on Ballista"
        );
        assert_eq!(on_cluster.schema(), embedded.schema(), "{stage}");
        assert_eq!(&on_cluster, embedded, "{stage}: row for row");
    }
}

/// An `asterflow cluster` process, killed when dropped.
struct Node {
    child: Child,
    name: &'static str,
}

impl Node {
    fn start(project: &Project, name: &'static str, args: &[&str], moto: &Moto) -> Self {
        let mut command = project.command(&[&["cluster"], args].concat());
        command.envs(moto.environment());
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("asterflow cluster starts");
        Self { child, name }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A scheduler and two executors on 127.0.0.1, the executors reading S3 from `moto`.
fn cluster(project: &Project, moto: &Moto) -> (String, Node, Vec<Node>) {
    let port = free_port();
    let url = format!("df://127.0.0.1:{port}");
    let bind = format!("127.0.0.1:{port}");
    let scheduler = Node::start(
        project,
        "scheduler",
        &["scheduler", "--bind", &bind, "--executor-timeout", "5"],
        moto,
    );
    assert!(
        wait_for(Duration::from_secs(30), || {
            std::net::TcpStream::connect(&bind).is_ok()
        }),
        "the scheduler listens"
    );
    let executors = (0..2)
        .map(|_| {
            let (flight, grpc) = (free_port(), free_port());
            Node::start(
                project,
                "executor",
                &[
                    "executor",
                    "--scheduler",
                    &url,
                    "--bind",
                    &format!("127.0.0.1:{flight}"),
                    "--grpc-port",
                    &grpc.to_string(),
                    "--concurrent-tasks",
                    "2",
                    "--heartbeat",
                    "1",
                ],
                moto,
            )
        })
        .collect();
    (url, scheduler, executors)
}

/// `asterflow ARGS` with the lake on `moto` and `environment`.
fn on_s3(project: &Project, moto: &Moto, environment: &[(&str, &str)], args: &[&str]) -> Run {
    let mut command = project.command(args);
    command
        .envs(moto.environment())
        .envs(environment.iter().copied());
    Run::from(command.output().unwrap())
}

#[test]
fn a_node_bound_to_every_address_is_refused() {
    let project = Project::new();
    let run = project.run(&["cluster", "scheduler", "--bind", "0.0.0.0:50050"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("give this machine's own address"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_loopback_cluster_reading_the_lake_from_s3_runs_the_features_and_survives_a_lost_executor() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("asterflow-lake");
    let data_dir = "s3://asterflow-lake/lake";
    let project = shipped_project();
    let features_only = [
        "run",
        "pipelines/demo.yaml",
        "--data-dir",
        data_dir,
        "--json",
        "--stop-at",
        "features",
    ];
    let run = on_s3(&project, &moto, &[], &features_only);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let embedded = output_rows(&project, &run, "features", "features.parquet");

    // Nothing listens: the dry run says so, and names the way to start one.
    let nowhere = format!("df://127.0.0.1:{}", free_port());
    let plan = on_s3(
        &project,
        &moto,
        &[("ASTERFLOW_BALLISTA", &nowhere)],
        &[
            "run",
            "pipelines/demo.yaml",
            "--data-dir",
            data_dir,
            "--validate-only",
        ],
    );
    assert_eq!(plan.code, 2, "{}", plan.stderr);
    assert!(
        plan.stderr
            .contains(&format!("cannot reach the Ballista scheduler at {nowhere}"))
            && plan.stderr.contains("asterflow cluster scheduler"),
        "{}",
        plan.stderr
    );

    let (url, _scheduler, mut executors) = cluster(&project, &moto);
    let on_cluster = [("ASTERFLOW_BALLISTA", url.as_str())];
    let plan = on_s3(
        &project,
        &moto,
        &on_cluster,
        &[
            "run",
            "pipelines/demo.yaml",
            "--data-dir",
            data_dir,
            "--validate-only",
        ],
    );
    assert_eq!(plan.code, 0, "the cluster checks out: {}", plan.stderr);

    // No local copy of the lake: the executors can only read the bucket.
    let mirror = project.path().join("runs/data-mirror");
    std::fs::remove_dir_all(&mirror).unwrap();
    let forced = [&features_only[..], &["--start-from", "features"]].concat();
    let run = on_s3(&project, &moto, &on_cluster, &forced);
    let mirrored: Vec<_> = crate::s3::files_under(&mirror)
        .into_iter()
        .filter(|file| file.extension().is_some_and(|ext| ext == "parquet"))
        .collect();
    assert!(
        mirrored.is_empty(),
        "the run mirrored lake parts: {mirrored:?}"
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.status_of("features"), "ran");
    let log = newest_log(&project, "features");
    assert!(log.contains(&format!("engine: Ballista at {url}")), "{log}");
    assert!(
        log.contains(&format!("lake parts read from {data_dir}")),
        "executors read the bucket, not this machine's mirror: {log}"
    );
    assert_eq!(
        output_rows(&project, &run, "features", "features.parquet"),
        embedded,
        "the cluster's features equal the embedded engine's, row for row"
    );

    let logs_before = features_logs(&project);
    // One executor dies while the stage runs (its query and the guard's three reruns): the
    // stage completes on the other, or fails naming the cluster; it never commits other rows.
    let mut command = project.command(&forced);
    command
        .envs(moto.environment())
        .envs(on_cluster.iter().copied());
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(60), || features_logs(&project)
            > logs_before
            && newest_log(&project, "features").contains("engine: Ballista")),
        "the second run started on the cluster"
    );
    std::thread::sleep(Duration::from_millis(300));
    executors[1].kill();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    let output = done_rx
        .recv_timeout(Duration::from_secs(240))
        .expect("the run ends after losing an executor")
        .unwrap();
    let run = Run::from(output);
    if run.code == 0 {
        assert_eq!(
            output_rows(&project, &run, "features", "features.parquet"),
            embedded,
            "finished on the remaining executor, with the same rows"
        );
    } else {
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(
            run.stderr.contains("stage `features` failed") && run.stderr.contains("Ballista"),
            "a clear error: {}",
            run.stderr
        );
    }
    eprintln!("after losing {}: exit {}", executors[1].name, run.code);
}
