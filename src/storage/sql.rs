//! The SQL implementation of every store, one SQL text for both backends
//! (`$n` placeholders work on SQLite and PostgreSQL). `with_db!` expands a
//! body once per backend so each keeps its native driver and types.

use super::*;
use crate::sasl::ScramCredentials;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Duration;

#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

macro_rules! with_db {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            Db::Sqlite($p) => $body,
            Db::Postgres($p) => $body,
        }
    };
}

pub struct SqlStore {
    db: Db,
    /// Where archive rows are inserted: SQLite's own connection, else `db`.
    archive_db: Db,
}

impl SqlStore {
    fn sqlite(&self) -> bool {
        matches!(self.db, Db::Sqlite(_))
    }

    pub async fn connect(url: &str, pool_size: Option<u32>) -> Result<SqlStore> {
        let db: (Db, Db) = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // WAL + NORMAL: a committed transaction survives a process crash.
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                // Archive commits rewrite many pages: rarer checkpoints copy a
                // page rewritten by several commits once.
                .pragma("wal_autocheckpoint", "8192");
            if let Some(parent) = opts.get_filename().parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|e| {
                    StorageError::Other(format!("creating {}: {e}", parent.display()))
                })?;
            }
            // Archive inserts (one group-commit writer) get a connection of
            // their own: its page cache holds the archive's index pages from
            // one commit to the next, where pooled connections would find
            // their caches invalidated by each other's writes and read the
            // pages again. A commit touches one page per account per index.
            let archive = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(opts.clone().pragma("cache_size", "-32768"))
                .await?;
            let pool = SqlitePoolOptions::new()
                .max_connections(pool_size.unwrap_or(4))
                .connect_with(opts)
                .await?;
            (Db::Sqlite(pool), Db::Sqlite(archive))
        } else {
            let pool = PgPoolOptions::new()
                .max_connections(pool_size.unwrap_or(10))
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await?;
            (Db::Postgres(pool.clone()), Db::Postgres(pool))
        };
        Ok(SqlStore {
            db: db.0,
            archive_db: db.1,
        })
    }

    pub async fn migrate(&self) -> Result<()> {
        migrate::run(&self.db).await
    }

    pub fn backend(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    async fn bump_version(&self, owner: &str) -> Result<i64> {
        const SQL: &str = "INSERT INTO roster_versions (owner, version) VALUES ($1, 1) \
             ON CONFLICT (owner) DO UPDATE SET version = roster_versions.version + 1 \
             RETURNING version";
        let (v,): (i64,) =
            with_db!(&self.db, p => sqlx::query_as(SQL).bind(owner).fetch_one(p).await?);
        Ok(v)
    }
}

type CredRow = (
    Vec<u8>,
    i64,
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
    i64,
    Vec<u8>,
    Vec<u8>,
);

fn creds_from_row(r: CredRow) -> AccountCredentials {
    AccountCredentials {
        sha1: ScramCredentials {
            salt: r.0,
            iterations: r.1 as u32,
            stored_key: r.2,
            server_key: r.3,
        },
        sha256: ScramCredentials {
            salt: r.4,
            iterations: r.5 as u32,
            stored_key: r.6,
            server_key: r.7,
        },
    }
}

#[async_trait]
impl AccountStore for SqlStore {
    async fn create_account(&self, jid: &str, c: &AccountCredentials) -> Result<bool> {
        const SQL: &str = "INSERT INTO accounts (jid, domain, sha1_salt, sha1_iterations, sha1_stored_key, \
             sha1_server_key, sha256_salt, sha256_iterations, sha256_stored_key, sha256_server_key, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (jid) DO NOTHING";
        let domain = jid.rsplit_once('@').map(|(_, d)| d).unwrap_or(jid);
        let n = with_db!(&self.db, p => sqlx::query(SQL)
            .bind(jid)
            .bind(domain)
            .bind(&c.sha1.salt)
            .bind(c.sha1.iterations as i64)
            .bind(&c.sha1.stored_key)
            .bind(&c.sha1.server_key)
            .bind(&c.sha256.salt)
            .bind(c.sha256.iterations as i64)
            .bind(&c.sha256.stored_key)
            .bind(&c.sha256.server_key)
            .bind(now_unix())
            .execute(p)
            .await?
            .rows_affected());
        Ok(n == 1)
    }

    async fn credentials(&self, jid: &str) -> Result<Option<AccountCredentials>> {
        const SQL: &str = "SELECT sha1_salt, sha1_iterations, sha1_stored_key, sha1_server_key, \
             sha256_salt, sha256_iterations, sha256_stored_key, sha256_server_key FROM accounts WHERE jid = $1";
        let row: Option<CredRow> =
            with_db!(&self.db, p => sqlx::query_as(SQL).bind(jid).fetch_optional(p).await?);
        Ok(row.map(creds_from_row))
    }

