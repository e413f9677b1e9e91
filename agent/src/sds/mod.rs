//! Envoy SDS v3 (`envoy.service.secret.v3.SecretDiscoveryService`) on the Workload API socket,
//! so Envoy and Istio's sidecar take their certificates from Sigil unchanged.
//!
//! The xDS rules kept here: every response has its own `version_info` and `nonce`; a request
//! whose `response_nonce` is not the last one sent is stale and ignored; a NACK
//! (`error_detail`) is logged with Envoy's reason and not answered (re-sending what Envoy just
//! rejected would loop); an ACK of the current version with unchanged names is not answered;
//! rotations and bundle changes are pushed as new versions. The caller is attested once, on the
//! first request of a stream, and the stream ends when that process exits.

pub mod secrets;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use futures::Stream;
use futures::future::BoxFuture;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub use self::secrets::{SECRET_TYPE_URL, SdsConfig, Validation};
use crate::manager::ManagerHandle;
use crate::manager::cache::Snapshot;
use crate::selectors::{SelectorSet, WORKLOAD_ENDED, attest_status};
use sigil_workload_attestation::{Attestors, PeerInfo, PidFd, WorkloadChange};

/// How long a new stream waits for the caller's SVIDs (agent just started, entry just created).
const IDENTITY_WAIT: Duration = Duration::from_secs(3);

type SdsStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The SDS service.
#[derive(Clone, Debug)]
pub struct SdsApi {
    handle: ManagerHandle,
    attestors: Attestors,
    cfg: Arc<SdsConfig>,
}

fn next_nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn check_type(type_url: &str) -> Result<(), Status> {
    if type_url.is_empty() || type_url == SECRET_TYPE_URL {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "unsupported resource type {type_url:?} (SDS serves {SECRET_TYPE_URL})"
        )))
    }
}

/// A duplicate of the caller's pidfd, owned by one stream (epoll refuses the same fd twice).
struct ExitWatch(OwnedFd);

impl AsRawFd for ExitWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Completes when the process behind `peer` exits (a pidfd turns readable then). Without a
/// pidfd, or if it cannot be watched, checks liveness once a second instead.
async fn process_exit(peer: PeerInfo) {
    let Some(pidfd) = peer.pidfd.clone() else {
        return std::future::pending().await;
    };
    let watched = dup(&pidfd).and_then(|fd| {
        // SAFETY: `ExitWatch` owns the fd and always returns that same open fd until dropped
        // together with the AsyncFd.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                ExitWatch(fd),
                tokio::io::Interest::READABLE,
            )
        }
        .ok()
    });
    match watched {
        Some(afd) => {
            let _ = afd.readable().await;
        }
        None => loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if !pidfd.is_alive() {
                return;
            }
        },
    }
}

fn dup(fd: &PidFd) -> Option<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a valid fd returns a new fd that we then own exclusively.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    // SAFETY: `new` was just returned by the kernel and is owned by nobody else.
    (new >= 0).then(|| unsafe { OwnedFd::from_raw_fd(new) })
}

// === impl SdsApi ===

impl SdsApi {
    pub fn new(handle: ManagerHandle, attestors: Attestors, cfg: SdsConfig) -> Self {
        Self {
            handle,
            attestors,
            cfg: Arc::new(cfg),
        }
    }

    /// The caller's selectors, and what ends its stream (its pod deleted) or makes it attest
    /// again (its pod's facts changed).
    async fn attest(
        &self,
        peer: &PeerInfo,
    ) -> Result<(SelectorSet, BoxFuture<'static, WorkloadChange>), Status> {
        let attested = self
            .attestors
            .attest_session(peer)
            .await
            .map_err(attest_status)?;
        Ok((attested.selectors.into_iter().collect(), attested.change))
    }

    /// On a workload change: the stream ends if the workload is gone, else the caller is
    /// attested again; returns its new selectors and what to watch next.
    async fn reattest(
        &self,
        peer: &PeerInfo,
        change: WorkloadChange,
    ) -> Result<(SelectorSet, BoxFuture<'static, WorkloadChange>), Status> {
        if change == WorkloadChange::Ended {
            tracing::info!(
                pid = peer.pid,
                "SDS caller's pod was deleted; ending its stream"
            );
            return Err(Status::permission_denied(WORKLOAD_ENDED));
        }
        tracing::debug!(
            pid = peer.pid,
            "SDS caller's workload changed; attesting again"
        );
        self.attest(peer).await
    }

