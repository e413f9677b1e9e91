//! `sigil-controller -config FILE`: load spire-controller-manager's configuration, watch the
//! cluster, and keep the server's entries what the resources declare.
//!
//! The loop runs a pass after every change any watch reports (changes that arrive during a
//! pass make the next pass run straight after: none waits for `gcInterval`), and every
//! `gcInterval` lists the server's entries afresh as a safety net. Only the leader writes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sigil_gotemplate::Template;
use sigil_spiffe::TrustDomain;
use tokio::sync::watch;

use crate::admin::AdminApi;
use crate::cluster::{Cluster, Kind};
use crate::config::{ConfigError, ControllerManagerConfig, cluster_domain_from_cname};
use crate::health::{Metrics, ProbePaths, serve_health, serve_metrics};
use crate::leader::{LeaderConfig, LeaderElector};
use crate::plan::Scope;
use crate::reconcile::PassReport;
use crate::reconcile::{Reconciler, Settings};
use crate::render::{DEFAULT_PARENT_ID_TEMPLATE, RenderContext};

/// What the command line gives `run`.
#[derive(Clone, Debug, Default)]
pub struct RunArgs {
    /// The deprecated `-spire-api-socket` flag.
    pub spire_api_socket: Option<String>,
    /// `-kubeconfig`; else `$KUBECONFIG`, `~/.kube/config`, then the pod's service account.
    pub kubeconfig: Option<PathBuf>,
}

/// Why the controller could not start (after start, failures are retried, not fatal).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("unable to load the config file: {0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Invalid(String),
    #[error("Kubernetes client: {0}")]
    Kube(String),
    #[error("{0}")]
    Admin(#[from] crate::admin::AdminError),
    #[error("{0}")]
    Serve(String),
}

/// The settings from a loaded file, checked as upstream's `parseConfig` checks them.
pub fn settings(cfg: &ControllerManagerConfig) -> Result<Settings, RunError> {
    if cfg.trust_domain.is_empty() {
        return Err(RunError::Invalid(
            "trust domain is required configuration".into(),
        ));
    }
    if cfg.cluster_name.is_empty() {
        return Err(RunError::Invalid(
            "cluster name is required configuration".into(),
        ));
    }
    if cfg.static_manifest_path.is_some() {
        return Err(RunError::Invalid(
            "staticManifestPath is not supported by sigil-controller: it reconciles from the Kubernetes API".into(),
        ));
    }
    let trust_domain: TrustDomain = cfg.trust_domain.parse().map_err(|e| {
        RunError::Invalid(format!("invalid trust domain {:?}: {e}", cfg.trust_domain))
    })?;
    let parent = if cfg.parent_id_template.is_empty() {
        DEFAULT_PARENT_ID_TEMPLATE
    } else {
        &cfg.parent_id_template
    };
    let parent_id_template = Template::parse("customParentIDTemplate", parent)
        .map_err(|e| RunError::Invalid(format!("unable to parse parent ID template: {e}")))?;
    let prefix = add_dot(&cfg.entry_id_prefix);
    let cleanup = cfg.entry_id_prefix_cleanup.as_deref().map(add_dot);
    if let Some(c) = &cleanup
        && !prefix.is_empty()
        && *c == prefix
    {
        return Err(RunError::Invalid(
            "if entryIDPrefixCleanup is specified, it can not be the same value as entryIDPrefix"
                .into(),
        ));
    }
    // Entries this controller creates carry its cluster and class, so two controllers sharing
    // a server (two clusters, or two classes) never take each other's entries.
    let managed_by: String = format!("sigil-controller/{}/{}", cfg.cluster_name, cfg.class_name)
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(255)
        .collect();
    Ok(Settings {
        ctx: RenderContext {
            trust_domain,
            cluster_name: cfg.cluster_name.clone(),
            cluster_domain: cfg.cluster_domain.clone(),
            parent_id_template,
        },
        scope: Scope {
            class_name: cfg.class_name.clone(),
            watch_classless: cfg.watch_classless,
            ignore: cfg.ignore_namespaces()?,
        },
        reconcile: cfg.reconcile(),
        entry_id_prefix: prefix,
        entry_id_prefix_cleanup: cleanup,
        managed_by,
    })
}

/// upstream's `addDotSuffix`.
fn add_dot(s: &str) -> String {
    if s.is_empty() || s.ends_with('.') {
        s.to_string()
    } else {
        format!("{s}.")
    }
}

