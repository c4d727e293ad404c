//! The `backtest` stage through the real binary: predictions, klines, a universe and a funding
//! table handed over as Parquet by `command` stages, and a trade checked by hand in the
//! stage's outputs. The engine's rules one by one are unit tests in `src/backtest/engine.rs`.

use std::sync::Arc;

use crate::common::Project;
use arrow::array::{
    Array, AsArray, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};

const HOUR: i64 = 3_600_000;
const START: i64 = 1_735_689_600_000; // 2025-01-01T00:00Z

fn write(project: &Project, name: &str, batch: &RecordBatch) {
    let path = project.path().join(format!("fixtures/{name}.parquet"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
}

fn read(path: &std::path::Path) -> RecordBatch {
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

fn text(values: Vec<&str>) -> Arc<dyn Array> {
    Arc::new(StringArray::from(values))
}

/// Out-of-sample predictions for AAAUSDT at `times`: P(BUY) and P(SELL) as given, the rest
/// HOLD.
fn predictions(times: &[i64], p_buy: &[f32], p_sell: &[f32]) -> RecordBatch {
    let rows = times.len();
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, false),
            Field::new("open_time", DataType::Int64, false),
            Field::new("fold", DataType::Int32, false),
            Field::new("label", DataType::Utf8, false),
            Field::new("predicted", DataType::Utf8, false),
            Field::new("p_BUY", DataType::Float32, false),
            Field::new("p_HOLD", DataType::Float32, false),
            Field::new("p_SELL", DataType::Float32, false),
        ])),
        vec![
            text(vec!["AAAUSDT"; rows]),
            Arc::new(Int64Array::from(times.to_vec())),
            Arc::new(Int32Array::from(vec![1; rows])),
            text(vec!["HOLD"; rows]),
            text(vec!["HOLD"; rows]),
            Arc::new(Float32Array::from(p_buy.to_vec())),
            Arc::new(Float32Array::from(
                p_buy
                    .iter()
                    .zip(p_sell)
                    .map(|(buy, sell)| 1.0 - buy - sell)
                    .collect::<Vec<_>>(),
            )),
            Arc::new(Float32Array::from(p_sell.to_vec())),
        ],
    )
    .unwrap()
}

/// Six hourly bars of one symbol; one BUY signal at bar 0 (and one on the last bar).
fn fixtures(project: &Project) {
    let opens = [100.0, 100.0, 101.0, 102.0, 103.0, 104.0];
    let rows = opens.len();
    let times: Vec<i64> = (0..rows as i64).map(|bar| START + bar * HOUR).collect();
    let klines = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, false),
            Field::new("interval", DataType::Utf8, false),
            Field::new("open_time", DataType::Int64, false),
            Field::new("open", DataType::Float64, false),
            Field::new("high", DataType::Float64, false),
            Field::new("low", DataType::Float64, false),
            Field::new("close", DataType::Float64, false),
        ])),
        vec![
            text(vec!["AAAUSDT"; rows]),
            text(vec!["1h"; rows]),
            Arc::new(Int64Array::from(times.clone())),
            Arc::new(Float64Array::from(opens.to_vec())),
            Arc::new(Float64Array::from(
                opens.iter().map(|o| o + 0.5).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                opens.iter().map(|o| o - 0.5).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(opens.to_vec())),
        ],
    )
    .unwrap();
    let mut p_buy = vec![0.1f32; rows];
    p_buy[0] = 0.9;
    p_buy[rows - 1] = 0.95; // the last bar's signal: no next open, no trade
    let predictions = predictions(&times, &p_buy, &vec![0.0; rows]);
    let universe = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, false),
            Field::new("step_size", DataType::Float64, true),
            Field::new("min_notional", DataType::Float64, true),
        ])),
        vec![
            text(vec!["AAAUSDT"]),
            Arc::new(Float64Array::from(vec![0.1])),
            Arc::new(Float64Array::from(vec![5.0])),
        ],
    )
    .unwrap();
    // Funding at bar 2's open (held through it) and at bar 5 (after the exit).
    let funding = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, false),
            Field::new("funding_time", DataType::Int64, false),
            Field::new("funding_rate", DataType::Float64, false),
        ])),
        vec![
            text(vec!["AAAUSDT", "AAAUSDT"]),
            Arc::new(Int64Array::from(vec![START + 2 * HOUR, START + 5 * HOUR])),
            Arc::new(Float64Array::from(vec![0.001, 0.5])),
        ],
    )
    .unwrap();
    write(project, "klines", &klines);
    write(project, "predictions", &predictions);
    write(project, "universe", &universe);
    write(project, "funding", &funding);
}

fn pipeline(with: &str) -> String {
    let copy = |files: &str| {
        format!(
            "      run: for f in {files}; do cp \"$ASTERFLOW_PROJECT_ROOT/fixtures/$f.parquet\" \"$ASTERFLOW_OUTPUT_DIR/\"; done\n"
        )
    };
    format!(
        "name: b\nstages:\n  prices:\n    kind: command\n    with:\n{}  signals:\n    kind: command\n    with:\n{}  backtest:\n    kind: backtest\n    needs: [prices, signals]\n    with:\n{with}",
        copy("klines universe funding"),
        copy("predictions")
    )
}

