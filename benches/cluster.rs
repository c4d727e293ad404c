//! Cluster benchmark (issue 22): the features stage of the features benchmark (the shipped
//! feature set over 100 symbols x 1h x 2 years, with the perpetual and higher-timeframe
//! tables) on the embedded engine and on a loopback Ballista cluster: `asterflow cluster
//! scheduler` and two `asterflow cluster executor`s (this same release binary), one task each,
//! on this one machine; the lake on local disk, a path every node shares. Reports the stage's
//! time both ways, the overhead, the cluster's throughput per executor, and what that
//! throughput says, on paper, about 1,000 symbols of 1m bars. Run with
//! `cargo bench --bench cluster`.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SYMBOLS: usize = 100;
const SAMPLES: usize = 3;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A node of the cluster, killed when dropped.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node(root: &Path, args: &[&str]) -> Node {
    Node(
        Command::new(env!("CARGO_BIN_EXE_asterflow"))
            .current_dir(root)
            .arg("cluster")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("asterflow cluster starts"),
    )
}

fn main() {
    let project = tempfile::tempdir().unwrap();
    let root = project.path();
    let rows_total = common::features_project(root, SYMBOLS);
    common::features_first_run(root);

    let (embedded, rows, _) = common::features_samples(root, SAMPLES, &[]);

    let port = free_port();
    let url = format!("df://127.0.0.1:{port}");
    let _scheduler = node(root, &["scheduler", "--bind", &format!("127.0.0.1:{port}")]);
    let _executors: Vec<Node> = (0..2)
        .map(|_| {
            node(
                root,
                &[
                    "executor",
                    "--scheduler",
                    &url,
                    "--bind",
                    &format!("127.0.0.1:{}", free_port()),
                    "--grpc-port",
                    &free_port().to_string(),
                    "--concurrent-tasks",
                    "1",
                ],
            )
        })
        .collect();
    let environment = [("ASTERFLOW_BALLISTA", url.as_str())];
    // Ready when the plan's cluster check passes (scheduler up, an executor registered).
    let waiting = Instant::now();
    loop {
        let checked = Command::new(env!("CARGO_BIN_EXE_asterflow"))
            .current_dir(root)
            .args(["run", "pipelines/bench.yaml", "--validate-only", "--quiet"])
            .envs(environment)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        if checked.success() {
            break;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(60),
            "the cluster did not come up"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (clustered, cluster_rows, _) = common::features_samples(root, SAMPLES, &environment);
    assert_eq!(cluster_rows, rows, "both engines give the same rows");

    let median = |times: &[Duration]| times[times.len() / 2].as_secs_f64();
    let (local, remote) = (median(&embedded), median(&clustered));
    let per_executor = rows_total as f64 / remote / 2.0;
    println!(
        "cluster benchmark: the features stage over {SYMBOLS} symbols x 1h x 2 years = {rows_total} input rows, {rows} output rows"
    );
    println!(
        "  embedded DataFusion: median {local:.3} s ({:.2} M input rows/s)",
        rows_total as f64 / local / 1e6
    );
    println!(
        "  Ballista, scheduler + 2 executors x 1 task on this machine: median {remote:.3} s (min {:.3}, max {:.3}); {:.2}x the embedded time",
        clustered[0].as_secs_f64(),
        clustered[clustered.len() - 1].as_secs_f64(),
        remote / local
    );
    println!(
        "  per executor (one core): {:.2} M input rows/s",
        per_executor / 1e6
    );
    // 1,000 symbols of 1m bars over the same two years.
    let minute_rows = 1_000.0 * 2.0 * 365.0 * 1_440.0;
    for executors in [2.0, 16.0, 64.0] {
        println!(
            "  on paper, 1,000 symbols x 1m x 2 years ({:.2}e9 rows) on {executors} one-core executors at that rate: {:.0} s",
            minute_rows / 1e9,
            minute_rows / (per_executor * executors)
        );
    }
}