/// Runs with a loaded configuration until SIGTERM or SIGINT.
pub async fn run(loaded: crate::config::Loaded, args: RunArgs) -> Result<(), RunError> {
    for key in &loaded.not_used {
        tracing::warn!(key = %key, "configuration key not used by sigil-controller; ignored");
    }
    let mut cfg = loaded.config;
    if let Some(socket) = &args.spire_api_socket {
        if cfg.spire_server_socket_path.is_empty()
            || cfg.spire_server_socket_path == crate::config::DEFAULT_SPIRE_SERVER_SOCKET_PATH
        {
            tracing::warn!(
                "the spire-api-socket flag is deprecated; use spireServerSocketPath in the configuration file"
            );
            cfg.spire_server_socket_path = socket.clone();
        } else {
            tracing::warn!(
                "ignoring the deprecated spire-api-socket flag: the configuration file sets spireServerSocketPath"
            );
        }
    }
    if cfg.spire_server_socket_path.is_empty() {
        cfg.spire_server_socket_path = crate::config::DEFAULT_SPIRE_SERVER_SOCKET_PATH.into();
    }
    if cfg.cluster_domain.is_empty() {
        cfg.cluster_domain = detect_cluster_domain().await;
    }
    let options = cfg.manager_options()?;
    let settings = settings(&cfg)?;
    tracing::info!(
        cluster_name = %cfg.cluster_name,
        cluster_domain = %cfg.cluster_domain,
        trust_domain = %cfg.trust_domain,
        ignore_namespaces = ?cfg.ignore_namespaces,
        gc_interval = ?cfg.gc_interval,
        spire_server_socket_path = %cfg.spire_server_socket_path,
        class_name = %cfg.class_name,
        watch_classless = cfg.watch_classless,
        "config loaded"
    );

    let kube = kube_client(args.kubeconfig.as_deref()).await?;
    let admin = AdminApi::new(std::path::Path::new(&cfg.spire_server_socket_path))?;
    let metrics = Arc::new(Metrics::default());
    let (ready_tx, ready_rx) = watch::channel(false);
    let health = serve_health(
        &options.health_probe_bind_address,
        ProbePaths::from_options(&options),
        ready_rx,
    )
    .await
    .map_err(|e| RunError::Serve(format!("health probes: {e}")))?;
    if let Some(h) = &health {
        tracing::info!(address = %h.local_addr(), "serving health probes");
    }
    let metrics_server = serve_metrics(&options.metrics_bind_address, metrics.clone())
        .await
        .map_err(|e| RunError::Serve(format!("metrics: {e}")))?;
    if let Some(m) = &metrics_server {
        tracing::info!(address = %m.local_addr(), "serving metrics");
    }

    // Without leader election this replica always leads; the sender lives as long as the
    // loop, so the flag never reads as closed.
    let (always, always_rx) = watch::channel(true);
    let (elector, leader) = if options.leader_election {
        let cfg = LeaderConfig::from_options(&options)
            .map_err(|e| RunError::Invalid(format!("leader election: {e}")))?;
        let elector = LeaderElector::spawn(kube.clone(), cfg)
            .map_err(|e| RunError::Invalid(format!("leader election: {e}")))?;
        let rx = elector.subscribe();
        (Some(elector), rx)
    } else {
        (None, always_rx)
    };

    let cluster = Cluster::new();
    let mut kinds = vec![Kind::Pod, Kind::Namespace, Kind::Node, Kind::EndpointSlice];
    if settings.reconcile.cluster_spiffeids {
        kinds.push(Kind::ClusterSpiffeId);
    }
    if settings.reconcile.cluster_static_entries {
        kinds.push(Kind::ClusterStaticEntry);
    }
    if settings.reconcile.cluster_federated_trust_domains {
        kinds.push(Kind::ClusterFederatedTrustDomain);
    }
    let watches = cluster.spawn_watches(&kube, &kinds);
    let reconciler = Reconciler::new(settings, cluster.clone(), admin, kube);

    let result = tokio::select! {
        () = reconcile_loop(reconciler, cluster, kinds.len(), cfg.gc_interval, leader, ready_tx, metrics) => Ok(()),
        r = shutdown_signal() => r.map_err(|e| RunError::Serve(format!("signals: {e}"))),
    };
    for w in watches {
        w.abort();
    }
    // Hand the Lease over at once rather than make a standby wait for it to expire.
    if let Some(elector) = elector
        && let Err(error) = elector.release().await
    {
        tracing::warn!(%error, "releasing the leader election Lease");
    }
    drop(always);
    tracing::info!("stopped");
    result
}

