//! cgroup v2: from a cgroup id (what the kernel recorded) to the cgroup's path, and from the path
//! to the Kubernetes pod UID and container id that kubelet and the container runtime encode in it.

use std::collections::HashMap;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// A cgroup v2 id and, when it could be resolved, its path below the cgroup2 mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    pub id: u64,
    /// Like `/proc/<pid>/cgroup` shows it: `/kubepods.slice/...`.
    pub path: Option<String>,
}

/// What the cgroup path says about the Kubernetes workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    /// The pod's `metadata.uid`.
    pub pod_uid: String,
    /// The container id (64 hex digits) as the runtime names it, without the runtime prefix.
    pub container_id: Option<String>,
}

/// Resolved ids; cgroup ids are never reused during a boot, so entries never go stale (a removed
/// cgroup's entry is merely useless). Cleared when full to stay bounded.
static PATHS: Mutex<Option<HashMap<u64, String>>> = Mutex::new(None);
const PATHS_MAX: usize = 4096;
/// Upper bound on directories visited by the fallback tree walk.
const WALK_MAX: usize = 100_000;

/// The cgroup2 mount point (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid hosts).
pub fn mount_point() -> Option<&'static Path> {
    static MOUNT: OnceLock<Option<PathBuf>> = OnceLock::new();
    MOUNT
        .get_or_init(|| {
            let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
            info.lines().find_map(|l| {
                let (pre, post) = l.split_once(" - ")?;
                if post.split_whitespace().next()? != "cgroup2" {
                    return None;
                }
                pre.split_whitespace().nth(4).map(PathBuf::from)
            })
        })
        .as_deref()
}

/// The cgroup v2 path of a process, from `/proc/<pid>/cgroup` (`0::/path`).
pub fn proc_path(pid: i32) -> std::io::Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
        .ok_or_else(|| std::io::Error::other("no cgroup v2 entry in /proc/<pid>/cgroup"))
}

/// The id of the cgroup at `path` (relative to the mount): its directory's inode number.
pub(crate) fn id_of(path: &str) -> Option<u64> {
    let dir = mount_point()?.join(path.trim_start_matches('/'));
    std::fs::metadata(dir).ok().map(|m| m.ino())
}

/// Resolves `id` to a path: from the cache, else `hint` (e.g. the process's current
/// `/proc/<pid>/cgroup`, computed only then) if its id matches — the process may have moved
/// since the kernel recorded the id, and then the recorded id is what counts — else by walking
/// the cgroup tree.
pub(crate) fn resolve(id: u64, hint: impl FnOnce() -> Option<String>) -> Cgroup {
    let path = cached(id)
        .or_else(|| hint().filter(|h| id_of(h) == Some(id)))
        .or_else(|| walk(id));
    if let Some(p) = &path {
        remember(id, p);
    }
    Cgroup { id, path }
}

fn lock() -> std::sync::MutexGuard<'static, Option<HashMap<u64, String>>> {
    // Single-entry updates cannot leave the map inconsistent: a poisoned lock is still usable.
    PATHS.lock().unwrap_or_else(|p| p.into_inner())
}

fn cached(id: u64) -> Option<String> {
    lock().as_ref()?.get(&id).cloned()
}

fn remember(id: u64, path: &str) {
    let mut guard = lock();
    let map = guard.get_or_insert_with(HashMap::new);
    if map.len() >= PATHS_MAX {
        map.clear();
    }
    map.insert(id, path.to_string());
}

/// Breadth-first search of the cgroup2 tree for the directory whose inode is `id`.
fn walk(id: u64) -> Option<String> {
    let root = mount_point()?;
    if std::fs::metadata(root).ok()?.ino() == id {
        return Some("/".into());
    }
    let mut queue = std::collections::VecDeque::from([root.to_path_buf()]);
    let mut visited = 0;
    while let Some(dir) = queue.pop_front() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            if !ft.is_dir() {
                continue;
            }
            visited += 1;
            if visited > WALK_MAX {
                return None;
            }
            if entry.ino() == id {
                let rel = entry.path().strip_prefix(root).ok()?.display().to_string();
                return Some(format!("/{rel}"));
            }
            queue.push_back(entry.path());
        }
    }
    None
}

/// Pod UID and container id from a cgroup path, for kubelet's systemd and cgroupfs drivers and
/// the containerd, CRI-O and Docker runtimes:
///
/// - systemd: `.../kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope`
///   (`crio-<id>.scope`, `docker-<id>.scope`)
/// - cgroupfs: `.../kubepods/burstable/pod<uid>/<id>` (`crio-<id>`, `docker-<id>`)
pub(crate) fn parse_kubepods(path: &str) -> Option<PodRef> {
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    // Nothing before "kubepods" counts: a path that merely contains "pod..." elsewhere is not a
    // pod.
    // A kubelet with `cgroupRoot` set (kind: `/kubelet`) names the systemd slice
    // `<root>-kubepods.slice` under `<root>.slice`.
    parts
        .by_ref()
        .find(|p| *p == "kubepods" || *p == "kubepods.slice" || p.ends_with("-kubepods.slice"))?;
    let mut pod_uid = None;
    let mut container_id = None;
    for part in parts {
        if pod_uid.is_none() {
            pod_uid = pod_component(part);
            continue;
        }
        // The first component below the pod is the container (or the sandbox/conmon, which
        // is not a workload container).
        container_id = container_component(part);
        break;
    }
    Some(PodRef {
        pod_uid: pod_uid?,
        container_id,
    })
}

