//! Server restarts and outages, and join-token reuse.

use crate::{Env, TD, now, pem_certs};
use serde_json::Value;
use sigil_e2e::harness::{Agent, READY_TIMEOUT, wait_for_svid};
use sigil_e2e::workload;
use spiffe::{JwtSvid, WorkloadApiClient};
use std::time::Duration;

fn entries(env: &Env) -> Vec<(String, String, String)> {
    let v = env
        .server
        .cli(&["entry", "show", "-output", "json"])
        .ok()
        .json();
    let mut out: Vec<_> = v["entries"]
        .as_array()
        .expect("entries array")
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("id"), s("spiffe_id"), s("parent_id"))
        })
        .collect();
    out.sort();
    out
}

/// A restarted server (same data dir) has the same CA, so the same bundle, and the same entries;
/// the agent reconnects to it and picks up entries registered after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_keeps_ca_and_entries() {
    let mut env = Env::start("restart");
    let id = env.register("/restart/before", &[&Env::my_uid()], &[]);
    let before_svid = wait_for_svid(&env.agent.socket, &id).await;
    let bundle_before = env.server.bundle_pem();
    let entries_before = entries(&env);
    assert!(entries_before.iter().any(|e| e.1 == id));

    env.server.restart();

    assert_eq!(
        env.server.bundle_pem(),
        bundle_before,
        "the CA/bundle changed across a restart"
    );
    assert_eq!(
        entries(&env),
        entries_before,
        "entries changed across a restart"
    );
    let count = env
        .server
        .cli(&["entry", "count", "-output", "json"])
        .ok()
        .json();
    assert_eq!(count["count"].as_u64(), Some(entries_before.len() as u64));

    // SVIDs issued before the restart still verify against the (unchanged) bundle.
    sigil_spiffe::x509::verify_svid_chain(&before_svid.chain, &pem_certs(&bundle_before), now())
        .expect("pre-restart SVID verifies against the post-restart bundle");

    // The agent is reconnected: an entry created now reaches the workload.
    let after = env.register("/restart/after", &[&Env::my_uid()], &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ids: Vec<String> = workload::fetch_x509(&env.agent.socket)
            .await
            .map(|v| v.into_iter().map(|s| s.spiffe_id).collect())
            .unwrap_or_default();
        if ids.contains(&after) && ids.contains(&id) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agent did not pick up an entry created after the server restart within 60s (has {ids:?})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    env.agent.proc().assert_running();
}

/// With the server down, the agent keeps serving the X509-SVIDs, bundles and JWT validation it
/// has cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_serves_cached_svids_while_server_is_down() {
    let mut env = Env::start("outage");
    let id = env.register("/outage/workload", &[&Env::my_uid()], &[]);
    let before = wait_for_svid(&env.agent.socket, &id).await;
    let c = WorkloadApiClient::connect_to(env.agent.endpoint())
        .await
        .expect("client");
    let token = c
        .fetch_jwt_svid(["outage-aud"], None)
        .await
        .expect("JWT-SVID")
        .token()
        .to_string();

    env.server.stop();
    // Let the agent notice (its sync stream breaks) before asking.
    tokio::time::sleep(Duration::from_secs(2)).await;

    for round in 0..3 {
        let svid = c.fetch_x509_svid().await.unwrap_or_else(|e| {
            panic!("round {round}: no X509-SVID while the server is down: {e}")
        });
        assert_eq!(svid.spiffe_id().to_string(), id);
        assert_eq!(
            svid.leaf().as_bytes(),
            before.chain[0].as_slice(),
            "the cached SVID should be served unchanged"
        );
        let bundles = c
            .fetch_x509_bundles()
            .await
            .expect("bundles while the server is down");
        assert!(
            bundles
                .get(&spiffe::TrustDomain::new(TD).expect("td"))
                .is_some()
        );
        let v = c
            .validate_jwt_token("outage-aud", &token)
            .await
            .expect("JWT validation with cached bundles while the server is down");
        assert_eq!(v.spiffe_id().to_string(), id);
        let jwt_bundles = c
            .fetch_jwt_bundles()
            .await
            .expect("JWT bundles while the server is down");
        JwtSvid::parse_and_validate(&token, &jwt_bundles, &["outage-aud"])
            .expect("offline validation");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    env.agent.proc().assert_running();
}

