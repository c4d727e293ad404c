//! Object stores by URL: `file:///dir/` (the local filesystem) and `s3://bucket/prefix/`
//! (AWS S3 or any S3-compatible server: MinIO, R2, moto). S3 settings come from the standard
//! `AWS_*` environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, ...); an `http://` endpoint is allowed
//! without `AWS_ALLOW_HTTP`, since naming it is the choice. Nothing here prints a secret: errors
//! name the URL and, for credentials, the variables.

use std::sync::Arc;

use std::time::Duration;

use object_store::aws::AmazonS3ConfigKey;
use object_store::path::Path;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};

/// How long a request may take to connect, and to finish: a dead server is found in seconds,
/// a large file still has time to move.
const CONNECT_TIMEOUT: &str = "3s";
const REQUEST_TIMEOUT: &str = "600s";

/// The store and the prefix inside it that `url` names.
pub fn open(url: &str) -> Result<(Arc<dyn ObjectStore>, Path), String> {
    open_with(url, None)
}

/// [`open`], with `endpoint` (an S3-compatible server's URL) in place of `AWS_ENDPOINT_URL`.
/// Requests are retried twice within ten seconds (the default, ten retries within three
/// minutes, would hold a run for minutes when the server is down).
pub fn open_with(
    url: &str,
    endpoint: Option<&str>,
) -> Result<(Arc<dyn ObjectStore>, Path), String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|error| format!("invalid URL `{url}`: {error}"))?;
    match parsed.scheme() {
        "s3" | "s3a" => {
            let bucket = parsed
                .host_str()
                .filter(|bucket| !bucket.is_empty())
                .ok_or_else(|| format!("`{url}` names no bucket: use s3://BUCKET/PREFIX/"))?;
            let mut builder = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(RetryConfig {
                    backoff: BackoffConfig {
                        init_backoff: Duration::from_millis(100),
                        max_backoff: Duration::from_secs(2),
                        base: 2.0,
                    },
                    max_retries: 2,
                    retry_timeout: Duration::from_secs(10),
                })
                // Set key by key: `with_client_options` would replace the client settings
                // `from_env` read (AWS_ALLOW_HTTP, AWS_PROXY_URL, ...).
                .with_config(
                    AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                    CONNECT_TIMEOUT,
                )
                .with_config(
                    AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                    REQUEST_TIMEOUT,
                );
            if let Some(endpoint) = endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            let endpoint = endpoint.map(str::to_owned).or_else(|| {
                std::env::var("AWS_ENDPOINT_URL")
                    .or_else(|_| std::env::var("AWS_ENDPOINT"))
                    .ok()
            });
            if endpoint.is_some_and(|endpoint| endpoint.starts_with("http://")) {
                builder = builder.with_allow_http(true);
            }
            let store = builder.build().map_err(|error| {
                format!("cannot open `{url}`: {error} (S3 settings come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and AWS_ENDPOINT_URL)")
            })?;
            let prefix = Path::from_url_path(parsed.path())
                .map_err(|error| format!("invalid path in `{url}`: {error}"))?;
            Ok((Arc::new(store), prefix))
        }
        _ => {
            let (store, prefix) = object_store::parse_url(&parsed)
                .map_err(|error| format!("cannot open `{url}`: {error}"))?;
            Ok((Arc::from(store), prefix))
        }
    }
}
