//! Collection benchmark (issues 3 and 19): 50 symbols x (1h, 4h, 1d) klines and their funding x
//! 365 days from the replay exchange, whose weight limit is declared as 400 per 10 seconds
//! (`X-MBX-USED-WEIGHT-10s`).
//!
//! The lower bound is the least total weight that can fetch those bars and settlements, given
//! the weight-by-page-size table (funding: 1 per page of 1,000, and one `fundingInfo`), divided
//! by the limit. Target: the `collect` stage within 1.3x of it, and zero 418s. Then the funding
//! alone, into an empty lake. Run with `cargo bench --bench collect`; the scenario is
//! `data/scenarios/bench-50.yaml`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use asterflow::market::model::{Interval, MAX_FUNDING_PAGE, least_weight, weight_optimal_page};
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

    let pipeline = |datasets: &str| {
        let project = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(project.path().join("pipelines")).unwrap();
        std::fs::write(project.path().join("pipelines/bench.yaml"), format!(
            "name: bench\nsources:\n  replay:\n    api: binance-futures\n    base_url: {}\nstages:\n  discover:\n    kind: discover\n    with: {{source: replay, max_symbols: 50}}\n  rate_limits:\n    kind: rate_limits\n    with: {{source: replay}}\n  collect:\n    kind: collect\n    needs: [discover, rate_limits]\n    with:\n      source: replay\n      datasets: [{datasets}]\n      intervals: [1h, 4h, 1d]\n      history: {HISTORY_DAYS}d\n",
            server.url
        )).unwrap();
        project
    };

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
    // Funding: every settlement in the window, pages of 1,000 at weight 1, and fundingInfo.
    let mut settlements = 0u64;
    let mut funding_least = 1u64;
    for symbol in server.market().symbols() {
        let count = server
            .market()
            .funding(
                &symbol.symbol,
                Some(now - HISTORY_DAYS * 86_400_000),
                None,
                usize::MAX,
                now,
            )
            .unwrap()
            .len() as u64;
        settlements += count;
        funding_least += count.div_ceil(u64::from(MAX_FUNDING_PAGE)).max(1);
    }
    let least_all = least + funding_least;
    let bound = window.mul_f64(least_all as f64 / limit.limit as f64);

    let collect = |datasets: &str| {
        let project = pipeline(datasets);
        let before = server.stats();
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
        let after = server.stats();
        let seen = (
            after.requests - before.requests,
            after.weight - before.weight,
            after.funding_requests - before.funding_requests,
            after.rate_limited - before.rate_limited,
            after.banned - before.banned,
        );
        (Duration::from_millis(collect_ms), whole, seen)
    };
    let (collect_time, whole, seen) = collect("klines, funding");
    let ratio = collect_time.as_secs_f64() / bound.as_secs_f64();
    let met = ratio <= 1.3 && seen.4 == 0;

    println!(
        "collect benchmark: 50 symbols x (1h, 4h, 1d) klines and funding x {HISTORY_DAYS} days"
    );
    println!(
        "  limit: {} weight per {:?} (header X-MBX-USED-WEIGHT-{})",
        limit.limit,
        window,
        limit.header_suffix()
    );
    println!("  bars in the window: {bars}; settlements: {settlements}");
    println!(
        "  least weight: klines (pages of {page}) {least} + funding {funding_least} = {least_all}"
    );
    println!("  lower bound: {:.1} s", bound.as_secs_f64());
    println!(
        "  collect stage: {:.1} s ({ratio:.3}x the bound), whole run {:.1} s",
        collect_time.as_secs_f64(),
        whole.as_secs_f64()
    );
    println!(
        "  exchange saw: {} requests ({} fundingRate), {} weight, {} x 429, {} x 418",
        seen.0, seen.2, seen.1, seen.3, seen.4
    );
    println!(
        "  target (<= 1.3x, zero 418s): {}",
        if met { "met" } else { "MISSED" }
    );
    // The funding alone fits in one window of the limit: its bound is the time to spend its
    // weight at the limit's average rate, which a burst inside one window beats.
    let (funding_time, _, seen) = collect("funding");
    let funding_bound = window.mul_f64(funding_least as f64 / limit.limit as f64);
    println!(
        "  funding alone: {:.2} s for {settlements} settlements in {} fundingRate requests ({} weight in all stages; least {funding_least}, {:.2} s at the limit's rate), {} x 429, {} x 418",
        funding_time.as_secs_f64(),
        seen.2,
        seen.1,
        funding_bound.as_secs_f64(),
        seen.3,
        seen.4
    );
    let _guard = runtime.enter();
    drop(server);
}
