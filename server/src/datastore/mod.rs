//! The datastore: SQLite (WAL; one server) or PostgreSQL (any number of servers) via sqlx, with
//! an in-memory index of entries that answers the hot lookups (agent authorization) without
//! touching the database.
//!
//! Every write commits its transaction *before* the in-memory index changes and before the API
//! acknowledges, so nothing acknowledged can be lost. Writes are serialized by one async mutex
//! (and, on PostgreSQL, one advisory lock shared by every server) so the index and the database
//! apply changes in the same order. Each committed change bumps a `watch` revision that the agent
//! sync streams wait on: changes are pushed, never polled.
//!
//! Several servers: every write also appends to the `changes` table in its transaction and
//! (PostgreSQL) `NOTIFY`s at commit; each server's follower (`follow.rs`) reads what the others
//! changed and applies it to its own index, which pushes it to the agents synced to that server.
//!
//! One query text serves both engines (`$N` placeholders, portable SQL); `on_pool!` runs it on
//! whichever pool is configured. The schema is one set of migration versions written once per
//! engine (`migrations/sqlite`, `migrations/postgres`), because the two spell types and
//! auto-increment differently.

mod config;
mod engine;
#[cfg(test)]
mod engine_tests;
mod follow;
#[cfg(test)]
mod tests;

pub(crate) use self::engine::{
    CHANNEL, Cols, POSTGRES, Pool, SQLITE, begin_write, kind, on_pool, record_change,
};

pub use self::config::{Config, DsnError, PoolSettings, parse_connection_string};

use crate::entry::Entry;
use crate::sync::{Authorized, Subscription, SyncHub};
use sigil_spiffe::{Selector, SpiffeId, TrustDomain, bundle::Bundle};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::{Mutex, watch};

/// Datastore failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("datastore: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("datastore migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("entry {0:?} not found")]
    NotFound(String),
    #[error("similar entry already exists")]
    AlreadyExists,
    #[error("corrupt row in datastore: {0}")]
    Corrupt(String),
    #[error("datastore file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The database cannot be reached (connection lost, pool exhausted, server restarting):
    /// the caller may retry.
    #[error("datastore unavailable: {0}")]
    Unavailable(String),
    #[error("datastore schema: {0}")]
    Schema(String),
}

// === impl StoreError ===

impl StoreError {
    /// Whether the failure is the database being out of reach rather than the request: gRPC
    /// `Unavailable`, so clients retry.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unavailable(_) => true,
            Self::Sql(e) => is_unavailable(e),
            _ => false,
        }
    }
}

fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // PostgreSQL's class 08 (connection exception) and 57P0x (shutting down, cannot connect
        // now), as a restarting server sends them.
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// A whole batch failed: the same failure for each of its `n` items.
fn fail_all<T>(n: usize, e: &StoreError) -> Vec<Result<T, StoreError>> {
    let msg = e.to_string();
    (0..n)
        .map(|_| {
            Err(if e.is_unavailable() {
                StoreError::Unavailable(msg.clone())
            } else {
                StoreError::Corrupt(msg.clone())
            })
        })
        .collect()
}

/// A failed `BEGIN`/`COMMIT`: the whole batch failed, for every item.
fn batch_failure(what: &str, e: &sqlx::Error) -> StoreError {
    if is_unavailable(e) {
        StoreError::Unavailable(format!("{what}: {e}"))
    } else {
        StoreError::Corrupt(format!("{what}: {e}"))
    }
}

/// An attested agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub spiffe_id: SpiffeId,
    pub attestation_type: String,
    /// Serial (hex) of the agent SVID the agent presents now.
    pub serial: String,
    /// Serial of a renewed SVID the agent has not presented yet (empty if none): see
    /// [`DataStore::activate_agent_serial`].
    pub new_serial: String,
    pub expires_at: i64,
    pub banned: bool,
    pub created_at: i64,
    pub last_seen: i64,
    /// The node selectors its attestation produced (sorted, no duplicates): what node-alias
    /// entries are matched against.
    pub selectors: Vec<Selector>,
    /// Whether it attests again (instead of renewing) to get a new SVID.
    pub can_reattest: bool,
}

/// How a (re-)attestation was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attestation {
    /// The agent is recorded with its new SVID and selectors.
    Recorded,
    /// The agent is banned: nothing changed.
    Banned,
}

#[derive(Debug, Default)]
struct Index {
    by_id: HashMap<String, Arc<Entry>>,
    by_parent: HashMap<SpiffeId, Vec<String>>,
    /// Attested agents' node selectors (sorted), for node aliases.
    agent_selectors: HashMap<SpiffeId, Vec<Selector>>,
}

/// `spiffe://<td>/spire/server`: entries parented to it are node aliases (SPIRE's
/// `-node` entries).
pub(crate) fn server_id(td: &TrustDomain) -> Option<SpiffeId> {
    SpiffeId::from_path(td, SERVER_PATH).ok()
}

const SERVER_PATH: &str = "/spire/server";

/// Whether an entry parented to `parent` is a node alias.
pub(crate) fn is_node_alias_parent(parent: &SpiffeId) -> bool {
    parent.path() == SERVER_PATH
}

// === impl Index ===

impl Index {
    fn insert(&mut self, e: Arc<Entry>) {
        if let Some(old) = self.by_id.insert(e.id.clone(), e.clone()) {
            self.unlink(&old);
        }
        self.by_parent
            .entry(e.parent_id.clone())
            .or_default()
            .push(e.id.clone());
    }

    fn remove(&mut self, id: &str) -> Option<Arc<Entry>> {
        let old = self.by_id.remove(id)?;
        self.unlink(&old);
        Some(old)
    }

    fn unlink(&mut self, e: &Entry) {
        if let Some(v) = self.by_parent.get_mut(&e.parent_id) {
            v.retain(|x| x != &e.id);
            if v.is_empty() {
                self.by_parent.remove(&e.parent_id);
            }
        }
    }

