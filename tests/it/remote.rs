//! The remote cache (issue 21) against a real S3 server on 127.0.0.1 (moto, from PyPI): two
//! checkouts sharing the demo, a corrupted remote file, the server dying in the middle of an
//! upload, an unreachable server, refused credentials, and two runs racing to store the same
//! entries.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::common::{Project, Run, pipeline, shipped_project, stage};
use crate::s3::{Moto, SECRET, files_under};

const BUCKET: &str = "asterflow-remote";

/// `project`'s `asterflow` with the remote cache at `s3://BUCKET/team` on `endpoint`.
fn remote_run(project: &Project, moto: &Moto, endpoint: &str, args: &[&str]) -> Run {
    let mut command = s3_command(project, moto, endpoint, args);
    command.env("ASTERFLOW_REMOTE_CACHE", format!("s3://{BUCKET}/team"));
    Run::from(command.output().unwrap())
}

/// `project`'s `asterflow` with the S3 credentials of `moto` on `endpoint`.
fn s3_command(
    project: &Project,
    moto: &Moto,
    endpoint: &str,
    args: &[&str],
) -> std::process::Command {
    let mut command = project.command(args);
    for (name, value) in moto.environment() {
        command.env(name, value);
    }
    command.env("AWS_ENDPOINT_URL", endpoint);
    command
}

/// Every object under `prefix` in the bucket, with its size.
fn objects(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<(String, u64)> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut out: Vec<(String, u64)> = store
            .list(Some(&object_store::path::Path::from(prefix)))
            .map_ok(|meta| (meta.location.to_string(), meta.size))
            .try_collect()
            .await
            .unwrap();
        out.sort();
        out
    })
}

fn assert_no_secret(run: &Run, root: &Path) {
    assert!(!run.stdout.contains(SECRET) && !run.stderr.contains(SECRET));
    for file in files_under(root) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{} holds the secret",
            file.display()
        );
    }
}

