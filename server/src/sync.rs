//! Who must hear about a write: the per-agent fan-out behind `SyncEntries`.
//!
//! Each open stream is a subscriber holding what its agent was last sent (entry id → entry) and
//! the identities it *reaches*: its own agent ID, the node aliases it holds and the SPIFFE IDs
//! of the entries it holds (an entry parented to any of them belongs to the agent: SPIRE's
//! parent/alias rule). An index
//! from identity to subscribers answers "which agents does a write to an entry parented to P
//! concern?" without looking at the others, so a pod created on one node costs one node's
//! stream a delta and every other stream nothing.
//!
//! The datastore calls [`SyncHub::entries_changed`] while it still holds the entry index's
//! write lock, right after the commit, so changes reach the hub in commit order and a
//! subscriber's state is always the index's at some commit. Lock order: index, then hub.
//! Changes for a subscriber are merged into one pending delta (latest version of each entry,
//! deletions cancelling upserts), so a slow agent costs memory bounded by its own set, never a
//! queue of every write.

use crate::entry::Entry;
use sigil_spiffe::SpiffeId;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// What a subscriber has not been sent yet.
#[derive(Debug, Default)]
pub struct Pending {
    /// Entries added to or changed in the agent's set (latest version).
    pub upserts: HashMap<String, Arc<Entry>>,
    /// Entries that left the agent's set.
    pub deletes: HashSet<String>,
    /// The trust domain's or a federated bundle changed.
    pub bundle: bool,
    /// The agent was evicted or banned: end the stream with this message.
    pub closed: Option<String>,
    /// When the oldest change in here was committed (the sync lag is measured from it).
    pub since: Option<std::time::Instant>,
}

/// What an agent holds, as the datastore's index computes it: the entries it may obtain SVIDs
/// for, and the node aliases it holds (identities entries can be parented to without being
/// among its entries themselves).
#[derive(Debug, Default)]
pub(crate) struct Authorized {
    pub entries: Vec<Arc<Entry>>,
    pub aliases: Vec<SpiffeId>,
}

/// The fan-out; one per datastore.
#[derive(Debug, Default)]
pub struct SyncHub {
    state: Mutex<HubState>,
}

#[derive(Debug, Default)]
struct HubState {
    next_id: u64,
    subs: HashMap<u64, Sub>,
    /// Identity → subscribers whose agent reaches it.
    holders: HashMap<SpiffeId, HashSet<u64>>,
}

#[derive(Debug)]
struct Sub {
    agent: SpiffeId,
    reach: HashSet<SpiffeId>,
    known: HashMap<String, Arc<Entry>>,
    pending: Pending,
    notify: Arc<Notify>,
}

/// An open stream's registration; unregisters on drop.
#[derive(Debug)]
pub struct Subscription {
    id: u64,
    hub: Arc<SyncHub>,
    notify: Arc<Notify>,
}

// === impl Pending ===

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty() && !self.bundle && self.closed.is_none()
    }
}

// === impl SyncHub ===

