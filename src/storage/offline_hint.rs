//! Which accounts are known to have no offline messages, so that the common
//! login (nothing waiting) does not ask the database. An account is marked
//! when a read from the start of its messages found none, unless a message
//! was stored meanwhile (any store bumps a counter, checked around the read);
//! storing a message unmarks the account before and after the row is
//! written. Only
//! this process stores offline messages; a cluster (roadmap) must share the
//! hint or drop it.

use super::{OfflineStore, Result};
use async_trait::async_trait;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Accounts remembered at most; beyond it the set starts over.
const MAX_ENTRIES: usize = 100_000;

pub struct HintedOffline {
    inner: Arc<dyn OfflineStore>,
    empty: Mutex<HashSet<String>>,
    stores: AtomicU64,
}

impl HintedOffline {
    pub fn new(inner: Arc<dyn OfflineStore>) -> Self {
        HintedOffline {
            inner,
            empty: Mutex::new(HashSet::new()),
            stores: AtomicU64::new(0),
        }
    }
}

impl HintedOffline {
    fn unmark(&self, owner: &str) {
        let mut empty = self.empty.lock().unwrap();
        self.stores.fetch_add(1, Ordering::AcqRel);
        empty.remove(owner);
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
        if after == 0 && self.empty.lock().unwrap().contains(owner) {
            return Ok(Vec::new());
        }
        let before = self.stores.load(Ordering::Acquire);
        let found = self.inner.offline_messages(owner, after, limit).await?;
        if after == 0 && found.is_empty() {
            let mut empty = self.empty.lock().unwrap();
            if self.stores.load(Ordering::Acquire) == before {
                if empty.len() >= MAX_ENTRIES {
                    empty.clear();
                }
                empty.insert(owner.to_string());
            }
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
        self.empty.lock().unwrap().clear();
    }
}
