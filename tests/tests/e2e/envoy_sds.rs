//! Envoy SDS with a real Envoy: Envoys running as different uids take their identities from the
//! agent over SDS (Istio's bootstrap shape: cluster `sds-grpc`, secrets `default` and `ROOTCA`,
//! SAN matchers `spiffe://<td>/ns/<ns>/sa/<sa>`), do mTLS with each other, refuse an identity the
//! SAN matcher does not accept, and pick up rotated certificates without a restart. One pair
//! runs with Istio's own sidecar bootstrap: the `sds-grpc` cluster on the relative pipe
//! `./var/run/secrets/workload-spiffe-uds/socket`, as in the istio-proxy container with
//! `deploy/istio/`'s `spire` injection template (docs/istio.md).

use crate::{Env, TD};
use base64::Engine;
use sigil_e2e::envoy::{
    Envoy, bootstrap, free_port, http_get, istio_inbound_listener, istio_sidecar_bootstrap,
    mtls_client_listener_and_cluster, mtls_server_listener,
};
use sigil_e2e::harness::wait_until;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const FRONTEND_UID: u32 = 2101;
const BACKEND_UID: u32 = 2102;
const INTRUDER_UID: u32 = 2103;
const SLEEP_UID: u32 = 2104;
const HTTPBIN_UID: u32 = 2105;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "Envoys run as other uids: this test must run as root"
    );
}

struct Mesh {
    env: Env,
    backend: Envoy,
    frontend: Envoy,
    frontend_port: u16,
    backend_port: u16,
    frontend_id: String,
    backend_id: String,
}

/// A backend Envoy accepting only the frontend's identity, and a frontend Envoy that accepts
/// only the backend's identity as its upstream.
fn mesh(name: &str, extra_entry_flags: &[&str]) -> Mesh {
    require_root();
    let env = Env::start(name);
    let frontend_id = env.register(
        "/ns/default/sa/frontend",
        &[&format!("unix:uid:{FRONTEND_UID}")],
        extra_entry_flags,
    );
    let backend_id = env.register(
        "/ns/default/sa/backend",
        &[&format!("unix:uid:{BACKEND_UID}")],
        extra_entry_flags,
    );
    let backend_port = free_port();
    let frontend_port = free_port();
    let backend = Envoy::start(
        env.dir.path(),
        "backend",
        BACKEND_UID,
        &bootstrap(
            "backend",
            &env.agent.socket,
            vec![mtls_server_listener(backend_port, &[&frontend_id], vec![])],
            vec![],
        ),
    )
    .expect("starting the backend Envoy");
    let (l, c) = mtls_client_listener_and_cluster(frontend_port, backend_port, &[&backend_id]);
    let frontend = Envoy::start(
        env.dir.path(),
        "frontend",
        FRONTEND_UID,
        &bootstrap("frontend", &env.agent.socket, vec![l], vec![c]),
    )
    .expect("starting the frontend Envoy");
    Mesh {
        env,
        backend,
        frontend,
        frontend_port,
        backend_port,
        frontend_id,
        backend_id,
    }
}

#[test]
fn envoys_do_mtls_with_sds_identities_and_refuse_strangers() {
    let m = mesh("envoy-mtls", &[]);

    // The frontend's request reaches the backend over mTLS; the backend saw the frontend's
    // SPIFFE ID in the client certificate.
    let r = http_get(m.frontend_port, "/").expect("request through the frontend");
    assert_eq!(
        r.status,
        200,
        "frontend → backend failed: {r:?}\n{}",
        m.frontend.log()
    );
    let xfcc = r.header("x-seen-xfcc").unwrap_or_default();
    assert!(
        xfcc.contains(&format!("URI={}", m.frontend_id)),
        "backend did not see the frontend's SPIFFE ID: {xfcc:?}"
    );

    // Each Envoy holds its own SVID (from SDS `default`) and the bundle (`ROOTCA`).
    let certs = m.frontend.admin("/certs").unwrap().body;
    assert!(certs.contains(&m.frontend_id), "{certs}");
    assert!(
        !certs.contains(&m.backend_id),
        "the frontend must not hold the backend's SVID"
    );
    let certs = m.backend.admin("/certs").unwrap().body;
    assert!(certs.contains(&m.backend_id), "{certs}");

    // A third identity, registered and served by the agent, is refused by the backend's SAN
    // matcher.
    let intruder_id = m.env.register(
        "/ns/default/sa/intruder",
        &[&format!("unix:uid:{INTRUDER_UID}")],
        &[],
    );
    let intruder_port = free_port();
    let (l, c) = mtls_client_listener_and_cluster(intruder_port, m.backend_port, &[&m.backend_id]);
    let intruder = Envoy::start(
        m.env.dir.path(),
        "intruder",
        INTRUDER_UID,
        &bootstrap("intruder", &m.env.agent.socket, vec![l], vec![c]),
    )
    .expect("starting the intruder Envoy");
    let certs = intruder.admin("/certs").unwrap().body;
    assert!(
        certs.contains(&intruder_id),
        "the intruder has a valid SVID: {certs}"
    );
    let r = http_get(intruder_port, "/").expect("request through the intruder");
    assert_eq!(r.status, 503, "the backend must refuse the intruder: {r:?}");
    let stats = m.backend.admin("/stats?filter=ssl").unwrap().body;
    assert!(
        stats
            .lines()
            .any(|l| l.contains("ssl.fail_verify_san") && !l.trim_end().ends_with(" 0")),
        "the refusal must come from the SAN check: {stats}"
    );
    // And the frontend still works.
    assert_eq!(http_get(m.frontend_port, "/").unwrap().status, 200);
}

