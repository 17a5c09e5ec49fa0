//! The content-addressed model store: `<dir>/<hex blake3>.onnx`.
//!
//! A model's id is the blake3 hash of its bytes, so a file's name says what it must contain.
//! Writes go to a temporary file in the same directory, are synced, then renamed into place,
//! so a crash leaves either the whole model or nothing under its name. Reads of a whole model
//! re-hash the bytes: a corrupt file is removed and reported, never handed to the runtime.
//!
//! # Quota and eviction
//!
//! The store holds at most [`Quota::max_bytes`] bytes in at most [`Quota::max_models`]
//! models. Models the owner added ([`ModelStore::put`]) are *pinned*: never evicted. Models
//! fetched for someone else's task ([`ModelStore::put_fetched`]) are marked by an empty
//! `<hex>.cached` file beside them and may be evicted, least recently used first, to make
//! room for the next fetch. A fetch reserves its bytes before downloading
//! ([`ModelStore::reserve`]); when evicting every evictable model would not make room, it
//! is refused with the figures, and nothing is evicted.
//!
//! Last use is the model file's modification time, set when a model is leased for a run or
//! served, so the order survives restarts and needs no index file. The marker is written
//! before the model is renamed into place and removed after the model is deleted: a crash
//! leaves at worst a marker without a model (removed at open), never an evictable model
//! that looks pinned or the reverse. A model with no marker is the owner's.
//!
//! A model leased for a run ([`ModelStore::lease`]) or being fetched is never evicted.
//! Serving a model to a peer reads one chunk per request from a freshly opened file; an
//! eviction between two chunks ends that transfer with "not found" (the fetcher tries
//! another holder), and one during a read cannot cut it short (the open file keeps its
//! bytes on Unix).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use crank_protocol::ModelId;
use tracing::{debug, info, warn};

use crate::error::StoreError;
use crate::validate::{OnnxCheckError, check_onnx};

/// File name suffix of stored models.
const SUFFIX: &str = ".onnx";
/// File name suffix of the marker beside a model fetched for a task (evictable).
const CACHED_SUFFIX: &str = ".cached";
/// File name prefix of in-progress writes; leftovers from a crash are removed by [`ModelStore::open`].
const TMP_PREFIX: &str = ".tmp-";

/// How much the store may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Bytes of all stored models together, pinned ones included. Default 2 GiB.
    pub max_bytes: u64,
    /// Number of stored models, pinned ones included. Default 256.
    pub max_models: usize,
}

impl Default for Quota {
    fn default() -> Self {
        Self {
            max_bytes: 2 * 1024 * 1024 * 1024,
            max_models: 256,
        }
    }
}

/// Why the store cannot make room for a model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// The model alone is larger than the whole quota.
    #[error("model is {size} bytes; the whole model store quota is {quota} bytes")]
    LargerThanQuota {
        /// Size of the model, bytes.
        size: u64,
        /// The store's byte quota.
        quota: u64,
    },
    /// Evicting every evictable model would still leave too little room: the rest is held by
    /// the owner's pinned models, models in use and fetches in progress.
    #[error(
        "model is {size} bytes but at most {available} of the store's {quota}-byte quota can be \
         made free ({pinned} bytes are the owner's pinned models, {busy} bytes are in use or \
         being fetched); nothing was evicted"
    )]
    NoRoom {
        /// Size of the model, bytes.
        size: u64,
        /// Bytes that are free or could be freed.
        available: u64,
        /// The store's byte quota.
        quota: u64,
        /// Bytes of pinned models.
        pinned: u64,
        /// Bytes of evictable models in use, and of fetches in progress.
        busy: u64,
    },
    /// The store holds its most models and too few of them may be evicted.
    #[error(
        "the model store is at its limit of {limit} models and too few of them may be evicted \
         (pinned by the owner, in use or being fetched); nothing was evicted"
    )]
    TooManyModels {
        /// The store's model count limit.
        limit: usize,
    },
}

