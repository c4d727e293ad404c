//! The `train` stage: models that learn, splits that do not leak, a scaler that sees only its
//! training span, and a GPU path that fails over (or fails, when asked for) with its reason.
//! CPU only: the GPU's own tests are in tests/gpu.rs.

mod common;

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use asterflow::train::split::{SplitSpec, Window};
use asterflow::train::{self, Balance, Device, ModelKind, TrainConfig};
use common::Project;

const HOUR: i64 = 3_600_000;

fn config(model: ModelKind) -> TrainConfig {
    TrainConfig {
        model,
        hidden: 16,
        epochs: 30,
        batch_size: 128,
        learning_rate: 0.01,
        balance: Balance::Auto,
        seed: 7,
        alpha: 1.0,
        max_iterations: 200,
        tolerance: 1e-6,
    }
}

fn split(folds: usize) -> SplitSpec {
    SplitSpec {
        folds,
        window: Window::Expanding,
        train_blocks: 0,
        embargo_ms: 4 * HOUR,
    }
}

fn fit(data: &train::Dataset, config: &TrainConfig, folds: usize) -> train::Outcome {
    train::fit(
        data,
        config,
        &split(folds),
        train::Placement {
            device: Device::Cpu,
            fallback_allowed: false,
            kernels: "",
        },
        &mut |_| {},
        &|| false,
    )
    .unwrap()
}

#[test]
fn logistic_softmax_and_mlp_learn_a_separable_problem_out_of_sample() {
    let data = train::synthetic::separable(400, 5, 6, 4, 1);
    for model in [ModelKind::Logistic, ModelKind::Softmax, ModelKind::Mlp] {
        let outcome = fit(&data, &config(model), 3);
        assert!(
            outcome.overall.balanced_accuracy > 0.9,
            "{model:?}: balanced accuracy {}",
            outcome.overall.balanced_accuracy
        );
        // The majority baseline is at chance whatever the classes' shares.
        assert!((outcome.overall_baseline.balanced_accuracy - 1.0 / 3.0).abs() < 1e-9);
        assert!(
            outcome.verdict.starts_with("beats the baseline by"),
            "{model:?}: {}",
            outcome.verdict
        );
        // Every test row predicted once, across the three test blocks.
        assert_eq!(
            outcome.predicted_rows.len(),
            outcome
                .folds
                .iter()
                .map(|fold| fold.fold.test_rows)
                .sum::<usize>()
        );
        if model != ModelKind::Logistic {
            let curve = &outcome.folds[0].loss_curve;
            assert_eq!(curve.len(), 30);
            assert!(curve[29] < curve[0] * 0.5, "{model:?}: {curve:?}");
        }
    }
}

#[test]
fn shuffled_labels_do_not_beat_the_baseline() {
    // The same features with labels drawn independently of them: nothing to learn.
    let mut data = train::synthetic::separable(400, 5, 6, 4, 2);
    let mut rng = asterflow::rng::Rng::new(9);
    for label in &mut data.y {
        *label = (rng.next_u64() % 3) as u8;
    }
    let outcome = fit(&data, &config(ModelKind::Logistic), 3);
    assert!(
        outcome.overall.balanced_accuracy < 0.40,
        "{}",
        outcome.overall.balanced_accuracy
    );
}

#[test]
fn no_training_label_window_overlaps_a_test_row_and_the_scaler_sees_only_training_rows() {
    let mut data = train::synthetic::separable(300, 2, 3, 4, 3);
    // Feature 0 becomes the bar's time index, so any leak of test rows into the scaler shows.
    for (row, &time) in data.time.iter().enumerate() {
        data.x[row * 3] = (time / HOUR) as f32;
    }
    // One label stretches far ahead (a gap in its horizon): it must be purged by its end time.
    data.label_end[10] = 299 * HOUR;
    let outcome = fit(&data, &config(ModelKind::Softmax), 4);
    for fold in &outcome.folds {
        let (test_start, test_end) = fold.fold.test_span;
        let tests: Vec<usize> = outcome
            .predicted_rows
            .iter()
            .filter(|(_, number)| *number == fold.fold.number)
            .map(|(row, _)| *row)
            .collect();
        assert!(
            tests
                .iter()
                .all(|&row| (test_start..=test_end).contains(&data.time[row]))
        );
        let train: Vec<usize> = fold.fold.train.clone();
        for &row in &train {
            assert!(
                data.label_end[row] < test_start,
                "fold {}: training row at bar {} has a label reaching bar {}, inside the test block from bar {}",
                fold.fold.number,
                data.time[row] / HOUR,
                data.label_end[row] / HOUR,
                test_start / HOUR
            );
        }
        assert!(!train.contains(&10));
        // The fold's scaler: the mean of the training rows' time index, nothing later.
        let mean = train
            .iter()
            .map(|&row| f64::from(data.x[row * 3]))
            .sum::<f64>()
            / train.len() as f64;
        assert!((fold.scaler.mean[0] - mean).abs() < 1e-6);
        assert!(fold.scaler.mean[0] < (test_start / HOUR) as f64);
    }
}

