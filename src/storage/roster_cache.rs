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

use super::guarded_map::GuardedMap;
use super::{Result, RosterItem, RosterStore};
use async_trait::async_trait;
use std::sync::Arc;

/// A roster as the database returned it: (version, items).
type Roster = Arc<(i64, Vec<RosterItem>)>;

pub struct CachedRoster {
    inner: Arc<dyn RosterStore>,
    entries: GuardedMap<Roster>,
}

impl CachedRoster {
    pub fn new(inner: Arc<dyn RosterStore>) -> Self {
        CachedRoster {
            inner,
            entries: GuardedMap::default(),
        }
    }

    async fn load(&self, owner: &str) -> Result<Roster> {
        if let Some(e) = self.entries.get(owner) {
            return Ok(e);
        }
        let ticket = self.entries.ticket();
        let loaded = Arc::new(self.inner.roster(owner).await?);
        self.entries.insert(ticket, owner, loaded.clone());
        Ok(loaded)
    }

    fn invalidate(&self, owner: &str) {
        self.entries.invalidate(owner);
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
        self.entries.clear();
    }
}
