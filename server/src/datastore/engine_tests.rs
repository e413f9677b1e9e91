//! The datastore on both engines: the same behaviours on SQLite and on a real PostgreSQL, and
//! what only several servers on PostgreSQL do (following each other, racing on join tokens,
//! migrating together, surviving a database restart).

use super::*;
use sigil_pgtest::PgServer;
use std::time::Duration;

fn entry(spiffe: &str, parent: &str, sel: &str) -> Entry {
    Entry {
        id: String::new(),
        spiffe_id: spiffe.parse().unwrap(),
        parent_id: parent.parse().unwrap(),
        selectors: vec![sel.parse::<Selector>().unwrap()],
        x509_svid_ttl: 0,
        jwt_svid_ttl: 0,
        dns_names: vec!["a.example".into()],
        federates_with: vec![
            "spiffe://other"
                .parse::<SpiffeId>()
                .map(|i| i.trust_domain())
                .unwrap(),
        ],
        admin: false,
        downstream: true,
        hint: "h".into(),
        created_at: 0,
        revision: 0,
        store_svid: false,
        managed_by: String::new(),
    }
}

fn agent_record(id: &str) -> AgentRecord {
    AgentRecord {
        spiffe_id: id.parse().unwrap(),
        attestation_type: "join_token".into(),
        serial: "01".into(),
        new_serial: String::new(),
        expires_at: i64::from(u32::MAX) + 10,
        banned: false,
        created_at: 1,
        last_seen: 1,
        selectors: vec!["k8s_psat:cluster:c".parse().unwrap()],
        can_reattest: false,
    }
}

fn pg_config(pg: &PgServer, db: &str) -> Config {
    pg.create_database(db);
    Config::Postgres {
        options: Box::new(parse_connection_string(&pg.connection_string(db)).unwrap()),
        pool: PoolSettings::default(),
        disable_migration: false,
    }
}