    /// Entries an agent may hold: those parented to it or to a node alias it holds, and
    /// (transitively) those parented to an identity it holds — SPIRE's node-alias/descendant
    /// rule. A node alias is an entry parented to the server whose selectors are all among the
    /// agent's node selectors; the alias entry itself is no SVID the agent gets.
    fn authorized(&self, agent: &SpiffeId) -> Authorized {
        let mut out = Vec::new();
        let mut aliases = Vec::new();
        let server = server_id(&agent.trust_domain());
        let mut seen_ids: HashSet<&SpiffeId> = HashSet::new();
        let mut queue: VecDeque<&SpiffeId> = VecDeque::from([agent]);
        seen_ids.insert(agent);
        if let Some(server) = &server {
            // Alias entries are only ever reached as aliases, never as children of an entry
            // that happens to name the server.
            seen_ids.insert(server);
            let selectors = self.agent_selectors.get(agent);
            for id in self.by_parent.get(server).into_iter().flatten() {
                let Some(e) = self.by_id.get(id) else {
                    continue;
                };
                let holds = selectors
                    .is_some_and(|own| e.selectors.iter().all(|s| own.binary_search(s).is_ok()));
                if holds && seen_ids.insert(&e.spiffe_id) {
                    aliases.push(e.spiffe_id.clone());
                    queue.push_back(&e.spiffe_id);
                }
            }
        }
        while let Some(parent) = queue.pop_front() {
            for id in self.by_parent.get(parent).into_iter().flatten() {
                if let Some(e) = self.by_id.get(id) {
                    out.push(e.clone());
                    if seen_ids.insert(&e.spiffe_id) {
                        queue.push_back(&e.spiffe_id);
                    }
                }
            }
        }
        Authorized {
            entries: out,
            aliases,
        }
    }
}

/// The datastore handle (cheap to clone).
#[derive(Debug, Clone)]
pub struct DataStore {
    pool: Pool,
    index: Arc<RwLock<Index>>,
    write: Arc<Mutex<()>>,
    changes: Arc<watch::Sender<u64>>,
    hub: Arc<SyncHub>,
    /// Where operation latencies go (`telemetry`), once the server has a registry.
    metrics: Arc<std::sync::OnceLock<Arc<sigil_telemetry::Registry>>>,
    /// This process's mark on the change records it writes (its follower skips them: it has
    /// applied them already).
    origin: Arc<str>,
    /// The last change record applied (or known to be reflected in the index).
    applied: Arc<AtomicI64>,
    /// Bumped when another server's authorities changed (`server_bundles`).
    peers: Arc<watch::Sender<u64>>,
    /// Bumped when another server changed a federation relationship.
    relationships: Arc<watch::Sender<u64>>,
}

/// Records a datastore operation's duration when dropped.
struct OpTimer<'a> {
    metrics: Option<&'a sigil_telemetry::Registry>,
    op: &'static str,
    started: std::time::Instant,
}

impl Drop for OpTimer<'_> {
    fn drop(&mut self) {
        if let Some(m) = self.metrics {
            m.observe(
                "sigil_server_datastore_operation_duration_seconds",
                "Datastore operations (including waiting for the write lock), by operation.",
                &[("op", self.op)],
                self.started.elapsed().as_secs_f64(),
            );
        }
    }
}

fn json_list<T: ToString>(items: &[T]) -> String {
    let v: Vec<String> = items.iter().map(ToString::to_string).collect();
    serde_json::to_string(&v).unwrap_or_else(|_| "[]".into())
}

fn parse_list<T: std::str::FromStr>(s: &str, what: &str) -> Result<Vec<T>, StoreError>
where
    T::Err: std::fmt::Display,
{
    let raw: Vec<String> =
        serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))?;
    raw.iter()
        .map(|x| {
            x.parse()
                .map_err(|e: T::Err| StoreError::Corrupt(format!("{what} {x:?}: {e}")))
        })
        .collect()
}

fn entry_from_row(r: &impl Cols) -> Result<Entry, StoreError> {
    let corrupt =
        |what: &str, e: &dyn std::fmt::Display| StoreError::Corrupt(format!("{what}: {e}"));
    let spiffe_id = r.text("spiffe_id")?;
    let parent_id = r.text("parent_id")?;
    let fw: Vec<String> = serde_json::from_str(&r.text("federates_with")?)
        .map_err(|e| corrupt("federates_with", &e))?;
    Ok(Entry {
        id: r.text("id")?,
        spiffe_id: spiffe_id.parse().map_err(|e| corrupt("spiffe_id", &e))?,
        parent_id: parent_id.parse().map_err(|e| corrupt("parent_id", &e))?,
        selectors: parse_list(&r.text("selectors")?, "selectors")?,
        x509_svid_ttl: r.int("x509_svid_ttl")? as u32,
        jwt_svid_ttl: r.int("jwt_svid_ttl")? as u32,
        dns_names: serde_json::from_str(&r.text("dns_names")?)
            .map_err(|e| corrupt("dns_names", &e))?,
        federates_with: fw
            .iter()
            .map(|t| TrustDomain::from_id_or_name(t).map_err(|e| corrupt("federates_with", &e)))
            .collect::<Result<_, _>>()?,
        admin: r.int("admin")? != 0,
        downstream: r.int("downstream")? != 0,
        hint: r.text("hint")?,
        created_at: r.int("created_at")?,
        revision: r.int("revision")?,
        store_svid: r.int("store_svid")? != 0,
        managed_by: r.text("managed_by")?,
    })
}

