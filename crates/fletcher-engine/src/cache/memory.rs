//! The in-process tier: a concurrent map bounded in bytes, evicting by
//! TinyLFU so that a scan of texts seen once does not push out the texts
//! that keep coming back.

use std::sync::Arc;

use super::CacheKey;

/// Bytes charged to every entry besides its key and its vector: the map's
/// node, the eviction policy's bookkeeping and the frequency sketch's share.
///
/// The cache's test `per_entry_overhead_is_covered` measures the heap bytes
/// the memory tier allocates per entry (beyond the vector itself) and checks
/// that this figure covers them.
pub const ENTRY_OVERHEAD_BYTES: u64 = 256;

/// Bytes charged for an entry holding `components` floats: the key, the
/// vector with its reference counts, and [`ENTRY_OVERHEAD_BYTES`].
pub fn entry_weight(components: usize) -> u64 {
    let key = std::mem::size_of::<CacheKey>() as u64;
    let vector = 2 * std::mem::size_of::<usize>() as u64
        + (components as u64).saturating_mul(std::mem::size_of::<f32>() as u64);
    key.saturating_add(vector)
        .saturating_add(ENTRY_OVERHEAD_BYTES)
}

/// The memory tier. Its byte and entry counts are exact after
/// [`MemoryTier::settle`].
pub(super) struct MemoryTier {
    map: moka::sync::Cache<CacheKey, Arc<[f32]>>,
    capacity: u64,
}

impl MemoryTier {
    /// A tier holding at most `capacity` bytes as [`entry_weight`] counts
    /// them.
    pub fn new(capacity: u64) -> Self {
        let map = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .weigher(|_key: &CacheKey, vector: &Arc<[f32]>| {
                u32::try_from(entry_weight(vector.len())).unwrap_or(u32::MAX)
            })
            .build();
        Self { map, capacity }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<[f32]>> {
        self.map.get(key)
    }

    pub fn insert(&self, key: CacheKey, vector: Arc<[f32]>) {
        self.map.insert(key, vector);
    }

    /// Applies pending admissions and evictions, then returns the bytes and
    /// entries held.
    pub fn settle(&self) -> (u64, u64) {
        self.map.run_pending_tasks();
        (self.map.weighted_size(), self.map.entry_count())
    }

    /// Bytes held as of the last maintenance.
    pub fn bytes(&self) -> u64 {
        self.map.weighted_size()
    }

    /// Entries held as of the last maintenance.
    pub fn entries(&self) -> u64 {
        self.map.entry_count()
    }

    /// Every entry's key and weight, for checks that must not trust the
    /// tier's own counters.
    #[cfg(test)]
    pub fn weights(&self) -> Vec<(CacheKey, u64)> {
        self.map
            .iter()
            .map(|(key, vector)| (*key, entry_weight(vector.len())))
            .collect()
    }
}

impl std::fmt::Debug for MemoryTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTier")
            .field("capacity", &self.capacity)
            .field("bytes", &self.bytes())
            .field("entries", &self.entries())
            .finish()
    }
}
