//! `asterflow serve` (issue 23, first step): a read-only web view of the run root. The runs
//! (filterable by pipeline and status), each run's stages with their reasons, fingerprints,
//! durations and logs, its timeline, and its `report.html`. Pages are server-rendered HTML; nothing is fetched
//! from elsewhere.
//!
//! Safety: it binds 127.0.0.1 unless told otherwise, and any other address needs a token, which
//! every request must then carry (`Authorization: Bearer TOKEN`, or `?token=TOKEN` for a
//! browser's first page, which sets a cookie); every file it serves is resolved (symbolic links
//! included) and must lie inside the run root; it never writes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::Response;

use crate::engine::run_record::{RunRecord, RunStatus, StageRecord, list_runs};
use crate::report::svg::escape;

mod compare;
pub mod dag;

/// One stage of a pipeline's plan, as the planner gives it.
#[derive(Debug, Clone)]
pub struct PlannedStage {
    pub id: String,
    pub kind: String,
    /// `run`, `cached`, `remote`, `reuse` or `skip`.
    pub decision: String,
    pub reason: String,
    pub fingerprint: Option<String>,
    pub needs: Vec<String>,
}

/// Plans a pipeline file without running anything (given by the caller, which knows the kinds).
pub type Planner = Arc<
    dyn Fn(PathBuf) -> futures::future::BoxFuture<'static, Result<Vec<PlannedStage>, String>>
        + Send
        + Sync,
>;

/// What the server reads.
pub struct Site {
    /// Canonical.
    pub run_root: PathBuf,
    /// Canonical: the records name stage outputs relative to it.
    pub project_root: PathBuf,
    /// The project's `pipelines/` directory, canonical, when there is one.
    pub pipelines: Option<PathBuf>,
    /// The data directory's `paper/` (the paper books; it may appear after the server starts).
    pub paper: PathBuf,
    pub planner: Planner,
    pub token: Option<String>,
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site")
            .field("run_root", &self.run_root)
            .field("pipelines", &self.pipelines)
            .finish_non_exhaustive()
    }
}

/// Checks the bind rule: an address other than loopback needs a token.
pub fn check_bind(bind: &SocketAddr, token: Option<&str>) -> Result<(), String> {
    if !bind.ip().is_loopback() && token.is_none_or(str::is_empty) {
        return Err(format!(
            "--bind {bind} listens beyond this machine: give a --token (or ASTERFLOW_SERVE_TOKEN) that every request must carry"
        ));
    }
    Ok(())
}

/// Serves `site` on `bind` until the process ends; `ready` gets the bound address.
pub async fn serve(
    site: Site,
    bind: SocketAddr,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    check_bind(&bind, site.token.as_deref())?;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|error| format!("cannot listen on {bind}: {error}"))?;
    let local = listener
        .local_addr()
        .map_err(|error| format!("cannot read the bound address: {error}"))?;
    ready(local);
    let router = axum::Router::new()
        .fallback(handle)
        .with_state(Arc::new(site));
    axum::serve(listener, router)
        .await
        .map_err(|error| format!("the server stopped: {error}"))
}

async fn handle(State(site): State<Arc<Site>>, uri: Uri, headers: HeaderMap) -> Response {
    let query = uri.query().unwrap_or_default();
    if let Some(token) = &site.token {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        let cookie = headers
            .get(header::COOKIE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                value
                    .split(';')
                    .find_map(|pair| pair.trim().strip_prefix("asterflow_token="))
            });
        let in_query = query_value(query, "token");
        let given = bearer.or(cookie).or(in_query.as_deref());
        if given != Some(token.as_str()) {
            return page(
                StatusCode::UNAUTHORIZED,
                "Token required",
                "<p>This server needs its token: <code>Authorization: Bearer TOKEN</code>, or <code>?token=TOKEN</code> once in a browser.</p>",
            );
        }
        if in_query.is_some() {
            let mut response = route(&site, uri.path(), query).await;
            if let Ok(value) =
                format!("asterflow_token={token}; HttpOnly; SameSite=Strict; Path=/").parse()
            {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            return response;
        }
    }
    route(&site, uri.path(), query).await
}

async fn route(site: &Site, path: &str, query: &str) -> Response {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        [""] => runs_page(site, query),
        ["pipelines"] => pipelines_page(site),
        ["paper"] => books_page(site),
        ["paper", pipeline, stage] => book_page(site, pipeline, stage),
        ["compare"] => compare_page(site, query),
        ["pipelines", name] => plan_page(site, name).await,
        ["runs", id] => run_page(site, id),
        ["runs", id, "events"] => events(site, id),
        ["runs", id, "report.html"] => file(site, id, &["report.html"], "text/html; charset=utf-8"),
        ["runs", id, "logs", stage] => log(site, id, stage, query),
        _ => not_found(path),
    }
}