/// `kubepods-burstable-pod<uid>.slice` / `kubepods-pod<uid>.slice` (systemd, `-` written `_`)
/// or `pod<uid>` (cgroupfs).
fn pod_component(part: &str) -> Option<String> {
    let uid = match part.strip_suffix(".slice") {
        Some(slice) => slice.rsplit_once("-pod")?.1.replace('_', "-"),
        None => part.strip_prefix("pod")?.to_string(),
    };
    is_uuid(&uid).then_some(uid)
}

fn container_component(part: &str) -> Option<String> {
    let name = part.strip_suffix(".scope").unwrap_or(part);
    if name.starts_with("crio-conmon-") {
        return None;
    }
    let id = ["cri-containerd-", "crio-", "docker-"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name);
    is_container_id(id).then(|| id.to_string())
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "2f0b7c4e-8a61-4c3e-9d2b-5f7a1e6c9b30";
    const CID: &str = "4a5b9c2d1e0f3a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b";

    fn pod(path: &str) -> Option<(String, Option<String>)> {
        parse_kubepods(path).map(|p| (p.pod_uid, p.container_id))
    }

    #[test]
    fn systemd_driver() {
        let u = UID.replace('-', "_");
        for (runtime, qos) in [
            ("cri-containerd", "burstable"),
            ("crio", "besteffort"),
            ("docker", "burstable"),
        ] {
            let path = format!(
                "/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{u}.slice/{runtime}-{CID}.scope"
            );
            assert_eq!(pod(&path), Some((UID.into(), Some(CID.into()))), "{path}");
        }
        // Guaranteed QoS pods sit directly under kubepods.slice.
        let path = format!("/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{CID}.scope");
        assert_eq!(pod(&path), Some((UID.into(), Some(CID.into()))));
        // The pod slice itself: a pod, no container.
        let path =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice");
        assert_eq!(pod(&path), Some((UID.into(), None)));
        // CRI-O's conmon is not a container.
        let path = format!("/kubepods.slice/kubepods-pod{u}.slice/crio-conmon-{CID}.scope");
        assert_eq!(pod(&path), Some((UID.into(), None)));
        // A kubelet with `cgroupRoot: /kubelet` (kind's nodes).
        let path = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(pod(&path), Some((UID.into(), Some(CID.into()))));
        let path = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{u}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(pod(&path), Some((UID.into(), Some(CID.into()))));
    }

    #[test]
    fn cgroupfs_driver() {
        for prefix in ["", "crio-", "docker-", "cri-containerd-"] {
            let path = format!("/kubepods/burstable/pod{UID}/{prefix}{CID}");
            assert_eq!(pod(&path), Some((UID.into(), Some(CID.into()))), "{path}");
        }
        let path = format!("/kubepods/pod{UID}/{CID}");
        assert_eq!(pod(&path), Some((UID.into(), Some(CID.into()))));
        // Nested under another root (a test's cgroup, a VM's "unified" child).
        let path = format!("/unified/sigil-test/kubepods/besteffort/pod{UID}/{CID}");
        assert_eq!(pod(&path), Some((UID.into(), Some(CID.into()))));
    }

    #[test]
    fn not_pods() {
        assert_eq!(pod("/user.slice/user-0.slice/session-1.scope"), None);
        assert_eq!(pod("/system.slice/containerd.service"), None);
        assert_eq!(pod("/system.slice/not-kubepods.service/x"), None);
        assert_eq!(pod(&format!("/pod{UID}/{CID}")), None, "no kubepods root");
        assert_eq!(pod("/kubepods/burstable/podnot-a-uid/abc"), None);
        assert_eq!(pod("/kubepods/burstable"), None);
        let path = format!("/kubepods/burstable/pod{UID}/short-id");
        assert_eq!(pod(&path), Some((UID.into(), None)));
    }

    #[test]
    fn own_cgroup_resolves() {
        if mount_point().is_none() {
            eprintln!("skipping: no cgroup2 mount");
            return;
        }
        let Ok(path) = proc_path(std::process::id() as i32) else {
            eprintln!("skipping: no cgroup v2 entry for this process");
            return;
        };
        let Some(id) = id_of(&path) else {
            eprintln!("skipping: own cgroup {path} not under the cgroup2 mount");
            return;
        };
        assert_eq!(
            resolve(id, || Some(path.clone())).path.as_deref(),
            Some(path.as_str())
        );
        // Without a hint the walk finds it too (then from the cache).
        assert_eq!(resolve(id, || None).path.as_deref(), Some(path.as_str()));
        assert_eq!(walk(id).as_deref(), Some(path.as_str()));
    }
}
