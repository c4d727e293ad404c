//! The remote cache: stage outputs shared between checkouts and machines through an object
//! store (`s3://bucket/prefix` on AWS S3, MinIO, R2 or any S3-compatible server; `file:///dir`
//! on a shared disk).
//!
//! Layout under the remote's prefix:
//!
//! ```text
//! blobs/<b3[..2]>/<b3>                            a file's bytes, named by their blake3
//! entries/<pipeline>/<stage>/<fingerprint>.json   the entry: its manifest, written last
//! ```
//!
//! An entry is its manifest. A writer stores every blob the manifest names (the output's files
//! and its attachments, the lake parts a `lake.json` lists) first and the manifest last, with a
//! create-only put: a reader never finds a manifest whose files are not all stored, and two
//! writers of one fingerprint cannot corrupt each other (the first manifest stays, the second
//! put is refused, and the blobs both stored are the same bytes under the same names). A reader
//! checks each file's size and blake3 against the manifest while downloading; an entry that
//! fails is not used, and is removed so the next writer stores it again.
//!
//! The remote speeds runs up and is never required: an unreachable server is one warning and
//! the run goes on locally. Refused credentials are an error that names the variable to fix.
//! No secret is ever printed: errors quote the server's error code, never its reply.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use futures::{StreamExt, TryStreamExt};
use object_store::path::{Path as ObjectPath, PathPart};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::engine::cache::{MANIFEST_FORMAT, Manifest, OutputFile};

/// What the remote's errors call it.
const REMOTE_CACHE: &str = "remote cache";

/// Uploads and downloads in flight at once for one entry.
const CONCURRENT_TRANSFERS: usize = 4;

/// Why the remote cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    /// The server refused the credentials: the run must not go on as if nothing were wrong.
    #[error("{place} {url} refused the credentials ({code}): {advice}")]
    Credentials {
        /// What the store is for: `remote cache`, `data directory`.
        place: &'static str,
        url: String,
        code: String,
        advice: &'static str,
    },
    /// The server did not answer (or answered with a server error): the run goes on locally.
    #[error("{place} {url} is unreachable: {reason}")]
    Unreachable {
        place: &'static str,
        url: String,
        reason: String,
    },
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The entry is now stored; `bytes` were uploaded for it.
    Stored { bytes: u64 },
    /// The remote already held the entry (another machine, or an earlier run, stored it).
    AlreadyThere,
    /// The remote was given up for this run (unreachable); nothing was stored.
    Skipped,
}

/// A remote cache, opened for one run.
#[derive(Debug)]
pub struct Remote {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// Why the remote was given up for this run, once it was.
    down: OnceLock<String>,
}

