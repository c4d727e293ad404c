//! The run report: what the `report` stage gathers (`data`), drawn as one self-contained HTML
//! page (`html`, with `svg` charts) and as Markdown with the closing key figures (`markdown`).
//! The runner writes both into `runs/<run-id>/` when a run ends, because only it knows the
//! run's stages, statuses and timings; `write_for_run` does that.

pub mod data;
pub mod format;
pub mod html;
pub mod markdown;
pub mod run;
pub mod svg;

pub use data::{REPORT_DATA_FILE, REPORT_FORMAT_VERSION, ReportData};
pub use run::{RunReport, write_for_run};
