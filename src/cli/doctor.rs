//! `asterflow doctor`: can training use the GPU? Each check, and why not.

use crate::engine::exit_code;

/// `asterflow doctor`: the same examination `train` runs before it trusts a GPU, step by step.
pub fn doctor(json: bool) -> i32 {
    let examination = crate::train::gpu::examine();
    let verdict = match &examination.outcome {
        Ok(gpu) => format!("GPU usable: {}", gpu.describe()),
        Err(unavailable) => format!("{unavailable}; `device: auto` trains on the CPU"),
    };
    if json {
        let checks: Vec<serde_json::Value> = examination
            .checks
            .iter()
            .map(|check| serde_json::json!({"check": check.name, "ok": check.ok, "detail": check.detail}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "usable": examination.outcome.is_ok(),
                "checks": checks,
                "verdict": verdict,
            })
        );
    } else {
        let width = examination
            .checks
            .iter()
            .map(|check| check.name.len())
            .max()
            .unwrap_or(0);
        for check in &examination.checks {
            let mark = if check.ok { "ok  " } else { "FAIL" };
            println!("{mark} {:<width$}  {}", check.name, check.detail);
        }
        println!("{verdict}");
    }
    if examination.outcome.is_ok() {
        exit_code::OK
    } else {
        exit_code::NO_GPU
    }
}
