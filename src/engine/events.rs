//! Progress events: stages and the executor send them; one reporter draws them.

use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use crate::engine::run_record::StageStatus;

/// Something that happened during a run.
#[derive(Debug, Clone)]
pub enum RunEvent {
    StageStarted {
        stage: usize,
    },
    StageProgress {
        stage: usize,
        message: Option<String>,
        done: Option<u64>,
        total: Option<u64>,
    },
    /// Something the user should see even when it does not stop the stage.
    StageWarning {
        stage: usize,
        message: String,
    },
    /// A block of text the stage wants shown when it is done (a results table).
    StageReport {
        stage: usize,
        text: String,
    },
    StageFinished {
        stage: usize,
        status: StageStatus,
        reason: String,
        duration: Duration,
    },
}

/// A stage's handle for reporting progress.
#[derive(Debug, Clone)]
pub struct Progress {
    stage: usize,
    sender: UnboundedSender<RunEvent>,
}

impl Progress {
    pub fn new(stage: usize, sender: UnboundedSender<RunEvent>) -> Self {
        Self { stage, sender }
    }

    fn send(&self, event: RunEvent) {
        // A closed channel means the reporter is gone; progress is best effort.
        let _ = self.sender.send(event);
    }

    /// A status line, such as `BTCUSDT 1h: 4,380 rows`.
    pub fn message(&self, text: impl Into<String>) {
        self.send(RunEvent::StageProgress {
            stage: self.stage,
            message: Some(text.into()),
            done: None,
            total: None,
        });
    }

    /// A warning the reporter prints on its own line (and the stage logs).
    pub fn warn(&self, text: impl Into<String>) {
        self.send(RunEvent::StageWarning {
            stage: self.stage,
            message: text.into(),
        });
    }

    /// A block of text (a results table) shown to the user.
    pub fn report(&self, text: impl Into<String>) {
        self.send(RunEvent::StageReport {
            stage: self.stage,
            text: text.into(),
        });
    }

    /// Work done out of a known total, with what is happening now.
    pub fn update(&self, done: u64, total: u64, text: impl Into<String>) {
        self.send(RunEvent::StageProgress {
            stage: self.stage,
            message: Some(text.into()),
            done: Some(done),
            total: Some(total),
        });
    }

    /// Work done out of a known total.
    pub fn advance(&self, done: u64, total: u64) {
        self.send(RunEvent::StageProgress {
            stage: self.stage,
            message: None,
            done: Some(done),
            total: Some(total),
        });
    }
}
