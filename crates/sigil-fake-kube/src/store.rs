//! The object store: objects by (resource, namespace, name), one global resourceVersion counter
//! (etcd's revision: every write takes the next number), and a bounded history of changes that
//! watches resume from and paginated lists read their snapshot from.

use crate::catalog::Catalog;
use crate::resources::Resource;
use serde_json::{Value, json};
use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};

/// How many changes the history keeps (the real watch cache keeps a similar window): a watch
/// or a continue token older than that gets 410 Gone.
const HISTORY: usize = 10_000;

/// Where an object lives: one place for all the versions of a resource. The order (group,
/// resource, namespace, name) is etcd's key order, which is the order lists return.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub group: &'static str,
    pub resource: &'static str,
    /// Empty for cluster-scoped resources.
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One write, as the history keeps it.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub kind: EventType,
    pub key: Key,
    /// The object after the write; for a delete, the last state with the delete's
    /// resourceVersion (what a DELETED watch event carries).
    pub object: Value,
    /// The object before the write (`None` for a create): a watch with a selector needs it to
    /// tell an object that stops matching (sent as DELETED) from one that never matched.
    pub prev: Option<Value>,
}

#[derive(Debug, Default)]
pub struct Store {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    history: VecDeque<Change>,
    /// Every change with a resourceVersion above this is in `history`: resuming from a
    /// version below it would miss changes.
    floor: u64,
    /// What is served, CRDs' resources included.
    pub catalog: Catalog,
}

/// The answer to "what happened after version X".
pub enum Since<'a> {
    Changes(Vec<&'a Change>),
    /// X is older than the history; carries the oldest version one can resume from.
    TooOld(u64),
}

// === impl EventType ===

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

// === impl Key ===

impl Key {
    pub fn new(res: &Resource, namespace: Option<&str>, name: &str) -> Self {
        Key {
            group: res.group,
            resource: res.plural,
            namespace: if res.namespaced {
                namespace.unwrap_or("default").to_string()
            } else {
                String::new()
            },
            name: name.to_string(),
        }
    }

    /// The key an object's own metadata names.
    pub fn of(res: &Resource, obj: &Value) -> Self {
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Key::new(res, ns, name)
    }

    /// Whether this is the key of a `res` (at any version).
    pub fn is(&self, res: &Resource) -> bool {
        self.resource == res.plural && self.group == res.group
    }
}

// === impl Store ===

impl Store {
    /// The current (latest) resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Creates or replaces `obj` (a `res`), filling what the API server fills: kind and
    /// apiVersion, namespace, uid, creationTimestamp, resourceVersion. A replacement keeps the
    /// stored uid and creationTimestamp unless `obj` names another uid, which makes it a new
    /// object: DELETED of the old one, then ADDED, as a real delete and re-create would show.
    pub fn put(&mut self, res: &'static Resource, mut obj: Value) -> Value {
        let key = Key::of(res, &obj);
        normalize(res, &key, &mut obj);
        let prev = self.objects.get(&key).cloned();
        if let Some(old) = &prev {
            let old_uid = old.pointer("/metadata/uid").cloned();
            match obj.pointer("/metadata/uid") {
                Some(uid) if Some(uid) != old_uid.as_ref() => {
                    self.remove(&key);
                    return self.put(res, obj);
                }
                _ => {}
            }
            obj["metadata"]["uid"] = old_uid.unwrap_or(Value::Null);
            if obj
                .pointer("/metadata/creationTimestamp")
                .is_none_or(Value::is_null)
            {
                obj["metadata"]["creationTimestamp"] = old
                    .pointer("/metadata/creationTimestamp")
                    .cloned()
                    .unwrap_or(Value::Null);
            }
        } else {
            if obj.pointer("/metadata/uid").is_none_or(Value::is_null) {
                obj["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
            }
            if obj
                .pointer("/metadata/creationTimestamp")
                .is_none_or(Value::is_null)
            {
                obj["metadata"]["creationTimestamp"] = json!(crate::now_rfc3339());
            }
        }
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let kind = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.objects.insert(key.clone(), obj.clone());
        self.record(Change {
            rv: self.rv,
            kind,
            key,
            object: obj.clone(),
            prev,
        });
        obj
    }

    /// Deletes the object at `key`, returning its last state with the delete's version.
    pub fn remove(&mut self, key: &Key) -> Option<Value> {
        let prev = self.objects.remove(key)?;
        self.rv += 1;
        let mut last = prev.clone();
        last["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(Change {
            rv: self.rv,
            kind: EventType::Deleted,
            key: key.clone(),
            object: last.clone(),
            prev: Some(prev),
        });
        Some(last)
    }

    fn record(&mut self, change: Change) {
        self.history.push_back(change);
        if self.history.len() > HISTORY
            && let Some(old) = self.history.pop_front()
        {
            self.floor = old.rv;
        }
    }

    /// Forgets the history, as an etcd compaction followed by a watch cache restart would:
    /// only the current version can be resumed from.
    pub fn compact(&mut self) {
        self.history.clear();
        self.floor = self.rv;
    }

