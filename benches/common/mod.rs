//! Shared by the benchmarks: a lake of simulated hourly candles (and, for the features, 4h and
//! 1d candles, hourly mark and index prices and funding), written as a collection writes it (one
//! part per partition), with the `lake.json` fixture a `command` stage hands on; the shipped
//! demo project, and the release binary run with its peak memory.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use asterflow::market::lake::{LakeListing, Provenance};
use asterflow::market::model::{Dataset, Interval};
use asterflow::market::replay::{Market, Scenario};

/// The end of the benchmark data: 2026-01-01, a fixed past instant.
pub const END_MS: u64 = 1_767_225_600_000;

/// Writes two years of hourly candles for every symbol of `scenario_yaml` under `root/data`,
/// and `root/fixtures/lake.json` listing them; with `perp`, also 4h and 1d candles, hourly mark
/// and index prices, and funding. Returns the number of hourly candles.
pub fn simulated_lake(root: &Path, scenario_yaml: &str, perp: bool) -> usize {
    let data = root.join("data");
    let scenario = Scenario::parse(Path::new("bench.yaml"), scenario_yaml).unwrap();
    let market = Market::build(&scenario).unwrap();
    let start = END_MS - 2 * 365 * 86_400_000;
    let provenance = Provenance {
        source: "sim".into(),
        base_url: "bench".into(),
        fetched_at_ms: END_MS as i64,
        kind: "simulated".into(),
    };
    let mut tables = vec![(Dataset::Klines, "1h")];
    if perp {
        tables.extend([
            (Dataset::Klines, "4h"),
            (Dataset::Klines, "1d"),
            (Dataset::MarkKlines, "1h"),
            (Dataset::IndexKlines, "1h"),
        ]);
    }
    let mut parts = Vec::new();
    let mut total = 0;
    for symbol in market.symbols() {
        for &(dataset, interval) in &tables {
            let interval = Interval::parse(interval).unwrap();
            let mut rows = Vec::new();
            let mut cursor = start;
            while cursor < END_MS {
                let page = market
                    .kline_table(
                        dataset,
                        &symbol.symbol,
                        interval,
                        Some(cursor),
                        Some(END_MS - 1),
                        1500,
                        END_MS,
                    )
                    .unwrap();
                let Some(last) = page.last() else { break };
                cursor = last.open_time as u64 + interval.millis();
                rows.extend(page);
            }
            if dataset == Dataset::Klines && interval.name() == "1h" {
                total += rows.len();
            }
            let dir = asterflow::market::lake::table_partition_dir(
                &data,
                dataset,
                "sim",
                Some(interval),
                &symbol.symbol,
            )
            .unwrap();
            asterflow::market::lake::write_part(&dir, &symbol.symbol, interval, &rows, &provenance)
                .unwrap();
            parts.extend(
                asterflow::market::lake::describe_table_partition(
                    &data,
                    dataset,
                    "sim",
                    Some(interval),
                    &symbol.symbol,
                )
                .unwrap(),
            );
        }
        if perp {
            let funding = market
                .funding(
                    &symbol.symbol,
                    Some(start),
                    Some(END_MS - 1),
                    usize::MAX,
                    END_MS,
                )
                .unwrap();
            let dir = asterflow::market::lake::table_partition_dir(
                &data,
                Dataset::Funding,
                "sim",
                None,
                &symbol.symbol,
            )
            .unwrap();
            asterflow::market::lake::write_funding_part(
                &dir,
                &symbol.symbol,
                &funding,
                &provenance,
            )
            .unwrap();
            parts.extend(
                asterflow::market::lake::describe_table_partition(
                    &data,
                    Dataset::Funding,
                    "sim",
                    None,
                    &symbol.symbol,
                )
                .unwrap(),
            );
        }
    }
    std::fs::create_dir_all(root.join("fixtures")).unwrap();
    std::fs::write(
        root.join("fixtures/lake.json"),
        serde_json::to_string(&LakeListing::new(parts)).unwrap(),
    )
    .unwrap();
    total
}

/// The features benchmark's project in `root`: the perpetual lake of `symbols` simulated
/// symbols (BTC and ETH among them) and the shipped feature set. Returns the hourly candles.
pub fn features_project(root: &Path, symbols: usize) -> usize {
    let rows = simulated_lake(
        root,
        &format!(
            "seed: 9\nmarket:\n  simulate:\n    genesis: 2023-01-01\n    assets:\n      - {{base: BTC, price: 42000, beta: 1.0, vol: 0.12}}\n      - {{base: ETH, price: 2300, beta: 1.15, vol: 0.3}}\n    generated: {{count: {}}}\n",
            symbols - 2
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
    rows
}

/// The features benchmark's pipeline: the lake fixture, then the shipped feature set, with the
/// look-ahead guard or not.
pub fn features_pipeline(guard: bool) -> String {
    format!(
        "name: bench\nstages:\n  validate:\n    kind: command\n    with:\n      run: cp \"$ASTERFLOW_PROJECT_ROOT/fixtures/lake.json\" lake.json\n      outputs: [lake.json]\n  features:\n    kind: sql\n    needs: [validate]\n    with:\n      query: stages/features/features.sql\n      params: {{interval: 1h, bar_ms: 3600000, btc: BTCUSDT, eth: ETHUSDT, warmup: 300}}\n      output: features.parquet\n      lookahead_check: {guard}\n"
    )
}

/// Writes the features pipeline (without the guard) and runs it once: the validate output
/// exists and the page cache is warm for the samples that follow.
pub fn features_first_run(root: &Path) {
    std::fs::write(root.join("pipelines/bench.yaml"), features_pipeline(false)).unwrap();
    let first = Command::new(env!("CARGO_BIN_EXE_asterflow"))
        .current_dir(root)
        .args(["run", "pipelines/bench.yaml", "--quiet"])
        .status()
        .unwrap();
    assert!(first.success(), "the first run failed");
}

/// Runs the features benchmark's `features` stage `samples` times (forced, alone) in `root`
/// with `environment`, each sample started as a scheduled run would be (the previous output
/// deleted and the disk synced). Returns the stage's times, sorted, the output's rows, and its
/// feature columns (all but the keys and the close).
pub fn features_samples(
    root: &Path,
    samples: usize,
    environment: &[(&str, &str)],
) -> (Vec<Duration>, u64, usize) {
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
            .envs(environment.iter().copied())
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
            out_columns = metadata.schema_descr().num_columns() - 3;
        }
        // Without the previous samples' outputs (hundreds of MB each) in the page cache and
        // nothing left to write back: back to back, a sample measured the kernel reclaiming
        // the last one's pages.
        std::fs::remove_dir_all(&output_dir).unwrap();
        // SAFETY: sync takes no arguments and cannot fail.
        unsafe { libc::sync() };
    }
    times.sort();
    (times, out_rows, out_columns)
}

/// The shipped demo pipeline and the files it references, in `dir`.
pub fn demo_project(dir: &Path) {
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

/// Runs the release `asterflow` with `args` and `environment` in `dir`, asserting success;
/// returns the wall time and the peak resident set in bytes.
#[expect(
    clippy::zombie_processes,
    reason = "the child is reaped by wait4, which also gives its resource usage"
)]
pub fn run_asterflow(
    dir: &Path,
    args: &[&str],
    environment: &[(String, String)],
) -> (Duration, u64) {
    let start = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_asterflow"))
        .current_dir(dir)
        .args(args)
        .envs(environment.iter().map(|(key, value)| (key, value)))
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
        "asterflow {args:?} failed (status {status})"
    );
    (elapsed, usage.ru_maxrss as u64 * 1024)
}
