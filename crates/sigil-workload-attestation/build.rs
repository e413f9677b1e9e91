//! Embeds the eBPF object built by `cargo xtask build-ebpf` (target/ebpf/sigil-agent-ebpf.bpf.o,
//! or `$SIGIL_EBPF_OBJECT`) when it exists, and sets `cfg(sigil_ebpf)`.
//!
//! The object needs Debian's rustc-web and bpf-linker, which a plain `cargo build` of the
//! workspace must not require: without it the agent still builds, and at run time says that the
//! eBPF tiers are unavailable and why. `cargo xtask test`, `demo`, `vm-test` and CI always build
//! the object first.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(sigil_ebpf)");
    println!("cargo::rerun-if-env-changed=SIGIL_EBPF_OBJECT");
    println!("cargo::rerun-if-env-changed=CARGO_TARGET_DIR");
    let object = match std::env::var_os("SIGIL_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => target_dir().join("ebpf/sigil-agent-ebpf.bpf.o"),
    };
    // Also when it does not exist yet: cargo then re-runs this script once it appears.
    println!("cargo::rerun-if-changed={}", object.display());
    let Some(out_dir) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        return;
    };
    let embedded = out_dir.join("sigil-agent-ebpf.bpf.o");
    match std::fs::read(&object) {
        Ok(bytes) => {
            if std::fs::write(&embedded, bytes).is_ok() {
                println!("cargo::rustc-cfg=sigil_ebpf");
            }
        }
        Err(_) => {
            let _ = std::fs::remove_file(&embedded);
            println!(
                "cargo::warning=eBPF object {} not found: building the workload attestation (sigil-agent) without the eBPF \
                 attestation tiers (run `cargo xtask build-ebpf`)",
                object.display()
            );
        }
    }
}

/// The workspace's target directory: `$CARGO_TARGET_DIR`, else `<workspace>/target`.
fn target_dir() -> PathBuf {
    // This package is crates/sigil-workload-attestation: the workspace is two levels up.
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let workspace = manifest
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        Some(p) => workspace.join(p),
        None => workspace.join("target"),
    }
}
