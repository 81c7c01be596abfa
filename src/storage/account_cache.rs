//! Account credentials kept in memory in front of the database, so that a
//! returning user's login reads nothing from storage (with the roster cache
//! and the offline hint). Only accounts that exist are cached; every write
//! through this store drops the account's entry, and everything is dropped
//! when another process (the admin CLI) changed accounts: see
//! `super::watch_external_changes`. A cluster (roadmap) must add cross-node
//! invalidation here.

use super::{AccountCredentials, AccountStore, CacheEpoch, Result};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Accounts cached at most; beyond it the cache starts over.
const MAX_ENTRIES: usize = 100_000;

pub struct CachedAccounts {
    inner: Arc<dyn AccountStore>,
    entries: Mutex<HashMap<String, Arc<AccountCredentials>>>,
    /// Bumped by every write: a read that overlapped a write is not cached.
    writes: AtomicU64,
}

impl CachedAccounts {
    pub fn new(inner: Arc<dyn AccountStore>) -> Self {
        CachedAccounts {
            inner,
            entries: Mutex::new(HashMap::new()),
            writes: AtomicU64::new(0),
        }
    }

    fn invalidate(&self, jid: &str) {
        let mut entries = self.entries.lock().unwrap();
        self.writes.fetch_add(1, Ordering::AcqRel);
        entries.remove(jid);
    }
}

#[async_trait]
impl AccountStore for CachedAccounts {
    async fn create_account(&self, jid: &str, creds: &AccountCredentials) -> Result<bool> {
        let r = self.inner.create_account(jid, creds).await;
        self.invalidate(jid);
        r
    }

    async fn credentials(&self, jid: &str) -> Result<Option<AccountCredentials>> {
        if let Some(c) = self.entries.lock().unwrap().get(jid) {
            return Ok(Some((**c).clone()));
        }
        let before = self.writes.load(Ordering::Acquire);
        let loaded = self.inner.credentials(jid).await?;
        if let Some(c) = &loaded {
            let mut entries = self.entries.lock().unwrap();
            if self.writes.load(Ordering::Acquire) == before {
                if entries.len() >= MAX_ENTRIES {
                    entries.clear();
                }
                entries.insert(jid.to_string(), Arc::new(c.clone()));
            }
        }
        Ok(loaded)
    }

    async fn set_credentials(&self, jid: &str, creds: &AccountCredentials) -> Result<bool> {
        let r = self.inner.set_credentials(jid, creds).await;
        self.invalidate(jid);
        r
    }

    async fn delete_account(&self, jid: &str) -> Result<bool> {
        let r = self.inner.delete_account(jid).await;
        self.invalidate(jid);
        r
    }

    async fn list_accounts(&self, domain: Option<&str>) -> Result<Vec<String>> {
        self.inner.list_accounts(domain).await
    }

    async fn account_exists(&self, jid: &str) -> Result<bool> {
        if self.entries.lock().unwrap().contains_key(jid) {
            return Ok(true);
        }
        self.inner.account_exists(jid).await
    }

    async fn cache_epoch(&self) -> Result<CacheEpoch> {
        self.inner.cache_epoch().await
    }

    async fn bump_cache_epoch(&self) -> Result<i64> {
        self.inner.bump_cache_epoch().await
    }

    async fn confirm_cache_epoch(&self, seen: i64, now: i64) -> Result<()> {
        self.inner.confirm_cache_epoch(seen, now).await
    }

    fn forget_all(&self) {
        let mut entries = self.entries.lock().unwrap();
        self.writes.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }
}
