//! Leader election on a `coordination.k8s.io/v1` Lease, with the semantics of client-go's
//! `leaderelection` package as controller-runtime runs it for spire-controller-manager
//! (`leaderElection.leaderElect: true`). The Lease record is the same (`holderIdentity`,
//! `leaseDurationSeconds`, `acquireTime`, `renewTime`, `leaseTransitions`), so Sigil and
//! upstream replicas contending for one Lease during a migration still let only one write.
//!
//! How it decides, as client-go does:
//! - A Lease held by another identity is left alone until it has not changed for its
//!   `leaseDurationSeconds`, timed on this host's clock from when this replica saw it change
//!   (never by comparing the holder's `renewTime` with our clock, which may be skewed).
//! - Every write carries the `resourceVersion` that was read: of two replicas taking an
//!   expired Lease, one gets a 409 Conflict and tries again after the retry period.
//! - The leader renews every retry period and gives up (the flag goes false) when no renewal
//!   succeeded within the renew deadline; since the renew deadline is shorter than the lease
//!   duration, it stops before anyone else may take over.
//!
//! Differences, all on the safe side: the renew deadline counts from the start of the last
//! successful renewal (client-go: from the start of the failing round, one retry period
//! later), and a leader that sees another holder steps down at once instead of at its
//! deadline. After losing, the elector campaigns again (controller-runtime exits the process);
//! the caller watches the flag and stops writing while it is false.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::ManagerOptions;

/// client-go's (and controller-runtime's) defaults.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);
/// Where a pod finds its namespace (controller-runtime's default for the Lease's namespace).
pub const IN_CLUSTER_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
/// client-go's `JitterFactor`: a candidate waits between 1 and 2.2 retry periods, so
/// replicas started together do not keep colliding.
const JITTER_FACTOR: f64 = 1.2;
/// The only resource lock client-go still has.
const LEASES_LOCK: &str = "leases";

/// Which Lease, who we are, and the timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderConfig {
    pub namespace: String,
    pub name: String,
    /// `holderIdentity` while we lead; unique per process ([`identity`]).
    pub identity: String,
    /// How long others wait after the last change they saw before taking over. Written in
    /// whole seconds (`leaseDurationSeconds`), rounded up.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it steps down.
    pub renew_deadline: Duration,
    /// Between attempts to acquire or renew.
    pub retry_period: Duration,
}