#[test]
fn a_hand_checked_trade_lands_in_the_stages_outputs() {
    let project = Project::new();
    fixtures(&project);
    project.write(
        "pipelines/b.yaml",
        &pipeline(
            "      exit: {stop: 0.02, target: null, horizon: 2}\n      fees: {maker: 0.0005, taker: 0.001}\n      slippage: 0.001\n",
        ),
    );
    let run = project.run(&["run", "pipelines/b.yaml", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let output = run.output_of(&project, "backtest");
    let trades = read(&output.join("trades.parquet"));
    assert_eq!(trades.num_rows(), 1, "the last bar's signal does not trade");
    let float = |name: &str| {
        trades
            .column_by_name(name)
            .unwrap()
            .as_primitive::<Float64Type>()
            .value(0)
    };
    let int = |name: &str| {
        trades
            .column_by_name(name)
            .unwrap()
            .as_primitive::<Int64Type>()
            .value(0)
    };
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9 * b.abs().max(1.0);
    // Signal at bar 0's close; bought at bar 1's open (100) plus 0.1% slippage.
    assert_eq!(int("entry_time"), START + HOUR);
    assert!(close(float("entry_price"), 100.1));
    // 1% of 10,000 at a 2% stop: 5,000 / 100.1 = 49.95 units, rounded down to the 0.1 step.
    assert!(close(float("size"), 49.9), "{}", float("size"));
    // Held two bars, sold at bar 3's open (102) less 0.1%.
    assert_eq!(int("exit_time"), START + 3 * HOUR);
    assert!(close(float("exit_price"), 101.898));
    let fees = 49.9 * (100.1 + 101.898) * 0.001;
    assert!(close(float("fees"), fees));
    // Funding at bar 2's open, 101 * 49.9 * 0.1%; the one at bar 5 is after the exit.
    let funding = 49.9 * 101.0 * 0.001;
    assert!(close(float("funding"), funding));
    let pnl = 49.9 * (101.898 - 100.1) - fees - funding;
    assert!(close(float("pnl"), pnl));
    let reason = trades.column_by_name("exit_reason").unwrap();
    assert_eq!(reason.as_string::<i32>().value(0), "horizon");

    let equity = read(&output.join("equity.parquet"));
    assert_eq!(equity.num_rows(), 6);
    let curve = equity
        .column_by_name("equity")
        .unwrap()
        .as_primitive::<Float64Type>();
    assert!(close(curve.value(5), 10_000.0 + pnl));
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["trades"]["trades"], 1);
    assert_eq!(metrics["skipped"]["last_bar"], 1);
    assert!(close(
        metrics["strategy"]["total_return"].as_f64().unwrap(),
        pnl / 10_000.0
    ));
    assert!(metrics["buy_and_hold"]["total_return"].as_f64().unwrap() > 0.0);
    assert!(
        std::fs::read_to_string(output.join("metrics.txt"))
            .unwrap()
            .contains("buy-and-hold")
    );
}

/// The same market with a SELL signal at bar 0 instead: a short held through the funding at
/// bar 2's open receives the positive rate a long pays.
#[test]
fn a_hand_checked_short_receives_the_funding_a_long_pays() {
    let project = Project::new();
    fixtures(&project);
    let rows = 6;
    let times: Vec<i64> = (0..rows as i64).map(|bar| START + bar * HOUR).collect();
    let mut p_sell = vec![0.1f32; rows];
    p_sell[0] = 0.9;
    let predictions = predictions(&times, &vec![0.0; rows], &p_sell);
    write(&project, "predictions", &predictions);
    project.write(
        "pipelines/b.yaml",
        &pipeline(
            "      entry: {long_above: 0.99, short: true, short_above: 0.6}\n      exit: {stop: 0.05, target: null, horizon: 2}\n      fees: {maker: 0.0005, taker: 0.001}\n      slippage: 0.001\n",
        ),
    );
    let run = project.run(&["run", "pipelines/b.yaml", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let trades = read(&run.output_of(&project, "backtest").join("trades.parquet"));
    assert_eq!(trades.num_rows(), 1);
    let float = |name: &str| {
        trades
            .column_by_name(name)
            .unwrap()
            .as_primitive::<Float64Type>()
            .value(0)
    };
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9 * b.abs().max(1.0);
    // Sold at bar 1's open (100) less 0.1%; 1% of 10,000 at a 5% stop: 100 / (99.9 x 0.05) =
    // 20.02 units, 20.0 on the 0.1 step. Bought back at bar 3's open (102) plus 0.1%.
    assert!(close(float("entry_price"), 99.9));
    assert!(close(float("size"), 20.0), "{}", float("size"));
    assert!(close(float("exit_price"), 102.102));
    // Funding at bar 2's open: -1 x 20 x 101 x 0.1% = -2.02, received; the one at bar 5 is
    // after the exit.
    assert!(close(float("funding"), -2.02), "{}", float("funding"));
    let fees = 20.0 * (99.9 + 102.102) * 0.001;
    assert!(close(float("pnl"), 20.0 * (99.9 - 102.102) - fees + 2.02));
}

#[test]
fn a_probability_column_the_model_lacks_is_located_in_the_pipeline() {
    let project = crate::common::shipped_project();
    let demo = std::fs::read_to_string(project.path().join("pipelines/demo.yaml")).unwrap();
    let demo = demo.replacen(
        "entry: {long_above: 0.6, short: false}",
        "entry: {long_above: 0.6, long_class: LONG}",
        1,
    );
    let line = demo.lines().position(|l| l.contains("LONG}")).unwrap() + 1;
    project.write("pipelines/demo.yaml", &demo);
    let run = project.run(&["run", "pipelines/demo.yaml", "--validate-only"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("pipelines/demo.yaml:{line}:")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(
            "`predictions` has no column `p_LONG`: its classes are `BUY`, `HOLD`, `SELL`"
        ),
        "{}",
        run.stderr
    );
}
