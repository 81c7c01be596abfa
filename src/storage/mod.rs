//! Storage behind one trait per concern. `sql::SqlStore` implements them all on
//! SQLite (embedded default) and PostgreSQL; tests run the same cases on both.

mod account_cache;
pub mod group_commit;
mod guarded_map;
mod last_writer;
pub mod migrate;
mod offline_hint;
mod roster_cache;
pub mod sql;

use crate::sasl::ScramCredentials;
use async_trait::async_trait;
use std::sync::Arc;

pub type Result<T> = std::result::Result<T, StorageError>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Other(String),
}

/// See migration 0011.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheEpoch {
    pub epoch: i64,
    /// The epoch a running server has applied.
    pub seen: i64,
    /// When a running server last confirmed it is alive (unix seconds).
    pub seen_at: i64,
}

/// SCRAM keys for both hashes we offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountCredentials {
    pub sha1: ScramCredentials,
    pub sha256: ScramCredentials,
}

impl AccountCredentials {
    pub fn from_password(password: &str) -> Self {
        use crate::sasl::HashAlg;
        AccountCredentials {
            sha1: ScramCredentials::new_random(HashAlg::Sha1, password),
            sha256: ScramCredentials::new_random(HashAlg::Sha256, password),
        }
    }
}

#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Create an account; `false` if it already exists.
    async fn create_account(&self, jid: &str, creds: &AccountCredentials) -> Result<bool>;
    async fn credentials(&self, jid: &str) -> Result<Option<AccountCredentials>>;
    /// Replace credentials; `false` if there is no such account.
    async fn set_credentials(&self, jid: &str, creds: &AccountCredentials) -> Result<bool>;
    /// Delete an account and everything it owns; `false` if there was none.
    async fn delete_account(&self, jid: &str) -> Result<bool>;
    async fn list_accounts(&self, domain: Option<&str>) -> Result<Vec<String>>;
    async fn account_exists(&self, jid: &str) -> Result<bool> {
        Ok(self.credentials(jid).await?.is_some())
    }
    /// The external-change counter and the server's acknowledgement of it
    /// (see migration 0011).
    async fn cache_epoch(&self) -> Result<CacheEpoch>;
    /// Tell a running server that accounts changed behind its back; returns
    /// the new epoch.
    async fn bump_cache_epoch(&self) -> Result<i64>;
    /// The server has applied `seen` (and is alive at `now`, unix seconds).
    async fn confirm_cache_epoch(&self, seen: i64, now: i64) -> Result<()>;
    /// Drop whatever is cached about every account.
    fn forget_all(&self) {}
}

/// RFC 6121 subscription states as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription {
    None,
    To,
    From,
    Both,
}

impl Subscription {
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }
    pub fn parse(s: &str) -> Subscription {
        match s {
            "to" => Subscription::To,
            "from" => Subscription::From,
            "both" => Subscription::Both,
            _ => Subscription::None,
        }
    }
    /// The contact receives the user's presence.
    pub fn has_from(self) -> bool {
        matches!(self, Subscription::From | Subscription::Both)
    }
    /// The user receives the contact's presence.
    pub fn has_to(self) -> bool {
        matches!(self, Subscription::To | Subscription::Both)
    }
    pub fn with_from(self, on: bool) -> Subscription {
        Self::from_flags(self.has_to(), on)
    }
    pub fn with_to(self, on: bool) -> Subscription {
        Self::from_flags(on, self.has_from())
    }
    fn from_flags(to: bool, from: bool) -> Subscription {
        match (to, from) {
            (true, true) => Subscription::Both,
            (true, false) => Subscription::To,
            (false, true) => Subscription::From,
            (false, false) => Subscription::None,
        }
    }
}

/// One roster row: the visible item plus the hidden subscription state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterItem {
    pub contact: String,
    pub name: Option<String>,
    pub subscription: Subscription,
    /// Outbound subscription request pending ("ask='subscribe'").
    pub ask: bool,
    /// Inbound subscription request waiting for the user's answer.
    pub pending_in: bool,
    pub pending_in_status: Option<String>,
    /// Subscription pre-approved by the user (RFC 6121 §3.4).
    pub approved: bool,
    /// Shown in roster results (a bare pending-in request is not).
    pub in_roster: bool,
    pub groups: Vec<String>,
}

impl RosterItem {
    pub fn new(contact: &str) -> Self {
        RosterItem {
            contact: contact.to_string(),
            name: None,
            subscription: Subscription::None,
            ask: false,
            pending_in: false,
            pending_in_status: None,
            approved: false,
            in_roster: false,
            groups: Vec::new(),
        }
    }
    /// A row with no state left can be deleted.
    pub fn is_empty(&self) -> bool {
        !self.in_roster
            && !self.pending_in
            && !self.ask
            && !self.approved
            && self.subscription == Subscription::None
    }
}

