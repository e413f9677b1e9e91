//! `sigil-server run`: wires the datastore, CA, listeners and background rotation together.

use crate::api::Shared;
use crate::api::admin::AdminApi;
use crate::api::node::NodeApi;
use crate::ca::{Ca, CaConfig};
use crate::config::ServerConfig;
use crate::datastore::DataStore;
use crate::tls::ServerIdentity;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How often CA and server-SVID lifetimes are checked.
const ROTATION_CHECK: Duration = Duration::from_secs(5);

/// Creates `dir` (and parents) with mode 0700 if missing.
fn private_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", dir.display()))?;
    }
    Ok(())
}

/// The admin socket's directory: whoever can write to it can replace the socket with their own
/// and receive the operator's commands (or plant one before the server starts), so a group- or
/// world-writable one is refused, whether the server creates it (0700) or finds it.
fn admin_socket_dir(dir: &Path) -> Result<()> {
    sigil_fs::ensure_private_dir(dir).map_err(|e| {
        anyhow::anyhow!(
            "admin socket directory {}: {e}; refusing to serve the admin API there",
            dir.display()
        )
    })
}

/// Binds the admin socket with mode 0600, replacing a stale socket file left by a crash.
fn bind_admin_socket(path: &Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Some(parent) = path.parent() {
        admin_socket_dir(parent)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
        } else {
            anyhow::bail!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            );
        }
    }
    // Bind under a restrictive umask so the socket is never briefly world-accessible.
    // SAFETY: umask has no preconditions; the previous mask is restored right after.
    let old = unsafe { libc::umask(0o177) };
    let l = tokio::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = l.with_context(|| format!("binding admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Where a started server listens.
#[derive(Debug, Clone)]
pub struct Listening {
    pub agent_api: SocketAddr,
    pub health: Option<SocketAddr>,
    pub bundle_endpoint: Option<SocketAddr>,
}

/// Runs the server until SIGINT/SIGTERM.
pub async fn run(cfg: ServerConfig) -> Result<()> {
    let cfg = Arc::new(cfg);
    private_dir(&cfg.data_dir)?;
    let ds = DataStore::connect(&cfg.datastore)
        .await
        .with_context(|| format!("opening datastore {}", cfg.datastore.describe()))?;
    // Key generation, the keys file's fsync and, for `UpstreamAuthority "spire"`, waiting on
    // the upstream: blocking work.
    let ca_cfg = CaConfig {
        trust_domain: cfg.trust_domain.clone(),
        ca_ttl: cfg.ca_ttl,
        subject: cfg.ca_subject.clone(),
        key_type: cfg.ca_key_type,
        key_manager: cfg.key_manager.clone(),
        jwt_issuer: cfg.jwt_issuer.clone(),
        upstream: cfg.upstream_authority.clone(),
    };
    let ca = Arc::new(
        tokio::task::spawn_blocking(move || Ca::load_or_create(ca_cfg))
            .await
            .context("loading the CA: task failed")?
            .context("loading the CA")?,
    );
    // This server's authorities join the shared bundle before it signs anything, and it
    // trusts the other servers' (agents may come from any of them).
    let server_id = crate::peers::server_id(&cfg.data_dir)
        .with_context(|| format!("reading {}", cfg.data_dir.join("server_id").display()))?;
    crate::peers::sync(&ds, &ca, &server_id, true)
        .await
        .context("publishing this server's authorities to the datastore")?;
    tokio::spawn(crate::peers::run(
        ds.clone(),
        ca.clone(),
        server_id,
        ca.sequence(),
    ));
    let identity = Arc::new(
        ServerIdentity::new(&ca, cfg.default_x509_svid_ttl)
            .map_err(|e| anyhow::anyhow!("issuing the server SVID: {e}"))?,
    );
    let (federation, bundle_endpoint) =
        crate::federation::start(&cfg.federation, ca.clone(), identity.clone(), ds.clone()).await?;
    let metrics = sigil_telemetry::Registry::new();
    crate::metrics::register(&metrics, ca.clone(), ds.clone(), federation.clone());
    ds.set_metrics(metrics.clone());
    let metrics_addr = match &cfg.telemetry.prometheus {
        Some(p) => {
            let l = sigil_telemetry::bind(p)
                .await
                .with_context(|| format!("binding telemetry Prometheus {}:{}", p.host, p.port))?;
            let addr = l.local_addr()?;
            tokio::spawn(sigil_telemetry::serve(l, metrics.clone()));
            Some(addr)
        }
        None => None,
    };
    let shared = Shared {
        cfg: cfg.clone(),
        ca: ca.clone(),
        ds: ds.clone(),
        federation,
        metrics,
    };
    let node_api = NodeApi::new(shared.clone()).context("configuring NodeAttestor \"k8s_psat\"")?;
    if let Some(psat) = &node_api.psat {
        tracing::info!(clusters = ?psat.clusters(), "k8s_psat node attestation enabled");
    }

    let admin_listener = bind_admin_socket(&cfg.socket_path)?;
    let tcp = tokio::net::TcpListener::bind((cfg.bind_address, cfg.bind_port))
        .await
        .with_context(|| format!("binding {}:{}", cfg.bind_address, cfg.bind_port))?;
    let agent_addr = tcp.local_addr()?;
    let acceptor = crate::tls::acceptor(ca.clone(), identity.clone())?;

    let health_addr = match &cfg.health_checks {
        Some(h) => {
            let l = crate::health::bind((h.bind_address.as_str(), h.bind_port))
                .await
                .with_context(|| {
                    format!("binding health listener {}:{}", h.bind_address, h.bind_port)
                })?;
            let addr = l.local_addr()?;
            let ds2 = ds.clone();
            let ready: crate::health::ReadyCheck = Arc::new(move || {
                let ds = ds2.clone();
                Box::pin(async move { ds.ping().await.map_err(|e| e.to_string()) })
            });
            tokio::spawn(crate::health::serve(
                l,
                h.live_path.clone(),
                h.ready_path.clone(),
                ready,
            ));
            Some(addr)
        }
        None => None,
    };

    // CA rotation and server-SVID renewal.
    {
        let (ca, ds, identity, ttl) = (
            ca.clone(),
            ds.clone(),
            identity.clone(),
            cfg.default_x509_svid_ttl,
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ROTATION_CHECK);
            // The bundle's sequence when the server SVID was last checked: any change of the
            // authorities (a rotation here, or `localauthority ... activate|taint` through the
            // admin API) re-issues it, so it is always signed by the active authority.
            let mut seen = ca.sequence();
            let mut follow_error: Option<String> = None;
            loop {
                tick.tick().await;
                // Key generation, signing and the keys file's fsync: blocking work, off the
                // async workers that serve agents.
                let bundle_seen = ca.sequence();
                let (ca2, identity) = (ca.clone(), identity.clone());
                let rotated = tokio::task::spawn_blocking(move || {
                    let rotated = ca2.rotate_if_due(crate::now_unix());
                    let now_seen = ca2.sequence();
                    let force = matches!(rotated, Ok(true)) || now_seen != seen;
                    if let Err(e) = identity.renew_if_due(&ca2, ttl, force) {
                        tracing::error!(error = %e, "renewing the server SVID");
                    }
                    (rotated, now_seen)
                })
                .await
                .map(|(rotated, now_seen)| {
                    seen = now_seen;
                    rotated
                });
                // A nested server follows its upstream's bundle (roots, every server's JWT keys)
                // and publishes its own JWT keys there.
                if let Some(up) = ca.spire_upstream() {
                    let followed = match up.follow(&ca.own_jwt_authorities()).await {
                        Ok(f) => {
                            let ca2 = ca.clone();
                            tokio::task::spawn_blocking(move || {
                                let (changed, stale) = ca2.follow_upstream(f)?;
                                // The authority that signed our CA is tainted upstream: a new
                                // CA from the upstream's active authority, so our agents can
                                // re-sign what the tainted one reached.
                                if stale {
                                    let new = ca2.replace_x509_now(crate::now_unix())?;
                                    tracing::warn!(
                                        authority_id = %new.authority_id,
                                        upstream_authority_subject_key_id = %new.upstream_authority_subject_key_id,
                                        "the upstream authority that signed this server's CA is tainted; a new CA is active"
                                    );
                                }
                                Ok::<bool, crate::ca::CaError>(changed || stale)
                            })
                            .await
                            .map_err(|e| e.to_string())
                            .and_then(|r| r.map_err(|e| e.to_string()))
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    match followed {
                        Ok(changed) => {
                            if follow_error.take().is_some() {
                                tracing::info!("following the upstream server's bundle again");
                            }
                            if changed {
                                tracing::info!("upstream bundle changed; bundle updated");
                                ds.bundle_changed();
                            }
                        }
                        Err(e) => {
                            if follow_error.as_deref() != Some(e.as_str()) {
                                tracing::warn!(error = %e, "following the upstream server's bundle");
                            }
                            follow_error = Some(e);
                        }
                    }
                }
                match rotated {
                    Ok(Ok(true)) => {
                        tracing::info!("CA rotated; bundle updated");
                        ds.bundle_changed();
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        // Part of the rotation may have happened (the JWT key's, while the
                        // upstream could not sign): agents must still hear of it.
                        tracing::error!(error = %e, "CA rotation failed");
                        if ca.sequence() != bundle_seen {
                            ds.bundle_changed();
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "CA rotation task failed"),
                }
            }
        });
    }

    // Notifier "k8sbundle": the bundle in a ConfigMap, checked as often as the CA rotates.
    if let Some(notifier) = cfg.k8sbundle.clone() {
        let ca = ca.clone();
        tokio::spawn(sigil_k8sbundle::run(notifier, ROTATION_CHECK, move || {
            ca.bundle().to_pem()
        }));
    }

    // BundlePublisher "k8s_configmap": the bundle, in each target's format, in ConfigMaps.
    if let Some(publisher) = cfg.bundle_publisher.clone() {
        let ca = ca.clone();
        tokio::spawn(sigil_k8sbundle::publisher::run(
            publisher,
            ROTATION_CHECK,
            move || ca.bundle(),
        ));
    }

    let listening = Listening {
        agent_api: agent_addr,
        health: health_addr,
        bundle_endpoint,
    };
    tracing::info!(
        trust_domain = cfg.trust_domain.as_str(),
        agent_api = %listening.agent_api,
        admin_socket = %cfg.socket_path.display(),
        health = ?listening.health,
        bundle_endpoint = ?listening.bundle_endpoint,
        metrics = ?metrics_addr,
        "server listening"
    );

    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
        }
        tracing::info!("shutting down");
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let node = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(sigil_proto::agent::node_server::NodeServer::new(node_api))
        .serve_with_incoming_shutdown(
            crate::tls::incoming(tcp, acceptor, crate::tls::MAX_CONCURRENT_HANDSHAKES),
            stop(stop_rx.clone()),
        );
    let admin = tonic::transport::Server::builder()
        .add_service(sigil_proto::admin::admin_server::AdminServer::new(
            AdminApi {
                shared: shared.clone(),
            },
        ))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(admin_listener),
            stop(stop_rx),
        );
    let node = tokio::spawn(node);
    let admin = tokio::spawn(admin);
    shutdown.await;
    let _ = stop_tx.send(true);
    // Streams (agent sync) never end on their own; give in-flight unary calls a moment.
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        let _ = node.await;
        let _ = admin.await;
    })
    .await;
    let _ = std::fs::remove_file(&cfg.socket_path);
    Ok(())
}