async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}

/// The loop: wait for a change, a `gcInterval` tick or leadership, then pass.
async fn reconcile_loop(
    mut reconciler: Reconciler,
    cluster: Arc<Cluster>,
    watches: usize,
    gc_interval: Duration,
    mut leader: watch::Receiver<bool>,
    ready: watch::Sender<bool>,
    metrics: Arc<Metrics>,
) {
    cluster.wait_synced(watches).await;
    tracing::info!("caches synced");
    let mut gc = tokio::time::interval(gc_interval);
    gc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The copy of the server's entries is stale until listed: at start, and whenever this
    // replica (re)gains leadership, since another leader may have written meanwhile.
    let mut stale = true;
    let mut retry = Duration::from_millis(200);
    loop {
        if !*leader.borrow_and_update() {
            metrics.leader.set(0);
            stale = true;
            // A replica that is not the leader is still ready: it serves as a standby.
            let _ = ready.send(true);
            if leader.changed().await.is_err() {
                return;
            }
            continue;
        }
        metrics.leader.set(1);
        if stale {
            match reconciler.resync().await {
                Ok(calls) => {
                    metrics.admin_calls.add(calls as u64);
                    stale = false;
                    retry = Duration::from_millis(200);
                }
                Err(error) => {
                    tracing::warn!(%error, "listing the server's entries failed; retrying");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(Duration::from_secs(10));
                    continue;
                }
            }
        }
        let report = reconciler.pass().await;
        record(&metrics, &report);
        let _ = ready.send(true);
        if report.created + report.updated + report.deleted + report.failed > 0 {
            tracing::info!(
                declared = report.declared,
                created = report.created,
                updated = report.updated,
                deleted = report.deleted,
                failed = report.failed,
                duration_ms = report.duration.as_millis() as u64,
                "reconciled"
            );
        }
        if report.stale {
            stale = true;
        }
        tokio::select! {
            () = cluster.changed.notified() => {}
            _ = gc.tick() => stale = true,
            r = leader.changed() => if r.is_err() { return },
        }
    }
}

fn record(m: &Metrics, r: &PassReport) {
    m.reconcile_passes.inc();
    m.reconcile_duration.observe(r.duration);
    m.entries_created.add(r.created as u64);
    m.entries_updated.add(r.updated as u64);
    m.entries_deleted.add(r.deleted as u64);
    m.entry_failures.add(r.failed as u64);
    m.render_failures.add(r.render_failures as u64);
    m.admin_calls.add(r.admin_calls as u64);
    m.declared_entries.set(r.declared as u64);
    m.static_entry_failures.set(r.static_failures as u64);
}

/// The cluster domain from the CNAME of `kubernetes.default.svc` (upstream's
/// `autoDetectClusterDomain`); empty, with a log line, when it cannot be found.
async fn detect_cluster_domain() -> String {
    let lookup = tokio::task::spawn_blocking(|| {
        // getaddrinfo with AI_CANONNAME gives the CNAME target, as Go's LookupCNAME does.
        dns_lookup_canonical("kubernetes.default.svc")
    })
    .await
    .ok()
    .flatten();
    match lookup.as_deref().map(cluster_domain_from_cname) {
        Some(Ok(domain)) => domain,
        Some(Err(e)) => {
            tracing::warn!(error = e, "unable to autodetect cluster domain");
            String::new()
        }
        None => {
            tracing::warn!(
                "unable to autodetect cluster domain: kubernetes.default.svc does not resolve"
            );
            String::new()
        }
    }
}

/// The canonical name of `host` from the system resolver.
fn dns_lookup_canonical(host: &str) -> Option<String> {
    use std::net::ToSocketAddrs;
    // std does not expose AI_CANONNAME; resolving the search-path name is the next best: in a
    // pod, `kubernetes.default.svc` is found through the `<ns>.svc.<domain>` search list, and
    // `/etc/resolv.conf` names that domain.
    (host, 443).to_socket_addrs().ok()?.next()?;
    let conf = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    conf.lines()
        .filter_map(|l| l.strip_prefix("search "))
        .flat_map(str::split_whitespace)
        .find_map(|d| {
            d.strip_prefix("svc.")
                .map(|domain| format!("{host}.{domain}."))
        })
}

async fn kube_client(path: Option<&std::path::Path>) -> Result<kube::Client, RunError> {
    let config = match path {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| RunError::Kube(format!("reading {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| RunError::Kube(format!("reading {}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| RunError::Kube(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| RunError::Kube(e.to_string()))
}
