//! Who is on the other end of a Workload API connection.
//!
//! The kernel records the connecting process's credentials at `connect(2)`; we read them once at
//! accept time (`SO_PEERCRED`) and pin the process with a pidfd so that attestation can later
//! prove the pid it read `/proc` for still belongs to that same process. Without the pin, a
//! workload could connect, exit, and have its pid recycled by a more privileged process whose
//! `/proc` entries the agent would then attest in its place.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use tokio::net::UnixStream;

/// `SO_PEERPIDFD` (Linux ≥ 6.5): a pidfd for the peer as of `connect(2)`.
const SO_PEERPIDFD: libc::c_int = 77;

/// How the connection's pidfd was obtained, which decides how much it proves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PidfdSource {
    /// From the kernel's record of the connecting process: refers to exactly that process.
    PeerPidfd,
    /// From `pidfd_open(pid)` at accept time: refers to whatever process had `pid` then. Paired
    /// with a start-time check, it detects a pid recycled after accept (not one recycled between
    /// `connect` and `accept`, which only `SO_PEERPIDFD` can rule out).
    PidOpen,
}

/// A pidfd, closed on drop.
#[derive(Debug)]
pub struct PidFd(OwnedFd);

/// The credentials of a Workload API caller, captured at accept time. The agent hands it to RPC
/// handlers through `request.extensions().get::<PeerInfo>()`.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The caller's pid in the agent's pid namespace (0 when not visible from it).
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub pidfd: Option<Arc<PidFd>>,
    pub pidfd_source: Option<PidfdSource>,
    /// `/proc/<pid>/stat` start time (clock ticks since boot) read at accept.
    pub start_time: Option<u64>,
    /// `SO_COOKIE` of the accepted socket: the key of what the eBPF attestation tiers recorded
    /// about this connection. Unique for the life of the machine.
    pub cookie: Option<u64>,
}

// === impl PidFd ===

impl PidFd {
    /// `pidfd_open(2)`.
    pub fn open(pid: i32) -> io::Result<Self> {
        // SAFETY: plain syscall with integer arguments; on success it returns a new fd we own.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
    }

    /// Whether the process is still alive (not yet reaped): signal 0 checks existence without
    /// delivering anything. A pidfd of a reaped process fails with `ESRCH`.
    pub fn is_alive(&self) -> bool {
        // SAFETY: signal 0, no siginfo, no flags; the fd is valid for the lifetime of `self`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                0,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        // EPERM means the process exists but we may not signal it: still alive.
        rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
}

impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

// === impl PeerInfo ===

impl PeerInfo {
    /// Reads the peer credentials of an accepted Unix socket.
    pub fn from_socket(sock: &UnixStream) -> io::Result<Self> {
        Self::from_fd(sock.as_raw_fd())
    }

    /// [`Self::from_socket`] for any accepted Unix stream socket fd.
    pub fn from_fd(fd: RawFd) -> io::Result<Self> {
        let cred = peer_cred(fd)?;
        let (pidfd, source) = match peer_pidfd(fd) {
            Ok(p) => (Some(p), Some(PidfdSource::PeerPidfd)),
            // Older kernel (ENOPROTOOPT) or other failure: pin by pid instead.
            Err(_) if cred.pid > 0 => match PidFd::open(cred.pid) {
                Ok(p) => (Some(p), Some(PidfdSource::PidOpen)),
                Err(_) => (None, None),
            },
            Err(_) => (None, None),
        };
        // A pidfd from SO_PEERPIDFD pins the very process that connected: while it is alive its
        // pid cannot be reused, so no start time is needed (and /proc is not read on this hot
        // path). A pidfd opened by pid might already name a successor: pair it with the start
        // time.
        let start_time = (cred.pid > 0 && source != Some(PidfdSource::PeerPidfd))
            .then(|| proc_start_time(cred.pid).ok())
            .flatten();
        Ok(Self {
            pid: cred.pid,
            uid: cred.uid,
            gid: cred.gid,
            pidfd: pidfd.map(Arc::new),
            pidfd_source: source,
            start_time,
            cookie: socket_cookie(fd).ok(),
        })
    }

