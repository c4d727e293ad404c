//! The demo pipeline end to end through `backtest` and `report`: the key figures at the end of
//! the run, `report.md`, and `report.html` opened in headless Chromium, whose screenshot must
//! show the equity and drawdown charts. Without Chromium the browser half skips, saying why.
//! Set `ASTERFLOW_SCREENSHOT` to a path to keep the screenshot.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ASTERFLOW_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|path| path.is_file())
}

/// Counts the pixels within a small distance of `rgb`.
fn pixels_near(png: &Path, rgb: [u8; 3]) -> usize {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buffer = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buffer).unwrap();
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    buffer[..info.buffer_size()]
        .chunks(channels)
        .filter(|pixel| {
            pixel[..3]
                .iter()
                .zip(rgb)
                .all(|(&have, want)| have.abs_diff(want) <= 24)
        })
        .count()
}

#[test]
fn the_demo_run_ends_with_key_figures_and_a_report_chromium_renders_with_its_charts() {
    let project = crate::common::shipped_project();
    let run = project.run(&["run", "pipelines/demo.yaml"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    for line in [
        "*** SYNTHETIC DATA",
        "model: balanced accuracy",
        "backtest: return",
        "vs buy-and-hold",
        "report: runs/",
    ] {
        assert!(
            run.stdout.contains(line),
            "missing `{line}`:\n{}",
            run.stdout
        );
    }
    let html_path = run
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("report: "))
        .map(|path| project.path().join(path))
        .unwrap();
    let html = std::fs::read_to_string(&html_path).unwrap();
    for part in [
        "SYNTHETIC DATA",
        "<h2>Run</h2>",
        "<h2>Validation</h2>",
        "<h2>Features</h2>",
        "<h2>Model</h2>",
        "Confusion matrix",
        "aria-label=\"Feature importance\"",
        "<h2>Backtest</h2>",
        "buy-and-hold",
        "aria-label=\"Equity\"",
        "aria-label=\"Drawdown\"",
        "aria-label=\"stage timeline\"",
        "Monthly returns",
        "P&amp;L before fees (t)",
        "<h2>Paper trading</h2>",
        "<th>P(BUY)</th>",
        "<td class=\"l\">BTCUSDT</td><td class=\"l\">flat</td>",
    ] {
        assert!(html.contains(part), "report.html lacks `{part}`");
    }
    // Self-contained: nothing to fetch, nothing to run.
    for forbidden in ["src=", "href=", "<script", "@import", "url("] {
        assert!(!html.contains(forbidden), "report.html has `{forbidden}`");
    }
    let markdown = std::fs::read_to_string(html_path.with_file_name("report.md")).unwrap();
    assert!(markdown.contains("## Backtest"), "{markdown}");
    assert!(markdown.contains("| total return |"), "{markdown}");
    assert!(markdown.contains("; before fees P&L "), "{markdown}");
    assert!(markdown.contains("## Paper trading"), "{markdown}");

    let Some(browser) = chromium() else {
        eprintln!(
            "skipped: the browser check needs Chromium (Debian's `chromium` package, or ASTERFLOW_CHROMIUM); none found on PATH"
        );
        return;
    };
    let screenshot = project.path().join("report.png");
    let mut child = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1100,1600",
        ])
        .arg(format!(
            "--user-data-dir={}",
            project.path().join("chromium").display()
        ))
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(format!("file://{}", html_path.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("chromium did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "chromium failed: {stderr}");
    // Page errors show as console messages or failed loads; the rest of Chromium's stderr is
    // about the sandboxed machine (no D-Bus, no GPU), not the page.
    for line in stderr.lines() {
        let page_error = line.contains(":CONSOLE(")
            || line.contains("Failed to load")
            || line.contains("net::ERR_");
        assert!(!page_error, "the page logged an error: {line}\n{stderr}");
    }
    assert!(screenshot.is_file(), "no screenshot: {stderr}");
    if let Some(keep) = std::env::var_os("ASTERFLOW_SCREENSHOT") {
        std::fs::copy(&screenshot, keep).unwrap();
    }
    // The charts drew: the strategy's blue line and the benchmark's orange one are on screen.
    let blue = pixels_near(&screenshot, [0x1f, 0x6f, 0xeb]);
    let orange = pixels_near(&screenshot, [0xd9, 0x77, 0x06]);
    assert!(
        blue > 500,
        "the strategy line is missing: {blue} blue pixels"
    );
    assert!(
        orange > 500,
        "the buy-and-hold line is missing: {orange} orange pixels"
    );

    // The same run through `asterflow serve`, in the browser: the runs page links the run, the
    // run's page shows its stage table and links the report, which the browser opens.
    crate::serve::browse_runs_in_chromium(&project, &browser);
}
