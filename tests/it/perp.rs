//! Perpetual-futures data (issue 19): the replay exchange's funding, mark, index and premium
//! endpoints (shapes, weights, pagination, errors), their collection into the lake (incremental,
//! resumable, deduplicated, funding schedules recorded, an unserved dataset skipped), funding
//! validation, and the features and backtest that use them.

use std::time::Duration;

use crate::common::{Project, wait_for};
use crate::exchange::{Exchange, exchange_pipeline, output_dir, report, run, scenario};
use asterflow::market::lake::{LakeListing, Provenance};
use asterflow::market::model::{Dataset, Funding, Interval};

const HOUR: i64 = 3_600_000;

fn funding_rows(project: &Project, symbol: &str) -> Vec<Funding> {
    crate::common::lake_funding(project, "ex", symbol)
}

/// The exchange's settlements of `symbol` from `from` on, up to its clock.
fn funding_truth(exchange: &Exchange, symbol: &str, from: u64) -> Vec<Funding> {
    let now = exchange.server().now_ms();
    exchange
        .server()
        .market()
        .funding(symbol, Some(from), None, 100_000, now)
        .unwrap()
}

#[test]
fn funding_endpoints_have_the_real_shapes_weights_pages_and_errors() {
    let exchange = Exchange::start(&scenario(""));
    // fundingInfo: every symbol's interval, cap and floor; weight 1.
    let (status, used, info) = exchange.get("/fapi/v1/fundingInfo");
    assert_eq!((status, used), (200, Some(1)));
    let info = info.as_array().unwrap();
    assert_eq!(info.len(), 3);
    for row in info {
        let hours = row["fundingIntervalHours"].as_i64().unwrap();
        assert!(hours == 4 || hours == 8, "{row}");
        let cap: f64 = row["adjustedFundingRateCap"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let floor: f64 = row["adjustedFundingRateFloor"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(cap > 0.0 && floor == -cap, "{row}");
    }
    // fundingRate: oldest first, strings for rates, a few ms after the hour, weight 1.
    let start = 1_738_368_000_000u64; // 2025-02-01
    let (status, used, page) = exchange.get(&format!(
        "/fapi/v1/fundingRate?symbol=BTCUSDT&startTime={start}&limit=5"
    ));
    assert_eq!((status, used), (200, Some(2)));
    let page = page.as_array().unwrap().clone();
    assert_eq!(page.len(), 5);
    let times: Vec<i64> = page
        .iter()
        .map(|row| row["fundingTime"].as_i64().unwrap())
        .collect();
    assert!(times.windows(2).all(|pair| pair[0] < pair[1]));
    assert!(times[0] >= start as i64);
    for row in &page {
        assert_eq!(row["symbol"], "BTCUSDT");
        let rate: f64 = row["fundingRate"].as_str().unwrap().parse().unwrap();
        assert!(rate.abs() <= 0.02, "{row}");
        let late = row["fundingTime"].as_i64().unwrap() % HOUR;
        assert!(late < 20, "settled {late} ms after the hour: {row}");
    }
    // The next page starts after the last row: no overlap, no gap.
    let (_, _, next) = exchange.get(&format!(
        "/fapi/v1/fundingRate?symbol=BTCUSDT&startTime={}&limit=5",
        times[4] + 1
    ));
    let next_first = next[0]["fundingTime"].as_i64().unwrap();
    let all = funding_truth(&exchange, "BTCUSDT", start);
    assert_eq!(all[5].funding_time, next_first);
    // Without a start: the newest `limit`, ending at or before the clock.
    let (_, _, newest) = exchange.get("/fapi/v1/fundingRate?symbol=BTCUSDT&limit=3");
    let newest = newest.as_array().unwrap();
    assert_eq!(newest.len(), 3);
    assert_eq!(
        newest[2]["fundingTime"].as_i64().unwrap(),
        funding_truth(&exchange, "BTCUSDT", 0)
            .last()
            .unwrap()
            .funding_time
    );
    // Errors: Binance's codes.
    for (query, status, code) in [
        ("/fapi/v1/fundingRate", 400, -1102),
        ("/fapi/v1/fundingRate?symbol=NOPEUSDT", 400, -1121),
        ("/fapi/v1/fundingRate?symbol=BTCUSDT&limit=1001", 400, -1130),
        (
            "/fapi/v1/fundingRate?symbol=BTCUSDT&startTime=x",
            400,
            -1100,
        ),
    ] {
        let (got, _, body) = exchange.get(query);
        assert_eq!(
            (got, body["code"].as_i64()),
            (status, Some(code)),
            "{query}: {body}"
        );
    }
}

#[test]
fn mark_index_and_premium_klines_have_the_kline_layout_and_weights() {
    let exchange = Exchange::start(&scenario("unserved: [premiumIndexKlines]"));
    let served = Exchange::start(&scenario(""));
    let start = 1_738_368_000_000u64;
    let trades = exchange
        .server()
        .market()
        .klines(
            "BTCUSDT",
            Interval::parse("1h").unwrap(),
            Some(start),
            None,
            100,
            exchange.server().now_ms(),
        )
        .unwrap();
    let mut used_before = 0;
    for (endpoint, param) in [("markPriceKlines", "symbol"), ("indexPriceKlines", "pair")] {
        // 100 rows weigh 2, as klines do.
        let (status, used, rows) = exchange.get(&format!(
            "/fapi/v1/{endpoint}?{param}=BTCUSDT&interval=1h&startTime={start}&limit=100"
        ));
        assert_eq!(status, 200, "{endpoint}: {rows}");
        assert_eq!(used, Some(used_before + 2), "{endpoint}");
        used_before += 2;
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), 100);
        for (row, trade) in rows.iter().zip(&trades) {
            let row = row.as_array().unwrap();
            assert_eq!(row.len(), 12, "{endpoint}: {row:?}");
            assert_eq!(row[0].as_i64().unwrap(), trade.open_time);
            assert_eq!(row[6].as_i64().unwrap(), trade.close_time);
            assert_eq!(row[5], "0", "volume fields are zero");
            let close: f64 = row[4].as_str().unwrap().parse().unwrap();
            // A small spread from the last price.
            assert!((close / trade.close - 1.0).abs() < 0.01, "{endpoint}");
        }
    }
    // Binance's indexPriceKlines takes the pair, not the symbol.
    let (status, _, body) =
        exchange.get("/fapi/v1/indexPriceKlines?symbol=BTCUSDT&interval=1h&limit=5");
    assert_eq!((status, body["code"].as_i64()), (400, Some(-1102)));
    // An exchange that does not serve premium index klines answers 404, costing nothing.
    let (status, used, _) =
        exchange.get("/fapi/v1/premiumIndexKlines?symbol=BTCUSDT&interval=1h&limit=5");
    assert_eq!((status, used), (404, Some(0)));
    // One that does: signed fractions around zero, paged like klines.
    let (status, _, rows) = served.get(&format!(
        "/fapi/v1/premiumIndexKlines?symbol=BTCUSDT&interval=1h&startTime={start}&limit=3"
    ));
    assert_eq!(status, 200);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let (_, _, next) = served.get(&format!(
        "/fapi/v1/premiumIndexKlines?symbol=BTCUSDT&interval=1h&startTime={}&limit=3",
        rows[2][0].as_i64().unwrap() + 1
    ));
    assert_eq!(
        next[0][0].as_i64().unwrap(),
        rows[2][0].as_i64().unwrap() + HOUR
    );
    for row in rows {
        let close: f64 = row[4].as_str().unwrap().parse().unwrap();
        assert!(close.abs() < 0.03, "premium {close}");
    }
}

