//! The OCI images `cargo xtask images` writes to `target/images/<name>.oci.tar` (CI builds them
//! before `cargo xtask test`). Each archive is unpacked as a registry client would see it (the
//! OCI layout read by hand, the root filesystem by `umoci unpack`), and checked against what the
//! chart relies on:
//!
//! - both references, `ghcr.io/sigil-id/<name>:<workspace version>` and `:latest`, name one
//!   manifest, also for containerd (`kind load image-archive`);
//! - ENTRYPOINT `/usr/bin/<name>`, the user (65532 for server and controller, root for the
//!   agent), `PATH`;
//! - the root filesystem holds the binary, the libraries `ldd` says it needs (and the loader),
//!   `/etc/passwd`, `/etc/group`, `/etc/nsswitch.conf`, `/tmp` and the SPIRE-path symlink, and
//!   nothing else;
//! - `chroot <root> /usr/bin/<name> --help` prints the usage and exits 0, also as the image's
//!   user and through the SPIRE path.
//!
//! Needs root (chroot) and umoci (`cargo xtask setup` installs it).

use serde_json::Value;
use sigil_e2e::harness::target_dir;
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace version: the tag the chart's appVersion asks for.
const VERSION: &str = env!("CARGO_PKG_VERSION");

struct Expected {
    name: &'static str,
    user: &'static str,
    /// The symlink SPIRE guides' `kubectl exec` commands use.
    spire_path: Option<&'static str>,
    usage: &'static str,
}

const SERVER: Expected = Expected {
    name: "sigil-server",
    user: "65532:65532",
    spire_path: Some("/opt/spire/bin/spire-server"),
    usage: "Usage: sigil-server <command>",
};
const AGENT: Expected = Expected {
    name: "sigil-agent",
    user: "0:0",
    spire_path: Some("/opt/spire/bin/spire-agent"),
    usage: "Usage: sigil-agent <command>",
};
const CONTROLLER: Expected = Expected {
    name: "sigil-controller",
    user: "65532:65532",
    spire_path: None,
    usage: "Usage: sigil-controller",
};

#[test]
fn sigil_server_image() {
    check_image(&SERVER);
}

#[test]
fn sigil_agent_image() {
    check_image(&AGENT);
}

#[test]
fn sigil_controller_image() {
    check_image(&CONTROLLER);
}

fn check_image(want: &Expected) {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the image test unpacks and chroots into the images: it must run as root"
    );
    let archive = target_dir()
        .join("images")
        .join(format!("{}.oci.tar", want.name));
    assert!(
        archive.is_file(),
        "{} not found: build the images with `cargo xtask images` (CI runs it before `cargo \
         xtask test`)",
        archive.display()
    );
    let tmp = tempfile::Builder::new()
        .prefix(&format!("sigil-image-{}-", want.name))
        .tempdir()
        .unwrap();
    let layout = tmp.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout));

    // index.json: the two references, one manifest.
    let index = read_json(&layout.join("index.json"));
    let refs: Vec<(String, String)> = index["manifests"]
        .as_array()
        .expect("index.json manifests")
        .iter()
        .map(|m| {
            let name = m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .expect("a ref.name annotation")
                .to_string();
            assert_eq!(
                m["annotations"]["io.containerd.image.name"], name,
                "containerd's name must be the full reference"
            );
            (name, m["digest"].as_str().unwrap().to_string())
        })
        .collect();
    let versioned = format!("ghcr.io/sigil-id/{}:{VERSION}", want.name);
    let latest = format!("ghcr.io/sigil-id/{}:latest", want.name);
    let names: BTreeSet<&str> = refs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from([versioned.as_str(), latest.as_str()]),
        "{refs:?}"
    );
    assert!(
        refs.iter().all(|(_, d)| *d == refs[0].1),
        "both tags must name one manifest: {refs:?}"
    );

    // The image configuration.
    let manifest = read_json(&blob(&layout, &refs[0].1));
    let config = read_json(&blob(
        &layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
    let c = &config["config"];
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!([format!("/usr/bin/{}", want.name)])
    );
    assert!(c["Cmd"].is_null(), "no default arguments: {c}");
    assert_eq!(c["User"], want.user, "{c}");
    assert!(
        c["Env"]
            .as_array()
            .is_some_and(|e| e.iter().any(|v| v == "PATH=/usr/bin")),
        "{c}"
    );
    assert_eq!(
        c["Labels"]["org.opencontainers.image.version"], VERSION,
        "{c}"
    );

    // The root filesystem, as a runtime gets it.
    let bundle = tmp.path().join("bundle");
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{versioned}", layout.display()))
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    let runtime = read_json(&bundle.join("config.json"));
    let uid_gid = format!(
        "{}:{}",
        runtime["process"]["user"]["uid"], runtime["process"]["user"]["gid"]
    );
    assert_eq!(uid_gid, want.user, "umoci's runtime config");
    assert_eq!(
        runtime["process"]["args"][0],
        format!("/usr/bin/{}", want.name)
    );

    check_contents(want, &rootfs);

    // The binary runs from the image's root alone, as root and as the image's user.
    let help = chroot(&rootfs, None, &format!("/usr/bin/{}", want.name));
    assert!(help.contains(want.usage), "{help}");
    if want.user != "0:0" {
        let help = chroot(&rootfs, Some(want.user), &format!("/usr/bin/{}", want.name));
        assert!(help.contains(want.usage), "as {}: {help}", want.user);
    }
    if let Some(spire) = want.spire_path {
        let help = chroot(&rootfs, None, spire);
        assert!(help.contains(want.usage), "{spire}: {help}");
    }
}