async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Everything a single server relies on, run against one engine.
async fn behaviours(ds: &DataStore) {
    let agent: SpiffeId = "spiffe://td/spire/agent/join_token/t".parse().unwrap();
    // A batch with one refused entry: the others are created (savepoints on PostgreSQL, where
    // a failed statement would otherwise abort the whole transaction).
    let res = ds
        .create_entries(vec![
            entry("spiffe://td/w1", agent.as_str(), "unix:uid:1"),
            entry("spiffe://td/w1", agent.as_str(), "unix:uid:1"),
            entry("spiffe://td/w2", agent.as_str(), "unix:uid:2"),
        ])
        .await;
    assert!(res[0].is_ok() && res[2].is_ok(), "{res:?}");
    assert!(matches!(res[1], Err(StoreError::AlreadyExists)), "{res:?}");
    let w1 = res[0].as_ref().unwrap().clone();
    assert_eq!(ds.authorized_entries(&agent).len(), 2);
    // Round trip of every column.
    let reread = ds.load_index().await.unwrap();
    let stored = reread.by_id.get(&w1.id).unwrap();
    assert_eq!(**stored, w1);
    // Update (and a refused one: similar to w2).
    let mut changed = w1.clone();
    changed.selectors = vec!["unix:uid:9".parse().unwrap()];
    let mut clash = w1.clone();
    clash.selectors = vec!["unix:uid:2".parse().unwrap()];
    clash.spiffe_id = "spiffe://td/w2".parse().unwrap();
    let res = ds.update_entries(vec![changed, clash]).await;
    assert_eq!(res[0].as_ref().unwrap().revision, 1);
    assert!(matches!(res[1], Err(StoreError::AlreadyExists)), "{res:?}");
    let res = ds
        .delete_entries(&[w1.id.clone(), "no-such-id".into()])
        .await;
    assert!(res[0].is_ok());
    assert!(matches!(res[1], Err(StoreError::NotFound(_))));
    assert_eq!(ds.count_entries(), 1);

    // Join tokens: single use, expiry honoured.
    ds.create_join_token("tok", i64::MAX).await.unwrap();
    ds.create_join_token("old", 5).await.unwrap();
    assert!(ds.consume_join_token("tok", 10).await.unwrap());
    assert!(!ds.consume_join_token("tok", 10).await.unwrap());
    assert!(!ds.consume_join_token("old", 10).await.unwrap());

    // Agents: attestation, renewal serials, ban (sticky), eviction.
    let rec = agent_record(agent.as_str());
    assert_eq!(
        ds.record_attestation(&rec).await.unwrap(),
        Attestation::Recorded
    );
    let got = ds.get_agent(&agent).await.unwrap().unwrap();
    assert_eq!(got.expires_at, rec.expires_at);
    assert_eq!(got.selectors, rec.selectors);
    let mut renewed = got.clone();
    renewed.new_serial = "02".into();
    ds.upsert_agent(&renewed).await.unwrap();
    assert!(ds.activate_agent_serial(&agent, "02").await.unwrap());
    assert!(!ds.activate_agent_serial(&agent, "02").await.unwrap());
    assert_eq!(ds.get_agent(&agent).await.unwrap().unwrap().serial, "02");
    ds.touch_agent(&agent, 77).await.unwrap();
    assert!(ds.ban_agent(&agent).await.unwrap());
    assert_eq!(
        ds.record_attestation(&rec).await.unwrap(),
        Attestation::Banned
    );
    assert_eq!(ds.list_agents().await.unwrap().len(), 1);
    assert!(ds.evict_agent(&agent).await.unwrap());
    assert!(ds.get_agent(&agent).await.unwrap().is_none());

    // Federation relationships and bundles.
    let rel = sigil_federation::Relationship {
        trust_domain: TrustDomain::from_id_or_name("other").unwrap(),
        url: sigil_federation::EndpointUrl::parse("https://other.example:8443").unwrap(),
        profile: sigil_federation::Profile::HttpsWeb,
    };
    ds.put_federation_relationship(&rel, "ctl", true)
        .await
        .unwrap();
    assert!(matches!(
        ds.put_federation_relationship(&rel, "ctl", true).await,
        Err(StoreError::AlreadyExists)
    ));
    let listed = ds.list_federation_relationships().await.unwrap();
    assert_eq!(listed, vec![(rel.clone(), "ctl".to_string())]);
    assert!(
        ds.delete_federation_relationship(&rel.trust_domain)
            .await
            .unwrap()
    );
    assert!(matches!(
        ds.put_federation_relationship(&rel, "", false).await,
        Err(StoreError::NotFound(_))
    ));
    let mut b = Bundle::new(rel.trust_domain.clone());
    b.sequence_number = Some(3);
    ds.set_federated_bundle(&b).await.unwrap();
    assert_eq!(ds.list_federated_bundles().await.unwrap().len(), 1);
    assert!(ds.delete_federated_bundle(&rel.trust_domain).await.unwrap());

    // Server bundles: the shared sequence only grows, and never falls below a server's own.
    let td = TrustDomain::from_id_or_name("td").unwrap();
    let mut own = Bundle::new(td.clone());
    own.sequence_number = Some(40);
    own.tainted_jwt_authorities.insert("kid1".into());
    let s1 = ds.publish_server_bundle("one", &own).await.unwrap();
    assert_eq!(s1, 40);
    own.sequence_number = Some(2);
    let s2 = ds.publish_server_bundle("two", &own).await.unwrap();
    assert_eq!(s2, 41);
    let (peers, seq) = ds.server_bundles("one", &td).await.unwrap();
    assert_eq!(seq, 41);
    assert_eq!(peers.len(), 1);
    assert!(peers[0].tainted_jwt_authorities.contains("kid1"));
    ds.ping().await.unwrap();
}

