//! `cargo xtask images`: OCI images of `sigil-server`, `sigil-agent` and `sigil-controller`,
//! built without a container daemon, written as OCI archives to `target/images/<name>.oci.tar`.
//!
//! Each image is `FROM scratch` with exactly what its binary needs:
//!
//! - `/usr/bin/<name>`: the release binary (`cargo build --release`, the profile `cargo xtask
//!   bench` builds too), debug info stripped (the symbol table stays, for backtraces). It is the
//!   ENTRYPOINT; the chart passes only arguments.
//! - the shared libraries `ldd` lists for it (glibc's `libc`, `libm`, `libgcc_s`), and the
//!   dynamic loader, at the paths the binary asks for. Since glibc 2.34 the `files` and `dns`
//!   NSS modules are inside `libc.so.6`, so nothing is loaded later with `dlopen`.
//! - `/etc/passwd` and `/etc/group` with `root` and `nonroot` (65532, as distroless images have
//!   it), so that the user has a name; `/etc/nsswitch.conf` (`hosts: files dns`), so that
//!   `/etc/hosts`, which kubelet writes (pod `hostAliases`), is read before DNS: without the
//!   file glibc asks DNS first and only falls back to `/etc/hosts` when DNS is unreachable.
//! - `/tmp` (1777).
//! - `/opt/spire/bin/spire-server` (server) and `/opt/spire/bin/spire-agent` (agent): symlinks
//!   to the binary, so that SPIRE guides' `kubectl exec ... -- /opt/spire/bin/spire-server entry
//!   show` work unchanged in a Sigil pod.
//!
//! No CA certificates: nothing here talks TLS to a public endpoint. `sigil-controller`, the
//! server's `k8s_psat` attestor and the agent's `k8s` attestor use kube-rs with the in-cluster
//! configuration, which trusts exactly the service account's `ca.crt` (kube-client builds its
//! root store from the configured CA only); the agent and the server trust each other through
//! the SPIFFE bundle. Only a `kube_config_file` without `certificate-authority(-data)` would
//! fall back to system roots, and a cluster's API server is not signed by a public CA anyway.
//!
//! Users: server and controller run as 65532:65532 (`nonroot`). The agent's image runs as root,
//! which it needs: it loads and attaches eBPF programs (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN) to
//! learn who connects to the Workload API, reads other processes' `/proc/<pid>` (exe, cgroup,
//! status, with hostPID) whatever their uid, and creates the socket in a directory on the node
//! (hostPath) that workloads and the CSI driver share.
//!
//! Built with Debian's `buildah` (`from scratch`, `copy`, `config`, `commit`) in a private
//! `vfs` store under `target/images/`, removed afterwards. Nothing is run inside the image, so no
//! runtime or isolation is involved. The commit timestamp (and every file's time in the layer)
//! is `SOURCE_DATE_EPOCH`, else the time of the last commit: the same sources give the same
//! image digest, and both tags (the workspace version and `latest`) name one manifest. The OCI
//! layout is then packed into the archive with both references in `index.json`, also as
//! `io.containerd.image.name`, so that `kind load image-archive` (containerd's import) names
//! the images `ghcr.io/sigil-id/<name>:<tag>`, as the chart refers to them.

use crate::{cargo, root, run, target_dir};
use anyhow::{Context, Result, bail};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian packages: `buildah` builds the images, `umoci` unpacks them in the test.
pub const APT_PACKAGES: &[&str] = &["buildah", "umoci"];

/// Where the images' names start (`ghcr.io/sigil-id/sigil-server:<version>`).
pub const REPOSITORY: &str = "ghcr.io/sigil-id";

/// The non-root user of the server's and the controller's images (distroless's `nonroot`).
pub const NONROOT: &str = "65532:65532";

