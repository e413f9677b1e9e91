//! `sigil-controller` in tests: its CRDs applied to a fake API server, and the controller
//! process with a spire-controller-manager config file.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sigil_fake_kube::FakeKube;

use crate::harness::{Proc, run, sigil_bin};

/// Applies the CRDs as `sigil-controller crds -output json` prints them.
pub fn apply_crds(kube: &FakeKube) {
    let mut cmd = Command::new(sigil_bin("sigil-controller"));
    cmd.args(["crds", "-output", "json"]);
    let out = run(cmd, Duration::from_secs(20)).ok();
    for crd in out.json()["items"].as_array().expect("a List of CRDs") {
        kube.apply(crd.clone());
    }
}

/// Starts `sigil-controller -config <dir>/<name>.yaml -kubeconfig <kubeconfig>` for trust
/// domain `td` and cluster `cluster`, on the admin socket `socket`; `extra` are more top-level
/// YAML lines of the config file. Health and metrics listen on ports the kernel picks.
pub fn start_controller(
    dir: &Path,
    name: &str,
    kubeconfig: &Path,
    socket: &Path,
    td: &str,
    cluster: &str,
    extra: &str,
) -> Proc {
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!(
            "apiVersion: spire.spiffe.io/v1alpha1\nkind: ControllerManagerConfig\nmetrics:\n  bindAddress: \"127.0.0.1:0\"\nhealth:\n  healthProbeBindAddress: \"127.0.0.1:0\"\ntrustDomain: {td}\nclusterName: {cluster}\nclusterDomain: cluster.local\nspireServerSocketPath: \"{}\"\ngcInterval: 30s\n{extra}\n",
            socket.display()
        ),
    )
    .expect("controller config");
    let mut cmd = Command::new(sigil_bin("sigil-controller"));
    cmd.arg("-config")
        .arg(&config)
        .arg("-kubeconfig")
        .arg(kubeconfig)
        .env("RUST_LOG", "sigil_controller=debug");
    Proc::spawn(name, cmd, dir.join(format!("{name}.log")))
}