#[tokio::test]
async fn sqlite_and_postgres_behave_alike() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = DataStore::open(&dir.path().join("ds.sqlite3"))
        .await
        .unwrap();
    assert_eq!(sqlite.engine(), "sqlite3");
    behaviours(&sqlite).await;
    let pg = PgServer::start();
    let ds = DataStore::connect(&pg_config(&pg, "alike")).await.unwrap();
    assert_eq!(ds.engine(), "postgres");
    behaviours(&ds).await;
}

/// Two servers on one database: what one writes reaches the other's index and its agents'
/// sync streams by push; bans end the other's streams; relationship and authority changes are
/// signalled.
#[tokio::test]
async fn servers_follow_each_other() {
    let pg = PgServer::start();
    let cfg = pg_config(&pg, "follow");
    let a = DataStore::connect(&cfg).await.unwrap();
    let b = DataStore::connect(&cfg).await.unwrap();
    let agent: SpiffeId = "spiffe://td/spire/agent/join_token/x".parse().unwrap();
    b.record_attestation(&agent_record(agent.as_str()))
        .await
        .unwrap();
    let (sub, initial) = b.subscribe_sync(&agent);
    assert!(initial.is_empty());

    let created = a
        .create_entries(vec![entry("spiffe://td/w", agent.as_str(), "unix:uid:1")])
        .await
        .remove(0)
        .unwrap();
    wait_for("server B to learn the entry server A created", async || {
        b.get_entry(&created.id).is_some()
    })
    .await;
    assert_eq!(b.authorized_entries(&agent).len(), 1);
    let pending = sub.take();
    assert!(
        pending.upserts.contains_key(&created.id),
        "the stream on B was told: {pending:?}"
    );

    let mut upd = created.clone();
    upd.hint = "changed".into();
    a.update_entries(vec![upd]).await.remove(0).unwrap();
    wait_for("the update", async || {
        b.get_entry(&created.id)
            .is_some_and(|e| e.hint == "changed")
    })
    .await;
    a.delete_entries(std::slice::from_ref(&created.id)).await;
    wait_for("the delete", async || b.get_entry(&created.id).is_none()).await;

    let mut rels = b.subscribe_relationships();
    let rel = sigil_federation::Relationship {
        trust_domain: TrustDomain::from_id_or_name("other").unwrap(),
        url: sigil_federation::EndpointUrl::parse("https://other.example").unwrap(),
        profile: sigil_federation::Profile::HttpsWeb,
    };
    a.put_federation_relationship(&rel, "", true).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), rels.changed())
        .await
        .expect("B hears of the relationship")
        .unwrap();
    let mut peers = b.subscribe_peers();
    a.publish_server_bundle(
        "a",
        &Bundle::new(TrustDomain::from_id_or_name("td").unwrap()),
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(20), peers.changed())
        .await
        .expect("B hears of A's authorities")
        .unwrap();

    // Banned through A: B ends the agent's stream and refuses its re-attestation.
    a.ban_agent(&agent).await.unwrap();
    wait_for("B to close the banned agent's stream", async || {
        sub.take().closed.is_some()
    })
    .await;
    assert_eq!(
        b.record_attestation(&agent_record(agent.as_str()))
            .await
            .unwrap(),
        Attestation::Banned
    );
}

/// Two servers racing with the same join tokens: each token is consumed exactly once.
#[tokio::test]
async fn join_tokens_are_single_use_across_servers() {
    let pg = PgServer::start();
    let cfg = pg_config(&pg, "tokens");
    let a = DataStore::connect(&cfg).await.unwrap();
    let b = DataStore::connect(&cfg).await.unwrap();
    for i in 0..50 {
        a.create_join_token(&format!("t{i}"), i64::MAX)
            .await
            .unwrap();
    }
    let mut races = Vec::new();
    for i in 0..50 {
        let (a, b) = (a.clone(), b.clone());
        races.push(tokio::spawn(async move {
            let t = format!("t{i}");
            let (x, y) = tokio::join!(a.consume_join_token(&t, 0), b.consume_join_token(&t, 0));
            u32::from(x.unwrap()) + u32::from(y.unwrap())
        }));
    }
    for r in races {
        assert_eq!(r.await.unwrap(), 1, "exactly one server wins each token");
    }
}

