//! `cargo xtask e2e-kind`: Sigil on a kind cluster with Istio, end to end. Every step is in
//! `deploy/kind/e2e.sh`, one script to read from top to bottom; this only runs it with the
//! target directory (where `cargo xtask images` puts the archives and `cargo xtask setup` puts
//! kubectl and helm) and exits with its status.
//!
//! Without docker (and a daemon), kind, helm, kubectl, istioctl, jq or openssl, the script
//! names what is missing and exits 3; `--check` stops there (exit 0 when nothing is missing).

use crate::{root, target_dir};
use anyhow::{Context, Result};
use std::process::Command;

/// Debian packages: shellcheck, for the test that lints the script.
pub const APT_PACKAGES: &[&str] = &["shellcheck"];

/// The script, relative to the workspace root.
pub const SCRIPT: &str = "deploy/kind/e2e.sh";

pub fn e2e_kind(args: &[String]) -> Result<()> {
    let status = Command::new("bash")
        .arg(root().join(SCRIPT))
        .args(args)
        .env("SIGIL_TARGET_DIR", target_dir())
        .current_dir(root())
        .status()
        .with_context(|| format!("running bash {SCRIPT}"))?;
    if !status.success() {
        // The script said why; its status tells "missing tools" (3) from a failed check.
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}
