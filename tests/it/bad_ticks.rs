//! The gate on real-looking data: fat-tailed, volatility-clustered series (and real candles a
//! package registry ships) pass `validate` at its defaults, while each planted bad tick is
//! quarantined with the bar named. Series are one year of hourly bars ending now.

use std::path::{Path, PathBuf};

use crate::common::Project;
use crate::validate::{finish, output, write, write_unsorted};
use asterflow::market::model::Kline;
use asterflow::quality::synthetic::{RECIPES, series};

const HOUR: i64 = 3_600_000;

/// The open time of the last closed hour.
fn last_hour() -> i64 {
    (asterflow::util::time::now_ms() as i64 / HOUR - 1) * HOUR
}

/// Real candles from the `backtesting` package on PyPI (its test data: EURUSD hourly, GOOG
/// daily), fetched once into a cache; `None` (and a note) where PyPI cannot be reached.
fn real_candle_files() -> Option<Vec<PathBuf>> {
    let cache = std::env::var_os("ASTERFLOW_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("asterflow-test-cache"))
        .join("backtesting-0.6.6");
    let dir = cache.join("backtesting/test");
    if !dir.join("EURUSD.csv").is_file() {
        std::fs::create_dir_all(&cache).ok()?;
        let fetched = std::process::Command::new("python3")
            .args(["-m", "pip", "download", "--quiet", "--no-deps", "--dest"])
            .arg(&cache)
            .arg("backtesting==0.6.6")
            .status()
            .is_ok_and(|status| status.success());
        let wheel = std::fs::read_dir(&cache)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "whl"));
        let unpacked = fetched
            && wheel.is_some_and(|wheel| {
                std::process::Command::new("python3")
                    .args(["-m", "zipfile", "-e"])
                    .arg(wheel)
                    .arg(&cache)
                    .status()
                    .is_ok_and(|status| status.success())
            });
        if !unpacked {
            eprintln!(
                "note: the `backtesting` wheel could not be fetched from PyPI: real candles skipped"
            );
            return None;
        }
    }
    Some(vec![dir.join("EURUSD.csv"), dir.join("GOOG.csv")])
}

/// A CSV of `,Open,High,Low,Close,Volume` rows restamped onto consecutive hours ending now (the
/// gate compares neighbouring bars; calendar gaps such as weekends are not what it judges).
fn restamped(file: &Path) -> Vec<Kline> {
    let text = std::fs::read_to_string(file).unwrap();
    let values: Vec<[f64; 5]> = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<f64> = line
                .split(',')
                .skip(1)
                .map(|f| f.parse().unwrap_or(f64::NAN))
                .collect();
            (fields.len() == 5 && fields.iter().all(|f| f.is_finite()))
                .then(|| [fields[0], fields[1], fields[2], fields[3], fields[4]])
        })
        .collect();
    let last = (asterflow::util::time::now_ms() as i64 / HOUR - 1) * HOUR;
    let first = last - (values.len() as i64 - 1) * HOUR;
    values
        .iter()
        .enumerate()
        .map(|(i, [open, high, low, close, volume])| {
            let open_time = first + i as i64 * HOUR;
            let volume = volume.max(1.0);
            Kline {
                open_time,
                open: *open,
                high: *high,
                low: *low,
                close: *close,
                volume,
                close_time: open_time + HOUR - 1,
                quote_volume: volume * close,
                trades: 1,
                taker_buy_base: volume / 2.0,
                taker_buy_quote: volume * close / 2.0,
            }
        })
        .collect()
}

