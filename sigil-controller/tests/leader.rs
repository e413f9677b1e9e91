//! Leader election against the fake API server: one leader among two, hand-over on release
//! and on expiry, a foreign Lease left alone while it changes and taken once it stops; the
//! configuration from the manager options.

use std::time::Duration;

use kube::{Client, Config};
use serde_json::{Value, json};
use sigil_controller::config::ManagerOptions;
use sigil_controller::leader::{LeaderConfig, LeaderElector, LeaderError};
use sigil_fake_kube::FakeKube;
use tokio::time::Instant;

const NS: &str = "default";
const LEASE: &str = "98c9c988.spiffe.io";

fn client(kube: &FakeKube) -> Client {
    let mut config = Config::new(kube.url().parse().unwrap());
    config.auth_info.token = Some(kube.admin_token().to_string().into());
    Client::try_from(config).unwrap()
}

/// Short timings, in client-go's proportions.
fn config(identity: &str) -> LeaderConfig {
    LeaderConfig {
        namespace: NS.into(),
        name: LEASE.into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(1),
        renew_deadline: Duration::from_millis(700),
        retry_period: Duration::from_millis(200),
    }
}

fn spec(kube: &FakeKube) -> Value {
    kube.get("Lease", Some(NS), LEASE).expect("the lease")["spec"].clone()
}

/// Waits up to `within` for `f`.
async fn until(within: Duration, f: impl Fn() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

/// The two electors, the leader first, once one leads.
async fn elected(kube: &FakeKube) -> (LeaderElector, LeaderElector) {
    let a = LeaderElector::spawn(client(kube), config("a")).unwrap();
    let b = LeaderElector::spawn(client(kube), config("b")).unwrap();
    assert!(until(Duration::from_secs(5), || a.is_leader() || b.is_leader()).await);
    if a.is_leader() { (a, b) } else { (b, a) }
}

#[tokio::test]
async fn exactly_one_of_two_leads() {
    let kube = FakeKube::start().await.unwrap();
    let (leader, follower) = elected(&kube).await;
    // Over several lease durations, never both and never neither.
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        assert!(leader.is_leader() && !follower.is_leader());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lease = spec(&kube);
    let holder = lease["holderIdentity"].as_str().unwrap();
    assert!(holder == "a" || holder == "b", "{lease}");
    assert_eq!(lease["leaseDurationSeconds"], 1);
    assert_eq!(lease["leaseTransitions"], 0, "created, then only renewed");
    assert_ne!(lease["renewTime"], lease["acquireTime"], "renewed: {lease}");
}

#[tokio::test]
async fn release_hands_over_at_once() {
    let kube = FakeKube::start().await.unwrap();
    let (leader, follower) = elected(&kube).await;
    let mut flag = leader.subscribe();
    let released = Instant::now();
    leader.release().await.unwrap();
    assert!(!*flag.borrow_and_update(), "not leader once released");
    assert!(
        until(Duration::from_secs(1), || follower.is_leader()).await,
        "the follower takes over within a lease duration"
    );
    assert!(released.elapsed() < Duration::from_secs(1));
    let lease = spec(&kube);
    assert_eq!(lease["leaseTransitions"], 1, "{lease}");
    assert_eq!(lease["leaseDurationSeconds"], 1);

    // Releasing what one does not hold leaves the Lease alone.
    let holder = lease["holderIdentity"].clone();
    let other = LeaderElector::spawn(client(&kube), config("c")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!other.is_leader());
    other.release().await.unwrap();
    assert_eq!(spec(&kube)["holderIdentity"], holder);
}

#[tokio::test]
async fn a_dropped_leader_is_replaced_once_its_lease_expires() {
    let kube = FakeKube::start().await.unwrap();
    let (leader, follower) = elected(&kube).await;
    let mut flag = leader.subscribe();
    let dropped = Instant::now();
    drop(leader);
    // The flag goes false with the task, without waiting for the API.
    tokio::time::timeout(Duration::from_secs(1), flag.wait_for(|l| !l))
        .await
        .expect("the flag goes false")
        .ok();
    assert!(!*flag.borrow());
    assert!(until(Duration::from_secs(4), || follower.is_leader()).await);
    let waited = dropped.elapsed();
    // Its last renewal was at most a retry period before the drop, and the follower waits a
    // full lease duration after it saw that renewal.
    assert!(
        waited >= Duration::from_millis(750),
        "taken over after {waited:?}, before the lease expired"
    );
    assert_eq!(spec(&kube)["leaseTransitions"], 1);
}

#[tokio::test]
async fn a_foreign_lease_is_taken_only_once_it_stops_changing() {
    let kube = FakeKube::start().await.unwrap();
    let foreign = |renew: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": LEASE, "namespace": NS},
            "spec": {"holderIdentity": "upstream-pod_1234", "leaseDurationSeconds": 1,
                "acquireTime": "2020-01-01T00:00:00.000000Z", "renewTime": renew,
                "leaseTransitions": 4}})
    };
    // Written long ago, by another clock: only how long it stays unchanged here counts.
    kube.apply(foreign("2020-01-01T00:00:00.000000Z"));
    let elector = LeaderElector::spawn(client(&kube), config("sigil")).unwrap();
    // The holder keeps renewing for two lease durations: never taken.
    for i in 1..=10 {
        kube.apply(foreign(&format!("2020-01-01T00:00:{i:02}.000000Z")));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!elector.is_leader(), "took a lease renewed {i} times");
    }
    assert_eq!(spec(&kube)["holderIdentity"], "upstream-pod_1234");
    // It stops: taken once a lease duration passed without a change.
    let stopped = Instant::now();
    assert!(until(Duration::from_secs(4), || elector.is_leader()).await);
    // Its last change was at most one of our sleeps (200 ms) before `stopped`.
    assert!(stopped.elapsed() >= Duration::from_millis(750));
    let lease = spec(&kube);
    assert_eq!(lease["holderIdentity"], "sigil");
    assert_eq!(lease["leaseTransitions"], 5);
    assert_eq!(lease["leaseDurationSeconds"], 1);
    assert_ne!(lease["acquireTime"], "2020-01-01T00:00:00.000000Z");
}

