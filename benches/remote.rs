//! The remote-cache benchmark (issue 21): the shipped demo with a remote cache on an S3 server
//! on 127.0.0.1 (moto, from the Python `ASTERFLOW_PYTHON` names; `.ci/run` installs it).
//!
//! - cold local run: a fresh project, no remote;
//! - warm start from the remote: a fresh project (empty cache, empty lake) whose every stage is
//!   in the remote: downloaded and verified, nothing run;
//! - no-op rerun: everything cached locally, with the remote configured against without it
//!   (target: under 2x the local no-op).
//!
//! Run with `cargo bench --bench remote`.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const COLD_SAMPLES: usize = 3;
const NOOP_SAMPLES: usize = 30;
const BUCKET: &str = "asterflow-bench";

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts moto on a free port and creates the bucket; returns the server and its endpoint.
fn start_moto() -> (Moto, String) {
    let python = std::env::var("ASTERFLOW_PYTHON").unwrap_or_else(|_| "python3".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&python)
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("{python} -m moto.server: {error}"));
    let moto = Moto(child);
    let address = format!("127.0.0.1:{port}");
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "moto did not start: install moto[server] for {python} (or set ASTERFLOW_PYTHON)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    write!(
        stream,
        "PUT /{BUCKET} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    (moto, format!("http://{address}"))
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn demo(dir: &Path, environment: &[(String, String)], extra: &[&str]) -> (Duration, u64) {
    let args = [&["run", "pipelines/demo.yaml", "--quiet"][..], extra].concat();
    common::run_asterflow(dir, &args, environment)
}

fn main() {
    let (_moto, endpoint) = start_moto();
    let remote: Vec<(String, String)> = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "AKIABENCH"),
        ("AWS_SECRET_ACCESS_KEY", "bench-secret"),
        ("AWS_REGION", "us-east-1"),
        ("ASTERFLOW_REMOTE_CACHE", &format!("s3://{BUCKET}/team")),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect();

    let mut cold = Vec::new();
    for sample in 0..COLD_SAMPLES {
        let dir = tempfile::tempdir().unwrap();
        common::demo_project(dir.path());
        let (elapsed, _) = demo(dir.path(), &[], &[]);
        println!(
            "cold local run {}: {:.2} s",
            sample + 1,
            elapsed.as_secs_f64()
        );
        cold.push(elapsed);
    }

    // One checkout fills the remote; it then measures the no-op reruns.
    let seeded = tempfile::tempdir().unwrap();
    common::demo_project(seeded.path());
    let (elapsed, _) = demo(seeded.path(), &remote, &[]);
    println!(
        "cold run storing every entry: {:.2} s",
        elapsed.as_secs_f64()
    );

    let mut warm = Vec::new();
    let mut warm_peak = 0;
    for sample in 0..COLD_SAMPLES {
        let dir = tempfile::tempdir().unwrap();
        common::demo_project(dir.path());
        let (elapsed, peak) = demo(dir.path(), &remote, &[]);
        println!(
            "warm start from the remote {}: {:.0} ms, peak RSS {:.0} MiB",
            sample + 1,
            millis(elapsed),
            peak as f64 / 1048576.0
        );
        warm.push(elapsed);
        warm_peak = warm_peak.max(peak);
    }

    let (mut local, mut with_remote) = (Vec::new(), Vec::new());
    for _ in 0..NOOP_SAMPLES {
        local.push(demo(seeded.path(), &[], &[]).0);
        with_remote.push(demo(seeded.path(), &remote, &[]).0);
    }

    let (cold, warm) = (median(&mut cold), median(&mut warm));
    println!(
        "cold local run: median {:.2} s ({COLD_SAMPLES} fresh projects)",
        cold.as_secs_f64()
    );
    println!(
        "warm start from the remote: median {:.0} ms ({COLD_SAMPLES} fresh projects), {:.1}x faster than the cold run; peak RSS {:.0} MiB",
        millis(warm),
        cold.as_secs_f64() / warm.as_secs_f64(),
        warm_peak as f64 / 1048576.0
    );
    let (local, with_remote) = (median(&mut local), median(&mut with_remote));
    let ratio = with_remote.as_secs_f64() / local.as_secs_f64();
    println!(
        "no-op rerun: local {:.1} ms, with the remote {:.1} ms (medians of {NOOP_SAMPLES}, interleaved): {ratio:.2}x; target < 2x: {}",
        millis(local),
        millis(with_remote),
        if ratio < 2.0 { "met" } else { "MISSED" }
    );
}