/// A join token attests one agent only: a second agent presenting it fails to attest (exits
/// non-zero or logs an error) and never serves SVIDs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_token_cannot_be_reused() {
    let dir = sigil_e2e::harness::TestDir::new("token-reuse");
    let server = sigil_e2e::harness::Server::start(dir.path(), TD);
    let node = server.id("/node");
    let token = server.token(Some(&node));
    let first = Agent::start(dir.path(), "first", &server, &token);
    let id = server.id("/token-reuse/workload");
    server.create_entry(&node, &id, &[&Env::my_uid()], &[]);
    wait_for_svid(&first.socket, &id).await;

    let mut second = Agent::spawn(dir.path(), "second", &server, &token, &[]);
    let status = second.proc().wait_exit(READY_TIMEOUT);
    match status {
        Some(s) => assert!(
            !s.success(),
            "second agent exited 0 after reusing a join token"
        ),
        None => {
            let log = second.log().to_lowercase();
            assert!(
                log.lines()
                    .any(|l| l.contains("error") && (l.contains("token") || l.contains("attest"))),
                "second agent neither exited nor logged an attestation error; log:\n{log}"
            );
            if let Ok(svids) = workload::fetch_x509(&second.socket).await {
                panic!(
                    "second agent serves SVIDs with a reused token: {:?}",
                    svids.iter().map(|s| &s.spiffe_id).collect::<Vec<_>>()
                );
            }
        }
    }

    // Exactly one agent is attested, and it is the first one.
    let agents: Value = server
        .cli(&["agent", "list", "-output", "json"])
        .ok()
        .json();
    let list = agents["agents"].as_array().expect("agents array");
    assert_eq!(list.len(), 1, "agents: {agents}");
    assert_eq!(
        list[0]["id"].as_str(),
        Some(format!("spiffe://{TD}/spire/agent/join_token/{token}").as_str())
    );
    // And the first agent is unaffected.
    workload::fetch_one(&first.socket, Some(&id))
        .await
        .expect("first agent still serves");
}

/// A real agent renews its SVID at half-life and reconnects with the new one; from then on the
/// SVID it replaced no longer authenticates anyone ("SVID does not match expected serial
/// number"), though it has not expired.
#[tokio::test(flavor = "multi_thread")]
async fn renewed_agent_svid_retires_the_old_one() {
    use sigil_e2e::harness::{Server, TestDir};
    let dir = TestDir::new("agent-svid-renewal");
    let server = Server::start_with_config(dir.path(), TD, "  agent_ttl = \"20s\"");
    let token = server.token(None);
    let agent = Agent::start(dir.path(), "agent", &server, &token);
    let svid_file = agent.data_dir.join("agent_svid.pem");
    let key_file = agent.data_dir.join("agent_key.pem");
    let read = || {
        (
            std::fs::read(&svid_file).unwrap_or_default(),
            std::fs::read(&key_file).unwrap_or_default(),
        )
    };
    let old = sigil_e2e::harness::wait_until("the first agent SVID", READY_TIMEOUT, || {
        let (svid, key) = read();
        (!svid.is_empty() && !key.is_empty()).then_some((svid, key))
    });
    // Half of 20 s, plus jitter and reconnection.
    let new =
        sigil_e2e::harness::wait_until("the renewed agent SVID", Duration::from_secs(40), || {
            let now = read();
            (now.0 != old.0 && !now.1.is_empty()).then_some(now)
        });
    let roots = pem_certs(&server.bundle_pem());

    // The agent presents the new SVID on its next connection; wait until the server has seen
    // it (the old one is refused from then on).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let status = sigil_e2e::node::jwt_call(server.addr, &roots, &old.0, &old.1).await;
        if let Some(s) = status.filter(|s| {
            s.code() == tonic::Code::PermissionDenied
                && s.message()
                    .contains("SVID does not match expected serial number")
        }) {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replaced agent SVID still authenticates; agent log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        refused.message().contains("spire/agent/join_token"),
        "{}",
        refused.message()
    );
    // The new one still authenticates: the call gets past authentication to the entry check.
    let status = sigil_e2e::node::jwt_call(server.addr, &roots, &new.0, &new.1)
        .await
        .expect("a refusal for the unknown entry");
    assert!(
        status.message().contains("not authorized"),
        "{}",
        status.message()
    );
    drop(agent);
}

