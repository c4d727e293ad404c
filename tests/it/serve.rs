//! `asterflow serve` (issue 23, first step): every route over HTTP against the real binary on
//! 127.0.0.1, path traversal, a missing run, a corrupt `run.json`, and the token rule.

use std::io::{Read, Write};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::common::{Project, free_port, pipeline, stage, wait_for};

/// A running `asterflow serve`; killed when dropped.
pub(crate) struct Server {
    child: Child,
    address: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start(project: &Project, extra: &[&str]) -> Server {
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let child = project
        .command(&[&["serve", "--bind", &bind][..], extra].concat())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || std::net::TcpStream::connect(
            &bind
        )
        .is_ok()),
        "serve did not start"
    );
    Server {
        child,
        address: bind,
    }
}

/// `GET path` with `headers`: the status code and the body.
pub(crate) fn get(server: &Server, path: &str, headers: &[&str]) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(&server.address).unwrap();
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        server.address
    );
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A project with two runs of a two-stage pipeline, the second failing.
fn project_with_runs() -> (Project, Vec<String>) {
    let project = Project::new();
    project.write(
        "pipelines/p.yaml",
        &pipeline(&[
            stage("alpha", &[], "echo hello from alpha > out.txt"),
            stage("beta", &["alpha"], "echo beta > out.txt"),
        ]),
    );
    let first = project.run(&["run", "pipelines/p.yaml", "--json"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    project.write(
        "pipelines/p.yaml",
        &pipeline(&[
            stage("alpha", &[], "echo hello from alpha > out.txt"),
            stage("beta", &["alpha"], "echo 'beta broke <b>' >&2; exit 3"),
        ]),
    );
    let second = project.run(&["run", "pipelines/p.yaml", "--json"]);
    assert_eq!(second.code, 1, "{}", second.stderr);
    let ids = [first, second]
        .iter()
        .map(|run| run.json()["run_id"].as_str().unwrap().to_owned())
        .collect();
    (project, ids)
}

#[test]
fn every_route_answers_and_nothing_outside_the_run_root_is_served() {
    let (project, ids) = project_with_runs();
    let server = start(&project, &[]);
    // The runs, newest first, and the filters.
    let (status, body) = get(&server, "/", &[]);
    assert_eq!(status, 200, "{body}");
    let (newer, older) = (
        body.find(&ids[1]).expect("the failed run"),
        body.find(&ids[0]).expect("the first run"),
    );
    assert!(newer < older, "newest first");
    assert!(body.contains("2 of 2 runs"), "{body}");
    let (_, failed) = get(&server, "/?status=failed", &[]);
    assert!(
        failed.contains(&ids[1]) && !failed.contains(&ids[0]),
        "{failed}"
    );
    assert!(failed.contains("1 of 2 runs"));
    let (_, other) = get(&server, "/?pipeline=nope", &[]);
    assert!(other.contains("0 of 2 runs"), "{other}");

    // A run: its stages, statuses, reasons (escaped), and logs.
    let (status, run) = get(&server, &format!("/runs/{}", ids[1]), &[]);
    assert_eq!(status, 200, "{run}");
    assert!(run.contains(">alpha<") && run.contains(">beta<"), "{run}");
    assert!(run.contains("class=\"failed\""), "{run}");
    assert!(
        run.contains("beta broke &lt;b&gt;") && !run.contains("broke <b>"),
        "a stage's words are escaped: {run}"
    );
    assert!(
        run.contains("<svg") && run.contains("aria-label=\"stage timeline\""),
        "a timeline: {run}"
    );
    // The stages as a DAG picture: a box per stage coloured by status, an arrow per need.
    assert!(
        run.contains("<g id=\"node-alpha\" class=\"node cached\">")
            && run.contains("<g id=\"node-beta\" class=\"node failed\">")
            && run.contains("data-from=\"alpha\" data-to=\"beta\""),
        "a DAG: {run}"
    );
    let (status, log) = get(&server, &format!("/runs/{}/logs/alpha", ids[0]), &[]);
    assert_eq!(status, 200, "{log}");
    assert!(log.contains("stage alpha"), "{log}");

    // The pipelines and their plans: alpha cached, beta (which failed) to run again.
    let (status, list) = get(&server, "/pipelines", &[]);
    assert_eq!(status, 200, "{list}");
    assert!(list.contains("href=\"/pipelines/p.yaml\""), "{list}");
    let (status, plan) = get(&server, "/pipelines/p.yaml", &[]);
    assert_eq!(status, 200, "{plan}");
    let row = |stage: &str| {
        let start = plan
            .find(&format!("<td>{stage}</td>"))
            .unwrap_or_else(|| panic!("{plan}"));
        plan[start..start + plan[start..].find("</tr>").unwrap()].to_owned()
    };
    assert!(row("alpha").contains(">cached<"), "{}", row("alpha"));
    assert!(row("beta").contains(">run<"), "{}", row("beta"));
    assert!(
        plan.contains("class=\"node cached\"") && plan.contains("class=\"node run\""),
        "the plan as a DAG: {plan}"
    );

    // Two runs side by side: alpha the same, beta's command changed (and it failed).
    let (status, runs) = get(&server, "/", &[]);
    assert_eq!(status, 200);
    assert!(
        runs.contains("action=\"/compare\"")
            && runs.contains(&format!("name=\"a\" value=\"{}\"", ids[0])),
        "{runs}"
    );
    let (status, compared) = get(&server, &format!("/compare?a={}&b={}", ids[0], ids[1]), &[]);
    assert_eq!(status, 200, "{compared}");
    let diff = |stage: &str| {
        let start = compared
            .find(&format!("id=\"diff-{stage}\""))
            .unwrap_or_else(|| panic!("{compared}"));
        compared[start..start + compared[start..].find("</tr>").unwrap()].to_owned()
    };
    assert!(
        diff("alpha").contains("class=\"same\""),
        "{}",
        diff("alpha")
    );
    let beta = diff("beta");
    assert!(
        beta.contains("class=\"differs\"")
            && beta.contains("with.run:")
            && beta.contains("echo beta &gt; out.txt")
            && beta.contains("beta broke &lt;b&gt;"),
        "the changed param, both values, escaped: {beta}"
    );
    assert!(compared.contains("1 of 2 stages differ"), "{compared}");
    let (status, missing) = get(&server, &format!("/compare?a=nope&b={}", ids[1]), &[]);
    assert_eq!(status, 404, "{missing}");
    let (status, _) = get(&server, "/compare?a=..%2F..&b=x", &[]);
    assert_eq!(status, 404);
    let (status, unnamed) = get(&server, "/compare", &[]);
    assert_eq!(status, 400, "{unnamed}");
    project.write(
        "pipelines/broken.yaml",
        "name: broken\nstages:\n  a: {kind: nope}\n",
    );
    let (status, broken) = get(&server, "/pipelines/broken.yaml", &[]);
    assert_eq!(status, 200, "{broken}");
    assert!(
        broken.contains("does not load") && broken.contains("nope"),
        "{broken}"
    );
    let (status, _) = get(&server, "/pipelines/..%2Fsecret.yaml", &[]);
    assert_eq!(status, 404);

    // What is not there, or not inside the run root.
    let outside = project.path().join("secret.txt");
    std::fs::write(&outside, "not for the web").unwrap();
    std::os::unix::fs::symlink(
        &outside,
        project
            .path()
            .join("runs")
            .join(&ids[0])
            .join("logs/leak.log"),
    )
    .unwrap();
    for path in [
        "/runs/nope".to_owned(),
        format!("/runs/{}/logs/..%2F..%2Fsecret", ids[0]),
        format!("/runs/{}/logs/../../secret.txt", ids[0]),
        "/runs/../secret.txt".to_owned(),
        "/runs/..%2Fsecret.txt/report.html".to_owned(),
        format!("/runs/{}/logs/leak", ids[0]),
        format!("/runs/{}/report.html", ids[0]),
        "/etc/passwd".to_owned(),
    ] {
        let (status, body) = get(&server, &path, &[]);
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!body.contains("not for the web"), "{path}");
    }

    // A damaged record is an error page, and the server goes on.
    std::fs::write(
        project.path().join("runs").join(&ids[0]).join("run.json"),
        "{ not json",
    )
    .unwrap();
    let (status, body) = get(&server, &format!("/runs/{}", ids[0]), &[]);
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("is not valid"), "{body}");
    let (status, body) = get(&server, &format!("/compare?a={}&b={}", ids[0], ids[1]), &[]);
    assert_eq!(status, 500, "{body}");
    let (status, _) = get(&server, "/", &[]);
    assert_eq!(status, 200);
    // It never wrote: the run root holds what the runs left.
    assert!(!project.path().join("runs").join("serve").exists());
}