    /// Checks that the caller is still the process captured at accept: its pidfd still refers to
    /// a live process, and its start time is unchanged. Call it *after* reading `/proc/<pid>`, so
    /// that a pass proves those reads described the caller.
    pub fn verify_unchanged(&self) -> Result<(), PeerGone> {
        if self.pid <= 0 {
            return Err(PeerGone(
                "caller's pid is not visible from the agent's pid namespace",
            ));
        }
        if let Some(fd) = &self.pidfd
            && !fd.is_alive()
        {
            return Err(PeerGone("caller process exited"));
        }
        let Some(then) = self.start_time else {
            // No start time captured: only a kernel-issued pidfd (alive, checked above) vouches
            // for the process.
            return if self.pidfd_source == Some(PidfdSource::PeerPidfd) && self.pidfd.is_some() {
                Ok(())
            } else {
                Err(PeerGone(
                    "caller process could not be pinned at connect time",
                ))
            };
        };
        match proc_start_time(self.pid) {
            Ok(now) if now == then => Ok(()),
            Ok(_) => Err(PeerGone("caller's pid now belongs to another process")),
            Err(_) => Err(PeerGone("caller process exited")),
        }
    }
}

/// The caller is no longer the process that connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PeerGone(pub &'static str);

fn peer_cred(fd: RawFd) -> io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes passed.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred)
}

/// `SO_COOKIE`: the socket's kernel-assigned 64-bit id.
pub(crate) fn socket_cookie(fd: RawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of the sizes passed.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// `SO_PEERPIDFD`: a pidfd for the process that connected.
pub(crate) fn peer_pidfd(fd: RawFd) -> io::Result<PidFd> {
    let mut pidfd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `pidfd` and `len` are valid for writes of the sizes passed.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&raw mut pidfd).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if pidfd < 0 {
        return Err(io::Error::other("SO_PEERPIDFD returned no fd"));
    }
    // SAFETY: the kernel just installed `pidfd` in our fd table for us to own.
    Ok(PidFd(unsafe { OwnedFd::from_raw_fd(pidfd) }))
}

/// Field 22 of `/proc/<pid>/stat`: the process start time in clock ticks after boot. Together
/// with the pid it identifies a process uniquely over the life of the machine.
pub fn proc_start_time(pid: i32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_start_time(&stat).ok_or_else(|| io::Error::other("malformed /proc/<pid>/stat"))
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces and ')'; fields after
    // the last ')' start at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_parsing() {
        let stat =
            "1234 (a b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[tokio::test]
    async fn captures_own_credentials() {
        use tokio::net::UnixListener;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let client = UnixStream::connect(&path).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let info = PeerInfo::from_socket(&server).unwrap();
        assert_eq!(info.pid as u32, std::process::id());
        // SAFETY: getuid/getgid cannot fail.
        assert_eq!(info.uid, unsafe { libc::geteuid() });
        assert_eq!(info.gid, unsafe { libc::getegid() });
        assert!(info.pidfd.as_ref().unwrap().is_alive());
        // With SO_PEERPIDFD the pidfd pins the process; otherwise the start time does.
        assert!(info.start_time.is_some() || info.pidfd_source == Some(PidfdSource::PeerPidfd));
        info.verify_unchanged().unwrap();
        drop(client);
    }

    #[test]
    fn reaped_process_is_detected() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let fd = PidFd::open(pid).unwrap();
        let start = proc_start_time(pid).ok();
        child.wait().unwrap();
        assert!(!fd.is_alive());
        let info = PeerInfo {
            pid,
            uid: 0,
            gid: 0,
            pidfd: Some(Arc::new(fd)),
            pidfd_source: Some(PidfdSource::PidOpen),
            start_time: start,
            cookie: None,
        };
        assert!(info.verify_unchanged().is_err());
    }
}
