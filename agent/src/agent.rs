//! `sigil-agent run`: bootstrap the agent's identity, then serve the Workload API while the
//! manager keeps everything in step with the server.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sigil_k8s::K8sAttestor;
use sigil_workload_attestation::{
    Attestation, Attestors, PodAttestor, Tier, TierUnavailable, UnixAttestor, WorkloadAttestor,
};
use tokio::sync::watch;

use crate::config::{Config, KeyManager};
use crate::health::{self, ReadyCheck};
use crate::manager::cache::BundleRecord;
use crate::manager::rotation::Backoff;
use crate::manager::{Manager, ManagerError, ManagerHandle};
use crate::node::client::Credentials;
use crate::node::storage::{DiskStore, StoreError};
use crate::node::tls::ServerTrust;
use crate::node::{AgentSvid, NodeError, ServerEndpoint};
use crate::svid;
use crate::workload::{self, WorkloadApi, WorkloadError};

/// Why the agent stopped (or could not start).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "no join token configured and no usable agent SVID in {0}: set join_token (or -joinToken), or configure NodeAttestor \"k8s_psat\", to attest this node"
    )]
    NoJoinToken(String),
    #[error("trust_bundle_path (or -trustBundle) is required unless insecure_bootstrap is set")]
    NoTrustBundle,
    #[error("reading trust bundle {path}: {reason}")]
    TrustBundle { path: PathBuf, reason: String },
    #[error("node attestation failed: {0}")]
    Attest(#[source] NodeError),
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    #[error(transparent)]
    Attestation(#[from] TierUnavailable),
    #[error("k8s workload attestor: {0}")]
    Kubernetes(#[source] sigil_k8s::ClientError),
    #[error("health check listener: {0}")]
    Health(#[source] std::io::Error),
    #[error("telemetry Prometheus listener: {0}")]
    Metrics(#[source] std::io::Error),
    #[error("a background task failed: {0}")]
    Task(String),
    #[error(
        "the server no longer accepts this agent (evicted or banned); its SVID was discarded, attest again (a join token agent needs a new token): {0}"
    )]
    Rejected(#[source] NodeError),
}

/// The agent's identity when it starts serving.
struct Bootstrapped {
    svid: AgentSvid,
    roots: Vec<Vec<u8>>,
    bundle: Option<sigil_proto::types::Bundle>,
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(config: Config) -> Result<(), AgentError> {
    run_until(config, shutdown_signal()).await
}

/// Runs the agent until `shutdown` completes (for tests and embedding).
pub async fn run_until(
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    tokio::pin!(shutdown);
    let (stop_tx, stop_rx) = watch::channel(false);
    let handle_cell: Arc<OnceLock<ManagerHandle>> = Arc::new(OnceLock::new());
    // The attestation tier, once chosen (after bootstrap): health reports it from here.
    let tier_cell: Arc<OnceLock<Tier>> = Arc::new(OnceLock::new());

    let metrics = sigil_telemetry::Registry::new();
    if let Some(p) = &config.telemetry.prometheus {
        let listener = sigil_telemetry::bind(p).await.map_err(AgentError::Health)?;
        tracing::info!(address = %p.host, port = p.port, "metrics listening");
        tokio::spawn(sigil_telemetry::serve(listener, metrics.clone()));
    }
    {
        let (cell, tier) = (handle_cell.clone(), tier_cell.clone());
        metrics.collect_with(Box::new(move |r| {
            if let Some(t) = tier.get() {
                r.clear("sigil_agent_attestation_tier");
                r.set(
                    "sigil_agent_attestation_tier",
                    "The workload attestation tier in use (1 for the tier label).",
                    &[("tier", t.name())],
                    1.0,
                );
            }
            let Some(h) = cell.get() else { return };
            let conn = *h.connection.borrow();
            r.set(
                "sigil_agent_server_connected",
                "1 while the entry sync with the server is up; 0 while the agent serves what it cached.",
                &[],
                if conn.connected { 1.0 } else { 0.0 },
            );
            r.set(
                "sigil_agent_server_connection_changed_timestamp_seconds",
                "When the link to the server last went up or down (Unix seconds).",
                &[],
                conn.since as f64,
            );
            let snap = h.snapshot.borrow().clone();
            r.set(
                "sigil_agent_synced",
                "1 once the agent has received its full entry set from the server.",
                &[],
                if snap.synced { 1.0 } else { 0.0 },
            );
            r.set(
                "sigil_agent_entries",
                "Registration entries this agent holds.",
                &[],
                snap.identities.len() as f64,
            );
            let svids: Vec<i64> = snap
                .identities
                .iter()
                .filter_map(|i| i.svid.as_ref().map(|s| s.not_after))
                .collect();
            r.set(
                "sigil_agent_svids_cached",
                "Workload X509-SVIDs cached.",
                &[],
                svids.len() as f64,
            );
            if let Some(first) = svids.iter().min() {
                r.set(
                    "sigil_agent_svid_earliest_expiry_timestamp_seconds",
                    "When the first cached X509-SVID expires (Unix seconds): alert if it nears while the server is away.",
                    &[],
                    *first as f64,
                );
            }
        }));
    }
    if let Some(hc) = &config.health {
        let listener = health::bind(hc).await.map_err(AgentError::Health)?;
        tracing::info!(
            address = %hc.bind_address,
            port = hc.bind_port.0,
            "health checks listening"
        );
        let cell = handle_cell.clone();
        let ready: ReadyCheck = Arc::new(move || readiness(cell.get()));
        let tier = tier_cell.clone();
        let tier: health::TierCheck = Arc::new(move || tier.get().copied());
        tokio::spawn(health::serve(
            listener,
            hc.clone(),
            ready,
            tier,
            stopped(stop_rx.clone()),
        ));
    }

    let endpoint = ServerEndpoint::new(
        &config.server_address,
        config.server_port.0,
        &config.trust_domain,
    );
    let store = match &config.key_manager {
        KeyManager::Disk { directory } => Some(DiskStore::new(directory)),
        KeyManager::Memory => None,
    };
    let boot = tokio::select! {
        b = bootstrap(&config, &endpoint, store.as_ref()) => b?,
        _ = &mut shutdown => return Ok(()),
    };
    tracing::info!(spiffe_id = %boot.svid.id, expires_at = boot.svid.not_after, "agent attested as {}", boot.svid.id);

    // Until the first sync, serve the bundle we bootstrapped with.
    let bundle_proto = boot.bundle.unwrap_or_else(|| sigil_proto::types::Bundle {
        trust_domain: config.trust_domain.to_string(),
        x509_authorities: boot.roots.clone(),
        ..Default::default()
    });
    let bundle = BundleRecord::from_proto(&bundle_proto).ok();
    // An agent attested with k8s_psat attests again rather than renewing (SPIRE's rule; the
    // server refuses it RenewAgent). Checked against the SVID too: one persisted from a join
    // token attestation keeps renewing.
    let reattest = config.node_attestor().filter(|a| {
        a.can_reattest()
            && boot
                .svid
                .id
                .path()
                .starts_with(&format!("/spire/agent/{}/", a.name()))
    });
    let creds = Credentials {
        svid: Arc::new(boot.svid),
        roots: Arc::new(boot.roots),
        tainted: Default::default(),
    };
    let (mut manager, handle) = Manager::new(
        endpoint,
        store.clone(),
        config.trust_domain.clone(),
        creds,
        bundle,
        config.jwt_svid_cache_max_size,
    );
    manager = manager.with_metrics(metrics.clone());
    if let Some(attestor) = reattest {
        manager = manager.reattest_with(attestor);
    }
    let _ = handle_cell.set(handle.clone());

    // Bound under a staging name while the attestation programs attach to that socket, then
    // moved into place: a client that connected in between would have no kernel record and be
    // refused.
    let staging = workload::staging_path(&config.socket_path);
    let listener = workload::bind(&staging)?;
    let attestors = match attestors(&config, &staging).await {
        Ok(a) => a,
        Err(e) => {
            let _ = std::fs::remove_file(&staging);
            return Err(e);
        }
    };
    workload::publish(&staging, &config.socket_path)?;
    tracing::info!(path = %config.socket_path.display(), "workload API listening on {}", config.socket_path.display());
    let _ = tier_cell.set(attestors.attestation().tier());
    let sds = crate::sds::SdsApi::new(handle.clone(), attestors.clone(), config.sds.clone());
    let api = WorkloadApi::new(handle, attestors).with_metrics(metrics.clone());
    let mut server = tokio::spawn(workload::serve(
        listener,
        api,
        sds,
        metrics,
        stopped(stop_rx.clone()),
    ));

    let result = tokio::select! {
        r = manager.run() => match r {
            Ok(()) => Ok(()),
            Err(ManagerError::Rejected(e)) => {
                if let Some(store) = &store {
                    store.clear();
                }
                Err(AgentError::Rejected(e))
            }
        },
        r = &mut server => match r {
            Ok(r) => r.map_err(AgentError::from),
            Err(e) => Err(AgentError::Workload(WorkloadError::Socket {
                path: config.socket_path.clone(),
                source: std::io::Error::other(e.to_string()),
            })),
        },
        _ = &mut shutdown => {
            tracing::info!("shutting down");
            Ok(())
        }
    };
    // The manager is gone by now, which ends the open Workload API streams; give the server a
    // moment to finish them.
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(3), server).await;
    let _ = std::fs::remove_file(&config.socket_path);
    result
}

/// The configured workload attestors, on the attestation tier chosen for the (bound) socket.
async fn attestors(config: &Config, socket: &std::path::Path) -> Result<Attestors, AgentError> {
    let request = config.attestation_tier;
    let attestation = Attestation::start(request, socket)?;
    for (tier, reason) in attestation.skipped() {
        tracing::info!(tier = %tier, %reason, "workload attestation tier unavailable");
    }
    tracing::info!(
        tier = %attestation.tier(),
        requested = %request,
        writer_tracking = attestation.writer_tracking(),
        "workload attestation tier: {}",
        attestation.tier()
    );
    let mut list: Vec<Arc<dyn WorkloadAttestor>> = Vec::new();
    if let Some(unix) = &config.unix_attestor {
        list.push(Arc::new(UnixAttestor::new(unix.clone())));
    }
    match &config.k8s_attestor {
        Some(k8s) => list.push(Arc::new(
            K8sAttestor::start(k8s.clone())
                .await
                .map_err(AgentError::Kubernetes)?,
        )),
        // Without the API server, what the cgroup alone says (pod UID, container id).
        None => list.push(Arc::new(PodAttestor)),
    }
    Ok(Attestors::with_attestation(list, Arc::new(attestation)))
}

/// Re-uses a persisted SVID when there is a valid one; otherwise attests (join token or
/// k8s_psat).
async fn bootstrap(
    config: &Config,
    endpoint: &ServerEndpoint,
    store: Option<&DiskStore>,
) -> Result<Bootstrapped, AgentError> {
    let now = svid::now_unix();
    if let Some(store) = store {
        match store.load() {
            Ok(Some(p)) if p.svid.is_expired(now) => {
                tracing::warn!(spiffe_id = %p.svid.id, "persisted agent SVID has expired; attesting again");
            }
            Ok(Some(p)) if !p.svid.id.is_member_of(&config.trust_domain) => {
                tracing::warn!(spiffe_id = %p.svid.id, "persisted agent SVID is for another trust domain; attesting again");
            }
            Ok(Some(p)) => {
                tracing::info!(dir = %store.dir().display(), "re-using the persisted agent SVID");
                return Ok(Bootstrapped {
                    svid: p.svid,
                    roots: p.roots,
                    bundle: None,
                });
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "ignoring unreadable persisted agent state"),
        }
    }

    let attestor = config.node_attestor().ok_or_else(|| {
        AgentError::NoJoinToken(match store {
            Some(s) => s.dir().display().to_string(),
            None => "memory (KeyManager \"memory\")".to_string(),
        })
    })?;
    // As spire-agent: the bundle persisted by an earlier run (kept up to date by the sync)
    // wins over the bootstrap bundle, which may predate a CA rotation.
    let stored = store.and_then(|s| match s.load_bundle() {
        Ok(roots) => roots,
        Err(error) => {
            tracing::warn!(%error, "ignoring unreadable persisted trust bundle");
            None
        }
    });
    let trust = if let Some(roots) = stored {
        ServerTrust::Bundle {
            roots: Arc::new(roots),
            server_id: endpoint.server_id().clone(),
        }
    } else if config.insecure_bootstrap {
        tracing::warn!(
            "insecure_bootstrap is set: the server's identity is not verified for node attestation"
        );
        ServerTrust::InsecureBootstrap
    } else {
        let path = config
            .trust_bundle_path
            .as_ref()
            .ok_or(AgentError::NoTrustBundle)?;
        let bad = |reason: String| AgentError::TrustBundle {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let roots = svid::certs_from_pem(&text).map_err(|e| bad(e.0))?;
        if roots.is_empty() {
            return Err(bad("no certificates found".into()));
        }
        ServerTrust::Bundle {
            roots: Arc::new(roots),
            server_id: endpoint.server_id().clone(),
        }
    };
    tracing::info!(attestor = attestor.name(), "attesting this node");

    let mut backoff = Backoff::reconnect();
    let attested = loop {
        match endpoint.attest(&attestor, trust.clone()).await {
            Ok(a) => break a,
            Err(e) if e.is_retryable() => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    server = %endpoint.address(),
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "node attestation failed; retrying"
                );
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(AgentError::Attest(e)),
        }
    };
    let roots = attested.bundle.x509_authorities.clone();
    if let Some(store) = store {
        // Written (and fsync-ed) on the blocking pool, like every store write.
        let (store, svid, saved_roots) = (store.clone(), attested.svid.clone(), roots.clone());
        tokio::task::spawn_blocking(move || {
            store.save_svid(&svid)?;
            store.save_bundle(&saved_roots)
        })
        .await
        .map_err(|e| AgentError::Task(e.to_string()))??;
    }
    Ok(Bootstrapped {
        svid: attested.svid,
        roots,
        bundle: Some(attested.bundle),
    })
}

/// Ready = an unexpired agent SVID and a trust bundle.
/// Ready while the agent can serve identities. While the server is away it keeps serving what
/// it holds, and says so: `server_connected: false`, since when, and when the first cached
/// SVID expires.
fn readiness(
    handle: Option<&ManagerHandle>,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let handle = handle.ok_or("agent has not attested yet")?;
    let creds = handle.creds.borrow().clone();
    if creds.svid.is_expired(svid::now_unix()) {
        return Err("agent SVID has expired".into());
    }
    let snap = handle.snapshot.borrow().clone();
    if snap.bundle.is_none() || creds.roots.is_empty() {
        return Err("no trust bundle".into());
    }
    let conn = *handle.connection.borrow();
    let mut details = serde_json::Map::new();
    details.insert("server_connected".into(), conn.connected.into());
    if !conn.connected && conn.since != 0 {
        details.insert("server_disconnected_since".into(), conn.since.into());
        if let Some(first) = snap
            .identities
            .iter()
            .filter_map(|i| i.svid.as_ref().map(|s| s.not_after))
            .min()
        {
            details.insert("serving_cached_svids_until".into(), first.into());
        }
    }
    Ok(details)
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            // Without a SIGTERM handler, only Ctrl-C stops us.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
