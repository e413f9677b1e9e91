//! Workload attestation: turning a caller ([`PeerInfo`]) into selectors.
//!
//! The active attestation tier ([`crate::Attestation`]) first establishes who the caller is
//! (a [`Caller`]: pid, credentials, cgroup, pod); attestors behind the [`WorkloadAttestor`] trait
//! turn that into selectors: `unix`, and `k8s` from the cgroup path (pod UID, container id; the
//! Kubernetes attestor will add what the API server knows about that pod). Attestation runs on
//! every RPC: a cached answer could outlive an `exec` into another binary.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use sigil_spiffe::Selector;

use crate::attestation::{Attestation, Caller};
use crate::error::AttestError;
use crate::peer::PeerInfo;
use crate::tier::TierRequest;

/// The `unix` workload attestor's options (its `plugin_data`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct UnixAttestorConfig {
    /// Adds `unix:path` and `unix:sha256` selectors.
    pub discover_workload_path: bool,
    /// Binaries larger than this are not hashed (0 = no limit).
    pub workload_size_limit: u64,
    /// Where caller facts come from (`attestation_tier`, or `-attestationTier`): `auto` picks
    /// the best tier the kernel and the agent's privileges allow.
    pub attestation_tier: TierRequest,
}

/// Produces selectors for a caller: the one trait every workload attestor (`unix`, `k8s` from
/// the cgroup, a Kubernetes attestor asking the kubelet) implements. Given what the attestation
/// tier established about the caller, return its selectors or say why not.
pub trait WorkloadAttestor: Send + Sync + 'static {
    /// The plugin name (`unix`, ...), which is also the selector type it emits.
    fn name(&self) -> &'static str;

    /// Attests `caller`. Implementations that read per-process state must call
    /// [`PeerInfo::verify_unchanged`] on `caller.peer` after reading it.
    fn attest<'a>(
        &'a self,
        caller: &'a Caller,
    ) -> BoxFuture<'a, Result<Vec<Selector>, AttestError>>;

    /// Completes when what this attestor said about `caller` may no longer hold: the workload
    /// is gone ([`WorkloadChange::Ended`], its pod deleted) or its facts changed
    /// ([`WorkloadChange::Changed`], e.g. its container appeared in the pod's status), so that
    /// open streams end or attest again. `None` (the default): the attestor's answer only
    /// changes with the process, which streams watch themselves.
    ///
    /// Called before [`attest`](Self::attest), so a change while attesting is not missed.
    fn watch(&self, _caller: &Caller) -> Option<BoxFuture<'static, WorkloadChange>> {
        None
    }
}

/// What became of the workload a caller was attested as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadChange {
    /// Gone (its pod deleted): it gets nothing more.
    Ended,
    /// What an attestor knows about it changed: attest again.
    Changed,
}

/// A caller's selectors, and what tells its streams to end or attest again.
pub struct Attested {
    pub selectors: Vec<Selector>,
    /// Completes at the first change any attestor reports; never, if none can.
    pub change: BoxFuture<'static, WorkloadChange>,
}

impl fmt::Debug for Attested {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attested")
            .field("selectors", &self.selectors)
            .finish_non_exhaustive()
    }
}

/// All configured attestors, run together on what the attestation tier established.
#[derive(Clone)]
pub struct Attestors {
    list: Vec<Arc<dyn WorkloadAttestor>>,
    attestation: Arc<Attestation>,
}

/// `k8s:pod-uid:<uid>` and `k8s:container-id:<id>` from the caller's cgroup path.
#[derive(Debug, Clone, Default)]
pub struct PodAttestor;

/// The `unix` attestor.
#[derive(Debug, Clone, Default)]
pub struct UnixAttestor {
    config: UnixAttestorConfig,
    hashes: Arc<Mutex<HashCache>>,
}