/// The seeds' sleep → httpbin flow with Istio's sidecar bootstrap against a real agent: each
/// Envoy reaches the agent only through `./var/run/secrets/workload-spiffe-uds/socket` from its
/// working directory, holds exactly `default` (its own SPIFFE ID) and `ROOTCA` (the server's
/// bundle, as Envoy's SPIFFE validator for the trust domain), which is what `istioctl
/// proxy-config secret` shows, and httpbin's sidecar sees sleep's ID in
/// `X-Forwarded-Client-Cert` (`By=` httpbin, `URI=` sleep), as the seed's check expects.
#[test]
fn istio_sidecar_bootstrap_gets_default_and_rootca_over_the_relative_socket() {
    require_root();
    let env = Env::start("envoy-istio");
    let sleep_id = env.register(
        "/ns/default/sa/sleep",
        &[&format!("unix:uid:{SLEEP_UID}")],
        &[],
    );
    let httpbin_id = env.register(
        "/ns/default/sa/httpbin",
        &[&format!("unix:uid:{HTTPBIN_UID}")],
        &[],
    );
    let inbound_port = free_port();
    let httpbin = Envoy::start_istio_sidecar(
        env.dir.path(),
        "httpbin",
        HTTPBIN_UID,
        &env.agent.socket,
        &istio_sidecar_bootstrap(
            "httpbin-5b4c6d8f9-x2k7q",
            "default",
            "httpbin",
            vec![istio_inbound_listener(inbound_port, TD)],
            vec![],
        ),
    )
    .expect("starting httpbin's sidecar");
    let outbound_port = free_port();
    let (l, c) = mtls_client_listener_and_cluster(outbound_port, inbound_port, &[&httpbin_id]);
    let sleep = Envoy::start_istio_sidecar(
        env.dir.path(),
        "sleep",
        SLEEP_UID,
        &env.agent.socket,
        &istio_sidecar_bootstrap(
            "sleep-7f8d9c6b5-q9z4w",
            "default",
            "sleep",
            vec![l],
            vec![c],
        ),
    )
    .expect("starting sleep's sidecar");

    // The bootstrap Envoy runs is Istio's: the SDS cluster is the relative pipe.
    let dump: serde_json::Value =
        serde_json::from_str(&sleep.admin("/config_dump").unwrap().body).unwrap();
    let sds = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|c| {
            c["bootstrap"]["static_resources"]["clusters"]
                .as_array()?
                .iter()
                .find(|c| c["name"] == "sds-grpc")
                .cloned()
        })
        .expect("the bootstrap's sds-grpc cluster");
    assert_eq!(
        sds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["pipe"]["path"],
        "./var/run/secrets/workload-spiffe-uds/socket"
    );

    // What `istioctl proxy-config secret` shows: `default` with the workload's SPIFFE ID,
    // `ROOTCA` with the server's bundle for the trust domain.
    let bundle = crate::pem_certs(&env.server.bundle_pem());
    for (envoy, id) in [(&sleep, &sleep_id), (&httpbin, &httpbin_id)] {
        let secrets = envoy.active_secrets().unwrap();
        let mut names: Vec<&str> = secrets.iter().map(|(n, _)| n.as_str()).collect();
        names.sort();
        assert_eq!(names, ["ROOTCA", "default"], "{secrets:?}");
        let secret = |name: &str| &secrets.iter().find(|(n, _)| n == name).unwrap().1;
        let chain =
            base64_pem(&secret("default")["tls_certificate"]["certificate_chain"]["inline_bytes"]);
        let leaf = crate::pem_certs(&chain).remove(0);
        assert_eq!(
            sigil_spiffe::x509::spiffe_id_of_cert(&leaf)
                .unwrap()
                .to_string(),
            *id
        );
        let validator = &secret("ROOTCA")["validation_context"]["custom_validator_config"];
        assert_eq!(validator["name"], "envoy.tls.cert_validator.spiffe");
        let domains = validator["typed_config"]["trust_domains"]
            .as_array()
            .unwrap();
        assert_eq!(domains.len(), 1, "{domains:?}");
        assert_eq!(domains[0]["name"], TD);
        let roots = crate::pem_certs(&base64_pem(&domains[0]["trust_bundle"]["inline_bytes"]));
        assert_eq!(roots, bundle, "ROOTCA must be the server's bundle");
        // And Envoy loaded both: /certs lists the SVID and, for the validation context, the
        // SPIFFE validator's CA of the trust domain.
        let certs: serde_json::Value =
            serde_json::from_str(&envoy.admin("/certs").unwrap().body).unwrap();
        let loaded = certs["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["cert_chain"][0]["subject_alt_names"][0]["uri"] == id.as_str())
            .unwrap_or_else(|| panic!("/certs has no {id}: {certs}"));
        let ca = loaded["ca_cert"].as_array().expect("ca_cert");
        assert!(
            !ca.is_empty()
                && ca.iter().all(|c| c["path"] == format!("{TD}: <inline>")
                    && c["subject_alt_names"][0]["uri"] == format!("spiffe://{TD}")),
            "ROOTCA's CA in /certs: {certs}"
        );
    }

    // sleep → httpbin over mTLS: httpbin's sidecar forwards sleep's identity.
    let r = http_get(outbound_port, "/headers").expect("request through sleep's sidecar");
    assert_eq!(r.status, 200, "{r:?}\n{}\n{}", sleep.log(), httpbin.log());
    let xfcc = r.header("x-seen-xfcc").unwrap_or_default();
    assert!(
        xfcc.contains(&format!("By={httpbin_id};")),
        "X-Forwarded-Client-Cert without By=httpbin: {xfcc:?}"
    );
    assert!(
        xfcc.contains(&format!("URI={sleep_id}")),
        "X-Forwarded-Client-Cert without URI=sleep: {xfcc:?}"
    );
}