    /// The changes after version `rv`, oldest first.
    pub fn since(&self, rv: u64) -> Since<'_> {
        if rv < self.floor {
            return Since::TooOld(self.floor);
        }
        // Versions in the history only grow: the first one after `rv` is found by bisection.
        let start = self.history.partition_point(|c| c.rv <= rv);
        Since::Changes(self.history.range(start..).collect())
    }

    /// The objects as they were at version `rv` (undoing the later changes), for a continued
    /// list: its pages must all come from the first page's snapshot.
    pub fn state_at(&self, rv: u64) -> Result<Cow<'_, BTreeMap<Key, Value>>, u64> {
        if rv >= self.rv {
            return Ok(Cow::Borrowed(&self.objects));
        }
        let Since::Changes(later) = self.since(rv) else {
            return Err(self.floor);
        };
        let mut state = self.objects.clone();
        for c in later.iter().rev() {
            match &c.prev {
                Some(p) => state.insert(c.key.clone(), p.clone()),
                None => state.remove(&c.key),
            };
        }
        Ok(Cow::Owned(state))
    }

    /// The keys of the namespaced objects in `namespace`.
    pub fn keys_in_namespace(&self, namespace: &str) -> Vec<Key> {
        self.objects
            .keys()
            .filter(|k| !k.namespace.is_empty() && k.namespace == namespace)
            .cloned()
            .collect()
    }

    /// The objects of `res` (in `namespace` when given), in key order.
    pub fn objects<'a>(
        state: &'a BTreeMap<Key, Value>,
        res: &'a Resource,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
        state
            .iter()
            .filter(move |(k, _)| k.is(res) && namespace.is_none_or(|ns| k.namespace == ns))
    }

    /// The keys of every object of `res` (at any version).
    pub fn keys_of(&self, res: &Resource) -> Vec<Key> {
        self.objects.keys().filter(|k| k.is(res)).cloned().collect()
    }
}

/// Sets what every stored object carries, whoever wrote it.
fn normalize(res: &Resource, key: &Key, obj: &mut Value) {
    if !obj.is_object() {
        *obj = json!({});
    }
    obj["kind"] = json!(res.kind);
    obj["apiVersion"] = json!(res.api_version());
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return; // made an object just above
    };
    if res.namespaced {
        meta.insert("namespace".into(), json!(key.namespace));
    } else {
        meta.remove("namespace");
    }
    if res.group.is_empty() && res.plural == "namespaces" {
        // Since 1.21 every namespace carries its name as a label, so selectors can pick it.
        let labels = meta.entry("labels").or_insert_with(|| json!({}));
        if let Some(l) = labels.as_object_mut() {
            l.insert("kubernetes.io/metadata.name".into(), json!(key.name));
        }
        if obj.pointer("/status/phase").is_none() {
            obj["status"] = json!({"phase": "Active"});
        }
        if obj.pointer("/spec/finalizers").is_none() {
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{PODS, by_plural};

    fn pod(name: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns"}, "spec": {"nodeName": "n1"}})
    }

    #[test]
    fn versions_and_history() {
        let mut s = Store::default();
        let a = s.put(&PODS, pod("a"));
        assert_eq!(a["metadata"]["resourceVersion"], "1");
        assert_eq!(a["kind"], "Pod");
        let uid = a["metadata"]["uid"].clone();
        let a2 = s.put(&PODS, pod("a"));
        assert_eq!(a2["metadata"]["uid"], uid, "a replacement keeps the uid");
        assert_eq!(a2["metadata"]["resourceVersion"], "2");
        let gone = s.remove(&Key::of(&PODS, &a)).unwrap();
        assert_eq!(gone["metadata"]["resourceVersion"], "3");
        let Since::Changes(c) = s.since(1) else {
            panic!()
        };
        let kinds: Vec<_> = c.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [EventType::Modified, EventType::Deleted]);
        s.compact();
        assert!(matches!(s.since(2), Since::TooOld(3)));
        assert!(matches!(s.since(3), Since::Changes(c) if c.is_empty()));
    }

    #[test]
    fn new_uid_is_delete_then_add() {
        let mut s = Store::default();
        s.put(&PODS, pod("a"));
        let mut p = pod("a");
        p["metadata"]["uid"] = json!("other");
        let b = s.put(&PODS, p);
        assert_eq!(b["metadata"]["uid"], "other");
        let Since::Changes(c) = s.since(1) else {
            panic!()
        };
        let kinds: Vec<_> = c.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [EventType::Deleted, EventType::Added]);
    }

    #[test]
    fn snapshot_undoes_later_changes() {
        let mut s = Store::default();
        s.put(&PODS, pod("a"));
        s.put(&PODS, pod("b"));
        s.put(&PODS, pod("c"));
        s.remove(&Key::new(&PODS, Some("ns"), "a"));
        s.put(&PODS, pod("d"));
        let names = |m: &BTreeMap<Key, Value>| -> Vec<String> {
            m.keys().map(|k| k.name.clone()).collect()
        };
        assert_eq!(names(&s.state_at(3).unwrap()), ["a", "b", "c"]);
        assert_eq!(names(&s.state_at(5).unwrap()), ["b", "c", "d"]);
        let ns = by_plural("namespaces").unwrap();
        s.put(ns, json!({"metadata": {"name": "x"}}));
        assert_eq!(
            Store::objects(&s.state_at(6).unwrap(), &PODS, Some("ns")).count(),
            3
        );
        s.compact();
        assert_eq!(s.state_at(3).unwrap_err(), 6);
    }
}
