//! The stage-output cache: content-addressed entries under
//! `cache/<pipeline>/<stage>/<fingerprint>/`, each
//! committed by moving its files into an attempt directory and writing `manifest.json` last.
//!
//! A manifest is the only thing a later run trusts. It is written atomically after every file
//! it names is in place, and it names its own attempt directory, so a run killed at any moment
//! leaves either the previous trusted entry or a directory no manifest points to.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::engine::fingerprint::{Fingerprint, FingerprintKey, hash_file, write_canonical};
use crate::engine::remote::{Remote, RemoteError};
use crate::engine::store::{Store, StoreError};
use crate::util::direct::written_digest;

/// Bumped when the manifest layout changes.
pub const MANIFEST_FORMAT: u32 = 1;

/// One file of a cached output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputFile {
    /// Relative to the entry's directory, `/`-separated.
    pub path: String,
    pub size: u64,
    pub blake3: String,
}

/// The commit record of one cached stage output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub pipeline: String,
    pub stage: String,
    pub fingerprint: Fingerprint,
    pub key: FingerprintKey,
    pub created_at_ms: u64,
    pub run_id: String,
    /// The attempt directory, relative to the entry, that holds the files.
    pub dir: String,
    pub files: Vec<OutputFile>,
    /// blake3 over the file list: what consumers' fingerprints depend on.
    pub digest: String,
    /// Files outside the entry that the output names, relative to the data directory (the lake
    /// parts a `lake.json` lists): not in the digest (the output names their hashes), but
    /// carried with the entry to a remote cache.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<OutputFile>,
}

/// The remote caches an entry is known to be stored in, beside its manifest: a rerun with
/// nothing to do asks the remote nothing.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Pushed {
    remotes: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Latest {
    format: u32,
    fingerprint: Fingerprint,
}

/// Errors reading or committing cache entries.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("failed to read stage output {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "stage output contains `{path}`, which is neither a file nor a directory (links are not cached)"
    )]
    NotAFile { path: PathBuf },
    #[error("stage output file name `{path}` is not valid UTF-8")]
    NotUtf8 { path: PathBuf },
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// One pipeline's cache inside a run root. Pipelines are kept apart, so two pipelines with a
/// stage of the same name never read each other's latest output.
#[derive(Debug, Clone)]
pub struct Cache {
    store: Store,
    pipeline: String,
    remote: Option<Arc<Remote>>,
}

impl Cache {
    pub fn new(store: Store, pipeline: &str) -> Self {
        Self {
            store,
            pipeline: pipeline.to_owned(),
            remote: None,
        }
    }

    /// The cache backed by `remote`: local misses are looked up there.
    pub fn with_remote(mut self, remote: Option<Arc<Remote>>) -> Self {
        self.remote = remote;
        self
    }

    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    pub fn remote(&self) -> Option<&Arc<Remote>> {
        self.remote.as_ref()
    }

    fn pushed_path(&self, manifest: &Manifest) -> String {
        format!(
            "{}/pushed.json",
            self.entry_prefix(&manifest.stage, &manifest.fingerprint)
        )
    }

    /// Whether `manifest`'s entry is known to be stored in the remote at `url`.
    pub async fn is_pushed(&self, manifest: &Manifest, url: &str) -> bool {
        self.read_record::<Pushed>(&self.pushed_path(manifest))
            .await
            .ok()
            .flatten()
            .is_some_and(|pushed| pushed.remotes.iter().any(|remote| remote == url))
    }

    /// Records that `manifest`'s entry is stored in the remote at `url`.
    pub async fn mark_pushed(&self, manifest: &Manifest, url: &str) -> Result<(), CacheError> {
        let path = self.pushed_path(manifest);
        let mut pushed = self.read_record::<Pushed>(&path).await?.unwrap_or_default();
        if !pushed.remotes.iter().any(|remote| remote == url) {
            pushed.remotes.push(url.to_owned());
            self.store.put_json(&path, &pushed).await?;
        }
        Ok(())
    }

    fn entry_prefix(&self, stage: &str, fingerprint: &Fingerprint) -> String {
        format!("cache/{}/{stage}/{fingerprint}", self.pipeline)
    }

    fn latest_path(&self, stage: &str) -> String {
        format!("cache/{}/{stage}/latest.json", self.pipeline)
    }

    /// The manifest for `stage` at `fingerprint`, if one was committed.
    pub async fn lookup(
        &self,
        stage: &str,
        fingerprint: &Fingerprint,
    ) -> Result<Option<Manifest>, CacheError> {
        let path = format!("{}/manifest.json", self.entry_prefix(stage, fingerprint));
        Ok(self
            .read_record::<Manifest>(&path)
            .await?
            .filter(|manifest| {
                manifest.format == MANIFEST_FORMAT && manifest.fingerprint == *fingerprint
            }))
    }

