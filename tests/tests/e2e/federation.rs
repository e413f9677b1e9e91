//! Federation (issue 14, the bundle endpoint and configured relationships): two servers on
//! loopback, each serving its bundle (`https_spiffe`) and federating with the other as SPIRE's
//! `server.conf` writes it; the bundle endpoint checked with curl; the relationship's state
//! in `federation show` before and after the bootstrap bundle; and a workload whose entry
//! federates with the other domain gets that domain's bundle from the Workload API.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sigil_e2e::envoy::free_port;
use sigil_e2e::harness::{Agent, CliOutput, Server, TestDir, run, wait_until};

fn config(own_port: u16, other_td: &str, other_port: u16) -> String {
    format!(
        r#"server {{
  federation {{
    bundle_endpoint {{
      address = "127.0.0.1"
      port = {own_port}
      refresh_hint = "60s"
      profile "https_spiffe" {{}}
    }}
    federates_with "{other_td}" {{
      bundle_endpoint_url = "https://127.0.0.1:{other_port}"
      bundle_endpoint_profile "https_spiffe" {{
        endpoint_spiffe_id = "spiffe://{other_td}/spire/server"
      }}
    }}
  }}
}}
"#
    )
}

/// `curl -sk -i https://127.0.0.1:<port>/` (an independent HTTP client): headers and body.
fn curl(port: u16, extra: &[&str]) -> CliOutput {
    let mut c = Command::new("curl");
    c.args(["-sk", "-i", "--max-time", "10"])
        .args(extra)
        .arg(format!("https://127.0.0.1:{port}/"));
    run(c, Duration::from_secs(15))
}

fn show(server: &Server, td: &str) -> Value {
    server
        .cli(&["federation", "show", "-trustDomain", td, "-output", "json"])
        .ok()
        .json()
}

/// B's bundle in SPIFFE format, set on A as the bootstrap of the relationship.
fn bootstrap_bundle(from: &Server, to: &Server, dir: &TestDir, td: &str) {
    let doc = from.cli(&["bundle", "show", "-format", "spiffe"]).ok();
    let path = dir.path().join(format!("{td}.json"));
    std::fs::write(&path, doc.stdout.as_bytes()).expect("bundle file");
    to.cli(&[
        "bundle",
        "set",
        "-format",
        "spiffe",
        "-id",
        &format!("spiffe://{td}"),
        "-path",
        path.to_str().expect("utf-8 path"),
    ])
    .ok();
}

