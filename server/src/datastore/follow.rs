//! Following the other servers: on PostgreSQL every server `LISTEN`s on one channel, and every
//! write `NOTIFY`s it at commit; the follower then reads the `changes` rows it has not seen
//! (written by the others: its own it applied when it wrote them) and applies each to the
//! index, which pushes it to this server's agents. A lost notification costs at most the
//! fallback poll; a lost connection reconnects with backoff and catches up; a follower so far
//! behind that the rows it needs were pruned reloads everything.

use super::{Cols, DataStore, Pool, StoreError, agent_from_row, entry_from_row, kind, on_pool};
use sigil_spiffe::SpiffeId;
use sqlx::postgres::{PgListener, PgPool};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often the follower reads the change log without a notification: the bound on how late
/// a change can be when a notification is lost.
const FALLBACK_POLL: Duration = Duration::from_secs(5);

/// Change records read at most per query.
const CATCH_UP_BATCH: usize = 10_000;

/// Change records older than this are pruned; a follower further behind reloads.
const KEEP_CHANGES_SECS: i64 = 3600;

/// How often a server prunes the change log.
const PRUNE_EVERY: Duration = Duration::from_secs(300);

/// Follows the other servers' changes until the pool is closed.
pub(super) async fn run(ds: DataStore, pg: PgPool) {
    let mut backoff = Duration::from_millis(200);
    let mut failing: Option<String> = None;
    let mut last_prune = tokio::time::Instant::now();
    while !pg.is_closed() {
        let mut listener = match PgListener::connect_with(&pg).await {
            Ok(mut l) => match l.listen(super::CHANNEL).await {
                Ok(()) => l,
                Err(e) => {
                    report(&mut failing, &e.to_string());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            },
            Err(e) => {
                report(&mut failing, &e.to_string());
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        loop {
            // Whatever happened while (re)subscribing is read now; a backlog larger than one
            // read is read to its end without waiting for another notification.
            let mut res = ds.catch_up().await;
            while matches!(res, Ok(n) if n >= CATCH_UP_BATCH) {
                res = ds.catch_up().await;
            }
            match res {
                Ok(_) => {
                    if failing.take().is_some() {
                        tracing::info!("following the other servers' changes again");
                    }
                }
                Err(e) => report(&mut failing, &e.to_string()),
            }
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = tokio::time::Instant::now();
                if let Err(e) = ds
                    .prune_changes(crate::now_unix() - KEEP_CHANGES_SECS)
                    .await
                {
                    tracing::warn!(error = %e, "pruning the datastore change log");
                }
            }
            if pg.is_closed() {
                return;
            }
            tokio::select! {
                n = listener.try_recv() => match n {
                    Ok(Some(_)) => {}
                    // The connection dropped; the next try_recv reconnects and re-listens,
                    // and the catch-up above covers the gap.
                    Ok(None) => {}
                    Err(e) => {
                        report(&mut failing, &e.to_string());
                        break;
                    }
                },
                _ = tokio::time::sleep(FALLBACK_POLL) => {}
            }
        }
        tokio::time::sleep(jitter(backoff)).await;
    }
}

/// Logs a failure once per state change, not per try.
fn report(failing: &mut Option<String>, error: &str) {
    if failing.is_none() {
        tracing::warn!(
            error,
            "following the other servers' changes failed; retrying"
        );
    }
    *failing = Some(error.to_string());
}

/// ±25% so servers that lost the database together do not return together.
fn jitter(d: Duration) -> Duration {
    let f = 0.75 + rand_unit() * 0.5;
    d.mul_f64(f)
}

fn rand_unit() -> f64 {
    (uuid::Uuid::new_v4().as_u128() & 0xffff) as f64 / 65535.0
}

// === impl DataStore ===

impl DataStore {
    /// Applies the change records written by other servers since the last one applied.
    /// Returns how many records it read.
    pub(crate) async fn catch_up(&self) -> Result<usize, StoreError> {
        let _w = self.write_lock().await?;
        let last = self.applied.load(Ordering::SeqCst);
        let (rows, pruned): (Vec<(i64, String, String, String)>, i64) = on_pool!(&self.pool, p, _d => {
            let rows = sqlx::query(
                "SELECT id, kind, key, origin FROM changes WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(last)
            .bind(CATCH_UP_BATCH as i64)
            .fetch_all(p)
            .await?
            .iter()
            .map(|r| Ok((r.int("id")?, r.text("kind")?, r.text("key")?, r.text("origin")?)))
            .collect::<Result<_, sqlx::Error>>()?;
            let pruned = sqlx::query(
                "SELECT value FROM datastore_meta WHERE name = 'changes_pruned_through'",
            )
            .fetch_one(p)
            .await?
            .int("value")?;
            (rows, pruned)
        });
        if pruned > last {
            self.reload_all().await?;
            return Ok(rows.len());
        }
        let Some(&(newest, ..)) = rows.last() else {
            return Ok(0);
        };
        let mut entries = BTreeSet::new();
        let mut agents = BTreeSet::new();
        let (mut peers, mut federated, mut relationships) = (false, false, false);
        for (_, k, key, origin) in &rows {
            if **origin == *self.origin {
                continue;
            }
            match k.as_str() {
                kind::ENTRY => {
                    entries.insert(key.clone());
                }
                kind::AGENT => {
                    agents.insert(key.clone());
                }
                kind::SERVER_BUNDLE => peers = true,
                kind::FEDERATED_BUNDLE => federated = true,
                kind::RELATIONSHIP => relationships = true,
                other => tracing::debug!(kind = other, "unknown change kind ignored"),
            }
        }
        self.apply_entries(&entries).await?;
        for id in &agents {
            let Ok(agent) = id.parse::<SpiffeId>() else {
                continue;
            };
            self.apply_agent(&agent).await?;
        }
        if peers {
            self.peers.send_modify(|v| *v += 1);
        }
        if federated {
            self.bundle_changed();
        }
        if relationships {
            self.relationships.send_modify(|v| *v += 1);
        }
        self.applied.store(newest, Ordering::SeqCst);
        if !(entries.is_empty() && agents.is_empty()) {
            self.notify();
        }
        Ok(rows.len())
    }

    /// Reads these entries again and puts what the database says in the index.
    async fn apply_entries(&self, ids: &BTreeSet<String>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut fresh = Vec::with_capacity(ids.len());
        for id in ids {
            let e = on_pool!(&self.pool, p, _d => {
                sqlx::query("SELECT * FROM entries WHERE id = $1")
                    .bind(id)
                    .fetch_optional(p)
                    .await?
                    .as_ref()
                    .map(entry_from_row)
                    .transpose()?
            });
            fresh.push((id, e));
        }
        let mut idx = self.index_write();
        let mut parents = Vec::new();
        for (id, e) in fresh {
            if let Some(old) = idx.remove(id) {
                parents.push(old.parent_id.clone());
            }
            if let Some(e) = e {
                parents.push(e.parent_id.clone());
                idx.insert(Arc::new(e));
            }
        }
        self.entries_changed(&idx, &parents.iter().collect::<Vec<_>>());
        Ok(())
    }

    /// Reads an agent again: evicted or banned elsewhere ends its streams here too.
    async fn apply_agent(&self, agent: &SpiffeId) -> Result<(), StoreError> {
        let rec = on_pool!(&self.pool, p, _d => {
            sqlx::query("SELECT * FROM agents WHERE spiffe_id = $1")
                .bind(agent.as_str())
                .fetch_optional(p)
                .await?
                .as_ref()
                .map(agent_from_row)
                .transpose()?
        });
        match rec {
            None => {
                if self.index_write().agent_selectors.remove(agent).is_some() {
                    self.hub.agent_removed(agent, "was evicted");
                }
            }
            Some(r) if r.banned => self.hub.agent_removed(agent, "is banned"),
            Some(r) => self.apply_agent_selectors(agent, r.selectors),
        }
        Ok(())
    }

    /// Rebuilds the index from the database (the change log no longer covers the gap).
    async fn reload_all(&self) -> Result<(), StoreError> {
        let last = self.last_change().await?;
        let index = self.load_index().await?;
        let mut idx = self.index_write();
        *idx = index;
        self.hub.all_changed(|agent| idx.authorized(agent));
        drop(idx);
        self.applied.store(last, Ordering::SeqCst);
        self.peers.send_modify(|v| *v += 1);
        self.relationships.send_modify(|v| *v += 1);
        self.bundle_changed();
        tracing::info!(
            "reloaded the datastore index: the change log had been pruned past this server"
        );
        Ok(())
    }

    /// Deletes change records written before `before` (unix seconds).
    pub(crate) async fn prune_changes(&self, before: i64) -> Result<u64, StoreError> {
        let _w = self.write_lock().await?;
        Ok(on_pool!(&self.pool, p, d => async {
            let mut tx = super::begin_write!(p, d).await?;
            let through = sqlx::query("SELECT COALESCE(MAX(id), 0) AS through FROM changes WHERE at < $1")
                .bind(before)
                .fetch_one(&mut *tx)
                .await?
                .int("through")?;
            let r = sqlx::query("DELETE FROM changes WHERE id <= $1")
                .bind(through)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE datastore_meta SET value = $1 WHERE name = 'changes_pruned_through' AND value < $1",
            )
            .bind(through)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(r.rows_affected())
        }.await)?)
    }
}

/// Prunes the change log of a database only this process writes (SQLite) until the pool closes.
pub(super) async fn prune_loop(ds: DataStore) {
    loop {
        tokio::time::sleep(PRUNE_EVERY).await;
        if matches!(&ds.pool, Pool::Sqlite(p) if p.is_closed()) {
            return;
        }
        if let Err(e) = ds
            .prune_changes(crate::now_unix() - KEEP_CHANGES_SECS)
            .await
        {
            tracing::warn!(error = %e, "pruning the datastore change log");
        }
    }
}
