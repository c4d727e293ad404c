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
