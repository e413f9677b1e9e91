//! Pods as cgroups: kubelet-named cgroup v2 directories for the test's processes, and running a
//! command inside one (moved in between fork and exec, so the process connects from there).

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::{CliOutput, run, wait_until};

/// A cgroup v2 directory for the test, removed (children first) on drop.
#[derive(Debug)]
pub struct Cgroups {
    root: PathBuf,
}

impl Cgroups {
    pub fn new(name: &str) -> Self {
        let mount = cgroup2_mount();
        let root = mount.join(format!("sigil-e2e-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&root).expect("creating a cgroup");
        Self { root }
    }

    /// `rel` under the test's root, created.
    pub fn dir(&self, rel: &str) -> PathBuf {
        let d = self.root.join(rel);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        d
    }

    /// kubelet's systemd driver with containerd: `kubepods-burstable-pod<uid_>.slice/
    /// cri-containerd-<id>.scope`.
    pub fn systemd_containerd(&self, pod_uid: &str, container_id: &str) -> PathBuf {
        self.dir(&format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{container_id}.scope",
            pod_uid.replace('-', "_")
        ))
    }

    /// kubelet's cgroupfs driver with CRI-O: `kubepods/besteffort/pod<uid>/crio-<id>`.
    pub fn cgroupfs_crio(&self, pod_uid: &str, container_id: &str) -> PathBuf {
        self.dir(&format!(
            "kubepods/besteffort/pod{pod_uid}/crio-{container_id}"
        ))
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        fn rm(d: &Path) {
            if let Ok(entries) = std::fs::read_dir(d) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        rm(&e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(d);
        }
        rm(&self.root);
    }
}

/// The cgroup2 mount (this host is hybrid: /sys/fs/cgroup/unified).
pub fn cgroup2_mount() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| PathBuf::from(pre.split_whitespace().nth(4).unwrap_or_default()))
        })
        .expect("a cgroup2 mount")
}

/// Makes `cmd` start inside cgroup `dir`.
pub fn in_cgroup(cmd: &mut Command, dir: &Path) {
    let procs = CString::new(dir.join("cgroup.procs").display().to_string()).expect("no NUL");
    // SAFETY: runs between fork and exec using only open/write/close on data prepared before.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            libc::close(fd);
            if !ok {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `sigil-demo-peer fetch` inside cgroup `dir`: the SPIFFE IDs it got, or its output.
pub fn fetch_in_cgroup(peer: &Path, socket: &Path, dir: &Path) -> Result<Vec<String>, CliOutput> {
    let mut c = Command::new(peer);
    c.arg("fetch").arg("-socketPath").arg(socket);
    in_cgroup(&mut c, dir);
    let out = run(c, Duration::from_secs(30));
    if out.success() {
        let mut ids: Vec<String> = out.stdout.lines().map(str::to_string).collect();
        ids.sort();
        Ok(ids)
    } else {
        Err(out)
    }
}

/// Retries [`fetch_in_cgroup`] until it returns exactly `want`.
pub fn wait_for_ids_in(peer: &Path, socket: &Path, dir: &Path, want: &[String]) {
    wait_until(
        &format!("{want:?} for a workload in {}", dir.display()),
        Duration::from_secs(30),
        || match fetch_in_cgroup(peer, socket, dir) {
            Ok(ids) if ids == want => Some(()),
            _ => None,
        },
    );
}