    /// The newest snapshot once the caller's SVIDs are there (or after the wait), and a receiver
    /// that has seen it.
    /// Every secret this stream's caller may have in `snap`.
    fn available(
        &self,
        snap: &Snapshot,
        selectors: &SelectorSet,
        validation: Validation,
    ) -> Result<BTreeMap<String, Secret>, Status> {
        secrets::available(snap, selectors, &self.cfg, validation)
    }

    async fn wait_ready(&self, selectors: &SelectorSet) -> watch::Receiver<Arc<Snapshot>> {
        let mut rx = self.handle.snapshot.clone();
        let deadline = tokio::time::Instant::now() + IDENTITY_WAIT;
        loop {
            if secrets::ready(&rx.borrow_and_update(), selectors) {
                return rx;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return rx; },
                _ = tokio::time::sleep_until(deadline) => return rx,
            }
        }
    }
}

/// Per-stream state of a state-of-the-world SDS stream.
struct SotwState {
    selectors: SelectorSet,
    validation: Validation,
    names: Vec<String>,
    version: u64,
    nonce: String,
    sent: Option<Vec<Secret>>,
}

impl SotwState {
    fn response(&mut self, resources: Vec<Secret>) -> DiscoveryResponse {
        self.version += 1;
        self.nonce = next_nonce();
        let resp = DiscoveryResponse {
            version_info: self.version.to_string(),
            resources: resources.iter().map(secrets::to_any).collect(),
            type_url: SECRET_TYPE_URL.into(),
            nonce: self.nonce.clone(),
            ..Default::default()
        };
        self.sent = Some(resources);
        resp
    }
}

/// Per-stream state of an incremental (delta) SDS stream.
struct DeltaState {
    selectors: SelectorSet,
    validation: Validation,
    wildcard: bool,
    subscribed: BTreeSet<String>,
    /// Version Envoy has of each resource.
    versions: HashMap<String, String>,
    nonce: String,
    system_version: u64,
}

fn resource_version(s: &Secret) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(s.encode_to_vec());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl DeltaState {
    /// The changes Envoy lacks, or `None` when it is up to date.
    fn diff(
        &mut self,
        available: &BTreeMap<String, Secret>,
    ) -> Result<Option<DeltaDiscoveryResponse>, Status> {
        let names: Vec<String> = if self.wildcard {
            available.keys().cloned().collect()
        } else {
            self.subscribed.iter().cloned().collect()
        };
        let wanted = secrets::select(available, &names)?;
        let mut resources = Vec::new();
        for s in &wanted {
            let v = resource_version(s);
            if self.versions.get(&s.name) != Some(&v) {
                self.versions.insert(s.name.clone(), v.clone());
                resources.push(Resource {
                    name: s.name.clone(),
                    version: v,
                    resource: Some(secrets::to_any(s)),
                    ..Default::default()
                });
            }
        }
        let present: BTreeSet<&str> = wanted.iter().map(|s| s.name.as_str()).collect();
        let removed: Vec<String> = self
            .versions
            .keys()
            .filter(|k| !present.contains(k.as_str()))
            .cloned()
            .collect();
        for r in &removed {
            self.versions.remove(r);
        }
        if resources.is_empty() && removed.is_empty() {
            return Ok(None);
        }
        self.system_version += 1;
        self.nonce = next_nonce();
        Ok(Some(DeltaDiscoveryResponse {
            system_version_info: self.system_version.to_string(),
            resources,
            type_url: SECRET_TYPE_URL.into(),
            removed_resources: removed,
            nonce: self.nonce.clone(),
            ..Default::default()
        }))
    }
}

fn log_nack(detail: &envoy_types::pb::google::rpc::Status, version: &str, pid: i32) {
    tracing::warn!(
        pid,
        code = detail.code,
        error = %detail.message,
        version,
        "Envoy rejected the secrets (NACK); not re-sending them"
    );
}

/// The caller as the socket's accept path recorded it.
fn caller<T>(req: &Request<T>) -> Result<PeerInfo, Status> {
    req.extensions()
        .get::<PeerInfo>()
        .cloned()
        .ok_or_else(|| Status::unavailable("could not identify the caller"))
}