fn verdicts(project: &Project) -> Vec<serde_json::Value> {
    let run = project.run(&["run", "pipelines/v.yaml", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: serde_json::Value =
        serde_json::from_str(&output(project, &run, "validate", "validation_report.json")).unwrap();
    report["datasets"].as_array().unwrap().clone()
}

#[test]
fn fat_tailed_clean_series_and_real_candles_pass_at_the_defaults() {
    let project = Project::new();
    let mut names = Vec::new();
    for recipe in &RECIPES {
        let name = format!("S{}USDT", recipe.seed);
        write(
            &project,
            "ex",
            &name,
            &series(recipe, last_hour()),
            "exchange",
        );
        names.push(name);
    }
    for file in real_candle_files().unwrap_or_default() {
        let stem = file.file_stem().unwrap().to_string_lossy().to_uppercase();
        let name = format!("REAL{stem}");
        write(&project, "rec", &name, &restamped(&file), "recorded");
        names.push(name);
    }
    finish(&project, "");
    let datasets = verdicts(&project);
    assert!(datasets.len() >= 12, "{} datasets", datasets.len());
    for dataset in &datasets {
        assert_eq!(
            dataset["passed"], true,
            "{} falsely quarantined: {}",
            dataset["symbol"], dataset["failures"]
        );
        assert!(
            dataset["flagged"].as_array().unwrap().is_empty(),
            "{}",
            dataset["flagged"]
        );
    }
    // The fat tails are there: big returns by robust z, which the old outlier rule refused.
    let largest = datasets
        .iter()
        .map(|d| d["largest_return_z"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(
        largest > 10.0,
        "the series have fat tails (largest robust |z| {largest})"
    );
}

#[test]
fn each_planted_bad_tick_is_quarantined_naming_its_bar() {
    let project = Project::new();
    let clean = series(&RECIPES[0], last_hour());
    let stamp = |i: usize| asterflow::util::time::rfc3339(clean[i].open_time as u64);
    let scaled = |factor: f64, at: usize| {
        let mut rows = clean.clone();
        let bar = &mut rows[at];
        (bar.open, bar.high, bar.low, bar.close) = (
            bar.open * factor,
            bar.high * factor,
            bar.low * factor,
            bar.close * factor,
        );
        rows
    };
    write(&project, "ex", "TENXUSDT", &scaled(10.0, 4000), "exchange");
    write(&project, "ex", "TENTHUSDT", &scaled(0.1, 5000), "exchange");
    let mut zero_low = clean.clone();
    zero_low[6000].low *= 1e-6;
    write(&project, "ex", "ZEROLOWUSDT", &zero_low, "exchange");
    let mut stale = clean.clone();
    let frozen = stale[6999].close;
    for bar in &mut stale[7000..7040] {
        (bar.open, bar.high, bar.low, bar.close) = (frozen, frozen, frozen, frozen);
    }
    write(&project, "ex", "STALEUSDT", &stale, "exchange");
    let mut duplicated = clean.clone();
    duplicated.insert(3000, clean[3000]);
    write_unsorted(&project, "ex", "DUPUSDT", &duplicated);
    write(&project, "ex", "CLEANUSDT", &clean, "exchange");
    finish(&project, "");
    let datasets = verdicts(&project);
    let expected = [
        (
            "TENXUSDT",
            "bad_ticks",
            stamp(4000),
            "x the close before the spike",
        ),
        (
            "TENTHUSDT",
            "bad_ticks",
            stamp(5000),
            "x the close before the spike",
        ),
        ("ZEROLOWUSDT", "bad_ticks", stamp(6000), "low "),
        // The run of identical closes starts at the bar whose close froze.
        ("STALEUSDT", "stale", stamp(6999), "identical closes"),
        ("DUPUSDT", "order", stamp(3000), "1 duplicate"),
    ];
    for (symbol, check, time, words) in expected {
        let dataset = datasets.iter().find(|d| d["symbol"] == symbol).unwrap();
        assert_eq!(dataset["passed"], false, "{symbol} passed");
        let failures: Vec<&str> = dataset["failures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        let failed: Vec<&str> = dataset["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["passed"] == false)
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(failed, [check], "{symbol}: {failures:?}");
        assert!(
            failures[0].contains(&time) && failures[0].contains(words),
            "{symbol}: `{}` should name {time} and say {words}",
            failures[0]
        );
    }
    let tenx = datasets.iter().find(|d| d["symbol"] == "TENXUSDT").unwrap();
    assert_eq!(tenx["flagged"][0]["time"], stamp(4000));
    assert!(
        (tenx["flagged"][0]["value"].as_f64().unwrap() - clean[4000].close * 10.0).abs() < 1e-9
    );
    let clean_report = datasets
        .iter()
        .find(|d| d["symbol"] == "CLEANUSDT")
        .unwrap();
    assert_eq!(clean_report["passed"], true, "{}", clean_report["failures"]);
}

#[test]
fn the_old_outlier_params_are_refused_with_a_pointer_to_the_new_ones() {
    let project = Project::new();
    write(
        &project,
        "ex",
        "AUSDT",
        &series(&RECIPES[1], last_hour())[..1000],
        "exchange",
    );
    finish(&project, "outlier_z: 10");
    let run = project.run(&["run", "pipelines/v.yaml", "--validate-only"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("pipelines/v.yaml:"), "{}", run.stderr);
    assert!(run.stderr.contains("`outlier_z` is gone"), "{}", run.stderr);
    assert!(run.stderr.contains("tick_z"), "{}", run.stderr);
}

#[test]
fn a_quarantined_leader_fails_the_features_naming_it_and_why() {
    let project = Project::new();
    let btc = series(&RECIPES[0], last_hour());
    let mut eth = series(&RECIPES[1], last_hour());
    let bar = &mut eth[4000];
    (bar.open, bar.high, bar.low, bar.close) = (
        bar.open * 10.0,
        bar.high * 10.0,
        bar.low * 10.0,
        bar.close * 10.0,
    );
    write(&project, "ex", "BTCUSDT", &btc, "exchange");
    write(&project, "ex", "ETHUSDT", &eth, "exchange");
    finish(&project, "");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    project.write(
        "stages/features/features.sql",
        &std::fs::read_to_string(root.join("stages/features/features.sql")).unwrap(),
    );
    let pipeline = std::fs::read_to_string(project.path().join("pipelines/v.yaml")).unwrap()
        + "  features:\n    kind: sql\n    needs: [validate]\n    with:\n      query: stages/features/features.sql\n      params: {interval: 1h, bar_ms: 3600000, btc: BTCUSDT, eth: ETHUSDT, warmup: 300}\n";
    project.write("pipelines/v.yaml", &pipeline);
    let run = project.run(&["run", "pipelines/v.yaml"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("`params.eth` names `ETHUSDT`, which the `klines` input does not hold"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("validate quarantined it (ETHUSDT klines 1h: 1 bad tick(s)"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("or relax the gate"), "{}", run.stderr);
}
