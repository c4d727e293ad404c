//! The one owner of the terminal during a run: indicatif bars on a TTY, plain lines otherwise,
//! nothing with `--quiet`. Everything goes to stderr; stdout is kept for results (`--json`).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::engine::events::RunEvent;
use crate::engine::run_record::StageStatus;
use crate::util::time::human;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bars,
    Lines,
    Quiet,
}

impl Mode {
    /// Bars on a terminal, lines in logs and CI, nothing when asked for quiet.
    pub fn detect(quiet: bool) -> Self {
        if quiet {
            Self::Quiet
        } else if std::io::stderr().is_terminal() {
            Self::Bars
        } else {
            Self::Lines
        }
    }
}

/// The line printed when a stage finishes; `None` for stages that were never part of the run.
pub fn finish_line(
    id: &str,
    status: StageStatus,
    reason: &str,
    duration: Duration,
) -> Option<String> {
    if status == StageStatus::Skipped && reason == "not selected" {
        return None;
    }
    let detail = match status {
        StageStatus::Ran => format!("{} ({reason})", human(duration)),
        _ => reason.to_owned(),
    };
    let word = if status == StageStatus::Failed {
        "FAILED"
    } else {
        status.word()
    };
    Some(format!("{word:>7} {id}  {detail}"))
}

/// `[3/10] ` for counted progress, empty otherwise.
fn count_text(done: Option<u64>, total: Option<u64>) -> String {
    match (done, total) {
        (Some(done), Some(total)) => format!("[{done}/{total}] "),
        _ => String::new(),
    }
}

/// Draws events until the sender side is dropped.
pub async fn report(
    mut events: UnboundedReceiver<RunEvent>,
    mode: Mode,
    names: Vec<String>,
    to_run: usize,
) {
    match mode {
        Mode::Quiet => while events.recv().await.is_some() {},
        Mode::Lines => report_lines(events, names).await,
        Mode::Bars => report_bars(events, names, to_run).await,
    }
}

async fn report_lines(mut events: UnboundedReceiver<RunEvent>, names: Vec<String>) {
    // Counted progress is throttled: a line every few seconds per stage is plenty in a log.
    let mut last_progress: Vec<Option<Instant>> = vec![None; names.len()];
    while let Some(event) = events.recv().await {
        match event {
            RunEvent::StageStarted { stage } => eprintln!("  start {}", names[stage]),
            RunEvent::StageProgress {
                stage,
                message,
                done,
                total,
            } => {
                let due =
                    last_progress[stage].is_none_or(|at| at.elapsed() >= Duration::from_secs(5));
                let counted = done.is_some();
                if counted && !due {
                    continue;
                }
                last_progress[stage] = Some(Instant::now());
                let count = count_text(done, total);
                eprintln!(
                    "        {} {count}{}",
                    names[stage],
                    message.unwrap_or_default()
                );
            }
            RunEvent::StageWarning { stage, message } => {
                eprintln!("warning: {}: {message}", names[stage]);
            }
            RunEvent::StageReport { text, .. } => eprint!("{text}"),
            RunEvent::StageFinished {
                stage,
                status,
                reason,
                duration,
            } => {
                if let Some(line) = finish_line(&names[stage], status, &reason, duration) {
                    eprintln!("{line}");
                }
            }
        }
    }
}

async fn report_bars(mut events: UnboundedReceiver<RunEvent>, names: Vec<String>, to_run: usize) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let spinner_style =
        ProgressStyle::with_template("{spinner:.cyan} {prefix:.bold} {wide_msg} {elapsed:>5}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let total_style = ProgressStyle::with_template("  stages [{bar:30.cyan/blue}] {pos}/{len}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let overall = multi.add(ProgressBar::new(to_run as u64).with_style(total_style));
    let mut bars: Vec<Option<ProgressBar>> = vec![None; names.len()];
    while let Some(event) = events.recv().await {
        match event {
            RunEvent::StageStarted { stage } => {
                let bar = multi.insert_before(&overall, ProgressBar::new_spinner());
                bar.set_style(spinner_style.clone());
                bar.set_prefix(names[stage].clone());
                bar.enable_steady_tick(Duration::from_millis(120));
                bars[stage] = Some(bar);
            }
            RunEvent::StageProgress {
                stage,
                message,
                done,
                total,
            } => {
                if let Some(bar) = &bars[stage] {
                    let count = count_text(done, total);
                    bar.set_message(format!("{count}{}", message.unwrap_or_default()));
                }
            }
            RunEvent::StageWarning { stage, message } => {
                let _ = multi.println(format!("warning: {}: {message}", names[stage]));
            }
            RunEvent::StageReport { text, .. } => {
                let _ = multi.println(text.trim_end());
            }
            RunEvent::StageFinished {
                stage,
                status,
                reason,
                duration,
            } => {
                if let Some(bar) = bars[stage].take() {
                    bar.finish_and_clear();
                    multi.remove(&bar);
                    overall.inc(1);
                }
                if let Some(line) = finish_line(&names[stage], status, &reason, duration) {
                    let _ = multi.println(line);
                }
            }
        }
    }
    overall.finish_and_clear();
    let _ = multi.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_lines_name_status_and_reason() {
        assert_eq!(
            finish_line(
                "train",
                StageStatus::Ran,
                "params changed: with.epochs",
                Duration::from_millis(1500)
            )
            .unwrap(),
            "    ran train  1.5s (params changed: with.epochs)"
        );
        assert_eq!(
            finish_line(
                "b",
                StageStatus::Failed,
                "command exited with 3",
                Duration::ZERO
            )
            .unwrap(),
            " FAILED b  command exited with 3"
        );
        assert!(finish_line("c", StageStatus::Skipped, "not selected", Duration::ZERO).is_none());
    }
}
