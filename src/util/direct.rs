//! A large output written once, front to back, straight to the disk: through `O_DIRECT` where
//! the file system takes it, hashed (blake3) as it is written, synced, then renamed onto its
//! name as [`super::fsx`] places files.
//!
//! Why: the cache seals every output (fsync) and hashes it, so a written file goes to the disk
//! before its stage ends in any case. Through the page cache that costs a copy of every byte
//! into pages the kernel must first find (on a VM whose free memory goes back to the host,
//! each of them a fault there: 0.5 to 2 s of system time for the features' 465 MB), then the
//! writeback at the end, then reading the file back for its digest. Written directly, the
//! disk takes the bytes while the query still runs, and the digest is known at the last byte.
//!
//! Where `O_DIRECT` is refused (some file systems, or a device wanting larger alignment than
//! [`ALIGN`]) the same bytes go through the page cache.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The alignment `O_DIRECT` wants of buffers, offsets and lengths on the devices in use
/// (logical blocks of 512 or 4096 bytes).
const ALIGN: usize = 4096;

/// Bytes gathered before each write: large enough that the disk streams.
const BLOCK: usize = 4 << 20;

/// A file being written to a temp name beside `path`; [`DirectWriter::finish`] puts it in
/// place, dropping it unfinished removes it.
pub struct DirectWriter {
    path: PathBuf,
    temp: PathBuf,
    file: File,
    direct: bool,
    /// `BLOCK` bytes at an `ALIGN`ed offset of `storage`.
    storage: Vec<u8>,
    start: usize,
    filled: usize,
    /// Bytes written to the file so far (a multiple of `BLOCK`).
    written: u64,
    hasher: blake3::Hasher,
    finished: bool,
}

/// A placed file: its size and the blake3 of its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub len: u64,
    pub blake3: String,
}

impl DirectWriter {
    /// Starts `path` (its directory must exist), directly to the disk where the file system
    /// allows it.
    pub fn create(path: &Path) -> io::Result<Self> {
        Self::create_with(path, true)
    }

    /// Starts `path` through the page cache, as [`DirectWriter::create`] falls back to.
    #[cfg(test)]
    pub fn create_buffered(path: &Path) -> io::Result<Self> {
        Self::create_with(path, false)
    }

    fn create_with(path: &Path, direct: bool) -> io::Result<Self> {
        let temp = super::fsx::temp_path(path);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|error| located(path, error))?;
        // Asked for after the open: a file system that refuses it at open would have created
        // the file all the same. Refused here, the file stays on the page cache.
        let direct = direct
            && match set_direct(&file, true) {
                Ok(()) => true,
                Err(error) if error.raw_os_error() == Some(libc::EINVAL) => false,
                Err(error) => {
                    let _ = std::fs::remove_file(&temp);
                    return Err(located(path, error));
                }
            };
        let storage = vec![0; BLOCK + ALIGN];
        let start = storage.as_ptr().align_offset(ALIGN);
        Ok(Self {
            path: path.to_owned(),
            temp,
            file,
            direct,
            storage,
            start,
            filled: 0,
            written: 0,
            hasher: blake3::Hasher::new(),
            finished: false,
        })
    }

    /// Whether the bytes go around the page cache (so far: a refused write turns it off).
    #[cfg(test)]
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Appends `bytes`.
    pub fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        self.hasher.update(bytes);
        while !bytes.is_empty() {
            let room = BLOCK - self.filled;
            let take = room.min(bytes.len());
            let at = self.start + self.filled;
            self.storage[at..at + take].copy_from_slice(&bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled == BLOCK {
                self.write_block(BLOCK)
                    .map_err(|error| located(&self.path, error))?;
                self.written += BLOCK as u64;
                self.filled = 0;
            }
        }
        Ok(())
    }

    /// Writes the first `len` bytes of the block at `self.written`; a direct write the kernel
    /// refuses is made again through the page cache, and so is every one after it.
    fn write_block(&mut self, len: usize) -> io::Result<()> {
        let block = &self.storage[self.start..self.start + len];
        match self.file.write_all_at(block, self.written) {
            Err(error) if self.direct && error.raw_os_error() == Some(libc::EINVAL) => {
                self.direct = false;
                set_direct(&self.file, false)?;
                self.file.write_all_at(block, self.written)
            }
            result => result,
        }
    }

    /// Writes what is left, syncs the file, records its digest for the cache
    /// ([`written_digest`]) and renames it onto its name.
    pub fn finish(mut self) -> io::Result<Placed> {
        self.place().map_err(|error| located(&self.path, error))
    }

    fn place(&mut self) -> io::Result<Placed> {
        let len = self.written + self.filled as u64;
        if self.filled > 0 {
            // A direct write is of whole blocks: the last one is padded and the file cut back.
            let padded = match self.direct {
                true => self.filled.next_multiple_of(ALIGN),
                false => self.filled,
            };
            let tail = self.start + self.filled..self.start + padded;
            self.storage[tail].fill(0);
            self.write_block(padded)?;
            if padded != self.filled {
                self.file.set_len(len)?;
            }
        }
        self.file.sync_all()?;
        let blake3 = self.hasher.finalize().to_hex().to_string();
        remember_written(&self.file, blake3.clone())?;
        std::fs::rename(&self.temp, &self.path)?;
        self.finished = true;
        super::fsx::sync_dir(self.path.parent().unwrap_or(Path::new(".")));
        Ok(Placed { len, blake3 })
    }
}

