//! The entries the cluster's ClusterSPIFFEIDs declare, and their status stats: the pure half of
//! spire-controller-manager's reconcile (`addClusterSPIFFEIDEntriesState` and the masking in
//! `reconcile`), over a snapshot of the cluster. Writing the entries is the caller's job.
//!
//! - Only ClusterSPIFFEIDs of this controller's class (`className`; classless ones with
//!   `watchClassless`) count.
//! - Non-fallback ClusterSPIFFEIDs go first; a `fallback` one renders only pods no other one
//!   rendered.
//! - Namespaces: the `namespaceSelector` (labels, expressions, and `matchNames`), minus the
//!   `ignoreNamespaces` expressions; pods: the `podSelector`. Pods not scheduled yet are skipped
//!   quietly (upstream fails to render them on every pass).
//! - ClusterStaticEntries of this class declare their one entry each.
//! - Entries with the same SPIFFE ID, parent and selectors are one entry: the oldest resource
//!   wins (creation time, then uid), whatever its kind; the others count it as masked.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use crate::config::IgnoreNamespaces;
use crate::crd::{LabelSelector, LabelSelectorRequirement, NamespaceSelector};
use crate::render::{
    ParsedSpec, RenderContext, RenderedEntry, ServiceRef, entry_key, render_pod_entry,
};

/// One ClusterSPIFFEID as the plan needs it.
#[derive(Clone, Debug)]
pub struct ClusterSpiffeId {
    pub name: String,
    pub uid: String,
    /// RFC 3339, as the API server writes it (sorts by time).
    pub creation_timestamp: String,
    pub class_name: String,
    pub fallback: bool,
    pub auto_populate_dns_names: bool,
    /// A hash of the spec: renders cached for another spec are not reused.
    pub spec_hash: u64,
    pub namespace_selector: Option<NamespaceSelector>,
    pub pod_selector: Option<LabelSelector>,
    /// The parsed templates, or why they did not parse (reported, nothing rendered).
    pub spec: Result<ParsedSpec, String>,
}

/// One ClusterStaticEntry as the plan needs it.
#[derive(Clone, Debug)]
pub struct StaticEntry {
    pub name: String,
    pub uid: String,
    /// RFC 3339, as the API server writes it (sorts by time).
    pub creation_timestamp: String,
    pub class_name: String,
    /// Its entry, or why it did not render.
    pub entry: Result<RenderedEntry, String>,
}

/// What a pass says of a ClusterStaticEntry (`set` is known only after writing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StaticStatus {
    pub rendered: bool,
    pub masked: bool,
}

/// The cluster as seen by one pass.
#[derive(Debug, Default)]
pub struct Snapshot<'a> {
    /// Namespace objects (JSON).
    pub namespaces: Vec<&'a Value>,
    /// Pod objects by namespace.
    pub pods: HashMap<String, Vec<&'a Value>>,
    /// Node objects by name.
    pub nodes: HashMap<String, &'a Value>,
    /// Services targeting each pod (by pod UID), from EndpointSlices.
    pub services: HashMap<String, Vec<ServiceRef>>,
}

/// Which ClusterSPIFFEIDs this controller serves and which namespaces it ignores.
#[derive(Clone, Debug)]
pub struct Scope {
    pub class_name: String,
    pub watch_classless: bool,
    pub ignore: IgnoreNamespaces,
}

/// A ClusterSPIFFEID's `status.stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub namespaces_selected: i64,
    pub namespaces_ignored: i64,
    pub pods_selected: i64,
    pub pod_entry_render_failures: i64,
    pub entries_masked: i64,
    pub entries_to_set: i64,
}

/// The resource that declares an entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum By {
    ClusterSpiffeId(String),
    ClusterStaticEntry(String),
}

/// An entry to have, and the resource that wins it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declared {
    pub entry: RenderedEntry,
    pub by: By,
}

/// The outcome of a pass.
#[derive(Debug, Default)]
pub struct Plan {
    /// By entry key.
    pub entries: BTreeMap<String, Declared>,
    /// By ClusterSPIFFEID name (only those in scope).
    pub stats: BTreeMap<String, Stats>,
    /// By ClusterStaticEntry name (only those in scope).
    pub static_status: BTreeMap<String, StaticStatus>,
    /// Spec and render failures, for the resource's status and events: (name, message).
    pub failures: Vec<(String, String)>,
}

// === impl Scope ===

impl Scope {
    /// upstream's `reconcileClass`.
    pub fn serves(&self, class_name: &str) -> bool {
        (class_name.is_empty() && self.watch_classless) || class_name == self.class_name
    }
}

/// Plans one pass of ClusterSPIFFEIDs only.
pub fn plan(
    ctx: &RenderContext,
    scope: &Scope,
    csids: &[ClusterSpiffeId],
    cluster: &Snapshot<'_>,
) -> Plan {
    plan_all(ctx, scope, csids, &[], cluster)
}

/// A candidate for an entry key: who declares it (and how it sorts), and the entry.
struct Candidate<'a> {
    by: By,
    created: &'a str,
    uid: &'a str,
    entry: RenderedEntry,
}

