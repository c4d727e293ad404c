//! The `sql` stage through the real binary: the window functions against hand-computed values,
//! the shipped feature set against independent reference implementations (TA-Lib conventions,
//! after warm-up, to 1e-9 relative), cross-asset joins on open time only, the labels, the
//! look-ahead guard, SQL errors with locations, and plain Parquet output.

use std::collections::HashMap;
use std::path::Path;

use crate::common::Project;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use asterflow::market::lake::{LakeListing, Provenance};
use asterflow::market::model::{Interval, Kline};
use asterflow::market::replay::{Market, Scenario};

const HOUR: i64 = 3_600_000;
const START: i64 = 1_735_689_600_000; // 2025-01-01

fn bar(i: i64, open: f64, high: f64, low: f64, close: f64) -> Kline {
    Kline {
        open_time: START + i * HOUR,
        open,
        high,
        low,
        close,
        volume: 10.0 + i as f64,
        close_time: START + (i + 1) * HOUR - 1,
        quote_volume: (10.0 + i as f64) * close,
        trades: 5,
        taker_buy_base: 4.0,
        taker_buy_quote: 4.0 * close,
    }
}

/// Writes `rows` for each symbol into the lake and a `lake.json` fixture listing them.
fn lake(project: &Project, symbols: &[(&str, Vec<Kline>)]) {
    let data = project.path().join("data");
    let hour = Interval::parse("1h").unwrap();
    let mut parts = Vec::new();
    for (symbol, rows) in symbols {
        let dir = asterflow::market::lake::partition_dir(&data, "ex", hour, symbol).unwrap();
        asterflow::market::lake::write_part(
            &dir,
            symbol,
            hour,
            rows,
            &Provenance {
                source: "ex".into(),
                base_url: "https://fapi.example".into(),
                fetched_at_ms: 0,
                kind: "exchange".into(),
            },
        )
        .unwrap();
        parts.extend(
            asterflow::market::lake::describe_partition(&data, "ex", hour, symbol).unwrap(),
        );
    }
    project.write(
        "fixtures/lake.json",
        &serde_json::to_string(&LakeListing::new(parts)).unwrap(),
    );
}

/// A pipeline: the fixture lake, then one sql stage.
fn pipeline(project: &Project, query: &str, params: &str, extra: &str) {
    project.write(
        "pipelines/s.yaml",
        &format!(
            "name: s\nstages:\n  validate:\n    kind: command\n    with:\n      run: cp \"$ASTERFLOW_PROJECT_ROOT/fixtures/lake.json\" lake.json\n      outputs: [lake.json]\n      files: [fixtures/lake.json]\n  out:\n    kind: sql\n    needs: [validate]\n    with:\n      query: {query}\n      params: {{{params}}}\n{extra}"
        ),
    );
}