fn agent_from_row(r: &impl Cols) -> Result<AgentRecord, StoreError> {
    let id = r.text("spiffe_id")?;
    Ok(AgentRecord {
        spiffe_id: id
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("agent id: {e}")))?,
        attestation_type: r.text("attestation_type")?,
        serial: r.text("serial")?,
        new_serial: r.text("new_serial")?,
        expires_at: r.int("expires_at")?,
        banned: r.int("banned")? != 0,
        created_at: r.int("created_at")?,
        last_seen: r.int("last_seen")?,
        selectors: parse_list(&r.text("selectors")?, "agent selectors")?,
        can_reattest: r.int("can_reattest")? != 0,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

const INSERT_ENTRY: &str = "INSERT INTO entries (id, spiffe_id, parent_id, selectors, x509_svid_ttl, \
     jwt_svid_ttl, dns_names, federates_with, admin, downstream, hint, created_at, revision, \
     store_svid, managed_by) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15)";

const UPDATE_ENTRY: &str = "UPDATE entries SET spiffe_id=$1, parent_id=$2, selectors=$3, \
     x509_svid_ttl=$4, jwt_svid_ttl=$5, dns_names=$6, federates_with=$7, admin=$8, \
     downstream=$9, hint=$10, revision=$11, store_svid=$12 WHERE id=$13";

/// A server's authorities as it publishes them for the others (`server_bundles.bundle`).
#[derive(serde::Serialize, serde::Deserialize)]
struct PublishedBundle {
    /// SPIFFE bundle JSON of the server's own roots and JWT keys.
    spiffe: String,
    #[serde(default)]
    tainted_x509: Vec<String>,
    #[serde(default)]
    tainted_jwt: Vec<String>,
}

// === impl DataStore ===

impl DataStore {
    /// Opens (creating if needed) the SQLite database at `path`.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        Self::connect(&Config::sqlite(path)).await
    }

    /// Connects to the configured database, runs migrations (unless disabled), loads the entry
    /// index and, on PostgreSQL, starts following the other servers' changes.
    pub async fn connect(cfg: &Config) -> Result<Self, StoreError> {
        let pool = match cfg {
            Config::Sqlite { path, log_sql } => Pool::Sqlite(open_sqlite(path, *log_sql).await?),
            Config::Postgres {
                options,
                pool,
                disable_migration,
            } => Pool::Postgres(open_postgres(options, pool, *disable_migration).await?),
        };
        let (tx, _) = watch::channel(0);
        let ds = Self {
            pool,
            index: Arc::default(),
            write: Arc::new(Mutex::new(())),
            changes: Arc::new(tx),
            hub: Arc::new(SyncHub::default()),
            metrics: Arc::default(),
            origin: uuid::Uuid::new_v4().to_string().into(),
            applied: Arc::default(),
            peers: Arc::new(watch::channel(0).0),
            relationships: Arc::new(watch::channel(0).0),
        };
        // The change log's end first, then the rows: a change committed in between is in
        // both, and applying it again is harmless.
        let last = ds.last_change().await?;
        let index = ds.load_index().await?;
        *ds.index_write() = index;
        ds.applied.store(last, Ordering::SeqCst);
        match &ds.pool {
            Pool::Postgres(pg) => {
                tokio::spawn(follow::run(ds.clone(), pg.clone()));
            }
            Pool::Sqlite(_) => {
                tokio::spawn(follow::prune_loop(ds.clone()));
            }
        }
        Ok(ds)
    }

    /// Every entry and agent's node selectors, read from the database.
    async fn load_index(&self) -> Result<Index, StoreError> {
        let mut index = Index::default();
        on_pool!(&self.pool, p, _d => {
            for r in &sqlx::query("SELECT * FROM entries").fetch_all(p).await? {
                index.insert(Arc::new(entry_from_row(r)?));
            }
            for r in &sqlx::query("SELECT spiffe_id, selectors FROM agents").fetch_all(p).await? {
                let id: SpiffeId = r
                    .text("spiffe_id")?
                    .parse()
                    .map_err(|e| StoreError::Corrupt(format!("agent id: {e}")))?;
                let selectors = parse_list(&r.text("selectors")?, "agent selectors")?;
                index.agent_selectors.insert(id, selectors);
            }
        });
        Ok(index)
    }

    async fn last_change(&self) -> Result<i64, StoreError> {
        on_pool!(&self.pool, p, _d => {
            let r = sqlx::query("SELECT COALESCE(MAX(id), 0) AS last FROM changes")
                .fetch_one(p)
                .await?;
            Ok(r.int("last")?)
        })
    }

    /// Which engine this is (`sqlite3` or `postgres`), for logs and metrics.
    pub fn engine(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite3",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// Sends operation latencies to `metrics` from now on.
    pub fn set_metrics(&self, metrics: Arc<sigil_telemetry::Registry>) {
        let _ = self.metrics.set(metrics);
    }

    fn timer(&self, op: &'static str) -> OpTimer<'_> {
        OpTimer {
            metrics: self.metrics.get().map(|m| &**m),
            op,
            started: std::time::Instant::now(),
        }
    }

    /// A receiver that changes after every committed write (entries, bundles, agents) or an
    /// explicit [`DataStore::notify`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A receiver that changes when another server sharing the database published a change of
    /// its authorities (see [`DataStore::server_bundles`]).
    pub fn subscribe_peers(&self) -> watch::Receiver<u64> {
        self.peers.subscribe()
    }

    /// A receiver that changes when another server changed a federation relationship.
    pub fn subscribe_relationships(&self) -> watch::Receiver<u64> {
        self.relationships.subscribe()
    }

    /// Signals a change made outside the database (e.g. a CA rotation changing the bundle).
    pub fn notify(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    /// A bundle changed (CA rotation, federated bundle): every sync stream sends bundles again.
    pub fn bundle_changed(&self) {
        self.hub.bundle_changed();
        self.notify();
    }

    /// Registers a `SyncEntries` stream for `agent`: its registration and its authorized set
    /// now. Taken under the index lock, so no write falls between the set and the
    /// registration: every later write reaches the stream as a delta.
    pub fn subscribe_sync(&self, agent: &SpiffeId) -> (Subscription, Vec<Arc<Entry>>) {
        let idx = self.index_read();
        let authorized = idx.authorized(agent);
        let sub = self.hub.subscribe(agent, &authorized);
        (sub, authorized.entries)
    }

    /// The sync fan-out (for metrics and tests).
    pub fn sync_hub(&self) -> &SyncHub {
        &self.hub
    }

    /// Tells the sync streams concerned about entries with these parents (index write lock
    /// held, so in commit order). A node-alias entry may concern any agent (whichever node
    /// selectors match it, before or after the change): every stream is recomputed then, which
    /// is fine for entries that are few and rarely change.
    fn entries_changed(&self, idx: &Index, parents: &[&SpiffeId]) {
        let authorized = |agent: &SpiffeId| idx.authorized(agent);
        if parents.iter().any(|p| is_node_alias_parent(p)) {
            self.hub.all_changed(authorized);
        } else {
            self.hub.entries_changed(parents, authorized);
        }
    }

    /// The write lock, taken once the database is known to be reachable: during an outage
    /// each caller fails on its own acquire timeout (`Unavailable`) instead of queuing behind
    /// the others' timeouts.
    async fn write_lock(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, StoreError> {
        on_pool!(&self.pool, p, _d => drop(p.acquire().await?));
        Ok(self.write.lock().await)
    }

    /// [`DataStore::write_lock`] for batch calls: every item gets the failure.
    async fn write_lock_batch<T>(
        &self,
        n: usize,
    ) -> Result<tokio::sync::MutexGuard<'_, ()>, Vec<Result<T, StoreError>>> {
        self.write_lock().await.map_err(|e| fail_all(n, &e))
    }

    fn index_read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        // A poisoned lock means a panic while the index was being changed; the index itself is
        // only ever mutated by infallible HashMap operations, so the data is still consistent.
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn index_write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the connection pool; every later call fails. For shutdown (and tests of how
    /// failures reach callers).
    pub async fn close(&self) {
        on_pool!(&self.pool, p, _d => p.close().await)
    }

    /// Checks the database answers (for `/ready`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let _timer = self.timer("ping");
        on_pool!(&self.pool, p, _d => sqlx::query("SELECT 1").execute(p).await.map(|_| ()))?;
        Ok(())
    }

    // --- entries ---

    /// Creates entries in one transaction, each under its own savepoint (so one refused entry
    /// does not fail the batch); returns per-entry results in order.
    pub async fn create_entries(&self, entries: Vec<Entry>) -> Vec<Result<Entry, StoreError>> {
        let _timer = self.timer("create_entries");
        let _w = match self.write_lock_batch(entries.len()).await {
            Ok(w) => w,
            Err(all) => return all,
        };
        let mut out: Vec<Result<Entry, StoreError>> = Vec::with_capacity(entries.len());
        let mut created = Vec::new();
        let n = entries.len();
        let res: Result<(), sqlx::Error> = on_pool!(&self.pool, p, d => async {
            let mut tx = begin_write!(p, d).await?;
            for mut e in entries {
                if e.id.is_empty() {
                    e.id = uuid::Uuid::new_v4().to_string();
                }
                e.created_at = crate::now_unix();
                e.revision = 0;
                let mut sp = sqlx::Acquire::begin(&mut *tx).await?;
                let res = async {
                    sqlx::query(INSERT_ENTRY)
                        .bind(&e.id)
                        .bind(e.spiffe_id.as_str())
                        .bind(e.parent_id.as_str())
                        .bind(e.selectors_key())
                        .bind(e.x509_svid_ttl as i64)
                        .bind(e.jwt_svid_ttl as i64)
                        .bind(json_list(&e.dns_names))
                        .bind(json_list(&e.federates_with.iter().map(|t| t.id()).collect::<Vec<_>>()))
                        .bind(e.admin as i64)
                        .bind(e.downstream as i64)
                        .bind(&e.hint)
                        .bind(e.created_at)
                        .bind(e.revision)
                        .bind(e.store_svid as i64)
                        .bind(&e.managed_by)
                        .execute(&mut *sp)
                        .await?;
                    record_change!(self, sp, d, kind::ENTRY, &e.id).await
                }
                .await;
                match res {
                    Ok(()) => {
                        sp.commit().await?;
                        created.push(e.clone());
                        out.push(Ok(e));
                    }
                    Err(err) => {
                        sp.rollback().await?;
                        out.push(Err(if is_unique_violation(&err) {
                            StoreError::AlreadyExists
                        } else {
                            err.into()
                        }));
                    }
                }
            }
            tx.commit().await
        }.await);
        if let Err(e) = res {
            return fail_all(n, &batch_failure("creating entries", &e));
        }
        if !created.is_empty() {
            let mut idx = self.index_write();
            let parents: Vec<SpiffeId> = created.iter().map(|e| e.parent_id.clone()).collect();
            for e in created {
                idx.insert(Arc::new(e));
            }
            self.entries_changed(&idx, &parents.iter().collect::<Vec<_>>());
            drop(idx);
            self.notify();
        }
        out
    }

    /// Replaces entries by id (revision + 1); per-entry results.
    pub async fn update_entries(&self, entries: Vec<Entry>) -> Vec<Result<Entry, StoreError>> {
        let _timer = self.timer("update_entries");
        let _w = match self.write_lock_batch(entries.len()).await {
            Ok(w) => w,
            Err(all) => return all,
        };
        let mut out = Vec::with_capacity(entries.len());
        let mut updated = Vec::new();
        let mut parents: Vec<SpiffeId> = Vec::new();
        for mut e in entries {
            let Some(old) = self.index_read().by_id.get(&e.id).cloned() else {
                out.push(Err(StoreError::NotFound(e.id.clone())));
                continue;
            };
            e.created_at = old.created_at;
            e.revision = old.revision + 1;
            // Who created an entry is history, not a setting: an update never changes it.
            e.managed_by = old.managed_by.clone();
            let res: Result<u64, sqlx::Error> = on_pool!(&self.pool, p, d => async {
                let mut tx = begin_write!(p, d).await?;
                let r = sqlx::query(UPDATE_ENTRY)
                    .bind(e.spiffe_id.as_str())
                    .bind(e.parent_id.as_str())
                    .bind(e.selectors_key())
                    .bind(e.x509_svid_ttl as i64)
                    .bind(e.jwt_svid_ttl as i64)
                    .bind(json_list(&e.dns_names))
                    .bind(json_list(&e.federates_with.iter().map(|t| t.id()).collect::<Vec<_>>()))
                    .bind(e.admin as i64)
                    .bind(e.downstream as i64)
                    .bind(&e.hint)
                    .bind(e.revision)
                    .bind(e.store_svid as i64)
                    .bind(&e.id)
                    .execute(&mut *tx)
                    .await?;
                record_change!(self, tx, d, kind::ENTRY, &e.id).await?;
                tx.commit().await?;
                Ok(r.rows_affected())
            }.await);
            match res {
                Ok(0) => out.push(Err(StoreError::NotFound(e.id.clone()))),
                Ok(_) => {
                    parents.push(old.parent_id.clone());
                    parents.push(e.parent_id.clone());
                    updated.push(e.clone());
                    out.push(Ok(e));
                }
                Err(err) if is_unique_violation(&err) => out.push(Err(StoreError::AlreadyExists)),
                Err(err) => out.push(Err(err.into())),
            }
        }
        if !updated.is_empty() {
            let mut idx = self.index_write();
            for e in updated {
                idx.insert(Arc::new(e));
            }
            self.entries_changed(&idx, &parents.iter().collect::<Vec<_>>());
            drop(idx);
            self.notify();
        }
        out
    }

    /// Deletes entries by id; per-id results with the deleted entry.
    pub async fn delete_entries(&self, ids: &[String]) -> Vec<Result<Entry, StoreError>> {
        let _timer = self.timer("delete_entries");
        let _w = match self.write_lock_batch(ids.len()).await {
            Ok(w) => w,
            Err(all) => return all,
        };
        let mut out = Vec::with_capacity(ids.len());
        let mut any = false;
        let mut parents: Vec<SpiffeId> = Vec::new();
        for id in ids {
            let res: Result<u64, sqlx::Error> = on_pool!(&self.pool, p, d => async {
                let mut tx = begin_write!(p, d).await?;
                let r = sqlx::query("DELETE FROM entries WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                if r.rows_affected() > 0 {
                    record_change!(self, tx, d, kind::ENTRY, id).await?;
                }
                tx.commit().await?;
                Ok(r.rows_affected())
            }.await);
            match res {
                Ok(n) if n > 0 => {
                    any = true;
                    match self.index_write().remove(id) {
                        Some(e) => {
                            parents.push(e.parent_id.clone());
                            out.push(Ok((*e).clone()))
                        }
                        None => out.push(Err(StoreError::NotFound(id.clone()))),
                    }
                }
                Ok(_) => out.push(Err(StoreError::NotFound(id.clone()))),
                Err(e) => out.push(Err(e.into())),
            }
        }
        if any {
            // The write lock is still held: no other write came between these deletes.
            let idx = self.index_write();
            self.entries_changed(&idx, &parents.iter().collect::<Vec<_>>());
            drop(idx);
            self.notify();
        }
        out
    }

    pub fn get_entry(&self, id: &str) -> Option<Arc<Entry>> {
        self.index_read().by_id.get(id).cloned()
    }

    /// All entries, sorted by id (stable paging).
    pub fn list_entries(&self) -> Vec<Arc<Entry>> {
        let idx = self.index_read();
        let sorted: BTreeMap<&String, &Arc<Entry>> = idx.by_id.iter().collect();
        sorted.into_values().cloned().collect()
    }

    pub fn count_entries(&self) -> usize {
        self.index_read().by_id.len()
    }

    /// Entries the agent may obtain SVIDs for.
    pub fn authorized_entries(&self, agent: &SpiffeId) -> Vec<Arc<Entry>> {
        self.index_read().authorized(agent).entries
    }

    /// The node aliases (SPIFFE IDs of entries parented to the server) the agent holds.
    pub fn node_aliases(&self, agent: &SpiffeId) -> Vec<SpiffeId> {
        self.index_read().authorized(agent).aliases
    }

    // --- join tokens ---

    pub async fn create_join_token(&self, token: &str, expires_at: i64) -> Result<(), StoreError> {
        let _timer = self.timer("create_join_token");
        let _w = self.write_lock().await?;
        on_pool!(&self.pool, p, _d => {
            sqlx::query("INSERT INTO join_tokens (token, expires_at) VALUES ($1, $2)")
                .bind(token)
                .bind(expires_at)
                .execute(p)
                .await
                .map(|_| ())
        })?;
        Ok(())
    }

    /// Consumes a join token: true if it existed and had not expired. The DELETE is the single
    /// atomic step, so two agents racing with one token cannot both win, whichever servers
    /// they ask.
    pub async fn consume_join_token(&self, token: &str, now: i64) -> Result<bool, StoreError> {
        let _timer = self.timer("consume_join_token");
        let _w = self.write_lock().await?;
        let expires_at: Option<i64> = on_pool!(&self.pool, p, _d => {
            let row = sqlx::query("DELETE FROM join_tokens WHERE token = $1 RETURNING expires_at")
                .bind(token)
                .fetch_optional(p)
                .await?;
            row.map(|r| r.int("expires_at")).transpose()?
        });
        Ok(expires_at.is_some_and(|t| t > now))
    }

    // --- agents ---

    pub async fn upsert_agent(&self, a: &AgentRecord) -> Result<(), StoreError> {
        let _timer = self.timer("upsert_agent");
        let _w = self.write_lock().await?;
        on_pool!(&self.pool, p, d => async {
            let mut tx = begin_write!(p, d).await?;
            sqlx::query(
                "INSERT INTO agents (spiffe_id, attestation_type, serial, new_serial, expires_at, banned, created_at, last_seen) \
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8) ON CONFLICT(spiffe_id) DO UPDATE SET serial=excluded.serial, \
                 new_serial=excluded.new_serial, expires_at=excluded.expires_at, last_seen=excluded.last_seen",
            )
            .bind(a.spiffe_id.as_str())
            .bind(&a.attestation_type)
            .bind(&a.serial)
            .bind(&a.new_serial)
            .bind(a.expires_at)
            .bind(a.banned as i64)
            .bind(a.created_at)
            .bind(a.last_seen)
            .execute(&mut *tx)
            .await?;
            record_change!(self, tx, d, kind::AGENT, a.spiffe_id.as_str()).await?;
            tx.commit().await
        }.await)?;
        Ok(())
    }

    /// Records a node attestation: a new agent, or an attested one again (k8s_psat after a
    /// restart, an expired SVID, or to renew), which replaces its SVID serial (the previous
    /// SVID is refused from now on, as in SPIRE), expiry, selectors and re-attestability and
    /// keeps its creation time. A banned agent stays banned and unchanged. The agent's sync
    /// streams get whatever its new selectors change (node aliases gained or lost).
    pub async fn record_attestation(&self, a: &AgentRecord) -> Result<Attestation, StoreError> {
        let _timer = self.timer("record_attestation");
        // Sorted and de-duplicated, as SPIRE stores node selectors.
        let mut selectors = a.selectors.clone();
        selectors.sort();
        selectors.dedup();
        let _w = self.write_lock().await?;
        let rows: u64 = on_pool!(&self.pool, p, d => async {
            let mut tx = begin_write!(p, d).await?;
            let r = sqlx::query(
                "INSERT INTO agents (spiffe_id, attestation_type, serial, new_serial, expires_at, banned, \
                 created_at, last_seen, selectors, can_reattest) VALUES ($1,$2,$3,'',$4,0,$5,$6,$7,$8) \
                 ON CONFLICT(spiffe_id) DO UPDATE SET attestation_type=excluded.attestation_type, \
                 serial=excluded.serial, new_serial='', expires_at=excluded.expires_at, \
                 last_seen=excluded.last_seen, selectors=excluded.selectors, \
                 can_reattest=excluded.can_reattest WHERE agents.banned = 0",
            )
            .bind(a.spiffe_id.as_str())
            .bind(&a.attestation_type)
            .bind(&a.serial)
            .bind(a.expires_at)
            .bind(a.created_at)
            .bind(a.last_seen)
            .bind(json_list(&selectors))
            .bind(a.can_reattest as i64)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() > 0 {
                record_change!(self, tx, d, kind::AGENT, a.spiffe_id.as_str()).await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(r.rows_affected())
        }.await)?;
        if rows == 0 {
            return Ok(Attestation::Banned);
        }
        self.apply_agent_selectors(&a.spiffe_id, selectors);
        self.notify();
        Ok(Attestation::Recorded)
    }

    /// The index learns an agent's node selectors; its streams get what that changes.
    fn apply_agent_selectors(&self, agent: &SpiffeId, selectors: Vec<Selector>) {
        let mut idx = self.index_write();
        let changed = idx.agent_selectors.get(agent) != Some(&selectors);
        idx.agent_selectors.insert(agent.clone(), selectors);
        if changed {
            self.hub.agent_changed(agent, |agent| idx.authorized(agent));
        }
    }

    /// The agent presented its renewed SVID: it becomes the only one accepted. Conditional on
    /// `new_serial` still being the pending one, so a concurrent renewal is not overwritten.
    pub async fn activate_agent_serial(
        &self,
        id: &SpiffeId,
        new_serial: &str,
    ) -> Result<bool, StoreError> {
        let _timer = self.timer("activate_agent_serial");
        let _w = self.write_lock().await?;
        let r = on_pool!(&self.pool, p, _d => {
            sqlx::query(
                "UPDATE agents SET serial = new_serial, new_serial = '' \
                 WHERE spiffe_id = $1 AND new_serial = $2 AND new_serial != ''",
            )
            .bind(id.as_str())
            .bind(new_serial)
            .execute(p)
            .await?
            .rows_affected()
        });
        Ok(r == 1)
    }

    pub async fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, StoreError> {
        let _timer = self.timer("get_agent");
        on_pool!(&self.pool, p, _d => {
            let row = sqlx::query("SELECT * FROM agents WHERE spiffe_id = $1")
                .bind(id.as_str())
                .fetch_optional(p)
                .await?;
            row.as_ref().map(agent_from_row).transpose()
        })
    }

    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let _timer = self.timer("list_agents");
        on_pool!(&self.pool, p, _d => {
            let rows = sqlx::query("SELECT * FROM agents ORDER BY spiffe_id")
                .fetch_all(p)
                .await?;
            rows.iter().map(agent_from_row).collect()
        })
    }

    /// Removes an agent and its node selectors: it must attest again (with a new join token,
    /// or its attestor's fresh evidence).
    pub async fn evict_agent(&self, id: &SpiffeId) -> Result<bool, StoreError> {
        let _timer = self.timer("evict_agent");
        let _w = self.write_lock().await?;
        let rows = self
            .agent_write("DELETE FROM agents WHERE spiffe_id = $1", id)
            .await?;
        self.index_write().agent_selectors.remove(id);
        self.hub.agent_removed(id, "was evicted");
        self.notify();
        Ok(rows == 1)
    }

    /// Bans an agent: its SVID is refused from now on, by every server.
    pub async fn ban_agent(&self, id: &SpiffeId) -> Result<bool, StoreError> {
        let _timer = self.timer("ban_agent");
        let _w = self.write_lock().await?;
        let rows = self
            .agent_write("UPDATE agents SET banned = 1 WHERE spiffe_id = $1", id)
            .await?;
        self.hub.agent_removed(id, "is banned");
        self.notify();
        Ok(rows == 1)
    }

    /// Runs one agent statement (`$1`: its SPIFFE ID) with its change record.
    async fn agent_write(&self, sql: &'static str, id: &SpiffeId) -> Result<u64, StoreError> {
        Ok(on_pool!(&self.pool, p, d => async {
            let mut tx = begin_write!(p, d).await?;
            let r = sqlx::query(sql).bind(id.as_str()).execute(&mut *tx).await?;
            record_change!(self, tx, d, kind::AGENT, id.as_str()).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(r.rows_affected())
        }.await)?)
    }

    pub async fn touch_agent(&self, id: &SpiffeId, now: i64) -> Result<(), StoreError> {
        let _timer = self.timer("touch_agent");
        on_pool!(&self.pool, p, _d => {
            sqlx::query("UPDATE agents SET last_seen = $1 WHERE spiffe_id = $2")
                .bind(now)
                .bind(id.as_str())
                .execute(p)
                .await
                .map(|_| ())
        })?;
        Ok(())
    }

    // --- federation relationships ---

    /// The relationships stored through the admin API, with who made them (`managed_by`).
    pub async fn list_federation_relationships(
        &self,
    ) -> Result<Vec<(sigil_federation::Relationship, String)>, StoreError> {
        let _timer = self.timer("list_federation_relationships");
        let corrupt =
            |what: &str, e: &dyn std::fmt::Display| StoreError::Corrupt(format!("{what}: {e}"));
        let rows: Vec<[String; 5]> = on_pool!(&self.pool, p, _d => {
            let rows = sqlx::query(
                "SELECT trust_domain, bundle_endpoint_url, profile, endpoint_spiffe_id, managed_by \
                 FROM federation_relationships ORDER BY trust_domain",
            )
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok([
                        r.text("trust_domain")?,
                        r.text("bundle_endpoint_url")?,
                        r.text("profile")?,
                        r.text("endpoint_spiffe_id")?,
                        r.text("managed_by")?,
                    ])
                })
                .collect::<Result<_, sqlx::Error>>()?
        });
        let mut out = Vec::with_capacity(rows.len());
        for [td, url, profile, endpoint, managed_by] in rows {
            let rel = sigil_federation::Relationship {
                trust_domain: TrustDomain::from_id_or_name(&td)
                    .map_err(|e| corrupt("federation_relationships.trust_domain", &e))?,
                url: sigil_federation::EndpointUrl::parse(&url)
                    .map_err(|e| corrupt("federation_relationships.bundle_endpoint_url", &e))?,
                profile: match profile.as_str() {
                    "https_web" => sigil_federation::Profile::HttpsWeb,
                    _ => sigil_federation::Profile::HttpsSpiffe {
                        endpoint_spiffe_id: endpoint.parse().map_err(|e| {
                            corrupt("federation_relationships.endpoint_spiffe_id", &e)
                        })?,
                    },
                },
            };
            out.push((rel, managed_by));
        }
        Ok(out)
    }

    /// Inserts (`create`: refused if it exists) or replaces (`!create`: refused if it does
    /// not) a relationship.
    pub async fn put_federation_relationship(
        &self,
        rel: &sigil_federation::Relationship,
        managed_by: &str,
        create: bool,
    ) -> Result<(), StoreError> {
        let _timer = self.timer("put_federation_relationship");
        let _w = self.write_lock().await?;
        let endpoint = match &rel.profile {
            sigil_federation::Profile::HttpsSpiffe { endpoint_spiffe_id } => {
                endpoint_spiffe_id.to_string()
            }
            sigil_federation::Profile::HttpsWeb => String::new(),
        };
        let res: Result<u64, sqlx::Error> = on_pool!(&self.pool, p, d => async {
            let mut tx = begin_write!(p, d).await?;
            let r = if create {
                sqlx::query(
                    "INSERT INTO federation_relationships \
                     (trust_domain, bundle_endpoint_url, profile, endpoint_spiffe_id, managed_by, created_at) \
                     VALUES ($1,$2,$3,$4,$5,$6)",
                )
                .bind(rel.trust_domain.as_str())
                .bind(rel.url.as_str())
                .bind(rel.profile.name())
                .bind(&endpoint)
                .bind(managed_by)
                .bind(crate::now_unix())
                .execute(&mut *tx)
                .await?
            } else {
                sqlx::query(
                    "UPDATE federation_relationships SET bundle_endpoint_url=$1, profile=$2, \
                     endpoint_spiffe_id=$3 WHERE trust_domain=$4",
                )
                .bind(rel.url.as_str())
                .bind(rel.profile.name())
                .bind(&endpoint)
                .bind(rel.trust_domain.as_str())
                .execute(&mut *tx)
                .await?
            };
            record_change!(self, tx, d, kind::RELATIONSHIP, rel.trust_domain.as_str()).await?;
            tx.commit().await?;
            Ok(r.rows_affected())
        }.await);
        match res {
            Ok(0) if !create => Err(StoreError::NotFound(rel.trust_domain.as_str().to_string())),
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::AlreadyExists),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a stored relationship; whether there was one.
    pub async fn delete_federation_relationship(
        &self,
        td: &TrustDomain,
    ) -> Result<bool, StoreError> {
        let _timer = self.timer("delete_federation_relationship");
        let _w = self.write_lock().await?;
        let rows: u64 = on_pool!(&self.pool, p, d => async {
            let mut tx = begin_write!(p, d).await?;
            let r = sqlx::query("DELETE FROM federation_relationships WHERE trust_domain = $1")
                .bind(td.as_str())
                .execute(&mut *tx)
                .await?;
            record_change!(self, tx, d, kind::RELATIONSHIP, td.as_str()).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(r.rows_affected())
        }.await)?;
        Ok(rows > 0)
    }

    // --- federated bundles ---

    pub async fn set_federated_bundle(&self, b: &Bundle) -> Result<(), StoreError> {
        let _timer = self.timer("set_federated_bundle");
        let _w = self.write_lock().await?;
        on_pool!(&self.pool, p, d => async {
            let mut tx = begin_write!(p, d).await?;
            sqlx::query(
                "INSERT INTO federated_bundles (trust_domain, bundle, updated_at) VALUES ($1,$2,$3) \
                 ON CONFLICT(trust_domain) DO UPDATE SET bundle=excluded.bundle, updated_at=excluded.updated_at",
            )
            .bind(b.trust_domain.as_str())
            .bind(b.to_spiffe_json())
            .bind(crate::now_unix())
            .execute(&mut *tx)
            .await?;
            record_change!(self, tx, d, kind::FEDERATED_BUNDLE, b.trust_domain.as_str()).await?;
            tx.commit().await
        }.await)?;
        self.bundle_changed();
        Ok(())
    }

    pub async fn delete_federated_bundle(&self, td: &TrustDomain) -> Result<bool, StoreError> {
        let _timer = self.timer("delete_federated_bundle");
        let _w = self.write_lock().await?;
        let rows: u64 = on_pool!(&self.pool, p, d => async {
            let mut tx = begin_write!(p, d).await?;
            let r = sqlx::query("DELETE FROM federated_bundles WHERE trust_domain = $1")
                .bind(td.as_str())
                .execute(&mut *tx)
                .await?;
            record_change!(self, tx, d, kind::FEDERATED_BUNDLE, td.as_str()).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(r.rows_affected())
        }.await)?;
        self.bundle_changed();
        Ok(rows == 1)
    }

    pub async fn list_federated_bundles(&self) -> Result<Vec<Bundle>, StoreError> {
        let _timer = self.timer("list_federated_bundles");
        let rows: Vec<(String, String)> = on_pool!(&self.pool, p, _d => {
            sqlx::query("SELECT trust_domain, bundle FROM federated_bundles ORDER BY trust_domain")
                .fetch_all(p)
                .await?
                .iter()
                .map(|r| Ok((r.text("trust_domain")?, r.text("bundle")?)))
                .collect::<Result<_, sqlx::Error>>()?
        });
        rows.iter()
            .map(|(td, json)| {
                let td = TrustDomain::from_id_or_name(td)
                    .map_err(|e| StoreError::Corrupt(format!("trust domain: {e}")))?;
                Bundle::from_spiffe_json(td, json.as_bytes())
                    .map_err(|e| StoreError::Corrupt(format!("bundle: {e}")))
            })
            .collect()
    }

    // --- the servers' authorities ---

    /// Publishes this server's own authorities (roots, JWT keys, what it tainted) for the other
    /// servers sharing the database, and bumps the shared bundle sequence (never below
    /// `b.sequence_number`). Returns the shared sequence.
    pub async fn publish_server_bundle(&self, server: &str, b: &Bundle) -> Result<u64, StoreError> {
        let _timer = self.timer("publish_server_bundle");
        let doc = serde_json::to_string(&PublishedBundle {
            spiffe: b.to_spiffe_json(),
            tainted_x509: b.tainted_x509_authorities.iter().cloned().collect(),
            tainted_jwt: b.tainted_jwt_authorities.iter().cloned().collect(),
        })
        .map_err(|e| StoreError::Corrupt(format!("server bundle: {e}")))?;
        let local = i64::try_from(b.sequence_number.unwrap_or(0)).unwrap_or(i64::MAX);
        let _w = self.write_lock().await?;
        let seq: i64 = on_pool!(&self.pool, p, d => async {
            let mut tx = begin_write!(p, d).await?;
            sqlx::query(
                "INSERT INTO server_bundles (server_id, bundle, updated_at) VALUES ($1,$2,$3) \
                 ON CONFLICT(server_id) DO UPDATE SET bundle=excluded.bundle, updated_at=excluded.updated_at",
            )
            .bind(server)
            .bind(&doc)
            .bind(crate::now_unix())
            .execute(&mut *tx)
            .await?;
            let r = sqlx::query(
                "UPDATE datastore_meta SET value = CASE WHEN value + 1 > $1 THEN value + 1 ELSE $1 END \
                 WHERE name = 'bundle_sequence' RETURNING value",
            )
            .bind(local)
            .fetch_one(&mut *tx)
            .await?;
            record_change!(self, tx, d, kind::SERVER_BUNDLE, server).await?;
            tx.commit().await?;
            r.int("value")
        }.await)?;
        Ok(seq.max(0) as u64)
    }

    /// The other servers' published authorities (not `server`'s own), and the shared bundle
    /// sequence.
    pub async fn server_bundles(
        &self,
        server: &str,
        td: &TrustDomain,
    ) -> Result<(Vec<Bundle>, u64), StoreError> {
        let _timer = self.timer("server_bundles");
        let (rows, seq): (Vec<String>, i64) = on_pool!(&self.pool, p, _d => {
            let rows = sqlx::query("SELECT bundle FROM server_bundles WHERE server_id != $1 ORDER BY server_id")
                .bind(server)
                .fetch_all(p)
                .await?
                .iter()
                .map(|r| r.text("bundle"))
                .collect::<Result<_, sqlx::Error>>()?;
            let seq = sqlx::query("SELECT value FROM datastore_meta WHERE name = 'bundle_sequence'")
                .fetch_one(p)
                .await?
                .int("value")?;
            (rows, seq)
        });
        let mut out = Vec::with_capacity(rows.len());
        for doc in rows {
            let pb: PublishedBundle = serde_json::from_str(&doc)
                .map_err(|e| StoreError::Corrupt(format!("server bundle: {e}")))?;
            let mut b = Bundle::from_spiffe_json(td.clone(), pb.spiffe.as_bytes())
                .map_err(|e| StoreError::Corrupt(format!("server bundle: {e}")))?;
            b.tainted_x509_authorities = pb.tainted_x509.into_iter().collect();
            b.tainted_jwt_authorities = pb.tainted_jwt.into_iter().collect();
            out.push(b);
        }
        Ok((out, seq.max(0) as u64))
    }
}

async fn open_sqlite(path: &Path, log_sql: bool) -> Result<SqlitePool, StoreError> {
    use sqlx::ConnectOptions;
    // The database holds join tokens: 0600 whatever the umask. SQLite gives the `-wal` and
    // `-shm` files it creates the database file's mode, so setting it here covers them;
    // ones left by an earlier run are narrowed too.
    let io = |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    };
    sigil_fs::ensure_private_file(path).map_err(io)?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        sigil_fs::restrict_if_exists(Path::new(&side)).map_err(io)?;
    }
    let mut opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: a commit is on disk before we acknowledge it, even across power loss.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(std::time::Duration::from_secs(10))
        .foreign_keys(true);
    if log_sql {
        opts = opts.log_statements(tracing::log::LevelFilter::Info);
    }
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await?;
    sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
    Ok(pool)
}