#[test]
fn funding_and_mark_prices_are_collected_incrementally_with_their_schedules() {
    let project = Project::new();
    let collect_with = "      datasets: [klines, funding, mark_klines, index_klines, premium_klines]\n      intervals: [1h]\n      history: 10d\n";
    let first_exchange = Exchange::start(&scenario("unserved: [premiumIndexKlines]"));
    project.write(
        "pipelines/x.yaml",
        &exchange_pipeline(first_exchange.url(), collect_with, ""),
    );
    let first = run(&project);
    // The unserved dataset: skipped with one warning naming it, not a failure.
    let warnings: Vec<&str> = first
        .stderr
        .lines()
        .filter(|line| line.contains("skipping premium_klines"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", first.stderr);
    assert!(
        warnings[0].contains("premiumIndexKlines"),
        "{}",
        warnings[0]
    );
    let schedules = first_exchange.server().market().funding_schedules();
    let start = asterflow::market::replay::parse_time("2025-02-19T00:30:00Z").unwrap();
    let mut before = Vec::new();
    for schedule in &schedules {
        let stored = funding_rows(&project, &schedule.symbol);
        let truth = funding_truth(&first_exchange, &schedule.symbol, start);
        let times = |rows: &[Funding]| rows.iter().map(|r| r.funding_time).collect::<Vec<_>>();
        assert_eq!(times(&stored), times(&truth), "{}", schedule.symbol);
        assert!(!stored.is_empty());
        for row in &stored {
            // The schedule fundingInfo stated is recorded with every rate.
            assert_eq!(row.interval_hours, schedule.interval_hours);
            assert_eq!(row.rate_cap, schedule.cap);
            assert_eq!(row.rate_floor, schedule.cap.map(|cap| -cap));
        }
        before.push((schedule.symbol.clone(), stored));
    }
    let listing: LakeListing = serde_json::from_str(
        &std::fs::read_to_string(output_dir(&project, &first, "collect").join("lake.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        listing.tables,
        ["funding", "index_klines", "klines", "mark_klines"]
    );
    drop(first_exchange);

    // Two days later: only the new settlements, one request each, the old parts untouched.
    let later = scenario("unserved: [premiumIndexKlines]")
        .replace(crate::exchange::NOW, "2025-03-03T00:30:00Z");
    let exchange = Exchange::start(&later);
    project.write(
        "pipelines/x.yaml",
        &exchange_pipeline(exchange.url(), collect_with, ""),
    );
    let second = run(&project);
    for (symbol, old) in &before {
        let stored = funding_rows(&project, symbol);
        assert_eq!(
            &stored[..old.len()],
            &old[..],
            "{symbol}: old rows untouched"
        );
        let truth = funding_truth(&exchange, symbol, start);
        assert_eq!(stored.len(), truth.len(), "{symbol}");
        let hours = old[0].interval_hours as usize;
        assert_eq!(stored.len() - old.len(), 48 / hours, "{symbol}");
    }
    for partition in report(&project, &second)["partitions"].as_array().unwrap() {
        if partition["table"] == "funding" {
            assert_eq!(partition["requests"], 1, "{partition}");
        }
        if partition["table"] == "mark_klines" {
            assert_eq!(partition["new_rows"], 48, "{partition}");
        }
    }
    // Nothing new: nothing fetched twice (a changed param, so the stage runs again).
    project.write(
        "pipelines/x.yaml",
        &exchange_pipeline(
            exchange.url(),
            &format!("{collect_with}      concurrency: 3\n"),
            "",
        ),
    );
    let third = run(&project);
    let third = report(&project, &third);
    assert_eq!(third["new_rows"], 0, "{third:#}");
    // Asked once per funding series, for what settled after its newest row; klines only
    // when a bar has closed since.
    for partition in third["partitions"].as_array().unwrap() {
        let expected = u64::from(partition["table"] == "funding");
        assert_eq!(partition["requests"], expected, "{partition}");
    }
}

#[test]
fn an_interrupted_funding_collection_resumes_without_duplicates() {
    let exchange = Exchange::start(&scenario("faults: {latency: 40ms}"));
    let project = Project::new();
    let collect_with = "      datasets: [funding]\n      history: 50d\n      page_size: 10\n      concurrency: 1\n";
    project.write(
        "pipelines/x.yaml",
        &exchange_pipeline(exchange.url(), collect_with, ""),
    );
    let mut child = project.spawn(&["run", "pipelines/x.yaml"]);
    assert!(
        wait_for(Duration::from_secs(30), || exchange
            .server()
            .stats()
            .funding_requests
            >= 12),
        "collect never got going"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let stopped_at = exchange.server().stats().funding_requests;
    let symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"];
    let partial: usize = symbols
        .iter()
        .map(|s| funding_rows(&project, s).len())
        .sum();
    assert!(
        partial > 0,
        "what was fetched before the interruption is kept"
    );

    run(&project);
    let resumed = exchange.server().stats().funding_requests - stopped_at;
    let start = asterflow::market::replay::parse_time("2025-01-10T00:30:00Z").unwrap();
    let mut pages = 0;
    for symbol in symbols {
        let stored = funding_rows(&project, symbol);
        let truth = funding_truth(&exchange, symbol, start);
        assert_eq!(stored, truth, "{symbol}: every settlement once, in order");
        pages += stored.len().div_ceil(10) as u64;
    }
    assert!(
        resumed < pages,
        "the rerun fetched {resumed} pages; from scratch takes {pages}"
    );
}

/// A lake of one symbol: clean hourly klines and the given funding series, listed for a
/// validate stage.
fn funding_lake(project: &Project, funding: &[Funding]) {
    let data = project.path().join("data");
    let rows = crate::validate::clean_rows(45);
    crate::validate::write(project, "ex", "BTCUSDT", &rows, "exchange");
    let provenance = Provenance {
        source: "ex".into(),
        base_url: "https://fapi.example".into(),
        fetched_at_ms: 0,
        kind: "exchange".into(),
    };
    let dir = asterflow::market::lake::table_partition_dir(
        &data,
        Dataset::Funding,
        "ex",
        None,
        "BTCUSDT",
    )
    .unwrap();
    asterflow::market::lake::write_funding_part(&dir, "BTCUSDT", funding, &provenance).unwrap();
    let mut parts = asterflow::market::lake::describe_partition(
        &data,
        "ex",
        Interval::parse("1h").unwrap(),
        "BTCUSDT",
    )
    .unwrap();
    parts.extend(
        asterflow::market::lake::describe_table_partition(
            &data,
            Dataset::Funding,
            "ex",
            None,
            "BTCUSDT",
        )
        .unwrap(),
    );
    project.write(
        "fixtures/lake.json",
        &serde_json::to_string_pretty(&LakeListing::new(parts)).unwrap(),
    );
    project.write(
        "pipelines/v.yaml",
        "name: v\nstages:\n  lake:\n    kind: command\n    with:\n      run: cp \"$ASTERFLOW_PROJECT_ROOT/fixtures/lake.json\" lake.json\n      outputs: [lake.json]\n      files: [fixtures/lake.json]\n  validate:\n    kind: validate\n    needs: [lake]\n",
    );
}

/// 40 days of 8-hourly settlements ending before now, each a few ms late, inside the cap.
fn settlements() -> Vec<Funding> {
    let now = asterflow::util::time::now_ms() as i64;
    let last = now / (8 * HOUR) * (8 * HOUR) - 8 * HOUR;
    (0..120)
        .map(|k| Funding {
            funding_time: last - (119 - k) * 8 * HOUR + k % 9,
            funding_rate: 0.0001 * ((k % 5) as f64 - 1.0),
            interval_hours: 8,
            rate_cap: Some(0.02),
            rate_floor: Some(-0.02),
        })
        .collect()
}

fn funding_verdict(funding: &[Funding]) -> serde_json::Value {
    let project = Project::new();
    funding_lake(&project, funding);
    let run = project.run(&["run", "pipelines/v.yaml", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.output_json(&project, "validate", "validation_report.json");
    let datasets = report["datasets"].as_array().unwrap();
    let klines = datasets.iter().find(|d| d["table"] == "klines").unwrap();
    assert_eq!(klines["passed"], true, "{klines}");
    datasets
        .iter()
        .find(|d| d["table"] == "funding")
        .unwrap()
        .clone()
}

#[test]
fn late_funding_passes_and_gaps_and_out_of_cap_rates_are_quarantined() {
    // Milliseconds late, as real settlements are: passes.
    let clean = funding_verdict(&settlements());
    assert_eq!(clean["passed"], true, "{clean}");
    assert_eq!(clean["score"], 1.0);

    // Two settlements missing: quarantined, naming where.
    let mut gap = settlements();
    let before_gap = gap[59].funding_time;
    gap.drain(60..62);
    let verdict = funding_verdict(&gap);
    assert_eq!(verdict["passed"], false);
    let failure = verdict["failures"][0].as_str().unwrap();
    assert!(
        failure.contains("2 settlement(s) missing")
            && failure.contains(&asterflow::util::time::rfc3339(before_gap as u64)),
        "{failure}"
    );

    // A rate beyond the cap fundingInfo stated: quarantined, naming it.
    let mut capped = settlements();
    capped[30].funding_rate = 0.025;
    let verdict = funding_verdict(&capped);
    assert_eq!(verdict["passed"], false);
    let failure = verdict["failures"][0].as_str().unwrap();
    assert!(
        failure.contains("1 rate(s) outside the cap and floor") && failure.contains("0.025"),
        "{failure}"
    );

    // A settlement two minutes after the hour is off schedule.
    let mut off = settlements();
    off[10].funding_time += 120_000;
    let verdict = funding_verdict(&off);
    assert_eq!(verdict["passed"], false, "{verdict}");
    assert!(
        verdict["failures"][0]
            .as_str()
            .unwrap()
            .contains("off the funding schedule"),
        "{verdict}"
    );
}

/// A project collecting 60 days of 1h, 4h and 1d klines, funding, mark and index prices from a
/// replay exchange, validated, with `features` running `query` (look-ahead guard on).
fn features_project(exchange: &Exchange, query: &str, params: &str) -> Project {
    let project = crate::common::shipped_project();
    project.write("stages/features/under_test.sql", query);
    let pipeline = exchange_pipeline(
        exchange.url(),
        "      datasets: [klines, funding, mark_klines, index_klines]\n      intervals: [1h, 4h, 1d]\n      history: 60d\n",
        "",
    ) + &format!(
        "  validate:\n    kind: validate\n    needs: [collect]\n    with: {{allow_synthetic: true, min_history: 20d}}\n  features:\n    kind: sql\n    needs: [validate]\n    with:\n      query: stages/features/under_test.sql\n      params: {{{params}}}\n      output: features.parquet\n      lookahead_check: true\n"
    );
    project.write("pipelines/x.yaml", &pipeline);
    project
}

#[test]
fn the_guard_catches_a_join_to_the_unclosed_higher_bar_and_passes_the_as_of_join() {
    let exchange = Exchange::start(&scenario(""));
    // The 4h bar containing the row's open: up to three hours of the future.
    let naive = "SELECT k.symbol, k.open_time, h.close AS close_4h\n\
                 FROM klines AS k\n\
                 LEFT JOIN klines AS h ON h.symbol = k.symbol AND h.\"interval\" = '4h'\n\
                   AND h.open_time = k.open_time - k.open_time % 14400000\n\
                 WHERE k.\"interval\" = '1h'\n";
    let project = features_project(&exchange, naive, "");
    let failed = project.run(&["run", "pipelines/x.yaml"]);
    assert_ne!(failed.code, 0, "the naive join passed the guard");
    assert!(
        failed
            .stderr
            .contains("look-ahead in stages/features/under_test.sql")
            && failed.stderr.contains("`close_4h`"),
        "{}",
        failed.stderr
    );
    // As of the last 4h bar closed before the row's close: passes.
    let as_of = naive.replace(
        "h.open_time = k.open_time - k.open_time % 14400000",
        "h.open_time = (k.open_time + 3599999) - (k.open_time + 3599999) % 14400000 - 14400000",
    );
    project.write("stages/features/under_test.sql", &as_of);
    let passed = project.run(&["run", "pipelines/x.yaml"]);
    assert_eq!(passed.code, 0, "{}", passed.stderr);
}

fn lake_klines(
    project: &Project,
    interval: &str,
    symbol: &str,
) -> Vec<asterflow::market::model::Kline> {
    crate::common::lake_bars(project, "klines", "ex", interval, symbol)
}

/// The named float columns of a Parquet file, keyed by (symbol, open_time).
fn feature_values(
    path: &std::path::Path,
    columns: &[&str],
) -> std::collections::BTreeMap<(String, i64), Vec<Option<f64>>> {
    use arrow::array::{Array, AsArray};
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut out = std::collections::BTreeMap::new();
    for batch in reader {
        let batch = batch.unwrap();
        let symbol = arrow::compute::cast(
            batch.column_by_name("symbol").unwrap(),
            &arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let symbol = symbol.as_string::<i32>();
        let time = batch
            .column_by_name("open_time")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int64Type>();
        let values: Vec<_> = columns
            .iter()
            .map(|name| {
                batch
                    .column_by_name(name)
                    .unwrap_or_else(|| panic!("no column {name}"))
                    .as_primitive::<arrow::datatypes::Float64Type>()
                    .clone()
            })
            .collect();
        for row in 0..batch.num_rows() {
            out.insert(
                (symbol.value(row).to_owned(), time.value(row)),
                values
                    .iter()
                    .map(|v| (!v.is_null(row)).then(|| v.value(row)))
                    .collect(),
            );
        }
    }
    out
}

/// The shipped features' multi-timeframe and funding columns against an independent
/// computation: for each 1h row, the 4h and 1d bars are searched for the last one whose close
/// time is before the row's (merge_asof with allow_exact_matches=False), and the last funding
/// settled by the row's close; and, where pandas is installed, `scripts/mtf_parity.py` does
/// the same with `pandas.merge_asof`. The shipped features pass the look-ahead guard.
#[test]
fn multi_timeframe_and_funding_features_match_an_independent_as_of_join() {
    let exchange = Exchange::start(&scenario(""));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = std::fs::read_to_string(root.join("stages/features/features.sql")).unwrap();
    let project = features_project(
        &exchange,
        &shipped,
        "interval: 1h, bar_ms: 3600000, btc: BTCUSDT, eth: ETHUSDT, warmup: 300",
    );
    let run = project.run(&["run", "pipelines/x.yaml", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let output = run.output_of(&project, "features").join("features.parquet");
    let columns = [
        "ret_4h",
        "sma_ratio_20_4h",
        "ret_1d",
        "sma_ratio_20_1d",
        "funding_rate",
        "basis",
    ];
    let features = feature_values(&output, &columns);
    let mut checked = [0usize; 6];
    for symbol in ["BTCUSDT", "ETHUSDT", "SOLUSDT"] {
        let hourly = lake_klines(&project, "1h", symbol);
        let funding = funding_rows(&project, symbol);
        let mark = crate::common::lake_bars(&project, "mark_klines", "ex", "1h", symbol);
        let index = crate::common::lake_bars(&project, "index_klines", "ex", "1h", symbol);
        let higher = |interval: &str| {
            let bars = lake_klines(&project, interval, symbol);
            // (close_time, ret, close / mean of the last 20 closes), in bar order.
            (0..bars.len())
                .map(|i| {
                    let ret = (i > 0).then(|| bars[i].close / bars[i - 1].close - 1.0);
                    let sma = (i >= 19)
                        .then(|| bars[i - 19..=i].iter().map(|b| b.close).sum::<f64>() / 20.0);
                    (bars[i].close_time, ret, sma.map(|s| bars[i].close / s))
                })
                .collect::<Vec<_>>()
        };
        let (h4, d1) = (higher("4h"), higher("1d"));
        for bar in &hourly {
            let Some(row) = features.get(&(symbol.to_owned(), bar.open_time)) else {
                continue; // warm-up
            };
            // The last higher bar closed strictly before this row's close, if it is the one
            // just before (a missing higher bar leaves nulls, never an older one's values).
            let as_of = |series: &[(i64, Option<f64>, Option<f64>)], length: i64| {
                let at = series.partition_point(|(close, _, _)| *close < bar.close_time);
                (at > 0)
                    .then(|| series[at - 1])
                    .filter(|(close, _, _)| bar.close_time - close <= length)
            };
            for (offset, series, length) in [(0, &h4, 4 * HOUR), (2, &d1, 24 * HOUR)] {
                let expected = as_of(series, length);
                for (k, value) in [expected.and_then(|e| e.1), expected.and_then(|e| e.2)]
                    .into_iter()
                    .enumerate()
                {
                    let got = row[offset + k];
                    match (got, value) {
                        (Some(a), Some(b)) => {
                            assert!(
                                (a - b).abs() <= 1e-12 * b.abs().max(1.0),
                                "{symbol} {} {}: {a} vs {b}",
                                bar.open_time,
                                columns[offset + k]
                            );
                            checked[offset + k] += 1;
                        }
                        (None, None) => {}
                        other => panic!(
                            "{symbol} {} {}: {other:?}",
                            bar.open_time,
                            columns[offset + k]
                        ),
                    }
                }
            }
            // The last settlement at or before the row's close, within a day of bars.
            let settled = funding
                .iter()
                .rev()
                .find(|f| f.funding_time <= bar.close_time)
                .filter(|f| bar.close_time - f.funding_time < 24 * HOUR)
                .map(|f| f.funding_rate);
            assert_eq!(row[4], settled, "{symbol} {} funding_rate", bar.open_time);
            checked[4] += usize::from(settled.is_some());
            let basis = mark
                .iter()
                .zip(&index)
                .find(|(m, _)| m.open_time == bar.open_time)
                .map(|(m, x)| m.close / x.close - 1.0);
            match (row[5], basis) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-15, "basis {a} vs {b}"),
                other => panic!("{symbol} {} basis: {other:?}", bar.open_time),
            }
            checked[5] += 1;
        }
    }
    for (name, count) in columns.iter().zip(checked) {
        assert!(count > 500, "only {count} values of {name} checked");
    }

    // pandas, where the peer is installed (.ci/run makes a venv with it).
    let python = std::env::var("ASTERFLOW_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_pandas = std::process::Command::new(&python)
        .args(["-c", "import pandas, pyarrow"])
        .status()
        .is_ok_and(|status| status.success());
    if !has_pandas {
        eprintln!(
            "note: pandas is not installed for {python}: the merge_asof half of this check skipped"
        );
        return;
    }
    let parity = std::process::Command::new(&python)
        .arg(root.join("scripts/mtf_parity.py"))
        .arg(&output)
        .arg(project.path().join("data/lake"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&parity.stdout).into_owned()
        + &String::from_utf8_lossy(&parity.stderr);
    assert!(parity.status.success(), "{said}");
    assert!(said.contains("parity: ok"), "{said}");
}

/// A Binance public dump's funding and mark price files import through the same source as its
/// klines, and a replay exchange serves recorded funding files beside its kline files.
#[test]
fn dump_funding_and_mark_files_import_and_recorded_funding_is_served() {
    let project = Project::new();
    let start = 1_735_689_600_000i64; // 2025-01-01
    let kline = |i: i64| {
        let open = start + i * HOUR;
        format!(
            "{open},{}.5,{}.9,{}.1,{}.7,0,{},0,0,0,0,0\n",
            100 + i,
            101 + i,
            99 + i,
            100 + i,
            open + HOUR - 1
        )
    };
    let mut mark = String::new();
    (0..48).for_each(|i| mark.push_str(&kline(i)));
    let mut funding = String::from("calc_time,funding_interval_hours,last_funding_rate\n");
    for k in 0..6 {
        funding.push_str(&format!("{},8,0.000{}\n", start + k * 8 * HOUR + k, k + 1));
    }
    project.write(
        "dumps/futures/um/monthly/markPriceKlines/BTCUSDT/1h/BTCUSDT-1h-2025-01.csv",
        &mark,
    );
    project.write(
        "dumps/futures/um/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2025-01.csv",
        &funding,
    );
    project.write(
        "pipelines/x.yaml",
        "name: x\nsources:\n  vision:\n    api: binance-dump\n    path: dumps\nstages:\n  collect:\n    kind: collect\n    with: {source: vision, datasets: [klines, funding, mark_klines], intervals: [1h], start: 2025-01-01}\n",
    );
    let imported = run(&project);
    // No trades klines in this dump: skipped with a warning, the rest imported.
    assert!(
        imported
            .stderr
            .contains("skipping klines: the dump holds no klines files"),
        "{}",
        imported.stderr
    );
    let stored = crate::common::lake_funding(&project, "vision", "BTCUSDT");
    assert_eq!(stored.len(), 6);
    assert_eq!(stored[5].funding_time, start + 40 * HOUR + 5);
    assert_eq!(stored[5].funding_rate, 0.0006);
    assert_eq!(stored[0].interval_hours, 8);
    let marks = crate::common::lake_bars(&project, "mark_klines", "vision", "1h", "BTCUSDT");
    assert_eq!(marks.len(), 48);

    // The same files as a recorded replay market: klines beside them, funding served as-is.
    let mut klines = String::new();
    (0..48).for_each(|i| klines.push_str(&kline(i)));
    project.write("replay/BTCUSDT-1h-2025-01.csv", &klines);
    project.write("replay/BTCUSDT-fundingRate-2025-01.csv", &funding);
    let recorded = Exchange::start(&format!(
        "clock: {{now: 2025-01-03T00:00:00Z}}\nmarket:\n  files: {}\n",
        project.path().join("replay").display()
    ));
    let (status, _, rows) = recorded.get(&format!(
        "/fapi/v1/fundingRate?symbol=BTCUSDT&startTime={start}&limit=10"
    ));
    assert_eq!(status, 200, "{rows}");
    let rates: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["fundingRate"].as_str().unwrap())
        .collect();
    assert_eq!(
        rates,
        [
            "0.00010000",
            "0.00020000",
            "0.00030000",
            "0.00040000",
            "0.00050000",
            "0.00060000"
        ]
    );
    let (_, _, info) = recorded.get("/fapi/v1/fundingInfo");
    assert_eq!(info[0]["fundingIntervalHours"], 8);
}

/// Only the optional datasets may be unserved: a 404 for klines (a wrong base URL or path
/// prefix) fails the collection, naming the URL, instead of an empty lake.
#[test]
fn a_404_for_klines_is_an_error_not_a_skipped_dataset() {
    let exchange = Exchange::start(&scenario("unserved: [klines]"));
    let project = Project::new();
    project.write(
        "pipelines/x.yaml",
        &exchange_pipeline(
            exchange.url(),
            "      intervals: [1h]\n      history: 5d\n",
            "",
        ),
    );
    let failed = project.run(&["run", "pipelines/x.yaml"]);
    assert_ne!(failed.code, 0, "{}", failed.stderr);
    assert!(
        failed.stderr.contains("/fapi/v1/klines") && failed.stderr.contains("HTTP 404"),
        "{}",
        failed.stderr
    );
    assert!(
        !failed.stderr.contains("skipping klines"),
        "{}",
        failed.stderr
    );
}

/// The guard on daily outputs: a cut at an odd hour still leaves daily rows to compare (their
/// bar closed by the cut), and a daily feature that reads the next day fails.
#[test]
fn the_guard_checks_daily_outputs() {
    let exchange = Exchange::start(&scenario(""));
    let daily = "SELECT symbol, open_time, close / LAG(close) OVER (PARTITION BY symbol ORDER BY open_time) - 1.0 AS ret\n\
                 FROM klines WHERE \"interval\" = '1d'\n";
    let project = features_project(&exchange, daily, "");
    let passed = project.run(&["run", "pipelines/x.yaml"]);
    assert_eq!(passed.code, 0, "{}", passed.stderr);
    project.write(
        "stages/features/under_test.sql",
        &daily.replace("LAG(close)", "LEAD(close)"),
    );
    let failed = project.run(&["run", "pipelines/x.yaml"]);
    assert_ne!(failed.code, 0);
    assert!(failed.stderr.contains("`ret`"), "{}", failed.stderr);
}
