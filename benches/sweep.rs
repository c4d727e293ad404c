//! Sweep benchmark (issue 18), through the real binary with `command` stages:
//!
//! - expanding and planning a 1,000-member matrix (`--validate-only`: parse, expand, prepare
//!   every member, plan against the cache): target < 1 s, process start included;
//! - a no-op rerun of a 100-member sweep, every member cached: target < 100 ms.
//!
//! Run with `cargo bench --bench sweep`. Prints figures and whether each target is met.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn pipeline(lists: &[(&str, usize)]) -> String {
    let matrix: String = lists
        .iter()
        .map(|(name, count)| {
            let values: Vec<String> = (0..*count).map(|v| v.to_string()).collect();
            format!("      {name}: [{}]\n", values.join(", "))
        })
        .collect();
    let echo: Vec<String> = lists
        .iter()
        .map(|(name, _)| format!("${{matrix.{name}}}"))
        .collect();
    format!(
        "name: sweep\nstages:\n  prep:\n    kind: command\n    with: {{run: 'echo prep > out.txt', outputs: [out.txt]}}\n  member:\n    kind: command\n    needs: [prep]\n    matrix:\n{matrix}    with: {{run: 'echo {} > out.txt', outputs: [out.txt]}}\n",
        echo.join(" ")
    )
}

fn asterflow(dir: &Path, args: &[&str]) -> Duration {
    let start = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_asterflow"))
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("asterflow runs");
    let elapsed = start.elapsed();
    assert!(status.success(), "asterflow {args:?} failed: {status}");
    elapsed
}

fn median(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort();
    (
        samples[0],
        samples[samples.len() / 2],
        samples[samples.len() - 1],
    )
}

fn main() {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;

    let big = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(big.path().join("pipelines")).unwrap();
    std::fs::write(
        big.path().join("pipelines/sweep.yaml"),
        pipeline(&[("a", 10), ("b", 10), ("c", 10)]),
    )
    .unwrap();
    let plans: Vec<Duration> = (0..7)
        .map(|_| {
            asterflow(
                big.path(),
                &["run", "pipelines/sweep.yaml", "--validate-only"],
            )
        })
        .collect();
    let (low, mid, high) = median(plans);
    println!(
        "expand and plan 1,000 members (--validate-only, 7 runs): min {:.1} ms, median {:.1} ms, max {:.1} ms; target < 1000 ms: {}",
        ms(low),
        ms(mid),
        ms(high),
        if mid < Duration::from_secs(1) {
            "met"
        } else {
            "MISSED"
        }
    );

    let hundred = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(hundred.path().join("pipelines")).unwrap();
    std::fs::write(
        hundred.path().join("pipelines/sweep.yaml"),
        pipeline(&[("a", 10), ("b", 10)]),
    )
    .unwrap();
    let first = asterflow(hundred.path(), &["run", "pipelines/sweep.yaml", "--quiet"]);
    println!(
        "first run of 101 stages (100 members and their input): {:.0} ms",
        ms(first)
    );
    let noops: Vec<Duration> = (0..30)
        .map(|_| asterflow(hundred.path(), &["run", "pipelines/sweep.yaml", "--quiet"]))
        .collect();
    let (low, mid, high) = median(noops);
    println!(
        "no-op rerun of the 100-member sweep (30 runs): min {:.1} ms, median {:.1} ms, max {:.1} ms; target < 100 ms: {}",
        ms(low),
        ms(mid),
        ms(high),
        if mid < Duration::from_millis(100) {
            "met"
        } else {
            "MISSED"
        }
    );
}
