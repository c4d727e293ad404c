//! The first-run benchmark (issue 8): the shipped demo pipeline through the real release binary.
//!
//! - cold run: a fresh project (empty lake, empty cache) runs `pipelines/demo.yaml` end to end
//!   (replay exchange, 12 symbols x 1h/4h/1d x a year, features with the look-ahead guard,
//!   labels, mlp training, backtest, report, signals): target < 60 s;
//! - warm rerun: the same project again, every stage a cache hit: target < 50 ms;
//! - peak memory: the largest resident set of the process (`wait4`'s `ru_maxrss`).
//!
//! Compilation is excluded (cargo builds the binary before the program starts). Run with
//! `cargo bench --bench demo`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const COLD_SAMPLES: usize = 3;
const WARM_SAMPLES: usize = 30;

/// The shipped pipelines and the files they reference, in a fresh directory.
fn fresh_project(dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "pipelines/demo.yaml",
        "data/scenarios/demo.yaml",
        "stages/features/features.sql",
        "stages/labels/labels.sql",
        "stages/kernels/mlp.cu",
    ] {
        let target = dir.join(file);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(root.join(file), target).unwrap();
    }
}

/// Runs the demo; returns the wall time and the peak resident set in bytes.
#[expect(
    clippy::zombie_processes,
    reason = "the child is reaped by wait4, which also gives its resource usage"
)]
fn run_demo(dir: &Path) -> (Duration, u64) {
    let start = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_asterflow"))
        .current_dir(dir)
        .args(["run", "pipelines/demo.yaml", "--quiet"])
        .stdout(Stdio::null())
        .spawn()
        .expect("asterflow starts");
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our own child, not yet waited for; both pointers are valid.
    let waited = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let elapsed = start.elapsed();
    assert_eq!(waited, child.id() as libc::pid_t, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the demo failed (status {status})"
    );
    (elapsed, usage.ru_maxrss as u64 * 1024)
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn main() {
    let mut cold = Vec::new();
    let mut cold_peak = 0;
    let mut warm = Vec::new();
    let mut warm_peak = 0;
    for sample in 0..COLD_SAMPLES {
        let dir = tempfile::tempdir().unwrap();
        fresh_project(dir.path());
        let (elapsed, peak) = run_demo(dir.path());
        println!(
            "cold run {}: {:.2} s, peak RSS {:.0} MiB",
            sample + 1,
            elapsed.as_secs_f64(),
            peak as f64 / 1048576.0
        );
        cold.push(elapsed);
        cold_peak = cold_peak.max(peak);
        if sample == 0 {
            for _ in 0..WARM_SAMPLES {
                let (elapsed, peak) = run_demo(dir.path());
                warm.push(elapsed);
                warm_peak = warm_peak.max(peak);
            }
        }
    }
    cold.sort();
    warm.sort();
    let cold_median = cold[cold.len() / 2];
    let warm_median = warm[warm.len() / 2];
    println!(
        "cold: min {:.2} s, median {:.2} s, max {:.2} s ({} fresh projects); target < 60 s: {}",
        cold[0].as_secs_f64(),
        cold_median.as_secs_f64(),
        cold[cold.len() - 1].as_secs_f64(),
        COLD_SAMPLES,
        verdict(cold_median < Duration::from_secs(60))
    );
    println!(
        "warm (all cached): min {:.2} ms, median {:.2} ms, p95 {:.2} ms ({} runs); target < 50 ms: {}",
        millis(warm[0]),
        millis(warm_median),
        millis(warm[warm.len() * 95 / 100]),
        WARM_SAMPLES,
        verdict(warm_median < Duration::from_millis(50))
    );
    println!(
        "peak RSS: cold {:.0} MiB, warm {:.0} MiB",
        cold_peak as f64 / 1048576.0,
        warm_peak as f64 / 1048576.0
    );
}
