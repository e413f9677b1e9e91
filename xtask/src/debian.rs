//! Debian's `rustc-web` toolchain, which builds what rustup's stable toolchain cannot: the eBPF
//! programs (`crate::ebpf`) and the Envoy filter for `wasm32-wasip1` (`crate::wasm`). It is
//! linked into rustup under one name and run with a clean environment.

use crate::run;
use anyhow::{Context, Result};
use std::process::Command;

/// The rustup name of Debian's toolchain (`rustup toolchain link debian-web /usr`).
pub const TOOLCHAIN: &str = "debian-web";

/// Installs the Debian packages of `pkgs` that are missing (`what` names them in the output).
pub fn ensure_packages(pkgs: &[&str], what: &str) -> Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| !crate::setup::dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        println!("    {what}: present");
        Ok(())
    } else {
        crate::setup::apt_install(&missing)
    }
}

/// Links `/usr`'s rustc and cargo into rustup as [`TOOLCHAIN`] unless already linked.
pub fn ensure_linked() -> Result<()> {
    let listed = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("running rustup (the workspace needs rustup's stable toolchain)")?;
    if String::from_utf8_lossy(&listed.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(TOOLCHAIN))
    {
        println!("    rustup toolchain {TOOLCHAIN}: linked");
        return Ok(());
    }
    println!("    rustup toolchain link {TOOLCHAIN} /usr");
    run(Command::new("rustup").args(["toolchain", "link", TOOLCHAIN, "/usr"]))
}

/// `cargo +debian-web`, run with [`clean_env`].
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{TOOLCHAIN}"));
    clean_env(&mut cmd);
    cmd
}

/// Removes the settings of the outer `cargo xtask`, which runs under rustup's stable
/// toolchain: none of them may leak into a cargo run for another toolchain or another
/// workspace.
pub fn clean_env(cmd: &mut Command) {
    for k in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTDOC",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_MANIFEST_DIR",
        "CARGO_PKG_NAME",
    ] {
        cmd.env_remove(k);
    }
}
