//! `sigil-oidc` (SPIRE's OIDC Discovery Provider) between a real server and agent and an
//! independent relying party: PyJWT's `PyJWKClient`, which knows only the issuer URL, finds the
//! JWKS by discovery and verifies JWT-SVIDs (ES256, audience, issuer), before and after the
//! server rotates its JWT key. Also the Workload API as key source on a Unix-socket listener,
//! and SPIRE's domain policy over HTTP.

use crate::TD;
use base64::Engine as _;
use sigil_e2e::envoy::free_port;
use sigil_e2e::harness::{
    Agent, CLI_TIMEOUT, Proc, Server, TestDir, python, run, sigil_bin, wait_for_svid, wait_until,
    workspace_root,
};
use spiffe::WorkloadApiClient;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// How often the provider polls its source in these tests.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// A server whose CA (and JWT key) lives 60 s: a successor key is published at 30 s and signs
/// from 50 s on (server/src/ca.rs), so one test sees a whole JWT key rotation.
fn start_server(dir: &Path, issuer: &str) -> Server {
    Server::start_with_config(
        dir,
        TD,
        &format!("ca_ttl = \"60s\"\ndefault_x509_svid_ttl = \"20s\"\njwt_issuer = \"{issuer}\"\n"),
    )
}

/// A server, an agent, and an entry for this test process's uid.
fn start_env(dir: &TestDir, issuer: &str) -> (Server, Agent, String) {
    let server = start_server(dir.path(), issuer);
    let node = server.id("/node");
    let token = server.token(Some(&node));
    let agent = Agent::start(dir.path(), "agent", &server, &token);
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let id = server.id("/oidc/workload");
    server.create_entry(&node, &id, &[&format!("unix:uid:{uid}")], &[]);
    (server, agent, id)
}

fn start_oidc(dir: &Path, name: &str, config: &str) -> Proc {
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(&path, config).expect("writing the sigil-oidc config");
    let mut cmd = Command::new(sigil_bin("sigil-oidc"));
    cmd.arg("-config").arg(&path).env("NO_COLOR", "1");
    Proc::spawn(name, cmd, dir.join(format!("{name}.log")))
}

/// A raw HTTP/1.1 GET (the `Host` header is the test's to choose), over TCP or a Unix socket.
fn http_get(conn: Conn<'_>, path: &str, host: &str) -> (u16, String, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let mut raw = Vec::new();
    match conn {
        Conn::Tcp(port) => {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting");
            s.write_all(req.as_bytes()).expect("writing the request");
            s.read_to_end(&mut raw).expect("reading the response");
        }
        Conn::Unix(p) => {
            let mut s = std::os::unix::net::UnixStream::connect(p).expect("connecting");
            s.write_all(req.as_bytes()).expect("writing the request");
            s.read_to_end(&mut raw).expect("reading the response");
        }
    }
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head.to_string(), body.to_string())
}

#[derive(Clone, Copy)]
enum Conn<'a> {
    Tcp(u16),
    Unix(&'a Path),
}

/// The `kid`s of the JWKS at `/keys`, if it is served.
fn jwks_kids(conn: Conn<'_>, host: &str) -> Option<Vec<String>> {
    let (status, _, body) = http_get(conn, "/keys", host);
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).expect("JWKS JSON");
    let mut kids: Vec<String> = v["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_string())
        .collect();
    kids.sort();
    Some(kids)
}

