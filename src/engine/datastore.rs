//! The lake on object storage: `--data-dir s3://bucket/prefix` (or `file:///dir`). Stages work on
//! a local mirror of it, a read-through cache of parts under the run root, so every reader stays
//! a local Parquet reader; the executor fills the mirror before a stage runs and stores what the
//! stage wrote after it.
//!
//! - Before a stage runs, every file its inputs name outside their outputs (their manifests'
//!   attachments: the lake parts a `lake.json` lists) is downloaded into the mirror unless it is
//!   there, checked against its size and blake3. A stage that reads the data directory beyond its
//!   inputs (`collect`: what is already collected, to extend it) names the prefixes it reads, and
//!   every object under them that the mirror lacks is downloaded.
//! - After a stage runs, before its output is committed, every file it names is stored with a
//!   create-only put. Parts are immutable, so a name already stored must hold the same bytes: one
//!   of another size is an error, never overwritten.
//!
//! A run whose mirror already holds everything asks the store nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::{Path as ObjectPath, PathPart};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::engine::cache::OutputFile;
use crate::engine::remote::{FetchError, classify, concurrently, fetch_verified};

/// What the store's errors call it.
const DATA_DIRECTORY: &str = "data directory";

/// The data directory on an object store, with its local mirror.
#[derive(Debug)]
pub struct DataStore {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    mirror: PathBuf,
}