fn run(project: &Project) -> crate::common::Run {
    let run = project.run(&["run", "pipelines/s.yaml", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    run
}

/// Reads the stage's Parquet with the plain parquet crate (not DataFusion).
fn read_output(project: &Project, run: &crate::common::Run, file: &str) -> Vec<RecordBatch> {
    let stages = run.json()["stages"].as_array().unwrap().clone();
    let entry = stages.iter().find(|s| s["id"] == "out").unwrap();
    let path = project
        .path()
        .join(entry["output"].as_str().unwrap())
        .join(file);
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(path).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    reader.map(Result::unwrap).collect()
}

/// `(symbol, open_time) -> column -> value` for the float columns.
fn table(batches: &[RecordBatch]) -> HashMap<(String, i64), HashMap<String, Option<f64>>> {
    let mut out = HashMap::new();
    for batch in batches {
        let symbols = batch.column_by_name("symbol").unwrap();
        let symbols = arrow::compute::cast(symbols, &DataType::Utf8).unwrap();
        let symbols = symbols.as_string::<i32>();
        let times = batch
            .column_by_name("open_time")
            .unwrap()
            .as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            let mut values = HashMap::new();
            for (index, field) in batch.schema().fields().iter().enumerate() {
                let column = batch.column(index);
                let value = match field.data_type() {
                    DataType::Float64 => {
                        let c = column.as_primitive::<Float64Type>();
                        (!c.is_null(row)).then(|| c.value(row))
                    }
                    DataType::Int64 => {
                        let c = column.as_primitive::<Int64Type>();
                        (!c.is_null(row)).then(|| c.value(row) as f64)
                    }
                    _ => continue,
                };
                values.insert(field.name().clone(), value);
            }
            out.insert((symbols.value(row).to_owned(), times.value(row)), values);
        }
    }
    out
}

#[test]
fn ema_and_wilder_match_hand_computed_values() {
    let project = Project::new();
    let closes = [1.0, 2.0, 3.0, 4.0, 8.0, 6.0];
    let rows: Vec<Kline> = closes
        .iter()
        .enumerate()
        .map(|(i, &c)| bar(i as i64, c, c, c, c))
        .collect();
    lake(&project, &[("AUSDT", rows)]);
    project.write(
        "q.sql",
        "SELECT symbol, open_time, ema(close, 3) OVER w AS e, wilder(close, 3) OVER w AS wl\nFROM klines WINDOW w AS (PARTITION BY symbol ORDER BY open_time)\n",
    );
    pipeline(&project, "q.sql", "", "");
    let run = run(&project);
    let out = table(&read_output(&project, &run, "out.parquet"));
    let at = |i: i64, column: &str| out[&("AUSDT".to_owned(), START + i * HOUR)][column];
    // EMA(3): alpha 1/2; seed (1+2+3)/3 = 2; then 3, 5.5, 5.75.
    let ema = [None, None, Some(2.0), Some(3.0), Some(5.5), Some(5.75)];
    // Wilder(3): alpha 1/3; seed 2; then 2 + (4-2)/3 = 8/3; 8/3 + (8 - 8/3)/3 = 40/9; 40/9 + (6 - 40/9)/3 = 134/27.
    let wilder = [
        None,
        None,
        Some(2.0),
        Some(8.0 / 3.0),
        Some(40.0 / 9.0),
        Some(134.0 / 27.0),
    ];
    for i in 0..6 {
        assert_eq!(at(i, "e"), ema[i as usize], "ema row {i}");
        let (got, want) = (at(i, "wl"), wilder[i as usize]);
        match (got, want) {
            (Some(g), Some(w)) => assert!((g - w).abs() < 1e-12, "wilder row {i}: {g} vs {w}"),
            _ => assert_eq!(got, want, "wilder row {i}"),
        }
    }
}

/// A simulated market: BTC, ETH, and ALT (listed later, with holes), hourly, `bars` long.
fn market(bars: u64) -> Vec<(&'static str, Vec<Kline>)> {
    let scenario = Scenario::parse(
        Path::new("s.yaml"),
        "seed: 21\nmarket:\n  simulate:\n    genesis: 2025-01-01\n    assets:\n      - {base: BTC, price: 42000, beta: 1.0, vol: 0.1}\n      - {base: ETH, price: 2300, beta: 1.2, vol: 0.3}\n      - {base: ALT, price: 3, beta: 1.5, vol: 0.8, listed: 2025-01-03}\n",
    )
    .unwrap();
    let market = Market::build(&scenario).unwrap();
    let hour = Interval::parse("1h").unwrap();
    let end = START as u64 + bars * 3_600_000;
    let rows = |symbol: &str| {
        market
            .klines(symbol, hour, Some(START as u64), Some(end - 1), 1500, end)
            .unwrap()
    };
    let mut alt = rows("ALTUSDT");
    // Holes: a cross-asset join by row position would misalign everything after them.
    for index in [300, 200, 150, 100] {
        alt.remove(index);
    }
    vec![
        ("BTCUSDT", rows("BTCUSDT")),
        ("ETHUSDT", rows("ETHUSDT")),
        ("ALTUSDT", alt),
    ]
}

fn ema_ref(x: &[Option<f64>], n: usize, alpha: f64) -> Vec<Option<f64>> {
    let mut out = Vec::new();
    let mut seen = Vec::new();
    let mut state: Option<f64> = None;
    for value in x {
        match (value, state) {
            (None, _) => out.push(None),
            (Some(v), Some(s)) => {
                let next = alpha * v + (1.0 - alpha) * s;
                state = Some(next);
                out.push(Some(next));
            }
            (Some(v), None) => {
                seen.push(*v);
                if seen.len() == n {
                    state = Some(seen.iter().sum::<f64>() / n as f64);
                }
                out.push(state);
            }
        }
    }
    out
}

/// Equal to 1e-9 relative. `scale` is the indicator's natural unit, for those that cross zero
/// (a %B of 0.002 computed from prices near 42,000 cannot be pinned to 1e-9 of itself by any
/// implementation: the subtraction that makes it loses those digits).
fn close_to(got: Option<f64>, want: Option<f64>, scale: f64, what: &str) {
    match (got, want) {
        (Some(g), Some(w)) => assert!(
            (g - w).abs() <= 1e-9 * w.abs().max(scale).max(1e-12),
            "{what}: {g} vs {w}"
        ),
        _ => assert_eq!(got, want, "{what}"),
    }
}

fn close_enough(got: Option<f64>, want: Option<f64>, what: &str) {
    close_to(got, want, 0.0, what)
}

#[test]
fn the_feature_set_matches_independent_reference_values_after_warm_up() {
    let project = Project::new();
    let data = market(800);
    lake(&project, &data);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    project.write(
        "stages/features/features.sql",
        &std::fs::read_to_string(root.join("stages/features/features.sql")).unwrap(),
    );
    pipeline(
        &project,
        "stages/features/features.sql",
        "interval: 1h, bar_ms: 3600000, btc: BTCUSDT, eth: ETHUSDT, warmup: 300",
        // The guard runs on the shipped query too: it must pass, comparing real rows.
        "      output: out.parquet\n      lookahead_check: true\n",
    );
    let run = run(&project);
    let batches = read_output(&project, &run, "out.parquet");
    for field in batches[0].schema().fields() {
        assert!(
            matches!(
                field.data_type(),
                DataType::Float64 | DataType::Int64 | DataType::Utf8 | DataType::Utf8View
            ),
            "{} is {}: plain types only",
            field.name(),
            field.data_type()
        );
    }
    let out = table(&batches);
    let returns = |rows: &[Kline]| -> HashMap<i64, f64> {
        rows.windows(2)
            .map(|w| (w[1].open_time, w[1].close / w[0].close - 1.0))
            .collect()
    };
    let (btc, eth) = (returns(&data[0].1), returns(&data[1].1));
    // 24-bar momentum of every symbol at every time, for the breadth share.
    let mut momentum: HashMap<i64, Vec<f64>> = HashMap::new();
    for (_, rows) in &data {
        for i in 24..rows.len() {
            momentum
                .entry(rows[i].open_time)
                .or_default()
                .push(rows[i].close / rows[i - 24].close - 1.0);
        }
    }
    for (symbol, rows) in &data {
        let closes: Vec<Option<f64>> = rows.iter().map(|k| Some(k.close)).collect();
        let ema12 = ema_ref(&closes, 12, 2.0 / 13.0);
        let ema26 = ema_ref(&closes, 26, 2.0 / 27.0);
        let macd: Vec<Option<f64>> = ema12
            .iter()
            .zip(&ema26)
            .map(|(a, b)| Some((*a)? - (*b)?))
            .collect();
        let signal = ema_ref(&macd, 9, 0.2);
        let change =
            |i: usize, f: fn(f64) -> f64| (i > 0).then(|| f(rows[i].close - rows[i - 1].close));
        let gains: Vec<Option<f64>> = (0..rows.len()).map(|i| change(i, |d| d.max(0.0))).collect();
        let losses: Vec<Option<f64>> = (0..rows.len())
            .map(|i| change(i, |d| (-d).max(0.0)))
            .collect();
        let avg_gain = ema_ref(&gains, 14, 1.0 / 14.0);
        let avg_loss = ema_ref(&losses, 14, 1.0 / 14.0);
        let true_range: Vec<Option<f64>> = (0..rows.len())
            .map(|i| {
                (i > 0).then(|| {
                    let (h, l, pc) = (rows[i].high, rows[i].low, rows[i - 1].close);
                    (h - l).max((h - pc).abs()).max((l - pc).abs())
                })
            })
            .collect();
        let atr = ema_ref(&true_range, 14, 1.0 / 14.0);
        for i in 300..rows.len() {
            let key = (symbol.to_string(), rows[i].open_time);
            let row = out.get(&key).unwrap_or_else(|| panic!("{key:?} missing"));
            let what = |name: &str| format!("{symbol} row {i} {name}");
            let rsi = 100.0 - 100.0 / (1.0 + avg_gain[i].unwrap() / avg_loss[i].unwrap());
            close_enough(row["rsi_14"], Some(rsi), &what("rsi_14"));
            close_enough(row["macd"], macd[i], &what("macd"));
            close_enough(row["macd_signal"], signal[i], &what("macd_signal"));
            close_enough(row["atr_14"], atr[i], &what("atr_14"));
            let window: Vec<f64> = rows[i - 19..=i].iter().map(|k| k.close).collect();
            let mean = window.iter().sum::<f64>() / 20.0;
            let sd = (window.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / 20.0).sqrt();
            close_enough(
                row["sma_ratio_20"],
                Some(rows[i].close / mean),
                &what("sma_ratio_20"),
            );
            close_to(
                row["bb_percent_b"],
                Some((rows[i].close - (mean - 2.0 * sd)) / (4.0 * sd)),
                1.0,
                &what("bb_percent_b"),
            );
            close_enough(
                row["bb_bandwidth"],
                Some(4.0 * sd / mean),
                &what("bb_bandwidth"),
            );
            close_enough(
                row["momentum_24"],
                Some(rows[i].close / rows[i - 24].close - 1.0),
                &what("momentum_24"),
            );
            let quote: Vec<f64> = rows[i.saturating_sub(167)..=i]
                .iter()
                .map(|k| k.quote_volume)
                .collect();
            close_enough(
                row["liquidity_score"],
                Some((quote.iter().sum::<f64>() / quote.len() as f64).ln()),
                &what("liquidity_score"),
            );
            let volumes: Vec<f64> = rows[i - 19..=i].iter().map(|k| k.volume).collect();
            let vmean = volumes.iter().sum::<f64>() / 20.0;
            let vsd = (volumes.iter().map(|v| (v - vmean).powi(2)).sum::<f64>() / 19.0).sqrt();
            close_to(
                row["volume_z"],
                Some((rows[i].volume - vmean) / vsd),
                1.0,
                &what("volume_z"),
            );
            let shares = &momentum[&rows[i].open_time];
            let positive = shares.iter().filter(|m| **m > 0.0).count() as f64 / shares.len() as f64;
            close_enough(
                row["momentum_alignment"],
                Some(positive),
                &what("momentum_alignment"),
            );
            let returns: Vec<f64> = (i - 19..=i)
                .map(|j| rows[j].close / rows[j - 1].close - 1.0)
                .collect();
            let rmean = returns.iter().sum::<f64>() / 20.0;
            let vol = (returns.iter().map(|r| (r - rmean).powi(2)).sum::<f64>() / 19.0).sqrt();
            close_enough(row["volatility_20"], Some(vol), &what("volatility_20"));
            // Cross-asset: pairs are (this symbol's return, the leader's at the same open time).
            for (leader, name) in [(&btc, "corr_btc_24"), (&eth, "corr_eth_24")] {
                let pairs: Vec<(f64, f64)> = (i - 23..=i)
                    .filter_map(|j| {
                        let x = rows[j].close / rows[j - 1].close - 1.0;
                        leader.get(&rows[j].open_time).map(|y| (x, *y))
                    })
                    .collect();
                let want = (pairs.len() >= 24).then(|| {
                    let n = pairs.len() as f64;
                    let (sx, sy) = pairs
                        .iter()
                        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
                    let sxy: f64 = pairs.iter().map(|(x, y)| x * y).sum();
                    let sxx: f64 = pairs.iter().map(|(x, _)| x * x).sum();
                    let syy: f64 = pairs.iter().map(|(_, y)| y * y).sum();
                    (n * sxy - sx * sy) / ((n * sxx - sx * sx) * (n * syy - sy * sy)).sqrt()
                });
                match (row[name], want) {
                    (Some(g), Some(w)) => {
                        assert!((g - w).abs() < 1e-6, "{} {name}: {g} vs {w}", what(""))
                    }
                    (g, w) => assert_eq!(g, w, "{}", what(name)),
                }
            }
        }
        // Warm-up rows are dropped.
        assert!(!out.contains_key(&(symbol.to_string(), rows[299].open_time)));
    }
}

/// Runs the shipped labels file (H = 2, up 2%, down 1%) over one symbol's candles.
fn run_labels(project: &Project, rows: Vec<Kline>) -> crate::common::Run {
    lake(project, &[("AUSDT", rows)]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    project.write(
        "labels.sql",
        &std::fs::read_to_string(root.join("stages/labels/labels.sql")).unwrap(),
    );
    pipeline(
        project,
        "labels.sql",
        "interval: 1h, bar_ms: 3600000, horizon: 2, up: 0.02, down: 0.01",
        "",
    );
    run(project)
}

#[test]
fn labels_enter_at_the_next_open() {
    let project = Project::new();
    // H = 2, up 2%, down 1%.
    let rows = vec![
        bar(0, 100.0, 100.0, 100.0, 100.0),
        bar(1, 100.0, 104.0, 99.5, 103.0),  // entry for t=0 is 100
        bar(2, 103.0, 104.0, 102.0, 103.5), // t=0: fwd 3.5%, dd -0.5% -> BUY
        bar(3, 103.5, 104.0, 101.0, 101.0), // t=1: entry 103, close[3] 101 -> -1.94%, low 101 -> dd -1.94% -> SELL
        bar(4, 101.0, 101.5, 100.8, 101.2), // t=2: entry 103.5, close[4] 101.2 -> -2.2% -> SELL
        bar(5, 101.2, 101.3, 101.0, 101.2), // t=3: entry 101, close 101.2 -> 0.2%, low 100.8 -> -0.2% -> HOLD
    ];
    let run = run_labels(&project, rows);
    let batches = read_output(&project, &run, "out.parquet");
    let out = table(&batches);
    let at = |i: i64, column: &str| out[&("AUSDT".to_owned(), START + i * HOUR)][column].unwrap();
    // t=0: entry open[1] = 100, exit close[2] = 103.5, lowest low of bars 1..2 = 99.5.
    close_enough(Some(at(0, "fwd_ret")), Some(0.035), "fwd_ret t=0");
    close_enough(Some(at(0, "drawdown")), Some(-0.005), "drawdown t=0");
    // t=1: entry open[2] = 103, exit close[3] = 101, lowest low of bars 2..3 = 101.
    close_enough(
        Some(at(1, "fwd_ret")),
        Some(101.0 / 103.0 - 1.0),
        "fwd_ret t=1",
    );
    close_enough(
        Some(at(1, "drawdown")),
        Some(101.0 / 103.0 - 1.0),
        "drawdown t=1",
    );
    let mut labels = Vec::new();
    for batch in &batches {
        let label =
            arrow::compute::cast(batch.column_by_name("label").unwrap(), &DataType::Utf8).unwrap();
        let label = label.as_string::<i32>();
        for row in 0..batch.num_rows() {
            labels.push(label.value(row).to_owned());
        }
    }
    assert_eq!(
        labels,
        ["BUY", "SELL", "SELL", "HOLD"],
        "rows without two bars ahead have no label"
    );
}

#[test]
fn the_look_ahead_guard_catches_lead() {
    let project = Project::new();
    lake(&project, &market(400));
    project.write(
        "peek.sql",
        "-- a feature that peeks at the next bar\nSELECT symbol, open_time, close,\n  LEAD(close) OVER (PARTITION BY symbol ORDER BY open_time) / close - 1.0 AS next_return\nFROM klines\n",
    );
    pipeline(&project, "peek.sql", "", "      lookahead_check: true\n");
    let run = project.run(&["run", "pipelines/s.yaml"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("look-ahead in peek.sql"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("`next_return`"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("`close`"),
        "only the offending column is named: {}",
        run.stderr
    );

    // The same without the peek passes.
    project.write(
        "peek.sql",
        "SELECT symbol, open_time, close,\n  close / LAG(close) OVER (PARTITION BY symbol ORDER BY open_time) - 1.0 AS last_return\nFROM klines\n",
    );
    let run = project.run(&["run", "pipelines/s.yaml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

/// The guard's reruns on a Ballista cluster (in-process standalone mode) catch the same peek,
/// and the clean query passes there too.
#[test]
fn the_look_ahead_guard_catches_lead_on_ballista() {
    let project = Project::new();
    lake(&project, &market(400));
    project.write(
        "peek.sql",
        "SELECT symbol, open_time, close,\n  LEAD(close) OVER (PARTITION BY symbol ORDER BY open_time) / close - 1.0 AS next_return\nFROM klines\n",
    );
    let extra = "      lookahead_check: true\n      engine: {ballista: standalone}\n";
    pipeline(&project, "peek.sql", "", extra);
    let run = project.run(&["run", "pipelines/s.yaml"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("look-ahead in peek.sql") && run.stderr.contains("`next_return`"),
        "{}",
        run.stderr
    );
    let log = crate::common::newest_log(&project, "out");
    assert!(log.contains("engine: Ballista (standalone"), "{log}");

    project.write(
        "peek.sql",
        "SELECT symbol, open_time, close,\n  ema(close, 12) OVER (PARTITION BY symbol ORDER BY open_time) AS smooth\nFROM klines\n",
    );
    let run = project.run(&["run", "pipelines/s.yaml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn sql_errors_point_into_the_sql_file() {
    let project = Project::new();
    lake(&project, &[("AUSDT", vec![bar(0, 1.0, 1.0, 1.0, 1.0)])]);
    project.write("bad.sql", "SELECT symbol,\n  close\nFROM klines WHERE\n");
    pipeline(&project, "bad.sql", "", "");
    let run = project.run(&["run", "pipelines/s.yaml", "--validate-only"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("bad.sql:3:"), "{}", run.stderr);

    project.write("bad.sql", "SELECT symbol,\n  closing_price\nFROM klines\n");
    let run = project.run(&["run", "pipelines/s.yaml"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("bad.sql:2:3"), "{}", run.stderr);
    assert!(run.stderr.contains("closing_price"), "{}", run.stderr);
}

#[test]
fn validate_only_plans_the_shipped_pipeline_sql_against_its_inputs() {
    let project = Project::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "pipelines/demo.yaml",
        "data/scenarios/demo.yaml",
        "stages/labels/labels.sql",
        "stages/kernels/mlp.cu",
    ] {
        project.write(file, &std::fs::read_to_string(root.join(file)).unwrap());
    }
    let features = std::fs::read_to_string(root.join("stages/features/features.sql")).unwrap();
    project.write("stages/features/features.sql", &features);
    let ok = project.run(&["run", "pipelines/demo.yaml", "--validate-only"]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    // A misspelt column, found without running anything, located in the SQL file.
    let broken = features.replacen(
        "volume / close AS volume_price_ratio",
        "volume / closing AS volume_price_ratio",
        1,
    );
    let line = broken
        .lines()
        .position(|l| l.contains("volume / closing"))
        .unwrap()
        + 1;
    project.write("stages/features/features.sql", &broken);
    let run = project.run(&["run", "pipelines/demo.yaml", "--validate-only"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("stages/features/features.sql:{line}:")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("closing"), "{}", run.stderr);
    assert!(!project.path().join("runs/cache").exists(), "nothing ran");

    // A feature the features SQL does not produce, named in `train`: located in the pipeline.
    project.write("stages/features/features.sql", &features);
    let demo = std::fs::read_to_string(root.join("pipelines/demo.yaml")).unwrap();
    let demo = demo.replacen(
        "      model: mlp\n",
        "      model: mlp\n      features: [rsi_14, rsi_41]\n",
        1,
    );
    let line = demo.lines().position(|l| l.contains("rsi_41")).unwrap() + 1;
    project.write("pipelines/demo.yaml", &demo);
    let run = project.run(&["run", "pipelines/demo.yaml", "--validate-only"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("pipelines/demo.yaml:{line}:")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("table `features` has no column `rsi_41`"),
        "{}",
        run.stderr
    );
}

#[test]
fn labels_skip_horizons_that_cross_a_missing_bar() {
    let project = Project::new();
    let flat = |i: i64| bar(i, 100.0, 100.5, 99.5, 100.0);
    // Bar 3 is missing: t = 1 and t = 2 would reach past it, so they get no label.
    let rows: Vec<Kline> = [0, 1, 2, 4, 5, 6].into_iter().map(flat).collect();
    let run = run_labels(&project, rows);
    let out = table(&read_output(&project, &run, "out.parquet"));
    let mut labelled: Vec<i64> = out.keys().map(|(_, time)| (time - START) / HOUR).collect();
    labelled.sort();
    assert_eq!(
        labelled,
        [0, 4],
        "only horizons of two whole bars are labelled"
    );
}

#[test]
fn a_column_empty_in_every_row_is_a_warning_naming_it() {
    let project = Project::new();
    lake(&project, &market(400));
    project.write(
        "stages/q.sql",
        "SELECT symbol, open_time, close, CAST(NULL AS DOUBLE) AS nothing, close / 0.0 - close / 0.0 AS nan\nFROM klines\n",
    );
    pipeline(&project, "stages/q.sql", "", "");
    let run = run(&project);
    assert!(
        run.stderr.contains(
            "out.parquet: these columns are null or non-finite in every row: `nothing`, `nan`"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn the_feature_file_fails_naming_a_leader_the_input_lacks() {
    let project = Project::new();
    let data: Vec<_> = market(400)
        .into_iter()
        .filter(|(symbol, _)| *symbol != "ETHUSDT")
        .collect();
    lake(&project, &data);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    project.write(
        "stages/features/features.sql",
        &std::fs::read_to_string(root.join("stages/features/features.sql")).unwrap(),
    );
    pipeline(
        &project,
        "stages/features/features.sql",
        "interval: 1h, bar_ms: 3600000, btc: BTCUSDT, eth: ETHUSDT, warmup: 300",
        "",
    );
    let run = project.run(&["run", "pipelines/s.yaml"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("`params.eth` names `ETHUSDT`, which the `klines` input does not hold where \"interval\" = $interval"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("never collected"), "{}", run.stderr);
    assert!(
        run.stderr.contains("pick another symbol for `eth`"),
        "{}",
        run.stderr
    );

    // A param the directive needs but the stage does not give is a located pipeline error.
    pipeline(
        &project,
        "stages/features/features.sql",
        "interval: 1h, bar_ms: 3600000, btc: BTCUSDT, warmup: 300",
        "",
    );
    let run = project.run(&["run", "pipelines/s.yaml", "--validate-only"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("pipelines/s.yaml:"), "{}", run.stderr);
    assert!(
        run.stderr.contains("requires `$eth` to name a symbol"),
        "{}",
        run.stderr
    );
}

/// The output is written straight to the disk and hashed on the way: the digest the cache
/// records is that of the bytes in place, and no temp file is left beside them.
#[test]
fn the_output_is_placed_whole_under_the_digest_of_its_bytes() {
    let project = Project::new();
    let market = market(3_000);
    let rows: usize = market.iter().map(|(_, rows)| rows.len()).sum();
    lake(&project, &market);
    project.write(
        "q.sql",
        "SELECT symbol, open_time, close, ema(close, 12) OVER w AS e\nFROM klines WINDOW w AS (PARTITION BY symbol ORDER BY open_time)\n",
    );
    pipeline(&project, "q.sql", "", "");
    let run = run(&project);
    let stages = run.json()["stages"].as_array().unwrap().clone();
    let entry = stages.iter().find(|s| s["id"] == "out").unwrap();
    let output = project.path().join(entry["output"].as_str().unwrap());
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(output.parent().unwrap().join("manifest.json")).unwrap(),
    )
    .unwrap();
    let recorded = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|file| file["path"] == "out.parquet")
        .unwrap();
    let bytes = std::fs::read(output.join("out.parquet")).unwrap();
    assert!(bytes.len() > 10_000, "{} bytes", bytes.len());
    assert_eq!(recorded["size"], bytes.len() as u64);
    assert_eq!(
        recorded["blake3"].as_str().unwrap(),
        blake3::hash(&bytes).to_hex().as_str()
    );
    let names: Vec<String> = std::fs::read_dir(&output)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|name| !name.starts_with('.')), "{names:?}");
    let read = read_output(&project, &run, "out.parquet");
    assert_eq!(read.iter().map(RecordBatch::num_rows).sum::<usize>(), rows);
}