/// Everything in `rootfs` is the binary, one of its libraries, or one of the few files.
fn check_contents(want: &Expected, rootfs: &Path) {
    let binary = format!("/usr/bin/{}", want.name);
    // What the binary needs, asked of the dynamic linker on this machine (where the image was
    // built): the libraries and the loader.
    let ldd = Command::new("ldd")
        .arg(rootfs.join(binary.trim_start_matches('/')))
        .output()
        .expect("running ldd");
    let ldd = String::from_utf8_lossy(&ldd.stdout);
    let libs: BTreeSet<String> = ldd
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_string())
        })
        .collect();
    assert!(
        libs.iter().any(|l| l.contains("ld-linux")),
        "ldd lists no loader: {ldd}"
    );

    let mut files: BTreeSet<String> = libs.clone();
    files.extend(
        [
            binary.as_str(),
            "/etc/passwd",
            "/etc/group",
            "/etc/nsswitch.conf",
        ]
        .map(String::from),
    );
    let mut expected: BTreeSet<String> = files.clone();
    expected.insert("/tmp".into());
    expected.extend(want.spire_path.map(String::from));
    // And the directories leading to them.
    for p in expected.clone() {
        let mut p = Path::new(&p).parent();
        while let Some(dir) = p.filter(|d| *d != Path::new("/")) {
            expected.insert(dir.to_string_lossy().into_owned());
            p = dir.parent();
        }
    }

    let mut found = BTreeSet::new();
    walk(rootfs, rootfs, &mut found);
    let extra: Vec<_> = found.difference(&expected).collect();
    let absent: Vec<_> = expected.difference(&found).collect();
    assert!(
        extra.is_empty() && absent.is_empty(),
        "the image's files differ from the binary, its libraries ({libs:?}) and the few files: \
         unexpected {extra:?}, missing {absent:?}"
    );

    for f in &files {
        let m = std::fs::symlink_metadata(rootfs.join(f.trim_start_matches('/'))).unwrap();
        assert!(m.is_file(), "{f} must be a regular file");
    }
    let tmp = std::fs::symlink_metadata(rootfs.join("tmp")).unwrap();
    assert!(tmp.is_dir());
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777, "/tmp mode");
    if let Some(spire) = want.spire_path {
        let target = std::fs::read_link(rootfs.join(spire.trim_start_matches('/'))).unwrap();
        assert_eq!(target, PathBuf::from(&binary));
    }
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("nonroot:x:65532:65532:")),
        "{passwd}"
    );
    assert!(passwd.lines().any(|l| l.starts_with("root:x:0:0:")));
    let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l == "nonroot:x:65532:"), "{group}");
}

/// Every path under `dir`, as `/…` relative to `root`.
fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        out.insert(format!(
            "/{}",
            path.strip_prefix(root).unwrap().to_string_lossy()
        ));
        if entry.file_type().unwrap().is_dir() {
            walk(root, &path, out);
        }
    }
}

/// `chroot [--userspec U] <rootfs> <program> --help`: exits 0; returns its output.
fn chroot(rootfs: &Path, user: Option<&str>, program: &str) -> String {
    // Found here: the child's environment is emptied below, PATH included.
    let program_path = ["/usr/sbin/chroot", "/usr/bin/chroot", "/sbin/chroot"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("chroot (coreutils) not found");
    let mut cmd = Command::new(program_path);
    if let Some(u) = user {
        cmd.arg(format!("--userspec={u}"));
    }
    // An empty environment: nothing of the host's leaks in.
    cmd.env_clear().arg(rootfs).arg(program).arg("--help");
    let out = cmd.output().expect("running chroot");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {text}",
        out.status
    );
    text
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (`cargo xtask setup` installs umoci)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    let (algo, hex) = digest.split_once(':').expect("algo:hex digest");
    layout.join("blobs").join(algo).join(hex)
}
