//! The content-addressed model store: `<dir>/<hex blake3>.onnx`.
//!
//! A model's id is the blake3 hash of its bytes, so a file's name says what it must contain.
//! Writes go to a temporary file in the same directory, are synced, then renamed into place,
//! so a crash leaves either the whole model or nothing under its name. Reads of a whole model
//! re-hash the bytes: a corrupt file is removed and reported, never handed to the runtime.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crank_protocol::ModelId;
use tracing::{debug, warn};

use crate::error::StoreError;

/// File name suffix of stored models.
const SUFFIX: &str = ".onnx";
/// File name prefix of in-progress writes; leftovers from a crash are removed by [`ModelStore::open`].
const TMP_PREFIX: &str = ".tmp-";

/// A directory of ONNX models named by their blake3 content id.
#[derive(Debug)]
pub struct ModelStore {
    dir: PathBuf,
    max_model_bytes: u64,
    /// Distinguishes concurrent temporary files written by this process.
    tmp_counter: AtomicU64,
}

impl ModelStore {
    /// Opens (creating if needed) the store in `dir`; models over `max_model_bytes` are refused.
    ///
    /// Temporary files left by an interrupted write are removed.
    pub fn open(dir: &Path, max_model_bytes: u64) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(|source| io(dir, source))?;
        let entries = fs::read_dir(dir).map_err(|source| io(dir, source))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(TMP_PREFIX) {
                let path = entry.path();
                if let Err(e) = fs::remove_file(&path) {
                    warn!(path = %path.display(), error = %e, "could not remove leftover temporary model file");
                }
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            max_model_bytes,
            tmp_counter: AtomicU64::new(0),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The largest model the store accepts, bytes.
    pub fn max_model_bytes(&self) -> u64 {
        self.max_model_bytes
    }

    /// Where the model with this id lives (whether or not it is stored).
    pub fn path_of(&self, id: &ModelId) -> PathBuf {
        self.dir.join(format!("{}{SUFFIX}", id.to_hex()))
    }

    /// Stores `bytes` under their blake3 hash and returns that id. Storing the same bytes
    /// again is a no-op.
    pub fn put(&self, bytes: &[u8]) -> Result<ModelId, StoreError> {
        self.check_size(bytes.len() as u64)?;
        let id = ModelId::of(bytes);
        self.write(&id, bytes)?;
        Ok(id)
    }

    /// Stores `bytes` only if they hash to `expected` (a model fetched from a peer).
    pub fn put_verified(&self, expected: &ModelId, bytes: &[u8]) -> Result<(), StoreError> {
        self.check_size(bytes.len() as u64)?;
        let actual = ModelId::of(bytes);
        if actual != *expected {
            return Err(StoreError::HashMismatch {
                expected: *expected,
                actual,
            });
        }
        self.write(expected, bytes)
    }

    /// Whether a model with this id is stored.
    pub fn has(&self, id: &ModelId) -> bool {
        self.path_of(id).is_file()
    }

    /// The stored model's size in bytes, if it is stored.
    pub fn size(&self, id: &ModelId) -> Option<u64> {
        fs::metadata(self.path_of(id))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// Reads a whole model and checks that it still hashes to its id.
    pub fn read(&self, id: &ModelId) -> Result<Arc<[u8]>, StoreError> {
        let path = self.path_of(id);
        let size = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(*id));
            }
            Err(source) => return Err(io(&path, source)),
        };
        self.check_size(size)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(*id));
            }
            Err(source) => return Err(io(&path, source)),
        };
        let actual = ModelId::of(&bytes);
        if actual != *id {
            warn!(model = %id, actual = %actual, "stored model is corrupt; removing it");
            if let Err(e) = fs::remove_file(&path) {
                warn!(path = %path.display(), error = %e, "could not remove corrupt model");
            }
            return Err(StoreError::Corrupt { id: *id, actual });
        }
        Ok(bytes.into())
    }

    /// Reads up to `max_len` bytes of a model from `offset`; returns the model's total size
    /// and the chunk (empty at the end). Used to serve a model to peers in pieces.
    pub fn read_chunk(
        &self,
        id: &ModelId,
        offset: u64,
        max_len: u32,
    ) -> Result<(u64, Vec<u8>), StoreError> {
        let path = self.path_of(id);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(*id));
            }
            Err(source) => return Err(io(&path, source)),
        };
        let total = file.metadata().map_err(|source| io(&path, source))?.len();
        if offset > total {
            return Err(StoreError::OffsetOutOfRange {
                id: *id,
                offset,
                total,
            });
        }
        let len = (total - offset).min(u64::from(max_len));
        file.seek(SeekFrom::Start(offset))
            .map_err(|source| io(&path, source))?;
        // `len` is at most `max_len`, a u32, so it fits in usize on every supported target.
        let mut chunk = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.take(len)
            .read_to_end(&mut chunk)
            .map_err(|source| io(&path, source))?;
        Ok((total, chunk))
    }

    /// Ids of all stored models, in no particular order. Files that are not named like a
    /// model are ignored.
    pub fn list(&self) -> Vec<ModelId> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                name.strip_suffix(SUFFIX)?.parse().ok()
            })
            .collect()
    }

    /// Removes a stored model; returns whether it was there.
    pub fn remove(&self, id: &ModelId) -> Result<bool, StoreError> {
        let path = self.path_of(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(io(&path, source)),
        }
    }

    fn check_size(&self, size: u64) -> Result<(), StoreError> {
        if size > self.max_model_bytes {
            return Err(StoreError::TooLarge {
                size,
                limit: self.max_model_bytes,
            });
        }
        Ok(())
    }

    /// Writes `bytes` as model `id`: temporary file, fsync, rename, fsync of the directory.
    fn write(&self, id: &ModelId, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.path_of(id);
        if self.size(id) == Some(bytes.len() as u64) {
            debug!(model = %id, "model already stored");
            return Ok(());
        }
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(
            "{TMP_PREFIX}{}-{}-{n}",
            id.to_hex(),
            std::process::id()
        ));
        let result = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            // Make the rename itself durable; not every platform can open a directory.
            if let Ok(d) = File::open(&self.dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        if let Err(source) = result {
            let _ = fs::remove_file(&tmp);
            return Err(io(&path, source));
        }
        debug!(model = %id, bytes = bytes.len(), "model stored");
        Ok(())
    }
}

