//! The eBPF toolchain and `cargo xtask build-ebpf`.
//!
//! `agent-ebpf/` is not a workspace member: it targets `bpfel-unknown-none`, which rustup's stable
//! toolchain cannot build (no prebuilt `core`, and aya-ebpf needs a nightly feature). Debian's
//! `rustc-web` ships LLVM 22 with a prebuilt `core` for bpfel (`libstd-rust-web-dev-bpf`); it is
//! linked into rustup as the `debian-web` toolchain, and bpf-linker is built against the same
//! libLLVM. The object lands in `target/ebpf/`, where the agent's build script embeds it.

use crate::{root, run, target_dir};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian packages: rustc/cargo 1.96 with LLVM 22, `core` prebuilt for bpfel/bpfeb, std sources.
pub const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "rust-web-src",
];
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// The libLLVM rustc-web links against; bpf-linker must use the same one.
const LIBLLVM: &str = "/usr/lib/x86_64-linux-gnu/libLLVM.so.22.1";

/// Where `build-ebpf` puts the object, and where the agent's build.rs looks for it.
pub fn object_path() -> PathBuf {
    target_dir().join("ebpf/sigil-agent-ebpf.bpf.o")
}

/// Installs what `build-ebpf` needs; every step is skipped when already done.
pub fn ensure_toolchain() -> Result<()> {
    crate::debian::ensure_packages(APT_PACKAGES, "Debian rustc-web toolchain")?;
    crate::debian::ensure_linked()?;

    if bpf_linker_version().is_some_and(|v| v.contains(BPF_LINKER_VERSION)) {
        println!("    bpf-linker {BPF_LINKER_VERSION}: present");
        return Ok(());
    }
    // bpf-linker's build script only needs $LLVM_PREFIX/lib/libLLVM.so: point it at Debian's
    // libLLVM.so.22.1 (no llvm-22-dev package exists for bookworm).
    let prefix = target_dir().join("ebpf-toolchain/llvm22");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    let link = lib.join("libLLVM.so");
    if std::fs::read_link(&link).ok().as_deref() != Some(Path::new(LIBLLVM)) {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(LIBLLVM, &link)
            .with_context(|| format!("linking {} to {LIBLLVM}", link.display()))?;
    }
    println!("    cargo install bpf-linker {BPF_LINKER_VERSION} (llvm-22)");
    let mut install = Command::new("cargo");
    install
        .args(["install", "--locked", "bpf-linker", "--version"])
        .arg(BPF_LINKER_VERSION)
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", &prefix);
    crate::debian::clean_env(&mut install);
    run(&mut install)?;
    match bpf_linker_version() {
        Some(v) if v.contains(BPF_LINKER_VERSION) => Ok(()),
        other => bail!("bpf-linker still missing after cargo install (found {other:?})"),
    }
}

/// `bpf-linker --version`, from PATH or cargo's bin dir.
fn bpf_linker_version() -> Option<String> {
    let out = Command::new(bpf_linker()).arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn bpf_linker() -> PathBuf {
    let in_cargo_home = cargo_bin_dir().join("bpf-linker");
    if in_cargo_home.is_file() {
        in_cargo_home
    } else {
        PathBuf::from("bpf-linker")
    }
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// `cargo xtask build-ebpf`: builds agent-ebpf and copies the object to [`object_path`] when it
/// changed (an unchanged object must not make cargo rebuild the agent).
pub fn build() -> Result<PathBuf> {
    println!("==> building agent-ebpf (Debian rustc-web, bpf-linker)");
    let dir = root().join("agent-ebpf");
    let build_dir = target_dir().join("agent-ebpf");
    let mut cmd = crate::debian::cargo();
    // From agent-ebpf/ so that its .cargo/config.toml (target, --btf, RUSTC_BOOTSTRAP) applies.
    cmd.current_dir(&dir)
        .args(["build", "--release", "--locked"])
        .env("CARGO_TARGET_DIR", &build_dir);
    // bpf-linker is found on PATH; make sure cargo's bin dir is on it.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths: Vec<PathBuf> = std::env::split_paths(&path).collect();
    paths.push(cargo_bin_dir());
    cmd.env("PATH", std::env::join_paths(paths)?);
    run(&mut cmd).context(
        "building agent-ebpf failed; `cargo xtask setup` installs the toolchain it needs",
    )?;
    let built = build_dir.join("bpfel-unknown-none/release/sigil-agent-ebpf");
    let obj = object_path();
    let new = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    if std::fs::read(&obj).ok().as_deref() != Some(&new[..]) {
        if let Some(parent) = obj.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&obj, &new)?;
    }
    println!("    {} ({} bytes)", obj.display(), new.len());
    Ok(obj)
}