    async fn set_credentials(&self, jid: &str, c: &AccountCredentials) -> Result<bool> {
        const SQL: &str = "UPDATE accounts SET sha1_salt = $2, sha1_iterations = $3, sha1_stored_key = $4, \
             sha1_server_key = $5, sha256_salt = $6, sha256_iterations = $7, sha256_stored_key = $8, \
             sha256_server_key = $9 WHERE jid = $1";
        // A new password ends every token login issued under the old one.
        with_db!(&self.db, p => sqlx::query("DELETE FROM fast_tokens WHERE owner = $1")
            .bind(jid).execute(p).await.map(|_| ())?);
        let n = with_db!(&self.db, p => sqlx::query(SQL)
            .bind(jid)
            .bind(&c.sha1.salt)
            .bind(c.sha1.iterations as i64)
            .bind(&c.sha1.stored_key)
            .bind(&c.sha1.server_key)
            .bind(&c.sha256.salt)
            .bind(c.sha256.iterations as i64)
            .bind(&c.sha256.stored_key)
            .bind(&c.sha256.server_key)
            .execute(p)
            .await?
            .rows_affected());
        Ok(n == 1)
    }

    async fn delete_account(&self, jid: &str) -> Result<bool> {
        let n = with_db!(&self.db, p => {
            let mut tx = p.begin().await?;
            for sql in [
                "DELETE FROM roster_items WHERE owner = $1",
                "DELETE FROM roster_versions WHERE owner = $1",
                "DELETE FROM vcards WHERE owner = $1",
                "DELETE FROM offline_messages WHERE owner = $1",
                "DELETE FROM last_activity WHERE owner = $1",
                "DELETE FROM archive WHERE owner = $1",
                "DELETE FROM archive_prefs WHERE owner = $1",
                "DELETE FROM blocklist WHERE owner = $1",
                "DELETE FROM pep_items WHERE owner = $1",
                "DELETE FROM pep_nodes WHERE owner = $1",
                "DELETE FROM private_xml WHERE owner = $1",
                "DELETE FROM push_registrations WHERE owner = $1",
                "DELETE FROM fast_tokens WHERE owner = $1",
            ] {
                sqlx::query(sql).bind(jid).execute(&mut *tx).await?;
            }
            let n = sqlx::query("DELETE FROM accounts WHERE jid = $1")
                .bind(jid)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            n
        });
        Ok(n == 1)
    }

    async fn list_accounts(&self, domain: Option<&str>) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = match domain {
            Some(d) => with_db!(&self.db, p => sqlx::query_as(
                "SELECT jid FROM accounts WHERE domain = $1 ORDER BY jid").bind(d).fetch_all(p).await?),
            None => with_db!(&self.db, p => sqlx::query_as(
                "SELECT jid FROM accounts ORDER BY jid").fetch_all(p).await?),
        };
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    async fn cache_epoch(&self) -> Result<CacheEpoch> {
        let row: Option<(i64, i64, i64)> = with_db!(&self.db, p => sqlx::query_as(
            "SELECT epoch, seen, seen_at FROM cache_epoch WHERE id = 1").fetch_optional(p).await?);
        Ok(row
            .map(|(epoch, seen, seen_at)| CacheEpoch {
                epoch,
                seen,
                seen_at,
            })
            .unwrap_or_default())
    }

    async fn bump_cache_epoch(&self) -> Result<i64> {
        let row: (i64,) = with_db!(&self.db, p => sqlx::query_as(
            "UPDATE cache_epoch SET epoch = epoch + 1 WHERE id = 1 RETURNING epoch").fetch_one(p).await?);
        Ok(row.0)
    }

    async fn confirm_cache_epoch(&self, seen: i64, now: i64) -> Result<()> {
        with_db!(&self.db, p => sqlx::query(
            "UPDATE cache_epoch SET seen = $1, seen_at = $2 WHERE id = 1")
            .bind(seen).bind(now).execute(p).await.map(|_| ())?);
        Ok(())
    }
}

type RosterRow = (
    String,
    Option<String>,
    String,
    bool,
    bool,
    Option<String>,
    bool,
    bool,
    String,
);

const ROSTER_COLUMNS: &str = "contact, name, subscription, ask_out, pending_in, pending_in_status, approved, in_roster, groups";

fn item_from_row(r: RosterRow) -> RosterItem {
    RosterItem {
        contact: r.0,
        name: r.1,
        subscription: Subscription::parse(&r.2),
        ask: r.3,
        pending_in: r.4,
        pending_in_status: r.5,
        approved: r.6,
        in_roster: r.7,
        groups: r
            .8
            .split('\n')
            .filter(|g| !g.is_empty())
            .map(String::from)
            .collect(),
    }
}