#[tokio::test]
async fn the_lease_is_recreated_when_deleted() {
    let kube = FakeKube::start().await.unwrap();
    let elector = LeaderElector::spawn(client(&kube), config("sigil")).unwrap();
    assert!(until(Duration::from_secs(2), || elector.is_leader()).await);
    kube.delete("Lease", Some(NS), LEASE);
    // The next renewal finds none and creates it again: leadership is kept.
    assert!(
        until(Duration::from_secs(2), || kube
            .get("Lease", Some(NS), LEASE)
            .is_some())
        .await
    );
    assert!(elector.is_leader());
    assert_eq!(spec(&kube)["holderIdentity"], "sigil");
}

#[tokio::test]
async fn the_leader_steps_down_when_the_api_is_gone() {
    let kube = FakeKube::start().await.unwrap();
    let elector = LeaderElector::spawn(client(&kube), config("sigil")).unwrap();
    assert!(until(Duration::from_secs(2), || elector.is_leader()).await);
    kube.stop().await;
    let stopped = Instant::now();
    // Within the renew deadline after the last renewal, before the lease can expire.
    assert!(until(Duration::from_secs(1), || !elector.is_leader()).await);
    assert!(stopped.elapsed() < Duration::from_millis(900));
    kube.restart().await.unwrap();
    // The Lease still names it: it leads again.
    assert!(until(Duration::from_secs(3), || elector.is_leader()).await);
}

// === configuration ===

fn options(id: &str, namespace: &str) -> ManagerOptions {
    ManagerOptions {
        leader_election: true,
        leader_election_id: id.into(),
        leader_election_namespace: namespace.into(),
        ..ManagerOptions::default()
    }
}

#[test]
fn config_from_options() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("namespace");
    let cfg =
        LeaderConfig::from_options_in(&options(LEASE, "spire"), &missing, "pod_1".into()).unwrap();
    assert_eq!(
        cfg,
        LeaderConfig {
            namespace: "spire".into(),
            name: LEASE.into(),
            identity: "pod_1".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    );

    // The pod's namespace when none is configured; an error outside a pod.
    let err = LeaderConfig::from_options_in(&options(LEASE, ""), &missing, "pod_1".into());
    assert!(matches!(err, Err(LeaderError::NotInCluster)));
    assert_eq!(
        err.unwrap_err().to_string(),
        "unable to find leader election namespace: not running in-cluster, please specify LeaderElectionNamespace"
    );
    std::fs::write(&missing, "spire-system").unwrap();
    let cfg = LeaderConfig::from_options_in(&options(LEASE, ""), &missing, "pod_1".into());
    assert_eq!(cfg.unwrap().namespace, "spire-system");

    // No default name, as controller-runtime.
    let err = LeaderConfig::from_options_in(&options("", "spire"), &missing, "pod_1".into());
    assert_eq!(
        err.unwrap_err().to_string(),
        "LeaderElectionID must be configured"
    );

    let mut o = options(LEASE, "spire");
    o.leader_election_resource_lock = "configmapsleases".into();
    let err = LeaderConfig::from_options_in(&o, &missing, "pod_1".into());
    assert!(matches!(err, Err(LeaderError::ResourceLock(_))));
    o.leader_election_resource_lock = "leases".into();
    o.lease_duration = Some(Duration::from_secs(30));
    o.renew_deadline = Some(Duration::from_secs(20));
    o.retry_period = Some(Duration::from_secs(5));
    let cfg = LeaderConfig::from_options_in(&o, &missing, "pod_1".into()).unwrap();
    assert_eq!(cfg.lease_duration, Duration::from_secs(30));
    assert_eq!(cfg.renew_deadline, Duration::from_secs(20));
    assert_eq!(cfg.retry_period, Duration::from_secs(5));
}

#[test]
fn timing_is_checked_as_client_go() {
    let check = |lease: u64, renew: u64, retry: u64| {
        LeaderConfig {
            lease_duration: Duration::from_millis(lease),
            renew_deadline: Duration::from_millis(renew),
            retry_period: Duration::from_millis(retry),
            ..config("a")
        }
        .validate()
        .map_err(|e| e.to_string())
    };
    assert_eq!(check(15_000, 10_000, 2_000), Ok(()));
    assert_eq!(
        check(10_000, 10_000, 2_000).unwrap_err(),
        "leaseDuration must be greater than renewDeadline"
    );
    assert_eq!(
        check(15_000, 2_400, 2_000).unwrap_err(),
        "renewDeadline must be greater than retryPeriod*JitterFactor"
    );
    assert_eq!(
        check(900, 500, 100).unwrap_err(),
        "leaseDuration must be at least 1s"
    );
    let no_identity = LeaderConfig {
        identity: String::new(),
        ..config("a")
    };
    assert!(no_identity.validate().is_err());
}

#[test]
fn identity_is_hostname_and_uuid() {
    let id = sigil_controller::leader::identity("spire-server-0");
    let uuid = id.strip_prefix("spire-server-0_").unwrap();
    assert!(uuid::Uuid::parse_str(uuid).is_ok(), "{id}");
    assert_ne!(id, sigil_controller::leader::identity("spire-server-0"));
    assert!(!sigil_controller::leader::hostname().unwrap().is_empty());
}
