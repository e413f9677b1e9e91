//! Watch streams: newline-delimited JSON events, one chunk each, from a starting point (the
//! current state, or a resourceVersion to resume after) through live changes, with the
//! selectors applied per event the way the API server's watch cache applies them.

use crate::Shared;
use crate::resources::Resource;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{Change, EventType, Since, Store};
use bytes::Bytes;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A parsed watch request.
#[derive(Debug)]
pub struct WatchRequest {
    pub res: &'static Resource,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// `None` when unset or "0": start with the current state as ADDED events.
    pub resource_version: Option<u64>,
    pub send_initial_events: bool,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
}

// === impl WatchRequest ===

impl WatchRequest {
    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// The event a watcher with this request's selectors sees for `c`, if any: an object
    /// that starts matching is ADDED, one that stops is DELETED (its previous state with the
    /// change's version).
    fn event(&self, c: &Change) -> Option<Value> {
        if !c.key.is(self.res)
            || self
                .namespace
                .as_ref()
                .is_some_and(|ns| *ns != c.key.namespace)
        {
            return None;
        }
        let now = c.kind != EventType::Deleted && self.matches(&c.object);
        let before = c.prev.as_ref().is_some_and(|p| self.matches(p));
        let (kind, object) = match (before, now) {
            (false, true) => (EventType::Added, c.object.clone()),
            (true, true) => (EventType::Modified, c.object.clone()),
            (true, false) if c.kind == EventType::Deleted => (EventType::Deleted, c.object.clone()),
            (true, false) => {
                let mut last = c.prev.clone().unwrap_or_default();
                last["metadata"]["resourceVersion"] = json!(c.rv.to_string());
                (EventType::Deleted, last)
            }
            (false, false) => return None,
        };
        Some(json!({"type": kind.as_str(), "object": self.res.present(object)}))
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Value {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({"type": "BOOKMARK", "object": {"kind": self.res.kind, "apiVersion": self.res.api_version(), "metadata": meta}})
    }

    /// The first events and the version they bring the watcher to; `None` as the version
    /// when the stream must end after them (410).
    fn start(&self, store: &Store) -> (Vec<Value>, Option<u64>) {
        let rv = store.rv();
        match self.resource_version {
            Some(from) if !self.send_initial_events => match store.since(from) {
                Since::TooOld(floor) => (vec![gone(from, floor)], None),
                Since::Changes(cs) => (cs.iter().filter_map(|c| self.event(c)).collect(), Some(rv)),
            },
            _ => {
                let Ok(state) = store.state_at(rv) else {
                    return (Vec::new(), Some(rv)); // the current state is always there
                };
                let mut events: Vec<Value> = Store::objects(
                    &state,
                    self.res,
                    self.namespace.as_deref(),
                )
                .filter(|(_, o)| self.matches(o))
                .map(|(_, o)| json!({"type": "ADDED", "object": self.res.present(o.clone())}))
                .collect();
                if self.send_initial_events && self.bookmarks {
                    events.push(self.bookmark(rv, true));
                }
                (events, Some(rv))
            }
        }
    }
}

/// The watch event for a resourceVersion the history no longer holds.
fn gone(from: u64, floor: u64) -> Value {
    json!({"type": "ERROR", "object": {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("too old resource version: {from} ({floor})"),
        "reason": "Expired",
        "code": 410,
    }})
}

fn line(event: &Value) -> Bytes {
    let mut v = event.to_string().into_bytes();
    v.push(b'\n');
    Bytes::from(v)
}

/// Starts the stream's task; the receiver is the response body. The task ends when the
/// client goes away (the receiver is dropped), at `timeoutSeconds`, or after a 410.
pub fn start(shared: Arc<Shared>, req: WatchRequest) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(run(shared, req, tx));
    rx
}

async fn run(shared: Arc<Shared>, req: WatchRequest, tx: mpsc::Sender<Bytes>) {
    let mut changes = shared.changes.subscribe();
    let deadline = req.timeout.map(|t| Instant::now() + t);
    let (first, cursor) = req.start(&shared.store());
    for e in &first {
        if tx.send(line(e)).await.is_err() {
            return;
        }
    }
    let Some(mut cursor) = cursor else { return };
    let mut next_bookmark = Instant::now() + shared.bookmark_interval();
    loop {
        let far = Instant::now() + Duration::from_secs(86_400);
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)) => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                let (events, end) = {
                    let store = shared.store();
                    match store.since(cursor) {
                        Since::TooOld(floor) => (vec![gone(cursor, floor)], true),
                        Since::Changes(cs) => {
                            let ev = cs.iter().filter_map(|c| req.event(c)).collect();
                            cursor = store.rv();
                            (ev, false)
                        }
                    }
                };
                for e in &events {
                    if tx.send(line(e)).await.is_err() {
                        return;
                    }
                }
                if end {
                    return;
                }
            }
            _ = tokio::time::sleep_until(next_bookmark), if req.bookmarks => {
                if tx.send(line(&req.bookmark(cursor, false))).await.is_err() {
                    return;
                }
                next_bookmark = Instant::now() + shared.bookmark_interval();
            }
        }
    }
}