/// A run id or stage name: letters, digits and `-_@=.,`, never `.` or `..` alone.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains("..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_@=.,".contains(c))
}

/// `parts` under run `id`, resolved, if it is a file inside the run root.
fn confined(site: &Site, id: &str, parts: &[&str]) -> Option<PathBuf> {
    if !plain_name(id) || !parts.iter().all(|part| plain_name(part)) {
        return None;
    }
    let mut path = site.run_root.join(id);
    for part in parts {
        path.push(part);
    }
    let resolved = path.canonicalize().ok()?;
    (resolved.starts_with(&site.run_root) && resolved.is_file()).then_some(resolved)
}

fn file(site: &Site, id: &str, parts: &[&str], content_type: &str) -> Response {
    match confined(site, id, parts).and_then(|path| std::fs::read(path).ok()) {
        Some(bytes) => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(bytes))
            .unwrap_or_default(),
        None => not_found(&format!("/runs/{id}/{}", parts.join("/"))),
    }
}

/// A stage's log, whole, or its last `?tail=N` lines (what the live page polls while the
/// stage runs).
fn log(site: &Site, id: &str, stage: &str, query: &str) -> Response {
    let parts = ["logs", &format!("{stage}.log")];
    let Some(lines) = query_value(query, "tail").and_then(|n| n.parse::<usize>().ok()) else {
        return file(site, id, &parts, "text/plain; charset=utf-8");
    };
    match confined(site, id, &parts).and_then(|path| std::fs::read(path).ok()) {
        Some(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let tail = all[all.len().saturating_sub(lines.min(10_000))..].join("\n");
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .header(header::CACHE_CONTROL, "no-cache")
                .body(Body::from(tail))
                .unwrap_or_default()
        }
        None => not_found(&format!("/runs/{id}/logs/{stage}")),
    }
}

fn query_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == key).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = text
            .get(index + 1..index + 3)
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[index], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(byte)) => {
                out.push(byte);
                index += 2;
            }
            (byte, _) => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:24px;color:#1f2328}table{border-collapse:collapse;margin:12px 0}td,th{padding:4px 10px;border-bottom:1px solid #d0d7de;text-align:left;font-size:14px}th{background:#f6f8fa}code{font-size:13px}.ran{color:#2da44e}.cached{color:#6e7781}.failed{color:#cf222e}.downloaded{color:#0969da}.reused{color:#8250df}.skipped{color:#8c959f}.run{color:#bf8700}.remote{color:#0969da}.skip{color:#8c959f}.waiting{color:#8c959f}.running{color:#bf8700}.reuse{color:#8250df}a{color:#0969da}form{margin:8px 0}svg text{font-size:12px;fill:#57606a}svg .title{font-weight:600;fill:#1f2328}progress{width:120px;vertical-align:middle}pre.log{margin:4px 0 0;font-size:12px;color:#57606a;white-space:pre-wrap;max-width:640px}pre.log:empty{display:none}td.progress{white-space:nowrap;font-variant-numeric:tabular-nums}";

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{} - asterflow</title><style>{STYLE}{}</style></head><body><p><a href=\"/\">runs</a> | <a href=\"/pipelines\">pipelines</a> | <a href=\"/paper\">paper books</a></p><h1>{}</h1>{body}</body></html>",
        escape(title),
        dag::STYLE,
        escape(title)
    );
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(Body::from(html))
        .unwrap_or_default()
}

fn not_found(path: &str) -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Not found",
        &format!("<p>Nothing at <code>{}</code>.</p>", escape(path)),
    )
}

fn status_word(record: &RunRecord) -> &'static str {
    match record.status {
        RunStatus::Running => "running",
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "failed",
        RunStatus::Interrupted => "interrupted",
    }
}

fn duration(ms: Option<u64>) -> String {
    ms.map(|ms| crate::util::time::human(std::time::Duration::from_millis(ms)))
        .unwrap_or_else(|| "-".to_owned())
}

