//! The node's pods (and, optionally, namespaces), as the watch delivers them.
//!
//! One writer (the watch task) and many readers (attestations). Readers wait on a
//! `watch::Receiver` that ticks on every change, so a caller whose pod is not known yet is
//! served the moment the watch delivers it, and a stream of a deleted pod ends the moment the
//! deletion arrives; nothing polls.
//!
//! A relist (start-up, reconnect after `410 Gone`) is buffered and swapped in when complete:
//! pods stay visible while the API server re-sends them, and only pods missing from the new
//! list are dropped — a live pod never disappears in between.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tokio::sync::watch;

use sigil_spiffe::Selector;

use crate::pod::{ContainerInfo, PodInfo};
use crate::selectors::pod_selectors;

/// What the watch reports, in kube-runtime's watcher terms.
#[derive(Debug)]
pub enum StoreEvent<T> {
    /// Added or modified.
    Apply(T),
    /// Deleted.
    Delete(T),
    /// A (re)list begins: buffer what follows.
    InitStart,
    /// One object of the list.
    InitApply(T),
    /// The list is complete: it replaces the store.
    InitDone,
}

/// A namespace's labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: Vec<(String, String)>,
}

/// The pods of this node, by UID and by container id.
#[derive(Debug)]
pub struct PodStore {
    state: RwLock<State>,
    changes: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct State {
    pods: HashMap<Arc<str>, Arc<PodInfo>>,
    /// Each pod's pod selectors, made once per pod version: attestations outnumber pod
    /// updates by far.
    selectors: HashMap<Arc<str>, Arc<[Selector]>>,
    /// Container id → UIDs of the pods whose statuses list it (one, unless something is wrong).
    by_container: HashMap<String, Vec<Arc<str>>>,
    relist: Option<HashMap<Arc<str>, Arc<PodInfo>>>,
    /// The first full list of pods has arrived.
    synced: bool,
    namespaces: HashMap<String, Arc<NamespaceInfo>>,
    ns_relist: Option<HashMap<String, Arc<NamespaceInfo>>>,
    ns_synced: bool,
}

/// What the store says about a caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// No pod on this node matches (yet).
    NoPod,
    /// The caller's pod, and its container once a status lists the recorded container id.
    Pod {
        pod: Arc<PodInfo>,
        /// [`pod_selectors`] of `pod`.
        selectors: Arc<[Selector]>,
        container: Option<ContainerInfo>,
    },
    /// More than one pod lists the recorded container id, or the id is listed by a pod other
    /// than the one the cgroup names: nobody can tell which pod the caller is in.
    Conflict {
        container_id: String,
        pods: Vec<String>,
    },
}

// === impl PodStore ===

impl Default for PodStore {
    fn default() -> Self {
        Self::new()
    }
}