impl Remote {
    /// Opens the remote at `url` (`s3://` or `file://`), with `endpoint` overriding
    /// `AWS_ENDPOINT_URL`. Opening makes no request.
    pub fn open(url: &str, endpoint: Option<&str>) -> Result<Self, String> {
        let (store, prefix) = crate::util::store::open_with(url, endpoint)?;
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            store,
            prefix,
            down: OnceLock::new(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Why the remote was given up for this run, if it was.
    pub fn down(&self) -> Option<&str> {
        self.down.get().map(String::as_str)
    }

    fn path(&self, relative: &[&str]) -> ObjectPath {
        ObjectPath::from_iter(
            self.prefix
                .parts()
                .chain(relative.iter().map(|part| PathPart::from(*part))),
        )
    }

    fn entry_path(&self, pipeline: &str, stage: &str, fingerprint: &str) -> ObjectPath {
        self.path(&["entries", pipeline, stage, &format!("{fingerprint}.json")])
    }

    fn blob_path(&self, blake3: &str) -> ObjectPath {
        self.path(&["blobs", blake3.get(..2).unwrap_or("00"), blake3])
    }

    /// Sorts an object-store error: refused credentials are returned; anything else gives the
    /// remote up for the run, with one warning.
    fn fail(&self, error: &object_store::Error) -> Result<(), RemoteError> {
        match classify(REMOTE_CACHE, &self.url, error) {
            credentials @ RemoteError::Credentials { .. } => Err(credentials),
            unreachable @ RemoteError::Unreachable { .. } => {
                let reason = unreachable.to_string();
                if self.down.set(reason.clone()).is_ok() {
                    eprintln!("warning: {reason}; going on without it");
                }
                Ok(())
            }
        }
    }

    /// Whether the remote answers (one listing request); an unreachable one is given up for
    /// the run with its warning, refused credentials are the error.
    pub async fn check(&self) -> Result<bool, RemoteError> {
        match self.store.list_with_delimiter(Some(&self.prefix)).await {
            Ok(_) => Ok(true),
            Err(error) => self.fail(&error).map(|()| false),
        }
    }

    /// The entry for `fingerprint`, if the remote holds one (and is up). A record that does
    /// not parse, or names another fingerprint, is ignored with a warning.
    pub async fn lookup(
        &self,
        pipeline: &str,
        stage: &str,
        fingerprint: &str,
    ) -> Result<Option<Manifest>, RemoteError> {
        if self.down().is_some() {
            return Ok(None);
        }
        let location = self.entry_path(pipeline, stage, fingerprint);
        let bytes = match self.store.get(&location).await {
            Ok(result) => result.bytes().await,
            Err(error) => Err(error),
        };
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(error) => {
                self.fail(&error)?;
                return Ok(None);
            }
        };
        match serde_json::from_slice::<Manifest>(&bytes) {
            Ok(manifest)
                if manifest.format == MANIFEST_FORMAT
                    && manifest.fingerprint.0 == fingerprint
                    && manifest.stage == stage
                    && manifest
                        .files
                        .iter()
                        .chain(&manifest.attachments)
                        .all(well_formed) =>
            {
                Ok(Some(manifest))
            }
            _ => {
                eprintln!(
                    "warning: remote cache {}: the entry for stage `{stage}` at {} is not a manifest this version reads; ignoring it",
                    self.url,
                    &fingerprint[..fingerprint.len().min(12)]
                );
                Ok(None)
            }
        }
    }

    /// Downloads `manifest`'s files into `staging` and its attachments under `data_dir` (an
    /// attachment already there with the same size is kept), each checked against the
    /// manifest before it is moved into place. On a failed check the remote entry and the bad
    /// blob are removed (best effort), so the next push stores them again.
    pub async fn fetch(
        &self,
        manifest: &Manifest,
        staging: &Path,
        data_dir: &Path,
    ) -> Result<u64, String> {
        let mut wanted: Vec<(OutputFile, PathBuf)> = manifest
            .files
            .iter()
            .map(|file| (file.clone(), staging.join(&file.path)))
            .collect();
        for attachment in &manifest.attachments {
            let target = data_dir.join(&attachment.path);
            let present =
                std::fs::metadata(&target).is_ok_and(|metadata| metadata.len() == attachment.size);
            if !present {
                wanted.push((attachment.clone(), target));
            }
        }
        let results = concurrently(wanted, |(file, target)| async move {
            self.download(&file, &target).await
        })
        .await;
        let mut bytes = 0;
        for result in results {
            match result {
                Ok(size) => bytes += size,
                Err(FetchError::Damaged { path, why, blob }) => {
                    let _ = self.store.delete(&blob).await;
                    let entry = self.entry_path(
                        &manifest.pipeline,
                        &manifest.stage,
                        &manifest.fingerprint.0,
                    );
                    let _ = self.store.delete(&entry).await;
                    return Err(format!(
                        "remote file {path} failed verification ({why}); the remote entry was removed"
                    ));
                }
                Err(FetchError::Failed(why)) => return Err(why),
            }
        }
        Ok(bytes)
    }

    /// Downloads one blob to `target`, checked against `file`.
    async fn download(&self, file: &OutputFile, target: &Path) -> Result<u64, FetchError> {
        fetch_verified(
            &self.store,
            REMOTE_CACHE,
            &self.url,
            &self.blob_path(&file.blake3),
            file,
            target,
        )
        .await
    }

    /// Stores `manifest`'s entry: the blobs it lacks first (files from `entry_dir`, attachments
    /// from `data_dir`), then the manifest with a create-only put.
    pub async fn push(
        &self,
        manifest: &Manifest,
        entry_dir: &Path,
        data_dir: &Path,
    ) -> Result<Pushed, RemoteError> {
        if self.down().is_some() {
            return Ok(Pushed::Skipped);
        }
        let location =
            self.entry_path(&manifest.pipeline, &manifest.stage, &manifest.fingerprint.0);
        match self.store.head(&location).await {
            Ok(_) => return Ok(Pushed::AlreadyThere),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => {
                self.fail(&error)?;
                return Ok(Pushed::Skipped);
            }
        }
        let sources: Vec<(OutputFile, PathBuf)> = manifest
            .files
            .iter()
            .map(|file| (file.clone(), entry_dir.join(&file.path)))
            .chain(
                manifest
                    .attachments
                    .iter()
                    .map(|file| (file.clone(), data_dir.join(&file.path))),
            )
            .collect();
        let results = concurrently(sources, |(file, source)| async move {
            self.upload(&file, &source).await
        })
        .await;
        let mut bytes = 0;
        for result in results {
            match result {
                Ok(size) => bytes += size,
                Err(UploadError::Store(error)) => {
                    self.fail(&error)?;
                    return Ok(Pushed::Skipped);
                }
                // A local file that no longer matches its manifest is not stored under its
                // name: the entry stays local.
                Err(UploadError::Local(why)) => {
                    eprintln!(
                        "warning: remote cache {}: not storing stage `{}`: {why}",
                        self.url, manifest.stage
                    );
                    return Ok(Pushed::Skipped);
                }
            }
        }
        let mut record = manifest.clone();
        record.dir = String::new();
        let body = serde_json::to_vec_pretty(&record).unwrap_or_default();
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&location, PutPayload::from(body), options)
            .await
        {
            Ok(_) => Ok(Pushed::Stored { bytes }),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(Pushed::AlreadyThere),
            Err(error) => {
                self.fail(&error)?;
                Ok(Pushed::Skipped)
            }
        }
    }

