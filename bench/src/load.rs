//! Load (issue 15): one agent under 1000 open `FetchX509SVID` streams plus 5000 unary calls per
//! second (`FetchJWTSVID`, attested each time) for 60 s: errors, p99, the agent's RSS; the
//! agent's RSS with 10,000 entries authorized to it (every one signed and cached); and a
//! server with 100,000 entries: its RSS and how long it takes to start.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use sigil_proto::admin as apb;
use sigil_proto::types;
use sigil_proto::workload::{JwtsvidRequest, X509svidRequest};

use crate::{Rows, Stack, TRUST_DOMAIN, client, verdict};

fn request<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    req
}

fn entry(spiffe: String, parent: &str, uid: u32) -> types::Entry {
    types::Entry {
        spiffe_id: spiffe,
        parent_id: parent.into(),
        selectors: vec![types::Selector {
            r#type: "unix".into(),
            value: format!("uid:{uid}"),
        }],
        ..Default::default()
    }
}

async fn create(admin_path: &str, entries: Vec<types::Entry>) -> Result<()> {
    let mut admin = sigil_server::cli::connect(admin_path).await?;
    for chunk in entries.chunks(1000) {
        let resp = admin
            .batch_create_entry(apb::BatchCreateEntryRequest {
                entries: chunk.to_vec(),
            })
            .await?
            .into_inner();
        if let Some(bad) = resp
            .results
            .iter()
            .find(|r| r.status.as_ref().is_some_and(|s| s.code != 0))
        {
            bail!("entry create failed: {:?}", bad.status);
        }
    }
    Ok(())
}

