//! What the storage caches (credentials, rosters, the offline hint) share: a
//! bounded map from account to value, and a write counter that keeps a
//! database read which overlapped a write out of the map (that read may have
//! seen the rows as they were before the write).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Accounts kept at most; beyond it the map starts over.
const MAX_ENTRIES: usize = 100_000;

/// Taken before a database read: its result goes into the map only if no
/// write came in between.
#[derive(Debug, Clone, Copy)]
pub struct ReadTicket(u64);

pub struct GuardedMap<V> {
    entries: Mutex<HashMap<String, V>>,
    writes: AtomicU64,
}

impl<V: Clone> Default for GuardedMap<V> {
    fn default() -> Self {
        GuardedMap {
            entries: Mutex::new(HashMap::new()),
            writes: AtomicU64::new(0),
        }
    }
}

impl<V: Clone> GuardedMap<V> {
    pub fn get(&self, key: &str) -> Option<V> {
        self.entries.lock().unwrap().get(key).cloned()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.lock().unwrap().contains_key(key)
    }

    /// Take before reading what `insert` would store.
    pub fn ticket(&self) -> ReadTicket {
        ReadTicket(self.writes.load(Ordering::Acquire))
    }

    /// Store what a read returned, unless a write came in since its ticket.
    pub fn insert(&self, ticket: ReadTicket, key: &str, value: V) {
        let mut entries = self.entries.lock().unwrap();
        if self.writes.load(Ordering::Acquire) != ticket.0 {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(key.to_string(), value);
    }

    /// `key` was written: drop it, and keep reads in flight out of the map.
    pub fn invalidate(&self, key: &str) {
        let mut entries = self.entries.lock().unwrap();
        self.writes.fetch_add(1, Ordering::AcqRel);
        entries.remove(key);
    }

    /// Everything may have changed (another process wrote).
    pub fn clear(&self) {
        let mut entries = self.entries.lock().unwrap();
        self.writes.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_overlapped_a_write_is_not_kept() {
        let m: GuardedMap<u32> = GuardedMap::default();
        let t = m.ticket();
        m.invalidate("a"); // a write lands while the read runs
        m.insert(t, "a", 1);
        assert_eq!(m.get("a"), None);
        let t = m.ticket();
        m.insert(t, "a", 2);
        assert_eq!(m.get("a"), Some(2));
        assert!(m.contains("a"));
        let t = m.ticket();
        m.clear();
        m.insert(t, "b", 3);
        assert!(!m.contains("a") && !m.contains("b"));
    }
}
