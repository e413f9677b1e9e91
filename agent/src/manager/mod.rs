//! The manager keeps the agent's state in step with the server: it renews the agent SVID, holds
//! a SyncEntries stream open, signs and rotates workload SVIDs, and publishes snapshots for the
//! Workload API.
//!
//! Everything that talks to the server degrades to "keep serving what we have": while the server
//! is unreachable, cached SVIDs and bundles stay available and the manager reconnects with
//! backoff.

pub mod cache;
pub mod jwt;
pub mod rotation;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sigil_proto::agent::node_client::NodeClient;
use sigil_proto::agent::{
    SignX509SvidsRequest, SvidParams, SyncEntriesRequest, SyncEntriesResponse,
};
use sigil_spiffe::{SpiffeId, TrustDomain};
use tokio::sync::watch;
use tonic::transport::Channel;

use self::cache::{BundleRecord, Entry, Identity, Snapshot, WorkloadSvid};
use self::jwt::JwtSigner;
use self::rotation::{Backoff, lifetime_start, random_rotate_at_ms, rotate_at_ms};
use crate::keys::{KeyError, KeyPair, PrivateKeyDer};
use crate::node::client::Credentials;
use crate::node::storage::DiskStore;
use crate::node::tls::ServerTrust;
use crate::node::{AgentSvid, NodeAttestor, NodeError, ServerEndpoint};
use crate::svid;

/// At most this many CSRs per SignX509Svids call.
pub const MAX_SIGN_BATCH: usize = 500;
/// Batches in flight at once.
const SIGN_CONCURRENCY: usize = 4;
/// Delay before re-trying an entry the server would not sign, doubled per failure up to the cap.
const SIGN_RETRY_MIN: Duration = Duration::from_secs(2);
const SIGN_RETRY_MAX: Duration = Duration::from_secs(60);

/// Rotations due within this many milliseconds of each other are done together.
const COALESCE_MS: i64 = 250;

/// Why the manager stopped.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The server no longer accepts this agent (evicted or banned).
    #[error("the server rejected this agent (evicted or banned?): {0}")]
    Rejected(#[source] NodeError),
}

/// What other parts of the agent read: snapshots, credentials and JWT minting.
#[derive(Clone, Debug)]
pub struct ManagerHandle {
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub creds: watch::Receiver<Arc<Credentials>>,
    pub jwt: JwtSigner,
    /// Whether the entry sync with the server is up, and since when (health, metrics).
    pub connection: watch::Receiver<Connection>,
}

/// The state of the agent's link to its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    pub connected: bool,
    /// Unix seconds of the last change (0: never connected yet).
    pub since: i64,
}

/// The state machine; see the module docs.
#[derive(Debug)]
pub struct Manager {
    endpoint: ServerEndpoint,
    store: Option<DiskStore>,
    creds: Arc<watch::Sender<Arc<Credentials>>>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    client: watch::Sender<Option<NodeClient<Channel>>>,
    jwt: JwtSigner,
    /// Set for agents that attest again (k8s_psat) instead of renewing, and after the server
    /// stopped accepting their SVID (evicted, or re-attested elsewhere).
    reattest: Option<NodeAttestor>,
    state: State,
    /// SVIDs issued and rotated, sync state (`telemetry`).
    metrics: Arc<sigil_telemetry::Registry>,
    connection: watch::Sender<Connection>,
}

/// Mutable cache state; published as [`Snapshot`]s.
#[derive(Debug)]
struct State {
    trust_domain: TrustDomain,
    server_id: SpiffeId,
    synced: bool,
    entries: HashMap<String, Arc<Entry>>,
    svids: HashMap<String, Arc<WorkloadSvid>>,
    /// Entries whose last signing failed: (failures so far, next attempt in Unix ms).
    retry: HashMap<String, (u32, i64)>,
    bundle: Option<Arc<BundleRecord>>,
    federated: BTreeMap<TrustDomain, Arc<BundleRecord>>,
    dirty: bool,
    /// Own-trust-domain roots received but not yet written to the data dir.
    unsaved_roots: Option<Arc<Vec<Vec<u8>>>>,
}

/// A snapshot or delta being assembled from SyncEntries chunks.
#[derive(Debug, Default)]
struct Pending {
    number: u64,
    /// `entries` and `deleted` change the current set instead of replacing it.
    delta: bool,
    deleted: Vec<String>,
    entries: Vec<sigil_proto::types::Entry>,
    bundle: Option<sigil_proto::types::Bundle>,
    federated: Option<Vec<sigil_proto::types::Bundle>>,
}