    /// Stores one file as its blob unless the remote has it; returns the bytes uploaded. The
    /// bytes are hashed as they are read, and a file that changed since it was committed is
    /// refused before the upload completes.
    async fn upload(&self, file: &OutputFile, source: &Path) -> Result<u64, UploadError> {
        let blob = self.blob_path(&file.blake3);
        match self.store.head(&blob).await {
            Ok(meta) if meta.size == file.size => return Ok(0),
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => return Err(UploadError::Store(error)),
        }
        let local =
            |error: std::io::Error| UploadError::Local(format!("{}: {error}", source.display()));
        let mut reader = tokio::fs::File::open(source).await.map_err(local)?;
        let mut writer = object_store::buffered::BufWriter::new(Arc::clone(&self.store), blob);
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        loop {
            let mut buffer = Vec::with_capacity(8 << 20);
            let read = match (&mut reader).take(8 << 20).read_to_end(&mut buffer).await {
                Ok(read) => read,
                Err(error) => {
                    let _ = writer.abort().await;
                    return Err(local(error));
                }
            };
            if read == 0 {
                break;
            }
            hasher.update(&buffer);
            size += read as u64;
            if size > file.size {
                break;
            }
            if let Err(error) = writer.put(buffer.into()).await {
                let _ = writer.abort().await;
                return Err(UploadError::Store(error));
            }
        }
        if size != file.size || hasher.finalize().to_hex().as_str() != file.blake3 {
            let _ = writer.abort().await;
            return Err(UploadError::Local(format!(
                "{} changed since it was committed",
                source.display()
            )));
        }
        writer.shutdown().await.map_err(|error| {
            UploadError::Store(object_store::Error::Generic {
                store: "remote",
                source: Box::new(error),
            })
        })?;
        Ok(size)
    }
}