impl Drop for DirectWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// What tells one file, as it is now, from any other: its device and inode (kept across a
/// rename), size and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

impl FileIdentity {
    fn of(metadata: &std::fs::Metadata) -> Self {
        Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
            len: metadata.len(),
            mtime: (metadata.mtime(), metadata.mtime_nsec()),
        }
    }
}

/// Digests of files this process hashed while it wrote them ([`DirectWriter`]), so the cache
/// need not read them back. An entry is taken once, and only by a file with the same
/// identity: one written to again, or replaced, is hashed from its bytes as any other.
static WRITTEN: std::sync::Mutex<Vec<(FileIdentity, String)>> = std::sync::Mutex::new(Vec::new());

/// Records `blake3` as the digest of `file`'s content as it is now (written and synced).
pub fn remember_written(file: &std::fs::File, blake3: String) -> io::Result<()> {
    let identity = FileIdentity::of(&file.metadata()?);
    let mut written = WRITTEN.lock().unwrap_or_else(|e| e.into_inner());
    written.retain(|(known, _)| (known.dev, known.ino) != (identity.dev, identity.ino));
    written.push((identity, blake3));
    Ok(())
}

/// The digest [`remember_written`] recorded for the file `metadata` describes, if it is still
/// that file as it was written.
pub fn written_digest(metadata: &std::fs::Metadata) -> Option<String> {
    let identity = FileIdentity::of(metadata);
    let mut written = WRITTEN.lock().unwrap_or_else(|e| e.into_inner());
    let index = written
        .iter()
        .position(|(known, _)| (known.dev, known.ino) == (identity.dev, identity.ino))?;
    let (known, blake3) = written.swap_remove(index);
    (known == identity).then_some(blake3)
}

/// `error`, naming the file it is about.
fn located(path: &Path, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

/// Turns `O_DIRECT` on or off for an open file.
fn set_direct(file: &File, direct: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this process owns (kept open by `file`), with integer
    // arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = match direct {
        true => flags | libc::O_DIRECT,
        false => flags & !libc::O_DIRECT,
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Every size around the block and alignment boundaries, written in uneven pieces, both
    /// ways: the file holds exactly the bytes, its digest is blake3's, and the cache gets it.
    #[test]
    fn a_written_file_holds_its_bytes_and_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        for direct in [true, false] {
            for len in [
                0,
                1,
                ALIGN - 1,
                ALIGN,
                ALIGN + 1,
                BLOCK - 1,
                BLOCK,
                2 * BLOCK + 4097,
            ] {
                let path = dir.path().join(format!("out-{direct}-{len}.bin"));
                let mut writer = match direct {
                    true => DirectWriter::create(&path).unwrap(),
                    false => DirectWriter::create_buffered(&path).unwrap(),
                };
                let content = bytes(len);
                for piece in content.chunks(1_000_003) {
                    writer.write(piece).unwrap();
                }
                assert!(!path.exists(), "in place only when finished");
                let placed = writer.finish().unwrap();
                let expected = blake3::hash(&content).to_hex().to_string();
                assert_eq!(
                    placed,
                    Placed {
                        len: len as u64,
                        blake3: expected.clone()
                    }
                );
                assert_eq!(
                    std::fs::read(&path).unwrap(),
                    content,
                    "{len} bytes, {direct}"
                );
                let metadata = std::fs::metadata(&path).unwrap();
                assert_eq!(written_digest(&metadata), Some(expected));
            }
        }
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.starts_with('.'))
            .collect();
        assert!(names.is_empty(), "temp files left: {names:?}");
    }

    /// The build machines' disks take direct writes: the fast path is the one tested above.
    #[test]
    fn the_temp_directory_takes_direct_writes() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = DirectWriter::create(&dir.path().join("x")).unwrap();
        writer.write(&bytes(BLOCK + 10)).unwrap();
        assert!(writer.is_direct());
        writer.finish().unwrap();
    }

    #[test]
    fn an_unfinished_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        let mut writer = DirectWriter::create(&path).unwrap();
        writer.write(&bytes(BLOCK + 5)).unwrap();
        drop(writer);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A file changed after it was written is hashed again, not taken on its old digest.
    #[test]
    fn a_file_changed_after_writing_loses_its_recorded_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        let mut writer = DirectWriter::create(&path).unwrap();
        writer.write(b"first").unwrap();
        writer.finish().unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut file| io::Write::write_all(&mut file, b" and more"))
            .unwrap();
        let metadata = std::fs::metadata(&path).unwrap();
        assert_eq!(written_digest(&metadata), None);
    }
}