#[async_trait]
pub trait RosterStore: Send + Sync {
    /// All rows (visible or not) and the current version.
    async fn roster(&self, owner: &str) -> Result<(i64, Vec<RosterItem>)>;
    async fn roster_item(&self, owner: &str, contact: &str) -> Result<Option<RosterItem>>;
    /// Insert or replace a row (or delete it when empty); returns the new version.
    async fn put_roster_item(&self, owner: &str, item: &RosterItem) -> Result<i64>;
    /// Delete a row; returns the new version.
    async fn delete_roster_item(&self, owner: &str, contact: &str) -> Result<i64>;
    async fn roster_version(&self, owner: &str) -> Result<i64>;
    /// Drop what is cached for `owner` (account removed, or changed by
    /// another process such as the admin CLI). Nothing to do without a cache.
    fn forget(&self, _owner: &str) {}
    /// Drop what is cached for every account.
    fn forget_all(&self) {}
}

#[async_trait]
pub trait VCardStore: Send + Sync {
    async fn vcard(&self, owner: &str) -> Result<Option<String>>;
    async fn set_vcard(&self, owner: &str, xml: &str) -> Result<()>;
}

/// XEP-0160 offline messages: stored serialized, delivered in order.
#[async_trait]
pub trait OfflineStore: Send + Sync {
    /// Append unless the owner already has `max` messages; `false` when full.
    async fn store_offline(&self, owner: &str, stanza: &str, max: usize) -> Result<bool>;
    /// All stored messages, oldest first, with their ids.
    /// Stored messages with id above `after`, oldest first, at most `limit`.
    async fn offline_messages(
        &self,
        owner: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String)>>;
    /// Delete the owner's messages with id <= `upto`.
    async fn delete_offline(&self, owner: &str, upto: i64) -> Result<()>;
    /// Delete messages stored before `before` (unix seconds); returns how many.
    async fn expire_offline(&self, before: i64) -> Result<u64>;
    /// Drop what is cached about every account's messages.
    fn forget_all(&self) {}
}

/// XEP-0012: when an account was last seen, and its last status.
#[async_trait]
pub trait LastActivityStore: Send + Sync {
    async fn set_last_activity(&self, owner: &str, seen_at: i64, status: &str) -> Result<()>;
    async fn last_activity(&self, owner: &str) -> Result<Option<(i64, String)>>;
    /// Several accounts' last activity in one transaction: (owner, seen_at, status).
    async fn set_last_activities(&self, rows: &[(String, i64, String)]) -> Result<()> {
        for (owner, seen, status) in rows {
            self.set_last_activity(owner, *seen, status).await?;
        }
        Ok(())
    }
    /// Drop a pending (not yet written) record, e.g. of a removed account.
    fn forget(&self, _owner: &str) {}
    /// Write whatever is pending.
    async fn flush(&self) {}
}

/// A message to archive for one account.
#[derive(Debug, Clone)]
pub struct NewArchived {
    pub owner: String,
    pub stanza_id: String,
    /// Bare JID of the other party.
    pub with: String,
    pub stanza: String,
    /// Microseconds since the epoch.
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    pub id: i64,
    pub stanza_id: String,
    pub with: String,
    pub stanza: String,
    pub created_at: i64,
}

/// Filters and paging of an archive query (XEP-0313 + XEP-0059).
#[derive(Debug, Clone, Default)]
pub struct ArchiveQuery {
    pub with: Option<String>,
    /// Microseconds, inclusive.
    pub start: Option<i64>,
    pub end: Option<i64>,
    /// Internal row ids bounding the page (exclusive).
    pub after: Option<i64>,
    pub before: Option<i64>,
    pub ids: Option<Vec<String>>,
    /// Page from the end (RSM `<before/>`).
    pub from_end: bool,
    pub max: usize,
}

/// One page of results, oldest first.
#[derive(Debug, Clone)]
pub struct ArchivePage {
    pub items: Vec<Archived>,
    /// No more results beyond this page in the paging direction.
    pub complete: bool,
    /// All results matching the filters (ignoring paging).
    pub count: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivePrefs {
    /// "always", "never" or "roster".
    pub default_mode: String,
    pub always: Vec<String>,
    pub never: Vec<String>,
}

#[async_trait]
pub trait ArchiveStore: Send + Sync {
    async fn archive(&self, rows: &[NewArchived]) -> Result<()>;
    async fn query_archive(&self, owner: &str, q: &ArchiveQuery) -> Result<ArchivePage>;
    /// Internal id of a stanza id in an owner's archive.
    async fn archive_row_id(&self, owner: &str, stanza_id: &str) -> Result<Option<i64>>;
    async fn archive_prefs(&self, owner: &str) -> Result<Option<ArchivePrefs>>;
    async fn set_archive_prefs(&self, owner: &str, prefs: &ArchivePrefs) -> Result<()>;
}

/// XEP-0191 blocklists.
#[async_trait]
pub trait BlockStore: Send + Sync {
    async fn blocklist(&self, owner: &str) -> Result<Vec<String>>;
    async fn block(&self, owner: &str, jids: &[String]) -> Result<()>;
    /// Unblock these, or everything when `jids` is empty.
    async fn unblock(&self, owner: &str, jids: &[String]) -> Result<()>;
}

/// A persistent MUC room as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRoom {
    pub jid: String,
    /// `key=value` lines (see xep/muc/room.rs).
    pub config: String,
    pub subject: String,
    pub subject_by: String,
    pub affiliations: Vec<(String, String)>,
}

