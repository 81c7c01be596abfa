//! Account credentials kept in memory in front of the database, so that a
//! returning user's login reads nothing from storage (with the roster cache
//! and the offline hint). Only accounts that exist are cached; every write
//! through this store drops the account's entry, and everything is dropped
//! when another process (the admin CLI) changed accounts: see
//! `super::watch_external_changes`. A cluster (roadmap) must add cross-node
//! invalidation here.

use super::guarded_map::GuardedMap;
use super::{AccountCredentials, AccountStore, CacheEpoch, Result};
use async_trait::async_trait;
use std::sync::Arc;

pub struct CachedAccounts {
    inner: Arc<dyn AccountStore>,
    entries: GuardedMap<Arc<AccountCredentials>>,
}

impl CachedAccounts {
    pub fn new(inner: Arc<dyn AccountStore>) -> Self {
        CachedAccounts {
            inner,
            entries: GuardedMap::default(),
        }
    }

    fn invalidate(&self, jid: &str) {
        self.entries.invalidate(jid);
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
        if let Some(c) = self.entries.get(jid) {
            return Ok(Some((*c).clone()));
        }
        let ticket = self.entries.ticket();
        let loaded = self.inner.credentials(jid).await?;
        if let Some(c) = &loaded {
            self.entries.insert(ticket, jid, Arc::new(c.clone()));
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
        if self.entries.contains(jid) {
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
        self.entries.clear();
    }
}
