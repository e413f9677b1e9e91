//! Nested servers (`UpstreamAuthority "spire"`, seed 000's topology): a root server with an
//! agent, two intermediate servers that get their SVIDs from that agent (their entries are
//! `-downstream`) and their CAs from the root, and an agent and a workload under each. The two
//! workloads do mTLS across intermediates, JWT-SVIDs minted under one verify under the other,
//! and mTLS keeps working while the root and then each intermediate rotates.

use crate::federation::mtls_pair;
use crate::{Env, TD};
use sigil_e2e::harness::{Agent, Server, TestDir};
use sigil_e2e::workload::{self, Svid, request};
use sigil_proto::agent as apb;
use sigil_proto::workload as pb;
use std::path::Path;
use std::time::Duration;

const FOLLOW: Duration = Duration::from_secs(60);

fn intermediate(dir: &Path, root: &Server, root_agent: &Agent) -> Server {
    // Seed 000's spelling of the socket key.
    Server::start_with_config_file(
        dir,
        TD,
        &format!(
            "server {{\n}}\nplugins {{\n  UpstreamAuthority \"spire\" {{\n    plugin_data {{\n      server_address = \"127.0.0.1\"\n      server_port = {}\n      workload_api_socket_path = \"{}\"\n    }}\n  }}\n}}\n",
            root.port(),
            root_agent.socket.display()
        ),
    )
}

/// An agent under `server` and a workload entry for this process on it.
fn agent_with_workload(dir: &Path, name: &str, server: &Server) -> (Agent, String) {
    let node = server.id(&format!("/{name}-node"));
    let token = server.token(Some(&node));
    let agent = Agent::start(dir, name, server, &token);
    let id = server.id(&format!("/{name}-workload"));
    server.create_entry(&node, &id, &[&Env::my_uid()], &[]);
    (agent, id)
}

