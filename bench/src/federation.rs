//! Federation (issue 14): time from a root rotation in trust domain A until a workload of
//! trust domain B holds A's new root on its open Workload API stream, with A's bundle endpoint
//! serving a 60 s refresh hint (B fetches at hint/4). Target: ≤ hint/4 + 1 s.
//!
//! A's CA lives 60 s, so its successor (a new root, in the bundle at once) is prepared about
//! every 30 s; the rotation time is when A's bundle changed (its admin API polled every
//! 50 ms), the arrival when B's agent pushed a Workload API message whose federated bundle for
//! A holds the new root.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sigil_proto::workload::X509svidRequest;

use crate::{Proc, Rows, client, free_port, run_cli, verdict, wait_for};

const HINT_SECS: u64 = 60;

fn start(bin: &Path, dir: &Path, td: &str, config: &str) -> Result<(Proc, PathBuf, u16)> {
    std::fs::create_dir_all(dir)?;
    let conf = dir.join("server.conf");
    std::fs::write(&conf, config)?;
    let admin = dir.join("admin.sock");
    let port = free_port()?;
    let p = Proc(
        Command::new(bin)
            .args(["run", "-trustDomain", td, "-bindAddress", "127.0.0.1"])
            .args(["-serverPort", &port.to_string(), "-logLevel", "warn"])
            .arg("-config")
            .arg(&conf)
            .arg("-dataDir")
            .arg(dir.join("data"))
            .arg("-socketPath")
            .arg(&admin)
            .stdout(Stdio::null())
            .spawn()?,
    );
    Ok((p, admin, port))
}

fn federation_conf(own_port: u16, other: Option<(&str, u16)>, ca_ttl: &str) -> String {
    let fw = other
        .map(|(td, port)| {
            format!(
                "federates_with \"{td}\" {{\n bundle_endpoint_url = \"https://127.0.0.1:{port}\"\n bundle_endpoint_profile \"https_spiffe\" {{\n endpoint_spiffe_id = \"spiffe://{td}/spire/server\"\n }}\n }}\n"
            )
        })
        .unwrap_or_default();
    format!(
        "server {{\n ca_ttl = \"{ca_ttl}\"\n default_x509_svid_ttl = \"10s\"\n federation {{\n bundle_endpoint {{\n address = \"127.0.0.1\"\n port = {own_port}\n refresh_hint = \"{HINT_SECS}s\"\n }}\n {fw} }}\n}}\n"
    )
}

/// The X.509 roots (base64 DER in `x5c`) of a SPIFFE bundle document.
fn roots(doc: &str) -> Result<Vec<String>> {
    let v: Value = serde_json::from_str(doc)?;
    Ok(v["keys"]
        .as_array()
        .context("keys")?
        .iter()
        .filter(|k| k["use"] == "x509-svid")
        .filter_map(|k| k["x5c"][0].as_str().map(str::to_string))
        .collect())
}

