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
//!   create-only put. Parts are immutable, so a name already stored must hold the same bytes
//!   (compared by blake3): other bytes are an error, never overwritten.
//!
//! The mirror keeps the blake3 of every file it knows the store holds (`.asterflow-stored.json`),
//! so a run whose mirror already holds everything asks the store nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use object_store::path::{Path as ObjectPath, PathPart};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::engine::cache::OutputFile;
use crate::engine::remote::{FetchError, classify, concurrently, fetch_verified};

/// What the store's errors call it.
const DATA_DIRECTORY: &str = "data directory";
/// In the mirror: path -> blake3 of each file known to be in the store.
const STORED_INDEX: &str = ".asterflow-stored.json";

/// The data directory on an object store, with its local mirror.
#[derive(Debug)]
pub struct DataStore {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    mirror: PathBuf,
    /// Files known to be in the store, by path, with their blake3.
    stored: Mutex<BTreeMap<String, String>>,
}

impl DataStore {
    /// Opens the store at `url`, mirrored in `mirror`. Opening makes no request.
    pub fn open(url: &str, mirror: PathBuf) -> Result<Self, String> {
        let (store, prefix) = crate::util::store::open(url)?;
        // A damaged index only costs requests: it is read as empty.
        let stored = std::fs::read(mirror.join(STORED_INDEX))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            store,
            prefix,
            mirror,
            stored: Mutex::new(stored),
        })
    }

    /// Records that the store holds each `(path, blake3)`, and saves the index.
    fn remember(&self, entries: impl IntoIterator<Item = (String, String)>) {
        let mut stored = self.stored.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = false;
        for (path, blake3) in entries {
            changed |= stored.insert(path, blake3.clone()).as_ref() != Some(&blake3);
        }
        if changed && let Ok(bytes) = serde_json::to_vec(&*stored) {
            // The index only saves requests: failing to write it loses nothing.
            let _ = crate::util::fsx::write_atomic(&self.mirror.join(STORED_INDEX), &bytes);
        }
    }

    fn known(&self, file: &OutputFile) -> bool {
        self.stored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&file.path)
            .is_some_and(|blake3| *blake3 == file.blake3)
    }

    /// The blake3 of the object at `location`.
    async fn stored_digest(&self, location: &ObjectPath, what: &str) -> Result<String, String> {
        let bytes = match self.store.get(location).await {
            Ok(result) => result.bytes().await,
            Err(error) => Err(error),
        }
        .map_err(|error| self.failed(&format!("reading {what}"), &error))?;
        Ok(blake3::hash(&bytes).to_hex().to_string())
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
        let fetched: Vec<(String, String)> = missing
            .iter()
            .map(|file| (file.path.clone(), file.blake3.clone()))
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
        let bytes = results.into_iter().sum::<Result<u64, String>>()?;
        self.remember(fetched);
        Ok(bytes)
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
            Ok((relative, blake3::hash(&bytes).to_hex().to_string(), size))
        })
        .await;
        let fetched = results.into_iter().collect::<Result<Vec<_>, String>>()?;
        let bytes = fetched.iter().map(|(_, _, size)| size).sum();
        self.remember(fetched.into_iter().map(|(path, blake3, _)| (path, blake3)));
        Ok(bytes)
    }

    /// Stores each of `files` from the mirror that the store lacks, create-only; returns the
    /// bytes stored. A file already stored with other bytes is an error.
    pub async fn publish(&self, files: &[OutputFile]) -> Result<u64, String> {
        let unknown: Vec<OutputFile> = files
            .iter()
            .filter(|file| !self.known(file))
            .cloned()
            .collect();
        let results = concurrently(unknown, |file| async move {
            let location = self.location(&file.path);
            let same = |digest: String| {
                if digest == file.blake3 {
                    Ok(0)
                } else {
                    Err(format!(
                        "data directory {}: {} is already stored with other bytes than this run wrote: parts never change, so one of the two was not written by asterflow (or two machines collected the same span at once); move one away",
                        self.url, file.path
                    ))
                }
            };
            match self.store.head(&location).await {
                Ok(_) => return same(self.stored_digest(&location, &file.path).await?),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => return Err(self.failed(&format!("storing {}", file.path), &error)),
            }
            let source = self.mirror.join(&file.path);
            let bytes = tokio::fs::read(&source)
                .await
                .map_err(|error| format!("reading {}: {error}", source.display()))?;
            if blake3::hash(&bytes).to_hex().as_str() != file.blake3 {
                return Err(format!("{} changed since it was listed", source.display()));
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
                ) => same(self.stored_digest(&location, &file.path).await?),
                Err(error) => Err(self.failed(&format!("storing {}", file.path), &error)),
            }
        })
        .await;
        let bytes = results.into_iter().sum::<Result<u64, String>>()?;
        self.remember(
            files
                .iter()
                .map(|file| (file.path.clone(), file.blake3.clone())),
        );
        Ok(bytes)
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
        // Same name, same size, other bytes: refused too.
        let four = DataStore::open(&url, dir.path().join("four")).unwrap();
        let twin = file(
            four.mirror(),
            "lake/funding/source=x/symbol=A/part-1-2.parquet",
            "gg",
        );
        let error = four.publish(&[twin]).await.unwrap_err();
        assert!(error.contains("already stored with other bytes"), "{error}");
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
        assert!(error.contains("already stored with other bytes"), "{error}");
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