async fn svid(agent: &Agent, id: &str) -> Svid {
    let socket = agent.socket.clone();
    let id = id.to_string();
    let mut last = None;
    for _ in 0..300 {
        match workload::fetch_one(&socket, Some(&id)).await {
            Ok(s) => return s,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no SVID {id}: {last:?}");
}

fn ski(der: &[u8]) -> String {
    sigil_spiffe::x509::key_ids(der).unwrap().0.unwrap()
}

fn aki(der: &[u8]) -> String {
    sigil_spiffe::x509::key_ids(der).unwrap().1.unwrap()
}

async fn wait_for_roots(agent: &Agent, id: &str, n: usize) -> Svid {
    let deadline = std::time::Instant::now() + FOLLOW;
    loop {
        let s = svid(agent, id).await;
        if s.bundle.len() == n {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id}'s bundle never had {n} roots (has {})",
            s.bundle.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn jwt(agent: &Agent, audience: &str) -> String {
    let mut c = workload::client(&agent.socket).await.unwrap();
    c.fetch_jwtsvid(request(pb::JwtsvidRequest {
        audience: vec![audience.into()],
        spiffe_id: String::new(),
    }))
    .await
    .expect("FetchJWTSVID")
    .into_inner()
    .svids[0]
        .svid
        .clone()
}

async fn validates(agent: &Agent, token: &str, audience: &str) -> Result<String, tonic::Status> {
    let mut c = workload::client(&agent.socket).await.unwrap();
    c.validate_jwtsvid(request(pb::ValidateJwtsvidRequest {
        audience: audience.into(),
        svid: token.into(),
    }))
    .await
    .map(|r| r.into_inner().spiffe_id)
}

/// Prepares and activates a new X.509 authority on `s`, then taints the upstream authority of
/// the old one so every SVID chained to it is re-issued; returns the new authority's ID.
fn rotate_intermediate(s: &Server) -> String {
    let old = s
        .cli(&["localauthority", "x509", "show", "-output", "json"])
        .ok()
        .json();
    let old_upstream = old["active"]["upstream_authority_subject_key_id"]
        .as_str()
        .expect("an upstream-signed CA")
        .to_string();
    let prepared = s
        .cli(&["localauthority", "x509", "prepare", "-output", "json"])
        .ok()
        .json();
    let new = prepared["prepared_authority"]["authority_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(
        prepared["prepared_authority"]["upstream_authority_subject_key_id"]
            .as_str()
            .unwrap(),
        old_upstream,
        "the new CA must be signed by the root's new authority: {prepared}"
    );
    s.cli(&["localauthority", "x509", "activate", "-authorityID", &new])
        .ok();
    s.cli(&["upstreamauthority", "taint", "-subjectKeyID", &old_upstream])
        .ok();
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_intermediates_under_a_root_through_rotations_of_each_level() {
    let dir = TestDir::new("nested");
    let root = Server::start(&dir.sub("root"), TD);
    let root_node = root.id("/root-node");
    let token = root.token(Some(&root_node));
    let root_agent = Agent::start(dir.path(), "root-agent", &root, &token);
    // The intermediates' entries: downstream, selected by this uid (they run as it).
    for name in ["intermediate-a", "intermediate-b"] {
        root.create_entry(
            &root_node,
            &root.id(&format!("/{name}")),
            &[&Env::my_uid()],
            &["-downstream"],
        );
    }
    let plain_entry = root.create_entry(&root_node, &root.id("/plain"), &[&Env::my_uid()], &[]);

    // A caller whose entry is not downstream is refused.
    let plain = svid(&root_agent, &root.id("/plain")).await;
    let mut c = sigil_e2e::node::client(
        format!("127.0.0.1:{}", root.port()).parse().unwrap(),
        &plain.bundle,
        &plain.chain,
        &plain.key,
    )
    .await
    .expect("agent API client");
    let refused = c
        .new_downstream_x509ca(apb::NewDownstreamX509caRequest {
            csr: Vec::new(),
            preferred_ttl: 0,
        })
        .await
        .expect_err("a non-downstream caller must be refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert_eq!(refused.message(), "caller is not a downstream workload");
    // The intermediates run as this uid too and take the first SVID the agent serves it (as
    // SPIRE's plugin does): the plain entry must not be among them.
    root.cli(&["entry", "delete", "-entryID", &plain_entry])
        .ok();
    let plain_id = root.id("/plain");
    let deadline = std::time::Instant::now() + FOLLOW;
    while sigil_e2e::workload::fetch_x509(&root_agent.socket)
        .await
        .map(|svids| svids.iter().any(|s| s.spiffe_id == plain_id))
        .unwrap_or(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent kept serving the deleted plain entry"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let a = intermediate(&dir.sub("a"), &root, &root_agent);
    let b = intermediate(&dir.sub("b"), &root, &root_agent);
    let (agent_a, id_a) = agent_with_workload(&dir.sub("a"), "agent-a", &a);
    let (agent_b, id_b) = agent_with_workload(&dir.sub("b"), "agent-b", &b);

    let root_roots = sigil_spiffe::x509::parse_pem_certs(root.bundle_pem().as_bytes()).unwrap();
    let sa = svid(&agent_a, &id_a).await;
    let sb = svid(&agent_b, &id_b).await;
    // [leaf, intermediate's CA]; every server publishes the root's roots.
    assert_eq!(sa.chain.len(), 2, "{sa:?}");
    assert_eq!(sb.chain.len(), 2, "{sb:?}");
    assert_eq!(sa.bundle, root_roots);
    assert_eq!(sb.bundle, root_roots);
    assert_ne!(
        ski(&sa.chain[1]),
        ski(&sb.chain[1]),
        "each intermediate has its own CA"
    );
    assert_eq!(aki(&sa.chain[1]), ski(&root_roots[0]));
    let (seen_by_a, seen_by_b) = mtls_pair(&sa, &sb)
        .await
        .expect("mTLS across intermediates");
    assert_eq!((seen_by_a, seen_by_b), (id_b.clone(), id_a.clone()));

    // JWT-SVIDs: minted by A, validated under B (A's key reached B through the root).
    let token = jwt(&agent_a, "nested").await;
    let deadline = std::time::Instant::now() + FOLLOW;
    loop {
        match validates(&agent_b, &token, "nested").await {
            Ok(id) => {
                assert_eq!(id, id_a);
                break;
            }
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "A's JWT-SVID never validated under B: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The root rotates: its new root reaches both intermediates' workloads before anything is
    // signed by it (spire#5317).
    let prepared = root
        .cli(&["localauthority", "x509", "prepare", "-output", "json"])
        .ok()
        .json();
    let root_new = prepared["prepared_authority"]["authority_id"]
        .as_str()
        .unwrap()
        .to_string();
    let sa = wait_for_roots(&agent_a, &id_a, 2).await;
    let sb = wait_for_roots(&agent_b, &id_b, 2).await;
    mtls_pair(&sa, &sb)
        .await
        .expect("mTLS with both roots published");
    root.cli(&[
        "localauthority",
        "x509",
        "activate",
        "-authorityID",
        &root_new,
    ])
    .ok();

    // A rotates under the new root; B still chains to the old one. mTLS keeps working.
    let a_new = rotate_intermediate(&a);
    let deadline = std::time::Instant::now() + FOLLOW;
    let sa = loop {
        let s = svid(&agent_a, &id_a).await;
        if aki(&s.chain[0]) == a_new {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "A's workload was not re-issued"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        aki(&sa.chain[1]),
        root_new,
        "A's new CA is signed by the root's new one"
    );
    let sb = svid(&agent_b, &id_b).await;
    assert_ne!(aki(&sb.chain[1]), root_new);
    mtls_pair(&sa, &sb)
        .await
        .expect("mTLS: A rotated, B not yet");
    mtls_pair(&sb, &sa).await.expect("mTLS the other way");

    // The root taints its old authority: B, whose CA it signed, mints a new CA from the root's
    // active authority by itself, and B's agent re-issues every SVID chained to the tainted key.
    let root_old = root
        .cli(&["localauthority", "x509", "show", "-output", "json"])
        .ok()
        .json()["old"]["authority_id"]
        .as_str()
        .expect("the root's old authority")
        .to_string();
    assert_eq!(aki(&sb.chain[1]), root_old);
    root.cli(&["localauthority", "x509", "taint", "-authorityID", &root_old])
        .ok();
    let deadline = std::time::Instant::now() + FOLLOW;
    let sb = loop {
        let s = svid(&agent_b, &id_b).await;
        if aki(&s.chain[1]) == root_new {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B's workload still chains to the tainted root authority"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let b_state = b
        .cli(&["localauthority", "x509", "show", "-output", "json"])
        .ok()
        .json();
    assert_eq!(
        b_state["active"]["upstream_authority_subject_key_id"],
        root_new.as_str(),
        "{b_state}"
    );
    mtls_pair(&sa, &sb)
        .await
        .expect("mTLS after the root's taint");
}