/// Downloads the object at `blob` to `target` through a temporary file beside it, hashing as it
/// goes: it is moved into place only when its size and blake3 are `file`'s.
pub(crate) async fn fetch_verified(
    store: &Arc<dyn ObjectStore>,
    place: &'static str,
    url: &str,
    blob: &ObjectPath,
    file: &OutputFile,
    target: &Path,
) -> Result<u64, FetchError> {
    let parent = target.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(|error| FetchError::Failed(format!("creating {}: {error}", parent.display())))?;
    // Unique per download: two stages of one run may fetch the same file at once, and each
    // must move only the bytes it checked.
    static DOWNLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let temporary = parent.join(format!(
        ".{}.download-{}-{}",
        target
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id(),
        DOWNLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let result = download_to(store, place, url, file, blob, &temporary).await;
    match result {
        Ok(()) => tokio::fs::rename(&temporary, target)
            .await
            .map(|()| file.size)
            .map_err(|error| {
                FetchError::Failed(format!("moving into {}: {error}", target.display()))
            }),
        Err(error) => {
            let _ = tokio::fs::remove_file(&temporary).await;
            Err(error)
        }
    }
}

async fn download_to(
    store: &Arc<dyn ObjectStore>,
    place: &'static str,
    url: &str,
    file: &OutputFile,
    blob: &ObjectPath,
    temporary: &Path,
) -> Result<(), FetchError> {
    let failed = |error: &dyn std::fmt::Display| {
        FetchError::Failed(format!("downloading {}: {error}", file.path))
    };
    let mut stream = match store.get(blob).await {
        Ok(result) => result.into_stream(),
        Err(object_store::Error::NotFound { .. }) => {
            return Err(FetchError::Damaged {
                path: file.path.clone(),
                why: "missing".into(),
                blob: blob.clone(),
            });
        }
        Err(error) => return Err(failed(&classify(place, url, &error))),
    };
    let mut out = tokio::fs::File::create(temporary)
        .await
        .map_err(|error| failed(&format!("{}: {error}", temporary.display())))?;
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    while let Some(chunk) = stream
        .try_next()
        .await
        .map_err(|error| failed(&classify(place, url, &error)))?
    {
        hasher.update(&chunk);
        size += chunk.len() as u64;
        out.write_all(&chunk)
            .await
            .map_err(|error| failed(&error))?;
    }
    out.sync_all().await.map_err(|error| failed(&error))?;
    let digest = hasher.finalize().to_hex().to_string();
    if size != file.size || digest != file.blake3 {
        return Err(FetchError::Damaged {
            path: file.path.clone(),
            why: if size != file.size {
                format!("{size} bytes, the manifest says {}", file.size)
            } else {
                format!(
                    "blake3 {}, the manifest says {}",
                    &digest[..12],
                    file.blake3.get(..12).unwrap_or(&file.blake3)
                )
            },
            blob: blob.clone(),
        });
    }
    Ok(())
}

/// Whether a file named by a manifest someone else wrote can be written where it says: a
/// relative path of plain components (no `..`, no root), and a blake3 of 64 hex digits.
pub(crate) fn well_formed(file: &OutputFile) -> bool {
    !file.path.is_empty()
        && Path::new(&file.path)
            .components()
            .all(|component| matches!(component, std::path::Component::Normal(_)))
        && file.blake3.len() == 64
        && file.blake3.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// Transfers each of `items` with `transfer`, [`CONCURRENT_TRANSFERS`] at a time. The items are
/// owned: a stream of borrowed ones is not `Send` in a spawned task (rust#102211).
pub(crate) async fn concurrently<T, R, F: Future<Output = R>>(
    items: Vec<T>,
    transfer: impl FnMut(T) -> F,
) -> Vec<R> {
    futures::stream::iter(items)
        .map(transfer)
        .buffer_unordered(CONCURRENT_TRANSFERS)
        .collect()
        .await
}

pub(crate) enum FetchError {
    /// The blob is missing or its bytes do not match the manifest.
    Damaged {
        path: String,
        why: String,
        blob: ObjectPath,
    },
    Failed(String),
}

enum UploadError {
    Store(object_store::Error),
    Local(String),
}

/// Sorts an object-store error into refused credentials or an unreachable remote. The message
/// keeps the server's error code (or the innermost cause), never the reply's body.
pub(crate) fn classify(place: &'static str, url: &str, error: &object_store::Error) -> RemoteError {
    let text = error.to_string();
    let code = between(&text, "<Code>", "</Code>");
    // Listing maps no status to a variant: a refusal is then known by its status or code.
    let refused = matches!(
        error,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || text.contains("status code: 403")
        || text.contains("status code: 401")
        || code.is_some_and(|code| CREDENTIAL_CODES.contains(&code));
    let unset = std::env::var_os("AWS_ACCESS_KEY_ID").is_none()
        && std::env::var_os("AWS_WEB_IDENTITY_TOKEN_FILE").is_none()
        && std::env::var_os("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_none();
    if unset && (refused || text.to_lowercase().contains("credential")) {
        return RemoteError::Credentials {
            place,
            url: url.to_owned(),
            code: code.unwrap_or("no credentials").to_owned(),
            advice: "AWS_ACCESS_KEY_ID is not set: set it and AWS_SECRET_ACCESS_KEY (or run where an instance role provides credentials)",
        };
    }
    if refused {
        let code = code.unwrap_or(if text.contains("401") {
            "401 Unauthorized"
        } else {
            "403 Forbidden"
        });
        let advice = match code {
            "InvalidAccessKeyId" => {
                "the server knows no key AWS_ACCESS_KEY_ID names; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to a key it issued"
            }
            "SignatureDoesNotMatch" => {
                "AWS_SECRET_ACCESS_KEY is not the secret of the key AWS_ACCESS_KEY_ID names"
            }
            "ExpiredToken" | "InvalidToken" | "TokenRefreshRequired" => {
                "AWS_SESSION_TOKEN has expired or is not valid; renew the temporary credentials"
            }
            _ => "the key AWS_ACCESS_KEY_ID names may not read and write this bucket and prefix",
        };
        return RemoteError::Credentials {
            place,
            url: url.to_owned(),
            code: code.to_owned(),
            advice,
        };
    }
    let reason = match code {
        Some(code) => format!("the server answered {code}"),
        None => {
            let mut cause: &dyn std::error::Error = error;
            while let Some(inner) = cause.source() {
                cause = inner;
            }
            let cause = cause.to_string();
            // A server's reply (an HTML or XML body) follows the status line: keep the line.
            let line = cause.split(": <").next().unwrap_or_default();
            let line = line.lines().next().unwrap_or_default();
            line.chars().take(200).collect()
        }
    };
    RemoteError::Unreachable {
        place,
        url: url.to_owned(),
        reason,
    }
}

/// S3 error codes that mean the credentials, not the server, are the problem.
const CREDENTIAL_CODES: [&str; 7] = [
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "InvalidSecurity",
];

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close)? + start;
    Some(&text[start..end])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::fingerprint::{Fingerprint, FingerprintKey, KEY_FORMAT};

    fn manifest(files: Vec<OutputFile>, attachments: Vec<OutputFile>) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            pipeline: "p".into(),
            stage: "a".into(),
            fingerprint: Fingerprint("f".repeat(64)),
            key: FingerprintKey {
                format: KEY_FORMAT,
                kind: "command".into(),
                kind_version: 1,
                params: serde_json::json!({}),
                files: Default::default(),
                version: 0,
                inputs: Default::default(),
            },
            created_at_ms: 1,
            run_id: "r1".into(),
            dir: "r1".into(),
            digest: crate::engine::cache::output_digest(&files),
            files,
            attachments,
        }
    }

    /// Writes `content` at `dir/path` and describes it as an output file.
    pub(crate) fn file(dir: &Path, path: &str, content: &str) -> OutputFile {
        let full = dir.join(path);
        fs_err::create_dir_all(full.parent().unwrap()).unwrap();
        fs_err::write(&full, content).unwrap();
        OutputFile {
            path: path.into(),
            size: content.len() as u64,
            blake3: blake3::hash(content.as_bytes()).to_hex().to_string(),
        }
    }

    #[tokio::test]
    async fn push_then_fetch_round_trips_files_and_attachments() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("remote");
        fs_err::create_dir_all(&shared).unwrap();
        let url = format!("file://{}", shared.display());
        let remote = Remote::open(&url, None).unwrap();
        let (entry, data) = (dir.path().join("entry"), dir.path().join("data"));
        let manifest = manifest(
            vec![
                file(&entry, "lake.json", "{}"),
                file(&entry, "sub/x.txt", "x"),
            ],
            vec![file(&data, "lake/part-1.parquet", "parquet bytes")],
        );
        assert!(
            remote
                .lookup("p", "a", &manifest.fingerprint.0)
                .await
                .unwrap()
                .is_none()
        );
        let pushed = remote.push(&manifest, &entry, &data).await.unwrap();
        assert_eq!(pushed, Pushed::Stored { bytes: 2 + 1 + 13 });
        assert_eq!(
            remote.push(&manifest, &entry, &data).await.unwrap(),
            Pushed::AlreadyThere
        );
        let found = remote
            .lookup("p", "a", &manifest.fingerprint.0)
            .await
            .unwrap()
            .expect("the entry is found");
        assert_eq!(found.digest, manifest.digest);
        let (staging, other_data) = (dir.path().join("staging"), dir.path().join("other"));
        remote.fetch(&found, &staging, &other_data).await.unwrap();
        assert_eq!(
            fs_err::read_to_string(staging.join("sub/x.txt")).unwrap(),
            "x"
        );
        assert_eq!(
            fs_err::read_to_string(other_data.join("lake/part-1.parquet")).unwrap(),
            "parquet bytes"
        );
    }

    #[tokio::test]
    async fn a_damaged_blob_fails_the_fetch_and_removes_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("remote");
        fs_err::create_dir_all(&shared).unwrap();
        let remote = Remote::open(&format!("file://{}", shared.display()), None).unwrap();
        let entry = dir.path().join("entry");
        let manifest = manifest(vec![file(&entry, "out.txt", "good bytes")], vec![]);
        remote.push(&manifest, &entry, dir.path()).await.unwrap();
        let blob = manifest.files[0].blake3.clone();
        let stored = shared.join("blobs").join(&blob[..2]).join(&blob);
        fs_err::write(&stored, "evil bytes").unwrap();
        let error = remote
            .fetch(&manifest, &dir.path().join("staging"), dir.path())
            .await
            .unwrap_err();
        assert!(error.contains("out.txt failed verification"), "{error}");
        assert!(
            !dir.path().join("staging/out.txt").exists(),
            "nothing unverified is kept"
        );
        assert!(
            remote
                .lookup("p", "a", &manifest.fingerprint.0)
                .await
                .unwrap()
                .is_none()
        );
        // The next push stores the entry again, the good bytes included.
        assert!(matches!(
            remote.push(&manifest, &entry, dir.path()).await.unwrap(),
            Pushed::Stored { .. }
        ));
        assert_eq!(fs_err::read_to_string(&stored).unwrap(), "good bytes");
    }

    #[tokio::test]
    async fn a_file_changed_since_its_commit_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("remote");
        fs_err::create_dir_all(&shared).unwrap();
        let remote = Remote::open(&format!("file://{}", shared.display()), None).unwrap();
        let entry = dir.path().join("entry");
        let manifest = manifest(vec![file(&entry, "out.txt", "committed")], vec![]);
        fs_err::write(entry.join("out.txt"), "edited!!!").unwrap();
        assert_eq!(
            remote.push(&manifest, &entry, dir.path()).await.unwrap(),
            Pushed::Skipped
        );
        assert!(
            remote
                .lookup("p", "a", &manifest.fingerprint.0)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_manifest_naming_a_path_outside_its_entry_is_not_trusted() {
        let good = OutputFile {
            path: "lake/klines/part.parquet".into(),
            size: 1,
            blake3: "a".repeat(64),
        };
        assert!(well_formed(&good));
        for path in ["../../etc/cron.d/x", "/etc/passwd", "lake/../../x", ""] {
            let bad = OutputFile {
                path: path.into(),
                ..good.clone()
            };
            assert!(!well_formed(&bad), "{path}");
        }
        let short = OutputFile {
            blake3: "abc".into(),
            ..good
        };
        assert!(!well_formed(&short));
    }

    #[test]
    fn credentials_errors_name_the_variable_and_quote_only_the_code() {
        let error = object_store::Error::PermissionDenied {
            path: "x".into(),
            source: "403 Forbidden: <Error><Code>SignatureDoesNotMatch</Code><StringToSign>secret-ish</StringToSign></Error>".into(),
        };
        let message = classify(REMOTE_CACHE, "s3://b/p", &error).to_string();
        assert!(message.contains("SignatureDoesNotMatch"), "{message}");
        assert!(message.contains("AWS_SECRET_ACCESS_KEY"), "{message}");
        assert!(!message.contains("secret-ish"), "{message}");
    }
}