#[test]
fn two_trust_domains_federate_both_ways() {
    let dir = TestDir::new("federation");
    let (pa, pb, metrics_port) = (free_port(), free_port(), free_port());
    // A serves metrics as seed 002 configures them (`bind_address`/`bind_port`).
    let a = Server::start_with_config_file(
        &dir.path().join("a"),
        "a.test",
        &format!(
            "{}telemetry {{\n  Prometheus {{\n    bind_address = \"127.0.0.1\"\n    bind_port = \"{metrics_port}\"\n  }}\n}}\n",
            config(pa, "b.test", pb)
        ),
    );
    let metric = |name: &str| -> Option<f64> {
        let out = Command::new("curl")
            .args(["-s", &format!("http://127.0.0.1:{metrics_port}/metrics")])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{trust_domain=\"b.test\"}} ")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let b =
        Server::start_with_config_file(&dir.path().join("b"), "b.test", &config(pb, "a.test", pa));

    // The bundle endpoint: SPIFFE bundle JSON, application/json, TLS 1.2 or newer only.
    let out = curl(pa, &[]);
    assert!(out.success(), "{out}");
    let (head, body) = out.stdout.split_once("\r\n\r\n").expect("headers and body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let doc: Value = serde_json::from_str(body).expect("bundle JSON");
    assert_eq!(doc["spiffe_refresh_hint"], 60);
    assert!(
        doc["spiffe_sequence"].as_u64().is_some_and(|s| s >= 1),
        "{doc}"
    );
    let keys = doc["keys"].as_array().expect("keys");
    let x509: Vec<&Value> = keys.iter().filter(|k| k["use"] == "x509-svid").collect();
    let jwt: Vec<&Value> = keys.iter().filter(|k| k["use"] == "jwt-svid").collect();
    assert!(!x509.is_empty() && !jwt.is_empty(), "{doc}");
    assert!(
        x509.iter()
            .all(|k| k["x5c"].as_array().is_some_and(|c| c.len() == 1) && k.get("kid").is_none())
    );
    assert!(jwt.iter().all(|k| k["kid"].is_string()));
    assert!(
        !curl(pa, &["--tls-max", "1.1"]).success(),
        "TLS 1.1 was accepted"
    );
    // The endpoint presents A's server SVID.
    let cert = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{pa} </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName"
        ))
        .output()
        .expect("openssl");
    assert!(
        String::from_utf8_lossy(&cert.stdout).contains("URI:spiffe://a.test/spire/server"),
        "{}",
        String::from_utf8_lossy(&cert.stdout)
    );

    // Without a bootstrap bundle the relationship fails, and says why where the operator
    // looks: `federation show`.
    let s = wait_until("the failure to be visible", Duration::from_secs(10), || {
        let s = show(&a, "b.test");
        s["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
            .then_some(s)
    });
    assert!(
        s["last_error"]
            .as_str()
            .unwrap()
            .contains("no bundle of trust domain"),
        "{s}"
    );
    assert_eq!(
        s["https_spiffe"]["endpoint_spiffe_id"],
        "spiffe://b.test/spire/server"
    );
    let text = a
        .cli(&["federation", "show", "-trustDomain", "b.test"])
        .ok();
    assert!(text.stdout.starts_with("Found a federation relationship with trust domain b.test:\n\nTrust domain              : b.test\nBundle endpoint URL       : https://127.0.0.1:"), "{text}");
    assert!(text.stdout.contains("Bundle endpoint profile   : https_spiffe\nEndpoint SPIFFE ID        : spiffe://b.test/spire/server\n"), "{text}");
    assert!(
        text.stdout.contains("Last refresh              : never"),
        "{text}"
    );
    // ... and in a metric an operator can alert on.
    assert_eq!(metric("sigil_server_federation_relationship_up"), Some(0.0));
    assert!(metric("sigil_server_federation_last_error_timestamp_seconds").unwrap_or(0.0) > 0.0);
    assert!(
        text.stdout.contains("Last error                : "),
        "{text}"
    );

    // Bootstrap both ways, refresh on demand: each holds the other's bundle as served.
    bootstrap_bundle(&b, &a, &dir, "b.test");
    bootstrap_bundle(&a, &b, &dir, "a.test");
    let out = a
        .cli(&["federation", "refresh", "-id", "spiffe://b.test"])
        .ok();
    assert_eq!(out.stdout.trim(), "Bundle refreshed");
    b.cli(&["federation", "refresh", "-id", "spiffe://a.test"])
        .ok();
    for (server, td) in [(&a, "b.test"), (&b, "a.test")] {
        let s = wait_until("a successful refresh", Duration::from_secs(15), || {
            let s = show(server, td);
            (s["last_success"].as_i64().unwrap_or(0) > 0 && s["last_error"] == "").then_some(s)
        });
        assert!(s["bundle_sequence"].as_u64().unwrap_or(0) >= 1, "{s}");
        assert!(s["next_attempt"].as_i64().unwrap_or(0) > s["last_success"].as_i64().unwrap_or(0));
    }
    assert_eq!(metric("sigil_server_federation_relationship_up"), Some(1.0));
    assert_eq!(
        metric("sigil_server_federation_last_error_timestamp_seconds"),
        Some(0.0)
    );
    let list = a.cli(&["federation", "list"]).ok();
    assert!(
        list.stdout
            .starts_with("Found 1 federation relationship\n\nTrust domain              : b.test\n"),
        "{list}"
    );
    let other = a
        .cli(&["federation", "refresh", "-id", "spiffe://c.test"])
        .fails();
    assert!(
        other
            .stderr
            .contains("there is no federation relationship with trust domain"),
        "{other}"
    );

    // The stored bundle is the other side's (its CA, as it serves it).
    let pem_b = b.cli(&["bundle", "show"]).ok().stdout;
    let listed = a
        .cli(&["bundle", "list", "-id", "spiffe://b.test"])
        .ok()
        .stdout;
    assert_eq!(listed.trim(), pem_b.trim(), "A's copy of B's bundle");

    // A workload on A whose entry federates with B gets B's bundle from the Workload API.
    let node = a.id("/node");
    let token = a.token(Some(&node));
    let agent = Agent::start(dir.path(), "agent-a", &a, &token);
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    a.create_entry(
        &node,
        &a.id("/workload"),
        &[&format!("unix:uid:{uid}")],
        // c.test has no bundle (yet): the workload is served without it, not refused
        // (spire#7146).
        &[
            "-federatesWith",
            "spiffe://b.test",
            "-federatesWith",
            "spiffe://c.test",
        ],
    );
    let out = wait_until(
        "federated bundles on the Workload API",
        Duration::from_secs(15),
        || {
            let out = agent.cli(&["api", "fetch", "x509", "-output", "json"]);
            (out.success() && out.stdout.contains("spiffe://b.test")).then_some(out)
        },
    );
    let v = out.json();
    // The DER of B's CA, as B serves it.
    let fed = v["federated_bundles"]["spiffe://b.test"]
        .as_str()
        .expect("B's bundle for the workload");
    assert!(!fed.is_empty(), "{v}");

    // Cross-domain mTLS (rustls): a workload of A and one of B, each trusting the other's
    // domain through the federated bundle its agent serves.
    let node_b = b.id("/node");
    let token_b = b.token(Some(&node_b));
    let agent_b = Agent::start(dir.path(), "agent-b", &b, &token_b);
    b.create_entry(
        &node_b,
        &b.id("/server"),
        &[&format!("unix:uid:{uid}")],
        &["-federatesWith", "spiffe://a.test"],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let context = |socket: &std::path::Path, other: &str| {
        wait_until(
            "an SVID with the other domain's bundle",
            Duration::from_secs(15),
            || {
                let (svids, fed) = rt
                    .block_on(sigil_e2e::workload::fetch_x509_context(socket))
                    .ok()?;
                let other = fed.get(other)?.clone();
                Some((svids.into_iter().next()?, other))
            },
        )
    };
    let (client_svid, b_roots) = context(&agent.socket, "spiffe://b.test");
    let (server_svid, a_roots) = context(&agent_b.socket, "spiffe://a.test");
    assert_eq!(client_svid.spiffe_id, "spiffe://a.test/workload");
    assert_eq!(server_svid.spiffe_id, "spiffe://b.test/server");
    let handshake = |client_roots: Vec<Vec<u8>>| {
        let mut c = client_svid.clone();
        c.bundle = client_roots;
        let mut s = server_svid.clone();
        s.bundle.extend(a_roots.clone());
        rt.block_on(mtls_pair(&s, &c))
    };
    let (server_saw, client_saw) =
        handshake([client_svid.bundle.clone(), b_roots.clone()].concat())
            .expect("cross-domain mTLS");
    assert_eq!(server_saw, "spiffe://a.test/workload");
    assert_eq!(client_saw, "spiffe://b.test/server");
    // Without B's bundle, A's workload cannot authenticate B's.
    assert!(handshake(client_svid.bundle.clone()).is_err());

    // A revoke on B reaches its federated peer: after A's next refresh, the revoked root is
    // out of A's copy of B's bundle, and out of what A's workload holds for B.
    let json = |s: &Server, args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["-output", "json"]);
        s.cli(&a).ok().json()
    };
    let old = json(&b, &["localauthority", "x509", "show"])["active"]["authority_id"]
        .as_str()
        .unwrap()
        .to_string();
    let new =
        json(&b, &["localauthority", "x509", "prepare"])["prepared_authority"]["authority_id"]
            .as_str()
            .unwrap()
            .to_string();
    b.cli(&["localauthority", "x509", "activate", "-authorityID", &new])
        .ok();
    b.cli(&["localauthority", "x509", "taint", "-authorityID", &old])
        .ok();
    b.cli(&["localauthority", "x509", "revoke", "-authorityID", &old])
        .ok();
    let pem_b = b.cli(&["bundle", "show"]).ok().stdout;
    assert_eq!(crate::pem_certs(&pem_b).len(), 1);
    a.cli(&["federation", "refresh", "-id", "spiffe://b.test"])
        .ok();
    wait_until("B's revoke at A", Duration::from_secs(15), || {
        let listed = a
            .cli(&["bundle", "list", "-id", "spiffe://b.test"])
            .ok()
            .stdout;
        (listed.trim() == pem_b.trim()).then_some(())
    });
    let b_ski = |der: &[u8]| sigil_spiffe::x509::key_ids(der).unwrap().0.unwrap();
    wait_until(
        "B's revoke at A's workload",
        Duration::from_secs(15),
        || {
            let (_, fed) = rt
                .block_on(sigil_e2e::workload::fetch_x509_context(&agent.socket))
                .ok()?;
            let roots = fed.get("spiffe://b.test")?;
            (roots.len() == 1 && b_ski(&roots[0]) == new).then_some(())
        },
    );
}

