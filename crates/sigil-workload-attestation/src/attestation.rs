//! Where the facts about a Workload API caller come from: the attestation *tier*.
//!
//! The best tier has the kernel record the caller when it connects, so that nothing the caller
//! does afterwards (exit and have its pid reused, exec another binary, hand the fd to another
//! process) can make the agent describe a different process. Chosen at start-up, best first:
//!
//! | tier | how | needs |
//! | --- | --- | --- |
//! | `lsm` | BPF LSM `unix_stream_connect` | `bpf` in the active LSMs, BPF privileges |
//! | `fentry` | fentry `security_unix_stream_connect` | BPF trampolines, BPF privileges |
//! | `tp_btf` | tp_btf `sock/sk_data_ready`: the first writer, checked against `SO_PEERCRED` | Linux 6.10, BPF privileges |
//! | `pidfd` | `SO_PEERPIDFD` + `PIDFD_GET_INFO` | Linux 6.13 |
//! | `procfs` | `SO_PEERCRED` + `/proc/<pid>` with a start-time re-check | - |
//!
//! Every tier yields a [`Caller`]; the workload attestors turn it into selectors, and the
//! caller is re-verified after every `/proc` read they make.
//!
//! The tier in use is state of the [`Attestation`] (the agent reports it on `/ready`, in
//! `/metrics` and in a response header), not a global: two agents in one process, or a test,
//! each have their own.
//!
//! What each tier refuses, so that no caller gets another workload's identity:
//!
//! - the caller exited (its pid may belong to someone else by now): eBPF tiers compare the
//!   recorded start time with the pid's at accept and re-check it after every read; `pidfd`
//!   gets no credentials for a reaped process; `procfs` re-checks start time and pidfd;
//! - the caller exec'd another binary after connecting: eBPF tiers compare the recorded
//!   executable (dev, inode) with `/proc/<pid>/exe`; `pidfd` and `procfs` describe the current
//!   binary, never the old one;
//! - another process wrote on the connection (fd passed over `SCM_RIGHTS` or inherited):
//!   `tp_btf` records that writer (the first writer must be the `SO_PEERCRED` process, later
//!   ones set `foreign_writer`); the connect-hook tiers track writers with the matching
//!   `socket_sendmsg` hook (before the data is queued), or the tracepoint. A sender that exits
//!   is refused by every tier.
//!
//! Limits: without writer tracking (pidfd, procfs), a connecting process that stays alive can
//! delegate its connection, as with `SO_PEERCRED` (it could as well hand over its SVID). The
//! tracepoint fires after the data is queued, so with `tp_btf` a foreign write racing the agent's
//! read of that very request can be attested once before the flag is set. The recorded
//! tgid is in the initial pid namespace: the agent must run in the host's (as SPIRE's does).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sigil_ebpf_common::{ConnRecord, FOREIGN_WRITER};

use crate::cgroup::{self, Cgroup, PodRef};
use crate::error::AttestError;
use crate::peer::{PeerGone, PeerInfo, PidfdSource};
use crate::tier::{Tier, TierRequest, TierUnavailable};
use crate::{btf, ebpf, pidfd};

/// The active tier and what it needs at attestation time.
#[derive(Debug)]
pub struct Attestation {
    tier: Tier,
    recorder: Option<ebpf::Recorder>,
    /// Better tiers that were tried and why they could not be used.
    skipped: Vec<(Tier, String)>,
}

/// What the active tier established about a caller. Handed to every workload attestor.
#[derive(Clone, Debug)]
pub struct Caller {
    pub tier: Tier,
    /// The connection as accepted (pid, credentials, pidfd), for re-verification.
    pub peer: PeerInfo,
    /// The caller's pid in the agent's pid namespace.
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// The caller's cgroup v2: the one the kernel recorded at connect (eBPF), its current one
    /// through its pidfd (pidfd), or `/proc/<pid>/cgroup` (procfs).
    pub cgroup: Option<Cgroup>,
    /// The pod and container the cgroup path names, for `k8s:` selectors and for the Kubernetes
    /// attestor to look up.
    pub pod: Option<PodRef>,
    /// What the eBPF program recorded, with the executable and namespaces.
    pub record: Option<ConnRecord>,
}

// === impl Attestation ===