#[async_trait]
impl RosterStore for SqlStore {
    async fn roster(&self, owner: &str) -> Result<(i64, Vec<RosterItem>)> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {ROSTER_COLUMNS} FROM roster_items WHERE owner = $1 ORDER BY contact"
        ));
        let rows: Vec<RosterRow> =
            with_db!(&self.db, p => sqlx::query_as(sql).bind(owner).fetch_all(p).await?);
        let ver = self.roster_version(owner).await?;
        Ok((ver, rows.into_iter().map(item_from_row).collect()))
    }

    async fn roster_item(&self, owner: &str, contact: &str) -> Result<Option<RosterItem>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {ROSTER_COLUMNS} FROM roster_items WHERE owner = $1 AND contact = $2"
        ));
        let row: Option<RosterRow> = with_db!(&self.db, p => sqlx::query_as(sql)
            .bind(owner).bind(contact).fetch_optional(p).await?);
        Ok(row.map(item_from_row))
    }

    async fn put_roster_item(&self, owner: &str, item: &RosterItem) -> Result<i64> {
        if item.is_empty() {
            return self.delete_roster_item(owner, &item.contact).await;
        }
        const SQL: &str = "INSERT INTO roster_items (owner, contact, name, subscription, ask_out, pending_in, \
             pending_in_status, approved, in_roster, groups) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (owner, contact) DO UPDATE SET name = $3, subscription = $4, ask_out = $5, \
             pending_in = $6, pending_in_status = $7, approved = $8, in_roster = $9, groups = $10";
        let groups: Vec<String> = item.groups.iter().map(|g| g.replace('\n', " ")).collect();
        with_db!(&self.db, p => sqlx::query(SQL)
            .bind(owner)
            .bind(&item.contact)
            .bind(&item.name)
            .bind(item.subscription.as_str())
            .bind(item.ask)
            .bind(item.pending_in)
            .bind(&item.pending_in_status)
            .bind(item.approved)
            .bind(item.in_roster)
            .bind(groups.join("\n"))
            .execute(p)
            .await
            .map(|_| ())?);
        self.bump_version(owner).await
    }

    async fn delete_roster_item(&self, owner: &str, contact: &str) -> Result<i64> {
        with_db!(&self.db, p => sqlx::query("DELETE FROM roster_items WHERE owner = $1 AND contact = $2")
            .bind(owner).bind(contact).execute(p).await.map(|_| ())?);
        self.bump_version(owner).await
    }

    async fn roster_version(&self, owner: &str) -> Result<i64> {
        let row: Option<(i64,)> = with_db!(&self.db, p => sqlx::query_as(
            "SELECT version FROM roster_versions WHERE owner = $1").bind(owner).fetch_optional(p).await?);
        Ok(row.map(|r| r.0).unwrap_or(0))
    }
}

#[async_trait]
impl VCardStore for SqlStore {
    async fn vcard(&self, owner: &str) -> Result<Option<String>> {
        let row: Option<(String,)> = with_db!(&self.db, p => sqlx::query_as(
            "SELECT xml FROM vcards WHERE owner = $1").bind(owner).fetch_optional(p).await?);
        Ok(row.map(|r| r.0))
    }

    async fn set_vcard(&self, owner: &str, xml: &str) -> Result<()> {
        with_db!(&self.db, p => sqlx::query(
            "INSERT INTO vcards (owner, xml) VALUES ($1, $2) ON CONFLICT (owner) DO UPDATE SET xml = $2")
            .bind(owner).bind(xml).execute(p).await.map(|_| ())?);
        Ok(())
    }
}

#[async_trait]
impl OfflineStore for SqlStore {
    async fn store_offline(&self, owner: &str, stanza: &str, max: usize) -> Result<bool> {
        // Count and insert in one statement so the cap holds under concurrency.
        const SQL: &str = "INSERT INTO offline_messages (owner, stanza, created_at) \
             SELECT $1, $2, $3 WHERE (SELECT COUNT(*) FROM offline_messages WHERE owner = $1) < $4";
        let n = with_db!(&self.db, p => sqlx::query(SQL)
            .bind(owner).bind(stanza).bind(now_unix()).bind(max as i64)
            .execute(p).await?.rows_affected());
        Ok(n == 1)
    }

    async fn offline_messages(
        &self,
        owner: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String)>> {
        Ok(with_db!(&self.db, p => sqlx::query_as(
            "SELECT id, stanza FROM offline_messages WHERE owner = $1 AND id > $2 ORDER BY id LIMIT $3")
            .bind(owner).bind(after).bind(limit).fetch_all(p).await?))
    }

    async fn delete_offline(&self, owner: &str, upto: i64) -> Result<()> {
        with_db!(&self.db, p => sqlx::query("DELETE FROM offline_messages WHERE owner = $1 AND id <= $2")
            .bind(owner).bind(upto).execute(p).await.map(|_| ())?);
        Ok(())
    }