#[test]
fn beyond_loopback_a_token_is_required_and_checked() {
    let (project, ids) = project_with_runs();
    // Any address but loopback without a token: refused before listening.
    let refused = project.run(&["serve", "--bind", &format!("0.0.0.0:{}", free_port())]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("--token"), "{}", refused.stderr);

    let server = start(&project, &["--token", "s3cret-token"]);
    let (status, body) = get(&server, "/", &[]);
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains(&ids[0]));
    let (status, _) = get(&server, "/", &["Authorization: Bearer wrong"]);
    assert_eq!(status, 401);
    let (status, body) = get(&server, "/", &["Authorization: Bearer s3cret-token"]);
    assert_eq!(status, 200);
    assert!(body.contains(&ids[0]));
    let (status, _) = get(&server, "/?token=s3cret-token", &[]);
    assert_eq!(status, 200);
    let (status, _) = get(&server, "/", &["Cookie: asterflow_token=s3cret-token"]);
    assert_eq!(status, 200);
}

/// The DOM Chromium builds for `url`, after its scripts ran.
fn dump_dom(browser: &std::path::Path, profile: &std::path::Path, url: &str) -> String {
    let mut child = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut dom = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut dom)
        .unwrap();
    assert!(child.wait().unwrap().success(), "chromium failed on {url}");
    dom
}

