//! Authority management (issue 14): time from `localauthority x509 taint` until every SVID of
//! 1000 cached identities on one agent has been re-signed by the new authority, seen on a
//! workload's open Workload API stream (all 1000 entries match the bench's uid, so one
//! `FetchX509SVID` message carries them all). Target: ≤ 10 s.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use sigil_proto::admin as apb;
use sigil_proto::types;

use crate::{Rows, Stack, TRUST_DOMAIN, run_cli, verdict};

/// The issuing authority (the leaf's authority key ID) of every SVID in a message.
fn signers(msg: &sigil_proto::workload::X509svidResponse) -> Vec<String> {
    msg.svids
        .iter()
        .map(|s| {
            sigil_spiffe::x509::parse_der_certs(&s.x509_svid)
                .ok()
                .and_then(|c| c.first().cloned())
                .and_then(|leaf| sigil_spiffe::x509::key_ids(&leaf).ok())
                .and_then(|(_, aki)| aki)
                .unwrap_or_default()
        })
        .collect()
}

pub async fn rows(
    bin_dir: &std::path::Path,
    quick: bool,
    rows: &mut Rows,
    json: &mut serde_json::Map<String, Value>,
) -> Result<()> {
    let identities = if quick { 200 } else { 1000 };
    let stack = Stack::start(bin_dir, &[]).await?;
    let admin_s = stack.admin.to_string_lossy().to_string();
    let server = bin_dir.join("sigil-server");
    let mut admin = sigil_server::cli::connect(&admin_s).await?;
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let entries: Vec<types::Entry> = (0..identities)
        .map(|n| types::Entry {
            spiffe_id: format!("spiffe://{TRUST_DOMAIN}/taint/{n}"),
            parent_id: stack.node.clone(),
            selectors: vec![types::Selector {
                r#type: "unix".into(),
                value: format!("uid:{uid}"),
            }],
            ..Default::default()
        })
        .collect();
    for chunk in entries.chunks(500) {
        admin
            .batch_create_entry(apb::BatchCreateEntryRequest {
                entries: chunk.to_vec(),
            })
            .await?;
    }
    let mut client = crate::client(&stack.api).await?;
    let mut req = tonic::Request::new(sigil_proto::workload::X509svidRequest {});
    req.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    let mut stream = client.fetch_x509svid(req).await?.into_inner();
    let deadline = Instant::now() + Duration::from_secs(120);
    eprintln!("== authority: {identities} identities cached, then taint the old authority");
    let mut last = loop {
        let m = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .context("no Workload API message")??
            .context("the Workload API stream ended")?;
        // The stack's own workload entry matches too: one more.
        if m.svids.len() > identities {
            break m;
        }
        if Instant::now() > deadline {
            bail!("the agent never held {identities} SVIDs");
        }
    };
    let cli = |args: &[&str]| -> Result<Value> {
        let mut a = args.to_vec();
        a.extend(["-output", "json", "-socketPath", &admin_s]);
        Ok(serde_json::from_str(&run_cli(&server, &a)?)?)
    };
    let old = cli(&["localauthority", "x509", "show"])?["active"]["authority_id"]
        .as_str()
        .context("active authority")?
        .to_string();
    let prepared = cli(&["localauthority", "x509", "prepare"])?;
    let new = prepared["prepared_authority"]["authority_id"]
        .as_str()
        .context("prepared authority")?
        .to_string();
    cli(&["localauthority", "x509", "activate", "-authorityID", &new])?;
    // Drain what prepare/activate caused (a bundle update), then taint.
    while let Ok(Ok(Some(m))) =
        tokio::time::timeout(Duration::from_millis(500), stream.message()).await
    {
        last = m;
    }
    if signers(&last).iter().any(|s| s != &old) {
        bail!("SVIDs were re-signed before the taint");
    }
    let t0 = Instant::now();
    cli(&["localauthority", "x509", "taint", "-authorityID", &old])?;
    let elapsed = loop {
        let m = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .context("the re-signed SVIDs never arrived")??
            .context("the Workload API stream ended")?;
        let s = signers(&m);
        if s.len() > identities && s.iter().all(|a| a == &new) {
            break t0.elapsed().as_secs_f64();
        }
    };
    rows.push((
        format!("taint → all {identities} cached SVIDs re-signed (open stream)"),
        format!("{elapsed:.2} s"),
        format!("target ≤ 10 s {}", verdict(elapsed <= 10.0)),
    ));
    json.insert("taint_resign_identities".into(), identities.into());
    json.insert("taint_resign_s".into(), elapsed.into());
    Ok(())
}