/// One image.
#[derive(Debug, Clone, Copy)]
pub struct Image {
    /// The binary, the image's name and its ENTRYPOINT (`/usr/bin/<name>`).
    pub name: &'static str,
    /// The cargo package that builds the binary.
    pub package: &'static str,
    /// `uid:gid` the image runs as.
    pub user: &'static str,
    /// A symlink to the binary where SPIRE's images keep theirs.
    pub spire_path: Option<&'static str>,
    pub description: &'static str,
}

pub const IMAGES: &[Image] = &[
    Image {
        name: "sigil-server",
        package: "sigil-server",
        user: NONROOT,
        spire_path: Some("/opt/spire/bin/spire-server"),
        description: "Sigil server: the trust domain's CA and registration store (SPIRE server compatible)",
    },
    Image {
        name: "sigil-agent",
        package: "sigil-agent",
        // Root: eBPF attestation (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN), other uids' /proc/<pid>
        // with hostPID, and the Workload API socket in a root-owned hostPath directory.
        user: "0:0",
        spire_path: Some("/opt/spire/bin/spire-agent"),
        description: "Sigil agent: node and workload attestation, SPIFFE Workload API and Envoy SDS (SPIRE agent compatible)",
    },
    Image {
        name: "sigil-controller",
        package: "sigil-controller",
        user: NONROOT,
        spire_path: None,
        description: "Sigil controller: ClusterSPIFFEID and ClusterStaticEntry registration (spire-controller-manager compatible)",
    },
];

/// `target/images/`.
pub fn images_dir() -> PathBuf {
    target_dir().join("images")
}

/// The workspace version (`[workspace.package] version` in Cargo.toml): the images' tag.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// `ghcr.io/sigil-id/<name>:<tag>`.
pub fn reference(name: &str, tag: &str) -> String {
    format!("{REPOSITORY}/{name}:{tag}")
}

const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\n\
                      nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnonroot:x:65532:\n";
const NSSWITCH: &str = "hosts: files dns\n";

/// `cargo xtask images`.
pub fn images() -> Result<()> {
    crate::debian::ensure_packages(APT_PACKAGES, "image tools (buildah, umoci)")?;
    // The agent embeds the eBPF object when it exists at build time.
    crate::ebpf::build()?;
    println!("==> building release binaries");
    let mut build = cargo();
    build.args(["build", "--release"]);
    for image in IMAGES {
        build.args(["-p", image.package]);
    }
    run(&mut build)?;

    let out = images_dir();
    std::fs::create_dir_all(&out)?;
    let work = out.join(".work");
    remove_dir(&work)?;
    std::fs::create_dir_all(&work)?;
    let timestamp = source_date_epoch()?;
    let buildah = Buildah::new(&work);
    let result = IMAGES.iter().try_for_each(|image| {
        println!("==> image {}", reference(image.name, version()));
        build_image(&buildah, image, &work, &out, timestamp)
    });
    // The working containers and the vfs store go whatever happened.
    buildah.remove_all();
    remove_dir(&work)?;
    result?;
    for image in IMAGES {
        let archive = archive_path(image.name);
        let size = std::fs::metadata(&archive)?.len();
        println!(
            "    {} ({:.1} MiB): {}, {}",
            archive.display(),
            size as f64 / (1024.0 * 1024.0),
            reference(image.name, version()),
            reference(image.name, "latest")
        );
    }
    Ok(())
}

/// `target/images/<name>.oci.tar`.
pub fn archive_path(name: &str) -> PathBuf {
    images_dir().join(format!("{name}.oci.tar"))
}

