//! Stage fingerprints: a blake3 hash of a plain serialisable key, and the file-digest memo that
//! keeps reruns from re-hashing unchanged files.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Bumped when the key's meaning changes; every cached output is then re-run once.
pub const KEY_FORMAT: u32 = 1;

/// Everything a stage's output depends on. Printable with `-v`; its blake3 is the fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FingerprintKey {
    pub format: u32,
    pub kind: String,
    /// The kind's code version: bumped when the kind's implementation changes its output.
    pub kind_version: u32,
    /// The stage's params, canonical (defaults filled in by the kind).
    pub params: Value,
    /// Project-relative path -> blake3 of each file the stage references.
    pub files: BTreeMap<String, String>,
    /// The stage's own `version`.
    pub version: u32,
    /// Input stage id -> digest of that input's output content.
    pub inputs: BTreeMap<String, String>,
}

/// A stage fingerprint: 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(pub String);

impl Fingerprint {
    /// The first 12 hex digits, for people.
    pub fn short(&self) -> &str {
        self.0.get(..12).unwrap_or(&self.0)
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl FingerprintKey {
    pub fn fingerprint(&self) -> Fingerprint {
        let value = serde_json::to_value(self).unwrap_or(Value::Null);
        let mut bytes = Vec::with_capacity(256);
        write_canonical(&value, &mut bytes);
        Fingerprint(blake3::hash(&bytes).to_hex().to_string())
    }

    /// Why `self` differs from the key of an earlier output, as a user reads it:
    /// `params changed: with.horizon; input features changed`.
    pub fn describe_change(&self, earlier: &FingerprintKey) -> String {
        let mut reasons = Vec::new();
        if self.format != earlier.format {
            reasons.push("cache key format changed".to_owned());
        }
        if self.kind != earlier.kind {
            reasons.push(format!("kind changed: {} -> {}", earlier.kind, self.kind));
        } else if self.kind_version != earlier.kind_version {
            reasons.push(format!(
                "`{}` code changed (v{} -> v{})",
                self.kind, earlier.kind_version, self.kind_version
            ));
        }
        if self.version != earlier.version {
            reasons.push(format!(
                "version changed: {} -> {}",
                earlier.version, self.version
            ));
        }
        let mut changed_params = Vec::new();
        diff_paths(&self.params, &earlier.params, "with", &mut changed_params);
        if !changed_params.is_empty() {
            reasons.push(format!("params changed: {}", changed_params.join(", ")));
        }
        let changed_files = changed_keys(&self.files, &earlier.files);
        if !changed_files.is_empty() {
            reasons.push(format!("file changed: {}", changed_files.join(", ")));
        }
        let changed_inputs = changed_keys(&self.inputs, &earlier.inputs);
        if !changed_inputs.is_empty() {
            reasons.push(format!("input {} changed", changed_inputs.join(", ")));
        }
        if reasons.is_empty() {
            "no cached output for this fingerprint".to_owned()
        } else {
            reasons.join("; ")
        }
    }
}

fn changed_keys(now: &BTreeMap<String, String>, before: &BTreeMap<String, String>) -> Vec<String> {
    let mut keys: Vec<String> = now
        .iter()
        .filter(|(key, value)| before.get(*key) != Some(value))
        .map(|(key, _)| key.clone())
        .collect();
    keys.extend(before.keys().filter(|key| !now.contains_key(*key)).cloned());
    keys
}

fn diff_paths(now: &Value, before: &Value, path: &str, out: &mut Vec<String>) {
    match (now, before) {
        (Value::Object(now), Value::Object(before)) => {
            let mut keys: Vec<&String> = now.keys().chain(before.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let child = format!("{path}.{key}");
                match (now.get(key), before.get(key)) {
                    (Some(a), Some(b)) => diff_paths(a, b, &child, out),
                    _ => out.push(child),
                }
            }
        }
        (a, b) if a != b => out.push(path.to_owned()),
        _ => {}
    }
}

/// JSON with object keys sorted at every level, whatever map type serde_json was built with.
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (position, (key, item)) in entries.into_iter().enumerate() {
                if position > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String(key.clone()).to_string().as_bytes());
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (position, item) in items.iter().enumerate() {
                if position > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

/// blake3 of a file's content, read through small buffers: a memory map would make every page
/// of a large output count in the process's resident memory while it is hashed. From
/// [`PIECES_FROM`] bytes the file is hashed as subtrees of blake3's own tree, on every core
/// ([`hash_in_pieces`]): the same digest, in a fraction of the time the cache otherwise spends
/// after a large output's last write.
pub fn hash_file(path: &Path) -> io::Result<String> {
    let located = |error: io::Error| {
        io::Error::new(
            error.kind(),
            format!("failed to read {}: {error}", path.display()),
        )
    };
    let file = std::fs::File::open(path).map_err(located)?;
    let len = file.metadata().map_err(located)?.len();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let hash = if len < PIECES_FROM || threads == 1 {
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(file).map_err(located)?;
        hasher.finalize()
    } else {
        // Two pieces a thread: blake3's subtrees are powers of two, so pieces differ in size.
        let piece = len.div_ceil(2 * threads as u64);
        hash_in_pieces(&file, len, piece, threads).map_err(located)?
    };
    Ok(hash.to_hex().to_string())
}

/// Files from this size are hashed in pieces, on every core.
const PIECES_FROM: u64 = 16 << 20;

/// A subtree of blake3's tree over a file: a piece hashed alone (its index), or a parent of two.
enum Subtree {
    Piece(usize),
    Parent(Box<Subtree>, Box<Subtree>),
}

/// Cuts the subtree of `len` bytes at `offset` into pieces (`offset`, `len`) of at most `piece`
/// bytes, where blake3's tree itself splits: a parent's left child holds the largest power of
/// two of 1 KiB chunks that leaves at least one byte to its right.
fn cut(offset: u64, len: u64, piece: u64, pieces: &mut Vec<(u64, u64)>) -> Subtree {
    if len <= piece.max(blake3::CHUNK_LEN as u64) {
        pieces.push((offset, len));
        return Subtree::Piece(pieces.len() - 1);
    }
    let left = blake3::hazmat::left_subtree_len(len);
    Subtree::Parent(
        Box::new(cut(offset, left, piece, pieces)),
        Box::new(cut(offset + left, len - left, piece, pieces)),
    )
}

/// The blake3 of the first `len` bytes of `file`, its tree cut into pieces of at most `piece`
/// bytes whose chaining values are computed on `threads` threads and then joined up the tree.
fn hash_in_pieces(
    file: &std::fs::File,
    len: u64,
    piece: u64,
    threads: usize,
) -> io::Result<blake3::Hash> {
    use blake3::hazmat::{ChainingValue, HasherExt, Mode};
    use std::os::unix::fs::FileExt;
    let mut pieces = Vec::new();
    let (left, right) = match cut(0, len, piece, &mut pieces) {
        Subtree::Parent(left, right) => (left, right),
        // One piece: nothing to split.
        Subtree::Piece(_) => {
            let mut hasher = blake3::Hasher::new();
            let mut bytes = vec![0; len as usize];
            file.read_exact_at(&mut bytes, 0)?;
            hasher.update(&bytes);
            return Ok(hasher.finalize());
        }
    };
    let values = crate::util::parallel::map(pieces.len(), threads, |index| {
        let (offset, len) = pieces[index];
        let mut hasher = blake3::Hasher::new();
        hasher.set_input_offset(offset);
        let mut buffer = vec![0; 1 << 16];
        let (mut at, end) = (offset, offset + len);
        while at < end {
            let take = buffer.len().min((end - at) as usize);
            file.read_exact_at(&mut buffer[..take], at)?;
            hasher.update(&buffer[..take]);
            at += take as u64;
        }
        Ok(hasher.finalize_non_root())
    })
    .into_iter()
    .collect::<io::Result<Vec<ChainingValue>>>()?;
    fn join(tree: &Subtree, values: &[ChainingValue]) -> ChainingValue {
        match tree {
            Subtree::Piece(index) => values[*index],
            Subtree::Parent(left, right) => blake3::hazmat::merge_subtrees_non_root(
                &join(left, values),
                &join(right, values),
                Mode::Hash,
            ),
        }
    }
    Ok(blake3::hazmat::merge_subtrees_root(
        &join(&left, &values),
        &join(&right, &values),
        Mode::Hash,
    ))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct MemoEntry {
    size: u64,
    mtime_ns: i128,
    /// Unlike mtime, ctime cannot be set by `touch -r` or `cp -p`.
    ctime_ns: i128,
    inode: u64,
    digest: String,
}

/// Remembers `(path, size, mtime, ctime, inode) -> digest` across runs, so unchanged large files are
/// not hashed again. Stored as JSON in the run root; a damaged memo is ignored, never trusted.
#[derive(Debug, Default)]
pub struct FileDigests {
    file: Option<PathBuf>,
    entries: HashMap<PathBuf, MemoEntry>,
    dirty: bool,
}

#[derive(Serialize, Deserialize)]
struct MemoFile {
    format: u32,
    entries: HashMap<PathBuf, MemoEntry>,
}

const MEMO_FORMAT: u32 = 2;

impl FileDigests {
    /// Loads the memo at `file` if present and readable.
    pub fn load(file: PathBuf) -> Self {
        let entries = fs_err::read(&file)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<MemoFile>(&bytes).ok())
            .filter(|memo| memo.format == MEMO_FORMAT)
            .map(|memo| memo.entries)
            .unwrap_or_default();
        Self {
            file: Some(file),
            entries,
            dirty: false,
        }
    }

    /// The digest of `path`, from the memo when its size, mtime and inode are unchanged.
    pub fn digest(&mut self, path: &Path) -> io::Result<String> {
        let metadata = fs_err::metadata(path)?;
        let mtime_ns = metadata.mtime() as i128 * 1_000_000_000 + metadata.mtime_nsec() as i128;
        let ctime_ns = metadata.ctime() as i128 * 1_000_000_000 + metadata.ctime_nsec() as i128;
        if let Some(entry) = self.entries.get(path)
            && entry.size == metadata.len()
            && entry.mtime_ns == mtime_ns
            && entry.ctime_ns == ctime_ns
            && entry.inode == metadata.ino()
        {
            return Ok(entry.digest.clone());
        }
        let digest = hash_file(path)?;
        self.entries.insert(
            path.to_owned(),
            MemoEntry {
                size: metadata.len(),
                mtime_ns,
                ctime_ns,
                inode: metadata.ino(),
                digest: digest.clone(),
            },
        );
        self.dirty = true;
        Ok(digest)
    }

    /// Writes the memo back (atomically) if anything was added.
    pub fn save(&mut self) -> io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        let memo = MemoFile {
            format: MEMO_FORMAT,
            entries: std::mem::take(&mut self.entries),
        };
        let bytes = serde_json::to_vec(&memo).map_err(io::Error::other)?;
        self.entries = memo.entries;
        crate::util::fsx::write_atomic(file, &bytes)?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_file_hashed_in_pieces_has_blake3s_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bytes");
        let chunk = blake3::CHUNK_LEN as u64;
        for len in [
            1,
            chunk,
            chunk + 1,
            2 * chunk,
            3 * chunk + 7,
            64 * chunk + 1,
            100_003,
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            std::fs::write(&path, &bytes).unwrap();
            let file = std::fs::File::open(&path).unwrap();
            for piece in [1, chunk, 3 * chunk, 10_000, len] {
                for threads in [1, 2, 3] {
                    assert_eq!(
                        hash_in_pieces(&file, len, piece, threads).unwrap(),
                        blake3::hash(&bytes),
                        "{len} bytes in pieces of {piece} on {threads} threads"
                    );
                }
            }
        }
        // Above the threshold `hash_file` takes the pieces' path.
        let bytes: Vec<u8> = (0..PIECES_FROM + 12_345).map(|i| (i % 241) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            hash_file(&path).unwrap(),
            blake3::hash(&bytes).to_hex().to_string()
        );
        // A file shorter than the length asked for is an error, not a digest of what is there.
        let file = std::fs::File::open(&path).unwrap();
        let short = hash_in_pieces(&file, PIECES_FROM + 20_000, 1 << 20, 2);
        assert_eq!(short.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
    }

    fn key(params: Value) -> FingerprintKey {
        FingerprintKey {
            format: KEY_FORMAT,
            kind: "command".into(),
            kind_version: 1,
            params,
            files: BTreeMap::new(),
            version: 0,
            inputs: BTreeMap::new(),
        }
    }

    #[test]
    fn fingerprint_ignores_key_order_and_sees_values() {
        let a = key(json!({"run": "x", "outputs": ["a"]}));
        let b = key(json!({"outputs": ["a"], "run": "x"}));
        let c = key(json!({"outputs": ["a"], "run": "y"}));
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_eq!(a.fingerprint().0.len(), 64);
    }

    #[test]
    fn describes_what_changed() {
        let before = key(json!({"horizon": 4, "run": "x"}));
        let mut now = key(json!({"horizon": 8, "run": "x"}));
        now.inputs.insert("features".into(), "abc".into());
        assert_eq!(
            now.describe_change(&before),
            "params changed: with.horizon; input features changed"
        );
    }

    #[test]
    fn memo_rehashes_only_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("query.sql");
        fs_err::write(&file, "select 1").unwrap();
        let memo_path = dir.path().join("memo.json");
        let mut memo = FileDigests::load(memo_path.clone());
        let first = memo.digest(&file).unwrap();
        assert_eq!(first, blake3::hash(b"select 1").to_hex().to_string());
        memo.save().unwrap();
        let mut reloaded = FileDigests::load(memo_path);
        assert_eq!(reloaded.digest(&file).unwrap(), first);
        assert!(
            !reloaded.dirty,
            "an unchanged file is answered from the memo"
        );
        fs_err::write(&file, "select 22").unwrap();
        assert_ne!(reloaded.digest(&file).unwrap(), first);
    }
}