/// One mTLS handshake on loopback between `server` and `client` (each allowing the other's
/// ID); the peer IDs each side saw.
pub(crate) async fn mtls_pair(
    server: &sigil_e2e::workload::Svid,
    client: &sigil_e2e::workload::Svid,
) -> anyhow::Result<(String, String)> {
    use std::sync::Arc;
    let (scfg, _) = sigil_e2e::mtls::server_config(server, vec![client.spiffe_id.clone()])?;
    let (ccfg, _) = sigil_e2e::mtls::client_config(client, vec![server.spiffe_id.clone()])?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(scfg));
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let tls = acceptor.accept(tcp).await?;
        anyhow::Ok(
            sigil_e2e::mtls::peer_id(tls.get_ref().1.peer_certificates()).unwrap_or_default(),
        )
    });
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(ccfg))
        .connect(name, tcp)
        .await?;
    let client_saw =
        sigil_e2e::mtls::peer_id(tls.get_ref().1.peer_certificates()).unwrap_or_default();
    drop(tls);
    let server_saw = srv.await??;
    Ok((server_saw, client_saw))
}

fn endpoint_only(port: u16) -> String {
    format!(
        "server {{\n  federation {{\n    bundle_endpoint {{\n      address = \"127.0.0.1\"\n      port = {port}\n    }}\n  }}\n}}\n"
    )
}

