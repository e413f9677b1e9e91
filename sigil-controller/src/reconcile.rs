//! One reconcile pass over the watched cluster: plan the entries (`plan`), diff them against the
//! controller's copy of the server's entries (`diff`), write the difference in batches, keep the
//! copy true from the per-entry results, then write the resources' status and Events.
//!
//! The copy of the server's entries is listed in full only at start-up, on becoming leader and
//! at every `gcInterval` ([`Reconciler::resync`]); a pass caused by an event makes only the admin
//! API calls its changes need (SCM#301: upstream lists every entry on every pass).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::{Value, json};
use sigil_proto::types as pb;

use crate::admin::{AdminApi, AdminError, to_current, to_proto};
use crate::cluster::{Cluster, object_ref};
use crate::config::Reconcile;
use crate::crd::{ClusterSPIFFEID, ClusterStaticEntry};
use crate::diff::{CurrentEntry, Ownership, diff};
use crate::plan::{
    By, ClusterSpiffeId, RenderCache, Scope, Snapshot, StaticEntry, Stats, plan_cached,
};
use crate::render::{ParsedSpec, RenderContext, ServiceRef, entry_key, render_static_entry};

/// What the reconciler is configured with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub ctx: RenderContext,
    pub scope: Scope,
    pub reconcile: Reconcile,
    /// `entryIDPrefix` (with its trailing `.`), empty for none.
    pub entry_id_prefix: String,
    pub entry_id_prefix_cleanup: Option<String>,
    /// Recorded as `managed_by` on the entries this controller creates; without a prefix it
    /// owns exactly those.
    pub managed_by: String,
}

/// What a pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    pub declared: usize,
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
    /// Writes the server refused.
    pub failed: usize,
    pub render_failures: usize,
    /// ClusterStaticEntries that did not render (upstream's `cluster_static_entry_failures`).
    pub static_failures: usize,
    /// Admin API calls made.
    pub admin_calls: usize,
    /// A write failed in a way that says the copy of the server's entries is out of date
    /// (an entry exists already, or is gone): list them again before the next pass.
    pub stale: bool,
    pub duration: Duration,
}

/// A stored entry and who made it.
#[derive(Clone, Debug)]
struct Known {
    current: CurrentEntry,
    managed_by: String,
}

/// The reconciler: settings, clients and the copy of the server's entries.
pub struct Reconciler {
    settings: Settings,
    cluster: Arc<Cluster>,
    admin: AdminApi,
    kube: kube::Client,
    recorder: Recorder,
    /// The server's entries by id, as of the last resync and this controller's writes.
    entries: HashMap<String, Known>,
    /// The failures last reported per resource, so an Event is sent when they change, not
    /// on every pass.
    reported: HashMap<By, Vec<String>>,
    /// Renders of earlier passes: a pass renders only what changed.
    cache: RenderCache,
    /// The ClusterFederatedTrustDomain notes last reported, by resource name.
    reported_federation: HashMap<String, Vec<String>>,
    /// The ClusterFederatedTrustDomains (names and resourceVersions) the last federation pass
    /// saw: an event about a pod does not list the server's relationships again.
    federation_seen: Option<u64>,
}