/// The runs, newest first, filtered by `?pipeline=` and `?status=`.
fn runs_page(site: &Site, query: &str) -> Response {
    let pipeline = query_value(query, "pipeline").filter(|value| !value.is_empty());
    let status = query_value(query, "status").filter(|value| !value.is_empty());
    let records = list_runs(&site.run_root);
    let mut pipelines: Vec<&str> = records.iter().map(|r| r.pipeline.as_str()).collect();
    pipelines.sort_unstable();
    pipelines.dedup();
    let mut body = String::from(
        "<form method=\"get\" action=\"/\">pipeline <select name=\"pipeline\"><option value=\"\">all</option>",
    );
    for name in &pipelines {
        let selected = if pipeline.as_deref() == Some(*name) {
            " selected"
        } else {
            ""
        };
        body.push_str(&format!("<option{selected}>{}</option>", escape(name)));
    }
    body.push_str("</select> status <select name=\"status\"><option value=\"\">all</option>");
    for word in ["succeeded", "failed", "interrupted", "running"] {
        let selected = if status.as_deref() == Some(word) {
            " selected"
        } else {
            ""
        };
        body.push_str(&format!("<option{selected}>{word}</option>"));
    }
    body.push_str("</select> <button>show</button></form>");
    body.push_str("<form method=\"get\" action=\"/compare\"><p>Pick two runs, A and B, and <button>compare</button> them side by side.</p>");
    body.push_str("<table><tr><th>A</th><th>B</th><th>run</th><th>pipeline</th><th>started</th><th>duration</th><th>status</th><th>stages</th><th>key figures</th></tr>");
    let mut shown = 0;
    for record in records.iter().filter(|record| {
        pipeline
            .as_deref()
            .is_none_or(|name| record.pipeline == name)
            && status
                .as_deref()
                .is_none_or(|word| status_word(record) == word)
    }) {
        shown += 1;
        body.push_str(&format!(
            "<tr><td><input type=\"radio\" name=\"a\" value=\"{id}\"></td><td><input type=\"radio\" name=\"b\" value=\"{id}\"></td><td><a href=\"/runs/{id}\">{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td class=\"{word}\">{word}</td><td>{}</td><td class=\"figures\">{}</td></tr>",
            escape(&record.pipeline),
            escape(&record.started_at),
            duration(record.duration_ms),
            escape(&record.counts()),
            record
                .figures
                .iter()
                .map(|line| escape(line))
                .collect::<Vec<_>>()
                .join("<br>"),
            id = escape(&record.run_id),
            word = status_word(record),
        ));
    }
    body.push_str("</table></form>");
    body.push_str(&format!("<p>{shown} of {} runs.</p>", records.len()));
    page(StatusCode::OK, "Runs", &body)
}

/// Run `id`'s record, or the page that says why there is none: not found, or not valid.
fn load_record(site: &Site, id: &str) -> Result<RunRecord, Box<Response>> {
    let Some(path) = confined(site, id, &["run.json"]) else {
        return Err(Box::new(not_found(&format!("/runs/{id}"))));
    };
    std::fs::read(&path)
        .map_err(|error| error.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|error| error.to_string()))
        .map_err(|error| {
            Box::new(page(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("Run {id}"),
                &format!(
                    "<p>The record of this run, <code>{}</code>, is not valid: {}.</p>",
                    escape(&path.display().to_string()),
                    escape(&error)
                ),
            ))
        })
}

/// Two runs side by side: `?a=RUN&b=RUN`.
fn compare_page(site: &Site, query: &str) -> Response {
    let (Some(a), Some(b)) = (query_value(query, "a"), query_value(query, "b")) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Compare runs",
            "<p>Name two runs: <code>/compare?a=RUN&amp;b=RUN</code>, or pick them on the <a href=\"/\">runs page</a>.</p>",
        );
    };
    let (a, b) = match (load_record(site, &a), load_record(site, &b)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(response), _) | (_, Err(response)) => return *response,
    };
    page(
        StatusCode::OK,
        &format!("{} vs {}", a.run_id, b.run_id),
        &compare::compare_body(site, &a, &b),
    )
}

/// One run: its stages, and its report when it has one.
fn run_page(site: &Site, id: &str) -> Response {
    let record = match load_record(site, id) {
        Ok(record) => record,
        Err(response) => return *response,
    };
    if record.status == RunStatus::Running
        && let Some(path) = confined(site, id, &["events.jsonl"])
    {
        return live_page(&record, &path);
    }
    let mut body = format!(
        "<p>Pipeline <b>{}</b> (<code>{}</code>), started {}, {} in {}: {}.</p>",
        escape(&record.pipeline),
        escape(&record.pipeline_file),
        escape(&record.started_at),
        status_word(&record),
        duration(record.duration_ms),
        escape(&record.counts())
    );
    if confined(site, id, &["report.html"]).is_some() {
        body.push_str(&format!(
            "<p><a href=\"/runs/{}/report.html\">the run's report</a></p>",
            escape(id)
        ));
    }
    body.push_str(&dag::dag_svg(
        &record
            .stages
            .iter()
            .map(|stage| dag::Node {
                id: &stage.id,
                status: stage.status.word(),
                needs: &stage.needs,
            })
            .collect::<Vec<_>>(),
    ));
    body.push_str("<table><tr><th>stage</th><th>kind</th><th>status</th><th>reason</th><th>duration</th><th>fingerprint</th><th>log</th></tr>");
    for stage in &record.stages {
        body.push_str(&stage_row(site, id, stage));
    }
    body.push_str("</table>");
    body.push_str(&crate::report::html::run_timeline(&record));
    if let Some(section) = compare::leaderboards(site, &record) {
        body.push_str(&section);
    }
    page(StatusCode::OK, &format!("Run {}", record.run_id), &body)
}