/// Relationships made with spire-server's `federation create|update|delete` (with a bootstrap
/// bundle from `-trustDomainBundlePath`), then by sigil-controller from a
/// ClusterFederatedTrustDomain written as seed 000 writes it.
#[test]
fn relationships_from_the_cli_and_from_cluster_federated_trust_domains() {
    let dir = TestDir::new("federation-api");
    let (pa, pb) = (free_port(), free_port());
    let a = Server::start_with_config_file(&dir.path().join("a"), "a.test", &endpoint_only(pa));
    let b = Server::start_with_config_file(&dir.path().join("b"), "b.test", &endpoint_only(pb));
    let pem = dir.path().join("b.pem");
    std::fs::write(&pem, b.cli(&["bundle", "show"]).ok().stdout).expect("bundle file");
    let url = format!("https://127.0.0.1:{pb}");
    let create = |extra: &[&str]| {
        let mut args = vec![
            "federation",
            "create",
            "-trustDomain",
            "b.test",
            "-bundleEndpointURL",
            &url,
            "-bundleEndpointProfile",
            "https_spiffe",
            "-endpointSpiffeID",
            "spiffe://b.test/spire/server",
        ];
        args.extend_from_slice(extra);
        a.cli(&args)
    };
    let out = create(&["-trustDomainBundlePath", pem.to_str().unwrap()]).ok();
    assert_eq!(
        out.stdout,
        format!(
            "\nTrust domain              : b.test\nBundle endpoint URL       : {url}\nBundle endpoint profile   : https_spiffe\nEndpoint SPIFFE ID        : spiffe://b.test/spire/server\n"
        )
    );
    // Bootstrapped: the first fetch succeeds at once.
    let s = wait_until("a successful refresh", Duration::from_secs(15), || {
        let s = show(&a, "b.test");
        (s["last_success"].as_i64().unwrap_or(0) > 0).then_some(s)
    });
    assert_eq!(s["source"], "api");
    let again = create(&[]).fails();
    assert!(
        again.stderr.contains(
            "Failed to create the following federation relationship (code: AlreadyExists"
        ),
        "{again}"
    );
    assert!(
        again
            .stderr
            .contains("failed to create one or more federation relationships")
    );
    let bad = a
        .cli(&[
            "federation",
            "create",
            "-trustDomain",
            "c.test",
            "-bundleEndpointURL",
            "https://c",
            "-bundleEndpointProfile",
            "https_spiffe",
        ])
        .fails();
    assert!(
        bad.stderr.contains("endpoint SPIFFE ID is required"),
        "{bad}"
    );

    // Update: the new URL is fetched at once.
    let url2 = format!("https://localhost:{pb}");
    a.cli(&[
        "federation",
        "update",
        "-trustDomain",
        "b.test",
        "-bundleEndpointURL",
        &url2,
        "-bundleEndpointProfile",
        "https_spiffe",
        "-endpointSpiffeID",
        "spiffe://b.test/spire/server",
    ])
    .ok();
    wait_until("the new URL in effect", Duration::from_secs(15), || {
        let s = show(&a, "b.test");
        (s["bundle_endpoint_url"] == url2.as_str() && s["last_success"].as_i64().unwrap_or(0) > 0)
            .then_some(())
    });
    let out = a.cli(&["federation", "delete", "-id", "b.test"]).ok();
    assert_eq!(out.stdout.trim(), "federation relationship deleted.");
    let list = a.cli(&["federation", "list"]).ok();
    assert_eq!(list.stdout.trim(), "Found 0 federation relationships");
    let gone = a.cli(&["federation", "delete", "-id", "b.test"]).fails();
    assert!(
        gone.stderr
            .contains("failed to delete federation relationship \"b.test\""),
        "{gone}"
    );

    // sigil-controller: seed 000's ClusterFederatedTrustDomain (its HTTPSSPIFFEAuthentication
    // spelling), with B's bundle as trustDomainBundle.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let kube = rt
        .block_on(sigil_fake_kube::FakeKube::start_tls())
        .expect("fake API server");
    sigil_e2e::controller::apply_crds(&kube);
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let mut ctl = sigil_e2e::controller::start_controller(
        dir.path(),
        "controller",
        &kubeconfig,
        &a.socket,
        "a.test",
        "demo",
        "",
    );
    let doc = b.cli(&["bundle", "show", "-format", "spiffe"]).ok().stdout;
    kube.apply(serde_json::json!({
        "apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterFederatedTrustDomain",
        "metadata": {"name": "cluster-b-federation"},
        "spec": {
            "trustDomain": "b.test",
            "bundleEndpointURL": url,
            "bundleEndpointProfile": {"type": "HTTPSSPIFFEAuthentication", "endpointSPIFFEID": "spiffe://b.test/spire/server"},
            "trustDomainBundle": doc,
        },
    }));
    let s = wait_until(
        "the controller's relationship fetched",
        Duration::from_secs(20),
        || {
            let out = a.cli(&[
                "federation",
                "show",
                "-trustDomain",
                "b.test",
                "-output",
                "json",
            ]);
            let s = out.success().then(|| out.json())?;
            (s["last_success"].as_i64().unwrap_or(0) > 0).then_some(s)
        },
    );
    assert_eq!(s["managed_by"], "sigil-controller/demo/");
    assert_eq!(
        s["https_spiffe"]["endpoint_spiffe_id"],
        "spiffe://b.test/spire/server"
    );
    assert!(
        ctl.log().contains("is accepted as"),
        "the alias is reported: {}",
        ctl.log()
    );
    // The resource goes: so does the relationship it made.
    kube.delete("ClusterFederatedTrustDomain", None, "cluster-b-federation");
    wait_until("the relationship to go", Duration::from_secs(20), || {
        let list = a.cli(&["federation", "list"]);
        list.stdout
            .contains("Found 0 federation relationships")
            .then_some(())
    });
    ctl.assert_running();
}

