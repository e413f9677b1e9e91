//! Per-connection cost of each workload attestation tier, next to a bare Unix socket round trip.
//!
//! One connection = connect, write a byte, accept, read it, answer, read the answer (what every
//! Workload API call costs at least). With attestation the agent additionally captures the peer
//! at accept (`SO_PEERCRED`, `SO_PEERPIDFD`, `SO_COOKIE`, start time) and establishes the caller
//! with the tier (eBPF map lookup, `PIDFD_GET_INFO` or `/proc` reads, plus the cgroup path). The
//! caller is this process, so the numbers are the agent-side work only.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;

use anyhow::{Context, Result};
use sigil_workload_attestation::{Attestation, PeerInfo, Tier, TierRequest};

/// One tier's result: median µs per connection with attestation, and the median bare round
/// trip measured alternately with it (medians: this machine is shared, and a mean would mostly
/// measure scheduling hiccups).
#[derive(Debug)]
pub struct TierCost {
    pub tier: Tier,
    pub bare_us: f64,
    pub attested_us: f64,
}

/// Tiers that cannot run here, with the reason.
pub type Unavailable = Vec<(Tier, String)>;

/// Measures every tier that can run here (others are reported as unavailable).
pub fn per_connection(n: usize) -> Result<(Vec<TierCost>, Unavailable)> {
    let dir = tempfile::tempdir()?;
    let mut costs = Vec::new();
    let mut unavailable = Vec::new();
    for tier in Tier::ALL {
        let path = dir.path().join(format!("{tier}.sock"));
        let listener = UnixListener::bind(&path)?;
        let attestation = match Attestation::start(TierRequest::Force(tier), &path) {
            Ok(a) => a,
            Err(e) => {
                unavailable.push((tier, e.reason));
                continue;
            }
        };
        // Warm up (page cache, cgroup path cache, map), then alternate bare and attested rounds
        // so that both see the same machine state.
        for _ in 0..50 {
            round(&listener, &path, Some(&attestation))?;
        }
        let (mut bare, mut attested) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            bare.push(round(&listener, &path, None)?);
            attested.push(round(&listener, &path, Some(&attestation))?);
        }
        costs.push(TierCost {
            tier,
            bare_us: median(&mut bare),
            attested_us: median(&mut attested),
        });
    }
    Ok((costs, unavailable))
}

/// One connection; µs.
fn round(
    listener: &UnixListener,
    path: &std::path::Path,
    attestation: Option<&Attestation>,
) -> Result<f64> {
    let start = Instant::now();
    let mut client = UnixStream::connect(path)?;
    client.write_all(b"x")?;
    let (mut server, _) = listener.accept()?;
    let peer = match attestation {
        Some(_) => Some(PeerInfo::from_fd(server.as_raw_fd())?),
        None => None,
    };
    let mut b = [0u8; 1];
    server.read_exact(&mut b)?;
    if let (Some(a), Some(peer)) = (attestation, &peer) {
        let caller = a
            .caller(peer)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("attesting the bench process")?;
        // What every attestor then relies on.
        peer.verify_unchanged()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        std::hint::black_box(caller);
    }
    server.write_all(b"y")?;
    client.read_exact(&mut b)?;
    Ok(start.elapsed().as_secs_f64() * 1e6)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