#[async_trait]
pub trait MucStore: Send + Sync {
    async fn load_rooms(&self) -> Result<Vec<StoredRoom>>;
    /// Insert or replace a room and all its affiliations.
    async fn save_room(&self, room: &StoredRoom) -> Result<()>;
    async fn delete_room(&self, jid: &str) -> Result<()>;
}

/// An upload slot (XEP-0363); `sha256` is empty until the file arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSlot {
    pub id: String,
    pub owner: String,
    pub filename: String,
    pub size: i64,
    pub content_type: String,
    pub sha256: String,
    pub created_at: i64,
}

#[async_trait]
pub trait UploadStore: Send + Sync {
    async fn create_slot(&self, slot: &UploadSlot) -> Result<()>;
    async fn slot(&self, id: &str) -> Result<Option<UploadSlot>>;
    /// Record the file of a slot; `false` if it already had one.
    async fn complete_slot(&self, id: &str, sha256: &str) -> Result<bool>;
    /// Bytes reserved or stored by an account.
    async fn upload_usage(&self, owner: &str) -> Result<i64>;
    /// Delete slots created before `before`; returns the file hashes no slot uses any more.
    async fn expire_slots(&self, before: i64) -> Result<Vec<String>>;
}

/// A PEP node's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PepNode {
    pub node: String,
    /// open | presence | roster | whitelist
    pub access_model: String,
    /// Items kept; 0 means no limit ("max").
    pub max_items: i64,
    pub whitelist: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PepItem {
    pub item_id: String,
    pub payload: String,
    pub publisher: String,
}

#[async_trait]
pub trait PepStore: Send + Sync {
    async fn pep_node(&self, owner: &str, node: &str) -> Result<Option<PepNode>>;
    async fn pep_nodes(&self, owner: &str) -> Result<Vec<PepNode>>;
    async fn put_pep_node(&self, owner: &str, node: &PepNode) -> Result<()>;
    async fn delete_pep_node(&self, owner: &str, node: &str) -> Result<()>;
    /// Insert or replace an item (it becomes the newest), then keep `max_items`.
    async fn publish_pep_item(
        &self,
        owner: &str,
        node: &str,
        item: &PepItem,
        max_items: i64,
    ) -> Result<()>;
    /// Newest last; `ids` restricts to those items; `max` keeps the newest N.
    async fn pep_items(
        &self,
        owner: &str,
        node: &str,
        ids: &[String],
        max: Option<usize>,
    ) -> Result<Vec<PepItem>>;
    /// `false` if there was no such item.
    async fn retract_pep_item(&self, owner: &str, node: &str, item_id: &str) -> Result<bool>;
}

/// XEP-0049 private XML storage.
#[async_trait]
pub trait PrivateStore: Send + Sync {
    async fn private_xml(&self, owner: &str, namespace: &str) -> Result<Option<String>>;
    async fn set_private_xml(&self, owner: &str, namespace: &str, xml: &str) -> Result<()>;
}

/// XEP-0357 push registration: (service JID, node, publish-options form as XML).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRegistration {
    pub service: String,
    pub node: String,
    pub options: String,
}

#[async_trait]
pub trait PushStore: Send + Sync {
    async fn push_registrations(&self, owner: &str) -> Result<Vec<PushRegistration>>;
    async fn add_push(&self, owner: &str, reg: &PushRegistration) -> Result<()>;
    /// Remove one node of a service, or all of its nodes when `node` is None.
    async fn remove_push(&self, owner: &str, service: &str, node: Option<&str>) -> Result<()>;
}

/// XEP-0484 FAST token of one client of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastToken {
    pub token: String,
    pub mechanism: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// Highest replay counter the client sent with it.
    pub counter: i64,
}