/// Why a model fetched from a peer was not stored.
#[derive(Debug, thiserror::Error)]
pub enum FetchedModelError {
    /// The store refused the bytes (wrong hash, too large, I/O).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bytes hash correctly but are not an ONNX model.
    #[error(transparent)]
    NotOnnx(#[from] OnnxCheckError),
}

/// What is in use and promised, shared between the store and its guards.
#[derive(Debug, Default)]
struct Usage {
    /// Leases per model.
    in_use: HashMap<ModelId, usize>,
    /// Reservations of fetches in progress: model and bytes, by reservation number.
    reserved: HashMap<u64, (ModelId, u64)>,
    /// Next reservation number.
    next: u64,
}

fn lock_usage(usage: &Mutex<Usage>) -> MutexGuard<'_, Usage> {
    // The map stays consistent whatever panicked while holding it.
    usage
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Room held in the store for a model being fetched, until dropped (once the model is
/// stored with [`ModelStore::put_fetched`], it counts as stored).
#[derive(Debug)]
#[must_use = "the room is released when the reservation is dropped"]
pub struct Reservation {
    model: ModelId,
    bytes: u64,
    key: u64,
    evicted: Vec<ModelId>,
    usage: Arc<Mutex<Usage>>,
}

impl Reservation {
    /// The model the room is for.
    pub fn model(&self) -> ModelId {
        self.model
    }

    /// The room held, bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Models evicted to make this room (the node stops advertising them).
    pub fn evicted(&self) -> &[ModelId] {
        &self.evicted
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        lock_usage(&self.usage).reserved.remove(&self.key);
    }
}

/// A model in use (being run): it is not evicted while a lease on it is held.
#[derive(Debug)]
pub struct ModelLease {
    model: ModelId,
    usage: Arc<Mutex<Usage>>,
}

impl Drop for ModelLease {
    fn drop(&mut self) {
        let mut usage = lock_usage(&self.usage);
        if let Some(n) = usage.in_use.get_mut(&self.model) {
            // Every lease added one; saturating keeps a miscount from panicking in drop.
            *n = n.saturating_sub(1);
            if *n == 0 {
                usage.in_use.remove(&self.model);
            }
        }
    }
}

/// One stored model, as the directory says.
#[derive(Debug)]
struct Stored {
    id: ModelId,
    bytes: u64,
    last_used: SystemTime,
    cached: bool,
}

/// A directory of ONNX models named by their blake3 content id.
#[derive(Debug)]
pub struct ModelStore {
    dir: PathBuf,
    max_model_bytes: u64,
    /// Distinguishes concurrent temporary files written by this process.
    tmp_counter: AtomicU64,
    quota: Quota,
    /// Leases and reservations; its lock also serialises eviction.
    usage: Arc<Mutex<Usage>>,
}

impl ModelStore {
    /// Opens (creating if needed) the store in `dir`; models over `max_model_bytes` are refused.
    ///
    /// Temporary files left by an interrupted write are removed, and so are eviction markers
    /// whose model is gone. The quota is the default until [`ModelStore::with_quota`].
    pub fn open(dir: &Path, max_model_bytes: u64) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(|source| io(dir, source))?;
        let entries = fs::read_dir(dir).map_err(|source| io(dir, source))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let path = entry.path();
            let stray_marker = name
                .strip_suffix(CACHED_SUFFIX)
                .is_some_and(|hex| !dir.join(format!("{hex}{SUFFIX}")).exists());
            if (name.starts_with(TMP_PREFIX) || stray_marker)
                && let Err(e) = fs::remove_file(&path)
            {
                warn!(path = %path.display(), error = %e, "could not remove a leftover file in the model store");
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            max_model_bytes,
            tmp_counter: AtomicU64::new(0),
            quota: Quota::default(),
            usage: Arc::default(),
        })
    }

    /// The same store with this quota. Nothing is evicted until the next store or reservation.
    pub fn with_quota(mut self, quota: Quota) -> Self {
        self.quota = quota;
        self
    }