/// Every file of a committed output directory, by relative path, with its bytes.
fn output_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = files_under(dir)
        .into_iter()
        .map(|file| {
            let bytes = std::fs::read(&file).unwrap();
            (file.strip_prefix(dir).unwrap().to_owned(), bytes)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn a_second_checkout_downloads_the_demo_byte_for_byte_and_reruns_only_what_changed() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket(BUCKET);
    let first = shipped_project();
    let run = remote_run(
        &first,
        &moto,
        &moto.endpoint,
        &["run", "pipelines/demo.yaml", "--json"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.statuses().iter().all(|(_, status)| status == "ran"),
        "{:?}",
        run.statuses()
    );
    assert!(run.stderr.contains("stored 10 entries"), "{}", run.stderr);

    let second = shipped_project();
    let plan = remote_run(
        &second,
        &moto,
        &moto.endpoint,
        &["run", "pipelines/demo.yaml", "--validate-only", "--json"],
    );
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert!(
        plan.statuses().iter().all(|(_, status)| status == "remote"),
        "the plan says what it will download: {:?}",
        plan.statuses()
    );
    assert_eq!(plan.json()["remote"]["reachable"], true);
    assert!(
        !second.path().join("runs").exists() && !second.path().join("data/lake").exists(),
        "--validate-only downloads nothing"
    );
    let downloaded = remote_run(
        &second,
        &moto,
        &moto.endpoint,
        &["run", "pipelines/demo.yaml", "--json"],
    );
    assert_eq!(downloaded.code, 0, "{}", downloaded.stderr);
    for (id, status) in downloaded.statuses() {
        assert_eq!(status, "downloaded", "stage {id}");
        assert_eq!(
            output_files(&run.output_of(&first, &id)),
            output_files(&downloaded.output_of(&second, &id)),
            "stage {id}: the downloaded output is the one the first checkout made"
        );
    }
    // The lake parts the collection listed came with it, and read back the same.
    let lake = |project: &Project| {
        let mut parts = output_files(&project.path().join("data/lake"));
        parts.retain(|(path, _)| path.extension().is_some_and(|ext| ext == "parquet"));
        assert!(!parts.is_empty());
        parts
    };
    assert_eq!(lake(&first), lake(&second));

    // One param changes: that stage and its consumers run, the rest stays.
    let changed = remote_run(
        &second,
        &moto,
        &moto.endpoint,
        &[
            "run",
            "pipelines/demo.yaml",
            "--json",
            "--set",
            "backtest.with.slippage=0.0003",
        ],
    );
    assert_eq!(changed.code, 0, "{}", changed.stderr);
    for (id, status) in changed.statuses() {
        let expected = if ["backtest", "report"].contains(&id.as_str()) {
            "ran"
        } else {
            "cached"
        };
        assert_eq!(status, expected, "stage {id}");
    }
    assert_no_secret(&downloaded, second.path());
    assert_no_secret(&run, first.path());
}

/// Three stages, one of them a file large enough for a multipart upload.
fn small_pipeline(project: &Project) {
    project.write(
        "pipelines/p.yaml",
        &pipeline(&[
            stage("a", &[], "echo alpha > out.txt"),
            stage(
                "b",
                &["a"],
                "head -c 12000000 /dev/zero | tr '\\0' 'b' > out.txt",
            ),
            stage(
                "c",
                &["b"],
                "wc -c < \"$ASTERFLOW_INPUT_B\"/out.txt > out.txt",
            ),
        ]),
    );
}

fn statuses(run: &Run) -> Vec<String> {
    run.statuses()
        .into_iter()
        .map(|(_, status)| status)
        .collect()
}

#[test]
fn a_corrupted_remote_file_is_detected_ignored_and_repaired() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket(BUCKET);
    let store = moto.store(BUCKET);
    let project = Project::new();
    small_pipeline(&project);
    let args = ["run", "pipelines/p.yaml", "--json"];
    let first = remote_run(&project, &moto, &moto.endpoint, &args);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(objects(&store, "team/entries").len(), 3);
    // Stage a's only file: its blob gets other bytes of the same length.
    let manifest: serde_json::Value = {
        let entries = objects(&store, "team/entries");
        let entry = &entries
            .iter()
            .find(|(path, _)| path.contains("/a/"))
            .expect("stage a's entry")
            .0;
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let bytes = runtime.block_on(async {
            store
                .get(&object_store::path::Path::from(entry.as_str()))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        });
        serde_json::from_slice(&bytes).unwrap()
    };
    let blake3 = manifest["files"][0]["blake3"].as_str().unwrap().to_owned();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        store
            .put(
                &object_store::path::Path::from(format!("team/blobs/{}/{blake3}", &blake3[..2])),
                PutPayload::from("omega\n"),
            )
            .await
            .unwrap();
    });

    let other = tempfile::tempdir().unwrap();
    let with_root = |name: &str| {
        let (run_root, data_dir) = (
            other
                .path()
                .join(format!("{name}-runs"))
                .display()
                .to_string(),
            other
                .path()
                .join(format!("{name}-data"))
                .display()
                .to_string(),
        );
        let run = remote_run(
            &project,
            &moto,
            &moto.endpoint,
            &[
                &args[..],
                &["--run-root", &run_root, "--data-dir", &data_dir],
            ]
            .concat(),
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        run
    };
    let second = with_root("second");
    assert_eq!(statuses(&second), ["ran", "downloaded", "downloaded"]);
    assert!(
        second.stderr.contains("stage `a`") && second.stderr.contains("failed verification"),
        "{}",
        second.stderr
    );
    assert_eq!(
        std::fs::read_to_string(second.output_of(&project, "a").join("out.txt")).unwrap(),
        "alpha\n",
        "the bad bytes were not used"
    );
    // The run stored the entry again: a third checkout downloads all of it.
    let third = with_root("third");
    assert_eq!(statuses(&third), ["downloaded", "downloaded", "downloaded"]);
}

/// A TCP proxy to `target` that, once armed, cuts the first connection that starts uploading a
/// blob halfway through the request and then stops listening: the server, as the client sees
/// it, died in the middle of an upload.
struct DyingProxy {
    endpoint: String,
    dead: Arc<AtomicBool>,
}

impl DyingProxy {
    fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let dead = Arc::new(AtomicBool::new(false));
        let target = target.trim_start_matches("http://").to_owned();
        let flag = Arc::clone(&dead);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { break };
                let server = TcpStream::connect(&target).unwrap();
                let (client_read, server_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let upstream_flag = Arc::clone(&flag);
                std::thread::spawn(move || {
                    pump_until_upload(client_read, server_write, &upstream_flag)
                });
                std::thread::spawn(move || {
                    let (mut server, mut client) = (server, client);
                    let _ = std::io::copy(&mut server, &mut client);
                    let _ = client.shutdown(Shutdown::Both);
                });
            }
            // Dropping the listener refuses every later connection.
        });
        Self { endpoint, dead }
    }
}

