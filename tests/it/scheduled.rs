//! Scheduled runs, as cron would make them: an hourly pipeline on the replay exchange whose
//! clock the test moves forward between runs. Each later run fetches only the new candles,
//! keeps the model within its `reuse_for` window although the features changed, appends the
//! newest bar's signals to the paper book and prices the signals whose horizon has passed.
//! Overlapping runs: the second exits 75 at once, or waits with `--wait`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::common::Project;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int64Type};

const HOUR: i64 = 3_600_000;

fn pipeline(reuse_for: &str) -> String {
    format!(
        r#"name: hourly
sources:
  replay:
    api: binance-futures
    replay: {{scenario: data/scenarios/hourly.yaml}}
stages:
  discover:
    kind: discover
    with: {{source: replay, quote_assets: [USDT], max_symbols: 4}}
    cache: {{ttl: 1d}}
  rate_limits:
    kind: rate_limits
    with: {{source: replay}}
    cache: {{ttl: 1h}}
  collect:
    kind: collect
    needs: [discover, rate_limits]
    with: {{source: replay, intervals: [1h], history: 60d}}
    cache: {{ttl: 1h}}
  validate:
    kind: validate
    needs: [collect]
    with: {{allow_synthetic: true, min_symbols: 3}}
  features:
    kind: sql
    needs: [validate]
    with:
      query: stages/features/features.sql
      params: {{interval: 1h, bar_ms: 3600000, btc: BTCUSDT, eth: ETHUSDT, warmup: 300}}
      output: features.parquet
  labels:
    kind: sql
    needs: [validate]
    with:
      query: stages/labels/labels.sql
      params: {{interval: 1h, bar_ms: 3600000, horizon: 4, up: 0.02, down: 0.01}}
      output: labels.parquet
  train:
    kind: train
    needs: [features, labels]
    with: {{model: mlp, device: cpu, hidden: 8, epochs: 2, folds: 2}}
    cache: {{reuse_for: {reuse_for}}}
  signals:
    kind: signals
    needs: [train, features, validate]
    with:
      interval: 1h
      entry: {{long_above: 0.0}}     # every symbol long: every signal is a paper trade
      horizon: 4
      fee: 0.001
      slippage: 0.0005
      portfolio:                     # the book as one account: room for three of the four
        exit: {{stop: 0.5, target: null, horizon: 4}}
        max_positions: 3
        fees: {{maker: 0.001, taker: 0.001}}
        slippage: 0.0005
"#
    )
}

/// The demo market with its clock at `now`.
fn set_clock(project: &Project, now: &str) {
    let demo = std::fs::read_to_string(project.path().join("data/scenarios/demo.yaml")).unwrap();
    let line = "  now: 2025-06-01T00:30:00Z";
    assert!(demo.contains(line), "the demo scenario changed shape");
    project.write(
        "data/scenarios/hourly.yaml",
        &demo.replace(line, &format!("  now: {now}")),
    );
}

