//! Run records: `runs/<run-id>/run.json` (written when a run starts and again when it ends) and
//! a log file per stage under `runs/<run-id>/logs/`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::util::time::{compact_stamp, now_ms};

/// Bumped when the record layout changes.
pub const RECORD_FORMAT: u32 = 1;

/// How a run ended (or that it has not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Interrupted,
}

/// What happened to one stage in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageStatus {
    Ran,
    Cached,
    /// Its output came from the remote cache.
    Downloaded,
    Reused,
    Skipped,
    Failed,
}

impl StageStatus {
    pub fn word(self) -> &'static str {
        match self {
            Self::Ran => "ran",
            Self::Cached => "cached",
            Self::Downloaded => "downloaded",
            Self::Reused => "reused",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
        }
    }
}

/// One stage's line in a run record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub id: String,
    pub kind: String,
    pub status: StageStatus,
    pub reason: String,
    pub duration_ms: u64,
    /// When the stage started (ms since the epoch); absent in records before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    pub fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The committed output directory (relative to the project when inside it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// The stages it needs (absent in records before they were kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// The stage's params as its fingerprint covers them (defaults filled in), so two runs can
    /// say which params moved; absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
}

/// `runs/<run-id>/run.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub format: u32,
    pub run_id: String,
    pub pipeline: String,
    pub pipeline_file: String,
    pub status: RunStatus,
    pub started_at: String,
    pub started_at_ms: u64,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    pub pid: u32,
    pub argv: Vec<String>,
    pub stages: Vec<StageRecord>,
    /// The key figures the run ended with (the model against its baseline, the backtest
    /// against buy-and-hold), as printed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub figures: Vec<String>,
}

/// A new run id: sortable by time, unique per process: `20261120T225003Z-3f2a`.
pub fn new_run_id(started_at_ms: u64) -> String {
    let entropy = blake3::hash(
        format!(
            "{started_at_ms}:{}:{:?}",
            std::process::id(),
            std::time::Instant::now()
        )
        .as_bytes(),
    );
    format!(
        "{}-{}",
        compact_stamp(started_at_ms),
        &entropy.to_hex()[..4]
    )
}

/// The directory of run `run_id`.
pub fn run_dir(run_root: &Path, run_id: &str) -> PathBuf {
    run_root.join(run_id)
}

impl RunRecord {
    /// Writes `run.json` atomically.
    pub fn write(&self, run_root: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::util::fsx::write_atomic(&run_dir(run_root, &self.run_id).join("run.json"), &bytes)
    }

    /// How many stages ended with `status`.
    pub fn count(&self, status: StageStatus) -> usize {
        self.stages
            .iter()
            .filter(|stage| stage.status == status)
            .count()
    }

    /// `2 ran, 3 cached, 0 reused, 0 failed, 1 skipped` (and `4 downloaded` after `cached`
    /// when a remote cache provided any).
    pub fn counts(&self) -> String {
        [
            StageStatus::Ran,
            StageStatus::Cached,
            StageStatus::Downloaded,
            StageStatus::Reused,
            StageStatus::Failed,
            StageStatus::Skipped,
        ]
        .into_iter()
        .filter(|&status| status != StageStatus::Downloaded || self.count(status) > 0)
        .map(|status| format!("{} {}", self.count(status), status.word()))
        .collect::<Vec<_>>()
        .join(", ")
    }

    /// Marks the record finished now.
    pub fn finish(&mut self, status: RunStatus) {
        let now = now_ms();
        self.status = status;
        self.finished_at = Some(crate::util::time::rfc3339(now));
        self.duration_ms = Some(now.saturating_sub(self.started_at_ms));
    }
}

/// Every readable run record under `run_root`, newest first.
pub fn list_runs(run_root: &Path) -> Vec<RunRecord> {
    let Ok(entries) = std::fs::read_dir(run_root) else {
        return Vec::new();
    };
    let mut records: Vec<RunRecord> = entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with(|c: char| c.is_ascii_digit())
        })
        .filter_map(|entry| std::fs::read(entry.path().join("run.json")).ok())
        .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
        .collect();
    // Run ids sort by second only; the start time in milliseconds orders runs within a second.
    records.sort_by(|a: &RunRecord, b| {
        (b.started_at_ms, &b.run_id).cmp(&(a.started_at_ms, &a.run_id))
    });
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(run_id: &str, started_at_ms: u64) -> RunRecord {
        RunRecord {
            format: RECORD_FORMAT,
            run_id: run_id.to_owned(),
            pipeline: "p".into(),
            pipeline_file: "p.yaml".into(),
            status: RunStatus::Succeeded,
            started_at: crate::util::time::rfc3339(started_at_ms),
            started_at_ms,
            finished_at: None,
            duration_ms: None,
            pid: 1,
            argv: Vec::new(),
            stages: Vec::new(),
            figures: Vec::new(),
        }
    }

    #[test]
    fn runs_within_one_second_list_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        // Same second, suffixes in the opposite order of start times.
        record("20261120T225003Z-ffff", 1_000)
            .write(dir.path())
            .unwrap();
        record("20261120T225003Z-0000", 1_400)
            .write(dir.path())
            .unwrap();
        let ids: Vec<String> = list_runs(dir.path())
            .into_iter()
            .map(|run| run.run_id)
            .collect();
        assert_eq!(ids, ["20261120T225003Z-0000", "20261120T225003Z-ffff"]);
    }

    #[test]
    fn run_ids_sort_by_time() {
        let first = new_run_id(1_000_000);
        let second = new_run_id(2_000_000_000_000);
        assert!(first < second);
        assert_eq!(first.len(), "19700101T001640Z-abcd".len());
    }
}
