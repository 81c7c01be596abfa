//! Rosters kept in memory in front of the database: a login reads the roster
//! for the presence broadcast and reads it again at logout, and probes look
//! up single items; with the cache the database is asked once per account
//! until the roster changes. Every roster write goes through this store and
//! drops the owner's entry.
//!
//! Entries are dropped when an account is removed, and all of them when
//! another process (the admin CLI) changed accounts: see
//! `super::watch_external_changes`. A cluster (roadmap) must add cross-node
//! invalidation here.

use super::{Result, RosterItem, RosterStore};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Accounts cached at most; beyond it the cache starts over.
const MAX_ENTRIES: usize = 100_000;

/// A roster as the database returned it: (version, items).
type Roster = Arc<(i64, Vec<RosterItem>)>;

pub struct CachedRoster {
    inner: Arc<dyn RosterStore>,
    entries: Mutex<HashMap<String, Roster>>,
    /// Bumped by every write: a read that overlapped a write is not cached
    /// (it may have seen the rows before the write).
    writes: AtomicU64,
}

impl CachedRoster {
    pub fn new(inner: Arc<dyn RosterStore>) -> Self {
        CachedRoster {
            inner,
            entries: Mutex::new(HashMap::new()),
            writes: AtomicU64::new(0),
        }
    }

    async fn load(&self, owner: &str) -> Result<Roster> {
        if let Some(e) = self.entries.lock().unwrap().get(owner) {
            return Ok(e.clone());
        }
        let before = self.writes.load(Ordering::Acquire);
        let loaded = Arc::new(self.inner.roster(owner).await?);
        let mut entries = self.entries.lock().unwrap();
        if self.writes.load(Ordering::Acquire) == before {
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
            entries.insert(owner.to_string(), loaded.clone());
        }
        Ok(loaded)
    }

    fn invalidate(&self, owner: &str) {
        let mut entries = self.entries.lock().unwrap();
        self.writes.fetch_add(1, Ordering::AcqRel);
        entries.remove(owner);
    }
}

#[async_trait]
impl RosterStore for CachedRoster {
    async fn roster(&self, owner: &str) -> Result<(i64, Vec<RosterItem>)> {
        let e = self.load(owner).await?;
        Ok((e.0, e.1.clone()))
    }

    async fn roster_item(&self, owner: &str, contact: &str) -> Result<Option<RosterItem>> {
        let e = self.load(owner).await?;
        Ok(e.1.iter().find(|i| i.contact == contact).cloned())
    }

    async fn put_roster_item(&self, owner: &str, item: &RosterItem) -> Result<i64> {
        let r = self.inner.put_roster_item(owner, item).await;
        self.invalidate(owner);
        r
    }

    async fn delete_roster_item(&self, owner: &str, contact: &str) -> Result<i64> {
        let r = self.inner.delete_roster_item(owner, contact).await;
        self.invalidate(owner);
        r
    }

    async fn roster_version(&self, owner: &str) -> Result<i64> {
        Ok(self.load(owner).await?.0)
    }

    fn forget(&self, owner: &str) {
        self.invalidate(owner);
    }

    fn forget_all(&self) {
        let mut entries = self.entries.lock().unwrap();
        self.writes.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }
}
