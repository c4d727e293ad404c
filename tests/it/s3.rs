//! S3-compatible object storage (issue 21, first step): a `binance-dump` source reading an
//! `s3://` URL from a real S3 server on 127.0.0.1 (moto, from PyPI; `.ci/run` installs it into
//! the venv `ASTERFLOW_PYTHON` names), with the credentials from the standard `AWS_*`
//! environment and never written anywhere.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{Project, wait_for};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

const BUCKET: &str = "asterflow-test";
const KEY_ID: &str = "AKIAASTERFLOWTEST";
pub(crate) const SECRET: &str = "asterflow-secret-4f9c2e7a1b";

/// A moto S3 server on a free port of 127.0.0.1; killed when dropped.
pub(crate) struct Moto {
    child: Child,
    pub(crate) endpoint: String,
}

impl Moto {
    /// `None` (with a note) when no Python with moto is installed.
    pub(crate) fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// [`Moto::start`] with extra environment for the server (`INITIAL_NO_AUTH_ACTION_COUNT=0`
    /// makes it check every request's credentials).
    pub(crate) fn start_with(environment: &[(&str, &str)]) -> Option<Self> {
        let python = std::env::var("ASTERFLOW_PYTHON").unwrap_or_else(|_| "python3".into());
        let has_moto = Command::new(&python)
            .args(["-c", "import moto.server"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !has_moto {
            eprintln!("note: moto is not installed for {python}: the S3 tests skipped");
            return None;
        }
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
            .envs(environment.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let moto = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let address = format!("127.0.0.1:{port}");
        assert!(
            wait_for(Duration::from_secs(30), || {
                std::net::TcpStream::connect(&address).is_ok()
            }),
            "moto did not start"
        );
        Some(moto)
    }

    /// Creates a bucket (moto takes an unsigned `PUT /bucket`).
    pub(crate) fn create_bucket(&self, bucket: &str) {
        use std::io::{Read, Write};
        let address = self.endpoint.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        write!(
            stream,
            "PUT /{bucket} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }

    /// The bucket as an object store, with the test's credentials.
    pub(crate) fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        Arc::new(
            object_store::aws::AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_endpoint(&self.endpoint)
                .with_allow_http(true)
                .with_region("us-east-1")
                .with_access_key_id(KEY_ID)
                .with_secret_access_key(SECRET)
                .build()
                .unwrap(),
        )
    }

    /// The `AWS_*` environment that points asterflow at this server.
    pub(crate) fn environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every file under `dir`, recursively.
pub(crate) fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn a_dump_source_reads_an_s3_bucket_and_keeps_the_secret_out_of_everything() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket(BUCKET);
    let store = moto.store(BUCKET);
    let hour = 3_600_000i64;
    let start = 1_735_689_600_000i64; // 2025-01-01
    let mut klines = String::new();
    for i in 0..48 {
        let open = start + i * hour;
        klines.push_str(&format!(
            "{open},{}.5,{}.9,{}.1,{}.7,12.5,{},900.0,42,6.0,450.0,0\n",
            100 + i,
            101 + i,
            99 + i,
            100 + i,
            open + hour - 1
        ));
    }
    let funding = format!(
        "calc_time,funding_interval_hours,last_funding_rate\n{},8,0.0001\n{},8,0.0002\n",
        start + 8 * hour + 3,
        start + 16 * hour + 2
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        for (key, body) in [
            ("dumps/BTCUSDT/1h/BTCUSDT-1h-2025-01.csv", klines.clone()),
            (
                "dumps/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2025-01.csv",
                funding,
            ),
        ] {
            store
                .put(&object_store::path::Path::from(key), PutPayload::from(body))
                .await
                .unwrap();
        }
    });

    let project = Project::new();
    project.write(
        "pipelines/x.yaml",
        &format!(
            "name: x\nsources:\n  bucket:\n    api: binance-dump\n    url: s3://{BUCKET}/dumps/\n    endpoint: {}\nstages:\n  collect:\n    kind: collect\n    with: {{source: bucket, intervals: [1h], start: 2025-01-01}}\n",
            moto.endpoint
        ),
    );
    let mut command = project.command(&["run", "pipelines/x.yaml", "--json", "--verbose"]);
    // The server is the source's own `endpoint:`, not AWS_ENDPOINT_URL.
    for (name, value) in moto.environment() {
        if name != "AWS_ENDPOINT_URL" {
            command.env(name, value);
        }
    }
    command.env_remove("AWS_ENDPOINT_URL");
    let run = crate::common::Run::from(command.output().unwrap());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rows = crate::common::lake_bars(&project, "klines", "bucket", "1h", "BTCUSDT");
    assert_eq!(rows.len(), 48);
    let settlements = crate::common::lake_funding(&project, "bucket", "BTCUSDT");
    assert_eq!(settlements.len(), 2);
    // The secret is nowhere: not in what was printed, not in runs/ or the lake.
    assert!(!run.stdout.contains(SECRET) && !run.stderr.contains(SECRET));
    for file in files_under(project.path()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{} holds the secret",
            file.display()
        );
    }
}