/// openssl, as an operator would make a Web PKI certificate: a test CA, and a serving
/// certificate for `localhost` signed by it. Returns (CA PEM path, cert path, key path).
fn web_pki(
    dir: &std::path::Path,
    tag: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let sh = |script: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    if !dir.join("ca.pem").exists() {
        sh(
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=sigil-test-ca 2>/dev/null",
        );
    }
    sh(&format!(
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {tag}.key -out {tag}.csr -subj /CN=localhost 2>/dev/null && \
         printf 'subjectAltName=DNS:localhost\\nextendedKeyUsage=serverAuth\\n' > {tag}.ext && \
         openssl x509 -req -in {tag}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {tag}.pem -days 1 -extfile {tag}.ext 2>/dev/null"
    ));
    (
        dir.join("ca.pem"),
        dir.join(format!("{tag}.pem")),
        dir.join(format!("{tag}.key")),
    )
}

/// The serial of the certificate a TLS endpoint presents (openssl s_client).
fn served_serial(port: u16) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `https_web`: A serves its bundle with a Web PKI certificate from files (re-read when they
/// change); B federates with it trusting a test CA through the system roots
/// (`SSL_CERT_FILE`), with no bootstrap bundle; a relationship whose URL host the
/// certificate does not name fails, visibly.
#[test]
fn https_web_endpoint_and_client() {
    let dir = TestDir::new("federation-web");
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).expect("pki dir");
    let (ca, cert, key) = web_pki(&pki, "endpoint");
    let pa = free_port();
    let a = Server::start_with_config_file(
        &dir.path().join("a"),
        "a.test",
        &format!(
            "server {{\n federation {{\n bundle_endpoint {{\n address = \"127.0.0.1\"\n port = {pa}\n profile \"https_web\" {{\n serving_cert_file {{\n cert_file_path = \"{}\"\n key_file_path = \"{}\"\n file_sync_interval = \"1s\"\n }}\n }}\n }}\n }}\n}}\n",
            cert.display(),
            key.display()
        ),
    );
    let web = |td: &str, host: &str| {
        format!(
            "server {{\n federation {{\n federates_with \"a.test\" {{\n bundle_endpoint_url = \"https://{host}:{pa}\"\n bundle_endpoint_profile \"https_web\" {{}}\n }}\n }}\n}}\n# {td}\n"
        )
    };
    let ca_s = ca.to_str().expect("utf-8");
    let b = Server::start_with_config_file_env(
        &dir.path().join("b"),
        "b.test",
        &web("b", "localhost"),
        &[("SSL_CERT_FILE", ca_s)],
    );
    let c = Server::start_with_config_file_env(
        &dir.path().join("c"),
        "c.test",
        &web("c", "127.0.0.1"),
        &[("SSL_CERT_FILE", ca_s)],
    );
    let s = wait_until("B's first fetch", Duration::from_secs(15), || {
        let s = show(&b, "a.test");
        (s["last_success"].as_i64().unwrap_or(0) > 0).then_some(s)
    });
    assert!(s.get("https_web").is_some(), "{s}");
    let pem_a = a.cli(&["bundle", "show"]).ok().stdout;
    let listed = b
        .cli(&["bundle", "list", "-id", "spiffe://a.test"])
        .ok()
        .stdout;
    assert_eq!(listed.trim(), pem_a.trim());
    // The certificate names localhost, not 127.0.0.1: C's fetch fails, and says so.
    let s = wait_until("C's failure", Duration::from_secs(15), || {
        let s = show(&c, "a.test");
        s["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
            .then_some(s)
    });
    assert!(
        s["last_error"].as_str().unwrap().contains("TLS handshake"),
        "{s}"
    );
    assert_eq!(s["last_success"], 0);

    // New files: served within file_sync_interval, and B still fetches.
    let before = served_serial(pa);
    let (_, cert2, key2) = web_pki(&pki, "renewed");
    std::fs::copy(&key2, &key).expect("key");
    std::fs::copy(&cert2, &cert).expect("cert");
    let after = wait_until(
        "the renewed certificate served",
        Duration::from_secs(10),
        || {
            let s = served_serial(pa);
            (!s.is_empty() && s != before).then_some(s)
        },
    );
    assert!(after.starts_with("serial="), "{after}");
    b.cli(&["federation", "refresh", "-id", "spiffe://a.test"])
        .ok();
    let t = std::time::Instant::now();
    wait_until(
        "B fetching through the renewed certificate",
        Duration::from_secs(15),
        || {
            let s = show(&b, "a.test");
            (s["last_error"] == ""
                && s["last_success"].as_i64().unwrap_or(0) as u64
                    >= std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs()
                        .saturating_sub(t.elapsed().as_secs() + 1))
            .then_some(())
        },
    );
}

/// Replaces every SDS validation context name `ROOTCA` in an Envoy config with `ALL` (the
/// agent's SPIFFE validator config with the own and the federated trust domains).
fn validate_with_all(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(sds)) = m.get_mut("validation_context_sds_secret_config")
                && sds.get("name") == Some(&Value::String("ROOTCA".into()))
            {
                sds.insert("name".into(), Value::String("ALL".into()));
            }
            m.values_mut().for_each(validate_with_all);
        }
        Value::Array(a) => a.iter_mut().for_each(validate_with_all),
        _ => {}
    }
}

