//! `validate` through the real binary: datasets built to fail each check exactly once, a clean
//! one passing with score 1.0, the quarantine and fail policies, source agreement, and the
//! replay exchange's simulated data refused by default.

use std::path::Path;

use crate::common::Project;
use asterflow::market::lake::{LakeListing, Provenance};
use asterflow::market::model::{Interval, Kline};
use asterflow::market::replay::{Market, Scenario};

const HOUR: i64 = 3_600_000;

/// 45 days of closed hourly candles ending now, from a simulated market on the wall clock.
pub(crate) fn clean_rows(days: i64) -> Vec<Kline> {
    let scenario = Scenario::parse(
        Path::new("s.yaml"),
        "seed: 5\nmarket:\n  simulate:\n    genesis: 2024-01-01\n    assets:\n      - {base: BTC, price: 42000, beta: 1.0, vol: 0.12}\n",
    )
    .unwrap();
    let market = Market::build(&scenario).unwrap();
    let now = asterflow::util::time::now_ms();
    let hour = Interval::parse("1h").unwrap();
    let last = hour.floor(now) - 3_600_000;
    let first = last - (days as u64 * 24 - 1) * 3_600_000;
    let mut rows = Vec::new();
    let mut cursor = first;
    while cursor <= last {
        let page = market
            .klines("BTCUSDT", hour, Some(cursor), Some(last), 1500, now)
            .unwrap();
        cursor = page.last().unwrap().open_time as u64 + 3_600_000;
        rows.extend(page);
    }
    rows.retain(|k| k.close_time < now as i64);
    rows
}

pub(crate) fn write(project: &Project, source: &str, symbol: &str, rows: &[Kline], kind: &str) {
    let hour = Interval::parse("1h").unwrap();
    let data = project.path().join("data");
    let dir = asterflow::market::lake::partition_dir(&data, source, hour, symbol).unwrap();
    asterflow::market::lake::write_part(
        &dir,
        symbol,
        hour,
        rows,
        &Provenance {
            source: source.into(),
            base_url: "https://fapi.example".into(),
            fetched_at_ms: 0,
            kind: kind.into(),
        },
    )
    .unwrap();
}

/// Lists every partition written so far as the fixture `lake.json`, and a pipeline reading it.
pub(crate) fn finish(project: &Project, validate_with: &str) {
    let data = project.path().join("data");
    let hour = Interval::parse("1h").unwrap();
    let mut parts = Vec::new();
    for source in std::fs::read_dir(data.join("lake/klines"))
        .unwrap()
        .flatten()
    {
        let source_name = source.file_name().to_string_lossy().replace("source=", "");
        for symbol in std::fs::read_dir(source.path().join("interval=1h"))
            .unwrap()
            .flatten()
        {
            let symbol = symbol.file_name().to_string_lossy().replace("symbol=", "");
            parts.extend(
                asterflow::market::lake::describe_partition(&data, &source_name, hour, &symbol)
                    .unwrap(),
            );
        }
    }
    project.write(
        "fixtures/lake.json",
        &serde_json::to_string_pretty(&LakeListing::new(parts)).unwrap(),
    );
    project.write(
        "pipelines/v.yaml",
        &format!(
            "name: v\nstages:\n  lake:\n    kind: command\n    with:\n      run: cp \"$ASTERFLOW_PROJECT_ROOT/fixtures/lake.json\" lake.json\n      outputs: [lake.json]\n      files: [fixtures/lake.json]\n  validate:\n    kind: validate\n    needs: [lake]\n    with: {{{validate_with}}}\n"
        ),
    );
}

pub(crate) fn output(
    project: &Project,
    run: &crate::common::Run,
    stage: &str,
    file: &str,
) -> String {
    let stages = run.json()["stages"].as_array().unwrap().clone();
    let entry = stages.iter().find(|s| s["id"] == stage).unwrap();
    let dir = project
        .path()
        .join(entry["output"].as_str().expect("an output"));
    std::fs::read_to_string(dir.join(file)).unwrap()
}

