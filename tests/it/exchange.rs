//! The exchange stages against a real replay exchange on 127.0.0.1: pagination, incremental
//! reruns, resume after interruption, 429 handling without 418, retries on 5xx and truncated
//! bodies, the 418 abort, hostile symbol names, dump imports and the shipped pipelines.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{Project, wait_for};
use asterflow::market::model::{Interval, Kline};
use asterflow::market::replay::{ReplayExchange, Scenario};

/// 2025-03-01T00:30:00Z: half an hour into an open 1h candle.
pub(crate) const NOW: &str = "2025-03-01T00:30:00Z";

/// A replay exchange running on its own runtime while the test drives the binary.
pub(crate) struct Exchange {
    server: Option<ReplayExchange>,
    runtime: tokio::runtime::Runtime,
}

impl Exchange {
    pub(crate) fn start(scenario_yaml: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let file = Path::new("scenario.yaml");
        let scenario = Scenario::parse(file, scenario_yaml).unwrap_or_else(|d| panic!("{d}"));
        let server = runtime
            .block_on(ReplayExchange::start(
                Arc::new(scenario),
                ([127, 0, 0, 1], 0).into(),
            ))
            .unwrap();
        Self {
            server: Some(server),
            runtime,
        }
    }

    pub(crate) fn server(&self) -> &ReplayExchange {
        self.server.as_ref().unwrap()
    }

    pub(crate) fn url(&self) -> &str {
        &self.server().url
    }

    /// One raw HTTP/1.1 GET: the status, the used-weight header and the JSON body.
    pub(crate) fn get(&self, path_and_query: &str) -> (u16, Option<u64>, serde_json::Value) {
        use std::io::{Read, Write};
        let address = self.url().trim_start_matches("http://").to_owned();
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        write!(
            stream,
            "GET {path_and_query} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let weight = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("x-mbx-used-weight-1m")
                .then(|| value.trim().parse().ok())?
        });
        // The replay exchange sends whole bodies (content-length), never chunks.
        let body = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
        (status, weight, body)
    }

    /// The closed candles the exchange holds for `symbol` opening in `[from, to]`.
    fn truth(&self, symbol: &str, interval: &str, from: i64, to: i64) -> Vec<Kline> {
        let interval = Interval::parse(interval).unwrap();
        let now = self.server().now_ms();
        let mut rows = Vec::new();
        let mut cursor = from as u64;
        loop {
            let page = self
                .server()
                .market()
                .klines(symbol, interval, Some(cursor), Some(to as u64), 1500, now)
                .unwrap();
            let full = page.len() == 1500;
            let last = page.last().map(|k| k.open_time);
            rows.extend(page.into_iter().filter(|k| k.close_time < now as i64));
            match last {
                Some(last) if full => cursor = last as u64 + interval.millis(),
                _ => return rows,
            }
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let _guard = self.runtime.enter();
        self.server.take();
    }
}

pub(crate) fn scenario(extra: &str) -> String {
    format!(
        "seed: 3\nclock: {{now: {NOW}}}\n{extra}\nmarket:\n  simulate:\n    genesis: 2025-01-01\n    assets:\n      - {{base: BTC, price: 42000, beta: 1.0, vol: 0.12}}\n      - {{base: ETH, price: 2300, beta: 1.2, vol: 0.3}}\n      - {{base: SOL, price: 100, beta: 1.5, vol: 0.6, listed: 2025-02-20}}\n"
    )
}

/// A pipeline: discover (+ rate_limits) -> collect, against `url`.
pub(crate) fn exchange_pipeline(url: &str, collect_with: &str, source_extra: &str) -> String {
    format!(
        "name: x\nsources:\n  ex:\n    api: binance-futures\n    base_url: {url}\n{source_extra}\nstages:\n  discover:\n    kind: discover\n    with: {{source: ex}}\n  rate_limits:\n    kind: rate_limits\n    with: {{source: ex, probes: 5}}\n  collect:\n    kind: collect\n    needs: [discover, rate_limits]\n    with:\n      source: ex\n{collect_with}"
    )
}

