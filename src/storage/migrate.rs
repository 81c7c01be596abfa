//! Schema migrations, applied at start-up. Each backend has its own folder
//! (types differ); versions are shared so both stay in step.

use super::Result;
use super::sql::Db;

pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sqlite: include_str!("../../migrations/sqlite/0001_init.sql"),
        postgres: include_str!("../../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "offline_last",
        sqlite: include_str!("../../migrations/sqlite/0002_offline_last.sql"),
        postgres: include_str!("../../migrations/postgres/0002_offline_last.sql"),
    },
    Migration {
        version: 3,
        name: "archive",
        sqlite: include_str!("../../migrations/sqlite/0003_archive.sql"),
        postgres: include_str!("../../migrations/postgres/0003_archive.sql"),
    },
    Migration {
        version: 4,
        name: "blocklist",
        sqlite: include_str!("../../migrations/sqlite/0004_blocklist.sql"),
        postgres: include_str!("../../migrations/postgres/0004_blocklist.sql"),
    },
    Migration {
        version: 5,
        name: "muc",
        sqlite: include_str!("../../migrations/sqlite/0005_muc.sql"),
        postgres: include_str!("../../migrations/postgres/0005_muc.sql"),
    },
    Migration {
        version: 6,
        name: "upload",
        sqlite: include_str!("../../migrations/sqlite/0006_upload.sql"),
        postgres: include_str!("../../migrations/postgres/0006_upload.sql"),
    },
    Migration {
        version: 7,
        name: "pep",
        sqlite: include_str!("../../migrations/sqlite/0007_pep.sql"),
        postgres: include_str!("../../migrations/postgres/0007_pep.sql"),
    },
    Migration {
        version: 8,
        name: "private",
        sqlite: include_str!("../../migrations/sqlite/0008_private.sql"),
        postgres: include_str!("../../migrations/postgres/0008_private.sql"),
    },
    Migration {
        version: 9,
        name: "push",
        sqlite: include_str!("../../migrations/sqlite/0009_push.sql"),
        postgres: include_str!("../../migrations/postgres/0009_push.sql"),
    },
    Migration {
        version: 10,
        name: "fast",
        sqlite: include_str!("../../migrations/sqlite/0010_fast.sql"),
        postgres: include_str!("../../migrations/postgres/0010_fast.sql"),
    },
    Migration {
        version: 11,
        name: "cache_epoch",
        sqlite: include_str!("../../migrations/sqlite/0011_cache_epoch.sql"),
        postgres: include_str!("../../migrations/postgres/0011_cache_epoch.sql"),
    },
    Migration {
        version: 12,
        name: "archive_sid_first",
        sqlite: include_str!("../../migrations/sqlite/0012_archive_sid_first.sql"),
        postgres: include_str!("../../migrations/postgres/0012_archive_sid_first.sql"),
    },
];

const CREATE_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS xmppd_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL)";

pub async fn run(db: &Db) -> Result<()> {
    match db {
        Db::Sqlite(p) => {
            sqlx::raw_sql(CREATE_TABLE).execute(p).await?;
            for m in MIGRATIONS {
                let done: Option<(i64,)> =
                    sqlx::query_as("SELECT version FROM xmppd_migrations WHERE version = $1")
                        .bind(m.version)
                        .fetch_optional(p)
                        .await?;
                if done.is_none() {
                    let mut tx = p.begin().await?;
                    sqlx::raw_sql(m.sqlite).execute(&mut *tx).await?;
                    sqlx::query("INSERT INTO xmppd_migrations (version, name) VALUES ($1, $2)")
                        .bind(m.version)
                        .bind(m.name)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    tracing::info!(version = m.version, name = m.name, "applied migration");
                }
            }
        }
        Db::Postgres(p) => {
            // Serialise concurrent start-ups of several nodes on one database.
            let mut tx = p.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(7244161)")
                .execute(&mut *tx)
                .await?;
            sqlx::raw_sql(CREATE_TABLE).execute(&mut *tx).await?;
            for m in MIGRATIONS {
                let done: Option<(i64,)> =
                    sqlx::query_as("SELECT version FROM xmppd_migrations WHERE version = $1")
                        .bind(m.version)
                        .fetch_optional(&mut *tx)
                        .await?;
                if done.is_none() {
                    sqlx::raw_sql(m.postgres).execute(&mut *tx).await?;
                    sqlx::query("INSERT INTO xmppd_migrations (version, name) VALUES ($1, $2)")
                        .bind(m.version)
                        .bind(m.name)
                        .execute(&mut *tx)
                        .await?;
                    tracing::info!(version = m.version, name = m.name, "applied migration");
                }
            }
            tx.commit().await?;
        }
    }
    Ok(())
}