/// Servers starting together on an empty database: one migrates, the others wait for it.
#[tokio::test]
async fn servers_starting_together_migrate_once() {
    let pg = PgServer::start();
    let cfg = pg_config(&pg, "together");
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let cfg = cfg.clone();
            tokio::spawn(async move { DataStore::connect(&cfg).await.map(|_| ()) })
        })
        .collect();
    for s in starts {
        s.await.unwrap().expect("every server starts");
    }
    let versions = pg.psql(
        "together",
        "SELECT count(*) FROM _sqlx_migrations WHERE success",
    );
    assert_eq!(versions, "6");
    // `disable_migration`: a current schema is accepted; a missing migration is named.
    let Config::Postgres { options, pool, .. } = cfg.clone() else {
        unreachable!()
    };
    let no_migrate = Config::Postgres {
        options,
        pool,
        disable_migration: true,
    };
    DataStore::connect(&no_migrate).await.unwrap();
    pg.psql("together", "DELETE FROM _sqlx_migrations WHERE version = 6");
    let e = DataStore::connect(&no_migrate)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("migration 6"), "{e}");
}

/// PostgreSQL restarted under a server: calls during the outage fail as unavailable (never a
/// panic, never a half-applied write); afterwards the server reconnects by itself and its
/// follower catches up with what the other server wrote.
#[tokio::test]
async fn database_restart_is_survived() {
    let pg = PgServer::start();
    let cfg = pg_config(&pg, "restart");
    let a = DataStore::connect(&cfg).await.unwrap();
    let b = DataStore::connect(&cfg).await.unwrap();
    let agent = "spiffe://td/spire/agent/join_token/r";
    pg.stop();
    let res = a
        .create_entries(vec![entry("spiffe://td/during", agent, "unix:uid:1")])
        .await;
    let err = res[0].as_ref().unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    let err = a.ping().await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    let err = a.consume_join_token("x", 0).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert_eq!(a.count_entries(), 0, "nothing half-applied");
    pg.start_again();
    pg.wait_ready(Duration::from_secs(30));
    let mut created = None;
    wait_for("server A to write again", async || {
        match a
            .create_entries(vec![entry("spiffe://td/after", agent, "unix:uid:2")])
            .await
            .remove(0)
        {
            Ok(e) => {
                created = Some(e);
                true
            }
            Err(e) => {
                assert!(e.is_unavailable(), "{e:?}");
                false
            }
        }
    })
    .await;
    let id = created.unwrap().id;
    wait_for("server B to follow again", async || {
        b.get_entry(&id).is_some()
    })
    .await;
    assert_eq!(pg.psql("restart", "SELECT count(*) FROM entries"), "1");
}

