//! Sigil's node agent: a drop-in alternative to `spire-agent`.
//!
//! - [`config`]: SPIRE's HCL agent config and `run` flags.
//! - [`node`]: node attestation, the agent SVID, and the mTLS channel to the server.
//! - [`manager`]: entry sync, workload SVID signing and rotation, immutable snapshots.
//! - [`workload`]: the SPIFFE Workload API on a Unix socket; each call is attested with
//!   `sigil_workload_attestation` (tiers, cgroups, the `unix` attestor).
//! - [`sds`]: Envoy SDS v3 on the same socket (Istio's `default` / `ROOTCA`).
//! - [`cli`]: `sigil-agent` verbs (`run`, `api fetch|validate|watch`, `healthcheck`).
//! - [`health`]: `/live` and `/ready`.

mod agent;
pub mod cli;
pub mod config;
pub mod health;
pub mod keys;
pub mod logging;
pub mod manager;
pub mod node;
pub mod sds;
pub mod selectors;
pub mod svid;
pub mod workload;

pub use agent::{AgentError, run, run_until, shutdown_signal};
pub use cli::cli_main;
pub use config::Config;

/// An error with its whole source chain, `outer: inner: innermost` — tonic's and rustls's
/// top-level messages ("transport error") say little on their own.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let msg = s.to_string();
        if !out.ends_with(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        source = s.source();
    }
    out
}
