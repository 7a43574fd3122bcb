//! A small per-process map whose entries expire: what this instance read from the database
//! recently, for rows that are read on every request and rarely written (a user's token state,
//! a facility's geofence). Writes in this process remove their entries at once; other instances
//! see a change within the time to live.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct TtlMap<K, V> {
    entries: RwLock<HashMap<K, (V, Instant)>>,
    ttl: Duration,
    /// Past this many entries, the expired ones are dropped before the next insert.
    soft_limit: usize,
    /// Counts removals, so that a value read from the database before a removal is not stored
    /// after it (see `insert_since`).
    generation: AtomicU64,
}

impl<K: Eq + Hash, V: Clone> TtlMap<K, V> {
    pub fn new(ttl: Duration, soft_limit: usize) -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            ttl,
            soft_limit,
            generation: AtomicU64::new(0),
        }
    }

    /// Taken before reading a value from the database, for `insert_since`.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Stores a value read after `generation` was taken, unless an entry was removed since: a
    /// write in this process may have committed after the read and removed its entry before
    /// this store, which would otherwise bring the old value back for the time to live.
    pub fn insert_since(&self, key: K, value: V, generation: u64) {
        let mut entries = self.entries.write().expect("lock");
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.len() >= self.soft_limit {
            entries.retain(|_, (_, at)| at.elapsed() < self.ttl);
        }
        entries.insert(key, (value, Instant::now()));
    }

    /// The value, if it was stored less than the time to live ago.
    pub fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.read().expect("lock");
        let (value, at) = entries.get(key)?;
        (at.elapsed() < self.ttl).then(|| value.clone())
    }

    pub fn remove(&self, key: &K) {
        let mut entries = self.entries.write().expect("lock");
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.remove(key);
    }

    pub fn clear(&self) {
        let mut entries = self.entries.write().expect("lock");
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_read_before_a_removal_is_not_stored_after_it() {
        let map = TtlMap::new(Duration::from_secs(30), 10);
        map.insert_since(1, "active", map.generation());
        let before = map.generation();
        // The read of key 1 began; meanwhile a write removed it (or any other key).
        map.remove(&1);
        map.insert_since(1, "active", before);
        assert_eq!(map.get(&1), None, "the stale value stayed out");
        let now = map.generation();
        map.insert_since(1, "inactive", now);
        assert_eq!(map.get(&1), Some("inactive"));
        let before = map.generation();
        map.clear();
        map.insert_since(2, "stale", before);
        assert_eq!(map.get(&2), None);
    }

    #[test]
    fn entries_expire_and_can_be_removed() {
        let map = TtlMap::new(Duration::from_secs(60), 10);
        map.insert_since(1, "a", map.generation());
        assert_eq!(map.get(&1), Some("a"));
        map.remove(&1);
        assert_eq!(map.get(&1), None);
        map.insert_since(3, "c", map.generation());
        map.clear();
        assert_eq!(map.get(&3), None);
        let brief = TtlMap::new(Duration::from_millis(50), 10);
        brief.insert_since(2, "b", brief.generation());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(brief.get(&2), None, "an expired entry is not returned");
    }

    #[test]
    fn a_full_map_drops_expired_entries_before_growing() {
        let map = TtlMap::new(Duration::from_millis(20), 2);
        map.insert_since(1, 1, map.generation());
        map.insert_since(2, 2, map.generation());
        std::thread::sleep(Duration::from_millis(30));
        map.insert_since(3, 3, map.generation());
        assert_eq!(map.entries.read().unwrap().len(), 1);
    }
}