/// SHA-256 of binaries keyed by file identity, so that busy workloads are not re-hashed on every
/// RPC. An edited binary changes mtime (or inode, if replaced), which misses the cache.
#[derive(Debug, Default)]
struct HashCache(HashMap<FileKey, String>);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
    size: u64,
}

/// Upper bound on cached hashes; clearing on overflow keeps this simple and bounded.
const HASH_CACHE_MAX: usize = 1024;

// === impl Attestors ===

impl Attestors {
    /// With the procfs tier.
    pub fn new(attestors: Vec<Arc<dyn WorkloadAttestor>>) -> Self {
        Self::with_attestation(attestors, Arc::new(Attestation::procfs()))
    }

    pub fn with_attestation(
        attestors: Vec<Arc<dyn WorkloadAttestor>>,
        attestation: Arc<Attestation>,
    ) -> Self {
        Self {
            list: attestors,
            attestation,
        }
    }

    pub fn attestation(&self) -> &Attestation {
        &self.attestation
    }

    /// What the active tier establishes about `peer`.
    ///
    /// Runs inline: every tier is a handful of syscalls (a map lookup, an ioctl, small procfs
    /// reads), far cheaper than the two thread hand-offs a trip through the blocking pool costs
    /// on every Workload API call.
    pub async fn caller(&self, peer: &PeerInfo) -> Result<Caller, AttestError> {
        self.attestation.caller(peer)
    }

    /// Runs every attestor and unions their selectors. One attestor failing only loses its own
    /// selectors — entries need *all* their selectors, so fewer selectors can only mean fewer
    /// identities — except when the caller is gone, which fails the whole attestation.
    pub async fn attest(&self, peer: &PeerInfo) -> Result<Vec<Selector>, AttestError> {
        Ok(self.attest_session(peer).await?.selectors)
    }

    /// [`attest`](Self::attest), plus a future that completes when the caller's workload is
    /// gone: what a stream holds on to.
    pub async fn attest_session(&self, peer: &PeerInfo) -> Result<Attested, AttestError> {
        let caller = self.caller(peer).await?;
        let caller = &caller;
        let watches: Vec<_> = self.list.iter().filter_map(|a| a.watch(caller)).collect();
        let results = futures::future::join_all(
            self.list
                .iter()
                .map(|a| async move { (a.name(), a.attest(caller).await) }),
        )
        .await;
        let mut selectors = Vec::new();
        for (name, result) in results {
            match result {
                Ok(s) => selectors.extend(s),
                Err(e @ (AttestError::PeerGone(_) | AttestError::Refused(_))) => return Err(e),
                Err(error) => {
                    tracing::warn!(attestor = name, pid = peer.pid, %error, "workload attestor failed")
                }
            }
        }
        // Even if no attestor read /proc, do not hand out identities to a caller that is gone.
        peer.verify_unchanged()?;
        selectors.sort();
        selectors.dedup();
        let change: BoxFuture<'static, WorkloadChange> = if watches.is_empty() {
            Box::pin(std::future::pending())
        } else {
            Box::pin(async move { futures::future::select_all(watches).await.0 })
        };
        Ok(Attested { selectors, change })
    }
}