/// Why a sync session ended without error.
enum SessionEnd {
    /// The agent SVID was renewed: reconnect presenting the new one.
    Renewed,
}

// === impl Manager ===

impl Manager {
    pub fn new(
        endpoint: ServerEndpoint,
        store: Option<DiskStore>,
        trust_domain: TrustDomain,
        creds: Credentials,
        bundle: Option<BundleRecord>,
        jwt_cache_size: usize,
    ) -> (Self, ManagerHandle) {
        let (creds_tx, creds_rx) = watch::channel(Arc::new(creds));
        let mut snap = Snapshot::empty(trust_domain.clone());
        snap.bundle = bundle.clone().map(Arc::new);
        let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(snap));
        let (connection_tx, connection_rx) = watch::channel(Connection {
            connected: false,
            since: 0,
        });
        let (client_tx, client_rx) = watch::channel(None);
        let jwt = JwtSigner::new(client_rx, jwt_cache_size);
        let server_id = endpoint.server_id().clone();
        let manager = Self {
            endpoint,
            store,
            creds: Arc::new(creds_tx),
            snapshot: snapshot_tx,
            client: client_tx,
            jwt: jwt.clone(),
            reattest: None,
            state: State {
                trust_domain,
                server_id,
                synced: false,
                entries: HashMap::new(),
                svids: HashMap::new(),
                retry: HashMap::new(),
                bundle: bundle.map(Arc::new),
                federated: BTreeMap::new(),
                dirty: false,
                unsaved_roots: None,
            },
            metrics: Arc::default(),
            connection: connection_tx,
        };
        let handle = ManagerHandle {
            snapshot: snapshot_rx,
            creds: creds_rx,
            connection: connection_rx,
            jwt,
        };
        (manager, handle)
    }

    /// The agent gets new SVIDs by attesting again with `attestor` (k8s_psat), also when the
    /// server stops accepting its SVID.
    pub fn reattest_with(mut self, attestor: NodeAttestor) -> Self {
        self.reattest = Some(attestor);
        self
    }

    /// Records a change of the link to the server (health and metrics read it).
    fn set_connected(&self, connected: bool) {
        self.connection.send_if_modified(|c| {
            if c.connected == connected && c.since != 0 {
                return false;
            }
            *c = Connection {
                connected,
                since: svid::now_unix(),
            };
            true
        });
    }

    /// Counts into `metrics` (the agent's registry) instead of a private one.
    pub fn with_metrics(mut self, metrics: Arc<sigil_telemetry::Registry>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs until the server rejects the agent.
    pub async fn run(mut self) -> Result<(), ManagerError> {
        let creds = self.creds.clone();
        let endpoint = self.endpoint.clone();
        let store = self.store.clone();
        let reattest = self.reattest.clone();
        tokio::select! {
            r = renew_agent_svid(&endpoint, store.as_ref(), &creds, reattest.as_ref()) => r,
            r = self.sync_loop() => r,
        }
    }

    async fn sync_loop(&mut self) -> Result<(), ManagerError> {
        let mut backoff = Backoff::reconnect();
        loop {
            let channel = self.endpoint.mtls_channel(self.creds.subscribe());
            let client = NodeClient::new(channel);
            self.client.send_replace(Some(client.clone()));
            let svid_at_start = self.creds.borrow().svid.clone();
            match self.session(client, &mut backoff).await {
                Ok(SessionEnd::Renewed) => {
                    tracing::debug!("reconnecting to the server with the renewed agent SVID");
                }
                Err(e) if e.is_agent_rejected() => {
                    let Some(attestor) = self.reattest.clone() else {
                        return Err(ManagerError::Rejected(e));
                    };
                    // Re-attested meanwhile (the previous SVID is refused from then on):
                    // reconnect with the new one.
                    if !Arc::ptr_eq(&self.creds.borrow().svid, &svid_at_start) {
                        continue;
                    }
                    tracing::warn!(error = %e, "the server refused the agent SVID; attesting again");
                    let current = self.creds.borrow().clone();
                    match reattest_agent(&self.endpoint, &attestor, &current).await {
                        Ok(svid) => {
                            publish_agent_svid(self.store.as_ref(), &self.creds, svid).await;
                        }
                        Err(e) if e.is_agent_rejected() => {
                            return Err(ManagerError::Rejected(e));
                        }
                        Err(error) => {
                            let delay = backoff.next_delay();
                            tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "attesting again failed");
                            tokio::time::sleep(delay).await;
                        }
                    }
                }
                Err(error) => {
                    self.set_connected(false);
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        %error,
                        retry_in_ms = delay.as_millis() as u64,
                        "lost the entry sync with the server; serving cached SVIDs"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One SyncEntries stream: apply snapshots as they complete, sign what is missing, rotate
    /// what is due.
    async fn session(
        &mut self,
        client: NodeClient<Channel>,
        backoff: &mut Backoff,
    ) -> Result<SessionEnd, NodeError> {
        let mut creds_rx = self.creds.subscribe();
        let svid_in_use = creds_rx.borrow_and_update().svid.clone();
        let mut stream = client
            .clone()
            .sync_entries(SyncEntriesRequest {})
            .await?
            .into_inner();
        tracing::debug!(server = %self.endpoint.address(), "entry sync stream open");
        self.set_connected(true);
        let mut pending: Option<Pending> = None;
        // The number of the last message applied on this stream: deltas build on what came
        // before, so a delta that does not follow it (or comes before the full set) means the
        // cache may have missed something, and the stream is reopened: a fresh full set.
        let mut applied: Option<u64> = None;
        loop {
            // Not sooner than COALESCE_MS from now: with thousands of SVIDs spread by jitter,
            // waking for each one would rescan the cache thousands of times.
            let wake = self
                .state
                .next_due_ms()
                .map(|at| deadline_from_unix_ms(at.max(now_unix_ms() + COALESCE_MS)));
            tokio::select! {
                msg = stream.message() => {
                    let Some(msg) = msg? else {
                        return Err(tonic::Status::unavailable("server closed the entry sync stream").into());
                    };
                    backoff.reset();
                    if let Some(done) = accumulate(&mut pending, msg) {
                        if let Err(why) = check_sequence(applied, &done) {
                            tracing::warn!(reason = why, "entry sync out of step; resyncing");
                            return Err(tonic::Status::data_loss(why).into());
                        }
                        applied = Some(done.number);
                        self.apply(done);
                        self.persist_bundle().await;
                        self.sign_due(&client).await?;
                        self.publish();
                    }
                }
                _ = sleep_until(wake) => {
                    self.sign_due(&client).await?;
                    self.publish();
                }
                changed = creds_rx.changed() => {
                    if changed.is_err() {
                        return Ok(SessionEnd::Renewed);
                    }
                    if !Arc::ptr_eq(&creds_rx.borrow_and_update().svid, &svid_in_use) {
                        return Ok(SessionEnd::Renewed);
                    }
                }
            }
        }
    }

    /// Applies a complete snapshot from the server.
    fn apply(&mut self, p: Pending) {
        let st = &mut self.state;
        if let Some(b) = p.bundle {
            match BundleRecord::from_proto(&b) {
                Ok(rec) if rec.trust_domain() == &st.trust_domain => {
                    if st.bundle.as_deref() != Some(&rec) {
                        self.bundle_changed(rec);
                    }
                }
                Ok(rec) => tracing::warn!(
                    trust_domain = %rec.trust_domain(),
                    "server sent a bundle for another trust domain as our own; ignored"
                ),
                Err(error) => tracing::warn!(%error, "invalid bundle from the server; ignored"),
            }
        }
        let st = &mut self.state;
        if let Some(list) = p.federated {
            let mut federated = BTreeMap::new();
            for b in &list {
                match BundleRecord::from_proto(b) {
                    Ok(rec) if rec.trust_domain() != &st.trust_domain => {
                        let td = rec.trust_domain().clone();
                        let rec = match st.federated.get(&td) {
                            Some(old) if **old == rec => old.clone(),
                            _ => Arc::new(rec),
                        };
                        federated.insert(td, rec);
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "invalid federated bundle; ignored"),
                }
            }
            if federated != st.federated {
                st.federated = federated;
                st.dirty = true;
            }
        }

        // A delta starts from what we hold; a snapshot from nothing.
        let mut entries = if p.delta {
            let mut current = st.entries.clone();
            for id in &p.deleted {
                current.remove(id);
            }
            current
        } else {
            HashMap::with_capacity(p.entries.len())
        };
        for e in &p.entries {
            match Entry::from_proto(e) {
                // Node-alias entries (parented by the server) describe this agent itself, not a
                // workload: no workload can match them, so no SVID is minted for them.
                Ok(entry) if entry.parent_id == st.server_id.as_str() => {
                    entries.remove(&entry.id);
                }
                Ok(entry) => {
                    let entry = match st.entries.get(&entry.id) {
                        Some(old) if **old == entry => old.clone(),
                        _ => Arc::new(entry),
                    };
                    entries.insert(entry.id.clone(), entry);
                }
                Err(error) => {
                    // A changed entry we cannot read must not keep its old version.
                    entries.remove(&e.id);
                    tracing::warn!(%error, "invalid entry from the server; ignored")
                }
            }
        }
        // SVIDs of deleted entries go; so do those whose entry changed identity, TTL or DNS names.
        st.svids.retain(|id, svid| match entries.get(id) {
            Some(e) => {
                e.spiffe_id == svid.spiffe_id
                    && st
                        .entries
                        .get(id)
                        .is_none_or(|old| old.svid_still_valid_for(e))
            }
            None => false,
        });
        st.retry.retain(|id, _| entries.contains_key(id));
        if entries.len() != st.entries.len()
            || entries
                .iter()
                .any(|(id, e)| st.entries.get(id).is_none_or(|old| !Arc::ptr_eq(old, e)))
        {
            st.dirty = true;
        }
        st.entries = entries;
        if !st.synced {
            st.synced = true;
            st.dirty = true;
            tracing::info!(entries = st.entries.len(), "initial entry sync complete");
        }
        let entries = &st.entries;
        self.jwt.retain_entries(|id| entries.contains_key(id));
    }

    /// A new own-trust-domain bundle: serve it, trust it for the server connection, persist it,
    /// and re-sign SVIDs that no longer chain to it (their CA was removed) or that are chained
    /// to a tainted authority; JWT-SVIDs signed with a tainted key are dropped.
    fn bundle_changed(&mut self, rec: BundleRecord) {
        let st = &mut self.state;
        let roots = rec.bundle.x509_authorities.clone();
        let tainted = rec.bundle.tainted_x509_authorities.clone();
        let (x509_changed, taint_changed) = match st.bundle.as_ref() {
            Some(old) => (
                old.bundle.x509_authorities != roots,
                old.bundle.tainted_x509_authorities != tainted,
            ),
            None => (true, true),
        };
        self.jwt.drop_signed_by(&rec.bundle.tainted_jwt_authorities);
        st.bundle = Some(Arc::new(rec));
        st.dirty = true;
        if !(x509_changed || taint_changed) || roots.is_empty() {
            return;
        }
        tracing::info!(
            authorities = roots.len(),
            tainted = tainted.len(),
            "trust bundle updated"
        );
        let now = svid::now_unix();
        let mut resign = 0usize;
        for svid in st.svids.values_mut() {
            if svid::chained_to(&svid.chain, &tainted)
                || svid::verify_chain(&svid.chain, &roots, now).is_err()
            {
                let mut s = (**svid).clone();
                s.rotate_at_ms = 0;
                *svid = Arc::new(s);
                resign += 1;
            }
        }
        if resign > 0 {
            tracing::info!(
                svids = resign,
                "re-issuing SVIDs chained to a tainted or removed authority"
            );
        }
        let tainted = Arc::new(tainted);
        let roots = Arc::new(roots);
        // Written by `persist_bundle` after this snapshot is applied: an fsync has no place
        // on an async worker.
        st.unsaved_roots = Some(roots.clone());
        self.creds.send_modify(|c| {
            let mut next = (**c).clone();
            next.roots = roots;
            next.tainted = tainted;
            *c = Arc::new(next);
        });
    }

    /// Writes newly received roots to the data dir, on the blocking pool (it fsyncs).
    async fn persist_bundle(&mut self) {
        let (Some(roots), Some(store)) = (self.state.unsaved_roots.take(), self.store.clone())
        else {
            return;
        };
        match tokio::task::spawn_blocking(move || store.save_bundle(&roots)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "persisting the trust bundle"),
            Err(error) => tracing::warn!(%error, "persisting the trust bundle: task failed"),
        }
    }

    /// Signs SVIDs for entries that have none (and are not backing off) or whose SVID is due.
    async fn sign_due(&mut self, client: &NodeClient<Channel>) -> Result<(), NodeError> {
        // Anything due within the coalescing window goes now, in the same batches.
        let now_ms = now_unix_ms() + COALESCE_MS;
        let st = &self.state;
        let mut due: Vec<String> = st
            .entries
            .keys()
            .filter(|id| match st.svids.get(*id) {
                Some(svid) => svid.rotate_at_ms <= now_ms,
                None => st.retry.get(*id).is_none_or(|(_, at)| *at <= now_ms),
            })
            .cloned()
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        due.sort();
        let batches: Vec<Vec<String>> =
            due.chunks(MAX_SIGN_BATCH).map(<[String]>::to_vec).collect();
        tracing::debug!(
            count = due.len(),
            batches = batches.len(),
            "signing workload SVIDs"
        );
        let mut results = futures::stream::iter(batches.into_iter().map(|batch| {
            let client = client.clone();
            async move { sign_batch(client, batch).await }
        }))
        .buffer_unordered(SIGN_CONCURRENCY);

        // Keep what succeeded even if some batch failed; report the first failure afterwards.
        let mut first_error = None;
        while let Some(result) = results.next().await {
            match result {
                Ok(outcomes) => {
                    for (id, outcome) in outcomes {
                        self.record_signing(id, outcome);
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn record_signing(
        &mut self,
        id: String,
        outcome: Result<(Vec<Vec<u8>>, PrivateKeyDer), String>,
    ) {
        let st = &mut self.state;
        let Some(entry) = st.entries.get(&id) else {
            return;
        };
        let checked = outcome.and_then(|(chain, key)| {
            let leaf = chain.first().ok_or("empty certificate chain")?;
            let id = svid::spiffe_id(leaf).map_err(|e| e.to_string())?;
            if id != entry.spiffe_id {
                return Err(format!("server issued {id}, expected {}", entry.spiffe_id));
            }
            let (not_before, not_after) = svid::validity(leaf).map_err(|e| e.to_string())?;
            let received = svid::now_unix();
            // Never sooner than a second after receipt: a server handing out already-expired
            // certificates must not turn rotation into a busy loop.
            let rotate_at_ms =
                random_rotate_at_ms(not_before, not_after, received).max(received * 1000 + 1000);
            Ok(WorkloadSvid {
                spiffe_id: id,
                chain,
                key,
                not_before,
                not_after,
                rotate_at_ms,
            })
        });
        match checked {
            Ok(svid) => {
                let rotated = st.svids.contains_key(&id);
                tracing::debug!(
                    entry = %id,
                    spiffe_id = %svid.spiffe_id,
                    expires_at = svid.not_after,
                    rotated,
                    "workload SVID issued"
                );
                st.svids.insert(id.clone(), Arc::new(svid));
                st.retry.remove(&id);
                self.metrics.inc(
                    "sigil_agent_svids_issued_total",
                    "Workload X509-SVIDs received from the server, by reason (new entry or rotation).",
                    &[("reason", if rotated { "rotation" } else { "new" })],
                );
                st.dirty = true;
            }
            Err(error) => {
                let (failures, _) = st.retry.get(&id).copied().unwrap_or((0, 0));
                let delay =
                    (SIGN_RETRY_MIN * 2u32.saturating_pow(failures.min(6))).min(SIGN_RETRY_MAX);
                tracing::warn!(entry = %id, spiffe_id = %entry.spiffe_id, %error, retry_in_s = delay.as_secs(), "could not obtain an SVID");
                self.metrics.inc(
                    "sigil_agent_svid_sign_failures_total",
                    "Workload X509-SVIDs the server could not sign (retried with backoff).",
                    &[],
                );
                st.retry.insert(
                    id.clone(),
                    (failures + 1, now_unix_ms() + delay.as_millis() as i64),
                );
                // A due SVID that failed to rotate keeps being served, re-tried at the same pace.
                if let Some(svid) = st.svids.get_mut(&id) {
                    let mut s = (**svid).clone();
                    s.rotate_at_ms = now_unix_ms() + delay.as_millis() as i64;
                    *svid = Arc::new(s);
                }
            }
        }
    }

    /// Publishes a new snapshot if anything changed.
    fn publish(&mut self) {
        let st = &mut self.state;
        if !st.dirty {
            return;
        }
        st.dirty = false;
        let mut identities: Vec<Identity> = st
            .entries
            .values()
            .map(|e| Identity {
                entry: e.clone(),
                svid: st.svids.get(&e.id).cloned(),
            })
            .collect();
        identities.sort_by(|a, b| {
            (a.entry.created_at, &a.entry.id).cmp(&(b.entry.created_at, &b.entry.id))
        });
        self.snapshot.send_replace(Arc::new(Snapshot::new(
            st.trust_domain.clone(),
            st.synced,
            st.bundle.clone(),
            st.federated.clone(),
            identities,
        )));
    }
}

// === impl State ===

impl State {
    /// The earliest pending rotation or retry, Unix ms.
    fn next_due_ms(&self) -> Option<i64> {
        let rotations = self
            .entries
            .keys()
            .filter_map(|id| self.svids.get(id).map(|s| s.rotate_at_ms));
        let retries = self
            .entries
            .keys()
            .filter(|id| !self.svids.contains_key(*id))
            .filter_map(|id| self.retry.get(id).map(|(_, at)| *at));
        rotations.chain(retries).min()
    }
}

/// Whether a complete message may be applied after the one numbered `applied`: a full set
/// always may; a delta only right after the message before it.
fn check_sequence(applied: Option<u64>, next: &Pending) -> Result<(), &'static str> {
    if !next.delta {
        return Ok(());
    }
    match applied {
        None => Err("a delta arrived before the full set"),
        Some(n) if next.number != n + 1 => Err("a delta does not follow the last message"),
        Some(_) => Ok(()),
    }
}

/// Adds a chunk to the snapshot being assembled; returns the snapshot when `last` is set.
fn accumulate(pending: &mut Option<Pending>, msg: SyncEntriesResponse) -> Option<Pending> {
    // A chunk of a different snapshot than the one in progress (or one carrying the bundle,
    // which only first chunks do) starts over: a partial snapshot is never applied.
    let restart = match pending {
        None => true,
        Some(p) => p.number != msg.snapshot || msg.bundle.is_some(),
    };
    if restart {
        *pending = Some(Pending {
            number: msg.snapshot,
            delta: msg.delta,
            ..Default::default()
        });
    }
    let p = pending.as_mut()?;
    p.entries.extend(msg.entries);
    p.deleted.extend(msg.deleted_entry_ids);
    if msg.bundle.is_some() {
        p.bundle = msg.bundle;
        p.federated = Some(msg.federated_bundles);
    } else if !msg.federated_bundles.is_empty() {
        p.federated
            .get_or_insert_with(Vec::new)
            .extend(msg.federated_bundles);
    }
    if msg.last { pending.take() } else { None }
}

/// Generates keys and CSRs for a batch (on the blocking pool: key generation is CPU work) and
/// calls SignX509Svids. Per-entry failures are returned as `Err(reason)` items.
#[allow(clippy::type_complexity)]
async fn sign_batch(
    mut client: NodeClient<Channel>,
    ids: Vec<String>,
) -> Result<Vec<(String, Result<(Vec<Vec<u8>>, PrivateKeyDer), String>)>, NodeError> {
    let keys = tokio::task::spawn_blocking(move || {
        ids.into_iter()
            .map(|id| {
                let key = KeyPair::generate()?;
                let csr = key.csr_der()?;
                Ok((id, key.into_private_key(), csr))
            })
            .collect::<Result<Vec<_>, KeyError>>()
    })
    .await
    .map_err(|e| NodeError::InvalidResponse(format!("key generation task failed: {e}")))??;

    let mut by_id: HashMap<String, PrivateKeyDer> = HashMap::with_capacity(keys.len());
    let mut params = Vec::with_capacity(keys.len());
    for (id, key, csr) in keys {
        params.push(SvidParams {
            entry_id: id.clone(),
            csr,
        });
        by_id.insert(id, key);
    }
    let resp = client
        .sign_x509_svids(crate::node::client::unary(SignX509SvidsRequest { params }))
        .await?
        .into_inner();

    let mut out = Vec::with_capacity(resp.results.len());
    for r in resp.results {
        let Some(key) = by_id.remove(&r.entry_id) else {
            continue;
        };
        let ok = r.status.as_ref().is_none_or(|s| s.code == 0);
        let outcome = match (ok, r.svid) {
            (true, Some(svid)) => Ok((svid.cert_chain, key)),
            (true, None) => Err("no SVID in the server's result".to_string()),
            (false, _) => {
                let s = r.status.unwrap_or_default();
                Err(format!(
                    "server returned {}: {}",
                    tonic::Code::from_i32(s.code),
                    s.message
                ))
            }
        };
        out.push((r.entry_id, outcome));
    }
    // Entries the server did not answer for are retried like failures.
    out.extend(by_id.into_keys().map(|id| {
        (
            id,
            Err("the server returned no result for this entry".to_string()),
        )
    }));
    Ok(out)
}

/// Renews the agent SVID at half-life, persisting and publishing each new one: with
/// RenewAgent, or by attesting again for agents whose attestor can (k8s_psat: fresh evidence,
/// current selectors). A refused re-attestation is retried while the current SVID lasts (the
/// token may be refused for a while, e.g. before kubelet rotated it).
async fn renew_agent_svid(
    endpoint: &ServerEndpoint,
    store: Option<&DiskStore>,
    creds: &watch::Sender<Arc<Credentials>>,
    reattest: Option<&NodeAttestor>,
) -> Result<(), ManagerError> {
    let mut backoff = Backoff::reconnect();
    let mut rx = creds.subscribe();
    loop {
        let current = rx.borrow_and_update().clone();
        // An SVID signed by a tainted authority is renewed now (SPIRE's taint semantics).
        let due = if svid::chained_to(&current.svid.chain, &current.tainted) {
            0
        } else {
            rotate_at_ms(
                lifetime_start(current.svid.not_before, current.svid.received_at),
                current.svid.not_after,
                0.0,
            )
        };
        if due > now_unix_ms() {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline_from_unix_ms(due)) => {}
                // Re-evaluate when the credentials change (e.g. roots); the SVID may be the same.
                r = rx.changed() => {
                    if r.is_err() { return Ok(()); }
                    continue;
                }
            }
        }
        let renewed = match reattest {
            Some(attestor) => reattest_agent(endpoint, attestor, &current).await,
            None => {
                let mut client = NodeClient::new(endpoint.mtls_channel(creds.subscribe()));
                endpoint.renew(&mut client, &current.roots).await
            }
        };
        match renewed {
            Ok(svid) => {
                backoff.reset();
                tracing::info!(spiffe_id = %svid.id, expires_at = svid.not_after, "agent SVID renewed");
                publish_agent_svid(store, creds, svid).await;
            }
            Err(e)
                if e.is_agent_rejected()
                    && (reattest.is_none() || current.svid.is_expired(svid::now_unix())) =>
            {
                return Err(ManagerError::Rejected(e));
            }
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "renewing the agent SVID failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Node attestation again, verifying the server with the current bundle.
async fn reattest_agent(
    endpoint: &ServerEndpoint,
    attestor: &NodeAttestor,
    current: &Credentials,
) -> Result<AgentSvid, NodeError> {
    let trust = ServerTrust::Bundle {
        roots: current.roots.clone(),
        server_id: endpoint.server_id().clone(),
    };
    let attested = endpoint.attest(attestor, trust).await?;
    if attested.svid.id != current.svid.id {
        tracing::warn!(previous = %current.svid.id, now = %attested.svid.id, "attesting again gave this agent another SPIFFE ID");
    }
    Ok(attested.svid)
}

/// Persists a new agent SVID (before it is used, off the async workers: the write fsyncs) and
/// publishes it, which makes the sync session reconnect with it.
async fn publish_agent_svid(
    store: Option<&DiskStore>,
    creds: &watch::Sender<Arc<Credentials>>,
    svid: AgentSvid,
) {
    let svid = Arc::new(svid);
    if let Some(store) = store.cloned() {
        let saved = svid.clone();
        match tokio::task::spawn_blocking(move || store.save_svid(&saved)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "persisting the new agent SVID"),
            Err(error) => tracing::warn!(%error, "persisting the new agent SVID: task failed"),
        }
    }
    creds.send_modify(|c| {
        let mut next = (**c).clone();
        next.svid = svid;
        *c = Arc::new(next);
    });
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A tokio deadline for a wall-clock time. Wall-clock rotation times map onto the monotonic
/// clock at the moment of computing; deadlines are recomputed on every loop iteration, so clock
/// steps only delay or advance one wake-up.
fn deadline_from_unix_ms(at_ms: i64) -> tokio::time::Instant {
    let delta = at_ms.saturating_sub(now_unix_ms()).max(0) as u64;
    tokio::time::Instant::now() + Duration::from_millis(delta)
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
