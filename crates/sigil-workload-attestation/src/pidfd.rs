//! `PIDFD_GET_INFO` (Linux >= 6.13): the credentials and cgroup of the process a pidfd refers to.
//!
//! With the pidfd from `SO_PEERPIDFD` this names the very process that connected, with no pid to
//! be recycled in between: the eBPF-free attestation tier.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::peer::PidFd;

const PIDFD_INFO_PID: u64 = 1 << 0;
const PIDFD_INFO_CREDS: u64 = 1 << 1;
const PIDFD_INFO_CGROUPID: u64 = 1 << 2;

/// `struct pidfd_info`, version 0 (64 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PidfdInfo {
    pub mask: u64,
    pub cgroupid: u64,
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub ruid: u32,
    pub rgid: u32,
    pub euid: u32,
    pub egid: u32,
    pub suid: u32,
    pub sgid: u32,
    pub fsuid: u32,
    pub fsgid: u32,
    pub exit_code: i32,
}

const _: () = assert!(std::mem::size_of::<PidfdInfo>() == 64);

/// `_IOWR(PIDFS_IOCTL_MAGIC, 11, struct pidfd_info)`.
const PIDFD_GET_INFO: u64 =
    (3 << 30) | ((std::mem::size_of::<PidfdInfo>() as u64) << 16) | (0xFF << 8) | 11;

/// Why `PIDFD_GET_INFO` gave nothing usable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PidfdInfoError {
    /// The kernel has no `PIDFD_GET_INFO` (before 6.13).
    #[error("PIDFD_GET_INFO is not supported by this kernel (needs Linux 6.13): {0}")]
    Unsupported(#[source] io::Error),
    /// The process has exited: its credentials are gone.
    #[error("the process has exited")]
    Exited,
    #[error("PIDFD_GET_INFO: {0}")]
    Io(#[source] io::Error),
}

/// The pid, credentials and cgroup of the live process behind `pidfd`.
pub(crate) fn get_info(pidfd: &PidFd) -> Result<PidfdInfo, PidfdInfoError> {
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_PID | PIDFD_INFO_CREDS | PIDFD_INFO_CGROUPID,
        ..Default::default()
    };
    // SAFETY: the ioctl writes at most size_of::<PidfdInfo>() bytes (encoded in the request)
    // into `info`, which lives across the call.
    let rc = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_INFO as _, &raw mut info) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ESRCH) => PidfdInfoError::Exited,
            Some(libc::ENOTTY | libc::EINVAL) => PidfdInfoError::Unsupported(e),
            _ => PidfdInfoError::Io(e),
        });
    }
    // A reaped process can still be looked at through its pidfd, but without credentials.
    if info.mask & PIDFD_INFO_CREDS == 0 || info.mask & PIDFD_INFO_PID == 0 {
        return Err(PidfdInfoError::Exited);
    }
    Ok(info)
}

/// Whether `SO_PEERPIDFD` and `PIDFD_GET_INFO` both work here: tried on a socket pair, whose peer
/// is this process.
pub(crate) fn probe() -> Result<(), String> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the array on success.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
    if rc != 0 {
        return Err(format!("socketpair: {}", io::Error::last_os_error()));
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    let (a, _b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let pidfd = crate::peer::peer_pidfd(a.as_raw_fd())
        .map_err(|e| format!("SO_PEERPIDFD is not supported (needs Linux 6.5): {e}"))?;
    let info = get_info(&pidfd).map_err(|e| e.to_string())?;
    if info.tgid != std::process::id() {
        return Err(format!(
            "PIDFD_GET_INFO named pid {} for this process ({})",
            info.tgid,
            std::process::id()
        ));
    }
    if info.cgroupid == 0 {
        return Err("PIDFD_GET_INFO returned no cgroup id (needs cgroup v2)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process() {
        match probe() {
            Ok(()) => {
                let me = PidFd::open(std::process::id() as i32).unwrap();
                let info = get_info(&me).unwrap();
                assert_eq!(info.tgid, std::process::id());
                // SAFETY: geteuid has no preconditions.
                assert_eq!(info.euid, unsafe { libc::geteuid() });
            }
            Err(reason) => eprintln!("skipping: {reason}"),
        }
    }

    #[test]
    fn reaped_process_has_no_info() {
        if probe().is_err() {
            eprintln!("skipping: no PIDFD_GET_INFO");
            return;
        }
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let fd = PidFd::open(child.id() as i32).unwrap();
        child.wait().unwrap();
        assert!(matches!(get_info(&fd), Err(PidfdInfoError::Exited)));
    }
}
