//! Writing a run's report: reads the `report` stage's committed `report.json` and renders it
//! with the run record into `runs/<run-id>/report.html` and `report.md` (atomically).

use std::path::{Path, PathBuf};

use super::data::{REPORT_DATA_FILE, REPORT_FORMAT_VERSION, ReportData};
use crate::engine::run_record::RunRecord;

/// Where a run's report went, and the figures to print.
#[derive(Debug)]
pub struct RunReport {
    pub html: PathBuf,
    pub markdown: PathBuf,
    pub key_figures: Vec<String>,
}

/// Renders the report of `record` from the `report.json` in `stage_output`, into `run_dir`.
pub fn write_for_run(
    record: &RunRecord,
    stage_output: &Path,
    run_dir: &Path,
) -> Result<RunReport, String> {
    let path = stage_output.join(REPORT_DATA_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let data: ReportData =
        serde_json::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))?;
    if data.format_version != REPORT_FORMAT_VERSION {
        return Err(format!(
            "{} has format {}, this asterflow reads {REPORT_FORMAT_VERSION}: run with --force",
            path.display(),
            data.format_version
        ));
    }
    let html = run_dir.join("report.html");
    let markdown = run_dir.join("report.md");
    let write = |path: &Path, text: String| {
        crate::util::fsx::write_atomic(path, text.as_bytes())
            .map_err(|error| format!("cannot write {}: {error}", path.display()))
    };
    write(&html, super::html::render(record, &data))?;
    write(&markdown, super::markdown::render(record, &data))?;
    Ok(RunReport {
        html,
        markdown,
        key_figures: super::markdown::key_figures(&data),
    })
}