async fn open_postgres(
    options: &sqlx::postgres::PgConnectOptions,
    settings: &PoolSettings,
    disable_migration: bool,
) -> Result<PgPool, StoreError> {
    let mut pool = PgPoolOptions::new()
        .max_connections(settings.max_open_conns.unwrap_or(100))
        // A database that is down fails calls quickly (gRPC Unavailable) instead of holding
        // them for sqlx's default 30 s.
        .acquire_timeout(std::time::Duration::from_secs(5))
        .max_lifetime(settings.conn_max_lifetime);
    if settings.max_idle_conns == Some(0) {
        pool = pool.idle_timeout(std::time::Duration::from_secs(60));
    }
    let pool = pool
        .connect_with(options.clone())
        .await
        .map_err(|e| StoreError::Unavailable(format!("connecting: {e}")))?;
    let migrator = sqlx::migrate!("./migrations/postgres");
    if disable_migration {
        // The schema is someone else's to manage: it must be exactly this version's.
        let applied: Vec<i64> = sqlx::query("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&pool)
            .await
            .map_err(|e| {
                StoreError::Schema(format!(
                    "disable_migration is set and the schema cannot be read: {e}"
                ))
            })?
            .iter()
            .map(|r| r.try_get::<i64, _>("version"))
            .collect::<Result<_, _>>()?;
        if let Some(m) = migrator.iter().find(|m| !applied.contains(&m.version)) {
            return Err(StoreError::Schema(format!(
                "disable_migration is set but migration {} ({}) has not been applied",
                m.version, m.description
            )));
        }
    } else {
        // sqlx holds a PostgreSQL advisory lock while migrating: servers starting together
        // migrate one after the other.
        migrator.run(&pool).await?;
    }
    Ok(pool)
}
