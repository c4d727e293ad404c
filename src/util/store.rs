//! Object stores by URL: `file:///dir/` (the local filesystem) and `s3://bucket/prefix/`
//! (AWS S3 or any S3-compatible server: MinIO, R2, moto). S3 settings come from the standard
//! `AWS_*` environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, ...); an `http://` endpoint is allowed
//! without `AWS_ALLOW_HTTP`, since naming it is the choice. Nothing here prints a secret: errors
//! name the URL and, for credentials, the variables.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::Path;

/// The store and the prefix inside it that `url` names.
pub fn open(url: &str) -> Result<(Arc<dyn ObjectStore>, Path), String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|error| format!("invalid URL `{url}`: {error}"))?;
    match parsed.scheme() {
        "s3" | "s3a" => {
            let bucket = parsed
                .host_str()
                .filter(|bucket| !bucket.is_empty())
                .ok_or_else(|| format!("`{url}` names no bucket: use s3://BUCKET/PREFIX/"))?;
            let mut builder =
                object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
            if std::env::var("AWS_ENDPOINT_URL")
                .or_else(|_| std::env::var("AWS_ENDPOINT"))
                .is_ok_and(|endpoint| endpoint.starts_with("http://"))
            {
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