/// The first `href` in `dom` that starts with `prefix`.
fn link(dom: &str, prefix: &str) -> String {
    let start = dom
        .find(&format!("href=\"{prefix}"))
        .unwrap_or_else(|| panic!("no link to {prefix} in {dom}"))
        + 6;
    dom[start..start + dom[start..].find('"').unwrap()].to_owned()
}

/// Opens the runs page of `project`'s run root in headless Chromium and follows the links a
/// reader would: the newest run, then its report.
pub(crate) fn browse_runs_in_chromium(project: &Project, browser: &std::path::Path) {
    let server = start(project, &[]);
    let base = format!("http://{}", server.address);
    let profile = project.path().join("chromium-serve");
    let runs = dump_dom(browser, &profile, &format!("{base}/"));
    assert!(runs.contains("<h1>Runs</h1>"), "{runs}");
    let run = link(&runs, "/runs/");
    let page = dump_dom(browser, &profile, &format!("{base}{run}"));
    for stage in [
        "discover", "collect", "features", "train", "backtest", "report",
    ] {
        assert!(
            page.contains(&format!("<td>{stage}</td>")),
            "no {stage} row: {page}"
        );
    }
    assert!(page.contains("class=\"ran\""), "{page}");
    let report = link(&page, &format!("{run}/report.html"));
    let html = dump_dom(browser, &profile, &format!("{base}{report}"));
    assert!(
        html.contains("buy-and-hold"),
        "the report did not open: {html}"
    );

    // The demo's paper book: its ledger and the newest bar's signals.
    let (status, books) = get(&server, "/paper", &[]);
    assert_eq!(status, 200, "{books}");
    assert!(books.contains("href=\"/paper/demo/signals\""), "{books}");
    let (status, book) = get(&server, "/paper/demo/signals", &[]);
    assert_eq!(status, 200, "{book}");
    assert!(
        book.contains("paper trades:") && book.contains("hit rate"),
        "{book}"
    );
    assert!(
        book.contains("<td>BTCUSDT</td>"),
        "the newest bar's signals: {book}"
    );
    assert!(
        book.contains("<h2>Paper portfolio</h2>"),
        "the demo trades its book under the backtest's rules: {book}"
    );
    let (status, _) = get(&server, "/paper/demo/..", &[]);
    assert_eq!(status, 404);

    // A second run with more risk per trade: only the backtest (and what reads it) reruns.
    // Side by side, the page names the param that moved and how the backtest's figures moved
    // while the model's stayed.
    let demo = std::fs::read_to_string(project.path().join("pipelines/demo.yaml")).unwrap();
    let (before, after) = ("risk_per_trade: 0.0025", "risk_per_trade: 0.005");
    assert!(demo.contains(before), "the demo changed shape");
    project.write("pipelines/demo.yaml", &demo.replacen(before, after, 1));
    let second = project.run(&["run", "pipelines/demo.yaml", "--json"]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    let second = second.json()["run_id"].as_str().unwrap().to_owned();
    let first = run.trim_start_matches("/runs/");
    let (status, runs) = get(&server, "/", &[]);
    assert_eq!(status, 200);
    assert!(
        runs.contains("model: balanced accuracy") && runs.contains("backtest: return"),
        "the runs' key figures: {runs}"
    );
    let (status, compared) = get(&server, &format!("/compare?a={first}&b={second}"), &[]);
    assert_eq!(status, 200, "{compared}");
    assert!(
        compared.contains("with.risk_per_trade: 0.0025 -&gt; 0.005"),
        "{compared}"
    );
    let figure = |stage: &str, label: &str| {
        let start = compared
            .find(&format!("<tr><td>{stage}</td><td>{label}</td>"))
            .unwrap_or_else(|| panic!("no {stage} {label}: {compared}"));
        compared[start..start + compared[start..].find("</tr>").unwrap()].to_owned()
    };
    assert!(
        figure("train", "balanced accuracy").contains("+0.000"),
        "{}",
        figure("train", "balanced accuracy")
    );
    assert!(
        !figure("backtest", "return").contains("+0.00 pts"),
        "twice the risk moves the return: {}",
        figure("backtest", "return")
    );
}

/// The id of the only run under `project`'s run root once its events file exists.
fn running_id(project: &Project) -> String {
    let runs = project.path().join("runs");
    let mut found = None;
    assert!(
        wait_for(Duration::from_secs(30), || {
            found = std::fs::read_dir(&runs).ok().and_then(|entries| {
                entries
                    .flatten()
                    .find(|entry| entry.path().join("events.jsonl").is_file())
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
            });
            found.is_some()
        }),
        "the run did not start"
    );
    found.unwrap()
}

#[test]
fn a_run_in_progress_streams_its_events_and_the_page_follows_them_without_a_reload() {
    let project = Project::new();
    project.write(
        "pipelines/slow.yaml",
        &pipeline(&[
            stage("quick", &[], "echo quick > out.txt"),
            stage(
                "slow",
                &["quick"],
                "for i in 1 2 3 4; do echo \"::progress $i/4 step $i\"; sleep 1; done; echo slow > out.txt",
            ),
        ]),
    );
    // The run root must exist for the server; a first run makes it.
    std::fs::create_dir_all(project.path().join("runs")).unwrap();
    let server = start(&project, &[]);
    let mut run = project.spawn(&["run", "pipelines/slow.yaml"]);
    let id = running_id(&project);
    // While it runs, the page shows the planned stages and the script that follows them.
    let (status, page) = get(&server, &format!("/runs/{id}"), &[]);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("id=\"stage-slow\""), "{page}");
    assert!(page.contains("new EventSource"), "{page}");
    assert!(
        page.contains("<svg class=\"dag\"") && page.contains("id=\"node-slow\""),
        "the stages as a picture: {page}"
    );
    assert!(
        page.contains("data-from=\"quick\" data-to=\"slow\""),
        "an arrow from quick to slow: {page}"
    );
    assert!(
        page.contains("id=\"log-slow\""),
        "a place for its log's tail: {page}"
    );
    // The log's tail, as the page polls it while the stage runs.
    let mut tail = String::new();
    assert!(
        wait_for(Duration::from_secs(20), || {
            tail = get(&server, &format!("/runs/{id}/logs/slow?tail=2"), &[]).1;
            tail.contains("::progress")
        }),
        "the running stage's log: {tail}"
    );
    assert!(tail.lines().count() <= 2, "{tail}");
    let slow = &page[page.find("id=\"stage-slow\"").unwrap()..];
    let slow = &slow[..slow.find("</tr>").unwrap()];
    assert!(
        slow.contains("status waiting") || slow.contains("status running"),
        "the slow stage has not finished yet: {slow}"
    );

    // In the browser, the same page, opened while the run is in progress: its script changes
    // the table as the events arrive, with no reload.
    if let Some(browser) = crate::report::chromium() {
        let dom = std::process::Command::new(&browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--virtual-time-budget=60000",
                "--dump-dom",
            ])
            .arg(format!(
                "--user-data-dir={}",
                project.path().join("chromium").display()
            ))
            .arg(format!("http://{}/runs/{id}", server.address))
            .stderr(Stdio::null())
            .output()
            .unwrap();
        let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
        assert!(
            dom.contains("data-live=\"ended\""),
            "the page did not follow the run: {dom}"
        );
        assert!(dom.contains("data-updates="), "{dom}");
        assert!(
            dom.contains("<td class=\"status ran\">ran</td>"),
            "the slow stage's row was updated in place: {dom}"
        );
        // Its progress bar followed the command's `::progress` lines, as the terminal's does;
        // its box in the picture and the run's stages bar too.
        let row = &dom[dom.find("id=\"stage-slow\"").unwrap()..];
        let row = &row[..row.find("</tr>").unwrap()];
        assert!(
            row.contains("max=\"4\"") && row.contains("value=\"4\"") && row.contains("[4/4]"),
            "{row}"
        );
        assert!(dom.contains("class=\"node ran\""), "{dom}");
        assert!(
            dom.contains("<span id=\"stages-count\">2/2</span>"),
            "{dom}"
        );
    } else {
        eprintln!("skipped: the live page's browser check needs Chromium");
    }

    // The stream: the plan, each stage's start and end, then the run's end.
    let (status, stream) = get(&server, &format!("/runs/{id}/events"), &[]);
    assert_eq!(status, 200);
    for needle in [
        "data: {\"event\":\"plan\"",
        "\"event\":\"started\",\"stage\":\"slow\"",
        "\"event\":\"finished\"",
        "\"event\":\"end\"",
    ] {
        assert!(stream.contains(needle), "{needle}: {stream}");
    }
    assert!(run.wait().unwrap().success());
    // Once finished, the page is the recorded run's.
    let (_, page) = get(&server, &format!("/runs/{id}"), &[]);
    assert!(!page.contains("new EventSource"), "{page}");
    assert!(page.contains("succeeded"), "{page}");
}