impl Attestation {
    /// Picks the tier for the Workload API socket at `socket` (already bound: the eBPF tiers
    /// filter on its inode). `Auto` takes the best that works; a forced tier that cannot run is
    /// an error.
    pub fn start(request: TierRequest, socket: &Path) -> Result<Self, TierUnavailable> {
        let candidates: Vec<Tier> = match request {
            TierRequest::Auto => Tier::ALL.to_vec(),
            TierRequest::Force(t) => vec![t],
        };
        let mut skipped = Vec::new();
        // Loaded lazily: only the eBPF tiers need it.
        let mut btf: Option<Result<btf::Btf, String>> = None;
        for tier in candidates {
            let result = match tier {
                Tier::Lsm | Tier::Fentry | Tier::TpBtf => {
                    let btf = btf
                        .get_or_insert_with(|| btf::Btf::from_sys_fs().map_err(|e| e.to_string()));
                    Self::probe_ebpf(tier, socket, btf)
                }
                Tier::Pidfd => pidfd::probe().map(|()| None),
                Tier::Procfs => Ok(None),
            };
            match result {
                Ok(recorder) => {
                    return Ok(Self {
                        tier,
                        recorder,
                        skipped,
                    });
                }
                Err(reason) => {
                    if request == TierRequest::Force(tier) {
                        return Err(TierUnavailable { tier, reason });
                    }
                    skipped.push((tier, reason));
                }
            }
        }
        // Unreachable: procfs always works. Fall back to it anyway rather than fail.
        Ok(Self {
            tier: Tier::Procfs,
            recorder: None,
            skipped,
        })
    }

    fn probe_ebpf(
        tier: Tier,
        socket: &Path,
        btf: &Result<btf::Btf, String>,
    ) -> Result<Option<ebpf::Recorder>, String> {
        ebpf::privileges()?;
        if tier == Tier::Lsm {
            let lsms = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
            if !lsms.split(',').any(|l| l.trim() == "bpf") {
                return Err(format!(
                    "the BPF LSM is not active (active LSMs: {}; add bpf to the lsm= kernel \
                     parameter)",
                    lsms.trim()
                ));
            }
        }
        let btf = btf.as_ref().map_err(Clone::clone)?;
        ebpf::Recorder::load(tier, socket, btf).map(Some)
    }

    /// procfs, without probing (tests, or callers without a socket).
    pub fn procfs() -> Self {
        Self {
            tier: Tier::Procfs,
            recorder: None,
            skipped: Vec::new(),
        }
    }

    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Better tiers that could not be used, with the reason.
    pub fn skipped(&self) -> &[(Tier, String)] {
        &self.skipped
    }

    /// What the eBPF program recorded for the server-side socket with cookie `cookie` (eBPF
    /// tiers only).
    pub fn recorded(&self, cookie: u64) -> Option<ConnRecord> {
        self.recorder.as_ref()?.lookup(cookie)
    }

    /// Whether a connect-hook tier also tracks writers (fd passing detection).
    pub fn writer_tracking(&self) -> bool {
        self.tier == Tier::TpBtf || self.recorder.as_ref().is_some_and(|r| r.writer_tracking)
    }

    /// Establishes who `peer` is with the active tier. Blocking (reads /proc).
    pub fn caller(&self, peer: &PeerInfo) -> Result<Caller, AttestError> {
        let mut caller = Caller {
            tier: self.tier,
            peer: peer.clone(),
            pid: peer.pid,
            uid: peer.uid,
            gid: peer.gid,
            cgroup: None,
            pod: None,
            record: None,
        };
        if peer.pid <= 0 {
            return Err(
                PeerGone("caller's pid is not visible from the agent's pid namespace").into(),
            );
        }
        // The process's current cgroup, read only when a recorded id is not resolved yet.
        let hint = || cgroup::proc_path(peer.pid).ok();
        match (&self.recorder, self.tier) {
            (Some(recorder), _) => {
                let record = kernel_record(recorder, peer, self.tier)?;
                caller.cgroup = Some(cgroup::resolve(record.cgroup_id, hint));
                check_exe(peer.pid, &record)?;
                caller.record = Some(record);
            }
            (None, Tier::Pidfd) => {
                let pidfd = match (&peer.pidfd, peer.pidfd_source) {
                    (Some(fd), Some(PidfdSource::PeerPidfd)) => fd,
                    _ => {
                        return Err(AttestError::Failed(
                            "no SO_PEERPIDFD for this connection".into(),
                        ));
                    }
                };
                let info = pidfd::get_info(pidfd).map_err(|e| match e {
                    pidfd::PidfdInfoError::Exited => PeerGone("caller process exited").into(),
                    other => AttestError::Failed(other.to_string()),
                })?;
                if info.tgid as i32 != peer.pid {
                    return Err(PeerGone("caller's pidfd names another process").into());
                }
                // Current credentials: a caller that dropped privileges since connecting is
                // attested as what it is now.
                caller.uid = info.euid;
                caller.gid = info.egid;
                caller.cgroup = Some(cgroup::resolve(info.cgroupid, hint));
            }
            (None, _) => {
                caller.cgroup = hint().map(|path| Cgroup {
                    id: cgroup::id_of(&path).unwrap_or(0),
                    path: Some(path),
                });
            }
        }
        caller.pod = caller
            .cgroup
            .as_ref()
            .and_then(|c| c.path.as_deref())
            .and_then(cgroup::parse_kubepods);
        Ok(caller)
    }
}