/// The `kid`s of the server's JWT authorities (`bundle show -format spiffe`).
fn server_kids(server: &Server) -> Vec<String> {
    let out = server.cli(&["bundle", "show", "-format", "spiffe"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("SPIFFE bundle JSON");
    let mut kids: Vec<String> = v["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| k["use"] == "jwt-svid")
        .map(|k| k["kid"].as_str().expect("kid").to_string())
        .collect();
    kids.sort();
    kids
}

fn token_kid(token: &str) -> String {
    let header = token.split('.').next().expect("JWT header");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .expect("base64url header");
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("header JSON");
    v["kid"].as_str().expect("kid").to_string()
}

async fn fetch_token(agent: &Agent, audience: &str) -> String {
    let c = WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .expect("connecting to the agent");
    c.fetch_jwt_svid([audience], None)
        .await
        .expect("fetching a JWT-SVID")
        .token()
        .to_string()
}

/// PyJWT, knowing only the issuer: discovery, JWKS, verification.
fn verify_with_pyjwt(issuer: &str, audience: &str, token: &str) -> serde_json::Value {
    let py = python().unwrap_or_else(|e| panic!("{e:#}"));
    let mut cmd = Command::new(py);
    cmd.arg(workspace_root().join("tests/py/oidc_verify.py"))
        .args([issuer, audience, token])
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let out = run(cmd, CLI_TIMEOUT).ok();
    out.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyjwt_verifies_jwt_svids_through_discovery_across_a_key_rotation() {
    let dir = TestDir::new("oidc-server-api");
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let (server, agent, id) = start_env(&dir, &issuer);
    let started = Instant::now();

    let mut oidc = start_oidc(
        dir.path(),
        "sigil-oidc",
        &format!(
            "domains = [\"127.0.0.1\"]\ninsecure_addr = \"127.0.0.1:{port}\"\nallow_insecure_scheme = true\nlog_level = \"debug\"\nserver_api {{\n  address = \"unix://{}\"\n  poll_interval = \"{}s\"\n}}\n",
            server.socket.display(),
            POLL_INTERVAL.as_secs()
        ),
    );
    let host = format!("127.0.0.1:{port}");
    let first_kids = wait_until(
        "sigil-oidc to serve the JWKS",
        Duration::from_secs(20),
        || {
            oidc.assert_running();
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            jwks_kids(Conn::Tcp(port), &host)
        },
    );
    assert_eq!(first_kids, server_kids(&server));
    assert_eq!(first_kids.len(), 1, "one JWT key before the rotation");

    // The discovery document, derived from the Host, as SPIRE writes it.
    let (status, head, body) =
        http_get(Conn::Tcp(port), "/.well-known/openid-configuration", &host);
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let doc: serde_json::Value = serde_json::from_str(&body).expect("discovery JSON");
    assert_eq!(
        doc,
        serde_json::json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/keys"),
            "authorization_endpoint": "",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256", "ES384"],
        })
    );
    let (_, head, _) = http_get(Conn::Tcp(port), "/keys", &host);
    let head = head.to_ascii_lowercase();
    for h in [
        "cache-control: no-cache, no-store, must-revalidate",
        "pragma: no-cache",
        "expires: 0",
        "last-modified: ",
    ] {
        assert!(head.contains(h), "no {h:?} in {head}");
    }

    // SPIRE's domain policy: another host gets a 400, over HTTP.
    let (status, _, body) = http_get(
        Conn::Tcp(port),
        "/.well-known/openid-configuration",
        "evil.test",
    );
    assert_eq!(
        (status, body.as_str()),
        (400, "domain \"evil.test\" is not allowed\n")
    );
    let (status, _, _) = http_get(
        Conn::Tcp(port),
        "/.well-known/openid-configuration",
        "localhost:1",
    );
    assert_eq!(status, 400);

    // A workload's JWT-SVID, verified by PyJWT knowing only the issuer.
    wait_for_svid(&agent.socket, &id).await;
    let token = fetch_token(&agent, "oidc-aud").await;
    let v = verify_with_pyjwt(&issuer, "oidc-aud", &token);
    assert_eq!(v["sub"], id.as_str(), "{v}");
    assert_eq!(v["iss"], issuer.as_str(), "{v}");
    assert_eq!(v["discovery_issuer"], issuer.as_str(), "{v}");
    assert_eq!(v["jwks_uri"], format!("{issuer}/keys").as_str(), "{v}");
    assert_eq!(v["alg"], "ES256", "{v}");
    assert_eq!(v["kid"], first_kids[0].as_str(), "{v}");
    assert_eq!(v["wrong_aud"], "InvalidAudienceError", "{v}");
    assert_eq!(v["wrong_iss"], "InvalidIssuerError", "{v}");

    // The successor key joins the server's bundle at half the CA's life: the provider
    // publishes it within its poll interval (plus the time to notice, here and there).
    let deadline = Duration::from_secs(50);
    let prepared = wait_until("the server to publish a second JWT key", deadline, || {
        let kids = server_kids(&server);
        (kids.len() == 2).then_some(kids)
    });
    let seen_by_server = Instant::now();
    let published = wait_until("sigil-oidc to publish the new key", deadline, || {
        oidc.assert_running();
        jwks_kids(Conn::Tcp(port), &host).filter(|k| k.len() == 2)
    });
    assert_eq!(published, prepared);
    let lag = seen_by_server.elapsed();
    assert!(
        lag <= POLL_INTERVAL + Duration::from_secs(2),
        "the JWKS took {lag:?} to follow the server (poll_interval {POLL_INTERVAL:?})"
    );

    // From five sixths on, tokens are signed by the new key; PyJWT still finds it by discovery.
    let new_kid = prepared
        .iter()
        .find(|k| **k != first_kids[0])
        .expect("a new kid")
        .clone();
    let mut n = 0;
    let rotated_token = loop {
        // A new audience each time: the agent caches tokens per audience.
        n += 1;
        let aud = format!("oidc-aud-{n}");
        let t = fetch_token(&agent, &aud).await;
        if token_kid(&t) == new_kid {
            break (aud, t);
        }
        assert!(
            started.elapsed() < Duration::from_secs(80),
            "no token signed by the new key {new_kid} yet"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let v = verify_with_pyjwt(&issuer, &rotated_token.0, &rotated_token.1);
    assert_eq!(v["kid"], new_kid.as_str(), "{v}");
    assert_eq!(v["sub"], id.as_str(), "{v}");
    assert_eq!(v["wrong_aud"], "InvalidAudienceError", "{v}");
    oidc.assert_running();
    assert!(
        !oidc.log().contains("BEGIN") && !oidc.log().contains("PRIVATE"),
        "key material in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_api_source_on_a_unix_socket_listener() {
    let dir = TestDir::new("oidc-workload-api");
    let issuer = "https://oidc.e2e.test";
    let (server, agent, id) = start_env(&dir, issuer);
    wait_for_svid(&agent.socket, &id).await;

    let listen = dir.path().join("oidc.sock");
    let mut oidc = start_oidc(
        dir.path(),
        "sigil-oidc-workload",
        &format!(
            "domains = [\"oidc.e2e.test\"]\nlisten_socket_path = \"{}\"\nset_key_use = true\nworkload_api {{\n  socket_path = \"{}\"\n  trust_domain = \"{TD}\"\n  poll_interval = \"1s\"\n}}\n",
            listen.display(),
            agent.socket.display(),
        ),
    );
    let kids = wait_until(
        "sigil-oidc to serve the JWKS",
        Duration::from_secs(20),
        || {
            oidc.assert_running();
            std::os::unix::net::UnixStream::connect(&listen).ok()?;
            jwks_kids(Conn::Unix(&listen), "oidc.e2e.test")
        },
    );
    assert_eq!(kids, server_kids(&server));

    let (status, _, body) = http_get(Conn::Unix(&listen), "/keys", "oidc.e2e.test");
    assert_eq!(status, 200);
    let jwks: serde_json::Value = serde_json::from_str(&body).expect("JWKS");
    let key = &jwks["keys"][0];
    assert_eq!(key["use"], "sig", "{jwks}");
    assert_eq!(key["kty"], "EC", "{jwks}");
    assert_eq!(key["crv"], "P-256", "{jwks}");
    assert_eq!(key["alg"], "ES256", "{jwks}");

    // Without allow_insecure_scheme the document names https, whatever the listener.
    let (status, _, body) = http_get(
        Conn::Unix(&listen),
        "/.well-known/openid-configuration",
        "oidc.e2e.test",
    );
    assert_eq!(status, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("discovery JSON");
    assert_eq!(doc["issuer"], issuer);
    assert_eq!(doc["jwks_uri"], format!("{issuer}/keys").as_str());
    let (status, _, body) = http_get(
        Conn::Unix(&listen),
        "/.well-known/openid-configuration",
        "127.0.0.1",
    );
    assert_eq!(
        (status, body.as_str()),
        (400, "domain \"127.0.0.1\" is not allowed\n")
    );
    oidc.assert_running();
}

#[test]
fn config_errors_exit_non_zero_with_spire_messages() {
    let dir = TestDir::new("oidc-config");
    for (config, want) in [
        (
            "insecure_addr = \":0\"\nfile {\n path = \"/b\"\n}\n",
            "at least one domain must be configured",
        ),
        (
            "domains = [\"d\"]\nacme {\n email = \"e@d\"\n tos_accepted = true\n}\nfile {\n path = \"/b\"\n}\n",
            "the acme section is not supported by Sigil",
        ),
        (
            "domains = [\"d\"]\ninsecure_addr = \":0\"\n",
            "exactly one of the server_api, workload_api, or file sections must be configured",
        ),
    ] {
        let path = dir.path().join("bad.conf");
        std::fs::write(&path, config).expect("writing the config");
        let mut cmd = Command::new(sigil_bin("sigil-oidc"));
        cmd.arg("-config").arg(&path);
        let out = run(cmd, CLI_TIMEOUT).fails();
        assert!(out.stderr.contains(want), "{config}: {out}");
    }
}