// === impl Reconciler ===

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("settings", &self.settings)
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl Reconciler {
    pub fn new(
        settings: Settings,
        cluster: Arc<Cluster>,
        admin: AdminApi,
        kube: kube::Client,
    ) -> Self {
        let reporter = Reporter {
            controller: "sigil-controller".into(),
            instance: std::env::var("HOSTNAME").ok(),
        };
        Self {
            settings,
            cluster,
            admin,
            recorder: Recorder::new(kube.clone(), reporter),
            kube,
            entries: HashMap::new(),
            reported: HashMap::new(),
            cache: RenderCache::default(),
            reported_federation: HashMap::new(),
            federation_seen: None,
        }
    }

    /// Lists every entry on the server afresh (start-up, leadership, `gcInterval`); returns
    /// the admin API calls it took.
    pub async fn resync(&mut self) -> Result<usize, AdminError> {
        let (listed, calls) = self.admin.list_entries().await?;
        self.entries = listed
            .iter()
            .map(|e| {
                (
                    e.id.clone(),
                    Known {
                        current: to_current(e),
                        managed_by: e.managed_by.clone(),
                    },
                )
            })
            .collect();
        // A resync checks the federation relationships again too (drift on the server).
        self.federation_seen = None;
        Ok(calls)
    }

    /// How many entries the copy holds.
    pub fn known_entries(&self) -> usize {
        self.entries.len()
    }

    /// One pass: plan, write, status.
    pub async fn pass(&mut self) -> PassReport {
        let started = Instant::now();
        let mut report = PassReport::default();
        let csid_objects = if self.settings.reconcile.cluster_spiffeids {
            self.cluster.cluster_spiffe_ids.all()
        } else {
            Vec::new()
        };
        let static_objects = if self.settings.reconcile.cluster_static_entries {
            self.cluster.cluster_static_entries.all()
        } else {
            Vec::new()
        };
        let csids: Vec<ClusterSpiffeId> =
            csid_objects.iter().map(|v| cluster_spiffe_id(v)).collect();
        let statics: Vec<StaticEntry> = static_objects.iter().map(|v| static_entry(v)).collect();

        let namespaces = self.cluster.namespaces.all();
        let pods = self.cluster.pods.all();
        let nodes = self.cluster.nodes.all();
        let slices = self.cluster.endpoint_slices.all();
        let mut snapshot = Snapshot {
            namespaces: namespaces.iter().map(|v| v.as_ref()).collect(),
            ..Default::default()
        };
        for pod in &pods {
            let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
            snapshot
                .pods
                .entry(ns.to_string())
                .or_default()
                .push(pod.as_ref());
        }
        for node in &nodes {
            let name = node["metadata"]["name"].as_str().unwrap_or_default();
            snapshot.nodes.insert(name.to_string(), node.as_ref());
        }
        snapshot.services = services_by_pod(&slices);

        let plan = plan_cached(
            &self.settings.ctx,
            &self.settings.scope,
            &csids,
            &statics,
            &snapshot,
            &mut self.cache,
        );
        report.declared = plan.entries.len();
        report.render_failures = plan.failures.len();
        report.static_failures = plan.static_status.values().filter(|s| !s.rendered).count();

        let ownership = Ownership::new(
            &self.settings.entry_id_prefix,
            self.settings.entry_id_prefix_cleanup.as_deref(),
            self.entries
                .iter()
                .filter(|(_, k)| k.managed_by == self.settings.managed_by)
                .map(|(id, _)| id.clone())
                .collect(),
        );
        let current: Vec<&CurrentEntry> = self.entries.values().map(|k| &k.current).collect();
        let changes = diff(&plan.entries, current, &ownership);

        // Who declared each entry key, to charge failures to it.
        let by_key = |e: &crate::render::RenderedEntry| {
            plan.entries
                .get(&entry_key(
                    e.spiffe_id.as_ref(),
                    e.parent_id.as_ref(),
                    &e.selectors,
                ))
                .map(|d| d.by.clone())
        };
        let mut failed_by: HashMap<By, Vec<String>> = HashMap::new();

        // Deletes first: they free the (SPIFFE ID, parent, selectors) an update or create may
        // need.
        if !changes.delete.is_empty() {
            report.admin_calls += changes.delete.len().div_ceil(crate::admin::BATCH);
            let results = self.admin.delete(changes.delete.clone()).await;
            for (id, res) in changes.delete.iter().zip(results) {
                match res {
                    Ok(()) => {
                        self.entries.remove(id);
                        report.deleted += 1;
                        tracing::info!(entry_id = %id, "deleted entry");
                    }
                    Err(status) => {
                        report.failed += 1;
                        tracing::warn!(entry_id = %id, code = ?status.code(), message = status.message(), "failed to delete entry");
                    }
                }
            }
        }
        if !changes.create.is_empty() {
            report.admin_calls += changes.create.len().div_ceil(crate::admin::BATCH);
            let protos: Vec<pb::Entry> = changes
                .create
                .iter()
                .map(|(id, e)| to_proto(id.as_deref(), e, &self.settings.managed_by))
                .collect();
            let results = self.admin.create(protos).await;
            for ((_, e), res) in changes.create.iter().zip(results) {
                self.record_write(&mut report, &mut failed_by, by_key(e), e, res, "create");
            }
        }
        if !changes.update.is_empty() {
            report.admin_calls += changes.update.len().div_ceil(crate::admin::BATCH);
            let protos: Vec<pb::Entry> = changes
                .update
                .iter()
                .map(|(id, e, _)| to_proto(Some(id), e, &self.settings.managed_by))
                .collect();
            let results = self.admin.update(protos).await;
            for ((_, e, _), res) in changes.update.iter().zip(results) {
                self.record_write(&mut report, &mut failed_by, by_key(e), e, res, "update");
            }
        }

        self.write_statuses(&plan, &csid_objects, &static_objects, &failed_by)
            .await;
        if self.settings.reconcile.cluster_federated_trust_domains {
            self.federation_pass(&mut report).await;
        }
        self.report_failures(&plan.failures, &failed_by, &csid_objects, &static_objects)
            .await;
        report.duration = started.elapsed();
        report
    }

    fn record_write(
        &mut self,
        report: &mut PassReport,
        failed_by: &mut HashMap<By, Vec<String>>,
        by: Option<By>,
        entry: &crate::render::RenderedEntry,
        res: crate::admin::WriteResult,
        verb: &str,
    ) {
        match res {
            Ok(stored) => {
                if verb == "create" {
                    report.created += 1;
                } else {
                    report.updated += 1;
                }
                tracing::info!(entry_id = %stored.id, spiffe_id = %stored.spiffe_id, parent_id = %stored.parent_id, "{verb}d entry");
                self.entries.insert(
                    stored.id.clone(),
                    Known {
                        current: to_current(&stored),
                        managed_by: stored.managed_by.clone(),
                    },
                );
            }
            Err(status) => {
                report.failed += 1;
                if matches!(
                    status.code(),
                    tonic::Code::AlreadyExists | tonic::Code::NotFound
                ) {
                    report.stale = true;
                }
                tracing::warn!(spiffe_id = %entry.spiffe_id, parent_id = %entry.parent_id, code = ?status.code(), message = status.message(), "failed to {verb} entry");
                if let Some(by) = by {
                    failed_by.entry(by).or_default().push(format!(
                        "failed to {verb} entry {}: {}",
                        entry.spiffe_id,
                        status.message()
                    ));
                }
            }
        }
    }

    /// ClusterFederatedTrustDomains → the server's federation relationships (few: listed on
    /// every pass), and Events for what could not be applied.
    async fn federation_pass(&mut self, report: &mut PassReport) {
        let objects = self.cluster.cluster_federated_trust_domains.all();
        let seen = {
            use std::hash::{Hash, Hasher};
            let mut keys: Vec<(&str, &str)> = objects
                .iter()
                .map(|o| {
                    (
                        o["metadata"]["name"].as_str().unwrap_or_default(),
                        o["metadata"]["resourceVersion"]
                            .as_str()
                            .unwrap_or_default(),
                    )
                })
                .collect();
            keys.sort();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            keys.hash(&mut h);
            h.finish()
        };
        if self.federation_seen == Some(seen) {
            return;
        }
        let failed_before = report.failed;
        let mut listed = true;
        let scope = self.settings.scope.clone();
        let (desired, mut notes) =
            crate::federation::declared(&objects, |class| scope.serves(class));
        match self.admin.list_federation().await {
            Ok(current) => {
                report.admin_calls += 1;
                let managed_by = self.settings.managed_by.clone();
                let (create, update, delete, more) =
                    crate::federation::changes(&desired, &current, &managed_by);
                notes.extend(more);
                if !(create.is_empty() && update.is_empty() && delete.is_empty()) {
                    report.admin_calls +=
                        [!create.is_empty(), !update.is_empty(), !delete.is_empty()]
                            .iter()
                            .filter(|b| **b)
                            .count();
                    let by_td: HashMap<String, String> = desired
                        .values()
                        .map(|d| (d.trust_domain.clone(), d.by.clone()))
                        .collect();
                    let failures = self
                        .admin
                        .write_federation(
                            create
                                .iter()
                                .map(|d| crate::federation::to_proto(d, &managed_by, true))
                                .collect(),
                            update
                                .iter()
                                .map(|d| crate::federation::to_proto(d, &managed_by, false))
                                .collect(),
                            delete.clone(),
                        )
                        .await;
                    for d in &create {
                        tracing::info!(trust_domain = %d.trust_domain, url = %d.url, profile = %d.profile, "creating federation relationship");
                    }
                    for td in &delete {
                        tracing::info!(trust_domain = %td, "deleting federation relationship");
                    }
                    for (td, message) in failures {
                        report.failed += 1;
                        tracing::warn!(trust_domain = %td, %message, "federation relationship write failed");
                        if let Some(name) = by_td.get(&td) {
                            notes.push(crate::federation::Note {
                                name: name.clone(),
                                message: format!("the server refused the relationship: {message}"),
                                applied: false,
                            });
                        }
                    }
                }
            }
            Err(error) => {
                listed = false;
                tracing::warn!(%error, "listing federation relationships failed");
            }
        }
        // Events, when a resource's notes change.
        let mut now: HashMap<String, Vec<(bool, String)>> = HashMap::new();
        for n in notes {
            now.entry(n.name).or_default().push((n.applied, n.message));
        }
        let names: HashMap<&str, &Arc<Value>> = objects
            .iter()
            .map(|o| (o["metadata"]["name"].as_str().unwrap_or_default(), o))
            .collect();
        for (name, msgs) in &now {
            let texts: Vec<String> = msgs.iter().map(|(_, m)| m.clone()).collect();
            if self.reported_federation.get(name) == Some(&texts) {
                continue;
            }
            let Some(obj) = names.get(name.as_str()) else {
                continue;
            };
            let applied = msgs.iter().all(|(a, _)| *a);
            let note = texts.join("; ");
            tracing::warn!(cluster_federated_trust_domain = %name, %note, "federation resource");
            let event = Event {
                type_: EventType::Warning,
                reason: if applied { "Deprecated" } else { "Invalid" }.into(),
                note: Some(note.chars().take(1000).collect()),
                action: "Reconcile".into(),
                secondary: None,
            };
            let reference = object_ref::<crate::crd::ClusterFederatedTrustDomain>(obj);
            if let Err(error) = self.recorder.publish(&event, &reference).await {
                tracing::warn!(%error, "failed to publish event");
            }
        }
        self.reported_federation = now
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().map(|(_, m)| m).collect()))
            .collect();
        // Done unless a write failed (then the next pass tries again).
        self.federation_seen = (listed && report.failed == failed_before).then_some(seen);
    }

    /// Writes each resource's status when it differs from what the API server has.
    async fn write_statuses(
        &self,
        plan: &crate::plan::Plan,
        csid_objects: &[Arc<Value>],
        static_objects: &[Arc<Value>],
        failed_by: &HashMap<By, Vec<String>>,
    ) {
        let api: Api<ClusterSPIFFEID> = Api::all(self.kube.clone());
        for obj in csid_objects {
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            let Some(stats) = plan.stats.get(name) else {
                continue; // another class's
            };
            let failures = failed_by
                .get(&By::ClusterSpiffeId(name.to_string()))
                .map_or(0, Vec::len);
            let status = csid_status(stats, failures as i64);
            patch_status_if_changed(&api, obj, name, status).await;
        }
        let api: Api<ClusterStaticEntry> = Api::all(self.kube.clone());
        for obj in static_objects {
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            let Some(s) = plan.static_status.get(name) else {
                continue;
            };
            let by = By::ClusterStaticEntry(name.to_string());
            let set = s.rendered && !s.masked && !failed_by.contains_key(&by);
            let status = json!({"rendered": s.rendered, "masked": s.masked, "set": set});
            patch_status_if_changed(&api, obj, name, status).await;
        }
    }

    /// A Warning Event on each resource whose failures changed since the last pass (the
    /// status counts them; the Event says why).
    async fn report_failures(
        &mut self,
        failures: &[(String, String)],
        writes: &HashMap<By, Vec<String>>,
        csid_objects: &[Arc<Value>],
        static_objects: &[Arc<Value>],
    ) {
        let mut now: HashMap<By, Vec<String>> = writes.clone();
        let csid_names: HashMap<&str, &Arc<Value>> = csid_objects
            .iter()
            .map(|o| (o["metadata"]["name"].as_str().unwrap_or_default(), o))
            .collect();
        let static_names: HashMap<&str, &Arc<Value>> = static_objects
            .iter()
            .map(|o| (o["metadata"]["name"].as_str().unwrap_or_default(), o))
            .collect();
        for (name, message) in failures {
            // Names are unique per kind; a ClusterSPIFFEID and a ClusterStaticEntry may share
            // one, so both are told.
            if csid_names.contains_key(name.as_str()) {
                now.entry(By::ClusterSpiffeId(name.clone()))
                    .or_default()
                    .push(message.clone());
            }
            if static_names.contains_key(name.as_str()) {
                now.entry(By::ClusterStaticEntry(name.clone()))
                    .or_default()
                    .push(message.clone());
            }
        }
        for (by, messages) in &now {
            if self.reported.get(by) == Some(messages) {
                continue;
            }
            let reference = match by {
                By::ClusterSpiffeId(n) => csid_names
                    .get(n.as_str())
                    .map(|o| object_ref::<ClusterSPIFFEID>(o)),
                By::ClusterStaticEntry(n) => static_names
                    .get(n.as_str())
                    .map(|o| object_ref::<ClusterStaticEntry>(o)),
            };
            let reason = if messages
                .iter()
                .all(|m| m.starts_with("failed to create") || m.starts_with("failed to update"))
            {
                "EntryFailed"
            } else {
                "RenderFailed"
            };
            let Some(reference) = reference else { continue };
            // An Event note is at most 1 kB: the first failures and how many more.
            let mut note = messages
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ");
            if messages.len() > 3 {
                note.push_str(&format!(" (and {} more)", messages.len() - 3));
            }
            if note.len() > 1000 {
                let mut cut = 1000;
                while !note.is_char_boundary(cut) {
                    cut -= 1;
                }
                note.truncate(cut);
            }
            tracing::warn!(resource = ?by, %note, reason, "reporting failures");
            let event = Event {
                type_: EventType::Warning,
                reason: reason.into(),
                note: Some(note),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(error) = self.recorder.publish(&event, &reference).await {
                tracing::warn!(resource = ?by, %error, "failed to publish event");
            }
        }
        self.reported = now;
    }
}

