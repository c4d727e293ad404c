//! `asterflow runs`: the recent runs, newest first.

use crate::engine::error::Error;
use crate::engine::exit_code;
use crate::engine::run_record::{RunStatus, list_runs};
use crate::engine::runner::Paths;
use crate::util::time::human;

pub fn runs(paths: &Paths, limit: usize, json: bool) -> Result<i32, Error> {
    let records: Vec<_> = list_runs(&paths.run_root).into_iter().take(limit).collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&records).map_err(std::io::Error::other)?
        );
        return Ok(exit_code::OK);
    }
    if records.is_empty() {
        println!("no runs yet in {}", paths.run_root.display());
        return Ok(exit_code::OK);
    }
    let lock_free = !crate::engine::lock::is_held(&paths.run_root);
    println!(
        "{:<22}  {:<11}  {:<16}  {:>8}  stages",
        "run", "status", "pipeline", "duration"
    );
    for record in records {
        let status = match record.status {
            RunStatus::Running if lock_free => "abandoned",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        };
        let duration = record
            .duration_ms
            .map(|ms| human(std::time::Duration::from_millis(ms)))
            .unwrap_or_else(|| "-".to_owned());
        println!(
            "{:<22}  {:<11}  {:<16}  {:>8}  {}",
            record.run_id,
            status,
            record.pipeline,
            duration,
            record.counts(),
        );
    }
    Ok(exit_code::OK)
}
