//! A fake Kubernetes API server for tests: a real HTTP (or HTTPS) server on loopback that
//! speaks the API server's JSON wire protocol closely enough for kube-rs (watcher, reflector,
//! `Api::get`/`list`, TokenReview) and a real kubectl to work against it, while the test keeps
//! a handle to change the cluster, break it and see what its clients asked.
//!
//! What it models, because the clients under test depend on it:
//! - one global resourceVersion (etcd's revision) and a bounded change history: watches resume
//!   from a version, replay what they missed, or get the real `410 Gone` ("too old resource
//!   version") after [`FakeKube::compact`], which makes clients relist;
//! - label and field selectors with the real grammar, also on watches (an object that stops
//!   matching is sent as DELETED, one that starts matching as ADDED), and errors for
//!   unsupported fields;
//! - list pagination with `limit`/`continue` served from a consistent snapshot;
//! - watch bookmarks, `timeoutSeconds`, `sendInitialEvents`;
//! - TokenRequest (real ES256 JWTs with the projected token claims) and TokenReview
//!   (signature, expiry, audiences, bound pod still alive);
//! - bearer-token authentication (401 without one) and `Status` errors as the API server
//!   writes them.
//!
//! Resources served: Pods (with `status`), Nodes, Namespaces, ConfigMaps, ServiceAccounts (with `token`)
//! in the core group (`/api/v1`); EndpointSlices (`discovery.k8s.io/v1`), Leases
//! (`coordination.k8s.io/v1`) and CustomResourceDefinitions (`apiextensions.k8s.io/v1`) under
//! `/apis`, Events (`events.k8s.io/v1`); TokenReviews, SelfSubjectReviews; discovery, `/version`, and just enough of
//! `/openapi/v3` for kubectl to leave field validation to the server. Every resource has the
//! same list/watch/get/create/update/patch/delete (and `/status`) endpoints, with optimistic
//! concurrency on `metadata.resourceVersion` (a stale update is a 409 Conflict, what leader
//! election on a Lease relies on).
//!
//! A CRD, once created (by POST or [`FakeKube::apply`]), serves its resource at
//! `/apis/{group}/{version}/{plural}` for each served version, with its scope, its `status`
//! subresource if it declares one, discovery and watch; its status says it is Established.
//! Deleting it deletes its objects and stops serving them. Objects are stored once for all
//! versions and differ between them only in `apiVersion` (conversion strategy `None`). Only
//! `apiVersion` and `kind` are checked against the request: objects are not validated against
//! the CRD's schema, and unknown fields are not pruned.
//!
//! Patches: JSON merge patch; strategic merge patch (as a merge patch); JSON patch (RFC 6902);
//! server-side apply (`application/apply-patch+yaml`, YAML or JSON, `fieldManager` required),
//! which creates a missing object and otherwise deep-merges the applied fields over the
//! stored ones (maps merge, the rest is replaced). Field ownership (`managedFields`), apply
//! conflicts and the removal of fields a manager no longer applies are not modelled: every
//! apply succeeds as a forced one would.
//!
//! Nothing is persisted; there are no controllers, except that a namespace gets its `default`
//! ServiceAccount, deleting a namespace deletes what is in it, and deleting a CRD deletes its
//! objects.
//!
//! Not modelled (a client that needs them gets an error, not a silent difference): Table
//! output (kubectl falls back to its own columns), `deletecollection`, protobuf bodies other
//! than TokenRequest, graceful deletion (a delete removes the object at once), admission and
//! schema validation, authorization (every authenticated caller may do anything).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use serde_json::json;
//! let kube = sigil_fake_kube::FakeKube::start().await?;
//! kube.apply(json!({"apiVersion": "v1", "kind": "Pod",
//!     "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
//!     "spec": {"nodeName": "n1"}}));
//! kube.write_kubeconfig(std::path::Path::new("/tmp/kubeconfig"))?;
//! # Ok(()) }
//! ```

mod auth;
mod catalog;
mod discovery;
mod http;
mod patch;
mod proto;
mod reply;
mod resources;
mod rest;
mod selectors;
mod store;
mod tls;
mod tokens;
mod watch;

use crate::resources::{ISSUER, Resource};
use crate::store::{Key, Store};
use base64::Engine;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;

