//! Tree models benchmark (issue 20): `gbdt` against LightGBM and `forest` against
//! scikit-learn's RandomForestClassifier, side by side in one run, on the 1M x 40 problem of
//! the training benchmark (`train::synthetic::separable`, 10,000 bars x 100 symbols, 3
//! classes): the first 80% of the bars to fit, the last 20% to score. Equal settings: 100
//! rounds of depth 6 at learning rate 0.1 with 20 rows a leaf (LightGBM with 64 leaves, so
//! depth binds), and 100 trees of depth 10 trying sqrt(40) = 6 features a split on bootstrap
//! samples; every core for all of them.
//!
//! The peers run from `scripts/tree_peers.py` in the Python of `ASTERFLOW_PYTHON` (the venv
//! `.ci/run` makes, with lightgbm and scikit-learn), else they are left out with a note.
//! Run with `cargo bench --bench trees` (`-- gbdt` or `-- forest` for one; `-- quick` for a
//! tenth of the rows). `-- demo FEATURES.parquet LABELS.parquet` runs the same comparison on a
//! demo run's features and labels instead (the `features` and `labels` stages' outputs):
//! joined as `train` joins them, the first 80% of the rows by time to fit (those whose labels
//! reach the rest purged), the rest to score, every column standardised by the training rows.

use std::io::Write;
use std::time::Instant;

use asterflow::train::trees::{self, Binned, BoostParams, FeatureRule, ForestParams, MaxFeatures};

const FEATURES: usize = 40;
const CLASSES: usize = 3;
const ROUNDS: usize = 100;
const RATE: f64 = 0.1;
const DEPTH: usize = 6;
const MIN_LEAF: usize = 20;
const TREES: usize = 100;
const FOREST_DEPTH: usize = 10;

fn accuracy(probabilities: &[f32], y: &[u8]) -> f64 {
    let right = y
        .iter()
        .enumerate()
        .filter(|(row, label)| {
            asterflow::train::metrics::argmax(&probabilities[row * CLASSES..(row + 1) * CLASSES])
                == **label as usize
        })
        .count();
    right as f64 / y.len() as f64
}

/// A demo run's features and labels, split and standardised as described at the top.
fn demo(features: &str, labels: &str) -> (Vec<f32>, Vec<u8>, Vec<f32>, Vec<u8>, usize) {
    use datafusion::prelude::{ParquetReadOptions, SessionContext};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let session = SessionContext::new();
    let data = runtime.block_on(async {
        for (name, path) in [("features", features), ("labels", labels)] {
            session
                .register_parquet(name, path, ParquetReadOptions::default())
                .await
                .unwrap();
        }
        let schema = session
            .table("features")
            .await
            .unwrap()
            .schema()
            .as_arrow()
            .clone();
        // As `train` takes them: every numeric column but the keys and `close`, less those
        // with no value in any row (data the demo does not collect).
        let empty = asterflow::sql::empty_columns(std::path::Path::new(features)).unwrap();
        let columns: Vec<String> =
            asterflow::train::feature_columns(&schema, "features", None, &["close".into()])
                .unwrap()
                .into_iter()
                .filter(|column| !empty.contains(column))
                .collect();
        let classes: Vec<String> = ["BUY", "HOLD", "SELL"].map(String::from).to_vec();
        asterflow::train::load(&session, "features", "labels", &columns, &classes)
            .await
            .unwrap()
    });
    let dim = data.dim();
    let cut = data.rows() * 8 / 10;
    let test_start = data.time[cut];
    let first_test = data.time.partition_point(|&time| time < test_start);
    let train: Vec<usize> = (0..first_test)
        .filter(|&row| data.label_end[row] < test_start)
        .collect();
    let test: Vec<usize> = (first_test..data.rows()).collect();
    let scaler = asterflow::train::Scaler::fit(&data.x, dim, &train);
    (
        scaler.apply(&data.x, &train),
        train.iter().map(|&row| data.y[row]).collect(),
        scaler.apply(&data.x, &test),
        test.iter().map(|&row| data.y[row]).collect(),
        dim,
    )
}