impl SyncHub {
    fn lock(&self) -> MutexGuard<'_, HubState> {
        // Every critical section leaves the maps consistent before anything can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a stream for `agent` whose current authorized set is `authorized` (read from
    /// the index under its lock, which the caller still holds).
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        agent: &SpiffeId,
        authorized: &Authorized,
    ) -> Subscription {
        let notify = Arc::new(Notify::new());
        let mut st = self.lock();
        let id = st.next_id;
        st.next_id += 1;
        let known: HashMap<String, Arc<Entry>> = authorized
            .entries
            .iter()
            .map(|e| (e.id.clone(), e.clone()))
            .collect();
        let reach = reach_of(agent, authorized);
        for identity in &reach {
            st.holders.entry(identity.clone()).or_default().insert(id);
        }
        st.subs.insert(
            id,
            Sub {
                agent: agent.clone(),
                reach,
                known,
                pending: Pending::default(),
                notify: notify.clone(),
            },
        );
        Subscription {
            id,
            hub: self.clone(),
            notify,
        }
    }

    fn unsubscribe(&self, id: u64) {
        let mut st = self.lock();
        if let Some(sub) = st.subs.remove(&id) {
            for identity in &sub.reach {
                unhold(&mut st.holders, identity, id);
            }
        }
    }

    /// Entries parented to any of `parents` were created, changed or deleted: recompute the
    /// sets of the agents reaching those parents (with `authorized`, the index's rule) and
    /// queue what changed for them.
    pub(crate) fn entries_changed(
        &self,
        parents: &[&SpiffeId],
        authorized: impl Fn(&SpiffeId) -> Authorized,
    ) {
        let mut st = self.lock();
        let affected: HashSet<u64> = parents
            .iter()
            .filter_map(|p| st.holders.get(*p))
            .flatten()
            .copied()
            .collect();
        recompute(&mut st, affected, authorized);
    }

    /// A change any agent may be concerned by (a node-alias entry): recompute every stream.
    pub(crate) fn all_changed(&self, authorized: impl Fn(&SpiffeId) -> Authorized) {
        let mut st = self.lock();
        let all: HashSet<u64> = st.subs.keys().copied().collect();
        recompute(&mut st, all, authorized);
    }

    /// The agent's node selectors changed (it attested again): recompute its streams.
    pub(crate) fn agent_changed(
        &self,
        agent: &SpiffeId,
        authorized: impl Fn(&SpiffeId) -> Authorized,
    ) {
        let mut st = self.lock();
        let own: HashSet<u64> = st
            .subs
            .iter()
            .filter(|(_, s)| &s.agent == agent)
            .map(|(id, _)| *id)
            .collect();
        recompute(&mut st, own, authorized);
    }

    /// A bundle changed: every stream sends the bundles again.
    pub fn bundle_changed(&self) {
        let mut st = self.lock();
        for sub in st.subs.values_mut() {
            sub.pending.bundle = true;
            sub.pending
                .since
                .get_or_insert_with(std::time::Instant::now);
            sub.notify.notify_one();
        }
    }

    /// The agent was evicted or banned: its streams end at once.
    pub fn agent_removed(&self, agent: &SpiffeId, why: &str) {
        let mut st = self.lock();
        for sub in st.subs.values_mut().filter(|s| &s.agent == agent) {
            sub.pending.closed = Some(format!("agent {agent} {why}"));
            sub.notify.notify_one();
        }
    }

    /// Open streams.
    pub fn subscribers(&self) -> usize {
        self.lock().subs.len()
    }
}

/// Recomputes the sets of the subscribers `ids` and queues what changed for them.
fn recompute(st: &mut HubState, ids: HashSet<u64>, authorized: impl Fn(&SpiffeId) -> Authorized) {
    for id in ids {
        let Some(sub) = st.subs.get_mut(&id) else {
            continue;
        };
        let now = authorized(&sub.agent);
        let mut changed = false;
        let mut current: HashMap<String, Arc<Entry>> = HashMap::with_capacity(now.entries.len());
        for e in &now.entries {
            let same = sub.known.get(&e.id).is_some_and(|old| Arc::ptr_eq(old, e));
            if !same {
                sub.pending.deletes.remove(&e.id);
                sub.pending.upserts.insert(e.id.clone(), e.clone());
                changed = true;
            }
            current.insert(e.id.clone(), e.clone());
        }
        for gone in sub.known.keys().filter(|k| !current.contains_key(*k)) {
            sub.pending.upserts.remove(gone);
            sub.pending.deletes.insert(gone.clone());
            changed = true;
        }
        let reach = reach_of(&sub.agent, &now);
        // A new alias with nothing under it yet changes no entry, but must be reached from
        // now on, so later entries parented to it find this stream.
        if !changed && reach == sub.reach {
            continue;
        }
        sub.known = current;
        let old_reach = std::mem::replace(&mut sub.reach, reach.clone());
        if changed {
            sub.pending
                .since
                .get_or_insert_with(std::time::Instant::now);
            sub.notify.notify_one();
        }
        for identity in old_reach.difference(&reach) {
            unhold(&mut st.holders, identity, id);
        }
        for identity in reach {
            st.holders.entry(identity).or_default().insert(id);
        }
    }
}

fn reach_of(agent: &SpiffeId, authorized: &Authorized) -> HashSet<SpiffeId> {
    std::iter::once(agent.clone())
        .chain(authorized.aliases.iter().cloned())
        .chain(authorized.entries.iter().map(|e| e.spiffe_id.clone()))
        .collect()
}

fn unhold(holders: &mut HashMap<SpiffeId, HashSet<u64>>, identity: &SpiffeId, id: u64) {
    if let Some(set) = holders.get_mut(identity) {
        set.remove(&id);
        if set.is_empty() {
            holders.remove(identity);
        }
    }
}

// === impl Subscription ===

impl Subscription {
    /// Waits until something is pending (returns at once if something already is).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }

    /// Takes what is pending.
    pub fn take(&self) -> Pending {
        let mut st = self.hub.lock();
        st.subs
            .get_mut(&self.id)
            .map(|s| std::mem::take(&mut s.pending))
            .unwrap_or_default()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.id);
    }
}