fn stage_row(site: &Site, id: &str, stage: &StageRecord) -> String {
    let log = if confined(site, id, &["logs", &format!("{}.log", stage.id)]).is_some() {
        format!(
            "<a href=\"/runs/{}/logs/{}\">log</a>",
            escape(id),
            escape(&stage.id)
        )
    } else {
        String::new()
    };
    let word = stage.status.word();
    format!(
        "<tr><td>{}</td><td>{}</td><td class=\"{word}\">{word}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{log}</td></tr>",
        escape(&stage.id),
        escape(&stage.kind),
        escape(stage.error.as_deref().unwrap_or(&stage.reason)),
        duration(Some(stage.duration_ms)),
        escape(
            stage
                .fingerprint
                .as_deref()
                .map_or("", |f| &f[..f.len().min(12)])
        ),
    )
}

/// The pipeline files of the project, by name.
fn pipeline_files(site: &Site) -> Vec<String> {
    let Some(dir) = &site.pipelines else {
        return Vec::new();
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .collect();
    names.sort();
    names
}

fn pipelines_page(site: &Site) -> Response {
    let mut body = String::from("<ul>");
    for name in pipeline_files(site) {
        body.push_str(&format!(
            "<li><a href=\"/pipelines/{name}\">{name}</a></li>",
            name = escape(&name)
        ));
    }
    body.push_str("</ul><p>Each pipeline's plan: what a run would do now, and why.</p>");
    page(StatusCode::OK, "Pipelines", &body)
}

/// A pipeline's plan: each stage cached or stale and why, without running anything.
async fn plan_page(site: &Site, name: &str) -> Response {
    let file = site
        .pipelines
        .as_ref()
        .filter(|_| plain_name(name) && (name.ends_with(".yaml") || name.ends_with(".yml")))
        .and_then(|dir| dir.join(name).canonicalize().ok())
        .filter(|file| {
            site.pipelines
                .as_ref()
                .is_some_and(|dir| file.starts_with(dir) && file.is_file())
        });
    let Some(file) = file else {
        return not_found(&format!("/pipelines/{name}"));
    };
    let title = format!("Pipeline {name}");
    match (site.planner)(file).await {
        Ok(stages) => {
            let mut body = dag::dag_svg(
                &stages
                    .iter()
                    .map(|stage| dag::Node {
                        id: &stage.id,
                        status: &stage.decision,
                        needs: &stage.needs,
                    })
                    .collect::<Vec<_>>(),
            );
            body.push_str(
                "<table><tr><th>stage</th><th>kind</th><th>plan</th><th>why</th><th>fingerprint</th></tr>",
            );
            for stage in &stages {
                body.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td class=\"{word}\">{word}</td><td>{}</td><td><code>{}</code></td></tr>",
                    escape(&stage.id),
                    escape(&stage.kind),
                    escape(&stage.reason),
                    escape(stage.fingerprint.as_deref().map_or("", |f| &f[..f.len().min(12)])),
                    word = escape(&stage.decision),
                ));
            }
            body.push_str("</table>");
            page(StatusCode::OK, &title, &body)
        }
        Err(error) => page(
            StatusCode::OK,
            &title,
            &format!(
                "<p>The pipeline does not load:</p><pre>{}</pre>",
                escape(&error)
            ),
        ),
    }
}

/// One stage of a run in progress, as its events tell it.
struct LiveStage {
    id: String,
    kind: String,
    status: String,
    reason: String,
    needs: Vec<String>,
    /// Work done out of a known total, as the terminal's `[done/total]`.
    done: Option<u64>,
    total: Option<u64>,
    /// Planned to run (or download): what the terminal's `stages` bar counts.
    to_run: bool,
}