fn build_image(
    buildah: &Buildah,
    image: &Image,
    work: &Path,
    out: &Path,
    timestamp: u64,
) -> Result<()> {
    let rootfs = work.join(format!("{}.rootfs", image.name));
    stage_rootfs(
        image,
        &target_dir().join("release").join(image.name),
        &rootfs,
    )?;

    let ctr = buildah.output(&[
        "from",
        "--name",
        &format!("{}-build", image.name),
        "scratch",
    ])?;
    let ctr = ctr.trim();
    buildah.run(&[
        "copy",
        "--quiet",
        "--chown",
        "0:0",
        ctr,
        &path_str(&rootfs)?,
        "/",
    ])?;
    let entrypoint = format!("[\"/usr/bin/{}\"]", image.name);
    let version = version();
    let labels = [
        format!("org.opencontainers.image.title={}", image.name),
        format!("org.opencontainers.image.description={}", image.description),
        format!("org.opencontainers.image.version={version}"),
        "org.opencontainers.image.licenses=Apache-2.0".to_string(),
        "org.opencontainers.image.vendor=Sigil".to_string(),
    ];
    let mut config: Vec<&str> = vec![
        "config",
        "--entrypoint",
        &entrypoint,
        "--user",
        image.user,
        "--workingdir",
        "/",
        "--env",
        "PATH=/usr/bin",
        "--os",
        "linux",
        "--created-by",
        "cargo xtask images",
    ];
    for l in &labels {
        config.extend(["--label", l]);
    }
    config.push(ctr);
    buildah.run(&config)?;

    let layout = work.join(format!("{}.layout", image.name));
    let ts = timestamp.to_string();
    for tag in [version, "latest"] {
        let dest = format!("oci:{}:{}", path_str(&layout)?, reference(image.name, tag));
        buildah.run(&[
            "commit",
            "--quiet",
            "--format",
            "oci",
            "--timestamp",
            &ts,
            "--identity-label=false",
            "--disable-compression=false",
            ctr,
            &dest,
        ])?;
    }
    buildah.output(&["rm", ctr])?;
    let digest = name_for_containerd(&layout)?;
    println!("    manifest {digest}");
    pack(&layout, &archive_path(image.name), out, timestamp)
}

/// The image's root filesystem in `rootfs`: the stripped binary, its libraries, the few files
/// of the module docs.
fn stage_rootfs(image: &Image, binary: &Path, rootfs: &Path) -> Result<()> {
    remove_dir(rootfs)?;
    let bin = rootfs.join("usr/bin").join(image.name);
    std::fs::create_dir_all(bin.parent().context("usr/bin")?)?;
    if !binary.is_file() {
        bail!("{} was not built", binary.display());
    }
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&bin)
        .arg(binary))?;
    set_mode(&bin, 0o755)?;

    for lib in needed_libraries(&bin)? {
        let rel = lib.strip_prefix("/").context("absolute library path")?;
        let dest = rootfs.join(rel);
        std::fs::create_dir_all(dest.parent().context("library directory")?)?;
        // The file itself, not a symlink to it: the library's real name does not matter.
        std::fs::copy(&lib, &dest).with_context(|| format!("copying {}", lib.display()))?;
        let exec = std::fs::metadata(&lib)?.permissions().mode() & 0o111 != 0;
        set_mode(&dest, if exec { 0o755 } else { 0o644 })?;
    }

    let etc = rootfs.join("etc");
    std::fs::create_dir_all(&etc)?;
    for (name, text) in [
        ("passwd", PASSWD),
        ("group", GROUP),
        ("nsswitch.conf", NSSWITCH),
    ] {
        std::fs::write(etc.join(name), text)?;
        set_mode(&etc.join(name), 0o644)?;
    }
    let tmp = rootfs.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    set_mode(&tmp, 0o1777)?;

    if let Some(spire) = image.spire_path {
        let link = rootfs.join(spire.trim_start_matches('/'));
        std::fs::create_dir_all(link.parent().context("symlink directory")?)?;
        std::os::unix::fs::symlink(format!("/usr/bin/{}", image.name), &link)?;
    }
    // Every directory 0755 (umask-independent), /tmp excepted.
    set_dir_modes(rootfs, &tmp)?;
    Ok(())
}

/// The absolute paths of the shared libraries and the loader `ldd` lists for `binary`
/// (nothing for a static binary).
pub fn needed_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("statically linked") {
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("statically linked") || err.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {err}", binary.display());
    }
    parse_ldd(&text)
}