#[test]
fn each_defect_is_caught_once_with_its_reason_and_a_clean_dataset_scores_one() {
    let project = Project::new();
    let clean = clean_rows(45);
    let n = clean.len();
    // Three parts, as an incremental collection writes them: read in order across files.
    write(&project, "ex", "CLEANUSDT", &clean[..300], "exchange");
    write(&project, "ex", "CLEANUSDT", &clean[300..700], "exchange");
    write(&project, "ex", "CLEANUSDT", &clean[700..], "exchange");

    // 10% missing, in one-candle holes.
    let holes: Vec<Kline> = clean
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 10 != 5)
        .map(|(_, k)| *k)
        .collect();
    write(&project, "ex", "HOLESUSDT", &holes, "exchange");

    // One long gap (80 hours) in a long history: under 5% missing, over the 3-day gap limit.
    let mut gap = clean_rows(90);
    gap.drain(1000..1080);
    write(&project, "ex", "GAPUSDT", &gap, "exchange");

    // Stopped four days before the others.
    write(&project, "ex", "DEADUSDT", &clean[..n - 96], "exchange");

    let mut grid = clean.clone();
    grid[200].open_time += 60_000;
    grid[200].close_time += 60_000;
    write(&project, "ex", "GRIDUSDT", &grid, "exchange");

    let mut close_time = clean.clone();
    close_time[200].close_time += 1;
    write(&project, "ex", "CTIMEUSDT", &close_time, "exchange");

    let mut values = clean.clone();
    values[200].quote_volume = -5.0;
    write(&project, "ex", "VALUEUSDT", &values, "exchange");

    write(&project, "ex", "WHOUSDT", &clean, "mystery");

    write_without_trades(&project, "ex", "SCHEMAUSDT", &clean);

    write(&project, "ex", "GONEUSDT", &clean, "exchange");

    let mut duplicate = clean.clone();
    duplicate.insert(300, clean[300]);
    write_unsorted(&project, "ex", "DUPUSDT", &duplicate);

    let mut ohlc = clean.clone();
    ohlc[500].high = ohlc[500].open.min(ohlc[500].close) * 0.99;
    write(&project, "ex", "OHLCUSDT", &ohlc, "exchange");

    let mut future = clean.clone();
    // Three hours ahead, so it is still in the future when validate runs, whatever the clock.
    let mut next = *clean.last().unwrap();
    next.open_time += 3 * HOUR;
    next.close_time += 3 * HOUR;
    future.push(next);
    write(&project, "ex", "FUTUSDT", &future, "exchange");

    let mut filled = clean.clone();
    for i in (50..n - 1).step_by(50) {
        let close = filled[i - 1].close;
        let bar = &mut filled[i];
        (bar.open, bar.high, bar.low, bar.close) = (close, close, close, close);
        (bar.volume, bar.quote_volume, bar.trades) = (0.0, 0.0, 0);
        (bar.taker_buy_base, bar.taker_buy_quote) = (0.0, 0.0);
    }
    write(&project, "ex", "FILLUSDT", &filled, "exchange");

    let mut stale = clean.clone();
    let frozen = stale[299].close;
    for bar in &mut stale[300..330] {
        (bar.open, bar.high, bar.low, bar.close) = (frozen, frozen, frozen, frozen);
    }
    write(&project, "ex", "STALEUSDT", &stale, "exchange");

    let mut outlier = clean.clone();
    outlier[600].close *= 1.5;
    outlier[600].high = outlier[600].high.max(outlier[600].close);
    write(&project, "ex", "OUTUSDT", &outlier, "exchange");

    write(&project, "ex", "SIMUSDT", &clean, "simulated");
    write(&project, "ex", "SHORTUSDT", &clean[n - 240..], "exchange");
    finish(&project, "min_symbols: 1");
    // Listed, then gone.
    let gone = project
        .path()
        .join("data/lake/klines/source=ex/interval=1h/symbol=GONEUSDT");
    std::fs::remove_dir_all(&gone).unwrap();

    let run = project.run(&["run", "pipelines/v.yaml", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("validation: 1 of 18 datasets passed"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("QUARANTINED"), "the table is printed");
    let report: serde_json::Value = serde_json::from_str(&output(
        &project,
        &run,
        "validate",
        "validation_report.json",
    ))
    .unwrap();
    let expected = [
        ("CLEANUSDT", None),
        ("HOLESUSDT", Some(("missing", "missing candles: 10.00%"))),
        (
            "GAPUSDT",
            Some(("longest_gap", "longest gap: 80 candle(s) = 3d 8h")),
        ),
        (
            "DEADUSDT",
            Some(("ends_early", "4d behind the newest 1h candle")),
        ),
        ("GRIDUSDT", Some(("grid", "1 open time(s) off the 1h grid"))),
        (
            "CTIMEUSDT",
            Some(("close_time", "closeTime != openTime + interval - 1 ms")),
        ),
        (
            "VALUEUSDT",
            Some(("values", "negative volume, quote volume")),
        ),
        (
            "WHOUSDT",
            Some(("provenance", "`mystery` is not a known source")),
        ),
        ("SCHEMAUSDT", Some(("schema", "no column `trades`"))),
        ("GONEUSDT", Some(("parts", "parts damaged or missing"))),
        ("DUPUSDT", Some(("order", "1 duplicate"))),
        ("OHLCUSDT", Some(("ohlc", "low <= min(open, close)"))),
        ("FUTUSDT", Some(("future", "closing in the future"))),
        ("FILLUSDT", Some(("filled", "filled-looking"))),
        ("STALEUSDT", Some(("stale", "31 identical closes"))),
        ("OUTUSDT", Some(("bad_ticks", "1 bad tick(s)"))),
        ("SIMUSDT", Some(("provenance", "simulated data"))),
        ("SHORTUSDT", Some(("history", "too short"))),
    ];
    for (symbol, defect) in expected {
        let dataset = report["datasets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["symbol"] == symbol)
            .unwrap_or_else(|| panic!("{symbol} missing from the report"));
        let failed: Vec<&str> = dataset["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["passed"] == false)
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        match defect {
            None => {
                assert!(failed.is_empty(), "{symbol}: {failed:?}");
                assert_eq!(dataset["score"], 1.0, "{symbol}");
                assert_eq!(dataset["passed"], true);
            }
            Some((check, words)) => {
                assert_eq!(
                    failed,
                    [check],
                    "{symbol} should fail exactly `{check}`: {dataset}"
                );
                let reasons = dataset["failures"].as_array().unwrap();
                assert_eq!(reasons.len(), 1);
                assert!(
                    reasons[0].as_str().unwrap().contains(words),
                    "{symbol}: {}",
                    reasons[0]
                );
                assert!(dataset["score"].as_f64().unwrap() < 1.0);
                assert_eq!(dataset["passed"], false);
            }
        }
    }
    // Quarantine: only the clean dataset flows on.
    let listing: LakeListing =
        serde_json::from_str(&output(&project, &run, "validate", "lake.json")).unwrap();
    assert!(!listing.parts.is_empty());
    assert!(listing.parts.iter().all(|part| part.symbol == "CLEANUSDT"));
}

#[test]
fn policies_stop_the_pipeline_when_asked() {
    let project = Project::new();
    let clean = clean_rows(40);
    write(&project, "ex", "AUSDT", &clean, "exchange");
    let mut broken = clean.clone();
    broken[10].low = broken[10].high * 1.01;
    write(&project, "ex", "BUSDT", &broken, "exchange");

    finish(&project, "on_failure: fail");
    let run = project.run(&["run", "pipelines/v.yaml"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "1 of 2 datasets failed validation (on_failure: fail); first: ex BUSDT klines 1h"
        ),
        "{}",
        run.stderr
    );

    finish(&project, "min_symbols: 2");
    let run = project.run(&["run", "pipelines/v.yaml"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("only 1 symbol(s) passed validation; min_symbols is 2"),
        "{}",
        run.stderr
    );

    // A part edited after it was listed is caught by its digest.
    finish(&project, "min_symbols: 1");
    let part = std::fs::read_dir(
        project
            .path()
            .join("data/lake/klines/source=ex/interval=1h/symbol=AUSDT"),
    )
    .unwrap()
    .flatten()
    .find(|e| e.file_name().to_string_lossy().starts_with("part-"))
    .unwrap()
    .path();
    let mut permissions = std::fs::metadata(&part).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(&part, permissions).unwrap();
    let mut bytes = std::fs::read(&part).unwrap();
    let last = bytes.len() - 20;
    bytes[last] ^= 0xff;
    std::fs::write(&part, bytes).unwrap();
    let run = project.run(&["run", "pipelines/v.yaml", "--json"]);
    assert_eq!(run.code, 1, "no symbol passes any more: {}", run.stderr);
    assert!(
        run.stderr.contains("changed since it was listed"),
        "{}",
        run.stderr
    );
}

#[test]
fn two_sources_of_one_symbol_must_agree() {
    let project = Project::new();
    let clean = clean_rows(40);
    write(&project, "ex", "BTCUSDT", &clean, "exchange");
    write(&project, "dump", "BTCUSDT", &clean, "binance-dump");
    finish(&project, "min_symbols: 1");
    let run = project.run(&["run", "pipelines/v.yaml"]);
    assert_eq!(run.code, 0, "identical closes agree: {}", run.stderr);

    let other = Project::new();
    write(&other, "ex", "BTCUSDT", &clean, "exchange");
    let mut drifted = clean.clone();
    for bar in &mut drifted[100..110] {
        bar.close *= 1.03;
        bar.high = bar.high.max(bar.close);
    }
    write(&other, "dump", "BTCUSDT", &drifted, "binance-dump");
    finish(&other, "min_symbols: 1");
    let run = other.run(&["run", "pipelines/v.yaml"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("closes differ from source `dump` by up to 3.00%"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_replay_exchanges_simulated_data_is_refused_unless_allowed() {
    let project = Project::new();
    project.write(
        "data/scenarios/s.yaml",
        "seed: 2\nclock: {now: 2025-03-01T00:30:00Z}\nmarket:\n  simulate:\n    genesis: 2024-10-01\n    assets:\n      - {base: BTC, price: 42000, beta: 1.0, vol: 0.12}\n      - {base: ETH, price: 2300, beta: 1.2, vol: 0.3}\n",
    );
    let pipeline = |allow: bool| {
        format!(
            "name: s\nsources:\n  replay:\n    api: binance-futures\n    replay: {{scenario: data/scenarios/s.yaml}}\nstages:\n  discover:\n    kind: discover\n    with: {{source: replay}}\n  collect:\n    kind: collect\n    needs: [discover]\n    with: {{source: replay, intervals: [1h], history: 60d}}\n  validate:\n    kind: validate\n    needs: [collect]\n    with: {{allow_synthetic: {allow}}}\n"
        )
    };
    project.write("pipelines/s.yaml", &pipeline(false));
    let refused = project.run(&["run", "pipelines/s.yaml"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("simulated data (set allow_synthetic: true"),
        "{}",
        refused.stderr
    );
    assert!(
        refused
            .stderr
            .contains("only 0 symbol(s) passed validation"),
        "{}",
        refused.stderr
    );

    project.write("pipelines/s.yaml", &pipeline(true));
    let allowed = project.run(&["run", "pipelines/s.yaml", "--json"]);
    assert_eq!(allowed.code, 0, "{}", allowed.stderr);
    assert!(
        allowed.stderr.contains("*** SYNTHETIC DATA"),
        "the banner is shown: {}",
        allowed.stderr
    );
    let report: serde_json::Value = serde_json::from_str(&output(
        &project,
        &allowed,
        "validate",
        "validation_report.json",
    ))
    .unwrap();
    assert_eq!(report["synthetic"], true);
    // Klines and funding of each symbol.
    assert_eq!(report["datasets_passed"], 4);
    assert!(
        report["banner"]
            .as_str()
            .unwrap()
            .starts_with("SYNTHETIC DATA")
    );
}

/// A part written around the lake's own check (`write_part` refuses rows that are not strictly
/// increasing in open time): validate must still catch one a damaged or foreign writer left.
pub(crate) fn write_unsorted(project: &Project, source: &str, symbol: &str, rows: &[Kline]) {
    let hour = Interval::parse("1h").unwrap();
    let data = project.path().join("data");
    let dir = asterflow::market::lake::partition_dir(&data, source, hour, symbol).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let provenance = Provenance {
        source: source.into(),
        base_url: "https://fapi.example".into(),
        fetched_at_ms: 0,
        kind: "exchange".into(),
    };
    let batch = asterflow::market::lake::klines_batch(symbol, hour, rows, &provenance);
    let properties = parquet::file::properties::WriterProperties::builder()
        .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
            "asterflow.provenance".to_owned(),
            serde_json::to_string(&provenance).unwrap(),
        )]))
        .build();
    let name = format!(
        "part-{:013}-{:013}.parquet",
        rows[0].open_time,
        rows.last().unwrap().open_time
    );
    assert!(asterflow::market::lake::publish(&dir.join(name), &batch, properties).unwrap());
}

/// A part that lacks the `trades` column (but records its provenance like any other).
fn write_without_trades(project: &Project, source: &str, symbol: &str, rows: &[Kline]) {
    use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
    use std::sync::Arc;
    let data = project.path().join("data");
    let hour = Interval::parse("1h").unwrap();
    let dir = asterflow::market::lake::partition_dir(&data, source, hour, symbol).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let ints = |f: fn(&Kline) -> i64| {
        Arc::new(Int64Array::from_iter_values(rows.iter().map(f))) as ArrayRef
    };
    let floats = |f: fn(&Kline) -> f64| {
        Arc::new(Float64Array::from_iter_values(rows.iter().map(f))) as ArrayRef
    };
    let text = |value: &str| Arc::new(StringArray::from(vec![value; rows.len()])) as ArrayRef;
    let batch = RecordBatch::try_from_iter(vec![
        ("symbol", text(symbol)),
        ("interval", text("1h")),
        ("open_time", ints(|k| k.open_time)),
        ("open", floats(|k| k.open)),
        ("high", floats(|k| k.high)),
        ("low", floats(|k| k.low)),
        ("close", floats(|k| k.close)),
        ("volume", floats(|k| k.volume)),
        ("close_time", ints(|k| k.close_time)),
        ("quote_volume", floats(|k| k.quote_volume)),
        ("taker_buy_base", floats(|k| k.taker_buy_base)),
        ("taker_buy_quote", floats(|k| k.taker_buy_quote)),
        ("provenance", text("exchange")),
    ])
    .unwrap();
    let name = format!(
        "part-{:013}-{:013}.parquet",
        rows[0].open_time,
        rows.last().unwrap().open_time
    );
    let provenance = serde_json::json!({
        "source": source, "base_url": "https://fapi.example", "fetched_at_ms": 0, "kind": "exchange"
    });
    let properties = parquet::file::properties::WriterProperties::builder()
        .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
            "asterflow.provenance".to_owned(),
            provenance.to_string(),
        )]))
        .build();
    let file = std::fs::File::create(dir.join(name)).unwrap();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(properties)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}
