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
use std::time::Duration;

const COLD_SAMPLES: usize = 3;
const WARM_SAMPLES: usize = 30;

mod common;

/// Runs the demo; returns the wall time and the peak resident set in bytes.
fn run_demo(dir: &Path) -> (Duration, u64) {
    common::run_asterflow(dir, &["run", "pipelines/demo.yaml", "--quiet"], &[])
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
        common::demo_project(dir.path());
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
