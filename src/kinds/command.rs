//! `command`: runs a shell command in a fresh output directory and caches what it writes.
//!
//! ```yaml
//! stages:
//!   prices:
//!     kind: command
//!     needs: [download]
//!     with:
//!       run: python3 "$ASTERFLOW_PROJECT_ROOT/scripts/clean.py" "$ASTERFLOW_INPUT_DOWNLOAD" > prices.csv
//!       outputs: [prices.csv]          # must exist afterwards, relative to the output directory
//!       files: [scripts/clean.py]      # project files whose content the fingerprint covers
//!       env: {MODE: strict}
//! ```
//!
//! The command runs with `bash -e -o pipefail -c` in the stage's output directory, in its own process group (so
//! cancelling kills everything it started), with stdout and stderr appended to the stage log.
//! A line `::progress DONE/TOTAL [message]` on stdout (say, `echo "::progress 3/10 fitting"`)
//! drives the stage's progress bar, in the terminal and in `asterflow serve`'s live view.
//! Environment: `ASTERFLOW_PROJECT_ROOT`, `ASTERFLOW_DATA_DIR`, `ASTERFLOW_OUTPUT_DIR`,
//! `ASTERFLOW_RUN_ID`, `ASTERFLOW_STAGE_ID`, and `ASTERFLOW_INPUT_<ID>` (the input stage id in
//! upper case, non-alphanumerics as `_`) for each input's output directory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::diagnostic::location::YamlPath;
use crate::diagnostic::params::{ParamError, contained_relative_path, parse_params};
use crate::engine::stage::{
    BoxFuture, FileRef, PrepareContext, PreparedStage, StageContext, StageError, StageKind,
    input_variable,
};

/// The `command` kind.
pub struct Command;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    run: String,
    #[serde(default)]
    outputs: Vec<String>,
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

#[derive(Debug)]
struct Prepared {
    params: Params,
    outputs: Vec<PathBuf>,
    files: Vec<FileRef>,
}

impl StageKind for Command {
    fn name(&self) -> &'static str {
        "command"
    }

    fn code_version(&self) -> u32 {
        1
    }

    fn prepare(
        &self,
        params: &yaml_serde::Value,
        _context: &PrepareContext<'_>,
    ) -> Result<Box<dyn PreparedStage>, ParamError> {
        let params: Params = parse_params(params)?;
        if params.run.trim().is_empty() {
            return Err(
                ParamError::new(YamlPath::root().key("run"), "`run` is empty")
                    .with_help("give the shell command to run"),
            );
        }
        let mut outputs = Vec::new();
        for (index, output) in params.outputs.iter().enumerate() {
            let path = contained_relative_path(output).map_err(|message| {
                ParamError::new(YamlPath::root().key("outputs").index(index), message)
                    .with_help("outputs are relative to the stage's output directory")
            })?;
            outputs.push(path);
        }
        let mut files = Vec::new();
        for (index, file) in params.files.iter().enumerate() {
            let param = YamlPath::root().key("files").index(index);
            let path = contained_relative_path(file)
                .map_err(|message| ParamError::new(param.clone(), message))?;
            files.push(FileRef { param, path });
        }
        for name in params.env.keys() {
            if name.is_empty() || name.contains('=') || name.starts_with("ASTERFLOW_") {
                return Err(ParamError::new(
                    YamlPath::root().key("env").key(name.clone()),
                    format!("environment variable name `{name}` is not allowed"),
                )
                .with_help("names may not be empty, contain `=`, or start with ASTERFLOW_"));
            }
        }
        Ok(Box::new(Prepared {
            params,
            outputs,
            files,
        }))
    }
}

impl PreparedStage for Prepared {
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }

    fn files(&self) -> Vec<FileRef> {
        self.files.clone()
    }

    fn run<'a>(&'a self, context: &'a StageContext) -> BoxFuture<'a, Result<(), StageError>> {
        Box::pin(self.run_command(context))
    }
}

