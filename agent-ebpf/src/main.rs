//! Sigil's kernel-side workload attestation.
//!
//! Records, for each connection to the agent's Workload API socket and for no other socket, the
//! process that made it: tgid, tid, uid, gid, cgroup id, start time, pid and mount namespaces and
//! executable (dev, inode). The record is keyed by the socket cookie of the *server-side* socket,
//! which the agent reads from the accepted fd (`SO_COOKIE`). The agent picks one hook at start-up:
//!
//! - `lsm/unix_stream_connect` and `fentry/security_unix_stream_connect` run in the connecting
//!   task during `connect(2)`: the record is the connector, before it can exit, exec or pass the
//!   fd on.
//! - `tp_btf/sk_data_ready` (kernel >= 6.10) runs in the task that writes to the server-side
//!   socket: the record is the *first writer*, and the agent only trusts it when it is the
//!   process `SO_PEERCRED` names. Attached next to a connect hook it also flags connections that
//!   a second process writes on (`foreign_writer`), which is how an fd passed over `SCM_RIGHTS`
//!   or inherited across `fork` shows up.
//! - `lsm/socket_sendmsg` and `fentry/security_socket_sendmsg` do the same writer tracking
//!   where the tracepoint does not exist (before 6.10), and before the data is queued: every
//!   write on a client end the connect hook saw (`SIGIL_CLIENTS`) by another process flags the
//!   connection.
//!
//! Rust eBPF has no CO-RE field relocations: kernel structure offsets come from the running
//! kernel's BTF, read by the agent and patched into the read-only global [`SIGIL_CONFIG`].
#![no_std]
#![no_main]

use core::ffi::c_void;
use core::ptr::{addr_of, read_volatile, write_volatile};

use aya_ebpf::btf_maps::LruHashMap;
use aya_ebpf::helpers::generated::bpf_get_socket_cookie;
use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
    bpf_get_current_uid_gid, bpf_probe_read_kernel,
};
use aya_ebpf::macros::{btf_map, btf_tracepoint, fentry, lsm};
use aya_ebpf::programs::{BtfTracePointContext, FEntryContext, LsmContext};
use sigil_ebpf_common::{
    Config, ConnRecord, FOREIGN_WRITER, HOOK_FENTRY, HOOK_LSM, HOOK_TP_BTF, MAX_CONNECTIONS,
};

const AF_UNIX: u16 = 1;
const BPF_ANY: u64 = 0;
/// Insert only if absent: with tp_btf the first writer wins.
const BPF_NOEXIST: u64 = 1;

/// Set by the loader before the program is loaded; zero means "record nothing".
#[unsafe(no_mangle)]
static SIGIL_CONFIG: Config = Config::EMPTY;

/// Server-side socket cookie -> who connected. LRU so that it stays bounded without the agent
/// having to delete entries.
#[btf_map]
static SIGIL_CONNS: LruHashMap<u64, ConnRecord, { MAX_CONNECTIONS as usize }> = LruHashMap::new();

/// Client-end socket cookie -> server-side socket cookie, for the sendmsg writer tracking.
#[btf_map]
static SIGIL_CLIENTS: LruHashMap<u64, u64, { MAX_CONNECTIONS as usize }> = LruHashMap::new();

/// Reads a field of the config. Volatile: the value is patched after compilation, so the
/// compiler must not fold the zero initialiser in.
macro_rules! config {
    ($($field:ident).+) => {
        // SAFETY: reading a plain integer out of a static.
        unsafe { read_volatile(addr_of!(SIGIL_CONFIG.$($field).+)) }
    };
}

/// `*(T *)(base + off)` in kernel memory; `None` for a null base or a faulting read.
#[inline(always)]
fn read<T>(base: *const u8, off: u32) -> Option<T> {
    if base.is_null() {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copes with any address (it fails instead of faulting).
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const T).ok() }
}