    /// How much the store may hold.
    pub fn quota(&self) -> Quota {
        self.quota
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

    /// Stores the owner's model under its blake3 hash, pinned (never evicted), and returns
    /// that id. Storing the same bytes again is a no-op, except that a model fetched earlier
    /// becomes pinned. Evictable models are evicted if the store is now over its quota.
    pub fn put(&self, bytes: &[u8]) -> Result<ModelId, StoreError> {
        self.check_size(bytes.len() as u64)?;
        let id = ModelId::of(bytes);
        self.write(&id, bytes)?;
        self.pin(&id)?;
        self.trim();
        Ok(id)
    }

    /// Stores the owner's model, pinned, only if its bytes hash to `expected`.
    pub fn put_verified(&self, expected: &ModelId, bytes: &[u8]) -> Result<(), StoreError> {
        self.check_size(bytes.len() as u64)?;
        verify_hash(expected, bytes)?;
        self.write(expected, bytes)?;
        self.pin(expected)?;
        self.trim();
        Ok(())
    }

    /// Stores a model fetched from a peer for a task, into the room `reservation` holds (drop
    /// it afterwards; trying several holders, keep it until one succeeds): only
    /// if its bytes hash to the reserved model's id, fit the room, and are structurally an
    /// ONNX model ([`check_onnx`]). It is evictable unless the owner already holds it.
    pub fn put_fetched(
        &self,
        reservation: &Reservation,
        bytes: &[u8],
    ) -> Result<(), FetchedModelError> {
        let id = reservation.model;
        let size = bytes.len() as u64;
        self.check_size(size)?;
        if size > reservation.bytes {
            return Err(StoreError::TooLarge {
                size,
                limit: reservation.bytes,
            }
            .into());
        }
        verify_hash(&id, bytes)?;
        check_onnx(bytes)?;
        if self.has(&id) {
            // Stored meanwhile (by the owner, or by another fetch): keep it as it is.
            return Ok(());
        }
        // The marker goes first: a crash between the two leaves a marker without a model
        // (removed at open), never a fetched model that looks like the owner's.
        let marker = self.marker_of(&id);
        let marked = File::create(&marker).and_then(|f| f.sync_all());
        if let Err(source) = marked {
            return Err(io(&marker, source).into());
        }
        if let Err(e) = self.write(&id, bytes) {
            let _ = fs::remove_file(&marker);
            return Err(e.into());
        }
        Ok(())
    }

    /// Holds room for a model of `size` bytes about to be fetched, evicting least recently
    /// used evictable models as needed. Refused, with nothing evicted, when even evicting
    /// every evictable model (not leased, not being fetched) would not make room.
    pub fn reserve(&self, model: &ModelId, size: u64) -> Result<Reservation, QuotaError> {
        let quota = self.quota;
        if size > quota.max_bytes {
            return Err(QuotaError::LargerThanQuota {
                size,
                quota: quota.max_bytes,
            });
        }
        let mut usage = lock_usage(&self.usage);
        let evicted = self.make_room(&mut usage, size, 1, Some(model))?;
        let key = usage.next;
        // A key only has to differ from the few reservations still open; a u64 counter
        // does not wrap in practice, and wrapping would still be correct.
        usage.next = usage.next.wrapping_add(1);
        usage.reserved.insert(key, (*model, size));
        Ok(Reservation {
            model: *model,
            bytes: size,
            key,
            evicted,
            usage: self.usage.clone(),
        })
    }

    /// Marks a model as in use (a run): it is not evicted while the lease is held. Counts as
    /// a use for the eviction order when the model is stored.
    pub fn lease(&self, id: &ModelId) -> ModelLease {
        let mut usage = lock_usage(&self.usage);
        let count = usage.in_use.entry(*id).or_default();
        // One per live lease: bounded by memory, so saturation is unreachable.
        *count = count.saturating_add(1);
        drop(usage);
        self.touch(id);
        ModelLease {
            model: *id,
            usage: self.usage.clone(),
        }
    }

    /// Records a use of a stored model (a run, or serving it to a peer) for the eviction
    /// order. Best effort: a model that cannot be touched just looks older.
    pub fn touch(&self, id: &ModelId) {
        self.touch_at(id, SystemTime::now());
    }

    fn touch_at(&self, id: &ModelId, when: SystemTime) {
        let path = self.path_of(id);
        let touched = File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(when));
        if let Err(e) = touched
            && e.kind() != std::io::ErrorKind::NotFound
        {
            debug!(model = %id, error = %e, "cannot record the model's last use");
        }
    }

    /// Whether a stored model is the owner's (never evicted). False when it is not stored.
    pub fn is_pinned(&self, id: &ModelId) -> bool {
        self.has(id) && !self.marker_of(id).exists()
    }