impl fmt::Debug for Attestors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attestors")
            .field("tier", &self.attestation.tier())
            .field(
                "attestors",
                &self.list.iter().map(|a| a.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

// === impl UnixAttestor ===

impl UnixAttestor {
    pub fn new(config: UnixAttestorConfig) -> Self {
        Self {
            config,
            hashes: Default::default(),
        }
    }

    /// The blocking part: /proc reads, NSS lookups, hashing.
    fn collect(&self, caller: &Caller) -> Result<Vec<Selector>, AttestError> {
        let peer = &caller.peer;
        let mut out = vec![unix("uid", caller.uid), unix("gid", caller.gid)];
        if let Some(name) = user_name(caller.uid) {
            out.push(unix("user", name));
        }
        if let Some(name) = group_name(caller.gid) {
            out.push(unix("group", name));
        }
        match supplementary_gids(peer.pid) {
            Ok(gids) => {
                for gid in gids {
                    out.push(unix("supplementary_gid", gid));
                    if let Some(name) = group_name(gid) {
                        out.push(unix("supplementary_group", name));
                    }
                }
            }
            Err(error) => {
                // The process is gone (or /proc is hidden): let the liveness check decide.
                peer.verify_unchanged()?;
                return Err(AttestError::Failed(format!(
                    "reading /proc/{}/status: {error}",
                    peer.pid
                )));
            }
        }
        if self.config.discover_workload_path {
            let exe = format!("/proc/{}/exe", peer.pid);
            let path = std::fs::read_link(&exe).map_err(|e| {
                AttestError::Failed(format!("reading the workload path from {exe}: {e}"))
            })?;
            out.push(unix("path", path.display()));
            // Hash through /proc/<pid>/exe rather than the path: it is the very file being
            // executed, even if the path has since been replaced or lives in another mount ns.
            match self.sha256(&exe) {
                Ok(Some(hex)) => out.push(unix("sha256", hex)),
                Ok(None) => {}
                Err(e) => {
                    return Err(AttestError::Failed(format!(
                        "hashing the workload binary: {e}"
                    )));
                }
            }
        }
        // Everything above described `peer.pid`; make sure that is still the caller.
        peer.verify_unchanged()?;
        Ok(out)
    }

    fn sha256(&self, exe: &str) -> io::Result<Option<String>> {
        let mut file = File::open(exe)?;
        let meta = file.metadata()?;
        let limit = self.config.workload_size_limit;
        if limit > 0 && meta.size() > limit {
            tracing::debug!(
                size = meta.size(),
                limit,
                "workload binary too large to hash"
            );
            return Ok(None);
        }
        let key = FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            size: meta.size(),
        };
        if let Some(hex) = self.lock_hashes().0.get(&key) {
            return Ok(Some(hex.clone()));
        }
        // ring's SHA-256 is assembly even in debug builds: hashing a 100+ MB binary takes a
        // fraction of a second instead of seconds.
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let hex = hex::encode(hasher.finish());
        let mut cache = self.lock_hashes();
        if cache.0.len() >= HASH_CACHE_MAX {
            cache.0.clear();
        }
        cache.0.insert(key, hex.clone());
        Ok(Some(hex))
    }

    fn lock_hashes(&self) -> std::sync::MutexGuard<'_, HashCache> {
        // A panic while holding the lock cannot leave the map inconsistent (single inserts), so
        // a poisoned lock is still usable.
        self.hashes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl WorkloadAttestor for UnixAttestor {
    fn name(&self) -> &'static str {
        "unix"
    }

    fn attest<'a>(
        &'a self,
        caller: &'a Caller,
    ) -> BoxFuture<'a, Result<Vec<Selector>, AttestError>> {
        // Only hashing a workload binary (discover_workload_path, on a cache miss) can take
        // long; everything else is a few small procfs/NSS reads, cheaper inline than a hop to
        // the blocking pool and back.
        if !self.config.discover_workload_path {
            return Box::pin(std::future::ready(self.collect(caller)));
        }
        let this = self.clone();
        let caller = caller.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.collect(&caller))
                .await
                .map_err(|e| AttestError::Failed(format!("attestation task failed: {e}")))?
        })
    }
}

// === impl PodAttestor ===

impl WorkloadAttestor for PodAttestor {
    fn name(&self) -> &'static str {
        "k8s"
    }

    fn attest<'a>(
        &'a self,
        caller: &'a Caller,
    ) -> BoxFuture<'a, Result<Vec<Selector>, AttestError>> {
        let k8s = |value: String| Selector {
            kind: "k8s".to_string(),
            value,
        };
        let mut out = Vec::new();
        if let Some(pod) = &caller.pod {
            out.push(k8s(format!("pod-uid:{}", pod.pod_uid)));
            if let Some(id) = &pod.container_id {
                out.push(k8s(format!("container-id:{id}")));
            }
        }
        Box::pin(std::future::ready(Ok(out)))
    }
}

