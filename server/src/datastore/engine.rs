//! What differs between SQLite and PostgreSQL, and the macros that run one query text on
//! either: the pool, each engine's [`Dialect`], change kinds and typed row access.

use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::sqlite::{SqlitePool, SqliteRow};

/// The configured connection pool.
#[derive(Debug, Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// What differs between the engines beyond the query text.
pub(crate) struct Dialect {
    /// Taken first in every write transaction: serializes writers across servers, so change
    /// ids are committed in id order and followers never skip one.
    pub(crate) write_lock: Option<&'static str>,
    /// Run before commit: wakes the other servers' followers (delivered at commit).
    pub(crate) notify: Option<&'static str>,
}

pub(crate) const SQLITE: Dialect = Dialect {
    write_lock: None,
    notify: None,
};

/// The advisory lock key every Sigil server's writes take (any constant shared by all).
pub(crate) const POSTGRES: Dialect = Dialect {
    write_lock: Some("SELECT pg_advisory_xact_lock(7419061)"),
    notify: Some("SELECT pg_notify('sigil_changes', '')"),
};

/// The channel servers `LISTEN` on.
pub(crate) const CHANNEL: &str = "sigil_changes";

/// Runs `$body` with `$p` bound to the pool (and `$d` to its [`Dialect`]): the body is compiled
/// once per engine, so one query text serves both with each driver's own types.
macro_rules! on_pool {
    ($pool:expr, $p:ident, $d:ident => $body:expr) => {
        match $pool {
            $crate::datastore::Pool::Sqlite($p) => {
                #[allow(unused_variables)]
                let $d = &$crate::datastore::SQLITE;
                $body
            }
            $crate::datastore::Pool::Postgres($p) => {
                #[allow(unused_variables)]
                let $d = &$crate::datastore::POSTGRES;
                $body
            }
        }
    };
}
pub(crate) use on_pool;

/// Starts a write transaction: `BEGIN`, then the cross-server write lock.
macro_rules! begin_write {
    ($p:expr, $d:expr) => {
        async {
            let mut tx = $p.begin().await?;
            if let Some(lock) = $d.write_lock {
                sqlx::query(lock).execute(&mut *tx).await?;
            }
            Ok::<_, sqlx::Error>(tx)
        }
    };
}
pub(crate) use begin_write;

/// Appends a change record in `$tx` (and notifies, on PostgreSQL, at commit).
macro_rules! record_change {
    ($self:expr, $tx:expr, $d:expr, $kind:expr, $key:expr) => {
        async {
            sqlx::query("INSERT INTO changes (kind, key, origin, at) VALUES ($1, $2, $3, $4)")
                .bind($kind)
                .bind($key)
                .bind(&*$self.origin)
                .bind(crate::now_unix())
                .execute(&mut *$tx)
                .await?;
            if let Some(n) = $d.notify {
                sqlx::query(n).execute(&mut *$tx).await?;
            }
            Ok::<_, sqlx::Error>(())
        }
    };
}
pub(crate) use record_change;

/// Change kinds in the `changes` table.
pub(crate) mod kind {
    /// `key`: an entry id (created, updated or deleted).
    pub const ENTRY: &str = "entry";
    /// `key`: an agent's SPIFFE ID (attested, banned, evicted).
    pub const AGENT: &str = "agent";
    /// `key`: a server id: that server's authorities changed.
    pub const SERVER_BUNDLE: &str = "server_bundle";
    /// `key`: a trust domain: its federated bundle changed.
    pub const FEDERATED_BUNDLE: &str = "federated_bundle";
    /// `key`: a trust domain: its federation relationship changed.
    pub const RELATIONSHIP: &str = "relationship";
}

/// Typed column access for both engines' rows.
pub(crate) trait Cols {
    fn text(&self, col: &str) -> Result<String, sqlx::Error>;
    fn int(&self, col: &str) -> Result<i64, sqlx::Error>;
}

impl Cols for SqliteRow {
    fn text(&self, col: &str) -> Result<String, sqlx::Error> {
        self.try_get(col)
    }
    fn int(&self, col: &str) -> Result<i64, sqlx::Error> {
        self.try_get(col)
    }
}

impl Cols for PgRow {
    fn text(&self, col: &str) -> Result<String, sqlx::Error> {
        self.try_get(col)
    }
    fn int(&self, col: &str) -> Result<i64, sqlx::Error> {
        self.try_get(col)
    }
}
