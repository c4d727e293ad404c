//! The `train` stage: models that learn, splits that do not leak, a scaler that sees only its
//! training span, and a GPU path that fails over (or fails, when asked for) with its reason.
//! CPU only: the GPU's own tests are in tests/gpu.rs.

use std::path::Path;
use std::sync::Arc;

use crate::common::Project;
use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use asterflow::train::network::TrainingSet;
use asterflow::train::split::{SplitSpec, Window};
use asterflow::train::{self, Balance, Device, LogisticSolver, ModelKind, TrainConfig};

const HOUR: i64 = 3_600_000;

fn config(model: ModelKind) -> TrainConfig {
    TrainConfig {
        model,
        solver: None,
        hidden: 16,
        epochs: 30,
        batch_size: 128,
        learning_rate: 0.01,
        balance: Balance::Auto,
        seed: 7,
        alpha: 1.0,
        max_iterations: 200,
        tolerance: 1e-6,
        boost: None,
        forest: None,
    }
}

/// `gbdt` and `forest` with small, quick params.
fn trees_config(model: ModelKind) -> TrainConfig {
    use asterflow::train::trees::{BoostParams, FeatureRule, ForestParams, MaxFeatures};
    TrainConfig {
        boost: (model == ModelKind::Gbdt).then_some(train::BoostConfig {
            params: BoostParams {
                iterations: 60,
                learning_rate: 0.2,
                max_depth: 4,
                min_leaf: 10.0,
                l2: 0.0,
                early_stopping: 10,
            },
            validation: 0.1,
        }),
        forest: (model == ModelKind::Forest).then_some(ForestParams {
            trees: 30,
            max_depth: 8,
            min_leaf: 1.0,
            max_features: MaxFeatures::Rule(FeatureRule::Sqrt),
            bootstrap: true,
            seed: 7,
        }),
        balance: Balance::Weights,
        ..config(model)
    }
}