/// Whether `sk` is bound to (listener) or was accepted from (server-side socket) the agent's
/// socket file: its `unix_sock.path` names the configured inode on the configured device.
#[inline(always)]
fn is_agent_socket(sk: *const u8) -> bool {
    let want_ino: u64 = config!(socket_ino);
    if want_ino == 0 {
        return false;
    }
    let Some(dentry) = read::<*const u8>(sk, config!(offsets.unix_sock_path_dentry)) else {
        return false;
    };
    let Some(inode) = read::<*const u8>(dentry, config!(offsets.dentry_inode)) else {
        return false;
    };
    if read::<u64>(inode, config!(offsets.inode_ino)) != Some(want_ino) {
        return false;
    }
    let sb = read::<*const u8>(inode, config!(offsets.inode_sb)).unwrap_or(core::ptr::null());
    read::<u32>(sb, config!(offsets.sb_dev)) == Some(config!(socket_dev))
}

/// The current task's identity.
#[inline(always)]
fn current_record(hook: u32) -> ConnRecord {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: the helper has no preconditions; the pointer is only used through probe reads.
    let task = unsafe { bpf_get_current_task() } as *const u8;

    let leader = read::<*const u8>(task, config!(offsets.task_group_leader));
    let start_time_ns = leader
        .and_then(|l| read::<u64>(l, config!(offsets.task_start_boottime)))
        .unwrap_or(0);

    // task->mm->exe_file->f_inode: the executable, as /proc/<pid>/exe shows it.
    let exe_inode = read::<*const u8>(task, config!(offsets.task_mm))
        .and_then(|mm| read::<*const u8>(mm, config!(offsets.mm_exe_file)))
        .and_then(|f| read::<*const u8>(f, config!(offsets.file_inode)));
    let (exe_ino, exe_dev) = match exe_inode {
        Some(inode) => (
            read::<u64>(inode, config!(offsets.inode_ino)).unwrap_or(0),
            read::<*const u8>(inode, config!(offsets.inode_sb))
                .and_then(|sb| read::<u32>(sb, config!(offsets.sb_dev)))
                .unwrap_or(0),
        ),
        None => (0, 0),
    };

    let mnt_ns = read::<*const u8>(task, config!(offsets.task_nsproxy))
        .and_then(|nsp| read::<*const u8>(nsp, config!(offsets.nsproxy_mnt_ns)))
        .and_then(|ns| read::<u32>(ns, config!(offsets.mnt_ns_inum)))
        .unwrap_or(0);

    // The task's own pid namespace: thread_pid->numbers[thread_pid->level].ns.
    let pid_ns = read::<*const u8>(task, config!(offsets.task_thread_pid))
        .and_then(|pid| {
            let level = read::<u32>(pid, config!(offsets.pid_level))?;
            let upid = pid.wrapping_add(
                config!(offsets.pid_numbers) as usize
                    + (level as usize) * config!(offsets.upid_size) as usize,
            );
            read::<*const u8>(upid, config!(offsets.upid_ns))
        })
        .and_then(|ns| read::<u32>(ns, config!(offsets.pid_ns_inum)))
        .unwrap_or(0);

    ConnRecord {
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        // SAFETY: no preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        start_time_ns,
        exe_ino,
        exe_dev,
        pid_ns,
        mnt_ns,
        hook,
        foreign_writer: 0,
        _reserved: 0,
    }
}

/// A connect hook: `listener` is the socket being connected to, `newsk` the server-side socket
/// that `accept(2)` will return.
#[inline(always)]
fn on_connect(client: *mut c_void, listener: *const u8, newsk: *mut c_void, hook: u32) {
    if !is_agent_socket(listener) {
        return;
    }
    // SAFETY: `newsk` and `client` are the hook's BTF-typed `struct sock *` arguments.
    let cookie = unsafe { bpf_get_socket_cookie(newsk) };
    let record = current_record(hook);
    let _ = SIGIL_CONNS.insert(cookie, record, BPF_ANY);
    // Also gives the client end its cookie, which the sendmsg hooks read back.
    // SAFETY: as above.
    let client_cookie = unsafe { bpf_get_socket_cookie(client) };
    let _ = SIGIL_CLIENTS.insert(client_cookie, cookie, BPF_ANY);
}

