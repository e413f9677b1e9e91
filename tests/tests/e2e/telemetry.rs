//! `telemetry { Prometheus {} }` on a real server and agent, scraped over HTTP as Prometheus
//! would: the counters an operator alerts on move with what the processes do.

use crate::{Env, TD, now};
use sigil_e2e::envoy::free_port;
use sigil_e2e::harness::{Agent, Server, TestDir, wait_for_svid};
use sigil_e2e::workload;
use std::process::Command;

/// The value of the sample `name{labels}` (labels as Prometheus prints them, sorted), if any.
fn sample(port: u16, series: &str) -> Option<f64> {
    let out = Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find(|l| l.starts_with(&format!("{series} ")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn telemetry(port: u16) -> String {
    format!(
        "telemetry {{\n  Prometheus {{\n    host = \"127.0.0.1\"\n    port = {port}\n  }}\n}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_agent_metrics_follow_what_happens() {
    let dir = TestDir::new("telemetry");
    let (server_port, agent_port) = (free_port(), free_port());
    let server = Server::start_with_config_file(
        dir.path(),
        TD,
        &format!("server {{\n}}\n{}", telemetry(server_port)),
    );
    let node = server.id("/node");
    let token = server.token(Some(&node));
    std::fs::write(dir.path().join("agent.conf"), telemetry(agent_port)).unwrap();
    let conf = dir.path().join("agent.conf");
    let mut agent = Agent::spawn(
        dir.path(),
        "agent",
        &server,
        &token,
        &["-config", conf.to_str().unwrap()],
    );
    agent.wait_ready();

    // A caller with no entry: refused, and counted as such.
    let refused = workload::fetch_x509(&agent.socket)
        .await
        .expect_err("no entry yet");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let id = server.id("/metered");
    server.create_entry(&node, &id, &[&Env::my_uid()], &[]);
    wait_for_svid(&agent.socket, &id).await;

    let fetch = "method=\"SpiffeWorkloadAPI/FetchX509SVID\"";
    assert!(
        sample(
            agent_port,
            &format!("sigil_agent_grpc_calls_total{{code=\"PermissionDenied\",{fetch}}}")
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        sample(
            agent_port,
            &format!("sigil_agent_grpc_calls_total{{code=\"OK\",{fetch}}}")
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    // The workload's SVID, and the one of the join token's alias entry.
    assert_eq!(sample(agent_port, "sigil_agent_svids_cached"), Some(2.0));
    assert_eq!(sample(agent_port, "sigil_agent_synced"), Some(1.0));
    assert_eq!(
        sample(agent_port, "sigil_agent_svids_issued_total{reason=\"new\"}"),
        Some(2.0)
    );
    let expiry = sample(
        agent_port,
        "sigil_agent_svid_earliest_expiry_timestamp_seconds",
    )
    .expect("SVID expiry");
    assert!(expiry > now() as f64);

    assert_eq!(
        sample(
            server_port,
            "sigil_server_svids_signed_total{type=\"agent\"}"
        ),
        Some(1.0)
    );
    assert!(
        sample(
            server_port,
            "sigil_server_svids_signed_total{type=\"x509\"}"
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!(
        sample(server_port, "sigil_server_registration_entries"),
        Some(2.0)
    );
    // The entry was written (a datastore operation) and reached the agent as a delta.
    assert!(
        sample(
            server_port,
            "sigil_server_datastore_operation_duration_seconds_count{op=\"create_entries\"}"
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(sample(server_port, "sigil_server_entry_sync_lag_seconds_count").unwrap_or(0.0) >= 1.0);
    let ca_expiry = sample(
        server_port,
        "sigil_server_ca_expiry_timestamp_seconds{kind=\"x509\"}",
    )
    .expect("CA expiry");
    assert!(ca_expiry > now() as f64);
}

/// With the server gone longer than half the SVID's lifetime (when the agent would have
/// renewed it) the agent keeps serving what it holds and says so, in `/ready` and in a metric;
/// when the server returns, it reconnects, says that too, and catches up (a fresh SVID).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_outage_shows_in_ready_and_metrics() {
    let dir = TestDir::new("telemetry-outage");
    let mut server = Server::start(dir.path(), TD);
    let node = server.id("/node");
    let token = server.token(Some(&node));
    let (agent_port, health_port) = (free_port(), free_port());
    let conf = dir.path().join("agent.conf");
    std::fs::write(
        &conf,
        format!(
            "{}health_checks {{\n  listener_enabled = true\n  bind_address = \"127.0.0.1\"\n  bind_port = \"{health_port}\"\n}}\n",
            telemetry(agent_port)
        ),
    )
    .unwrap();
    let mut agent = Agent::spawn(
        dir.path(),
        "agent",
        &server,
        &token,
        &["-config", conf.to_str().unwrap()],
    );
    agent.wait_ready();
    let id = server.id("/outage");
    const TTL: u64 = 20;
    server.create_entry(
        &node,
        &id,
        &[&Env::my_uid()],
        &["-x509SVIDTTL", &TTL.to_string()],
    );
    let issued = wait_for_svid(&agent.socket, &id).await;
    let issued_at = std::time::Instant::now();
    let ready = || -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-s", &format!("http://127.0.0.1:{health_port}/ready")])
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    assert_eq!(ready()["server_connected"], true, "{}", ready());
    assert_eq!(
        sample(agent_port, "sigil_agent_server_connected"),
        Some(1.0)
    );

    server.stop();
    let r = sigil_e2e::harness::wait_until(
        "the agent to notice the outage",
        std::time::Duration::from_secs(20),
        || {
            let r = ready();
            (r["server_connected"] == false).then_some(r)
        },
    );
    assert_eq!(r["ready"], true, "still serving: {r}");
    assert!(
        r["serving_cached_svids_until"].as_i64().unwrap_or(0) > now(),
        "{r}"
    );
    assert_eq!(
        sample(agent_port, "sigil_agent_server_connected"),
        Some(0.0)
    );
    // And it does serve, past the half-life at which it would have renewed.
    let half = std::time::Duration::from_secs(TTL / 2 + 1);
    if let Some(left) = half.checked_sub(issued_at.elapsed()) {
        tokio::time::sleep(left).await;
    }
    let held = workload::fetch_one(&agent.socket, Some(&id))
        .await
        .expect("cached SVID while the server is down, past half its lifetime");
    assert_eq!(held.chain[0], issued.chain[0], "the SVID it held is served");

    server.restart();
    sigil_e2e::harness::wait_until(
        "the agent to reconnect",
        std::time::Duration::from_secs(30),
        || (ready()["server_connected"] == true).then_some(()),
    );
    assert_eq!(
        sample(agent_port, "sigil_agent_server_connected"),
        Some(1.0)
    );
    // Caught up: the overdue renewal happens (a new certificate), before the old one expires.
    let mut renewed = None;
    for _ in 0..60 {
        let s = workload::fetch_one(&agent.socket, Some(&id)).await;
        if let Ok(s) = s
            && s.chain[0] != issued.chain[0]
        {
            renewed = Some(s);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(
        renewed.is_some(),
        "the agent never renewed the overdue SVID after the outage"
    );
}
