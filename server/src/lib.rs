//! Sigil's signing server: the trust domain's CA, registration entries, node attestation, the
//! agent API (mTLS), the admin API (Unix socket) and the CLI that drives it.

pub mod api;
pub mod ca;
pub mod cli;
pub mod config;
pub mod datastore;
pub mod entry;
pub mod federation;
pub mod health;
pub mod logger;
pub mod metrics;
pub mod peers;
pub mod run;
pub mod sync;
pub mod tls;

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