    /// A small JSON record; one that does not parse (a future format, a damaged file) is
    /// treated as absent, so the stage re-runs instead of every run failing.
    async fn read_record<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, CacheError> {
        match self.store.get_json::<T>(path).await {
            Ok(record) => Ok(record),
            Err(StoreError::Json { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// The last output `stage` produced or reused, whatever its fingerprint.
    pub async fn latest(&self, stage: &str) -> Result<Option<Manifest>, CacheError> {
        let Some(latest) = self.read_record::<Latest>(&self.latest_path(stage)).await? else {
            return Ok(None);
        };
        self.lookup(stage, &latest.fingerprint).await
    }

    /// Records `manifest` as the stage's latest successful output.
    pub async fn set_latest(&self, manifest: &Manifest) -> Result<(), CacheError> {
        let path = self.latest_path(&manifest.stage);
        if let Some(current) = self.read_record::<Latest>(&path).await?
            && current.fingerprint == manifest.fingerprint
        {
            return Ok(());
        }
        let latest = Latest {
            format: MANIFEST_FORMAT,
            fingerprint: manifest.fingerprint.clone(),
        };
        Ok(self.store.put_json(&path, &latest).await?)
    }

    /// The local directory holding a manifest's files.
    pub fn entry_dir(&self, manifest: &Manifest) -> PathBuf {
        self.store.local_path(&format!(
            "{}/{}",
            self.entry_prefix(&manifest.stage, &manifest.fingerprint),
            manifest.dir
        ))
    }

    /// What is wrong with an entry's files on disk, if anything (a cheap size check, not a re-hash).
    pub fn damage(&self, manifest: &Manifest) -> Option<String> {
        let dir = self.entry_dir(manifest);
        manifest
            .files
            .iter()
            .find_map(|file| match std::fs::metadata(dir.join(&file.path)) {
                Ok(metadata) if metadata.len() == file.size => None,
                Ok(_) => Some(format!("cached file {} changed size", file.path)),
                Err(_) => Some(format!("cached file {} is missing", file.path)),
            })
    }

    /// The staging directory a stage writes into during `run_id`.
    pub fn staging_dir(&self, run_id: &str, stage: &str) -> PathBuf {
        self.store.local_path(&format!("tmp/{run_id}/{stage}"))
    }

    /// Commits the files a stage wrote into its staging directory as the entry for
    /// `key`: moves them into a fresh attempt directory, then writes the manifest, then `latest`.
    /// `reports` (files about the run, such as timings) are kept but left out of the digest
    /// consumers key on; `attachments` are recorded as they are.
    pub async fn commit(
        &self,
        stage: &str,
        key: FingerprintKey,
        run_id: &str,
        created_at_ms: u64,
        reports: &[&str],
        attachments: Vec<OutputFile>,
    ) -> Result<Manifest, CacheError> {
        let fingerprint = key.fingerprint();
        let staging = self.staging_dir(run_id, stage);
        let staging_for_hash = staging.clone();
        let files = tokio::task::spawn_blocking(move || list_and_hash(&staging_for_hash))
            .await
            .map_err(|error| CacheError::Io {
                path: staging.clone(),
                source: std::io::Error::other(error),
            })??;
        let prefix = self.entry_prefix(stage, &fingerprint);
        for file in &files {
            self.store
                .rename(
                    &format!("tmp/{run_id}/{stage}/{}", file.path),
                    &format!("{prefix}/{run_id}/{}", file.path),
                )
                .await?;
        }
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            pipeline: self.pipeline.clone(),
            stage: stage.to_owned(),
            fingerprint,
            key,
            created_at_ms,
            run_id: run_id.to_owned(),
            dir: run_id.to_owned(),
            digest: output_digest(
                &files
                    .iter()
                    .filter(|file| !reports.contains(&file.path.as_str()))
                    .cloned()
                    .collect::<Vec<_>>(),
            ),
            files,
            attachments,
        };
        self.store
            .put_json(&format!("{prefix}/manifest.json"), &manifest)
            .await?;
        self.set_latest(&manifest).await?;
        crate::engine::store::remove_empty_dirs(&self.staging_dir(run_id, stage));
        Ok(manifest)
    }
}

impl Cache {
    /// Downloads `remote_manifest`'s entry from the remote into the staging directory of
    /// `run_id` and commits it like an output the stage wrote (the commit hashes the files
    /// again: the digest must be the remote's), recording that the remote holds it.
    pub async fn download(
        &self,
        key: FingerprintKey,
        remote_manifest: &Manifest,
        run_id: &str,
        reports: &[&str],
        data_dir: &Path,
    ) -> Result<Manifest, String> {
        let remote = self.remote.as_ref().ok_or("no remote cache")?;
        let staging = self.staging_dir(run_id, &remote_manifest.stage);
        if staging.exists() {
            fs_err::remove_dir_all(&staging).map_err(|error| error.to_string())?;
        }
        fs_err::create_dir_all(&staging).map_err(|error| error.to_string())?;
        remote.fetch(remote_manifest, &staging, data_dir).await?;
        let manifest = self
            .commit(
                &remote_manifest.stage,
                key,
                run_id,
                remote_manifest.created_at_ms,
                reports,
                remote_manifest.attachments.clone(),
            )
            .await
            .map_err(|error| error.to_string())?;
        if manifest.digest != remote_manifest.digest {
            return Err("the downloaded files do not add up to the entry's digest".into());
        }
        // The marker only saves a request later; failing to write it loses nothing.
        let _ = self.mark_pushed(&manifest, remote.url()).await;
        Ok(manifest)
    }
}

/// Makes a file about to be committed durable (so a manifest written after it never outlives
/// its data in a crash) and read-only (so a consumer cannot edit a cached input in place).
fn seal(path: &Path, metadata: &std::fs::Metadata) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::File::open(path)?.sync_all()?;
    let mut permissions = metadata.permissions();
    permissions.set_mode(permissions.mode() & !0o222);
    std::fs::set_permissions(path, permissions)
}

/// Files from this size are sealed (flushed to disk) while they are hashed, not after: the
/// features' 465 MB output took 0.42 s from its last write to the end of the run, 0.28 s
/// this way.
const OVERLAP_SEAL_FROM: u64 = 1 << 20;

/// The blake3 of a file about to be committed, sealed ([`seal`]) as well: after the hash, or,
/// from [`OVERLAP_SEAL_FROM`], while the hash reads it (where a thread can be had). A failed
/// hash is the error reported, as when the two ran one after the other.
fn hash_and_seal(path: &Path, metadata: &std::fs::Metadata) -> std::io::Result<String> {
    if let Some(blake3) = written_digest(metadata) {
        seal(path, metadata)?;
        return Ok(blake3);
    }
    if metadata.len() >= OVERLAP_SEAL_FROM {
        let overlapped = std::thread::scope(|scope| {
            let sealing = std::thread::Builder::new()
                .name("seal".into())
                .spawn_scoped(scope, || seal(path, metadata))
                .ok()?;
            let blake3 = hash_file(path);
            let sealed = sealing
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            Some(blake3.and_then(|blake3| sealed.map(|()| blake3)))
        });
        if let Some(result) = overlapped {
            return result;
        }
    }
    let blake3 = hash_file(path)?;
    seal(path, metadata)?;
    Ok(blake3)
}

/// The digest of an output's content: blake3 over the canonical file list.
pub fn output_digest(files: &[OutputFile]) -> String {
    let value = serde_json::to_value(files).unwrap_or_default();
    let mut bytes = Vec::new();
    write_canonical(&value, &mut bytes);
    blake3::hash(&bytes).to_hex().to_string()
}

/// Every regular file under `dir`, sorted by path, with its size and blake3.
pub fn list_and_hash(dir: &Path) -> Result<Vec<OutputFile>, CacheError> {
    let mut files = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut files)?;
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn walk(root: &Path, dir: &Path, files: &mut Vec<OutputFile>) -> Result<(), CacheError> {
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| CacheError::Io { path, source }
    };
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io_error(&path))?;
        if kind.is_dir() {
            walk(root, &path, files)?;
        } else if kind.is_file() {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            let relative = relative
                .to_str()
                .ok_or_else(|| CacheError::NotUtf8 { path: path.clone() })?
                .to_owned();
            let metadata = entry.metadata().map_err(io_error(&path))?;
            let blake3 = hash_and_seal(&path, &metadata).map_err(io_error(&path))?;
            let size = metadata.len();
            files.push(OutputFile {
                path: relative,
                size,
                blake3,
            });
        } else {
            return Err(CacheError::NotAFile { path });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fingerprint::KEY_FORMAT;
    use std::collections::BTreeMap;

    fn key(run: &str) -> FingerprintKey {
        FingerprintKey {
            format: KEY_FORMAT,
            kind: "command".into(),
            kind_version: 1,
            params: serde_json::json!({ "run": run }),
            files: BTreeMap::new(),
            version: 0,
            inputs: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn reports_stay_out_of_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(Store::create(&dir.path().join("runs")).unwrap(), "p");
        let mut digests = Vec::new();
        for (run, report) in [("r1", "took 5s"), ("r2", "took 7s")] {
            let staging = cache.staging_dir(run, "a");
            fs_err::create_dir_all(&staging).unwrap();
            fs_err::write(staging.join("data.txt"), "same").unwrap();
            fs_err::write(staging.join("report.json"), report).unwrap();
            let manifest = cache
                .commit("a", key(run), run, 1, &["report.json"], Vec::new())
                .await
                .unwrap();
            assert_eq!(manifest.files.len(), 2, "the report is kept");
            digests.push(manifest.digest);
        }
        assert_eq!(digests[0], digests[1]);
    }

    #[tokio::test]
    async fn commit_then_lookup_and_latest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(Store::create(&dir.path().join("runs")).unwrap(), "p");
        let staging = cache.staging_dir("r1", "a");
        fs_err::create_dir_all(staging.join("sub")).unwrap();
        fs_err::write(staging.join("out.txt"), "hello").unwrap();
        fs_err::write(staging.join("sub/more.txt"), "more").unwrap();
        let manifest = cache
            .commit("a", key("x"), "r1", 1, &[], Vec::new())
            .await
            .unwrap();
        assert_eq!(manifest.files.len(), 2);
        assert_eq!(manifest.files[0].path, "out.txt");
        assert!(!staging.exists(), "staging is emptied by the commit");
        let found = cache
            .lookup("a", &key("x").fingerprint())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.digest, manifest.digest);
        assert_eq!(
            fs_err::read_to_string(cache.entry_dir(&found).join("out.txt")).unwrap(),
            "hello"
        );
        assert!(cache.damage(&found).is_none());
        assert_eq!(
            cache.latest("a").await.unwrap().unwrap().fingerprint,
            manifest.fingerprint
        );
        assert!(
            cache
                .lookup("a", &key("y").fingerprint())
                .await
                .unwrap()
                .is_none()
        );
        fs_err::remove_file(cache.entry_dir(&found).join("out.txt")).unwrap();
        assert_eq!(
            cache.damage(&found).unwrap(),
            "cached file out.txt is missing"
        );
    }