/// Writes `status` on the resource's status subresource unless it already is the stored one.
async fn patch_status_if_changed<K>(api: &Api<K>, obj: &Value, name: &str, status: Value)
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if obj.get("status") == Some(&status) {
        return;
    }
    if let Err(error) = api
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
    {
        tracing::warn!(kind = %K::kind(&()), name, %error, "failed to update status");
    }
}

/// A stored ClusterSPIFFEID as the plan takes it; a spec that does not even deserialize is a
/// spec error on the resource.
fn cluster_spiffe_id(v: &Value) -> ClusterSpiffeId {
    let meta = &v["metadata"];
    let s = |k: &str| meta[k].as_str().unwrap_or_default().to_string();
    let spec: Result<crate::crd::ClusterSPIFFEIDSpec, String> =
        serde_json::from_value(v["spec"].clone()).map_err(|e| format!("invalid spec: {e}"));
    match spec {
        Ok(spec) => ClusterSpiffeId {
            name: s("name"),
            uid: s("uid"),
            creation_timestamp: s("creationTimestamp"),
            class_name: spec.class_name.clone().unwrap_or_default(),
            fallback: spec.fallback.unwrap_or(false),
            auto_populate_dns_names: spec.auto_populate_dns_names.unwrap_or(false),
            spec_hash: {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                v["spec"].to_string().hash(&mut h);
                h.finish()
            },
            namespace_selector: spec.namespace_selector.clone(),
            pod_selector: spec.pod_selector.clone(),
            spec: ParsedSpec::parse(&spec).map_err(|e| e.to_string()),
        },
        Err(e) => ClusterSpiffeId {
            name: s("name"),
            uid: s("uid"),
            creation_timestamp: s("creationTimestamp"),
            class_name: v["spec"]["className"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            fallback: false,
            auto_populate_dns_names: false,
            spec_hash: 0,
            namespace_selector: None,
            pod_selector: None,
            spec: Err(e),
        },
    }
}

fn static_entry(v: &Value) -> StaticEntry {
    let meta = &v["metadata"];
    let s = |k: &str| meta[k].as_str().unwrap_or_default().to_string();
    let spec: Result<crate::crd::ClusterStaticEntrySpec, String> =
        serde_json::from_value(v["spec"].clone()).map_err(|e| format!("invalid spec: {e}"));
    StaticEntry {
        name: s("name"),
        uid: s("uid"),
        creation_timestamp: s("creationTimestamp"),
        class_name: v["spec"]["className"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        entry: spec.and_then(|spec| render_static_entry(&spec).map_err(|e| e.to_string())),
    }
}

/// A ClusterSPIFFEID's `status` as upstream writes it (every counter present).
fn csid_status(s: &Stats, entry_failures: i64) -> Value {
    json!({"stats": {
        "namespacesSelected": s.namespaces_selected,
        "namespacesIgnored": s.namespaces_ignored,
        "podsSelected": s.pods_selected,
        "podEntryRenderFailures": s.pod_entry_render_failures,
        "entriesMasked": s.entries_masked,
        "entriesToSet": s.entries_to_set,
        "entryFailures": entry_failures,
    }})
}

/// The services targeting each pod, by pod UID, from EndpointSlices (ready or not, as
/// upstream counts both an Endpoints' addresses and its not-ready ones).
pub fn services_by_pod(slices: &[Arc<Value>]) -> HashMap<String, Vec<ServiceRef>> {
    let mut out: HashMap<String, Vec<ServiceRef>> = HashMap::new();
    for slice in slices {
        let Some(service) = slice["metadata"]["labels"]["kubernetes.io/service-name"].as_str()
        else {
            continue;
        };
        let namespace = slice["metadata"]["namespace"].as_str().unwrap_or_default();
        for ep in slice["endpoints"].as_array().into_iter().flatten() {
            let target = &ep["targetRef"];
            if target["kind"].as_str() != Some("Pod") {
                continue;
            }
            let Some(uid) = target["uid"].as_str() else {
                continue;
            };
            let refs = out.entry(uid.to_string()).or_default();
            let r = ServiceRef {
                name: service.to_string(),
                namespace: namespace.to_string(),
            };
            if !refs.contains(&r) {
                refs.push(r);
            }
        }
    }
    // A stable order, whatever order the slices came in.
    for refs in out.values_mut() {
        refs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    }
    out
}
