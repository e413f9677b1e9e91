//! Sigil's Wasm authorization filter in a real Envoy: an mTLS listener whose SVID and bundle
//! come from the agent over SDS, with the HTTP filter (and a TCP listener with the network
//! filter, in front of an echo server). Clients are this process, presenting SVIDs fetched from
//! the agent: an allowed principal gets 200 (or its echo), a denied one 403 `RBAC: access
//! denied` with the deciding policy in a header (or a closed connection), a client without a
//! certificate is denied, and a configuration the filter refuses stops Envoy from starting.

use crate::Env;
use serde_json::{Value, json};
use sigil_e2e::authz_filter::{
    POLICY_HEADER, client_config, echo_server, http_listener, https_get, install_wasm,
    local_cluster, server_tls, tcp_listener, tls_echo, wasm_http_filter, wasm_network_filter,
};
use sigil_e2e::envoy::{Envoy, bootstrap, envoy_bin, free_port};
use sigil_e2e::harness::{Proc, chmod, wait_for_svid, wait_until};
use sigil_e2e::workload::Svid;
use std::process::Command;
use std::time::{Duration, Instant};

/// The uid the Envoy runs as: its SDS identity is the entry for this uid.
const ENVOY_UID: u32 = 2201;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "Envoy runs as another uid: this test must run as root"
    );
}

/// The policies of these tests, in the plugin's JSON: `sleep` (namespace default) is allowed
/// on the listener's `port` (ports are strings, as in Istio), anything from namespace `foo` is
/// denied by `deny-foo`, everyone else matches no ALLOW.
fn filter_config(port: u16) -> Value {
    json!({
        "trustDomain": crate::TD,
        "policies": [
            {"name": "allow-sleep", "namespace": "default", "spec": {
                "action": "ALLOW",
                "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}],
                           "to": [{"operation": {"ports": [port.to_string()]}}]}]
            }},
            {"name": "deny-foo", "namespace": "default", "spec": {
                "action": "DENY",
                "rules": [{"from": [{"source": {"namespaces": ["foo"]}}]}]
            }}
        ]
    })
}

struct Mesh {
    _env: Env,
    envoy: Envoy,
    http_port: u16,
    tcp_port: u16,
    envoy_id: String,
    sleep: Svid,
    foo_app: Svid,
    stranger: Svid,
}

impl Mesh {
    fn start(name: &str) -> Self {
        Self::start_with(name, filter_config)
    }

    /// A mesh whose filters get `config(listener port)`.
    fn start_with(name: &str, config: fn(u16) -> Value) -> Self {
        require_root();
        let env = Env::start(name);
        let envoy_id = env.register(
            "/ns/default/sa/backend",
            &[&format!("unix:uid:{ENVOY_UID}")],
            &[],
        );
        // The clients are this process: three identities for its uid.
        let me = Env::my_uid();
        let sleep_id = env.register("/ns/default/sa/sleep", &[&me], &[]);
        let foo_id = env.register("/ns/foo/sa/app", &[&me], &[]);
        let stranger_id = env.register("/ns/bar/sa/stranger", &[&me], &[]);
        let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
        let [sleep, foo_app, stranger] = [&sleep_id, &foo_id, &stranger_id]
            .map(|id| rt.block_on(wait_for_svid(&env.agent.socket, id)));

        let wasm = install_wasm(env.dir.path());
        let http_port = free_port();
        let tcp_port = free_port();
        let echo_port = echo_server();
        let bundle = env.dir.path().join("bundle.pem");
        std::fs::write(&bundle, env.server.bundle_pem()).expect("writing the bundle");
        chmod(&bundle, 0o644);
        let listeners = vec![
            http_listener(
                "authz_http",
                http_port,
                server_tls(&bundle),
                vec![wasm_http_filter(&wasm, &config(http_port))],
            ),
            tcp_listener(
                "authz_tcp",
                tcp_port,
                server_tls(&bundle),
                vec![wasm_network_filter(&wasm, &config(tcp_port))],
                "echo",
            ),
        ];
        let envoy = Envoy::start(
            env.dir.path(),
            "envoy",
            ENVOY_UID,
            &bootstrap(
                "authz",
                &env.agent.socket,
                listeners,
                vec![local_cluster("echo", echo_port)],
            ),
        )
        .expect("starting Envoy with the filter");
        Self {
            _env: env,
            envoy,
            http_port,
            tcp_port,
            envoy_id,
            sleep,
            foo_app,
            stranger,
        }
    }