impl PodStore {
    pub fn new() -> Self {
        Self {
            state: RwLock::new(State::default()),
            changes: watch::channel(0).0,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // Every write leaves the maps consistent before it can panic (there is nothing that
        // panics between the updates), so a poisoned lock still holds a usable state.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Applies one pod event from the watch.
    pub fn apply_pods(&self, event: StoreEvent<PodInfo>) {
        {
            let mut s = self.write();
            match event {
                StoreEvent::Apply(pod) => s.insert(Arc::new(pod)),
                StoreEvent::Delete(pod) => s.remove(&pod.uid),
                StoreEvent::InitStart => s.relist = Some(HashMap::new()),
                StoreEvent::InitApply(pod) => {
                    let pod = Arc::new(pod);
                    match &mut s.relist {
                        Some(buf) => {
                            buf.insert(pod.uid.clone(), pod);
                        }
                        // An object outside a list would be a watcher bug; still, never lose it.
                        None => s.insert(pod),
                    }
                }
                StoreEvent::InitDone => {
                    let fresh = s.relist.take().unwrap_or_default();
                    let gone: Vec<Arc<str>> = s
                        .pods
                        .keys()
                        .filter(|uid| !fresh.contains_key(*uid))
                        .cloned()
                        .collect();
                    for uid in gone {
                        s.remove(&uid);
                    }
                    for pod in fresh.into_values() {
                        s.insert(pod);
                    }
                    s.synced = true;
                }
            }
        }
        self.notify();
    }

    /// Applies one namespace event from the watch.
    pub fn apply_namespaces(&self, event: StoreEvent<NamespaceInfo>) {
        {
            let mut s = self.write();
            match event {
                StoreEvent::Apply(ns) => {
                    s.namespaces.insert(ns.name.clone(), Arc::new(ns));
                }
                StoreEvent::Delete(ns) => {
                    s.namespaces.remove(&ns.name);
                }
                StoreEvent::InitStart => s.ns_relist = Some(HashMap::new()),
                StoreEvent::InitApply(ns) => {
                    let ns = Arc::new(ns);
                    match &mut s.ns_relist {
                        Some(buf) => buf.insert(ns.name.clone(), ns),
                        None => s.namespaces.insert(ns.name.clone(), ns),
                    };
                }
                StoreEvent::InitDone => {
                    if let Some(fresh) = s.ns_relist.take() {
                        s.namespaces = fresh;
                    }
                    s.ns_synced = true;
                }
            }
        }
        self.notify();
    }

    /// Pods in the store.
    pub fn len(&self) -> usize {
        self.read().pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the first full list has arrived.
    pub fn synced(&self) -> bool {
        self.read().synced
    }

    pub fn get(&self, uid: &str) -> Option<Arc<PodInfo>> {
        self.read().pods.get(uid).cloned()
    }

    /// A receiver that ticks on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Joins what the kernel recorded (the cgroup's pod UID and container id) to a pod.
    pub fn lookup(&self, pod_uid: Option<&str>, container_id: Option<&str>) -> Lookup {
        self.read().lookup(pod_uid, container_id)
    }

    /// [`lookup`](Self::lookup), waiting up to `timeout` for the pod to be known. Returns at
    /// once if the pod is there (with or without its container: pod selectors do not depend on
    /// the container's status) or conflicts.
    pub async fn wait_lookup(
        &self,
        pod_uid: Option<&str>,
        container_id: Option<&str>,
        timeout: Duration,
    ) -> Lookup {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.subscribe();
        loop {
            rx.borrow_and_update();
            let found = self.lookup(pod_uid, container_id);
            if found != Lookup::NoPod {
                return found;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return found },
                _ = tokio::time::sleep_until(deadline) => return self.lookup(pod_uid, container_id),
            }
        }
    }

    /// A namespace's labels, waiting up to `timeout` for the namespace list to arrive.
    pub async fn wait_namespace(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Option<Arc<NamespaceInfo>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.subscribe();
        loop {
            rx.borrow_and_update();
            {
                let s = self.read();
                if let Some(ns) = s.namespaces.get(name) {
                    return Some(ns.clone());
                }
                if s.ns_synced {
                    return None;
                }
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return None },
                _ = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }

    /// Waits until pod `uid` differs from `seen` (what the caller was attested with; `None`
    /// if the pod was not known): `None` once it is gone (deleted, or missing from a relist),
    /// else its new state. Fields selectors do not use are stripped, so a readiness flip does
    /// not count as a change.
    pub async fn pod_changed(&self, uid: &str, seen: Option<Arc<PodInfo>>) -> Option<Arc<PodInfo>> {
        let mut rx = self.subscribe();
        loop {
            rx.borrow_and_update();
            let now = self.get(uid);
            match (&seen, &now) {
                (Some(_), None) => return None,
                (None, Some(_)) => return now,
                (Some(a), Some(b)) if !Arc::ptr_eq(a, b) && a != b => return now,
                _ => {}
            }
            if rx.changed().await.is_err() {
                // The store is dropped with the agent: nothing will be served anymore.
                return None;
            }
        }
    }
}

// === impl State ===

impl State {
    fn insert(&mut self, pod: Arc<PodInfo>) {
        self.remove(&pod.uid.clone());
        for id in pod.container_ids() {
            let uids = self.by_container.entry(id.to_string()).or_default();
            if !uids.contains(&pod.uid) {
                uids.push(pod.uid.clone());
            }
        }
        self.selectors
            .insert(pod.uid.clone(), pod_selectors(&pod).into());
        self.pods.insert(pod.uid.clone(), pod);
    }

    fn remove(&mut self, uid: &str) {
        let Some(old) = self.pods.remove(uid) else {
            return;
        };
        self.selectors.remove(uid);
        for id in old.container_ids() {
            if let Some(uids) = self.by_container.get_mut(id) {
                uids.retain(|u| &**u != uid);
                if uids.is_empty() {
                    self.by_container.remove(id);
                }
            }
        }
    }

    fn lookup(&self, pod_uid: Option<&str>, container_id: Option<&str>) -> Lookup {
        let claimants: &[Arc<str>] = container_id
            .and_then(|id| self.by_container.get(id))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let conflict = |id: &str| Lookup::Conflict {
            container_id: id.to_string(),
            pods: claimants.iter().map(|u| u.to_string()).collect(),
        };
        if let Some(id) = container_id
            && claimants.len() > 1
        {
            return conflict(id);
        }
        let pod = match pod_uid {
            Some(uid) => {
                let Some(pod) = self.pods.get(uid) else {
                    return Lookup::NoPod;
                };
                // The cgroup says this pod, another pod's status claims the container.
                if let (Some(id), [other]) = (container_id, claimants)
                    && **other != *uid
                {
                    return conflict(id);
                }
                pod
            }
            // CRI-O's cgroup may name only the container: find the pod that lists it.
            None => match claimants.first().and_then(|uid| self.pods.get(uid)) {
                Some(pod) => pod,
                None => return Lookup::NoPod,
            },
        };
        let container = container_id
            .and_then(|id| pod.container(id))
            .map(|(_, c)| c.clone());
        // Inserted together with the pod, under the same lock.
        let selectors = self
            .selectors
            .get(&pod.uid)
            .cloned()
            .unwrap_or_else(|| pod_selectors(pod).into());
        Lookup::Pod {
            pod: pod.clone(),
            selectors,
            container,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID_A: &str = "aaaa";
    const CID_B: &str = "bbbb";

    fn pod(uid: &str, cid: Option<&str>) -> PodInfo {
        PodInfo {
            uid: uid.into(),
            namespace: "default".into(),
            name: format!("pod-{uid}"),
            containers: vec![ContainerInfo {
                name: "app".into(),
                image: "img".into(),
                image_id: "img@sha".into(),
                container_id: cid.map(str::to_string),
            }],
            ..Default::default()
        }
    }

    fn uid_of(l: &Lookup) -> Option<&str> {
        match l {
            Lookup::Pod { pod, .. } => Some(&pod.uid),
            _ => None,
        }
    }

    #[test]
    fn relist_keeps_live_pods_until_done() {
        let store = PodStore::new();
        store.apply_pods(StoreEvent::InitStart);
        store.apply_pods(StoreEvent::InitApply(pod("u1", Some(CID_A))));
        store.apply_pods(StoreEvent::InitApply(pod("u2", None)));
        store.apply_pods(StoreEvent::InitDone);
        assert_eq!(store.len(), 2);
        // A relist after 410 Gone: while it runs, both pods stay visible.
        store.apply_pods(StoreEvent::InitStart);
        store.apply_pods(StoreEvent::InitApply(pod("u1", Some(CID_A))));
        assert!(store.get("u1").is_some() && store.get("u2").is_some());
        assert_eq!(uid_of(&store.lookup(Some("u2"), None)), Some("u2"));
        // Done: u2 was not in the new list, so it is gone now (and only now).
        store.apply_pods(StoreEvent::InitDone);
        assert!(store.get("u2").is_none());
        assert_eq!(uid_of(&store.lookup(None, Some(CID_A))), Some("u1"));
    }

    #[test]
    fn container_claimed_twice_is_a_conflict() {
        let store = PodStore::new();
        store.apply_pods(StoreEvent::Apply(pod("u1", Some(CID_A))));
        store.apply_pods(StoreEvent::Apply(pod("u2", Some(CID_B))));
        // The cgroup says u2, but u1's status lists the container: refuse.
        assert!(matches!(
            store.lookup(Some("u2"), Some(CID_A)),
            Lookup::Conflict { .. }
        ));
        // Two pods list the same container.
        store.apply_pods(StoreEvent::Apply(pod("u3", Some(CID_A))));
        for uid in [Some("u1"), Some("u3"), None] {
            match store.lookup(uid, Some(CID_A)) {
                Lookup::Conflict { container_id, pods } => {
                    assert_eq!(container_id, CID_A);
                    assert_eq!(pods.len(), 2);
                }
                other => panic!("{uid:?}: {other:?}"),
            }
        }
        // The duplicate goes away: unambiguous again.
        store.apply_pods(StoreEvent::Delete(pod("u3", Some(CID_A))));
        assert_eq!(uid_of(&store.lookup(Some("u1"), Some(CID_A))), Some("u1"));
        // A pod updated to drop the container id no longer claims it.
        store.apply_pods(StoreEvent::Apply(pod("u1", None)));
        assert_eq!(store.lookup(None, Some(CID_A)), Lookup::NoPod);
    }

    #[tokio::test]
    async fn waiters_are_served_when_the_pod_arrives() {
        let store = Arc::new(PodStore::new());
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .wait_lookup(Some("u1"), None, Duration::from_secs(10))
                    .await
            })
        };
        tokio::task::yield_now().await;
        store.apply_pods(StoreEvent::Apply(pod("u2", None)));
        store.apply_pods(StoreEvent::Apply(pod("u1", None)));
        let found = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("served without waiting for the timeout")
            .expect("task");
        assert_eq!(uid_of(&found), Some("u1"));
        // Unknown pods wait the whole timeout, then are not found.
        let t = tokio::time::Instant::now();
        let none = store
            .wait_lookup(Some("u9"), None, Duration::from_millis(100))
            .await;
        assert_eq!(none, Lookup::NoPod);
        assert!(t.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn changed_reports_updates_and_deletion() {
        let store = Arc::new(PodStore::new());
        store.apply_pods(StoreEvent::Apply(pod("u1", None)));
        let watch = |seen: Option<Arc<PodInfo>>| {
            let store = store.clone();
            tokio::spawn(async move { store.pod_changed("u1", seen).await })
        };
        // The container appears in the status: a change.
        let w = watch(store.get("u1"));
        tokio::task::yield_now().await;
        store.apply_pods(StoreEvent::Apply(pod("u2", None)));
        store.apply_pods(StoreEvent::Apply(pod("u1", None)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !w.is_finished(),
            "another pod, or the same state again, is no change"
        );
        store.apply_pods(StoreEvent::Apply(pod("u1", Some(CID_A))));
        let now = tokio::time::timeout(Duration::from_secs(2), w)
            .await
            .expect("reported")
            .expect("task");
        assert_eq!(
            now.and_then(|p| p.container_ids().next().map(str::to_string))
                .as_deref(),
            Some(CID_A)
        );
        // Deleted: gone.
        let w = watch(store.get("u1"));
        tokio::task::yield_now().await;
        store.apply_pods(StoreEvent::Delete(pod("u1", Some(CID_A))));
        let now = tokio::time::timeout(Duration::from_secs(2), w)
            .await
            .expect("reported")
            .expect("task");
        assert!(now.is_none());
        // Not known yet, then created: a change.
        let w = watch(None);
        tokio::task::yield_now().await;
        store.apply_pods(StoreEvent::Apply(pod("u1", None)));
        assert!(
            tokio::time::timeout(Duration::from_secs(2), w)
                .await
                .expect("reported")
                .expect("task")
                .is_some()
        );
    }
}
