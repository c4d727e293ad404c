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
//! tenth of the rows).

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
    let data = asterflow::train::synthetic::separable(bars, 100, FEATURES, 4, 17);
    let rows = data.rows();
    let cut = rows * 8 / 10;
    let (train_x, test_x) = data.x.split_at(cut * FEATURES);
    let (train_y, test_y) = data.y.split_at(cut);
    eprintln!(
        "{cut} training rows and {} test rows x {FEATURES} features, {threads} threads",
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
        format!("{{\"features\": {FEATURES}, \"classes\": {CLASSES}}}").as_bytes(),
    );

    let all: Vec<usize> = (0..cut).collect();
    let weights = vec![1.0f32; cut];
    let mut ours = Vec::new();
    if wants("gbdt") {
        let started = Instant::now();
        let binned = Binned::new(train_x, FEATURES, &all, &all, threads);
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
        let binned = Binned::new(train_x, FEATURES, &all, &all, threads);
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
