//! The one way a file comes into place: written to a temp file in the same directory, synced,
//! then renamed (or hard-linked, for files that are never replaced) onto its name, and the
//! directory synced. Readers, and a crash at any point, see the old file or the whole new one,
//! never a torn one; a failed write leaves no temp file behind.

use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// How the finished file takes its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Replaces whatever is there.
    Replace,
    /// Read-only, and only if the name is free: an existing file is kept (`Ok(false)`).
    Publish,
}

/// Writes `path` through `write`, atomically as `place` says. `Ok(false)` only for
/// [`Place::Publish`] when the file was there already.
pub fn write_with(
    path: &Path,
    place: Place,
    write: impl FnOnce(&mut fs_err::File) -> io::Result<()>,
) -> io::Result<bool> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs_err::create_dir_all(dir)?;
    let temp = temp_path(path);
    let placed = (|| {
        let mut file = fs_err::File::create(&temp)?;
        write(&mut file)?;
        file.flush()?;
        file.sync_all()?;
        drop(file);
        match place {
            Place::Replace => fs_err::rename(&temp, path).map(|()| true),
            Place::Publish => {
                let mut permissions = fs_err::metadata(&temp)?.permissions();
                permissions.set_readonly(true);
                fs_err::set_permissions(&temp, permissions)?;
                // A hard link fails if the name exists: a published file is never replaced.
                match fs_err::hard_link(&temp, path) {
                    Ok(()) => Ok(true),
                    Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                    Err(error) => Err(error),
                }
            }
        }
    })();
    // After a rename the temp name is gone already; after a link or a failure it is not.
    let _ = std::fs::remove_file(&temp);
    if placed? {
        // The new name survives a crash once its directory is synced.
        sync_dir(dir);
        return Ok(true);
    }
    Ok(false)
}

/// A name, unique in this process and hidden, beside `path` for the file that becomes it.
pub fn temp_path(path: &Path) -> std::path::PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let nonce = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.{}-{nonce}.tmp", std::process::id()))
}

/// Makes the names in `dir` (a rename into it) survive a crash; best effort.
pub fn sync_dir(dir: &Path) {
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

/// Writes `bytes` to `path`, replacing it atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_with(path, Place::Replace, |file| file.write_all(bytes)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_and_publish() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b.txt");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let published = dir.path().join("p.txt");
        assert!(write_with(&published, Place::Publish, |f| f.write_all(b"first")).unwrap());
        assert!(!write_with(&published, Place::Publish, |f| f.write_all(b"second")).unwrap());
        assert_eq!(std::fs::read(&published).unwrap(), b"first");
        assert!(
            std::fs::metadata(&published)
                .unwrap()
                .permissions()
                .readonly()
        );
        // A failed write leaves neither the file nor a temp file.
        let failed = dir.path().join("f.txt");
        assert!(write_with(&failed, Place::Replace, |_| Err(io::Error::other("no"))).is_err());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }
}
