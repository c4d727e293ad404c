//! Feature benchmark (issues 5 and 19): the shipped feature set (`stages/features/features.sql`)
//! over 100 symbols x 1h x 2 years (about 1.75M rows), with the 4h and 1d candles, hourly mark
//! and index prices and funding of those two years (for the perpetual and multi-timeframe
//! features), through the real binary, reading the lake's Parquet and writing the output
//! included. Reports wall time, rows per second and the peak resident memory of the process.
//! Target: under 2.5 s and under 900 MiB on the 2-core machine.
//! The look-ahead guard's extra cost is measured separately. Between samples the previous
//! sample's output is deleted and the disk synced, so that each run starts as a scheduled one
//! would. Run with
//! `cargo bench --bench features`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const SYMBOLS: usize = 100;
const SAMPLES: usize = 5;

/// Peak resident set of the largest child waited for so far, in MiB.
fn children_peak_mib() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a complete rusage into the pointer we own.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr());
        usage.assume_init()
    };
    usage.ru_maxrss as f64 / 1024.0
}

fn main() {
    // ASTERFLOW_BENCH_DIR keeps the generated project for profiling.
    let project = tempfile::tempdir().unwrap();
    let kept = std::env::var_os("ASTERFLOW_BENCH_DIR").map(std::path::PathBuf::from);
    if let Some(dir) = &kept {
        std::fs::create_dir_all(dir).unwrap();
    }
    let root = kept.as_deref().unwrap_or(project.path());
    let rows_total = common::simulated_lake(
        root,
        &format!(
            "seed: 9\nmarket:\n  simulate:\n    genesis: 2023-01-01\n    assets:\n      - {{base: BTC, price: 42000, beta: 1.0, vol: 0.12}}\n      - {{base: ETH, price: 2300, beta: 1.15, vol: 0.3}}\n    generated: {{count: {}}}\n",
            SYMBOLS - 2
        ),
        true,
    );
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(root.join("stages/features")).unwrap();
    std::fs::copy(
        manifest.join("stages/features/features.sql"),
        root.join("stages/features/features.sql"),
    )
    .unwrap();
    std::fs::create_dir_all(root.join("pipelines")).unwrap();
    let pipeline = |guard: bool| {
        format!(
            "name: bench\nstages:\n  validate:\n    kind: command\n    with:\n      run: cp \"$ASTERFLOW_PROJECT_ROOT/fixtures/lake.json\" lake.json\n      outputs: [lake.json]\n  features:\n    kind: sql\n    needs: [validate]\n    with:\n      query: stages/features/features.sql\n      params: {{interval: 1h, bar_ms: 3600000, btc: BTCUSDT, eth: ETHUSDT, warmup: 300}}\n      output: features.parquet\n      lookahead_check: {guard}\n"
        )
    };

    if kept.is_some() && std::env::var_os("ASTERFLOW_BENCH_GENERATE_ONLY").is_some() {
        std::fs::write(root.join("pipelines/bench.yaml"), pipeline(false)).unwrap();
        eprintln!("generated {rows_total} rows under {}", root.display());
        return;
    }
    let measure = |guard: bool, samples: usize| -> (Vec<Duration>, u64, usize) {
        std::fs::write(root.join("pipelines/bench.yaml"), pipeline(guard)).unwrap();
        let mut times = Vec::new();
        let mut out_rows = 0;
        let mut out_columns = 0;
        for _ in 0..samples {
            let output = Command::new(env!("CARGO_BIN_EXE_asterflow"))
                .current_dir(root)
                .args([
                    "run",
                    "pipelines/bench.yaml",
                    "--quiet",
                    "--json",
                    "--force",
                    "--only",
                    "features",
                ])
                .stderr(Stdio::inherit())
                .output()
                .expect("asterflow runs");
            assert!(output.status.success(), "the run failed");
            let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            let stage = summary["stages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["id"] == "features")
                .unwrap()
                .clone();
            times.push(Duration::from_millis(
                stage["duration_ms"].as_u64().unwrap(),
            ));
            let output_dir = root.join(stage["output"].as_str().unwrap());
            if out_rows == 0 {
                let file = output_dir.join("features.parquet");
                let reader = parquet::file::reader::SerializedFileReader::new(
                    std::fs::File::open(file).unwrap(),
                )
                .unwrap();
                use parquet::file::reader::FileReader;
                let metadata = reader.metadata().file_metadata();
                out_rows = metadata.num_rows() as u64;
                // Every column but the keys and the close the labels and backtest join on.
                out_columns = metadata.schema_descr().num_columns() - 3;
            }
            // Each sample starts as a scheduled run would: without the previous samples'
            // outputs (hundreds of MB each) in the page cache and nothing left to write back.
            // Back to back, a sample measured the kernel reclaiming the last one's pages.
            std::fs::remove_dir_all(&output_dir).unwrap();
            // SAFETY: sync takes no arguments and cannot fail.
            unsafe { libc::sync() };
        }
        times.sort();
        (times, out_rows, out_columns)
    };

    // Create the validate output and warm the page cache, then measure.
    std::fs::write(root.join("pipelines/bench.yaml"), pipeline(false)).unwrap();
    let first = Command::new(env!("CARGO_BIN_EXE_asterflow"))
        .current_dir(root)
        .args(["run", "pipelines/bench.yaml", "--quiet"])
        .status()
        .unwrap();
    assert!(first.success(), "the first run failed");
    let (plain, out_rows, out_columns) = measure(false, SAMPLES);
    let peak = children_peak_mib();
    let (guarded, _, _) = measure(true, 3);
    let median = plain[plain.len() / 2];
    println!(
        "features benchmark: {SYMBOLS} symbols x 1h x 2 years = {rows_total} input rows, {out_rows} output rows, {out_columns} feature columns"
    );
    println!(
        "  features stage: min {:.3} s, median {:.3} s, max {:.3} s ({} runs); {:.2} M input rows/s",
        plain[0].as_secs_f64(),
        median.as_secs_f64(),
        plain[plain.len() - 1].as_secs_f64(),
        plain.len(),
        rows_total as f64 / median.as_secs_f64() / 1e6
    );
    println!("  peak resident memory of the asterflow process: {peak:.0} MiB");
    println!(
        "  with the look-ahead guard (3 cuts): median {:.3} s",
        guarded[guarded.len() / 2].as_secs_f64()
    );
    println!(
        "  target (< 2.5 s, < 900 MiB): {}",
        if median < Duration::from_millis(2500) && peak < 900.0 {
            "met"
        } else {
            "MISSED"
        }
    );
}
