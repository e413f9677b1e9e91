//! `cargo xtask vm-test`: the attestation self-test on Debian's own stock kernels, under qemu.
//!
//! The machine CI runs on refuses trampoline programs (BPF LSM, fentry), so the tiers that use
//! them would otherwise only ever be checked by this machine's verifier refusing them. Each
//! kernel in [`KERNELS`] boots (TCG: no KVM here) with a busybox initramfs holding
//! `sigil-attest-selftest` and its shared libraries; the guest runs it for the tiers that kernel
//! must support and powers off. A few seconds per boot.
//!
//! Assets (`cargo xtask setup` fetches them): qemu from apt, and the kernel and busybox-static
//! .debs, downloaded with `apt-get download` at pinned versions into `target/vm/debs` (bookworm
//! backports through a private apt configuration under `target/vm/apt`, leaving /etc/apt alone).

use crate::{cargo, run, target_dir};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// One kernel to boot.
#[derive(Debug)]
struct Kernel {
    name: &'static str,
    package: &'static str,
    version: &'static str,
    backports: bool,
    /// `lsm=` on the command line (`None`: the kernel's default list).
    lsm: Option<&'static str>,
    /// `sigil-attest-selftest` arguments.
    args: &'static [&'static str],
}

/// The kernel matrix. Versions are pinned: a new kernel is a deliberate change here. (Debian
/// keeps only the current backports build online, so a bump may be forced on us.)
const KERNELS: &[Kernel] = &[
    Kernel {
        name: "bookworm 6.1",
        package: "linux-image-6.1.0-50-amd64",
        version: "6.1.176-1",
        backports: false,
        // Debian's 6.1 is built with CONFIG_BPF_LSM but does not enable it by default.
        lsm: Some("lockdown,capability,landlock,yama,apparmor,bpf"),
        args: &[
            "-tiers",
            "lsm,fentry",
            "-expectAuto",
            "lsm",
            "-attempts",
            "30",
        ],
    },
    Kernel {
        name: "bookworm-backports 6.12",
        package: "linux-image-6.12.95+deb12-amd64",
        version: "6.12.95-1~bpo12+1",
        backports: true,
        // Debian's 6.12 has bpf in its default LSM list; with tp_btf also present the lsm tier
        // runs with writer tracking (fd passing while the sender lives).
        lsm: None,
        args: &[
            "-tiers",
            "tp_btf,lsm",
            "-expectAuto",
            "lsm",
            "-attempts",
            "30",
        ],
    },
];

const BUSYBOX: (&str, &str) = ("busybox-static", "1:1.35.0-4+deb12u1+b1");
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

fn vm_dir() -> PathBuf {
    target_dir().join("vm")
}

fn debs_dir() -> PathBuf {
    vm_dir().join("debs")
}

/// `apt-get` options for a private bookworm-backports configuration.
fn backports_apt_opts() -> Result<Vec<String>> {
    let apt = vm_dir().join("apt");
    for d in ["lists/partial", "cache/archives/partial", "sources.d"] {
        std::fs::create_dir_all(apt.join(d))?;
    }
    let list = apt.join("sources.list");
    std::fs::write(
        &list,
        "deb http://deb.debian.org/debian bookworm-backports main\n",
    )?;
    let opt = |k: &str, v: &Path| format!("-oDir::{k}={}", v.display());
    Ok(vec![
        opt("Etc::SourceList", &list),
        opt("Etc::SourceParts", &apt.join("sources.d")),
        opt("State::Lists", &apt.join("lists")),
        opt("Cache", &apt.join("cache")),
    ])
}

fn deb_path(package: &str, version: &str) -> PathBuf {
    // apt-get download names files <package>_<version with ':' as %3a>_<arch>.deb.
    let version = version.replace(':', "%3a");
    debs_dir().join(format!("{package}_{version}_amd64.deb"))
}

/// `apt-get download package=version` into `target/vm/debs`, unless already there.
fn download(package: &str, version: &str, backports: bool) -> Result<PathBuf> {
    let path = deb_path(package, version);
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(debs_dir())?;
    let mut opts = Vec::new();
    if backports {
        opts = backports_apt_opts()?;
        println!("    apt-get update (bookworm-backports, private lists)");
        run(Command::new("apt-get").args(&opts).args(["update", "-q"]))?;
    } else if !crate::setup::is_root() {
        bail!("downloading {package}: run setup as root");
    } else {
        // The system lists may not know the pinned version yet.
        run(Command::new("apt-get").args(["update", "-q"]))?;
    }
    println!("    apt-get download {package}={version}");
    run(Command::new("apt-get")
        .args(&opts)
        .args(["download", "-q", &format!("{package}={version}")])
        .current_dir(debs_dir()))
    .with_context(|| {
        format!("downloading the pinned {package} {version} (update KERNELS in xtask/src/vmtest.rs if Debian dropped it)")
    })?;
    if !path.is_file() {
        bail!("apt-get download did not produce {}", path.display());
    }
    Ok(path)
}

/// qemu and the .debs; extracted kernels and busybox under `target/vm`.
pub fn ensure_assets() -> Result<()> {
    if which("qemu-system-x86_64") {
        println!("    qemu-system-x86_64: present");
    } else {
        crate::setup::apt_install(&["qemu-system-x86"])?;
    }
    let bb = download(BUSYBOX.0, BUSYBOX.1, false)?;
    extract(&bb, &vm_dir().join("busybox"))?;
    for k in KERNELS {
        let deb = download(k.package, k.version, k.backports)?;
        extract(&deb, &kernel_dir(k))?;
    }
    println!("    vm-test kernels and busybox: present");
    Ok(())
}