/// Why leader election cannot start, or the lease could not be released.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// controller-runtime's message: it has no default Lease name (upstream's manifests use
    /// `98c9c988.spiffe.io`).
    #[error("LeaderElectionID must be configured")]
    NoLeaseName,
    #[error(
        "unable to find leader election namespace: not running in-cluster, please specify LeaderElectionNamespace"
    )]
    NotInCluster,
    #[error("unable to find leader election namespace: error reading namespace file: {0}")]
    NamespaceFile(#[source] std::io::Error),
    #[error("leader election resource lock {0:?} is not supported (only \"leases\")")]
    ResourceLock(String),
    #[error("unable to read the hostname for the leader election identity: {0}")]
    Hostname(#[source] std::io::Error),
    /// client-go's checks of the timing, with its messages.
    #[error("{0}")]
    Timing(&'static str),
    #[error("releasing lease {lease}: {source}")]
    Release {
        lease: String,
        #[source]
        source: kube::Error,
    },
    #[error("releasing lease {0}: no answer within the renew deadline")]
    ReleaseTimedOut(String),
}

/// A running elector. Dropping it stops campaigning without releasing the Lease (the flag goes
/// false; others take over once it expires); [`LeaderElector::release`] hands it over at once.
#[derive(Debug)]
#[must_use = "dropping the elector stops it"]
pub struct LeaderElector {
    leader: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), LeaderError>>,
}

/// The elector's task state.
struct Elector {
    api: Api<Lease>,
    cfg: LeaderConfig,
    flag: LeaderFlag,
    /// The record last read or written and when it was seen to change (client-go's
    /// `observedRecord`/`observedTime`): expiry is judged from this, on our own clock.
    observed: Option<(LeaseSpec, Instant)>,
}

/// The outcome of one attempt.
#[derive(Debug)]
enum Attempt {
    /// We hold the Lease (acquired or renewed).
    Held,
    /// Someone else holds it and it has not expired.
    HeldBy(String),
    /// Another writer won the race (409): read again at the next attempt.
    Lost,
    /// No answer within the time left.
    TimedOut,
}

/// The "I am the leader" flag. Dropping it (the task ending or being aborted) sets it false,
/// so a caller never keeps writing on a stale `true`.
struct LeaderFlag(watch::Sender<bool>);

// === impl LeaderConfig ===

impl LeaderConfig {
    /// controller-runtime's resource lock from the manager options: the Lease named
    /// `leaderElection.resourceName` in `resourceNamespace` (else the pod's namespace), with
    /// client-go's default timing, and a fresh [`identity`].
    pub fn from_options(opts: &ManagerOptions) -> Result<Self, LeaderError> {
        Self::from_options_in(
            opts,
            Path::new(IN_CLUSTER_NAMESPACE_FILE),
            identity(&hostname()?),
        )
    }

    /// [`from_options`](Self::from_options) with the namespace file and identity given.
    pub fn from_options_in(
        opts: &ManagerOptions,
        namespace_file: &Path,
        identity: String,
    ) -> Result<Self, LeaderError> {
        let lock = opts.leader_election_resource_lock.as_str();
        if !lock.is_empty() && lock != LEASES_LOCK {
            return Err(LeaderError::ResourceLock(lock.to_string()));
        }
        if opts.leader_election_id.is_empty() {
            return Err(LeaderError::NoLeaseName);
        }
        let namespace = if opts.leader_election_namespace.is_empty() {
            // controller-runtime uses the file's content as it is (no trimming).
            std::fs::read_to_string(namespace_file).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => LeaderError::NotInCluster,
                _ => LeaderError::NamespaceFile(e),
            })?
        } else {
            opts.leader_election_namespace.clone()
        };
        let cfg = LeaderConfig {
            namespace,
            name: opts.leader_election_id.clone(),
            identity,
            lease_duration: opts.lease_duration.unwrap_or(DEFAULT_LEASE_DURATION),
            renew_deadline: opts.renew_deadline.unwrap_or(DEFAULT_RENEW_DEADLINE),
            retry_period: opts.retry_period.unwrap_or(DEFAULT_RETRY_PERIOD),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// client-go's checks (`NewLeaderElector`), plus a lease of at least a second, since
    /// `leaseDurationSeconds` is whole seconds.
    pub fn validate(&self) -> Result<(), LeaderError> {
        let fail = |why| Err(LeaderError::Timing(why));
        if self.lease_duration <= self.renew_deadline {
            return fail("leaseDuration must be greater than renewDeadline");
        }
        if self.renew_deadline <= self.retry_period.mul_f64(JITTER_FACTOR) {
            return fail("renewDeadline must be greater than retryPeriod*JitterFactor");
        }
        if self.lease_duration < Duration::from_secs(1) {
            return fail("leaseDuration must be at least 1s");
        }
        if self.retry_period.is_zero() {
            return fail("retryPeriod must be greater than zero");
        }
        if self.identity.is_empty() {
            return fail("Lock identity is empty");
        }
        Ok(())
    }

    fn lease_seconds(&self) -> i32 {
        let secs =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }

    fn describe(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// client-go's identity: `<hostname>_<uuid>`, unique even for two processes in one pod.
pub fn identity(hostname: &str) -> String {
    format!("{hostname}_{}", uuid::Uuid::new_v4())
}

/// The hostname as Go's `os.Hostname` reads it on Linux (in a pod: the pod's name).
pub fn hostname() -> Result<String, LeaderError> {
    let name =
        std::fs::read_to_string("/proc/sys/kernel/hostname").map_err(LeaderError::Hostname)?;
    Ok(name.trim_end_matches('\n').to_string())
}

// === impl LeaderElector ===

impl LeaderElector {
    /// Starts campaigning for the Lease in the background (on the current Tokio runtime).
    pub fn spawn(client: kube::Client, cfg: LeaderConfig) -> Result<Self, LeaderError> {
        cfg.validate()?;
        let (tx, leader) = watch::channel(false);
        let (stop, stopped) = oneshot::channel();
        let elector = Elector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            flag: LeaderFlag(tx),
            observed: None,
        };
        Ok(LeaderElector {
            leader,
            stop: Some(stop),
            task: tokio::spawn(elector.run(stopped)),
        })
    }

    /// Whether this process leads now.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// The flag, to wait for changes (`changed()` fails once the elector is gone: not leader).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// Stops campaigning and, if this process holds the Lease, releases it as client-go's
    /// `ReleaseOnCancel` does (empty `holderIdentity`, `leaseDurationSeconds` 1), so another
    /// replica takes over at its next attempt. The flag is false before the release is
    /// written; stop writing first. Gives up after the renew deadline (the Lease then
    /// expires as usual).
    pub async fn release(mut self) -> Result<(), LeaderError> {
        if let Some(stop) = self.stop.take() {
            // The task ends only after this send or an abort: it cannot have gone yet.
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only our Drop aborts the task, and it has not run.
            Err(_) => Ok(()),
        }
    }
}

impl Drop for LeaderElector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === impl Elector ===

impl Elector {
    async fn run(mut self, stop: oneshot::Receiver<()>) -> Result<(), LeaderError> {
        let release = {
            let campaign = self.campaign();
            tokio::pin!(campaign);
            tokio::select! {
                never = &mut campaign => match never {},
                // Err: the elector was dropped (and this task is being aborted): no release.
                sent = stop => sent.is_ok(),
            }
        };
        self.flag.set(false);
        if !release {
            return Ok(());
        }
        let lease = self.cfg.describe();
        match tokio::time::timeout(self.cfg.renew_deadline, self.release()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(LeaderError::Release { lease, source }),
            Err(_) => Err(LeaderError::ReleaseTimedOut(lease)),
        }
    }

    /// Acquire, renew until lost, again, for ever.
    async fn campaign(&mut self) -> std::convert::Infallible {
        loop {
            let acquired = self.acquire().await;
            self.flag.set(true);
            tracing::info!(lease = %self.cfg.describe(), identity = %self.cfg.identity, "successfully acquired lease");
            self.renew(acquired).await;
            self.flag.set(false);
        }
    }

    /// Returns once we hold the Lease, with when the successful attempt started.
    async fn acquire(&mut self) -> Instant {
        loop {
            let started = Instant::now();
            match self.attempt(self.cfg.renew_deadline).await {
                Ok(Attempt::Held) => return started,
                Ok(Attempt::HeldBy(holder)) => {
                    tracing::debug!(lease = %self.cfg.describe(), %holder, "lease is held and has not yet expired");
                }
                Ok(outcome) => {
                    tracing::debug!(lease = %self.cfg.describe(), ?outcome, "lease not acquired");
                }
                Err(error) => {
                    tracing::warn!(lease = %self.cfg.describe(), %error, "error acquiring lease");
                }
            }
            let jitter = 1.0 + rand::random::<f64>() * JITTER_FACTOR;
            tokio::time::sleep(self.cfg.retry_period.mul_f64(jitter)).await;
        }
    }

    /// Renews every retry period; returns when leadership is lost. `renewed` is when the
    /// last successful write (here, the acquisition) started: others saw it no earlier, so
    /// their lease-duration timers run at least from then, and the renew deadline counts
    /// from then too.
    async fn renew(&mut self, mut renewed: Instant) {
        loop {
            tokio::time::sleep(self.cfg.retry_period).await;
            let deadline = renewed + self.cfg.renew_deadline;
            loop {
                let started = Instant::now();
                let budget = deadline.saturating_duration_since(started);
                match self.attempt(budget).await {
                    Ok(Attempt::Held) => {
                        renewed = started;
                        break;
                    }
                    Ok(Attempt::HeldBy(holder)) => {
                        tracing::info!(lease = %self.cfg.describe(), %holder, "lease taken over by another holder");
                        return;
                    }
                    Ok(outcome) => {
                        tracing::debug!(lease = %self.cfg.describe(), ?outcome, "lease not renewed")
                    }
                    Err(error) => {
                        tracing::warn!(lease = %self.cfg.describe(), %error, "error renewing lease")
                    }
                }
                if Instant::now() + self.cfg.retry_period >= deadline {
                    tracing::info!(lease = %self.cfg.describe(), "failed to renew lease: renew deadline passed");
                    return;
                }
                tokio::time::sleep(self.cfg.retry_period).await;
            }
        }
    }

    /// One `tryAcquireOrRenew`, given up after `budget`.
    async fn attempt(&mut self, budget: Duration) -> Result<Attempt, kube::Error> {
        tokio::time::timeout(budget, self.try_acquire_or_renew())
            .await
            .unwrap_or(Ok(Attempt::TimedOut))
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            let spec = LeaseSpec {
                // client-go counts from 0: a creation is no transition.
                lease_transitions: Some(0),
                ..self.record(&LeaseSpec::default(), false, now)
            };
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec),
            };
            return self.write(self.api.create(&PostParams::default(), &lease).await);
        };
        let old = lease.spec.take().unwrap_or_default();
        let seen = Instant::now();
        match &self.observed {
            Some((spec, _)) if *spec == old => {}
            _ => self.observed = Some((old.clone(), seen)),
        }
        let holder = old.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.cfg.identity;
        if !holder.is_empty() && !ours && self.observed_valid(seen) {
            return Ok(Attempt::HeldBy(holder));
        }
        lease.spec = Some(self.record(&old, ours, now));
        // `lease.metadata` keeps the resourceVersion we read: a write in between is a 409.
        self.write(
            self.api
                .replace(&self.cfg.name, &PostParams::default(), &lease)
                .await,
        )
    }

    /// The record we write: client-go keeps the acquire time and transition count while the
    /// holder stays the same, and counts a transition when it changes.
    fn record(&self, old: &LeaseSpec, ours: bool, now: Timestamp) -> LeaseSpec {
        let transitions = old.lease_transitions.unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.cfg.lease_seconds()),
            renew_time: Some(MicroTime(now)),
            acquire_time: if ours {
                old.acquire_time.clone()
            } else {
                Some(MicroTime(now))
            },
            lease_transitions: Some(if ours {
                transitions
            } else {
                transitions.saturating_add(1)
            }),
            ..old.clone()
        }
    }

    /// Whether the observed record is still within its `leaseDurationSeconds` at `now`.
    fn observed_valid(&self, now: Instant) -> bool {
        self.observed.as_ref().is_some_and(|(spec, at)| {
            let secs = spec.lease_duration_seconds.unwrap_or(0).max(0);
            *at + Duration::from_secs(secs.unsigned_abs().into()) > now
        })
    }

    /// The outcome of a create or replace: ours, or a 409 (someone else wrote first).
    fn write(&mut self, written: Result<Lease, kube::Error>) -> Result<Attempt, kube::Error> {
        match written {
            Ok(lease) => {
                self.observed = Some((lease.spec.unwrap_or_default(), Instant::now()));
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Lost),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up if we hold it (client-go's `release`): an empty holder and a
    /// one-second duration, the transition count kept.
    async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            return Ok(());
        };
        let old = lease.spec.take().unwrap_or_default();
        if old.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        let now = Some(MicroTime(Timestamp::now()));
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(String::new()),
            lease_duration_seconds: Some(1),
            acquire_time: now.clone(),
            renew_time: now,
            ..old
        });
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                tracing::info!(lease = %self.cfg.describe(), "released lease");
                Ok(())
            }
            // Someone wrote since we read: it is no longer ours to release.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

// === impl LeaderFlag ===

impl LeaderFlag {
    fn set(&self, leader: bool) {
        self.0
            .send_if_modified(|v| std::mem::replace(v, leader) != leader);
    }
}

impl Drop for LeaderFlag {
    fn drop(&mut self) {
        self.set(false);
    }
}
