//! A bounded least-recently-used cache of loaded models, one slot per content id.
//!
//! Each slot is filled at most once: when several workers ask for the same model at the same
//! time, one loads it and the others wait for that result instead of parsing it again. A
//! deterministic failure (an invalid model) stays cached so a bad file is not re-parsed for
//! every job; a failure that may pass (the model is not stored yet, a disk error) is forgotten.
//! Evicting an entry never disturbs a run in progress: runs hold their own `Arc`.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, OnceLock};

use crank_protocol::ModelId;
use lru::LruCache;

use crate::error::InferenceError;

type Slot<T> = Arc<OnceLock<Result<Arc<T>, InferenceError>>>;

/// Loaded values by model id, at most `capacity` of them.
pub(crate) struct PlanCache<T> {
    entries: Mutex<LruCache<ModelId, Slot<T>>>,
}

impl<T> PlanCache<T> {
    /// A cache holding up to `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            entries: Mutex::new(LruCache::new(cap)),
        }
    }

    /// The cached value for `id`, loading it with `load` on a miss.
    pub fn get_or_load(
        &self,
        id: &ModelId,
        load: impl FnOnce() -> Result<T, InferenceError>,
    ) -> Result<Arc<T>, InferenceError> {
        let slot = {
            let mut entries = self.lock();
            match entries.get(id) {
                Some(s) => s.clone(),
                None => {
                    let s: Slot<T> = Arc::new(OnceLock::new());
                    entries.put(*id, s.clone());
                    s
                }
            }
        };
        let result = slot.get_or_init(|| load().map(Arc::new)).clone();
        if let Err(e) = &result
            && !is_permanent(e)
        {
            let mut entries = self.lock();
            if entries.peek(id).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                entries.pop(id);
            }
        }
        result
    }

    /// The cached value for `id` if it is loaded, without loading or touching recency.
    pub fn peek(&self, id: &ModelId) -> Option<Arc<T>> {
        let entries = self.lock();
        entries.peek(id)?.get()?.as_ref().ok().cloned()
    }

    /// Ids currently cached, most recently used first.
    pub fn ids(&self) -> Vec<ModelId> {
        self.lock().iter().map(|(id, _)| *id).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<ModelId, Slot<T>>> {
        // A panic while holding this lock cannot leave the LRU half-updated in a way that
        // matters (the worst case is a missing entry), so recover from poisoning.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Failures that the same bytes will always produce.
fn is_permanent(e: &InferenceError) -> bool {
    matches!(
        e,
        InferenceError::ModelInvalid(_)
            | InferenceError::UnsupportedOperator { .. }
            | InferenceError::ModelTooLarge { .. }
            // The same bytes under the same runner limit ask for the same memory.
            | InferenceError::MemoryExhausted { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn id(n: u8) -> ModelId {
        ModelId([n; 32])
    }

    #[test]
    fn least_recently_used_is_evicted() {
        let cache = PlanCache::new(2);
        let loads = AtomicUsize::new(0);
        let get = |n: u8| {
            cache
                .get_or_load(&id(n), || {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok(format!("model {n}"))
                })
                .unwrap()
        };
        assert_eq!(*get(1), "model 1");
        get(2);
        get(1); // 1 is now the most recent
        get(3); // evicts 2
        assert_eq!(loads.load(Ordering::SeqCst), 3);
        assert_eq!(cache.ids(), vec![id(3), id(1)]);
        get(1);
        assert_eq!(loads.load(Ordering::SeqCst), 3, "1 stayed cached");
        get(2);
        assert_eq!(loads.load(Ordering::SeqCst), 4, "2 was reloaded");
    }

    #[test]
    fn evicted_values_live_on_while_held() {
        let cache = PlanCache::new(1);
        let a = cache.get_or_load(&id(1), || Ok(vec![1u8; 10])).unwrap();
        cache.get_or_load(&id(2), || Ok(vec![2u8; 10])).unwrap();
        assert!(cache.peek(&id(1)).is_none());
        assert_eq!(a.len(), 10);
    }

    #[test]
    fn permanent_errors_are_cached_and_transient_ones_retried() {
        let cache: PlanCache<u32> = PlanCache::new(4);
        let calls = AtomicUsize::new(0);
        for _ in 0..3 {
            let e = cache.get_or_load(&id(1), || {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(InferenceError::ModelInvalid("bad".into()))
            });
            assert!(e.is_err());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let e = cache.get_or_load(&id(2), || Err(InferenceError::ModelNotFound(id(2))));
        assert!(e.is_err());
        assert_eq!(*cache.get_or_load(&id(2), || Ok(7)).unwrap(), 7);
    }

    #[test]
    fn concurrent_misses_load_once() {
        let cache = Arc::new(PlanCache::new(4));
        let loads = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let cache = cache.clone();
                let loads = loads.clone();
                std::thread::spawn(move || {
                    cache
                        .get_or_load(&id(9), || {
                            loads.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            Ok(42u64)
                        })
                        .unwrap()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(*t.join().unwrap(), 42);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }
}