/// A client that dials the Workload API the moment its socket appears is attested: the agent
/// binds under a staging name, attaches its kernel attestation to that socket, and only then
/// moves it into place (before, the first connections could arrive with no kernel record and
/// be refused "the kernel recorded no caller for this connection").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_connection_after_agent_start_is_attested() {
    let dir = sigil_e2e::harness::TestDir::new("first-connection");
    let server = sigil_e2e::harness::Server::start(dir.path(), TD);
    let node = server.id("/node");
    let token = server.token(Some(&node));
    // SAFETY: getuid has no preconditions.
    let uid = format!("unix:uid:{}", unsafe { libc::getuid() });
    server.create_entry(&node, &server.id("/first"), &[&uid], &[]);
    let agent = Agent::spawn(dir.path(), "agent", &server, &token, &[]);
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    while !agent.socket.exists() {
        assert!(std::time::Instant::now() < deadline, "no agent socket");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Every answer from the first connection on: no SVID yet is fine (the entry may not be
    // synced), an attestation failure is not.
    let mut got = false;
    while std::time::Instant::now() < deadline && !got {
        match workload::fetch_x509(&agent.socket).await {
            Ok(svids) => got = !svids.is_empty(),
            Err(s) => assert!(
                !s.message().contains("workload attestation failed"),
                "a caller was refused at agent start: {s:?}"
            ),
        }
    }
    assert!(got, "no SVID");
}

/// A Workload API client that stays connected through an agent restart (the Rust `spiffe`
/// crate's `X509Source`, default reconnect policy) gets an SVID from the restarted agent
/// without being restarted itself. How soon after the socket returns is printed (the target,
/// 1 s, is measured here on loopback; it depends on the client's backoff).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reconnect_after_an_agent_restart() {
    let dir = sigil_e2e::harness::TestDir::new("agent-restart");
    let server = sigil_e2e::harness::Server::start(dir.path(), TD);
    let node = server.id("/node");
    let token = server.token(Some(&node));
    let mut agent = Agent::start(dir.path(), "agent", &server, &token);
    let id = server.id("/restarted");
    // SAFETY: getuid has no preconditions.
    let uid = format!("unix:uid:{}", unsafe { libc::getuid() });
    server.create_entry(&node, &id, &[&uid], &[]);
    wait_for_svid(&agent.socket, &id).await;
    let source = spiffe::X509Source::builder()
        .endpoint(agent.endpoint())
        .build()
        .await
        .expect("X509Source");
    let before = source.svid().expect("SVID").leaf().as_bytes().to_vec();
    let mut updates = source.updated();

    agent.proc().terminate();
    let mut agent = Agent::spawn(dir.path(), "agent", &server, &token, &[]);
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    while !agent.socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent socket never returned"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let back = std::time::Instant::now();
    let after = loop {
        tokio::time::timeout(Duration::from_secs(30), updates.changed())
            .await
            .expect("no update from the restarted agent within 30 s")
            .expect("source closed");
        let leaf = source.svid().expect("SVID").leaf().as_bytes().to_vec();
        if leaf != before {
            break leaf;
        }
    };
    eprintln!(
        "the client had its new SVID {:?} after the socket returned",
        back.elapsed()
    );
    assert_eq!(
        sigil_spiffe::x509::spiffe_id_of_cert(&after)
            .unwrap()
            .to_string(),
        id
    );
    agent.wait_ready();
}