/// Pod entries rendered by earlier passes, by what they were rendered from (the
/// ClusterSPIFFEID's spec, the pod's resourceVersion, the node's contents, the services): a
/// pass over a cluster that did not change renders nothing (upstream's entry render cache,
/// keyed so that it cannot serve a stale entry). Entries a pass does not use are dropped.
#[derive(Debug, Default)]
pub struct RenderCache {
    /// The render (with its entry key) or its failure, and the last pass that used it.
    entries: HashMap<RenderKey, (Render, u64)>,
    pass: u64,
}

/// A pod's rendered entry and its entry key, or why it did not render.
type Render = Result<(RenderedEntry, String), String>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RenderKey {
    csid: u64,
    pod_uid: String,
    pod_version: String,
    node: u64,
    services: u64,
}

fn hash_of(v: &impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// A JSON value's hash, without the fields that change on every write of the object
/// (`resourceVersion`, `managedFields`) and the node's `status` (heartbeats).
fn content_hash(v: &Value) -> u64 {
    let mut v = v.clone();
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    hash_of(&v.to_string())
}

// === impl RenderCache ===

impl RenderCache {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Plans one pass of ClusterSPIFFEIDs and ClusterStaticEntries.
pub fn plan_all(
    ctx: &RenderContext,
    scope: &Scope,
    csids: &[ClusterSpiffeId],
    statics: &[StaticEntry],
    cluster: &Snapshot<'_>,
) -> Plan {
    plan_cached(
        ctx,
        scope,
        csids,
        statics,
        cluster,
        &mut RenderCache::default(),
    )
}

/// [`plan_all`] with the renders of earlier passes.
pub fn plan_cached(
    ctx: &RenderContext,
    scope: &Scope,
    csids: &[ClusterSpiffeId],
    statics: &[StaticEntry],
    cluster: &Snapshot<'_>,
    cache: &mut RenderCache,
) -> Plan {
    cache.pass += 1;
    let pass = cache.pass;
    let node_hashes: HashMap<&str, u64> = cluster
        .nodes
        .iter()
        .map(|(name, n)| (name.as_str(), content_hash(n)))
        .collect();
    let mut out = Plan::default();
    let mut declared: BTreeMap<String, Vec<Candidate<'_>>> = BTreeMap::new();
    for st in statics.iter().filter(|s| scope.serves(&s.class_name)) {
        let status = out.static_status.entry(st.name.clone()).or_default();
        match &st.entry {
            Ok(entry) => {
                status.rendered = true;
                let key = entry_key(
                    entry.spiffe_id.as_ref(),
                    entry.parent_id.as_ref(),
                    &entry.selectors,
                );
                declared.entry(key).or_default().push(Candidate {
                    by: By::ClusterStaticEntry(st.name.clone()),
                    created: &st.creation_timestamp,
                    uid: &st.uid,
                    entry: entry.clone(),
                });
            }
            Err(e) => out.failures.push((st.name.clone(), e.clone())),
        }
    }
    let mut ordered: Vec<&ClusterSpiffeId> = csids
        .iter()
        .filter(|c| scope.serves(&c.class_name))
        .collect();
    // Stable: non-fallback first, otherwise as given.
    ordered.sort_by_key(|c| c.fallback);
    let mut rendered_by_non_fallback: HashSet<String> = HashSet::new();
    for csid in ordered {
        let stats = out.stats.entry(csid.name.clone()).or_default();
        let spec = match &csid.spec {
            Ok(s) => s,
            Err(e) => {
                out.failures.push((csid.name.clone(), e.clone()));
                continue;
            }
        };
        let csid_hash = hash_of(&(&csid.uid, &csid.spec_hash));
        for ns in &cluster.namespaces {
            if !namespace_selected(csid.namespace_selector.as_ref(), ns) {
                continue;
            }
            stats.namespaces_selected += 1;
            let ns_name = ns["metadata"]["name"].as_str().unwrap_or_default();
            if scope.ignore.is_ignored(ns_name) {
                stats.namespaces_ignored += 1;
                continue;
            }
            for pod in cluster.pods.get(ns_name).into_iter().flatten() {
                if !labels_match(csid.pod_selector.as_ref(), &pod["metadata"]["labels"]) {
                    continue;
                }
                stats.pods_selected += 1;
                let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
                if csid.fallback && rendered_by_non_fallback.contains(uid) {
                    continue;
                }
                let node_name = pod["spec"]["nodeName"].as_str().unwrap_or_default();
                if node_name.is_empty() {
                    continue; // not scheduled yet: its turn comes with the update that binds it
                }
                let Some(node) = cluster.nodes.get(node_name) else {
                    stats.pod_entry_render_failures += 1;
                    out.failures.push((
                        csid.name.clone(),
                        format!(
                            "pod {ns_name}/{}: node {node_name} not found",
                            pod_name(pod)
                        ),
                    ));
                    continue;
                };
                let services: &[ServiceRef] = if csid.auto_populate_dns_names {
                    cluster
                        .services
                        .get(uid)
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                } else {
                    &[]
                };
                let render_key = RenderKey {
                    csid: csid_hash,
                    pod_uid: uid.to_string(),
                    pod_version: pod["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    node: node_hashes.get(node_name).copied().unwrap_or_default(),
                    services: hash_of(
                        &services
                            .iter()
                            .map(|s| (&s.namespace, &s.name))
                            .collect::<Vec<_>>(),
                    ),
                };
                // A pod without a resourceVersion (never from an API server) is not cached.
                let cached = if render_key.pod_version.is_empty() {
                    None
                } else {
                    cache.entries.get_mut(&render_key).map(|(r, used)| {
                        *used = pass;
                        r.clone()
                    })
                };
                let rendered = cached.unwrap_or_else(|| {
                    let r = render_pod_entry(ctx, spec, pod, node, services)
                        .map(|entry| {
                            let key = entry_key(
                                entry.spiffe_id.as_ref(),
                                entry.parent_id.as_ref(),
                                &entry.selectors,
                            );
                            (entry, key)
                        })
                        .map_err(|e| e.to_string());
                    if !render_key.pod_version.is_empty() {
                        cache.entries.insert(render_key, (r.clone(), pass));
                    }
                    r
                });
                match rendered {
                    Ok((entry, key)) => {
                        declared.entry(key).or_default().push(Candidate {
                            by: By::ClusterSpiffeId(csid.name.clone()),
                            created: &csid.creation_timestamp,
                            uid: &csid.uid,
                            entry,
                        });
                        if !csid.fallback {
                            rendered_by_non_fallback.insert(uid.to_string());
                        }
                    }
                    Err(e) => {
                        stats.pod_entry_render_failures += 1;
                        out.failures.push((
                            csid.name.clone(),
                            format!("pod {ns_name}/{}: {e}", pod_name(pod)),
                        ));
                    }
                }
            }
        }
    }
    cache.entries.retain(|_, (_, used)| *used == pass);
    for (key, mut candidates) in declared {
        // upstream's objectCmp: oldest first, then by uid.
        candidates.sort_by(|a, b| (a.created, a.uid).cmp(&(b.created, b.uid)));
        let mut it = candidates.into_iter();
        let Some(winner) = it.next() else {
            continue;
        };
        if let By::ClusterSpiffeId(name) = &winner.by
            && let Some(s) = out.stats.get_mut(name)
        {
            s.entries_to_set += 1;
        }
        for masked in it {
            match &masked.by {
                By::ClusterSpiffeId(name) => {
                    if let Some(s) = out.stats.get_mut(name) {
                        s.entries_masked += 1;
                    }
                }
                By::ClusterStaticEntry(name) => {
                    if let Some(s) = out.static_status.get_mut(name) {
                        s.masked = true;
                    }
                }
            }
        }
        out.entries.insert(
            key,
            Declared {
                entry: winner.entry,
                by: winner.by,
            },
        );
    }
    out
}

fn pod_name(pod: &Value) -> &str {
    pod["metadata"]["name"].as_str().unwrap_or_default()
}

/// `namespaceSelector`: labels and expressions as a label selector, and `matchNames` (Sigil's
/// addition, ANDed) on the name. No selector selects every namespace.
fn namespace_selected(sel: Option<&NamespaceSelector>, ns: &Value) -> bool {
    let Some(sel) = sel else {
        return true;
    };
    if let Some(names) = &sel.match_names {
        let name = ns["metadata"]["name"].as_str().unwrap_or_default();
        if !names.iter().any(|n| n == name) {
            return false;
        }
    }
    selector_matches(
        sel.match_labels.as_ref(),
        sel.match_expressions.as_deref(),
        &ns["metadata"]["labels"],
    )
}

/// A label selector against an object's labels. No selector selects everything.
pub fn labels_match(sel: Option<&LabelSelector>, labels: &Value) -> bool {
    match sel {
        None => true,
        Some(s) => selector_matches(
            s.match_labels.as_ref(),
            s.match_expressions.as_deref(),
            labels,
        ),
    }
}

/// Kubernetes' label selector semantics (`matchLabels` AND every expression; `In`, `NotIn`,
/// `Exists`, `DoesNotExist`; an unknown operator selects nothing, as the API server would have
/// refused it).
fn selector_matches(
    match_labels: Option<&BTreeMap<String, String>>,
    exprs: Option<&[LabelSelectorRequirement]>,
    labels: &Value,
) -> bool {
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    if let Some(m) = match_labels
        && !m.iter().all(|(k, v)| get(k) == Some(v.as_str()))
    {
        return false;
    }
    exprs.into_iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => get(&e.key).is_some_and(|v| values.iter().any(|x| x == v)),
            "NotIn" => get(&e.key).is_none_or(|v| !values.iter().any(|x| x == v)),
            "Exists" => get(&e.key).is_some(),
            "DoesNotExist" => get(&e.key).is_none(),
            _ => false,
        }
    })
}