/// Features and labels Parquet files a pipeline's `command` stages hand to `train`.
fn write_fixtures(project: &Project) {
    let data = train::synthetic::separable(240, 4, 3, 4, 5);
    let rows = data.rows();
    let symbols: Vec<&str> = data
        .symbol
        .iter()
        .map(|&s| data.symbols[s as usize].as_str())
        .collect();
    let column = |i: usize| -> Arc<dyn arrow::array::Array> {
        Arc::new(Float64Array::from(
            (0..rows)
                .map(|row| f64::from(data.x[row * 3 + i]))
                .collect::<Vec<_>>(),
        ))
    };
    let features = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, false),
            Field::new("open_time", DataType::Int64, false),
            Field::new("close", DataType::Float64, false),
            Field::new("f0", DataType::Float64, true),
            Field::new("f1", DataType::Float64, true),
            Field::new("f2", DataType::Float64, true),
        ])),
        vec![
            Arc::new(StringArray::from(symbols.clone())),
            Arc::new(Int64Array::from(data.time.clone())),
            Arc::new(Float64Array::from(vec![100.0; rows])),
            column(0),
            column(1),
            column(2),
        ],
    )
    .unwrap();
    let labels = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, false),
            Field::new("open_time", DataType::Int64, false),
            Field::new("label_end_time", DataType::Int64, false),
            Field::new("label", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(StringArray::from(symbols)),
            Arc::new(Int64Array::from(data.time.clone())),
            Arc::new(Int64Array::from(data.label_end.clone())),
            Arc::new(StringArray::from(
                data.y
                    .iter()
                    .map(|&y| data.classes[y as usize].as_str())
                    .collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap();
    for (name, batch) in [("features", features), ("labels", labels)] {
        let path = project.path().join(format!("fixtures/{name}.parquet"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let file = std::fs::File::create(path).unwrap();
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }
    let kernels = Path::new(env!("CARGO_MANIFEST_DIR")).join("stages/kernels/mlp.cu");
    project.write(
        "stages/kernels/mlp.cu",
        &std::fs::read_to_string(kernels).unwrap(),
    );
}

fn train_pipeline(with: &str) -> String {
    format!(
        "name: t\nstages:\n  features:\n    kind: command\n    with:\n      run: cp \"$ASTERFLOW_PROJECT_ROOT/fixtures/features.parquet\" \"$ASTERFLOW_OUTPUT_DIR/\"\n  labels:\n    kind: command\n    with:\n      run: cp \"$ASTERFLOW_PROJECT_ROOT/fixtures/labels.parquet\" \"$ASTERFLOW_OUTPUT_DIR/\"\n  train:\n    kind: train\n    needs: [features, labels]\n    with:\n{with}"
    )
}

#[test]
fn device_gpu_without_a_usable_gpu_fails_with_the_reason_and_auto_falls_back() {
    let project = Project::new();
    write_fixtures(&project);
    project.write(
        "pipelines/gpu.yaml",
        &train_pipeline("      model: softmax\n      device: gpu\n      folds: 2\n"),
    );
    // ASTERFLOW_GPU=off makes any machine one without a usable GPU, GPU machines included.
    let output = project
        .command(&["run", "pipelines/gpu.yaml"])
        .env("ASTERFLOW_GPU", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("`device: gpu`, but GPU not available: disabled by ASTERFLOW_GPU=off"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    project.write(
        "pipelines/auto.yaml",
        &train_pipeline("      model: mlp\n      hidden: 8\n      epochs: 5\n      device: auto\n      folds: 2\n"),
    );
    let output = project
        .command(&["run", "pipelines/auto.yaml", "--json"])
        .env("ASTERFLOW_GPU", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("training on the CPU: GPU not available: disabled by ASTERFLOW_GPU=off"),
        "{stderr}"
    );
    assert!(stderr.contains("verdict: beats the baseline"), "{stderr}");
    let run: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let train = run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|stage| stage["id"] == "train")
        .unwrap();
    let dir = project.path().join(train["output"].as_str().unwrap());
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["device"], "cpu");
    // `close` is a price level, left out by default; the three features are used.
    assert_eq!(metrics["features"], serde_json::json!(["f0", "f1", "f2"]));
    assert!(metrics["overall"]["baseline"]["balanced_accuracy"].is_number());
    let model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("model.json")).unwrap()).unwrap();
    assert_eq!(model["format_version"], 1);
    assert_eq!(model["network"]["hidden"], 8);
    assert_eq!(
        model["network"]["params"].as_array().unwrap().len(),
        3 * 8 + 8 + 8 * 3 + 3
    );
    // The predictions are plain Parquet: symbol, time, fold, label, predicted, p_<class>.
    let file = std::fs::File::open(dir.join("predictions.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut rows = 0;
    for batch in reader {
        let batch = batch.unwrap();
        let names: Vec<String> = batch
            .schema()
            .fields()
            .iter()
            .map(|field| field.name().clone())
            .collect();
        assert_eq!(
            names,
            [
                "symbol",
                "open_time",
                "fold",
                "label",
                "predicted",
                "p_BUY",
                "p_HOLD",
                "p_SELL"
            ]
        );
        rows += batch.num_rows();
    }
    assert_eq!(
        rows as u64,
        metrics["overall"]["model"]["rows"].as_u64().unwrap()
    );
}

#[test]
fn train_param_mistakes_are_located_before_anything_runs() {
    let project = Project::new();
    write_fixtures(&project);
    project.write(
        "pipelines/bad.yaml",
        &train_pipeline("      model: logistic\n      hidden: 8\n"),
    );
    let run = project.run(&["run", "pipelines/bad.yaml", "--validate-only"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("pipelines/bad.yaml:16:15"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("`hidden` applies to model mlp, not logistic"),
        "{}",
        run.stderr
    );
}
