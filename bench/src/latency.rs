//! FetchX509SVID latency at a fixed request rate (open loop).
//!
//! Each of N clients keeps its own connection to the agent and issues one FetchX509SVID every
//! `interval`, at an evenly spread phase, whether or not the previous one finished late: a
//! request held up by the previous one is measured from when it was *due*, so a stall shows up
//! in the numbers instead of silently lowering the load (no coordinated omission). This is the latency a workload sees.
//! The closed-loop variant (every client back to back, as fast as the agent answers) measures
//! saturation throughput instead; its latency is simply clients ÷ throughput.

use anyhow::Result;
use std::path::Path;
use std::time::Duration;

/// Returns (p50 µs, p99 µs, calls).
pub async fn open_loop(
    api: &Path,
    clients: usize,
    interval: Duration,
    duration: Duration,
) -> Result<(f64, f64, usize)> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut c = crate::client(api).await?;
        crate::fetch_once(&mut c).await?; // warm the connection
        conns.push(c);
    }
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(clients);
    for (i, mut c) in conns.into_iter().enumerate() {
        // Spread the clients' phases evenly over one interval.
        let phase = interval.mul_f64(i as f64 / clients as f64);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut due = start + phase;
            let end = start + duration;
            let mut prev_done = tokio::time::Instant::now();
            while due < end {
                tokio::time::sleep_until(due).await;
                // A request held up by this client's previous one counts from when it was due;
                // otherwise from when it was sent (the timer's own wake-up lag is not the
                // agent's latency).
                let from = if prev_done > due {
                    due
                } else {
                    tokio::time::Instant::now()
                };
                crate::fetch_once(&mut c).await?;
                prev_done = tokio::time::Instant::now();
                lat.push((prev_done - from).as_secs_f64() * 1e6);
                due += interval;
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Ok((pct(0.50), pct(0.99), all.len()))
}