/// PostgreSQL restarted while writers keep writing: every failure during the outage is
/// `Unavailable`, nothing acknowledged is lost, and writes succeed again by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_under_load_loses_nothing_acknowledged() {
    use std::sync::atomic::AtomicBool;
    let pg = PgServer::start();
    let cfg = pg_config(&pg, "load");
    let ds = DataStore::connect(&cfg).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (ds, stop) = (ds.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let (mut acked, mut refused) = (Vec::new(), 0u32);
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let e = entry(
                    &format!("spiffe://td/load/{w}/{i}"),
                    "spiffe://td/n",
                    "unix:uid:1",
                );
                match ds.create_entries(vec![e]).await.remove(0) {
                    Ok(e) => acked.push(e.id),
                    Err(e) => {
                        assert!(e.is_unavailable(), "not Unavailable: {e:?}");
                        refused += 1;
                    }
                }
            }
            (acked, refused)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pg2 = tokio::task::spawn_blocking(move || {
        pg.stop();
        // Longer than the pool's 5 s acquire timeout: a shorter outage only delays writes.
        std::thread::sleep(Duration::from_secs(7));
        pg.start_again();
        pg.wait_ready(Duration::from_secs(30));
        pg
    })
    .await
    .unwrap();
    // Let writes resume for a while, then stop.
    let resumed = ds.count_entries();
    wait_for("writes to resume after the restart", async || {
        ds.count_entries() > resumed + 20
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let (mut acked, mut refused) = (Vec::new(), 0);
    for w in writers {
        let (a, r) = w.await.unwrap();
        acked.extend(a);
        refused += r;
    }
    assert!(
        refused > 0,
        "no write fell in the outage: the test proved nothing"
    );
    let stored: i64 = pg2
        .psql("load", "SELECT count(*) FROM entries")
        .parse()
        .unwrap();
    // A commit whose answer the outage cut off may be stored without having been
    // acknowledged; never the other way round.
    assert!(
        stored as usize >= acked.len(),
        "{stored} stored < {} acknowledged",
        acked.len()
    );
    let fresh = DataStore::connect(&cfg).await.unwrap();
    for id in &acked {
        assert!(
            fresh.get_entry(id).is_some(),
            "acknowledged entry {id} lost"
        );
    }
}

/// A follower behind the pruned part of the change log reloads everything.
#[tokio::test]
async fn follower_behind_the_pruned_log_reloads() {
    let pg = PgServer::start();
    let cfg = pg_config(&pg, "prune");
    let a = DataStore::connect(&cfg).await.unwrap();
    let b = DataStore::connect(&cfg).await.unwrap();
    let e = a
        .create_entries(vec![entry("spiffe://td/p", "spiffe://td/x", "unix:uid:1")])
        .await
        .remove(0)
        .unwrap();
    wait_for("B to follow", async || b.get_entry(&e.id).is_some()).await;
    // B stops hearing (as if disconnected), A deletes and prunes the log.
    b.applied.store(i64::MAX / 2, Ordering::SeqCst);
    a.delete_entries(std::slice::from_ref(&e.id)).await;
    assert!(a.prune_changes(crate::now_unix() + 10).await.unwrap() > 0);
    b.applied.store(1, Ordering::SeqCst);
    b.catch_up().await.unwrap();
    assert!(
        b.get_entry(&e.id).is_none(),
        "B reloaded and saw the delete"
    );
}

/// TLS to the database: `verify-full` against the database's CA works; against another CA
/// it is refused with an error naming the connection.
#[tokio::test]
async fn tls_to_the_database_is_verified() {
    let pg = PgServer::start();
    pg.create_database("tls");
    let good = format!(
        "host=localhost port={} dbname=tls user={} password={} sslmode=verify-full sslrootcert={}",
        pg.port(),
        sigil_pgtest::USER,
        sigil_pgtest::PASSWORD,
        pg.ca_pem.display()
    );
    let cfg = |s: &str| Config::Postgres {
        options: Box::new(parse_connection_string(s).unwrap()),
        pool: PoolSettings::default(),
        disable_migration: false,
    };
    DataStore::connect(&cfg(&good))
        .await
        .unwrap()
        .ping()
        .await
        .unwrap();
    let other = PgServer::start();
    let bad = good.replace(
        &pg.ca_pem.display().to_string(),
        &other.ca_pem.display().to_string(),
    );
    let e = DataStore::connect(&cfg(&bad)).await.unwrap_err();
    assert!(e.to_string().contains("connecting"), "{e}");
    let wrong_password = good.replace(sigil_pgtest::PASSWORD, "nope");
    let e = DataStore::connect(&cfg(&wrong_password)).await.unwrap_err();
    assert!(e.to_string().contains("password"), "{e}");
}