pub use crate::selectors::{FieldSelector, LabelSelector};

/// The audience and issuer of the tokens this server issues when none is asked for.
pub const API_AUDIENCE: &str = ISSUER;

/// A running fake API server. Dropping it stops the server (open connections included).
#[derive(Debug)]
pub struct FakeKube {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: Option<tls::Tls>,
    server: Mutex<Option<JoinHandle<()>>>,
}

/// One request the server received, for tests that assert what their client asked (no
/// polling, reconnect backoff, the selectors sent).
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// The raw (still percent-encoded) query string, empty when there is none.
    pub query: String,
    pub at: Instant,
}

/// An API error, as the server writes it in a `Status` object; also what the handle's
/// methods return when they refuse, with the same code and message the endpoint would.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    /// The `Status` reason: `NotFound`, `AlreadyExists`, `BadRequest`, ...
    pub reason: String,
    pub message: String,
    /// `details` of the `Status` (name and kind of the object concerned), if any.
    pub details: Option<Value>,
}

/// What the server's tasks share with the handle.
#[derive(Debug)]
pub(crate) struct Shared {
    store: Mutex<Store>,
    /// The current resourceVersion, so open watches wake up on every write.
    changes: tokio::sync::watch::Sender<u64>,
    signer: tokens::Signer,
    admin_token: String,
    requests: Mutex<Vec<RequestRecord>>,
    bookmark_interval: Mutex<Duration>,
    /// `host:port` clients reach the server at, for `/api`'s serverAddressByClientCIDRs.
    address: String,
}

// === impl FakeKube ===

impl FakeKube {
    /// Starts a server over plain HTTP on `127.0.0.1` and a random port.
    pub async fn start() -> std::io::Result<FakeKube> {
        Self::launch(None).await
    }

    /// Starts a server over HTTPS, with a certificate for `127.0.0.1` and `localhost` issued
    /// by a fresh self-signed CA that [`FakeKube::write_kubeconfig`] and
    /// [`FakeKube::ca_pem`] hand out.
    pub async fn start_tls() -> std::io::Result<FakeKube> {
        Self::launch(Some(tls::Tls::new()?)).await
    }

