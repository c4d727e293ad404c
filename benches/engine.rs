//! Engine benchmark (issue 2): a 10-stage chain of `command` stages, run through the real binary.
//!
//! - no-op rerun of the fully cached chain: target < 15 ms wall (process start included);
//! - forced run of the chain: target < 100 ms on top of the commands' own time, which is
//!   measured separately by running the same 10 shell commands directly.
//!
//! Run with `cargo bench --bench engine`. Prints figures and whether each target is met.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STAGES: usize = 10;
const NOOP_SAMPLES: usize = 60;
const FORCED_SAMPLES: usize = 25;

fn stage_command(index: usize) -> String {
    if index == 0 {
        "echo 0 > out.txt".to_owned()
    } else {
        format!(
            "cat \"$ASTERFLOW_INPUT_S{}/out.txt\" > out.txt; echo {index} >> out.txt",
            index - 1
        )
    }
}

fn write_project(dir: &Path) {
    let mut yaml = String::from("name: bench\nstages:\n");
    for index in 0..STAGES {
        let needs = if index == 0 {
            String::new()
        } else {
            format!("s{}", index - 1)
        };
        yaml.push_str(&format!(
            "  s{index}:\n    kind: command\n    needs: [{needs}]\n    with:\n      run: '{}'\n      outputs: [out.txt]\n",
            stage_command(index)
        ));
    }
    std::fs::create_dir_all(dir.join("pipelines")).unwrap();
    std::fs::write(dir.join("pipelines/bench.yaml"), yaml).unwrap();
}

fn asterflow(dir: &Path, extra: &[&str]) -> Duration {
    let start = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_asterflow"))
        .current_dir(dir)
        .args(["run", "pipelines/bench.yaml", "--quiet"])
        .args(extra)
        .stdout(Stdio::null())
        .status()
        .expect("asterflow runs");
    let elapsed = start.elapsed();
    assert!(status.success(), "asterflow failed: {status}");
    elapsed
}

/// The commands alone: the same shell lines under the same shell, in sequence.
fn commands_alone(dir: &Path) -> Duration {
    let start = Instant::now();
    for index in 0..STAGES {
        let stage_dir = dir.join(format!("direct/s{index}"));
        std::fs::create_dir_all(&stage_dir).unwrap();
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(stage_command(index))
            .current_dir(&stage_dir);
        if index > 0 {
            command.env(
                format!("ASTERFLOW_INPUT_S{}", index - 1),
                dir.join(format!("direct/s{}", index - 1)),
            );
        }
        assert!(command.status().expect("sh runs").success());
    }
    start.elapsed()
}

struct Summary {
    min: Duration,
    median: Duration,
    p95: Duration,
}

fn summarize(mut samples: Vec<Duration>) -> Summary {
    samples.sort();
    let at = |quantile: f64| samples[((samples.len() - 1) as f64 * quantile).round() as usize];
    Summary {
        min: samples[0],
        median: at(0.5),
        p95: at(0.95),
    }
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_project(dir.path());
    asterflow(dir.path(), &[]);

    let noop = summarize(
        (0..NOOP_SAMPLES)
            .map(|_| asterflow(dir.path(), &[]))
            .collect(),
    );
    let forced = summarize(
        (0..FORCED_SAMPLES)
            .map(|_| asterflow(dir.path(), &["--force"]))
            .collect(),
    );
    let direct = summarize(
        (0..FORCED_SAMPLES)
            .map(|_| commands_alone(dir.path()))
            .collect(),
    );
    let overhead = forced.median.saturating_sub(direct.median);

    println!("engine benchmark: {STAGES}-stage chain of `command` stages");
    println!(
        "  no-op rerun (all cached): min {}  median {}  p95 {}   target < 15 ms: {}",
        ms(noop.min),
        ms(noop.median),
        ms(noop.p95),
        if noop.median < Duration::from_millis(15) {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "  forced run:               min {}  median {}  p95 {}",
        ms(forced.min),
        ms(forced.median),
        ms(forced.p95)
    );
    println!(
        "  the commands alone:       min {}  median {}  p95 {}",
        ms(direct.min),
        ms(direct.median),
        ms(direct.p95)
    );
    println!(
        "  engine overhead of a forced run (median - commands): {}   target < 100 ms: {}",
        ms(overhead),
        if overhead < Duration::from_millis(100) {
            "met"
        } else {
            "MISSED"
        }
    );
}
