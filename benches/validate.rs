//! Validation benchmark (issue 4): `validate` over 100 symbols x 1h x 2 years (about 1.75M
//! rows) of lake parts, run through the real binary. Target: under 2 s on the 2-core machine.
//!
//! The data comes from the replay simulator (written straight into the lake, one part per
//! symbol as a collection writes it). Run with `cargo bench --bench validate`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SYMBOLS: usize = 100;
const SAMPLES: usize = 7;

fn main() {
    let project = tempfile::tempdir().unwrap();
    let root = project.path();
    let generating = Instant::now();
    let rows_total = common::simulated_lake(
        root,
        &format!(
            "seed: 9\nmarket:\n  simulate:\n    genesis: 2023-01-01\n    generated: {{count: {SYMBOLS}}}\n"
        ),
        false,
    );
    std::fs::create_dir_all(root.join("pipelines")).unwrap();
    std::fs::write(
        root.join("pipelines/bench.yaml"),
        "name: bench\nstages:\n  lake:\n    kind: command\n    with:\n      run: cp \"$ASTERFLOW_PROJECT_ROOT/fixtures/lake.json\" lake.json\n      outputs: [lake.json]\n  validate:\n    kind: validate\n    needs: [lake]\n    with: {allow_synthetic: true}\n",
    )
    .unwrap();
    eprintln!(
        "generated {rows_total} rows for {SYMBOLS} symbols in {:.1} s",
        generating.elapsed().as_secs_f64()
    );

    let mut stage = Vec::new();
    let mut whole = Vec::new();
    for sample in 0..SAMPLES {
        let started = Instant::now();
        let mut command = Command::new(env!("CARGO_BIN_EXE_asterflow"));
        command
            .current_dir(root)
            .args(["run", "pipelines/bench.yaml", "--quiet", "--json"])
            .stderr(Stdio::inherit());
        if sample > 0 {
            command.args(["--only", "validate", "--force"]);
        }
        let output = command.output().expect("asterflow runs");
        let elapsed = started.elapsed();
        assert!(output.status.success(), "the run failed");
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let validate_ms = summary["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == "validate")
            .and_then(|s| s["duration_ms"].as_u64())
            .unwrap();
        stage.push(Duration::from_millis(validate_ms));
        whole.push(elapsed);
        if sample == 0 {
            let output_dir = summary["stages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["id"] == "validate")
                .and_then(|s| s["output"].as_str())
                .unwrap()
                .to_owned();
            let report: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(root.join(output_dir).join("validation_report.json"))
                    .unwrap(),
            )
            .unwrap();
            for dataset in report["datasets"].as_array().unwrap() {
                if dataset["passed"] == false {
                    eprintln!("quarantined {}: {}", dataset["symbol"], dataset["failures"]);
                }
            }
        }
    }
    stage.sort();
    whole.sort();
    let median = stage[SAMPLES / 2];
    println!("validate benchmark: {SYMBOLS} symbols x 1h x 2 years = {rows_total} rows");
    println!(
        "  validate stage: min {:.3} s, median {:.3} s, max {:.3} s ({SAMPLES} runs)",
        stage[0].as_secs_f64(),
        median.as_secs_f64(),
        stage[SAMPLES - 1].as_secs_f64()
    );
    println!(
        "  whole run (process start, plan, commit): median {:.3} s",
        whole[SAMPLES / 2].as_secs_f64()
    );
    println!(
        "  target (< 2 s): {}",
        if median < Duration::from_secs(2) {
            "met"
        } else {
            "MISSED"
        }
    );
}