fn unix(key: &str, value: impl fmt::Display) -> Selector {
    Selector {
        kind: "unix".to_string(),
        value: format!("{key}:{value}"),
    }
}

/// The `Groups:` line of `/proc/<pid>/status`.
fn supplementary_gids(pid: i32) -> io::Result<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_ascii_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default())
}

/// `getpwuid_r`, growing the buffer on `ERANGE`.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: all-zero is a valid `passwd` (null pointers, zero ids).
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the sizes given; on success `pwd`'s strings point
        // into `buf`, which outlives their use below.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success pw_name is a NUL-terminated string inside `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        return Some(name.to_string_lossy().into_owned());
    }
}

/// `getgrgid_r`, growing the buffer on `ERANGE`.
pub fn group_name(gid: u32) -> Option<String> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: all-zero is a valid `group`.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: as in `user_name`.
        let rc = unsafe {
            libc::getgrgid_r(
                gid,
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || result.is_null() || grp.gr_name.is_null() {
            return None;
        }
        // SAFETY: on success gr_name is a NUL-terminated string inside `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(grp.gr_name) };
        return Some(name.to_string_lossy().into_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use tokio::net::{UnixListener, UnixStream};

    async fn own_peer() -> (PeerInfo, UnixStream, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let client = UnixStream::connect(&path).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (PeerInfo::from_socket(&server).unwrap(), client, dir)
    }

    fn has(selectors: &[Selector], s: &str) -> bool {
        selectors.iter().any(|x| x.to_string() == s)
    }

    #[tokio::test]
    async fn attests_the_test_process() {
        let (peer, _client, _dir) = own_peer().await;
        let attestor = UnixAttestor::new(UnixAttestorConfig {
            discover_workload_path: true,
            workload_size_limit: 0,
            ..Default::default()
        });
        let caller = Attestation::procfs().caller(&peer).unwrap();
        let selectors = attestor.attest(&caller).await.unwrap();
        // SAFETY: geteuid/getegid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        assert!(has(&selectors, &format!("unix:uid:{uid}")), "{selectors:?}");
        assert!(has(&selectors, &format!("unix:gid:{gid}")), "{selectors:?}");
        if let Some(user) = user_name(uid) {
            assert!(
                has(&selectors, &format!("unix:user:{user}")),
                "{selectors:?}"
            );
        }
        let exe = std::env::current_exe().unwrap();
        assert!(
            has(&selectors, &format!("unix:path:{}", exe.display())),
            "{selectors:?}"
        );
        let digest = hex::encode(Sha256::digest(std::fs::read(&exe).unwrap()));
        assert!(
            has(&selectors, &format!("unix:sha256:{digest}")),
            "{selectors:?}"
        );
        // Second call is served from the hash cache and agrees.
        let again = attestor.attest(&caller).await.unwrap();
        assert_eq!(selectors, again);

        let all = Attestors::new(vec![Arc::new(attestor)]);
        let combined = all.attest(&peer).await.unwrap();
        assert!(has(&combined, &format!("unix:uid:{uid}")));
    }

    #[tokio::test]
    async fn path_selectors_only_when_enabled() {
        let (peer, _client, _dir) = own_peer().await;
        let caller = Attestation::procfs().caller(&peer).unwrap();
        let selectors = UnixAttestor::new(UnixAttestorConfig::default())
            .attest(&caller)
            .await
            .unwrap();
        assert!(!selectors.iter().any(|s| s.value.starts_with("path:")));
        assert!(!selectors.iter().any(|s| s.value.starts_with("sha256:")));
    }

    #[test]
    fn root_names() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert!(group_name(0).is_some());
    }
}
