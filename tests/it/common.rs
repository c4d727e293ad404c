//! Shared helpers for the integration tests: a temp project and the real `asterflow` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Project {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|error| {
            panic!(
                "stdout is not JSON ({error}):\n{}\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// `stage id -> status` from `--json` output.
    pub fn statuses(&self) -> Vec<(String, String)> {
        self.json()["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .map(|stage| {
                (
                    stage["id"].as_str().unwrap().to_owned(),
                    stage["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    pub fn status_of(&self, id: &str) -> String {
        self.statuses()
            .into_iter()
            .find(|(stage, _)| stage == id)
            .map(|(_, status)| status)
            .unwrap_or_default()
    }

    /// The committed output directory of stage `id`, from `--json` output.
    pub fn output_of(&self, project: &Project, id: &str) -> PathBuf {
        let json = self.json();
        let stage = json["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|stage| stage["id"] == id)
            .unwrap_or_else(|| panic!("no stage `{id}` in {json}"));
        project
            .path()
            .join(stage["output"].as_str().expect("an output"))
    }

    /// `file` in stage `id`'s output, parsed as JSON.
    pub fn output_json(&self, project: &Project, id: &str, file: &str) -> serde_json::Value {
        let path = self.output_of(project, id).join(file);
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    }

    pub fn reason_of(&self, id: &str) -> String {
        self.json()["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|stage| stage["id"] == id)
            .map(|stage| stage["reason"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    }
}

impl Project {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, relative: &str, content: &str) {
        let path = self.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_asterflow"));
        command
            .current_dir(self.path())
            .args(args)
            .env_remove("ASTERFLOW_RUN_ROOT")
            .env_remove("ASTERFLOW_DATA_DIR")
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("asterflow runs"))
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("asterflow starts")
    }

    /// Stage ids in the order their commands executed (each fixture command appends its id).
    pub fn executed(&self) -> Vec<String> {
        std::fs::read_to_string(self.path().join("executed.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn clear_executed(&self) {
        let _ = std::fs::remove_file(self.path().join("executed.log"));
    }

    /// Every file under `runs/` with its length and modification time.
    pub fn snapshot_runs(&self) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
        let mut files = Vec::new();
        walk(&self.path().join("runs"), &mut files);
        files.sort();
        files
    }
}

fn walk(dir: &Path, files: &mut Vec<(PathBuf, u64, std::time::SystemTime)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let metadata = entry.metadata().unwrap();
        if metadata.is_dir() {
            walk(&entry.path(), files);
        } else {
            files.push((entry.path(), metadata.len(), metadata.modified().unwrap()));
        }
    }
}

/// The log of stage `id` in the newest run that has one.
pub fn newest_log(project: &Project, id: &str) -> String {
    let mut records: Vec<_> = std::fs::read_dir(project.path().join("runs"))
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.join("logs").join(format!("{id}.log")).is_file())
        .collect();
    records.sort();
    std::fs::read_to_string(
        records
            .last()
            .unwrap()
            .join("logs")
            .join(format!("{id}.log")),
    )
    .unwrap()
}

/// A port of 127.0.0.1 free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `command` stage that records that it ran, then runs `body`, writing `out.txt`.
pub fn stage(id: &str, needs: &[&str], body: &str) -> String {
    let needs = needs.join(", ");
    format!(
        "  {id}:\n    kind: command\n    needs: [{needs}]\n    with:\n      run: echo {id} >> \"$ASTERFLOW_PROJECT_ROOT/executed.log\"; {body}\n      outputs: [out.txt]\n"
    )
}

/// A pipeline named `t` from stage snippets.
pub fn pipeline(stages: &[String]) -> String {
    format!("name: t\nstages:\n{}", stages.concat())
}

/// Waits until `condition` holds, up to `limit`.
pub fn wait_for(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A temp project holding the shipped pipelines and the files they reference.
pub fn shipped_project() -> Project {
    let project = Project::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "pipelines/demo.yaml",
        "pipelines/aster.yaml",
        "pipelines/null.yaml",
        "pipelines/planted.yaml",
        "data/scenarios/demo.yaml",
        "data/scenarios/null.yaml",
        "data/scenarios/planted.yaml",
        "stages/features/features.sql",
        "stages/labels/labels.sql",
        "stages/kernels/mlp.cu",
    ] {
        project.write(file, &std::fs::read_to_string(root.join(file)).unwrap());
    }
    project
}

/// Every row stored in the project's lake for one kline-shaped `table` (`klines`,
/// `mark_klines`, ...) of `source`, `interval` and `symbol`, in part order.
pub fn lake_bars(
    project: &Project,
    table: &str,
    source: &str,
    interval: &str,
    symbol: &str,
) -> Vec<asterflow::market::model::Kline> {
    let dir = project.path().join(format!(
        "data/lake/{table}/source={source}/interval={interval}/symbol={symbol}"
    ));
    asterflow::market::lake::parts(&dir)
        .unwrap()
        .iter()
        .flat_map(|part| asterflow::market::lake::read_part(&part.path).unwrap())
        .collect()
}

/// Every funding settlement stored in the project's lake for `source` and `symbol`.
pub fn lake_funding(
    project: &Project,
    source: &str,
    symbol: &str,
) -> Vec<asterflow::market::model::Funding> {
    let dir = project
        .path()
        .join(format!("data/lake/funding/source={source}/symbol={symbol}"));
    asterflow::market::lake::parts(&dir)
        .unwrap()
        .iter()
        .flat_map(|part| asterflow::market::lake::read_funding_part(&part.path).unwrap())
        .collect()
}