#[test]
fn gbdt_and_forest_learn_the_separable_problem_out_of_sample_and_rank_its_features() {
    // Six features, the even ones weighing twice the odd ones in the score behind the labels.
    let data = train::synthetic::separable(400, 5, 6, 4, 1);
    for model in [ModelKind::Gbdt, ModelKind::Forest] {
        let outcome = fit(&data, &trees_config(model), 3);
        assert!(
            outcome.overall.balanced_accuracy > 0.7,
            "{model:?}: balanced accuracy {}",
            outcome.overall.balanced_accuracy
        );
        assert!(
            outcome.verdict.starts_with("beats the baseline by"),
            "{model:?}: {}",
            outcome.verdict
        );
        let importance = outcome.model.0.importance();
        assert_eq!(importance.len(), 6);
        assert!((importance.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        let even: f64 = importance.iter().step_by(2).sum();
        assert!(
            even > 0.6,
            "{model:?}: the heavier features' share {even} ({importance:?})"
        );
        if model == ModelKind::Gbdt {
            // Early stopping on each training span's tail: a curve per round, a round kept.
            let fold = &outcome.folds[0];
            let rounds = fold.rounds.unwrap();
            assert!(rounds >= 1 && rounds <= fold.validation_curve.len());
            assert_eq!(fold.validation_curve.len(), fold.loss_curve.len());
        }
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
    let linfa = TrainConfig {
        solver: Some(LogisticSolver::Linfa),
        ..config(ModelKind::Logistic)
    };
    let configs = [
        config(ModelKind::Logistic),
        linfa,
        config(ModelKind::Softmax),
        config(ModelKind::Mlp),
    ];
    for config in configs {
        let model = config.model;
        let outcome = fit(&data, &config, 3);
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
        } else if config.solver != Some(LogisticSolver::Linfa) {
            let report = outcome.folds[0].solver.as_ref().unwrap();
            assert_eq!(report.stopped, "Solver converged", "{report:?}");
        }
    }
}

/// A standardised training set from the separable problem, with `flip` of its labels redrawn
/// at random (so the optimum's logits stay small) and the given row weights.
fn training_set(flip: f64, weights: impl Fn(usize) -> f32) -> TrainingSet {
    let data = train::synthetic::separable(500, 4, 5, 4, 11);
    let rows: Vec<usize> = (0..data.rows()).collect();
    let scaler = train::Scaler::fit(&data.x, data.dim(), &rows);
    let mut rng = asterflow::util::rng::Rng::new(5);
    let y = data
        .y
        .iter()
        .map(|&label| {
            if (rng.next_u64() % 1000) as f64 / 1000.0 < flip {
                (rng.next_u64() % 3) as u8
            } else {
                label
            }
        })
        .collect();
    TrainingSet {
        x: scaler.apply(&data.x, &rows),
        weights: (0..rows.len()).map(weights).collect(),
        y,
        rows: rows.len(),
        inputs: data.dim(),
    }
}

fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

fn logistic(solver: LogisticSolver) -> TrainConfig {
    TrainConfig {
        solver: Some(solver),
        max_iterations: 1000,
        tolerance: 1e-9,
        ..config(ModelKind::Logistic)
    }
}

#[test]
fn the_native_logistic_solver_agrees_with_linfa_where_linfa_is_exact() {
    // Noisy labels keep every row's logits within a few units of each other, where linfa's
    // log-sum-exp (relative to the largest logit in the data) is exact.
    let set = training_set(0.4, |_| 1.0);
    let (native, report) = train::fit_logistic(&set, 3, &logistic(LogisticSolver::Native)).unwrap();
    let (linfa, none) = train::fit_logistic(&set, 3, &logistic(LogisticSolver::Linfa)).unwrap();
    assert!(none.is_none());
    let report = report.unwrap();
    assert_eq!(report.stopped, "Solver converged", "{report:?}");
    let worst = largest_difference(
        &native.predict(&set.x, set.rows),
        &linfa.predict(&set.x, set.rows),
    );
    assert!(worst < 1e-4, "largest probability difference {worst}");
}

#[test]
fn the_native_logistic_solver_reaches_full_accuracy_on_the_separable_problem() {
    // Weak regularisation lets the weights grow until the logits spread by hundreds.
    let set = training_set(0.0, |_| 1.0);
    let config = TrainConfig {
        alpha: 0.01,
        ..logistic(LogisticSolver::Native)
    };
    let (model, report) = train::fit_logistic(&set, 3, &config).unwrap();
    let probs = model.predict(&set.x, set.rows);
    let correct = (0..set.rows)
        .filter(|&row| train::metrics::argmax(&probs[row * 3..row * 3 + 3]) == set.y[row] as usize)
        .count();
    assert!(
        correct as f64 / set.rows as f64 > 0.995,
        "{correct} of {} with {report:?}",
        set.rows
    );
}

#[test]
fn a_class_absent_from_the_training_rows_gets_no_probability() {
    // The separable problem without its HOLD rows: the fit sees BUY and SELL only.
    let full = training_set(0.0, |_| 1.0);
    let keep: Vec<usize> = (0..full.rows).filter(|&row| full.y[row] != 1).collect();
    let set = TrainingSet {
        x: keep
            .iter()
            .flat_map(|&row| full.x[row * full.inputs..(row + 1) * full.inputs].to_vec())
            .collect(),
        y: keep.iter().map(|&row| full.y[row]).collect(),
        weights: vec![1.0; keep.len()],
        rows: keep.len(),
        inputs: full.inputs,
    };
    for solver in [LogisticSolver::Native, LogisticSolver::Linfa] {
        let (model, _) = train::fit_logistic(&set, 3, &logistic(solver)).unwrap();
        let probs = model.predict(&set.x, set.rows);
        for row in 0..set.rows {
            let p = &probs[row * 3..row * 3 + 3];
            assert!(p[1] < 1e-9, "{solver:?}: row {row}: {p:?}");
            assert_eq!(train::metrics::argmax(p), set.y[row] as usize, "{solver:?}");
        }
    }
}

#[test]
fn a_row_weight_of_two_is_the_row_twice() {
    let weighted = training_set(0.3, |row| if row % 5 == 0 { 2.0 } else { 1.0 });
    let mut doubled = training_set(0.3, |_| 1.0);
    for row in (0..weighted.rows).filter(|row| row % 5 == 0) {
        let start = row * doubled.inputs;
        let copy = doubled.x[start..start + doubled.inputs].to_vec();
        doubled.x.extend_from_slice(&copy);
        doubled.y.push(doubled.y[row]);
        doubled.weights.push(1.0);
        doubled.rows += 1;
    }
    let config = logistic(LogisticSolver::Native);
    let (a, _) = train::fit_logistic(&weighted, 3, &config).unwrap();
    let (b, _) = train::fit_logistic(&doubled, 3, &config).unwrap();
    let probe = &weighted.x[..50 * weighted.inputs];
    let worst = largest_difference(&a.predict(probe, 50), &b.predict(probe, 50));
    assert!(worst < 1e-5, "largest probability difference {worst}");
}

#[test]
fn shuffled_labels_do_not_beat_the_baseline() {
    // The same features with labels drawn independently of them: nothing to learn.
    let mut data = train::synthetic::separable(400, 5, 6, 4, 2);
    let mut rng = asterflow::util::rng::Rng::new(9);
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
    for outcome in [
        fit(&data, &config(ModelKind::Softmax), 4),
        fit(&data, &trees_config(ModelKind::Gbdt), 4),
        fit(&data, &trees_config(ModelKind::Forest), 4),
    ] {
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
    let (code, stderr, dir) = run_train(&project, "pipelines/auto.yaml");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("training on the CPU: GPU not available: disabled by ASTERFLOW_GPU=off"),
        "{stderr}"
    );
    assert!(stderr.contains("verdict: beats the baseline"), "{stderr}");
    let metrics = read_json(&dir.join("metrics.json"));
    assert_eq!(metrics["device"], "cpu");
    // `close` is a price level, left out by default; the three features are used.
    assert_eq!(metrics["features"], serde_json::json!(["f0", "f1", "f2"]));
    assert!(metrics["overall"]["baseline"]["balanced_accuracy"].is_number());
    let model = read_json(&dir.join("model.json"));
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

/// Runs `pipeline` through the binary with `--json` and no GPU; its exit code, stderr and the
/// train stage's output directory.
fn run_train(project: &Project, pipeline: &str) -> (Option<i32>, String, std::path::PathBuf) {
    let output = project
        .command(&["run", pipeline, "--json"])
        .env("ASTERFLOW_GPU", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let run: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let train = run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|stage| stage["id"] == "train")
        .unwrap();
    let dir = project.path().join(train["output"].as_str().unwrap());
    (output.status.code(), stderr, dir)
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn logistic_fits_report_how_they_ended_and_warn_when_they_did_not_converge() {
    let project = Project::new();
    write_fixtures(&project);
    project.write(
        "pipelines/converged.yaml",
        &train_pipeline("      model: logistic\n      folds: 2\n"),
    );
    let (code, stderr, dir) = run_train(&project, "pipelines/converged.yaml");
    assert_eq!(code, Some(0), "{stderr}");
    let metrics = read_json(&dir.join("metrics.json"));
    assert_eq!(metrics["solver"], "native");
    assert_eq!(metrics["balance"], "weights");
    for fold in metrics["folds"].as_array().unwrap() {
        assert_eq!(fold["solver"]["stopped"], "Solver converged", "{fold}");
        assert!(fold["solver"]["iterations"].as_u64().unwrap() > 1, "{fold}");
    }
    assert!(!stderr.contains("raise `max_iterations`"), "{stderr}");

    project.write(
        "pipelines/short.yaml",
        &train_pipeline("      model: logistic\n      folds: 2\n      max_iterations: 2\n"),
    );
    let (code, stderr, dir) = run_train(&project, "pipelines/short.yaml");
    assert_eq!(code, Some(0), "{stderr}");
    let metrics = read_json(&dir.join("metrics.json"));
    assert!(
        stderr.contains(
            "fold 1/2: L-BFGS stopped after 2 iterations (maximum number of iterations reached); raise `max_iterations`"
        ),
        "{stderr}"
    );
    assert_eq!(
        metrics["folds"][0]["solver"]["stopped"],
        "Maximum number of iterations reached"
    );

    project.write(
        "pipelines/linfa.yaml",
        &train_pipeline("      model: logistic\n      solver: linfa\n      folds: 2\n"),
    );
    let (code, stderr, dir) = run_train(&project, "pipelines/linfa.yaml");
    assert_eq!(code, Some(0), "{stderr}");
    let metrics = read_json(&dir.join("metrics.json"));
    assert_eq!(metrics["solver"], "linfa");
    assert_eq!(metrics["balance"], "undersample");
    assert!(metrics["folds"][0].get("solver").is_none());
}

#[test]
fn train_param_mistakes_are_located_before_anything_runs() {
    let project = Project::new();
    write_fixtures(&project);
    let cases = [
        (
            "      model: logistic\n      hidden: 8\n",
            "16:15",
            "`hidden` applies to model mlp, not logistic",
        ),
        (
            "      model: mlp\n      solver: linfa\n",
            "16:15",
            "`solver` applies to model logistic, not mlp",
        ),
        (
            "      model: logistic\n      solver: linfa\n      balance: weights\n",
            "17:16",
            "linfa's logistic regression takes no sample weights",
        ),
        (
            "      model: logistic\n      solver: sklearn\n",
            "16:15",
            "unknown variant `sklearn`",
        ),
        (
            "      model: logistic\n      max_iterations: 0\n",
            "16:23",
            "max_iterations must be at least 1",
        ),
        (
            "      model: forest\n      iterations: 5\n",
            "16:19",
            "`iterations` applies to model gbdt, not forest",
        ),
        (
            "      model: gbdt\n      max_features: sqrt\n",
            "16:21",
            "`max_features` applies to model forest, not gbdt",
        ),
        (
            "      model: gbdt\n      validation: 0.95\n",
            "16:19",
            "validation is the share of each training span",
        ),
        (
            "      model: forest\n      device: gpu\n",
            "16:15",
            "model forest trains on the CPU",
        ),
    ];
    for (with, at, message) in cases {
        project.write("pipelines/bad.yaml", &train_pipeline(with));
        let run = project.run(&["run", "pipelines/bad.yaml", "--validate-only"]);
        assert_eq!(run.code, 2, "{with}: {}", run.stderr);
        assert!(
            run.stderr.contains(&format!("pipelines/bad.yaml:{at}")),
            "{with}: {}",
            run.stderr
        );
        assert!(run.stderr.contains(message), "{with}: {}", run.stderr);
    }
}

#[test]
fn no_rows_left_names_the_features_that_are_never_finite() {
    let project = Project::new();
    write_fixtures(&project);
    // `f2` null in every row (a leader that was never collected), `f1` in a few.
    let path = project.path().join("fixtures/features.parquet");
    let file = std::fs::File::open(&path).unwrap();
    let batches: Vec<RecordBatch> =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let rows = batch.num_rows();
    let mut columns = batch.columns().to_vec();
    columns[4] = Arc::new(Float64Array::from(
        (0..rows)
            .map(|row| (row % 10 != 0).then_some(1.0))
            .collect::<Vec<_>>(),
    ));
    columns[5] = Arc::new(Float64Array::from(vec![None::<f64>; rows]));
    let batch = RecordBatch::try_new(batch.schema(), columns).unwrap();
    let file = std::fs::File::create(&path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    project.write(
        "pipelines/t.yaml",
        &train_pipeline("      model: logistic\n      features: [f0, f1, f2]\n      folds: 2\n"),
    );
    let run = project.run(&["run", "pipelines/t.yaml"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "this feature is null or non-finite in every one of the {rows} joined rows: `f2`"
        )),
        "{}",
        run.stderr
    );
    let first_bad_f1 = rows.div_ceil(10);
    assert!(
        run.stderr.contains(&format!(
            "rows dropped, by the first bad feature: `f2` {}, `f1` {first_bad_f1}",
            rows - first_bad_f1
        )),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("(`exclude:`)"), "{}", run.stderr);
}