    fn client(&self, svid: Option<&Svid>) -> rustls::ClientConfig {
        client_config(svid, &self.sleep.bundle, &self.envoy_id).expect("client TLS config")
    }

    fn stat(&self, name: &str) -> Option<u64> {
        let stats = self.envoy.admin("/stats").ok()?.body;
        let key = format!("wasmcustom.{name}: ");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Waits until Envoy's log has a line containing every one of `parts`.
    fn assert_logged(&self, parts: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.envoy.log();
            if log.lines().any(|l| parts.iter().all(|p| l.contains(p))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with all of {parts:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the counter `name` reads `want` (the filter flushes counts every 250 ms).
    fn assert_stat(&self, name: &str, want: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.stat(name);
            if got == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "stat {name}: {got:?}, want {want}\n{}",
                self.envoy
                    .admin("/stats")
                    .map(|r| r.body)
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn http_filter_allows_denies_and_fails_closed() {
    let m = Mesh::start("wasm-http");

    let r = https_get(m.http_port, m.client(Some(&m.sleep)), "/anything")
        .unwrap_or_else(|e| panic!("allowed request failed: {e:#}\n{}", m.envoy.log()));
    assert_eq!(r.status, 200, "{r:?}\n{}", m.envoy.log());
    assert_eq!(r.body, "hello\n");

    // A DENY policy matched: 403 with Envoy RBAC's body, and the policy named.
    let r = https_get(m.http_port, m.client(Some(&m.foo_app)), "/anything").expect("request");
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.body, "RBAC: access denied");
    assert_eq!(r.header(POLICY_HEADER), Some("default/deny-foo"), "{r:?}");

    // No ALLOW policy matched.
    let r = https_get(m.http_port, m.client(Some(&m.stranger)), "/").expect("request");
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.body, "RBAC: access denied");
    assert_eq!(r.header(POLICY_HEADER), Some("default-deny"), "{r:?}");

    // No client certificate: the handshake succeeds (optional client certs) and the filter
    // fails closed.
    let r = https_get(m.http_port, m.client(None), "/").expect("request without a client cert");
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.body, "RBAC: access denied");
    assert_eq!(r.header(POLICY_HEADER), Some("unauthenticated"), "{r:?}");

    // Envoy stats count every decision, per policy.
    m.assert_stat("sigil_authz.http.allowed", 1);
    m.assert_stat("sigil_authz.http.denied", 3);
    m.assert_stat("sigil_authz.http.unauthenticated", 1);
    m.assert_stat("sigil_authz.http.default_deny", 1);
    m.assert_stat("sigil_authz.http.policy.default.allow-sleep.allow", 1);
    m.assert_stat("sigil_authz.http.policy.default.deny-foo.deny", 1);
}

/// [`filter_config`] plus an AUDIT policy on namespace `foo` and a dry-run DENY of `sleep`:
/// neither may change a decision.
fn audited_config(port: u16) -> Value {
    let mut cfg = filter_config(port);
    let policies = cfg["policies"]
        .as_array_mut()
        .expect("filter_config has a policies array");
    policies.push(
        json!({"name": "audit-foo", "namespace": "default", "spec": {
            "action": "AUDIT",
            "rules": [{"from": [{"source": {"namespaces": ["foo"]}}]}]
        }}),
    );
    policies.push(
        json!({"name": "dry-deny-sleep", "namespace": "default", "dryRun": true,
        "spec": {
            "action": "DENY",
            "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}]}]
        }}),
    );
    cfg
}

#[test]
fn audit_and_dry_run_log_without_enforcing() {
    let m = Mesh::start_with("wasm-audit", audited_config);
    let sleep = format!("spiffe://{}/ns/default/sa/sleep", crate::TD);
    let foo = format!("spiffe://{}/ns/foo/sa/app", crate::TD);

    // The dry-run DENY matches sleep: logged and counted, and sleep is still allowed.
    let r = https_get(m.http_port, m.client(Some(&m.sleep)), "/anything")
        .unwrap_or_else(|e| panic!("allowed request failed: {e:#}\n{}", m.envoy.log()));
    assert_eq!(r.status, 200, "{r:?}\n{}", m.envoy.log());
    m.assert_logged(&[
        "dry-run: would deny GET /anything",
        &sleep,
        "default/dry-deny-sleep",
        "enforced: allow",
    ]);
    m.assert_stat("sigil_authz.http.dry_run_denied", 1);
    m.assert_stat(
        "sigil_authz.http.policy.default.dry-deny-sleep.dry_run_deny",
        1,
    );

    // AUDIT matches foo: logged and counted; the DENY policy still decides.
    let r = https_get(m.http_port, m.client(Some(&m.foo_app)), "/x").expect("request");
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.header(POLICY_HEADER), Some("default/deny-foo"), "{r:?}");
    m.assert_logged(&[
        "AUDIT policy default/audit-foo matched GET /x",
        &foo,
        "decision: deny",
    ]);
    m.assert_stat("sigil_authz.http.policy.default.audit-foo.audit", 1);
    // The dry-run policies' verdict on foo (no dry-run policy matched it): allow.
    m.assert_stat("sigil_authz.http.dry_run_allowed", 1);
    m.assert_stat("sigil_authz.http.allowed", 1);
    m.assert_stat("sigil_authz.http.denied", 1);

    // The same through the TCP filter: audited and dry-run, never enforced.
    let got = tls_echo(m.tcp_port, m.client(Some(&m.sleep)), b"ping\n")
        .unwrap_or_else(|e| panic!("allowed connection failed: {e:#}\n{}", m.envoy.log()));
    assert_eq!(got, b"ping\n");
    m.assert_stat("sigil_authz.tcp.dry_run_denied", 1);
    m.assert_stat(
        "sigil_authz.tcp.policy.default.dry-deny-sleep.dry_run_deny",
        1,
    );
    assert!(tls_echo(m.tcp_port, m.client(Some(&m.foo_app)), b"ping\n").is_err());
    m.assert_stat("sigil_authz.tcp.policy.default.audit-foo.audit", 1);
}

#[test]
fn tcp_filter_allows_denies_and_fails_closed() {
    let m = Mesh::start("wasm-tcp");

    let got = tls_echo(m.tcp_port, m.client(Some(&m.sleep)), b"ping\n")
        .unwrap_or_else(|e| panic!("allowed connection failed: {e:#}\n{}", m.envoy.log()));
    assert_eq!(got, b"ping\n");

    for (who, svid) in [
        ("deny-foo", Some(&m.foo_app)),
        ("stranger", Some(&m.stranger)),
        ("no certificate", None),
    ] {
        let r = tls_echo(m.tcp_port, m.client(svid), b"ping\n");
        assert!(r.is_err(), "{who}: denied connection echoed {r:?}");
    }
    m.assert_stat("sigil_authz.tcp.allowed", 1);
    m.assert_stat("sigil_authz.tcp.denied", 3);
    m.assert_stat("sigil_authz.tcp.unauthenticated", 1);
    m.assert_stat("sigil_authz.tcp.policy.default.deny-foo.deny", 1);
}

#[test]
fn invalid_configuration_stops_envoy() {
    require_root();
    let env = Env::start("wasm-bad-config");
    let wasm = install_wasm(env.dir.path());
    let bundle = env.dir.path().join("bundle.pem");
    std::fs::write(&bundle, env.server.bundle_pem()).expect("writing the bundle");
    for (name, bad, filter) in [
        (
            "http",
            json!({"policies": [{"name": "jwt", "namespace": "default", "spec": {
                "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}}]}),
            true,
        ),
        ("tcp", json!({"policies": "not a list"}), false),
    ] {
        let port = free_port();
        let listener = if filter {
            http_listener(
                "bad",
                port,
                server_tls(&bundle),
                vec![wasm_http_filter(&wasm, &bad)],
            )
        } else {
            tcp_listener(
                "bad",
                port,
                server_tls(&bundle),
                vec![wasm_network_filter(&wasm, &bad)],
                "echo",
            )
        };
        let dir = env.dir.path().join(format!("envoy-{name}"));
        std::fs::create_dir_all(&dir).expect("envoy dir");
        let config = dir.join("envoy.json");
        let boot = bootstrap(
            name,
            &env.agent.socket,
            vec![listener],
            vec![local_cluster("echo", 9)],
        );
        std::fs::write(&config, serde_json::to_vec_pretty(&boot).expect("json")).expect("write");
        let mut cmd = Command::new(envoy_bin().expect("envoy binary"));
        cmd.arg("-c").arg(&config).args([
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "-l",
            "info",
        ]);
        let mut envoy = Proc::spawn(&format!("envoy {name}"), cmd, dir.join("envoy.log"));
        let status = envoy
            .wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{name}: Envoy kept running with a bad filter config"));
        assert!(!status.success(), "{name}: Envoy exited 0");
        let log = envoy.log();
        assert!(
            log.contains("sigil-authz: invalid configuration, refusing to start"),
            "{name}: no refusal from the filter:\n{log}"
        );
        assert!(
            log.contains("Failed to configure base Wasm plugin"),
            "{name}: Envoy did not report the plugin failed to configure:\n{log}"
        );
        if filter {
            assert!(log.contains("requestPrincipals"), "{log}");
        }
    }
}

#[test]
fn example_envoy_configs_are_valid() {
    let wasm = sigil_e2e::authz_filter::wasm_artifact();
    let dir = tempfile::tempdir().expect("temp dir");
    let examples = sigil_e2e::harness::workspace_root().join("envoy-filter-wasm/examples");
    for name in ["envoy-http.yaml", "envoy-tcp.yaml"] {
        let text = std::fs::read_to_string(examples.join(name)).expect("example config");
        let text = text.replace(
            "/usr/local/lib/sigil/sigil_authz_filter.wasm",
            &wasm.display().to_string(),
        );
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        let out = Command::new(envoy_bin().expect("envoy binary"))
            .args(["--mode", "validate", "-c"])
            .arg(&path)
            .output()
            .expect("running envoy --mode validate");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{name} is not a valid Envoy config:\n{log}"
        );
    }
}

/// Writes an LDS file atomically (Envoy watches the file's directory for moves).
fn write_lds(path: &std::path::Path, version: u32, listener: &Value) {
    let lds = json!({
        "version_info": version.to_string(),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
            "name": listener["name"],
            "address": listener["address"],
            "filter_chains": listener["filter_chains"]
        }]
    });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&lds).expect("json")).expect("write lds");
    chmod(&tmp, 0o644);
    std::fs::rename(&tmp, path).expect("rename lds");
}

#[test]
fn policy_update_through_lds_applies_without_restart() {
    require_root();
    let env = Env::start("wasm-lds");
    let envoy_id = env.register(
        "/ns/default/sa/backend",
        &[&format!("unix:uid:{ENVOY_UID}")],
        &[],
    );
    let me = Env::my_uid();
    let sleep_id = env.register("/ns/default/sa/sleep", &[&me], &[]);
    let foo_id = env.register("/ns/foo/sa/app", &[&me], &[]);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let [sleep, foo] =
        [&sleep_id, &foo_id].map(|id| rt.block_on(wait_for_svid(&env.agent.socket, id)));
    let wasm = install_wasm(env.dir.path());
    let bundle = env.dir.path().join("bundle.pem");
    std::fs::write(&bundle, env.server.bundle_pem()).expect("writing the bundle");
    chmod(&bundle, 0o644);
    let port = free_port();
    let listener = |allowed: &str| {
        let cfg = json!({"trustDomain": crate::TD, "policies": [
            {"name": "allow", "namespace": "default", "spec": {
                "rules": [{"from": [{"source": {"principals": [allowed]}}]}]}}]});
        http_listener(
            "authz_http",
            port,
            server_tls(&bundle),
            vec![wasm_http_filter(&wasm, &cfg)],
        )
    };
    let lds_dir = env.dir.path().join("lds");
    std::fs::create_dir_all(&lds_dir).expect("lds dir");
    let lds = lds_dir.join("lds.json");
    write_lds(&lds, 1, &listener("cluster.local/ns/default/sa/sleep"));
    let mut boot = bootstrap("authz-lds", &env.agent.socket, vec![], vec![]);
    boot["dynamic_resources"] = json!({
        "lds_config": {"path_config_source": {"path": lds}, "resource_api_version": "V3"}
    });
    let envoy = Envoy::start(env.dir.path(), "envoy", ENVOY_UID, &boot).expect("starting Envoy");
    let client = |svid: &Svid| client_config(Some(svid), &sleep.bundle, &envoy_id).expect("tls");
    let status = |svid: &Svid| {
        https_get(port, client(svid), "/")
            .map(|r| r.status)
            .unwrap_or(0)
    };
    wait_until("the first policy", Duration::from_secs(20), || {
        (status(&sleep) == 200).then_some(())
    });
    assert_eq!(status(&foo), 403);

    // The new policy allows foo only: Envoy builds a new listener (a new plugin root in the
    // same VM), which replaces the old configuration.
    write_lds(&lds, 2, &listener("cluster.local/ns/foo/sa/app"));
    wait_until("the updated policy", Duration::from_secs(20), || {
        (status(&foo) == 200).then_some(())
    });
    assert_eq!(status(&sleep), 403, "{}", envoy.log());
}