fn pump_until_upload(mut from: TcpStream, mut to: TcpStream, dead: &AtomicBool) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let chunk = &buffer[..read];
        let uploading =
            chunk.starts_with(b"PUT ") && chunk.windows(7).any(|window| window == b"/blobs/");
        if uploading && !dead.swap(true, Ordering::SeqCst) {
            let _ = to.write_all(&chunk[..read / 2]);
            break;
        }
        if dead.load(Ordering::SeqCst) || to.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[test]
fn a_server_dying_mid_upload_leaves_no_trusted_entry_and_the_next_run_repairs_it() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket(BUCKET);
    let store = moto.store(BUCKET);
    let project = Project::new();
    small_pipeline(&project);
    let proxy = DyingProxy::start(&moto.endpoint);
    let args = ["run", "pipelines/p.yaml", "--json"];
    let cut = remote_run(&project, &moto, &proxy.endpoint, &args);
    assert_eq!(cut.code, 0, "the run itself succeeded: {}", cut.stderr);
    assert!(proxy.dead.load(Ordering::SeqCst), "the upload was cut");
    assert!(cut.stderr.contains("unreachable"), "{}", cut.stderr);
    assert_eq!(statuses(&cut), ["ran", "ran", "ran"]);
    assert!(
        objects(&store, "team/entries").is_empty(),
        "no entry is trusted: {:?}",
        objects(&store, "team")
    );

    // The next run (the server back) finds everything cached and stores what is missing.
    let again = remote_run(&project, &moto, &moto.endpoint, &args);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(statuses(&again), ["cached", "cached", "cached"]);
    assert!(
        again.stderr.contains("stored 3 entries"),
        "{}",
        again.stderr
    );
    let other = tempfile::tempdir().unwrap();
    let fresh = remote_run(
        &project,
        &moto,
        &moto.endpoint,
        &[
            &args[..],
            &[
                "--run-root",
                &other.path().join("runs").display().to_string(),
            ],
        ]
        .concat(),
    );
    assert_eq!(fresh.code, 0, "{}", fresh.stderr);
    assert_eq!(statuses(&fresh), ["downloaded", "downloaded", "downloaded"]);
}

#[test]
fn an_unreachable_remote_is_a_warning_and_the_run_goes_on() {
    let Some(moto) = Moto::start() else { return };
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let project = Project::new();
    small_pipeline(&project);
    let started = std::time::Instant::now();
    let run = remote_run(
        &project,
        &moto,
        &endpoint,
        &["run", "pipelines/p.yaml", "--json"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(statuses(&run), ["ran", "ran", "ran"]);
    assert_eq!(
        run.stderr.matches("is unreachable").count(),
        1,
        "one warning: {}",
        run.stderr
    );
    assert_eq!(run.json()["remote"]["reachable"], false);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let plan = remote_run(
        &project,
        &moto,
        &endpoint,
        &["run", "pipelines/p.yaml", "--validate-only"],
    );
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert!(
        plan.stdout
            .contains("unreachable, a run would go on without it"),
        "{}",
        plan.stdout
    );
    // --no-remote does not even try.
    let local = remote_run(
        &project,
        &moto,
        &endpoint,
        &["run", "pipelines/p.yaml", "--no-remote"],
    );
    assert_eq!(local.code, 0, "{}", local.stderr);
    assert!(!local.stderr.contains("remote"), "{}", local.stderr);
}

#[test]
fn refused_credentials_are_an_error_naming_the_variable_and_never_the_secret() {
    // This server checks every request's credentials, and knows none of the test's.
    let Some(moto) = Moto::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]) else {
        return;
    };
    let project = Project::new();
    small_pipeline(&project);
    for args in [
        &["run", "pipelines/p.yaml", "--validate-only"][..],
        &["run", "pipelines/p.yaml"][..],
    ] {
        let run = remote_run(&project, &moto, &moto.endpoint, args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr
                .contains("refused the credentials (InvalidAccessKeyId)")
                && run.stderr.contains("AWS_ACCESS_KEY_ID"),
            "{}",
            run.stderr
        );
        assert_no_secret(&run, project.path());
    }
    assert!(
        project.executed().is_empty(),
        "nothing ran on refused credentials"
    );
}