pub async fn rows(
    bin_dir: &std::path::Path,
    quick: bool,
    rows: &mut Rows,
    json: &mut serde_json::Map<String, Value>,
) -> Result<()> {
    let (streams, rate, secs) = if quick {
        (200, 1000, 5)
    } else {
        (1000, 5000, 60)
    };
    let stack = Stack::start(bin_dir, &[]).await?;
    let admin_s = stack.admin.to_string_lossy().to_string();
    let pid = stack.agent_pid();
    let rss_before = crate::k8s::rss_kib(pid)?;

    // 1000 streams, spread over 50 connections, each holding its first answer.
    eprintln!("== load: {streams} FetchX509SVID streams + {rate} FetchJWTSVID/s for {secs} s");
    let mut held = Vec::with_capacity(streams);
    let mut channels = Vec::new();
    for _ in 0..50 {
        channels.push(client(&stack.api).await?);
    }
    let stream_errors = Arc::new(AtomicU64::new(0));
    for i in 0..streams {
        let mut c = channels[i % channels.len()].clone();
        let mut s = c
            .fetch_x509svid(request(X509svidRequest {}))
            .await
            .context("opening a stream")?
            .into_inner();
        s.message().await?.context("no first answer")?;
        let errors = stream_errors.clone();
        held.push(tokio::spawn(async move {
            // Keep reading: an error on an open stream counts.
            while let Some(r) = s.message().await.transpose() {
                if r.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }));
    }

    // Unary calls at a fixed rate (open loop), each on one of the connections.
    let errors = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<f64>();
    let started = Instant::now();
    let total = rate * secs;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut next = tokio::time::Instant::now();
    let mut calls = Vec::with_capacity(1024);
    for n in 0..total {
        next += interval;
        tokio::time::sleep_until(next).await;
        let mut c = channels[n as usize % channels.len()].clone();
        let (tx, errors) = (tx.clone(), errors.clone());
        calls.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let r = c
                .fetch_jwtsvid(request(JwtsvidRequest {
                    audience: vec!["load".into()],
                    spiffe_id: String::new(),
                }))
                .await;
            match r {
                Ok(_) => {
                    let _ = tx.send(t0.elapsed().as_secs_f64() * 1e3);
                }
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        if calls.len() >= 1024 {
            for c in calls.drain(..) {
                let _ = c.await;
            }
        }
    }
    for c in calls {
        let _ = c.await;
    }
    drop(tx);
    let elapsed = started.elapsed().as_secs_f64();
    let rss_load = crate::k8s::rss_kib(pid)?;
    let mut lat = Vec::new();
    while let Some(l) = rx.recv().await {
        lat.push(l);
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let errors = errors.load(Ordering::Relaxed) + stream_errors.load(Ordering::Relaxed);
    let achieved = lat.len() as f64 / elapsed;
    for h in held {
        h.abort();
    }
    rows.push((
        format!("load: {streams} open streams + FetchJWTSVID at {rate}/s for {secs} s"),
        format!(
            "{achieved:.0}/s achieved, p50 {:.2} ms, p99 {:.2} ms, {errors} errors",
            pct(0.5),
            pct(0.99)
        ),
        format!("target 0 errors {}", verdict(errors == 0)),
    ));
    rows.push((
        "load: agent RSS idle → under load".into(),
        format!(
            "{:.1} MiB → {:.1} MiB",
            rss_before as f64 / 1024.0,
            rss_load as f64 / 1024.0
        ),
        "(informational)".into(),
    ));
    json.insert("load_unary_per_s".into(), achieved.into());
    json.insert("load_unary_p99_ms".into(), pct(0.99).into());
    json.insert("load_errors".into(), errors.into());
    json.insert("load_agent_rss_kib".into(), rss_load.into());

    // 10,000 entries authorized to the agent (for another uid: the agent signs and caches
    // them all; nothing here fetches them).
    let n = if quick { 2000 } else { 10_000 };
    eprintln!("== load: {n} entries authorized to one agent");
    // SAFETY: getuid has no preconditions and cannot fail.
    let other = unsafe { libc::getuid() } + 1;
    let entries: Vec<types::Entry> = (0..n)
        .map(|i| {
            entry(
                format!("spiffe://{TRUST_DOMAIN}/many/{i}"),
                &stack.node,
                other,
            )
        })
        .collect();
    create(&admin_s, entries).await?;
    // Settled: RSS stable for 3 s after the signing burst.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut last = 0u64;
    let mut stable_since = Instant::now();
    let rss_many = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = crate::k8s::rss_kib(pid)?;
        if now.abs_diff(last) > 256 {
            last = now;
            stable_since = Instant::now();
        } else if stable_since.elapsed() > Duration::from_secs(3) {
            break now;
        }
        if Instant::now() > deadline {
            break now;
        }
    };
    let mib = rss_many as f64 / 1024.0;
    rows.push((
        format!("agent RSS with {n} entries authorized (SVIDs signed and cached)"),
        format!("{mib:.1} MiB"),
        format!("target ≤ 50 MiB {}", verdict(mib <= 50.0)),
    ));
    json.insert("agent_rss_many_entries_kib".into(), rss_many.into());
    drop(stack);

    // 100,000 entries in the datastore: the server's RSS and start-up time.
    let n = if quick { 10_000 } else { 100_000 };
    eprintln!("== load: a server with {n} entries");
    let server_bin = bin_dir.join("sigil-server");
    let dir = tempfile::tempdir()?;
    let admin = dir.path().join("admin.sock");
    let admin_s = admin.to_string_lossy().to_string();
    let (server, _) = crate::start_server(&server_bin, dir.path(), &admin).await?;
    let entries: Vec<types::Entry> = (0..n)
        .map(|i| {
            entry(
                format!("spiffe://{TRUST_DOMAIN}/w/{i}"),
                &format!("spiffe://{TRUST_DOMAIN}/node/{}", i % 1000),
                1000 + (i % 5000) as u32,
            )
        })
        .collect();
    create(&admin_s, entries).await?;
    drop(server);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    let (server, _) = crate::start_server(&server_bin, dir.path(), &admin).await?;
    let startup = t0.elapsed().as_secs_f64();
    let rss = crate::k8s::rss_kib(server.0.id())? as f64 / 1024.0;
    rows.push((
        format!("server with {n} entries: start-up until the admin API answers"),
        format!("{startup:.2} s"),
        "(informational)".into(),
    ));
    rows.push((
        format!("server with {n} entries: RSS"),
        format!("{rss:.1} MiB"),
        "(informational)".into(),
    ));
    json.insert("server_many_entries_startup_s".into(), startup.into());
    json.insert("server_many_entries_rss_mib".into(), rss.into());
    Ok(())
}