#[async_trait]
pub trait FastStore: Send + Sync {
    /// The tokens of one client (`agent`: its XEP-0388 user-agent id).
    async fn fast_tokens(&self, owner: &str, agent: &str) -> Result<Vec<FastToken>>;
    /// Store a new token, dropping the client's others except `keep`.
    async fn add_fast_token(
        &self,
        owner: &str,
        agent: &str,
        token: &FastToken,
        keep: Option<&str>,
    ) -> Result<()>;
    /// A login used `token`: record its counter and drop the client's other tokens
    /// (the one it was rotated from, or one it never received).
    async fn used_fast_token(&self, owner: &str, agent: &str, token: &FastToken) -> Result<()>;
    /// Forget one client's tokens, or every client's when `agent` is None.
    async fn delete_fast_tokens(&self, owner: &str, agent: Option<&str>) -> Result<()>;
}

/// All stores, as the server uses them.
#[derive(Clone)]
pub struct Storage {
    pub accounts: Arc<dyn AccountStore>,
    pub roster: Arc<dyn RosterStore>,
    pub vcards: Arc<dyn VCardStore>,
    pub offline: Arc<dyn OfflineStore>,
    pub last: Arc<dyn LastActivityStore>,
    pub archive: Arc<dyn ArchiveStore>,
    pub blocks: Arc<dyn BlockStore>,
    pub muc: Arc<dyn MucStore>,
    pub uploads: Arc<dyn UploadStore>,
    pub pep: Arc<dyn PepStore>,
    pub private: Arc<dyn PrivateStore>,
    pub push: Arc<dyn PushStore>,
    pub fast: Arc<dyn FastStore>,
    pub backend: &'static str,
}

impl Storage {
    /// Open (and migrate) the database behind `url`.
    pub async fn open(url: &str, pool_size: Option<u32>) -> Result<Storage> {
        let store = Arc::new(sql::SqlStore::connect(url, pool_size).await?);
        store.migrate().await?;
        Ok(Storage {
            backend: store.backend(),
            accounts: Arc::new(account_cache::CachedAccounts::new(store.clone())),
            roster: Arc::new(roster_cache::CachedRoster::new(store.clone())),
            vcards: store.clone(),
            offline: Arc::new(offline_hint::HintedOffline::new(store.clone())),
            last: last_writer::WriteBehindLast::spawn(store.clone()),
            archive: store.clone(),
            blocks: store.clone(),
            muc: store.clone(),
            uploads: store.clone(),
            pep: store.clone(),
            private: store.clone(),
            push: store.clone(),
            fast: store,
        })
    }
}

impl Storage {
    /// Write what is written behind (last activity); at shutdown.
    pub async fn flush(&self) {
        self.last.flush().await;
    }

    /// Tell a running server (after the admin CLI changed accounts) to drop
    /// its caches, and wait until it has (when one is alive), so that the
    /// change is in effect when the CLI returns. `false`: a server seems to
    /// run but did not confirm in time.
    pub async fn external_change(&self) -> Result<bool> {
        let epoch = self.accounts.bump_cache_epoch().await?;
        let alive = |e: &CacheEpoch| now_unix() - e.seen_at <= SERVER_ALIVE.as_secs() as i64;
        let deadline = std::time::Instant::now() + CONFIRM_WAIT;
        loop {
            let e = self.accounts.cache_epoch().await?;
            if e.seen >= epoch || !alive(&e) {
                return Ok(true);
            }
            if std::time::Instant::now() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(EPOCH_POLL / 4).await;
        }
    }

    /// Poll the external-change counter and drop every cache about accounts
    /// when it moves (credentials, rosters, offline hints), then confirm.
    pub fn watch_external_changes(&self) -> tokio::task::JoinHandle<()> {
        let storage = self.clone();
        tokio::spawn(async move {
            let mut applied: Option<i64> = None;
            let mut confirmed_at = 0;
            let mut tick = tokio::time::interval(EPOCH_POLL);
            loop {
                tick.tick().await;
                let Ok(now) = storage.accounts.cache_epoch().await else {
                    continue;
                };
                let changed = applied != Some(now.epoch);
                if changed {
                    if applied.is_some() {
                        tracing::info!("accounts changed by another process: caches dropped");
                    }
                    storage.accounts.forget_all();
                    storage.roster.forget_all();
                    storage.offline.forget_all();
                    applied = Some(now.epoch);
                }
                let t = now_unix();
                if changed || t - confirmed_at >= HEARTBEAT.as_secs() as i64 {
                    if let Err(e) = storage.accounts.confirm_cache_epoch(now.epoch, t).await {
                        tracing::warn!(error = %e, "confirming the cache epoch failed");
                    } else {
                        confirmed_at = t;
                    }
                }
            }
        })
    }
}

/// How often a running server looks for account changes made by the CLI.
pub const EPOCH_POLL: std::time::Duration = std::time::Duration::from_millis(250);
/// How often a running server says it is alive (`cache_epoch.seen_at`).
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);
/// A heartbeat older than this: no server is running.
const SERVER_ALIVE: std::time::Duration = std::time::Duration::from_secs(30);
/// How long the CLI waits for a running server to apply its change.
const CONFIRM_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
