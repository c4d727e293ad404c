//! The run-root lock: one `run` (or `gc`) at a time per run root.
//!
//! An OS file lock (`flock`) on `runs/.lock`, so the kernel releases it when the holder dies,
//! however it dies: a lock left by a dead process is simply free. The file also names the
//! holder (pid, start time, command) for the message the second caller sees.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("run root {} is in use by {holder}; pass --wait to wait for it", root.display())]
    Held { root: PathBuf, holder: String },
    #[error("failed to lock {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Held while a run uses the run root; released on drop (or by the kernel at exit).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

fn lock_path(run_root: &Path) -> PathBuf {
    run_root.join(".lock")
}

/// Takes the lock on `run_root`. Without `wait` a held lock is an immediate [`LockError::Held`];
/// with it, `on_wait` is told who holds it and the call blocks until it is free.
pub fn acquire(
    run_root: &Path,
    wait: bool,
    on_wait: impl FnOnce(&str),
) -> Result<RunLock, LockError> {
    let path = lock_path(run_root);
    let io_error = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    fs_err::create_dir_all(run_root).map_err(io_error)?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = describe_holder(&mut file);
            if !wait {
                return Err(LockError::Held {
                    root: run_root.to_owned(),
                    holder,
                });
            }
            on_wait(&holder);
            file.lock().map_err(io_error)?;
        }
        Err(TryLockError::Error(source)) => return Err(io_error(source)),
    }
    let argv: Vec<String> = std::env::args().collect();
    let note = format!(
        "pid {} since {} ({})\n",
        std::process::id(),
        crate::util::time::rfc3339(crate::util::time::now_ms()),
        argv.join(" ")
    );
    file.set_len(0).map_err(io_error)?;
    file.rewind().map_err(io_error)?;
    file.write_all(note.as_bytes()).map_err(io_error)?;
    Ok(RunLock { _file: file })
}

fn describe_holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let text = text.trim();
    if text.is_empty() {
        "another asterflow process".to_owned()
    } else {
        text.to_owned()
    }
}

/// Whether some process holds the lock on `run_root` right now (checked without taking it
/// for longer than the check).
pub fn is_held(run_root: &Path) -> bool {
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(lock_path(run_root))
    else {
        return false;
    };
    match file.try_lock() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_and_names_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let first = acquire(dir.path(), false, |_| {}).unwrap();
        let error = acquire(dir.path(), false, |_| {}).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        assert!(message.contains("--wait"));
        drop(first);
        assert!(acquire(dir.path(), false, |_| {}).is_ok());
    }
}
