//! py-spiffe and py-spiffe-tls (an independent implementation, on gRPC's C core, PyJWT and
//! OpenSSL) against the agent. The scripts live in tests/py and print JSON; the assertions are
//! here.

use crate::{Env, TD, now, pem_certs};
use sigil_e2e::harness::{run_python, wait_for_svid};
use std::io::BufRead;
use std::process::{Command, Stdio};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_fetches_x509_svids_and_bundles() {
    let env = Env::start("py-x509");
    let id = env.register("/python/x509", &[&Env::my_uid()], &[]);
    wait_for_svid(&env.agent.socket, &id).await;

    let out = run_python(&env.agent, "fetch_x509.py", &[]).ok();
    let v = out.json();
    assert_eq!(v["default_id"].as_str(), Some(id.as_str()), "{out}");
    assert_eq!(v["source_id"].as_str(), Some(id.as_str()), "{out}");
    assert_eq!(v["context_ids"], serde_json::json!([id]), "{out}");
    assert_eq!(v["fetch_svids_ids"], serde_json::json!([id]), "{out}");
    assert_eq!(v["source_bundle_tds"], serde_json::json!([TD]), "{out}");
    assert!(
        v["key_type"]
            .as_str()
            .is_some_and(|k| k.starts_with("EC") || k.contains("EllipticCurve")),
        "{out}"
    );

    // The chain py-spiffe parsed verifies against the server's bundle.
    let chain: Vec<Vec<u8>> = v["chain_pem"]
        .as_array()
        .expect("chain_pem")
        .iter()
        .flat_map(|p| pem_certs(p.as_str().expect("PEM string")))
        .collect();
    let server_roots = pem_certs(&env.server.bundle_pem());
    let verified =
        sigil_spiffe::x509::verify_svid_chain(&chain, &server_roots, now()).expect("verifies");
    assert_eq!(verified.to_string(), id);

    // py-spiffe's bundle for the trust domain is the server's.
    let mut py_roots: Vec<Vec<u8>> = v["bundles"][TD]
        .as_array()
        .unwrap_or_else(|| panic!("no bundle for {TD}: {out}"))
        .iter()
        .flat_map(|p| pem_certs(p.as_str().expect("PEM string")))
        .collect();
    let mut expected = server_roots.clone();
    py_roots.sort();
    expected.sort();
    assert_eq!(py_roots, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_fetches_and_validates_jwt_svids() {
    let env = Env::start("py-jwt");
    let id = env.register("/python/jwt", &[&Env::my_uid()], &[]);
    wait_for_svid(&env.agent.socket, &id).await;

    let out = run_python(&env.agent, "fetch_jwt.py", &["py-aud"]).ok();
    let v = out.json();
    let s = |k: &str| v[k].as_str().map(str::to_string);
    assert_eq!(s("fetched_id").as_deref(), Some(id.as_str()), "{out}");
    assert_eq!(v["fetched_aud"], serde_json::json!(["py-aud"]), "{out}");
    assert_eq!(v["jwt_bundle_tds"], serde_json::json!([TD]), "{out}");
    assert!(
        v["jwt_authorities"].as_u64().is_some_and(|n| n >= 1),
        "{out}"
    );
    // Offline (PyJWT with the Workload API's JWT bundle) and by the agent.
    assert_eq!(s("offline_id").as_deref(), Some(id.as_str()), "{out}");
    assert_eq!(s("agent_id").as_deref(), Some(id.as_str()), "{out}");
    assert_eq!(s("source_id").as_deref(), Some(id.as_str()), "{out}");
    assert_eq!(v["source_bundle_tds"], serde_json::json!([TD]), "{out}");
    // Negative cases name the exception that rejected them.
    for k in [
        "offline_wrong_aud",
        "offline_tampered",
        "agent_wrong_aud",
        "agent_tampered",
    ] {
        assert!(v[k].is_string(), "{k}: a bad token was accepted: {out}");
    }
}

/// py-spiffe-tls (OpenSSL) dials a Rust peer (rustls with Sigil's SVID verification): both
/// sides verify the other's X509-SVID from the same agent and authorize its SPIFFE ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_tls_and_rustls_peer_do_mtls() {
    let env = Env::start("py-tls");
    let id = env.register("/python/tls", &[&Env::my_uid()], &[]);
    wait_for_svid(&env.agent.socket, &id).await;

    let mut serve = Command::new(env!("CARGO_BIN_EXE_sigil-demo-peer"))
        .args([
            "serve",
            "-listen",
            "127.0.0.1:0",
            "-allow",
            &id,
            "-count",
            "1",
            "-socketPath",
        ])
        .arg(&env.agent.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the demo peer");
    let mut lines = std::io::BufReader::new(serve.stdout.take().expect("stdout")).lines();
    let first = lines
        .next()
        .expect("a line from the peer")
        .expect("reading");
    let addr = first
        .strip_prefix("listening on ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_string();

    let out = run_python(
        &env.agent,
        "tls_dial.py",
        &[&addr, &id, "hello from python"],
    );
    // The peer exits after one connection; don't wait forever if it never got one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while serve.try_wait().expect("polling the peer").is_none()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = serve.kill();
    let _ = serve.wait();
    let served = lines.next().and_then(Result::ok).unwrap_or_default();
    let out = out.ok();
    let v = out.json();
    assert_eq!(v["client_id"].as_str(), Some(id.as_str()), "{out}");
    assert_eq!(
        v["reply"].as_str(),
        Some(format!("hello {id}, this is {id}").as_str()),
        "{out}"
    );
    assert_eq!(served, format!("accepted {id}: \"hello from python\""));
}