#[test]
fn two_runs_storing_the_same_entries_at_once_leave_one_intact_entry_each() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket(BUCKET);
    let store = moto.store(BUCKET);
    let project = Project::new();
    small_pipeline(&project);
    let roots = tempfile::tempdir().unwrap();
    let spawn = |name: &str| {
        let mut command = project.command(&[
            "run",
            "pipelines/p.yaml",
            "--json",
            "--run-root",
            &roots.path().join(name).display().to_string(),
        ]);
        for (key, value) in moto.environment() {
            command.env(key, value);
        }
        command
            .env("ASTERFLOW_REMOTE_CACHE", format!("s3://{BUCKET}/team"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (one, two) = (spawn("one"), spawn("two"));
    for child in [one, two] {
        let run = Run::from(child.wait_with_output().unwrap());
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    let entries = objects(&store, "team/entries");
    assert_eq!(entries.len(), 3, "{entries:?}");
    let fresh = remote_run(
        &project,
        &moto,
        &moto.endpoint,
        &[
            "run",
            "pipelines/p.yaml",
            "--json",
            "--run-root",
            &roots.path().join("three").display().to_string(),
        ],
    );
    assert_eq!(fresh.code, 0, "{}", fresh.stderr);
    assert_eq!(statuses(&fresh), ["downloaded", "downloaded", "downloaded"]);
    assert_eq!(
        std::fs::read(fresh.output_of(&project, "b").join("out.txt"))
            .unwrap()
            .len(),
        12_000_000
    );
}

/// The closing figures of a run: validation, model and backtest lines.
fn figures(run: &Run) -> Vec<String> {
    run.stdout
        .lines()
        .filter(|line| {
            ["validation:", "model:", "backtest:"]
                .iter()
                .any(|start| line.starts_with(start))
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_demo_on_an_s3_data_directory_gives_the_figures_of_a_local_one() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket(BUCKET);
    let store = moto.store(BUCKET);
    let local = shipped_project();
    let on_disk = local.run(&["run", "pipelines/demo.yaml"]);
    assert_eq!(on_disk.code, 0, "{}", on_disk.stderr);
    assert_eq!(figures(&on_disk).len(), 3, "{}", on_disk.stdout);

    let data_dir = format!("s3://{BUCKET}/research");
    let stored = shipped_project();
    let run = Run::from(
        s3_command(
            &stored,
            &moto,
            &moto.endpoint,
            &["run", "pipelines/demo.yaml", "--data-dir", &data_dir],
        )
        .output()
        .unwrap(),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        figures(&run),
        figures(&on_disk),
        "the same figures on an S3 data directory"
    );
    assert!(
        !stored.path().join("data/lake").exists(),
        "no lake on the local disk"
    );
    // Every part the collection listed is in the bucket, create-only, once.
    let parts = objects(&store, "research/lake");
    let collected = output_files(&local.path().join("data/lake"))
        .into_iter()
        .filter(|(path, _)| path.extension().is_some_and(|ext| ext == "parquet"))
        .count();
    assert_eq!(parts.len(), collected, "{parts:?}");
    assert_no_secret(&run, stored.path());

    // A third checkout on the same bucket reads what is stored: its collection adds nothing
    // and lists the same parts.
    let third = shipped_project();
    let listing = |project: &Project, run: &Run| {
        std::fs::read(run.output_of(project, "collect").join("lake.json")).unwrap()
    };
    let collect = |project: &Project| {
        Run::from(
            s3_command(
                project,
                &moto,
                &moto.endpoint,
                &[
                    "run",
                    "pipelines/demo.yaml",
                    "--data-dir",
                    &data_dir,
                    "--stop-at",
                    "collect",
                    "--json",
                ],
            )
            .output()
            .unwrap(),
        )
    };
    let (first, again) = (collect(&stored), collect(&third));
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.status_of("collect"), "ran");
    assert_eq!(listing(&third, &again), listing(&stored, &first));
    assert_eq!(
        objects(&store, "research/lake").len(),
        parts.len(),
        "nothing new stored"
    );
}
