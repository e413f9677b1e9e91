//! `cargo xtask <command>`: project automation. Run `cargo xtask help`.
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

mod debian;
mod demo;
mod ebpf;
mod images;
mod kind;
mod modgraph;
mod setup;
mod vmtest;
mod wasm;

const USAGE: &str = "usage: cargo xtask <command>

Commands:
  setup     Install what building and testing need (idempotent; apt packages only if missing)
  test      setup, build sigil-server, sigil-agent and sigil-controller, then run every test of the workspace
            (extra arguments go to the test runner)
  demo      setup, build, then run a server, an agent and two workloads (uids 1001, 1002)
            doing SPIFFE mTLS, with rustls and with two Envoys fed by SDS; needs root
  bench     setup, release build, then the benchmarks: a table on stdout and in
            target/bench/results.md (+ results.json)
  images    Release build, then OCI images of sigil-server, sigil-agent and sigil-controller
            (from scratch, buildah, no daemon) as target/images/<name>.oci.tar, tagged
            ghcr.io/sigil-id/<name>:<version> and :latest
  e2e-kind  deploy/kind/e2e.sh: on a machine with docker, kind, helm, kubectl and istioctl, the
            images, the chart and Istio on a kind cluster, the seeds' sleep/httpbin flow checked,
            then teardown (--check: only list what is missing; --no-build: use target/images;
            --keep: leave the cluster)
  build-ebpf
            Build agent-ebpf (Debian rustc-web + bpf-linker) into target/ebpf/, where the
            agent's build script embeds it
  vm-test   setup, build-ebpf, then boot Debian's stock kernels under qemu and run the
            attestation self-test on each (LSM and fentry tiers on 6.1, tp_btf and LSM on 6.12)
  build-wasm
            Build envoy-filter-wasm (Debian rustc-web, wasm32-wasip1) into
            target/wasm/sigil_authz_filter.wasm, the Envoy authorization filter
  lint-wasm fmt --check, clippy -D warnings and host unit tests of envoy-filter-wasm
  modules   Fail if modules of agent/, server/ or crates/ import each other in a circle (also
            a test, so `test` checks it)
  codegen   Regenerate crates/sigil-proto/src/gen from the .proto files (needs protoc)
  crds      Regenerate the Helm charts' CRDs (deploy/helm/sigil/crds/, deploy/helm/sigil-crds/files/)
            from `sigil-controller crds`";

pub fn root() -> PathBuf {
    // CARGO_MANIFEST_DIR is xtask/; the workspace root is its parent.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cargo target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root().join(p) })
        .unwrap_or_else(|| root().join("target"))
}

/// `cargo` as invoked by the user (the one running xtask).
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

/// Runs `cmd`, failing with its command line if it does not exit 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("running {line}"))?;
    if !status.success() {
        bail!("{line} failed ({status})");
    }
    Ok(())
}

/// Whether `cmd` runs and exits 0 (output discarded).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn codegen() -> Result<()> {
    let proto = root().join("crates/sigil-proto/proto");
    let out = root().join("crates/sigil-proto/src/gen");
    std::fs::create_dir_all(&out)?;
    tonic_prost_build::configure()
        .out_dir(&out)
        .build_client(true)
        .build_server(true)
        .compile_protos(
            &[
                proto.join("workload.proto"),
                proto.join("types.proto"),
                proto.join("agent.proto"),
                proto.join("admin.proto"),
            ],
            &[proto],
        )
        .context("protoc failed (install protobuf-compiler)")?;
    Ok(())
}

/// The CRD files of the Helm charts, which must be `sigil-controller crds`'s output (a test of
/// `tests/tests/helm.rs` fails when they are not).
const CHART_CRDS: [&str; 2] = [
    "deploy/helm/sigil/crds/spire.spiffe.io_crds.yaml",
    "deploy/helm/sigil-crds/files/crds.yaml",
];

fn crds() -> Result<()> {
    let out = cargo()
        .args(["run", "-q", "-p", "sigil-controller", "--", "crds"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running sigil-controller crds")?;
    if !out.status.success() {
        bail!("sigil-controller crds failed ({})", out.status);
    }
    for file in CHART_CRDS {
        let path = root().join(file);
        std::fs::write(&path, &out.stdout)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("    wrote {}", path.display());
    }
    Ok(())
}

/// The binaries the e2e tests drive (they are not dependencies of the test crate, so
/// `cargo test` alone would not rebuild them).
pub fn build_binaries(extra: &[&str]) -> Result<()> {
    // The agent embeds the eBPF object when it exists at build time; build it first so that
    // tests and the demo always run the eBPF attestation tiers.
    ebpf::build()?;
    run(cargo()
        .args([
            "build",
            "-p",
            "sigil-server",
            "-p",
            "sigil-agent",
            "-p",
            "sigil-controller",
            "-p",
            "sigil-oidc",
        ])
        .args(extra))
}

fn test(args: &[String]) -> Result<()> {
    setup::setup()?;
    println!("==> building sigil-server, sigil-agent, sigil-controller and sigil-oidc");
    build_binaries(&[])?;
    // The Envoy e2e tests load the filter from target/wasm/.
    wasm::build()?;
    if succeeds(cargo().args(["nextest", "--version"])) {
        // nextest does not run doctests; run them first so that nextest's summary closes the
        // output.
        println!("==> cargo test --workspace --doc");
        let doc = run(cargo().args(["test", "--workspace", "--doc"]));
        println!("==> cargo nextest run --workspace");
        run(cargo()
            .args(["nextest", "run", "--workspace", "--no-fail-fast"])
            .env("SIGIL_KUBECTL", setup::kubectl_path())
            .env("SIGIL_HELM", setup::helm_path())
            .args(args))?;
        doc
    } else {
        println!("==> cargo test --workspace");
        run(cargo()
            .args(["test", "--workspace", "--no-fail-fast"])
            .env("SIGIL_KUBECTL", setup::kubectl_path())
            .env("SIGIL_HELM", setup::helm_path())
            .args(args))
    }
}

/// Release builds of everything the benchmarks run, then `sigil-bench` (extra arguments, e.g.
/// `--quick`, go to it).
fn bench(args: &[String]) -> Result<()> {
    setup::setup()?;
    ebpf::build()?;
    wasm::build()?;
    println!("==> building release binaries");
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "sigil-server",
        "-p",
        "sigil-agent",
        "-p",
        "sigil-controller",
        "-p",
        "sigil-bench",
    ]))?;
    let release = target_dir().join("release");
    run(Command::new(release.join("sigil-bench"))
        .current_dir(root())
        .arg("--bin-dir")
        .arg(&release)
        .arg("--out")
        .arg(target_dir().join("bench"))
        .args(args))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("codegen") => codegen(),
        Some("crds") => crds(),
        Some("setup") => setup::setup(),
        Some("test") => test(&args[1..]),
        Some("demo") => demo::demo(),
        Some("bench") => bench(&args[1..]),
        Some("images") => images::images(),
        Some("e2e-kind") => kind::e2e_kind(&args[1..]),
        Some("build-ebpf") => ebpf::build().map(drop),
        Some("vm-test") => vmtest::vm_test(),
        Some("build-wasm") => wasm::build().map(drop),
        Some("lint-wasm") => wasm::lint(),
        Some("modules") => modgraph::check(&root()),
        Some("help" | "-h" | "--help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown xtask command {other:?}\n\n{USAGE}"),
    }
}