    /// Bytes and number of the stored models, pinned ones included.
    pub fn usage(&self) -> (u64, usize) {
        let stored = self.scan();
        (stored.iter().map(|s| s.bytes).sum(), stored.len())
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
        // The offset comes from a peer.
        let Some(rest) = total.checked_sub(offset) else {
            return Err(StoreError::OffsetOutOfRange {
                id: *id,
                offset,
                total,
            });
        };
        let len = rest.min(u64::from(max_len));
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
        let removed = match fs::remove_file(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(source) => return Err(io(&path, source)),
        };
        // The marker goes after the model (see the module docs).
        let marker = self.marker_of(id);
        match fs::remove_file(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(io(&marker, source)),
        }
        Ok(removed)
    }

    fn marker_of(&self, id: &ModelId) -> PathBuf {
        self.dir.join(format!("{}{CACHED_SUFFIX}", id.to_hex()))
    }

    /// Makes a stored model the owner's.
    fn pin(&self, id: &ModelId) -> Result<(), StoreError> {
        let marker = self.marker_of(id);
        match fs::remove_file(&marker) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(io(&marker, source)),
        }
    }

    /// The stored models with their size, last use and whether they may be evicted.
    fn scan(&self) -> Vec<Stored> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut models = Vec::new();
        let mut markers = HashSet::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(hex) = name.strip_suffix(CACHED_SUFFIX) {
                markers.insert(hex.to_string());
            } else if let Some(id) = name
                .strip_suffix(SUFFIX)
                .and_then(|hex| hex.parse::<ModelId>().ok())
                && let Ok(meta) = entry.metadata()
                && meta.is_file()
            {
                let last_used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                models.push((id, meta.len(), last_used));
            }
        }
        models
            .into_iter()
            .map(|(id, bytes, last_used)| Stored {
                cached: markers.contains(&id.to_hex()),
                id,
                bytes,
                last_used,
            })
            .collect()
    }

    /// Evicts least recently used evictable models until `size` more bytes and `models` more
    /// models fit the quota beside what is stored and reserved; `keep` is never evicted.
    /// Evicts nothing when that cannot be done.
    fn make_room(
        &self,
        usage: &mut Usage,
        size: u64,
        models: usize,
        keep: Option<&ModelId>,
    ) -> Result<Vec<ModelId>, QuotaError> {
        let quota = self.quota;
        let stored = self.scan();
        let reserved_ids: HashSet<ModelId> = usage.reserved.values().map(|(id, _)| *id).collect();
        let reserved_bytes: u64 = usage.reserved.values().map(|(_, b)| *b).sum();
        let used_bytes: u64 = stored.iter().map(|s| s.bytes).sum();
        let pinned: u64 = stored.iter().filter(|s| !s.cached).map(|s| s.bytes).sum();
        let mut candidates: Vec<&Stored> = stored
            .iter()
            .filter(|s| {
                s.cached
                    && Some(&s.id) != keep
                    && !usage.in_use.contains_key(&s.id)
                    && !reserved_ids.contains(&s.id)
            })
            .collect();
        candidates.sort_by_key(|s| (s.last_used, s.id.0));
        let freeable: u64 = candidates.iter().map(|s| s.bytes).sum();
        let need_bytes = used_bytes
            .saturating_add(reserved_bytes)
            .saturating_add(size)
            .saturating_sub(quota.max_bytes);
        let need_models = stored
            .len()
            .saturating_add(usage.reserved.len())
            .saturating_add(models)
            .saturating_sub(quota.max_models);
        let no_room = || QuotaError::NoRoom {
            size,
            available: quota
                .max_bytes
                .saturating_sub(used_bytes.saturating_add(reserved_bytes))
                .saturating_add(freeable),
            quota: quota.max_bytes,
            pinned,
            // Pinned and freeable models are disjoint parts of the stored ones.
            busy: used_bytes
                .saturating_sub(pinned)
                .saturating_sub(freeable)
                .saturating_add(reserved_bytes),
        };
        if need_bytes > freeable {
            return Err(no_room());
        }
        if need_models > candidates.len() {
            return Err(QuotaError::TooManyModels {
                limit: quota.max_models,
            });
        }
        let (mut freed, mut evicted) = (0u64, Vec::new());
        for victim in candidates {
            if freed >= need_bytes && evicted.len() >= need_models {
                break;
            }
            match self.remove(&victim.id) {
                Ok(_) => {
                    info!(model = %victim.id.short(), bytes = victim.bytes, "evicted the least recently used fetched model to make room");
                    freed = freed.saturating_add(victim.bytes);
                    evicted.push(victim.id);
                }
                Err(e) => warn!(model = %victim.id.short(), error = %e, "cannot evict a model"),
            }
        }
        if freed < need_bytes {
            return Err(no_room());
        }
        if evicted.len() < need_models {
            return Err(QuotaError::TooManyModels {
                limit: quota.max_models,
            });
        }
        Ok(evicted)
    }

    /// Evicts evictable models while the store is over its quota (after the owner added one).
    fn trim(&self) {
        let mut usage = lock_usage(&self.usage);
        if let Err(e) = self.make_room(&mut usage, 0, 0, None) {
            warn!(reason = %e, "the model store is over its quota and cannot evict enough");
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

fn verify_hash(expected: &ModelId, bytes: &[u8]) -> Result<(), StoreError> {
    let actual = ModelId::of(bytes);
    if actual != *expected {
        return Err(StoreError::HashMismatch {
            expected: *expected,
            actual,
        });
    }
    Ok(())
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

    /// The MLP from `models/` with one byte of its producer name changed: a different,
    /// still valid, ONNX model per `n`.
    fn variant(n: u8) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/digits-mlp.onnx");
        let mut bytes = fs::read(path).unwrap();
        let pos = bytes.windows(7).position(|w| w == b"skl2onn").unwrap();
        bytes[pos] = b'A' + n;
        bytes
    }

    fn fetch(s: &ModelStore, bytes: &[u8]) -> Result<ModelId, QuotaError> {
        let id = ModelId::of(bytes);
        let room = s.reserve(&id, bytes.len() as u64)?;
        s.put_fetched(&room, bytes).unwrap();
        Ok(id)
    }

    fn store_with(quota: Quota) -> (tempfile::TempDir, ModelStore) {
        let (d, s) = store(1 << 30);
        (d, s.with_quota(quota))
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn least_recently_used_fetched_models_are_evicted_and_pinned_ones_never() {
        let size = variant(0).len() as u64;
        let (_d, s) = store_with(Quota {
            max_bytes: 3 * size + 10,
            max_models: 10,
        });
        let pinned = s.put(&variant(0)).unwrap();
        let a = fetch(&s, &variant(1)).unwrap();
        let b = fetch(&s, &variant(2)).unwrap();
        assert!(s.is_pinned(&pinned) && !s.is_pinned(&a) && !s.is_pinned(&b));
        // The pinned model is the oldest of all; `a` was used after `b`.
        s.touch_at(&pinned, at(0));
        s.touch_at(&b, at(5));
        s.touch_at(&a, at(10));
        let c = ModelId::of(&variant(3));
        let room = s.reserve(&c, size).unwrap();
        assert_eq!(room.evicted(), &[b]);
        s.put_fetched(&room, &variant(3)).unwrap();
        drop(room);
        assert!(s.has(&pinned) && s.has(&a) && s.has(&c) && !s.has(&b));
        // No marker is left behind for the evicted model.
        assert!(!s.marker_of(&b).exists());
        // Next, `a` is the least recently used fetched model.
        s.touch_at(&c, at(20));
        let d = fetch(&s, &variant(4)).unwrap();
        assert!(s.has(&pinned) && s.has(&c) && s.has(&d) && !s.has(&a));
        let (bytes, models) = s.usage();
        assert_eq!((bytes, models), (3 * size, 3));
    }

    #[test]
    fn the_count_limit_evicts_too() {
        let (_d, s) = store_with(Quota {
            max_bytes: 1 << 30,
            max_models: 2,
        });
        let pinned = s.put(&variant(0)).unwrap();
        let a = fetch(&s, &variant(1)).unwrap();
        let b = fetch(&s, &variant(2)).unwrap();
        assert_eq!(s.list().len(), 2);
        assert!(s.has(&pinned) && s.has(&b) && !s.has(&a));
        // With every slot pinned, a fetch is refused.
        s.put(&variant(3)).unwrap();
        assert!(
            !s.has(&b),
            "the owner's model evicts fetched ones over the limit"
        );
        assert!(matches!(
            fetch(&s, &variant(4)),
            Err(QuotaError::TooManyModels { limit: 2 })
        ));
        assert!(s.has(&pinned));
    }

    #[test]
    fn models_in_use_or_being_fetched_are_not_evicted_and_refusals_evict_nothing() {
        let size = variant(0).len() as u64;
        let (_d, s) = store_with(Quota {
            max_bytes: 2 * size,
            max_models: 10,
        });
        let pinned = s.put(&variant(0)).unwrap();
        let a = fetch(&s, &variant(1)).unwrap();
        let lease = s.lease(&a);
        let b = ModelId::of(&variant(2));
        match s.reserve(&b, size) {
            Err(QuotaError::NoRoom {
                size: got,
                available,
                pinned: p,
                busy,
                ..
            }) => {
                assert_eq!((got, available, p, busy), (size, 0, size, size));
            }
            other => panic!("expected no room, got {other:?}"),
        }
        assert!(s.has(&a) && s.has(&pinned));
        drop(lease);
        let room = s.reserve(&b, size).unwrap();
        assert_eq!(room.evicted(), &[a]);
        // Room held by a fetch in progress is not given to another.
        let c = ModelId::of(&variant(3));
        let e = s.reserve(&c, size).unwrap_err();
        assert!(e.to_string().contains("being fetched"), "{e}");
        drop(room);
        let room = s.reserve(&c, size).unwrap();
        assert_eq!(room.bytes(), size);
    }

    #[test]
    fn a_model_larger_than_the_quota_is_refused_before_anything_happens() {
        let (_d, s) = store_with(Quota {
            max_bytes: 1000,
            max_models: 10,
        });
        let e = s.reserve(&ModelId([1; 32]), 1001).unwrap_err();
        assert_eq!(
            e,
            QuotaError::LargerThanQuota {
                size: 1001,
                quota: 1000
            }
        );
        assert!(e.to_string().contains("1001"), "{e}");
    }

    #[test]
    fn fetched_blobs_that_are_not_onnx_or_not_what_was_asked_are_not_stored() {
        let (d, s) = store(1 << 20);
        let garbage: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let id = ModelId::of(&garbage);
        let room = s.reserve(&id, garbage.len() as u64).unwrap();
        assert!(matches!(
            s.put_fetched(&room, &garbage),
            Err(FetchedModelError::NotOnnx(_))
        ));
        drop(room);
        let wrong = ModelId::of(&variant(1));
        let room = s.reserve(&wrong, 1 << 20).unwrap();
        assert!(matches!(
            s.put_fetched(&room, &variant(2)),
            Err(FetchedModelError::Store(StoreError::HashMismatch { .. }))
        ));
        drop(room);
        // More bytes than the room held.
        let real = variant(3);
        let room = s.reserve(&ModelId::of(&real), 100).unwrap();
        assert!(matches!(
            s.put_fetched(&room, &real),
            Err(FetchedModelError::Store(StoreError::TooLarge { .. }))
        ));
        assert_eq!(lock_usage(&s.usage).reserved.len(), 1);
        drop(room);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0, "files left");
        // Dropped reservations give their room back.
        assert!(lock_usage(&s.usage).reserved.is_empty());
    }

    #[test]
    fn the_owner_pins_a_fetched_model_and_pins_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let s = ModelStore::open(dir.path(), 1 << 20).unwrap();
        let a = fetch(&s, &variant(1)).unwrap();
        let b = fetch(&s, &variant(2)).unwrap();
        assert_eq!(s.put(&variant(2)).unwrap(), b);
        drop(s);
        // A marker whose model is gone (a crash mid-eviction) is cleaned up.
        let stray = dir
            .path()
            .join(format!("{}{CACHED_SUFFIX}", ModelId([9; 32]).to_hex()));
        fs::write(&stray, b"").unwrap();
        let s = ModelStore::open(dir.path(), 1 << 20).unwrap();
        assert!(!stray.exists());
        assert!(!s.is_pinned(&a) && s.is_pinned(&b));
        assert!(s.remove(&a).unwrap());
        assert!(!s.marker_of(&a).exists());
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