/// PEM text from Envoy's base64 `inline_bytes`.
fn base64_pem(v: &serde_json::Value) -> String {
    let b64 = v.as_str().expect("inline_bytes");
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64"),
    )
    .expect("PEM is text")
}

#[tokio::test]
async fn pilot_agent_style_one_second_dial() {
    require_root();
    let env = Env::start("envoy-dial");
    // pilot-agent dials the socket with a 1 s timeout before it points Envoy at it.
    let started = Instant::now();
    let ch = tokio::time::timeout(
        Duration::from_secs(1),
        sigil_e2e::workload::channel(&env.agent.socket),
    )
    .await
    .expect("gRPC dial did not complete within 1 s")
    .expect("gRPC dial failed");
    assert!(started.elapsed() < Duration::from_secs(1));
    drop(ch);
    assert!(env.agent.socket.exists(), "the socket is still there");
}

#[test]
fn rotation_reaches_envoy_without_restart_and_requests_keep_working() {
    // 10 s SVIDs: the agent rotates them at about 5 s.
    let m = mesh("envoy-rotation", &["-x509SVIDTTL", "10"]);
    let first = m.frontend.cert_serials().unwrap();
    assert!(!first.is_empty(), "no certificates in /certs");

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed, port) = (stop.clone(), ok.clone(), failed.clone(), m.frontend_port);
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match http_get(port, "/") {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("{other:?}"));
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            errors
        })
    };

    // Both Envoys get new serials (two rotations each, to be sure pushes keep coming).
    let pid_before = m.frontend.admin("/server_info").unwrap().body;
    let mut seen = first.clone();
    for round in 0..2 {
        let prev = seen.clone();
        seen = wait_until(
            &format!("rotation {round} to reach the frontend Envoy"),
            Duration::from_secs(30),
            || {
                let now = m.frontend.cert_serials().ok()?;
                (now != prev && !now.is_empty()).then_some(now)
            },
        );
    }
    let backend_first = m.backend.cert_serials().unwrap();
    wait_until(
        "rotation to reach the backend Envoy",
        Duration::from_secs(30),
        || {
            let now = m.backend.cert_serials().ok()?;
            (now != backend_first).then_some(())
        },
    );
    stop.store(true, Ordering::Relaxed);
    let errors = load.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 20, "too few requests made during rotation: {ok}");
    assert_eq!(failed, 0, "requests failed during rotation: {errors:?}");
    // Same Envoy process (no restart): uptime kept growing, the hot-restart epoch is unchanged.
    let after = m.frontend.admin("/server_info").unwrap().body;
    let epoch = |s: &str| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(s).unwrap()["command_line_options"]["restart_epoch"].clone()
    };
    assert_eq!(epoch(&pid_before), epoch(&after));
}