pub async fn rows(
    bin_dir: &Path,
    quick: bool,
    rows: &mut Rows,
    json_out: &mut serde_json::Map<String, Value>,
) -> Result<()> {
    let server = bin_dir.join("sigil-server");
    let agent_bin = bin_dir.join("sigil-agent");
    let tmp = tempfile::tempdir()?;
    let (pa, pb) = (free_port()?, free_port()?);
    let (_a, admin_a, _) = start(
        &server,
        &tmp.path().join("a"),
        "a.bench",
        &federation_conf(pa, None, "60s"),
    )?;
    let (_b, admin_b, port_b) = start(
        &server,
        &tmp.path().join("b"),
        "b.bench",
        &federation_conf(pb, Some(("a.bench", pa)), "24h"),
    )?;
    let (a_s, b_s) = (
        admin_a.to_string_lossy().to_string(),
        admin_b.to_string_lossy().to_string(),
    );
    for s in [&a_s, &b_s] {
        wait_for("server", || {
            run_cli(&server, &["healthcheck", "-socketPath", s]).is_ok()
        })
        .await?;
    }
    // B's bootstrap bundle for A, then B's agent and a workload entry federating with A.
    let doc = run_cli(
        &server,
        &["bundle", "show", "-format", "spiffe", "-socketPath", &a_s],
    )?;
    let boot = tmp.path().join("a.json");
    std::fs::write(&boot, &doc)?;
    run_cli(
        &server,
        &[
            "bundle",
            "set",
            "-format",
            "spiffe",
            "-id",
            "spiffe://a.bench",
            "-path",
            boot.to_str().context("path")?,
            "-socketPath",
            &b_s,
        ],
    )?;
    run_cli(
        &server,
        &[
            "federation",
            "refresh",
            "-id",
            "spiffe://a.bench",
            "-socketPath",
            &b_s,
        ],
    )?;
    let node = "spiffe://b.bench/node";
    let token = run_cli(
        &server,
        &["token", "generate", "-spiffeID", node, "-socketPath", &b_s],
    )?
    .trim()
    .trim_start_matches("Token: ")
    .to_string();
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    run_cli(
        &server,
        &[
            "entry",
            "create",
            "-parentID",
            node,
            "-spiffeID",
            "spiffe://b.bench/w",
            "-selector",
            &format!("unix:uid:{uid}"),
            "-federatesWith",
            "spiffe://a.bench",
            "-socketPath",
            &b_s,
        ],
    )?;
    let bundle_b = tmp.path().join("b.pem");
    std::fs::write(
        &bundle_b,
        run_cli(&server, &["bundle", "show", "-socketPath", &b_s])?,
    )?;
    let api = tmp.path().join("agent.sock");
    let _agent = Proc(
        Command::new(&agent_bin)
            .args([
                "run",
                "-trustDomain",
                "b.bench",
                "-serverAddress",
                "127.0.0.1",
            ])
            .args([
                "-serverPort",
                &port_b.to_string(),
                "-joinToken",
                &token,
                "-logLevel",
                "warn",
            ])
            .arg("-dataDir")
            .arg(tmp.path().join("agent"))
            .arg("-socketPath")
            .arg(&api)
            .arg("-trustBundle")
            .arg(&bundle_b)
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_for("agent socket", || api.exists()).await?;

    // The workload's open stream: every message's federated bundle for A, with its arrival.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<String>)>();
    let api2 = api.clone();
    let stream_task = tokio::spawn(async move {
        let mut c = loop {
            if let Ok(c) = client(&api2).await {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        loop {
            let mut req = tonic::Request::new(X509svidRequest {});
            req.metadata_mut().insert(
                "workload.spiffe.io",
                tonic::metadata::MetadataValue::from_static("true"),
            );
            let Ok(resp) = c.fetch_x509svid(req).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut s = resp.into_inner();
            while let Ok(Some(msg)) = s.message().await {
                let der = msg
                    .federated_bundles
                    .get("spiffe://a.bench")
                    .cloned()
                    .unwrap_or_default();
                let certs = sigil_spiffe::x509::parse_der_certs(&der).unwrap_or_default();
                use base64::Engine;
                let b64 = certs
                    .iter()
                    .map(|c| base64::engine::general_purpose::STANDARD.encode(c))
                    .collect();
                if tx.send((Instant::now(), b64)).is_err() {
                    return;
                }
            }
        }
    });

    let samples = if quick { 1 } else { 2 };
    let mut lat = Vec::new();
    let mut known = roots(&doc)?;
    let deadline = Instant::now() + Duration::from_secs(60 * (samples as u64 + 1) + 30);
    eprintln!("== federation: waiting for {samples} root rotations in A (about 30 s apart)");
    while lat.len() < samples {
        if Instant::now() > deadline {
            bail!("no root rotation reached B's workload in time");
        }
        // A's bundle: a new root?
        let now_doc = run_cli(
            &server,
            &["bundle", "show", "-format", "spiffe", "-socketPath", &a_s],
        )?;
        let now_roots = roots(&now_doc)?;
        let new: Vec<String> = now_roots
            .iter()
            .filter(|r| !known.contains(r))
            .cloned()
            .collect();
        if new.is_empty() {
            while rx.try_recv().is_ok() {}
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let rotated = Instant::now();
        known = now_roots;
        let arrived = loop {
            match tokio::time::timeout_at(
                (rotated + Duration::from_secs(HINT_SECS)).into(),
                rx.recv(),
            )
            .await
            {
                Ok(Some((at, fed))) if new.iter().all(|r| fed.contains(r)) => break at,
                Ok(Some(_)) => continue,
                Ok(None) => bail!("the workload stream ended"),
                Err(_) => bail!("A's new root did not reach B's workload within {HINT_SECS} s"),
            }
        };
        let secs = arrived.duration_since(rotated).as_secs_f64();
        eprintln!("  rotation → B's workload: {secs:.2} s");
        lat.push(secs);
    }
    stream_task.abort();
    let worst = lat.iter().cloned().fold(0.0, f64::max);
    let target = HINT_SECS as f64 / 4.0 + 1.0;
    rows.push((
        format!(
            "federation: A's root rotation → B's workload stream ({HINT_SECS} s hint, {} runs)",
            lat.len()
        ),
        format!(
            "worst {worst:.2} s ({})",
            lat.iter()
                .map(|l| format!("{l:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        format!(
            "target ≤ hint/4 + 1 s = {target:.0} s {}",
            verdict(worst <= target)
        ),
    ));
    json_out.insert(
        "federation_rotation_to_workload".into(),
        json!({"hint_s": HINT_SECS, "seconds": lat, "worst_s": worst}),
    );
    Ok(())
}
