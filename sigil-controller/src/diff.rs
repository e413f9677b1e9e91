//! From a [`Plan`](crate::plan::Plan) and the server's current entries to the writes that make
//! them agree: create what is missing, update what is outdated (upstream's
//! `getOutdatedEntryFields`), delete what this controller owns and no longer declares.
//!
//! Ownership is where Sigil differs from spire-controller-manager on purpose:
//! - with `entryIDPrefix`, entries whose ID carries the prefix are the controller's; others are
//!   never touched, except those `entryIDPrefixCleanup` names (upstream's rules);
//! - without a prefix, upstream treats every entry it did not render as its own to delete (bar
//!   join-token aliases). Sigil instead owns only the entries it created, as recorded by the
//!   caller ([`Ownership::Recorded`]): an entry made by hand is never deleted.
//!
//! Join-token alias entries (parent `spiffe://<td>/spire/agent/join_token/...` with a
//! `spiffe_id` selector) are never deleted in any mode.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::plan::Declared;
use crate::render::{RenderedEntry, entry_key};

/// A registration entry as the server has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentEntry {
    pub id: String,
    pub spiffe_id: String,
    pub parent_id: String,
    pub selectors: Vec<(String, String)>,
    pub x509_svid_ttl: Duration,
    pub jwt_svid_ttl: Duration,
    pub federates_with: Vec<String>,
    pub admin: bool,
    pub downstream: bool,
    pub dns_names: Vec<String>,
    pub hint: String,
    pub store_svid: bool,
}

/// Which current entries are the controller's.
#[derive(Clone, Debug)]
pub enum Ownership {
    /// `entryIDPrefix` (normalised to end with `.`) and `entryIDPrefixCleanup`.
    Prefix {
        prefix: String,
        cleanup: Option<String>,
    },
    /// The IDs of the entries this controller created (recorded with the server).
    Recorded(HashSet<String>),
}

/// A field an update changes (upstream's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    X509SvidTtl,
    JwtSvidTtl,
    FederatesWith,
    Admin,
    Downstream,
    DnsNames,
    Hint,
    StoreSvid,
}

/// The writes of one pass.
#[derive(Debug, Default)]
pub struct Changes {
    /// New entries; with a prefix, the ID to create them with.
    pub create: Vec<(Option<String>, RenderedEntry)>,
    /// (ID, entry, what changed).
    pub update: Vec<(String, RenderedEntry, Vec<Field>)>,
    pub delete: Vec<String>,
}

// === impl Ownership ===

impl Ownership {
    /// From the config's `entryIDPrefix` / `entryIDPrefixCleanup`, or the recorded IDs when
    /// there is no prefix.
    pub fn new(prefix: &str, cleanup: Option<&str>, recorded: HashSet<String>) -> Self {
        if prefix.is_empty() {
            return Self::Recorded(recorded);
        }
        // Entry IDs are `<prefix>.<uuid>`: the dot keeps `a` from owning `ab.…`'s entries.
        let prefix = if prefix.ends_with('.') {
            prefix.to_string()
        } else {
            format!("{prefix}.")
        };
        Self::Prefix {
            prefix,
            cleanup: cleanup.map(str::to_string),
        }
    }

    /// (processed as the controller's, delete only).
    fn classify(&self, id: &str) -> (bool, bool) {
        match self {
            Self::Recorded(ids) => (ids.contains(id), false),
            Self::Prefix { prefix, cleanup } => {
                if id.starts_with(prefix.as_str()) {
                    return (true, false);
                }
                match cleanup.as_deref() {
                    // An empty cleanup prefix names the unprefixed IDs (no `.` in them).
                    Some("") => (false, !id.contains('.')),
                    Some(c) => (false, id.starts_with(c)),
                    None => (false, false),
                }
            }
        }
    }

    /// The ID for a new entry: `<prefix><uuid>`, or the server's choice.
    fn new_id(&self) -> Option<String> {
        match self {
            Self::Prefix { prefix, .. } => Some(format!("{prefix}{}", uuid::Uuid::new_v4())),
            Self::Recorded(_) => None,
        }
    }
}

/// Whether an entry is a join-token alias (upstream's `isJoinTokenEntry`).
pub fn is_join_token_entry(e: &CurrentEntry) -> bool {
    let path = e
        .parent_id
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or_default();
    path.starts_with("/spire/agent/join_token/")
        && e.selectors.iter().any(|(t, _)| t == "spiffe_id")
}

/// The writes that make `current` what `declared` says.
pub fn diff<'a>(
    declared: &BTreeMap<String, Declared>,
    current: impl IntoIterator<Item = &'a CurrentEntry>,
    ownership: &Ownership,
) -> Changes {
    let mut out = Changes::default();
    let mut by_key: BTreeMap<String, Vec<&CurrentEntry>> = BTreeMap::new();
    // Without a prefix, an entry someone else made that already is what a resource declares
    // stays theirs: not created again (the server would refuse the duplicate), not touched.
    let mut foreign: HashSet<String> = HashSet::new();
    for e in current {
        match ownership.classify(&e.id) {
            (true, _) => by_key
                .entry(entry_key(&e.spiffe_id, &e.parent_id, &e.selectors))
                .or_default()
                .push(e),
            (false, true) if !is_join_token_entry(e) => out.delete.push(e.id.clone()),
            _ if matches!(ownership, Ownership::Recorded(_)) => {
                foreign.insert(entry_key(&e.spiffe_id, &e.parent_id, &e.selectors));
            }
            _ => {}
        }
    }
    for (key, d) in declared {
        let existing = by_key.remove(key).unwrap_or_default();
        let mut rest = existing.into_iter();
        match rest.next() {
            None if foreign.contains(key) => {}
            None => out.create.push((ownership.new_id(), d.entry.clone())),
            Some(cur) => {
                let fields = outdated(&d.entry, cur);
                if !fields.is_empty() {
                    out.update.push((cur.id.clone(), d.entry.clone(), fields));
                }
            }
        }
        // Duplicates of a declared entry go.
        out.delete.extend(
            rest.filter(|e| !is_join_token_entry(e))
                .map(|e| e.id.clone()),
        );
    }
    // Owned entries nothing declares any more.
    for (_, entries) in by_key {
        out.delete.extend(
            entries
                .into_iter()
                .filter(|e| !is_join_token_entry(e))
                .map(|e| e.id.clone()),
        );
    }
    out
}

/// upstream's `getOutdatedEntryFields` (sets compared without order).
fn outdated(new: &RenderedEntry, old: &CurrentEntry) -> Vec<Field> {
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    let mut out = Vec::new();
    if new.x509_svid_ttl != old.x509_svid_ttl {
        out.push(Field::X509SvidTtl);
    }
    if new.jwt_svid_ttl != old.jwt_svid_ttl {
        out.push(Field::JwtSvidTtl);
    }
    let fed: Vec<String> = new
        .federates_with
        .iter()
        .map(|t| t.as_str().to_string())
        .collect();
    if sorted(&fed) != sorted(&old.federates_with) {
        out.push(Field::FederatesWith);
    }
    if new.admin != old.admin {
        out.push(Field::Admin);
    }
    if new.downstream != old.downstream {
        out.push(Field::Downstream);
    }
    if sorted(&new.dns_names) != sorted(&old.dns_names) {
        out.push(Field::DnsNames);
    }
    if new.hint != old.hint {
        out.push(Field::Hint);
    }
    if new.store_svid != old.store_svid {
        out.push(Field::StoreSvid);
    }
    out
}
