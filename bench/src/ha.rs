//! High availability (issue 15), `--only-ha`:
//!
//! 1. Two servers on one PostgreSQL (a real one, Debian's, started in a temp dir): an entry
//!    created through server A until a real agent synced to server B serves its SVID on an open
//!    Workload API stream. Target: p99 ≤ 500 ms (SPIRE: its 5 s cache reload plus 5 s agent
//!    sync).
//! 2. 100 agents reconnecting at once to a restarted server (real attestation and mTLS,
//!    simulated as tasks, every one at the same instant: worse than real agents, which back off
//!    with jitter): time until every one has its full entry set again, and the server's peak
//!    RSS against its RSS before.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use rcgen::KeyPair;
use serde_json::Value;
use sigil_proto::admin as apb;
use sigil_proto::agent as pb;

use crate::sync::{channel, csr, entry};
use crate::{Proc, Rows, TRUST_DOMAIN, free_port, run_cli, verdict, wait_for};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A `sigil-server run` with `config` (written beside its data dir) on a fresh port.
async fn start_server(bin: &Path, dir: &Path, config: &str, port: u16) -> Result<Proc> {
    std::fs::create_dir_all(dir)?;
    let conf = dir.join("server.conf");
    std::fs::write(&conf, config)?;
    let admin = dir.join("admin.sock");
    let server = Proc(
        Command::new(bin)
            .args([
                "run",
                "-trustDomain",
                TRUST_DOMAIN,
                "-bindAddress",
                "127.0.0.1",
            ])
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
    let admin_s = admin.to_string_lossy().to_string();
    wait_for("server admin socket", || {
        run_cli(bin, &["healthcheck", "-socketPath", &admin_s]).is_ok()
    })
    .await?;
    Ok(server)
}

fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub async fn rows(
    bin_dir: &Path,
    quick: bool,
    rows: &mut Rows,
    json: &mut serde_json::Map<String, Value>,
) -> Result<()> {
    cross_server(bin_dir, quick, rows, json).await?;
    reconnect_storm(bin_dir, quick, rows, json).await
}

async fn cross_server(
    bin_dir: &Path,
    quick: bool,
    rows: &mut Rows,
    json: &mut serde_json::Map<String, Value>,
) -> Result<()> {
    let server_bin = bin_dir.join("sigil-server");
    let agent_bin = bin_dir.join("sigil-agent");
    eprintln!("== HA: two servers on one PostgreSQL");
    let pg = sigil_pgtest::PgServer::start();
    pg.create_database("spire");
    let config = format!(
        "plugins {{\n DataStore \"sql\" {{\n  plugin_data {{\n   database_type = \"postgres\"\n   connection_string = \"{}\"\n  }}\n }}\n}}\n",
        pg.connection_string("spire")
    );
    let dir = tempfile::tempdir()?;
    let _a = start_server(&server_bin, &dir.path().join("a"), &config, free_port()?).await?;
    let b_port = free_port()?;
    let _b = start_server(&server_bin, &dir.path().join("b"), &config, b_port).await?;
    let admin_a = dir
        .path()
        .join("a/admin.sock")
        .to_string_lossy()
        .to_string();
    let admin_b = dir
        .path()
        .join("b/admin.sock")
        .to_string_lossy()
        .to_string();
    let node = format!("spiffe://{TRUST_DOMAIN}/ha-node");
    let token = run_cli(
        &server_bin,
        &[
            "token",
            "generate",
            "-socketPath",
            &admin_a,
            "-spiffeID",
            &node,
        ],
    )?
    .trim()
    .trim_start_matches("Token: ")
    .to_string();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(
        &bundle,
        run_cli(&server_bin, &["bundle", "show", "-socketPath", &admin_b])?,
    )?;
    let api = dir.path().join("agent.sock");
    let _agent = Proc(
        Command::new(&agent_bin)
            .args([
                "run",
                "-trustDomain",
                TRUST_DOMAIN,
                "-serverAddress",
                "127.0.0.1",
            ])
            .args(["-serverPort", &b_port.to_string(), "-joinToken", &token])
            .args(["-logLevel", "warn"])
            .arg("-dataDir")
            .arg(dir.path().join("agent"))
            .arg("-socketPath")
            .arg(&api)
            .arg("-trustBundle")
            .arg(&bundle)
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_for("agent socket", || api.exists()).await?;
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() } as usize;
    let mut admin = sigil_server::cli::connect(&admin_a).await?;
    let first = entry(format!("spiffe://{TRUST_DOMAIN}/ha/0"), &node, uid);
    admin
        .batch_create_entry(apb::BatchCreateEntryRequest {
            entries: vec![first],
        })
        .await?;
    let mut stream = loop {
        if let Ok(mut c) = crate::client(&api).await {
            let mut req = tonic::Request::new(sigil_proto::workload::X509svidRequest {});
            req.metadata_mut().insert(
                "workload.spiffe.io",
                tonic::metadata::MetadataValue::from_static("true"),
            );
            if let Ok(s) = c.fetch_x509svid(req).await {
                let mut s = s.into_inner();
                if let Ok(Some(m)) = s.message().await
                    && !m.svids.is_empty()
                {
                    break s;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let n = if quick { 10 } else { 60 };
    let mut lat = Vec::with_capacity(n);
    for i in 1..=n {
        let id = format!("spiffe://{TRUST_DOMAIN}/ha/{i}");
        let t0 = Instant::now();
        admin
            .batch_create_entry(apb::BatchCreateEntryRequest {
                entries: vec![entry(id.clone(), &node, uid)],
            })
            .await?;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), stream.message())
                .await
                .context("the SVID never reached the agent on B")??
                .context("stream ended")?;
            if m.svids.iter().any(|s| s.spiffe_id == id) {
                break;
            }
        }
        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lat.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    rows.push((
        format!("entry created on server A → SVID served by an agent on server B (PostgreSQL, {n} entries)"),
        format!("p50 {p50:.0} ms, p99 {p99:.0} ms"),
        format!("target p99 ≤ 500 ms {}", verdict(p99 <= 500.0)),
    ));
    json.insert("ha_cross_server_p50_ms".into(), p50.into());
    json.insert("ha_cross_server_p99_ms".into(), p99.into());
    Ok(())
}

async fn reconnect_storm(
    bin_dir: &Path,
    quick: bool,
    rows: &mut Rows,
    json: &mut serde_json::Map<String, Value>,
) -> Result<()> {
    let agents = if quick { 30 } else { 100 };
    let per_agent = 20;
    eprintln!("== HA: {agents} agents reconnecting at once to a restarted server");
    let server_bin = bin_dir.join("sigil-server");
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let sdir = dir.path().join("s");
    let server = start_server(&server_bin, &sdir, "", port).await?;
    let admin_s = sdir.join("admin.sock").to_string_lossy().to_string();
    let mut admin = sigil_server::cli::connect(&admin_s).await?;
    let roots = admin
        .get_bundle(apb::GetBundleRequest {})
        .await?
        .into_inner()
        .x509_authorities;
    let mut attested = Vec::with_capacity(agents);
    for _ in 0..agents {
        let token = admin
            .create_join_token(apb::CreateJoinTokenRequest {
                ttl: 3600,
                spiffe_id: String::new(),
            })
            .await?
            .into_inner()
            .value;
        let key = KeyPair::generate()?;
        let svid = channel(port, &roots, None)
            .await?
            .attest_agent(pb::AttestAgentRequest {
                join_token: token,
                csr: csr(&key)?,
                ..Default::default()
            })
            .await?
            .into_inner()
            .svid
            .context("no SVID")?;
        attested.push((svid.spiffe_id, svid.cert_chain[0].clone(), key));
    }
    let entries: Vec<_> = attested
        .iter()
        .enumerate()
        .flat_map(|(a, (id, ..))| {
            (0..per_agent).map(move |i| entry(format!("spiffe://{TRUST_DOMAIN}/s{a}/w{i}"), id, i))
        })
        .collect();
    for batch in entries.chunks(1000) {
        admin
            .batch_create_entry(apb::BatchCreateEntryRequest {
                entries: batch.to_vec(),
            })
            .await?;
    }
    let before = rss_kib(server.0.id(), "VmRSS:").unwrap_or(0);
    drop(admin);
    drop(server);
    let server = start_server(&server_bin, &sdir, "", port).await?;
    let pid = server.0.id();
    let base = rss_kib(pid, "VmRSS:").unwrap_or(0);
    // Every agent at the same instant.
    let t0 = Instant::now();
    let results: Vec<Result<usize>> = futures::stream::iter(attested.iter())
        .map(|(_, cert, key)| {
            let roots = roots.clone();
            async move {
                let mut c = channel(port, &roots, Some((cert.clone(), key))).await?;
                let mut s = c
                    .sync_entries(pb::SyncEntriesRequest {})
                    .await?
                    .into_inner();
                let mut n = 0;
                while let Some(m) = s.message().await? {
                    n += m.entries.len();
                    if m.last {
                        break;
                    }
                }
                anyhow::Ok(n)
            }
        })
        .buffer_unordered(agents)
        .collect()
        .await;
    let all = t0.elapsed().as_secs_f64();
    let mut failed = 0;
    for r in results {
        match r {
            Ok(n) if n == per_agent => {}
            Ok(n) => bail!("an agent re-synced {n} entries, expected {per_agent}"),
            Err(_) => failed += 1,
        }
    }
    let peak = rss_kib(pid, "VmHWM:").unwrap_or(0);
    rows.push((
        format!("{agents} agents reconnect at once to a restarted server ({per_agent} entries each)"),
        format!(
            "all re-synced in {:.2} s, {failed} failed; server RSS {:.1} MiB idle → peak {:.1} MiB (before restart {:.1} MiB)",
            all,
            base as f64 / 1024.0,
            peak as f64 / 1024.0,
            before as f64 / 1024.0
        ),
        "informational".into(),
    ));
    json.insert("ha_reconnect_agents".into(), agents.into());
    json.insert("ha_reconnect_all_s".into(), all.into());
    json.insert("ha_reconnect_failed".into(), failed.into());
    json.insert(
        "ha_reconnect_peak_rss_mib".into(),
        (peak as f64 / 1024.0).into(),
    );
    Ok(())
}
