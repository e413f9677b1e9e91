//! Several servers on one PostgreSQL (SPIRE's HA model, seed 002's `DataStore "sql"` with
//! `database_type = "postgres"`): entries, agents, join tokens and the bundle are shared; each
//! server keeps its own CA key and every server's root is in every server's bundle; what one
//! server changes reaches agents synced to another by push; an agent may move between servers.

use crate::{Env, TD, now, pem_certs};
use sigil_e2e::harness::{Agent, Server, TestDir, wait_for_svid, wait_until};
use sigil_pgtest::PgServer;
use std::time::{Duration, Instant};

/// A server config file with seed 002's datastore block pointing at `pg`'s `spire` database.
pub fn postgres_config(pg: &PgServer) -> String {
    format!(
        "plugins {{\n  DataStore \"sql\" {{\n    plugin_data {{\n      database_type = \"postgres\"\n      connection_string = \"{}\"\n      max_open_conns = 20\n      conn_max_lifetime = \"1h\"\n    }}\n  }}\n}}\n",
        pg.connection_string("spire")
    )
}

fn roots(server: &Server) -> usize {
    pem_certs(&server.bundle_pem()).len()
}

fn agents(server: &Server) -> Vec<serde_json::Value> {
    server
        .cli(&["agent", "list", "-output", "json"])
        .ok()
        .json()["agents"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_on_one_postgres_share_everything_and_push_changes() {
    let dir = TestDir::new("ha");
    let pg = PgServer::start();
    pg.create_database("spire");
    // Agent SVIDs of 20 s: the agent renews (at half-life) with whichever server it is on.
    let cfg = format!(
        "server {{\n  agent_ttl = \"20s\"\n}}\n{}",
        postgres_config(&pg)
    );
    let a = Server::start_with_config_file(&dir.path().join("a"), TD, &cfg);
    let b = Server::start_with_config_file(&dir.path().join("b"), TD, &cfg);

    // Each server has its own CA; both roots are in both bundles.
    wait_until(
        "both servers' bundles to hold both CAs",
        Duration::from_secs(20),
        || (roots(&a) == 2 && roots(&b) == 2).then_some(()),
    );
    assert_eq!(
        pem_certs(&a.bundle_pem())
            .iter()
            .collect::<std::collections::BTreeSet<_>>(),
        pem_certs(&b.bundle_pem())
            .iter()
            .collect::<std::collections::BTreeSet<_>>(),
    );

    // A join token minted on A attests an agent through B, once.
    let node_id = a.id("/node");
    let token = a.token(Some(&node_id));
    let mut agent = Agent::start(dir.path(), "agent", &b, &token);
    let listed = agents(&a);
    assert_eq!(listed.len(), 1, "A sees the agent B attested: {listed:?}");
    let agent_id = listed[0]["id"]
        .as_str()
        .or(listed[0]["spiffe_id"].as_str())
        .unwrap()
        .to_string();
    let mut reuse = Agent::spawn(dir.path(), "reuse", &a, &token, &[]);
    let status = reuse.proc().wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| !s.success()),
        "a join token consumed through B was accepted by A ({status:?}): {}",
        reuse.log()
    );

    // An entry created on A reaches the agent synced to B, by push.
    let id = a.id("/ha/workload");
    let created = Instant::now();
    a.create_entry(&node_id, &id, &[&Env::my_uid()], &[]);
    let svid = wait_for_svid(&agent.socket, &id).await;
    eprintln!(
        "entry created on A -> SVID served by an agent on B: {:?}",
        created.elapsed()
    );
    assert_eq!(
        svid.bundle.len(),
        2,
        "the workload's bundle has both servers' roots"
    );
    sigil_spiffe::x509::verify_svid_chain(&svid.chain, &svid.bundle, now())
        .expect("the SVID chains to the shared bundle");
    // An update on B reaches it too (the entry's DNS name).
    let entry_id = a
        .cli(&["entry", "show", "-spiffeID", &id, "-output", "json"])
        .ok()
        .json()["entries"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    b.cli(&[
        "entry",
        "update",
        "-entryID",
        &entry_id,
        "-parentID",
        &node_id,
        "-spiffeID",
        &id,
        "-selector",
        &Env::my_uid(),
        "-dns",
        "ha.example",
    ])
    .ok();
    wait_until(
        "the update made on B to reach the workload",
        Duration::from_secs(20),
        || {
            let rt = tokio::runtime::Handle::current();
            let s = tokio::task::block_in_place(|| {
                rt.block_on(sigil_e2e::workload::fetch_one(&agent.socket, Some(&id)))
            })
            .ok()?;
            let (_, cert) = x509_parser::parse_x509_certificate(&s.chain[0]).ok()?;
            let dns = cert
                .subject_alternative_name()
                .ok()??
                .value
                .general_names
                .iter()
                .any(|n| {
                    matches!(
                        n,
                        x509_parser::extensions::GeneralName::DNSName("ha.example")
                    )
                });
            dns.then_some(())
        },
    );

    // The agent moves to A (its SVID was signed by B's CA): A trusts it and serves it.
    agent.proc().terminate();
    let mut moved = Agent::spawn(dir.path(), "agent", &a, &token, &[]);
    moved.wait_ready();
    let again = wait_for_svid(&moved.socket, &id).await;
    assert_eq!(again.spiffe_id, id);
    // It renews its agent SVID with A (B signed the one it has): the shared record's serial
    // changes.
    let serial = |server: &Server| -> String {
        agents(server)
            .into_iter()
            .find(|x| x["id"] == agent_id.as_str())
            .map(|x| x["x509svid_serial_number"].to_string())
            .unwrap_or_default()
    };
    let before = serial(&a);
    wait_until(
        "the moved agent to renew its SVID with A",
        Duration::from_secs(40),
        || {
            let now = serial(&a);
            (now != before && !now.is_empty()).then_some(now)
        },
    );
    assert_eq!(
        serial(&b),
        serial(&a),
        "both servers see the renewed serial"
    );

    // Banned through B: A ends the agent's sync stream and refuses it.
    b.cli(&["agent", "ban", "-spiffeID", &agent_id]).ok();
    wait_until(
        "the agent to be refused by A",
        Duration::from_secs(30),
        || moved.log().contains("banned").then_some(()),
    );
    let banned = agents(&a)
        .into_iter()
        .find(|x| x.to_string().contains(&agent_id))
        .expect("agent still listed");
    assert_eq!(banned["banned"], serde_json::Value::Bool(true), "{banned}");
    drop(moved);
    drop(reuse);
}

/// PostgreSQL restarted under two servers and an agent: during the outage the admin API answers
/// `Unavailable` (never a panic, the servers stay up); afterwards both reconnect by themselves
/// and a change made on one reaches the other's agent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_is_survived_by_every_server() {
    let dir = TestDir::new("ha-pg-restart");
    let pg = PgServer::start();
    pg.create_database("spire");
    let cfg = postgres_config(&pg);
    let mut a = Server::start_with_config_file(&dir.path().join("a"), TD, &cfg);
    let mut b = Server::start_with_config_file(&dir.path().join("b"), TD, &cfg);
    let node_id = a.id("/node");
    let token = a.token(Some(&node_id));
    let agent = Agent::start(dir.path(), "agent", &b, &token);

    pg.stop();
    let out = a.cli(&[
        "entry",
        "create",
        "-parentID",
        &node_id,
        "-spiffeID",
        &a.id("/during"),
        "-selector",
        "unix:uid:4242",
    ]);
    assert!(!out.success(), "a write during the outage succeeded: {out}");
    let text = out.to_string();
    assert!(
        text.contains("Unavailable") || text.contains("unavailable"),
        "{text}"
    );
    a.proc().assert_running();
    b.proc().assert_running();

    pg.start_again();
    pg.wait_ready(Duration::from_secs(30));
    let id = a.id("/ha/after-restart");
    wait_until("A to accept writes again", Duration::from_secs(30), || {
        a.cli(&[
            "entry",
            "create",
            "-parentID",
            &node_id,
            "-spiffeID",
            &id,
            "-selector",
            &Env::my_uid(),
        ])
        .success()
        .then_some(())
    });
    wait_for_svid(&agent.socket, &id).await;
    assert_eq!(
        pg.psql(
            "spire",
            "SELECT count(*) FROM entries WHERE spiffe_id LIKE '%/during'"
        ),
        "0"
    );
    a.proc().assert_running();
    b.proc().assert_running();
}