pub(crate) fn run(project: &Project) -> crate::common::Run {
    let run = project.run(&["run", "pipelines/x.yaml", "--json"]);
    assert!(
        run.code == 0,
        "run failed ({}):\n{}\n{}",
        run.code,
        run.stdout,
        run.stderr
    );
    run
}

/// Every candle stored in the lake for `symbol`/`interval`, in part order.
fn lake_rows(project: &Project, source: &str, interval: &str, symbol: &str) -> Vec<Kline> {
    crate::common::lake_bars(project, "klines", source, interval, symbol)
}

fn part_files(project: &Project, source: &str, interval: &str, symbol: &str) -> Vec<PathBuf> {
    let dir = project.path().join(format!(
        "data/lake/klines/source={source}/interval={interval}/symbol={symbol}"
    ));
    asterflow::market::lake::parts(&dir)
        .unwrap()
        .into_iter()
        .map(|part| part.path)
        .collect()
}

/// The stage's committed output directory, from `--json`.
pub(crate) fn output_dir(project: &Project, run: &crate::common::Run, stage: &str) -> PathBuf {
    let stages = run.json()["stages"].as_array().unwrap().clone();
    let entry = stages.iter().find(|s| s["id"] == stage).unwrap();
    let output = entry["output"]
        .as_str()
        .unwrap_or_else(|| panic!("no output for {stage}: {entry}"));
    project.path().join(output)
}

