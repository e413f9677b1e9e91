//! The Envoy part of `cargo xtask demo`: two real Envoys take their identities from the agent
//! over SDS (Istio's names `default` and `ROOTCA`) and do mTLS; a third Envoy with a valid but
//! unlisted identity is refused by the backend's SAN matcher.
//!
//! ```text
//! sigil-demo-envoy -socketPath S -dir D -frontend ID -frontendUid N -backend ID -backendUid M
//! ```
//! Must run as root (the Envoys run as the workloads' uids). Exits 0 only if the mTLS request
//! succeeds with the frontend's SPIFFE ID seen by the backend and the impostor is refused.

use anyhow::{Context, Result, bail};
use sigil_e2e::envoy::{
    Envoy, bootstrap, free_port, http_get, mtls_client_listener_and_cluster, mtls_server_listener,
};
use sigil_flags::FlagSet;
use std::path::PathBuf;

fn main() {
    let code = match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn serials(e: &Envoy) -> String {
    e.cert_serials()
        .map(|s| s.join(", "))
        .unwrap_or_else(|e| format!("? ({e})"))
}

fn run() -> Result<()> {
    let fs = FlagSet::new()
        .value("socketPath", "Agent socket (Workload API + SDS)")
        .value("dir", "Working directory for the Envoys")
        .value("frontend", "Frontend SPIFFE ID")
        .value("frontendUid", "Frontend uid")
        .value("backend", "Backend SPIFFE ID")
        .value("backendUid", "Backend uid");
    let p = fs.parse(std::env::args().skip(1))?;
    p.no_args()?;
    let socket = PathBuf::from(p.required("socketPath")?);
    let dir = PathBuf::from(p.required("dir")?);
    let frontend = p.required("frontend")?.to_string();
    let backend = p.required("backend")?.to_string();
    let frontend_uid: u32 = p
        .parse_opt("frontendUid")?
        .context("-frontendUid is required")?;
    let backend_uid: u32 = p
        .parse_opt("backendUid")?
        .context("-backendUid is required")?;
    std::fs::create_dir_all(&dir)?;

    let backend_port = free_port();
    let b = Envoy::start(
        &dir,
        "envoy-backend",
        backend_uid,
        &bootstrap(
            "backend",
            &socket,
            vec![mtls_server_listener(backend_port, &[&frontend], vec![])],
            vec![],
        ),
    )?;
    println!(
        "    backend Envoy (uid {backend_uid}) on 127.0.0.1:{backend_port}: SDS `default` + `ROOTCA` \
         from {}; accepts only {frontend}",
        socket.display()
    );
    println!("      certificates (serials): {}", serials(&b));

    let frontend_port = free_port();
    let (l, c) = mtls_client_listener_and_cluster(frontend_port, backend_port, &[&backend]);
    let f = Envoy::start(
        &dir,
        "envoy-frontend",
        frontend_uid,
        &bootstrap("frontend", &socket, vec![l], vec![c]),
    )?;
    println!(
        "    frontend Envoy (uid {frontend_uid}) on 127.0.0.1:{frontend_port}: forwards over mTLS, \
         requires the upstream to be {backend}"
    );
    println!("      certificates (serials): {}", serials(&f));

    let r = http_get(frontend_port, "/").context("request through the frontend Envoy")?;
    let xfcc = r.header("x-seen-xfcc").unwrap_or_default().to_string();
    println!("    $ curl http://127.0.0.1:{frontend_port}/");
    println!(
        "      HTTP {} — backend saw client certificate: {xfcc}",
        r.status
    );
    if r.status != 200 || !xfcc.contains(&format!("URI={frontend}")) {
        bail!("the frontend's request should have reached the backend as {frontend}");
    }

    // An Envoy with the backend's own (valid) identity is not on the backend's allow-list.
    let impostor_port = free_port();
    let (l, c) = mtls_client_listener_and_cluster(impostor_port, backend_port, &[&backend]);
    let _i = Envoy::start(
        &dir,
        "envoy-impostor",
        backend_uid,
        &bootstrap("impostor", &socket, vec![l], vec![c]),
    )?;
    let r = http_get(impostor_port, "/").context("request through the impostor Envoy")?;
    println!(
        "    an Envoy as uid {backend_uid} (identity {backend}) tries the same: HTTP {} — {}",
        r.status,
        r.body.trim()
    );
    if r.status != 503 {
        bail!("the backend should have refused {backend}");
    }
    Ok(())
}