impl DataStore {
    /// Opens the store at `url`, mirrored in `mirror`. Opening makes no request.
    pub fn open(url: &str, mirror: PathBuf) -> Result<Self, String> {
        let (store, prefix) = crate::util::store::open(url)?;
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            store,
            prefix,
            mirror,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The local directory stages read and write as their data directory.
    pub fn mirror(&self) -> &Path {
        &self.mirror
    }

    fn location(&self, relative: &str) -> ObjectPath {
        ObjectPath::from_iter(
            self.prefix.parts().chain(
                relative
                    .split('/')
                    .filter(|part| !part.is_empty())
                    .map(PathPart::from),
            ),
        )
    }

    fn failed(&self, what: &str, error: &object_store::Error) -> String {
        format!("{what}: {}", classify(DATA_DIRECTORY, &self.url, error))
    }

    /// Downloads each of `files` (paths relative to the data directory) the mirror lacks, each
    /// checked against its size and blake3; returns the bytes downloaded.
    pub async fn hydrate(&self, files: &[OutputFile]) -> Result<u64, String> {
        let missing: Vec<OutputFile> = files
            .iter()
            .filter(|file| {
                std::fs::metadata(self.mirror.join(&file.path))
                    .map_or(true, |metadata| metadata.len() != file.size)
            })
            .cloned()
            .collect();
        let results = concurrently(missing, |file| async move {
            let target = self.mirror.join(&file.path);
            fetch_verified(
                &self.store,
                DATA_DIRECTORY,
                &self.url,
                &self.location(&file.path),
                &file,
                &target,
            )
            .await
            .map_err(|error| match error {
                FetchError::Damaged { path, why, .. } => format!(
                    "data directory {}: {path} is not the part its listing names ({why})",
                    self.url
                ),
                FetchError::Failed(why) => format!("data directory {}: {why}", self.url),
            })
        })
        .await;
        results.into_iter().sum()
    }

    /// Downloads every object under `prefix` (relative to the data directory) that the mirror
    /// lacks or holds with another size; returns the bytes downloaded.
    pub async fn hydrate_prefix(&self, prefix: &str) -> Result<u64, String> {
        let base = self.location(prefix);
        let objects: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(|error| self.failed(&format!("listing {prefix}"), &error))?;
        let skip = self.prefix.parts().count();
        let wanted: Vec<(String, ObjectPath, u64)> = objects
            .into_iter()
            .map(|meta| {
                let relative: Vec<String> = meta
                    .location
                    .parts()
                    .skip(skip)
                    .map(|part| part.as_ref().to_owned())
                    .collect();
                (relative.join("/"), meta.location, meta.size)
            })
            .filter(|(relative, _, size)| {
                std::fs::metadata(self.mirror.join(relative))
                    .map_or(true, |metadata| metadata.len() != *size)
            })
            .collect();
        let results = concurrently(wanted, |(relative, location, size)| async move {
            let bytes = match self.store.get(&location).await {
                Ok(result) => result.bytes().await,
                Err(error) => Err(error),
            }
            .map_err(|error| self.failed(&format!("reading {relative}"), &error))?;
            if bytes.len() as u64 != size {
                return Err(format!(
                    "data directory {}: {relative} changed while it was read",
                    self.url
                ));
            }
            let target = self.mirror.join(&relative);
            crate::util::fsx::write_atomic(&target, &bytes)
                .map_err(|error| format!("writing {}: {error}", target.display()))?;
            Ok(size)
        })
        .await;
        results.into_iter().sum()
    }

    /// Stores each of `files` from the mirror that the store lacks, create-only; returns the
    /// bytes stored. A file already stored with another size is an error.
    pub async fn publish(&self, files: &[OutputFile]) -> Result<u64, String> {
        let results = concurrently(files.to_vec(), |file| async move {
            let location = self.location(&file.path);
            let conflict = |size: u64| {
                format!(
                    "data directory {}: {} is already stored with {size} bytes, this run wrote {}: parts never change, so one of the two was not written by asterflow",
                    self.url, file.path, file.size
                )
            };
            match self.store.head(&location).await {
                Ok(meta) if meta.size == file.size => return Ok(0),
                Ok(meta) => return Err(conflict(meta.size)),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => return Err(self.failed(&format!("storing {}", file.path), &error)),
            }
            let source = self.mirror.join(&file.path);
            let bytes = tokio::fs::read(&source)
                .await
                .map_err(|error| format!("reading {}: {error}", source.display()))?;
            if blake3::hash(&bytes).to_hex().as_str() != file.blake3 {
                return Err(format!(
                    "{} changed since it was listed",
                    source.display()
                ));
            }
            let options = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            match self
                .store
                .put_opts(&location, PutPayload::from(bytes), options)
                .await
            {
                Ok(_) => Ok(file.size),
                // Another writer stored it first: fine if it is the same part.
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => match self.store.head(&location).await {
                    Ok(meta) if meta.size == file.size => Ok(0),
                    Ok(meta) => Err(conflict(meta.size)),
                    Err(error) => Err(self.failed(&format!("storing {}", file.path), &error)),
                },
                Err(error) => Err(self.failed(&format!("storing {}", file.path), &error)),
            }
        })
        .await;
        results.into_iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::remote::tests::file;

    #[tokio::test]
    async fn parts_go_up_once_and_come_down_into_another_mirror() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("store");
        fs_err::create_dir_all(&shared).unwrap();
        let url = format!("file://{}", shared.display());
        let one = DataStore::open(&url, dir.path().join("one")).unwrap();
        let parts = vec![
            file(
                one.mirror(),
                "lake/klines/source=x/symbol=A/part-1-2.parquet",
                "aaaa",
            ),
            file(
                one.mirror(),
                "lake/funding/source=x/symbol=A/part-1-2.parquet",
                "ff",
            ),
        ];
        assert_eq!(one.publish(&parts).await.unwrap(), 6);
        assert_eq!(one.publish(&parts).await.unwrap(), 0, "stored once");
        let two = DataStore::open(&url, dir.path().join("two")).unwrap();
        assert_eq!(two.hydrate(&parts[..1]).await.unwrap(), 4);
        assert_eq!(
            two.hydrate(&parts[..1]).await.unwrap(),
            0,
            "already mirrored"
        );
        assert_eq!(
            two.hydrate_prefix("lake/funding/source=x/").await.unwrap(),
            2
        );
        assert_eq!(
            fs_err::read_to_string(two.mirror().join(&parts[1].path)).unwrap(),
            "ff"
        );
        // The same name with other bytes is refused, never overwritten.
        let three = DataStore::open(&url, dir.path().join("three")).unwrap();
        let other = file(
            three.mirror(),
            "lake/klines/source=x/symbol=A/part-1-2.parquet",
            "bbbbbb",
        );
        let error = three.publish(&[other]).await.unwrap_err();
        assert!(error.contains("already stored with 4 bytes"), "{error}");
        assert_eq!(
            fs_err::read_to_string(shared.join(&parts[0].path)).unwrap(),
            "aaaa"
        );
    }

    #[tokio::test]
    async fn a_part_that_is_not_what_its_listing_says_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("store");
        fs_err::create_dir_all(&shared).unwrap();
        let url = format!("file://{}", shared.display());
        let one = DataStore::open(&url, dir.path().join("one")).unwrap();
        let part = file(one.mirror(), "lake/k/part.parquet", "good");
        one.publish(std::slice::from_ref(&part)).await.unwrap();
        fs_err::write(shared.join(&part.path), "evil").unwrap();
        let two = DataStore::open(&url, dir.path().join("two")).unwrap();
        let error = two.hydrate(std::slice::from_ref(&part)).await.unwrap_err();
        assert!(
            error.contains("is not the part its listing names"),
            "{error}"
        );
        assert!(!two.mirror().join(&part.path).exists());
    }
}
