//! Which accounts are known to have no offline messages, so that the common
//! login (nothing waiting) does not ask the database. An account is marked
//! when a read from the start of its messages found none, unless a message
//! was stored meanwhile (any store bumps a counter, checked around the read);
//! storing a message unmarks the account before and after the row is
//! written. Only
//! this process stores offline messages; a cluster (roadmap) must share the
//! hint or drop it.

use super::guarded_map::GuardedMap;
use super::{OfflineStore, Result};
use async_trait::async_trait;
use std::sync::Arc;

pub struct HintedOffline {
    inner: Arc<dyn OfflineStore>,
    /// Accounts known to have nothing stored; every store is a write.
    empty: GuardedMap<()>,
}

impl HintedOffline {
    pub fn new(inner: Arc<dyn OfflineStore>) -> Self {
        HintedOffline {
            inner,
            empty: GuardedMap::default(),
        }
    }

    fn unmark(&self, owner: &str) {
        self.empty.invalidate(owner);
    }
}

#[async_trait]
impl OfflineStore for HintedOffline {
    async fn store_offline(&self, owner: &str, stanza: &str, max: usize) -> Result<bool> {
        // Unmarked before the write and again once it is committed, so a read
        // that overlapped the write (and may not have seen the row) marks nothing.
        self.unmark(owner);
        let r = self.inner.store_offline(owner, stanza, max).await;
        self.unmark(owner);
        r
    }

    async fn offline_messages(
        &self,
        owner: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String)>> {
        if after == 0 && self.empty.contains(owner) {
            return Ok(Vec::new());
        }
        let ticket = self.empty.ticket();
        let found = self.inner.offline_messages(owner, after, limit).await?;
        if after == 0 && found.is_empty() {
            self.empty.insert(ticket, owner, ());
        }
        Ok(found)
    }

    async fn delete_offline(&self, owner: &str, upto: i64) -> Result<()> {
        self.inner.delete_offline(owner, upto).await
    }

    async fn expire_offline(&self, before: i64) -> Result<u64> {
        self.inner.expire_offline(before).await
    }

    fn forget_all(&self) {
        self.empty.clear();
    }
}