    async fn expire_offline(&self, before: i64) -> Result<u64> {
        Ok(
            with_db!(&self.db, p => sqlx::query("DELETE FROM offline_messages WHERE created_at < $1")
            .bind(before).execute(p).await?.rows_affected()),
        )
    }
}

#[async_trait]
impl LastActivityStore for SqlStore {
    async fn set_last_activity(&self, owner: &str, seen_at: i64, status: &str) -> Result<()> {
        with_db!(&self.db, p => sqlx::query(
            "INSERT INTO last_activity (owner, seen_at, status) VALUES ($1, $2, $3) \
             ON CONFLICT (owner) DO UPDATE SET seen_at = $2, status = $3")
            .bind(owner).bind(seen_at).bind(status).execute(p).await.map(|_| ())?);
        Ok(())
    }

    async fn set_last_activities(&self, rows: &[(String, i64, String)]) -> Result<()> {
        // Owners are distinct (a map's keys), as one upsert statement needs.
        for chunk in rows.chunks(1000) {
            let mut sql = multi_row_insert(
                self.sqlite(),
                "INSERT INTO last_activity (owner, seen_at, status)",
                chunk.len(),
                3,
            );
            sql.push_str(
                " ON CONFLICT (owner) DO UPDATE SET seen_at = excluded.seen_at, status = excluded.status",
            );
            with_db!(&self.db, p => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (owner, seen, status) in chunk {
                    q = q.bind(owner.as_str()).bind(*seen).bind(status.as_str());
                }
                q.execute(p).await?;
            });
        }
        Ok(())
    }

    async fn last_activity(&self, owner: &str) -> Result<Option<(i64, String)>> {
        Ok(with_db!(&self.db, p => sqlx::query_as(
            "SELECT seen_at, status FROM last_activity WHERE owner = $1")
            .bind(owner).fetch_optional(p).await?))
    }
}

/// `head VALUES (…), (…)` for `rows` rows of `cols` values. SQLite gets
/// anonymous `?` placeholders: it looks numbered ones up by a linear scan
/// per bind, which is quadratic in a large insert.
fn multi_row_insert(sqlite: bool, head: &str, rows: usize, cols: usize) -> String {
    let mut sql = String::with_capacity(head.len() + 8 + rows * cols * 5);
    sql.push_str(head);
    sql.push_str(" VALUES ");
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                sql.push_str(", ");
            }
            if sqlite {
                sql.push('?');
            } else {
                let _ = write!(sql, "${}", r * cols + c + 1);
            }
        }
        sql.push(')');
    }
    sql
}

/// A bind value for dynamically assembled queries.
enum Arg {
    Text(String),
    Int(i64),
}

macro_rules! bind_all {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for a in $args {
            q = match a {
                Arg::Text(t) => q.bind(t.clone()),
                Arg::Int(i) => q.bind(*i),
            };
        }
        q
    }};
}

type ArchiveRow = (i64, String, String, String, i64);

/// Rows per INSERT statement in [`ArchiveStore::archive`] (5 bound values
/// per row, under SQLite's 32,766 and PostgreSQL's 65,535).
const ARCHIVE_CHUNK: usize = 2000;