/// Cross-domain mTLS between real Envoys over SDS, each with its own domain's agent (the
/// `ALL` validation context holds the federated domain), and Sigil's Wasm filter enforcing an
/// AuthorizationPolicy that names the other domain's principal.
#[test]
fn envoys_of_two_domains_and_a_policy_naming_the_other_domain() {
    use sigil_e2e::authz_filter::{install_wasm, wasm_http_filter};
    use sigil_e2e::envoy::{
        Envoy, bootstrap, http_get, mtls_client_listener_and_cluster, mtls_server_listener,
    };
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "Envoys run as other uids: run as root (CI does)"
    );
    let dir = TestDir::new("federation-envoy");
    let (pa, pb) = (free_port(), free_port());
    let a =
        Server::start_with_config_file(&dir.path().join("a"), "a.test", &config(pa, "b.test", pb));
    let b =
        Server::start_with_config_file(&dir.path().join("b"), "b.test", &config(pb, "a.test", pa));
    bootstrap_bundle(&b, &a, &dir, "b.test");
    bootstrap_bundle(&a, &b, &dir, "a.test");
    a.cli(&["federation", "refresh", "-id", "spiffe://b.test"])
        .ok();
    b.cli(&["federation", "refresh", "-id", "spiffe://a.test"])
        .ok();
    let (node_a, node_b) = (a.id("/node"), b.id("/node"));
    let agent_a = Agent::start(dir.path(), "agent-a", &a, &a.token(Some(&node_a)));
    let agent_b = Agent::start(dir.path(), "agent-b", &b, &b.token(Some(&node_b)));
    let (sleep, other, httpbin) = (
        "spiffe://a.test/ns/default/sa/sleep",
        "spiffe://a.test/ns/default/sa/other",
        "spiffe://b.test/ns/default/sa/httpbin",
    );
    a.create_entry(
        &node_a,
        sleep,
        &["unix:uid:1001"],
        &["-federatesWith", "spiffe://b.test"],
    );
    a.create_entry(
        &node_a,
        other,
        &["unix:uid:1002"],
        &["-federatesWith", "spiffe://b.test"],
    );
    b.create_entry(
        &node_b,
        httpbin,
        &["unix:uid:1003"],
        &["-federatesWith", "spiffe://a.test"],
    );
    for (s, td) in [(&a, "b.test"), (&b, "a.test")] {
        wait_until("the other domain's bundle", Duration::from_secs(15), || {
            (show(s, td)["last_success"].as_i64().unwrap_or(0) > 0).then_some(())
        });
    }

    // httpbin's Envoy (domain B): accepts both of A's identities at the TLS layer; the policy
    // allows only sleep.
    let wasm = install_wasm(dir.path());
    let policy = serde_json::json!({
        "trustDomain": "b.test",
        "policies": [{"name": "allow-sleep-from-a", "namespace": "default", "spec": {
            "action": "ALLOW",
            "rules": [{"from": [{"source": {"principals": ["a.test/ns/default/sa/sleep"]}}]}]
        }}]
    });
    let server_port = free_port();
    let mut listener = mtls_server_listener(
        server_port,
        &[sleep, other],
        vec![wasm_http_filter(&wasm, &policy)],
    );
    validate_with_all(&mut listener);
    let _server = Envoy::start(
        dir.path(),
        "envoy-httpbin",
        1003,
        &bootstrap("httpbin", &agent_b.socket, vec![listener], vec![]),
    )
    .expect("httpbin's Envoy goes LIVE with B's SVID and the ALL validation context");
    let client = |name: &str, uid: u32| {
        let port = free_port();
        let (mut l, mut c) = mtls_client_listener_and_cluster(port, server_port, &[httpbin]);
        validate_with_all(&mut l);
        validate_with_all(&mut c);
        let envoy = Envoy::start(
            dir.path(),
            name,
            uid,
            &bootstrap(name, &agent_a.socket, vec![l], vec![c]),
        )
        .unwrap_or_else(|e| panic!("{name}'s Envoy: {e:#}"));
        (envoy, port)
    };
    let (_sleep_envoy, sleep_port) = client("envoy-sleep", 1001);
    let (_other_envoy, other_port) = client("envoy-other", 1002);
    let r = wait_until(
        "sleep → httpbin across domains",
        Duration::from_secs(15),
        || {
            http_get(sleep_port, "/headers")
                .ok()
                .filter(|r| r.status == 200)
        },
    );
    let xfcc = r.header("x-seen-xfcc").unwrap_or_default().to_string();
    assert!(xfcc.contains(&format!("URI={sleep}")), "{xfcc}");
    assert!(xfcc.contains(&format!("By={httpbin}")), "{xfcc}");
    // Another identity of domain A: authenticated, refused by the policy.
    let r = http_get(other_port, "/headers").expect("request");
    assert_eq!(r.status, 403, "{r:?}");
}