/// Runs one xDS stream (`run`, given the sending half) on its own task; an error it returns
/// ends the stream with that status.
fn spawn_stream<T, F, Fut>(run: F) -> SdsStream<T>
where
    T: Send + 'static,
    F: FnOnce(mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: Future<Output = Result<(), Status>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Result<T, Status>>(4);
    let errors = tx.clone();
    let stream = run(tx);
    tokio::spawn(async move {
        if let Err(status) = stream.await {
            let _ = errors.send(Err(status)).await;
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl SecretDiscoveryService for SdsApi {
    type StreamSecretsStream = SdsStream<DiscoveryResponse>;
    type DeltaSecretsStream = SdsStream<DeltaDiscoveryResponse>;

    async fn stream_secrets(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let peer = caller(&req)?;
        let mut inbound = req.into_inner();
        let api = self.clone();
        Ok(Response::new(spawn_stream(move |tx| async move {
            api.run_sotw(&peer, &mut inbound, &tx).await
        })))
    }

    async fn delta_secrets(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        let peer = caller(&req)?;
        let mut inbound = req.into_inner();
        let api = self.clone();
        Ok(Response::new(spawn_stream(move |tx| async move {
            api.run_delta(&peer, &mut inbound, &tx).await
        })))
    }

    async fn fetch_secrets(
        &self,
        req: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let peer = caller(&req)?;
        let req = req.into_inner();
        check_type(&req.type_url)?;
        let (selectors, _) = self.attest(&peer).await?;
        let validation = secrets::validation_for(req.node.as_ref(), &self.cfg);
        let rx = self.wait_ready(&selectors).await;
        let snap = rx.borrow().clone();
        let available = secrets::available(&snap, &selectors, &self.cfg, validation)?;
        let resources = secrets::select(&available, &req.resource_names)?;
        let version = resources
            .iter()
            .map(resource_version)
            .collect::<Vec<_>>()
            .join("");
        Ok(Response::new(DiscoveryResponse {
            version_info: version,
            resources: resources.iter().map(secrets::to_any).collect(),
            type_url: SECRET_TYPE_URL.into(),
            ..Default::default()
        }))
    }
}

impl SdsApi {
    async fn run_sotw(
        &self,
        peer: &PeerInfo,
        inbound: &mut Streaming<DiscoveryRequest>,
        tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) -> Result<(), Status> {
        // The first request carries the node; attest the caller once for the whole stream.
        let Some(first) = inbound.message().await? else {
            return Ok(());
        };
        check_type(&first.type_url)?;
        let (selectors, mut change) = self.attest(peer).await?;
        let mut state = SotwState {
            validation: secrets::validation_for(first.node.as_ref(), &self.cfg),
            selectors,
            names: first.resource_names.clone(),
            version: 0,
            nonce: String::new(),
            sent: None,
        };
        let mut snapshots = self.wait_ready(&state.selectors).await;
        let snap = snapshots.borrow_and_update().clone();
        let available = self.available(&snap, &state.selectors, state.validation)?;
        let resources = secrets::select(&available, &state.names)?;
        tracing::debug!(pid = peer.pid, names = ?state.names, "SDS stream opened");
        if tx.send(Ok(state.response(resources))).await.is_err() {
            return Ok(());
        }
        let exit = process_exit(peer.clone());
        tokio::pin!(exit);
        loop {
            tokio::select! {
                _ = tx.closed() => return Ok(()),
                _ = &mut exit => {
                    tracing::debug!(pid = peer.pid, "SDS caller exited; ending its stream");
                    return Ok(());
                }
                c = &mut change => {
                    (state.selectors, change) = self.reattest(peer, c).await?;
                    let snap = snapshots.borrow().clone();
                    let available = self.available(&snap, &state.selectors, state.validation)?;
                    let resources = secrets::select(&available, &state.names)?;
                    if state.sent.as_ref() != Some(&resources)
                        && tx.send(Ok(state.response(resources))).await.is_err()
                    {
                        return Ok(());
                    }
                }
                msg = inbound.message() => {
                    let Some(req) = msg? else { return Ok(()) };
                    check_type(&req.type_url)?;
                    if !req.response_nonce.is_empty() && req.response_nonce != state.nonce {
                        tracing::debug!(nonce = %req.response_nonce, "ignoring a stale SDS request");
                        continue;
                    }
                    if let Some(detail) = &req.error_detail {
                        log_nack(detail, &req.version_info, peer.pid);
                        continue;
                    }
                    let names_changed = req.resource_names != state.names;
                    if !names_changed && req.version_info == state.version.to_string() {
                        continue; // ACK of what we sent
                    }
                    state.names = req.resource_names;
                    let snap = snapshots.borrow().clone();
                    let available = self.available(&snap, &state.selectors, state.validation)?;
                    let resources = secrets::select(&available, &state.names)?;
                    if tx.send(Ok(state.response(resources))).await.is_err() {
                        return Ok(());
                    }
                }
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return Err(Status::unavailable("agent is shutting down"));
                    }
                    let snap = snapshots.borrow_and_update().clone();
                    let available = self.available(&snap, &state.selectors, state.validation)?;
                    let resources = secrets::select(&available, &state.names)?;
                    if state.sent.as_ref() == Some(&resources) {
                        continue;
                    }
                    tracing::debug!(pid = peer.pid, "pushing updated secrets");
                    if tx.send(Ok(state.response(resources))).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn run_delta(
        &self,
        peer: &PeerInfo,
        inbound: &mut Streaming<DeltaDiscoveryRequest>,
        tx: &mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) -> Result<(), Status> {
        let Some(first) = inbound.message().await? else {
            return Ok(());
        };
        check_type(&first.type_url)?;
        let (selectors, mut change) = self.attest(peer).await?;
        let mut state = DeltaState {
            validation: secrets::validation_for(first.node.as_ref(), &self.cfg),
            selectors,
            // An empty first subscription is the legacy wildcard; "*" is the explicit one.
            wildcard: first.resource_names_subscribe.is_empty()
                || first.resource_names_subscribe.iter().any(|n| n == "*"),
            subscribed: first
                .resource_names_subscribe
                .iter()
                .filter(|n| n.as_str() != "*")
                .cloned()
                .collect(),
            versions: first
                .initial_resource_versions
                .clone()
                .into_iter()
                .collect(),
            nonce: String::new(),
            system_version: 0,
        };
        let mut snapshots = self.wait_ready(&state.selectors).await;
        let snap = snapshots.borrow_and_update().clone();
        let available = self.available(&snap, &state.selectors, state.validation)?;
        if let Some(resp) = state.diff(&available)?
            && tx.send(Ok(resp)).await.is_err()
        {
            return Ok(());
        }
        let exit = process_exit(peer.clone());
        tokio::pin!(exit);
        loop {
            tokio::select! {
                _ = tx.closed() => return Ok(()),
                _ = &mut exit => return Ok(()),
                c = &mut change => {
                    (state.selectors, change) = self.reattest(peer, c).await?;
                    let snap = snapshots.borrow().clone();
                    let available = self.available(&snap, &state.selectors, state.validation)?;
                    if let Some(resp) = state.diff(&available)?
                        && tx.send(Ok(resp)).await.is_err()
                    {
                        return Ok(());
                    }
                }
                msg = inbound.message() => {
                    let Some(req) = msg? else { return Ok(()) };
                    check_type(&req.type_url)?;
                    if !req.response_nonce.is_empty() && req.response_nonce != state.nonce {
                        continue; // stale
                    }
                    if let Some(detail) = &req.error_detail {
                        log_nack(detail, &req.response_nonce, peer.pid);
                        continue;
                    }
                    for n in &req.resource_names_subscribe {
                        if n == "*" {
                            state.wildcard = true;
                        } else {
                            state.subscribed.insert(n.clone());
                        }
                    }
                    for n in &req.resource_names_unsubscribe {
                        if n == "*" {
                            state.wildcard = false;
                        }
                        state.subscribed.remove(n);
                        state.versions.remove(n);
                    }
                    if req.resource_names_subscribe.is_empty() && req.resource_names_unsubscribe.is_empty() {
                        continue; // a plain ACK
                    }
                    let snap = snapshots.borrow().clone();
                    let available = self.available(&snap, &state.selectors, state.validation)?;
                    if let Some(resp) = state.diff(&available)?
                        && tx.send(Ok(resp)).await.is_err()
                    {
                        return Ok(());
                    }
                }
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return Err(Status::unavailable("agent is shutting down"));
                    }
                    let snap = snapshots.borrow_and_update().clone();
                    let available = self.available(&snap, &state.selectors, state.validation)?;
                    if let Some(resp) = state.diff(&available)?
                        && tx.send(Ok(resp)).await.is_err()
                    {
                        return Ok(());
                    }
                }
            }
        }
    }
}
