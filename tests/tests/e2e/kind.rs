//! `deploy/kind/e2e.sh` (`cargo xtask e2e-kind`): the script is valid bash and passes
//! shellcheck here; on a machine with docker (and its daemon), kind, helm, kubectl, istioctl,
//! jq and openssl it runs end to end (with the images `cargo xtask images` already built),
//! elsewhere the test says what is missing and is skipped, visibly.

use sigil_e2e::harness::{target_dir, workspace_root};
use std::process::Command;

fn script() -> std::path::PathBuf {
    workspace_root().join("deploy/kind/e2e.sh")
}

#[test]
fn e2e_script_is_valid_bash_and_passes_shellcheck() {
    let out = Command::new("bash")
        .arg("-n")
        .arg(script())
        .output()
        .expect("running bash -n");
    assert!(
        out.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("shellcheck")
        .arg("--severity=style")
        .arg(script())
        .output()
        .expect("running shellcheck (`cargo xtask setup` installs it)");
    assert!(
        out.status.success(),
        "shellcheck:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The files the script applies are where it says.
    let text = std::fs::read_to_string(script()).unwrap();
    for path in [
        "deploy/istio/istio-sigil-csi.yaml",
        "deploy/istio/samples/clusterspiffeids.yaml",
        "deploy/istio/samples/peer-authentication.yaml",
        "deploy/istio/samples/sleep-httpbin.yaml",
    ] {
        assert!(workspace_root().join(path).is_file(), "{path}");
        let file = path.rsplit('/').next().unwrap();
        assert!(text.contains(file), "the script does not use {path}");
    }
}

#[test]
fn e2e_kind() {
    let check = Command::new("bash")
        .arg(script())
        .arg("--check")
        .env("SIGIL_TARGET_DIR", target_dir())
        .output()
        .expect("running e2e.sh --check");
    let said = String::from_utf8_lossy(&check.stderr).into_owned()
        + &String::from_utf8_lossy(&check.stdout);
    match check.status.code() {
        Some(3) => {
            let missing = said
                .lines()
                .find_map(|l| l.strip_prefix("e2e-kind: missing: "))
                .unwrap_or_else(|| panic!("exit 3 without a missing list: {said}"));
            eprintln!(
                "SKIPPED: e2e-kind needs docker (with a daemon), kind, helm, kubectl, istioctl, jq, \
                 openssl and the chart: missing {missing}"
            );
        }
        Some(0) => {
            // Everything is here: the whole flow, with the images CI built before the tests.
            let status = Command::new("bash")
                .arg(script())
                .arg("--no-build")
                .env("SIGIL_TARGET_DIR", target_dir())
                .status()
                .expect("running e2e.sh");
            assert!(status.success(), "deploy/kind/e2e.sh failed ({status})");
        }
        other => panic!("e2e.sh --check exited {other:?}: {said}"),
    }
}