    /// Small files are hashed, then sealed; large ones are sealed while they are hashed. Both
    /// ways, each file's digest is its content's and the committed file is read-only.
    #[tokio::test]
    async fn small_and_large_files_are_hashed_and_sealed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(Store::create(&dir.path().join("runs")).unwrap(), "p");
        let staging = cache.staging_dir("r1", "a");
        fs_err::create_dir_all(&staging).unwrap();
        let large: Vec<u8> = (0..OVERLAP_SEAL_FROM as usize + 4099)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        fs_err::write(staging.join("large.bin"), &large).unwrap();
        fs_err::write(staging.join("small.txt"), "small").unwrap();
        let manifest = cache
            .commit("a", key("x"), "r1", 1, &[], Vec::new())
            .await
            .unwrap();
        let entry = cache.entry_dir(&manifest);
        assert_eq!(manifest.files.len(), 2);
        for (file, content) in manifest.files.iter().zip([&large[..], b"small"]) {
            assert_eq!(
                file.blake3,
                blake3::hash(content).to_hex().as_str(),
                "{}",
                file.path
            );
            assert_eq!(file.size, content.len() as u64);
            let mode = fs_err::metadata(entry.join(&file.path))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o222, 0, "{} is read-only", file.path);
        }
    }

    #[tokio::test]
    async fn files_without_a_manifest_are_not_an_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(Store::create(&dir.path().join("runs")).unwrap(), "p");
        let fingerprint = key("x").fingerprint();
        let orphan = dir
            .path()
            .join(format!("runs/cache/p/a/{fingerprint}/r9/out.txt"));
        fs_err::create_dir_all(orphan.parent().unwrap()).unwrap();
        fs_err::write(&orphan, "half").unwrap();
        assert!(cache.lookup("a", &fingerprint).await.unwrap().is_none());
    }

    #[test]
    fn digest_depends_on_content_not_time() {
        let files = |hash: &str| {
            vec![OutputFile {
                path: "a".into(),
                size: 1,
                blake3: hash.into(),
            }]
        };
        assert_eq!(output_digest(&files("x")), output_digest(&files("x")));
        assert_ne!(output_digest(&files("x")), output_digest(&files("y")));
    }
}