pub(crate) fn report(project: &Project, run: &crate::common::Run) -> serde_json::Value {
    let path = output_dir(project, run, "collect").join("collection_report.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Stored candles equal the exchange's closed candles over the same span, strictly increasing,
/// none still open; returns how many.
fn assert_matches_exchange(
    project: &Project,
    exchange: &Exchange,
    interval: &str,
    symbol: &str,
) -> usize {
    let rows = lake_rows(project, "ex", interval, symbol);
    assert!(!rows.is_empty(), "no rows for {symbol} {interval}");
    assert!(
        rows.windows(2)
            .all(|pair| pair[0].open_time < pair[1].open_time),
        "{symbol} {interval}: duplicate or unordered candles"
    );
    let now = exchange.server().now_ms() as i64;
    assert!(
        rows.iter().all(|k| k.close_time < now),
        "a still-open candle was stored"
    );
    let truth = exchange.truth(
        symbol,
        interval,
        rows[0].open_time,
        rows.last().unwrap().open_time,
    );
    assert_eq!(rows.len(), truth.len(), "{symbol} {interval}: row count");
    assert!(
        rows == truth,
        "{symbol} {interval}: stored candles differ from the exchange's"
    );
    // The newest closed candle is there.
    let step = Interval::parse(interval).unwrap().millis() as i64;
    assert_eq!(rows.last().unwrap().open_time, (now - step) / step * step);
    rows.len()
}

#[test]
fn paginates_across_page_boundaries() {
    let exchange = Exchange::start(&scenario(""));
    let project = Project::new();
    project.write(
        "pipelines/x.yaml",
        &exchange_pipeline(
            exchange.url(),
            "      intervals: [1h, 4h]\n      history: 20d\n      page_size: 100\n",
            "",
        ),
    );
    let first = run(&project);
    for symbol in ["BTCUSDT", "ETHUSDT"] {
        // 20 days of hours: 480 candles over 5 pages of 100.
        let rows = assert_matches_exchange(&project, &exchange, "1h", symbol);
        assert_eq!(rows, 480, "{symbol}");
        assert_matches_exchange(&project, &exchange, "4h", symbol);
    }
    // SOL listed 2025-02-20: its history starts there, not 20 days back.
    let sol = lake_rows(&project, "ex", "1h", "SOLUSDT");
    assert_eq!(sol[0].open_time, 1_740_009_600_000);
    let report = report(&project, &first);
    let btc = report["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["symbol"] == "BTCUSDT" && p["interval"] == "1h")
        .unwrap()
        .clone();
    assert_eq!(btc["new_rows"], 480);
    assert_eq!(btc["requests"], 5, "{btc}");
    assert_eq!(report["provenance"], "simulated");
    let stats = exchange.server().stats();
    assert_eq!((stats.rate_limited, stats.banned), (0, 0));
    // The lake listing names every part with its digest.
    let listing: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(output_dir(&project, &first, "collect").join("lake.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(listing["provenance"], serde_json::json!(["simulated"]));
    // Two intervals of klines for each of three symbols, and their funding.
    let parts = listing["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 9);
    assert_eq!(
        parts
            .iter()
            .filter(|part| part["table"] == "funding")
            .count(),
        3
    );
    assert_eq!(listing["tables"], serde_json::json!(["funding", "klines"]));
}

#[test]
fn incremental_rerun_fetches_only_new_candles() {
    let project = Project::new();
    let first_exchange = Exchange::start(&scenario(""));
    let collect_with = "      intervals: [1h]\n      history: 10d\n";
    project.write(
        "pipelines/x.yaml",
        &exchange_pipeline(first_exchange.url(), collect_with, ""),
    );
    run(&project);
    let before = lake_rows(&project, "ex", "1h", "BTCUSDT");
    let old_parts = part_files(&project, "ex", "1h", "BTCUSDT");
    let old_bytes = std::fs::read(&old_parts[0]).unwrap();
    drop(first_exchange);

    // Two days later: the same market, its clock moved on.
    let later = scenario("").replace(NOW, "2025-03-03T00:30:00Z");
    let exchange = Exchange::start(&later);
    project.write(
        "pipelines/x.yaml",
        &exchange_pipeline(exchange.url(), collect_with, ""),
    );
    let second = run(&project);
    let after = lake_rows(&project, "ex", "1h", "BTCUSDT");
    assert_eq!(after.len(), before.len() + 48, "exactly the 48 new hours");
    assert_eq!(&after[..before.len()], &before[..], "old candles untouched");
    assert_matches_exchange(&project, &exchange, "1h", "BTCUSDT");
    let new_parts = part_files(&project, "ex", "1h", "BTCUSDT");
    assert_eq!(new_parts.len(), 2, "one new part");
    assert_eq!(
        std::fs::read(&old_parts[0]).unwrap(),
        old_bytes,
        "parts are never rewritten"
    );
    let report = report(&project, &second);
    for partition in report["partitions"].as_array().unwrap() {
        if partition["symbol"] == "BTCUSDT" && partition["table"] == "klines" {
            assert_eq!(partition["new_rows"], 48);
            assert_eq!(partition["requests"], 1, "{partition}");
        }
    }

    // A longer history: the two missing days are backfilled as one new part, nothing twice.
    project.write(
        "pipelines/x.yaml",
        &exchange_pipeline(
            exchange.url(),
            "      intervals: [1h]\n      history: 14d\n",
            "",
        ),
    );
    let backfill = run(&project);
    let grown = lake_rows(&project, "ex", "1h", "BTCUSDT");
    assert_eq!(grown.len(), after.len() + 48, "{}", backfill.stderr);
    assert_matches_exchange(&project, &exchange, "1h", "BTCUSDT");
    assert_eq!(part_files(&project, "ex", "1h", "BTCUSDT").len(), 3);

    // Nothing new: a rerun writes no part and fetches nothing.
    project.write(
        "pipelines/x.yaml",
        &exchange_pipeline(
            exchange.url(),
            "      intervals: [1h]\n      history: 14d\n      concurrency: 2\n",
            "",
        ),
    );
    let third = run(&project);
    assert_eq!(report_of(&project, &third)["new_rows"], 0);
    assert_eq!(part_files(&project, "ex", "1h", "BTCUSDT").len(), 3);
}

fn report_of(project: &Project, run: &crate::common::Run) -> serde_json::Value {
    report(project, run)
}

#[test]
fn interrupted_collection_resumes_where_it_stopped() {
    // Slow pages, so the run is caught in the middle.
    let exchange = Exchange::start(&scenario("faults: {latency: 40ms}"));
    let project = Project::new();
    let collect_with =
        "      intervals: [1h]\n      history: 60d\n      page_size: 50\n      concurrency: 1\n";
    project.write(
        "pipelines/x.yaml",
        &exchange_pipeline(exchange.url(), collect_with, ""),
    );
    let mut child = project.spawn(&["run", "pipelines/x.yaml"]);
    assert!(
        wait_for(Duration::from_secs(30), || exchange
            .server()
            .stats()
            .klines_requests
            >= 20),
        "collect never got going"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let stopped_at = exchange.server().stats().klines_requests;
    let partial: usize = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
        .iter()
        .map(|s| lake_rows(&project, "ex", "1h", s).len())
        .sum();
    assert!(
        partial > 0,
        "what was fetched before the interruption is kept"
    );

    let resumed = run(&project);
    let resumed_requests = exchange.server().stats().klines_requests - stopped_at;
    let mut total_pages = 0;
    for symbol in ["BTCUSDT", "ETHUSDT", "SOLUSDT"] {
        let rows = assert_matches_exchange(&project, &exchange, "1h", symbol);
        total_pages += rows.div_ceil(50) as u64;
    }
    assert!(
        resumed_requests < total_pages,
        "the rerun fetched {resumed_requests} pages; from scratch takes {total_pages}"
    );
    assert_eq!(report(&project, &resumed)["rate_limited"], 0);
}

fn collect_under_faults(
    faults: &str,
    source_extra: &str,
) -> (Project, Exchange, serde_json::Value) {
    let exchange = Exchange::start(&scenario(faults));
    let project = Project::new();
    project.write(
        "pipelines/x.yaml",
        &exchange_pipeline(
            exchange.url(),
            "      intervals: [1h, 1d]\n      history: 30d\n      page_size: 120\n",
            source_extra,
        ),
    );
    let run = run(&project);
    let report = report(&project, &run);
    for symbol in ["BTCUSDT", "ETHUSDT", "SOLUSDT"] {
        assert_matches_exchange(&project, &exchange, "1h", symbol);
        assert_matches_exchange(&project, &exchange, "1d", symbol);
    }
    (project, exchange, report)
}

#[test]
fn rate_limit_bursts_with_retry_after_are_waited_out_without_a_ban() {
    let (_project, exchange, report) = collect_under_faults("faults: {rate_limit_every: 6}", "");
    let stats = exchange.server().stats();
    assert!(stats.rate_limited > 0, "the scenario sent 429s");
    assert_eq!(stats.banned, 0, "a 418 means the client ignored a 429");
    assert!(report["rate_limited"].as_u64().unwrap() > 0);
}

#[test]
fn rate_limit_bursts_without_retry_after_wait_for_the_next_window() {
    let (_project, exchange, _) = collect_under_faults(
        "limits: {request_weight: {interval: SECOND, interval_num: 2, limit: 1000}, retry_after: false}\nfaults: {rate_limit_every: 9}",
        "",
    );
    let stats = exchange.server().stats();
    assert!(stats.rate_limited > 0);
    assert_eq!(stats.banned, 0);
}

#[test]
fn a_declared_ten_second_style_window_is_obeyed_without_429s() {
    // 12 weight per 2 seconds, header X-MBX-USED-WEIGHT-2s: the collection needs several windows.
    let started = Instant::now();
    let (_project, exchange, report) = collect_under_faults(
        "limits: {request_weight: {interval: SECOND, interval_num: 2, limit: 12}}",
        "",
    );
    let stats = exchange.server().stats();
    assert_eq!((stats.rate_limited, stats.banned), (0, 0), "{stats:?}");
    let windows = stats.weight.div_ceil(12);
    assert!(
        windows >= 3,
        "the test should need several windows ({} weight)",
        stats.weight
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2 * (windows - 2)),
        "{} weight in {:?} at 12 per 2 s",
        stats.weight,
        started.elapsed()
    );
    assert_eq!(report["budget"]["window_ms"], 2000);
}

#[test]
fn server_errors_and_truncated_bodies_are_retried_to_identical_data() {
    let (_project, exchange, report) = collect_under_faults(
        "faults: {error_rate: 0.2, truncate_rate: 0.2}",
        "    max_retries: 12\n",
    );
    let stats = exchange.server().stats();
    assert!(
        stats.injected_errors > 0 && stats.truncated > 0,
        "{stats:?}"
    );
    assert!(report["retries"].as_u64().unwrap() > 0);
}

#[test]
fn a_ban_aborts_the_stage_with_a_clear_message() {
    let exchange = Exchange::start(&scenario("faults: {ban_after_requests: 12}"));
    let project = Project::new();
    // Nine partitions: after the first 418, none of them may send again.
    project.write(
        "pipelines/x.yaml",
        &exchange_pipeline(
            exchange.url(),
            "      intervals: [1h, 4h, 1d]\n      history: 60d\n      page_size: 50\n      concurrency: 3\n",
            "",
        ),
    );
    let run = project.run(&["run", "pipelines/x.yaml"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("banned this IP (HTTP 418)") && run.stderr.contains("wait it out"),
        "{}",
        run.stderr
    );
    let stats = exchange.server().stats();
    assert!(stats.banned >= 1);
    assert!(stats.banned <= 3, "kept sending after the ban: {stats:?}");
}

#[test]
fn hostile_symbol_names_are_refused_and_nothing_leaves_the_lake() {
    let exchange = Exchange::start(&scenario("faults: {hostile_symbols: true}"));
    let project = Project::new();
    project.write(
        "pipelines/x.yaml",
        &exchange_pipeline(
            exchange.url(),
            "      intervals: [1d]\n      history: 20d\n",
            "",
        ),
    );
    let before: BTreeSet<PathBuf> = all_files(project.path());
    let run = run(&project);
    assert!(
        run.stderr.contains("refused 10 symbol name(s)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("etc/passwd"),
        "the warning names them (escaped)"
    );
    let universe =
        std::fs::read_to_string(output_dir(&project, &run, "discover").join("universe.csv"))
            .unwrap();
    let symbols: Vec<&str> = universe
        .lines()
        .skip(1)
        .map(|line| line.split(',').next().unwrap())
        .collect();
    assert_eq!(symbols, ["BTCUSDT", "ETHUSDT", "SOLUSDT"]);
    for file in all_files(project.path()).difference(&before) {
        let relative = file
            .strip_prefix(project.path())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            relative.starts_with("runs/")
                || ["klines", "funding"]
                    .iter()
                    .any(|table| relative.starts_with(&format!("data/lake/{table}/source=ex/"))),
            "wrote outside the lake and the run root: {relative}"
        );
        assert!(
            relative
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/=._-".contains(c)),
            "odd path {relative:?}"
        );
    }
    assert!(!project.path().join("pwned").exists());
}

fn all_files(root: &Path) -> BTreeSet<PathBuf> {
    let mut files = BTreeSet::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            } else {
                files.insert(entry.path());
            }
        }
    }
    files
}

#[test]
fn binance_dump_files_import_without_duplicates() {
    let project = Project::new();
    let hour = 3_600_000i64;
    let start = 1_735_689_600_000i64; // 2025-01-01
    let line = |i: i64, scale: i64| {
        let open = start + i * hour;
        format!(
            "{},{}.5,{}.9,{}.1,{}.7,12.5,{},900.0,42,6.0,450.0,0\n",
            open * scale,
            100 + i,
            101 + i,
            99 + i,
            100 + i,
            (open + hour - 1) * scale
        )
    };
    let header = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore\n";
    let mut day1 = header.to_owned();
    (0..24).for_each(|i| day1.push_str(&line(i, 1)));
    // An older file without a header and in microseconds, overlapping by two hours.
    let mut day2 = String::new();
    (22..48).for_each(|i| day2.push_str(&line(i, 1000)));
    project.write("dumps/BTCUSDT/1h/BTCUSDT-1h-2025-01-01.csv", &day1);
    project.write("dumps/BTCUSDT/1h/BTCUSDT-1h-2025-01-02.csv", &day2);
    project.write("dumps/evil/1h/bad name-1h-2025-01-01.csv", &day1);
    project.write(
        "pipelines/x.yaml",
        "name: x\nsources:\n  vision:\n    api: binance-dump\n    path: dumps\nstages:\n  collect:\n    kind: collect\n    with: {source: vision, intervals: [1h], start: 2025-01-01}\n",
    );
    let first = run(&project);
    let rows = lake_rows(&project, "vision", "1h", "BTCUSDT");
    assert_eq!(rows.len(), 48);
    assert!(
        rows.windows(2)
            .all(|p| p[1].open_time - p[0].open_time == hour)
    );
    assert_eq!(
        rows[47].close_time,
        start + 48 * hour - 1,
        "microseconds were detected"
    );
    assert_eq!(report(&project, &first)["provenance"], "binance-dump");
    // Reimporting the same files adds nothing.
    project.write(
        "pipelines/x.yaml",
        "name: x\nsources:\n  vision:\n    api: binance-dump\n    path: dumps\nstages:\n  collect:\n    kind: collect\n    with: {source: vision, intervals: [1h], start: 2025-01-01, concurrency: 1}\n",
    );
    run(&project);
    assert_eq!(lake_rows(&project, "vision", "1h", "BTCUSDT").len(), 48);
    // The same files through an object-store URL, as a second source.
    let url = format!("file://{}/dumps/", project.path().display());
    project.write(
        "pipelines/x.yaml",
        &format!(
            "name: x\nsources:\n  store:\n    api: binance-dump\n    url: {url}\nstages:\n  collect:\n    kind: collect\n    with: {{source: store, intervals: [1h], start: 2025-01-01}}\n"
        ),
    );
    run(&project);
    assert_eq!(lake_rows(&project, "store", "1h", "BTCUSDT").len(), 48);
    project.write(
        "pipelines/x.yaml",
        "name: x\nsources:\n  store:\n    api: binance-dump\n    url: gs://bucket/klines/\nstages:\n  collect:\n    kind: collect\n    with: {source: store}\n",
    );
    let refused = project.run(&["run", "pipelines/x.yaml", "--validate-only"]);
    assert_eq!(refused.code, 2);
    assert!(
        refused.stderr.contains("pipelines/x.yaml:5:10")
            && refused
                .stderr
                .contains("this build cannot read `gs://bucket/klines/`"),
        "{}",
        refused.stderr
    );
    assert!(
        !project
            .path()
            .join("data/lake/klines/source=vision/interval=1h/symbol=bad name")
            .exists()
    );
}

/// The repository's own pipelines and scenario, copied into a temp project.
#[test]
fn the_aster_pipeline_validates_without_network() {
    let project = crate::common::shipped_project();
    let run = project.run(&["run", "pipelines/aster.yaml", "--validate-only"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("is valid: 10 stages"), "{}", run.stdout);
    assert!(!project.path().join("data/lake").exists());
}

/// Issue 8's first-run experience: the shipped demo end to end, then again (all cache hits),
/// then from `rate_limits` (it and what it invalidates run again).
#[test]
fn the_demo_pipeline_runs_on_the_in_process_replay_and_start_from_rate_limits_works() {
    let project = crate::common::shipped_project();
    let first = project.run(&["run", "pipelines/demo.yaml", "--json"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(
        first.statuses().iter().filter(|(_, s)| s == "ran").count(),
        10
    );
    let listing: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(output_dir(&project, &first, "collect").join("lake.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(listing["provenance"], serde_json::json!(["simulated"]));
    // The demo collects funding, and its backtest pays it.
    let metrics: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(output_dir(&project, &first, "backtest").join("metrics.json"))
            .unwrap(),
    )
    .unwrap();
    let funding = metrics["funding_paid"].as_f64().unwrap();
    assert!(funding != 0.0 && funding.is_finite(), "{metrics}");
    // The newest bar's signals went into the paper book.
    let bars = project.path().join("data/paper/demo/signals/bars");
    assert_eq!(
        std::fs::read_dir(&bars).unwrap().count(),
        1,
        "{}",
        bars.display()
    );
    // Simulated data keeps its banner downstream: the features say where they come from.
    let marker: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(output_dir(&project, &first, "features").join("provenance.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(marker["synthetic"], true);
    assert!(
        first.stderr.contains("warning: features: SYNTHETIC DATA"),
        "{}",
        first.stderr
    );
    let rerun = project.run(&["run", "pipelines/demo.yaml", "--json"]);
    assert!(
        rerun.statuses().iter().all(|(_, s)| s == "cached"),
        "{}",
        rerun.stdout
    );
    let again = project.run(&[
        "run",
        "pipelines/demo.yaml",
        "--json",
        "--start-from",
        "rate_limits",
    ]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.status_of("rate_limits"), "ran");
    assert_eq!(again.status_of("collect"), "ran");
    assert_ne!(again.status_of("discover"), "ran");
    // collect re-ran but found nothing new: its lake.json is byte-identical (the report files
    // are left out of the digest), so validate is a cache hit.
    assert_eq!(again.status_of("validate"), "cached", "{}", again.stdout);
}

#[test]
fn source_mistakes_are_located() {
    let project = Project::new();
    project.write(
        "pipelines/x.yaml",
        "name: x\nsources:\n  ex:\n    api: binance-futures\n    base_url: ftp://example.com\nstages:\n  discover:\n    kind: discover\n    with: {source: nope}\n",
    );
    let run = project.run(&["run", "pipelines/x.yaml", "--validate-only"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("pipelines/x.yaml:5:15"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("is not http(s)"), "{}", run.stderr);
    assert!(
        run.stderr.contains("unknown source `nope`"),
        "{}",
        run.stderr
    );

    project.write(
        "data/scenarios/s.yaml",
        "market:\n  simulate:\n    assets:\n      - {base: BTC, price: 1, vol: 0.1, listed: yesterday}\n",
    );
    project.write(
        "pipelines/x.yaml",
        "name: x\nsources:\n  ex:\n    api: binance-futures\n    replay: {scenario: data/scenarios/s.yaml}\nstages:\n  discover:\n    kind: discover\n    with: {source: ex}\n",
    );
    let run = project.run(&["run", "pipelines/x.yaml", "--validate-only"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("data/scenarios/s.yaml:4:"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("invalid time `yesterday`"),
        "{}",
        run.stderr
    );
}

#[test]
fn recorded_files_are_replayed_as_is_and_labelled_recorded() {
    let project = Project::new();
    let hour = 3_600_000i64;
    let start = 1_735_689_600_000i64; // 2025-01-01
    let mut csv = String::new();
    for i in 0..72 {
        let open = start + i * hour;
        csv.push_str(&format!(
            "{open},{p}.25,{h}.5,{l}.125,{p}.75,3.5,{},350.0,7,1.5,150.0,0\n",
            open + hour - 1,
            p = 200 + i,
            h = 201 + i,
            l = 199 + i
        ));
    }
    project.write("data/replay/ETHUSDT-1h-2025-01.csv", &csv);
    project.write(
        "data/scenarios/recorded.yaml",
        "clock: {now: 2025-01-04T00:30:00Z}\nmarket: {files: data/replay}\n",
    );
    project.write(
        "pipelines/x.yaml",
        "name: x\nsources:\n  rec:\n    api: binance-futures\n    replay: {scenario: data/scenarios/recorded.yaml}\nstages:\n  discover:\n    kind: discover\n    with: {source: rec}\n  collect:\n    kind: collect\n    needs: [discover]\n    with: {source: rec, intervals: [1h], start: 2025-01-01}\n",
    );
    let run = run(&project);
    let rows = lake_rows(&project, "rec", "1h", "ETHUSDT");
    assert_eq!(rows.len(), 72, "{}", run.stderr);
    let expected = asterflow::market::exchange::dump::parse_kline_csv(&csv).unwrap();
    assert!(rows == expected, "the recorded candles come back unchanged");
    assert_eq!(report(&project, &run)["provenance"], "recorded");
}

#[test]
fn the_replay_exchange_command_serves_the_exchange_endpoints() {
    use std::io::{BufRead, Read, Write};
    let project = crate::common::shipped_project();
    let mut child = project
        .command(&["replay-exchange", "--scenario", "data/scenarios/demo.yaml"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains("13 symbols, simulated data, weight limit 2400 per 1 minute"),
        "{line}"
    );
    let address = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let get = |path: &str| {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    };
    let klines = get("/fapi/v1/klines?symbol=BTCUSDT&interval=4h&limit=3");
    assert!(klines.starts_with("HTTP/1.1 200"), "{klines}");
    assert!(
        klines.to_lowercase().contains("x-mbx-used-weight-1m: 1"),
        "{klines}"
    );
    assert!(
        klines
            .to_lowercase()
            .contains("x-asterflow-provenance: simulated")
    );
    let bad = get("/fapi/v1/klines?symbol=NOPE&interval=1h");
    assert!(
        bad.starts_with("HTTP/1.1 400") && bad.contains("-1121"),
        "{bad}"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("served 2 requests"));
}

#[test]
fn recorded_non_usdt_pairs_are_selected_by_their_quote_asset() {
    let project = Project::new();
    let hour = 3_600_000i64;
    let start = 1_735_689_600_000i64; // 2025-01-01
    let mut csv = String::new();
    for i in 0..48 {
        let open = start + i * hour;
        csv.push_str(&format!(
            "{open},0.25,0.26,0.24,0.25,100.0,{},25.0,7,50.0,12.5,0\n",
            open + hour - 1
        ));
    }
    for symbol in ["ADABTC", "ETHBTC", "BTCUSDT", "SOLFDUSD"] {
        project.write(&format!("data/replay/{symbol}-1h-2025-01.csv"), &csv);
    }
    project.write(
        "data/scenarios/recorded.yaml",
        "clock: {now: 2025-01-03T00:30:00Z}\nmarket: {files: data/replay}\n",
    );
    project.write(
        "pipelines/x.yaml",
        "name: x\nsources:\n  rec:\n    api: binance-futures\n    replay: {scenario: data/scenarios/recorded.yaml}\nstages:\n  discover:\n    kind: discover\n    with: {source: rec, quote_assets: [BTC, FDUSD]}\n",
    );
    let run = run(&project);
    let file = std::fs::File::open(output_dir(&project, &run, "discover").join("universe.parquet"))
        .unwrap();
    let mut selected = Vec::new();
    for batch in parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
    {
        use arrow::array::AsArray;
        let batch = batch.unwrap();
        let symbols = batch.column_by_name("symbol").unwrap().as_string::<i32>();
        let bases = batch
            .column_by_name("base_asset")
            .unwrap()
            .as_string::<i32>();
        let quotes = batch
            .column_by_name("quote_asset")
            .unwrap()
            .as_string::<i32>();
        for row in 0..batch.num_rows() {
            selected.push(format!(
                "{}={}+{}",
                symbols.value(row),
                bases.value(row),
                quotes.value(row)
            ));
        }
    }
    selected.sort();
    assert_eq!(
        selected,
        ["ADABTC=ADA+BTC", "ETHBTC=ETH+BTC", "SOLFDUSD=SOL+FDUSD"]
    );
}