fn io(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(limit: u64) -> (tempfile::TempDir, ModelStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = ModelStore::open(dir.path(), limit).unwrap();
        (dir, s)
    }

    #[test]
    fn put_read_list_round_trip() {
        let (_d, s) = store(1 << 20);
        let id = s.put(b"hello model").unwrap();
        assert_eq!(id, ModelId::of(b"hello model"));
        assert!(s.has(&id));
        assert_eq!(s.size(&id), Some(11));
        assert_eq!(&*s.read(&id).unwrap(), b"hello model");
        assert_eq!(s.list(), vec![id]);
        // Idempotent.
        assert_eq!(s.put(b"hello model").unwrap(), id);
        assert_eq!(s.list().len(), 1);
        assert!(s.remove(&id).unwrap());
        assert!(!s.has(&id));
        assert!(!s.remove(&id).unwrap());
    }

    #[test]
    fn verified_put_rejects_wrong_hash_and_writes_nothing() {
        let (_d, s) = store(1 << 20);
        let wrong = ModelId::of(b"other");
        let e = s.put_verified(&wrong, b"bytes").unwrap_err();
        assert!(matches!(e, StoreError::HashMismatch { expected, .. } if expected == wrong));
        assert!(s.list().is_empty());
        s.put_verified(&ModelId::of(b"bytes"), b"bytes").unwrap();
        assert!(s.has(&ModelId::of(b"bytes")));
    }

    #[test]
    fn oversize_models_are_refused() {
        let (_d, s) = store(4);
        assert!(matches!(
            s.put(b"12345"),
            Err(StoreError::TooLarge { size: 5, limit: 4 })
        ));
        assert!(s.list().is_empty());
        s.put(b"1234").unwrap();
    }

    #[test]
    fn chunks_cover_the_file_and_stop_at_the_end() {
        let (_d, s) = store(1 << 20);
        let bytes: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let id = s.put(&bytes).unwrap();
        let mut got = Vec::new();
        let mut offset = 0;
        loop {
            let (total, chunk) = s.read_chunk(&id, offset, 300).unwrap();
            assert_eq!(total, 1000);
            if chunk.is_empty() {
                break;
            }
            offset += chunk.len() as u64;
            got.extend(chunk);
        }
        assert_eq!(got, bytes);
        assert!(matches!(
            s.read_chunk(&id, 1001, 10),
            Err(StoreError::OffsetOutOfRange { total: 1000, .. })
        ));
        assert!(matches!(
            s.read_chunk(&ModelId([7; 32]), 0, 10),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn corrupt_files_are_detected_and_removed() {
        let (_d, s) = store(1 << 20);
        let id = s.put(b"original").unwrap();
        fs::write(s.path_of(&id), b"tampered").unwrap();
        assert!(matches!(s.read(&id), Err(StoreError::Corrupt { .. })));
        assert!(!s.has(&id));
        assert!(matches!(s.read(&id), Err(StoreError::NotFound(_))));
    }

    #[test]
    fn open_cleans_leftover_temporaries_and_ignores_strangers() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".tmp-abc-1-0"), b"partial").unwrap();
        fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        fs::write(dir.path().join("zz.onnx"), b"x").unwrap();
        let s = ModelStore::open(dir.path(), 100).unwrap();
        assert!(!dir.path().join(".tmp-abc-1-0").exists());
        assert!(s.list().is_empty());
    }
}