/// Flags the connection with server-side cookie `cookie` if the current process is not the
/// one recorded for it.
#[inline(always)]
fn track_writer(cookie: u64) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(record) = SIGIL_CONNS.get_ptr_mut(cookie) {
        // SAFETY: a pointer to a live map value; racing writers only ever store the same
        // flag, and it is never cleared.
        unsafe {
            if (*record).tgid != tgid {
                write_volatile(&raw mut (*record).foreign_writer, FOREIGN_WRITER);
            }
        }
    }
}

/// A write on any socket: if it is the client end of a connection to the agent, track the
/// writer. Everything is read with probe reads: no BTF pointer walking for the verifier.
#[inline(always)]
fn on_sendmsg(socket: *const u8) {
    let Some(sk) = read::<*const u8>(socket, config!(offsets.socket_sk)) else {
        return;
    };
    if read::<u16>(sk, config!(offsets.sock_family)) != Some(AF_UNIX) {
        return;
    }
    let client_cookie = read::<u64>(sk, config!(offsets.sock_cookie)).unwrap_or(0);
    if client_cookie == 0 {
        return;
    }
    if let Some(cookie) = SIGIL_CLIENTS.get_ptr(client_cookie) {
        // SAFETY: a pointer to a live map value.
        track_writer(unsafe { *cookie });
    }
}

/// LSM_HOOK(int, 0, unix_stream_connect, struct sock *sock, struct sock *other, struct sock *newsk)
#[lsm(hook = "unix_stream_connect")]
pub fn sigil_lsm_unix_stream_connect(ctx: LsmContext) -> i32 {
    let sock: *mut c_void = ctx.arg(0);
    let other: *const u8 = ctx.arg(1);
    let newsk: *mut c_void = ctx.arg(2);
    let previous: i32 = ctx.arg(3);
    if previous == 0 {
        on_connect(sock, other, newsk, HOOK_LSM);
    }
    // Observe only: never change another LSM's decision.
    previous
}

/// Where the BPF LSM is not active, `security_unix_stream_connect` is still called, with the same
/// arguments, on every Unix stream connect.
#[fentry(function = "security_unix_stream_connect")]
pub fn sigil_fentry_unix_stream_connect(ctx: FEntryContext) -> i32 {
    let sock: *mut c_void = ctx.arg(0);
    let other: *const u8 = ctx.arg(1);
    let newsk: *mut c_void = ctx.arg(2);
    on_connect(sock, other, newsk, HOOK_FENTRY);
    0
}

/// LSM_HOOK(int, 0, socket_sendmsg, struct socket *sock, struct msghdr *msg, int size)
#[lsm(hook = "socket_sendmsg")]
pub fn sigil_lsm_socket_sendmsg(ctx: LsmContext) -> i32 {
    let socket: *const u8 = ctx.arg(0);
    let previous: i32 = ctx.arg(3);
    on_sendmsg(socket);
    previous
}

#[fentry(function = "security_socket_sendmsg")]
pub fn sigil_fentry_socket_sendmsg(ctx: FEntryContext) -> i32 {
    let socket: *const u8 = ctx.arg(0);
    on_sendmsg(socket);
    0
}

/// `trace_sk_data_ready(sk)` at the top of `sock_def_readable`, in the context of the task whose
/// write made `sk` readable. For a connection to the agent that is a process writing on the
/// client end, and `sk` the server-side socket.
#[btf_tracepoint(function = "sk_data_ready")]
pub fn sigil_tp_sk_data_ready(ctx: BtfTracePointContext) -> i32 {
    let sk: *mut c_void = ctx.arg(0);
    if read::<u16>(sk as *const u8, config!(offsets.sock_family)) != Some(AF_UNIX) {
        return 0;
    }
    if !is_agent_socket(sk as *const u8) {
        return 0;
    }
    // SAFETY: `sk` is the tracepoint's BTF-typed `struct sock *` argument.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    if SIGIL_CONNS.get_ptr(cookie).is_some() {
        track_writer(cookie);
    } else {
        let _ = SIGIL_CONNS.insert(cookie, current_record(HOOK_TP_BTF), BPF_NOEXIST);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects code that could get here.
    loop {}
}

/// GPL: required for the tracing and LSM helpers used above.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