/// `ldd`'s lines: `name => /path (addr)`, `/loader (addr)`, `linux-vdso.so.1 (addr)`.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("ldd: {} not found", name.trim());
                }
                rest.split_whitespace().next().unwrap_or_default()
            }
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        // The vDSO has no file.
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

/// Adds `io.containerd.image.name` (the full reference) beside each manifest's
/// `org.opencontainers.image.ref.name` in the layout's `index.json`; returns the manifest's
/// digest, which both tags must share.
fn name_for_containerd(layout: &Path) -> Result<String> {
    let path = layout.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let digests: std::collections::BTreeSet<String> = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["digest"].as_str().map(str::to_string))
        .collect();
    if digests.len() != 1 {
        bail!(
            "{}: expected one manifest for both tags, found {digests:?}",
            path.display()
        );
    }
    for m in index["manifests"].as_array_mut().into_iter().flatten() {
        let Some(annotations) = m["annotations"].as_object_mut() else {
            continue;
        };
        if let Some(name) = annotations
            .get("org.opencontainers.image.ref.name")
            .cloned()
        {
            annotations.insert("io.containerd.image.name".into(), name);
        }
    }
    std::fs::write(&path, serde_json::to_vec(&index)?)?;
    Ok(digests.into_iter().next().unwrap_or_default())
}

/// The OCI layout as a tar (what the `oci-archive:` transport reads), written beside the final
/// name and renamed.
fn pack(layout: &Path, archive: &Path, out: &Path, timestamp: u64) -> Result<()> {
    let partial = out.join(format!(
        ".{}.partial",
        archive
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("image")
    ));
    run(Command::new("tar")
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
        .arg(format!("--mtime=@{timestamp}"))
        .arg("-C")
        .arg(layout)
        .arg("-cf")
        .arg(&partial)
        .args(["oci-layout", "index.json", "blobs"]))?;
    std::fs::rename(&partial, archive)?;
    Ok(())
}

/// `SOURCE_DATE_EPOCH`, else the committer time of `HEAD`, else 0.
fn source_date_epoch() -> Result<u64> {
    if let Ok(s) = std::env::var("SOURCE_DATE_EPOCH") {
        return s
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={s:?}"));
    }
    let out = Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(root())
        .output();
    Ok(out
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0))
}

/// buildah with a private vfs store in `work` (no daemon, no overlay mounts, nothing shared
/// with the machine's own containers).
#[derive(Debug)]
struct Buildah {
    root: PathBuf,
    runroot: PathBuf,
}

impl Buildah {
    fn new(work: &Path) -> Self {
        Self {
            root: work.join("storage"),
            runroot: work.join("run"),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("buildah");
        c.arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args(["--storage-driver", "vfs"])
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Result<()> {
        run(&mut self.command(args))
    }

    fn output(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.command(args);
        let line = format!("{cmd:?}");
        let out = cmd.output().with_context(|| format!("running {line}"))?;
        if !out.status.success() {
            bail!(
                "{line} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Removes every working container (after a failure some may be left).
    fn remove_all(&self) {
        if self.root.exists() {
            let _ = self.command(&["rm", "--all"]).output();
        }
    }
}

fn path_str(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_string)
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", p.display()))
}

fn set_dir_modes(dir: &Path, except: &Path) -> Result<()> {
    if dir != except {
        set_mode(dir, 0o755)?;
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            set_dir_modes(&entry.path(), except)?;
        }
    }
    Ok(())
}

fn remove_dir(p: &Path) -> Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f85)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f85)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f85)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
    }

    #[test]
    fn version_is_the_workspace_version() {
        let cargo_toml = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
        assert!(cargo_toml.contains(&format!("version = \"{}\"", version())));
        assert_eq!(
            reference("sigil-agent", version()),
            format!("ghcr.io/sigil-id/sigil-agent:{}", version())
        );
    }
}