impl Prepared {
    async fn run_command(&self, context: &StageContext) -> Result<(), StageError> {
        let log = fs_err::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&context.log_path)?
            .into_file();
        let log_for_stderr = log.try_clone().map_err(|error| {
            StageError::failed(format!(
                "cannot open {}: {error}",
                context.log_path.display()
            ))
        })?;
        // -e and pipefail: `gen | gzip > out.gz` fails when `gen` fails, instead of caching a
        // truncated file that the redirect already created.
        let mut command = tokio::process::Command::new("bash");
        command
            .args(["-e", "-o", "pipefail", "-c"])
            .arg(&self.params.run)
            .current_dir(&context.output_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_for_stderr))
            .env("ASTERFLOW_PROJECT_ROOT", &context.project_root)
            .env("ASTERFLOW_DATA_DIR", &context.data_dir)
            .env("ASTERFLOW_OUTPUT_DIR", &context.output_dir)
            .env("ASTERFLOW_RUN_ID", &context.run_id)
            .env("ASTERFLOW_STAGE_ID", &context.stage_id)
            .envs(&self.params.env)
            .process_group(0)
            .kill_on_drop(true);
        for input in &context.inputs {
            command.env(input_variable(&input.id), &input.dir);
        }
        let mut child = command
            .spawn()
            .map_err(|error| StageError::failed(format!("cannot start `bash`: {error}")))?;
        // The pid, taken now: tokio forgets it once the child is reaped.
        let leader = child.id();
        let stdout = child
            .stdout
            .take()
            .map(|stdout| tokio::spawn(copy_stdout(stdout, log, context.progress.clone())));
        let status = tokio::select! {
            status = child.wait() => {
                // Background jobs the command left behind would keep writing into an output
                // that is about to be committed: end the whole group.
                kill_group(leader, libc::SIGKILL);
                if let Some(copy) = stdout {
                    // The group is gone, so the pipe closes: the copy ends with what was written.
                    let _ = tokio::time::timeout(Duration::from_secs(10), copy).await;
                }
                status.map_err(|error| {
                    StageError::failed(format!("cannot wait for the command: {error}"))
                })?
            }
            () = context.cancel.cancelled() => {
                terminate_group(&mut child, leader).await;
                return Err(StageError::Cancelled);
            }
        };
        if !status.success() {
            let code = status
                .code()
                .map_or_else(|| "a signal".to_owned(), |code| code.to_string());
            let tail = log_tail(&context.log_path, 5);
            let shown = if tail.is_empty() {
                String::new()
            } else {
                format!(": {tail}")
            };
            return Err(StageError::Failed(format!(
                "command exited with {code}{shown}"
            )));
        }
        for (output, declared) in self.outputs.iter().zip(&self.params.outputs) {
            if !context.output_dir.join(output).exists() {
                return Err(StageError::Failed(format!(
                    "declared output `{declared}` was not written by the command"
                )));
            }
        }
        Ok(())
    }
}

/// Appends the command's stdout to the log as it comes, turning `::progress DONE/TOTAL
/// [message]` lines into progress (the line is logged too).
async fn copy_stdout(
    stdout: tokio::process::ChildStdout,
    mut log: std::fs::File,
    progress: crate::engine::events::Progress,
) {
    use std::io::Write;
    use tokio::io::AsyncBufReadExt;
    let mut reader = tokio::io::BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let _ = log.write_all(&line);
                if let Some((done, total, message)) =
                    std::str::from_utf8(&line).ok().and_then(progress_line)
                {
                    progress.update(done, total, message);
                }
            }
        }
    }
}

/// `::progress 3/10 fitting` -> (3, 10, "fitting").
fn progress_line(line: &str) -> Option<(u64, u64, String)> {
    let rest = line.trim_end().strip_prefix("::progress ")?;
    let (count, message) = rest.split_once(' ').unwrap_or((rest, ""));
    let (done, total) = count.split_once('/')?;
    Some((
        done.parse().ok()?,
        total.parse().ok()?,
        message.trim().to_owned(),
    ))
}

/// Sends `signal` to the process group led by `leader` (the command's pid, its pgid).
fn kill_group(leader: Option<u32>, signal: libc::c_int) {
    if let Some(pid) = leader {
        // SAFETY: kill(2) with a negative pid signals the process group created for the child;
        // a group that no longer exists yields ESRCH, which is fine.
        unsafe { libc::kill(-(pid as libc::pid_t), signal) };
    }
}

/// SIGTERM to the command's process group, a grace period, then SIGKILL to whatever is left.
async fn terminate_group(child: &mut tokio::process::Child, leader: Option<u32>) {
    kill_group(leader, libc::SIGTERM);
    let _ = tokio::time::timeout(Duration::from_secs(3), child.wait()).await;
    kill_group(leader, libc::SIGKILL);
    let _ = child.wait().await;
}

/// The last `lines` non-empty lines of a log, joined with ` | `.
fn log_tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut tail: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with("# "))
        .collect();
    let start = tail.len().saturating_sub(lines);
    tail.drain(..start);
    tail.join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepare(yaml: &str) -> Result<Box<dyn PreparedStage>, ParamError> {
        let value: yaml_serde::Value = yaml_serde::from_str(yaml).unwrap();
        let sources = indexmap::IndexMap::new();
        let context = PrepareContext {
            stage_id: "s",
            project_root: std::path::Path::new("."),
            sources: &sources,
        };
        Command.prepare(&value, &context)
    }

    #[test]
    fn progress_lines_are_read_and_other_lines_are_not() {
        assert_eq!(
            progress_line("::progress 3/10 fitting fold 3\n"),
            Some((3, 10, "fitting fold 3".to_owned()))
        );
        assert_eq!(progress_line("::progress 1/2"), Some((1, 2, String::new())));
        for line in [
            "progress 3/10",
            "::progress x/10",
            "::progress 3",
            "  ::progress 1/2",
        ] {
            assert_eq!(progress_line(line), None, "{line}");
        }
    }

    #[test]
    fn rejects_escaping_outputs_and_reserved_env() {
        let error = prepare("run: x\noutputs: [ok.txt, ../../etc/x]").unwrap_err();
        assert_eq!(error.path.to_string(), "outputs[1]");
        assert!(error.message.contains("escapes the project"));
        let error = prepare("run: x\nenv: {ASTERFLOW_RUN_ID: y}").unwrap_err();
        assert_eq!(error.path.to_string(), "env.ASTERFLOW_RUN_ID");
        assert!(prepare("run: ''").is_err());
        assert!(
            prepare("run: x\nouputs: []")
                .unwrap_err()
                .message
                .contains("unknown field")
        );
    }
}
