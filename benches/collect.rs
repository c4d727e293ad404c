//! Collection benchmark (issue 3): 50 symbols x (1h, 4h, 1d) x 365 days from the replay
//! exchange, whose weight limit is declared as 400 per 10 seconds (`X-MBX-USED-WEIGHT-10s`).
//!
//! The lower bound is the least total weight that can fetch those bars, given the
//! weight-by-page-size table, divided by the limit. Target: the `collect` stage within 1.3x of
//! it, and zero 418s. Run with `cargo bench --bench collect`; the scenario is
//! `data/scenarios/bench-50.yaml`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use asterflow::market::model::{Interval, least_weight, weight_optimal_page};
use asterflow::market::replay::{ReplayExchange, Scenario};

const HISTORY_DAYS: u64 = 365;
const INTERVALS: [&str; 3] = ["1h", "4h", "1d"];

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scenario_file = root.join("data/scenarios/bench-50.yaml");
    let scenario = Scenario::load(&scenario_file).expect("the benchmark scenario parses");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime
        .block_on(ReplayExchange::start(
            Arc::new(scenario),
            ([127, 0, 0, 1], 0).into(),
        ))
        .expect("the replay exchange starts");
    let limit = server.declared_limit().clone();
    let window = Duration::from_millis(limit.window_ms().unwrap());

    let project = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(project.path().join("pipelines")).unwrap();
    let pipeline = format!(
        "name: bench\nsources:\n  replay:\n    api: binance-futures\n    base_url: {}\nstages:\n  discover:\n    kind: discover\n    with: {{source: replay, max_symbols: 50}}\n  rate_limits:\n    kind: rate_limits\n    with: {{source: replay}}\n  collect:\n    kind: collect\n    needs: [discover, rate_limits]\n    with:\n      source: replay\n      intervals: [1h, 4h, 1d]\n      history: {HISTORY_DAYS}d\n",
        server.url
    );
    std::fs::write(project.path().join("pipelines/bench.yaml"), pipeline).unwrap();

    // The bound, from the bars the exchange holds in the window the collection will ask for.
    let now = server.now_ms();
    let page = weight_optimal_page();
    let mut bars = 0u64;
    let mut least = 0u64;
    for symbol in server.market().symbols() {
        for name in INTERVALS {
            let interval = Interval::parse(name).unwrap();
            let from = interval.floor(now - HISTORY_DAYS * 86_400_000);
            let count = server
                .market()
                .closed_bars(&symbol.symbol, interval, from, now, now);
            bars += count;
            least += least_weight(count, page);
        }
    }
    let bound = window.mul_f64(least as f64 / limit.limit as f64);

    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_asterflow"))
        .current_dir(project.path())
        .args(["run", "pipelines/bench.yaml", "--quiet", "--json"])
        .stderr(Stdio::inherit())
        .output()
        .expect("asterflow runs");
    let whole = started.elapsed();
    assert!(output.status.success(), "the run failed");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let collect_ms = summary["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|stage| stage["id"] == "collect")
        .and_then(|stage| stage["duration_ms"].as_u64())
        .unwrap();
    let collect = Duration::from_millis(collect_ms);
    let stats = server.stats();
    let ratio = collect.as_secs_f64() / bound.as_secs_f64();
    let met = ratio <= 1.3 && stats.banned == 0;

    println!("collect benchmark: 50 symbols x (1h, 4h, 1d) x {HISTORY_DAYS} days");
    println!(
        "  limit: {} weight per {:?} (header X-MBX-USED-WEIGHT-{})",
        limit.limit,
        window,
        limit.header_suffix()
    );
    println!("  bars in the window: {bars}");
    println!("  least weight (pages of {page}): {least}");
    println!("  lower bound: {:.1} s", bound.as_secs_f64());
    println!(
        "  collect stage: {:.1} s ({ratio:.3}x the bound), whole run {:.1} s",
        collect.as_secs_f64(),
        whole.as_secs_f64()
    );
    println!(
        "  exchange saw: {} requests, {} weight, {} x 429, {} x 418",
        stats.requests, stats.weight, stats.rate_limited, stats.banned
    );
    println!(
        "  target (<= 1.3x, zero 418s): {}",
        if met { "met" } else { "MISSED" }
    );
    let _guard = runtime.enter();
    drop(server);
}