#[async_trait]
impl ArchiveStore for SqlStore {
    async fn archive(&self, rows: &[NewArchived]) -> Result<()> {
        // One transaction; statements of at most ARCHIVE_CHUNK rows.
        let sqlite = self.sqlite();
        let chunks: Vec<(sqlx::AssertSqlSafe<String>, &[NewArchived])> = rows
            .chunks(ARCHIVE_CHUNK)
            .map(|chunk| {
                // A row whose id is already archived for its owner is skipped,
                // not an error that undoes the batch. On SQLite, OR IGNORE also
                // means the statement can never abort halfway, so SQLite keeps
                // no statement journal (a copy of every page the insert
                // touches: a tenth of the CPU per archived message).
                let head = if sqlite {
                    "INSERT OR IGNORE INTO archive (owner, stanza_id, with_jid, stanza, created_at)"
                } else {
                    "INSERT INTO archive (owner, stanza_id, with_jid, stanza, created_at)"
                };
                let mut sql = multi_row_insert(sqlite, head, chunk.len(), 5);
                if !sqlite {
                    sql.push_str(" ON CONFLICT (owner, stanza_id) DO NOTHING");
                }
                (sqlx::AssertSqlSafe(sql), chunk)
            })
            .collect();
        with_db!(&self.archive_db, p => {
            let mut tx = p.begin().await?;
            for (sql, chunk) in chunks {
                let mut q = sqlx::query(sql);
                for r in chunk {
                    q = q
                        .bind(r.owner.as_str())
                        .bind(r.stanza_id.as_str())
                        .bind(r.with.as_str())
                        .bind(r.stanza.as_str())
                        .bind(r.created_at);
                }
                q.execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    async fn query_archive(&self, owner: &str, q: &ArchiveQuery) -> Result<ArchivePage> {
        let mut filter = String::from("owner = $1");
        let mut args = vec![Arg::Text(owner.to_string())];
        let mut push = |cond: &str, arg: Arg, args: &mut Vec<Arg>| {
            args.push(arg);
            filter.push_str(&format!(" AND {cond}${}", args.len()));
        };
        if let Some(w) = &q.with {
            push("with_jid = ", Arg::Text(w.clone()), &mut args);
        }
        if let Some(t) = q.start {
            push("created_at >= ", Arg::Int(t), &mut args);
        }
        if let Some(t) = q.end {
            push("created_at <= ", Arg::Int(t), &mut args);
        }
        if let Some(ids) = &q.ids {
            if ids.is_empty() {
                return Ok(ArchivePage {
                    items: Vec::new(),
                    complete: true,
                    count: 0,
                });
            }
            let start = args.len();
            let marks: Vec<String> = (0..ids.len())
                .map(|i| format!("${}", start + i + 1))
                .collect();
            args.extend(ids.iter().map(|i| Arg::Text(i.clone())));
            filter.push_str(&format!(" AND stanza_id IN ({})", marks.join(", ")));
        }
        let count_sql = sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM archive WHERE {filter}"));
        let (count,): (i64,) = with_db!(&self.db, p => bind_all!(sqlx::query_as(count_sql), &args).fetch_one(p).await?);
        let mut page_filter = filter.clone();
        let mut page_args = args;
        if let Some(a) = q.after {
            page_args.push(Arg::Int(a));
            page_filter.push_str(&format!(" AND id > ${}", page_args.len()));
        }
        if let Some(b) = q.before {
            page_args.push(Arg::Int(b));
            page_filter.push_str(&format!(" AND id < ${}", page_args.len()));
        }
        let order = if q.from_end { "DESC" } else { "ASC" };
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT id, stanza_id, with_jid, stanza, created_at FROM archive WHERE {page_filter} \
             ORDER BY id {order} LIMIT {}",
            q.max + 1
        ));
        let mut rows: Vec<ArchiveRow> =
            with_db!(&self.db, p => bind_all!(sqlx::query_as(sql), &page_args).fetch_all(p).await?);
        let complete = rows.len() <= q.max;
        rows.truncate(q.max);
        if q.from_end {
            rows.reverse();
        }
        let items = rows
            .into_iter()
            .map(|r| Archived {
                id: r.0,
                stanza_id: r.1,
                with: r.2,
                stanza: r.3,
                created_at: r.4,
            })
            .collect();
        Ok(ArchivePage {
            items,
            complete,
            count,
        })
    }

    async fn archive_row_id(&self, owner: &str, stanza_id: &str) -> Result<Option<i64>> {
        let row: Option<(i64,)> = with_db!(&self.db, p => sqlx::query_as(
            "SELECT id FROM archive WHERE owner = $1 AND stanza_id = $2")
            .bind(owner).bind(stanza_id).fetch_optional(p).await?);
        Ok(row.map(|r| r.0))
    }

    async fn archive_prefs(&self, owner: &str) -> Result<Option<ArchivePrefs>> {
        let row: Option<(String, String, String)> = with_db!(&self.db, p => sqlx::query_as(
            "SELECT default_mode, always_jids, never_jids FROM archive_prefs WHERE owner = $1")
            .bind(owner).fetch_optional(p).await?);
        let split = |s: String| {
            s.split('\n')
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect()
        };
        Ok(row.map(|r| ArchivePrefs {
            default_mode: r.0,
            always: split(r.1),
            never: split(r.2),
        }))
    }

    async fn set_archive_prefs(&self, owner: &str, prefs: &ArchivePrefs) -> Result<()> {
        with_db!(&self.db, p => sqlx::query(
            "INSERT INTO archive_prefs (owner, default_mode, always_jids, never_jids) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (owner) DO UPDATE SET default_mode = $2, always_jids = $3, never_jids = $4")
            .bind(owner).bind(&prefs.default_mode).bind(prefs.always.join("\n")).bind(prefs.never.join("\n"))
            .execute(p).await.map(|_| ())?);
        Ok(())
    }
}

#[async_trait]
impl BlockStore for SqlStore {
    async fn blocklist(&self, owner: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = with_db!(&self.db, p => sqlx::query_as(
            "SELECT jid FROM blocklist WHERE owner = $1 ORDER BY jid").bind(owner).fetch_all(p).await?);
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    async fn block(&self, owner: &str, jids: &[String]) -> Result<()> {
        for j in jids {
            with_db!(&self.db, p => sqlx::query(
                "INSERT INTO blocklist (owner, jid) VALUES ($1, $2) ON CONFLICT (owner, jid) DO NOTHING")
                .bind(owner).bind(j).execute(p).await.map(|_| ())?);
        }
        Ok(())
    }

    async fn unblock(&self, owner: &str, jids: &[String]) -> Result<()> {
        if jids.is_empty() {
            with_db!(&self.db, p => sqlx::query("DELETE FROM blocklist WHERE owner = $1")
                .bind(owner).execute(p).await.map(|_| ())?);
        }
        for j in jids {
            with_db!(&self.db, p => sqlx::query("DELETE FROM blocklist WHERE owner = $1 AND jid = $2")
                .bind(owner).bind(j).execute(p).await.map(|_| ())?);
        }
        Ok(())
    }
}

#[async_trait]
impl MucStore for SqlStore {
    async fn load_rooms(&self) -> Result<Vec<StoredRoom>> {
        let rooms: Vec<(String, String, String, String)> = with_db!(&self.db, p => sqlx::query_as(
            "SELECT jid, config, subject, subject_by FROM muc_rooms ORDER BY jid").fetch_all(p).await?);
        let affs: Vec<(String, String, String)> = with_db!(&self.db, p => sqlx::query_as(
            "SELECT room, jid, affiliation FROM muc_affiliations").fetch_all(p).await?);
        Ok(rooms
            .into_iter()
            .map(|(jid, config, subject, subject_by)| StoredRoom {
                affiliations: affs
                    .iter()
                    .filter(|a| a.0 == jid)
                    .map(|a| (a.1.clone(), a.2.clone()))
                    .collect(),
                jid,
                config,
                subject,
                subject_by,
            })
            .collect())
    }

    async fn save_room(&self, r: &StoredRoom) -> Result<()> {
        with_db!(&self.db, p => {
            let mut tx = p.begin().await?;
            sqlx::query("INSERT INTO muc_rooms (jid, config, subject, subject_by) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (jid) DO UPDATE SET config = $2, subject = $3, subject_by = $4")
                .bind(&r.jid).bind(&r.config).bind(&r.subject).bind(&r.subject_by)
                .execute(&mut *tx).await?;
            sqlx::query("DELETE FROM muc_affiliations WHERE room = $1").bind(&r.jid).execute(&mut *tx).await?;
            for (j, a) in &r.affiliations {
                sqlx::query("INSERT INTO muc_affiliations (room, jid, affiliation) VALUES ($1, $2, $3)")
                    .bind(&r.jid).bind(j).bind(a).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    async fn delete_room(&self, jid: &str) -> Result<()> {
        with_db!(&self.db, p => {
            let mut tx = p.begin().await?;
            sqlx::query("DELETE FROM muc_affiliations WHERE room = $1").bind(jid).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM muc_rooms WHERE jid = $1").bind(jid).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }
}

type SlotRow = (String, String, String, i64, String, String, i64);

#[async_trait]
impl UploadStore for SqlStore {
    async fn create_slot(&self, s: &UploadSlot) -> Result<()> {
        with_db!(&self.db, p => sqlx::query(
            "INSERT INTO upload_slots (id, owner, filename, size, content_type, sha256, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&s.id).bind(&s.owner).bind(&s.filename).bind(s.size).bind(&s.content_type)
            .bind(&s.sha256).bind(s.created_at).execute(p).await.map(|_| ())?);
        Ok(())
    }

    async fn slot(&self, id: &str) -> Result<Option<UploadSlot>> {
        let row: Option<SlotRow> = with_db!(&self.db, p => sqlx::query_as(
            "SELECT id, owner, filename, size, content_type, sha256, created_at FROM upload_slots WHERE id = $1")
            .bind(id).fetch_optional(p).await?);
        Ok(row.map(|r| UploadSlot {
            id: r.0,
            owner: r.1,
            filename: r.2,
            size: r.3,
            content_type: r.4,
            sha256: r.5,
            created_at: r.6,
        }))
    }

    async fn complete_slot(&self, id: &str, sha256: &str) -> Result<bool> {
        let n = with_db!(&self.db, p => sqlx::query(
            "UPDATE upload_slots SET sha256 = $2 WHERE id = $1 AND sha256 = ''")
            .bind(id).bind(sha256).execute(p).await?.rows_affected());
        Ok(n == 1)
    }

    async fn upload_usage(&self, owner: &str) -> Result<i64> {
        let (n,): (i64,) = with_db!(&self.db, p => sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM upload_slots WHERE owner = $1")
            .bind(owner).fetch_one(p).await?);
        Ok(n)
    }

    async fn expire_slots(&self, before: i64) -> Result<Vec<String>> {
        let gone: Vec<(String,)> = with_db!(&self.db, p => sqlx::query_as(
            "SELECT DISTINCT sha256 FROM upload_slots WHERE created_at < $1 AND sha256 <> ''")
            .bind(before).fetch_all(p).await?);
        with_db!(&self.db, p => sqlx::query("DELETE FROM upload_slots WHERE created_at < $1")
            .bind(before).execute(p).await.map(|_| ())?);
        let mut orphans = Vec::new();
        for (sha,) in gone {
            let (n,): (i64,) = with_db!(&self.db, p => sqlx::query_as(
                "SELECT COUNT(*) FROM upload_slots WHERE sha256 = $1").bind(&sha).fetch_one(p).await?);
            if n == 0 {
                orphans.push(sha);
            }
        }
        Ok(orphans)
    }
}

type NodeRow = (String, String, i64, String);

fn node_from_row(r: NodeRow) -> PepNode {
    PepNode {
        node: r.0,
        access_model: r.1,
        max_items: r.2,
        whitelist: r
            .3
            .split('\n')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    }
}

#[async_trait]
impl PepStore for SqlStore {
    async fn pep_node(&self, owner: &str, node: &str) -> Result<Option<PepNode>> {
        let row: Option<NodeRow> = with_db!(&self.db, p => sqlx::query_as(
            "SELECT node, access_model, max_items, whitelist FROM pep_nodes WHERE owner = $1 AND node = $2")
            .bind(owner).bind(node).fetch_optional(p).await?);
        Ok(row.map(node_from_row))
    }

    async fn pep_nodes(&self, owner: &str) -> Result<Vec<PepNode>> {
        let rows: Vec<NodeRow> = with_db!(&self.db, p => sqlx::query_as(
            "SELECT node, access_model, max_items, whitelist FROM pep_nodes WHERE owner = $1 ORDER BY node")
            .bind(owner).fetch_all(p).await?);
        Ok(rows.into_iter().map(node_from_row).collect())
    }

    async fn put_pep_node(&self, owner: &str, n: &PepNode) -> Result<()> {
        with_db!(&self.db, p => sqlx::query(
            "INSERT INTO pep_nodes (owner, node, access_model, max_items, whitelist) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (owner, node) DO UPDATE SET access_model = $3, max_items = $4, whitelist = $5")
            .bind(owner).bind(&n.node).bind(&n.access_model).bind(n.max_items).bind(n.whitelist.join("\n"))
            .execute(p).await.map(|_| ())?);
        Ok(())
    }

    async fn delete_pep_node(&self, owner: &str, node: &str) -> Result<()> {
        with_db!(&self.db, p => {
            let mut tx = p.begin().await?;
            sqlx::query("DELETE FROM pep_items WHERE owner = $1 AND node = $2").bind(owner).bind(node).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM pep_nodes WHERE owner = $1 AND node = $2").bind(owner).bind(node).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    async fn publish_pep_item(
        &self,
        owner: &str,
        node: &str,
        item: &PepItem,
        max_items: i64,
    ) -> Result<()> {
        with_db!(&self.db, p => {
            let mut tx = p.begin().await?;
            // Re-publishing an id makes it the newest item.
            sqlx::query("DELETE FROM pep_items WHERE owner = $1 AND node = $2 AND item_id = $3")
                .bind(owner).bind(node).bind(&item.item_id).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO pep_items (owner, node, item_id, payload, publisher, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(owner).bind(node).bind(&item.item_id).bind(&item.payload).bind(&item.publisher).bind(now_unix())
                .execute(&mut *tx).await?;
            if max_items > 0 {
                sqlx::query("DELETE FROM pep_items WHERE owner = $1 AND node = $2 AND id NOT IN \
                     (SELECT id FROM pep_items WHERE owner = $1 AND node = $2 ORDER BY id DESC LIMIT $3)")
                    .bind(owner).bind(node).bind(max_items).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    async fn pep_items(
        &self,
        owner: &str,
        node: &str,
        ids: &[String],
        max: Option<usize>,
    ) -> Result<Vec<PepItem>> {
        let rows: Vec<(String, String, String)> = with_db!(&self.db, p => sqlx::query_as(
            "SELECT item_id, payload, publisher FROM pep_items WHERE owner = $1 AND node = $2 ORDER BY id")
            .bind(owner).bind(node).fetch_all(p).await?);
        let mut items: Vec<PepItem> = rows
            .into_iter()
            .filter(|r| ids.is_empty() || ids.contains(&r.0))
            .map(|r| PepItem {
                item_id: r.0,
                payload: r.1,
                publisher: r.2,
            })
            .collect();
        if let Some(m) = max {
            let skip = items.len().saturating_sub(m);
            items.drain(..skip);
        }
        Ok(items)
    }

    async fn retract_pep_item(&self, owner: &str, node: &str, item_id: &str) -> Result<bool> {
        let n = with_db!(&self.db, p => sqlx::query("DELETE FROM pep_items WHERE owner = $1 AND node = $2 AND item_id = $3")
            .bind(owner).bind(node).bind(item_id).execute(p).await?.rows_affected());
        Ok(n > 0)
    }
}

#[async_trait]
impl PrivateStore for SqlStore {
    async fn private_xml(&self, owner: &str, namespace: &str) -> Result<Option<String>> {
        let row: Option<(String,)> = with_db!(&self.db, p => sqlx::query_as(
            "SELECT xml FROM private_xml WHERE owner = $1 AND namespace = $2")
            .bind(owner).bind(namespace).fetch_optional(p).await?);
        Ok(row.map(|r| r.0))
    }

    async fn set_private_xml(&self, owner: &str, namespace: &str, xml: &str) -> Result<()> {
        with_db!(&self.db, p => sqlx::query(
            "INSERT INTO private_xml (owner, namespace, xml) VALUES ($1, $2, $3) \
             ON CONFLICT (owner, namespace) DO UPDATE SET xml = $3")
            .bind(owner).bind(namespace).bind(xml).execute(p).await.map(|_| ())?);
        Ok(())
    }
}

#[async_trait]
impl PushStore for SqlStore {
    async fn push_registrations(&self, owner: &str) -> Result<Vec<PushRegistration>> {
        let rows: Vec<(String, String, String)> = with_db!(&self.db, p => sqlx::query_as(
            "SELECT service, node, options FROM push_registrations WHERE owner = $1 ORDER BY service, node")
            .bind(owner).fetch_all(p).await?);
        Ok(rows
            .into_iter()
            .map(|r| PushRegistration {
                service: r.0,
                node: r.1,
                options: r.2,
            })
            .collect())
    }

    async fn add_push(&self, owner: &str, r: &PushRegistration) -> Result<()> {
        with_db!(&self.db, p => sqlx::query(
            "INSERT INTO push_registrations (owner, service, node, options) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (owner, service, node) DO UPDATE SET options = $4")
            .bind(owner).bind(&r.service).bind(&r.node).bind(&r.options).execute(p).await.map(|_| ())?);
        Ok(())
    }

    async fn remove_push(&self, owner: &str, service: &str, node: Option<&str>) -> Result<()> {
        match node {
            Some(n) => with_db!(&self.db, p => sqlx::query(
                "DELETE FROM push_registrations WHERE owner = $1 AND service = $2 AND node = $3")
                .bind(owner).bind(service).bind(n).execute(p).await.map(|_| ())?),
            None => with_db!(&self.db, p => sqlx::query(
                "DELETE FROM push_registrations WHERE owner = $1 AND service = $2")
                .bind(owner).bind(service).execute(p).await.map(|_| ())?),
        }
        Ok(())
    }
}

#[async_trait]
impl FastStore for SqlStore {
    async fn fast_tokens(&self, owner: &str, agent: &str) -> Result<Vec<FastToken>> {
        let rows: Vec<(String, String, i64, i64, i64)> = with_db!(&self.db, p => sqlx::query_as(
            "SELECT token, mechanism, created_at, expires_at, counter FROM fast_tokens \
             WHERE owner = $1 AND agent = $2 ORDER BY created_at DESC")
            .bind(owner).bind(agent).fetch_all(p).await?);
        Ok(rows
            .into_iter()
            .map(|r| FastToken {
                token: r.0,
                mechanism: r.1,
                created_at: r.2,
                expires_at: r.3,
                counter: r.4,
            })
            .collect())
    }

    async fn add_fast_token(
        &self,
        owner: &str,
        agent: &str,
        t: &FastToken,
        keep: Option<&str>,
    ) -> Result<()> {
        with_db!(&self.db, p => {
            let mut tx = p.begin().await?;
            sqlx::query("DELETE FROM fast_tokens WHERE owner = $1 AND agent = $2 AND token <> $3")
                .bind(owner).bind(agent).bind(keep.unwrap_or("")).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO fast_tokens (owner, agent, token, mechanism, created_at, expires_at, counter) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)")
                .bind(owner).bind(agent).bind(&t.token).bind(&t.mechanism)
                .bind(t.created_at).bind(t.expires_at).bind(t.counter)
                .execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    async fn used_fast_token(&self, owner: &str, agent: &str, t: &FastToken) -> Result<()> {
        with_db!(&self.db, p => {
            let mut tx = p.begin().await?;
            sqlx::query("UPDATE fast_tokens SET counter = $4 WHERE owner = $1 AND agent = $2 AND token = $3")
                .bind(owner).bind(agent).bind(&t.token).bind(t.counter).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM fast_tokens WHERE owner = $1 AND agent = $2 AND token <> $3")
                .bind(owner).bind(agent).bind(&t.token).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    async fn delete_fast_tokens(&self, owner: &str, agent: Option<&str>) -> Result<()> {
        match agent {
            Some(a) => with_db!(&self.db, p => sqlx::query(
                "DELETE FROM fast_tokens WHERE owner = $1 AND agent = $2")
                .bind(owner).bind(a).execute(p).await.map(|_| ())?),
            None => with_db!(&self.db, p => sqlx::query(
                "DELETE FROM fast_tokens WHERE owner = $1")
                .bind(owner).execute(p).await.map(|_| ())?),
        }
        Ok(())
    }
}