    async fn launch(tls: Option<tls::Tls>) -> std::io::Result<FakeKube> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changes: tokio::sync::watch::channel(0).0,
            signer: tokens::Signer::new(),
            admin_token: format!("sigil-fake-admin-{}", uuid::Uuid::new_v4().simple()),
            requests: Mutex::new(Vec::new()),
            bookmark_interval: Mutex::new(Duration::from_secs(1)),
            address: addr.to_string(),
        });
        // What every cluster has before anyone writes to it.
        let namespaces = resources::by_plural("namespaces").expect("a resource of the table");
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            shared.write(namespaces, json!({"metadata": {"name": ns}}));
        }
        let server = tokio::spawn(http::serve(
            listener,
            shared.clone(),
            tls.as_ref().map(tls::Tls::acceptor),
        ));
        Ok(FakeKube {
            shared,
            addr,
            tls,
            server: Mutex::new(Some(server)),
        })
    }

    /// `http://127.0.0.1:<port>` (or `https://`).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The bearer token of the cluster admin (the one the kubeconfig carries).
    pub fn admin_token(&self) -> &str {
        &self.shared.admin_token
    }

    /// The PEM of the CA that issued the server's certificate (`start_tls` only).
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.ca_pem.as_str())
    }

    /// Writes a kubeconfig (JSON, which kubectl and kube-rs both read as YAML) with one
    /// cluster, [`FakeKube::url`], one admin user with a bearer token, and a current context
    /// in namespace `default`.
    ///
    /// kubectl sends no bearer token over plain HTTP (and so gets 401): give it a server from
    /// [`FakeKube::start_tls`]. kube-rs sends it either way.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        let mut cluster = json!({"server": self.url()});
        if let Some(ca) = self.ca_pem() {
            cluster["certificate-authority-data"] =
                json!(base64::engine::general_purpose::STANDARD.encode(ca));
        }
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "sigil-fake", "cluster": cluster}],
            "users": [{"name": "admin", "user": {"token": self.shared.admin_token}}],
            "contexts": [{"name": "sigil-fake", "context": {
                "cluster": "sigil-fake", "user": "admin", "namespace": "default"}}],
            "current-context": "sigil-fake",
            "preferences": {},
        });
        std::fs::write(path, serde_json::to_vec_pretty(&config)?)
    }

    /// Creates or replaces an object, by its `apiVersion` (optional: without it, the first
    /// resource of that kind, core group first) and `kind`, `metadata.namespace` (default
    /// `default`) and `metadata.name`, and returns it as stored. Fills what the API server
    /// fills (uid if missing, creationTimestamp, resourceVersion); watchers see ADDED or
    /// MODIFIED (a new `metadata.uid` makes it a re-created object: DELETED, then ADDED).
    /// Unlike a POST, it keeps `status` and needs no namespace to exist: it sets up fixtures.
    /// A CustomResourceDefinition starts serving its resources at once.
    ///
    /// # Panics
    /// If `kind` is not one this server serves (Pod, Node, Namespace, ServiceAccount,
    /// ConfigMap, EndpointSlice, Lease, Event, CustomResourceDefinition, or a kind of a CRD it holds), the
    /// object has no name, or is a CRD the API server would refuse: a mistake in the test.
    pub fn apply(&self, obj: Value) -> Value {
        let kind = obj["kind"].as_str().unwrap_or_default();
        let res = self.resource(obj["apiVersion"].as_str(), kind);
        assert!(
            obj.pointer("/metadata/name")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty()),
            "apply: the object has no metadata.name: {obj}"
        );
        if catalog::is_crd(res)
            && let Err(why) = catalog::resources_of(&obj)
        {
            panic!("apply: the API server would refuse this CRD ({why}): {obj}");
        }
        self.shared.write(res, obj)
    }

    /// Deletes an object; watchers see DELETED. Returns its last state, `None` if there was
    /// no such object. `kind` is a kind (`Pod`) or a resource (`pods`).
    ///
    /// # Panics
    /// If `kind` is not one this server serves.
    pub fn delete(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.shared
            .remove(&Key::new(self.resource(None, kind), namespace, name))
    }

    /// An object as stored. `kind` as in [`FakeKube::delete`].
    ///
    /// # Panics
    /// If `kind` is not one this server serves.
    pub fn get(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let key = Key::new(self.resource(None, kind), namespace, name);
        self.shared.store().get(&key).cloned()
    }

    /// Issues a token as TokenRequest would (same checks: the ServiceAccount and the bound
    /// pod must exist), but for any `ttl`, so tests can make tokens that expire quickly.
    /// Empty `audiences` means the API server's own ([`API_AUDIENCE`]).
    pub fn issue_token(
        &self,
        namespace: &str,
        service_account: &str,
        audiences: &[&str],
        bound_pod: Option<&str>,
        ttl: Duration,
    ) -> Result<String, ApiError> {
        let spec = tokens::TokenSpec {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            ttl_secs: ttl.as_secs(),
            bound: bound_pod.map(|name| tokens::BoundRef {
                kind: "Pod".into(),
                name: name.to_string(),
                uid: None,
            }),
        };
        let store = self.shared.store();
        tokens::issue(&store, &self.shared.signer, &spec).map(|(t, _)| t)
    }

    /// The `status` a TokenReview of `token` for `audiences` would get.
    pub fn review_token(&self, token: &str, audiences: &[&str]) -> Value {
        let auds: Vec<String> = audiences.iter().map(|a| a.to_string()).collect();
        tokens::review_status(&self.shared.store(), &self.shared.signer, token, &auds)
    }

    /// The JWKS of the token signing key (also served at `/openid/v1/jwks`).
    pub fn jwks(&self) -> Value {
        self.shared.signer.jwks()
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().rv()
    }

    /// Forgets the change history: a watch resuming from an older resourceVersion (or a list
    /// continuing an older page) gets 410 Gone, as after an etcd compaction.
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// Takes the API server down: the listener is closed and every open connection (watch
    /// streams included) is dropped. The state is kept for [`FakeKube::restart`].
    pub async fn stop(&self) {
        let task = self
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Brings a stopped server back on the same address, with the same state (a running one
    /// is left as it is).
    pub async fn restart(&self) -> std::io::Result<()> {
        if self
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
        {
            return Ok(());
        }
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        let task = tokio::spawn(http::serve(
            listener,
            self.shared.clone(),
            self.tls.as_ref().map(tls::Tls::acceptor),
        ));
        *self.server.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        Ok(())
    }

    /// The resource of `kind` (a kind like `Pod`, or a resource like `pods`), of
    /// `api_version` if given.
    ///
    /// # Panics
    /// If this server does not serve it: only the handle calls this, with kinds from the test.
    fn resource(&self, api_version: Option<&str>, kind: &str) -> &'static Resource {
        self.shared
            .store()
            .catalog
            .by_kind(api_version, kind)
            .unwrap_or_else(|| {
                panic!(
                    "sigil-fake-kube serves Pod, Node, Namespace, ServiceAccount, ConfigMap, EndpointSlice, Lease, Event, CustomResourceDefinition and the kinds of its CRDs, not {kind:?} ({api_version:?})"
                )
            })
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// How often a watch that asked for bookmarks gets one (default 1 s; the real server
    /// sends one about every minute).
    pub fn set_bookmark_interval(&self, d: Duration) {
        *self
            .shared
            .bookmark_interval
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = d;
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        if let Some(task) = self
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

// === impl RequestRecord ===

impl RequestRecord {
    /// A query parameter, percent-decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        reply::parse_query(&self.query).remove(name)
    }

    /// Whether this was a watch (`?watch=true` or `1`).
    pub fn is_watch(&self) -> bool {
        self.param("watch").is_some_and(|w| w == "true" || w == "1")
    }
}

// === impl ApiError ===

impl ApiError {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason: reason.to_string(),
            message: message.into(),
            details: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(crate) fn not_found(plural: &str, name: &str) -> Self {
        let mut e = Self::new(404, "NotFound", format!("{plural} \"{name}\" not found"));
        e.details = Some(json!({"name": name, "kind": plural}));
        e
    }

    /// The `Status` object the server answers with.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

// === impl Shared ===

impl Shared {
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores `obj` and wakes the watches. A new namespace gets its `default`
    /// ServiceAccount, as the service account controller would create; a CRD is accepted
    /// (its status says so) and its resources are served from this write on.
    pub(crate) fn write(&self, res: &'static Resource, mut obj: Value) -> Value {
        let mut store = self.store();
        let created = store.get(&Key::of(res, &obj)).is_none();
        if catalog::is_crd(res) {
            obj["status"] = catalog::crd_status(&obj);
        }
        let stored = store.put(res, obj);
        if catalog::is_crd(res) {
            store.catalog.serve(&stored);
        }
        if created && res.group.is_empty() && res.plural == "namespaces" {
            let sa = resources::by_plural("serviceaccounts").expect("a resource of the table");
            let name = stored["metadata"]["name"].as_str().unwrap_or_default();
            if store.get(&Key::new(sa, Some(name), "default")).is_none() {
                store.put(
                    sa,
                    json!({"metadata": {"name": "default", "namespace": name}}),
                );
            }
        }
        self.changes.send_replace(store.rv());
        stored
    }

    /// Deletes the object at `key` (a namespace with its contents, a CRD with its objects,
    /// whose resources stop being served) and wakes the watches.
    pub(crate) fn remove(&self, key: &Key) -> Option<Value> {
        let mut store = self.store();
        let last = store.remove(key)?;
        if key.is(&resources::CRDS) {
            for res in store.catalog.unserve(&key.name) {
                for k in store.keys_of(res) {
                    store.remove(&k);
                }
            }
        }
        if key.group.is_empty() && key.resource == "namespaces" {
            let inside: Vec<Key> = store.keys_in_namespace(&key.name);
            for k in inside {
                store.remove(&k);
            }
        }
        self.changes.send_replace(store.rv());
        Some(last)
    }

    pub(crate) fn bookmark_interval(&self) -> Duration {
        *self
            .bookmark_interval
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Now as the API server writes timestamps: RFC 3339, seconds, UTC (`2026-01-02T03:04:05Z`).
pub(crate) fn now_rfc3339() -> String {
    rfc3339(now_unix())
}

pub(crate) fn rfc3339(unix: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}