fn kernel_dir(k: &Kernel) -> PathBuf {
    vm_dir().join("kernels").join(k.package)
}

/// `dpkg-deb -x`, once (marker file).
fn extract(deb: &Path, dir: &Path) -> Result<()> {
    let marker = dir.join(".extracted");
    if marker.is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir))?;
    std::fs::write(marker, deb.display().to_string())?;
    Ok(())
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

fn vmlinuz(k: &Kernel) -> Result<PathBuf> {
    let boot = kernel_dir(k).join("boot");
    std::fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz in {}", boot.display()))
}

/// PID 1 of the guest: mount what the self-test needs, run it with its output on the second
/// serial port and its exit code on the third, power off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t securityfs securityfs /sys/kernel/security
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# The host's cgroup2 is at /sys/fs/cgroup/unified: a child cgroup of that name gives the test the
# same paths here.
mkdir -p /sys/fs/cgroup/unified
ulimit -l unlimited
for t in 1 2; do stty -F /dev/ttyS$t raw -echo 2>/dev/null; done
{
  echo "guest kernel $(uname -r); active LSMs: $(cat /sys/kernel/security/lsm)"
  /sigil/sigil-attest-selftest $(cat /sigil/args)
  rc=$?
} >/dev/ttyS1 2>&1
echo $rc >/dev/ttyS2
sync
poweroff -f
"#;

/// Copies `bin` and the shared libraries `ldd` lists into `root` at their own paths.
fn stage_binary(bin: &Path, root: &Path) -> Result<()> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        let lib = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        let Some(lib) = lib.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let dst = root.join(lib.trim_start_matches('/'));
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(lib, &dst).with_context(|| format!("copying {lib}"))?;
    }
    Ok(())
}

/// Builds the initramfs for one boot: busybox, the init script, the self-test and its libs.
fn initramfs(selftest: &Path, args: &[&str], work: &Path) -> Result<PathBuf> {
    let root = work.join("root");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "sigil"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    let busybox = vm_dir().join("busybox/bin/busybox");
    std::fs::copy(&busybox, root.join("bin/busybox"))?;
    std::fs::write(root.join("init"), INIT)?;
    std::fs::write(root.join("sigil/args"), args.join(" "))?;
    let bin = root.join("sigil/sigil-attest-selftest");
    // Debug info would make the initramfs ten times larger; qemu copies all of it into RAM.
    run(Command::new("objcopy")
        .arg("--strip-debug")
        .arg(selftest)
        .arg(&bin))?;
    stage_binary(selftest, &root)?;
    run(Command::new("chmod")
        .arg("0755")
        .arg(root.join("init"))
        .arg(&bin))?;
    let cpio = work.join("initrd.cpio");
    let script = format!(
        "cd '{}' && find . | LC_ALL=C sort | '{}' cpio -o -H newc > '{}'",
        root.display(),
        busybox.display(),
        cpio.display()
    );
    run(Command::new("sh").arg("-c").arg(script))?;
    Ok(cpio)
}

/// Boots `k` and returns (exit code of the self-test, its output).
fn boot(k: &Kernel, selftest: &Path) -> Result<(Option<i32>, String)> {
    let work = vm_dir().join("run").join(k.package);
    std::fs::create_dir_all(&work)?;
    let initrd = initramfs(selftest, k.args, &work)?;
    let (console, out, rc) = (work.join("console"), work.join("out"), work.join("rc"));
    for f in [&console, &out, &rc] {
        std::fs::write(f, "")?;
    }
    let mut append = String::from("console=ttyS0 panic=-1 quiet");
    if let Some(lsm) = k.lsm {
        append.push_str(&format!(" lsm={lsm}"));
    }
    let serial = |p: &Path| format!("file:{}", p.display());
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "5", &BOOT_TIMEOUT.as_secs().to_string()])
        .arg("qemu-system-x86_64")
        .args(["-accel", "tcg", "-M", "q35", "-m", "1024", "-smp", "1"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(vmlinuz(k)?)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", &append])
        .args(["-serial", &serial(&console)])
        .args(["-serial", &serial(&out)])
        .args(["-serial", &serial(&rc)]);
    let status = cmd.status().context("running qemu-system-x86_64")?;
    let output = std::fs::read_to_string(&out).unwrap_or_default();
    let code = std::fs::read_to_string(&rc).ok().and_then(|s| {
        s.chars()
            .filter(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()
    });
    if code.is_none() {
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("--- {} console (last lines), qemu {status}:", k.name);
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
    }
    Ok((code, output))
}

pub fn vm_test() -> Result<()> {
    crate::setup::setup()?;
    crate::ebpf::build()?;
    println!("==> building sigil-attest-selftest");
    run(cargo().args([
        "build",
        "-p",
        "sigil-agent",
        "--bin",
        "sigil-attest-selftest",
    ]))?;
    let selftest = target_dir().join("debug/sigil-attest-selftest");
    let mut failed = Vec::new();
    for k in KERNELS {
        println!("==> vm-test: {} ({} {})", k.name, k.package, k.version);
        let start = Instant::now();
        let (code, output) = boot(k, &selftest)?;
        for line in output.lines() {
            println!("    | {line}");
        }
        println!(
            "    {}: {} in {:.1}s",
            k.name,
            match code {
                Some(0) => "passed".to_string(),
                Some(c) => format!("FAILED (exit {c})"),
                None => "FAILED (no exit code from the guest: crash or timeout)".to_string(),
            },
            start.elapsed().as_secs_f64()
        );
        if code != Some(0) {
            failed.push(k.name);
        }
    }
    if !failed.is_empty() {
        bail!("vm-test failed on: {}", failed.join(", "));
    }
    println!("vm-test: {} kernels passed", KERNELS.len());
    Ok(())
}