fn write(path: &std::path::Path, bytes: &[u8]) {
    std::fs::File::create(path)
        .and_then(|mut file| file.write_all(bytes))
        .unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let wants = |part: &str| {
        let named: Vec<&String> = args
            .iter()
            .filter(|a| ["gbdt", "forest"].contains(&a.as_str()))
            .collect();
        named.is_empty() || named.iter().any(|a| *a == part)
    };
    let bars = if args.iter().any(|a| a == "quick") {
        1_000
    } else {
        10_000
    };
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let (train_x, train_y, test_x, test_y, features) = match args.iter().position(|a| a == "demo") {
        Some(at) => demo(&args[at + 1], &args[at + 2]),
        None => {
            let data = asterflow::train::synthetic::separable(bars, 100, FEATURES, 4, 17);
            let cut = data.rows() * 8 / 10;
            let (train_x, test_x) = data.x.split_at(cut * FEATURES);
            let (train_y, test_y) = data.y.split_at(cut);
            (
                train_x.to_vec(),
                train_y.to_vec(),
                test_x.to_vec(),
                test_y.to_vec(),
                FEATURES,
            )
        }
    };
    let (train_x, train_y, test_x, test_y) = (&train_x[..], &train_y[..], &test_x[..], &test_y[..]);
    let cut = train_y.len();
    let rows = cut + test_y.len();
    eprintln!(
        "{cut} training rows and {} test rows x {features} features, {threads} threads",
        rows - cut
    );

    let dir = tempfile::tempdir().unwrap();
    let bytes = |values: &[f32]| {
        values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>()
    };
    write(&dir.path().join("train_x.f32"), &bytes(train_x));
    write(&dir.path().join("test_x.f32"), &bytes(test_x));
    write(&dir.path().join("train_y.u8"), train_y);
    write(&dir.path().join("test_y.u8"), test_y);
    write(
        &dir.path().join("meta.json"),
        format!("{{\"features\": {features}, \"classes\": {CLASSES}}}").as_bytes(),
    );

    let all: Vec<usize> = (0..cut).collect();
    let weights = vec![1.0f32; cut];
    let mut ours = Vec::new();
    if wants("gbdt") {
        let started = Instant::now();
        let binned = Binned::new(train_x, features, &all, &all, threads);
        let model = trees::fit_boosted(
            &binned,
            train_y,
            &weights,
            CLASSES,
            &trees::every_row(&binned),
            &[],
            &BoostParams {
                iterations: ROUNDS,
                learning_rate: RATE,
                max_depth: DEPTH,
                min_leaf: MIN_LEAF as f64,
                l2: 0.0,
                early_stopping: 0,
            },
            threads,
            &mut |_| {},
            &|| false,
        )
        .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        let right = accuracy(&model.predict(test_x, rows - cut), test_y);
        println!("asterflow gbdt: fit {seconds:.1} s, test accuracy {right:.4}");
        ours.push(("gbdt", seconds, right));
    }
    if wants("forest") {
        let started = Instant::now();
        let binned = Binned::new(train_x, features, &all, &all, threads);
        let model = trees::fit_forest(
            &binned,
            train_y,
            &weights,
            CLASSES,
            &ForestParams {
                trees: TREES,
                max_depth: FOREST_DEPTH,
                min_leaf: 1.0,
                max_features: MaxFeatures::Rule(FeatureRule::Sqrt),
                bootstrap: true,
                seed: 1,
            },
            threads,
            &|_| {},
            &|| false,
        )
        .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        let right = accuracy(&model.predict(test_x, rows - cut), test_y);
        println!("asterflow forest: fit {seconds:.1} s, test accuracy {right:.4}");
        ours.push(("forest", seconds, right));
    }

    let python = std::env::var("ASTERFLOW_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/asterflow-pyenv/bin/python",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/tree_peers.py");
    let output = std::process::Command::new(&python)
        .arg(script)
        .arg(dir.path())
        .args([
            if wants("gbdt") { ROUNDS } else { 0 }.to_string(),
            RATE.to_string(),
            DEPTH.to_string(),
            MIN_LEAF.to_string(),
            if wants("forest") { TREES } else { 0 }.to_string(),
            FOREST_DEPTH.to_string(),
            threads.to_string(),
        ])
        .output();
    let peers: serde_json::Value = match output {
        Ok(output) if output.status.success() => {
            serde_json::from_slice(&output.stdout).unwrap_or_default()
        }
        Ok(output) => {
            println!(
                "the peers did not run ({python}): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            return;
        }
        Err(error) => {
            println!("the peers did not run: {python}: {error} (set ASTERFLOW_PYTHON)");
            return;
        }
    };
    for (name, seconds, right) in &ours {
        let peer = if *name == "gbdt" {
            "lightgbm"
        } else {
            "sklearn_forest"
        };
        let theirs = &peers[peer];
        let (their_seconds, their_accuracy) = (
            theirs["fit_seconds"].as_f64().unwrap_or(f64::NAN),
            theirs["accuracy"].as_f64().unwrap_or(f64::NAN),
        );
        println!(
            "{name}: asterflow {seconds:.1} s at {right:.4} | {peer} {} {their_seconds:.1} s at {their_accuracy:.4} | speed {:.2}x, accuracy {:+.2} points",
            theirs["version"].as_str().unwrap_or("?"),
            their_seconds / seconds,
            (right - their_accuracy) * 100.0
        );
    }
}
