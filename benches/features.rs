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
    let rows_total = common::features_project(root, SYMBOLS);
    let pipeline = common::features_pipeline;

    if kept.is_some() && std::env::var_os("ASTERFLOW_BENCH_GENERATE_ONLY").is_some() {
        std::fs::write(root.join("pipelines/bench.yaml"), pipeline(false)).unwrap();
        eprintln!("generated {rows_total} rows under {}", root.display());
        return;
    }
    let measure = |guard: bool, samples: usize| {
        std::fs::write(root.join("pipelines/bench.yaml"), pipeline(guard)).unwrap();
        common::features_samples(root, samples, &[])
    };

    common::features_first_run(root);
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