/// The stages of a run in progress from its events file: the plan, then what happened.
fn live_stages(text: &str) -> Vec<LiveStage> {
    let mut stages: Vec<LiveStage> = Vec::new();
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let word = |key: &str| event[key].as_str().unwrap_or_default().to_owned();
        match event["event"].as_str() {
            Some("plan") => {
                for stage in event["stages"].as_array().into_iter().flatten() {
                    let decision = stage["decision"].as_str().unwrap_or_default();
                    stages.push(LiveStage {
                        id: stage["id"].as_str().unwrap_or_default().to_owned(),
                        kind: stage["kind"].as_str().unwrap_or_default().to_owned(),
                        status: match decision {
                            "run" | "remote" => "waiting",
                            "cached" => "cached",
                            "reuse" => "reused",
                            _ => "skipped",
                        }
                        .to_owned(),
                        reason: stage["reason"].as_str().unwrap_or_default().to_owned(),
                        needs: stage["needs"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|need| need.as_str().map(str::to_owned))
                            .collect(),
                        done: None,
                        total: None,
                        to_run: matches!(decision, "run" | "remote"),
                    });
                }
            }
            Some(kind @ ("started" | "progress" | "finished")) => {
                let id = word("stage");
                if let Some(stage) = stages.iter_mut().find(|stage| stage.id == id) {
                    match kind {
                        "started" => stage.status = "running".into(),
                        "progress" => {
                            if event["message"].is_string() {
                                stage.reason = word("message");
                            }
                            if let (Some(done), Some(total)) =
                                (event["done"].as_u64(), event["total"].as_u64())
                            {
                                (stage.done, stage.total) = (Some(done), Some(total));
                            }
                        }
                        "finished" => {
                            stage.status = word("status");
                            stage.reason = word("reason");
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    stages
}

/// A few lines that follow the run's events and update the page in place: each stage's
/// status, its box in the picture, its `[done/total]` bar and message, and the `stages` bar.
const LIVE_SCRIPT: &str = r#"<script>
const source = new EventSource(location.pathname + "/events" + location.search);
const overall = document.getElementById("stages-bar"), counted = document.getElementById("stages-count");
source.onmessage = (message) => {
  const event = JSON.parse(message.data);
  if (event.event === "end") {
    document.getElementById("live").textContent = "finished: " + event.status + ", " + event.counts;
    document.body.dataset.live = "ended";
    source.close();
    return;
  }
  const row = document.getElementById("stage-" + event.stage);
  if (!row) return;
  const status = row.querySelector(".status"), reason = row.querySelector(".reason");
  const node = document.getElementById("node-" + event.stage);
  const mark = (word) => {
    status.textContent = word; status.className = "status " + word;
    if (node) node.setAttribute("class", "node " + word);
  };
  if (event.event === "started") mark("running");
  if (event.event === "progress") {
    if (event.message) reason.textContent = event.message;
    if (event.total != null && event.done != null) {
      const bar = row.querySelector("progress"), count = row.querySelector(".count");
      bar.max = event.total; bar.value = event.done; bar.hidden = false;
      count.textContent = "[" + event.done + "/" + event.total + "]";
    }
  }
  if (event.event === "finished") {
    mark(event.status);
    reason.textContent = event.reason;
    row.dataset.finished = "1";
    const finished = document.querySelectorAll("tr[data-to-run='1'][data-finished='1']").length;
    overall.value = finished;
    counted.textContent = finished + "/" + overall.max;
  }
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
};
// The running stages' logs, tailed every two seconds.
setInterval(() => {
  for (const row of document.querySelectorAll("tr[data-stage]")) {
    if (row.querySelector(".status").textContent !== "running") continue;
    fetch(location.pathname + "/logs/" + row.dataset.stage + "?tail=8" + location.search.replace("?", "&"))
      .then((answer) => answer.ok ? answer.text() : "")
      .then((text) => { if (text) document.getElementById("log-" + row.dataset.stage).textContent = text; });
  }
}, 2000);
</script>"#;

/// A run in progress: its stages as far as they got, kept current by its events.
fn live_page(record: &RunRecord, events: &Path) -> Response {
    let text = std::fs::read_to_string(events).unwrap_or_default();
    let stages = live_stages(&text);
    let to_run = stages.iter().filter(|stage| stage.to_run).count();
    let finished = stages
        .iter()
        .filter(|stage| stage.to_run && !matches!(stage.status.as_str(), "waiting" | "running"))
        .count();
    let mut body = format!(
        "<p>Pipeline <b>{}</b> (<code>{}</code>), started {}: <span id=\"live\">running</span>.</p>\
         <p>stages <progress id=\"stages-bar\" max=\"{to_run}\" value=\"{finished}\"></progress> <span id=\"stages-count\">{finished}/{to_run}</span></p>",
        escape(&record.pipeline),
        escape(&record.pipeline_file),
        escape(&record.started_at),
    );
    body.push_str(&dag::dag_svg(
        &stages
            .iter()
            .map(|stage| dag::Node {
                id: &stage.id,
                status: &stage.status,
                needs: &stage.needs,
            })
            .collect::<Vec<_>>(),
    ));
    body.push_str(
        "<table><tr><th>stage</th><th>kind</th><th>status</th><th>progress</th><th>now</th></tr>",
    );
    for stage in &stages {
        let (bar, count) = match (stage.done, stage.total) {
            (Some(done), Some(total)) => (
                format!("<progress max=\"{total}\" value=\"{done}\"></progress>"),
                format!("[{done}/{total}]"),
            ),
            _ => ("<progress hidden></progress>".to_owned(), String::new()),
        };
        body.push_str(&format!(
            "<tr id=\"stage-{id}\" data-stage=\"{id}\" data-to-run=\"{}\" data-finished=\"{}\"><td><a href=\"/runs/{run}/logs/{id}\">{id}</a></td><td>{}</td><td class=\"status {status}\">{status}</td><td class=\"progress\">{bar} <span class=\"count\">{count}</span></td><td class=\"reason\">{}<pre class=\"log\" id=\"log-{id}\"></pre></td></tr>",
            u8::from(stage.to_run),
            u8::from(!matches!(stage.status.as_str(), "waiting" | "running")),
            escape(&stage.kind),
            escape(&stage.reason),
            run = escape(&record.run_id),
            id = escape(&stage.id),
            status = escape(&stage.status),
        ));
    }
    body.push_str("</table>");
    body.push_str(LIVE_SCRIPT);
    page(StatusCode::OK, &format!("Run {}", record.run_id), &body)
}

/// The run's events as server-sent events: what is written so far, then each new line as the
/// runner appends it, until the run's `end` (or ten idle minutes: a killed run writes none).
fn events(site: &Site, id: &str) -> Response {
    let Some(path) = confined(site, id, &["events.jsonl"]) else {
        return not_found(&format!("/runs/{id}/events"));
    };
    struct Tail {
        path: PathBuf,
        offset: u64,
        partial: String,
        ended: bool,
        idle: u32,
    }
    let tail = Tail {
        path,
        offset: 0,
        partial: String::new(),
        ended: false,
        idle: 0,
    };
    let stream = futures::stream::unfold(tail, |mut tail| async move {
        use std::io::{Read, Seek, SeekFrom};
        if tail.ended {
            return None;
        }
        loop {
            let mut fresh = String::new();
            if let Ok(mut file) = std::fs::File::open(&tail.path)
                && file.seek(SeekFrom::Start(tail.offset)).is_ok()
                && let Ok(read) = file.read_to_string(&mut fresh)
            {
                tail.offset += read as u64;
            }
            tail.partial.push_str(&fresh);
            let mut chunk = String::new();
            while let Some(end) = tail.partial.find('\n') {
                let line: String = tail.partial.drain(..=end).collect();
                let line = line.trim_end();
                if line.contains("\"event\":\"end\"") {
                    tail.ended = true;
                }
                chunk.push_str("data: ");
                chunk.push_str(line);
                chunk.push_str("\n\n");
            }
            if !chunk.is_empty() {
                tail.idle = 0;
                return Some((Ok::<_, std::convert::Infallible>(chunk), tail));
            }
            tail.idle += 1;
            if tail.idle > 3000 {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

/// The paper books: `paper/<pipeline>/<stage>/` directories holding a ledger.
fn books(site: &Site) -> Vec<(String, String)> {
    let paper = &site.paper;
    let mut found = Vec::new();
    for pipeline in std::fs::read_dir(paper).into_iter().flatten().flatten() {
        for stage in std::fs::read_dir(pipeline.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if stage.path().join("ledger.parquet").is_file()
                && let (Ok(pipeline), Ok(stage)) = (
                    pipeline.file_name().into_string(),
                    stage.file_name().into_string(),
                )
            {
                found.push((pipeline, stage));
            }
        }
    }
    found.sort();
    found
}

fn books_page(site: &Site) -> Response {
    let mut body = String::from("<ul>");
    for (pipeline, stage) in books(site) {
        body.push_str(&format!(
            "<li><a href=\"/paper/{p}/{s}\">{p} / {s}</a></li>",
            p = escape(&pipeline),
            s = escape(&stage)
        ));
    }
    body.push_str("</ul>");
    page(StatusCode::OK, "Paper books", &body)
}

/// Every row of a Parquet file's batches.
fn read_parquet(path: &Path) -> Result<Vec<arrow::array::RecordBatch>, String> {
    let file = std::fs::File::open(path).map_err(|error| error.to_string())?;
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|builder| builder.build())
        .map_err(|error| error.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| error.to_string())
}

fn text(batch: &arrow::array::RecordBatch, name: &str, row: usize) -> String {
    use arrow::array::{Array, AsArray};
    batch
        .column_by_name(name)
        .and_then(|column| {
            column
                .as_string_opt::<i32>()
                .filter(|c| !c.is_null(row))
                .map(|c| c.value(row).to_owned())
        })
        .unwrap_or_default()
}

fn number<T: arrow::datatypes::ArrowPrimitiveType>(
    batch: &arrow::array::RecordBatch,
    name: &str,
    row: usize,
) -> Option<T::Native> {
    use arrow::array::{Array, AsArray};
    let column = batch.column_by_name(name)?.as_primitive_opt::<T>()?;
    (!column.is_null(row)).then(|| column.value(row))
}

/// One paper book: the newest bar's signals, the ledger's closed and open trades, its hit rate
/// and cumulative net return.
fn book_page(site: &Site, pipeline: &str, stage: &str) -> Response {
    use arrow::datatypes::{Float64Type, Int64Type};
    let title = format!("Paper book {pipeline} / {stage}");
    let paper = site.paper.canonicalize().ok();
    let Some(dir) = paper
        .as_ref()
        .filter(|_| plain_name(pipeline) && plain_name(stage))
        .and_then(|paper| paper.join(pipeline).join(stage).canonicalize().ok())
        .filter(|dir| paper.as_ref().is_some_and(|paper| dir.starts_with(paper)))
    else {
        return not_found(&format!("/paper/{pipeline}/{stage}"));
    };
    let ledger = match read_parquet(&dir.join("ledger.parquet")) {
        Ok(batches) => batches,
        Err(error) => {
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                &title,
                &format!("<p>The ledger does not read: {}</p>", escape(&error)),
            );
        }
    };
    // (open time, symbol, side, status, net return)
    let mut trades: Vec<(i64, String, String, String, Option<f64>)> = Vec::new();
    for batch in &ledger {
        for row in 0..batch.num_rows() {
            trades.push((
                number::<Int64Type>(batch, "open_time", row).unwrap_or(0),
                text(batch, "symbol", row),
                text(batch, "side", row),
                text(batch, "status", row),
                number::<Float64Type>(batch, "net_return", row),
            ));
        }
    }
    trades.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let closed: Vec<&(i64, String, String, String, Option<f64>)> =
        trades.iter().filter(|trade| trade.3 == "closed").collect();
    let wins = closed
        .iter()
        .filter(|trade| trade.4.is_some_and(|r| r > 0.0))
        .count();
    let open = trades.iter().filter(|trade| trade.3 == "open").count();
    let mut body = format!(
        "<p>{} paper trades: {} closed, {open} open; hit rate {}.</p>",
        trades.len(),
        closed.len(),
        if closed.is_empty() {
            "n/a".to_owned()
        } else {
            format!("{:.1}%", wins as f64 / closed.len() as f64 * 100.0)
        }
    );
    if !closed.is_empty() {
        let mut total = 0.0;
        let (x, y): (Vec<i64>, Vec<f64>) = closed
            .iter()
            .map(|trade| {
                total += trade.4.unwrap_or(0.0);
                (trade.0, total)
            })
            .unzip();
        body.push_str(&crate::report::svg::time_chart(
            "Cumulative net return of the closed paper trades",
            1000.0,
            240.0,
            &[crate::report::svg::Series {
                name: "net",
                color: "#1f6feb",
                x: &x,
                y: &y,
                dashed: false,
                filled: false,
                faint: false,
            }],
            &|v| format!("{:+.1}%", v * 100.0),
        ));
    }
    // The newest bar's signals.
    let newest = std::fs::read_dir(dir.join("bars"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "parquet"))
        .max();
    if let Some(bar) = newest.and_then(|path| read_parquet(&path).ok()) {
        body.push_str("<h2>The newest bar's signals</h2><table><tr><th>symbol</th><th>bar</th><th>signal</th></tr>");
        for batch in &bar {
            for row in 0..batch.num_rows() {
                body.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&text(batch, "symbol", row)),
                    crate::util::time::rfc3339(
                        number::<Int64Type>(batch, "open_time", row)
                            .unwrap_or(0)
                            .max(0) as u64
                    ),
                    escape(&text(batch, "side", row)),
                ));
            }
        }
        body.push_str("</table>");
    }
    if let Ok(portfolio) = read_parquet(&dir.join("portfolio.parquet")) {
        portfolio_section(&mut body, &portfolio);
    }
    // The sweep behind the book: the newest run of this pipeline with a compare stage.
    if let Some(section) = list_runs(&site.run_root)
        .iter()
        .filter(|record| record.pipeline == pipeline)
        .find_map(|record| compare::leaderboards(site, record))
    {
        body.push_str(&section);
    }
    body.push_str("<h2>Trades, newest first</h2><table><tr><th>signal bar</th><th>symbol</th><th>side</th><th>status</th><th>net return</th></tr>");
    for trade in trades.iter().rev().take(200) {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            crate::util::time::rfc3339(trade.0.max(0) as u64),
            escape(&trade.1),
            escape(&trade.2),
            escape(&trade.3),
            trade
                .4
                .map_or("-".to_owned(), |r| format!("{:+.2}%", r * 100.0)),
        ));
    }
    body.push_str("</table>");
    page(StatusCode::OK, &title, &body)
}

/// The paper portfolio (the book as one account under the backtest's rules): its P&L over
/// time and its trades, newest first.
fn portfolio_section(body: &mut String, batches: &[arrow::array::RecordBatch]) {
    use arrow::datatypes::{Float64Type, Int64Type};
    // (entry time, exit time, symbol, side, size, pnl, exit reason)
    let mut trades: Vec<(i64, i64, String, String, f64, f64, String)> = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            trades.push((
                number::<Int64Type>(batch, "entry_time", row).unwrap_or(0),
                number::<Int64Type>(batch, "exit_time", row).unwrap_or(0),
                text(batch, "symbol", row),
                text(batch, "side", row),
                number::<Float64Type>(batch, "size", row).unwrap_or(0.0),
                number::<Float64Type>(batch, "pnl", row).unwrap_or(0.0),
                text(batch, "exit_reason", row),
            ));
        }
    }
    trades.sort_by(|a, b| (a.1, &a.2).cmp(&(b.1, &b.2)));
    let closed: Vec<_> = trades.iter().filter(|t| t.6 != "open").collect();
    body.push_str(&format!(
        "<h2>Paper portfolio</h2><p>The book as one account under the backtest's rules: {} trades closed, {} open, P&amp;L {:+.2}.</p>",
        closed.len(),
        trades.len() - closed.len(),
        closed.iter().map(|t| t.5).sum::<f64>()
    ));
    if !closed.is_empty() {
        let mut total = 0.0;
        let (x, y): (Vec<i64>, Vec<f64>) = closed
            .iter()
            .map(|t| {
                total += t.5;
                (t.1, total)
            })
            .unzip();
        body.push_str(&crate::report::svg::time_chart(
            "Cumulative P&L of the paper portfolio",
            1000.0,
            240.0,
            &[crate::report::svg::Series {
                name: "P&L",
                color: "#1a7f37",
                x: &x,
                y: &y,
                dashed: false,
                filled: false,
                faint: false,
            }],
            &|v| format!("{v:+.0}"),
        ));
    }
    body.push_str("<table><tr><th>entry</th><th>exit</th><th>symbol</th><th>side</th><th>size</th><th>P&amp;L</th><th>exit</th></tr>");
    for trade in trades.iter().rev().take(200) {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.6}</td><td>{:+.2}</td><td>{}</td></tr>",
            crate::util::time::rfc3339(trade.0.max(0) as u64),
            crate::util::time::rfc3339(trade.1.max(0) as u64),
            escape(&trade.2),
            escape(&trade.3),
            trade.4,
            trade.5,
            escape(&trade.6),
        ));
    }
    body.push_str("</table>");
}

/// The run root, resolved, for [`Site`].
pub fn canonical_root(run_root: &Path) -> Result<PathBuf, String> {
    run_root.canonicalize().map_err(|error| {
        format!(
            "the run root {} cannot be read: {error} (run a pipeline first, or pass --run-root)",
            run_root.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_dots_slashes_or_odd_characters_are_not_plain() {
        for name in ["..", ".", "a/b", "../x", "a..b", "", "x\\y", "%2e%2e"] {
            assert!(!plain_name(name), "{name}");
        }
        for name in ["20261201T114933Z-bb61", "train@model=mlp", "report"] {
            assert!(plain_name(name), "{name}");
        }
    }

    #[test]
    fn a_bind_beyond_loopback_needs_a_token() {
        let any: SocketAddr = "0.0.0.0:8321".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8321".parse().unwrap();
        assert!(check_bind(&any, None).is_err());
        assert!(check_bind(&any, Some("")).is_err());
        assert!(check_bind(&any, Some("s3cret")).is_ok());
        assert!(check_bind(&local, None).is_ok());
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            query_value("pipeline=my%20demo&status=failed", "pipeline").as_deref(),
            Some("my demo")
        );
        assert_eq!(query_value("status=failed", "pipeline"), None);
    }
}