/// Three trust domains: A federates with B and C, each of them with A. A's CA lives 30 s, so
/// its successor (a new root) appears about 15 s after start; B and C pick it up on their
/// own (a quarter of A's 20 s hint, never under 15 s), with no `federation refresh`.
#[test]
fn three_domains_follow_a_rotation_on_their_own() {
    let dir = TestDir::new("federation-three");
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let rel = |td: &str, port: u16| {
        format!(
            "federates_with \"{td}\" {{\n bundle_endpoint_url = \"https://127.0.0.1:{port}\"\n bundle_endpoint_profile \"https_spiffe\" {{\n endpoint_spiffe_id = \"spiffe://{td}/spire/server\"\n }}\n }}\n"
        )
    };
    let conf = |port: u16, ca_ttl: &str, rels: String| {
        format!(
            "server {{\n ca_ttl = \"{ca_ttl}\"\n default_x509_svid_ttl = \"5s\"\n federation {{\n bundle_endpoint {{\n address = \"127.0.0.1\"\n port = {port}\n refresh_hint = \"20s\"\n }}\n {rels} }}\n}}\n"
        )
    };
    let a = Server::start_with_config_file(
        &dir.path().join("a"),
        "a.test",
        &conf(
            pa,
            "30s",
            format!("{}{}", rel("b.test", pb), rel("c.test", pc)),
        ),
    );
    let b = Server::start_with_config_file(
        &dir.path().join("b"),
        "b.test",
        &conf(pb, "24h", rel("a.test", pa)),
    );
    let c = Server::start_with_config_file(
        &dir.path().join("c"),
        "c.test",
        &conf(pc, "24h", rel("a.test", pa)),
    );
    for (from, to, td) in [
        (&b, &a, "b.test"),
        (&c, &a, "c.test"),
        (&a, &b, "a.test"),
        (&a, &c, "a.test"),
    ] {
        bootstrap_bundle(from, to, &dir, td);
        to.cli(&["federation", "refresh", "-id", &format!("spiffe://{td}")])
            .ok();
    }
    let list = wait_until(
        "A's two relationships refreshed",
        Duration::from_secs(15),
        || {
            let out = a.cli(&["federation", "list", "-output", "json"]).ok();
            let v = out.json();
            let rels = v["federation_relationships"].as_array()?.clone();
            (rels.len() == 2
                && rels
                    .iter()
                    .all(|r| r["last_success"].as_i64().unwrap_or(0) > 0))
            .then_some(rels)
        },
    );
    assert_eq!(list[0]["trust_domain"], "b.test");
    assert_eq!(list[1]["trust_domain"], "c.test");

    // A's rotation: its bundle gains a root; B and C hold it without being asked. (Roots are
    // compared one by one: A's old root leaves its bundle when it expires, 30 s in.)
    let certs = |pem: &str| -> Vec<String> {
        pem.split("-----END CERTIFICATE-----")
            .map(|c| c.trim().to_string())
            .filter(|c| c.contains("BEGIN CERTIFICATE"))
            .collect()
    };
    let before = certs(&a.cli(&["bundle", "show"]).ok().stdout);
    let new_root = wait_until("A's successor root", Duration::from_secs(40), || {
        certs(&a.cli(&["bundle", "show"]).ok().stdout)
            .into_iter()
            .find(|c| !before.contains(c))
    });
    for s in [&b, &c] {
        wait_until(
            "A's new root on the other side",
            Duration::from_secs(40),
            || {
                let held = certs(
                    &s.cli(&["bundle", "list", "-id", "spiffe://a.test"])
                        .ok()
                        .stdout,
                );
                held.contains(&new_root).then_some(())
            },
        );
    }
}