/// The eBPF record for `peer`'s connection, checked against what the socket says.
fn kernel_record(
    recorder: &ebpf::Recorder,
    peer: &PeerInfo,
    tier: Tier,
) -> Result<ConnRecord, AttestError> {
    let cookie = peer
        .cookie
        .ok_or_else(|| AttestError::Failed("no socket cookie for this connection".into()))?;
    let record = recorder.lookup(cookie).ok_or_else(|| {
        AttestError::Failed("the kernel recorded no caller for this connection".into())
    })?;
    if record.foreign_writer == FOREIGN_WRITER {
        return Err(PeerGone(
            "another process wrote on this connection (its fd was passed on or inherited)",
        )
        .into());
    }
    if record.tgid as i32 != peer.pid {
        return Err(PeerGone(if tier == Tier::TpBtf {
            "the first process to write on this connection is not the one that connected"
        } else {
            "the recorded caller is not the connecting process"
        })
        .into());
    }
    // Start time at accept (from /proc) against the kernel's at connect: a pid recycled in
    // between is a different process.
    if let Some(ticks) = peer.start_time
        && record.start_time_ns / ns_per_tick() != ticks
    {
        return Err(PeerGone("caller's pid was reused before the connection was accepted").into());
    }
    Ok(record)
}

/// The caller still runs the executable it connected with: an exec since would make /proc
/// describe another program.
fn check_exe(pid: i32, record: &ConnRecord) -> Result<(), AttestError> {
    if record.exe_ino == 0 {
        return Ok(());
    }
    let meta = std::fs::metadata(format!("/proc/{pid}/exe"))
        .map_err(|_| PeerGone("caller process exited"))?;
    if meta.ino() != record.exe_ino || ebpf::kernel_dev(meta.dev()) != record.exe_dev {
        return Err(PeerGone("caller executed another program since it connected").into());
    }
    Ok(())
}

/// Nanoseconds per `/proc/<pid>/stat` clock tick (USER_HZ).
fn ns_per_tick() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1_000_000_000 / u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_tier_metric() {
        // The tier is the attestation's state (it was a global set by the agent).
        let attestation = Attestation {
            tier: Tier::TpBtf,
            recorder: None,
            skipped: Vec::new(),
        };
        let active_tier = || Some(attestation.tier());
        assert_eq!(active_tier(), Some(Tier::TpBtf));
        let metric = crate::tier::tier_metric(active_tier());
        assert!(metric.contains("sigil_agent_workload_attestation_tier{tier=\"tp_btf\"} 1\n"));
        assert!(metric.contains("sigil_agent_workload_attestation_tier{tier=\"procfs\"} 0\n"));
        assert!(metric.contains("# TYPE sigil_agent_workload_attestation_tier gauge\n"));
    }

    #[test]
    fn procfs_tier_attests_the_test_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (server, _) = listener.accept().unwrap();
        let peer = PeerInfo::from_fd(std::os::fd::AsRawFd::as_raw_fd(&server)).unwrap();
        let caller = Attestation::procfs().caller(&peer).unwrap();
        assert_eq!(caller.pid as u32, std::process::id());
        assert_eq!(caller.tier, Tier::Procfs);
        // Not in a pod.
        if let Some(path) = caller.cgroup.as_ref().and_then(|c| c.path.as_deref()) {
            assert!(!path.contains("kubepods") || caller.pod.is_some());
        }
    }
}
