//! `asterflow serve` benchmark (issue 23): the runs page over 1,000 recorded runs, through the
//! real release binary over HTTP on 127.0.0.1; target under 100 ms. Each run record has ten
//! stages, each with its params and needs, and the run's key figures, as runs record them. Run
//! with `cargo bench --bench serve`.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 1000;
const SAMPLES: usize = 30;

fn record(index: usize) -> String {
    let started = 1_764_547_200_000u64 + index as u64 * 3_600_000;
    let id = format!("20251201T{:06}Z-{:04x}", index, index);
    let stages: Vec<String> = (0..10)
        .map(|stage| {
            format!(
                r#"{{"id":"stage{stage}","kind":"train","status":"{}","reason":"never ran","duration_ms":{},"fingerprint":"{:064x}","needs":["stage{}"],"params":{{"classes":["BUY","HOLD","SELL"],"config":{{"alpha":0.0,"balance":"weights","batch_size":1024,"epochs":10,"hidden":64,"learning_rate":0.001,"model":"mlp","seed":{index}}},"device":"auto","exclude":["close"],"features_table":"features","folds":4,"labels_table":"labels","window":"expanding"}}}}"#,
                if stage % 3 == 0 { "ran" } else { "cached" },
                stage * 100,
                index * 10 + stage,
                stage.saturating_sub(1)
            )
        })
        .collect();
    format!(
        r#"{{"format":1,"run_id":"{id}","pipeline":"{}","pipeline_file":"pipelines/p.yaml","status":"{}","started_at":"2025-12-01T00:00:00Z","started_at_ms":{started},"finished_at":"2025-12-01T00:00:09Z","duration_ms":9000,"pid":1,"argv":["asterflow","run","pipelines/p.yaml"],"stages":[{}],"figures":["validation: 12 symbols passed, 0 datasets quarantined","model: balanced accuracy 0.448 vs baseline 0.333, log loss 1.003 vs 0.886","backtest: return +4.21% vs buy-and-hold -3.10%, Sharpe 1.12 vs -0.20, max drawdown -2.31%, 412 trades: beat buy-and-hold on return and on Sharpe"]}}"#,
        if index.is_multiple_of(2) {
            "demo"
        } else {
            "aster"
        },
        if index.is_multiple_of(7) {
            "failed"
        } else {
            "succeeded"
        },
        stages.join(",")
    )
}

fn get(address: &str) -> (Duration, usize) {
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    assert!(response.starts_with(b"HTTP/1.1 200"));
    (started.elapsed(), response.len())
}

fn main() {
    let project = tempfile::tempdir().unwrap();
    let runs = project.path().join("runs");
    for index in 0..RUNS {
        let text = record(index);
        let id = &text[text.find("\"run_id\":\"").unwrap() + 10..][..22];
        std::fs::create_dir_all(runs.join(id)).unwrap();
        std::fs::write(runs.join(id).join("run.json"), text).unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_asterflow"))
        .current_dir(project.path())
        .args(["serve", "--bind", &address])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "serve did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, size) = get(&address);
    let mut samples: Vec<Duration> = (0..SAMPLES).map(|_| get(&address).0).collect();
    let _ = child.kill();
    let _ = child.wait();
    samples.sort();
    let median = samples[SAMPLES / 2];
    println!(
        "runs page over {RUNS} runs ({:.0} KiB of HTML): median {:.1} ms, min {:.1} ms, max {:.1} ms over {SAMPLES} requests; target under 100 ms: {}",
        size as f64 / 1024.0,
        median.as_secs_f64() * 1e3,
        samples[0].as_secs_f64() * 1e3,
        samples[SAMPLES - 1].as_secs_f64() * 1e3,
        if median < Duration::from_millis(100) {
            "met"
        } else {
            "MISSED"
        }
    );
}