fn run(project: &Project) -> crate::common::Run {
    let run = project.run(&["run", "pipelines/hourly.yaml", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    run
}

/// Every batch of a Parquet file.
fn read_batches(path: &Path) -> Vec<arrow::array::RecordBatch> {
    let file =
        std::fs::File::open(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// (open, close) by (symbol, open time) of the lake's 1h candles.
fn lake_prices(root: &Path) -> HashMap<(String, i64), (f64, f64)> {
    let mut prices = HashMap::new();
    let dir = root.join("data/lake/klines/source=replay/interval=1h");
    for symbol_dir in std::fs::read_dir(dir).unwrap() {
        let symbol_dir = symbol_dir.unwrap().path();
        let symbol = symbol_dir
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .trim_start_matches("symbol=")
            .to_owned();
        for part in std::fs::read_dir(&symbol_dir).unwrap() {
            for batch in read_batches(&part.unwrap().path()) {
                let time = batch["open_time"].as_primitive::<Int64Type>().clone();
                let open = batch["open"].as_primitive::<Float64Type>().clone();
                let close = batch["close"].as_primitive::<Float64Type>().clone();
                for row in 0..batch.num_rows() {
                    prices.insert(
                        (symbol.clone(), time.value(row)),
                        (open.value(row), close.value(row)),
                    );
                }
            }
        }
    }
    prices
}

struct LedgerRow {
    symbol: String,
    open_time: i64,
    status: String,
    entry_price: Option<f64>,
    exit_price: Option<f64>,
    net_return: Option<f64>,
}

fn ledger(root: &Path) -> Vec<LedgerRow> {
    let mut rows = Vec::new();
    for batch in read_batches(&root.join("data/paper/hourly/signals/ledger.parquet")) {
        let text = |name: &str| batch[name].as_string::<i32>().clone();
        let (symbol, status) = (text("symbol"), text("status"));
        let time = batch["open_time"].as_primitive::<Int64Type>().clone();
        let float = |name: &str| batch[name].as_primitive::<Float64Type>().clone();
        let (entry, exit, net) = (
            float("entry_price"),
            float("exit_price"),
            float("net_return"),
        );
        let get = |array: &arrow::array::Float64Array, row: usize| {
            array.is_valid(row).then(|| array.value(row))
        };
        for row in 0..batch.num_rows() {
            rows.push(LedgerRow {
                symbol: symbol.value(row).to_owned(),
                open_time: time.value(row),
                status: status.value(row).to_owned(),
                entry_price: get(&entry, row),
                exit_price: get(&exit, row),
                net_return: get(&net, row),
            });
        }
    }
    rows
}

/// Each symbol's P(BUY) in the book's file for `bar`.
fn p_buy(root: &Path, bar: i64) -> Vec<(String, f64)> {
    let mut rows = Vec::new();
    for batch in
        read_batches(&root.join(format!("data/paper/hourly/signals/bars/bar={bar}.parquet")))
    {
        let symbol = batch["symbol"].as_string::<i32>().clone();
        let p = batch["p_BUY"].as_primitive::<Float64Type>().clone();
        for row in 0..batch.num_rows() {
            rows.push((symbol.value(row).to_owned(), p.value(row)));
        }
    }
    rows
}

/// The paper portfolio's trades: (symbol, entry, exit, size, fees, pnl, exit reason), by symbol.
#[allow(clippy::type_complexity)]
fn portfolio_trades(root: &Path) -> Vec<(String, f64, f64, f64, f64, f64, String)> {
    let mut trades = Vec::new();
    for batch in read_batches(&root.join("data/paper/hourly/signals/portfolio.parquet")) {
        let text = |name: &str| batch[name].as_string::<i32>().clone();
        let float = |name: &str| batch[name].as_primitive::<Float64Type>().clone();
        let (symbol, reason) = (text("symbol"), text("exit_reason"));
        let (entry, exit, size, fees, pnl) = (
            float("entry_price"),
            float("exit_price"),
            float("size"),
            float("fees"),
            float("pnl"),
        );
        for row in 0..batch.num_rows() {
            trades.push((
                symbol.value(row).to_owned(),
                entry.value(row),
                exit.value(row),
                size.value(row),
                fees.value(row),
                pnl.value(row),
                reason.value(row).to_owned(),
            ));
        }
    }
    trades.sort_by(|a, b| a.0.cmp(&b.0));
    trades
}

fn bar_files(root: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root.join("data/paper/hourly/signals/bars"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    files
}

#[test]
fn hourly_runs_fetch_new_candles_keep_the_model_and_price_the_paper_book() {
    let project = crate::common::shipped_project();
    project.write("pipelines/hourly.yaml", &pipeline("7d"));

    // 00:00: the first run does everything; the newest closed bar is 23:00.
    set_clock(&project, "2025-06-01T00:01:00Z");
    let first = run(&project);
    assert!(
        first.statuses().iter().all(|(_, s)| s == "ran"),
        "{}",
        first.stdout
    );
    let first_bar = 1_748_732_400_000; // 2025-05-31T23:00:00Z
    assert_eq!(
        bar_files(project.path()),
        [format!("bar={first_bar}.parquet")]
    );
    let book = ledger(project.path());
    assert_eq!(book.len(), 4, "four symbols, all long");
    assert!(
        book.iter()
            .all(|row| row.status == "open" && row.open_time == first_bar)
    );

    // 05:00: five new candles per symbol, one request each; the model is kept.
    set_clock(&project, "2025-06-01T05:01:00Z");
    let second = run(&project);
    let report = second.output_json(&project, "collect", "collection_report.json");
    for partition in report["partitions"].as_array().unwrap() {
        if partition["table"] == "klines" {
            assert_eq!(partition["new_rows"], 5, "{partition}");
        }
        assert_eq!(partition["requests"], 1, "{partition}");
    }
    assert_eq!(second.status_of("features"), "ran");
    assert_eq!(second.status_of("train"), "reused");
    assert!(
        second
            .reason_of("train")
            .contains("reuse_for 7d: keeping the output from"),
        "{}",
        second.reason_of("train")
    );
    assert_eq!(second.status_of("signals"), "ran");
    // Every run leaves its record and a log per stage it executed.
    for (record, executed) in [(&first, "train"), (&second, "signals")] {
        let dir = project
            .path()
            .join("runs")
            .join(record.json()["run_id"].as_str().unwrap());
        assert!(dir.join("run.json").is_file(), "{}", dir.display());
        assert!(
            dir.join("logs").join(format!("{executed}.log")).is_file(),
            "{}",
            dir.display()
        );
    }
    let second_bar = first_bar + 5 * HOUR;
    assert_eq!(
        bar_files(project.path()),
        [
            format!("bar={first_bar}.parquet"),
            format!("bar={second_bar}.parquet")
        ]
    );
    // 23:00's signals: in at 00:00's open, out at 03:00's close (horizon 4), priced by hand
    // from the lake. 04:00's are still open.
    let prices = lake_prices(project.path());
    let book = ledger(project.path());
    assert_eq!(book.len(), 8);
    for row in &book {
        if row.open_time == first_bar {
            assert_eq!(row.status, "closed", "{}", row.symbol);
            let open = prices[&(row.symbol.clone(), first_bar + HOUR)].0;
            let close = prices[&(row.symbol.clone(), first_bar + 4 * HOUR)].1;
            assert_eq!((row.entry_price, row.exit_price), (Some(open), Some(close)));
            let net = close * (1.0 - 0.0005) / (open * (1.0 + 0.0005)) - 1.0 - 2.0 * 0.001;
            assert!(
                (row.net_return.unwrap() - net).abs() < 1e-12,
                "{}",
                row.symbol
            );
        } else {
            assert_eq!(row.open_time, second_bar);
            assert_eq!(row.status, "open");
            assert_eq!(
                row.entry_price, None,
                "05:00's candle has not closed: no entry price yet"
            );
        }
    }

    // The paper portfolio: of 23:00's four longs, the three likeliest (P(BUY)) take the three
    // places, in at 00:00's open and out at 04:00's open (held four bars), each fill slipped
    // against it; the fourth is skipped for capacity, and 04:00's signals wait for 05:00.
    let summary = second.output_json(&project, "signals", "summary.json");
    let portfolio = &summary["portfolio"];
    assert_eq!(portfolio["skipped"]["capacity"], 1, "{portfolio}");
    assert_eq!(portfolio["closed"], 3, "{portfolio}");
    assert_eq!(portfolio["open"], 0, "{portfolio}");
    assert_eq!(portfolio["pending"], 4, "{portfolio}");
    let mut likeliest = p_buy(project.path(), first_bar);
    likeliest.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut taken: Vec<String> = likeliest[..3].iter().map(|(s, _)| s.clone()).collect();
    taken.sort();
    let trades = portfolio_trades(project.path());
    assert_eq!(
        trades.iter().map(|t| t.0.clone()).collect::<Vec<_>>(),
        taken,
        "{likeliest:?}"
    );
    let mut equity = 10_000.0;
    for (symbol, entry, exit, size, fees, pnl, reason) in &trades {
        assert_eq!(reason, "horizon");
        let open = prices[&(symbol.clone(), first_bar + HOUR)].0;
        let out = prices[&(symbol.clone(), first_bar + 5 * HOUR)].0;
        assert!((entry - open * 1.0005).abs() < 1e-9 * open, "{symbol}");
        assert!((exit - out * 0.9995).abs() < 1e-9 * out, "{symbol}");
        assert!(
            (fees - 0.001 * size * (entry + exit)).abs() < 1e-9 * entry * size,
            "{symbol}"
        );
        assert!(
            (pnl - (size * (exit - entry) - fees)).abs() < 1e-6,
            "{symbol}"
        );
        equity += pnl;
    }
    let reported = portfolio["equity"].as_f64().unwrap();
    assert!((reported - equity).abs() < 1e-6, "{reported} vs {equity}");

    // A run at the same hour again runs nothing (train is still the reused model): nothing is
    // appended twice.
    let again = run(&project);
    assert!(
        again
            .statuses()
            .iter()
            .all(|(id, s)| s == if id == "train" { "reused" } else { "cached" }),
        "{}",
        again.stdout
    );
    assert_eq!(bar_files(project.path()).len(), 2);
    // Forced at the same hour (a retrained model): the published bar is kept, byte for byte.
    let published = project.path().join(format!(
        "data/paper/hourly/signals/bars/bar={second_bar}.parquet"
    ));
    let before = std::fs::read(&published).unwrap();
    let inode = |path: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().ino()
    };
    let file_before = inode(&published);
    let forced = project.run(&["run", "pipelines/hourly.yaml", "--force"]);
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert!(
        forced
            .stderr
            .contains("already holds signals for this bar: kept them"),
        "{}",
        forced.stderr
    );
    assert_eq!(std::fs::read(&published).unwrap(), before);
    assert_eq!(
        inode(&published),
        file_before,
        "the same file, not a rewrite"
    );
    assert_eq!(ledger(project.path()).len(), 8);

    // 06:00 with a one-second window: the model is older than that, so train runs again.
    std::thread::sleep(Duration::from_millis(1100));
    project.write("pipelines/hourly.yaml", &pipeline("1s"));
    set_clock(&project, "2025-06-01T06:01:00Z");
    let third = run(&project);
    assert_eq!(third.status_of("train"), "ran", "{}", third.stdout);
    assert_eq!(bar_files(project.path()).len(), 3);
}

#[test]
fn signals_and_the_backtest_work_with_every_model_kind() {
    let project = crate::common::shipped_project();
    set_clock(&project, "2025-06-01T00:01:00Z");
    let mlp = "    with: {model: mlp, device: cpu, hidden: 8, epochs: 2, folds: 2}\n";
    let backtest = "  backtest:\n    kind: backtest\n    needs: [train, validate, discover]\n    with: {interval: 1h, entry: {long_above: 0.3}, monte_carlo: null}\n";
    for with in [
        "{model: mlp, device: cpu, hidden: 8, epochs: 2, folds: 2}",
        "{model: logistic, folds: 2}",
        "{model: softmax, device: cpu, epochs: 2, folds: 2}",
        "{model: gbdt, iterations: 15, max_depth: 3, folds: 2}",
        "{model: forest, trees: 8, max_depth: 5, folds: 2}",
    ] {
        let text = pipeline("7d");
        assert!(text.contains(mlp), "the hourly pipeline changed shape");
        project.write(
            "pipelines/hourly.yaml",
            &(text.replace(mlp, &format!("    with: {with}\n")) + backtest),
        );
        let run = run(&project);
        assert_eq!(run.status_of("train"), "ran", "{with}");
        let model = run.output_json(&project, "train", "model.json");
        let trees = with.contains("gbdt") || with.contains("forest");
        assert_eq!(model["trees"].is_object(), trees, "{with}");
        assert_eq!(model["network"].is_object(), !trees, "{with}");
        let importance = run.output_json(&project, "train", "metrics.json")["importance"].clone();
        assert_eq!(
            importance.as_array().map(Vec::len),
            model["features"].as_array().map(Vec::len),
            "{with}"
        );
        let summary = run.output_json(&project, "signals", "summary.json");
        assert_eq!(summary["symbols"], 4, "{with}: {summary}");
        let metrics = run.output_json(&project, "backtest", "metrics.json");
        assert!(metrics["trades"]["trades"].is_number(), "{with}: {metrics}");
        onnx_agrees(&project, &run, with);
    }
}

/// The train stage's `model.onnx` in ONNX Runtime gives the native model's probabilities, to
/// 1e-5, on the out-of-sample rows of the demo market's features (those `predictions.parquet`
/// scores). Skipped, saying so, where onnxruntime is not installed.
fn onnx_agrees(project: &crate::common::Project, run: &crate::common::Run, what: &str) {
    use std::collections::HashSet;
    let python = std::env::var("ASTERFLOW_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_runtime = std::process::Command::new(&python)
        .args(["-c", "import onnxruntime"])
        .status()
        .is_ok_and(|status| status.success());
    if !has_runtime {
        eprintln!("note: onnxruntime is not installed for {python}: the ONNX check skipped");
        return;
    }
    let train = run.output_of(project, "train");
    let saved: asterflow::train::saved::ModelFile =
        serde_json::from_str(&std::fs::read_to_string(train.join("model.json")).unwrap()).unwrap();
    asterflow::train::saved::check_model(&saved).unwrap();
    let mut tested = HashSet::new();
    for batch in read_batches(&train.join("predictions.parquet")) {
        let symbol =
            arrow::compute::cast(&batch["symbol"], &arrow::datatypes::DataType::Utf8).unwrap();
        let symbol = symbol.as_string::<i32>();
        let time = batch["open_time"].as_primitive::<Int64Type>().clone();
        for row in 0..batch.num_rows() {
            tested.insert((symbol.value(row).to_owned(), time.value(row)));
        }
    }
    let mut raw = Vec::new();
    for batch in read_batches(&run.output_of(project, "features").join("features.parquet")) {
        let symbol =
            arrow::compute::cast(&batch["symbol"], &arrow::datatypes::DataType::Utf8).unwrap();
        let symbol = symbol.as_string::<i32>();
        let time = batch["open_time"].as_primitive::<Int64Type>().clone();
        let columns: Vec<arrow::array::ArrayRef> = saved
            .features
            .iter()
            .map(|name| {
                arrow::compute::cast(&batch[name.as_str()], &arrow::datatypes::DataType::Float32)
                    .unwrap()
            })
            .collect();
        for row in 0..batch.num_rows() {
            if !tested.contains(&(symbol.value(row).to_owned(), time.value(row))) {
                continue;
            }
            let values: Vec<f32> = columns
                .iter()
                .map(|column| {
                    let column = column.as_primitive::<arrow::datatypes::Float32Type>();
                    if column.is_null(row) {
                        f32::NAN
                    } else {
                        column.value(row)
                    }
                })
                .collect();
            if values.iter().all(|v| v.is_finite()) {
                raw.extend(values);
            }
        }
    }
    let dim = saved.features.len();
    let rows = raw.len() / dim;
    assert!(rows > 100, "{what}: only {rows} test rows");
    let standardised: Vec<f32> = raw
        .iter()
        .enumerate()
        .map(|(index, &value)| saved.scaler.standardise(index % dim, value))
        .collect();
    let native = saved.predict(&standardised, rows);
    let dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = raw.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(dir.path().join("rows.f32"), bytes).unwrap();
    std::fs::write(
        dir.path().join("features.json"),
        serde_json::to_string(&saved.features).unwrap(),
    )
    .unwrap();
    let output = std::process::Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/onnx_check.py"
        ))
        .arg(train.join("model.onnx"))
        .arg(dir.path().join("rows.f32"))
        .arg(dir.path().join("features.json"))
        .arg(dir.path().join("out.f32"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let theirs: Vec<f32> = std::fs::read(dir.path().join("out.f32"))
        .unwrap()
        .chunks(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(theirs.len(), native.len(), "{what}");
    let worst = native
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst < 1e-5,
        "{what}: ONNX Runtime differs from asterflow by up to {worst} over {rows} rows"
    );
    eprintln!("{what}: ONNX Runtime agrees within {worst:e} over {rows} rows");
}

/// The hourly pipeline with a last stage that holds the run open until the test says so, so
/// the overlap does not depend on timing.
fn gated_pipeline() -> String {
    pipeline("7d")
        + r#"  gate:
    kind: command
    needs: [signals]
    with:
      run: touch "$ASTERFLOW_PROJECT_ROOT/started"; while [ ! -e "$ASTERFLOW_PROJECT_ROOT/release" ]; do sleep 0.05; done; echo done > out.txt
"#
}

#[test]
fn an_overlapping_scheduled_run_exits_75_or_waits_for_the_first() {
    let project = crate::common::shipped_project();
    project.write("pipelines/hourly.yaml", &gated_pipeline());
    set_clock(&project, "2025-06-01T00:01:00Z");
    let mut first = project.spawn(&["run", "pipelines/hourly.yaml", "--quiet"]);
    assert!(
        crate::common::wait_for(Duration::from_secs(60), || project
            .path()
            .join("started")
            .exists()),
        "the first run never reached its last stage"
    );
    // cron's next tick while the first is still running: exit 75 at once, naming the holder.
    let second = project.run(&["run", "pipelines/hourly.yaml", "--json"]);
    assert_eq!(second.code, 75, "{}\n{}", second.stdout, second.stderr);
    assert!(
        second
            .stderr
            .contains(&format!("in use by pid {}", first.id())),
        "{}",
        second.stderr
    );
    assert!(second.stderr.contains("--wait"), "{}", second.stderr);
    // With --wait it queues behind the first, then finds everything done.
    let log = std::fs::File::create(project.path().join("waiter.log")).unwrap();
    let waiter = project
        .command(&["run", "pipelines/hourly.yaml", "--json", "--wait"])
        .stderr(log)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        crate::common::wait_for(Duration::from_secs(30), || std::fs::read_to_string(
            project.path().join("waiter.log")
        )
        .is_ok_and(|text| text.contains("waiting for the run root lock"))),
        "the --wait run never said it was waiting"
    );
    project.write("release", "");
    assert!(first.wait().unwrap().success());
    let waited = crate::common::Run::from(waiter.wait_with_output().unwrap());
    assert_eq!(waited.code, 0, "{}", waited.stdout);
    assert!(
        waited.statuses().iter().all(|(_, s)| s == "cached"),
        "the waiting run finds the first run's outputs: {}",
        waited.stdout
    );
    assert_eq!(
        bar_files(project.path()).len(),
        1,
        "one bar, signalled once"
    );
}

#[test]
fn signals_on_the_wrong_interval_fail_naming_it() {
    let project = crate::common::shipped_project();
    let text = pipeline("7d");
    let wrong = text.replacen("      interval: 1h\n", "      interval: 4h\n", 1);
    assert_ne!(wrong, text);
    project.write("pipelines/hourly.yaml", &wrong);
    set_clock(&project, "2025-06-01T00:01:00Z");
    let run = project.run(&["run", "pipelines/hourly.yaml"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("interval: 4h does not match `features`, whose newest bars are 1h apart"),
        "{}",
        run.stderr
    );
    assert!(
        !project.path().join("data/paper").exists(),
        "nothing published on a failed check"
    );
}

#[test]
fn a_kept_model_missing_a_feature_the_file_dropped_fails_signals_naming_it() {
    let project = crate::common::shipped_project();
    project.write("pipelines/hourly.yaml", &pipeline("7d"));
    set_clock(&project, "2025-06-01T00:01:00Z");
    run(&project);
    let path = project.path().join("stages/features/features.sql");
    let sql = std::fs::read_to_string(&path).unwrap();
    let line = "  liquidity_score, spread_estimate, price_stability, bars_since_listing,\n";
    assert!(sql.contains(line), "features.sql changed shape");
    project.write(
        "stages/features/features.sql",
        &sql.replace(
            line,
            "  liquidity_score, spread_estimate, price_stability,\n",
        ),
    );
    let failed = project.run(&["run", "pipelines/hourly.yaml", "--json"]);
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    assert_eq!(failed.status_of("train"), "reused");
    assert!(
        failed.stderr.contains(
            "uses features `features` no longer has: `bars_since_listing`; retrain it (`--start-from train`)"
        ),
        "{}",
        failed.stderr
    );
}
