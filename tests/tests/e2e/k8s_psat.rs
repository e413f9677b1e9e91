//! k8s_psat node attestation with real processes: a `sigil-agent` attests with the projected
//! service account token a fake Kubernetes API server (`sigil-fake-kube`) issued for its pod,
//! gets `spiffe://TD/spire/agent/k8s_psat/demo/<node uid>`, renews by attesting again (the
//! first token has expired by then, so the file is re-read), comes back to the same ID after a
//! restart, and serves a workload entry parented to a node alias (`entry create -node`) its
//! selectors match.

use crate::{Env, TD};
use serde_json::json;
use sigil_e2e::harness::{Agent, Server, TestDir, wait_for_svid, wait_until};
use sigil_fake_kube::FakeKube;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_attests_with_a_projected_token_and_comes_back_to_its_id() {
    let dir = TestDir::new("k8s-psat");
    let kube = FakeKube::start()
        .await
        .expect("starting the fake API server");
    kube.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "spire"}}));
    kube.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "spire-agent", "namespace": "spire"}}));
    let node = kube.apply(json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "worker-1", "labels": {"topology.kubernetes.io/zone": "z1"}}}));
    let node_uid = node["metadata"]["uid"]
        .as_str()
        .expect("node uid")
        .to_string();
    kube.apply(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "spire-agent-x1", "namespace": "spire"},
        "spec": {"nodeName": "worker-1", "serviceAccountName": "spire-agent"},
        "status": {"hostIP": "10.1.2.3"}}));
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig)
        .expect("writing the kubeconfig");
    let token = |ttl: Duration| {
        kube.issue_token(
            "spire",
            "spire-agent",
            &["spire-server"],
            Some("spire-agent-x1"),
            ttl,
        )
        .expect("issuing a token")
    };

    let server = Server::start_with_config_file(
        dir.path(),
        TD,
        &format!(
            "server {{\n  agent_ttl = \"20s\"\n}}\nplugins {{\n  NodeAttestor \"k8s_psat\" {{\n    plugin_data {{\n      clusters = {{\n        \"demo\" = {{\n          service_account_allow_list = [\"spire:spire-agent\"]\n          kube_config_file = \"{}\"\n          allowed_node_label_keys = [\"topology.kubernetes.io/zone\"]\n        }}\n      }}\n    }}\n  }}\n}}\n",
            kubeconfig.display()
        ),
    );
    // The first token expires before the agent's SVID is due for renewal (10s of 20s), so
    // renewing only works if the agent reads the rotated file.
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, token(Duration::from_secs(8))).expect("writing the token");
    let mut agent = Agent::start_psat(dir.path(), "agent", &server, "demo", &token_path);
    std::fs::write(&token_path, token(Duration::from_secs(3600))).expect("rotating the token");

    let agent_id = format!("spiffe://{TD}/spire/agent/k8s_psat/demo/{node_uid}");
    let show = |server: &Server| {
        server
            .cli(&["agent", "show", "-spiffeID", &agent_id, "-output", "json"])
            .ok()
            .json()
    };
    let first = show(&server);
    assert_eq!(first["attestation_type"], "k8s_psat");
    assert_eq!(first["can_reattest"], true);
    let selectors = first["selectors"].to_string();
    for want in [
        "cluster:demo",
        "agent_ns:spire",
        "agent_sa:spire-agent",
        "agent_pod_name:spire-agent-x1",
        "agent_node_name:worker-1",
        "agent_node_ip:10.1.2.3",
        "agent_node_label:topology.kubernetes.io/zone:z1",
    ] {
        assert!(selectors.contains(want), "{want} missing from {selectors}");
    }

    // A node alias for the cluster, and a workload under it: the agent holds the alias.
    let alias = server.id("/k8s-cluster/demo");
    server
        .cli(&[
            "entry",
            "create",
            "-node",
            "-spiffeID",
            &alias,
            "-selector",
            "k8s_psat:cluster:demo",
        ])
        .ok();
    let workload = server.id("/psat/workload");
    server.create_entry(&alias, &workload, &[&Env::my_uid()], &[]);
    wait_for_svid(&agent.socket, &workload).await;

    // Renewal is a new attestation with the rotated token: same ID, new serial.
    let serial = |v: &serde_json::Value| {
        v["x509svid_serial_number"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let first_serial = serial(&first);
    wait_until("the agent to attest again", Duration::from_secs(40), || {
        (serial(&show(&server)) != first_serial).then_some(())
    });
    assert!(
        server.log().contains("agent re-attested"),
        "no re-attestation in the server log"
    );

    // Restarted (its key was in memory): it attests again, to the same ID.
    let status = agent.proc().terminate();
    assert!(status.is_some_and(|s| s.success()), "agent exit {status:?}");
    let before_restart = serial(&show(&server));
    let mut agent = Agent::start_psat(dir.path(), "agent", &server, "demo", &token_path);
    let after = show(&server);
    assert_eq!(after["id"], agent_id.as_str());
    assert_ne!(serial(&after), before_restart);
    assert!(
        agent.log().contains(&agent_id),
        "the restarted agent does not report {agent_id}:\n{}",
        agent.log()
    );
    wait_for_svid(&agent.socket, &workload).await;

    // Evicted: the running agent attests again by itself and keeps its workloads.
    server.cli(&["agent", "evict", "-spiffeID", &agent_id]).ok();
    wait_until(
        "the evicted agent to attest again",
        Duration::from_secs(30),
        || {
            server
                .cli(&["agent", "show", "-spiffeID", &agent_id, "-output", "json"])
                .success()
                .then_some(())
        },
    );
    wait_for_svid(&agent.socket, &workload).await;

    // Banned: attesting again is refused, and the agent stops.
    server.cli(&["agent", "ban", "-spiffeID", &agent_id]).ok();
    let status = wait_until("the banned agent to exit", Duration::from_secs(30), || {
        agent.proc().exited()
    });
    assert!(!status.success(), "a banned agent exited cleanly");
    assert!(
        agent.log().contains("failed to attest: agent is banned"),
        "{}",
        agent.log()
    );
}
