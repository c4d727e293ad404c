//! Where run-root objects live: an `object_store` (the local filesystem by default), so a remote
//! run root needs no change in the stages; plus the atomic local write used for small records.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// Errors from the object store, with the object that was being touched.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to open the store at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: object_store::Error,
    },
    #[error("invalid object path `{path}`")]
    Path {
        path: String,
        #[source]
        source: object_store::path::Error,
    },
    #[error("failed to {action} `{path}` in the run root")]
    Object {
        action: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("`{path}` in the run root is not valid JSON")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The run root as an object store. Opening never creates the directory, so a dry run writes
/// nothing; the first write creates it.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    inner: Option<Arc<dyn ObjectStore>>,
}

impl Store {
    /// Opens the store over `root`, if the directory exists; reads of a missing root find nothing.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let inner: Option<Arc<dyn ObjectStore>> = if root.is_dir() {
            let local =
                LocalFileSystem::new_with_prefix(root).map_err(|source| StoreError::Open {
                    path: root.to_owned(),
                    source,
                })?;
            Some(Arc::new(local))
        } else {
            None
        };
        Ok(Self {
            root: root.to_owned(),
            inner,
        })
    }

    /// Creates the root directory (if needed) and opens the store over it. A run gets its root
    /// from the lock, which creates it; this is for tests.
    #[cfg(test)]
    pub fn create(root: &Path) -> Result<Self, StoreError> {
        fs_err::create_dir_all(root).map_err(|error| StoreError::Open {
            path: root.to_owned(),
            source: object_store::Error::Generic {
                store: "local",
                source: Box::new(error),
            },
        })?;
        Self::open(root)
    }

    /// The local filesystem path of an object.
    pub fn local_path(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    fn object_path(path: &str) -> Result<ObjectPath, StoreError> {
        ObjectPath::parse(path).map_err(|source| StoreError::Path {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads an object, or `None` when it does not exist.
    pub async fn get(&self, path: &str) -> Result<Option<bytes::Bytes>, StoreError> {
        let Some(inner) = &self.inner else {
            return Ok(None);
        };
        let location = Self::object_path(path)?;
        let object_error = |source| StoreError::Object {
            action: "read",
            path: path.to_owned(),
            source,
        };
        match inner.get(&location).await {
            Ok(result) => Ok(Some(result.bytes().await.map_err(object_error)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(object_error(source)),
        }
    }

    /// Reads and parses a JSON object, or `None` when it does not exist.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.get(path).await? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| StoreError::Json {
                        path: path.to_owned(),
                        source,
                    })
            }
        }
    }

    fn writable(&self, path: &str) -> Result<&Arc<dyn ObjectStore>, StoreError> {
        self.inner.as_ref().ok_or_else(|| StoreError::Object {
            action: "write",
            path: path.to_owned(),
            source: object_store::Error::NotFound {
                path: self.root.display().to_string(),
                source: "the run root does not exist".into(),
            },
        })
    }

    /// Writes an object atomically (the local store writes a temp file and renames it).
    pub async fn put_json<T: serde::Serialize>(
        &self,
        path: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|source| StoreError::Json {
            path: path.to_owned(),
            source,
        })?;
        let location = Self::object_path(path)?;
        self.writable(path)?
            .put(&location, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|source| StoreError::Object {
                action: "write",
                path: path.to_owned(),
                source,
            })
    }

    /// Moves an object; on the local store a rename, so committing an output copies nothing.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let (source_path, target_path) = (Self::object_path(from)?, Self::object_path(to)?);
        self.writable(to)?
            .rename(&source_path, &target_path)
            .await
            .map_err(|source| StoreError::Object {
                action: "move",
                path: from.to_owned(),
                source,
            })
    }

    /// Every object under `prefix`, as paths relative to the store root.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let Some(inner) = &self.inner else {
            return Ok(Vec::new());
        };
        let location = Self::object_path(prefix)?;
        inner
            .list(Some(&location))
            .map_ok(|meta| (meta.location.to_string(), meta.size))
            .try_collect()
            .await
            .map_err(|source| StoreError::Object {
                action: "list",
                path: prefix.to_owned(),
                source,
            })
    }

    /// Deletes every object under `prefix`; returns the bytes freed.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let objects = self.list(prefix).await?;
        let mut freed = 0;
        if let Some(inner) = &self.inner {
            for (path, size) in objects {
                let location = Self::object_path(&path)?;
                match inner.delete(&location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => freed += size,
                    Err(source) => {
                        return Err(StoreError::Object {
                            action: "delete",
                            path,
                            source,
                        });
                    }
                }
            }
        }
        // The local store leaves empty directories behind; they are not objects, so tidy them.
        remove_empty_dirs(&self.local_path(prefix));
        Ok(freed)
    }
}

/// Removes `dir` and its subdirectories if they hold no files.
pub fn remove_empty_dirs(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                remove_empty_dirs(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_root_reads_nothing_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("runs");
        let store = Store::open(&root).unwrap();
        assert!(store.get("cache/x/manifest.json").await.unwrap().is_none());
        assert!(store.list("cache").await.unwrap().is_empty());
        assert!(store.put_json("x.json", &1).await.is_err());
        assert!(!root.exists());
    }

    #[tokio::test]
    async fn put_get_rename_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("runs")).unwrap();
        store
            .put_json("a/b.json", &serde_json::json!({"x": 1}))
            .await
            .unwrap();
        let value: serde_json::Value = store.get_json("a/b.json").await.unwrap().unwrap();
        assert_eq!(value["x"], 1);
        store.rename("a/b.json", "c/d/e.json").await.unwrap();
        assert!(store.get("a/b.json").await.unwrap().is_none());
        assert_eq!(store.list("c").await.unwrap().len(), 1);
        assert!(store.delete_prefix("c").await.unwrap() > 0);
        assert!(!dir.path().join("runs/c").exists());
    }
}
