//! GPU training against the CPU trainer, from the same seed. Each test skips, printing why,
//! where no GPU passes the checks (`asterflow doctor` shows them); on an NVIDIA GPU (an H200 is
//! the reference) they must pass.
//!
//! Tolerances: the two trainers do the same arithmetic in a different summation order (the CPU
//! multiplies blocked matrices, the kernels sum each dot product in row order) and the device's
//! `expf`/`logf` differ from the host's by an ulp or two, so results agree to rounding, not
//! bit for bit: each epoch's mean training loss within 1e-3 relative, and every predicted
//! probability within 2e-3 absolute, after 5 epochs of Adam.

use std::path::Path;

use asterflow::train::gpu;
use asterflow::train::network::{self, AdamConfig, CpuTrainer, Network, Trainer, TrainingSet};

const LOSS_TOLERANCE: f64 = 1e-3;
const PROBABILITY_TOLERANCE: f32 = 2e-3;

/// With `ASTERFLOW_REQUIRE_GPU=1` (what `.ci/gpu-run` sets on the GPU machine) a test that
/// would skip fails instead, so a green run there means the GPU tests ran.
fn gpu_required() -> bool {
    std::env::var_os("ASTERFLOW_REQUIRE_GPU").is_some_and(|value| value == "1")
}

fn usable_gpu() -> Option<std::sync::Arc<gpu::Gpu>> {
    match gpu::usable() {
        Ok(gpu) => Some(gpu),
        Err(reason) if gpu_required() => {
            panic!("ASTERFLOW_REQUIRE_GPU=1, and no GPU is usable: {reason}")
        }
        Err(reason) => {
            eprintln!("skipped: {reason}");
            None
        }
    }
}

fn kernels() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("stages/kernels/mlp.cu"))
        .unwrap()
}

/// Standardised rows of the separable problem, with uneven class weights.
fn training_set(bars: usize) -> TrainingSet {
    let data = asterflow::train::synthetic::separable(bars, 10, 16, 4, 11);
    let rows: Vec<usize> = (0..data.rows()).collect();
    let scaler = asterflow::train::Scaler::fit(&data.x, data.dim(), &rows);
    TrainingSet {
        x: scaler.apply(&data.x, &rows),
        weights: data
            .y
            .iter()
            .map(|&y| [1.5, 0.6, 1.5][y as usize])
            .collect(),
        y: data.y,
        rows: rows.len(),
        inputs: 16,
    }
}

fn run(trainer: &mut dyn Trainer, rows: usize, epochs: usize) -> Vec<f64> {
    (0..epochs)
        .map(|epoch| {
            trainer
                .epoch(&network::epoch_order(rows, 5, epoch))
                .unwrap()
        })
        .collect()
}

#[test]
fn gpu_and_cpu_training_agree_from_the_same_seed() {
    let Some(gpu) = usable_gpu() else { return };
    let set = training_set(2_000);
    let held_out = training_set(300);
    for hidden in [32, 0] {
        let initial = Network::initialised(16, hidden, 3, 21);
        let adam = AdamConfig::new(3e-3);
        let mut cpu = CpuTrainer::new(initial.clone(), &set, 256, adam);
        let mut device =
            gpu::trainer::GpuTrainer::new(gpu.clone(), &kernels(), &initial, &set, 256, adam)
                .unwrap();
        let cpu_curve = run(&mut cpu, set.rows, 5);
        let gpu_curve = run(&mut device, set.rows, 5);
        for (epoch, (a, b)) in cpu_curve.iter().zip(&gpu_curve).enumerate() {
            assert!(
                ((a - b) / a).abs() < LOSS_TOLERANCE,
                "hidden {hidden}, epoch {}: CPU loss {a}, GPU loss {b}",
                epoch + 1
            );
        }
        assert!(cpu_curve[4] < cpu_curve[0], "{cpu_curve:?}");
        let cpu_probs = cpu.predict(&held_out.x, held_out.rows).unwrap();
        let gpu_probs = device.predict(&held_out.x, held_out.rows).unwrap();
        let worst = cpu_probs
            .iter()
            .zip(&gpu_probs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < PROBABILITY_TOLERANCE,
            "hidden {hidden}: probabilities differ by up to {worst}"
        );
        // The GPU's own weights, run through the CPU's forward pass, predict the same.
        let weights = device.network().unwrap();
        let via_cpu = weights.predict(&held_out.x, held_out.rows);
        let worst = via_cpu
            .iter()
            .zip(&gpu_probs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < 1e-4,
            "hidden {hidden}: forward passes differ by {worst}"
        );
    }
}

#[test]
fn doctor_reports_every_check_it_ran() {
    let project = crate::common::Project::new();
    let run = project.run(&["doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let checks = report["checks"].as_array().unwrap();
    assert!(!checks.is_empty());
    if report["usable"] == true {
        assert_eq!(run.code, 0);
        let names: Vec<&str> = checks
            .iter()
            .map(|c| c["check"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "driver library",
                "driver",
                "device",
                "NVRTC library",
                "NVRTC",
                "smoke kernel"
            ]
        );
        assert!(checks.iter().all(|c| c["ok"] == true));
    } else {
        // No usable GPU here: exit 11, and the failing check says why.
        assert!(
            !gpu_required(),
            "ASTERFLOW_REQUIRE_GPU=1, and doctor finds no usable GPU: {}",
            report["verdict"]
        );
        eprintln!("no usable GPU: {}", report["verdict"]);
        assert_eq!(run.code, 11);
        assert!(
            checks
                .iter()
                .any(|c| c["ok"] == false && !c["detail"].as_str().unwrap().is_empty())
        );
        assert!(
            report["verdict"]
                .as_str()
                .unwrap()
                .contains("GPU not available")
        );
    }
}
